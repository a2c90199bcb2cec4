//! The one queue engine, for request, control and event queues alike: a
//! ring, fixed slots in shared memory, the in-flight table and the
//! completion task.
//!
//! Each slot owns a header area (request at 0, response half-way: for a
//! request queue `virtio_scsi_cmd_req` + `virtio_scsi_cmd_resp`) and a data
//! buffer of `max_transfer` bytes (none for the control and event queues),
//! so a command costs no set-up beyond copying its CDB and data. Queues
//! share nothing: each has its own lock, kick and call eventfds and task.
//!
//! Slot lifetime: a slot is taken when a command is submitted and comes back
//! exactly once: when the [`Completed`] value carrying it is dropped, when
//! its waiter sees it failed, or, if the waiter gave up (dropped its
//! [`Pending`]), when the device finally returns it. A slot is therefore
//! never reused while the device may still write into it.
//!
//! Per command there is no heap allocation and no timer: the waiter and the
//! completion task meet in the slot's [`SlotCell`] (atomics and an
//! `AtomicWaker`), and one watchdog tick for the whole driver marks the
//! commands whose deadline passed ([`SlotQueue::expire`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;
use vscsi_protocol::cdb::Cdb;
use vscsi_protocol::virtio_scsi::{task_attr, CmdReq, CmdResp, CDB_SIZE};
use zerocopy::little_endian::U64;
use zerocopy::{FromZeros, IntoBytes};

use crate::error::{Error, Result};
use crate::interrupt::CompletionSource;
use crate::link::Link;
use crate::memory::{SharedMemory, SharedSlice};
use crate::ring::{RingError, Segment, Virtqueue, VirtqueueFormat};
use crate::stats::{LunStats, LunTable, QueueStats};
use vscsi_poll::Poll;

mod slot;

pub(crate) use slot::{
    Completed, Deadline, Outcome, Pending, RawResponse, FAIL_DISCONNECTED, FAIL_GONE,
};
use slot::{
    SlotCell, SlotGuard, ABANDONED, DONE, FAILED, FAIL_BROKEN, FAIL_CLOSED, FAIL_RESET, IDLE,
    IN_FLIGHT,
};

/// Bytes reserved per request-queue slot for the request and response
/// headers (the response starts half-way, see [`QueuePlacement::header_area`]).
pub(crate) const HEADER_AREA: usize = 256;
const REQ_SIZE: usize = size_of::<CmdReq>();
const RESP_SIZE: usize = size_of::<CmdResp>();
/// Bytes of `CmdResp` before `sense`.
const RESP_FIXED: usize = 12;

/// Where a queue's pieces sit in the shared region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuePlacement {
    /// Offset of the ring (see `RingFormat::ring_bytes`).
    pub ring: usize,
    /// Offset of `slots * header_area` bytes of headers.
    pub headers: usize,
    /// Header bytes per slot: the device-readable request at 0, the
    /// device-writable response at `header_area / 2`.
    pub header_area: usize,
    /// Offset of `slots * max_transfer` bytes of data buffers.
    pub data: usize,
    /// Number of request slots.
    pub slots: u16,
    /// Data buffer bytes per slot (0 for the control and event queues).
    pub max_transfer: usize,
}

/// What the ring lock keeps per head on the ring.
#[derive(Clone, Copy)]
struct Head {
    slot: u16,
    tag: u64,
    lun: [u8; 8],
    started: Instant,
    /// On the ring when the connection was lost and left there for the
    /// device that took over (which resubmits it from the inflight region).
    carried: bool,
}

struct Inner {
    ring: Virtqueue,
    /// Indexed by ring head id.
    heads: Box<[Option<Head>]>,
    broken: Option<RingError>,
}

/// A command the device has not completed yet (see [`crate::Driver::in_flight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightCommand {
    /// Request queue.
    pub queue: u16,
    /// The command's tag (what ABORT TASK names).
    pub tag: u64,
    /// Its 8-byte virtio LUN field.
    pub lun: [u8; 8],
    /// How long it has been in flight.
    pub age: Duration,
}

/// State shared by submitters and the completion task of one queue.
///
/// Two small locks, both per queue: `inner` (the ring, taken to offer and
/// to reap) and `free` (the slot free list). Completion and waiting go
/// through the lock-free [`SlotCell`]s.
pub(crate) struct SlotQueue {
    /// "request", "control" or "event".
    name: &'static str,
    index: u16,
    mem: Arc<SharedMemory>,
    place: QueuePlacement,
    inner: Mutex<Inner>,
    free: Mutex<Vec<u16>>,
    cells: Box<[SlotCell]>,
    slots_free: Semaphore,
    next_tag: AtomicU64,
    kick: EventFd,
    /// A clone of the call eventfd, to hand to the device again after a reset.
    call: EventFd,
    kicks: AtomicU64,
    calls: AtomicU64,
    completions: AtomicU64,
    /// Completions the watchdog took ([`SlotQueue::rescue`]).
    rescued: AtomicU64,
    in_flight: AtomicU32,
    /// Commands carried over a reconnect that completed afterwards.
    resubmitted: AtomicU64,
    /// Commands failed because the connection was lost.
    disconnect_failures: AtomicU64,
    broken: AtomicBool,
    closed: AtomicBool,
    /// The connection's state: submissions wait while it is down.
    link: Arc<Link>,
    epoch: Instant,
    /// Per-LUN metrics of the commands this queue carried.
    stats: Mutex<LunTable>,
}

impl SlotQueue {
    pub(crate) fn new(
        name: &'static str,
        index: u16,
        mem: Arc<SharedMemory>,
        place: QueuePlacement,
        ring: Virtqueue,
        (kick, call): (EventFd, EventFd),
        link: Arc<Link>,
    ) -> Self {
        let size = ring.size() as usize;
        Self {
            name,
            index,
            mem,
            place,
            inner: Mutex::new(Inner {
                ring,
                heads: vec![None; size].into_boxed_slice(),
                broken: None,
            }),
            free: Mutex::new((0..place.slots).rev().collect()),
            cells: (0..place.slots).map(|_| SlotCell::new()).collect(),
            slots_free: Semaphore::new(place.slots as usize),
            next_tag: AtomicU64::new(1),
            kick,
            call,
            kicks: Default::default(),
            calls: Default::default(),
            completions: Default::default(),
            rescued: Default::default(),
            in_flight: AtomicU32::new(0),
            resubmitted: Default::default(),
            disconnect_failures: Default::default(),
            broken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            link,
            epoch: Instant::now(),
            stats: Mutex::default(),
        }
    }

    /// This queue's index: among the request queues, or the virtqueue index (control 0, event 1).
    pub(crate) fn index(&self) -> u16 {
        self.index
    }

    /// Updates the metrics of `target:lun` (this queue's share).
    pub(crate) fn record(&self, target: u8, lun: u16, f: impl FnOnce(&mut LunStats)) {
        let mut t = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(t.entry((target, lun)).or_default());
    }

    /// This queue's per-LUN metrics, merged into `into`.
    pub(crate) fn merge_stats(&self, into: &mut LunTable) {
        let t = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in t.iter() {
            into.entry(*k).or_default().merge(v);
        }
    }

    /// Counters of this queue.
    pub(crate) fn queue_stats(&self) -> QueueStats {
        QueueStats {
            index: self.index,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            slots: u32::from(self.place.slots),
            kicks: self.kicks(),
            calls: self.calls.load(Ordering::Relaxed),
            completions: self.completions.load(Ordering::Relaxed),
        }
    }

    /// Commands in flight on this queue.
    pub(crate) fn in_flight(&self) -> Vec<InFlightCommand> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .heads
            .iter()
            .flatten()
            .map(|h| InFlightCommand {
                queue: self.index,
                tag: h.tag,
                lun: h.lun,
                age: now.duration_since(h.started),
            })
            .collect()
    }

    /// Call eventfd notifications the completion task received.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How many times the driver kicked the device (notification suppression shows here).
    pub(crate) fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    /// Bytes one command may move.
    pub(crate) fn max_transfer(&self) -> usize {
        self.place.max_transfer
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn header_off(&self, slot: u16) -> usize {
        self.place.headers + slot as usize * self.place.header_area
    }

    /// Where the device writes the response of `slot`.
    fn resp_off(&self, slot: u16) -> usize {
        self.header_off(slot) + self.place.header_area / 2
    }

    fn data_off(&self, slot: u16) -> usize {
        self.place.data + slot as usize * self.place.max_transfer
    }

    /// Gives `slot` back to the free list.
    fn release(&self, slot: u16) {
        let cell = &self.cells[usize::from(slot)];
        cell.expired.store(false, Ordering::Relaxed);
        cell.deadline.store(u64::MAX, Ordering::Relaxed);
        cell.state.store(IDLE, Ordering::Release);
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
        self.slots_free.add_permits(1);
    }

    /// Ends the command in `slot` (`DONE` with the device's used length, or
    /// `FAILED` with a reason) and wakes its waiter, or frees the slot if
    /// the waiter is gone.
    fn finish(&self, slot: u16, state: u8, used_len: u32, failure: u8) {
        let cell = &self.cells[usize::from(slot)];
        cell.used_len.store(used_len, Ordering::Relaxed);
        cell.failure.store(failure, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match cell
            .state
            .compare_exchange(IN_FLIGHT, state, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => cell.waker.wake(),
            Err(ABANDONED) => self.release(slot),
            Err(s) => error!(
                queue = self.index,
                slot,
                state = s,
                "completion of a slot not in flight"
            ),
        }
    }

    fn failure_error(&self, why: u8) -> Error {
        match why {
            FAIL_RESET => Error::QueueReset { queue: self.index },
            FAIL_DISCONNECTED => Error::Disconnected {
                queue_kind: self.name,
                queue: self.index,
            },
            FAIL_GONE => self.link.gone_error(),
            FAIL_BROKEN => match &self.lock().broken {
                Some(e) => Error::DeviceBroken {
                    queue: self.index,
                    source: e.clone(),
                },
                None => Error::QueueReset { queue: self.index },
            },
            _ => Error::Closed,
        }
    }

    /// Offers one command to the device, waiting for a free slot; the
    /// returned [`Pending`] resolves when the device completes it or
    /// `deadline` passes (see [`SlotQueue::expire`]).
    pub(crate) async fn start(
        self: &Arc<Self>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out: &[u8],
        data_in_len: usize,
        deadline: Deadline,
    ) -> Result<Pending> {
        self.check_len(data_out.len(), data_in_len)?;
        let slot = self.take_slot().await?;
        self.fill_and_offer(slot, lun, cdb, data_out, data_in_len, deadline)
    }

    /// [`SlotQueue::start`] if a slot is free now; `None` otherwise.
    pub(crate) fn try_start(
        self: &Arc<Self>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out: &[u8],
        data_in_len: usize,
        deadline: Deadline,
    ) -> Result<Option<Pending>> {
        self.check_len(data_out.len(), data_in_len)?;
        let Some(slot) = self.try_take_slot()? else {
            return Ok(None);
        };
        self.fill_and_offer(slot, lun, cdb, data_out, data_in_len, deadline)
            .map(Some)
    }

    fn fill_and_offer(
        self: &Arc<Self>,
        slot: SlotGuard<'_>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out: &[u8],
        data_in_len: usize,
        deadline: Deadline,
    ) -> Result<Pending> {
        if !data_out.is_empty() {
            self.mem.write(self.data_off(slot.slot), data_out)?;
        }
        self.offer(slot, lun, cdb, data_out.len(), data_in_len, deadline)
    }

    /// [`SlotQueue::start`] with the data-out bytes written in place by
    /// `fill`, which gets the slot's buffer in shared memory (zero-copy).
    /// `fill` runs before the slot is offered, so the device cannot see the buffer yet.
    pub(crate) async fn start_filled<T>(
        self: &Arc<Self>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out_len: usize,
        deadline: Deadline,
        fill: impl FnOnce(SharedSlice<'_>) -> T,
    ) -> Result<(Pending, T)> {
        self.check_len(data_out_len, 0)?;
        let slot = self.take_slot().await?;
        // The slot was just taken off the free list, so no other command
        // uses its buffer, and it is not on the ring yet, so a device keeping
        // the ring contract does not read it before `offer`.
        let out = fill(self.mem.slice(self.data_off(slot.slot), data_out_len)?);
        let pending = self.offer(slot, lun, cdb, data_out_len, 0, deadline)?;
        Ok((pending, out))
    }

    fn check_len(&self, data_out_len: usize, data_in_len: usize) -> Result<()> {
        let max = self.place.max_transfer;
        if data_out_len > max || data_in_len > max {
            return Err(Error::TransferTooLarge {
                len: data_out_len.max(data_in_len),
                max,
            });
        }
        Ok(())
    }

    /// Takes a free request slot, waiting for one (and, while the driver
    /// reconnects, for the connection: see [`Link::ready`]).
    async fn take_slot(&self) -> Result<SlotGuard<'_>> {
        self.link.ready().await?;
        self.slots_free
            .acquire()
            .await
            .map_err(|_| Error::Closed)?
            .forget();
        self.pop_free()
    }

    /// Takes a free request slot if there is one now.
    fn try_take_slot(&self) -> Result<Option<SlotGuard<'_>>> {
        if !self.link.is_up() {
            return Ok(None);
        }
        match self.slots_free.try_acquire() {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Ok(None),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
        }
        self.pop_free().map(Some)
    }

    /// The free-list half of taking a slot, once a permit is held.
    fn pop_free(&self) -> Result<SlotGuard<'_>> {
        if self.broken.load(Ordering::Relaxed) {
            self.slots_free.add_permits(1);
            return Err(self.failure_error(FAIL_BROKEN));
        }
        let Some(slot) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
            self.slots_free.add_permits(1);
            return Err(Error::Closed);
        };
        Ok(SlotGuard {
            queue: self,
            slot,
            armed: true,
        })
    }

    /// Puts the request of `slot` on the ring and kicks if needed.
    fn offer(
        self: &Arc<Self>,
        slot: SlotGuard<'_>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out_len: usize,
        data_in_len: usize,
        deadline: Deadline,
    ) -> Result<Pending> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1)
            | u64::from(self.index) << 48;
        let mut req = CmdReq::new_zeroed();
        req.lun = lun;
        req.tag = U64::new(tag);
        req.task_attr = task_attr::SIMPLE;
        let bytes = cdb.as_bytes();
        req.cdb[..bytes.len().min(CDB_SIZE)].copy_from_slice(&bytes[..bytes.len().min(CDB_SIZE)]);
        let hdr = self.header_off(slot.slot);
        let data = self.data_off(slot.slot);
        // The slot is ours and off the ring: its header area is written before it is offered.
        self.mem.write(hdr, req.as_bytes())?;
        let mut segs = [Segment {
            gpa: 0,
            len: 0,
            device_writes: false,
        }; 4];
        let mut n = 0;
        let mut push = |gpa: u64, len: usize, device_writes: bool| {
            segs[n] = Segment {
                gpa,
                len: len as u32,
                device_writes,
            };
            n += 1;
        };
        push(self.mem.gpa(hdr), REQ_SIZE, false);
        if data_out_len > 0 {
            push(self.mem.gpa(data), data_out_len, false);
        }
        push(self.mem.gpa(self.resp_off(slot.slot)), RESP_SIZE, true);
        if data_in_len > 0 {
            push(self.mem.gpa(data), data_in_len, true);
        }
        self.offer_segments(slot, &segs[..n], tag, lun, deadline)
    }

    /// A control or event request: `req` (device-readable, may be empty)
    /// in the slot's header area and a `resp_len`-byte device-writable
    /// buffer after it, offered once a slot is free; no deadline (the
    /// caller bounds the wait). The answer is [`Completed::read_reply`].
    pub(crate) async fn call(
        self: &Arc<Self>,
        req: &[u8],
        resp_len: usize,
        lun: [u8; 8],
        tag: u64,
    ) -> Result<Pending> {
        let half = self.place.header_area / 2;
        if req.len() > half || resp_len > half || resp_len == 0 {
            return Err(Error::TransferTooLarge {
                len: req.len().max(resp_len),
                max: half,
            });
        }
        let slot = self.take_slot().await?;
        let hdr = self.header_off(slot.slot);
        self.mem.write(hdr, req)?;
        let resp = Segment::writable(self.mem.gpa(self.resp_off(slot.slot)), resp_len as u32);
        let deadline = Deadline {
            started: Instant::now(),
            at: None,
        };
        if req.is_empty() {
            self.offer_segments(slot, &[resp], tag, lun, deadline)
        } else {
            let req = Segment::readable(self.mem.gpa(hdr), req.len() as u32);
            self.offer_segments(slot, &[req, resp], tag, lun, deadline)
        }
    }

    /// Puts the chain `segs` of `slot` on the ring, publishes it and kicks
    /// if the device asked: the part of offering that every queue shares.
    fn offer_segments(
        self: &Arc<Self>,
        mut slot: SlotGuard<'_>,
        segs: &[Segment],
        tag: u64,
        lun: [u8; 8],
        deadline: Deadline,
    ) -> Result<Pending> {
        let cell = &self.cells[usize::from(slot.slot)];
        let at = deadline.at.map_or(u64::MAX, |d| {
            d.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        cell.deadline.store(at, Ordering::Relaxed);
        cell.expired.store(false, Ordering::Relaxed);

        let mut inner = self.lock();
        if let Some(e) = &inner.broken {
            return Err(Error::DeviceBroken {
                queue: self.index,
                source: e.clone(),
            });
        }
        let head = match inner.ring.add(segs) {
            Ok(head) => head,
            Err(e) => {
                return Err(Error::DeviceBroken {
                    queue: self.index,
                    source: e,
                });
            }
        };
        let slot = slot.disarm();
        cell.state.store(IN_FLIGHT, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        inner.heads[head as usize] = Some(Head {
            slot,
            tag,
            lun,
            started: deadline.started,
            carried: false,
        });
        if inner.ring.publish() {
            self.kicks.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.kick.write(1) {
                warn!(queue = self.index, error = %e, "kick failed: the device is gone");
                self.link.lost();
            }
        }
        // While submitters are busy, completions the device already
        // published are taken here, without waiting for its notification.
        self.pop_completed(&mut inner);
        drop(inner);
        Ok(Pending {
            queue: self.clone(),
            slot,
            tag,
            live: true,
        })
    }

    /// Completions taken off this queue's used ring so far (by the
    /// completion task or by submitters): a polling completion task sees
    /// the work a submitter reaped before it.
    pub(crate) fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    /// Whether the device published completions not yet taken (a broken
    /// ring has none to take: it is not polled).
    pub(crate) fn has_used(&self) -> bool {
        let inner = self.lock();
        inner.broken.is_none() && inner.ring.has_used()
    }

    /// Takes every completion the device has published with used-buffer
    /// notifications disabled (the polling completion task: the device
    /// need not signal while it spins). Returns false once the queue is
    /// closed.
    pub(crate) fn reap_polling(&self) -> bool {
        let mut inner = self.lock();
        inner.ring.disable_interrupts();
        self.pop_completed(&mut inner);
        !self.closed.load(Ordering::Relaxed)
    }

    /// Takes every completion the device has published and wakes its
    /// waiter; marks the queue broken if the device broke the ring
    /// contract. Does not re-arm the device's notification (`used_event`):
    /// the completion task does that before it sleeps, so a completion this
    /// takes first only makes its wake-up spurious.
    fn pop_completed(&self, inner: &mut Inner) {
        if inner.broken.is_some() {
            return;
        }
        loop {
            match inner.ring.pop_used() {
                Ok(Some((head, len))) => {
                    let Some(h) = inner.heads.get_mut(head as usize).and_then(Option::take) else {
                        // The ring validated the id; a missing entry is our bug, not the device's.
                        error!(
                            queue = self.index,
                            head, "completion for a head with no waiter"
                        );
                        continue;
                    };
                    self.completions.fetch_add(1, Ordering::Relaxed);
                    if h.carried {
                        self.resubmitted.fetch_add(1, Ordering::Relaxed);
                    }
                    self.finish(h.slot, DONE, len, 0);
                }
                Ok(None) => return,
                Err(e) => {
                    error!(queue = self.index, error = %e, "device broke the ring contract; queue disabled until it is reset");
                    inner.broken = Some(e);
                    self.broken.store(true, Ordering::Relaxed);
                    for h in inner.heads.iter_mut().filter_map(Option::take) {
                        self.finish(h.slot, FAILED, 0, FAIL_BROKEN);
                    }
                    return;
                }
            }
        }
    }

    /// Drains the used ring, waking the submitters, and re-arms the
    /// device's notification. Returns false once the queue is closed.
    fn reap(&self) -> bool {
        let mut inner = self.lock();
        loop {
            self.pop_completed(&mut inner);
            if inner.broken.is_some() || !inner.ring.enable_interrupts() {
                return !self.closed.load(Ordering::Relaxed);
            }
        }
    }

    /// Marks the commands whose deadline passed by `now` as expired and
    /// wakes their waiters (the watchdog's tick; one timer for the whole
    /// driver instead of one per command).
    pub(crate) fn expire(&self, now: Instant) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        for cell in self.cells.iter() {
            if cell.state.load(Ordering::Acquire) == IN_FLIGHT
                && cell.deadline.load(Ordering::Relaxed) <= now
                && !cell.expired.swap(true, Ordering::Relaxed)
            {
                cell.waker.wake();
            }
        }
    }

    /// Re-creates the ring after the device stopped it (GET_VRING_BASE):
    /// what the device completed while stopping is delivered, every other
    /// command still on the ring fails with [`Error::QueueReset`], the ring
    /// is zeroed and `restart` hands it to the device again (with this
    /// queue's kick and call eventfds). Clears a broken state. Returns how
    /// many commands failed.
    pub(crate) fn reset(
        &self,
        restart: impl FnOnce(&Virtqueue, &EventFd, &EventFd) -> Result<()>,
    ) -> Result<usize> {
        self.reset_failing(FAIL_RESET, restart)
    }

    /// [`SlotQueue::reset`], failing the commands on the ring with `why`
    /// (`FAIL_DISCONNECTED` after a reconnect without inflight tracking).
    pub(crate) fn reset_failing(
        &self,
        why: u8,
        restart: impl FnOnce(&Virtqueue, &EventFd, &EventFd) -> Result<()>,
    ) -> Result<usize> {
        self.reap();
        let mut inner = self.lock();
        let failed = self.fail_heads(&mut inner, why);
        inner.ring.reset()?;
        inner.broken = None;
        self.broken.store(false, Ordering::Relaxed);
        restart(&inner.ring, &self.kick, &self.call)?;
        debug!(queue = self.index, failed, "queue reset");
        Ok(failed)
    }

    /// Fails every command on the ring with `why`; returns how many.
    fn fail_heads(&self, inner: &mut Inner, why: u8) -> usize {
        let mut failed = 0;
        for h in inner.heads.iter_mut().filter_map(Option::take) {
            self.finish(h.slot, FAILED, 0, why);
            failed += 1;
        }
        if failed > 0 && matches!(why, FAIL_DISCONNECTED | FAIL_GONE) {
            self.disconnect_failures
                .fetch_add(failed as u64, Ordering::Relaxed);
        }
        failed
    }

    /// Hands the ring, as it is, to the device that took over after the
    /// connection was lost (`restart`: SET_VRING_NUM/ADDR/BASE with the
    /// ring's next avail index, CALL, KICK, ENABLE), then kicks. The
    /// commands on it stay: the device resubmits those its predecessor had
    /// taken (from the inflight region) and takes the others from the avail
    /// ring. Returns how many were carried over.
    pub(crate) fn carry_over(
        &self,
        restart: impl FnOnce(&Virtqueue, &EventFd, &EventFd) -> Result<()>,
    ) -> Result<usize> {
        self.reap();
        let mut inner = self.lock();
        let mut carried = 0;
        for h in inner.heads.iter_mut().flatten() {
            h.carried = true;
            carried += 1;
        }
        restart(&inner.ring, &self.kick, &self.call)?;
        self.kicks.fetch_add(1, Ordering::Relaxed);
        let _ = self.kick.write(1);
        Ok(carried)
    }

    /// Fails every command on the ring with `why` and leaves the ring as
    /// it is (the device is gone for good); returns how many.
    pub(crate) fn fail_all(&self, why: u8) -> usize {
        let mut inner = self.lock();
        self.fail_heads(&mut inner, why)
    }

    /// Commands carried over a reconnect that completed afterwards.
    pub(crate) fn resubmitted(&self) -> u64 {
        self.resubmitted.load(Ordering::Relaxed)
    }

    /// Commands failed because the connection was lost.
    pub(crate) fn disconnect_failures(&self) -> u64 {
        self.disconnect_failures.load(Ordering::Relaxed)
    }

    /// Commands on the ring now.
    pub(crate) fn in_flight_now(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The completion task: reaps, polls the used ring per `poll`, then
    /// sleeps on the call eventfd.
    pub(crate) async fn run_completions(self: Arc<Self>, call: EventFd, poll: Poll) {
        let queue = if self.name == "request" {
            format!("request {}", self.index)
        } else {
            self.name.to_owned()
        };
        crate::interrupt::completion_loop(queue, call, &self.calls, poll, &*self).await
    }

    /// The watchdog's safety net: completions the device published that
    /// nobody took by the tick (a used-buffer notification that never came
    /// while the completion task sleeps) are taken now, so such a miss
    /// costs one tick (10 ms), never a command timeout. Returns how many.
    pub(crate) fn rescue(&self) -> usize {
        if self.in_flight.load(Ordering::Relaxed) == 0 || !self.has_used() {
            return 0;
        }
        let before = self.completions();
        let mut inner = self.lock();
        self.pop_completed(&mut inner);
        drop(inner);
        let n = (self.completions() - before) as usize;
        if n > 0 {
            self.rescued.fetch_add(n as u64, Ordering::Relaxed);
            debug!(
                queue = self.index,
                n, "watchdog took completions nobody was notified of"
            );
        }
        n
    }

    /// Whether the driver closed this queue.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Fails every waiter (driver shutdown).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.slots_free.close();
        let mut inner = self.lock();
        for h in inner.heads.iter_mut().filter_map(Option::take) {
            self.finish(h.slot, FAILED, 0, FAIL_CLOSED);
        }
        debug!(queue = self.index, "closed");
    }
}

impl CompletionSource for SlotQueue {
    fn reap_and_arm(&self) -> bool {
        self.reap()
    }
    fn reap_polling(&self) -> bool {
        SlotQueue::reap_polling(self)
    }
    fn has_used(&self) -> bool {
        SlotQueue::has_used(self)
    }
    fn completions(&self) -> u64 {
        SlotQueue::completions(self)
    }
    fn is_closed(&self) -> bool {
        SlotQueue::is_closed(self)
    }
}
