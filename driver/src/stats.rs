//! Metrics: per queue and per LUN, with
//! latency histograms, and the snapshot [`crate::Driver::stats`] returns.
//!
//! Per-LUN counters live in the request queue that carried the command
//! (behind that queue's own lock, allocated on a LUN's first command), so
//! queues share nothing on the I/O path; a snapshot merges them.
//!
//! Latency histograms are `hdrhistogram` ones (2 significant digits, 1 µs
//! to one hour): fixed size once created, no allocation per sample, and
//! mergeable across queues.

use std::collections::HashMap;
use std::time::Duration;

use vscsi_protocol::lun::Lun;

/// Largest latency a histogram tells apart (one hour, in µs); longer ones
/// are recorded as this.
const HIGHEST_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds (HDR, about 1 % precision).
#[derive(Clone)]
pub struct Histogram {
    h: hdrhistogram::Histogram<u64>,
    /// The exact maximum (the histogram caps samples at [`HIGHEST_US`]).
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        // 1..=HIGHEST_US with 2 significant digits: about 26 KiB of counts.
        let h = hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_US, 2)
            .expect("1..=HIGHEST_US with 2 significant digits are valid bounds");
        Self { h, max: 0 }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("p50_us", &self.percentile(50.0))
            .field("p99_us", &self.percentile(99.0))
            .field("max_us", &self.max)
            .finish()
    }
}

impl Histogram {
    /// Records one value (µs).
    pub fn record(&mut self, us: u64) {
        self.h.saturating_record(us.max(1));
        self.max = self.max.max(us);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.h.add(&other.h);
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// Smallest sample (0 when empty).
    pub fn min(&self) -> u64 {
        if self.h.is_empty() {
            0
        } else {
            self.h.min()
        }
    }

    /// Largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean (µs).
    pub fn mean(&self) -> f64 {
        if self.h.is_empty() {
            0.0
        } else {
            self.h.mean()
        }
    }

    /// The value at percentile `p` (0..=100), within the histogram's precision.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.h.is_empty() {
            return 0;
        }
        self.h.value_at_percentile(p).min(self.max)
    }

    /// A summary of this histogram.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            min_us: self.min(),
            mean_us: self.mean(),
            p50_us: self.percentile(50.0),
            p90_us: self.percentile(90.0),
            p99_us: self.percentile(99.0),
            max_us: self.max(),
        }
    }
}

/// Latency percentiles of one command class, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Minimum.
    pub min_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Maximum.
    pub max_us: u64,
}

/// Command classes with their own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// Reads (data-in medium access).
    Read = 0,
    /// Writes (data-out).
    Write = 1,
    /// Everything else.
    Other = 2,
}

/// Counters of one LUN (as recorded by one queue, or merged).
#[derive(Debug, Clone, Default)]
pub struct LunStats {
    /// Commands completed by the device (any status).
    pub commands: u64,
    /// Data-in bytes received.
    pub bytes_read: u64,
    /// Data-out bytes sent.
    pub bytes_written: u64,
    /// CHECK CONDITION completions by sense key (index = key).
    pub errors_by_sense_key: [u64; 16],
    /// Non-OK virtio responses by response code (index = code, 0..=12).
    pub errors_by_response: [u64; 13],
    /// Other non-GOOD SCSI statuses (BUSY, TASK SET FULL, ...).
    pub bad_status: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// Retries the retry policy made.
    pub retries: u64,
    /// Latency per [`CommandClass`] (read, write, other).
    pub latency: [Histogram; 3],
}

impl LunStats {
    pub(crate) fn merge(&mut self, o: &LunStats) {
        self.commands += o.commands;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        for (a, b) in self
            .errors_by_sense_key
            .iter_mut()
            .zip(o.errors_by_sense_key)
        {
            *a += b;
        }
        for (a, b) in self.errors_by_response.iter_mut().zip(o.errors_by_response) {
            *a += b;
        }
        self.bad_status += o.bad_status;
        self.timeouts += o.timeouts;
        self.retries += o.retries;
        for (a, b) in self.latency.iter_mut().zip(o.latency.iter()) {
            a.merge(b);
        }
    }

    /// Errors of every kind.
    pub fn errors(&self) -> u64 {
        self.errors_by_sense_key.iter().sum::<u64>()
            + self.errors_by_response.iter().sum::<u64>()
            + self.bad_status
            + self.timeouts
    }
}

/// One request queue's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Request queue index.
    pub index: u16,
    /// Commands in flight now.
    pub in_flight: u32,
    /// Request slots (in-flight capacity).
    pub slots: u32,
    /// Kicks sent to the device.
    pub kicks: u64,
    /// Call (interrupt) wake-ups of the completion task.
    pub calls: u64,
    /// Commands completed.
    pub completions: u64,
}

impl QueueStats {
    /// In-flight commands over slots, 0.0..=1.0.
    pub fn utilisation(&self) -> f64 {
        if self.slots == 0 {
            0.0
        } else {
            f64::from(self.in_flight) / f64::from(self.slots)
        }
    }
}

/// A snapshot of every metric ([`crate::Driver::stats`]).
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    /// Seconds since the driver connected.
    pub uptime: Duration,
    /// Per request queue.
    pub queues: Vec<QueueStats>,
    /// Control queue: kicks and calls.
    pub control: QueueStats,
    /// Events received.
    pub events: u64,
    /// Per LUN, sorted.
    pub luns: Vec<(Lun, LunStats)>,
    /// Connections lost and re-established.
    pub reconnect: ReconnectStats,
}

/// What the driver went through when the device went away
/// ([`crate::DriverOptions::reconnect`]). Command counts are of the
/// request queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReconnectStats {
    /// Connections lost.
    pub disconnects: u64,
    /// Connections re-established.
    pub reconnects: u64,
    /// Commands in flight when the connections were lost.
    pub in_flight_at_disconnect: u64,
    /// Commands left on the rings for the device that took over (inflight
    /// I/O tracking), over every reconnect.
    pub carried: u64,
    /// Commands carried over that then completed: the ones the old device
    /// had taken were resubmitted from the inflight region, the others
    /// taken from the avail ring.
    pub resubmitted: u64,
    /// Commands that failed because the connection was lost
    /// ([`crate::Error::Disconnected`], [`crate::Error::ReconnectDeadline`]).
    pub failed: u64,
    /// From the last loss to the end of its reconnect.
    pub last_outage: Option<Duration>,
    /// Every outage that ended in a reconnect, added up.
    pub total_outage: Duration,
    /// The device did not come back within the deadline.
    pub gave_up: bool,
}

impl StatsSnapshot {
    /// IOPS of a LUN over the driver's life.
    pub fn iops(&self, s: &LunStats) -> f64 {
        s.commands as f64 / self.uptime.as_secs_f64().max(1e-9)
    }

    /// Throughput (bytes/s, read + written) of a LUN over the driver's life.
    pub fn throughput(&self, s: &LunStats) -> f64 {
        (s.bytes_read + s.bytes_written) as f64 / self.uptime.as_secs_f64().max(1e-9)
    }
}

/// Per-LUN counters of one queue.
pub(crate) type LunTable = HashMap<(u8, u16), LunStats>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 10_000);
        let p50 = h.percentile(50.0) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.01, "{p50}");
        let p99 = h.percentile(99.0) as f64;
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.01, "{p99}");
        let mut g = Histogram::default();
        g.record(1 << 45);
        g.record(0);
        h.merge(&g);
        assert_eq!(h.max(), 1 << 45, "the exact maximum survives the cap");
        assert_eq!(h.count(), 10_002);
        assert_eq!(h.min(), 1, "0 µs counts in the first bucket");
        assert_eq!(Histogram::default().percentile(99.0), 0);
    }
}
