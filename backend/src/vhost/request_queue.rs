//! Request queues (VIRTIO 1.2 §5.6.6.1): pop a chain, parse the command
//! header, run the SCSI command, write the response, complete.
//!
//! Every chain taken off the ring is completed, whatever it holds: a chain
//! with no room for a response is completed with used length 0 and logged;
//! any other malformed chain gets `VIRTIO_SCSI_S_FAILURE`. Completions of a
//! batch are published together and the driver is notified once per batch,
//! only when it asked: with EVENT_IDX when `used_event` was crossed
//! (§2.7.10), without it unless it set VRING_AVAIL_F_NO_INTERRUPT
//! (§2.7.7.2). (Checking after every completion, to wake the driver
//! earlier in a long batch, measured slower here: more notifications.)
//!
//! Chains come off the ring through [`RingGuard`], which checks the
//! split-ring contract; a violation stops this queue alone (the chains taken
//! before it are completed in the same batch) until the frontend resets the
//! ring. Log lines a frontend can cause go through the guard's per-kind
//! limiters ([`crate::ratelimit`]).
//!
//! Fault injection ([`crate::fault`]): a stalled command is *held* in its
//! queue's [`QueueShared`] (a per-queue mutex, touched only when faults
//! are configured) and completed later by whoever covers it: the control
//! queue worker for a TMF (ABORTED or RESET), `stop_vring` on
//! GET_VRING_BASE and the device on disconnect (RESET). Nothing taken off
//! the ring is ever dropped without a used entry.
//!
//! `aio=io_uring`: a READ/WRITE on such a logical unit comes back
//! from the SCSI layer as a [`crate::scsi::MediumTransfer`] and goes to the
//! queue's [`Uring`] engine (created on first use, when the device has
//! registered its completion eventfd in this worker's epoll); the chain is
//! completed when the engine reaps its CQE, in the same kind of batch
//! (add_used, one notification when the driver asked: `notify::wants_call`). A
//! command that is not a READ/WRITE runs only after this queue's transfers
//! in flight completed (so SYNCHRONIZE CACHE covers them). [`RequestQueue::drain`]
//! completes everything in flight before a ring stops, on reset and on
//! disconnect. Where io_uring cannot be set up the queue warns once and
//! stays inline.
//!
//! LUs on network media (NBD) defer their READ/WRITE the same way, to the
//! queue's [`Offload`] helper threads instead of io_uring; only commands
//! addressed to such a LU wait for its transfers in flight, so a stalled
//! server does not hold the queue's other LUNs.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use vscsi_poll::{Poll, Poller};

use std::sync::atomic::Ordering;
use tracing::{debug, info, warn};
use vhost_user_backend::VringT;

use crate::limited;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard};
use vscsi_protocol::lun::{LunAddress, LunError};
use vscsi_protocol::sense::Sense;
use vscsi_protocol::virtio_scsi::{CmdReq, Response};
use zerocopy::FromBytes;

use super::chain::split_chain;
use super::device_ring::DeviceRing;
use super::guest_io::{GuestDataIn, GuestDataOut, IoVecs};
pub use super::held::{Covers, HeldRequest, QueueShared};
use super::offload::Offload;
use super::queue_metrics::{QueueCounters, QueueMetrics};
use super::response::{write_bare, write_check_condition, write_response, REQ_SIZE, RESP_SIZE};
use super::ring_guard::malformed;
use super::ring_guard::RingGuard;
use super::uring::{Completed, StartError, Uring};
use crate::fault::FaultTable;
use crate::scsi::dispatch::may_defer;
use crate::scsi::rw::complete_transfer;
use crate::scsi::target::LunEntry;
use crate::scsi::{Nexus, Request, ScsiBus};
use crate::vhost::dirty::{GuestMem, Vring, VringState};

/// Offset of the CDB in `virtio_scsi_cmd_req` (lun 8, tag 8, task_attr,
/// prio, crn: 19 bytes).
const CDB_OFFSET: usize = 19;
enum Outcome {
    Used(u32),
    Held,
    /// Handed to the io_uring engine; completed when its CQE is reaped.
    InFlight,
}

/// Adds the used entry of a request the engine finished.
fn complete_used(ring: &DeviceRing, state: &mut VringState, mem: &GuestMem, c: Completed<'_>) {
    let used = write_response(c.writable, c.readable_len, &c.result, c.short);
    if let Err(e) = ring.add_used(state, mem, c.head, used) {
        crate::limited_site!(warn, head = c.head, error = %e, "request queue: add_used failed");
    }
}

/// Whether the "io_uring unavailable" warning was logged (once per process).
static URING_WARNED: AtomicBool = AtomicBool::new(false);

/// The io_uring engine of a queue, created on first use.
enum Engine {
    /// No completion eventfd registered (no epoll to wake on): inline.
    NoListener,
    /// Not needed yet.
    Idle(RawFd),
    /// Running.
    Ready(Box<Uring>),
    /// io_uring setup failed: inline, warned once.
    Unavailable,
}

/// Per-queue worker state: the scratch iovec lists reused by every request.
pub struct RequestQueue {
    readable: IoVecs,
    writable: IoVecs,
    engine: Engine,
    /// The helper-thread engine of LUs on network media, created on first
    /// use (it needs the completion eventfd too).
    offload: Option<Box<Offload>>,
    /// The completion eventfd, once the device registered it.
    completion_fd: Option<RawFd>,
    /// The queue's vring, recorded at the first batch (to complete what
    /// is in flight when the ring stops).
    vring: Option<Vring>,
    /// The guest memory, recorded with `vring` (to read the driver's flags
    /// when completing outside a batch).
    mem: Option<GuestMemoryAtomic<GuestMem>>,
    shared: Arc<QueueShared>,
    faults: Arc<FaultTable>,
    /// How the worker waits once the ring runs dry (spin, then sleep).
    poller: Poller,
    /// When the worker last went to sleep on the kick eventfd.
    asleep_since: Option<Instant>,
    metrics: Arc<QueueMetrics>,
    /// The ring contract, the broken state and the log limits of this queue.
    guard: RingGuard,
    /// The I_T nexus of the connection this queue belongs to.
    nexus: Arc<Nexus>,
}

impl RequestQueue {
    /// Worker state of the queue whose shared part is `shared`; `poll` is
    /// how it waits for new requests once the ring runs dry.
    pub fn new(
        shared: Arc<QueueShared>,
        faults: Arc<FaultTable>,
        poll: Poll,
        metrics: Arc<QueueMetrics>,
    ) -> Self {
        Self {
            readable: IoVecs::default(),
            writable: IoVecs::default(),
            engine: Engine::NoListener,
            offload: None,
            completion_fd: None,
            vring: None,
            mem: None,
            faults,
            poller: Poller::new(poll),
            asleep_since: None,
            guard: RingGuard::with_ring(2 + shared.index, metrics.clone(), shared.ring.clone()),
            metrics,
            shared,
            nexus: Arc::new(Nexus::default()),
        }
    }

    /// The same queue, serving the commands of `nexus` (the connection's
    /// I_T nexus; [`Nexus::local`] otherwise).
    pub fn with_nexus(mut self, nexus: Arc<Nexus>) -> Self {
        self.nexus = nexus;
        self
    }

    /// The eventfd the device registered in this queue worker's epoll: the
    /// io_uring engine (created on first use) signals its completions
    /// there, and the worker calls [`RequestQueue::complete_io`].
    pub fn set_completion_eventfd(&mut self, fd: RawFd) {
        self.completion_fd = Some(fd);
        if matches!(self.engine, Engine::NoListener) {
            self.engine = Engine::Idle(fd);
        }
    }

    /// Tells other threads (TMFs) how many transfers are in flight.
    fn publish_in_flight(&self) {
        self.shared
            .in_flight
            .store(self.in_flight(), Ordering::Release);
    }

    /// Requests in flight in the io_uring and helper-thread engines.
    pub fn in_flight(&self) -> usize {
        let uring = match &self.engine {
            Engine::Ready(u) => u.in_flight(),
            _ => 0,
        };
        uring + self.offload.as_ref().map_or(0, |o| o.in_flight())
    }

    /// The helper-thread engine, created now if it was not yet; `None`
    /// without a completion eventfd (or when it cannot be set up: the
    /// LU is then served inline, warned once).
    fn offload(&mut self) -> Option<&mut Offload> {
        if self.offload.is_none() {
            let fd = self.completion_fd?;
            match Offload::new(fd, self.shared.index) {
                Ok(o) => self.offload = Some(Box::new(o)),
                Err(e) => {
                    crate::limited_site!(warn, error = %e, "cannot start the transfer helpers: serving network LUNs inline");
                    return None;
                }
            }
        }
        self.offload.as_deref_mut()
    }

    /// The engine, created now if it was not yet; `None` when there is no
    /// completion listener or io_uring is unavailable (warned once).
    fn engine(&mut self) -> Option<&mut Uring> {
        if let Engine::Idle(fd) = self.engine {
            self.engine = match Uring::new(Some(fd)) {
                Ok(u) => {
                    info!(queue = self.shared.index, "io_uring engine started");
                    Engine::Ready(Box::new(u))
                }
                Err(e) => {
                    if !URING_WARNED.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, "io_uring is unavailable: aio=io_uring LUNs are served inline");
                    }
                    Engine::Unavailable
                }
            };
        }
        match &mut self.engine {
            Engine::Ready(u) => Some(u),
            _ => None,
        }
    }

    /// Handles the engine's completions (the completion eventfd fired):
    /// completes every finished request and notifies the driver once if
    /// it asked.
    pub fn complete_io(&mut self, vring: &Vring) -> std::io::Result<()> {
        if !matches!(self.engine, Engine::Ready(_)) && self.offload.is_none() {
            return Ok(());
        }
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            // Not reachable: the engines start from a batch, which
            // recorded the memory.
            return Ok(());
        };
        let ring = self.shared.ring.clone();
        let mut state = vring.get_mut();
        let mut n = 0;
        if let Engine::Ready(u) = &mut self.engine {
            n += u.reap(&mut |c| complete_used(&ring, &mut state, &mem, c));
            if let Err(e) = u.submit() {
                crate::limited_site!(warn, error = %e, "io_uring submit failed");
            }
        }
        if let Some(o) = &mut self.offload {
            n += o.reap(&mut |c| complete_used(&ring, &mut state, &mem, c));
        }
        let notify = n > 0 && self.wants_call(&mut state);
        if notify {
            state.signal_used_queue()?;
        }
        drop(state);
        self.publish_in_flight();
        if notify {
            if let Some(c) = self.metrics.queue(self.shared.index) {
                QueueCounters::add(&c.notifications, 1);
            }
        }
        Ok(())
    }

    /// Waits for every request in flight in the engine and completes each
    /// (ring stop, device reset, disconnect): afterwards nothing of this
    /// queue is in the kernel's hands. Returns how many were completed.
    pub fn drain(&mut self) -> usize {
        if self.in_flight() == 0 {
            return 0;
        }
        let (Some(vring), Some(mem)) = (self.vring.clone(), self.mem.as_ref().map(|m| m.memory()))
        else {
            // Cannot happen (a request was started from a batch, which
            // recorded both), but the I/O must still be waited for.
            let n = self.drain_engines(&mut |c| {
                warn!(head = c.head, "in-flight request without a ring or memory")
            });
            self.publish_in_flight();
            return n;
        };
        let ring = self.shared.ring.clone();
        let mut state = vring.get_mut();
        let n = self.drain_engines(&mut |c| complete_used(&ring, &mut state, &mem, c));
        if n > 0 && self.wants_call(&mut state) {
            if let Err(e) = state.signal_used_queue() {
                crate::limited_site!(warn, error = %e, "signalling drained completions failed");
            }
        }
        drop(state);
        self.publish_in_flight();
        n
    }

    /// Waits for the transfers in flight in both engines, handing each to
    /// `done`; returns how many.
    fn drain_engines(&mut self, done: &mut dyn FnMut(Completed<'_>)) -> usize {
        let mut n = 0;
        if let Engine::Ready(u) = &mut self.engine {
            n += u.drain(done);
        }
        if let Some(o) = &mut self.offload {
            n += o.drain(done);
        }
        n
    }

    /// [`DeviceRing::wants_call`] with the memory recorded at the first batch.
    fn wants_call(&self, state: &mut VringState) -> bool {
        match &self.mem {
            Some(m) => self.shared.ring.wants_call(state, &m.memory()),
            None => true,
        }
    }

    /// Serves everything available on `vring`, then notifies the driver if it asked.
    ///
    /// Notifications from the driver stay disabled while the queue has work,
    /// and the loop re-checks the ring after re-enabling them so a request
    /// published in between is not left behind.
    pub fn process(
        &mut self,
        vring: &Vring,
        mem: &GuestMemoryAtomic<GuestMem>,
        bus: &ScsiBus,
    ) -> std::io::Result<()> {
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
        if self.mem.is_none() {
            self.mem = Some(mem.clone());
        }
        let guard = mem.memory();
        let ring = self.shared.ring.clone();
        let mut state = vring.get_mut();
        if !self.guard.serving(&state) {
            // Broken (or stopped): kicks are ignored until the frontend
            // re-initializes the ring.
            return Ok(());
        }
        if let Some(t) = self.asleep_since.take() {
            self.poller.woke(t.elapsed());
        }
        let mut completed = false;
        let (mut requests, mut notifications) = (0u64, 0u64);
        loop {
            let mut early_call = false;
            if let Err(e) = ring.disable_notification(&mut state, &guard) {
                let s = limited!(self.guard.logs.ring_ops, warn, error = %e, "request queue: cannot disable notifications");
                self.guard.note_suppressed(s);
            }
            loop {
                let head = match self.guard.pop(state.get_queue_mut(), &guard) {
                    Ok(Some(head)) => head,
                    Ok(None) => break,
                    Err(v) => {
                        // What was taken before is completed below, as usual.
                        self.guard.break_ring(&mut state, v);
                        break;
                    }
                };
                requests += 1;
                let fault = split_chain(
                    self.guard.descriptors(),
                    &guard,
                    &mut self.readable,
                    &mut self.writable,
                );
                if let Engine::Ready(u) = &mut self.engine {
                    // Room for one more, and nothing but READ/WRITE overtakes
                    // the transfers in flight.
                    let mut op = [0u8; 1];
                    self.readable.copy_out(CDB_OFFSET, &mut op);
                    if u.is_full() || (u.in_flight() > 0 && !may_defer(&op)) {
                        let n = if u.is_full() {
                            if let Err(e) = u.wait() {
                                crate::limited_site!(warn, error = %e, "io_uring wait failed");
                            }
                            u.reap(&mut |c| complete_used(&ring, &mut state, &guard, c))
                        } else {
                            u.drain(&mut |c| complete_used(&ring, &mut state, &guard, c))
                        };
                        completed |= n > 0;
                    }
                }
                if self.offload.as_ref().is_some_and(|o| o.in_flight() > 0) {
                    // Nothing but READ/WRITE overtakes the transfers in
                    // flight on the same network LU (SYNCHRONIZE CACHE
                    // covers them); other LUNs do not wait for them.
                    let mut hdr = [0u8; CDB_OFFSET + 1];
                    self.readable.copy_out(0, &mut hdr);
                    if !may_defer(&hdr[CDB_OFFSET..]) && Self::addresses_offloaded(bus, &hdr) {
                        if let Some(o) = &mut self.offload {
                            completed |=
                                o.drain(&mut |c| complete_used(&ring, &mut state, &guard, c)) > 0;
                        }
                    }
                }
                let outcome = match fault {
                    Ok(()) => self.execute(bus, head, vring, &guard),
                    Err(fault) => {
                        malformed!(
                            self.guard,
                            queue = self.shared.index,
                            head,
                            ?fault,
                            "malformed request chain: answering VIRTIO_SCSI_S_FAILURE"
                        );
                        Outcome::Used(self.fail(Response::Failure))
                    }
                };
                self.readable.clear();
                self.writable.clear();
                if let Outcome::Used(used) = outcome {
                    if let Err(e) = ring.add_used(&mut state, &guard, head, used) {
                        let s = limited!(self.guard.logs.ring_ops, warn, head, error = %e, "request queue: add_used failed");
                        self.guard.note_suppressed(s);
                    }
                    completed = true;
                    // A driver asleep on its call eventfd is woken by the
                    // first completion of a pass over the avail ring, not
                    // the last: it recycles slots on its CPU while the pass
                    // goes on here. Once per pass (its end notifies again if
                    // the driver asks), so a driver without EVENT_IDX is not
                    // sent a call per command.
                    if !early_call {
                        early_call = true;
                        if ring.wants_call(&mut state, &guard) {
                            state.signal_used_queue()?;
                            notifications += 1;
                            completed = false;
                        }
                    }
                }
            }
            if let Engine::Ready(u) = &mut self.engine {
                // One io_uring_enter for the whole batch, then whatever has
                // already completed joins this batch's used entries.
                if let Err(e) = u.submit() {
                    crate::limited_site!(warn, error = %e, "io_uring submit failed");
                }
                completed |= u.reap(&mut |c| complete_used(&ring, &mut state, &guard, c)) > 0;
            }
            if let Some(o) = &mut self.offload {
                completed |= o.reap(&mut |c| complete_used(&ring, &mut state, &guard, c)) > 0;
            }
            if self.guard.is_broken() {
                // Nothing more is taken off this ring: no polling, and
                // notifications stay as they are.
                break;
            }
            if self.poller.mode().spins() {
                // Hand back what is done before spinning, then watch the
                // avail ring with driver notifications still disabled: the
                // driver does not kick while the device is polling.
                if completed && ring.wants_call(&mut state, &guard) {
                    state.signal_used_queue()?;
                    notifications += 1;
                }
                completed = false;
                // Completions of the engine end the spin too: they are
                // reaped at the top of the loop, not after the poll time.
                let engine = &mut self.engine;
                let offload = &self.offload;
                let mut reapable = || {
                    offload.as_ref().is_some_and(|o| o.has_completions())
                        || match engine {
                            Engine::Ready(u) => u.has_completions(),
                            _ => false,
                        }
                };
                let queue = state.get_queue();
                if self
                    .poller
                    .spin(|| reapable() || ring.has_avail(queue, &guard))
                {
                    continue;
                }
            }
            match ring.enable_notification(&mut state, &guard) {
                Ok(true) => continue,
                Ok(false) => {
                    self.asleep_since = Some(Instant::now());
                    break;
                }
                Err(e) => {
                    let s = limited!(self.guard.logs.ring_ops, warn, error = %e, "request queue: cannot enable notifications");
                    self.guard.note_suppressed(s);
                    break;
                }
            }
        }
        if completed && ring.wants_call(&mut state, &guard) {
            state.signal_used_queue()?;
            notifications += 1;
        }
        self.publish_in_flight();
        if let Some(c) = self.metrics.queue(self.shared.index) {
            if requests > 0 {
                QueueCounters::add(&c.batches, 1);
                QueueCounters::add(&c.requests, requests);
            }
            QueueCounters::add(&c.notifications, notifications);
        }
        Ok(())
    }

    /// Whether the request header `hdr` (LUN field first) addresses a
    /// logical unit whose transfers run on the helper threads.
    fn addresses_offloaded(bus: &ScsiBus, hdr: &[u8]) -> bool {
        let Some(lun) = hdr.get(..8).and_then(|l| <[u8; 8]>::try_from(l).ok()) else {
            return false;
        };
        match LunAddress::decode(&lun) {
            Ok(LunAddress::Unit(l)) => bus
                .target(l.target)
                .and_then(|t| t.entry(l.lun))
                .is_some_and(|e| e.lu().offloads_io()),
            _ => false,
        }
    }

    /// Runs one well-formed chain.
    fn execute(
        &mut self,
        bus: &ScsiBus,
        head: u16,
        vring: &Vring,
        guard: &GuestMemoryLoadGuard<GuestMem>,
    ) -> Outcome {
        if self.writable.len() < RESP_SIZE {
            malformed!(
                self.guard,
                queue = self.shared.index,
                head,
                writable = self.writable.len(),
                "request has no room for virtio_scsi_cmd_resp: completing with used length 0"
            );
            return Outcome::Used(self.fail(Response::Failure));
        }
        let mut hdr = [0u8; REQ_SIZE];
        if self.readable.copy_out(0, &mut hdr) < REQ_SIZE {
            malformed!(
                self.guard,
                queue = self.shared.index,
                head,
                len = self.readable.len(),
                "request header shorter than 51 bytes: VIRTIO_SCSI_S_FAILURE"
            );
            return Outcome::Used(self.fail(Response::Failure));
        }
        let Ok(req) = CmdReq::read_from_bytes(&hdr) else {
            return Outcome::Used(self.fail(Response::Failure));
        };
        let (target_id, lun) = match LunAddress::decode(&req.lun) {
            Ok(LunAddress::Unit(l)) => (l.target, Some(l.lun)),
            Ok(LunAddress::ReportLunsWellKnown { target }) => (target, None),
            Err(LunError::BadFirstByte(b)) => {
                debug!(
                    byte0 = b,
                    "LUN field byte 0 is not 1: VIRTIO_SCSI_S_BAD_TARGET"
                );
                return Outcome::Used(self.fail(Response::BadTarget));
            }
            // A target byte we can read, but a LUN structure we do not
            // support: no logical unit is addressed, which SCSI answers with
            // LOGICAL UNIT NOT SUPPORTED (the target's missing-LUN path).
            Err(e) => {
                debug!(error = %e, "unsupported LUN field");
                (req.lun[1], Some(u16::MAX))
            }
        };
        let Some(target) = bus.target(target_id) else {
            return Outcome::Used(self.fail(Response::BadTarget));
        };
        let tag = req.tag.get();
        let mut short = None;
        if let Some(l) = lun {
            if let Some(d) = self.faults.decide(target_id, l, &req.cdb) {
                if d.stall {
                    debug!(
                        queue = self.shared.index,
                        target = target_id,
                        lun = l,
                        tag,
                        "stall fault: holding the command"
                    );
                    self.faults.note_held();
                    self.shared.hold(
                        vring,
                        HeldRequest {
                            head,
                            target: target_id,
                            lun: l,
                            tag,
                            readable_len: self.readable.len(),
                            writable: std::mem::take(&mut self.writable),
                            mem: guard.clone(),
                        },
                    );
                    return Outcome::Held;
                }
                if let Some(delay) = d.delay {
                    if let Some(response) = self.shared.delay(target_id, l, tag, delay) {
                        let used = self.fail(response);
                        self.shared.delayed_done();
                        return Outcome::Used(used);
                    }
                }
                if let Some(sense) = d.fail {
                    debug!(target = target_id, lun = l, tag, %sense, "injected error");
                    return Outcome::Used(self.check_condition(sense));
                }
                short = d.short_transfer;
            }
        }
        let nexus = self.nexus.clone();
        let request = Request {
            cdb: &req.cdb,
            tag,
            task_attr: req.task_attr,
            nexus: &nexus,
        };
        // An aio=io_uring LU: the transfer may go to the engine (created
        // now if this is the first one).
        // The LUN's entry counts the transfer in flight from before the
        // command runs until the engine completes it, so a fence (remove,
        // read-only switch, eject) waits for it.
        let defer_lu: Option<Arc<LunEntry>> = match lun {
            Some(l) if may_defer(&req.cdb) => target
                .entry(l)
                .filter(|e| e.lu().defers_io())
                .cloned()
                .filter(|e| {
                    if e.lu().offloads_io() {
                        self.offload().is_some_and(|o| !o.is_full())
                    } else {
                        self.engine().is_some_and(|u| !u.is_full())
                    }
                }),
            _ => None,
        };
        if let Some(e) = &defer_lu {
            e.begin_transfer();
        }
        let defer = defer_lu.is_some();
        let mut data_in = GuestDataIn {
            iov: &self.writable,
            base: RESP_SIZE,
            defer,
        };
        let data_out = GuestDataOut {
            iov: &self.readable,
            base: REQ_SIZE,
            defer,
        };
        let result = match lun {
            Some(lun) => target.execute(lun, &request, &mut data_in, &data_out),
            None => target.execute_well_known(&request, &mut data_in, &data_out),
        };
        if let (Some(e), None) = (&defer_lu, result.transfer()) {
            // Answered without a transfer (an error, BUSY, zero length).
            e.end_transfer();
        }
        // A buffer smaller than the command's transfer is the transport's
        // VIRTIO_SCSI_S_OVERRUN (§5.6.6.1), as QEMU answers too.
        if result.is_overrun() {
            debug!("data buffer smaller than the transfer: VIRTIO_SCSI_S_OVERRUN");
            return Outcome::Used(self.fail(Response::Overrun));
        }
        let mut result = result;
        if let Some(&transfer) = result.transfer() {
            let started = match (&defer_lu, &mut self.engine, &mut self.offload) {
                (Some(lu), _, Some(o)) if lu.lu().offloads_io() => o.start(
                    head,
                    lu,
                    transfer,
                    short,
                    &mut self.readable,
                    &mut self.writable,
                    guard.clone(),
                ),
                (Some(lu), Engine::Ready(u), _) => u.start(
                    head,
                    lu,
                    transfer,
                    result,
                    short,
                    (&mut self.readable, REQ_SIZE),
                    (&mut self.writable, RESP_SIZE),
                    Some(guard.clone()),
                ),
                _ => Err(StartError::Invalid),
            };
            match (started, &defer_lu) {
                (Ok(()), _) => {
                    self.publish_in_flight();
                    return Outcome::InFlight;
                }
                (Err(e), Some(entry)) => {
                    crate::limited_site!(warn, head, error = %e, "deferred transfer not started: failing the command");
                    result = complete_transfer(
                        entry.lu(),
                        &transfer,
                        Err(std::io::Error::other("transfer not started")),
                    );
                    entry.end_transfer();
                }
                (Err(e), None) => {
                    // Not reachable: the SCSI layer defers only when asked.
                    warn!(head, error = %e, "deferred transfer without an engine");
                    return Outcome::Used(self.fail(Response::Failure));
                }
            }
        }
        Outcome::Used(write_response(
            &self.writable,
            self.readable.len(),
            &result,
            short,
        ))
    }

    /// Completes the current chain with CHECK CONDITION and `sense` (fixed format).
    fn check_condition(&mut self, sense: Sense) -> u32 {
        write_check_condition(&self.writable, self.readable.len(), sense)
    }

    /// Completes the current chain with a bare `response` code; returns the used length.
    fn fail(&mut self, response: Response) -> u32 {
        write_bare(&self.writable, self.readable.len(), response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tmf_waits_for_io_uring_transfers_in_flight() {
        let q = Arc::new(QueueShared::new(0));
        let faults = FaultTable::default();
        let covers = Covers {
            target: 0,
            lun: None,
            tag: None,
        };
        // Nothing in flight: answered at once.
        let t = Instant::now();
        assert_eq!(
            q.complete(&covers, |_, _| false, Response::Reset, &faults),
            0
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        // Two transfers in flight, done 100 ms later: the TMF waits for them.
        q.in_flight.store(2, Ordering::Release);
        let q2 = q.clone();
        let worker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            q2.in_flight.store(0, Ordering::Release);
        });
        let t = Instant::now();
        q.complete(&covers, |_, _| false, Response::Reset, &faults);
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
        worker.join().unwrap();
    }
}
