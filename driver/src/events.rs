//! The event queue (VIRTIO 1.2 §5.6.6.3): its buffers kept posted, and the
//! device's events as values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;
use tracing::info;
use vscsi_protocol::lun::{Lun, LunAddress};
use vscsi_protocol::virtio_scsi::{event, Event};
use zerocopy::FromBytes;

use crate::error::Error;
use crate::queue::SlotQueue;

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
    /// Decodes a 16-byte `virtio_scsi_event` (§5.6.6.3, [`Event`]): the
    /// events it carries (an EVENTS_MISSED flag comes out as an extra
    /// [`DeviceEvent::EventsMissed`] first). Shorter input carries none.
    pub fn decode(raw: &[u8]) -> Vec<DeviceEvent> {
        let mut out = Vec::new();
        let Ok((e, _)) = Event::read_from_prefix(raw) else {
            return out;
        };
        let (ev, reason, lun_field) = (e.event.get(), e.reason.get(), e.lun);
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

/// Keeps one event buffer posted on the event queue `q` until the driver
/// closes: waits for the device to fill it, decodes and broadcasts its
/// events (counting them in `seen`), posts it again (also after a reset
/// took it off the ring). No allocation besides the decoded events.
pub(crate) async fn keep_posted(
    q: Arc<SlotQueue>,
    tx: broadcast::Sender<DeviceEvent>,
    seen: Arc<AtomicU64>,
) {
    loop {
        let mut raw = [0u8; size_of::<Event>()];
        let posted = async {
            let mut pending = q.call(&[], raw.len(), [0; 8], 0).await?;
            pending.finished().await?.reply(&mut raw)
        };
        let n = match posted.await {
            Ok(n) => n,
            Err(Error::QueueReset { .. } | Error::Disconnected { .. }) => continue,
            Err(_) => break,
        };
        for ev in DeviceEvent::decode(&raw[..n]) {
            seen.fetch_add(1, Ordering::Relaxed);
            info!(?ev, "device event");
            let _ = tx.send(ev);
        }
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
