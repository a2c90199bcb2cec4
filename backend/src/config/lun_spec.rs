//! The command line's LUNs: positional images and `--lun
//! TARGET:LUN=PATH[,OPTION...]` specs, read into a [`LunRequest`] (the
//! options' rules are in [`crate::lun_options`]), and the bus they make.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use vscsi_protocol::lun::MAX_LUN;

use super::error::ConfigError;
use crate::lun_options::{DeviceType, LunOption, LunRequest, Spelling};
use crate::scsi::{LogicalUnit, LunOptions, ScsiBus};

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
    /// A disk at `target:lun` with the options a served LUN starts from
    /// ([`LunOptions::served`]).
    pub fn new(target: u8, lun: u16, path: impl Into<PathBuf>) -> Self {
        Self {
            target,
            lun,
            path: path.into(),
            options: LunOptions::served(),
        }
    }
}

/// The options after `PATH` in `--lun TARGET:LUN=PATH[,OPTION...]`.
pub const LUN_OPTIONS_HELP: &str =
    "ro, rw, bs=512|1024|2048|4096, cdrom, removable, serial=S, wwn=0xNAA, \
vendor=S, product=S, revision=S, rotation=N, pbs=N, wce=0|1, nodiscard, format=raw|qcow2|auto, no-power-on-ua, \
cache=writeback|none, aio=inline|io_uring";

/// One `KEY[=VALUE]` of a `--lun` spec into `r`. Errors are the reason,
/// in the command line's spelling.
fn set_cli_option(r: &mut LunRequest, key: &str, value: Option<&str>) -> Result<(), String> {
    let num = |v: Option<&str>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{key} needs a value"))?;
        let parsed = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        };
        parsed.map_err(|_| format!("{key}={v} is not a number"))
    };
    let text = |option: LunOption, r: &mut LunRequest| {
        r.set_text(option, value.unwrap_or(""))
            .map_err(|e| e.message(Spelling::Cli))
    };
    match key {
        "ro" => r.read_only = Some(true),
        "rw" => r.read_only = Some(false),
        "bs" => {
            let v = match value {
                Some("4k" | "4K") => 4096,
                v => u32::try_from(num(v)?).map_err(|_| "bs is too big".to_string())?,
            };
            r.block_size = Some(v);
        }
        "cdrom" => r.device_type = Some(DeviceType::Cdrom),
        "removable" => r.removable = Some(true),
        "serial" => text(LunOption::Serial, r)?,
        "wwn" => text(LunOption::Wwn, r)?,
        "vendor" => text(LunOption::Vendor, r)?,
        "product" => text(LunOption::Product, r)?,
        "revision" => text(LunOption::Revision, r)?,
        "rotation" => {
            r.rotation_rate = Some(
                u16::try_from(num(value)?).map_err(|_| "rotation must be 0..=65535".to_string())?,
            )
        }
        "pbs" => {
            r.physical_block_size =
                Some(u32::try_from(num(value)?).map_err(|_| "pbs is too big".to_string())?)
        }
        "wce" => {
            r.write_cache = Some(match value {
                Some("1") => true,
                Some("0") => false,
                _ => return Err("wce must be 0 or 1".into()),
            })
        }
        "nodiscard" => r.discard = Some(false),
        "format" => text(LunOption::Format, r)?,
        "cache" => text(LunOption::Cache, r)?,
        "aio" => text(LunOption::Aio, r)?,
        "power-on-ua" => r.power_on_ua = Some(true),
        "no-power-on-ua" => r.power_on_ua = Some(false),
        other => {
            return Err(format!(
                "unknown option '{other}' (options: {LUN_OPTIONS_HELP})"
            ))
        }
    }
    Ok(())
}

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
        let mut request = LunRequest::default();
        for opt in parts {
            let (key, value) = opt
                .split_once('=')
                .map_or((opt, None), |(k, v)| (k, Some(v)));
            set_cli_option(&mut request, key, value).map_err(|why| bad(&why))?;
        }
        let options = request
            .resolve()
            .map_err(|e| bad(&e.message(Spelling::Cli)))?;
        Ok(LunSpec {
            target,
            lun,
            path: path.into(),
            options,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::DeviceType;
    use crate::storage::ImageFormat;

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
}
