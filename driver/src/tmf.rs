//! Task management functions (VIRTIO 1.2 §5.6.6.2, SAM-5 §7) and their answers, as values.

use vscsi_protocol::virtio_scsi::{tmf, Response as VirtioResponse};

/// A task management function (§5.6.6.2, SAM-5 §7).
///
/// ```no_run
/// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
/// use vscsi_driver::{Tmf, TmfResponse};
/// let r = driver.task_management(0, 0, Tmf::LogicalUnitReset).await?;
/// assert_eq!(r, TmfResponse::FunctionComplete);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tmf {
    /// ABORT TASK: the command with this tag.
    AbortTask {
        /// Tag of the command (see [`crate::Driver::in_flight`]).
        tag: u64,
    },
    /// ABORT TASK SET: every command of the LUN.
    AbortTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// CLEAR TASK SET.
    ClearTaskSet,
    /// LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// I_T NEXUS RESET: what Linux's virtio_scsi sends for a target reset.
    TargetReset,
    /// QUERY TASK: is the command with this tag in the task set?
    QueryTask {
        /// Tag of the command.
        tag: u64,
    },
    /// QUERY TASK SET: is any command of the LUN in the task set?
    QueryTaskSet,
    /// Any other subtype code (a device answers FUNCTION REJECTED).
    Other {
        /// The `subtype` field.
        subtype: u32,
    },
}

impl Tmf {
    /// The virtio subtype code and tag.
    pub fn encode(self) -> (u32, u64) {
        match self {
            Tmf::AbortTask { tag } => (tmf::ABORT_TASK, tag),
            Tmf::AbortTaskSet => (tmf::ABORT_TASK_SET, 0),
            Tmf::ClearAca => (tmf::CLEAR_ACA, 0),
            Tmf::ClearTaskSet => (tmf::CLEAR_TASK_SET, 0),
            Tmf::LogicalUnitReset => (tmf::LOGICAL_UNIT_RESET, 0),
            Tmf::TargetReset => (tmf::I_T_NEXUS_RESET, 0),
            Tmf::QueryTask { tag } => (tmf::QUERY_TASK, tag),
            Tmf::QueryTaskSet => (tmf::QUERY_TASK_SET, 0),
            Tmf::Other { subtype } => (subtype, 0),
        }
    }

    /// The SAM-5 name.
    pub fn name(self) -> &'static str {
        match self {
            Tmf::AbortTask { .. } => "ABORT TASK",
            Tmf::AbortTaskSet => "ABORT TASK SET",
            Tmf::ClearAca => "CLEAR ACA",
            Tmf::ClearTaskSet => "CLEAR TASK SET",
            Tmf::LogicalUnitReset => "LOGICAL UNIT RESET",
            Tmf::TargetReset => "I_T NEXUS RESET",
            Tmf::QueryTask { .. } => "QUERY TASK",
            Tmf::QueryTaskSet => "QUERY TASK SET",
            Tmf::Other { .. } => "TMF (unknown subtype)",
        }
    }
}

/// The device's answer to a [`Tmf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    /// FUNCTION COMPLETE (`VIRTIO_SCSI_S_OK`): done; for QUERY, nothing found.
    FunctionComplete,
    /// FUNCTION SUCCEEDED: for QUERY TASK (SET), the task is in the task set.
    FunctionSucceeded,
    /// FUNCTION REJECTED: not supported.
    FunctionRejected,
    /// The LUN does not exist.
    IncorrectLun,
    /// The target does not exist.
    BadTarget,
    /// Any other response byte.
    Other(u8),
}

impl TmfResponse {
    /// Decodes the response byte.
    pub fn from_u8(v: u8) -> Self {
        match VirtioResponse::from_u8(v) {
            Some(VirtioResponse::Ok) => TmfResponse::FunctionComplete,
            Some(VirtioResponse::FunctionSucceeded) => TmfResponse::FunctionSucceeded,
            Some(VirtioResponse::FunctionRejected) => TmfResponse::FunctionRejected,
            Some(VirtioResponse::IncorrectLun) => TmfResponse::IncorrectLun,
            Some(VirtioResponse::BadTarget) => TmfResponse::BadTarget,
            _ => TmfResponse::Other(v),
        }
    }

    /// FUNCTION COMPLETE or FUNCTION SUCCEEDED.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            TmfResponse::FunctionComplete | TmfResponse::FunctionSucceeded
        )
    }
}

impl std::fmt::Display for TmfResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TmfResponse::FunctionComplete => f.write_str("FUNCTION COMPLETE"),
            TmfResponse::FunctionSucceeded => f.write_str("FUNCTION SUCCEEDED"),
            TmfResponse::FunctionRejected => f.write_str("FUNCTION REJECTED"),
            TmfResponse::IncorrectLun => f.write_str("INCORRECT LUN"),
            TmfResponse::BadTarget => f.write_str("BAD TARGET"),
            TmfResponse::Other(v) => write!(f, "response {v:#04x}"),
        }
    }
}
