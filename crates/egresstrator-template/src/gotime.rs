//! Go's `time.Format` reference layouts, for consul-template's `timestamp "LAYOUT"`.
//!
//! consul-template formats the current UTC time with a Go layout (`2006-01-02T15:04:05Z07:00`
//! by default). The time comes from the caller's [`crate::DataSource::now_unix`], so renders
//! stay deterministic in tests; this module only turns seconds into Go's layout syntax.

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// The RFC 3339 layout consul-template uses when `timestamp` has no argument.
pub(crate) const RFC3339: &str = "2006-01-02T15:04:05Z07:00";

struct Civil {
    year: i64,
    month: usize, // 1..=12
    day: i64,
    yday: i64, // 1..=366
    weekday: usize,
    hour: i64,
    min: i64,
    sec: i64,
}

fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let month_idx = usize::try_from(month - 1).unwrap_or(0).min(11);
    let yday = CUM[month_idx] + day + i64::from(leap && month > 2);
    Civil {
        year,
        month: month_idx + 1,
        day,
        yday,
        weekday: usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0),
        hour: secs / 3600,
        min: secs % 3600 / 60,
        sec: secs % 60,
    }
}

/// Formats Unix seconds (UTC) with a Go reference layout.
pub(crate) fn format(unix: i64, layout: &str) -> String {
    let t = civil(unix);
    let mut out = String::new();
    let mut rest = layout;
    while let Some(c) = rest.chars().next() {
        let (s, n): (String, usize) = if rest.starts_with("January") {
            (MONTHS[t.month - 1].to_owned(), 7)
        } else if rest.starts_with("Jan") {
            (MONTHS[t.month - 1][..3].to_owned(), 3)
        } else if rest.starts_with("Monday") {
            (DAYS[t.weekday].to_owned(), 6)
        } else if rest.starts_with("Mon") {
            (DAYS[t.weekday][..3].to_owned(), 3)
        } else if rest.starts_with("MST") {
            ("UTC".to_owned(), 3)
        } else if rest.starts_with("2006") {
            (format!("{:04}", t.year), 4)
        } else if rest.starts_with("002") {
            (format!("{:03}", t.yday), 3)
        } else if rest.starts_with("01") {
            (format!("{:02}", t.month), 2)
        } else if rest.starts_with("02") {
            (format!("{:02}", t.day), 2)
        } else if rest.starts_with("03") {
            (format!("{:02}", hour12(t.hour)), 2)
        } else if rest.starts_with("04") {
            (format!("{:02}", t.min), 2)
        } else if rest.starts_with("05") {
            (format!("{:02}", t.sec), 2)
        } else if rest.starts_with("06") {
            (format!("{:02}", t.year.rem_euclid(100)), 2)
        } else if rest.starts_with("15") {
            (format!("{:02}", t.hour), 2)
        } else if rest.starts_with("__2") {
            (format!("{:>3}", t.yday), 3)
        } else if rest.starts_with("_2") && !rest.starts_with("_2006") {
            (format!("{:>2}", t.day), 2)
        } else if c == '1' {
            (t.month.to_string(), 1)
        } else if c == '2' {
            (t.day.to_string(), 1)
        } else if c == '3' {
            (hour12(t.hour).to_string(), 1)
        } else if c == '4' {
            (t.min.to_string(), 1)
        } else if c == '5' {
            (t.sec.to_string(), 1)
        } else if rest.starts_with("PM") {
            (if t.hour >= 12 { "PM" } else { "AM" }.to_owned(), 2)
        } else if rest.starts_with("pm") {
            (if t.hour >= 12 { "pm" } else { "am" }.to_owned(), 2)
        } else if let Some(n) = zone_len(rest, "Z") {
            ("Z".to_owned(), n)
        } else if let Some(n) = zone_len(rest, "-") {
            let s = match n {
                7 => "+000000",
                9 => "+00:00:00",
                5 => "+0000",
                6 => "+00:00",
                _ => "+00",
            };
            (s.to_owned(), n)
        } else if let Some((n, zeros)) = frac_len(rest) {
            // UTC seconds have no fraction: `.000` prints zeros, `.999` prints nothing.
            let s = if zeros {
                format!("{}{}", &rest[..1], "0".repeat(n - 1))
            } else {
                String::new()
            };
            (s, n)
        } else {
            (c.to_string(), c.len_utf8())
        };
        out.push_str(&s);
        rest = &rest[n..];
    }
    out
}

fn hour12(h: i64) -> i64 {
    match h % 12 {
        0 => 12,
        x => x,
    }
}

/// The length of a `-07:00`-style (or `Z07:00`-style) zone chunk starting with `lead`.
fn zone_len(s: &str, lead: &str) -> Option<usize> {
    let body = s.strip_prefix(lead)?;
    for form in ["070000", "07:00:00", "0700", "07:00", "07"] {
        if body.starts_with(form) {
            return Some(lead.len() + form.len());
        }
    }
    None
}

/// `.000` / `.999` (or with `,`): length and whether it is the zero-padded form.
fn frac_len(s: &str) -> Option<(usize, bool)> {
    let mut it = s.chars();
    let sep = it.next()?;
    if sep != '.' && sep != ',' {
        return None;
    }
    let ch = it.next()?;
    if ch != '0' && ch != '9' {
        return None;
    }
    let run = 1 + s[2..].chars().take_while(|c| *c == ch).count();
    if s[1 + run..].starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((1 + run, ch == '0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-02-29T13:04:05Z, a Thursday, day 60 of a leap year.
    const T: i64 = 1_709_211_845;

    #[test]
    fn rfc3339_and_unix_epoch() {
        assert_eq!(format(0, RFC3339), "1970-01-01T00:00:00Z");
        assert_eq!(format(T, RFC3339), "2024-02-29T13:04:05Z");
        assert_eq!(format(-1, RFC3339), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn layout_elements() {
        assert_eq!(
            format(T, "Mon Jan _2 15:04:05 MST 2006"),
            "Thu Feb 29 13:04:05 UTC 2024"
        );
        assert_eq!(
            format(T, "Monday January 2 3:4:5 PM 06"),
            "Thursday February 29 1:4:5 PM 24"
        );
        assert_eq!(
            format(T, "002 __2 03pm -07:00 -0700 Z0700"),
            "060  60 01pm +00:00 +0000 Z"
        );
        assert_eq!(
            format(T, "15:04:05.000 15:04:05.999"),
            "13:04:05.000 13:04:05"
        );
        assert_eq!(format(T, "literal: x"), "literal: x");
    }
}
