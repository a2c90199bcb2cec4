//! The resolved configuration: the daemon, its controllers and their LUNs,
//! whichever way they were described.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::access::SocketAccess;
use super::lun_spec::LunSpec;
use crate::cpu_list::CpuList;
use crate::vhost::device::{Poll, DEFAULT_POLL, OPTIONAL_FEATURES};

/// One LUN of a controller, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunConfig {
    /// Address, image and options.
    pub spec: LunSpec,
    /// The image may also be served by another LUN (read-only everywhere).
    pub shared: bool,
    /// Fault injection spec (see [`crate::fault::FaultSpec`]), if any.
    pub fault: Option<String>,
}

/// One controller: one vhost-user socket, its own SCSI domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Name (unique; used by the control socket and in metrics labels).
    pub name: String,
    /// vhost-user socket path.
    pub socket: PathBuf,
    /// Owner, group and mode of the socket.
    pub access: SocketAccess,
    /// Request queues offered.
    pub queues: u16,
    /// Largest virtqueue size the frontend may use.
    pub queue_size: u16,
    /// Largest transfer per command in 512-byte sectors.
    pub max_sectors: u32,
    /// Optional virtio features offered (a mask of
    /// [`crate::vhost::device::FEATURE_NAMES`]); all of them by default.
    pub features: u64,
    /// The LUNs.
    pub luns: Vec<LunConfig>,
    /// CPUs its request-queue workers are pinned to, round robin (`cpus`,
    /// `--cpus`); None: unpinned.
    pub cpus: Option<CpuList>,
}

/// The whole daemon configuration, from a file or the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Control socket (JSON-RPC), if any.
    pub control: Option<PathBuf>,
    /// Prometheus endpoint: `HOST:PORT` on a loopback address, or `unix:PATH`.
    pub metrics: Option<String>,
    /// The controllers.
    pub controllers: Vec<ControllerConfig>,
    /// How each request queue waits once it runs dry (`--poll`,
    /// `--poll-us`, the file's `poll` and `poll_us`).
    pub poll: Poll,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            control: None,
            metrics: None,
            controllers: Vec::new(),
            poll: DEFAULT_POLL,
        }
    }
}

impl DaemonConfig {
    /// The one-socket configuration the command-line flags describe.
    pub fn from_cli(
        socket: PathBuf,
        specs: Vec<LunSpec>,
        queues: u16,
        queue_size: u16,
    ) -> DaemonConfig {
        DaemonConfig {
            control: None,
            metrics: None,
            poll: DEFAULT_POLL,
            controllers: vec![ControllerConfig {
                name: "ctrl0".into(),
                socket,
                access: SocketAccess::default(),
                queues,
                queue_size,
                max_sectors: 0xFFFF,
                features: OPTIONAL_FEATURES,
                cpus: None,
                luns: specs
                    .into_iter()
                    .map(|spec| LunConfig {
                        spec,
                        shared: false,
                        fault: None,
                    })
                    .collect(),
            }],
        }
    }
}

/// Describes a resolved configuration in a few lines per controller.
pub fn summary(cfg: &DaemonConfig) -> String {
    let mut s = String::new();
    for c in &cfg.controllers {
        let _ = writeln!(
            s,
            "controller {} on {} (mode {:04o}, {} queue(s) of up to {}): {} LUN(s)",
            c.name,
            c.socket.display(),
            c.access.mode,
            c.queues,
            c.queue_size,
            c.luns.len()
        );
    }
    s
}
