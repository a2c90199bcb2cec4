//! `vscsi-backend`: a vhost-user virtio-scsi device serving disk images.
//!
//! - [`scsi`]: a transport-agnostic SCSI target (targets, logical units,
//!   one module per command family, one opcode table).
//! - [`storage`]: where the bytes live (raw images, preadv/pwritev).
//! - [`vhost`]: the vhost-user transport, the only part that knows virtio.
//! - [`daemon`]: the accept loop, reconnects and shutdown.
//! - [`config`]: the configuration file and command-line LUN specifications.
//! - [`control`]: the running service and its JSON-RPC control socket.
//! - [`metrics`]: the `stats` method and the Prometheus endpoint.

pub mod config;
pub mod control;
pub mod daemon;
pub mod fault;
pub mod lun_options;
pub mod metrics;
pub mod peer;
pub mod ratelimit;
pub mod scsi;
pub mod storage;
pub mod vhost;
