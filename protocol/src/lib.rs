//! Wire formats shared by the vscsi backend (device) and driver (frontend).
//!
//! Nothing here does I/O or spawns threads: these are the byte layouts of
//! VIRTIO 1.2 §5.6 (SCSI host device) and the SCSI encodings (SPC-5, SBC-4)
//! both sides must agree on, written once.
//!
//! - [`virtio_scsi`]: request, response, TMF, AN and event layouts and the
//!   device configuration space (§5.6.4, §5.6.6), little-endian on the wire.
//! - [`lun`]: the 8-byte virtio-scsi LUN address (§5.6.6.1).
//! - [`opcode`], [`status`]: SCSI operation codes and status codes.
//! - [`sense`]: sense keys, ASC/ASCQ, fixed and descriptor format codecs.
//! - [`cdb`]: CDB builders (driver side) and field decoders (device side).
//! - [`data`]: INQUIRY, READ CAPACITY and REPORT LUNS response-data codecs.
//! - [`persistent_reservation`]: PERSISTENT RESERVE IN/OUT CDBs, the PR OUT
//!   parameter list and the PR IN parameter data (SPC-5 §6.15, §6.16).
#![deny(missing_docs)]

pub mod cdb;
pub mod data;
pub mod lun;
pub mod opcode;
pub mod persistent_reservation;
pub mod sense;
pub mod status;
pub mod virtio_scsi;

pub use lun::Lun;
pub use sense::{Sense, SenseKey};
