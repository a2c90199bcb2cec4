//! Events from the device's event queue (VIRTIO 1.2 §5.6.6.3) as values.

use vscsi_protocol::lun::{Lun, LunAddress};
use vscsi_protocol::virtio_scsi::event;

/// Why the device reset the transport for a LUN (TRANSPORT_RESET `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Hard reset.
    Hard,
    /// The LUN or target appeared (or changed): rescan it.
    Rescan,
    /// The LUN or target was removed.
    Removed,
    /// A reason the spec does not define.
    Other(u32),
}

/// One event the device reported, as [`crate::Driver::events`] streams it.
///
/// ```no_run
/// # async fn demo(driver: &vscsi_driver::Driver) {
/// use vscsi_driver::DeviceEvent;
/// let mut events = driver.events();
/// while let Ok(ev) = events.recv().await {
///     if let DeviceEvent::TransportReset { lun, .. } = ev {
///         tracing::info!("rescan {}:{}", lun.target, lun.lun);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Hot-plug or hot-unplug (VIRTIO_SCSI_T_TRANSPORT_RESET).
    TransportReset {
        /// The LUN (for a whole target, LUN 0).
        lun: Lun,
        /// Why.
        reason: ResetReason,
    },
    /// A parameter of the LUN changed (VIRTIO_SCSI_T_PARAM_CHANGE), with
    /// the unit attention's additional sense code: re-read it.
    ParamChange {
        /// The LUN.
        lun: Lun,
        /// ASC, e.g. 2Ah.
        asc: u8,
        /// ASCQ, e.g. 09h (CAPACITY DATA HAS CHANGED).
        ascq: u8,
    },
    /// An asynchronous notification (VIRTIO_SCSI_T_ASYNC_NOTIFY).
    AsyncNotify {
        /// The LUN.
        lun: Lun,
        /// Event classes (bit mask).
        events: u32,
    },
    /// The device dropped events for lack of buffers: rescan everything.
    EventsMissed,
    /// An event type the driver does not know.
    Unknown {
        /// `event` field.
        event: u32,
        /// `reason` field.
        reason: u32,
    },
}

impl DeviceEvent {
    /// Decodes a 16-byte `virtio_scsi_event`: the events it carries (an
    /// EVENTS_MISSED flag comes out as an extra [`DeviceEvent::EventsMissed`] first).
    pub fn decode(raw: &[u8]) -> Vec<DeviceEvent> {
        let mut out = Vec::new();
        if raw.len() < 16 {
            return out;
        }
        let word = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        let (ev, reason) = (word(0), word(12));
        let mut lun_field = [0u8; 8];
        lun_field.copy_from_slice(&raw[4..12]);
        let lun = match LunAddress::decode(&lun_field) {
            Ok(LunAddress::Unit(l)) => l,
            _ => Lun {
                target: lun_field[1],
                lun: 0,
            },
        };
        if ev & event::EVENTS_MISSED != 0 {
            out.push(DeviceEvent::EventsMissed);
        }
        match ev & !event::EVENTS_MISSED {
            event::NO_EVENT => {}
            event::TRANSPORT_RESET => out.push(DeviceEvent::TransportReset {
                lun,
                reason: match reason {
                    event::RESET_HARD => ResetReason::Hard,
                    event::RESET_RESCAN => ResetReason::Rescan,
                    event::RESET_REMOVED => ResetReason::Removed,
                    r => ResetReason::Other(r),
                },
            }),
            event::PARAM_CHANGE => out.push(DeviceEvent::ParamChange {
                lun,
                asc: (reason & 0xFF) as u8,
                ascq: (reason >> 8 & 0xFF) as u8,
            }),
            event::ASYNC_NOTIFY => out.push(DeviceEvent::AsyncNotify {
                lun,
                events: reason,
            }),
            other => out.push(DeviceEvent::Unknown {
                event: other,
                reason,
            }),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ev: u32, lun: [u8; 8], reason: u32) -> Vec<u8> {
        let mut v = ev.to_le_bytes().to_vec();
        v.extend_from_slice(&lun);
        v.extend_from_slice(&reason.to_le_bytes());
        v
    }

    #[test]
    fn decodes_events() {
        let lun = Lun { target: 2, lun: 5 };
        assert_eq!(
            DeviceEvent::decode(&raw(
                event::TRANSPORT_RESET,
                lun.encode(),
                event::RESET_REMOVED
            )),
            vec![DeviceEvent::TransportReset {
                lun,
                reason: ResetReason::Removed
            }]
        );
        assert_eq!(
            DeviceEvent::decode(&raw(event::PARAM_CHANGE, lun.encode(), 0x2A | 0x09 << 8)),
            vec![DeviceEvent::ParamChange {
                lun,
                asc: 0x2A,
                ascq: 0x09
            }]
        );
        assert_eq!(
            DeviceEvent::decode(&raw(event::NO_EVENT | event::EVENTS_MISSED, [0; 8], 0)),
            vec![DeviceEvent::EventsMissed]
        );
        assert!(DeviceEvent::decode(&[0; 4]).is_empty());
    }
}
