//! The event queue (VIRTIO 1.2 §5.6.6.3): hot-plug (TRANSPORT_RESET) and
//! parameter change events, sent when something outside the device asks.
//!
//! The driver keeps empty event buffers posted. They stay on the avail
//! ring until an event is due: then one is popped, filled and completed at
//! once, so no buffer is ever taken off the ring without a used entry (and
//! GET_VRING_BASE reports exactly the buffers the device used). When no
//! buffer is posted the event is dropped and the next buffer the driver
//! posts carries `VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED`, as
//! the spec asks; the driver then rescans.
//!
//! [`EventHub`] is the daemon-level hook: it lives in
//! [`DeviceOptions`](super::DeviceOptions) and reaches the device of the
//! current connection, whichever it is.
//!
//! ```
//! use vscsi_backend::vhost::event_queue::{EventHub, ResetReason};
//! let hub = EventHub::default();
//! // No driver connected: nothing delivered.
//! assert_eq!(hub.transport_reset(0, 1, ResetReason::Rescan), 0);
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tracing::{debug, info};
use vhost_user_backend::VringT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vscsi_protocol::lun::Lun;
use vscsi_protocol::virtio_scsi::{event, feature, Event};
use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

use super::chain::split_chain;
use super::device_ring::DeviceRing;
use super::guest_io::IoVecs;
use super::queue_metrics::QueueMetrics;
use super::ring_guard::RingGuard;
use crate::limited;
use crate::vhost::dirty::{GuestMem, Vring};

/// Why a TRANSPORT_RESET event is sent (§5.6.6.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// A LUN or target appeared: rescan it.
    Rescan,
    /// A LUN or target went away.
    Removed,
    /// A hard reset of the target.
    Hard,
}

impl ResetReason {
    fn code(self) -> u32 {
        match self {
            ResetReason::Rescan => event::RESET_RESCAN,
            ResetReason::Removed => event::RESET_REMOVED,
            ResetReason::Hard => event::RESET_HARD,
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written into a posted buffer and completed.
    Delivered,
    /// No buffer was posted (or the ring is not running): the driver gets
    /// EVENTS_MISSED with the next buffer.
    Missed,
    /// The driver did not negotiate the feature the event needs
    /// (HOTPLUG for TRANSPORT_RESET, CHANGE for PARAM_CHANGE).
    NotNegotiated,
}

/// The event queue of one device.
pub struct EventQueue {
    mem: OnceLock<GuestMemoryAtomic<GuestMem>>,
    vring: Mutex<Option<Vring>>,
    acked: AtomicU64,
    missed: AtomicBool,
    gone: AtomicBool,
    /// Scratch buffers and the ring contract of the queue.
    writable: Mutex<(IoVecs, IoVecs, RingGuard)>,
}

impl Default for EventQueue {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

impl EventQueue {
    /// The event queue of a device of a controller counting in `metrics`.
    pub fn new(metrics: Arc<QueueMetrics>) -> Self {
        Self::with_ring(metrics, Arc::default())
    }

    /// The event queue whose ring is `ring` (the device sets its format).
    pub fn with_ring(metrics: Arc<QueueMetrics>, ring: Arc<DeviceRing>) -> Self {
        Self {
            mem: OnceLock::new(),
            vring: Mutex::new(None),
            acked: AtomicU64::new(0),
            missed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            writable: Mutex::new((
                IoVecs::default(),
                IoVecs::default(),
                RingGuard::with_ring(1, metrics, ring),
            )),
        }
    }

    /// Records guest memory (from `update_memory`).
    pub fn set_memory(&self, mem: GuestMemoryAtomic<GuestMem>) {
        let _ = self.mem.set(mem);
    }

    /// Records the acked virtio features.
    pub fn set_features(&self, acked: u64) {
        self.acked.store(acked, Ordering::Relaxed);
    }

    /// The driver posted buffers (a kick on the event queue): remembers the
    /// ring, and reports missed events if any were.
    pub fn kicked(&self, vring: &Vring) {
        self.remember(vring);
        if self.missed.swap(false, Ordering::SeqCst)
            && self.post(event::NO_EVENT | event::EVENTS_MISSED, [0; 8], 0) != Delivery::Delivered
        {
            self.missed.store(true, Ordering::SeqCst);
        }
    }

    /// Remembers the event queue's ring (the worker sees it first).
    pub fn remember(&self, vring: &Vring) {
        let mut v = self.vring.lock().unwrap_or_else(|p| p.into_inner());
        if v.is_none() {
            *v = Some(vring.clone());
        }
    }

    /// The connection ended: later events are not delivered.
    pub fn disconnect(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }

    /// Sends TRANSPORT_RESET for `target:lun` (needs VIRTIO_SCSI_F_HOTPLUG).
    pub fn transport_reset(&self, target: u8, lun: u16, reason: ResetReason) -> Delivery {
        if self.acked.load(Ordering::Relaxed) & (1 << feature::HOTPLUG) == 0 {
            return Delivery::NotNegotiated;
        }
        self.post(
            event::TRANSPORT_RESET,
            lun_field(target, lun),
            reason.code(),
        )
    }

    /// Sends PARAM_CHANGE for `target:lun` with the unit attention's ASC
    /// and ASCQ (needs VIRTIO_SCSI_F_CHANGE), e.g. 2Ah/09h CAPACITY DATA HAS CHANGED.
    pub fn param_change(&self, target: u8, lun: u16, asc: u8, ascq: u8) -> Delivery {
        if self.acked.load(Ordering::Relaxed) & (1 << feature::CHANGE) == 0 {
            return Delivery::NotNegotiated;
        }
        let reason = u32::from(asc) | u32::from(ascq) << 8;
        self.post(event::PARAM_CHANGE, lun_field(target, lun), reason)
    }

    fn post(&self, ev: u32, lun: [u8; 8], reason: u32) -> Delivery {
        let missed = || {
            self.missed.store(true, Ordering::SeqCst);
            debug!(event = ev, "no event buffer posted: EVENTS_MISSED");
            Delivery::Missed
        };
        if self.gone.load(Ordering::SeqCst) {
            return Delivery::Missed;
        }
        let (Some(mem), Some(vring)) = (
            self.mem.get(),
            self.vring.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        ) else {
            return missed();
        };
        let guard = mem.memory();
        let mut state = vring.get_mut();
        let mut bufs = self.writable.lock().unwrap_or_else(|p| p.into_inner());
        let (r, w, ring) = &mut *bufs;
        if !ring.serving(&state) {
            return missed();
        }
        let head = match ring.pop(state.get_queue_mut(), &guard) {
            Ok(Some(head)) => head,
            Ok(None) => return missed(),
            Err(v) => {
                ring.break_ring(&mut state, v);
                return missed();
            }
        };
        let mut used = 0u32;
        let flags = if self.missed.swap(false, Ordering::SeqCst) {
            event::EVENTS_MISSED
        } else {
            0
        };
        let msg = Event {
            event: U32::new(ev | flags),
            lun,
            reason: U32::new(reason),
        };
        let bad = match split_chain(ring.descriptors(), &guard, r, w) {
            Ok(()) if w.len() >= size_of::<Event>() => {
                w.copy_in(0, msg.as_bytes());
                used = size_of::<Event>() as u32;
                false
            }
            Ok(()) => limited!(
                ring.logs.malformed,
                warn,
                len = w.len(),
                "event buffer smaller than 16 bytes: completed empty"
            ),
            Err(fault) => limited!(
                ring.logs.malformed,
                warn,
                ?fault,
                "malformed event buffer: completed empty"
            ),
        };
        if used == 0 {
            ring.note_malformed();
        }
        ring.note_suppressed(bad);
        r.clear();
        w.clear();
        if let Err(e) = ring.ring().add_used(&mut state, &guard, head, used) {
            crate::limited_site!(warn, error = %e, "event queue: add_used failed");
        }
        // avail_event (EVENT_IDX): have the driver kick when it re-posts,
        // so missed events get reported.
        if let Err(e) = ring.ring().enable_notification(&mut state, &guard) {
            crate::limited_site!(warn, error = %e, "event queue: cannot enable notifications");
        }
        if ring.ring().wants_call(&mut state, &guard) {
            if let Err(e) = state.signal_used_queue() {
                crate::limited_site!(warn, error = %e, "event queue: signal failed");
            }
        }
        if used == 0 {
            return missed();
        }
        info!(event = ev, flags, reason, "event sent");
        Delivery::Delivered
    }
}

fn lun_field(target: u8, lun: u16) -> [u8; 8] {
    Lun::new(target, lun).map_or([1, target, 0, 0, 0, 0, 0, 0], Lun::encode_event)
}

/// The daemon-level hook: sends events to the device of every live
/// connection (normally one). Cheap to share; carried in `DeviceOptions`.
#[derive(Default)]
pub struct EventHub {
    devices: Mutex<Vec<Weak<EventQueue>>>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").finish_non_exhaustive()
    }
}

impl EventHub {
    pub(crate) fn register(&self, q: &Arc<EventQueue>) {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.retain(|w| w.strong_count() > 0);
        d.push(Arc::downgrade(q));
    }

    fn each(&self, f: impl Fn(&EventQueue) -> Delivery) -> usize {
        let live: Vec<Arc<EventQueue>> = {
            let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
            d.iter().filter_map(Weak::upgrade).collect()
        };
        live.iter()
            .filter(|q| !q.gone.load(Ordering::SeqCst))
            .map(|q| f(q))
            .filter(|d| *d == Delivery::Delivered)
            .count()
    }

    /// TRANSPORT_RESET to every connected driver; returns how many got it.
    pub fn transport_reset(&self, target: u8, lun: u16, reason: ResetReason) -> usize {
        self.each(|q| q.transport_reset(target, lun, reason))
    }

    /// PARAM_CHANGE to every connected driver; returns how many got it.
    pub fn param_change(&self, target: u8, lun: u16, asc: u8, ascq: u8) -> usize {
        self.each(|q| q.param_change(target, lun, asc, ascq))
    }

    /// Drivers connected now.
    pub fn connected(&self) -> usize {
        self.each(|_| Delivery::Delivered)
    }
}
