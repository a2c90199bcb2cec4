//! The daemon loop: one vhost-user socket, served connection after
//! connection, until SIGINT/SIGTERM.
//!
//! `VhostUserDaemon` serves a single connection, so each frontend gets a
//! fresh [`ScsiDevice`] and daemon on the same persistent listener: a
//! frontend that disconnects (or crashes) leaves the next one a clean
//! device, and the socket path never disappears while the daemon runs.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::scsi::lu::UA_POWER_ON_RESET;
use crate::scsi::ScsiBus;
use crate::vhost::{DeviceOptions, ScsiDevice};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Something that is not a socket sits at the socket path.
    #[error("{0} exists and is not a socket: refusing to replace it (choose another --socket path or remove the file)")]
    NotASocket(PathBuf),
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
}

/// Shared between the serving loop and whoever asks it to stop.
#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    current: Mutex<Option<ShutdownHandle>>,
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
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Creates the listening socket, refusing to clobber anything but a stale socket.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(DaemonError::NotASocket(path.to_owned()));
        }
        // A socket file left by a daemon that is gone; a live one would keep
        // its images locked, which the caller found out before getting here.
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Serves `bus` on `listener` until `shutdown` is requested.
pub fn serve(
    listener: UnixListener,
    bus: Arc<ScsiBus>,
    opts: DeviceOptions,
    shutdown: Arc<Shutdown>,
) -> Result<(), DaemonError> {
    let mut listener = Listener::from(listener);
    let mut connection = 0u64;
    while !shutdown.requested() {
        let device = Arc::new(
            ScsiDevice::new(bus.clone(), opts.clone())
                .map_err(|e| DaemonError::VhostUser(e.to_string()))?,
        );
        let mut daemon = VhostUserDaemon::new(
            "vscsi-vhost-user".to_string(),
            device.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| DaemonError::VhostUser(format!("{e:?}")))?;
        if let Err(e) = daemon.start(&mut listener) {
            if shutdown.requested() {
                break;
            }
            warn!(error = ?e, "accepting a frontend failed; waiting for the next one");
            continue;
        }
        connection += 1;
        info!(connection, "frontend connected");
        // A new frontend is a new I_T nexus: LUs that model a real disk's
        // power-on report it (SPC-5 §5.14, POWER ON, RESET, OR BUS DEVICE RESET).
        for (_, _, lu) in bus.units() {
            if lu.options().power_on_ua {
                lu.set_unit_attention(UA_POWER_ON_RESET);
            }
        }
        *shutdown.current.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
        if shutdown.requested() {
            daemon.request_shutdown();
        }
        match daemon.wait() {
            Ok(()) => info!(connection, "frontend disconnected"),
            Err(e) => warn!(connection, error = ?e, "frontend connection ended with an error"),
        }
        *shutdown.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        device.stop_workers();
        if let Err(e) = bus.flush_all() {
            error!(error = %e, "flushing images after a disconnect failed");
        }
    }
    Ok(())
}
