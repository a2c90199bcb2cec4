//! The running service: its controllers, and the management plane that
//! changes them at run time.
//!
//! - [`rpc`]: the JSON-RPC 2.0 control socket (framing, errors, audit log,
//!   method dispatch);
//! - `luns` (add_lun, remove_lun), `media` (resize_lun, set_read_only,
//!   eject_media, insert_media), `faults` (set_fault, clear_fault), `status`
//!   (list, stats): one file per method family;
//! - [`metrics`]: the statistics and the Prometheus endpoint;
//! - [`run`]: binding every socket, the serving threads, shutdown.
//!
//! Every method either succeeds or returns an error and changes nothing.
//! Changes to one controller are serialized by its own mutex, which the I/O
//! path never takes: request processing only loads the controller's
//! [`BusHandle`].

mod error;
mod faults;
mod luns;
mod media;
pub mod metrics;
pub mod rpc;
pub mod run;
mod status;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, ControllerConfig, DaemonConfig};
use crate::daemon::{ConnectionStats, Shutdown};
use crate::fault::FaultSpec;
use crate::scsi::target::BusHandle;
use crate::scsi::{LogicalUnit, LunOptions, Nexus, ScsiBus, TargetPort};
use crate::vhost::{DeviceOptions, QueueMetrics, ResetReason};

use error::err;
pub use error::{code, RpcError};

/// How long remove_lun, set_read_only and insert_media wait for the
/// commands in flight on a LUN before giving up (set_read_only,
/// insert_media: nothing changes) or going on (remove_lun: the LUN is gone
/// for new commands at once; the image is flushed after the wait).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One controller at run time.
pub struct Controller {
    /// Name.
    pub name: String,
    /// vhost-user socket path.
    pub socket: PathBuf,
    /// The run-time bus.
    pub bus: BusHandle,
    /// Device options of every connection (queues, fault table, event hub).
    pub opts: DeviceOptions,
    /// Stops the controller's serving loop.
    pub shutdown: Arc<Shutdown>,
    /// Connection counters.
    pub connections: Arc<ConnectionStats>,
    /// The configuration as changed at run time (what `list` shows);
    /// also serializes management operations on this controller.
    config: Mutex<ControllerConfig>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Controller {
    fn lock(&self) -> MutexGuard<'_, ControllerConfig> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration as it is now.
    pub fn config(&self) -> ControllerConfig {
        self.lock().clone()
    }
}

/// The daemon's controllers, built from a [`DaemonConfig`].
#[derive(Debug)]
pub struct Service {
    controllers: Vec<Arc<Controller>>,
    control: Option<PathBuf>,
    started: Instant,
    stopping: AtomicBool,
    /// Management operations run one at a time (never taken by the I/O path).
    ops: Mutex<()>,
}

/// What a run-time change means to a connected frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A LUN appeared.
    Added,
    /// A LUN went away.
    Removed,
    /// The capacity of a LUN changed.
    CapacityChanged,
}

/// The one place where a run-time change is told to the frontends
/// connected to `ctrl` on their event queue: TRANSPORT_RESET with reason
/// RESCAN or REMOVED (if they negotiated HOTPLUG), PARAM_CHANGE with
/// CAPACITY DATA HAS CHANGED, 2A/09 (if they negotiated CHANGE). The unit
/// attentions are set by the callers whatever happens here. Returns how
/// many frontends got the event.
pub fn notify_frontends(ctrl: &Controller, target: u8, lun: u16, change: Change) -> usize {
    let events = &ctrl.opts.events;
    match change {
        Change::Added => events.transport_reset(target, lun, ResetReason::Rescan),
        Change::Removed => events.transport_reset(target, lun, ResetReason::Removed),
        Change::CapacityChanged => events.param_change(target, lun, 0x2A, 0x09),
    }
}

impl Service {
    /// Opens every image of every controller (failing on the first that
    /// cannot be served, naming it) and builds the controllers. Nothing is
    /// listening yet.
    pub fn build(cfg: &DaemonConfig) -> Result<Service, ConfigError> {
        let mut controllers = Vec::new();
        let mut shared = SharedUnits::default();
        for (index, c) in cfg.controllers.iter().enumerate() {
            let mut bus = shared.build_bus(c)?;
            // Controller n (from 0) is target port n + 1 (VPD 83h shows its
            // relative identifier and a name from its socket path); its
            // frontend is one initiator port (see scsi::nexus).
            let target_port = TargetPort::for_controller(index, &c.socket);
            bus.set_port(target_port);
            let port = target_port.relative_id();
            let opts = DeviceOptions {
                nexus: Arc::new(Nexus::controller(&c.name, port)),
                request_queues: c.queues,
                max_queue_size: c.queue_size,
                max_sectors: c.max_sectors,
                poll: cfg.poll,
                features: c.features,
                queue_metrics: Arc::new(QueueMetrics::new(c.queues)),
                controller: Arc::from(c.name.as_str()),
                cpus: c.cpus.clone(),
                ..Default::default()
            };
            for l in &c.luns {
                if let Some(f) = &l.fault {
                    let spec: FaultSpec =
                        f.parse().map_err(|e: crate::fault::FaultParseError| {
                            ConfigError::Bus(e.to_string())
                        })?;
                    opts.faults.set(l.spec.target, l.spec.lun, spec);
                }
            }
            controllers.push(Arc::new(Controller {
                name: c.name.clone(),
                socket: c.socket.clone(),
                bus: BusHandle::new(bus),
                opts,
                shutdown: Arc::new(Shutdown::default()),
                connections: Arc::new(ConnectionStats::default()),
                config: Mutex::new(c.clone()),
            }));
        }
        Ok(Service {
            controllers,
            control: cfg.control.clone(),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            ops: Mutex::new(()),
        })
    }

    /// The controllers.
    pub fn controllers(&self) -> &[Arc<Controller>] {
        &self.controllers
    }

    /// Seconds since the service was built.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether a shutdown was requested.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops every controller (and the control socket loop): current
    /// connections are closed, accept loops are woken and exit.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for c in &self.controllers {
            c.shutdown.request();
            // Wake the accept() the serving loop may be blocked in.
            let _ = UnixStream::connect(&c.socket);
        }
        if let Some(p) = &self.control {
            let _ = UnixStream::connect(p);
        }
    }

    /// `fdatasync` of every image of every controller; the first error.
    pub fn flush_all(&self) -> std::io::Result<()> {
        let mut first = Ok(());
        for c in &self.controllers {
            if let Err(e) = c.bus.load().flush_all() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    pub(crate) fn controller(&self, name: Option<&str>) -> Result<&Arc<Controller>, RpcError> {
        let names = || {
            self.controllers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => self
                .controllers
                .iter()
                .find(|c| c.name == n)
                .ok_or_else(|| {
                    err(
                        code::UNKNOWN_CONTROLLER,
                        format!("no controller named {n:?}: use one of {}", names()),
                    )
                }),
            None if self.controllers.len() == 1 => Ok(&self.controllers[0]),
            None => Err(err(
                code::UNKNOWN_CONTROLLER,
                format!(
                    "there are several controllers: say which with \"controller\" (one of {})",
                    names()
                ),
            )),
        }
    }
}

/// The logical units that several controllers serve (`shared = true` on a
/// writable image, or on read-only LUNs with the same options): one
/// [`LogicalUnit`] (one image, one identity, one persistent reservation
/// state) reached through each controller's target port.
#[derive(Default)]
struct SharedUnits {
    units: Vec<(PathBuf, Arc<LogicalUnit>)>,
}

impl SharedUnits {
    /// The bus of controller `c`: its LUNs opened, a shared one taken from
    /// an earlier controller when the options agree (the configuration
    /// checks refused a writable shared image whose options differ).
    fn build_bus(&mut self, c: &ControllerConfig) -> Result<ScsiBus, ConfigError> {
        let mut bus = ScsiBus::new();
        for l in &c.luns {
            let opts = LunOptions {
                max_sectors: c.max_sectors,
                ..l.spec.options.clone()
            };
            let canon = std::fs::canonicalize(&l.spec.path).unwrap_or_else(|_| l.spec.path.clone());
            let found = l.shared.then(|| self.find(&canon, &opts)).flatten();
            let lu = match found {
                Some(lu) => lu,
                None => {
                    let lu = Arc::new(LogicalUnit::open(&l.spec.path, opts)?);
                    if l.shared {
                        self.units.push((canon, lu.clone()));
                    }
                    lu
                }
            };
            bus.add_lun(l.spec.target, l.spec.lun, lu)
                .map_err(|e| ConfigError::Bus(e.to_string()))?;
        }
        Ok(bus)
    }

    fn find(&self, canon: &std::path::Path, opts: &LunOptions) -> Option<Arc<LogicalUnit>> {
        self.units
            .iter()
            .find(|(p, lu)| p == canon && lu.opened_with() == opts)
            .map(|(_, lu)| lu.clone())
    }
}
