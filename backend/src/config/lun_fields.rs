//! The fields of one LUN as a `[[controller.lun]]` table of the
//! configuration file and the params of the `add_lun` control method write
//! them: read into a [`LunRequest`], whose rules are in
//! [`crate::lun_options`].

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vscsi_protocol::lun::MAX_LUN;

use super::access::NumOrText;
use super::lun_spec::LunSpec;
use super::model::LunConfig;
use crate::lun_options::{parse_wwn, LunOption, LunOptionError, LunRequest, Spelling};

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
    /// The image is served by more than one LUN: read-only LUNs each, or
    /// one writable logical unit on several controllers (multipath).
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
            NumOrText::Text(t) => parse_wwn(&t)
                .map(Wwn)
                .map_err(|e| serde::de::Error::custom(e.message(Spelling::Field))),
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
            device_type: Some(o.device_type.as_str().into()),
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

    /// The options asked for, read into the one [`LunRequest`].
    pub fn request(&self) -> Result<LunRequest, LunOptionError> {
        let mut r = LunRequest {
            read_only: self.read_only,
            block_size: self.block_size,
            removable: self.removable,
            wwn: self.wwn.map(|w| w.0),
            rotation_rate: self.rotation_rate,
            physical_block_size: self.physical_block_size,
            write_cache: self.write_cache,
            discard: self.discard,
            power_on_ua: self.power_on_ua,
            ..LunRequest::default()
        };
        for (option, text) in [
            (LunOption::Format, &self.format),
            (LunOption::Cache, &self.cache),
            (LunOption::Aio, &self.aio),
            (LunOption::DeviceType, &self.device_type),
            (LunOption::Vendor, &self.vendor),
            (LunOption::Product, &self.product),
            (LunOption::Revision, &self.revision),
            (LunOption::Serial, &self.serial),
        ] {
            if let Some(text) = text {
                r.set_text(option, text)?;
            }
        }
        Ok(r)
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
        let o = self
            .request()
            .and_then(|r| r.resolve())
            .map_err(|e| (e.option.field(), e.message(Spelling::Field)))?;
        if let Some(f) = &self.fault {
            f.parse::<crate::fault::FaultSpec>()
                .map_err(|e| ("fault", e.to_string()))?;
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
