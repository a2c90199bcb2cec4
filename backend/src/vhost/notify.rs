//! Used buffer notifications (VIRTIO 1.2 §2.7.7.2, §2.7.10): whether the
//! driver wants one now. Every queue asks here before it signals its call
//! eventfd.

use std::sync::atomic::{fence, Ordering};

use crate::vhost::dirty::{GuestMem, VringState};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

/// Whether the driver wants a used buffer notification now. With
/// EVENT_IDX (§2.7.10): `used_event` was crossed since the last check.
/// Without it (§2.7.7.2): unless the driver set VRING_AVAIL_F_NO_INTERRUPT,
/// when the device SHOULD NOT notify (virtio-queue does not read that flag,
/// so it is read here). A flag that cannot be read counts as 0: notify.
pub fn wants_call(state: &mut VringState, mem: &GuestMem) -> bool {
    let q = state.get_queue();
    if q.event_idx_enabled() {
        return state.needs_notification().unwrap_or(true);
    }
    // Our used entries are visible before the driver's flags are read.
    fence(Ordering::SeqCst);
    let flags = mem.load::<u16>(GuestAddress(q.avail_ring()), Ordering::Relaxed);
    !matches!(flags, Ok(f) if f & VRING_AVAIL_F_NO_INTERRUPT as u16 != 0)
}
