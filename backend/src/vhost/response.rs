//! The `virtio_scsi_cmd_resp` of a request (VIRTIO 1.2 §5.6.6.1): the
//! response code, the SCSI status and sense, and the residual, written
//! into the chain's device-writable part; each writer returns the used
//! length. The residual is computed in one place ([`residual`]).

use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::{CmdReq, CmdResp, Response};
use zerocopy::little_endian::U32;
use zerocopy::{FromZeros, IntoBytes};

use super::guest_io::IoVecs;
use crate::scsi::CommandResult;

/// Bytes of `virtio_scsi_cmd_req` before the Data-Out buffer.
pub(super) const REQ_SIZE: usize = size_of::<CmdReq>();
/// Bytes of `virtio_scsi_cmd_resp` before the Data-In buffer.
pub(super) const RESP_SIZE: usize = size_of::<CmdResp>();
/// Bytes of `CmdResp` before `sense`.
const RESP_FIXED: usize = RESP_SIZE - vscsi_protocol::virtio_scsi::SENSE_SIZE;

/// `resid` (§5.6.6.1: the data buffer's length less the bytes
/// transferred): of the Data-Out buffer for a command that has one, else of
/// the Data-In buffer. `readable_len` / `writable_len` are the chain's
/// device-readable and device-writable lengths, headers included.
pub(super) fn residual(
    readable_len: usize,
    writable_len: usize,
    data_out_done: usize,
    data_in_done: usize,
) -> U32 {
    let data_out_len = readable_len.saturating_sub(REQ_SIZE);
    let resid = if data_out_len > 0 {
        data_out_len.saturating_sub(data_out_done)
    } else {
        writable_len
            .saturating_sub(RESP_SIZE)
            .saturating_sub(data_in_done)
    };
    U32::new(u32::try_from(resid).unwrap_or(u32::MAX))
}

/// Writes `resp` (its fixed part and `sense_len` sense bytes) and returns
/// the used length: the response header plus `data_in_len`; 0 when the
/// chain has no room for a response header.
fn put(writable: &IoVecs, resp: &CmdResp, sense_len: usize, data_in_len: usize) -> u32 {
    if writable.len() < RESP_SIZE {
        return 0;
    }
    // Only the fixed part and the valid sense bytes need writing.
    writable.copy_in(0, &resp.as_bytes()[..RESP_FIXED + sense_len]);
    (RESP_SIZE + data_in_len) as u32
}

/// Writes a response with only `response` set (no SCSI status: the
/// command did not reach a logical unit, or the transport ended it).
pub(super) fn write_bare(writable: &IoVecs, readable_len: usize, response: Response) -> u32 {
    let mut resp = CmdResp::new_zeroed();
    resp.response = response as u8;
    resp.resid = residual(readable_len, writable.len(), 0, 0);
    put(writable, &resp, 0, 0)
}

/// Writes CHECK CONDITION with `sense` (fixed format) for a command that
/// transferred nothing.
pub(super) fn write_check_condition(writable: &IoVecs, readable_len: usize, sense: Sense) -> u32 {
    let mut resp = CmdResp::new_zeroed();
    let n = sense.encode_fixed(&mut resp.sense);
    resp.sense_len = U32::new(n as u32);
    resp.resid = residual(readable_len, writable.len(), 0, 0);
    resp.status = status::CHECK_CONDITION;
    resp.response = Response::Ok as u8;
    put(writable, &resp, n, 0)
}

/// Writes the `virtio_scsi_cmd_resp` for `result` into `writable` (the
/// chain's device-writable stream; `readable_len` is the length of its
/// device-readable one); the used length is the response header plus the
/// Data-In bytes written. `short` caps Data-In (fault).
pub(super) fn write_response(
    writable: &IoVecs,
    readable_len: usize,
    result: &CommandResult,
    short: Option<u32>,
) -> u32 {
    let data_in_capacity = writable.len().saturating_sub(RESP_SIZE);
    let mut data_in_len = result.data_in_len.min(data_in_capacity);
    if let Some(cap) = short {
        data_in_len = data_in_len.min(cap as usize);
    }
    let sense = result.sense();
    let mut resp = CmdResp::new_zeroed();
    resp.sense_len = U32::new(sense.len() as u32);
    resp.resid = residual(
        readable_len,
        writable.len(),
        result.data_out_len,
        data_in_len,
    );
    resp.status = result.status;
    resp.response = Response::Ok as u8;
    resp.sense[..sense.len()].copy_from_slice(sense);
    put(writable, &resp, sense.len(), data_in_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_counts_the_data_buffer_not_transferred() {
        // A READ of 4096 into a 4096-byte Data-In buffer, 512 moved.
        assert_eq!(residual(REQ_SIZE, RESP_SIZE + 4096, 0, 512).get(), 3584);
        // A WRITE of 4096 from a Data-Out buffer: only Data-Out counts.
        assert_eq!(residual(REQ_SIZE + 4096, RESP_SIZE, 1024, 0).get(), 3072);
        assert_eq!(residual(REQ_SIZE + 4096, RESP_SIZE + 64, 0, 0).get(), 4096);
        // No data buffer at all, or more moved than there was: 0.
        assert_eq!(residual(REQ_SIZE, RESP_SIZE, 0, 0).get(), 0);
        assert_eq!(residual(REQ_SIZE + 8, RESP_SIZE, 16, 0).get(), 0);
        // Headers cut short: nothing to count from.
        assert_eq!(residual(3, 5, 0, 0).get(), 0);
    }
}
