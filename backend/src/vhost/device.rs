//! The virtio-scsi device as a `vhost-user-backend` backend.
//!
//! One [`ScsiDevice`] serves one vhost-user connection. Queue 0 (control) and
//! queue 1 (event) share worker thread 0; request queue *n* (virtqueue
//! `2 + n`) has worker thread `1 + n` to itself, with its own state behind
//! its own uncontended lock: no lock is shared by all queues on the I/O path
//! (`VhostUserBackend` with `&self`, not the `RwLock<VhostUserBackendMut>`
//! wrapper that serialises every event).
//!
//! Each request queue also has a completion eventfd for its io_uring
//! engine (`aio=io_uring`), registered in that queue's worker epoll by
//! [`ScsiDevice::register_completion_listeners`] with the event id
//! `num_queues() + 1`; the worker reaps completions when it fires. Every
//! transfer in flight is waited for and completed before a ring stops
//! (`stop_vring`, GET_VRING_BASE), on device reset and on disconnect.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tracing::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
pub use vscsi_poll::{Poll, PollMode};
use vscsi_protocol::lun::MAX_LUN;
use vscsi_protocol::virtio_scsi::{feature, Config, CDB_SIZE, CONFIG_SIZE, SENSE_SIZE};
use zerocopy::little_endian::{U16, U32};
use zerocopy::IntoBytes;

use super::control_queue::{ControlQueue, TmfScope};
use super::device_ring::{DeviceRing, RingReport};
use super::event_queue::{Delivery, EventHub, EventQueue, ResetReason};
use super::held::Covers;
use super::inflight::{self, InflightRegion};
use super::placement::Placement;
use super::queue_metrics::{QueueMetrics, TrustCounters};
use super::request_queue::{QueueShared, RequestQueue};
use crate::cpu_list::CpuList;
use crate::fault::FaultTable;
use crate::scsi::reservation::abort::{self, TaskSet};
use crate::scsi::target::BusHandle;
use crate::scsi::Nexus;
#[cfg(test)]
use crate::scsi::ScsiBus;
use crate::vhost::dirty::{GuestMem, Vring};
use vscsi_protocol::virtio_scsi::Response;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (vhost-user.rst): bit 30 of the virtio features.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// `VHOST_F_LOG_ALL` (vhost-user.rst "Migrating back-ends"): bit 26 of the
/// virtio features. Acked while the frontend migrates: every page the
/// device writes is marked in the log it shares with SET_LOG_BASE
/// (`VHOST_USER_PROTOCOL_F_LOG_SHMFD`); a SET_FEATURES without it stops
/// the marking.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// The most request queues a controller can offer: worker `1 + n` serves
/// queue `2 + n`, and vhost-user-backend's thread masks are 64-bit.
pub const MAX_REQUEST_QUEUES: u16 = 62;

/// Request queues a controller offers unless told otherwise. QEMU's
/// `vhost-user-scsi-pci` asks for one per vCPU by default (`num_queues`,
/// since QEMU 5.2) and fails to start when the device has fewer, so the
/// default covers VMs of up to 16 vCPUs. Queues the frontend never sets up
/// cost an idle worker thread each (blocked in epoll, no CPU) and two
/// eventfds, all released with the connection.
pub const DEFAULT_REQUEST_QUEUES: u16 = 16;

/// Largest ring a controller accepts unless told otherwise (SET_VRING_NUM).
pub const DEFAULT_MAX_QUEUE_SIZE: u16 = 1024;

/// Checks a largest-ring size (VIRTIO 1.2 §2.7: a split queue's size is a
/// power of two, at most 32768), with a message for the user.
pub fn check_max_queue_size(size: u32) -> Result<u16, String> {
    if (1..=32768).contains(&size) && size.is_power_of_two() {
        Ok(size as u16)
    } else {
        Err(format!(
            "queue size {size}: use a power of two in 1..=32768 (virtio split rings)"
        ))
    }
}

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
    /// Fault injection per LUN, shared with whoever changes it at run time.
    pub faults: Arc<FaultTable>,
    /// The hook that sends hot-plug and parameter change events to the
    /// device of the current connection.
    pub events: Arc<EventHub>,
    /// Per request queue counters, kept across connections.
    pub queue_metrics: Arc<QueueMetrics>,
    /// Optional virtio features to offer, a subset of [`OPTIONAL_FEATURES`]
    /// (VERSION_1 and the vhost-user protocol feature bit are always offered).
    pub features: u64,
    /// How a request queue waits for new requests once it runs dry: spin
    /// a while (no kick, no eventfd wake-up while it spins) or sleep on the
    /// kick eventfd at once ([`Poll`]; adaptive by default).
    pub poll: Poll,
    /// The I_T nexus of the connection (its initiator port and the
    /// controller's target port); the serving loop gives each connection
    /// its own number ([`Nexus::for_connection`]).
    pub nexus: Arc<Nexus>,
    /// The controller's name, for the audit log.
    pub controller: Arc<str>,
    /// CPUs the request-queue workers are pinned to, round robin (None:
    /// unpinned); see [`super::placement`].
    pub cpus: Option<CpuList>,
}

/// How request queues wait when nothing says otherwise (`--poll`,
/// `poll` in the configuration file): adaptive hybrid polling, which
/// measured faster than sleeping at every queue depth and never slower
/// than a fixed spin (README.md, "Polling").
pub const DEFAULT_POLL: Poll = Poll::ADAPTIVE;

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            request_queues: 1,
            max_queue_size: 1024,
            seg_max: 254,
            max_sectors: 0xFFFF,
            cmd_per_lun: 128,
            faults: Arc::default(),
            events: Arc::default(),
            poll: DEFAULT_POLL,
            features: OPTIONAL_FEATURES,
            queue_metrics: Arc::default(),
            nexus: Arc::new(Nexus::default()),
            controller: Arc::from("ctrl0"),
            cpus: None,
        }
    }
}

/// Features a controller may choose not to offer, by configuration name
/// (VIRTIO 1.2 §6 and §5.6.3).
pub const FEATURE_NAMES: [(&str, u64); 5] = [
    ("indirect_desc", 1 << VIRTIO_RING_F_INDIRECT_DESC),
    ("event_idx", 1 << VIRTIO_RING_F_EVENT_IDX),
    ("ring_packed", 1 << VIRTIO_F_RING_PACKED),
    ("hotplug", 1 << feature::HOTPLUG),
    ("change", 1 << feature::CHANGE),
];

/// Every optional feature of [`FEATURE_NAMES`].
pub const OPTIONAL_FEATURES: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_F_RING_PACKED
    | 1 << feature::HOTPLUG
    | 1 << feature::CHANGE;

/// The virtio features this device offers by default (VIRTIO 1.2 §5.6.3,
/// §6): what QEMU's `vhost-user-scsi-pci` asks for with its default
/// properties, and VIRTIO_F_RING_PACKED (§2.8), which QEMU's
/// vhost-user-scsi does not take (its feature list lacks it), so QEMU
/// guests get split rings.
pub fn offered_features() -> u64 {
    1 << VIRTIO_F_VERSION_1 | OPTIONAL_FEATURES | VHOST_USER_F_PROTOCOL_FEATURES | VHOST_F_LOG_ALL
}

/// One virtio-scsi device instance (one vhost-user connection).
pub struct ScsiDevice {
    bus: BusHandle,
    opts: DeviceOptions,
    mem: OnceLock<GuestMemoryAtomic<GuestMem>>,
    control: Mutex<ControlQueue>,
    requests: Vec<Mutex<RequestQueue>>,
    /// What other threads reach of each request queue (held commands).
    shared: Vec<Arc<QueueShared>>,
    events: Arc<EventQueue>,
    exit: Vec<(EventConsumer, EventNotifier)>,
    /// The exit-event consumers handed to vhost-user-backend's workers,
    /// which it takes with `into_raw_fd` and never closes (0.24): closed
    /// when the device is dropped, after the workers and their epoll sets.
    handed_out: Mutex<Vec<(std::os::fd::RawFd, usize)>>,
    /// Per request queue: the io_uring engine's completion eventfd.
    completions: Vec<EventFd>,
    /// Per vring (control, event, request queues): its ring, whose format
    /// the negotiated features choose.
    rings: Vec<Arc<DeviceRing>>,
    /// What PREEMPT AND ABORT from another nexus reaches of this one: the
    /// registry holds it weakly, so it is registered while the device lives.
    _task_set: Arc<NexusTasks>,
    /// Whether the frontend's last SET_FEATURES had VHOST_F_LOG_ALL (it
    /// logs dirty pages for a live migration): its changes are audited.
    dirty_logging: std::sync::atomic::AtomicBool,
    /// Whether this connection's frontend asked for a fresh inflight region
    /// (GET_INFLIGHT_FD): a SET_INFLIGHT_FD without one hands over a region
    /// kept from an earlier connection (a reconnect).
    inflight_created: std::sync::atomic::AtomicBool,
    /// The audit lines of SET_INFLIGHT_FD (a frontend sending it in a loop
    /// is limited).
    inflight_log: crate::ratelimit::LogLimit,
    /// Which CPU each request-queue worker pins itself to.
    placement: Placement,
}

/// The task sets of a connection's I_T nexus: the commands its request
/// queues hold or delay (fault injection) and their transfers in flight.
struct NexusTasks {
    bus: BusHandle,
    queues: Vec<Arc<QueueShared>>,
    faults: Arc<FaultTable>,
}

impl TaskSet for NexusTasks {
    /// ABORT TASK SET on every address of the bus that serves `lu` (a
    /// shared LU may sit at another target/LUN on this controller), as the
    /// control queue's TMF does: completed with `VIRTIO_SCSI_S_ABORTED`,
    /// unless the fault says the LUN ignores aborts.
    fn abort_task_set(&self, lu: &crate::scsi::LogicalUnit) -> usize {
        let bus = self.bus.load();
        let mut n = 0;
        for (t, l, x) in bus.units() {
            if !std::ptr::eq(x.as_ref(), lu) {
                continue;
            }
            let covers = Covers {
                target: t,
                lun: Some(l),
                tag: None,
            };
            for q in &self.queues {
                n += q.complete(
                    &covers,
                    |t, l| self.faults.survives(t, l, 0),
                    Response::Aborted,
                    &self.faults,
                );
            }
        }
        n
    }
}

impl ScsiDevice {
    /// A device serving `bus` with `opts`.
    pub fn new(bus: BusHandle, opts: DeviceOptions) -> io::Result<Self> {
        let opts = DeviceOptions {
            request_queues: opts.request_queues.clamp(1, MAX_REQUEST_QUEUES),
            ..opts
        };
        let threads = 1 + opts.request_queues as usize;
        let exit = (0..threads)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let shared: Vec<Arc<QueueShared>> = (0..opts.request_queues)
            .map(|n| Arc::new(QueueShared::new(n)))
            .collect();
        let mut rings: Vec<Arc<DeviceRing>> = vec![Arc::default(), Arc::default()];
        rings.extend(shared.iter().map(|s| s.ring.clone()));
        for (i, r) in rings.iter().enumerate() {
            r.report_to(RingReport {
                controller: opts.controller.clone(),
                connection: opts.nexus.connection(),
                vring: i as u16,
                metrics: opts.queue_metrics.clone(),
                limit: crate::ratelimit::LogLimit::default(),
            });
        }
        let events = Arc::new(EventQueue::with_ring(
            opts.queue_metrics.clone(),
            rings[1].clone(),
        ));
        let control = ControlQueue::with_ring(opts.queue_metrics.clone(), rings[0].clone());
        opts.events.register(&events);
        let completions = (0..opts.request_queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let task_set = Arc::new(NexusTasks {
            bus: bus.clone(),
            queues: shared.clone(),
            faults: opts.faults.clone(),
        });
        let weak: std::sync::Weak<NexusTasks> = Arc::downgrade(&task_set);
        abort::register(&opts.nexus, weak);
        Ok(Self {
            placement: Placement::new(opts.cpus.clone(), opts.request_queues as usize),
            _task_set: task_set,
            dirty_logging: std::sync::atomic::AtomicBool::new(false),
            inflight_created: std::sync::atomic::AtomicBool::new(false),
            inflight_log: crate::ratelimit::LogLimit::default(),
            bus,
            requests: shared
                .iter()
                .map(|s| {
                    Mutex::new(
                        RequestQueue::new(
                            s.clone(),
                            opts.faults.clone(),
                            opts.poll,
                            opts.queue_metrics.clone(),
                        )
                        .with_nexus(opts.nexus.clone()),
                    )
                })
                .collect(),
            shared,
            events,
            opts,
            mem: OnceLock::new(),
            control: Mutex::new(control),
            exit,
            handed_out: Mutex::new(Vec::new()),
            completions,
            rings,
        })
    }

    /// The inflight region layout for the ring format the driver
    /// negotiated (SET_FEATURES comes before GET_INFLIGHT_FD and
    /// SET_INFLIGHT_FD: QEMU sends it first so the backend can size the
    /// region).
    fn inflight_layout(&self) -> inflight::Layout {
        inflight::Layout::for_ring(self.rings.first().is_some_and(|r| r.is_packed()))
    }

    /// What a user can do when `error` (what ended the connection) is
    /// vhost-user-backend refusing a message as InvalidParam. It refuses a
    /// ring index past the queues offered (QEMU sends SET_VRING_CALL for
    /// every queue it will use while it realizes the device) and a ring
    /// size past [`DeviceOptions::max_queue_size`] before the device sees
    /// the message, so the line names both limits and what changes them.
    pub fn explain_refusal(&self, error: &vhost_user_backend::Error) -> Option<String> {
        matches!(
            error,
            vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::InvalidParam)
        )
        .then(|| {
            format!(
                "the frontend asked for something this controller does not offer; it offers {} \
                 request queues of at most {} descriptors. QEMU's vhost-user-scsi-pci asks for \
                 one request queue per vCPU (num_queues) and 128-descriptor rings \
                 (virtqueue_size): raise --queues (`queues` in the file, up to \
                 {MAX_REQUEST_QUEUES}) or set num_queues= lower; raise --max-queue-size \
                 (`queue_size`) or set virtqueue_size= lower",
                self.opts.request_queues, self.opts.max_queue_size
            )
        })
    }

    /// The event id of the io_uring completion eventfd in a request queue
    /// worker's epoll (past the queues and the exit event, which the
    /// vhost-user-backend event loop reserves).
    fn completion_event(&self) -> u16 {
        (2 + self.opts.request_queues) + 1
    }

    /// Registers each request queue's io_uring completion eventfd in its
    /// worker's epoll (`handlers` from `VhostUserDaemon::get_epoll_handlers`,
    /// one per thread of [`VhostUserBackend::queues_per_thread`]). A queue
    /// whose eventfd is not registered never starts an io_uring engine
    /// (it would not hear its completions): its LUs are served inline.
    pub fn register_completion_listeners<T: VhostUserBackend>(
        &self,
        handlers: &[Arc<VringEpollHandler<T>>],
    ) {
        let event = u64::from(self.completion_event());
        for (n, (fd, q)) in self.completions.iter().zip(&self.requests).enumerate() {
            let Some(h) = handlers.get(1 + n) else {
                continue;
            };
            match h.register_listener(fd.as_raw_fd(), EventSet::IN, event) {
                Ok(()) => lock(q).set_completion_eventfd(fd.as_raw_fd()),
                Err(e) => {
                    warn!(queue = n, error = %e, "cannot register the io_uring completion eventfd: queue stays inline")
                }
            }
        }
    }

    /// Waits for every io_uring transfer in flight on every request queue
    /// and completes it; returns how many.
    pub fn drain_in_flight(&self) -> usize {
        self.requests.iter().map(|q| lock(q).drain()).sum()
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
            // Every target id a hot-plugged LUN may get is addressable, as
            // QEMU does (VIRTIO_SCSI_MAX_TARGET); absent ones answer BAD_TARGET.
            max_target: U16::new(u8::MAX as u16),
            max_lun: U32::new(MAX_LUN as u32),
        }
    }

    /// Wakes every worker thread so it exits (after the connection ended),
    /// and completes every command fault injection still holds (with
    /// `VIRTIO_SCSI_S_RESET`): nothing taken off a ring is left behind.
    pub fn stop_workers(&self) {
        self.events.disconnect();
        let n = self.drain_in_flight();
        if n > 0 {
            info!(n, "disconnect: transfers in flight completed");
        }
        self.release_held();
        for (_, notifier) in &self.exit {
            let _ = notifier.notify();
        }
    }

    /// Completes every held command on every request queue; returns how many.
    pub fn release_held(&self) -> usize {
        self.shared
            .iter()
            .map(|q| q.complete_all(&self.opts.faults))
            .sum()
    }

    /// Requests this connection took off its split rings and has not
    /// completed, as its inflight region records them (0 without one):
    /// after the workers stopped, what the next daemon would run again.
    pub fn inflight_heads(&self) -> usize {
        self.rings.iter().map(|r| r.inflight_heads()).sum()
    }

    /// Commands held by fault injection right now.
    pub fn held(&self) -> usize {
        self.shared.iter().map(|q| q.held()).sum()
    }

    /// The fault table this device consults.
    pub fn faults(&self) -> &Arc<FaultTable> {
        &self.opts.faults
    }

    /// Sends a TRANSPORT_RESET event (hot-plug: `Rescan`, unplug: `Removed`).
    pub fn send_transport_reset(&self, target: u8, lun: u16, reason: ResetReason) -> Delivery {
        self.events.transport_reset(target, lun, reason)
    }

    /// Sends a PARAM_CHANGE event with the unit attention's ASC/ASCQ.
    pub fn send_param_change(&self, target: u8, lun: u16, asc: u8, ascq: u8) -> Delivery {
        self.events.param_change(target, lun, asc, ascq)
    }
}

/// Whether descriptors `a` and `b` of this process refer to the same open
/// file description (kcmp(2) with KCMP_FILE); false when either is closed
/// or the kernel cannot tell.
fn same_open_file(a: std::os::fd::RawFd, b: std::os::fd::RawFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: getpid(2) has no preconditions.
    let pid = unsafe { libc::getpid() } as libc::c_long;
    // SAFETY: kcmp(2) takes only integers and reads no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            a as libc::c_long,
            b as libc::c_long,
        )
    };
    r == 0
}

impl Drop for ScsiDevice {
    fn drop(&mut self) {
        self.events.disconnect();
        self.drain_in_flight();
        let n = self.release_held();
        if n > 0 {
            warn!(n, "device dropped with held commands: completed with RESET");
        }
        // The last reference to the device is gone, so are the worker
        // threads and the `VringEpollHandler`s that held it: nothing uses
        // these descriptors any more, and nothing else closes them. Each is
        // closed only if it is still a duplicate of the device's own exit
        // consumer (kcmp(2) KCMP_FILE: the same open file description), so
        // one that someone did close, and whose number was reused, is left
        // alone.
        let fds = std::mem::take(self.handed_out.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (fd, thread) in fds {
            let Some((ours, _)) = self.exit.get(thread) else {
                continue;
            };
            if !same_open_file(fd, ours.as_raw_fd()) {
                continue;
            }
            // SAFETY: `fd` is open and is our exit eventfd (checked above),
            // a raw fd vhost-user-backend never closes and whose users are
            // gone (see above): owning it closes it exactly once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            drop(owned);
        }
    }
}

impl VhostUserBackend for ScsiDevice {
    type Bitmap = crate::vhost::dirty::DirtyBitmap;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 + self.opts.request_queues as usize
    }

    fn max_queue_size(&self) -> usize {
        self.opts.max_queue_size as usize
    }

    fn features(&self) -> u64 {
        offered_features() & !(OPTIONAL_FEATURES & !self.opts.features)
    }

    fn acked_features(&self, features: u64) {
        self.events.set_features(features);
        let log_all = features & VHOST_F_LOG_ALL != 0;
        if self
            .dirty_logging
            .swap(log_all, std::sync::atomic::Ordering::AcqRel)
            != log_all
        {
            let regions = self.mem.get().map_or(0, |m| m.memory().num_regions());
            info!(target: "vscsi::audit", action = "dirty-log", state = if log_all { "start" } else { "stop" },
                regions, result = "ok",
                "{}", if log_all { "dirty page logging started (live migration)" } else { "dirty page logging stopped" });
        }
        if !log_all {
            // Migration ended (or never began): stop marking the log; a
            // new SET_LOG_BASE starts it again.
            if let Some(mem) = self.mem.get() {
                for region in mem.memory().iter() {
                    region.bitmap().stop();
                }
            }
        }
        let packed = features & (1 << VIRTIO_F_RING_PACKED) != 0;
        for r in &self.rings {
            r.set_packed(packed);
        }
        info!(
            features = format_args!("{features:#x}"),
            "driver acknowledged features"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    /// VHOST_USER_GET_INFLIGHT_FD (vhost-user "Inflight I/O tracking"): a
    /// fresh region the rings record their requests in flight in, laid out
    /// for the ring format the driver negotiated; the frontend keeps it for
    /// the next daemon.
    fn get_inflight_fd(
        &self,
        msg: &VhostUserInflight,
    ) -> io::Result<(VhostUserInflight, std::fs::File)> {
        let layout = self.inflight_layout();
        let (region, reply, file) =
            InflightRegion::create_for(msg, layout).map_err(io::Error::other)?;
        inflight::attach(&self.rings, region);
        self.inflight_created
            .store(true, std::sync::atomic::Ordering::Release);
        info!(
            queues = msg.num_queues,
            queue_size = msg.queue_size,
            mmap_size = reply.mmap_size,
            ?layout,
            "inflight region created"
        );
        Ok((reply, file))
    }

    /// VHOST_USER_SET_INFLIGHT_FD: the region the frontend kept (from this
    /// connection's GET_INFLIGHT_FD or a previous daemon's); what it holds
    /// in flight is resubmitted when each ring starts.
    /// Without a GET_INFLIGHT_FD first on this connection, the frontend
    /// kept the region from an earlier connection: a reconnect, audited
    /// (`inflight-reconnect`, with the requests the region holds in flight)
    /// and counted.
    fn set_inflight_fd(&self, msg: &VhostUserInflight, file: std::fs::File) -> io::Result<()> {
        let layout = self.inflight_layout();
        let region = InflightRegion::map_for(msg, file, layout).map_err(io::Error::other)?;
        let in_flight = region.in_flight();
        inflight::attach(&self.rings, region);
        let ours = self
            .inflight_created
            .load(std::sync::atomic::Ordering::Acquire);
        if ours {
            info!(
                queues = msg.num_queues,
                queue_size = msg.queue_size,
                "inflight region set"
            );
            return Ok(());
        }
        let m = &self.opts.queue_metrics;
        m.reconnect
            .reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let suppressed = crate::limited!(
            self.inflight_log,
            info,
            target: "vscsi::audit",
            controller = &*self.opts.controller,
            connection = self.opts.nexus.connection(),
            action = "inflight-reconnect",
            queues = msg.num_queues,
            queue_size = msg.queue_size,
            in_flight,
            ?layout,
            result = "ok",
            "frontend reconnected with the inflight region of an earlier connection"
        );
        if suppressed {
            TrustCounters::add(&m.trust.log_suppressed);
        }
        Ok(())
    }

    /// VHOST_USER_RESET_DEVICE (the frontend's device reset, VIRTIO 1.2
    /// §2.4): every command fault injection holds is completed with
    /// `VIRTIO_SCSI_S_RESET` (the frontend stopped the rings first, so it
    /// gets them back), and every target is reset as by I_T NEXUS RESET, so
    /// its LUs report the reset as a unit attention (SPC-5 29/00).
    fn reset_device(&self) {
        let drained = self.drain_in_flight();
        if drained > 0 {
            info!(drained, "device reset: transfers in flight completed");
        }
        let released = self.release_held();
        let bus = self.bus.load();
        for t in bus.targets() {
            t.nexus_reset(&self.opts.nexus);
        }
        for r in &self.rings {
            r.restart();
        }
        info!(released, "device reset");
    }

    fn set_event_idx(&self, enabled: bool) {
        debug!(enabled, "EVENT_IDX");
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        // The handler always passes the same `GuestMemoryAtomic` (it swaps
        // the mapping inside it), so keeping the first one is enough.
        self.events.set_memory(mem.clone());
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

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the ring is already stopped; complete what a stall
        // holds so the driver gets every buffer back.
        if let Some(rq) = (queue_index as usize)
            .checked_sub(2)
            .and_then(|n| self.requests.get(n))
        {
            // Nothing may write into guest memory once the driver has its
            // ring back: wait for (and complete) every transfer in flight.
            let n = lock(rq).drain();
            if n > 0 {
                info!(
                    queue_index,
                    n, "ring stopped: transfers in flight completed"
                );
            }
        }
        if let Some(q) = (queue_index as usize)
            .checked_sub(2)
            .and_then(|n| self.shared.get(n))
        {
            let n = q.complete_all(&self.opts.faults);
            if n > 0 {
                info!(
                    queue_index,
                    n, "ring stopped: held commands completed with RESET"
                );
            }
        }
        // Nothing of this ring is in flight any more: a packed ring starts
        // again from SET_VRING_BASE when it is next served.
        if let Some(r) = self.rings.get(queue_index as usize) {
            r.restart();
        }
        Ok(())
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.exit.get(thread_index)?;
        let (c, n) = (c.try_clone().ok()?, n.try_clone().ok()?);
        self.handed_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((c.as_raw_fd(), thread_index));
        Some((c, n))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        if let Some(n) = thread_id.checked_sub(1) {
            self.placement.place_current(n);
        }
        let Some(mem) = self.mem.get() else {
            crate::limited_site!(warn, "queue event before SET_MEM_TABLE: ignored");
            return Ok(());
        };
        if device_event == self.completion_event() {
            // A request queue's io_uring completions (thread 1 + n).
            let Some(n) = thread_id.checked_sub(1) else {
                return Ok(());
            };
            if let Some(fd) = self.completions.get(n) {
                // Level-triggered: empty the counter before reaping.
                let _ = fd.read();
            }
            // A worker's `vrings` are its own: request queue n's is the only one.
            return match (self.requests.get(n), vrings.first()) {
                (Some(q), Some(vring)) => lock(q).complete_io(vring),
                _ => Ok(()),
            };
        }
        let Some(vring) = vrings.get(device_event as usize) else {
            return Ok(());
        };
        match (thread_id, device_event) {
            (0, 0) => {
                if let Some(events) = vrings.get(1) {
                    self.events.remember(events);
                }
                let bus = self.bus.load();
                let tasks = TmfScope {
                    bus: &bus,
                    queues: &self.shared,
                    faults: &self.opts.faults,
                    nexus: &self.opts.nexus,
                };
                lock(&self.control).process(vring, mem, &tasks)
            }
            // Event queue: buffers stay posted until the device has an event
            // to report (hot-plug, parameter change; see event_queue.rs).
            (0, _) => {
                self.events.kicked(vring);
                Ok(())
            }
            (t, _) => match self.requests.get(t - 1) {
                Some(q) => lock(q).process(vring, mem, &self.bus.load()),
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
        let dev =
            ScsiDevice::new(BusHandle::new(ScsiBus::new()), DeviceOptions::default()).unwrap();
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
        let dev = ScsiDevice::new(BusHandle::new(ScsiBus::new()), opts).unwrap();
        assert_eq!(dev.num_queues(), 5);
        assert_eq!(dev.queues_per_thread(), vec![0b11, 0b100, 0b1000, 0b10000]);
        assert!(dev.exit_event(3).is_some());
        assert!(dev.exit_event(4).is_none());
        let f = dev.features();
        let without = ScsiDevice::new(
            BusHandle::new(ScsiBus::new()),
            DeviceOptions {
                features: OPTIONAL_FEATURES & !(1 << feature::CHANGE),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            without.features(),
            f & !(1 << feature::CHANGE),
            "a controller can withhold F_CHANGE"
        );
        assert_ne!(f & (1 << 32), 0, "VERSION_1");
        assert_ne!(f & (1 << 2), 0, "F_CHANGE");
    }
}
