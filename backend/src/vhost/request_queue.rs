//! Request queues (VIRTIO 1.2 §5.6.6.1): pop a chain, parse the command
//! header, run the SCSI command, write the response, complete.
//!
//! Every chain taken off the ring is completed, whatever it holds: a chain
//! with no room for a response is completed with used length 0 and logged;
//! any other malformed chain gets `VIRTIO_SCSI_S_FAILURE`. Completions of a
//! batch are published together and the driver is notified once, only when
//! `needs_notification()` says so (EVENT_IDX, §2.7.10).

use tracing::{debug, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vscsi_protocol::lun::{LunAddress, LunError};
use vscsi_protocol::sense::Sense;
use vscsi_protocol::virtio_scsi::{CmdReq, CmdResp, Response};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::chain::split_chain;
use super::guest_io::{GuestDataIn, GuestDataOut, IoVecs};
use crate::scsi::{DataIn, DataOut, Request, ScsiBus};

const REQ_SIZE: usize = size_of::<CmdReq>();
const RESP_SIZE: usize = size_of::<CmdResp>();
/// Bytes of `CmdResp` before `sense`.
const RESP_FIXED: usize = RESP_SIZE - vscsi_protocol::virtio_scsi::SENSE_SIZE;

/// Per-queue worker state: the scratch iovec lists reused by every request.
#[derive(Default)]
pub struct RequestQueue {
    readable: IoVecs,
    writable: IoVecs,
}

impl RequestQueue {
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
        loop {
            if let Err(e) = state.disable_notification() {
                warn!(error = %e, "request queue: cannot disable notifications");
            }
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(guard.clone()) {
                let head = chain.head_index();
                let fault = split_chain(chain, &guard, &mut self.readable, &mut self.writable);
                let used = match fault {
                    Ok(()) => self.execute(bus),
                    Err(fault) => {
                        warn!(
                            head,
                            ?fault,
                            "malformed request chain: answering VIRTIO_SCSI_S_FAILURE"
                        );
                        self.fail(Response::Failure)
                    }
                };
                self.readable.clear();
                self.writable.clear();
                if let Err(e) = state.add_used(head, used) {
                    warn!(head, error = %e, "request queue: add_used failed");
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
        if state.needs_notification().unwrap_or(true) {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    /// Runs one well-formed chain; returns the used length.
    fn execute(&mut self, bus: &ScsiBus) -> u32 {
        if self.writable.len() < RESP_SIZE {
            return self.fail(Response::Failure);
        }
        let mut hdr = [0u8; REQ_SIZE];
        if self.readable.copy_out(0, &mut hdr) < REQ_SIZE {
            warn!(
                len = self.readable.len(),
                "request header shorter than 51 bytes: VIRTIO_SCSI_S_FAILURE"
            );
            return self.fail(Response::Failure);
        }
        let Ok(req) = CmdReq::read_from_bytes(&hdr) else {
            return self.fail(Response::Failure);
        };
        let (target, lun) = match LunAddress::decode(&req.lun) {
            Ok(LunAddress::Unit(l)) => (l.target, Some(l.lun)),
            Ok(LunAddress::ReportLunsWellKnown { target }) => (target, None),
            Err(LunError::BadFirstByte(b)) => {
                debug!(
                    byte0 = b,
                    "LUN field byte 0 is not 1: VIRTIO_SCSI_S_BAD_TARGET"
                );
                return self.fail(Response::BadTarget);
            }
            // A target byte we can read, but a LUN structure we do not
            // support: no logical unit is addressed, which SCSI answers with
            // LOGICAL UNIT NOT SUPPORTED (the target's missing-LUN path).
            Err(e) => {
                debug!(error = %e, "unsupported LUN field");
                (req.lun[1], Some(u16::MAX))
            }
        };
        let Some(target) = bus.target(target) else {
            return self.fail(Response::BadTarget);
        };
        let request = Request {
            cdb: &req.cdb,
            tag: req.tag.get(),
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
            return self.fail(Response::Overrun);
        }
        let data_in_len = result.data_in_len.min(data_in.capacity());
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
        (RESP_SIZE + data_in_len) as u32
    }

    /// Completes the current chain with a bare `response` code; returns the used length.
    fn fail(&mut self, response: Response) -> u32 {
        if self.writable.len() < RESP_SIZE {
            warn!(
                writable = self.writable.len(),
                "request has no room for virtio_scsi_cmd_resp: completing with used length 0"
            );
            return 0;
        }
        let mut resp = CmdResp::new_zeroed();
        resp.response = response as u8;
        resp.resid = U32::new((self.writable.len() - RESP_SIZE) as u32);
        self.writable.copy_in(0, &resp.as_bytes()[..RESP_FIXED]);
        RESP_SIZE as u32
    }
}
