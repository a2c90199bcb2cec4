//! Methods that change a LUN in place: `resize_lun`, `set_read_only`,
//! `eject_media`, `insert_media`. A change that needs the image re-opened
//! (`switch`) waits for the commands in flight; if the new open fails
//! nothing changes.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::luns::{release_lock, retake_lock};
use super::rpc::{code, err, params, RpcError};
use super::{notify_frontends, Change, Controller, Service, DRAIN_TIMEOUT};
use crate::config::ControllerConfig;
use crate::scsi::lu::UA_MODE_PARAMETERS_CHANGED;
use crate::scsi::target::LunEntry;
use crate::scsi::{DeviceType, LogicalUnit, LunOptions};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    size: Value,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadOnlyParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EjectParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InsertParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    image: Option<PathBuf>,
}

fn parse_size(v: &Value) -> Result<u64, RpcError> {
    let bad = || {
        err(
            code::INVALID_PARAMS,
            format!(
                "size {v} is not a size: give bytes (a number) or a string like \"48M\", \"2G\""
            ),
        )
    };
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim();
            let (num, mult) = match s.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => {
                    let m: u64 = match c.to_ascii_uppercase() {
                        'K' => 1 << 10,
                        'M' => 1 << 20,
                        'G' => 1 << 30,
                        'T' => 1 << 40,
                        _ => return Err(bad()),
                    };
                    (&s[..i], m)
                }
                _ => (s, 1),
            };
            num.parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

impl Service {
    pub(super) fn resize_lun(&self, p: &Value) -> Result<Value, RpcError> {
        let p: ResizeParams = params(p)?;
        let ctrl = self.controller(p.controller.as_deref())?;
        let _cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        let lu = entry.lu();
        if lu.device_type() == DeviceType::Cdrom {
            return Err(err(
                code::NOT_SUPPORTED,
                "a CD-ROM cannot be resized: insert another medium with insert_media",
            ));
        }
        if lu.image().format() == crate::storage::ImageFormat::Qcow2 {
            // Its capacity is the qcow2 virtual size, not the file length:
            // truncating the file would corrupt it.
            return Err(err(
                code::NOT_SUPPORTED,
                "a qcow2 LUN cannot be resized here: resize it offline with qemu-img resize, then remove_lun and add_lun it",
            ));
        }
        if lu.read_only() {
            return Err(err(
                code::NOT_SUPPORTED,
                "the LUN is read-only: make it writable with set_read_only first",
            ));
        }
        let size = parse_size(&p.size)?;
        let bs = u64::from(lu.block_size());
        if size < bs || size % bs != 0 {
            return Err(err(
                code::BAD_SIZE,
                format!("size {size} is not a positive multiple of the {bs}-byte block size"),
            ));
        }
        let old = lu.capacity_blocks() * bs;
        if size < old && !p.force {
            return Err(err(
                code::BAD_SIZE,
                format!("shrinking from {old} to {size} bytes loses the data past the new end: pass force = true to do it"),
            ));
        }
        let file_len = lu
            .image()
            .file()
            .and_then(|f| f.metadata().ok())
            .map_or(old, |m| m.len());
        let f = OpenOptions::new()
            .write(true)
            .open(lu.path())
            .map_err(|e| {
                err(
                    code::IO,
                    format!("cannot open {} to resize it: {e}", lu.path().display()),
                )
            })?;
        if let Err(e) = f.set_len(size) {
            return Err(err(
                code::IO,
                format!("cannot resize {}: {e}", lu.path().display()),
            ));
        }
        if let Err(e) = lu.refresh_capacity() {
            let _ = f.set_len(file_len);
            return Err(err(
                code::IO,
                format!("the new size cannot be served ({e}); the image was set back"),
            ));
        }
        let notified = notify_frontends(ctrl, p.target, p.lun, Change::CapacityChanged);
        Ok(json!({
            "old_size": old,
            "new_size": size,
            "capacity_blocks": lu.capacity_blocks(),
            "frontends_notified": notified,
        }))
    }

    /// Re-opens the LU at (t, l) with `opts` (and maybe another image):
    /// new commands get BUSY while the running ones finish; if the new open
    /// fails nothing changes.
    #[allow(clippy::too_many_arguments)]
    fn switch(
        &self,
        ctrl: &Controller,
        cfg: &mut ControllerConfig,
        t: u8,
        l: u16,
        path: &Path,
        opts: LunOptions,
        medium_changed: bool,
    ) -> Result<Arc<LogicalUnit>, RpcError> {
        let (bus, entry) = self.find(ctrl, t, l)?;
        let old = entry.lu().clone();
        if !entry.begin_switch(DRAIN_TIMEOUT) {
            entry.abort_switch();
            return Err(err(
                code::BUSY,
                "commands are still running on the LUN after 10 s: retry later",
            ));
        }
        if let Err(e) = old.flush() {
            entry.abort_switch();
            return Err(err(
                code::IO,
                format!("flushing {} failed: {e}", old.path().display()),
            ));
        }
        release_lock(&old);
        let new = match LogicalUnit::open(path, opts) {
            Ok(lu) => Arc::new(lu),
            Err(e) => {
                retake_lock(&old);
                entry.abort_switch();
                return Err(err(code::IMAGE, format!("{e}; nothing was changed")));
            }
        };
        // The same logical unit: its reservations carry over.
        new.reservations().adopt(old.reservations());
        if medium_changed {
            // NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED and a new-media event.
            let _ = new.eject();
            new.load();
        } else {
            new.set_unit_attention(UA_MODE_PARAMETERS_CHANGED);
        }
        let new_entry = Arc::new(LunEntry::new(new.clone()));
        ctrl.bus.store(bus.with_entry(t, l, new_entry.clone()));
        entry.finish_switch(new_entry);
        if let Some(x) = cfg
            .luns
            .iter_mut()
            .find(|x| (x.spec.target, x.spec.lun) == (t, l))
        {
            x.spec.path = path.to_path_buf();
            x.spec.options = new.options().clone();
        }
        Ok(new)
    }

    pub(super) fn set_read_only(&self, p: &Value) -> Result<Value, RpcError> {
        let p: ReadOnlyParams = params(p)?;
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        let lu = entry.lu().clone();
        if lu.read_only() == p.read_only {
            return Ok(json!({"read_only": p.read_only, "changed": false}));
        }
        if lu.device_type() == DeviceType::Cdrom {
            return Err(err(code::NOT_SUPPORTED, "a CD-ROM is always read-only"));
        }
        let shared = cfg
            .luns
            .iter()
            .any(|x| (x.spec.target, x.spec.lun) == (p.target, p.lun) && x.shared);
        if shared {
            return Err(err(
                code::NOT_SUPPORTED,
                "the image is shared (shared = true): its write protection cannot change while it is served",
            ));
        }
        let opts = LunOptions {
            read_only: p.read_only,
            ..lu.options().clone()
        };
        self.switch(ctrl, &mut cfg, p.target, p.lun, lu.path(), opts, false)?;
        Ok(json!({"read_only": p.read_only, "changed": true}))
    }

    fn removable(ctrl: &Controller, entry: &LunEntry, t: u8, l: u16) -> Result<(), RpcError> {
        if entry.lu().options().removable || entry.lu().device_type() == DeviceType::Cdrom {
            Ok(())
        } else {
            Err(err(
                code::NOT_SUPPORTED,
                format!("controller {} target {t} LUN {l} is not removable: media methods need type = \"cdrom\" or removable = true", ctrl.name),
            ))
        }
    }

    pub(super) fn eject_media(&self, p: &Value) -> Result<Value, RpcError> {
        let p: EjectParams = params(p)?;
        let ctrl = self.controller(p.controller.as_deref())?;
        let _cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        Self::removable(ctrl, &entry, p.target, p.lun)?;
        let lu = entry.lu();
        if p.force {
            lu.set_prevent(false);
        }
        lu.eject().map_err(|_| {
            err(
                code::BUSY,
                "the initiator prevents medium removal (PREVENT ALLOW MEDIUM REMOVAL): retry with force = true",
            )
        })?;
        let _ = lu.flush();
        Ok(json!({"medium_present": false}))
    }

    pub(super) fn insert_media(&self, p: &Value) -> Result<Value, RpcError> {
        let p: InsertParams = params(p)?;
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        let (_, entry) = self.find(ctrl, p.target, p.lun)?;
        Self::removable(ctrl, &entry, p.target, p.lun)?;
        let lu = entry.lu().clone();
        match &p.image {
            None => {
                lu.load();
                Ok(json!({"medium_present": true, "image": lu.path()}))
            }
            Some(image) => {
                if image.is_relative() {
                    return Err(err(code::INVALID_PARAMS, "image must be an absolute path"));
                }
                if std::fs::canonicalize(image).ok() != std::fs::canonicalize(lu.path()).ok() {
                    self.check_image_free(image, false, (ctrl, &cfg))?;
                }
                let new = self.switch(
                    ctrl,
                    &mut cfg,
                    p.target,
                    p.lun,
                    image,
                    lu.options().clone(),
                    true,
                )?;
                Ok(
                    json!({"medium_present": true, "image": new.path(), "capacity_blocks": new.capacity_blocks()}),
                )
            }
        }
    }
}
