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
    /// The device closed the connection before its first reply: a
    /// vhost-user socket serves one frontend at a time.
    #[error("the vhost-user device at {path} closed the connection: another frontend is probably connected (one frontend per controller socket)")]
    DeviceBusy {
        /// Socket path.
        path: PathBuf,
    },
    /// The socket answered nothing within the timeout.
    #[error("no vhost-user reply from {path} within {timeout:?}: it is not a vhost-user device (the daemon's control socket?) or it is busy with another frontend")]
    NoReply {
        /// Socket path.
        path: PathBuf,
        /// How long the driver waited.
        timeout: std::time::Duration,
    },
    /// The socket's reply is not a vhost-user message.
    #[error("{path} is not a vhost-user device: its reply is not a vhost-user message (the daemon's control socket?)")]
    NotVhostUser {
        /// Socket path.
        path: PathBuf,
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
    /// The command did not complete in time. The driver then ran the
    /// error handler (ABORT TASK, LOGICAL UNIT RESET, I_T NEXUS RESET, a
    /// reset of the command's queue, a device reset: each only if the
    /// previous step did not clear the command);
    /// `recovered_by` says which step cleared it.
    #[error("command timed out after {after:?}; {recovered_by}")]
    Timeout {
        /// The timeout that expired.
        after: std::time::Duration,
        /// How far recovery went.
        recovered_by: RecoveryStep,
    },
    /// A task management function failed or was not answered in time.
    #[error("{tmf} was not answered within {after:?}")]
    TmfTimeout {
        /// The TMF.
        tmf: &'static str,
        /// How long the driver waited.
        after: std::time::Duration,
    },
    /// The device completed a request with a used length too short for a response.
    #[error("the device completed a request without a response header (used length {0})")]
    ShortResponse(u32),
    /// The request queue was reset (by the error handler or a device reset)
    /// while the command was on it, and the device never answered it: it
    /// may or may not have run. The copying API retries it like a
    /// `VIRTIO_SCSI_S_RESET` answer when the retry policy allows.
    #[error("request queue {queue} was reset while the command was in flight")]
    QueueReset {
        /// Request queue index.
        queue: u16,
    },
    /// The connection to the device was lost while the command was on
    /// the ring, and the device that took over could not resubmit it: it
    /// offers no inflight I/O tracking (vhost-user
    /// `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`) for this ring format (packed
    /// rings are not tracked). It may or may not have run. The copying API
    /// retries it like a `VIRTIO_SCSI_S_RESET` answer when the retry policy
    /// allows.
    #[error("the connection to the device was lost while the command was on {queue_kind} queue {queue}, and the device that took over could not resubmit it (no inflight I/O tracking for these rings)")]
    Disconnected {
        /// "request", "control" or "event".
        queue_kind: &'static str,
        /// The queue's index (among the request queues).
        queue: u16,
    },
    /// The device went away and no connection could be set up again
    /// within [`DriverOptions::reconnect`](crate::DriverOptions::reconnect)
    /// (a zero deadline: reconnecting is off). Commands in flight and every
    /// later command fail with it; the driver is unusable (connect again).
    #[error("the vhost-user device went away and was not back within {deadline:?}: {last_error}")]
    ReconnectDeadline {
        /// The reconnect deadline.
        deadline: std::time::Duration,
        /// Why the last attempt failed.
        last_error: String,
    },
    /// The driver is shut down or its completion task stopped.
    #[error("the driver is shut down")]
    Closed,
    /// An eventfd or tokio I/O error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// How far the error handler went for a timed-out command ([`Error::Timeout`]).
///
/// The steps are those of the Linux SCSI error handler (scsi_error.c:
/// abort, device reset, target reset, host reset), with the host reset
/// split in two as virtio allows: first the command's own queue (stop it
/// with GET_VRING_BASE, re-create the ring, enable it again), then the whole
/// device (VHOST_USER_RESET_DEVICE and every queue re-created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryStep {
    /// The command never reached the device (no free request slot in time).
    NotSubmitted,
    /// ABORT TASK cleared it (the device completed it with ABORTED).
    AbortTask,
    /// LOGICAL UNIT RESET cleared it.
    LogicalUnitReset,
    /// I_T NEXUS RESET (target reset) cleared it.
    TargetReset,
    /// Resetting the command's request queue cleared it (the device
    /// returned it while stopping the ring, or it was taken off the ring).
    QueueReset,
    /// A device reset cleared it.
    DeviceReset,
    /// The connection was lost meanwhile, and the device that took over
    /// (the daemon restarted) returned it with a reset or abort answer.
    Reconnect,
    /// Nothing cleared it.
    NotRecovered,
}

impl std::fmt::Display for RecoveryStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecoveryStep::NotSubmitted => "it was never submitted (no free request slot)",
            RecoveryStep::AbortTask => "recovered by ABORT TASK",
            RecoveryStep::LogicalUnitReset => "recovered by LOGICAL UNIT RESET",
            RecoveryStep::TargetReset => "recovered by I_T NEXUS RESET (target reset)",
            RecoveryStep::QueueReset => "recovered by resetting its request queue",
            RecoveryStep::DeviceReset => "recovered by a device reset",
            RecoveryStep::Reconnect => {
                "released by the device that took over after the connection was lost"
            }
            RecoveryStep::NotRecovered => {
                "not recovered by ABORT TASK, LOGICAL UNIT RESET, I_T NEXUS RESET, a queue reset or a device reset"
            }
        })
    }
}

/// Result with the driver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn vhost(step: &'static str) -> impl FnOnce(vhost::Error) -> Error {
        move |source| Error::VhostUser { step, source }
    }
}
