//! Request queues (VIRTIO 1.2 §5.6.6.1): pop a chain, parse the command
//! header, run the SCSI command, write the response, complete.
//!
//! Every chain taken off the ring is completed, whatever it holds: a chain
//! with no room for a response is completed with used length 0 and logged;
//! any other malformed chain gets `VIRTIO_SCSI_S_FAILURE`. Completions of a
//! batch are published together and the driver is notified once, only when
//! `needs_notification()` says so (EVENT_IDX, §2.7.10).
//!
//! Fault injection ([`crate::fault`]): a stalled command is *held* in its
//! queue's [`QueueShared`] (a per-queue mutex, touched only when faults
//! are configured) and completed later by whoever covers it: the control
//! queue worker for a TMF (ABORTED or RESET), `stop_vring` on
//! GET_VRING_BASE and the device on disconnect (RESET). Nothing taken off
//! the ring is ever dropped without a used entry.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;
use tracing::{debug, info, warn};
use vhost_user_backend::{VringRwLock, VringT};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vscsi_protocol::lun::{LunAddress, LunError};
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::{CmdReq, CmdResp, Response};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::chain::split_chain;
use super::guest_io::{GuestDataIn, GuestDataOut, IoVecs};
use super::queue_metrics::{QueueCounters, QueueMetrics};
use crate::fault::FaultTable;
use crate::scsi::{DataIn, DataOut, Request, ScsiBus};

const REQ_SIZE: usize = size_of::<CmdReq>();
const RESP_SIZE: usize = size_of::<CmdResp>();
/// Bytes of `CmdResp` before `sense`.
const RESP_FIXED: usize = RESP_SIZE - vscsi_protocol::virtio_scsi::SENSE_SIZE;
/// Longest a TMF waits for a worker to give up a delayed command it covers.
const ABORT_WAIT: Duration = Duration::from_secs(5);

/// Which in-flight commands a task management function covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covers {
    /// Target id.
    pub target: u8,
    /// LUN, or every LUN of the target (I_T NEXUS RESET).
    pub lun: Option<u16>,
    /// One command tag (ABORT TASK, QUERY TASK), or all.
    pub tag: Option<u64>,
}

impl Covers {
    fn matches(&self, target: u8, lun: u16, tag: u64) -> bool {
        self.target == target
            && self.lun.is_none_or(|l| l == lun)
            && self.tag.is_none_or(|t| t == tag)
    }
}

/// A command taken off the ring and held by a stall fault.
pub struct HeldRequest {
    head: u16,
    target: u8,
    lun: u16,
    tag: u64,
    writable: IoVecs,
    /// Keeps the mapping `writable` points into alive.
    _mem: GuestMemoryLoadGuard<GuestMemoryMmap>,
}

/// A command the worker is delaying (latency fault) right now.
struct Delayed {
    target: u8,
    lun: u16,
    tag: u64,
    abort: Option<Response>,
}

#[derive(Default)]
struct SharedState {
    /// The queue's vring, recorded when a command is first held.
    vring: Option<VringRwLock>,
    held: Vec<HeldRequest>,
    current: Option<Delayed>,
}

/// The part of a request queue other threads reach: held and delayed
/// commands. Only used when fault injection is active.
pub struct QueueShared {
    index: u16,
    state: Mutex<SharedState>,
    cv: Condvar,
}

fn lock(m: &Mutex<SharedState>) -> MutexGuard<'_, SharedState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QueueShared {
    /// State of request queue `index`.
    pub fn new(index: u16) -> Self {
        Self {
            index,
            state: Mutex::default(),
            cv: Condvar::new(),
        }
    }

    /// Commands held right now.
    pub fn held(&self) -> usize {
        lock(&self.state).held.len()
    }

    /// Whether a command `covers` selects is in flight here (held or delayed).
    pub fn any(&self, covers: &Covers) -> bool {
        let s = lock(&self.state);
        s.held
            .iter()
            .any(|h| covers.matches(h.target, h.lun, h.tag))
            || s.current
                .as_ref()
                .is_some_and(|c| covers.matches(c.target, c.lun, c.tag))
    }

    /// Completes every held command that `covers` selects with `response`
    /// (and cuts short a delayed one), skipping those `keep` says survive.
    /// Returns once they are all on the used ring; returns how many.
    pub fn complete(
        &self,
        covers: &Covers,
        keep: impl Fn(u8, u16) -> bool,
        response: Response,
        faults: &FaultTable,
    ) -> usize {
        let (vring, taken, delayed) = {
            let mut s = lock(&self.state);
            let mut taken = Vec::new();
            let mut i = 0;
            while i < s.held.len() {
                let h = &s.held[i];
                if covers.matches(h.target, h.lun, h.tag) && !keep(h.target, h.lun) {
                    taken.push(s.held.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            let mut delayed = false;
            if let Some(c) = s.current.as_mut() {
                if covers.matches(c.target, c.lun, c.tag) && c.abort.is_none() {
                    c.abort = Some(response);
                    delayed = true;
                }
            }
            (s.vring.clone(), taken, delayed)
        };
        if delayed {
            self.cv.notify_all();
        }
        let n = taken.len();
        if n > 0 {
            match vring {
                Some(vring) => complete_held(&vring, taken, response),
                None => warn!(queue = self.index, "held commands without a ring: dropped"),
            }
            faults.note_released(n);
            info!(
                queue = self.index,
                n,
                response = response.name(),
                "held commands completed"
            );
        }
        if delayed {
            let s = lock(&self.state);
            let _ = self.cv.wait_timeout_while(s, ABORT_WAIT, |s| {
                s.current.as_ref().is_some_and(|c| c.abort.is_some())
            });
        }
        n + usize::from(delayed)
    }

    /// Completes everything held (ring stop, disconnect) with `VIRTIO_SCSI_S_RESET`.
    pub fn complete_all(&self, faults: &FaultTable) -> usize {
        let covers_all = |_: u8, _: u16| false;
        let mut n = 0;
        let targets: Vec<u8> = {
            let s = lock(&self.state);
            let mut t: Vec<u8> = s.held.iter().map(|h| h.target).collect();
            t.extend(s.current.as_ref().map(|c| c.target));
            t.sort_unstable();
            t.dedup();
            t
        };
        for target in targets {
            let covers = Covers {
                target,
                lun: None,
                tag: None,
            };
            n += self.complete(&covers, covers_all, Response::Reset, faults);
        }
        n
    }

    fn hold(&self, vring: &VringRwLock, req: HeldRequest) {
        let mut s = lock(&self.state);
        if s.vring.is_none() {
            s.vring = Some(vring.clone());
        }
        s.held.push(req);
    }

    /// Waits `delay` for one command, unless a TMF cuts it short: then
    /// returns the response to complete it with.
    fn delay(&self, target: u8, lun: u16, tag: u64, delay: Duration) -> Option<Response> {
        let deadline = Instant::now() + delay;
        let mut s = lock(&self.state);
        s.current = Some(Delayed {
            target,
            lun,
            tag,
            abort: None,
        });
        loop {
            if let Some(r) = s.current.as_ref().and_then(|c| c.abort) {
                return Some(r);
            }
            let now = Instant::now();
            if now >= deadline {
                s.current = None;
                return None;
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The delayed command was completed (after an abort): wake the TMF.
    fn delayed_done(&self) {
        lock(&self.state).current = None;
        self.cv.notify_all();
    }
}

/// Writes a bare `response` into each held command and completes it.
fn complete_held(vring: &VringRwLock, reqs: Vec<HeldRequest>, response: Response) {
    let mut state = vring.get_mut();
    for r in reqs {
        let used = write_bare(&r.writable, response);
        if let Err(e) = state.add_used(r.head, used) {
            warn!(head = r.head, error = %e, "completing a held command failed");
        }
    }
    if state.needs_notification().unwrap_or(true) {
        if let Err(e) = state.signal_used_queue() {
            warn!(error = %e, "signalling held completions failed");
        }
    }
}

/// Writes a response with only `response` set; returns the used length.
fn write_bare(writable: &IoVecs, response: Response) -> u32 {
    if writable.len() < RESP_SIZE {
        warn!(
            writable = writable.len(),
            "request has no room for virtio_scsi_cmd_resp: completing with used length 0"
        );
        return 0;
    }
    let mut resp = CmdResp::new_zeroed();
    resp.response = response as u8;
    resp.resid = U32::new((writable.len() - RESP_SIZE) as u32);
    writable.copy_in(0, &resp.as_bytes()[..RESP_FIXED]);
    RESP_SIZE as u32
}

enum Outcome {
    Used(u32),
    Held,
}

/// Per-queue worker state: the scratch iovec lists reused by every request.
pub struct RequestQueue {
    readable: IoVecs,
    writable: IoVecs,
    shared: Arc<QueueShared>,
    faults: Arc<FaultTable>,
    poll: Duration,
    metrics: Arc<QueueMetrics>,
}

impl RequestQueue {
    /// Worker state of the queue whose shared part is `shared`; `poll` is
    /// how long to busy-poll the ring once it runs dry (0: never).
    pub fn new(
        shared: Arc<QueueShared>,
        faults: Arc<FaultTable>,
        poll: Duration,
        metrics: Arc<QueueMetrics>,
    ) -> Self {
        Self {
            readable: IoVecs::default(),
            writable: IoVecs::default(),
            shared,
            faults,
            poll,
            metrics,
        }
    }

    /// Serves everything available on `vring`, then notifies the driver if it asked.
    ///
    /// Notifications from the driver stay disabled while the queue has work,
    /// and the loop re-checks the ring after re-enabling them so a request
    /// published in between is not left behind.
    pub fn process(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        bus: &ScsiBus,
    ) -> std::io::Result<()> {
        let guard = mem.memory();
        let mut state = vring.get_mut();
        let mut completed = false;
        let (mut requests, mut notifications) = (0u64, 0u64);
        loop {
            if let Err(e) = state.disable_notification() {
                warn!(error = %e, "request queue: cannot disable notifications");
            }
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(guard.clone()) {
                let head = chain.head_index();
                requests += 1;
                let fault = split_chain(chain, &guard, &mut self.readable, &mut self.writable);
                let outcome = match fault {
                    Ok(()) => self.execute(bus, head, vring, &guard),
                    Err(fault) => {
                        warn!(
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
                    if let Err(e) = state.add_used(head, used) {
                        warn!(head, error = %e, "request queue: add_used failed");
                    }
                    completed = true;
                }
            }
            if !self.poll.is_zero() {
                // Hand back what is done before spinning, then watch the
                // avail ring with driver notifications still disabled: the
                // driver does not kick while the device is polling.
                if completed && state.needs_notification().unwrap_or(true) {
                    state.signal_used_queue()?;
                    notifications += 1;
                }
                completed = false;
                if Self::poll_avail(state.get_queue(), &guard, self.poll) {
                    continue;
                }
            }
            match state.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn!(error = %e, "request queue: cannot enable notifications");
                    break;
                }
            }
        }
        if completed && state.needs_notification().unwrap_or(true) {
            state.signal_used_queue()?;
            notifications += 1;
        }
        if let Some(c) = self.metrics.queue(self.shared.index) {
            if requests > 0 {
                QueueCounters::add(&c.batches, 1);
                QueueCounters::add(&c.requests, requests);
            }
            QueueCounters::add(&c.notifications, notifications);
        }
        Ok(())
    }

    /// Spins up to `limit` for the driver to publish a new request.
    fn poll_avail(queue: &Queue, mem: &GuestMemoryMmap, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match queue.avail_idx(mem, Ordering::Acquire) {
                Ok(idx) if idx.0 != queue.next_avail() => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Runs one well-formed chain.
    fn execute(
        &mut self,
        bus: &ScsiBus,
        head: u16,
        vring: &VringRwLock,
        guard: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    ) -> Outcome {
        if self.writable.len() < RESP_SIZE {
            return Outcome::Used(self.fail(Response::Failure));
        }
        let mut hdr = [0u8; REQ_SIZE];
        if self.readable.copy_out(0, &mut hdr) < REQ_SIZE {
            warn!(
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
                            writable: std::mem::take(&mut self.writable),
                            _mem: guard.clone(),
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
        let request = Request {
            cdb: &req.cdb,
            tag,
            task_attr: req.task_attr,
        };
        let mut data_in = GuestDataIn {
            iov: &self.writable,
            base: RESP_SIZE,
        };
        let data_out = GuestDataOut {
            iov: &self.readable,
            base: REQ_SIZE,
        };
        let result = match lun {
            Some(lun) => target.execute(lun, &request, &mut data_in, &data_out),
            None => target.execute_well_known(&request, &mut data_in, &data_out),
        };
        // The SCSI layer reports a buffer smaller than the command's
        // transfer as 5/0E/03; on virtio that is the transport's
        // VIRTIO_SCSI_S_OVERRUN (§5.6.6.1), as QEMU answers too.
        if result.decoded_sense() == Some(Sense::INVALID_FIELD_IN_COMMAND_IU) {
            debug!("data buffer smaller than the transfer: VIRTIO_SCSI_S_OVERRUN");
            return Outcome::Used(self.fail(Response::Overrun));
        }
        let mut data_in_len = result.data_in_len.min(data_in.capacity());
        if let Some(cap) = short {
            data_in_len = data_in_len.min(cap as usize);
        }
        let resid = if data_out.len() > 0 {
            data_out.len().saturating_sub(result.data_out_len)
        } else {
            data_in.capacity() - data_in_len
        };
        let sense = result.sense();
        let mut resp = CmdResp::new_zeroed();
        resp.sense_len = U32::new(sense.len() as u32);
        resp.resid = U32::new(u32::try_from(resid).unwrap_or(u32::MAX));
        resp.status = result.status;
        resp.response = Response::Ok as u8;
        resp.sense[..sense.len()].copy_from_slice(sense);
        // Only the fixed part and the valid sense bytes need writing.
        self.writable
            .copy_in(0, &resp.as_bytes()[..RESP_FIXED + sense.len()]);
        Outcome::Used((RESP_SIZE + data_in_len) as u32)
    }

    /// Completes the current chain with CHECK CONDITION and `sense` (fixed format).
    fn check_condition(&mut self, sense: Sense) -> u32 {
        let mut resp = CmdResp::new_zeroed();
        let n = sense.encode_fixed(&mut resp.sense);
        resp.sense_len = U32::new(n as u32);
        let resid = if self.readable.len() > REQ_SIZE {
            self.readable.len() - REQ_SIZE
        } else {
            self.writable.len() - RESP_SIZE
        };
        resp.resid = U32::new(u32::try_from(resid).unwrap_or(u32::MAX));
        resp.status = status::CHECK_CONDITION;
        resp.response = Response::Ok as u8;
        self.writable.copy_in(0, &resp.as_bytes()[..RESP_FIXED + n]);
        RESP_SIZE as u32
    }

    /// Completes the current chain with a bare `response` code; returns the used length.
    fn fail(&mut self, response: Response) -> u32 {
        write_bare(&self.writable, response)
    }
}
