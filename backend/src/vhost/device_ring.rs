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
//! A split ring with an inflight region (vhost-user "Inflight I/O
//! tracking", [`super::inflight`]) records each head in it at `pop` and
//! clears it around `add_used`; the first `pop` after the ring (re)started
//! recovers the region and hands out the heads still in flight, in the
//! order they were first taken, before any new avail entry.
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
//! were set (once nothing is in flight), or when the frontend changed the
//! base, size or descriptor address behind it. It then has nothing in flight (a ring stop completes
//! everything first), so its used position and wrap counter are the avail
//! ones: vhost-user-backend passes only 16 bits of SET_VRING_BASE, and a
//! stopped packed ring needs no more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::dirty::{GuestMem, VringState};
use super::inflight::{Layout, QueueRegion, SplitTracker};
use super::inflight_packed::PackedTracker;
use super::notify::wants_call as split_wants_call;
use super::packed::event;
use super::packed::ring::{PackedRing, UsedError};
use super::packed::Position;
use super::queue_metrics::{QueueMetrics, TrustCounters};
use super::ring_guard::{split_pop, walk_chain, RingViolation};
use crate::ratelimit::LogLimit;

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
    /// The inflight region's tracking of this ring, when the frontend set
    /// one up with the packed layout.
    tracker: Option<PackedTracker>,
}

impl PackedSide {
    /// (Re)starts the ring state from `queue` when needed; the inflight
    /// tracking is then set up again at the next pop.
    fn sync(&mut self, queue: &Queue) {
        let now = (queue.next_avail(), queue.size(), queue.desc_table());
        // A restart asked for while chains are in flight on an unchanged
        // ring (SET_FEATURES again mid-run) waits until they are completed:
        // their used descriptors still go where the driver looks for them.
        let busy = self.ring.as_ref().is_some_and(|r| r.in_flight > 0);
        let restart = self.restart && !busy;
        if restart || self.synced != now || self.ring.is_none() {
            let avail = Position::decode(now.0);
            let desc = GuestAddress(now.2);
            match &mut self.ring {
                Some(r) => r.restart(desc, now.1, avail),
                None => self.ring = Some(PackedRing::new(desc, now.1, avail)),
            }
            (self.restart, self.synced) = (false, now);
            (self.last_call, self.start) = (None, avail);
            if let Some(t) = self.tracker.as_mut() {
                if busy {
                    // The frontend set the ring anew under chains in
                    // flight: the region no longer says where they are.
                    t.abandon("ring set anew with chains in flight");
                }
                t.restart();
            }
        }
    }

    /// Whether the inflight tracking has chains to hand out (or has yet
    /// to look): the next pop returns one before any avail descriptor.
    fn resubmit_pending(&self) -> bool {
        self.tracker
            .as_ref()
            .is_some_and(|t| !t.started() || t.has_resubmit())
    }

    /// The ring state, (re)started from `queue` when needed, and the
    /// inflight tracking beside it.
    fn parts(&mut self, queue: &Queue) -> (&mut PackedRing, Option<&mut PackedTracker>) {
        self.ring(queue);
        let ring = self.ring.get_or_insert_with(|| {
            PackedRing::new(
                GuestAddress(queue.desc_table()),
                queue.size(),
                Position::decode(queue.next_avail()),
            )
        });
        (ring, self.tracker.as_mut())
    }

    /// The ring state, (re)started from `queue` when needed.
    fn ring(&mut self, queue: &Queue) -> &mut PackedRing {
        self.sync(queue);
        self.ring.get_or_insert_with(|| {
            PackedRing::new(
                GuestAddress(queue.desc_table()),
                queue.size(),
                Position::decode(queue.next_avail()),
            )
        })
    }

    /// Sets the inflight tracking up at the first pop since the ring
    /// (re)started: the chains a previous device left in flight are
    /// adopted (in flight again, the avail position past them) and handed
    /// out first.
    fn start_tracking(&mut self, queue: &mut Queue, mem: &GuestMem) {
        let (Some(ring), Some(t)) = (self.ring.as_mut(), self.tracker.as_mut()) else {
            return;
        };
        if t.started() {
            return;
        }
        let desc = GuestAddress(queue.desc_table());
        let Some(rec) = t.start(ring.size, ring.used, ring.in_flight == 0, mem, desc) else {
            tracing::warn!(
                size = ring.size,
                "ring larger than its inflight region: not tracked"
            );
            return;
        };
        if rec.chains.is_empty() && rec.used == ring.used {
            if rec.dropped != 0 {
                tracing::warn!(
                    dropped = rec.dropped,
                    "inflight region recovered: nothing to resubmit"
                );
            }
            return;
        }
        ring.restart(desc, ring.size, rec.used);
        for &(id, count) in &rec.chains {
            // Ids are unique and the chains fit the ring (checked by the
            // recovery), so every adoption succeeds.
            if !ring.adopt(id, count) {
                t.abandon("a recovered chain does not fit the ring");
            }
        }
        tracing::info!(
            resubmitted = rec.chains.len(),
            dropped = rec.dropped,
            last_completion = ?rec.last,
            used = rec.used.encode(),
            next_avail = ring.avail.encode(),
            base = queue.next_avail(),
            "inflight region recovered: resubmitting the requests in flight"
        );
        let base = ring.avail.encode();
        queue.set_next_avail(base);
        self.synced.0 = base;
        (self.last_call, self.start) = (None, rec.used);
    }
}

/// Where a ring reports what it resubmits from an inflight region: the
/// audit log (`vscsi::audit`, action `inflight-resubmit`) names the
/// controller, connection and vring, and the controller's
/// [`super::queue_metrics::ReconnectCounters`] count the requests.
#[derive(Debug)]
pub struct RingReport {
    /// The controller's name.
    pub controller: Arc<str>,
    /// The connection (1, 2, ... per controller).
    pub connection: u64,
    /// The vring index (0 control, 1 event, 2 + n request queue n).
    pub vring: u16,
    /// The controller's counters, kept across connections.
    pub metrics: Arc<QueueMetrics>,
    /// The audit lines of this ring (one per recovery; a frontend that
    /// restarts the ring in a loop is limited).
    pub limit: LogLimit,
}

/// The ring of one vring, in the format the driver negotiated.
#[derive(Debug, Default)]
pub struct DeviceRing {
    packed: AtomicBool,
    side: Mutex<PackedSide>,
    /// The inflight region's tracking of a split ring, when the frontend
    /// set one up.
    inflight: Mutex<Option<SplitTracker>>,
    /// Where resubmissions are reported, once the device set it.
    report: OnceLock<RingReport>,
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
        // Only the packed state: SET_FEATURES may come mid-run (dirty
        // logging on or off) with heads in flight, which the inflight
        // tracking must not take for a previous daemon's and run again.
        self.side().restart = true;
    }

    /// Whether the ring is packed.
    pub fn is_packed(&self) -> bool {
        self.packed.load(Ordering::Acquire)
    }

    /// The ring stopped (GET_VRING_BASE) or the device was reset: the packed
    /// state starts again from the `Queue` when the ring is next served,
    /// and so does the inflight tracking.
    pub fn restart(&self) {
        self.side().restart = true;
        if let Some(t) = self.tracker().as_mut() {
            t.restart();
        }
    }

    fn tracker(&self) -> MutexGuard<'_, Option<SplitTracker>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks this ring's heads in `region` (GET_INFLIGHT_FD or
    /// SET_INFLIGHT_FD); set up (or recovered) at the next `pop`. A region
    /// of the split layout tracks the ring while it is split, one of the
    /// packed layout while it is packed.
    pub fn set_inflight(&self, region: Option<QueueRegion>) {
        let (split, packed) = match region {
            Some(q) if q.layout() == Layout::Packed => (None, Some(PackedTracker::new(q))),
            other => (other.map(SplitTracker::new), None),
        };
        *self.tracker() = split;
        self.side().tracker = packed;
    }

    /// Whether this ring has an inflight region.
    pub fn has_inflight(&self) -> bool {
        self.tracker().is_some() || self.side().tracker.is_some()
    }

    /// Reports resubmissions to `report` from now on (set once, by the
    /// device that owns the ring).
    pub fn report_to(&self, report: RingReport) {
        let _ = self.report.set(report);
    }

    /// The heads this ring has in flight in its inflight region (taken off
    /// the avail ring, not yet on the used ring); 0 without a region.
    pub fn inflight_heads(&self) -> usize {
        self.tracker().as_ref().map_or(0, SplitTracker::in_flight)
    }

    /// The audit event of a recovery that found requests to run again or
    /// a last batch to clear.
    fn report_recovery(&self, r: &super::inflight::Recovery, used: u16) {
        let Some(rep) = self.report.get() else {
            tracing::info!(
                resubmitted = r.resubmit.len(),
                cleared = r.cleared,
                used,
                next_avail = r.next_avail,
                "inflight region recovered: resubmitting the requests in flight"
            );
            return;
        };
        let s = crate::limited!(
            rep.limit,
            info,
            target: "vscsi::audit",
            controller = &*rep.controller,
            connection = rep.connection,
            vring = rep.vring,
            action = "inflight-resubmit",
            resubmitted = r.resubmit.len(),
            cleared = r.cleared,
            used,
            next_avail = r.next_avail,
            result = "ok",
            "inflight region recovered: resubmitting the requests in flight"
        );
        if s {
            TrustCounters::add(&rep.metrics.trust.log_suppressed);
        }
    }

    /// One request of the inflight region handed out again.
    fn count_resubmitted(&self) {
        if let Some(rep) = self.report.get() {
            rep.metrics
                .reconnect
                .resubmitted
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A split pop through the inflight tracking: set up at the first pop
    /// since the ring (re)started; the heads to resubmit first; then the
    /// avail ring, each head recorded.
    fn tracked_pop(
        &self,
        tracker: &mut SplitTracker,
        queue: &mut Queue,
        mem: &GuestMem,
        out: &mut Vec<Descriptor>,
    ) -> Result<Option<u16>, RingViolation> {
        if !tracker.started() {
            let used = queue
                .used_idx(mem, Ordering::Acquire)
                .map_err(|_| RingViolation::UsedUnreadable {
                    addr: queue.used_ring(),
                })?
                .0;
            match tracker.start(queue.size(), used) {
                Some(r) => {
                    if !r.resubmit.is_empty() || r.cleared != 0 {
                        self.report_recovery(&r, used);
                    }
                    queue.set_next_avail(r.next_avail);
                    queue.set_next_used(used);
                }
                None => tracing::warn!(
                    size = queue.size(),
                    "ring larger than its inflight region: not tracked"
                ),
            }
        }
        if let Some(head) = tracker.next_resubmit() {
            walk_chain(
                mem,
                GuestAddress(queue.desc_table()),
                queue.size(),
                head,
                out,
            )?;
            self.count_resubmitted();
            return Ok(Some(head));
        }
        let head = split_pop(queue, mem, out)?;
        if let Some(h) = head {
            tracker.taken(h);
        }
        Ok(head)
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
            return match self.tracker().as_mut() {
                Some(t) => self.tracked_pop(t, queue, mem, out),
                None => split_pop(queue, mem, out),
            };
        }
        let mut side = self.side();
        let side = &mut *side;
        side.sync(queue);
        if let Some(t) = side.tracker.as_mut() {
            if !t.started() {
                side.start_tracking(queue, mem);
            }
        }
        if let Some(id) = side
            .tracker
            .as_mut()
            .and_then(|t| t.next_resubmit(mem, out))
        {
            return Ok(Some(id));
        }
        let (ring, tracker) = side.parts(queue);
        let id = ring.pop(mem, out)?;
        if let Some(id) = id {
            if let Some(t) = tracker {
                t.taken(id, ring.chain());
            }
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
            let mut tracker = self.tracker();
            let Some(t) = tracker.as_mut().filter(|t| t.started()) else {
                return Ok(state.add_used(id, len)?);
            };
            t.before_used(id);
            state.add_used(id, len)?;
            t.after_used(id, state.get_queue().next_used());
            return Ok(());
        }
        let mut side = self.side();
        let side = &mut *side;
        let (ring, tracker) = side.parts(state.get_queue());
        let Some(t) = tracker.filter(|t| t.active()) else {
            return Ok(ring.add_used(mem, id, len)?);
        };
        let Some(count) = ring.count(id) else {
            return Err(UsedError::NotInFlight { id }.into());
        };
        t.before_used(id, count);
        match ring.add_used(mem, id, len) {
            Ok(()) => {
                t.after_used(id);
                Ok(())
            }
            Err(e) => {
                t.abandon("a used descriptor could not be written");
                Err(e.into())
            }
        }
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
        Ok(ring.has_avail(mem) || side.resubmit_pending())
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

    /// A packed ring's device state: the next avail and used positions
    /// (vhost-user ring state form, wrap counter in bit 15) and the ring
    /// descriptors taken and not yet used; `None` for a split ring or one
    /// not served yet. For checks from outside (tests, fuzzing).
    pub fn packed_state(&self) -> Option<(u16, u16, u32)> {
        if !self.is_packed() {
            return None;
        }
        let side = self.side();
        side.ring
            .as_ref()
            .map(|r| (r.avail.encode(), r.used.encode(), r.in_flight))
    }

    /// Whether a chain is waiting on the ring.
    pub fn has_avail(&self, queue: &Queue, mem: &GuestMem) -> bool {
        if !self.is_packed() {
            return queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail());
        }
        let mut side = self.side();
        side.ring(queue).has_avail(mem) || side.resubmit_pending()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use vhost_user_backend::VringT;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};

    use crate::fault::FaultTable;
    use crate::scsi::{LogicalUnit, LunOptions, ScsiBus};
    use crate::vhost::dirty::{GuestMem, Vring};
    use crate::vhost::packed::event::{FLAGS_DISABLE, FLAGS_ENABLE};
    use crate::vhost::packed::{F_AVAIL, F_NEXT, F_USED, F_WRITE};
    use crate::vhost::queue_metrics::QueueMetrics;
    use crate::vhost::request_queue::{QueueShared, RequestQueue};
    use crate::vhost::response::RESP_SIZE;

    const RING: u64 = 0x1000;
    const DRIVER: u64 = 0x2000;
    const DEVICE: u64 = 0x3000;

    fn put(m: &GuestMem, index: u64, addr: u64, len: u32, id: u16, flags: u16) {
        let at = RING + 16 * index;
        m.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
        m.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
        m.write_obj(id.to_le(), GuestAddress(at + 12)).unwrap();
        m.write_obj(flags.to_le(), GuestAddress(at + 14)).unwrap();
    }

    /// A READ(10) of one block at LBA `lba` as a three-descriptor chain at
    /// ring index `at` with buffer id `id` (wrap counter 1).
    fn offer_read(m: &GuestMem, at: u64, id: u16, lba: u8) {
        let req_at = 0x10000 + 0x1000 * at;
        let mut req = [0u8; 51];
        req[..4].copy_from_slice(&[1, 0, 0x40, 0]);
        req[19..29].copy_from_slice(&[0x28, 0, 0, 0, 0, lba, 0, 0, 1, 0]);
        m.write_slice(&req, GuestAddress(req_at)).unwrap();
        put(
            m,
            at + 1,
            req_at + 0x100,
            RESP_SIZE as u32,
            0,
            F_AVAIL | F_WRITE | F_NEXT,
        );
        put(m, at + 2, req_at + 0x200, 512, id, F_AVAIL | F_WRITE);
        put(m, at, req_at, 51, 0, F_AVAIL | F_NEXT);
    }

    fn used(m: &GuestMem, index: u64) -> (u32, u16, u16) {
        let at = RING + 16 * index;
        (
            m.read_obj::<u32>(GuestAddress(at + 8)).unwrap(),
            m.read_obj::<u16>(GuestAddress(at + 12)).unwrap(),
            m.read_obj::<u16>(GuestAddress(at + 14)).unwrap(),
        )
    }

    #[test]
    fn a_request_queue_serves_a_packed_ring_and_syncs_the_vring_base() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let mut img = tempfile::NamedTempFile::new().unwrap();
        let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i / 512) as u8).collect();
        img.write_all(&image).unwrap();
        let mut bus = ScsiBus::new();
        let lu = LogicalUnit::open(img.path(), LunOptions::default()).unwrap();
        bus.add_lun(0, 0, Arc::new(lu)).unwrap();

        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vring = Vring::new(atomic.clone(), 16).unwrap();
        vring.set_queue_size(16);
        vring.set_queue_info(RING, DRIVER, DEVICE).unwrap();
        // SET_VRING_BASE: index 0, wrap counter 1.
        vring.set_queue_next_avail(0x8000);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let shared = Arc::new(QueueShared::new(0));
        shared.ring.set_packed(true);
        let mut q = RequestQueue::new(
            shared.clone(),
            Arc::new(FaultTable::default()),
            vscsi_poll::Poll::Off,
            Arc::new(QueueMetrics::default()),
        );

        offer_read(&mem, 0, 9, 3);
        q.process(&vring, &atomic, &bus).unwrap();
        // One used descriptor at index 0: id 9, header + 512 bytes, flags
        // AVAIL|USED|WRITE (wrap counter 1).
        assert_eq!(
            used(&mem, 0),
            (RESP_SIZE as u32 + 512, 9, F_AVAIL | F_USED | F_WRITE)
        );
        let mut block = [0u8; 512];
        mem.read_slice(&mut block, GuestAddress(0x10200)).unwrap();
        assert!(block.iter().all(|&b| b == 3), "LBA 3's bytes");
        // The device asked for kicks again when it went to sleep.
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(DEVICE + 2)).unwrap(),
            FLAGS_ENABLE
        );
        // What GET_VRING_BASE answers: index 3, wrap counter 1.
        assert_eq!(vring.get_ref().get_queue().next_avail(), 0x8003);

        // A ring stop and restart at that base within the connection.
        shared.ring.restart();
        vring.set_queue_ready(false);
        vring.set_queue_next_avail(0x8003);
        vring.set_queue_ready(true);
        offer_read(&mem, 3, 4, 5);
        q.process(&vring, &atomic, &bus).unwrap();
        assert_eq!(
            used(&mem, 3),
            (RESP_SIZE as u32 + 512, 4, F_AVAIL | F_USED | F_WRITE)
        );
        assert_eq!(vring.get_ref().get_queue().next_avail(), 0x8006);

        // A frontend that re-creates the ring (queue reset) at base 0x8000
        // with a zeroed ring is served from index 0 again.
        mem.write_slice(&[0u8; 16 * 16], GuestAddress(RING))
            .unwrap();
        vring.set_queue_ready(false);
        vring.set_queue_next_avail(0x8000);
        vring.set_queue_ready(true);
        offer_read(&mem, 0, 1, 7);
        q.process(&vring, &atomic, &bus).unwrap();
        assert_eq!(used(&mem, 0).1, 1);
        assert_eq!(vring.get_ref().get_queue().next_avail(), 0x8003);

        // A chain whose data buffer is outside guest memory is well formed:
        // answered VIRTIO_SCSI_S_FAILURE (response byte 9 at offset 11 of
        // the header), and the queue goes on.
        offer_read(&mem, 3, 2, 1);
        put(&mem, 5, 0xFFFF_0000, 512, 2, F_AVAIL | F_WRITE);
        q.process(&vring, &atomic, &bus).unwrap();
        let (len, id, _) = used(&mem, 3);
        assert_eq!(id, 2);
        assert_eq!(len, RESP_SIZE as u32, "the header is written");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x13100 + 11)).unwrap(), 9);
        offer_read(&mem, 6, 3, 2);
        q.process(&vring, &atomic, &bus).unwrap();
        assert_eq!(
            used(&mem, 6),
            (RESP_SIZE as u32 + 512, 3, F_AVAIL | F_USED | F_WRITE)
        );

        // A driver that asks for no notifications: the device still
        // completes, and disabling kicks while working is visible.
        mem.write_obj(FLAGS_DISABLE, GuestAddress(DRIVER + 2))
            .unwrap();
        let ring = &shared.ring;
        let mut state = vring.get_mut();
        assert!(!ring.wants_call(&mut state, &mem));
        ring.disable_notification(&mut state, &mem).unwrap();
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(DEVICE + 2)).unwrap(),
            FLAGS_DISABLE
        );
    }

    #[test]
    fn a_restart_with_chains_in_flight_waits_for_their_completion() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vring = Vring::new(atomic, 16).unwrap();
        vring.set_queue_size(16);
        vring.set_queue_info(RING, DRIVER, DEVICE).unwrap();
        vring.set_queue_next_avail(0x8000);
        vring.set_queue_ready(true);
        let ring = super::DeviceRing::new();
        ring.set_packed(true);
        put(&mem, 0, 0x10000, 16, 7, F_AVAIL);
        let mut out = Vec::new();
        let mut state = vring.get_mut();
        assert_eq!(ring.pop(state.get_queue_mut(), &mem, &mut out), Ok(Some(7)));
        // SET_FEATURES again while id 7 is in flight: it still completes,
        // at index 0, and the restart happens once nothing is in flight.
        ring.set_packed(true);
        ring.add_used(&mut state, &mem, 7, 0).unwrap();
        assert_eq!(used(&mem, 0), (0, 7, F_AVAIL | F_USED));
        assert_eq!(ring.packed_state(), Some((0x8001, 0x8001, 0)));
        assert!(
            ring.add_used(&mut state, &mem, 7, 0).is_err(),
            "not in flight"
        );
    }
}
