//! The daemon loop: one vhost-user socket per controller, served
//! connection after connection, until SIGINT/SIGTERM.
//!
//! `VhostUserDaemon` serves a single connection, so each frontend gets a
//! fresh [`ScsiDevice`] and daemon on the same persistent listener: a
//! frontend that disconnects (or crashes) leaves the next one a clean
//! device, and the socket path never disappears while the daemon runs.
//! Each controller has its own listener, accept thread and [`BusHandle`]:
//! a frontend reaches only the targets of the socket it connected to.
//!
//! Every connect and disconnect is an audit event (`target: "vscsi::audit"`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::SocketAccess;
use crate::scsi::target::BusHandle;

use tracing::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;

use crate::scsi::ScsiBus;
use crate::vhost::dirty::GuestMem;
use crate::vhost::{DeviceOptions, ScsiDevice};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Something that is not a socket sits at the socket path.
    #[error("{0} exists and is not a socket: refusing to replace it (choose another --socket path or remove the file)")]
    NotASocket(PathBuf),
    /// A live process answers on the socket path: replacing the socket would
    /// leave it running but unreachable.
    #[error("{path} is in use: {} is listening on it (stop it or choose another socket path)", match .pid { Some(p) => format!("process {p}"), None => "another process".to_string() })]
    InUse {
        /// Socket path.
        path: PathBuf,
        /// The listener's pid, from the probe connection's `SO_PEERCRED`.
        pid: Option<i32>,
    },
    /// Binding the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The vhost-user layer failed in a way that is not a disconnect.
    #[error("vhost-user: {0}")]
    VhostUser(String),
    /// Setting the socket's owner or mode failed.
    #[error("cannot set owner/mode of {path}: {source} (the daemon must run as root to give a socket to another user)")]
    Access {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Connection counters of one controller.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Frontends connected now (0 or 1).
    pub connected: AtomicU64,
    /// Frontends accepted since start.
    pub total: AtomicU64,
}

/// Shared between the serving loop and whoever asks it to stop.
#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    current: Mutex<Option<ShutdownHandle>>,
    /// A duplicate of the listening socket, shut down to wake `accept()`:
    /// the wake-up must not depend on the socket path, which may have been
    /// removed or taken over.
    listener: Mutex<Option<OwnedFd>>,
}

impl Shutdown {
    /// Asks the daemon to stop: the current connection is closed, and the
    /// loop exits instead of accepting another one.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(h) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.shutdown();
        }
        wake_listener(&self.listener);
    }

    /// Registers the listener whose `accept()` [`Shutdown::request`] wakes.
    fn watch_listener(&self, listener: &UnixListener) {
        let fd = listener.try_clone().ok().map(OwnedFd::from);
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = fd;
        // A request that came before the listener was registered.
        if self.requested() {
            wake_listener(&self.listener);
        }
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// How long a connection arriving while a frontend is served waits for that
/// frontend to end before it is refused as busy.
const BUSY_GRACE_MS: i32 = 300;

/// While a frontend is connected, accepts every other connection on the
/// same socket and closes it (after [`BUSY_GRACE_MS`]): vhost-user has one
/// frontend per socket, and a connection left in the listen backlog would
/// wait forever without a word. The frontend sees the close before its
/// first reply. Logged at most once a second, with the count since the
/// last line.
struct BusyRefuser {
    stop: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyRefuser {
    fn start(listener: &mut Listener, name: &str, socket: &str) -> Self {
        let idle = Self {
            stop: None,
            thread: None,
        };
        // SAFETY: the fd is the open listening socket `listener` owns; it
        // is only borrowed here to be duplicated.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(listener.as_raw_fd()) };
        let Ok(fd) = borrowed.try_clone_to_owned() else {
            return idle;
        };
        let accept = UnixListener::from(fd);
        let Ok((stop, stopped)) = UnixStream::pair() else {
            return idle;
        };
        let (name, socket) = (name.to_string(), socket.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("{name}-busy"))
            .spawn(move || refuse_until(&accept, &stopped, &name, &socket))
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for BusyRefuser {
    fn drop(&mut self) {
        // Closing our end makes the refuser's poll() see a hang-up.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn refuse_until(accept: &UnixListener, stopped: &UnixStream, name: &str, socket: &str) {
    let mut refused = 0u64;
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: accept.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stopped.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            // The listener was shut down (stopping) or failed.
            return;
        }
        // A frontend that closes and at once connects again (a `vscsi` verb
        // after another, a VM rebooting) may arrive before this connection
        // has noticed its end: give the current one a moment to end, and if
        // it does, leave the new connection to the serving loop's accept.
        let mut grace = [libc::pollfd {
            fd: stopped.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `grace` is a valid array of one pollfd for the call.
        if unsafe { libc::poll(grace.as_mut_ptr(), 1, BUSY_GRACE_MS) } != 0 {
            return;
        }
        match accept.accept() {
            Ok((stream, _)) => drop(stream),
            Err(_) => return,
        }
        refused += 1;
        if last_log.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
            warn!(target: "vscsi::audit", controller = name, socket, action = "connect", result = "refused", refused, "closed a connection: another frontend is connected (one frontend per controller socket)");
            refused = 0;
            last_log = Some(std::time::Instant::now());
        }
    }
}

/// `shutdown(2)` of a listening unix socket makes a blocked (and every later)
/// `accept()` on it fail at once (EINVAL), whatever happened to its path.
fn wake_listener(listener: &Mutex<Option<OwnedFd>>) {
    if let Some(fd) = listener.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        // SAFETY: `fd` is an open socket owned by `listener` for this call;
        // shutdown(2) takes no pointers.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Whether a process listens on the socket at `path`: `Some(pid)` (the pid
/// when `SO_PEERCRED` tells it) if a connection succeeds, `None` for a stale
/// socket (nothing listening).
fn live_listener(path: &Path) -> Option<Option<i32>> {
    let stream = UnixStream::connect(path).ok()?;
    Some(
        crate::peer::credentials(&stream)
            .map(|c| c.pid)
            .filter(|&pid| pid > 0),
    )
}

/// Creates the listening socket with the default access (mode 0660, the
/// daemon's user and group), refusing to clobber anything but a stale socket.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    bind_with(path, &SocketAccess::default())
}

/// Creates the listening socket with `access`, refusing to clobber anything
/// but a stale socket.
///
/// The socket is bound inside a fresh mode-0700 directory next to `path`,
/// given its owner and mode there, and only then renamed into place: no
/// one can connect while it still has the umask's permissions.
pub fn bind_with(path: &Path, access: &SocketAccess) -> Result<UnixListener, DaemonError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(DaemonError::NotASocket(path.to_owned()));
        }
        if let Some(pid) = live_listener(path) {
            return Err(DaemonError::InUse {
                path: path.to_owned(),
                pid,
            });
        }
    }
    let bind_err = |source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| bind_err(std::io::Error::other("the socket path has no file name")))?;
    let staging = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(bind_err)?;
    }
    let staged = staging.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&staged).map_err(bind_err)?;
        let access_err = |source| DaemonError::Access {
            path: path.to_owned(),
            source,
        };
        if access.uid.is_some() || access.gid.is_some() {
            std::os::unix::fs::chown(&staged, access.uid, access.gid).map_err(access_err)?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(access.mode))
            .map_err(access_err)?;
        // Replaces a stale socket left by a daemon that is gone (checked
        // above to be a socket nobody answers on).
        std::fs::rename(&staged, path).map_err(bind_err)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Serves `bus` on `listener` until `shutdown` is requested.
pub fn serve(
    listener: UnixListener,
    bus: Arc<ScsiBus>,
    opts: DeviceOptions,
    shutdown: Arc<Shutdown>,
) -> Result<(), DaemonError> {
    let handle = BusHandle::new((*bus).clone());
    serve_controller(
        listener,
        &handle,
        opts,
        shutdown,
        "ctrl0",
        &ConnectionStats::default(),
    )
}

/// Serves the controller `name` (its run-time bus `bus`) on `listener`
/// until `shutdown` is requested.
///
/// Each connection gets a fresh device over the controller's run-time bus:
/// LUNs added or removed through the control socket take effect at once on
/// a connected frontend (which also gets a hot-plug event).
pub fn serve_controller(
    listener: UnixListener,
    bus: &BusHandle,
    opts: DeviceOptions,
    shutdown: Arc<Shutdown>,
    name: &str,
    stats: &ConnectionStats,
) -> Result<(), DaemonError> {
    // The path the listener was bound to (before `bind_with` renamed it into place).
    let socket = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_default();
    let socket = match socket.rsplit_once(".tmp/") {
        Some((dir, _)) => dir
            .rsplit_once("/.")
            .map(|(d, f)| format!("{d}/{}", f.rsplit_once('.').map_or(f, |x| x.0)))
            .unwrap_or(socket.clone()),
        None => socket,
    };
    shutdown.watch_listener(&listener);
    let mut listener = Listener::from(listener);
    let mut connection = 0u64;
    while !shutdown.requested() {
        // Each connection is its own I_T nexus (see scsi::nexus).
        let nexus = Arc::new(opts.nexus.for_connection(connection + 1));
        let device = Arc::new(
            ScsiDevice::new(
                bus.clone(),
                DeviceOptions {
                    nexus: nexus.clone(),
                    controller: Arc::from(name),
                    ..opts.clone()
                },
            )
            .map_err(|e| DaemonError::VhostUser(e.to_string()))?,
        );
        let mut daemon = VhostUserDaemon::new(
            "vscsi-vhost-user".to_string(),
            device.clone(),
            GuestMemoryAtomic::new(GuestMem::new()),
        )
        .map_err(|e| DaemonError::VhostUser(format!("{e:?}")))?;
        // io_uring completions wake the request queue workers (aio=io_uring).
        device.register_completion_listeners(&daemon.get_epoll_handlers());
        if let Err(e) = daemon.start(&mut listener) {
            if shutdown.requested() {
                break;
            }
            warn!(error = ?e, "accepting a frontend failed; waiting for the next one");
            continue;
        }
        if shutdown.requested() {
            // The connection that woke accept() up to stop, not a frontend.
            daemon.request_shutdown();
            let _ = daemon.wait();
            device.stop_workers();
            break;
        }
        connection += 1;
        // Ring-contract logs name the connection.
        let trust = &opts.queue_metrics.trust;
        trust.connection.store(connection, Ordering::Relaxed);
        stats.total.fetch_add(1, Ordering::Relaxed);
        stats.connected.fetch_add(1, Ordering::Relaxed);
        info!(target: "vscsi::audit", controller = name, socket = %socket, connection, action = "connect", result = "ok", "frontend connected");
        // A new frontend is a new I_T nexus: LUs that model a real disk's
        // power-on report it (SPC-5 §5.14, POWER ON, RESET, OR BUS DEVICE RESET).
        // For this nexus alone: the other paths of a shared LU are not told.
        for (_, _, lu) in bus.load().units() {
            if lu.options().power_on_ua {
                lu.nexus_power_on(&nexus);
            }
        }
        *shutdown.current.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
        if shutdown.requested() {
            daemon.request_shutdown();
        }
        let refuser = BusyRefuser::start(&mut listener, name, &socket);
        let ended = daemon.wait();
        drop(refuser);
        // Taken off the rings and not completed when the connection ended
        // (split rings with an inflight region): completed below, or left
        // to the next daemon if this one is killed first.
        let in_flight = device.inflight_heads();
        match ended {
            // A frontend closing its socket (QEMU powering off) is the normal end.
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => {
                info!(target: "vscsi::audit", controller = name, socket = %socket, connection, action = "disconnect", in_flight, result = "ok", "frontend disconnected")
            }
            Err(e) => {
                trust.dropped_connections.fetch_add(1, Ordering::Relaxed);
                warn!(target: "vscsi::audit", controller = name, socket = %socket, connection, action = "disconnect", in_flight, result = "error", error = ?e, "frontend connection ended with an error");
                if let Some(why) = device.explain_refusal(&e) {
                    warn!(controller = name, connection, "{why}");
                }
            }
        }
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        *shutdown.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        device.stop_workers();
        // The workers end (joined) with the daemon: every request they
        // took is completed, unless it is still in the region.
        drop(daemon);
        // A worker may have started transfers after the first drain.
        device.drain_in_flight();
        device.release_held();
        let left = device.inflight_heads();
        if in_flight > 0 || left > 0 {
            info!(target: "vscsi::audit", controller = name, connection, action = "inflight-drain", in_flight, left, result = if left == 0 { "ok" } else { "error" },
                "requests in flight at the disconnect completed before the next connection");
        }
        // I_T nexus loss (SAM-5 §6.3.4): what the connection held goes.
        bus.load().nexus_lost(&nexus);
        if let Err(e) = bus.load().flush_all() {
            error!(error = %e, "flushing images after a disconnect failed");
        }
    }
    Ok(())
}
