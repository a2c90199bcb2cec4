//! Rate-limited logging of what a frontend can trigger.
//!
//! A guest can send malformed chains, bad CDBs or a broken ring as fast as
//! it likes; each would otherwise be a log line. Every such site logs
//! through a [`LogLimit`] of its own kind: the first [`BURST`] events pass,
//! then at most one line per [`WINDOW_MS`], which carries `suppressed = N`,
//! the number of events not logged since the line before. The state is a
//! few atomics, held per queue of a connection (vhost sites, so every new
//! connection starts with a fresh burst) or per call site (SCSI layer
//! sites, shared by every connection): no lock, nothing shared by all
//! queues.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Events of one kind logged before limiting starts.
pub const BURST: u32 = 5;
/// At most one line per this many milliseconds once the burst is spent.
pub const WINDOW_MS: u64 = 1000;

/// Events suppressed at SCSI layer sites (shared by every controller).
pub static SCSI_SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Milliseconds on a monotonic clock (since the first call).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it (within the burst).
    Log,
    /// Log it with the count of events suppressed since the last line.
    Summary(u64),
    /// Do not log it.
    Suppress,
}

/// The limiter of one kind of event.
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    window_ms: u64,
    passed: AtomicU32,
    suppressed: AtomicU64,
    /// When the last line was logged (ms of the clock given to `check`).
    last_line: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new(BURST, WINDOW_MS)
    }
}

impl LogLimit {
    /// `burst` events pass, then one line per `window_ms`.
    pub const fn new(burst: u32, window_ms: u64) -> Self {
        Self {
            burst,
            window_ms,
            passed: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
            last_line: AtomicU64::new(0),
        }
    }

    /// The verdict for an event at `now_ms` (any monotonic millisecond
    /// clock; [`now_ms`] in the daemon, a fake one in tests).
    pub fn check(&self, now_ms: u64) -> Verdict {
        if self.passed.load(Ordering::Relaxed) < self.burst {
            let n = self.passed.fetch_add(1, Ordering::Relaxed);
            if n < self.burst {
                self.last_line.store(now_ms, Ordering::Relaxed);
                return Verdict::Log;
            }
        }
        let last = self.last_line.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= self.window_ms
            && self
                .last_line
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Verdict::Summary(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        Verdict::Suppress
    }
}

/// Logs through a [`LogLimit`]: `limited!(limit, warn, fields.., "message")`.
/// Evaluates to `true` when the line was suppressed (for the caller's counter).
#[macro_export]
macro_rules! limited {
    ($limit:expr, $level:ident, target: $target:expr, $($arg:tt)+) => {
        match $limit.check($crate::ratelimit::now_ms()) {
            $crate::ratelimit::Verdict::Log => {
                tracing::$level!(target: $target, $($arg)+);
                false
            }
            $crate::ratelimit::Verdict::Summary(suppressed) => {
                tracing::$level!(target: $target, suppressed, $($arg)+);
                false
            }
            $crate::ratelimit::Verdict::Suppress => true,
        }
    };
    ($limit:expr, $level:ident, $($arg:tt)+) => {
        match $limit.check($crate::ratelimit::now_ms()) {
            $crate::ratelimit::Verdict::Log => {
                tracing::$level!($($arg)+);
                false
            }
            $crate::ratelimit::Verdict::Summary(suppressed) => {
                tracing::$level!(suppressed, $($arg)+);
                false
            }
            $crate::ratelimit::Verdict::Suppress => true,
        }
    };
}

/// [`limited!`] with a limiter of its own for this call site (process-wide),
/// counting suppressed lines in [`SCSI_SUPPRESSED`].
#[macro_export]
macro_rules! limited_site {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::LogLimit =
            $crate::ratelimit::LogLimit::new($crate::ratelimit::BURST, $crate::ratelimit::WINDOW_MS);
        if $crate::limited!(LIMIT, $level, $($arg)+) {
            $crate::ratelimit::SCSI_SUPPRESSED
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_n_pass_then_one_summary_per_window_with_the_count() {
        let l = LogLimit::new(5, 1000);
        for t in 0..5 {
            assert_eq!(l.check(t), Verdict::Log, "event {t} is in the burst");
        }
        for t in 5..100 {
            assert_eq!(l.check(t), Verdict::Suppress, "event at {t} ms");
        }
        // 1000 ms after the last logged line: one summary with the 95 suppressed.
        assert_eq!(l.check(1004), Verdict::Summary(95));
        assert_eq!(l.check(1005), Verdict::Suppress);
        assert_eq!(l.check(2003), Verdict::Suppress, "window not over yet");
        assert_eq!(l.check(2004), Verdict::Summary(2));
        // A quiet spell does not refill the burst: still one line a window.
        assert_eq!(l.check(10_000), Verdict::Summary(0));
        assert_eq!(l.check(10_001), Verdict::Suppress);
    }

    #[test]
    fn ten_thousand_events_make_the_burst_then_one_line_a_second() {
        // In one second: the burst only.
        let l = LogLimit::default();
        let lines = (0..10_000u64)
            .filter(|i| l.check(i / 10) != Verdict::Suppress)
            .count();
        assert_eq!(lines, BURST as usize);
        // Over ten seconds: the burst and a summary at 1004, 2004 ... 9004 ms.
        let l = LogLimit::default();
        let lines = (0..10_000u64)
            .filter(|&i| l.check(i) != Verdict::Suppress)
            .count();
        assert_eq!(lines, BURST as usize + 9);
    }

    #[test]
    fn limiters_of_different_kinds_are_independent() {
        let (a, b) = (LogLimit::new(1, 1000), LogLimit::new(1, 1000));
        assert_eq!(a.check(0), Verdict::Log);
        assert_eq!(a.check(1), Verdict::Suppress);
        assert_eq!(b.check(2), Verdict::Log);
    }

    #[test]
    fn the_macro_reports_suppression() {
        let l = LogLimit::new(1, u64::MAX);
        assert!(!limited!(l, warn, n = 1, "first"));
        assert!(limited!(l, warn, n = 2, "second"));
        let l = LogLimit::new(1, u64::MAX);
        assert!(!limited!(l, info, target: "vscsi::audit", n = 1, "first"));
        assert!(limited!(l, info, target: "vscsi::audit", n = 2, "second"));
    }
}
