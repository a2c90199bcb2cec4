//! `vscsi-backend`: a vhost-user virtio-scsi device serving disk images.
//!
//! - [`scsi`]: a transport-agnostic SCSI target (targets, logical units,
//!   one module per command family, one opcode table).
//! - [`buffers`]: a command's Data-In and Data-Out buffers (SAM-5), the
//!   seam between the SCSI layer, storage and the transport.
//! - [`storage`]: where the bytes live (raw and qcow2 images, image locks).
//! - [`vhost`]: the vhost-user transport, the only part that knows virtio.
//! - [`daemon`]: the accept loop, reconnects and shutdown.
//! - [`config`]: the configuration file and command-line LUN specifications.
//! - [`service`]: the running service: its controllers, the JSON-RPC
//!   control socket, the metrics endpoint, and what `main` runs.
//! - [`lun_options`]: every LUN option and its rules, shared by the
//!   command line, the configuration file and the control socket.

pub mod buffers;
pub mod config;
pub mod cpu_list;
pub mod daemon;
pub mod fault;
pub mod lun_options;
pub mod peer;
pub mod ratelimit;
pub mod scsi;
pub mod service;
pub mod storage;
pub mod vhost;
