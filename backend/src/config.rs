//! From command-line LUN specifications to a [`ScsiBus`].
//!
//! Two forms, mappable onto one structure: positional images become LUNs
//! 0, 1, 2... of target 0, and `--lun TARGET:LUN=PATH[,ro][,bs=N]` places an
//! image anywhere. Every image is opened (and locked) here, before any
//! socket exists, so a bad image stops the daemon with a message naming it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use vscsi_protocol::lun::MAX_LUN;

use crate::scsi::{DeviceType, LogicalUnit, LunOptions, ScsiBus};

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
            options: LunOptions::default(),
        }
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
    /// Nothing to serve.
    #[error("no image given: pass image paths or --lun TARGET:LUN=PATH")]
    Empty,
    /// An image could not be opened.
    #[error(transparent)]
    Open(#[from] crate::scsi::OpenError),
    /// The SCSI bus refused the LUN.
    #[error("{0}")]
    Bus(String),
}

/// The options after `PATH` in `--lun TARGET:LUN=PATH[,OPTION...]`.
pub const LUN_OPTIONS_HELP: &str =
    "ro, rw, bs=512|1024|2048|4096, cdrom, removable, serial=S, wwn=0xNAA, \
vendor=S, product=S, revision=S, rotation=N, pbs=N, wce=0|1, nodiscard, power-on-ua";

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
                "power-on-ua" => o.power_on_ua = true,
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
}
