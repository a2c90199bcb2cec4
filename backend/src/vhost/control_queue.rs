//! The control queue (VIRTIO 1.2 §5.6.6.2): task management functions and
//! asynchronous notification queries / subscriptions.
//!
//! Commands run to completion on their queue's worker before the worker
//! looks at the ring again, so when a TMF is handled no command it could
//! name is left half-done: ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
//! LOGICAL UNIT RESET and I_T NEXUS RESET answer FUNCTION COMPLETE
//! (`VIRTIO_SCSI_S_OK`), and the QUERY functions answer that no such task
//! exists (also FUNCTION COMPLETE, SAM-5 §7.6). Every request is completed,
//! which the Linux error handler depends on: it waits for TMFs without a timeout.

use tracing::{debug, info, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vscsi_protocol::lun::LunAddress;
use vscsi_protocol::virtio_scsi::{ctrl_type, tmf, CtrlAnReq, CtrlAnResp, CtrlTmfReq, Response};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

use super::chain::split_chain;
use super::guest_io::IoVecs;
use crate::scsi::ScsiBus;

/// Control queue worker state.
#[derive(Default)]
pub struct ControlQueue {
    readable: IoVecs,
    writable: IoVecs,
}

impl ControlQueue {
    /// Serves every available control request and notifies the driver.
    pub fn process(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        bus: &ScsiBus,
    ) -> std::io::Result<()> {
        let guard = mem.memory();
        let mut state = vring.get_mut();
        let mut any = false;
        while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(guard.clone()) {
            let head = chain.head_index();
            let used = match split_chain(chain, &guard, &mut self.readable, &mut self.writable) {
                Ok(()) => self.execute(bus),
                Err(fault) => {
                    warn!(
                        head,
                        ?fault,
                        "malformed control request: completed with used length 0"
                    );
                    0
                }
            };
            self.readable.clear();
            self.writable.clear();
            if let Err(e) = state.add_used(head, used) {
                warn!(head, error = %e, "control queue: add_used failed");
            }
            any = true;
        }
        if any && state.needs_notification().unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    fn execute(&mut self, bus: &ScsiBus) -> u32 {
        let mut ty = [0u8; 4];
        if self.readable.copy_out(0, &mut ty) < 4 {
            warn!("control request shorter than its type field: completed with used length 0");
            return 0;
        }
        match u32::from_le_bytes(ty) {
            ctrl_type::TMF => self.tmf(bus),
            t @ (ctrl_type::AN_QUERY | ctrl_type::AN_SUBSCRIBE) => self.an(t),
            other => {
                warn!(
                    ty = other,
                    "unknown control request type: completed with used length 0"
                );
                0
            }
        }
    }

    fn tmf(&mut self, bus: &ScsiBus) -> u32 {
        let mut raw = [0u8; size_of::<CtrlTmfReq>()];
        if self.readable.copy_out(0, &mut raw) < raw.len() || self.writable.is_empty() {
            warn!("TMF request or response too short: completed with used length 0");
            return 0;
        }
        let Ok(req) = CtrlTmfReq::read_from_bytes(&raw) else {
            return 0;
        };
        let subtype = req.subtype.get();
        let response = match LunAddress::decode(&req.lun) {
            Err(_) => Response::BadTarget,
            Ok(addr) => {
                let (target, lun) = match addr {
                    LunAddress::Unit(l) => (l.target, Some(l.lun)),
                    LunAddress::ReportLunsWellKnown { target } => (target, None),
                };
                match bus.target(target) {
                    None => Response::BadTarget,
                    Some(t) => match subtype {
                        tmf::LOGICAL_UNIT_RESET | tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET
                            if lun.is_some_and(|l| !t.has_lun(l)) =>
                        {
                            Response::IncorrectLun
                        }
                        tmf::ABORT_TASK
                        | tmf::ABORT_TASK_SET
                        | tmf::CLEAR_TASK_SET
                        | tmf::LOGICAL_UNIT_RESET
                        | tmf::I_T_NEXUS_RESET
                        | tmf::QUERY_TASK
                        | tmf::QUERY_TASK_SET
                        | tmf::CLEAR_ACA => Response::Ok,
                        _ => Response::FunctionRejected,
                    },
                }
            }
        };
        info!(subtype, tag = req.tag.get(), lun = ?req.lun, response = response.name(), "task management function");
        self.writable.copy_in(0, &[response as u8]);
        1
    }

    fn an(&mut self, ty: u32) -> u32 {
        let mut raw = [0u8; size_of::<CtrlAnReq>()];
        let resp_len = size_of::<CtrlAnResp>();
        if self.readable.copy_out(0, &mut raw) < raw.len() || self.writable.len() < resp_len {
            warn!("AN request or response too short: completed with used length 0");
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
