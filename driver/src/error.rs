//! Typed errors of the driver.

use std::path::PathBuf;

use crate::ring::RingError;

/// Everything the driver can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vhost-user socket could not be reached.
    #[error("cannot connect to the vhost-user socket {path}: {source} (is vscsi-backend running there?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: vhost::Error,
    },
    /// A vhost-user message failed during set-up.
    #[error("vhost-user {step} failed: {source}")]
    VhostUser {
        /// What the driver was doing.
        step: &'static str,
        /// Cause.
        source: vhost::Error,
    },
    /// The device lacks a feature the driver cannot work without.
    #[error("the device does not offer {0}, which this driver requires")]
    MissingFeature(&'static str),
    /// The device's configuration space is not usable.
    #[error("bad device configuration: {0}")]
    BadConfig(String),
    /// The shared memory region could not be created.
    #[error("shared memory: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    /// The device broke the virtqueue contract; the queue is unusable.
    #[error("the device broke the virtqueue contract on request queue {queue}: {source}")]
    DeviceBroken {
        /// Request queue index.
        queue: u16,
        /// What it did.
        source: RingError,
    },
    /// A virtqueue could not be set up.
    #[error("virtqueue set-up: {0}")]
    Ring(#[from] RingError),
    /// A command needs more buffer than one request slot holds.
    #[error("transfer of {len} bytes exceeds the per-command maximum of {max} bytes")]
    TransferTooLarge {
        /// Requested length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// A CDB longer than 32 bytes or empty.
    #[error("CDB must be 1 to 32 bytes, got {0}")]
    BadCdb(usize),
    /// The command did not complete in time.
    #[error("command timed out after {0:?} (no recovery attempted)")]
    Timeout(std::time::Duration),
    /// The device completed a request with a used length too short for a response.
    #[error("the device completed a request without a response header (used length {0})")]
    ShortResponse(u32),
    /// The driver is shut down or its completion task stopped.
    #[error("the driver is shut down")]
    Closed,
    /// An eventfd or tokio I/O error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with the driver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn vhost(step: &'static str) -> impl FnOnce(vhost::Error) -> Error {
        move |source| Error::VhostUser { step, source }
    }
}
