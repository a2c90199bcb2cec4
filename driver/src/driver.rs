//! The driver: connect, negotiate, lay out shared memory, send commands, scan.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::EventFd;
use vscsi_protocol::data::StandardInquiry;
use vscsi_protocol::lun::{Lun, LunAddress, MAX_LUN};
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::{feature, Config, Response as VirtioResponse};

use crate::command::{rw_cdb, ScsiCommand};
use crate::control::{AuxQueue, Tmf, TmfResponse, AUX_SLOT};
use crate::error::{Error, RecoveryStep, Result};
use crate::events::DeviceEvent;
use crate::memory::{Carver, SharedMemory, SharedSlice};
use crate::queue::{
    Completed, Deadline, InFlightCommand, Outcome, Pending, QueuePlacement, RequestQueue,
    HEADER_AREA,
};
use crate::retry::RetryPolicy;
use crate::ring::split::{RingOptions, SplitRing};
use crate::stats::{CommandClass, LunTable, StatsSnapshot};
use crate::topology::{Prober, Topology};
use crate::transport::vhost_user::VhostUserTransport;

/// Virtqueue settings the driver asks for (count, size, indirect descriptors, event index).
///
/// The device decides: `queue_count` is capped at the device's `num_queues`,
/// and `use_indirect` / `event_index` fall back to off when the device does
/// not offer them. [`Driver::features`] reports what was agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Request queues to use.
    pub queue_count: u16,
    /// Descriptors per request queue (a power of two, 1..=32768).
    pub queue_size: u16,
    /// Negotiate VIRTIO_RING_F_INDIRECT_DESC (§2.7.5.3).
    pub use_indirect: bool,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX (§2.7.10).
    pub event_index: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            queue_count: 1,
            queue_size: 128,
            use_indirect: true,
            event_index: true,
        }
    }
}

/// Driver settings beyond the virtqueues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverOptions {
    /// Largest data transfer of one command, in bytes (each request slot
    /// has a buffer this big in the shared region).
    pub max_transfer: usize,
    /// How long a command may take before the error handler runs and the
    /// caller gets [`Error::Timeout`] (Linux sd: 30 s). Per LUN:
    /// [`Driver::set_lun_timeout`]; per command: [`CommandOptions`].
    pub timeout: Duration,
    /// How long each error-handler step (a TMF, then the release of the
    /// timed-out command) may take before the next step.
    pub eh_timeout: Duration,
    /// Which completions are retried ([`RetryPolicy`]); not applied to
    /// [`ScsiCommand::Raw`] (pass-through) unless [`CommandOptions::retry`] asks.
    pub retry: RetryPolicy,
    /// Busy-poll the used ring this long after submitting a command before
    /// sleeping until the device's call eventfd fires (0: never). Saves an
    /// eventfd wake-up per command at QD1 at the price of a spinning core;
    /// the spin runs on the submitting task's tokio worker.
    pub poll: Duration,
    /// What to do when the device lacks what [`QueueConfig`] asks for
    /// (indirect descriptors, event index, as many request queues):
    /// `false` (the default) falls back (without the feature, with the
    /// queues the device has; [`Driver::features`] says what was agreed),
    /// `true` fails [`Driver::connect_with`] with [`Error::MissingFeature`]
    /// or [`Error::BadConfig`].
    pub strict_features: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            max_transfer: 256 * 1024,
            timeout: Duration::from_secs(30),
            eh_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            poll: Duration::ZERO,
            strict_features: false,
        }
    }
}

/// Per-command overrides of [`DriverOptions`] ([`Driver::send_command_with`]).
///
/// ```
/// use std::time::Duration;
/// use vscsi_driver::{CommandOptions, RetryPolicy};
/// let quick = CommandOptions { timeout: Some(Duration::from_secs(2)), retry: Some(RetryPolicy::NONE) };
/// assert_eq!(CommandOptions::default().timeout, None);
/// # let _ = quick;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandOptions {
    /// Timeout of this command (else the LUN's, else the driver's).
    pub timeout: Option<Duration>,
    /// Retry policy of this command (else the driver's).
    pub retry: Option<RetryPolicy>,
}

/// What the device and the driver agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// All acked virtio feature bits.
    pub bits: u64,
    /// Indirect descriptors are in use.
    pub indirect: bool,
    /// Event index notification suppression is in use.
    pub event_index: bool,
    /// The device reports hot-plug events.
    pub hotplug: bool,
    /// The device reports parameter changes.
    pub change: bool,
    /// Request queues in use.
    pub queue_count: u16,
    /// Descriptors per request queue.
    pub queue_size: u16,
}

/// A completed command: the virtio response, SCSI status, sense, residual and data-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The virtio-scsi `response` byte (§5.6.6.1); see [`Response::virtio`].
    pub response: u8,
    /// SCSI status (valid when `response` is OK).
    pub status: u8,
    /// Sense data, as many bytes as the device reported (at most 96).
    pub sense: Vec<u8>,
    /// Bytes of the data buffer not transferred.
    pub residual: u32,
    /// Data-in bytes the device returned.
    pub data: Vec<u8>,
}

impl Response {
    /// The decoded virtio response code, if it is one the spec defines.
    pub fn virtio(&self) -> Option<VirtioResponse> {
        VirtioResponse::from_u8(self.response)
    }

    /// The command completed with GOOD status.
    pub fn is_good(&self) -> bool {
        self.response == VirtioResponse::Ok as u8 && self.status == status::GOOD
    }

    /// Decoded sense data, if any.
    pub fn sense_data(&self) -> Option<Sense> {
        Sense::decode(&self.sense).ok()
    }

    /// `Ok(self)` when GOOD, else [`CommandError`] describing the failure.
    pub fn ok(self) -> std::result::Result<Self, CommandError> {
        if self.is_good() {
            Ok(self)
        } else {
            Err(CommandError(self))
        }
    }
}

/// A command that completed, but not with GOOD status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct CommandError(pub Response);

/// The virtio LUN field of `target`:`lun` (§5.6.6.1), or a clear error
/// for a LUN number the flat space cannot carry.
pub(crate) fn lun_field(target: u8, lun: u16) -> Result<[u8; 8]> {
    Lun::new(target, lun)
        .map(Lun::encode)
        .ok_or_else(|| Error::BadConfig(format!("LUN {lun} > {MAX_LUN}")))
}

fn describe(r: &Response) -> String {
    match r.virtio() {
        Some(VirtioResponse::Ok) => match r.sense_data() {
            Some(s) => format!("{} status: {s}", status::name(r.status)),
            None => format!("{} status", status::name(r.status)),
        },
        Some(v) => format!("virtio response {}", v.name()),
        None => format!("virtio response {:#04x} (undefined)", r.response),
    }
}

/// A logical unit found by [`Driver::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    /// Its address.
    pub lun: Lun,
    /// Standard INQUIRY data.
    pub inquiry: StandardInquiry,
    /// Number of logical blocks (0 when not a block device).
    pub blocks: u64,
    /// Logical block length in bytes.
    pub block_size: u32,
}

impl LunInfo {
    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
}

/// A userspace virtio-scsi driver connected to one vhost-user device.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use vscsi_driver::{Driver, QueueConfig, ScsiCommand};
/// let driver = Driver::connect("/tmp/vs.sock", QueueConfig::default()).await?;
/// let inquiry = ScsiCommand::Inquiry { allocation_length: 96, evpd: false, page_code: 0 };
/// let response = driver.send_command(0, 0, inquiry).await?;
/// assert!(response.is_good());
/// for lu in driver.scan().await? {
///     tracing::info!("{}:{} {} {} bytes", lu.lun.target, lu.lun.lun, lu.inquiry.product, lu.capacity());
/// }
/// # Ok(()) }
/// ```
pub struct Driver {
    /// The vhost-user connection (it keeps the device alive); used again
    /// by queue and device resets.
    transport: Arc<Mutex<VhostUserTransport>>,
    _mem: Arc<SharedMemory>,
    queues: Vec<Arc<RequestQueue>>,
    tasks: Vec<JoinHandle<()>>,
    next_queue: AtomicUsize,
    features: Features,
    config: Config,
    opts: DriverOptions,
    control: Arc<AuxQueue>,
    event_queue: Arc<AuxQueue>,
    events_tx: broadcast::Sender<DeviceEvent>,
    events_seen: Arc<AtomicU64>,
    lun_timeouts: RwLock<HashMap<(u8, u16), Duration>>,
    any_lun_timeout: AtomicBool,
    started: Instant,
    topology: Arc<watch::Sender<Topology>>,
}

/// Size of the control and event queues.
const AUX_QUEUE_SIZE: u16 = 16;
/// Event buffers kept posted.
const EVENT_BUFFERS: u16 = 8;
/// Control requests in flight at most.
const CONTROL_SLOTS: u16 = 8;
/// Most descriptors in one indirect table (a command has at most 4 segments).
const MAX_INDIRECT: u16 = 4;

impl Driver {
    /// Connects with default [`DriverOptions`].
    pub async fn connect(socket: impl AsRef<Path>, queues: QueueConfig) -> Result<Self> {
        Self::connect_with(socket, queues, DriverOptions::default()).await
    }

    /// Connects to the vhost-user device at `socket`, negotiates, lays out
    /// the shared memory and starts the request queues.
    pub async fn connect_with(
        socket: impl AsRef<Path>,
        cfg: QueueConfig,
        opts: DriverOptions,
    ) -> Result<Self> {
        if cfg.queue_count == 0 {
            return Err(Error::BadConfig("queue_count must be at least 1".into()));
        }
        if !cfg.queue_size.is_power_of_two() {
            return Err(Error::BadConfig(format!(
                "queue_size {} is not a power of two",
                cfg.queue_size
            )));
        }
        if opts.max_transfer == 0 || !opts.max_transfer.is_multiple_of(512) {
            return Err(Error::BadConfig(
                "max_transfer must be a non-zero multiple of 512".into(),
            ));
        }
        let path = socket.as_ref().to_owned();
        let setup = tokio::task::spawn_blocking(move || Self::setup(&path, cfg, opts))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let (transport, mem, queues, calls, features, config, aux) = setup;
        let mut tasks: Vec<JoinHandle<()>> = queues
            .iter()
            .zip(calls)
            .map(|(q, call)| tokio::spawn(q.clone().run_completions(call)))
            .collect();
        let mut aux = aux.into_iter();
        let (Some((control, control_call)), Some((event_queue, event_call))) =
            (aux.next(), aux.next())
        else {
            return Err(Error::BadConfig("control and event queues missing".into()));
        };
        tasks.push(tokio::spawn(watchdog(queues.clone())));
        tasks.push(tokio::spawn(control.clone().run(control_call)));
        tasks.push(tokio::spawn(event_queue.clone().run(event_call)));
        let (events_tx, _) = broadcast::channel(256);
        let events_seen = Arc::new(AtomicU64::new(0));
        // Subscribed before any event buffer is posted, so none is missed.
        let topology = Arc::new(watch::Sender::new(Topology::default()));
        let prober = Prober {
            queues: queues.clone(),
            next: AtomicUsize::new(0),
            retry: opts.retry,
            timeout: opts.timeout,
            max_target: config.max_target.get().min(255) as u8,
        };
        tasks.push(tokio::spawn(crate::topology::follow(
            prober,
            topology.clone(),
            events_tx.subscribe(),
        )));
        for _ in 0..EVENT_BUFFERS {
            let (q, tx, seen) = (event_queue.clone(), events_tx.clone(), events_seen.clone());
            tasks.push(tokio::spawn(async move {
                // One posted buffer: wait for the device to fill it, publish,
                // re-post (also after a device reset took it off the ring).
                loop {
                    let raw = match q
                        .call(&[], size_of::<vscsi_protocol::virtio_scsi::Event>())
                        .await
                    {
                        Ok(raw) => raw,
                        Err(Error::QueueReset { .. }) => continue,
                        Err(_) => break,
                    };
                    for ev in DeviceEvent::decode(&raw) {
                        seen.fetch_add(1, Ordering::Relaxed);
                        info!(?ev, "device event");
                        let _ = tx.send(ev);
                    }
                }
            }));
        }
        info!(?features, "virtio-scsi driver ready");
        Ok(Self {
            transport: Arc::new(Mutex::new(transport)),
            _mem: mem,
            queues,
            tasks,
            next_queue: AtomicUsize::new(0),
            features,
            config,
            opts,
            control,
            event_queue,
            events_tx,
            events_seen,
            lun_timeouts: RwLock::default(),
            any_lun_timeout: AtomicBool::new(false),
            started: Instant::now(),
            topology,
        })
    }

    #[allow(clippy::type_complexity)]
    fn setup(
        path: &Path,
        cfg: QueueConfig,
        opts: DriverOptions,
    ) -> Result<(
        VhostUserTransport,
        Arc<SharedMemory>,
        Vec<Arc<RequestQueue>>,
        Vec<EventFd>,
        Features,
        Config,
        Vec<(Arc<AuxQueue>, EventFd)>,
    )> {
        let mut wanted = 1u64 << feature::HOTPLUG | 1 << feature::CHANGE;
        if cfg.use_indirect {
            wanted |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        if cfg.event_index {
            wanted |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        let mut transport = VhostUserTransport::connect_timeout(path, wanted, opts.timeout)?;
        let acked = transport.features();
        let config = *transport.config();
        let device_queues = config.num_queues.get().max(1);
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
        if opts.strict_features {
            if cfg.use_indirect && !indirect {
                return Err(Error::MissingFeature("VIRTIO_RING_F_INDIRECT_DESC"));
            }
            if cfg.event_index && !event_index {
                return Err(Error::MissingFeature("VIRTIO_RING_F_EVENT_IDX"));
            }
            if queue_count < cfg.queue_count {
                return Err(Error::BadConfig(format!(
                    "{} request queues asked, the device has {queue_count}",
                    cfg.queue_count
                )));
            }
        }
        let features = Features {
            bits: acked,
            indirect,
            event_index,
            hotplug: acked & (1 << feature::HOTPLUG) != 0,
            change: acked & (1 << feature::CHANGE) != 0,
            queue_count,
            queue_size: cfg.queue_size,
        };
        let ring_opts = RingOptions {
            event_idx: event_index,
            indirect,
            max_indirect: MAX_INDIRECT,
        };
        // Without indirect descriptors a command may take 4 ring slots.
        let slots = if indirect {
            cfg.queue_size
        } else {
            (cfg.queue_size / 4).max(1)
        };

        // Lay everything out, then create the region that holds it.
        type Plan = (Vec<(usize, usize, u16)>, Vec<QueuePlacement>);
        let plan = |carver: &mut Carver| -> Result<Plan> {
            let mut aux = Vec::new();
            for slots in [CONTROL_SLOTS, EVENT_BUFFERS] {
                let ring =
                    carver.alloc(SplitRing::layout(AUX_QUEUE_SIZE, MAX_INDIRECT).total, 4096)?;
                let bufs = carver.alloc(slots as usize * AUX_SLOT, 64)?;
                aux.push((ring, bufs, slots));
            }
            let mut placed = Vec::new();
            for _ in 0..queue_count {
                let ring =
                    carver.alloc(SplitRing::layout(cfg.queue_size, MAX_INDIRECT).total, 4096)?;
                let headers = carver.alloc(slots as usize * HEADER_AREA, 64)?;
                let data = carver.alloc(slots as usize * opts.max_transfer, 4096)?;
                placed.push(QueuePlacement {
                    ring,
                    headers,
                    data,
                    slots,
                    max_transfer: opts.max_transfer,
                });
            }
            Ok((aux, placed))
        };
        let mut sizing = Carver::new(usize::MAX / 2);
        plan(&mut sizing)?;
        let len = sizing.used().next_multiple_of(2 << 20);
        let mem = Arc::new(SharedMemory::new("vscsi-driver", len)?);
        let (aux_off, placed) = plan(&mut Carver::new(len))?;
        transport.set_memory(&mem)?;

        let mut aux = Vec::new();
        for (i, (off, bufs, slots)) in aux_off.into_iter().enumerate() {
            let ring = SplitRing::new(mem.clone(), off, AUX_QUEUE_SIZE, ring_opts)?;
            let (kick, call) = (
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            );
            transport.start_vring(i, &ring, &kick, &call)?;
            let name = if i == 0 { "control" } else { "event" };
            let q = AuxQueue::new(
                name,
                i as u16,
                mem.clone(),
                ring,
                bufs,
                slots,
                kick,
                call.try_clone()?,
            );
            aux.push((Arc::new(q), call));
        }
        let mut queues = Vec::new();
        let mut calls = Vec::new();
        for (n, place) in placed.into_iter().enumerate() {
            let ring = SplitRing::new(mem.clone(), place.ring, cfg.queue_size, ring_opts)?;
            let (kick, call) = (
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            );
            transport.start_vring(2 + n, &ring, &kick, &call)?;
            queues.push(Arc::new(RequestQueue::new(
                n as u16,
                mem.clone(),
                place,
                ring,
                kick,
                call.try_clone()?,
            )));
            calls.push(call);
        }
        Ok((transport, mem, queues, calls, features, config, aux))
    }

    /// What was negotiated.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The device configuration space read at connect time (§5.6.4).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes one command can move; bigger transfers must be split by the caller.
    pub fn max_transfer(&self) -> usize {
        self.queues.first().map_or(0, |q| q.max_transfer())
    }

    /// Kicks sent to the device so far, over all request queues.
    pub fn kicks(&self) -> u64 {
        self.queues.iter().map(|q| q.kicks()).sum()
    }

    /// Sends `command` to `lun` of `target` and waits for its completion.
    ///
    /// A completed command is `Ok` whatever its SCSI status: check
    /// [`Response::is_good`] or use [`Response::ok`]. Commands go round
    /// robin over the request queues. Transient conditions (UNIT
    /// ATTENTION, BUSY...) are retried by [`DriverOptions::retry`] (not for
    /// [`ScsiCommand::Raw`]); a command that does not complete within the
    /// LUN's timeout goes through the error handler and ends in
    /// [`Error::Timeout`] naming the [`RecoveryStep`](crate::RecoveryStep) that cleared it.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// use vscsi_driver::ScsiCommand;
    /// let r = driver.send_command(0, 0, ScsiCommand::Read { lba: 0, blocks: 8, block_size: 512 }).await?;
    /// assert_eq!(r.data.len(), 4096);
    /// # Ok(()) }
    /// ```
    pub async fn send_command(
        &self,
        target: u8,
        lun: u16,
        command: ScsiCommand,
    ) -> Result<Response> {
        self.send_to(lun_field(target, lun)?, &command).await
    }

    /// Sends `command` with a raw 8-byte virtio LUN field (for probing
    /// addressing the spec does not allow, or the REPORT LUNS well-known LUN).
    pub async fn send_to(&self, lun_field: [u8; 8], command: &ScsiCommand) -> Result<Response> {
        self.send_to_with(lun_field, command, CommandOptions::default())
            .await
    }

    /// [`Driver::send_command`] with per-command options (timeout, retry policy).
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// use std::time::Duration;
    /// use vscsi_driver::{CommandOptions, Error, RecoveryStep, ScsiCommand};
    /// let opts = CommandOptions { timeout: Some(Duration::from_secs(1)), ..Default::default() };
    /// match driver.send_command_with(0, 0, ScsiCommand::TestUnitReady, opts).await {
    ///     Err(Error::Timeout { recovered_by: RecoveryStep::AbortTask, .. }) => tracing::info!("aborted"),
    ///     other => tracing::info!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_command_with(
        &self,
        target: u8,
        lun: u16,
        command: ScsiCommand,
        opts: CommandOptions,
    ) -> Result<Response> {
        self.send_to_with(lun_field(target, lun)?, &command, opts)
            .await
    }

    /// [`Driver::send_to`] with per-command options.
    pub async fn send_to_with(
        &self,
        lun_field: [u8; 8],
        command: &ScsiCommand,
        opts: CommandOptions,
    ) -> Result<Response> {
        if let ScsiCommand::Raw {
            cdb,
            data_out,
            data_in_len,
        } = command
        {
            if cdb.is_empty() || cdb.len() > 32 {
                return Err(Error::BadCdb(cdb.len()));
            }
            if !data_out.is_empty() && *data_in_len > 0 {
                return Err(Error::BadConfig(
                    "a command with both data-out and data-in needs VIRTIO_SCSI_F_INOUT, which is not negotiated".into(),
                ));
            }
        }
        if let Some(parts) = self.split(command) {
            return self.send_split(lun_field, parts, opts).await;
        }
        let (target, lun) = match LunAddress::decode(&lun_field) {
            Ok(LunAddress::Unit(l)) => (l.target, l.lun),
            _ => (lun_field[1], u16::MAX),
        };
        let timeout = opts
            .timeout
            .unwrap_or_else(|| self.lun_timeout(target, lun));
        // A pass-through CDB is not retried unless asked (like SG_IO): the
        // caller sees exactly what the device answered.
        let policy = opts.retry.unwrap_or(match command {
            ScsiCommand::Raw { .. } => RetryPolicy::NONE,
            _ => self.opts.retry,
        });
        let mut attempt = 0;
        loop {
            let n = self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len();
            let queue = &self.queues[n];
            let r = match self
                .execute_once(queue, lun_field, target, lun, command, timeout)
                .await
            {
                // Taken off a ring that was reset under it: like a RESET answer.
                Err(Error::QueueReset { queue }) if attempt < policy.max_retries => {
                    attempt += 1;
                    debug!(target, lun, queue, attempt, "retrying after a queue reset");
                    continue;
                }
                r => r?,
            };
            match policy.should_retry(&r, attempt) {
                Some(delay) => {
                    attempt += 1;
                    debug!(target, lun, attempt, ?delay, outcome = %describe(&r), "retrying");
                    queue.record(target, lun, |s| s.retries += 1);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
                None => return Ok(r),
            }
        }
    }

    /// The timeout of `target:lun`: its own, else [`DriverOptions::timeout`].
    pub fn lun_timeout(&self, target: u8, lun: u16) -> Duration {
        if self.any_lun_timeout.load(Ordering::Relaxed) {
            let t = self.lun_timeouts.read().unwrap_or_else(|p| p.into_inner());
            if let Some(d) = t.get(&(target, lun)) {
                return *d;
            }
        }
        self.opts.timeout
    }

    /// Sets the command timeout of one LUN (`None`: back to the driver's).
    ///
    /// ```no_run
    /// # fn demo(driver: &vscsi_driver::Driver) {
    /// use std::time::Duration;
    /// driver.set_lun_timeout(0, 1, Some(Duration::from_secs(5)));
    /// assert_eq!(driver.lun_timeout(0, 1), Duration::from_secs(5));
    /// # }
    /// ```
    pub fn set_lun_timeout(&self, target: u8, lun: u16, timeout: Option<Duration>) {
        let mut t = self.lun_timeouts.write().unwrap_or_else(|p| p.into_inner());
        match timeout {
            Some(d) => t.insert((target, lun), d),
            None => t.remove(&(target, lun)),
        };
        self.any_lun_timeout.store(!t.is_empty(), Ordering::Relaxed);
    }

    /// A READ or WRITE bigger than one request slot, as several commands of
    /// at most [`Driver::max_transfer`] bytes each; `None` if it fits.
    fn split(&self, command: &ScsiCommand) -> Option<Vec<ScsiCommand>> {
        let max = self.max_transfer();
        let (lba, blocks, block_size, data) = match command {
            ScsiCommand::Read {
                lba,
                blocks,
                block_size,
            } => (*lba, *blocks, *block_size, None),
            ScsiCommand::Write { lba, blocks, data }
                if *blocks > 0 && data.len() % *blocks as usize == 0 =>
            {
                (
                    *lba,
                    *blocks,
                    (data.len() / *blocks as usize) as u32,
                    Some(data),
                )
            }
            _ => return None,
        };
        let per = (max / block_size.max(1) as usize) as u32;
        if per == 0 || blocks as usize * block_size as usize <= max {
            return None;
        }
        let mut parts = Vec::new();
        let mut done = 0u32;
        while done < blocks {
            let n = per.min(blocks - done);
            let (start, len) = (
                done as usize * block_size as usize,
                n as usize * block_size as usize,
            );
            parts.push(match data {
                None => ScsiCommand::Read {
                    lba: lba + done as u64,
                    blocks: n,
                    block_size,
                },
                Some(d) => ScsiCommand::Write {
                    lba: lba + done as u64,
                    blocks: n,
                    data: d[start..start + len].to_vec(),
                },
            });
            done += n;
        }
        Some(parts)
    }

    /// Sends the parts of a split transfer one after the other and joins
    /// their answers; the first part that does not complete with GOOD status
    /// is returned as it is (later parts are not sent).
    async fn send_split(
        &self,
        lun_field: [u8; 8],
        parts: Vec<ScsiCommand>,
        opts: CommandOptions,
    ) -> Result<Response> {
        let mut joined: Option<Response> = None;
        for part in &parts {
            let r = Box::pin(self.send_to_with(lun_field, part, opts)).await?;
            if !r.is_good() {
                return Ok(r);
            }
            match &mut joined {
                None => joined = Some(r),
                Some(j) => {
                    j.data.extend_from_slice(&r.data);
                    j.residual += r.residual;
                }
            }
        }
        joined.ok_or(Error::Closed)
    }

    /// One attempt: submit, wait, and on timeout run the error handler.
    async fn execute_once(
        &self,
        queue: &Arc<RequestQueue>,
        lun_field: [u8; 8],
        target: u8,
        lun: u16,
        command: &ScsiCommand,
        timeout: Duration,
    ) -> Result<Response> {
        let (cdb, data_out, data_in_len) = command.encode();
        let start = Instant::now();
        let mut pending = self
            .submit(
                queue,
                (target, lun),
                lun_field,
                &cdb,
                data_out,
                data_in_len,
                Deadline::after(start, timeout),
                timeout,
            )
            .await?;
        let done = match self.wait_done(queue, &mut pending).await? {
            Outcome::Done(done) => done,
            Outcome::Expired => {
                self.timed_out(queue, (target, lun), &pending, timeout);
                return self.recover(lun_field, pending, timeout, data_in_len).await;
            }
        };
        drop(pending);
        let r = to_response(&done, data_in_len)?;
        drop(done);
        let class = if !data_out.is_empty() {
            CommandClass::Write
        } else if matches!(cdb.as_bytes()[0], 0x08 | 0x28 | 0xA8 | 0x88) {
            CommandClass::Read
        } else {
            CommandClass::Other
        };
        record_completion(
            queue,
            (target, lun),
            class,
            start,
            &r,
            r.data.len(),
            data_out.len(),
        );
        Ok(r)
    }

    /// Puts a command on `queue`: at once when a slot is free, else after
    /// waiting for one until `deadline` ([`RecoveryStep::NotSubmitted`]).
    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &self,
        queue: &Arc<RequestQueue>,
        (target, lun): (u8, u16),
        lun_field: [u8; 8],
        cdb: &vscsi_protocol::cdb::Cdb,
        data_out: &[u8],
        data_in_len: usize,
        deadline: Deadline,
        timeout: Duration,
    ) -> Result<Pending> {
        if let Some(p) = queue.try_start(lun_field, cdb, data_out, data_in_len, deadline)? {
            return Ok(p);
        }
        match tokio::time::timeout_at(
            deadline.at.unwrap_or(deadline.started + timeout).into(),
            queue.start(lun_field, cdb, data_out, data_in_len, deadline),
        )
        .await
        {
            Ok(p) => p,
            Err(_) => Err(self.not_submitted(queue, target, lun, timeout)),
        }
    }

    /// Waits for a submitted command: busy-polls the used ring for
    /// [`DriverOptions::poll`] first when set, then sleeps until the
    /// completion task wakes it or the watchdog says its deadline passed.
    async fn wait_done(&self, queue: &RequestQueue, pending: &mut Pending) -> Result<Outcome> {
        if !self.opts.poll.is_zero() {
            let until = Instant::now() + self.opts.poll;
            loop {
                queue.reap_now();
                if let Some(r) = pending.try_now() {
                    return r.map(Outcome::Done);
                }
                if Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        pending.wait(true).await
    }

    fn timed_out(
        &self,
        queue: &RequestQueue,
        (target, lun): (u8, u16),
        pending: &Pending,
        timeout: Duration,
    ) {
        queue.record(target, lun, |s| s.timeouts += 1);
        warn!(
            target,
            lun,
            tag = pending.tag(),
            ?timeout,
            "command timed out: running the error handler"
        );
    }

    /// The error handler for a command that timed out, as Linux's
    /// scsi_error.c escalates: ABORT TASK, then LOGICAL UNIT RESET, then
    /// I_T NEXUS RESET, then a reset of the command's request queue, then a
    /// device reset, each only if the previous step did not get the command
    /// back. Returns the device's answer if the command finished on its own
    /// meanwhile, else [`Error::Timeout`] naming the step that cleared it.
    async fn recover(
        &self,
        lun_field: [u8; 8],
        mut pending: Pending,
        timeout: Duration,
        data_in_len: usize,
    ) -> Result<Response> {
        let tag = pending.tag();
        let queue = pending.queue().index();
        let released = |r: Result<Completed>, step: RecoveryStep| -> Result<Response> {
            let timed_out = Error::Timeout {
                after: timeout,
                recovered_by: step,
            };
            let done = match r {
                Ok(done) => done,
                Err(Error::QueueReset { .. }) => return Err(timed_out),
                Err(e) => return Err(e),
            };
            let r = to_response(&done, data_in_len)?;
            info!(tag, step = %step, response = r.response, "timed-out command released");
            match r.virtio() {
                Some(VirtioResponse::Aborted | VirtioResponse::Reset) => Err(timed_out),
                // It finished on its own while we were recovering it.
                _ => Ok(r),
            }
        };
        let steps = [
            (Tmf::AbortTask { tag }, RecoveryStep::AbortTask),
            (Tmf::LogicalUnitReset, RecoveryStep::LogicalUnitReset),
            (Tmf::TargetReset, RecoveryStep::TargetReset),
        ];
        for (tmf, step) in steps {
            let answered = match self.task_management_to(lun_field, tmf).await {
                Ok(r) if r.is_success() => true,
                Ok(r) => {
                    warn!(tmf = tmf.name(), response = %r, "error handler: TMF failed");
                    false
                }
                Err(e) => {
                    warn!(tmf = tmf.name(), error = %e, "error handler: TMF failed");
                    false
                }
            };
            // The device completes covered commands before it answers the
            // TMF; give the completion task time to deliver it.
            let wait = if answered {
                self.opts.eh_timeout
            } else {
                Duration::from_millis(10)
            };
            match tokio::time::timeout(wait, pending.wait(false)).await {
                Ok(Ok(Outcome::Done(done))) => return released(Ok(done), step),
                Ok(Err(e)) => return released(Err(e), step),
                Ok(Ok(Outcome::Expired)) | Err(_) => continue,
            }
        }
        warn!(
            tag,
            queue, "timed-out command survived I_T NEXUS RESET: resetting its request queue"
        );
        match self.reset_queue(queue).await {
            Ok(_) => {
                if let Some(r) = pending.try_now() {
                    return released(r, RecoveryStep::QueueReset);
                }
            }
            Err(e) => warn!(queue, error = %e, "queue reset failed: resetting the device"),
        }
        match self.reset_device().await {
            Ok(()) => {
                if let Some(r) = pending.try_now() {
                    return released(r, RecoveryStep::DeviceReset);
                }
            }
            Err(e) => error!(error = %e, "device reset failed"),
        }
        warn!(tag, "timed-out command survived every error handler step");
        Err(Error::Timeout {
            after: timeout,
            recovered_by: RecoveryStep::NotRecovered,
        })
    }

    /// Resets request queue `queue` (the error handler's step after I_T
    /// NEXUS RESET): GET_VRING_BASE stops the ring (a device completes or
    /// drops what it holds), then the ring is zeroed and handed to the
    /// device again (SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE). Commands the
    /// device did not return fail with [`Error::QueueReset`] (the copying
    /// API retries them). Also revives a queue the device broke
    /// ([`Error::DeviceBroken`]). Returns how many commands failed.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// let failed = driver.reset_queue(0).await?;
    /// tracing::info!("queue 0 reset, {failed} commands failed");
    /// # Ok(()) }
    /// ```
    pub async fn reset_queue(&self, queue: u16) -> Result<usize> {
        let q = self
            .queues
            .get(usize::from(queue))
            .ok_or_else(|| {
                Error::BadConfig(format!(
                    "request queue {queue} does not exist ({} queues)",
                    self.queues.len()
                ))
            })?
            .clone();
        let transport = self.transport.clone();
        let failed = blocking(move || {
            let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
            let vq = 2 + usize::from(queue);
            t.stop_vring(vq)?;
            q.reset(|ring, kick, call| t.start_vring(vq, ring, kick, call))
        })
        .await?;
        info!(queue, failed, "request queue reset");
        Ok(failed)
    }

    /// Resets the whole device (the error handler's last step; Linux's host
    /// reset): every ring is stopped (GET_VRING_BASE), the device is reset
    /// (VHOST_USER_RESET_DEVICE when the device offers it; its LUs then
    /// report a reset unit attention), the features are set again and every
    /// ring is re-created. Commands the device did not return fail with
    /// [`Error::QueueReset`]; event buffers are posted again.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// driver.reset_device().await?;
    /// # Ok(()) }
    /// ```
    pub async fn reset_device(&self) -> Result<()> {
        let transport = self.transport.clone();
        let (control, event_queue, queues) = (
            self.control.clone(),
            self.event_queue.clone(),
            self.queues.clone(),
        );
        blocking(move || {
            let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
            for vq in 0..2 + queues.len() {
                t.stop_vring(vq)?;
            }
            t.reset_device()?;
            control.reset(|ring, kick, call| t.start_vring(0, ring, kick, call))?;
            event_queue.reset(|ring, kick, call| t.start_vring(1, ring, kick, call))?;
            for (n, q) in queues.iter().enumerate() {
                q.reset(|ring, kick, call| t.start_vring(2 + n, ring, kick, call))?;
            }
            Ok(())
        })
        .await?;
        info!("device reset");
        Ok(())
    }

    /// Zero-copy READ: reads `blocks` blocks of `block_size` bytes at `lba`
    /// of `target:lun` and calls `f` on the data where the device put it,
    /// in the request slot's buffer in the shared memory region (no copy,
    /// no allocation). `f` runs after the device returned the request, and
    /// the slot is not reused before `f` returns.
    ///
    /// The transfer must fit one slot ([`Driver::max_transfer`]; no
    /// splitting, else [`Error::TransferTooLarge`]). A completion that is
    /// not GOOD is `Ok(Err(CommandError))`. Timeouts and the error handler
    /// are those of [`Driver::send_command`]; a retried command (UNIT
    /// ATTENTION, BUSY...) is re-sent through the copying path, so `f` still
    /// runs once.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> Result<(), Box<dyn std::error::Error>> {
    /// let sum: u64 = driver
    ///     .read_with(0, 0, 0, 8, 512, |data| data.iter().map(u64::from).sum())
    ///     .await??;
    /// tracing::info!("checksum {sum}");
    /// # Ok(()) }
    /// ```
    pub async fn read_with<T>(
        &self,
        target: u8,
        lun: u16,
        lba: u64,
        blocks: u32,
        block_size: u32,
        f: impl FnOnce(SharedSlice<'_>) -> T,
    ) -> Result<std::result::Result<T, CommandError>> {
        let lun_field = lun_field(target, lun)?;
        let len = blocks as usize * block_size as usize;
        let cdb = rw_cdb(false, lba, blocks);
        let timeout = self.lun_timeout(target, lun);
        let queue = self.pick_queue();
        let start = Instant::now();
        let pending = self
            .submit(
                queue,
                (target, lun),
                lun_field,
                &cdb,
                &[],
                len,
                Deadline::after(start, timeout),
                timeout,
            )
            .await?;
        let r = match self
            .wait_slot(queue, (target, lun), lun_field, pending, timeout, len)
            .await?
        {
            Ok(done) => {
                let (raw, data) = done.read_in_place(len)?;
                let r = header_response(&raw);
                record_completion(
                    queue,
                    (target, lun),
                    CommandClass::Read,
                    start,
                    &r,
                    data.len(),
                    0,
                );
                if r.is_good() {
                    debug!(target, lun, lba, blocks, "zero-copy read");
                    return Ok(Ok(f(data)));
                }
                r
            }
            Err(r) => r,
        };
        if self.opts.retry.should_retry(&r, 0).is_none() {
            return Ok(Err(CommandError(r)));
        }
        debug!(target, lun, outcome = %describe(&r), "zero-copy read: retrying through the copying path");
        let r = self
            .send_command(
                target,
                lun,
                ScsiCommand::Read {
                    lba,
                    blocks,
                    block_size,
                },
            )
            .await?;
        Ok(if r.is_good() {
            let mut data = r.data;
            Ok(f(SharedSlice::from(&mut data[..])))
        } else {
            Err(CommandError(r))
        })
    }

    /// Zero-copy WRITE: `f` fills the `blocks * block_size` bytes to write
    /// at `lba` of `target:lun` directly in the request slot's buffer in the
    /// shared memory region (no copy, no allocation); the command is offered
    /// to the device after `f` returns. `f`'s value comes back when the
    /// command completed with GOOD status; otherwise `Ok(Err(CommandError))`.
    ///
    /// Same rules as [`Driver::read_with`]: one slot at most, the driver's
    /// timeout and error handler, and a retry (UNIT ATTENTION, BUSY...)
    /// re-sends a copy of the bytes `f` wrote through the copying path.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> Result<(), Box<dyn std::error::Error>> {
    /// driver
    ///     .write_with(0, 0, 100, 8, 512, |buf| buf.fill(0xA5))
    ///     .await??;
    /// # Ok(()) }
    /// ```
    pub async fn write_with<T>(
        &self,
        target: u8,
        lun: u16,
        lba: u64,
        blocks: u32,
        block_size: u32,
        f: impl FnOnce(SharedSlice<'_>) -> T,
    ) -> Result<std::result::Result<T, CommandError>> {
        let lun_field = lun_field(target, lun)?;
        let len = blocks as usize * block_size as usize;
        let cdb = rw_cdb(true, lba, blocks);
        let timeout = self.lun_timeout(target, lun);
        let queue = self.pick_queue();
        let start = Instant::now();
        let deadline = Deadline::after(start, timeout);
        let (pending, out) = match tokio::time::timeout_at(
            (start + timeout).into(),
            queue.start_filled(lun_field, &cdb, len, deadline, f),
        )
        .await
        {
            Ok(p) => p?,
            Err(_) => return Err(self.not_submitted(queue, target, lun, timeout)),
        };
        let r = match self
            .wait_slot(queue, (target, lun), lun_field, pending, timeout, 0)
            .await?
        {
            Ok(done) => {
                let r = to_response(&done, 0)?;
                record_completion(queue, (target, lun), CommandClass::Write, start, &r, 0, len);
                if r.is_good() {
                    debug!(target, lun, lba, blocks, "zero-copy write");
                    return Ok(Ok(out));
                }
                if self.opts.retry.should_retry(&r, 0).is_some() {
                    debug!(target, lun, outcome = %describe(&r), "zero-copy write: retrying through the copying path");
                    let data = done.copy_data(len)?;
                    drop(done);
                    let r = self
                        .send_command(target, lun, ScsiCommand::Write { lba, blocks, data })
                        .await?;
                    return Ok(if r.is_good() {
                        Ok(out)
                    } else {
                        Err(CommandError(r))
                    });
                }
                r
            }
            Err(r) => r,
        };
        Ok(Err(CommandError(r)))
    }

    fn pick_queue(&self) -> &Arc<RequestQueue> {
        let n = self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        &self.queues[n]
    }

    fn not_submitted(
        &self,
        queue: &RequestQueue,
        target: u8,
        lun: u16,
        timeout: Duration,
    ) -> Error {
        queue.record(target, lun, |s| s.timeouts += 1);
        Error::Timeout {
            after: timeout,
            recovered_by: RecoveryStep::NotSubmitted,
        }
    }

    /// Waits for a submitted command: `Ok(slot)` when it completed in time,
    /// `Err(response)` when it timed out and the error handler released it
    /// (the answer then is a copy).
    async fn wait_slot(
        &self,
        queue: &RequestQueue,
        (target, lun): (u8, u16),
        lun_field: [u8; 8],
        mut pending: Pending,
        timeout: Duration,
        data_in_len: usize,
    ) -> Result<std::result::Result<Completed, Response>> {
        match self.wait_done(queue, &mut pending).await? {
            Outcome::Done(done) => Ok(Ok(done)),
            Outcome::Expired => {
                self.timed_out(queue, (target, lun), &pending, timeout);
                Ok(Err(self
                    .recover(lun_field, pending, timeout, data_in_len)
                    .await?))
            }
        }
    }

    /// Sends a task management function to `target:lun` and returns the answer.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// use vscsi_driver::{Tmf, TmfResponse};
    /// for cmd in driver.in_flight() {
    ///     let r = driver.task_management(0, 0, Tmf::AbortTask { tag: cmd.tag }).await?;
    ///     assert_eq!(r, TmfResponse::FunctionComplete);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn task_management(&self, target: u8, lun: u16, tmf: Tmf) -> Result<TmfResponse> {
        self.task_management_to(lun_field(target, lun)?, tmf).await
    }

    /// [`Driver::task_management`] with a raw 8-byte LUN field.
    pub async fn task_management_to(&self, lun_field: [u8; 8], tmf: Tmf) -> Result<TmfResponse> {
        let (subtype, tag) = tmf.encode();
        let mut req = [0u8; 24];
        req[0..4].copy_from_slice(&vscsi_protocol::virtio_scsi::ctrl_type::TMF.to_le_bytes());
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8..16].copy_from_slice(&lun_field);
        req[16..24].copy_from_slice(&tag.to_le_bytes());
        let after = self.opts.eh_timeout;
        let resp = tokio::time::timeout(after, self.control.call(&req, 1))
            .await
            .map_err(|_| Error::TmfTimeout {
                tmf: tmf.name(),
                after,
            })??;
        let Some(&byte) = resp.first() else {
            return Err(Error::ShortResponse(0));
        };
        let r = TmfResponse::from_u8(byte);
        info!(tmf = tmf.name(), tag, response = %r, "task management function answered");
        Ok(r)
    }

    /// Commands submitted and not completed yet, over all request queues.
    pub fn in_flight(&self) -> Vec<InFlightCommand> {
        self.queues.iter().flat_map(|q| q.in_flight()).collect()
    }

    /// A stream of the device's events (hot-plug, parameter changes,
    /// missed events). Each call subscribes anew; events before it are not seen.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) {
    /// let mut events = driver.events();
    /// if let Ok(ev) = events.recv().await {
    ///     tracing::info!("{ev:?}");
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> broadcast::Receiver<DeviceEvent> {
        self.events_tx.subscribe()
    }

    /// A snapshot of the metrics: per queue and per LUN.
    ///
    /// ```no_run
    /// # fn demo(driver: &vscsi_driver::Driver) {
    /// let s = driver.stats();
    /// for (lun, l) in &s.luns {
    ///     tracing::info!("{}:{} {} commands, p99 read {} us", lun.target, lun.lun, l.commands, l.latency[0].percentile(99.0));
    /// }
    /// # }
    /// ```
    pub fn stats(&self) -> StatsSnapshot {
        let mut table = LunTable::new();
        for q in &self.queues {
            q.merge_stats(&mut table);
        }
        let mut luns: Vec<_> = table
            .into_iter()
            .map(|((target, lun), s)| (Lun { target, lun }, s))
            .collect();
        luns.sort_by_key(|(l, _)| *l);
        StatsSnapshot {
            uptime: self.started.elapsed(),
            queues: self.queues.iter().map(|q| q.queue_stats()).collect(),
            control: crate::stats::QueueStats {
                index: u16::MAX,
                kicks: self.control.kicks(),
                calls: self.control.calls(),
                ..Default::default()
            },
            events: self.events_seen.load(Ordering::Relaxed),
            luns,
        }
    }

    /// Finds every logical unit: REPORT LUNS on each target (a target
    /// answering BAD_TARGET does not exist), then INQUIRY and READ CAPACITY
    /// on each LUN, as the Linux SCSI scan does.
    ///
    /// The result also replaces [`Driver::topology`].
    pub async fn scan(&self) -> Result<Vec<LunInfo>> {
        let max_target = self.config.max_target.get().min(255) as u8;
        let found =
            crate::topology::scan_with(&|t, l, c| self.send_command(t, l, c), max_target).await?;
        self.topology.send_modify(|t| t.replace_all(&found));
        Ok(found)
    }

    /// INQUIRY and READ CAPACITY of one LUN; `None` if nothing is connected there.
    /// The answer also updates [`Driver::topology`].
    pub async fn probe(&self, target: u8, lun: u16) -> Result<Option<LunInfo>> {
        let info =
            crate::topology::probe_with(&|t, l, c| self.send_command(t, l, c), target, lun).await?;
        self.topology.send_modify(|t| match &info {
            Some(i) => {
                t.luns.insert((target, lun), i.clone());
            }
            None => {
                t.luns.remove(&(target, lun));
            }
        });
        Ok(info)
    }

    /// The current targets and LUNs: what [`Driver::scan`] found, kept
    /// current by a background task that follows the device's events
    /// (hot-plug, hot-unplug, capacity changes, missed events; see
    /// [`crate::topology`]). Empty until the first scan or event.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// driver.scan().await?;
    /// if let Some(lu) = driver.topology().get(0, 0) {
    ///     tracing::info!("0:0 has {} bytes", lu.capacity());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn topology(&self) -> Topology {
        self.topology.borrow().clone()
    }

    /// A receiver that sees every change of [`Driver::topology`].
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) {
    /// let mut changes = driver.topology_changes();
    /// while changes.changed().await.is_ok() {
    ///     tracing::info!("{} LUNs", changes.borrow().luns.len());
    /// }
    /// # }
    /// ```
    pub fn topology_changes(&self) -> watch::Receiver<Topology> {
        self.topology.subscribe()
    }

    /// Stops the queues and closes the connection. Pending commands fail with [`Error::Closed`].
    pub fn close(self) {
        drop(self);
    }
}

/// How often the watchdog looks for commands past their deadline: the
/// resolution of command timeouts.
const WATCHDOG_TICK: Duration = Duration::from_millis(10);

/// One timer for every command of the driver: each tick marks the commands
/// whose deadline passed and wakes their waiters, which run the error
/// handler. (A tokio timer per command would cost a timer-wheel entry and
/// its lock on every command.)
async fn watchdog(queues: Vec<Arc<RequestQueue>>) {
    let mut tick = tokio::time::interval(WATCHDOG_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for q in &queues {
            q.expire(now);
        }
    }
}

/// Runs vhost-user exchanges (blocking socket I/O) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

/// The response of `raw` without data (a zero-copy read keeps it in the slot).
fn header_response(raw: &crate::queue::RawResponse) -> Response {
    Response {
        response: raw.resp.response,
        status: raw.resp.status,
        sense: raw.resp.sense[..raw.sense_len].to_vec(),
        residual: raw.resp.resid.get(),
        data: Vec::new(),
    }
}

/// Updates the metrics of `target:lun` for one completed command.
fn record_completion(
    queue: &RequestQueue,
    (target, lun): (u8, u16),
    class: CommandClass,
    start: Instant,
    r: &Response,
    bytes_read: usize,
    data_out_len: usize,
) {
    let us = start.elapsed().as_micros() as u64;
    queue.record(target, lun, |s| {
        s.commands += 1;
        s.latency[class as usize].record(us);
        if r.response != VirtioResponse::Ok as u8 {
            s.errors_by_response[usize::from(r.response).min(12)] += 1;
            return;
        }
        s.bytes_read += bytes_read as u64;
        if r.status == status::GOOD {
            s.bytes_written += data_out_len as u64;
        }
        match r.status {
            status::GOOD => {}
            status::CHECK_CONDITION => {
                let key = r.sense_data().map_or(0, |s| s.key as usize);
                s.errors_by_sense_key[key & 0xF] += 1;
            }
            _ => s.bad_status += 1,
        }
    });
}

pub(crate) fn to_response(done: &crate::queue::Completed, data_in_len: usize) -> Result<Response> {
    let raw = done.read(data_in_len)?;
    Ok(Response {
        response: raw.resp.response,
        status: raw.resp.status,
        sense: raw.resp.sense[..raw.sense_len].to_vec(),
        residual: raw.resp.resid.get(),
        data: raw.data,
    })
}

impl Drop for Driver {
    fn drop(&mut self) {
        for q in &self.queues {
            q.close();
        }
        self.control.close();
        self.event_queue.close();
        for t in &self.tasks {
            t.abort();
        }
    }
}
