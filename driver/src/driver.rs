//! The driver: connect, negotiate, lay out shared memory, send commands, scan.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{info, warn};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::EventFd;
use vscsi_protocol::data::{decode_report_luns, ReadCapacity10, ReadCapacity16, StandardInquiry};
use vscsi_protocol::lun::{Lun, MAX_LUN};
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::{feature, Config, Response as VirtioResponse};

use crate::command::ScsiCommand;
use crate::error::{Error, Result};
use crate::memory::{Carver, SharedMemory};
use crate::queue::{QueuePlacement, RequestQueue, HEADER_AREA};
use crate::ring::split::{RingOptions, SplitRing};
use crate::transport::vhost_user::VhostUserTransport;

/// Virtqueue settings the driver asks for (the seed API's `QueueConfig`).
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
    /// How long a command may take before [`Error::Timeout`] (Linux sd: 30 s).
    pub timeout: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            max_transfer: 256 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
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
///     println!("{}:{} {} {} bytes", lu.lun.target, lu.lun.lun, lu.inquiry.product, lu.capacity());
/// }
/// # Ok(()) }
/// ```
pub struct Driver {
    /// Keeps the vhost-user connection (and so the device) alive.
    _transport: Mutex<VhostUserTransport>,
    _mem: Arc<SharedMemory>,
    queues: Vec<Arc<RequestQueue>>,
    tasks: Vec<JoinHandle<()>>,
    next_queue: AtomicUsize,
    features: Features,
    config: Config,
    opts: DriverOptions,
    /// Kept alive for the device: control and event queue rings and their eventfds.
    _aux: Vec<(SplitRing, EventFd, EventFd)>,
}

/// Size of the control and event queues.
const AUX_QUEUE_SIZE: u16 = 16;
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
        if opts.max_transfer == 0 || opts.max_transfer % 512 != 0 {
            return Err(Error::BadConfig(
                "max_transfer must be a non-zero multiple of 512".into(),
            ));
        }
        let path = socket.as_ref().to_owned();
        let setup = tokio::task::spawn_blocking(move || Self::setup(&path, cfg, opts))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let (transport, mem, queues, calls, features, config, aux) = setup;
        let tasks = queues
            .iter()
            .zip(calls)
            .map(|(q, call)| tokio::spawn(q.clone().run_completions(call)))
            .collect();
        info!(?features, "virtio-scsi driver ready");
        Ok(Self {
            _transport: Mutex::new(transport),
            _mem: mem,
            queues,
            tasks,
            next_queue: AtomicUsize::new(0),
            features,
            config,
            opts,
            _aux: aux,
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
        Vec<(SplitRing, EventFd, EventFd)>,
    )> {
        let mut wanted = 1u64 << feature::HOTPLUG | 1 << feature::CHANGE;
        if cfg.use_indirect {
            wanted |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        if cfg.event_index {
            wanted |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        let mut transport = VhostUserTransport::connect(path, wanted)?;
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
        let plan = |carver: &mut Carver| -> Result<(Vec<usize>, Vec<QueuePlacement>)> {
            let aux = (0..2)
                .map(|_| carver.alloc(SplitRing::layout(AUX_QUEUE_SIZE, MAX_INDIRECT).total, 4096))
                .collect::<std::result::Result<Vec<_>, _>>()?;
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
        for (i, off) in aux_off.into_iter().enumerate() {
            let ring = SplitRing::new(mem.clone(), off, AUX_QUEUE_SIZE, ring_opts)?;
            let (kick, call) = (
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            );
            transport.start_vring(i, &ring, &kick, &call)?;
            aux.push((ring, kick, call));
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
    /// robin over the request queues.
    pub async fn send_command(
        &self,
        target: u8,
        lun: u16,
        command: ScsiCommand,
    ) -> Result<Response> {
        let addr = Lun::new(target, lun)
            .ok_or_else(|| Error::BadConfig(format!("LUN {lun} > {MAX_LUN}")))?;
        self.send_to(addr.encode(), &command).await
    }

    /// Sends `command` with a raw 8-byte virtio LUN field (for probing
    /// addressing the spec does not allow, or the REPORT LUNS well-known LUN).
    pub async fn send_to(&self, lun_field: [u8; 8], command: &ScsiCommand) -> Result<Response> {
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
        let (cdb, data_out, data_in_len) = command.encode();
        let n = self.next_queue.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let queue = &self.queues[n];
        let done = tokio::time::timeout(
            self.opts.timeout,
            queue.submit(lun_field, &cdb, data_out, data_in_len),
        )
        .await
        .map_err(|_| Error::Timeout(self.opts.timeout))??;
        let raw = done.read(data_in_len)?;
        Ok(Response {
            response: raw.resp.response,
            status: raw.resp.status,
            sense: raw.resp.sense[..raw.sense_len].to_vec(),
            residual: raw.resp.resid.get(),
            data: raw.data,
        })
    }

    /// Finds every logical unit: REPORT LUNS on each target (a target
    /// answering BAD_TARGET does not exist), then INQUIRY and READ CAPACITY
    /// on each LUN, as the Linux SCSI scan does.
    pub async fn scan(&self) -> Result<Vec<LunInfo>> {
        let mut found = Vec::new();
        for target in 0..=self.config.max_target.get().min(255) as u8 {
            let report = self
                .send_command(
                    target,
                    0,
                    ScsiCommand::ReportLuns {
                        select_report: 0,
                        allocation_length: 8 + 8 * 512,
                    },
                )
                .await?;
            if report.virtio() == Some(VirtioResponse::BadTarget) {
                continue;
            }
            let luns = if report.is_good() {
                decode_report_luns(&report.data)
            } else {
                vec![0]
            };
            for lun in luns {
                if let Some(info) = self.probe(target, lun).await? {
                    found.push(info);
                }
            }
        }
        Ok(found)
    }

    /// INQUIRY and READ CAPACITY of one LUN; `None` if nothing is connected there.
    pub async fn probe(&self, target: u8, lun: u16) -> Result<Option<LunInfo>> {
        let inq = self
            .send_command(
                target,
                lun,
                ScsiCommand::Inquiry {
                    allocation_length: 96,
                    evpd: false,
                    page_code: 0,
                },
            )
            .await?;
        if !inq.is_good() {
            return Ok(None);
        }
        let Ok(inquiry) = StandardInquiry::decode(&inq.data) else {
            return Ok(None);
        };
        if inquiry.peripheral_qualifier != 0 {
            return Ok(None);
        }
        let (mut blocks, mut block_size) = (0, 0);
        let rc16 = self
            .send_command(
                target,
                lun,
                ScsiCommand::ReadCapacity16 {
                    allocation_length: 32,
                },
            )
            .await?;
        if let (true, Ok(c)) = (rc16.is_good(), ReadCapacity16::decode(&rc16.data)) {
            (blocks, block_size) = (c.last_lba + 1, c.block_len);
        } else {
            let rc10 = self
                .send_command(target, lun, ScsiCommand::ReadCapacity10)
                .await?;
            if let (true, Ok(c)) = (rc10.is_good(), ReadCapacity10::decode(&rc10.data)) {
                (blocks, block_size) = (c.last_lba as u64 + 1, c.block_len);
            }
        }
        Ok(Some(LunInfo {
            lun: Lun { target, lun },
            inquiry,
            blocks,
            block_size,
        }))
    }

    /// Stops the queues and closes the connection. Pending commands fail with [`Error::Closed`].
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for q in &self.queues {
            q.close();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
