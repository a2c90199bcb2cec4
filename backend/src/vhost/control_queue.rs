//! The control queue (VIRTIO 1.2 §5.6.6.2): task management functions and
//! asynchronous notification queries / subscriptions.
//!
//! Commands normally run to completion on their queue's worker, so the only
//! commands a TMF can find in flight are the ones fault injection holds
//! (stall) or delays (latency); see [`crate::fault`]. Before a TMF is
//! answered, every command it covers is completed on its request queue:
//!
//! | TMF | covered commands complete with | answer |
//! |---|---|---|
//! | ABORT TASK | ABORTED (the one tag) | FUNCTION COMPLETE, found or not |
//! | ABORT TASK SET, CLEAR TASK SET | ABORTED (all of the LUN) | FUNCTION COMPLETE |
//! | LOGICAL UNIT RESET | RESET (all of the LUN); the LU is reset (unit attention) | FUNCTION COMPLETE |
//! | I_T NEXUS RESET | RESET (all of the target); every LU of it is reset | FUNCTION COMPLETE |
//! | QUERY TASK / QUERY TASK SET | (nothing) | FUNCTION SUCCEEDED if in flight, else FUNCTION COMPLETE |
//! | CLEAR ACA | (nothing: ACA is never established) | FUNCTION COMPLETE |
//! | anything else | | FUNCTION REJECTED |
//!
//! A missing target answers BAD_TARGET, a missing LUN INCORRECT LUN (except
//! for I_T NEXUS RESET, which addresses the target). Every request is
//! completed, which the Linux error handler depends on: it waits for TMFs
//! without a timeout.

use std::sync::Arc;

use tracing::debug;
use vhost_user_backend::VringT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vscsi_protocol::lun::LunAddress;
use vscsi_protocol::virtio_scsi::{ctrl_type, tmf, CtrlAnReq, CtrlAnResp, CtrlTmfReq, Response};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

use super::chain::split_chain;
use super::device_ring::DeviceRing;
use super::guest_io::IoVecs;
use super::queue_metrics::QueueMetrics;
use super::request_queue::{Covers, QueueShared};
use super::ring_guard::malformed;
use super::ring_guard::RingGuard;
use crate::fault::FaultTable;
use crate::limited;
use crate::scsi::ScsiBus;
use crate::vhost::dirty::{GuestMem, Vring};

/// Control queue worker state.
pub struct ControlQueue {
    readable: IoVecs,
    writable: IoVecs,
    guard: RingGuard,
}

impl Default for ControlQueue {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

/// What a TMF reaches beyond its own request: the bus and every request
/// queue (not the SAM-5 task set, which is the commands of one LU).
pub struct TmfScope<'a> {
    /// The SCSI bus.
    pub bus: &'a ScsiBus,
    /// The request queues' shared state (held commands).
    pub queues: &'a [Arc<QueueShared>],
    /// The fault table (which LUNs ignore aborts or resets).
    pub faults: &'a FaultTable,
}

impl ControlQueue {
    /// The control queue of a device of a controller counting in `metrics`.
    pub fn new(metrics: Arc<QueueMetrics>) -> Self {
        Self::with_ring(metrics, Arc::default())
    }

    /// The control queue whose ring is `ring` (the device sets its format).
    pub fn with_ring(metrics: Arc<QueueMetrics>, ring: Arc<DeviceRing>) -> Self {
        Self {
            readable: IoVecs::default(),
            writable: IoVecs::default(),
            guard: RingGuard::with_ring(0, metrics, ring),
        }
    }

    /// Serves every available control request and notifies the driver.
    pub fn process(
        &mut self,
        vring: &Vring,
        mem: &GuestMemoryAtomic<GuestMem>,
        tasks: &TmfScope<'_>,
    ) -> std::io::Result<()> {
        let guard = mem.memory();
        let ring = self.guard.ring().clone();
        loop {
            // The ring lock is not held while a TMF waits for request
            // queues to complete the commands it covers.
            let next = {
                let mut state = vring.get_mut();
                if !self.guard.serving(&state) {
                    return Ok(());
                }
                if let Err(e) = ring.disable_notification(&mut state, &guard) {
                    let s = limited!(self.guard.logs.ring_ops, warn, error = %e, "control queue: cannot disable notifications");
                    self.guard.note_suppressed(s);
                }
                match self.guard.pop(state.get_queue_mut(), &guard) {
                    Ok(next) => next,
                    Err(v) => {
                        // Every request taken before was completed already.
                        self.guard.break_ring(&mut state, v);
                        return Ok(());
                    }
                }
            };
            let Some(head) = next else {
                // Re-enabling writes avail_event (EVENT_IDX), so the driver
                // kicks for its next request; re-check what came meanwhile.
                match ring.enable_notification(&mut vring.get_mut(), &guard) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        let s = limited!(self.guard.logs.ring_ops, warn, error = %e, "control queue: cannot enable notifications");
                        self.guard.note_suppressed(s);
                        break;
                    }
                }
            };
            let used = match split_chain(
                self.guard.descriptors(),
                &guard,
                &mut self.readable,
                &mut self.writable,
            ) {
                Ok(()) => self.execute(tasks),
                Err(fault) => {
                    malformed!(
                        self.guard,
                        head,
                        ?fault,
                        "malformed control request: completed with used length 0"
                    );
                    0
                }
            };
            self.readable.clear();
            self.writable.clear();
            let mut state = vring.get_mut();
            if let Err(e) = ring.add_used(&mut state, &guard, head, used) {
                let s = limited!(self.guard.logs.ring_ops, warn, head, error = %e, "control queue: add_used failed");
                self.guard.note_suppressed(s);
            }
            if ring.wants_call(&mut state, &guard) {
                state.signal_used_queue()?;
            }
        }
        Ok(())
    }

    fn execute(&mut self, tasks: &TmfScope<'_>) -> u32 {
        let mut ty = [0u8; 4];
        if self.readable.copy_out(0, &mut ty) < 4 {
            malformed!(
                self.guard,
                "control request shorter than its type field: completed with used length 0"
            );
            return 0;
        }
        match u32::from_le_bytes(ty) {
            ctrl_type::TMF => self.tmf(tasks),
            t @ (ctrl_type::AN_QUERY | ctrl_type::AN_SUBSCRIBE) => self.an(t),
            other => {
                let s = limited!(
                    self.guard.logs.request,
                    warn,
                    ty = other,
                    "unknown control request type: completed with used length 0"
                );
                self.guard.note_suppressed(s);
                0
            }
        }
    }

    fn tmf(&mut self, tasks: &TmfScope<'_>) -> u32 {
        let mut raw = [0u8; size_of::<CtrlTmfReq>()];
        if self.readable.copy_out(0, &mut raw) < raw.len() || self.writable.is_empty() {
            malformed!(
                self.guard,
                "TMF request or response too short: completed with used length 0"
            );
            return 0;
        }
        let Ok(req) = CtrlTmfReq::read_from_bytes(&raw) else {
            return 0;
        };
        let subtype = req.subtype.get();
        let tag = req.tag.get();
        let response = match LunAddress::decode(&req.lun) {
            Err(_) => Response::BadTarget,
            Ok(LunAddress::Unit(l)) => run_tmf(tasks, subtype, l.target, l.lun, tag),
            // The REPORT LUNS well-known LU has no task set of its own.
            Ok(LunAddress::ReportLunsWellKnown { target }) => match tasks.bus.target(target) {
                None => Response::BadTarget,
                Some(_) if subtype == tmf::I_T_NEXUS_RESET => {
                    run_tmf(tasks, subtype, target, 0, tag)
                }
                Some(_) => Response::IncorrectLun,
            },
        };
        let s = limited!(
            self.guard.logs.request,
            info,
            subtype = tmf_name(subtype),
            tag,
            lun = ?req.lun,
            response = response.name(),
            "task management function"
        );
        self.guard.note_suppressed(s);
        self.writable.copy_in(0, &[response as u8]);
        1
    }

    fn an(&mut self, ty: u32) -> u32 {
        let mut raw = [0u8; size_of::<CtrlAnReq>()];
        let resp_len = size_of::<CtrlAnResp>();
        if self.readable.copy_out(0, &mut raw) < raw.len() || self.writable.len() < resp_len {
            malformed!(
                self.guard,
                "AN request or response too short: completed with used length 0"
            );
            return 0;
        }
        // No asynchronous notification classes are supported (event_actual = 0).
        debug!(
            ty,
            "asynchronous notification request: no event class supported"
        );
        let resp = CtrlAnResp {
            event_actual: U32::new(0),
            response: Response::Ok as u8,
        };
        self.writable.copy_in(0, resp.as_bytes());
        resp_len as u32
    }
}

/// The spec's name of a TMF subtype.
pub fn tmf_name(subtype: u32) -> &'static str {
    match subtype {
        tmf::ABORT_TASK => "ABORT TASK",
        tmf::ABORT_TASK_SET => "ABORT TASK SET",
        tmf::CLEAR_ACA => "CLEAR ACA",
        tmf::CLEAR_TASK_SET => "CLEAR TASK SET",
        tmf::I_T_NEXUS_RESET => "I_T NEXUS RESET",
        tmf::LOGICAL_UNIT_RESET => "LOGICAL UNIT RESET",
        tmf::QUERY_TASK => "QUERY TASK",
        tmf::QUERY_TASK_SET => "QUERY TASK SET",
        _ => "unknown TMF",
    }
}

/// Runs one TMF on `target:lun` (see the module table); returns its answer.
/// Covered commands are on their used rings when this returns.
pub fn run_tmf(tasks: &TmfScope<'_>, subtype: u32, target: u8, lun: u16, tag: u64) -> Response {
    let Some(t) = tasks.bus.target(target) else {
        return Response::BadTarget;
    };
    if subtype != tmf::I_T_NEXUS_RESET && !t.has_lun(lun) {
        return Response::IncorrectLun;
    }
    let lun_covers = |tag| Covers {
        target,
        lun: Some(lun),
        tag,
    };
    let complete = |covers: Covers, response: Response, level: u8| -> usize {
        let keep = |t: u8, l: u16| tasks.faults.survives(t, l, level);
        tasks
            .queues
            .iter()
            .map(|q| q.complete(&covers, keep, response, tasks.faults))
            .sum()
    };
    let any = |covers: Covers| tasks.queues.iter().any(|q| q.any(&covers));
    match subtype {
        tmf::ABORT_TASK => {
            let n = complete(lun_covers(Some(tag)), Response::Aborted, 0);
            debug!(target, lun, tag, aborted = n, "ABORT TASK");
            Response::Ok
        }
        tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET => {
            let n = complete(lun_covers(None), Response::Aborted, 0);
            debug!(target, lun, aborted = n, "task set aborted");
            Response::Ok
        }
        tmf::LOGICAL_UNIT_RESET => {
            let n = complete(lun_covers(None), Response::Reset, 1);
            if let Some(lu) = t.lun(lun) {
                lu.reset();
            }
            debug!(target, lun, reset = n, "LOGICAL UNIT RESET");
            Response::Ok
        }
        tmf::I_T_NEXUS_RESET => {
            let covers = Covers {
                target,
                lun: None,
                tag: None,
            };
            let n = complete(covers, Response::Reset, 2);
            t.reset();
            debug!(target, reset = n, "I_T NEXUS RESET");
            Response::Ok
        }
        tmf::QUERY_TASK if any(lun_covers(Some(tag))) => Response::FunctionSucceeded,
        tmf::QUERY_TASK_SET if any(lun_covers(None)) => Response::FunctionSucceeded,
        tmf::QUERY_TASK | tmf::QUERY_TASK_SET | tmf::CLEAR_ACA => Response::Ok,
        _ => Response::FunctionRejected,
    }
}
