//! `vscsi-backend`: a vhost-user virtio-scsi device serving disk images.
//!
//! - [`scsi`]: a transport-agnostic SCSI target (targets, logical units,
//!   one module per command family, one opcode table).
//! - [`storage`]: where the bytes live (raw images, preadv/pwritev).
//! - [`vhost`]: the vhost-user transport, the only part that knows virtio.
//! - [`daemon`]: the accept loop, reconnects and shutdown.
//! - [`config`]: command-line LUN specifications into a SCSI bus.

pub mod config;
pub mod daemon;
pub mod scsi;
pub mod storage;
pub mod vhost;
