//! From a configuration file or command-line LUN specifications to the
//! daemon's controllers and their [`ScsiBus`]es.
//!
//! Command line: positional images become LUNs 0, 1, 2... of target 0, and
//! `--lun TARGET:LUN=PATH[,ro][,bs=N]` places an image anywhere; both map
//! onto one [`ControllerConfig`]. A TOML file ([`load_file`]) describes any
//! number of controllers (one vhost-user socket each) and their LUNs; every
//! error names the file, the line and the field. Every image is opened (and
//! locked) before any socket exists, so a bad image stops the daemon with a
//! message naming it.

use std::fmt::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use vscsi_protocol::lun::MAX_LUN;

use crate::scsi::{DeviceType, LogicalUnit, LunOptions, ScsiBus};
use crate::storage::{AioMode, CacheMode, ImageFormat};
use crate::vhost::device::{
    check_max_queue_size, DEFAULT_MAX_QUEUE_SIZE, DEFAULT_REQUEST_QUEUES, FEATURE_NAMES,
    MAX_REQUEST_QUEUES, OPTIONAL_FEATURES,
};

/// Where one image is served and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// Target id.
    pub target: u8,
    /// LUN number (0..=16383).
    pub lun: u16,
    /// Image path.
    pub path: PathBuf,
    /// How the logical unit presents itself (read-only, block size, device
    /// type, identity, caching...).
    pub options: LunOptions,
}

impl LunSpec {
    /// A disk at `target:lun` with default options.
    pub fn new(target: u8, lun: u16, path: impl Into<PathBuf>) -> Self {
        Self {
            target,
            lun,
            path: path.into(),
            options: served_defaults(),
        }
    }
}

/// The options a LUN the daemon serves starts from: the library's defaults,
/// plus the POWER ON, RESET unit attention a real disk reports to each new
/// initiator (SPC-5 §5.14; the `power-on-ua` option, on unless turned off
/// with `power_on_ua = false`).
pub fn served_defaults() -> LunOptions {
    LunOptions {
        power_on_ua: true,
        ..LunOptions::default()
    }
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

/// The options after `PATH` in `--lun TARGET:LUN=PATH[,OPTION...]`.
pub const LUN_OPTIONS_HELP: &str =
    "ro, rw, bs=512|1024|2048|4096, cdrom, removable, serial=S, wwn=0xNAA, \
vendor=S, product=S, revision=S, rotation=N, pbs=N, wce=0|1, nodiscard, format=raw|qcow2|auto, no-power-on-ua, \
cache=writeback|none, aio=inline|io_uring";

impl FromStr for LunSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::Syntax {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let (addr, rest) = s.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let (t, l) = addr
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between target and LUN"))?;
        let target: u8 = t
            .trim()
            .parse()
            .map_err(|_| bad("target must be 0..=255"))?;
        let lun: u16 = l
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= MAX_LUN)
            .ok_or_else(|| bad("LUN must be 0..=16383"))?;
        let mut parts = rest.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("empty image path"))?;
        let mut spec = LunSpec::new(target, lun, path);
        let o = &mut spec.options;
        for opt in parts {
            let (key, value) = opt
                .split_once('=')
                .map_or((opt, None), |(k, v)| (k, Some(v)));
            let num = |v: Option<&str>| -> Result<u64, ConfigError> {
                let v = v.ok_or_else(|| bad(&format!("{key} needs a value")))?;
                let parsed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.map_err(|_| bad(&format!("{key}={v} is not a number")))
            };
            let text = |v: Option<&str>| -> Result<String, ConfigError> {
                v.map(str::to_string)
                    .ok_or_else(|| bad(&format!("{key} needs a value")))
            };
            match key {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "bs" => {
                    o.block_size = match value {
                        Some("512") => 512,
                        Some("1024") => 1024,
                        Some("2048") => 2048,
                        Some("4096" | "4k" | "4K") => 4096,
                        _ => return Err(bad("bs must be 512, 1024, 2048 or 4096")),
                    }
                }
                "cdrom" => o.device_type = DeviceType::Cdrom,
                "removable" => o.removable = true,
                "serial" => o.serial = Some(text(value)?),
                "wwn" => o.wwn = Some(num(value)?),
                "vendor" => o.vendor = text(value)?,
                "product" => o.product = text(value)?,
                "revision" => o.revision = text(value)?,
                "rotation" => {
                    o.rotation_rate =
                        u16::try_from(num(value)?).map_err(|_| bad("rotation must be 0..=65535"))?
                }
                "pbs" => {
                    o.physical_block_size =
                        u32::try_from(num(value)?).map_err(|_| bad("pbs is too big"))?
                }
                "wce" => {
                    o.write_cache = match value {
                        Some("1") => true,
                        Some("0") => false,
                        _ => return Err(bad("wce must be 0 or 1")),
                    }
                }
                "nodiscard" => o.discard = false,
                "format" => {
                    o.format = value
                        .and_then(ImageFormat::parse)
                        .ok_or_else(|| bad("format must be raw, qcow2 or auto"))?
                }
                "cache" => {
                    o.cache = value
                        .and_then(CacheMode::parse)
                        .ok_or_else(|| bad("cache must be writeback or none"))?
                }
                "aio" => {
                    o.aio = value
                        .and_then(AioMode::parse)
                        .filter(|a| *a != AioMode::Auto)
                        .ok_or_else(|| bad("aio must be inline or io_uring"))?
                }
                "power-on-ua" => o.power_on_ua = true,
                "no-power-on-ua" => o.power_on_ua = false,
                other => {
                    return Err(bad(&format!(
                        "unknown option '{other}' (options: {LUN_OPTIONS_HELP})"
                    )))
                }
            }
        }
        Ok(spec)
    }
}

/// Positional images as LUNs 0, 1, ... of target 0, then the `--lun` specs.
pub fn collect_specs(
    images: &[PathBuf],
    luns: &[LunSpec],
    read_only: bool,
) -> Result<Vec<LunSpec>, ConfigError> {
    let mut specs: Vec<LunSpec> = images
        .iter()
        .enumerate()
        .map(|(i, p)| LunSpec::new(0, i as u16, p))
        .collect();
    specs.extend(luns.iter().cloned());
    for s in &mut specs {
        s.options.read_only |= read_only;
    }
    if specs.is_empty() {
        return Err(ConfigError::Empty);
    }
    for (i, a) in specs.iter().enumerate() {
        if let Some(b) = specs[..i]
            .iter()
            .find(|b| (b.target, b.lun) == (a.target, a.lun))
        {
            return Err(ConfigError::Duplicate {
                target: a.target,
                lun: a.lun,
                first: b.path.display().to_string(),
                second: a.path.display().to_string(),
            });
        }
    }
    let canon: Vec<PathBuf> = specs
        .iter()
        .map(|s| std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone()))
        .collect();
    for (i, a) in specs.iter().enumerate() {
        if let Some(j) = canon[..i].iter().position(|c| *c == canon[i]) {
            return Err(ConfigError::ImageTwice {
                path: a.path.display().to_string(),
                first_target: specs[j].target,
                first_lun: specs[j].lun,
                target: a.target,
                lun: a.lun,
            });
        }
    }
    Ok(specs)
}

/// Opens every image and builds the bus. Fails on the first image that
/// cannot be served, naming it. `max_sectors` is the device's per-command
/// limit, reported by each LU in VPD page B0h.
pub fn build_bus(specs: &[LunSpec], max_sectors: u32) -> Result<ScsiBus, ConfigError> {
    let mut bus = ScsiBus::new();
    for s in specs {
        let opts = LunOptions {
            max_sectors,
            ..s.options.clone()
        };
        let lu = LogicalUnit::open(&s.path, opts)?;
        bus.add_lun(s.target, s.lun, Arc::new(lu))
            .map_err(|e| ConfigError::Bus(e.to_string()))?;
    }
    Ok(bus)
}

/// Default socket mode: owner and group may connect (QEMU often runs as
/// another user of a shared group); never world-writable.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Mode of the control socket and of a unix metrics socket.
pub const CONTROL_SOCKET_MODE: u32 = 0o600;

/// Who may connect to a socket the daemon creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Owner uid to `chown` to (`None`: the daemon's).
    pub uid: Option<u32>,
    /// Group gid to `chown` to (`None`: the daemon's).
    pub gid: Option<u32>,
    /// Permission bits (never world-writable).
    pub mode: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            uid: None,
            gid: None,
            mode: DEFAULT_SOCKET_MODE,
        }
    }
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

    /// The resolved configuration as TOML (what `--check-config` prints):
    /// every default filled in, paths absolute where the file gave them
    /// relative.
    pub fn to_toml(&self) -> String {
        let file = ResolvedFile {
            control: self.control.clone(),
            metrics: self.metrics.clone(),
            controller: self
                .controllers
                .iter()
                .map(|c| ResolvedController {
                    name: c.name.clone(),
                    socket: c.socket.clone(),
                    owner: c.access.uid,
                    group: c.access.gid,
                    mode: format!("{:04o}", c.access.mode),
                    queues: c.queues,
                    queue_size: c.queue_size,
                    max_sectors: c.max_sectors,
                    features: feature_names(c.features),
                    lun: c.luns.iter().map(LunFields::from_config).collect(),
                })
                .collect(),
        };
        toml::to_string(&file).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

#[derive(Serialize)]
struct ResolvedFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    control: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    controller: Vec<ResolvedController>,
}

#[derive(Serialize)]
struct ResolvedController {
    name: String,
    socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<u32>,
    mode: String,
    queues: u16,
    queue_size: u16,
    max_sectors: u32,
    features: Vec<String>,
    lun: Vec<LunFields>,
}

/// A number or a name (owner, group), or an octal mode written as a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    control: Option<Spanned<PathBuf>>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    controller: Vec<Spanned<FileController>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileController {
    name: Option<Spanned<String>>,
    socket: Spanned<PathBuf>,
    owner: Option<Spanned<NumOrText>>,
    group: Option<Spanned<NumOrText>>,
    mode: Option<Spanned<NumOrText>>,
    queues: Option<Spanned<u16>>,
    queue_size: Option<Spanned<u32>>,
    max_sectors: Option<Spanned<u32>>,
    features: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    lun: Vec<Spanned<LunFields>>,
}

/// The fields of one LUN, as written in a `[[controller.lun]]` table of the
/// configuration file or in the `add_lun` control method. Unset fields take
/// the defaults of [`LunOptions`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LunFields {
    /// Target id, 0..=255.
    pub target: u8,
    /// LUN, 0..=16383.
    pub lun: u16,
    /// Image path (relative paths are relative to the configuration file).
    pub image: PathBuf,
    /// Image format: `"auto"` (default: qcow2 when the file starts with the
    /// qcow2 magic, else raw), `"raw"` or `"qcow2"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Host caching: `"writeback"` (default, page cache) or `"none"`
    /// (`O_DIRECT`; raw images only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// READ/WRITE submission: `"inline"` or `"io_uring"` (default:
    /// io_uring with `cache = "none"`, inline with `"writeback"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aio: Option<String>,
    /// `"disk"` (default) or `"cdrom"`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Serve read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Logical block size: 512, 1024, 2048 or 4096.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// RMB: removable medium.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removable: Option<bool>,
    /// INQUIRY vendor (8 ASCII characters at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// INQUIRY product (16 at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// INQUIRY revision (4 at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Unit serial number (64 at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// NAA WWN, as a number or a `"0x..."` string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wwn: Option<Wwn>,
    /// Medium rotation rate (1 = non-rotating).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_rate: Option<u16>,
    /// Physical block size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<u32>,
    /// Initial WCE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_cache: Option<bool>,
    /// Offer thin provisioning when the image can punch holes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discard: Option<bool>,
    /// POWER ON unit attention at each connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_on_ua: Option<bool>,
    /// The image is served by more than one LUN (all read-only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Fault injection, e.g. `"latency=5ms,error=100+8"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

/// A WWN written as a number or as a hexadecimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wwn(pub u64);

impl<'de> Deserialize<'de> for Wwn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => Ok(Wwn(n)),
            NumOrText::Text(t) => {
                let hex = t.strip_prefix("0x").unwrap_or(&t);
                u64::from_str_radix(hex, 16).map(Wwn).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "wwn {t:?} is not a hexadecimal number (e.g. \"0x6001405000000001\")"
                    ))
                })
            }
        }
    }
}

impl Serialize for Wwn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#018x}", self.0))
    }
}

impl LunFields {
    /// The resolved fields of a configured LUN (every option spelled out).
    pub fn from_config(c: &LunConfig) -> LunFields {
        let o = &c.spec.options;
        LunFields {
            target: c.spec.target,
            lun: c.spec.lun,
            image: c.spec.path.clone(),
            format: Some(o.format.as_str().into()),
            cache: Some(o.cache.as_str().into()),
            aio: Some(o.aio.resolve(o.cache).as_str().into()),
            device_type: Some(
                match o.device_type {
                    DeviceType::Disk => "disk",
                    DeviceType::Cdrom => "cdrom",
                }
                .into(),
            ),
            read_only: Some(o.read_only),
            block_size: Some(o.block_size),
            removable: Some(o.removable),
            vendor: Some(o.vendor.clone()),
            product: Some(o.product.clone()),
            revision: Some(o.revision.clone()),
            serial: o.serial.clone(),
            wwn: o.wwn.map(Wwn),
            rotation_rate: Some(o.rotation_rate),
            physical_block_size: Some(o.physical_block_size),
            write_cache: Some(o.write_cache),
            discard: Some(o.discard),
            power_on_ua: Some(o.power_on_ua),
            shared: c.shared,
            fault: c.fault.clone(),
        }
    }

    /// Checks the fields and builds the LUN; `base` resolves a relative
    /// image path. Errors are `(field, message)`.
    pub fn resolve(&self, base: Option<&Path>) -> Result<LunConfig, (&'static str, String)> {
        if self.lun > MAX_LUN {
            return Err((
                "lun",
                format!("LUN {} is out of range: use 0..=16383", self.lun),
            ));
        }
        let mut o = served_defaults();
        if let Some(f) = self.format.as_deref() {
            o.format = ImageFormat::parse(f).ok_or_else(|| {
                (
                    "format",
                    format!("format {f:?} is not supported: use \"raw\", \"qcow2\" or \"auto\""),
                )
            })?;
        }
        if let Some(c) = self.cache.as_deref() {
            o.cache = CacheMode::parse(c).ok_or_else(|| {
                (
                    "cache",
                    format!("cache {c:?} is not supported: use \"writeback\" or \"none\""),
                )
            })?;
        }
        if let Some(a) = self.aio.as_deref() {
            o.aio = AioMode::parse(a)
                .filter(|a| *a != AioMode::Auto)
                .ok_or_else(|| {
                    (
                        "aio",
                        format!("aio {a:?} is not supported: use \"inline\" or \"io_uring\""),
                    )
                })?;
        }
        match self.device_type.as_deref() {
            None | Some("disk") => {}
            Some("cdrom") => o.device_type = DeviceType::Cdrom,
            Some(other) => {
                return Err((
                    "type",
                    format!("type {other:?} is unknown: use \"disk\" or \"cdrom\""),
                ))
            }
        }
        if let Some(v) = self.read_only {
            o.read_only = v;
        }
        if let Some(bs) = self.block_size {
            if !matches!(bs, 512 | 1024 | 2048 | 4096) {
                return Err((
                    "block_size",
                    format!("block size {bs} is not supported: use 512, 1024, 2048 or 4096"),
                ));
            }
            o.block_size = bs;
        }
        if let Some(v) = self.removable {
            o.removable = v;
        }
        let ascii =
            |field: &'static str, v: &str, max: usize| -> Result<String, (&'static str, String)> {
                if v.is_empty() || v.len() > max || !v.bytes().all(|c| (0x20..=0x7E).contains(&c)) {
                    Err((
                        field,
                        format!("{v:?} must be 1 to {max} printable ASCII characters"),
                    ))
                } else {
                    Ok(v.to_string())
                }
            };
        if let Some(v) = &self.vendor {
            o.vendor = ascii("vendor", v, 8)?;
        }
        if let Some(v) = &self.product {
            o.product = ascii("product", v, 16)?;
        }
        if let Some(v) = &self.revision {
            o.revision = ascii("revision", v, 4)?;
        }
        if let Some(v) = &self.serial {
            o.serial = Some(ascii("serial", v, crate::scsi::lu::MAX_SERIAL_LEN)?);
        }
        o.wwn = self.wwn.map(|w| w.0);
        if let Some(v) = self.rotation_rate {
            o.rotation_rate = v;
        }
        if let Some(v) = self.physical_block_size {
            o.physical_block_size = v;
        }
        if let Some(v) = self.write_cache {
            o.write_cache = v;
        }
        if let Some(v) = self.discard {
            o.discard = v;
        }
        if let Some(v) = self.power_on_ua {
            o.power_on_ua = v;
        }
        if let Some(f) = &self.fault {
            f.parse::<crate::fault::FaultSpec>()
                .map_err(|e| ("fault", e.to_string()))?;
        }
        if o.device_type == DeviceType::Cdrom {
            if let Some(bs) = self.block_size.filter(|&bs| bs != CDROM_BLOCK_SIZE) {
                return Err((
                    "block_size",
                    format!(
                        "a CD-ROM has {CDROM_BLOCK_SIZE}-byte blocks (MMC-6 §4.2), not {bs}: \
                         remove block_size or set it to {CDROM_BLOCK_SIZE}"
                    ),
                ));
            }
            cdrom_served(&mut o);
        }
        if self.shared && !o.read_only && o.device_type == DeviceType::Disk {
            return Err((
                "shared",
                "a shared image must be served read-only: add read_only = true".into(),
            ));
        }
        let nbd = self
            .image
            .to_str()
            .is_some_and(crate::storage::nbd::is_nbd_uri);
        let path = match base {
            Some(dir) if self.image.is_relative() && !nbd => dir.join(&self.image),
            _ => self.image.clone(),
        };
        if !nbd {
            check_image(&path, o.block_size).map_err(|m| ("image", m))?;
        }
        Ok(LunConfig {
            spec: LunSpec {
                target: self.target,
                lun: self.lun,
                path,
                options: o,
            },
            shared: self.shared,
            fault: self.fault.clone(),
        })
    }
}

/// The block size of a CD-ROM LUN (MMC-6 §4.2: 2048-byte user data sectors).
const CDROM_BLOCK_SIZE: u32 = 2048;

/// What a CD-ROM LUN is served as, whatever the disk defaults said, so
/// that `--check-config` prints it: read-only, 2048-byte blocks, removable,
/// no UNMAP, product `VIRTUAL-CDROM` unless one was given. The logical
/// unit applies the same when it opens the image.
fn cdrom_served(o: &mut LunOptions) {
    let disk_product = LunOptions::default().product;
    o.block_size = CDROM_BLOCK_SIZE;
    o.read_only = true;
    o.removable = true;
    o.discard = false;
    o.physical_block_size = 0;
    if o.product == disk_product {
        o.product = "VIRTUAL-CDROM".into();
    }
}

/// The image exists, is a regular file or a block device, and holds at
/// least one block. (Opening and locking happens when it is served.)
fn check_image(path: &Path, block_size: u32) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "image {} does not exist: create it (e.g. truncate -s 1G {}) or fix the path",
            path.display(),
            path.display()
        ),
        _ => format!("image {} cannot be read: {e}", path.display()),
    })?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(format!(
            "image {} is not a regular file or block device",
            path.display()
        ));
    }
    if ft.is_file() && meta.len() < u64::from(block_size) {
        return Err(format!(
            "image {} is {} bytes, smaller than one {block_size}-byte block: nothing to serve",
            path.display(),
            meta.len()
        ));
    }
    Ok(())
}

/// 1-based line of byte `offset` in `src`.
fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Looks a user or group up by name in `/etc/passwd` or `/etc/group`
/// (third field); a number is taken as is.
fn lookup_id(db: &str, v: &NumOrText) -> Result<u32, String> {
    match v {
        NumOrText::Num(n) => u32::try_from(*n).map_err(|_| format!("{n} is not a valid id")),
        NumOrText::Text(name) => {
            if let Ok(n) = name.parse::<u32>() {
                return Ok(n);
            }
            let text = std::fs::read_to_string(db).unwrap_or_default();
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let n = f.next()?;
                    let id = f.nth(1)?;
                    (n == name).then(|| id.parse::<u32>().ok()).flatten()
                })
                .next()
                .ok_or_else(|| format!("{name:?} is not in {db}: give a name from it or a number"))
        }
    }
}

/// Parses a socket mode written as an octal string (`"0660"`); refuses
/// world-writable modes.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    mode_of(&NumOrText::Text(text.to_string()))
}

/// A socket mode: a TOML integer (`0o660`) or an octal string (`"0660"`).
fn mode_of(v: &NumOrText) -> Result<u32, String> {
    let mode = match v {
        NumOrText::Num(n) => u32::try_from(*n).map_err(|_| format!("mode {n} is too big"))?,
        NumOrText::Text(t) => {
            let digits = t.strip_prefix("0o").unwrap_or(t);
            u32::from_str_radix(digits, 8)
                .map_err(|_| format!("mode {t:?} is not an octal number (e.g. \"0660\")"))?
        }
    };
    if mode > 0o777 {
        return Err(format!(
            "mode {mode:o} has bits beyond 0777: give permission bits only"
        ));
    }
    if mode & 0o002 != 0 {
        return Err(format!(
            "mode {mode:04o} is world-writable: anyone could connect; use 0660 with a group, or 0600"
        ));
    }
    Ok(mode)
}

/// Reads, checks and resolves a configuration file. Nothing is opened or
/// created: images are only checked to exist and hold a block.
pub fn load_file(file: &Path) -> Result<DaemonConfig, ConfigError> {
    let src = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse_file(file, &src)
}

/// [`load_file`] on text already read; `file` names it in errors and
/// anchors relative paths.
pub fn parse_file(file: &Path, src: &str) -> Result<DaemonConfig, ConfigError> {
    let at = |span: Range<usize>, field: &str, message: String| ConfigError::File {
        file: file.to_owned(),
        line: line_of(src, span.start),
        field: field.to_string(),
        message,
    };
    let raw: FileConfig = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        // The key of the line the error is on, else the text at the span.
        let line_start = src
            .get(..span.start)
            .and_then(|b| b.rfind('\n'))
            .map_or(0, |i| i + 1);
        let key = src
            .get(line_start..)
            .and_then(|l| l.lines().next())
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        let field = key
            .or_else(|| {
                src.get(span.clone())
                    .map(|t| {
                        t.lines()
                            .next()
                            .unwrap_or("")
                            .trim()
                            .chars()
                            .take(40)
                            .collect::<String>()
                    })
                    .filter(|t| !t.is_empty())
            })
            .unwrap_or_else(|| "(syntax)".into());
        at(span, &field, e.message().trim().to_string())
    })?;
    let base = file.parent().map(|p| {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
    });
    let abs = |p: &Path| -> PathBuf {
        match &base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.to_path_buf(),
        }
    };
    if raw.controller.is_empty() {
        return Err(at(
            0..0,
            "controller",
            "no [[controller]] table: add one with a socket path and its [[controller.lun]] tables"
                .into(),
        ));
    }
    let control = raw.control.as_ref().map(|c| abs(c.get_ref()));
    let metrics = raw.metrics.as_ref().map(|m| m.get_ref().clone());
    if let Some(m) = &raw.metrics {
        check_metrics_addr(m.get_ref()).map_err(|msg| at(m.span(), "metrics", msg))?;
    }
    let mut out = DaemonConfig {
        control: control.clone(),
        metrics,
        poll_us: 0,
        controllers: Vec::new(),
    };
    // Every image seen: canonical path → (line, shared).
    let mut images: Vec<(PathBuf, usize, bool)> = Vec::new();
    for (i, c) in raw.controller.iter().enumerate() {
        let cspan = c.span();
        let c = c.get_ref();
        let name = match &c.name {
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref().len() <= 64
                    && n.get_ref()
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
                if !ok {
                    return Err(at(
                        n.span(),
                        "name",
                        format!(
                            "controller name {:?} must be 1-64 of A-Z a-z 0-9 - _ .",
                            n.get_ref()
                        ),
                    ));
                }
                n.get_ref().clone()
            }
            None => format!("ctrl{i}"),
        };
        if out.controllers.iter().any(|o| o.name == name) {
            return Err(at(
                cspan.clone(),
                "name",
                format!(
                    "controller name {name:?} is used twice: give each controller its own name"
                ),
            ));
        }
        let socket = abs(c.socket.get_ref());
        if out.controllers.iter().any(|o| o.socket == socket) || control.as_ref() == Some(&socket) {
            return Err(at(
                c.socket.span(),
                "socket",
                format!("socket {} is used twice: give each controller (and the control socket) its own path", socket.display()),
            ));
        }
        let mut access = SocketAccess::default();
        if let Some(m) = &c.mode {
            access.mode = mode_of(m.get_ref()).map_err(|msg| at(m.span(), "mode", msg))?;
        }
        if let Some(o) = &c.owner {
            access.uid = Some(
                lookup_id("/etc/passwd", o.get_ref()).map_err(|msg| at(o.span(), "owner", msg))?,
            );
        }
        if let Some(g) = &c.group {
            access.gid = Some(
                lookup_id("/etc/group", g.get_ref()).map_err(|msg| at(g.span(), "group", msg))?,
            );
        }
        let queues = match &c.queues {
            Some(q) if !(1..=MAX_REQUEST_QUEUES).contains(q.get_ref()) => {
                return Err(at(
                    q.span(),
                    "queues",
                    format!(
                        "{} request queues: use 1..={MAX_REQUEST_QUEUES}",
                        q.get_ref()
                    ),
                ))
            }
            Some(q) => *q.get_ref(),
            None => DEFAULT_REQUEST_QUEUES,
        };
        let queue_size = match &c.queue_size {
            Some(q) => {
                check_max_queue_size(*q.get_ref()).map_err(|msg| at(q.span(), "queue_size", msg))?
            }
            None => DEFAULT_MAX_QUEUE_SIZE,
        };
        let max_sectors = match &c.max_sectors {
            Some(m) if *m.get_ref() == 0 => {
                return Err(at(m.span(), "max_sectors", "must be at least 1".into()))
            }
            Some(m) => *m.get_ref(),
            None => 0xFFFF,
        };
        let features = match &c.features {
            None => OPTIONAL_FEATURES,
            Some(f) => {
                let mut mask = 0;
                for name in f.get_ref() {
                    let Some((_, bit)) = FEATURE_NAMES.iter().find(|(n, _)| n == name) else {
                        let known: Vec<_> = FEATURE_NAMES.iter().map(|(n, _)| *n).collect();
                        return Err(at(
                            f.span(),
                            "features",
                            format!("unknown feature '{name}' (known: {})", known.join(", ")),
                        ));
                    };
                    mask |= bit;
                }
                mask
            }
        };
        let mut luns: Vec<(LunConfig, usize)> = Vec::new();
        for l in &c.lun {
            let span = l.span();
            let line = line_of(src, span.start);
            let fields = l.get_ref();
            let lc = fields.resolve(base.as_deref()).map_err(|(field, msg)| {
                at(
                    span.clone(),
                    &format!(
                        "controller[{i}].lun (target {} lun {}).{field}",
                        fields.target, fields.lun
                    ),
                    msg,
                )
            })?;
            if let Some((_, first)) = luns
                .iter()
                .find(|(o, _)| (o.spec.target, o.spec.lun) == (lc.spec.target, lc.spec.lun))
            {
                return Err(at(
                    span,
                    &format!("controller[{i}].lun"),
                    format!(
                        "target {} LUN {} is already defined at line {first}: give each LUN its own address",
                        lc.spec.target, lc.spec.lun
                    ),
                ));
            }
            let canon =
                std::fs::canonicalize(&lc.spec.path).unwrap_or_else(|_| lc.spec.path.clone());
            if let Some((_, first, first_shared)) = images.iter().find(|(p, _, _)| *p == canon) {
                if !(lc.shared && *first_shared) {
                    return Err(at(
                        span,
                        &format!("controller[{i}].lun (target {} lun {}).image", lc.spec.target, lc.spec.lun),
                        format!(
                            "image {} is also served at line {first}: set shared = true (and read_only = true) on both, or use another image",
                            lc.spec.path.display()
                        ),
                    ));
                }
            }
            images.push((canon, line, lc.shared));
            luns.push((lc, line));
        }
        out.controllers.push(ControllerConfig {
            name,
            socket,
            access,
            queues,
            queue_size,
            max_sectors,
            features,
            luns: luns.into_iter().map(|(l, _)| l).collect(),
        });
    }
    Ok(out)
}

/// The configuration names of the optional features in `mask`.
fn feature_names(mask: u64) -> Vec<String> {
    FEATURE_NAMES
        .iter()
        .filter(|(_, bit)| mask & bit != 0)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// A metrics address: `unix:PATH`, or `HOST:PORT` on a loopback address.
pub fn check_metrics_addr(addr: &str) -> Result<(), String> {
    if let Some(p) = addr.strip_prefix("unix:") {
        return if p.is_empty() {
            Err("unix: needs a path, e.g. unix:/run/vscsi/metrics.sock".into())
        } else {
            Ok(())
        };
    }
    let parsed: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not HOST:PORT (e.g. 127.0.0.1:9420) or unix:PATH"))?;
    if !parsed.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: metrics are served on localhost only (127.0.0.1 or [::1]) or a unix socket"
        ));
    }
    Ok(())
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

    #[test]
    fn parses_lun_specs() {
        let s: LunSpec = "1:5=/x/y.img,ro".parse().unwrap();
        let o = &s.options;
        assert_eq!(
            (s.target, s.lun, o.read_only, o.block_size),
            (1, 5, true, 512)
        );
        assert_eq!(s.path, PathBuf::from("/x/y.img"));
        let s: LunSpec = "0:16383=a.img,bs=4096".parse().unwrap();
        assert_eq!((s.lun, s.options.block_size), (16383, 4096));
        let s: LunSpec = "2:3=cd.iso,cdrom,serial=ABC,wwn=0x6001405000000001,wce=0,rotation=7200,nodiscard,power-on-ua"
            .parse()
            .unwrap();
        let o = &s.options;
        assert_eq!(o.device_type, DeviceType::Cdrom);
        assert_eq!(o.serial.as_deref(), Some("ABC"));
        assert_eq!(o.wwn, Some(0x6001_4050_0000_0001));
        assert_eq!((o.write_cache, o.rotation_rate), (false, 7200));
        assert!(!o.discard && o.power_on_ua);
        assert_eq!(o.format, ImageFormat::Auto);
        for (spec, format) in [
            ("0:0=a.img,format=qcow2", ImageFormat::Qcow2),
            ("0:0=a.img,format=raw", ImageFormat::Raw),
            ("0:0=a.img,format=auto", ImageFormat::Auto),
        ] {
            let s: LunSpec = spec.parse().unwrap();
            assert_eq!(s.options.format, format);
        }
        for bad in ["0:0=a.img,format=vmdk", "0:0=a.img,format"] {
            assert!(bad.parse::<LunSpec>().is_err(), "{bad}");
        }
        for bad in [
            "0:1",
            "a:1=x",
            "0=x",
            "0:16384=x",
            "256:0=x",
            "0:0=",
            "0:0=x,fast",
            "0:0=x,bs=1000",
            "0:0=x,wce=2",
            "0:0=x,serial",
            "0:0=x,rotation=70000",
        ] {
            let err = bad.parse::<LunSpec>().unwrap_err().to_string();
            assert!(err.contains("expected TARGET:LUN=PATH"), "{bad}: {err}");
        }
    }

    #[test]
    fn positional_images_are_target_0_and_duplicates_refused() {
        let specs = collect_specs(&["a".into(), "b".into()], &[], false).unwrap();
        assert_eq!(
            specs.iter().map(|s| (s.target, s.lun)).collect::<Vec<_>>(),
            vec![(0, 0), (0, 1)]
        );
        let dup: LunSpec = "0:1=c".parse().unwrap();
        let err = collect_specs(&["a".into(), "b".into()], &[dup], false).unwrap_err();
        assert!(
            err.to_string().contains("target 0 LUN 1 is given twice"),
            "{err}"
        );
        assert!(matches!(
            collect_specs(&[], &[], false),
            Err(ConfigError::Empty)
        ));
    }

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

    #[test]
    fn controllers_choose_the_features_they_offer() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let file = dir.path().join("vscsi.toml");
        let text = |features: &str| {
            format!(
                "[[controller]]\nsocket = \"{}\"\n{features}\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n",
                dir.path().join("s.sock").display(),
                img.display()
            )
        };
        let all = parse_file(&file, &text("")).unwrap();
        assert_eq!(all.controllers[0].features, OPTIONAL_FEATURES);
        let some = parse_file(&file, &text("features = [\"event_idx\", \"hotplug\"]")).unwrap();
        let mask = some.controllers[0].features;
        assert_eq!(feature_names(mask), vec!["event_idx", "hotplug"]);
        let err = parse_file(&file, &text("features = [\"packed\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vscsi.toml:3") && err.contains("unknown feature 'packed'"),
            "{err}"
        );
        assert!(some
            .to_toml()
            .contains("features = [\"event_idx\", \"hotplug\"]"));
    }
}
