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
}
