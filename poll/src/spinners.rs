//! How many threads of this process spin at once: at most one fewer than
//! the CPUs the process may run on, so a thread that produces the work a
//! spinner waits for (the peer, an I/O completion, a submitter) always
//! finds a CPU. A thread holds its slot only while it spins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Threads spinning now.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// Threads of the process that may spin at once: the CPUs it may run on
/// (its affinity mask, `sched_getaffinity`, and cgroup quota, as
/// [`std::thread::available_parallelism`] reads them) minus one; 0 on a
/// single CPU, where a spinner only delays the thread it waits for.
pub fn spin_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
    })
}

/// Threads spinning now (for statistics and tests).
pub fn spinning() -> usize {
    SPINNING.load(Ordering::Relaxed)
}

/// One thread's right to spin; given back when dropped.
#[derive(Debug)]
pub(crate) struct SpinSlot(());

impl SpinSlot {
    /// A slot if fewer than [`spin_limit`] threads spin now.
    pub(crate) fn take() -> Option<SpinSlot> {
        let limit = spin_limit();
        SPINNING
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| SpinSlot(()))
    }
}

impl Drop for SpinSlot {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_limit_and_come_back() {
        let limit = spin_limit();
        assert_eq!(
            limit,
            std::thread::available_parallelism().unwrap().get() - 1
        );
        let held: Vec<_> = std::iter::from_fn(SpinSlot::take).take(limit + 5).collect();
        assert_eq!(held.len(), limit);
        assert!(SpinSlot::take().is_none());
        drop(held);
        if limit > 0 {
            assert!(SpinSlot::take().is_some());
        }
    }
}
