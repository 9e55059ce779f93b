//! Percentiles and clocks. Everything here is pure except [`now_unix_nano`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Wall clock in nanoseconds since the Unix epoch, the unit of Docker's `timeNano` and of the
/// agent's `applied_at_unix_nano`.
pub fn now_unix_nano() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Nanoseconds to milliseconds.
pub fn ns_to_ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

/// Nearest-rank percentile (`p` in 0..=100) of `samples`; `None` when there are none.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// The median (nearest rank).
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// The largest sample.
pub fn max(samples: &[f64]) -> Option<f64> {
    samples.iter().copied().max_by(f64::total_cmp)
}

/// Rounds to 3 decimals (microseconds when the unit is ms), so the JSON stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50/p95/p99/max of a latency distribution, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Distribution {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Distribution {
    pub fn of(samples: &[f64]) -> Self {
        let r = |v: Option<f64>| v.map(round3);
        Distribution {
            p50: r(percentile(samples, 50.0)),
            p95: r(percentile(samples, 95.0)),
            p99: r(percentile(samples, 99.0)),
            max: r(max(samples)),
        }
    }
}

/// p50 and max only.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MedianMax {
    pub p50: Option<f64>,
    pub max: Option<f64>,
}

impl MedianMax {
    pub fn of(samples: &[f64]) -> Self {
        MedianMax {
            p50: median(samples).map(round3),
            max: max(samples).map(round3),
        }
    }
}

/// p50/p95/p99/max of a latency distribution in milliseconds, with the number of samples.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DistributionN {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub n: usize,
}

impl DistributionN {
    pub fn of(samples: &[f64]) -> Self {
        let d = Distribution::of(samples);
        DistributionN {
            p50: d.p50,
            p95: d.p95,
            p99: d.p99,
            max: d.max,
            n: samples.len(),
        }
    }
}

/// The samples rounded to 3 decimals, for the raw arrays in the JSON.
pub fn rounded(samples: &[f64]) -> Vec<f64> {
    samples.iter().copied().map(round3).collect()
}

/// An RFC 3339 timestamp (as Docker writes `State.StartedAt`: `2026-12-02T09:41:16.123456789Z`,
/// any number of fraction digits up to 9, `Z` or a `±hh:mm` offset) to nanoseconds since the
/// Unix epoch, exactly. `None` when it is not such a timestamp.
pub fn parse_rfc3339_nano(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let value: i64 = frac.get(..digits)?.parse().ok()?;
        nanos = value * 10_i64.pow(9 - digits as u32);
        rest = frac.get(digits..)?;
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' {
                return None;
            }
            let sign = match ob[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm), proleptic Gregorian.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(100.0));
        assert_eq!(percentile(&samples, 95.0), Some(190.0));
        assert_eq!(percentile(&samples, 99.0), Some(198.0));
        assert_eq!(percentile(&samples, 100.0), Some(200.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
        assert_eq!(max(&samples), Some(200.0));
    }

    #[test]
    fn percentiles_of_few_and_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
    }

    #[test]
    fn ns_and_rounding() {
        assert_eq!(ns_to_ms(1_500_000), 1.5);
        assert_eq!(round3(1.23456), 1.235);
    }
    #[test]
    fn rfc3339_is_parsed_to_the_nanosecond() {
        assert_eq!(parse_rfc3339_nano("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nano("2026-12-02T09:41:16.123456789Z"),
            Some(1_796_204_476_123_456_789)
        );
        // Go's RFC3339Nano drops trailing zeros.
        assert_eq!(
            parse_rfc3339_nano("2026-12-02T09:41:16.1234Z"),
            Some(1_796_204_476_123_400_000)
        );
        assert_eq!(
            parse_rfc3339_nano("2026-12-02T10:41:16.5+01:00"),
            Some(1_796_204_476_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_nano("2000-02-29T12:00:00Z"),
            Some(951_825_600_000_000_000)
        );
        // Docker's "never started" is out of the i64 nanosecond range.
        assert_eq!(parse_rfc3339_nano("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_nano("2026-12-02T09:41:16.Z"), None);
        assert_eq!(parse_rfc3339_nano("2026-12-02 garbage"), None);
        assert_eq!(parse_rfc3339_nano(""), None);
    }

    #[test]
    fn distribution_with_count() {
        let d = DistributionN::of(&[1.0, 2.0, 3.0]);
        assert_eq!((d.p50, d.max, d.n), (Some(2.0), Some(3.0), 3));
        assert_eq!(DistributionN::of(&[]).n, 0);
        assert_eq!(rounded(&[1.23456]), vec![1.235]);
    }
}
