//! The public driver: [`Driver`], its connection and background tasks; each
//! family of operations lives in its own submodule.

mod layout;
mod negotiate;
mod options;
mod queue_choice;
mod reconnect;
mod recovery;
mod scan;
mod send;
mod tmf;
mod zero_copy;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::info;
use vscsi_protocol::lun::Lun;
use vscsi_protocol::virtio_scsi::Config;

use crate::error::{Error, Result};
use crate::events::DeviceEvent;
use crate::link::Link;
use crate::memory::SharedMemory;
use crate::queue::{InFlightCommand, SlotQueue};
pub use crate::response::{CommandError, LunInfo, Response};
use crate::stats::{LunTable, StatsSnapshot};
use crate::topology::{Prober, Topology};
use crate::transport::vhost_user::VhostUserTransport;
use layout::EVENT_BUFFERS;
pub use options::{
    CommandOptions, DriverOptions, Features, Poll, PollError, PollMode, QueueChoice,
    QueueChoiceError, QueueConfig,
};
pub(crate) use queue_choice::QueuePicker;
pub use reconnect::ConnectionEvent;
use reconnect::Reconnector;

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
    queues: Vec<Arc<SlotQueue>>,
    tasks: Vec<JoinHandle<()>>,
    queue_picker: QueuePicker,
    features: Features,
    config: Config,
    opts: DriverOptions,
    control: Arc<SlotQueue>,
    event_queue: Arc<SlotQueue>,
    events_tx: broadcast::Sender<DeviceEvent>,
    events_seen: Arc<AtomicU64>,
    lun_timeouts: RwLock<HashMap<(u8, u16), Duration>>,
    any_lun_timeout: AtomicBool,
    started: Instant,
    topology: Arc<watch::Sender<Topology>>,
    /// The connection's state (up, reconnecting, gone).
    link: Arc<Link>,
    /// Reconnects after the device went away ([`DriverOptions::reconnect`]).
    reconnector: Arc<Reconnector>,
}

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
        let link = Arc::new(Link::default());
        let setup_link = link.clone();
        let setup_path = path.clone();
        let layout::Setup {
            transport,
            mem,
            queues,
            calls,
            features,
            config,
            control: (control, control_call),
            event: (event_queue, event_call),
            inflight,
        } = blocking(move || layout::setup(&setup_path, cfg, opts, &setup_link)).await?;
        let transport = Arc::new(Mutex::new(transport));
        let reconnector = Arc::new(Reconnector::new(
            path,
            mem.clone(),
            features,
            opts,
            transport.clone(),
            inflight,
            link.clone(),
            (control.clone(), event_queue.clone(), queues.clone()),
        ));
        reconnector.watch(&transport.lock().unwrap_or_else(|p| p.into_inner()))?;
        let mut tasks: Vec<JoinHandle<()>> = queues
            .iter()
            .zip(calls)
            .map(|(q, call)| tokio::spawn(q.clone().run_completions(call, opts.poll)))
            .collect();
        tasks.push(tokio::spawn(watchdog(queues.clone())));
        tasks.push(tokio::spawn(reconnector.clone().run()));
        // The control and event queues are quiet: they sleep at once.
        tasks.push(tokio::spawn(
            control.clone().run_completions(control_call, Poll::Off),
        ));
        tasks.push(tokio::spawn(
            event_queue.clone().run_completions(event_call, Poll::Off),
        ));
        let (events_tx, _) = broadcast::channel(256);
        let events_seen = Arc::new(AtomicU64::new(0));
        // Subscribed before any event buffer is posted, so none is missed.
        let topology = Arc::new(watch::Sender::new(Topology::default()));
        let prober = Prober {
            queues: queues.clone(),
            picker: QueuePicker::new(QueueChoice::RoundRobin),
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
            tasks.push(tokio::spawn(crate::events::keep_posted(
                event_queue.clone(),
                events_tx.clone(),
                events_seen.clone(),
            )));
        }
        info!(
            ?features,
            resubmits_after_reconnect = reconnector.resubmits(),
            "virtio-scsi driver ready"
        );
        Ok(Self {
            transport,
            _mem: mem,
            queues,
            tasks,
            queue_picker: QueuePicker::new(opts.queue_choice),
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
            link,
            reconnector,
        })
    }

    /// What happens to the connection: lost, re-established (with how many
    /// commands carried over or failed), given up. Each call subscribes
    /// anew.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) {
    /// use vscsi_driver::ConnectionEvent;
    /// let mut conn = driver.connection_events();
    /// while let Ok(ev) = conn.recv().await {
    ///     if let ConnectionEvent::Reconnected { after, carried, .. } = ev {
    ///         tracing::info!("back after {after:?}, {carried} commands resubmitted");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.reconnector.events.subscribe()
    }

    /// Whether commands in flight when the device goes away are
    /// resubmitted by the device that takes over (inflight I/O tracking:
    /// split rings on a device offering
    /// `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`, reconnecting on); otherwise
    /// they fail with [`Error::Disconnected`].
    pub fn resubmits_after_reconnect(&self) -> bool {
        self.reconnector.resubmits()
    }

    /// Waits while the driver reconnects (bounded by the reconnect
    /// deadline); at once when the connection is up.
    pub(super) async fn wait_link(&self) -> Result<()> {
        if self.link.is_up() {
            return Ok(());
        }
        self.link.ready().await
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
            reconnect: self.reconnector.stats(),
        }
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
async fn watchdog(queues: Vec<Arc<SlotQueue>>) {
    let mut tick = tokio::time::interval(WATCHDOG_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for q in &queues {
            q.expire(now);
            q.rescue();
        }
    }
}

/// Runs vhost-user exchanges (blocking socket I/O) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.reconnector.stop();
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
