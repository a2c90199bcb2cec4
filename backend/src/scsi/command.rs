//! One command as the target sees it ([`Request`]) and what it answers
//! ([`CommandResult`]: status, sense, bytes moved), with the helpers every
//! command family uses to answer.

use std::fmt;

use vscsi_protocol::sense::{Sense, DESCRIPTOR_MAX_LEN};
use vscsi_protocol::status;

use super::io::{DataIn, DataOut, MediumTransfer};
use super::lu::LogicalUnit;
use super::nexus::Nexus;

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
    /// The I_T nexus the command arrived on (persistent reservations,
    /// per-nexus unit attentions); [`Nexus::local`] where the transport has
    /// only one initiator.
    pub nexus: &'a Nexus,
}

/// The outcome of one command: status, sense data and data lengths.
///
/// `Copy`, fixed size: building one allocates nothing. The sense buffer
/// holds the largest sense this target builds ([`DESCRIPTOR_MAX_LEN`]
/// bytes), well within the virtio-scsi 96-byte sense field.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandResult {
    /// SCSI status (SAM-5 status codes), see [`vscsi_protocol::status`].
    pub status: u8,
    sense: [u8; DESCRIPTOR_MAX_LEN],
    sense_len: u8,
    decoded: Option<Sense>,
    /// Bytes of valid data written to the Data-In buffer, from offset 0.
    pub data_in_len: usize,
    /// Bytes of the Data-Out buffer consumed.
    pub data_out_len: usize,
    /// A READ/WRITE data transfer left to the transport (only when its
    /// buffers said [`DataIn::can_defer`]): the status is final only once
    /// the transport ran it and called [`rw::complete_transfer`].
    transfer: Option<MediumTransfer>,
    /// The data buffer is smaller than the CDB's transfer (see
    /// [`CommandResult::buffer_overrun`]).
    overrun: bool,
}

impl CommandResult {
    /// GOOD status with `data_in_len` bytes of Data-In.
    pub const fn good(data_in_len: usize) -> Self {
        Self {
            status: status::GOOD,
            sense: [0; DESCRIPTOR_MAX_LEN],
            sense_len: 0,
            decoded: None,
            data_in_len,
            data_out_len: 0,
            transfer: None,
            overrun: false,
        }
    }

    /// The same result with `transfer` left to the transport.
    pub(crate) const fn with_transfer(mut self, transfer: MediumTransfer) -> Self {
        self.transfer = Some(transfer);
        self
    }

    /// The data transfer the transport still has to execute, if any.
    pub fn transfer(&self) -> Option<&MediumTransfer> {
        self.transfer.as_ref()
    }

    /// A status without sense data (e.g. BUSY, TASK SET FULL).
    pub const fn with_status(status: u8) -> Self {
        Self {
            status,
            ..Self::good(0)
        }
    }

    /// CHECK CONDITION with `sense` in fixed format (SPC-5 §4.4.3, 18
    /// bytes). The target re-encodes it in descriptor format for a logical
    /// unit whose control mode page has D_SENSE=1.
    pub fn check_condition(sense: Sense) -> Self {
        let mut r = Self::with_status(status::CHECK_CONDITION);
        r.sense_len = sense.encode_fixed(&mut r.sense) as u8;
        r.decoded = Some(sense);
        r
    }

    /// The command's data buffer is smaller than the transfer its CDB asks
    /// for: a mismatch between initiator and transport, not an error of the
    /// command. A transport that has a code for it answers with that
    /// ([`CommandResult::is_overrun`]; virtio-scsi: `VIRTIO_SCSI_S_OVERRUN`,
    /// VIRTIO 1.2 §5.6.6.1); for others it is CHECK CONDITION, ILLEGAL
    /// REQUEST, INVALID FIELD IN COMMAND INFORMATION UNIT (5/0E/03).
    pub fn buffer_overrun() -> Self {
        Self {
            overrun: true,
            ..Self::check_condition(Sense::INVALID_FIELD_IN_COMMAND_IU)
        }
    }

    /// Whether this is a [`CommandResult::buffer_overrun`].
    pub fn is_overrun(&self) -> bool {
        self.overrun
    }

    /// CHECK CONDITION with `sense` in descriptor format (SPC-5 §4.4.2).
    pub fn check_condition_descriptor(sense: Sense) -> Self {
        let mut r = Self::with_status(status::CHECK_CONDITION);
        r.sense_len = sense.encode_descriptor(&mut r.sense) as u8;
        r.decoded = Some(sense);
        r
    }

    /// The same result with its sense data in descriptor format (D_SENSE=1);
    /// INFORMATION values beyond 32 bits survive, since the original sense
    /// is kept.
    pub(crate) fn in_descriptor_format(self) -> Self {
        match self.decoded {
            Some(s) if self.sense.first() != Some(&0x72) => Self {
                data_in_len: self.data_in_len,
                data_out_len: self.data_out_len,
                overrun: self.overrun,
                ..Self::check_condition_descriptor(s)
            },
            _ => self,
        }
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
        self.decoded.or_else(|| Sense::decode(self.sense()).ok())
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
        // A network medium (NBD) that stalled past its timeout, or whose
        // connection is down: ABORTED COMMAND, the initiator may retry.
        Some(libc::ETIMEDOUT) => Sense::LU_COMMUNICATION_TIMEOUT,
        Some(
            libc::ECONNRESET | libc::ENOTCONN | libc::ESHUTDOWN | libc::ECONNREFUSED | libc::EPIPE,
        ) => Sense::LU_COMMUNICATION_FAILURE,
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

/// INVALID FIELD IN PARAMETER LIST with a parameter-list field pointer.
pub(crate) fn invalid_param(byte: usize, bit: Option<u8>) -> CommandResult {
    CommandResult::check_condition(Sense::INVALID_FIELD_IN_PARAMETER_LIST.with_field_pointer(
        false,
        u16::try_from(byte).unwrap_or(u16::MAX),
        bit,
    ))
}

/// Reads the whole parameter list of `len` bytes from `data_out` into a
/// vector (commands with parameter lists are not on the hot path). A
/// Data-Out buffer shorter than the list is a transport mismatch: 5/0E/03.
pub(crate) fn parameter_list(data_out: &dyn DataOut, len: usize) -> Result<Vec<u8>, CommandResult> {
    if data_out.len() < len {
        return Err(CommandResult::buffer_overrun());
    }
    let mut v = vec![0u8; len];
    let n = data_out.read_at(0, &mut v);
    if n < len {
        return Err(CommandResult::buffer_overrun());
    }
    Ok(v)
}

/// Makes a write durable before its response when WCE=0 (or FUA); the
/// write cache is the host page cache.
pub(crate) fn write_through(lu: &LogicalUnit, fua: bool) -> std::io::Result<()> {
    if fua || !lu.write_cache() {
        lu.flush()
    } else {
        Ok(())
    }
}

/// INVALID FIELD IN CDB with a CDB field pointer.
pub(crate) fn invalid_field(byte: u16, bit: Option<u8>) -> CommandResult {
    CommandResult::check_condition(Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, byte, bit))
}

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
    fn an_overrun_is_explicit_and_survives_descriptor_format() {
        let r = CommandResult::buffer_overrun();
        assert!(r.is_overrun());
        assert_eq!(r.status, status::CHECK_CONDITION);
        assert_eq!(r.decoded_sense(), Some(Sense::INVALID_FIELD_IN_COMMAND_IU));
        assert!(r.in_descriptor_format().is_overrun());
        // The same sense built by hand (a fault, say) is not an overrun.
        assert!(!CommandResult::check_condition(Sense::INVALID_FIELD_IN_COMMAND_IU).is_overrun());
        // A READ(10) of 8 blocks into a 1-block buffer.
        let (bus, _f) = crate::scsi::testutil::bus_with(64, crate::scsi::LunOptions::default());
        let t = bus.target(0).unwrap();
        let cdb = vscsi_protocol::cdb::Cdb::read_10(0, 8, false);
        let mut din = crate::scsi::VecDataIn::new(512);
        let req = Request {
            cdb: cdb.as_bytes(),
            tag: 1,
            task_attr: 0,
            nexus: crate::scsi::nexus::Nexus::local(),
        };
        let r = t.execute(0, &req, &mut din, &crate::scsi::NO_DATA_OUT);
        assert!(r.is_overrun(), "{r:?}");
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
        // A network medium: EPERM from an NBD server on a write is write
        // protection; a stall or a lost connection is ABORTED COMMAND with
        // LOGICAL UNIT COMMUNICATION TIME-OUT / FAILURE (SPC-5 08h/01h, 08h/00h).
        assert_eq!(
            io_error_sense(&e(libc::EPERM), true),
            Sense::WRITE_PROTECTED
        );
        let t = io_error_sense(&e(libc::ETIMEDOUT), false);
        assert_eq!((t.key as u8, t.asc, t.ascq), (0x0B, 0x08, 0x01));
        let f = io_error_sense(&e(libc::ECONNRESET), true);
        assert_eq!((f.key as u8, f.asc, f.ascq), (0x0B, 0x08, 0x00));
        assert_eq!(io_error_sense(&e(libc::ENOTCONN), false), f);
    }
}
