//! Interrupts: the device's call eventfd (VIRTIO 1.2 §2.7.8, "used buffer
//! notification"), one per virtqueue, watched by that queue's completion
//! task, which may poll the used ring a while before it sleeps
//! ([`vscsi_poll`], the policy the daemon's request queues use too).

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tracing::error;
use vmm_sys_util::eventfd::EventFd;
use vscsi_poll::{Poll, Poller, Spin, SpinEnd};

/// Longest stretch a polling completion task spins without yielding: the
/// other tasks of its worker (submitters it just woke, other queues'
/// completion tasks, I/O readiness) wait at most this long for it.
const SLICE: Duration = Duration::from_micros(5);

/// What a completion loop needs from its queue.
pub(crate) trait CompletionSource {
    /// Takes every completion, then asks for the device's notification,
    /// taking what came meanwhile (no lost wake-up); false once the queue
    /// is closed.
    fn reap_and_arm(&self) -> bool;
    /// Takes every completion with notifications disabled; false once the
    /// queue is closed.
    fn reap_polling(&self) -> bool;
    /// The device published completions not yet taken.
    fn has_used(&self) -> bool;
    /// Completions taken so far by anyone (submitters reap too).
    fn completions(&self) -> u64;
    /// The queue is closed.
    fn is_closed(&self) -> bool;
}

/// A queue's completion loop: take what the device completed; once the
/// used ring is dry, spin on it as `poll` says (yielding to the worker's
/// other tasks every [`SLICE`]), then re-enable notifications (re-checking
/// the ring) and sleep until the device signals `call`. `calls` counts the
/// notifications received. Ends when the queue is closed.
pub(crate) async fn completion_loop(
    queue: impl Display,
    call: EventFd,
    calls: &AtomicU64,
    poll: Poll,
    source: &impl CompletionSource,
) {
    // The EventFd owns its descriptor and keeps it open until it is dropped with the AsyncFd.
    // SAFETY: the descriptor stays valid and is the same one for the AsyncFd's whole life.
    let call = match unsafe { AsyncFd::register(call) } {
        Ok(fd) => fd,
        Err(e) => {
            error!(%queue, error = %e, "cannot watch the call eventfd");
            return;
        }
    };
    let mut poller = Poller::new(poll);
    loop {
        if let Some(s) = poller.begin(Instant::now()) {
            match spin(&mut poller, s, source).await {
                Some(true) => continue,
                Some(false) => {}
                None => return,
            }
        }
        if !source.reap_and_arm() {
            return;
        }
        let asleep = Instant::now();
        let mut guard = match call.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!(%queue, error = %e, "call eventfd failed");
                return;
            }
        };
        poller.woke(asleep.elapsed());
        calls.fetch_add(1, Ordering::Relaxed);
        // Reset the counter; WouldBlock just means a spurious wake-up.
        let _ = guard.get_inner().read();
        guard.clear_ready();
    }
}

/// One spin of the completion task on a dry used ring: `Some(true)` when
/// completions came (taken, their waiters woken, and the worker yielded to
/// them), `Some(false)` when the spin ended empty (sleep), `None` when the
/// queue closed.
async fn spin(poller: &mut Poller, mut spin: Spin, source: &impl CompletionSource) -> Option<bool> {
    // Notifications off while spinning; what is there already is taken.
    if !source.reap_polling() {
        return None;
    }
    let seen = source.completions();
    loop {
        let end = poller.spin_for(&mut spin, Some(SLICE), || {
            source.has_used() || source.completions() != seen
        });
        match end {
            SpinEnd::Found => {
                if !source.reap_polling() {
                    return None;
                }
                // Let the woken waiters run (and submit their next commands).
                tokio::task::yield_now().await;
                return Some(true);
            }
            SpinEnd::Sliced => {
                tokio::task::yield_now().await;
                if source.is_closed() {
                    return None;
                }
            }
            SpinEnd::Expired | SpinEnd::Refused => return Some(false),
        }
    }
}
