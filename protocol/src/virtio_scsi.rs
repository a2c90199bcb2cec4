//! virtio-scsi wire layouts (VIRTIO 1.2 §5.6).
//!
//! Every multi-byte field is little-endian on the wire whatever the host
//! (§5.6: "all fields are in little-endian"), which the `zerocopy` `LE`
//! integer types make impossible to forget. The structs have alignment 1, so
//! they can be read from or written to any offset of a descriptor chain.
//! The constants come from `virtio-bindings` (the Linux UAPI headers), so the
//! numbers are not typed twice.

use virtio_bindings::virtio_scsi as b;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Default and only CDB size this crate sends and accepts (§5.6.4: `cdb_size`, default 32).
pub const CDB_SIZE: usize = b::VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize;
/// Default and only sense size (§5.6.4: `sense_size`, default 96).
pub const SENSE_SIZE: usize = b::VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize;

/// Device type of virtio-scsi (§5.6.1).
pub const VIRTIO_ID_SCSI: u32 = 8;

/// Feature bits of the SCSI host device (§5.6.3).
pub mod feature {
    use virtio_bindings::virtio_scsi as b;
    /// A single request can include both device-readable and device-writable data buffers.
    pub const INOUT: u32 = b::VIRTIO_SCSI_F_INOUT;
    /// The host reports hot-plug and hot-unplug of targets and LUNs on the event queue.
    pub const HOTPLUG: u32 = b::VIRTIO_SCSI_F_HOTPLUG;
    /// The host reports changes to LUN parameters with VIRTIO_SCSI_T_PARAM_CHANGE events.
    pub const CHANGE: u32 = b::VIRTIO_SCSI_F_CHANGE;
    /// T10 protection information (DIF/DIX) in requests.
    pub const T10_PI: u32 = b::VIRTIO_SCSI_F_T10_PI;
}

/// Queue indices (§5.6.2): control queue, event queue, then request queues.
pub mod queue {
    /// The control queue (TMF and asynchronous notification requests).
    pub const CONTROL: u16 = 0;
    /// The event queue (hot-plug, parameter change, asynchronous events).
    pub const EVENT: u16 = 1;
    /// The first request queue.
    pub const REQUEST_BASE: u16 = 2;
}

/// The `response` byte of command, TMF and AN responses (§5.6.6.1, §5.6.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Response {
    /// The request completed (for commands: `status` holds the SCSI status).
    Ok = b::VIRTIO_SCSI_S_OK as u8,
    /// The data-in buffer was too small for what the device had to return.
    Overrun = b::VIRTIO_SCSI_S_OVERRUN as u8,
    /// The request was aborted by a TMF or a reset.
    Aborted = b::VIRTIO_SCSI_S_ABORTED as u8,
    /// The addressed target does not exist.
    BadTarget = b::VIRTIO_SCSI_S_BAD_TARGET as u8,
    /// The request was cancelled by a reset.
    Reset = b::VIRTIO_SCSI_S_RESET as u8,
    /// The device is busy; retry.
    Busy = b::VIRTIO_SCSI_S_BUSY as u8,
    /// Transport failure; retry on another path.
    TransportFailure = b::VIRTIO_SCSI_S_TRANSPORT_FAILURE as u8,
    /// The target failed; do not retry.
    TargetFailure = b::VIRTIO_SCSI_S_TARGET_FAILURE as u8,
    /// The I_T nexus failed; do not retry.
    NexusFailure = b::VIRTIO_SCSI_S_NEXUS_FAILURE as u8,
    /// Any other failure (for example an unreadable request).
    Failure = b::VIRTIO_SCSI_S_FAILURE as u8,
    /// A TMF succeeded.
    FunctionSucceeded = b::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8,
    /// A TMF was rejected.
    FunctionRejected = b::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8,
    /// The LUN field of a TMF did not name a logical unit.
    IncorrectLun = b::VIRTIO_SCSI_S_INCORRECT_LUN as u8,
}

impl Response {
    /// Decodes a response byte; `None` for values the spec does not define.
    pub fn from_u8(v: u8) -> Option<Self> {
        use Response::*;
        [
            Ok,
            Overrun,
            Aborted,
            BadTarget,
            Reset,
            Busy,
            TransportFailure,
            TargetFailure,
            NexusFailure,
            Failure,
            FunctionSucceeded,
            FunctionRejected,
            IncorrectLun,
        ]
        .into_iter()
        .find(|r| *r as u8 == v)
    }

    /// The spec's name, e.g. `VIRTIO_SCSI_S_BAD_TARGET`.
    pub fn name(self) -> &'static str {
        match self {
            Response::Ok => "VIRTIO_SCSI_S_OK",
            Response::Overrun => "VIRTIO_SCSI_S_OVERRUN",
            Response::Aborted => "VIRTIO_SCSI_S_ABORTED",
            Response::BadTarget => "VIRTIO_SCSI_S_BAD_TARGET",
            Response::Reset => "VIRTIO_SCSI_S_RESET",
            Response::Busy => "VIRTIO_SCSI_S_BUSY",
            Response::TransportFailure => "VIRTIO_SCSI_S_TRANSPORT_FAILURE",
            Response::TargetFailure => "VIRTIO_SCSI_S_TARGET_FAILURE",
            Response::NexusFailure => "VIRTIO_SCSI_S_NEXUS_FAILURE",
            Response::Failure => "VIRTIO_SCSI_S_FAILURE",
            Response::FunctionSucceeded => "VIRTIO_SCSI_S_FUNCTION_SUCCEEDED",
            Response::FunctionRejected => "VIRTIO_SCSI_S_FUNCTION_REJECTED",
            Response::IncorrectLun => "VIRTIO_SCSI_S_INCORRECT_LUN",
        }
    }
}

/// Task attributes of a command request (§5.6.6.1, SAM-5).
pub mod task_attr {
    use virtio_bindings::virtio_scsi as b;
    /// SIMPLE task attribute.
    pub const SIMPLE: u8 = b::VIRTIO_SCSI_S_SIMPLE as u8;
    /// ORDERED task attribute.
    pub const ORDERED: u8 = b::VIRTIO_SCSI_S_ORDERED as u8;
    /// HEAD OF QUEUE task attribute.
    pub const HEAD: u8 = b::VIRTIO_SCSI_S_HEAD as u8;
    /// ACA task attribute.
    pub const ACA: u8 = b::VIRTIO_SCSI_S_ACA as u8;
}

/// Command request header, device-readable (§5.6.6.1 `struct virtio_scsi_req_cmd`,
/// the part before `dataout`), with the default 32-byte CDB: 51 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CmdReq {
    /// Target and LUN address, see [`crate::lun`].
    pub lun: [u8; 8],
    /// Command identifier chosen by the driver (used by ABORT TASK).
    pub tag: U64,
    /// One of [`task_attr`].
    pub task_attr: u8,
    /// SAM command priority.
    pub prio: u8,
    /// Command reference number.
    pub crn: u8,
    /// The CDB, zero-padded to [`CDB_SIZE`].
    pub cdb: [u8; CDB_SIZE],
}

/// Command response header, device-writable (§5.6.6.1, the part before
/// `datain`), with the default 96-byte sense: 108 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CmdResp {
    /// Number of valid bytes in `sense`.
    pub sense_len: U32,
    /// Bytes of the data buffer not transferred (data-in or data-out).
    pub resid: U32,
    /// SAM status qualifier.
    pub status_qualifier: U16,
    /// SCSI status byte, see [`crate::status`].
    pub status: u8,
    /// [`Response`] byte.
    pub response: u8,
    /// Sense data, `sense_len` bytes valid.
    pub sense: [u8; SENSE_SIZE],
}

impl Default for CmdResp {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Control queue request type (§5.6.6.2), first 4 bytes of every control request.
pub mod ctrl_type {
    use virtio_bindings::virtio_scsi as b;
    /// Task management function.
    pub const TMF: u32 = b::VIRTIO_SCSI_T_TMF;
    /// Asynchronous notification query.
    pub const AN_QUERY: u32 = b::VIRTIO_SCSI_T_AN_QUERY;
    /// Asynchronous notification subscription.
    pub const AN_SUBSCRIBE: u32 = b::VIRTIO_SCSI_T_AN_SUBSCRIBE;
}

/// TMF subtypes (§5.6.6.2.1).
pub mod tmf {
    use virtio_bindings::virtio_scsi as b;
    /// ABORT TASK.
    pub const ABORT_TASK: u32 = b::VIRTIO_SCSI_T_TMF_ABORT_TASK;
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: u32 = b::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET;
    /// CLEAR ACA.
    pub const CLEAR_ACA: u32 = b::VIRTIO_SCSI_T_TMF_CLEAR_ACA;
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: u32 = b::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET;
    /// I_T NEXUS RESET.
    pub const I_T_NEXUS_RESET: u32 = b::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET;
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: u32 = b::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET;
    /// QUERY TASK.
    pub const QUERY_TASK: u32 = b::VIRTIO_SCSI_T_TMF_QUERY_TASK;
    /// QUERY TASK SET.
    pub const QUERY_TASK_SET: u32 = b::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET;
}

/// Task management request, device-readable (§5.6.6.2.1): 24 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CtrlTmfReq {
    /// [`ctrl_type::TMF`].
    pub type_: U32,
    /// One of [`tmf`].
    pub subtype: U32,
    /// Addressed LUN.
    pub lun: [u8; 8],
    /// Tag of the task to abort or query.
    pub tag: U64,
}

/// Task management response, device-writable (§5.6.6.2.1): 1 byte.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CtrlTmfResp {
    /// [`Response`] byte.
    pub response: u8,
}

/// Asynchronous notification query or subscription, device-readable (§5.6.6.2.2): 16 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CtrlAnReq {
    /// [`ctrl_type::AN_QUERY`] or [`ctrl_type::AN_SUBSCRIBE`].
    pub type_: U32,
    /// Addressed LUN.
    pub lun: [u8; 8],
    /// Events the driver asks for (bit mask of SCSI MMC event classes).
    pub event_requested: U32,
}

/// Asynchronous notification response, device-writable (§5.6.6.2.2): 5 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CtrlAnResp {
    /// Events the device supports or subscribed.
    pub event_actual: U32,
    /// [`Response`] byte.
    pub response: u8,
}

/// Event types of the event queue (§5.6.6.3).
pub mod event {
    use virtio_bindings::virtio_scsi as b;
    /// No event (placeholder).
    pub const NO_EVENT: u32 = b::VIRTIO_SCSI_T_NO_EVENT;
    /// Hot-plug / hot-unplug / transport reset.
    pub const TRANSPORT_RESET: u32 = b::VIRTIO_SCSI_T_TRANSPORT_RESET;
    /// Asynchronous notification.
    pub const ASYNC_NOTIFY: u32 = b::VIRTIO_SCSI_T_ASYNC_NOTIFY;
    /// LUN parameter change; `reason` carries ASC | ASCQ << 8.
    pub const PARAM_CHANGE: u32 = b::VIRTIO_SCSI_T_PARAM_CHANGE;
    /// Flag ORed into `event` when the device dropped events.
    pub const EVENTS_MISSED: u32 = b::VIRTIO_SCSI_T_EVENTS_MISSED;
    /// TRANSPORT_RESET reason: hard reset.
    pub const RESET_HARD: u32 = b::VIRTIO_SCSI_EVT_RESET_HARD;
    /// TRANSPORT_RESET reason: LUN or target appeared; rescan.
    pub const RESET_RESCAN: u32 = b::VIRTIO_SCSI_EVT_RESET_RESCAN;
    /// TRANSPORT_RESET reason: LUN or target removed.
    pub const RESET_REMOVED: u32 = b::VIRTIO_SCSI_EVT_RESET_REMOVED;
}

/// An event, device-writable (§5.6.6.3 `struct virtio_scsi_event`): 16 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Event {
    /// One of [`event`], possibly ORed with [`event::EVENTS_MISSED`].
    pub event: U32,
    /// LUN the event is about.
    pub lun: [u8; 8],
    /// Reason (see [`event`]).
    pub reason: U32,
}

/// Device configuration layout (§5.6.4 `struct virtio_scsi_config`): 36 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Config {
    /// Number of request queues.
    pub num_queues: U32,
    /// Maximum number of data segments in one command.
    pub seg_max: U32,
    /// Maximum transfer length of one command, in 512-byte sectors.
    pub max_sectors: U32,
    /// Commands the driver may queue to one LUN.
    pub cmd_per_lun: U32,
    /// Size of event-queue buffers the driver should post.
    pub event_info_size: U32,
    /// Sense size (driver-writable).
    pub sense_size: U32,
    /// CDB size (driver-writable).
    pub cdb_size: U32,
    /// Highest channel number (always 0).
    pub max_channel: U16,
    /// Highest target id.
    pub max_target: U16,
    /// Highest LUN number.
    pub max_lun: U32,
}

/// Size of [`Config`] on the wire.
pub const CONFIG_SIZE: usize = core::mem::size_of::<Config>();

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// Sizes and offsets fixed by VIRTIO 1.2 §5.6.4 and §5.6.6, checked against
    /// the Linux UAPI structs of `virtio-bindings` too.
    #[test]
    fn layouts_match_the_spec() {
        assert_eq!(size_of::<CmdReq>(), 51);
        assert_eq!(size_of::<CmdReq>(), size_of::<b::virtio_scsi_cmd_req>());
        assert_eq!(offset_of!(CmdReq, tag), 8);
        assert_eq!(offset_of!(CmdReq, task_attr), 16);
        assert_eq!(offset_of!(CmdReq, prio), 17);
        assert_eq!(offset_of!(CmdReq, crn), 18);
        assert_eq!(offset_of!(CmdReq, cdb), 19);

        assert_eq!(size_of::<CmdResp>(), 108);
        assert_eq!(size_of::<CmdResp>(), size_of::<b::virtio_scsi_cmd_resp>());
        assert_eq!(offset_of!(CmdResp, resid), 4);
        assert_eq!(offset_of!(CmdResp, status_qualifier), 8);
        assert_eq!(offset_of!(CmdResp, status), 10);
        assert_eq!(offset_of!(CmdResp, response), 11);
        assert_eq!(offset_of!(CmdResp, sense), 12);

        assert_eq!(size_of::<CtrlTmfReq>(), 24);
        assert_eq!(
            size_of::<CtrlTmfReq>(),
            size_of::<b::virtio_scsi_ctrl_tmf_req>()
        );
        assert_eq!(size_of::<CtrlTmfResp>(), 1);
        assert_eq!(size_of::<CtrlAnReq>(), 16);
        assert_eq!(size_of::<CtrlAnResp>(), 5);
        assert_eq!(size_of::<Event>(), 16);
        assert_eq!(size_of::<Event>(), size_of::<b::virtio_scsi_event>());

        assert_eq!(CONFIG_SIZE, 36);
        assert_eq!(CONFIG_SIZE, size_of::<b::virtio_scsi_config>());
        assert_eq!(offset_of!(Config, sense_size), 20);
        assert_eq!(offset_of!(Config, cdb_size), 24);
        assert_eq!(offset_of!(Config, max_channel), 28);
        assert_eq!(offset_of!(Config, max_target), 30);
        assert_eq!(offset_of!(Config, max_lun), 32);
    }

    #[test]
    fn fields_are_little_endian_on_the_wire() {
        let mut req = CmdReq::new_zeroed();
        req.tag = U64::new(0x0102_0304_0506_0708);
        assert_eq!(&req.as_bytes()[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);

        let resp = CmdResp {
            sense_len: U32::new(18),
            resid: U32::new(0x1000),
            status_qualifier: U16::new(0xABCD),
            status: 2,
            response: Response::BadTarget as u8,
            ..CmdResp::default()
        };
        let bytes = resp.as_bytes();
        assert_eq!(
            &bytes[..12],
            &[18, 0, 0, 0, 0, 0x10, 0, 0, 0xCD, 0xAB, 2, 3]
        );

        let cfg = Config::read_from_bytes(&[
            1, 0, 0, 0, 126, 0, 0, 0, 0xFF, 0xFF, 0, 0, 128, 0, 0, 0, 16, 0, 0, 0, 96, 0, 0, 0, 32,
            0, 0, 0, 0, 0, 255, 0, 0xFF, 0x3F, 0, 0,
        ])
        .unwrap();
        assert_eq!(cfg.num_queues.get(), 1);
        assert_eq!(cfg.seg_max.get(), 126);
        assert_eq!(cfg.max_sectors.get(), 0xFFFF);
        assert_eq!(cfg.event_info_size.get(), 16);
        assert_eq!(cfg.max_target.get(), 255);
        assert_eq!(cfg.max_lun.get(), 0x3FFF);
    }

    #[test]
    fn response_codes_are_the_spec_values() {
        let expected = [
            (Response::Ok, 0),
            (Response::Overrun, 1),
            (Response::Aborted, 2),
            (Response::BadTarget, 3),
            (Response::Reset, 4),
            (Response::Busy, 5),
            (Response::TransportFailure, 6),
            (Response::TargetFailure, 7),
            (Response::NexusFailure, 8),
            (Response::Failure, 9),
            (Response::FunctionSucceeded, 10),
            (Response::FunctionRejected, 11),
            (Response::IncorrectLun, 12),
        ];
        for (r, v) in expected {
            assert_eq!(r as u8, v);
            assert_eq!(Response::from_u8(v), Some(r));
        }
        assert_eq!(Response::from_u8(13), None);
    }
}
