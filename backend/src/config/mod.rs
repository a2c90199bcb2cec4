//! From a configuration file or command-line LUN specifications to the
//! daemon's controllers and their [`ScsiBus`](crate::scsi::ScsiBus)es.
//!
//! - [`lun_spec`]: positional images and `--lun TARGET:LUN=PATH[,OPTION...]`
//!   (one [`ControllerConfig`]), and the bus they make.
//! - [`lun_fields`]: a `[[controller.lun]]` table or `add_lun` params.
//! - [`file`]: the TOML file ([`load_file`]; every error names the file, the
//!   line and the field) and its resolved form.
//! - [`access`]: socket owner, group and mode; [`metrics_addr`]: where the
//!   Prometheus endpoint may listen.
//!
//! The LUN options' rules are in [`crate::lun_options`], shared by all of
//! them. Every image is opened (and locked) before any socket exists, so a
//! bad image stops the daemon with a message naming it.

pub mod access;
pub mod file;
pub mod lun_fields;
pub mod lun_spec;
pub mod metrics_addr;

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Deserialize;

pub use access::{SocketAccess, CONTROL_SOCKET_MODE, DEFAULT_SOCKET_MODE};
pub use file::{load_file, parse_file};
pub use lun_fields::{LunFields, Wwn};
pub use lun_spec::{build_bus, collect_specs, LunSpec, LUN_OPTIONS_HELP};
pub use metrics_addr::check_metrics_addr;

use crate::scsi::LunOptions;
use crate::vhost::device::OPTIONAL_FEATURES;

/// The options a LUN the daemon serves starts from ([`LunOptions::served`]).
pub fn served_defaults() -> LunOptions {
    LunOptions::served()
}

/// A LUN specification or configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--lun` text that does not parse.
    #[error(
        "bad --lun '{spec}': {why} (expected TARGET:LUN=PATH[,OPTION...], e.g. 0:1=disk1.img,ro)"
    )]
    Syntax {
        /// What the user wrote.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two images at one address.
    #[error("target {target} LUN {lun} is given twice ({first} and {second})")]
    Duplicate {
        /// Target id.
        target: u8,
        /// LUN.
        lun: u16,
        /// First image.
        first: String,
        /// Second image.
        second: String,
    },
    /// One image file at two addresses (each LUN locks its image).
    #[error("image {path} is given twice (target {first_target} LUN {first_lun} and target {target} LUN {lun}): serve each image once, or use --config with shared = true and read_only = true")]
    ImageTwice {
        /// The image, as the second mention spelled it.
        path: String,
        /// Address of the first mention.
        first_target: u8,
        /// LUN of the first mention.
        first_lun: u16,
        /// Address of the second mention.
        target: u8,
        /// LUN of the second mention.
        lun: u16,
    },
    /// Nothing to serve.
    #[error("no image given: pass image paths or --lun TARGET:LUN=PATH")]
    Empty,
    /// An image could not be opened.
    #[error(transparent)]
    Open(#[from] crate::scsi::OpenError),
    /// The SCSI bus refused the LUN.
    #[error("{0}")]
    Bus(String),
    /// A configuration file error, with where it is.
    #[error("{}:{line}: {field}: {message}", .file.display())]
    File {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The field (or table) at fault.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The configuration file cannot be read.
    #[error("cannot read configuration file {}: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// A number or a name (owner, group), or an octal mode written as a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumOrText {
    Num(u64),
    Text(String),
}

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
}

/// The whole daemon configuration, from a file or the command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonConfig {
    /// Control socket (JSON-RPC), if any.
    pub control: Option<PathBuf>,
    /// Prometheus endpoint: `HOST:PORT` on a loopback address, or `unix:PATH`.
    pub metrics: Option<String>,
    /// The controllers.
    pub controllers: Vec<ControllerConfig>,
    /// Busy-poll each request queue this many microseconds after it runs
    /// dry (`--poll-us`; 0: sleep on the kick eventfd at once).
    pub poll_us: u32,
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
            poll_us: 0,
            controllers: vec![ControllerConfig {
                name: "ctrl0".into(),
                socket,
                access: SocketAccess::default(),
                queues,
                queue_size,
                max_sectors: 0xFFFF,
                features: OPTIONAL_FEATURES,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{AioMode, CacheMode};

    #[test]
    fn cache_and_aio_options() {
        let s: LunSpec = "0:0=a.img".parse().unwrap();
        assert_eq!(s.options.cache, CacheMode::Writeback);
        assert_eq!(s.options.aio, AioMode::Auto);
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::Inline);
        let s: LunSpec = "0:0=a.img,cache=none".parse().unwrap();
        assert_eq!(s.options.cache, CacheMode::None);
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::IoUring);
        let s: LunSpec = "0:0=a.img,cache=none,aio=inline".parse().unwrap();
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::Inline);
        let s: LunSpec = "0:0=a.img,cache=writeback,aio=io_uring".parse().unwrap();
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::IoUring);
        for (bad, why) in [
            ("0:0=a.img,cache=unsafe", "cache must be writeback or none"),
            ("0:0=a.img,cache", "cache must be writeback or none"),
            ("0:0=a.img,aio=threads", "aio must be inline or io_uring"),
            ("0:0=a.img,aio=auto", "aio must be inline or io_uring"),
        ] {
            let err = bad.parse::<LunSpec>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }

        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let file = dir.path().join("vscsi.toml");
        let text = |lun: &str| {
            format!(
                "[[controller]]\nsocket = \"{}\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n{lun}\n",
                dir.path().join("s.sock").display(),
                img.display()
            )
        };
        let c = parse_file(&file, &text("cache = \"none\"")).unwrap();
        let printed = c.to_toml();
        assert!(
            printed.contains("cache = \"none\"") && printed.contains("aio = \"io_uring\""),
            "{printed}"
        );
        let c = parse_file(&file, &text("")).unwrap();
        let printed = c.to_toml();
        assert!(
            printed.contains("cache = \"writeback\"") && printed.contains("aio = \"inline\""),
            "{printed}"
        );
        let err = parse_file(&file, &text("cache = \"directsync\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vscsi.toml:") && err.contains(".cache") && err.contains("\"none\""),
            "{err}"
        );
        let err = parse_file(&file, &text("aio = \"native\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains(".aio") && err.contains("io_uring"), "{err}");
    }
}
