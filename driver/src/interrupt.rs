//! Interrupts: the device's call eventfd (VIRTIO 1.2 §2.7.8, "used buffer
//! notification"), one per virtqueue, watched by that queue's completion task.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::unix::AsyncFd;
use tracing::error;
use vmm_sys_util::eventfd::EventFd;

/// A queue's completion loop: `reap` drains the used ring (returning false
/// once the queue is closed or broken), then the task sleeps until the
/// device signals `call`. `calls` counts the notifications received.
pub(crate) async fn completion_loop(
    queue: impl Display,
    call: EventFd,
    calls: &AtomicU64,
    mut reap: impl FnMut() -> bool,
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
    loop {
        if !reap() {
            return;
        }
        let mut guard = match call.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!(%queue, error = %e, "call eventfd failed");
                return;
            }
        };
        calls.fetch_add(1, Ordering::Relaxed);
        // Reset the counter; WouldBlock just means a spurious wake-up.
        let _ = guard.get_inner().read();
        guard.clear_ready();
    }
}
