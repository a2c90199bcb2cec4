//! The virtio-scsi device as a `vhost-user-backend` backend.
//!
//! One [`ScsiDevice`] serves one vhost-user connection. Queue 0 (control) and
//! queue 1 (event) share worker thread 0; request queue *n* (virtqueue
//! `2 + n`) has worker thread `1 + n` to itself, with its own state behind
//! its own uncontended lock: no lock is shared by all queues on the I/O path
//! (`VhostUserBackend` with `&self`, not the `RwLock<VhostUserBackendMut>`
//! wrapper that serialises every event).

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::{debug, info, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vscsi_protocol::lun::MAX_LUN;
use vscsi_protocol::virtio_scsi::{feature, Config, CDB_SIZE, CONFIG_SIZE, SENSE_SIZE};
use zerocopy::little_endian::{U16, U32};
use zerocopy::IntoBytes;

use super::control_queue::ControlQueue;
use super::request_queue::RequestQueue;
use crate::scsi::ScsiBus;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (vhost-user.rst): bit 30 of the virtio features.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Tunables of the device as the driver sees it.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Number of request queues (config `num_queues`).
    pub request_queues: u16,
    /// Largest ring the driver may set up (SET_VRING_NUM).
    pub max_queue_size: u16,
    /// Config `seg_max`: data segments per command.
    pub seg_max: u32,
    /// Config `max_sectors`: 512-byte sectors per command.
    pub max_sectors: u32,
    /// Config `cmd_per_lun`.
    pub cmd_per_lun: u32,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            request_queues: 1,
            max_queue_size: 1024,
            seg_max: 254,
            max_sectors: 0xFFFF,
            cmd_per_lun: 128,
        }
    }
}

/// The virtio features this device offers (VIRTIO 1.2 §5.6.3, §6): what
/// QEMU's `vhost-user-scsi-pci` asks for with its default properties.
pub fn offered_features() -> u64 {
    1 << VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | 1 << feature::HOTPLUG
        | 1 << feature::CHANGE
        | VHOST_USER_F_PROTOCOL_FEATURES
}

/// One virtio-scsi device instance (one vhost-user connection).
pub struct ScsiDevice {
    bus: Arc<ScsiBus>,
    opts: DeviceOptions,
    mem: OnceLock<GuestMemoryAtomic<GuestMemoryMmap>>,
    control: Mutex<ControlQueue>,
    requests: Vec<Mutex<RequestQueue>>,
    exit: Vec<(EventConsumer, EventNotifier)>,
}

impl ScsiDevice {
    /// A device serving `bus` with `opts`.
    pub fn new(bus: Arc<ScsiBus>, opts: DeviceOptions) -> io::Result<Self> {
        let opts = DeviceOptions {
            request_queues: opts.request_queues.clamp(1, 62),
            ..opts
        };
        let threads = 1 + opts.request_queues as usize;
        let exit = (0..threads)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            bus,
            requests: (0..opts.request_queues).map(|_| Mutex::default()).collect(),
            opts,
            mem: OnceLock::new(),
            control: Mutex::default(),
            exit,
        })
    }

    /// The device configuration space (§5.6.4), little-endian.
    pub fn config(&self) -> Config {
        Config {
            num_queues: U32::new(self.opts.request_queues as u32),
            seg_max: U32::new(self.opts.seg_max),
            max_sectors: U32::new(self.opts.max_sectors),
            cmd_per_lun: U32::new(self.opts.cmd_per_lun),
            event_info_size: U32::new(size_of::<vscsi_protocol::virtio_scsi::Event>() as u32),
            sense_size: U32::new(SENSE_SIZE as u32),
            cdb_size: U32::new(CDB_SIZE as u32),
            max_channel: U16::new(0),
            max_target: U16::new(self.bus.max_target() as u16),
            max_lun: U32::new(MAX_LUN as u32),
        }
    }

    /// Wakes every worker thread so it exits (after the connection ended).
    pub fn stop_workers(&self) {
        for (_, notifier) in &self.exit {
            let _ = notifier.notify();
        }
    }
}

impl VhostUserBackend for ScsiDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 + self.opts.request_queues as usize
    }

    fn max_queue_size(&self) -> usize {
        self.opts.max_queue_size as usize
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn acked_features(&self, features: u64) {
        info!(
            features = format_args!("{features:#x}"),
            "driver acknowledged features"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, enabled: bool) {
        debug!(enabled, "EVENT_IDX");
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // The handler always passes the same `GuestMemoryAtomic` (it swaps
        // the mapping inside it), so keeping the first one is enough.
        let _ = self.mem.set(mem);
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.config();
        let bytes = cfg.as_bytes();
        let (start, end) = (offset as usize, offset as usize + size as usize);
        if end > CONFIG_SIZE {
            warn!(
                offset,
                size, "config read past the 36-byte virtio_scsi_config"
            );
            return Vec::new();
        }
        bytes[start..end].to_vec()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // §5.6.4: the driver may write sense_size (offset 20) and cdb_size
        // (24). Linux writes the defaults; other values are not supported
        // and are ignored (the device keeps using 96 and 32).
        let cfg = self.config();
        let current = cfg.as_bytes();
        let start = offset as usize;
        let same = current
            .get(start..start + buf.len())
            .is_some_and(|c| c == buf);
        if !same {
            warn!(offset, value = ?buf, "ignoring config write: only sense_size=96 and cdb_size=32 are supported");
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // Thread 0: control (0) and event (1) queues; thread 1+n: request queue n.
        let mut masks = vec![0b11u64];
        masks.extend((0..self.opts.request_queues as u64).map(|n| 1u64 << (2 + n)));
        masks
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.exit.get(thread_index)?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let Some(mem) = self.mem.get() else {
            warn!("queue event before SET_MEM_TABLE: ignored");
            return Ok(());
        };
        let Some(vring) = vrings.get(device_event as usize) else {
            return Ok(());
        };
        match (thread_id, device_event) {
            (0, 0) => lock(&self.control).process(vring, mem, &self.bus),
            // Event queue: buffers stay posted until the device has an event
            // to report (hot-plug, parameter change); nothing to do on a kick.
            (0, _) => Ok(()),
            (t, _) => match self.requests.get(t - 1) {
                Some(q) => lock(q).process(vring, mem, &self.bus),
                None => Ok(()),
            },
        }
    }
}

/// Locks a per-queue mutex; a poisoned one (a worker panicked) is still usable
/// since the state inside is only scratch space.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_little_endian_and_complete() {
        let dev = ScsiDevice::new(Arc::new(ScsiBus::new()), DeviceOptions::default()).unwrap();
        let bytes = dev.get_config(0, CONFIG_SIZE as u32);
        assert_eq!(bytes.len(), 36);
        assert_eq!(&bytes[0..4], &[1, 0, 0, 0]); // num_queues
        assert_eq!(&bytes[16..20], &[16, 0, 0, 0]); // event_info_size
        assert_eq!(&bytes[20..24], &[96, 0, 0, 0]); // sense_size
        assert_eq!(&bytes[24..28], &[32, 0, 0, 0]); // cdb_size
        assert_eq!(&bytes[32..36], &[0xFF, 0x3F, 0, 0]); // max_lun
        assert_eq!(dev.get_config(20, 4), vec![96, 0, 0, 0]);
        assert!(dev.get_config(30, 8).is_empty());
        assert!(dev.set_config(20, &[96, 0, 0, 0]).is_ok());
        assert!(dev.set_config(0, &[9; 64]).is_ok());
    }

    #[test]
    fn one_worker_per_request_queue() {
        let opts = DeviceOptions {
            request_queues: 3,
            ..Default::default()
        };
        let dev = ScsiDevice::new(Arc::new(ScsiBus::new()), opts).unwrap();
        assert_eq!(dev.num_queues(), 5);
        assert_eq!(dev.queues_per_thread(), vec![0b11, 0b100, 0b1000, 0b10000]);
        assert!(dev.exit_event(3).is_some());
        assert!(dev.exit_event(4).is_none());
        let f = dev.features();
        assert_ne!(f & (1 << 32), 0, "VERSION_1");
        assert_ne!(f & (1 << 2), 0, "F_CHANGE");
    }
}
