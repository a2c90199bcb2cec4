//! Transport-agnostic SCSI target: a bus of targets, each with logical
//! units backed by raw images (SAM-5 SCSI domain model: SCSI domain → SCSI target
//! device → logical units).
//!
//! Nothing here knows virtio or vhost. A transport decodes its request,
//! picks the [`Target`] from the [`ScsiBus`], and calls
//! [`Target::execute`] with the CDB and its data buffers (the [`io`] traits).
//! The returned [`CommandResult`] carries the status, the sense data (fixed
//! format, SPC-5 §4.4.3, for autosense) and the number of bytes moved.
//!
//! Every command is answered with a SCSI status: malformed, short or empty
//! CDBs give CHECK CONDITION, never a panic. Only transports fail a request.
//!
//! Command families, one module each: [`inquiry`], [`capacity`], [`rw`],
//! [`report_luns`], [`sense_cmd`] (REQUEST SENSE), [`mode`], [`sync`]; the
//! opcode table in [`dispatch`] routes CDBs to them.

pub mod capacity;
pub mod dispatch;
pub mod inquiry;
pub mod io;
pub mod lu;
pub mod mode;
pub mod report_luns;
pub mod rw;
pub mod sense_cmd;
pub mod sync;
pub mod target;

use std::fmt;

use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::SENSE_SIZE;

pub use crate::storage::OpenError;
pub use io::{DataIn, DataOut, SliceDataOut, VecDataIn, NO_DATA_OUT};
pub use lu::{LogicalUnit, LunOptions};
pub use target::{ConfigError, ScsiBus, Target};

/// One SCSI command as the transport received it (SAM-5 "Execute Command" procedure).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The CDB; may be longer than the command needs (virtio pads to 32
    /// bytes) or shorter (malformed: answered with CHECK CONDITION).
    pub cdb: &'a [u8],
    /// Command identifier (for logs; the target keeps no per-tag state).
    pub tag: u64,
    /// Task attribute (SAM-5 task attributes; virtio: 0 SIMPLE, 1 ORDERED, 2 HEAD OF
    /// QUEUE, 3 ACA). Commands run to completion one at a time per caller,
    /// so every attribute is honoured as SIMPLE; ordering across queues is
    /// the transport's business.
    pub task_attr: u8,
}

/// The outcome of one command: status, sense data and data lengths.
///
/// `Copy`, fixed size: building one allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandResult {
    /// SCSI status (SAM-5 status codes), see [`vscsi_protocol::status`].
    pub status: u8,
    sense: [u8; SENSE_SIZE],
    sense_len: u8,
    /// Bytes of valid data written to the Data-In buffer, from offset 0.
    pub data_in_len: usize,
    /// Bytes of the Data-Out buffer consumed.
    pub data_out_len: usize,
}

impl CommandResult {
    /// GOOD status with `data_in_len` bytes of Data-In.
    pub const fn good(data_in_len: usize) -> Self {
        Self {
            status: status::GOOD,
            sense: [0; SENSE_SIZE],
            sense_len: 0,
            data_in_len,
            data_out_len: 0,
        }
    }

    /// A status without sense data (e.g. BUSY, TASK SET FULL).
    pub const fn with_status(status: u8) -> Self {
        Self {
            status,
            ..Self::good(0)
        }
    }

    /// CHECK CONDITION with `sense` in fixed format (SPC-5 §4.4.3, 18
    /// bytes). The control mode page reports D_SENSE=0, so fixed format is
    /// what initiators expect.
    pub fn check_condition(sense: Sense) -> Self {
        let mut r = Self::with_status(status::CHECK_CONDITION);
        r.sense_len = sense.encode_fixed(&mut r.sense) as u8;
        r
    }

    /// CHECK CONDITION with `sense` in descriptor format (SPC-5 §4.4.2).
    pub fn check_condition_descriptor(sense: Sense) -> Self {
        let mut r = Self::with_status(status::CHECK_CONDITION);
        r.sense_len = sense.encode_descriptor(&mut r.sense) as u8;
        r
    }

    /// Records how many Data-Out bytes were consumed.
    pub const fn with_data_out(mut self, data_out_len: usize) -> Self {
        self.data_out_len = data_out_len;
        self
    }

    /// The sense data (empty unless CHECK CONDITION).
    pub fn sense(&self) -> &[u8] {
        &self.sense[..usize::from(self.sense_len)]
    }

    /// The sense data decoded, if any.
    pub fn decoded_sense(&self) -> Option<Sense> {
        Sense::decode(self.sense()).ok()
    }

    /// True for GOOD status.
    pub fn is_good(&self) -> bool {
        self.status == status::GOOD
    }
}

impl fmt::Debug for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CommandResult");
        d.field("status", &status::name(self.status));
        if let Some(s) = self.decoded_sense() {
            d.field("sense", &format_args!("{s}"));
        }
        d.field("data_in_len", &self.data_in_len)
            .field("data_out_len", &self.data_out_len)
            .finish()
    }
}

/// Maps an I/O error on the image to sense data (SBC-4 error reporting;
/// the same choices as QEMU's scsi-disk): ENOSPC/EDQUOT → 7/27/07
/// SPACE ALLOCATION FAILED WRITE PROTECT, EROFS/EACCES/EPERM on writes →
/// 7/27/00 WRITE PROTECTED, anything else → 3/11/00 UNRECOVERED READ ERROR
/// for reads and 3/0C/00 WRITE ERROR for writes.
pub(crate) fn io_error_sense(e: &std::io::Error, write: bool) -> Sense {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Sense::SPACE_ALLOCATION_FAILED,
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) if write => {
            Sense::WRITE_PROTECTED
        }
        _ if write => Sense::WRITE_ERROR,
        _ => Sense::UNRECOVERED_READ_ERROR,
    }
}

/// Copies `data`, truncated to the ALLOCATION LENGTH `alloc_len` (SPC-5
/// §4.2.5.6: "the device server shall terminate transfers to the Data-In
/// Buffer when the number of bytes ... equals the allocation length") and
/// to the buffer, and reports GOOD with the bytes actually transferred.
pub(crate) fn respond(data_in: &mut dyn DataIn, alloc_len: usize, data: &[u8]) -> CommandResult {
    let n = data.len().min(alloc_len);
    CommandResult::good(data_in.write_at(0, &data[..n]))
}

/// INVALID FIELD IN CDB with a CDB field pointer.
pub(crate) fn invalid_field(byte: u16, bit: Option<u8>) -> CommandResult {
    CommandResult::check_condition(Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, byte, bit))
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_byte_exact() {
        let r = CommandResult::check_condition(Sense::LBA_OUT_OF_RANGE);
        assert_eq!(r.status, 2);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0]
        );
        let g = CommandResult::good(36);
        assert!(g.is_good());
        assert!(g.sense().is_empty());
        let d = CommandResult::check_condition_descriptor(Sense::WRITE_PROTECTED);
        assert_eq!(d.sense(), &[0x72, 7, 0x27, 0, 0, 0, 0, 0]);
        assert_eq!(
            format!("{r:?}"),
            "CommandResult { status: \"CHECK CONDITION\", sense: ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (5/21/00), data_in_len: 0, data_out_len: 0 }"
        );
    }

    #[test]
    fn io_errors_map_to_sense() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(
            io_error_sense(&e(libc::ENOSPC), true),
            Sense::SPACE_ALLOCATION_FAILED
        );
        assert_eq!(
            io_error_sense(&e(libc::EROFS), true),
            Sense::WRITE_PROTECTED
        );
        assert_eq!(io_error_sense(&e(libc::EIO), true), Sense::WRITE_ERROR);
        assert_eq!(
            io_error_sense(&e(libc::EIO), false),
            Sense::UNRECOVERED_READ_ERROR
        );
    }
}
