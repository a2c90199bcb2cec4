//! What a command's completion looks like to a caller: [`Response`],
//! [`CommandError`], [`LunInfo`], and the virtio LUN field of an address.

use vscsi_protocol::data::StandardInquiry;
use vscsi_protocol::lun::{Lun, MAX_LUN};
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

use crate::error::{Error, Result};
use crate::queue::{Completed, RawResponse};

/// A completed command: the virtio response, SCSI status, sense, residual and data-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The virtio-scsi `response` byte (§5.6.6.1); see [`Response::virtio`].
    pub response: u8,
    /// SCSI status (valid when `response` is OK).
    pub status: u8,
    /// Sense data, as many bytes as the device reported (at most 96).
    pub sense: Vec<u8>,
    /// Bytes of the data buffer not transferred.
    pub residual: u32,
    /// Data-in bytes the device returned.
    pub data: Vec<u8>,
}

impl Response {
    /// The decoded virtio response code, if it is one the spec defines.
    pub fn virtio(&self) -> Option<VirtioResponse> {
        VirtioResponse::from_u8(self.response)
    }

    /// The command completed with GOOD status.
    pub fn is_good(&self) -> bool {
        self.response == VirtioResponse::Ok as u8 && self.status == status::GOOD
    }

    /// Decoded sense data, if any.
    pub fn sense_data(&self) -> Option<Sense> {
        Sense::decode(&self.sense).ok()
    }

    /// `Ok(self)` when GOOD, else [`CommandError`] describing the failure.
    pub fn ok(self) -> std::result::Result<Self, CommandError> {
        if self.is_good() {
            Ok(self)
        } else {
            Err(CommandError(self))
        }
    }
}

/// A command that completed, but not with GOOD status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct CommandError(pub Response);

/// The virtio LUN field of `target`:`lun` (§5.6.6.1), or a clear error
/// for a LUN number the flat space cannot carry.
pub(crate) fn lun_field(target: u8, lun: u16) -> Result<[u8; 8]> {
    Lun::new(target, lun)
        .map(Lun::encode)
        .ok_or_else(|| Error::BadConfig(format!("LUN {lun} > {MAX_LUN}")))
}

pub(crate) fn describe(r: &Response) -> String {
    match r.virtio() {
        Some(VirtioResponse::Ok) => match r.sense_data() {
            Some(s) => format!("{} status: {s}", status::name(r.status)),
            None => format!("{} status", status::name(r.status)),
        },
        Some(v) => format!("virtio response {}", v.name()),
        None => format!("virtio response {:#04x} (undefined)", r.response),
    }
}

/// A logical unit found by [`Driver::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    /// Its address.
    pub lun: Lun,
    /// Standard INQUIRY data.
    pub inquiry: StandardInquiry,
    /// Number of logical blocks (0 when not a block device).
    pub blocks: u64,
    /// Logical block length in bytes.
    pub block_size: u32,
}

impl LunInfo {
    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
}

/// The response of `raw` without data (a zero-copy read keeps it in the slot).
pub(crate) fn header_response(raw: &RawResponse) -> Response {
    Response {
        response: raw.resp.response,
        status: raw.resp.status,
        sense: raw.resp.sense[..raw.sense_len].to_vec(),
        residual: raw.resp.resid.get(),
        data: Vec::new(),
    }
}

/// The response of a completed command, with `data_in_len` bytes of data-in copied out.
pub(crate) fn to_response(done: &Completed, data_in_len: usize) -> Result<Response> {
    let raw = done.read(data_in_len)?;
    Ok(Response {
        response: raw.resp.response,
        status: raw.resp.status,
        sense: raw.resp.sense[..raw.sense_len].to_vec(),
        residual: raw.resp.resid.get(),
        data: raw.data,
    })
}
