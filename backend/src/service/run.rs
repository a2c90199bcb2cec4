//! Serving a [`DaemonConfig`] until a signal or the `shutdown` method: every
//! image opened, every socket bound (before anything is served, so a bad
//! path stops the daemon before a frontend could connect), one thread per
//! controller, the control socket and the metrics endpoint, and on the way
//! out every image flushed and every socket file removed.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{error, info};

use super::{metrics, Service};
use crate::config::{self, DaemonConfig, SocketAccess};
use crate::daemon::{self, DaemonError};

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An image or LUN of the configuration cannot be served.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A socket cannot be bound, or a controller failed while serving.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The signal handlers cannot be installed.
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A controller thread panicked.
    #[error("a controller thread panicked")]
    Panicked,
    /// Flushing the images on the way out failed.
    #[error("flushing images: {0}")]
    Flush(#[source] std::io::Error),
}

/// Builds the service from `cfg` and serves it until it is stopped
/// (SIGINT, SIGTERM, the `shutdown` method, or a controller failing, which
/// stops the others).
pub fn run(cfg: &DaemonConfig) -> Result<(), RunError> {
    let service = Arc::new(Service::build(cfg)?);
    for c in &cfg.controllers {
        for l in &c.luns {
            info!(controller = %c.name, target = l.spec.target, lun = l.spec.lun, image = %l.spec.path.display(), read_only = l.spec.options.read_only, "serving");
        }
    }
    // Before any socket appears: a SIGTERM right after it must stop cleanly.
    install_signals(&service)?;
    let mut created: Vec<PathBuf> = Vec::new();
    let result = bind_and_serve(cfg, &service, &mut created);
    service.shutdown();
    let flushed = service.flush_all();
    for p in &created {
        let _ = std::fs::remove_file(p);
    }
    result?;
    flushed.map_err(RunError::Flush)?;
    info!("stopped");
    Ok(())
}

/// Binds every socket (recording each file it creates in `created`), then
/// serves until every controller thread has returned.
fn bind_and_serve(
    cfg: &DaemonConfig,
    service: &Arc<Service>,
    created: &mut Vec<PathBuf>,
) -> Result<(), RunError> {
    let mut listeners = Vec::new();
    for c in &cfg.controllers {
        listeners.push(daemon::bind_with(&c.socket, &c.access)?);
        created.push(c.socket.clone());
        info!(controller = %c.name, socket = %c.socket.display(), mode = format!("{:04o}", c.access.mode), "listening");
    }
    let control: Option<UnixListener> = match &cfg.control {
        Some(p) => {
            let access = SocketAccess {
                mode: config::CONTROL_SOCKET_MODE,
                ..Default::default()
            };
            let l = daemon::bind_with(p, &access)?;
            created.push(p.clone());
            info!(socket = %p.display(), "control socket listening");
            Some(l)
        }
        None => None,
    };
    let metrics_listener = match &cfg.metrics {
        Some(addr) => {
            let l = metrics::bind(addr)?;
            if let Some(p) = addr.strip_prefix("unix:") {
                created.push(PathBuf::from(p));
            }
            info!(address = %addr, "metrics endpoint listening");
            Some(l)
        }
        None => None,
    };
    if let Some(l) = control {
        let s = service.clone();
        std::thread::spawn(move || s.serve_control(l));
    }
    if let Some(l) = metrics_listener {
        let s = service.clone();
        std::thread::spawn(move || metrics::serve(s, l));
    }
    let threads: Vec<JoinHandle<Result<(), DaemonError>>> = service
        .controllers()
        .iter()
        .zip(listeners)
        .map(|(c, l)| {
            let c = c.clone();
            let service = service.clone();
            std::thread::spawn(move || {
                let r = daemon::serve_controller(
                    l,
                    &c.bus,
                    c.opts.clone(),
                    c.shutdown.clone(),
                    &c.name,
                    &c.connections,
                );
                if let Err(e) = &r {
                    error!(controller = %c.name, error = %e, "controller stopped");
                    // One controller failing stops the daemon: the others
                    // would otherwise keep running half of the service.
                    service.shutdown();
                }
                r
            })
        })
        .collect();
    let mut first = Ok(());
    for t in threads {
        let r = match t.join() {
            Ok(r) => r.map_err(RunError::from),
            Err(_) => Err(RunError::Panicked),
        };
        if first.is_ok() {
            first = r;
        }
    }
    first
}

fn install_signals(service: &Arc<Service>) -> Result<(), RunError> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(RunError::Signals)?;
    let service = service.clone();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            info!(signal = sig, "stopping");
            service.shutdown();
        }
    });
    Ok(())
}
