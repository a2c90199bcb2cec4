//! Feature negotiation: what the driver asks the device for and what the two agree on.

use tracing::warn;
use virtio_bindings::virtio_config::VIRTIO_F_RING_PACKED;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vscsi_protocol::virtio_scsi::feature;

use super::options::{DriverOptions, Features, QueueConfig};
use crate::error::{Error, Result};
use crate::transport::vhost_user::VhostUserTransport;

/// The virtio feature bits the driver offers to ack (§2.2, §5.6.3): hot-plug
/// and change events always, indirect descriptors (§2.7.5.3), the event
/// index (§2.7.10) and packed rings (VIRTIO_F_RING_PACKED, bit 34, §2.8) as
/// `cfg` asks.
pub(super) fn wanted(cfg: QueueConfig) -> u64 {
    let mut wanted = 1u64 << feature::HOTPLUG | 1 << feature::CHANGE;
    if cfg.use_indirect {
        wanted |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
    }
    if cfg.event_index {
        wanted |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    if cfg.use_packed {
        wanted |= 1 << VIRTIO_F_RING_PACKED;
    }
    wanted
}

/// What the connected device and `cfg` agree on: the acked features and
/// as many request queues as both have (`num_queues` of the configuration
/// space, §5.6.4, and the vhost-user queue count). With
/// [`DriverOptions::strict_features`] anything less than asked is an error.
pub(super) fn agree(
    transport: &mut VhostUserTransport,
    cfg: QueueConfig,
    opts: DriverOptions,
) -> Result<Features> {
    let acked = transport.features();
    let device_queues = transport.config().num_queues.get().max(1);
    let mut queue_count = cfg.queue_count.min(device_queues.min(64) as u16);
    if let Some(total) = transport.queue_num()? {
        queue_count = queue_count.min(total.saturating_sub(2).max(1) as u16);
    }
    if queue_count < cfg.queue_count {
        warn!(
            asked = cfg.queue_count,
            using = queue_count,
            "the device has fewer request queues"
        );
    }
    let indirect = acked & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0;
    let event_index = acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
    let packed = acked & (1 << VIRTIO_F_RING_PACKED) != 0;
    if opts.strict_features {
        if cfg.use_indirect && !indirect {
            return Err(Error::MissingFeature("VIRTIO_RING_F_INDIRECT_DESC"));
        }
        if cfg.event_index && !event_index {
            return Err(Error::MissingFeature("VIRTIO_RING_F_EVENT_IDX"));
        }
        if cfg.use_packed && !packed {
            return Err(Error::MissingFeature("VIRTIO_F_RING_PACKED"));
        }
        if queue_count < cfg.queue_count {
            return Err(Error::BadConfig(format!(
                "{} request queues asked, the device has {queue_count}",
                cfg.queue_count
            )));
        }
    }
    Ok(Features {
        bits: acked,
        indirect,
        event_index,
        packed,
        hotplug: acked & (1 << feature::HOTPLUG) != 0,
        change: acked & (1 << feature::CHANGE) != 0,
        queue_count,
        queue_size: cfg.queue_size,
    })
}
