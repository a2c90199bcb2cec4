//! The completion latencies of a `vscsi bench` run and their tail: p50,
//! p99, p99.99 and the exact maximum, and how many completions took longer
//! than the `--warn-latency` threshold (a stalled request hides in a
//! median, never in these).
//!
//! Latencies are nanoseconds from submission to completion (fio's clat),
//! kept in hdrhistograms of 3 significant digits (percentiles are exact to
//! 0.1 %); the maximum and the count over the threshold are counted exactly
//! beside them.

use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Largest latency a histogram keeps apart (60 s); longer ones count as it.
const HIGHEST_NS: u64 = 60_000_000_000;

/// A new histogram of the bench's precision.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).context("creating a latency histogram")
}

/// Every completion of a run: reads and writes apart (fio reports them
/// apart), the exact maximum and the count over the threshold.
pub struct Recorder {
    /// Reads in `[0]`, writes in `[1]`.
    pub by_direction: [Histogram<u64>; 2],
    max_ns: u64,
    over: u64,
    threshold_ns: u64,
}

impl Recorder {
    /// A recorder that counts completions longer than `threshold`.
    pub fn new(threshold: Duration) -> Result<Self> {
        Ok(Self {
            by_direction: [histogram()?, histogram()?],
            max_ns: 0,
            over: 0,
            threshold_ns: u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// One completion of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64, write: bool) {
        self.by_direction[usize::from(write)].saturating_record(ns.max(1));
        self.max_ns = self.max_ns.max(ns);
        if ns > self.threshold_ns {
            self.over += 1;
        }
    }

    /// Reads and writes together.
    pub fn all(&self) -> Result<Histogram<u64>> {
        let mut h = self.by_direction[0].clone();
        h.add(&self.by_direction[1])
            .context("merging the read and write histograms")?;
        Ok(h)
    }

    /// The tail of everything recorded.
    pub fn tail(&self) -> Result<Tail> {
        let all = self.all()?;
        // A bucket's highest value can be past the exact maximum: no
        // percentile is reported above it.
        let at = |q: f64| {
            if all.is_empty() {
                0
            } else {
                all.value_at_quantile(q).min(self.max_ns)
            }
        };
        Ok(Tail {
            count: all.len(),
            p50_ns: at(0.5),
            p99_ns: at(0.99),
            p9999_ns: at(0.9999),
            max_ns: self.max_ns,
            over: self.over,
            threshold_ns: self.threshold_ns,
        })
    }
}

/// The tail of a run's completion latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Completions recorded.
    pub count: u64,
    /// Median (ns).
    pub p50_ns: u64,
    /// 99th percentile (ns).
    pub p99_ns: u64,
    /// 99.99th percentile (ns).
    pub p9999_ns: u64,
    /// The longest completion, exactly (ns).
    pub max_ns: u64,
    /// Completions longer than the threshold.
    pub over: u64,
    /// The `--warn-latency` threshold (ns).
    pub threshold_ns: u64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Tail {
    /// The line of the text report.
    pub fn line(&self) -> String {
        format!(
            "  tail (us): p50={:.1} p99={:.1} p99.99={:.1} max={:.1}  ({} over {} ms)",
            us(self.p50_ns),
            us(self.p99_ns),
            us(self.p9999_ns),
            us(self.max_ns),
            self.over,
            ms(self.threshold_ns)
        )
    }

    /// The warning, when some completion took longer than the threshold.
    pub fn warning(&self) -> Option<String> {
        (self.over > 0).then(|| {
            format!(
                "vscsi: warning: {} of {} completions took longer than {} ms (max {:.1} ms)",
                self.over,
                self.count,
                ms(self.threshold_ns),
                ms(self.max_ns)
            )
        })
    }

    /// The JSON fields (microseconds, as `lat_us`'s others; the threshold
    /// in milliseconds, as the flag takes it).
    pub fn to_json(self) -> Value {
        json!({
            "p50": us(self.p50_ns),
            "p99": us(self.p99_ns),
            "p99.99": us(self.p9999_ns),
            "max": us(self.max_ns),
            "over_warn_latency": self.over,
            "warn_latency_ms": ms(self.threshold_ns),
        })
    }
}

/// `--warn-latency MS`: milliseconds, fractions allowed, more than 0.
pub fn parse_ms(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if !(v > 0.0 && v <= 3_600_000.0) {
        return Err(format!("{s} ms is not in 0 (excluded) to 3600000"));
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within hdrhistogram's 3 significant digits of `want`.
    fn close(got: u64, want: u64) -> bool {
        got.abs_diff(want) as f64 <= want as f64 * 1e-3
    }

    #[test]
    fn percentiles_and_max_of_known_latencies() {
        // 1 µs, 2 µs, ... 10,000 µs, once each: the p-th percentile is p %
        // of 10 ms.
        let mut r = Recorder::new(Duration::from_millis(100)).unwrap();
        for i in 1..=10_000u64 {
            r.record(i * 1000, i % 2 == 0);
        }
        let t = r.tail().unwrap();
        assert_eq!(t.count, 10_000);
        assert!(close(t.p50_ns, 5_000_000), "{t:?}");
        assert!(close(t.p99_ns, 9_900_000), "{t:?}");
        assert!(close(t.p9999_ns, 9_999_000), "{t:?}");
        assert_eq!(t.max_ns, 10_000_000, "exact, not a bucket's edge");
        assert!(t.p9999_ns <= t.max_ns);
        assert_eq!(t.over, 0);
        assert_eq!(t.warning(), None);
        assert_eq!(r.by_direction[0].len(), 5_000);
        assert_eq!(r.by_direction[1].len(), 5_000);
    }

    #[test]
    fn the_tail_sees_one_slow_completion_in_ten_thousand() {
        // 9,999 completions of 20 µs and one of 150 ms: median and p99 stay
        // at 20 µs, p99.99 and max show the slow one, and it is over 100 ms.
        let mut r = Recorder::new(Duration::from_millis(100)).unwrap();
        for _ in 0..9_999 {
            r.record(20_000, false);
        }
        r.record(150_000_000, false);
        let t = r.tail().unwrap();
        assert!(close(t.p50_ns, 20_000) && close(t.p99_ns, 20_000), "{t:?}");
        assert!(close(t.p9999_ns, 20_000), "the 9,999th of 10,000: {t:?}");
        assert_eq!(t.max_ns, 150_000_000);
        assert_eq!(t.over, 1);
        assert_eq!(
            t.warning().unwrap(),
            "vscsi: warning: 1 of 10000 completions took longer than 100 ms (max 150.0 ms)"
        );
        let line = t.line();
        assert!(
            line.contains("p50=20.0 ") && line.contains("max=150000.0"),
            "{line}"
        );
        assert!(line.contains("(1 over 100 ms)"), "{line}");
        let j = t.to_json();
        assert_eq!(j["max"], 150_000.0);
        assert_eq!(j["over_warn_latency"], 1);
        assert_eq!(j["warn_latency_ms"], 100.0);
        assert!((j["p99.99"].as_f64().unwrap() - 20.0).abs() < 0.05, "{j}");

        // Two slow ones in 10,000 reach p99.99.
        r.record(150_000_000, true);
        let t = r.tail().unwrap();
        assert!(close(t.p9999_ns, 150_000_000), "{t:?}");
        assert_eq!(t.over, 2);
    }

    #[test]
    fn the_threshold_is_exclusive_and_exact() {
        let mut r = Recorder::new(Duration::from_micros(500)).unwrap();
        r.record(500_000, false); // exactly the threshold: not over
        r.record(500_001, true);
        let t = r.tail().unwrap();
        assert_eq!((t.over, t.max_ns), (1, 500_001));
        assert!(t.warning().unwrap().contains("longer than 0.5 ms"));
    }

    #[test]
    fn an_empty_run_has_a_zero_tail() {
        let t = Recorder::new(Duration::from_millis(1))
            .unwrap()
            .tail()
            .unwrap();
        assert_eq!(
            (t.count, t.p50_ns, t.p9999_ns, t.max_ns, t.over),
            (0, 0, 0, 0, 0)
        );
    }

    #[test]
    fn warn_latency_takes_milliseconds() {
        assert_eq!(parse_ms("100"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_ms("0.25"), Ok(Duration::from_micros(250)));
        assert!(parse_ms("0").is_err());
        assert!(parse_ms("-3").is_err());
        assert!(parse_ms("ten").unwrap_err().contains("milliseconds"));
    }
}
