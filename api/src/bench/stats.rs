//! Latency samples and their percentiles, and the ratio every figure is reported with.

use std::time::Duration;

/// Every latency of one measurement, in microseconds (exact percentiles, no buckets).
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    micros: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.micros
            .push(d.as_micros().min(u128::from(u64::MAX)) as u64);
        self.sorted = false;
    }

    pub fn record_micros(&mut self, us: u64) {
        self.micros.push(us);
        self.sorted = false;
    }

    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `p`-th percentile (0–100) in milliseconds, nearest rank; 0 when empty.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        self.sort();
        if self.micros.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.micros.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.micros.len()) - 1;
        self.micros[i] as f64 / 1000.0
    }

    pub fn max_ms(&mut self) -> f64 {
        self.percentile_ms(100.0)
    }

    /// `p50 / p95 / p99 ms` for a report line.
    pub fn summary(&mut self) -> String {
        format!(
            "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            self.percentile_ms(50.0),
            self.percentile_ms(95.0),
            self.percentile_ms(99.0)
        )
    }
}

/// `ours / baseline` as a percentage, or 0 when the baseline is 0.
pub fn percent(ours: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        100.0 * ours / baseline
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), 50.0);
        assert_eq!(l.percentile_ms(99.0), 99.0);
        assert_eq!(l.max_ms(), 100.0);
        assert_eq!(Latencies::default().percentile_ms(99.0), 0.0);
        assert_eq!(percent(1.0, 4.0), 25.0);
    }
}
