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
    /// Refuse writes (DATA PROTECT) and open the image read-only.
    pub read_only: bool,
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
}

/// A LUN specification or configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--lun` text that does not parse.
    #[error("bad --lun '{spec}': {why} (expected TARGET:LUN=PATH[,ro][,bs=512|4096], e.g. 0:1=disk1.img,ro)")]
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
        let mut spec = LunSpec {
            target,
            lun,
            path: PathBuf::from(path),
            read_only: false,
            block_size: 512,
        };
        for opt in parts {
            match opt {
                "ro" => spec.read_only = true,
                "rw" => spec.read_only = false,
                o if o.starts_with("bs=") => {
                    spec.block_size = match &o[3..] {
                        "512" => 512,
                        "4096" | "4k" | "4K" => 4096,
                        _ => return Err(bad("bs must be 512 or 4096")),
                    }
                }
                other => return Err(bad(&format!("unknown option '{other}'"))),
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
        .map(|(i, p)| LunSpec {
            target: 0,
            lun: i as u16,
            path: p.clone(),
            read_only,
            block_size: 512,
        })
        .collect();
    for l in luns {
        let mut l = l.clone();
        l.read_only |= read_only;
        specs.push(l);
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
/// cannot be served, naming it.
pub fn build_bus(specs: &[LunSpec]) -> Result<ScsiBus, ConfigError> {
    let mut bus = ScsiBus::new();
    for s in specs {
        let opts = LunOptions {
            read_only: s.read_only,
            block_size: s.block_size,
            ..LunOptions::default()
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
        assert_eq!(
            (s.target, s.lun, s.read_only, s.block_size),
            (1, 5, true, 512)
        );
        assert_eq!(s.path, PathBuf::from("/x/y.img"));
        let s: LunSpec = "0:16383=a.img,bs=4096".parse().unwrap();
        assert_eq!((s.lun, s.block_size), (16383, 4096));
        for bad in [
            "0:1",
            "a:1=x",
            "0=x",
            "0:16384=x",
            "256:0=x",
            "0:0=",
            "0:0=x,fast",
            "0:0=x,bs=1000",
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
