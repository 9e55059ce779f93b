//! `--profile`: splits each sequential container's event→enforced time into its steps, from
//! the agent's own debug log (bollard's request lines) and its status. The agent then runs at
//! debug level for bollard, which itself costs a little, so these numbers explain the
//! headline measure rather than replace it.
//!
//! Steps per container (all from the agent's clock, except Docker's `timeNano`):
//! event delivered to the agent → inspect requested → inspect answered → ruleset committed.
//! Since the agent reads Docker's record on disk at a start event instead of inspecting, most
//! starts have no inspect: for those the record read ("started: read from docker's record")
//! takes the place of the inspect's answer. Since the agent watches the records, a start is
//! mostly read from its record before its event ("started: seen in docker's record"): that
//! read counts the same, and `record_read_ms` (event delivered → record read) is then
//! negative.

use std::collections::HashMap;

use serde::Serialize;

use crate::stats::{self, round3};

/// The log filter `--profile` runs the agent with.
pub const PROFILE_LOG_FILTER: &str =
    "info,egresstrator=debug,bollard::docker=debug,bollard::read=debug";

/// One measured container: id, Docker's start `timeNano`, the agent's `applied_at`, and
/// its `last_apply_ms`.
#[derive(Clone, Debug)]
pub struct Sample {
    pub id: String,
    pub start_nano: i64,
    pub applied_nano: i64,
    pub apply_ms: Option<f64>,
}

/// Medians of each step, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Split {
    pub samples: usize,
    /// Docker's `timeNano` until the agent read the event off its stream.
    pub event_to_agent_ms: Option<f64>,
    /// Event read until the inspect request went out (task hand-off).
    pub agent_to_inspect_ms: Option<f64>,
    /// The inspect request itself (dockerd is still finishing the start).
    pub inspect_ms: Option<f64>,
    /// Samples whose start was read from Docker's record instead of inspected.
    pub from_record: usize,
    /// Event read until the record was read (task hand-off and the read).
    pub record_read_ms: Option<f64>,
    /// Inspect answered (or record read) until the ruleset was committed: the namespace's
    /// cookie, compile, render, thread start, `setns`, libnftables.
    pub inspect_to_committed_ms: Option<f64>,
    /// Of that, the time inside the namespace (`last_apply_ms`).
    pub apply_in_netns_ms: Option<f64>,
    /// The end-to-end median of the same samples, with debug logging on.
    pub event_to_enforced_ms: Option<f64>,
}

#[derive(Default)]
struct Seen {
    received: Option<i64>,
    inspect_sent: Option<i64>,
    inspect_done: Option<i64>,
    record_read: Option<i64>,
}

/// Splits the samples' time using the agent log's text.
pub fn split(log: &str, samples: &[Sample]) -> Split {
    let wanted: HashMap<&str, usize> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    // The agent's own lines name a container by its short id (12 hex digits).
    let short: HashMap<&str, usize> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((s.id.get(..12)?, i)))
        .collect();
    let mut seen: Vec<Seen> = samples.iter().map(|_| Seen::default()).collect();
    for raw in log.lines() {
        let line = strip_ansi(raw);
        let Some(t) = line.get(..27).and_then(parse_rfc3339_nanos) else {
            continue;
        };
        if line.contains("bollard::read") && line.contains("\"status\":\"start\"") {
            if let Some(i) = id_after(&line, "\"id\":\"").and_then(|id| wanted.get(id)) {
                seen[*i].received.get_or_insert(t);
            }
        } else if line.contains("bollard::docker: unix://") && line.ends_with("/json") {
            if let Some(i) = id_after(&line, "/containers/").and_then(|id| wanted.get(id)) {
                seen[*i].inspect_sent.get_or_insert(t);
            }
        } else if line.contains("Decoded into string: {\"Id\":\"") {
            if let Some(i) = id_after(&line, "{\"Id\":\"").and_then(|id| wanted.get(id)) {
                seen[*i].inspect_done.get_or_insert(t);
            }
        } else if line.contains("started: read from docker's record")
            || line.contains("started: seen in docker's record")
        {
            let id = line
                .find("container=\"")
                .and_then(|at| line.get(at + 11..at + 23));
            if let Some(i) = id.and_then(|id| short.get(id)) {
                seen[*i].record_read.get_or_insert(t);
            }
        }
    }
    let ms = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1e6),
        _ => None,
    };
    let mut cols: [Vec<f64>; 7] = Default::default();
    let (mut n, mut from_record) = (0, 0);
    for (s, e) in samples.iter().zip(&seen) {
        // The record read counts when the start was not inspected (the agent inspects only
        // when the record cannot be read).
        let (done, record) = match (e.inspect_done, e.record_read) {
            (Some(done), _) => (done, None),
            (None, Some(read)) => (read, Some(read)),
            (None, None) => continue,
        };
        n += 1;
        from_record += usize::from(record.is_some());
        let steps = [
            ms(Some(s.start_nano), e.received),
            ms(e.received, e.inspect_sent),
            ms(e.inspect_sent, e.inspect_done),
            ms(Some(done), Some(s.applied_nano)),
            s.apply_ms,
            ms(Some(s.start_nano), Some(s.applied_nano)),
            ms(e.received, record),
        ];
        for (col, v) in cols.iter_mut().zip(steps) {
            col.extend(v);
        }
    }
    let med = |v: &Vec<f64>| stats::median(v).map(round3);
    Split {
        samples: n,
        event_to_agent_ms: med(&cols[0]),
        agent_to_inspect_ms: med(&cols[1]),
        inspect_ms: med(&cols[2]),
        from_record,
        record_read_ms: med(&cols[6]),
        inspect_to_committed_ms: med(&cols[3]),
        apply_in_netns_ms: med(&cols[4]),
        event_to_enforced_ms: med(&cols[5]),
    }
}

/// The 64-hex-digit id right after `marker`.
fn id_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let start = line.find(marker)? + marker.len();
    let id = line.get(start..start + 64)?;
    id.bytes().all(|b| b.is_ascii_hexdigit()).then_some(id)
}

/// Removes terminal color sequences (`ESC [ … m`), which tracing adds by default.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-28T07:50:25.057581Z` (tracing's UTC timestamp, microseconds) → Unix nanoseconds.
fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
    let nanos: i64 = format!("{digits:0<9}").get(..9)?.parse().ok()?;
    let days = days_from_civil(y, m, day);
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000_000) + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01.000001Z"),
            Some(1_000_001_000)
        );
        // date -u -d 2026-11-28T07:50:25Z +%s = 1795852225
        assert_eq!(
            parse_rfc3339_nanos("2026-11-28T07:50:25.057581Z"),
            Some(1_795_852_225_057_581_000)
        );
    }

    #[test]
    fn splits_one_container() {
        let id = "819b7bf4ff79d77a1fc758cc0b39beaacddfa2f48d218a008d5fa109f80e6da0";
        let log = format!(
            "2026-11-28T07:50:25.057000Z DEBUG bollard::read: Decoding JSON line from stream: {{\"status\":\"start\",\"id\":\"{id}\",\"from\":\"x\"}}\n\
             2026-11-28T07:50:25.057500Z DEBUG bollard::docker: unix://2f76/containers/{id}/json\n\
             \u{1b}[2m2026-11-28T07:50:25.058500Z\u{1b}[0m DEBUG bollard::docker: Decoded into string: {{\"Id\":\"{id}\",\"Created\":\"x\"}}\n"
        );
        let samples = [Sample {
            id: id.to_string(),
            start_nano: 1_795_852_225_056_000_000,
            applied_nano: 1_795_852_225_060_500_000,
            apply_ms: Some(1.5),
        }];
        let s = split(&log, &samples);
        assert_eq!(s.samples, 1);
        assert_eq!(s.event_to_agent_ms, Some(1.0));
        assert_eq!(s.agent_to_inspect_ms, Some(0.5));
        assert_eq!(s.inspect_ms, Some(1.0));
        assert_eq!(s.inspect_to_committed_ms, Some(2.0));
        assert_eq!(s.event_to_enforced_ms, Some(4.5));
        assert_eq!(s.from_record, 0);
    }

    /// A start read from Docker's record has no inspect: the record read takes its place.
    #[test]
    fn splits_a_start_read_from_the_record() {
        let id = "586fd13a83fab52fecec9923aebd70b0fa1dd9077256702dc069feb19d9305d2";
        // Lines as the agent wrote them on 2026-12-03 (ids and times kept, text cut).
        let log = format!(
            "2026-12-03T08:49:26.735228Z DEBUG bollard::read: Decoding JSON line from stream: {{\"status\":\"start\",\"id\":\"{id}\",\"from\":\"x\"}}\n\
             2026-12-03T08:49:26.735425Z DEBUG egresstrator::agent: started: read from docker's record container=\"586fd13a83fa\"\n\
             2026-12-03T08:49:26.738391Z  INFO egresstrator::enforce: container enforced container=\"586fd13a83fa\" took_ms=2.41\n"
        );
        let samples = [Sample {
            id: id.to_string(),
            // date -u -d 2026-12-03T08:49:26Z +%s = 1796287766
            start_nano: 1_796_287_766_734_228_000,
            applied_nano: 1_796_287_766_738_391_000,
            apply_ms: Some(2.41),
        }];
        let s = split(&log, &samples);
        assert_eq!((s.samples, s.from_record), (1, 1));
        assert_eq!(s.event_to_agent_ms, Some(1.0));
        assert_eq!(s.record_read_ms, Some(0.197));
        assert_eq!(s.inspect_ms, None);
        assert_eq!(s.inspect_to_committed_ms, Some(2.966));
        assert_eq!(s.event_to_enforced_ms, Some(4.163));

        // The same start seen in the record by the watch, 0.5 ms before the event arrived.
        let watched = format!(
            "2026-12-03T08:49:26.734728Z DEBUG egresstrator::agent: started: seen in docker's record container=\"586fd13a83fa\"\n\
             2026-12-03T08:49:26.735228Z DEBUG bollard::read: Decoding JSON line from stream: {{\"status\":\"start\",\"id\":\"{id}\",\"from\":\"x\"}}\n\
             2026-12-03T08:49:26.738391Z  INFO egresstrator::enforce: container enforced container=\"586fd13a83fa\" took_ms=2.41\n"
        );
        let s = split(&watched, &samples);
        assert_eq!((s.samples, s.from_record), (1, 1));
        assert_eq!(s.record_read_ms, Some(-0.5));
        assert_eq!(s.inspect_to_committed_ms, Some(3.663));
    }
}
