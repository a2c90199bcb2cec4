//! The running service: its controllers, and the JSON-RPC 2.0 control socket
//! that changes them at run time.
//!
//! Framing: one JSON-RPC request per line (UTF-8, `\n`-terminated, at most
//! 1 MiB), one response line per request that has an `id` (a notification,
//! without `id`, is executed and not answered). Batches are refused.
//!
//! Every method either succeeds or returns an error and changes nothing.
//! Every management action is an audit event (`target: "vscsi::audit"`)
//! naming who (the control socket and the peer's uid/pid), what and the
//! result. Changes to one controller are serialized by its own mutex,
//! which the I/O path never takes: request processing only loads the
//! controller's [`BusHandle`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::config::{self, ConfigError, ControllerConfig, DaemonConfig, LunConfig, LunFields};
use crate::daemon::{ConnectionStats, Shutdown};
use crate::fault::FaultSpec;
use crate::scsi::lu::UA_MODE_PARAMETERS_CHANGED;
use crate::scsi::target::{BusHandle, LunEntry};
use crate::scsi::{DeviceType, LogicalUnit, LunOptions, ScsiBus};
use crate::vhost::{DeviceOptions, QueueMetrics, ResetReason};

/// How long remove_lun, set_read_only and insert_media wait for the
/// commands in flight on a LUN before giving up (set_read_only,
/// insert_media: nothing changes) or going on (remove_lun: the LUN is gone
/// for new commands at once; the image is flushed after the wait).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// JSON-RPC error codes: the standard ones, then ours (-32000..-32099).
pub mod code {
    /// Not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC 2.0 request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Missing, unknown or mistyped parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// No controller of that name (or several and none named).
    pub const UNKNOWN_CONTROLLER: i64 = -32001;
    /// No LUN at that address.
    pub const UNKNOWN_LUN: i64 = -32002;
    /// A LUN already exists at that address.
    pub const LUN_EXISTS: i64 = -32003;
    /// The image cannot be served (missing, locked, too small, in use).
    pub const IMAGE: i64 = -32004;
    /// A size that cannot be served, or a shrink without force.
    pub const BAD_SIZE: i64 = -32005;
    /// Not possible for this kind of LUN (e.g. eject on a fixed disk).
    pub const NOT_SUPPORTED: i64 = -32006;
    /// The LUN is busy (commands still running, medium removal prevented).
    pub const BUSY: i64 = -32007;
    /// An I/O error on the image.
    pub const IO: i64 = -32008;
}

/// A JSON-RPC error: code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    /// Error code (see [`code`]).
    pub code: i64,
    /// What went wrong and what to do.
    pub message: String,
}

fn err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
    }
}

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

/// Releases the `flock` of a LU that is fenced off, so its image can be
/// served again (by another LUN, another daemon, or re-opened) while the
/// descriptor itself closes when the last bus snapshot holding it is gone.
fn release_lock(lu: &LogicalUnit) {
    let Some(file) = lu.image().file() else {
        return;
    };
    let fd = file.as_raw_fd();
    // SAFETY: flock takes a descriptor owned by `lu` (open for the whole call) and an integer operation; it touches no memory of ours.
    let rc = unsafe { libc::flock(fd, libc::LOCK_UN) };
    if rc != 0 {
        warn!(image = %lu.path().display(), error = %std::io::Error::last_os_error(), "releasing the image lock failed");
    }
}

/// Takes the lock of a LU back after a failed switch.
fn retake_lock(lu: &LogicalUnit) {
    let Some(file) = lu.image().file() else {
        return;
    };
    let fd = file.as_raw_fd();
    let op = if lu.read_only() {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    } | libc::LOCK_NB;
    // SAFETY: as in `release_lock`: a descriptor owned by `lu`, an integer operation.
    let rc = unsafe { libc::flock(fd, op) };
    if rc != 0 {
        warn!(image = %lu.path().display(), error = %std::io::Error::last_os_error(), "taking the image lock back failed");
    }
}

/// The peer of a control connection, for the audit log.
fn peer_of(stream: &UnixStream) -> String {
    match crate::peer::credentials(stream) {
        Some(cred) => format!("uid={} pid={}", cred.uid, cred.pid),
        None => "unknown peer".into(),
    }
}

fn parse_size(v: &Value) -> Result<u64, RpcError> {
    let bad = || {
        err(
            code::INVALID_PARAMS,
            format!(
                "size {v} is not a size: give bytes (a number) or a string like \"48M\", \"2G\""
            ),
        )
    };
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim();
            let (num, mult) = match s.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => {
                    let m: u64 = match c.to_ascii_uppercase() {
                        'K' => 1 << 10,
                        'M' => 1 << 20,
                        'G' => 1 << 30,
                        'T' => 1 << 40,
                        _ => return Err(bad()),
                    };
                    (&s[..i], m)
                }
                _ => (s, 1),
            };
            num.parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Addr {
    controller: Option<String>,
    target: u8,
    lun: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    size: Value,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadOnlyParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EjectParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InsertParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    image: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    fault: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ControllerParam {
    controller: Option<String>,
}

fn params<T: for<'de> Deserialize<'de>>(p: &Value) -> Result<T, RpcError> {
    let p = if p.is_null() { json!({}) } else { p.clone() };
    serde_json::from_value(p).map_err(|e| err(code::INVALID_PARAMS, format!("bad params: {e}")))
}

impl Service {
    /// Opens every image of every controller (failing on the first that
    /// cannot be served, naming it) and builds the controllers. Nothing is
    /// listening yet.
    pub fn build(cfg: &DaemonConfig) -> Result<Service, ConfigError> {
        let mut controllers = Vec::new();
        for c in &cfg.controllers {
            let specs: Vec<_> = c.luns.iter().map(|l| l.spec.clone()).collect();
            let bus = config::build_bus(&specs, c.max_sectors)?;
            let opts = DeviceOptions {
                request_queues: c.queues,
                max_queue_size: c.queue_size,
                max_sectors: c.max_sectors,
                poll: std::time::Duration::from_micros(cfg.poll_us.into()),
                features: c.features,
                queue_metrics: Arc::new(QueueMetrics::new(c.queues)),
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

    fn controller(&self, name: Option<&str>) -> Result<&Arc<Controller>, RpcError> {
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

    /// Serves the control socket until [`Service::shutdown`]: one thread
    /// per client connection.
    pub fn serve_control(self: &Arc<Self>, listener: UnixListener) {
        let socket = self
            .control
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        for stream in listener.incoming() {
            if self.stopping() {
                break;
            }
            let Ok(stream) = stream else { continue };
            let service = self.clone();
            let socket = socket.clone();
            std::thread::spawn(move || service.serve_client(stream, &socket));
        }
    }

    fn serve_client(&self, stream: UnixStream, socket: &str) {
        let who = format!("{socket} {}", peer_of(&stream));
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            let n = match (&mut reader).take(MAX_LINE as u64 + 1).read_line(&mut line) {
                Ok(n) => n,
                Err(e) => {
                    let resp = error_response(
                        Value::Null,
                        err(code::PARSE_ERROR, format!("unreadable request: {e}")),
                    );
                    let _ = writeln!(out, "{resp}");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            if line.len() > MAX_LINE {
                let resp = error_response(
                    Value::Null,
                    err(
                        code::INVALID_REQUEST,
                        "request longer than 1 MiB: send one request per line",
                    ),
                );
                let _ = writeln!(out, "{resp}");
                return;
            }
            if line.trim().is_empty() {
                continue;
            }
            if let Some(resp) = self.handle_line(&line, &who) {
                if writeln!(out, "{resp}").is_err() {
                    return;
                }
            }
            if self.stopping() {
                return;
            }
        }
    }

    /// Handles one request line; the response line, if the request wants one.
    pub fn handle_line(&self, line: &str, who: &str) -> Option<String> {
        let req: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return Some(error_response(
                    Value::Null,
                    err(
                        code::PARSE_ERROR,
                        format!("not JSON: {e}; send one JSON-RPC 2.0 request per line"),
                    ),
                ))
            }
        };
        let Some(obj) = req.as_object() else {
            return Some(error_response(
                Value::Null,
                err(
                    code::INVALID_REQUEST,
                    "send one JSON-RPC 2.0 request object per line (batches are not supported)",
                ),
            ));
        };
        let id = obj.get("id").cloned();
        let reply_id = id.clone().unwrap_or(Value::Null);
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Some(error_response(
                reply_id,
                err(code::INVALID_REQUEST, "\"jsonrpc\": \"2.0\" is required"),
            ));
        }
        let Some(method) = obj.get("method").and_then(Value::as_str) else {
            return Some(error_response(
                reply_id,
                err(code::INVALID_REQUEST, "\"method\" (a string) is required"),
            ));
        };
        let p = obj.get("params").cloned().unwrap_or(Value::Null);
        let result = self.call(method, &p);
        match &result {
            Ok(_) => {
                info!(target: "vscsi::audit", who, action = method, params = %p, result = "ok", "control")
            }
            Err(e) => {
                warn!(target: "vscsi::audit", who, action = method, params = %p, result = "error", code = e.code, error = %e.message, "control")
            }
        }
        id.as_ref()?;
        Some(match result {
            Ok(v) => json!({"jsonrpc": "2.0", "id": reply_id, "result": v}).to_string(),
            Err(e) => error_response(reply_id, e),
        })
    }

    /// Runs one method.
    pub fn call(&self, method: &str, p: &Value) -> Result<Value, RpcError> {
        let _one_at_a_time = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        match method {
            "list" => self.list(params(p)?),
            "add_lun" => self.add_lun(p),
            "remove_lun" => self.remove_lun(params(p)?),
            "resize_lun" => self.resize_lun(params(p)?),
            "set_read_only" => self.set_read_only(params(p)?),
            "insert_media" => self.insert_media(params(p)?),
            "eject_media" => self.eject_media(params(p)?),
            "set_fault" => self.set_fault(params(p)?),
            "clear_fault" => self.clear_fault(params(p)?),
            "stats" => {
                let c: ControllerParam = params(p)?;
                if let Some(n) = &c.controller {
                    self.controller(Some(n))?;
                }
                Ok(crate::metrics::stats_json(self, c.controller.as_deref()))
            }
            "shutdown" => {
                let _: ControllerParam = params(p)?;
                self.shutdown();
                Ok(json!({"stopping": true}))
            }
            other => Err(err(
                code::METHOD_NOT_FOUND,
                format!("no method {other:?}: use list, add_lun, remove_lun, resize_lun, set_read_only, insert_media, eject_media, set_fault, clear_fault, stats or shutdown"),
            )),
        }
    }

    fn list(&self, p: ControllerParam) -> Result<Value, RpcError> {
        let ctrls: Vec<&Arc<Controller>> = match &p.controller {
            Some(n) => vec![self.controller(Some(n))?],
            None => self.controllers.iter().collect(),
        };
        let list: Vec<Value> = ctrls
            .iter()
            .map(|c| {
                let cfg = c.config();
                let bus = c.bus.load();
                let luns: Vec<Value> = bus
                    .entries()
                    .map(|(t, l, e)| {
                        let lu = e.lu();
                        let lc = cfg.luns.iter().find(|x| (x.spec.target, x.spec.lun) == (t, l));
                        json!({
                            "target": t,
                            "lun": l,
                            "image": lu.path(),
                            "type": match lu.device_type() { DeviceType::Disk => "disk", DeviceType::Cdrom => "cdrom" },
                            "read_only": lu.read_only(),
                            "removable": lu.options().removable,
                            "block_size": lu.block_size(),
                            "capacity_blocks": lu.capacity_blocks(),
                            "size_bytes": lu.capacity_blocks() * u64::from(lu.block_size()),
                            "medium_present": lu.medium_present(),
                            "state": e.state_name(),
                            "shared": lc.is_some_and(|x| x.shared),
                            "fault": c.opts.faults.get(t, l).map(|_| lc.and_then(|x| x.fault.clone()).unwrap_or_default()),
                        })
                    })
                    .collect();
                json!({
                    "name": c.name,
                    "socket": c.socket,
                    "mode": format!("{:04o}", cfg.access.mode),
                    "queues": cfg.queues,
                    "queue_size": cfg.queue_size,
                    "connected": c.connections.connected.load(Ordering::Relaxed),
                    "luns": luns,
                })
            })
            .collect();
        Ok(json!({ "controllers": list }))
    }

    /// Whether `path` is served anywhere now; with `shared`, only a LUN
    /// also marked shared may serve it.
    ///
    /// `held` is the controller whose configuration the caller has locked
    /// (and its configuration); the others are locked one at a time.
    fn check_image_free(
        &self,
        path: &Path,
        shared: bool,
        held: (&Controller, &ControllerConfig),
    ) -> Result<(), RpcError> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        for c in &self.controllers {
            let cfg = if std::ptr::eq(c.as_ref(), held.0) {
                held.1.clone()
            } else {
                c.config()
            };
            for (t, l, lu) in c.bus.load().units() {
                let other =
                    std::fs::canonicalize(lu.path()).unwrap_or_else(|_| lu.path().to_path_buf());
                if other == canon {
                    let other_shared = cfg
                        .luns
                        .iter()
                        .any(|x| (x.spec.target, x.spec.lun) == (t, l) && x.shared);
                    if !(shared && other_shared) {
                        return Err(err(
                            code::IMAGE,
                            format!(
                                "image {} is already served by controller {} target {t} LUN {l}: remove it there first, or serve it read-only with shared = true on both",
                                path.display(),
                                c.name
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn add_lun(&self, p: &Value) -> Result<Value, RpcError> {
        let mut p = if p.is_null() { json!({}) } else { p.clone() };
        let name = match p.as_object_mut() {
            Some(o) => match o.remove("controller") {
                Some(Value::String(s)) => Some(s),
                Some(Value::Null) | None => None,
                Some(_) => {
                    return Err(err(code::INVALID_PARAMS, "\"controller\" must be a string"))
                }
            },
            None => return Err(err(code::INVALID_PARAMS, "params must be an object")),
        };
        let fields: LunFields = serde_json::from_value(p)
            .map_err(|e| err(code::INVALID_PARAMS, format!("bad params: {e}")))?;
        let ctrl = self.controller(name.as_deref())?;
        if fields.image.is_relative()
            && !fields
                .image
                .to_str()
                .is_some_and(crate::storage::nbd::is_nbd_uri)
        {
            return Err(err(
                code::INVALID_PARAMS,
                format!("image {} must be an absolute path (the daemon's working directory is not yours)", fields.image.display()),
            ));
        }
        let mut cfg = ctrl.lock();
        let (t, l) = (fields.target, fields.lun);
        let current = ctrl.bus.load_full();
        if current.entry(t, l).is_some() {
            return Err(err(
                code::LUN_EXISTS,
                format!("controller {} already has target {t} LUN {l}: remove it first or choose another LUN", ctrl.name),
            ));
        }
        let lc: LunConfig = fields.resolve(None).map_err(|(field, msg)| {
            let c = if field == "image" {
                code::IMAGE
            } else {
                code::INVALID_PARAMS
            };
            err(c, format!("{field}: {msg}"))
        })?;
        self.check_image_free(&lc.spec.path, lc.shared, (ctrl, &cfg))?;
        let fault = match &lc.fault {
            Some(f) => Some(
                f.parse::<FaultSpec>()
                    .map_err(|e| err(code::INVALID_PARAMS, e.to_string()))?,
            ),
            None => None,
        };
        let opts = LunOptions {
            max_sectors: cfg.max_sectors,
            ..lc.spec.options.clone()
        };
        let lu =
            LogicalUnit::open(&lc.spec.path, opts).map_err(|e| err(code::IMAGE, e.to_string()))?;
        let lu = Arc::new(lu);
        let next = current
            .with_lun(t, l, lu.clone())
            .map_err(|e| err(code::INVALID_PARAMS, e.to_string()))?;
        // The LUs already on the target learn of the new one (SPC-5:
        // REPORTED LUNS DATA HAS CHANGED); the new one starts clean.
        if let Some(target) = current.target(t) {
            target.report_luns_changed();
        }
        if let Some(f) = fault {
            ctrl.opts.faults.set(t, l, f);
        }
        ctrl.bus.store(next);
        cfg.luns.push(lc);
        drop(cfg);
        let notified = notify_frontends(ctrl, t, l, Change::Added);
        Ok(json!({
            "controller": ctrl.name,
            "target": t,
            "lun": l,
            "capacity_blocks": lu.capacity_blocks(),
            "block_size": lu.block_size(),
            "frontends_notified": notified,
        }))
    }

    fn remove_lun(&self, p: Addr) -> Result<Value, RpcError> {
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        let (t, l) = (p.target, p.lun);
        let current = ctrl.bus.load_full();
        let Some((next, entry)) = current.without_lun(t, l) else {
            return Err(unknown_lun(ctrl, t, l));
        };
        // New commands see the LUN gone from here on (through this bus and
        // through any snapshot that still holds the entry).
        ctrl.bus.store(next);
        let drained = entry.fence(DRAIN_TIMEOUT);
        if !drained {
            warn!(controller = %ctrl.name, target_id = t, lun = l, in_flight = entry.in_flight(), "commands still running after the drain timeout; flushing anyway");
        }
        if let Some(target) = ctrl.bus.load().target(t) {
            target.report_luns_changed();
        }
        let flushed = entry.lu().flush();
        release_lock(entry.lu());
        ctrl.opts.faults.clear(t, l);
        cfg.luns.retain(|x| (x.spec.target, x.spec.lun) != (t, l));
        drop(cfg);
        let notified = notify_frontends(ctrl, t, l, Change::Removed);
        if let Err(e) = &flushed {
            return Err(err(
                code::IO,
                format!(
                    "LUN removed, but flushing {} failed: {e}; check the image",
                    entry.lu().path().display()
                ),
            ));
        }
        Ok(json!({
            "controller": ctrl.name,
            "target": t,
            "lun": l,
            "image": entry.lu().path(),
            "drained": drained,
            "flushed": true,
            "frontends_notified": notified,
        }))
    }

    fn find(
        &self,
        ctrl: &Controller,
        t: u8,
        l: u16,
    ) -> Result<(Arc<ScsiBus>, Arc<LunEntry>), RpcError> {
        let bus = ctrl.bus.load_full();
        let entry = bus
            .entry(t, l)
            .cloned()
            .ok_or_else(|| unknown_lun(ctrl, t, l))?;
        Ok((bus, entry))
    }

    fn resize_lun(&self, p: ResizeParams) -> Result<Value, RpcError> {
        let ctrl = self.controller(p.controller.as_deref())?;
        let _cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        let lu = entry.lu();
        if lu.device_type() == DeviceType::Cdrom {
            return Err(err(
                code::NOT_SUPPORTED,
                "a CD-ROM cannot be resized: insert another medium with insert_media",
            ));
        }
        if lu.image().format() == crate::storage::ImageFormat::Qcow2 {
            // Its capacity is the qcow2 virtual size, not the file length:
            // truncating the file would corrupt it.
            return Err(err(
                code::NOT_SUPPORTED,
                "a qcow2 LUN cannot be resized here: resize it offline with qemu-img resize, then remove_lun and add_lun it",
            ));
        }
        if lu.read_only() {
            return Err(err(
                code::NOT_SUPPORTED,
                "the LUN is read-only: make it writable with set_read_only first",
            ));
        }
        let size = parse_size(&p.size)?;
        let bs = u64::from(lu.block_size());
        if size < bs || size % bs != 0 {
            return Err(err(
                code::BAD_SIZE,
                format!("size {size} is not a positive multiple of the {bs}-byte block size"),
            ));
        }
        let old = lu.capacity_blocks() * bs;
        if size < old && !p.force {
            return Err(err(
                code::BAD_SIZE,
                format!("shrinking from {old} to {size} bytes loses the data past the new end: pass force = true to do it"),
            ));
        }
        let file_len = lu
            .image()
            .file()
            .and_then(|f| f.metadata().ok())
            .map_or(old, |m| m.len());
        let f = OpenOptions::new()
            .write(true)
            .open(lu.path())
            .map_err(|e| {
                err(
                    code::IO,
                    format!("cannot open {} to resize it: {e}", lu.path().display()),
                )
            })?;
        if let Err(e) = f.set_len(size) {
            return Err(err(
                code::IO,
                format!("cannot resize {}: {e}", lu.path().display()),
            ));
        }
        if let Err(e) = lu.refresh_capacity() {
            let _ = f.set_len(file_len);
            return Err(err(
                code::IO,
                format!("the new size cannot be served ({e}); the image was set back"),
            ));
        }
        let notified = notify_frontends(ctrl, p.target, p.lun, Change::CapacityChanged);
        Ok(json!({
            "old_size": old,
            "new_size": size,
            "capacity_blocks": lu.capacity_blocks(),
            "frontends_notified": notified,
        }))
    }

    /// Re-opens the LU at (t, l) with `opts` (and maybe another image):
    /// new commands get BUSY while the running ones finish; if the new open
    /// fails nothing changes.
    #[allow(clippy::too_many_arguments)]
    fn switch(
        &self,
        ctrl: &Controller,
        cfg: &mut ControllerConfig,
        t: u8,
        l: u16,
        path: &Path,
        opts: LunOptions,
        medium_changed: bool,
    ) -> Result<Arc<LogicalUnit>, RpcError> {
        let (bus, entry) = self.find(ctrl, t, l)?;
        let old = entry.lu().clone();
        if !entry.begin_switch(DRAIN_TIMEOUT) {
            entry.abort_switch();
            return Err(err(
                code::BUSY,
                "commands are still running on the LUN after 10 s: retry later",
            ));
        }
        if let Err(e) = old.flush() {
            entry.abort_switch();
            return Err(err(
                code::IO,
                format!("flushing {} failed: {e}", old.path().display()),
            ));
        }
        release_lock(&old);
        let new = match LogicalUnit::open(path, opts) {
            Ok(lu) => Arc::new(lu),
            Err(e) => {
                retake_lock(&old);
                entry.abort_switch();
                return Err(err(code::IMAGE, format!("{e}; nothing was changed")));
            }
        };
        if medium_changed {
            // NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED and a new-media event.
            let _ = new.eject();
            new.load();
        } else {
            new.set_unit_attention(UA_MODE_PARAMETERS_CHANGED);
        }
        let new_entry = Arc::new(LunEntry::new(new.clone()));
        ctrl.bus.store(bus.with_entry(t, l, new_entry.clone()));
        entry.finish_switch(new_entry);
        if let Some(x) = cfg
            .luns
            .iter_mut()
            .find(|x| (x.spec.target, x.spec.lun) == (t, l))
        {
            x.spec.path = path.to_path_buf();
            x.spec.options = new.options().clone();
        }
        Ok(new)
    }

    fn set_read_only(&self, p: ReadOnlyParams) -> Result<Value, RpcError> {
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        let lu = entry.lu().clone();
        if lu.read_only() == p.read_only {
            return Ok(json!({"read_only": p.read_only, "changed": false}));
        }
        if lu.device_type() == DeviceType::Cdrom {
            return Err(err(code::NOT_SUPPORTED, "a CD-ROM is always read-only"));
        }
        let shared = cfg
            .luns
            .iter()
            .any(|x| (x.spec.target, x.spec.lun) == (p.target, p.lun) && x.shared);
        if shared && !p.read_only {
            return Err(err(
                code::NOT_SUPPORTED,
                "the image is shared with other LUNs and must stay read-only",
            ));
        }
        let opts = LunOptions {
            read_only: p.read_only,
            ..lu.options().clone()
        };
        self.switch(ctrl, &mut cfg, p.target, p.lun, lu.path(), opts, false)?;
        Ok(json!({"read_only": p.read_only, "changed": true}))
    }

    fn removable(ctrl: &Controller, entry: &LunEntry, t: u8, l: u16) -> Result<(), RpcError> {
        if entry.lu().options().removable || entry.lu().device_type() == DeviceType::Cdrom {
            Ok(())
        } else {
            Err(err(
                code::NOT_SUPPORTED,
                format!("controller {} target {t} LUN {l} is not removable: media methods need type = \"cdrom\" or removable = true", ctrl.name),
            ))
        }
    }

    fn eject_media(&self, p: EjectParams) -> Result<Value, RpcError> {
        let ctrl = self.controller(p.controller.as_deref())?;
        let _cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        Self::removable(ctrl, &entry, p.target, p.lun)?;
        let lu = entry.lu();
        if p.force {
            lu.set_prevent(false);
        }
        lu.eject().map_err(|_| {
            err(
                code::BUSY,
                "the initiator prevents medium removal (PREVENT ALLOW MEDIUM REMOVAL): retry with force = true",
            )
        })?;
        let _ = lu.flush();
        Ok(json!({"medium_present": false}))
    }

    fn insert_media(&self, p: InsertParams) -> Result<Value, RpcError> {
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        Self::removable(ctrl, &entry, p.target, p.lun)?;
        let lu = entry.lu().clone();
        match &p.image {
            None => {
                lu.load();
                Ok(json!({"medium_present": true, "image": lu.path()}))
            }
            Some(image) => {
                if image.is_relative() {
                    return Err(err(code::INVALID_PARAMS, "image must be an absolute path"));
                }
                if std::fs::canonicalize(image).ok() != std::fs::canonicalize(lu.path()).ok() {
                    self.check_image_free(image, false, (ctrl, &cfg))?;
                }
                let new = self.switch(
                    ctrl,
                    &mut cfg,
                    p.target,
                    p.lun,
                    image,
                    lu.options().clone(),
                    true,
                )?;
                Ok(
                    json!({"medium_present": true, "image": new.path(), "capacity_blocks": new.capacity_blocks()}),
                )
            }
        }
    }

    fn set_fault(&self, p: FaultParams) -> Result<Value, RpcError> {
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        self.find(ctrl, p.target, p.lun)?;
        let spec: FaultSpec = p
            .fault
            .parse()
            .map_err(|e: crate::fault::FaultParseError| err(code::INVALID_PARAMS, e.to_string()))?;
        ctrl.opts.faults.set(p.target, p.lun, spec);
        if let Some(x) = cfg
            .luns
            .iter_mut()
            .find(|x| (x.spec.target, x.spec.lun) == (p.target, p.lun))
        {
            x.fault = Some(p.fault.clone());
        }
        Ok(json!({"fault": p.fault}))
    }

    fn clear_fault(&self, p: Addr) -> Result<Value, RpcError> {
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        self.find(ctrl, p.target, p.lun)?;
        ctrl.opts.faults.clear(p.target, p.lun);
        if let Some(x) = cfg
            .luns
            .iter_mut()
            .find(|x| (x.spec.target, x.spec.lun) == (p.target, p.lun))
        {
            x.fault = None;
        }
        Ok(json!({"fault": null}))
    }
}

fn unknown_lun(ctrl: &Controller, t: u8, l: u16) -> RpcError {
    let have: BTreeMap<String, ()> = ctrl
        .bus
        .load()
        .units()
        .map(|(t, l, _)| (format!("{t}:{l}"), ()))
        .collect();
    err(
        code::UNKNOWN_LUN,
        format!(
            "controller {} has no target {t} LUN {l} (it has {}): check with list",
            ctrl.name,
            if have.is_empty() {
                "none".to_string()
            } else {
                have.into_keys().collect::<Vec<_>>().join(", ")
            }
        ),
    )
}

fn error_response(id: Value, e: RpcError) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}}).to_string()
}
