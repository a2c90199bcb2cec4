//! One interface over both ring formats: what every queue (request,
//! control, event) does with its ring, split (VIRTIO 1.2 §2.7) or packed
//! (§2.8), without knowing which.
//!
//! A [`DeviceRing`] belongs to one vring of one connection and is shared by
//! everyone who completes chains of that ring (its worker, the io_uring
//! engine's reaping, held commands completed by a TMF or a ring stop). Its
//! operations:
//!
//! - [`DeviceRing::pop`]: the next chain, checked, its descriptors walked
//!   into a scratch list; the chain's id (split: head index; packed:
//!   buffer id);
//! - [`DeviceRing::add_used`]: a chain's used entry (id, bytes written),
//!   in any order;
//! - [`DeviceRing::disable_notification`] / [`DeviceRing::enable_notification`]:
//!   the device's wish for available buffer notifications;
//! - [`DeviceRing::wants_call`]: whether the driver asked for a used buffer
//!   notification now;
//! - [`DeviceRing::has_avail`]: whether a chain is waiting (busy polling).
//!
//! The split format is virtio-queue's `Queue` with our own checked pop
//! ([`crate::vhost::ring_guard::split_pop`]). The packed format is
//! [`super::packed`]; vhost-user-backend still keeps a `Queue` per vring,
//! which holds what the frontend set: SET_VRING_NUM's size, SET_VRING_ADDR's
//! three addresses (for packed: descriptor ring, driver event area, device
//! event area, which virtio-queue's alignment checks of 16, 2 and 4 bytes
//! accept) and SET_VRING_BASE's value in `next_avail` (for packed: the avail
//! index with the wrap counter in bit 15, vhost-user "Ring states"). The
//! packed state keeps that value current after every pop, so GET_VRING_BASE
//! (which vhost-user-backend answers with `next_avail` after
//! `stop_vring`) returns the device's next avail position and wrap counter.
//!
//! The packed state starts (again) from the `Queue` when the ring is served
//! after it was stopped (GET_VRING_BASE), the device was reset or features
//! were set, or when the frontend changed the base, size or descriptor
//! address behind it. It then has nothing in flight (a ring stop completes
//! everything first), so its used position and wrap counter are the avail
//! ones: vhost-user-backend passes only 16 bits of SET_VRING_BASE, and a
//! stopped packed ring needs no more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::dirty::{GuestMem, VringState};
use super::notify::wants_call as split_wants_call;
use super::packed::event;
use super::packed::ring::{PackedRing, UsedError};
use super::packed::Position;
use super::ring_guard::{split_pop, RingViolation};

/// What a ring operation of the device itself could not do.
#[derive(Debug, thiserror::Error)]
pub enum RingOpError {
    /// virtio-queue's split ring operation failed.
    #[error(transparent)]
    Split(#[from] virtio_queue::Error),
    /// A packed used descriptor could not be written.
    #[error(transparent)]
    Used(#[from] UsedError),
    /// The packed device event suppression structure could not be written.
    #[error("device event suppression area at {addr:#x} is not in guest memory")]
    EventArea {
        /// Guest address.
        addr: u64,
    },
}

/// The packed side: the ring state once it started, and what it was
/// started from.
#[derive(Debug, Default)]
struct PackedSide {
    ring: Option<PackedRing>,
    /// Start again from the `Queue` at the next operation.
    restart: bool,
    /// The `Queue`'s (next_avail, size, descriptor address) the state
    /// matches: a difference means the frontend set the ring anew.
    synced: (u16, u16, u64),
    /// The used position at the last notification check.
    last_call: Option<Position>,
    /// Where the ring (re)started.
    start: Position,
}

impl PackedSide {
    /// The ring state, (re)started from `queue` when needed.
    fn ring(&mut self, queue: &Queue) -> &mut PackedRing {
        let now = (queue.next_avail(), queue.size(), queue.desc_table());
        if self.restart || self.synced != now || self.ring.is_none() {
            let avail = Position::decode(now.0);
            let desc = GuestAddress(now.2);
            match &mut self.ring {
                Some(r) => r.restart(desc, now.1, avail),
                None => self.ring = Some(PackedRing::new(desc, now.1, avail)),
            }
            (self.restart, self.synced) = (false, now);
            (self.last_call, self.start) = (None, avail);
        }
        self.ring.get_or_insert_with(|| {
            PackedRing::new(GuestAddress(now.2), now.1, Position::decode(now.0))
        })
    }
}

/// The ring of one vring, in the format the driver negotiated.
#[derive(Debug, Default)]
pub struct DeviceRing {
    packed: AtomicBool,
    side: Mutex<PackedSide>,
}

impl DeviceRing {
    /// A split ring until [`DeviceRing::set_packed`] says otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    fn side(&self) -> MutexGuard<'_, PackedSide> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The format the driver negotiated (VIRTIO_F_RING_PACKED, at
    /// SET_FEATURES); the packed state starts anew.
    pub fn set_packed(&self, packed: bool) {
        self.packed.store(packed, Ordering::Release);
        self.restart();
    }

    /// Whether the ring is packed.
    pub fn is_packed(&self) -> bool {
        self.packed.load(Ordering::Acquire)
    }

    /// The ring stopped (GET_VRING_BASE) or the device was reset: the packed
    /// state starts again from the `Queue` when the ring is next served.
    pub fn restart(&self) {
        self.side().restart = true;
    }

    /// Takes the next chain off the ring: its id, with its descriptors in
    /// `out`; `None` when the ring is empty. On a violation nothing is taken.
    pub fn pop(
        &self,
        queue: &mut Queue,
        mem: &GuestMem,
        out: &mut Vec<Descriptor>,
    ) -> Result<Option<u16>, RingViolation> {
        if !self.is_packed() {
            return split_pop(queue, mem, out);
        }
        let mut side = self.side();
        let ring = side.ring(queue);
        let id = ring.pop(mem, out)?;
        if id.is_some() {
            let base = ring.avail.encode();
            queue.set_next_avail(base);
            side.synced.0 = base;
        }
        Ok(id)
    }

    /// Completes the chain `id` with `len` bytes written into it.
    pub fn add_used(
        &self,
        state: &mut VringState,
        mem: &GuestMem,
        id: u16,
        len: u32,
    ) -> Result<(), RingOpError> {
        if !self.is_packed() {
            return Ok(state.add_used(id, len)?);
        }
        let mut side = self.side();
        Ok(side.ring(state.get_queue()).add_used(mem, id, len)?)
    }

    /// Asks the driver not to notify the device of new chains.
    pub fn disable_notification(
        &self,
        state: &mut VringState,
        mem: &GuestMem,
    ) -> Result<(), RingOpError> {
        if !self.is_packed() {
            return Ok(state.disable_notification()?);
        }
        let area = GuestAddress(state.get_queue().used_ring());
        event::disable(mem, area).map_err(|_| RingOpError::EventArea { addr: area.0 })
    }

    /// Asks the driver to notify the device of new chains again; whether a
    /// chain is already waiting (then the device goes on instead of
    /// sleeping).
    pub fn enable_notification(
        &self,
        state: &mut VringState,
        mem: &GuestMem,
    ) -> Result<bool, RingOpError> {
        if !self.is_packed() {
            return Ok(state.enable_notification()?);
        }
        let q = state.get_queue();
        let (area, event_idx) = (GuestAddress(q.used_ring()), q.event_idx_enabled());
        let mut side = self.side();
        let ring = side.ring(q);
        event::enable(mem, area, event_idx, ring.avail)
            .map_err(|_| RingOpError::EventArea { addr: area.0 })?;
        // The flags are visible before the ring is looked at again: a chain
        // made available after this either is seen now or is notified.
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(ring.has_avail(mem))
    }

    /// Whether the driver wants a used buffer notification now.
    pub fn wants_call(&self, state: &mut VringState, mem: &GuestMem) -> bool {
        if !self.is_packed() {
            return split_wants_call(state, mem);
        }
        let q = state.get_queue();
        let (area, event_idx) = (GuestAddress(q.avail_ring()), q.event_idx_enabled());
        let mut side = self.side();
        let side = &mut *side;
        let ring = side.ring(q);
        let (size, used) = (ring.size, ring.used);
        event::driver_wants_call(
            mem,
            area,
            size,
            event_idx,
            used,
            &mut side.last_call,
            side.start,
        )
    }

    /// Whether a chain is waiting on the ring.
    pub fn has_avail(&self, queue: &Queue, mem: &GuestMem) -> bool {
        if !self.is_packed() {
            return queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail());
        }
        self.side().ring(queue).has_avail(mem)
    }
}
