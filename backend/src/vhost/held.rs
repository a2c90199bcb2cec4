//! Commands a fault holds or delays, and the part of a request queue that
//! other threads reach ([`QueueShared`]): the control queue completes held
//! commands a TMF covers (ABORTED or RESET) and waits for delayed ones and
//! for the queue's io_uring transfers in flight; `stop_vring` and a
//! disconnect complete every held command (RESET). Only used when fault
//! injection or io_uring is active; nothing held is ever dropped without a
//! used entry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vhost_user_backend::VringT;
use vm_memory::GuestMemoryLoadGuard;
use vscsi_protocol::virtio_scsi::Response;

use super::device_ring::DeviceRing;
use super::guest_io::IoVecs;
use super::response::write_bare;
use crate::fault::FaultTable;
use crate::vhost::dirty::{GuestMem, Vring};

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
    pub(super) head: u16,
    pub(super) target: u8,
    pub(super) lun: u16,
    pub(super) tag: u64,
    pub(super) readable_len: usize,
    pub(super) writable: IoVecs,
    /// Keeps the mapping `writable` points into alive.
    pub(super) mem: GuestMemoryLoadGuard<GuestMem>,
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
    vring: Option<Vring>,
    held: Vec<HeldRequest>,
    current: Option<Delayed>,
}

/// The part of a request queue other threads reach: held and delayed
/// commands (only used when fault injection is active), and the ring,
/// which whoever completes a chain writes its used entry through.
pub struct QueueShared {
    pub(super) index: u16,
    /// The queue's ring, in its negotiated format.
    pub ring: Arc<DeviceRing>,
    state: Mutex<SharedState>,
    cv: Condvar,
    /// Transfers in flight in the queue's io_uring engine (written by the
    /// queue worker only): a TMF waits for them before it is answered.
    pub(super) in_flight: AtomicUsize,
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
            ring: Arc::default(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Waits (up to [`ABORT_WAIT`]) until the queue's io_uring engine has
    /// nothing in flight: a TMF is answered after the commands it covers,
    /// and the engine does not track them by tag, so it waits for all.
    pub(super) fn wait_transfers(&self) {
        let deadline = Instant::now() + ABORT_WAIT;
        while self.in_flight.load(Ordering::Acquire) != 0 {
            if Instant::now() >= deadline {
                warn!(
                    queue = self.index,
                    "TMF answered with io_uring transfers still in flight"
                );
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
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
                Some(vring) => complete_held(&self.ring, &vring, taken, response),
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
        self.wait_transfers();
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

    pub(super) fn hold(&self, vring: &Vring, req: HeldRequest) {
        let mut s = lock(&self.state);
        if s.vring.is_none() {
            s.vring = Some(vring.clone());
        }
        s.held.push(req);
    }

    /// Waits `delay` for one command, unless a TMF cuts it short: then
    /// returns the response to complete it with.
    pub(super) fn delay(
        &self,
        target: u8,
        lun: u16,
        tag: u64,
        delay: Duration,
    ) -> Option<Response> {
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
    pub(super) fn delayed_done(&self) {
        lock(&self.state).current = None;
        self.cv.notify_all();
    }
}

/// Writes a bare `response` into each held command and completes it.
pub(super) fn complete_held(
    ring: &DeviceRing,
    vring: &Vring,
    reqs: Vec<HeldRequest>,
    response: Response,
) {
    let Some(mem) = reqs.first().map(|r| r.mem.clone()) else {
        return;
    };
    let mut state = vring.get_mut();
    for r in reqs {
        let used = write_bare(&r.writable, r.readable_len, response);
        if let Err(e) = ring.add_used(&mut state, &r.mem, r.head, used) {
            crate::limited_site!(warn, head = r.head, error = %e, "completing a held command failed");
        }
    }
    if ring.wants_call(&mut state, &mem) {
        if let Err(e) = state.signal_used_queue() {
            crate::limited_site!(warn, error = %e, "signalling held completions failed");
        }
    }
}
