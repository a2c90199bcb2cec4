//! The control queue (task management, VIRTIO 1.2 §5.6.6.2) and the small
//! ring machinery it shares with the event queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;
use vscsi_protocol::virtio_scsi::{tmf, Response as VirtioResponse};

use crate::error::{Error, Result};
use crate::memory::SharedMemory;
use crate::ring::{Segment, Virtqueue, VirtqueueFormat};

/// Bytes of shared memory per control/event slot: request at 0, response at half.
pub(crate) const AUX_SLOT: usize = 128;

/// A task management function (§5.6.6.2, SAM-5 §7).
///
/// ```no_run
/// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
/// use vscsi_driver::{Tmf, TmfResponse};
/// let r = driver.task_management(0, 0, Tmf::LogicalUnitReset).await?;
/// assert_eq!(r, TmfResponse::FunctionComplete);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tmf {
    /// ABORT TASK: the command with this tag.
    AbortTask {
        /// Tag of the command (see [`crate::Driver::in_flight`]).
        tag: u64,
    },
    /// ABORT TASK SET: every command of the LUN.
    AbortTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// CLEAR TASK SET.
    ClearTaskSet,
    /// LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// I_T NEXUS RESET: what Linux's virtio_scsi sends for a target reset.
    TargetReset,
    /// QUERY TASK: is the command with this tag in the task set?
    QueryTask {
        /// Tag of the command.
        tag: u64,
    },
    /// QUERY TASK SET: is any command of the LUN in the task set?
    QueryTaskSet,
    /// Any other subtype code (a device answers FUNCTION REJECTED).
    Other {
        /// The `subtype` field.
        subtype: u32,
    },
}

impl Tmf {
    /// The virtio subtype code and tag.
    pub fn encode(self) -> (u32, u64) {
        match self {
            Tmf::AbortTask { tag } => (tmf::ABORT_TASK, tag),
            Tmf::AbortTaskSet => (tmf::ABORT_TASK_SET, 0),
            Tmf::ClearAca => (tmf::CLEAR_ACA, 0),
            Tmf::ClearTaskSet => (tmf::CLEAR_TASK_SET, 0),
            Tmf::LogicalUnitReset => (tmf::LOGICAL_UNIT_RESET, 0),
            Tmf::TargetReset => (tmf::I_T_NEXUS_RESET, 0),
            Tmf::QueryTask { tag } => (tmf::QUERY_TASK, tag),
            Tmf::QueryTaskSet => (tmf::QUERY_TASK_SET, 0),
            Tmf::Other { subtype } => (subtype, 0),
        }
    }

    /// The SAM-5 name.
    pub fn name(self) -> &'static str {
        match self {
            Tmf::AbortTask { .. } => "ABORT TASK",
            Tmf::AbortTaskSet => "ABORT TASK SET",
            Tmf::ClearAca => "CLEAR ACA",
            Tmf::ClearTaskSet => "CLEAR TASK SET",
            Tmf::LogicalUnitReset => "LOGICAL UNIT RESET",
            Tmf::TargetReset => "I_T NEXUS RESET",
            Tmf::QueryTask { .. } => "QUERY TASK",
            Tmf::QueryTaskSet => "QUERY TASK SET",
            Tmf::Other { .. } => "TMF (unknown subtype)",
        }
    }
}

/// The device's answer to a [`Tmf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    /// FUNCTION COMPLETE (`VIRTIO_SCSI_S_OK`): done; for QUERY, nothing found.
    FunctionComplete,
    /// FUNCTION SUCCEEDED: for QUERY TASK (SET), the task is in the task set.
    FunctionSucceeded,
    /// FUNCTION REJECTED: not supported.
    FunctionRejected,
    /// The LUN does not exist.
    IncorrectLun,
    /// The target does not exist.
    BadTarget,
    /// Any other response byte.
    Other(u8),
}

impl TmfResponse {
    /// Decodes the response byte.
    pub fn from_u8(v: u8) -> Self {
        match VirtioResponse::from_u8(v) {
            Some(VirtioResponse::Ok) => TmfResponse::FunctionComplete,
            Some(VirtioResponse::FunctionSucceeded) => TmfResponse::FunctionSucceeded,
            Some(VirtioResponse::FunctionRejected) => TmfResponse::FunctionRejected,
            Some(VirtioResponse::IncorrectLun) => TmfResponse::IncorrectLun,
            Some(VirtioResponse::BadTarget) => TmfResponse::BadTarget,
            _ => TmfResponse::Other(v),
        }
    }

    /// FUNCTION COMPLETE or FUNCTION SUCCEEDED.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            TmfResponse::FunctionComplete | TmfResponse::FunctionSucceeded
        )
    }
}

impl std::fmt::Display for TmfResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TmfResponse::FunctionComplete => f.write_str("FUNCTION COMPLETE"),
            TmfResponse::FunctionSucceeded => f.write_str("FUNCTION SUCCEEDED"),
            TmfResponse::FunctionRejected => f.write_str("FUNCTION REJECTED"),
            TmfResponse::IncorrectLun => f.write_str("INCORRECT LUN"),
            TmfResponse::BadTarget => f.write_str("BAD TARGET"),
            TmfResponse::Other(v) => write!(f, "response {v:#04x}"),
        }
    }
}

/// A request in flight: its slot, response length and waiter.
type AuxWaiter = (u16, usize, oneshot::Sender<Result<Vec<u8>>>);

struct AuxInner {
    ring: Virtqueue,
    free: Vec<u16>,
    /// Indexed by head.
    in_flight: Vec<Option<AuxWaiter>>,
    broken: bool,
}

/// A small virtqueue of fixed-size request/response slots (control queue,
/// event queue). Not on the I/O path: one lock, one allocation per request.
pub(crate) struct AuxQueue {
    name: &'static str,
    index: u16,
    mem: Arc<SharedMemory>,
    slots_off: usize,
    inner: Mutex<AuxInner>,
    slots_free: Semaphore,
    kick: EventFd,
    /// A clone of the call eventfd, to hand to the device again after a reset.
    call: EventFd,
    kicks: AtomicU64,
    calls: AtomicU64,
    closed: AtomicBool,
}

impl AuxQueue {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &'static str,
        index: u16,
        mem: Arc<SharedMemory>,
        ring: Virtqueue,
        slots_off: usize,
        slots: u16,
        kick: EventFd,
        call: EventFd,
    ) -> Self {
        let size = ring.size() as usize;
        Self {
            name,
            index,
            mem,
            slots_off,
            inner: Mutex::new(AuxInner {
                ring,
                free: (0..slots).rev().collect(),
                in_flight: (0..size).map(|_| None).collect(),
                broken: false,
            }),
            slots_free: Semaphore::new(slots as usize),
            kick,
            call,
            kicks: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AuxInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Offers `req` (device-readable, may be empty) and a `resp_len`-byte
    /// device-writable buffer; returns the bytes the device wrote.
    pub(crate) async fn call(&self, req: &[u8], resp_len: usize) -> Result<Vec<u8>> {
        let half = AUX_SLOT / 2;
        if req.len() > half || resp_len > half || resp_len == 0 {
            return Err(Error::TransferTooLarge {
                len: req.len().max(resp_len),
                max: half,
            });
        }
        self.slots_free
            .acquire()
            .await
            .map_err(|_| Error::Closed)?
            .forget();
        let rx = {
            let mut inner = self.lock();
            let give_back = |inner: MutexGuard<'_, AuxInner>, slot: Option<u16>| {
                let mut inner = inner;
                if let Some(s) = slot {
                    inner.free.push(s);
                }
                drop(inner);
                self.slots_free.add_permits(1);
            };
            if inner.broken || self.closed.load(Ordering::Relaxed) {
                give_back(inner, None);
                return Err(Error::Closed);
            }
            let Some(slot) = inner.free.pop() else {
                give_back(inner, None);
                return Err(Error::Closed);
            };
            let off = self.slots_off + slot as usize * AUX_SLOT;
            if let Err(e) = self.mem.write(off, req) {
                give_back(inner, Some(slot));
                return Err(e.into());
            }
            let mut segs = Vec::with_capacity(2);
            if !req.is_empty() {
                segs.push(Segment::readable(self.mem.gpa(off), req.len() as u32));
            }
            segs.push(Segment::writable(self.mem.gpa(off + half), resp_len as u32));
            let head = match inner.ring.add(&segs) {
                Ok(h) => h,
                Err(e) => {
                    give_back(inner, Some(slot));
                    return Err(Error::DeviceBroken {
                        queue: self.index,
                        source: e,
                    });
                }
            };
            let (tx, rx) = oneshot::channel();
            inner.in_flight[head as usize] = Some((slot, resp_len, tx));
            if inner.ring.publish() {
                self.kicks.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.kick.write(1) {
                    warn!(queue = self.name, error = %e, "kick failed");
                }
            }
            rx
        };
        rx.await.map_err(|_| Error::Closed)?
    }

    fn reap(&self) -> bool {
        let half = AUX_SLOT / 2;
        let mut inner = self.lock();
        loop {
            loop {
                match inner.ring.pop_used() {
                    Ok(Some((head, len))) => {
                        let Some((slot, resp_len, tx)) = inner
                            .in_flight
                            .get_mut(head as usize)
                            .and_then(Option::take)
                        else {
                            error!(queue = self.name, head, "completion with no waiter");
                            continue;
                        };
                        let off = self.slots_off + slot as usize * AUX_SLOT + half;
                        let mut buf = vec![0u8; (len as usize).min(resp_len)];
                        let r = self.mem.read(off, &mut buf).map(|()| buf);
                        inner.free.push(slot);
                        self.slots_free.add_permits(1);
                        let _ = tx.send(r.map_err(Error::from));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error!(queue = self.name, error = %e, "device broke the ring contract");
                        inner.broken = true;
                        for (_, _, tx) in inner.in_flight.iter_mut().filter_map(Option::take) {
                            let _ = tx.send(Err(Error::DeviceBroken {
                                queue: self.index,
                                source: e.clone(),
                            }));
                        }
                        return false;
                    }
                }
            }
            if !inner.ring.enable_interrupts() {
                return !self.closed.load(Ordering::Relaxed);
            }
        }
    }

    /// Re-creates the ring after the device stopped it (see
    /// `RequestQueue::reset`): requests the device did not return fail with
    /// [`Error::QueueReset`] (event buffers are then posted again by their
    /// tasks), and `restart` hands the zeroed ring to the device.
    pub(crate) fn reset(
        &self,
        restart: impl FnOnce(&Virtqueue, &EventFd, &EventFd) -> Result<()>,
    ) -> Result<()> {
        self.reap();
        let mut inner = self.lock();
        let waiters: Vec<AuxWaiter> = inner
            .in_flight
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for (slot, _, tx) in waiters {
            inner.free.push(slot);
            self.slots_free.add_permits(1);
            let _ = tx.send(Err(Error::QueueReset { queue: self.index }));
        }
        inner.ring.reset()?;
        inner.broken = false;
        restart(&inner.ring, &self.kick, &self.call)?;
        debug!(queue = self.name, "queue reset");
        Ok(())
    }

    /// The completion task.
    pub(crate) async fn run(self: Arc<Self>, call: EventFd) {
        crate::interrupt::completion_loop(self.name, call, &self.calls, || self.reap()).await
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.slots_free.close();
        let mut inner = self.lock();
        for (_, _, tx) in inner.in_flight.iter_mut().filter_map(Option::take) {
            let _ = tx.send(Err(Error::Closed));
        }
        debug!(queue = self.name, "closed");
    }
}
