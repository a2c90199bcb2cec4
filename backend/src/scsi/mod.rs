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
//! Command families, one module each: [`inquiry`], [`capacity`], [`rw`]
//! (READ/WRITE and deferred transfers), [`verify`] (VERIFY, WRITE AND
//! VERIFY, COMPARE AND WRITE), [`atomic`] (WRITE ATOMIC, and the epoch
//! lock-free reads check against it), [`provisioning`] (UNMAP, WRITE SAME,
//! GET LBA STATUS), [`sync`], [`prefetch`] (PRE-FETCH), [`defect`] (READ
//! DEFECT DATA), [`log_sense`], [`format`] (FORMAT UNIT), [`buffer`] (READ/WRITE BUFFER), [`mode`], [`unit`] (TEST UNIT READY, START STOP UNIT,
//! PREVENT ALLOW MEDIUM REMOVAL), [`sense_cmd`] (REQUEST SENSE),
//! [`report_luns`], [`supported_opcodes`], [`maintenance`] (REPORT SUPPORTED
//! TASK MANAGEMENT FUNCTIONS), [`cdrom`] (MMC-6); the opcode table in
//! [`dispatch`] routes CDBs to them. [`target_port`]: the identity of the
//! port (controller) a bus is reached through, for VPD 83h.

pub mod atomic;
pub mod buffer;
pub mod capacity;
pub mod cdrom;
pub mod command;
pub mod defect;
pub mod dispatch;
pub mod format;
pub mod inquiry;
pub mod io;
pub mod log_sense;
pub mod lu;
pub mod maintenance;
pub mod mode;
pub mod nexus;
pub mod prefetch;
pub mod provisioning;
pub mod report_luns;
pub mod reservation;
pub mod rw;
pub mod sense_cmd;
pub mod supported_opcodes;
pub mod sync;
pub mod target;
pub mod target_port;
pub mod unit;
pub mod verify;

pub use crate::storage::OpenError;
pub use command::{CommandResult, Request};
pub use io::{DataIn, DataOut, MediumTransfer, SliceDataOut, VecDataIn, NO_DATA_OUT};
pub use lu::{DeviceType, LogicalUnit, LunOptions};
pub use nexus::{InitiatorPort, Nexus};
pub use target::{ConfigError, ScsiBus, Target};
pub use target_port::TargetPort;

#[cfg(test)]
pub(crate) mod testutil;
