//! `add_lun` and `remove_lun`: hot-plug, with the image checked free
//! first and the frontends told on their event queue.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::warn;

use super::rpc::{code, err, params, RpcError};
use super::{notify_frontends, Change, Controller, Service, DRAIN_TIMEOUT};
use crate::config::{ControllerConfig, LunConfig, LunFields};
use crate::fault::FaultSpec;
use crate::scsi::target::LunEntry;
use crate::scsi::{LogicalUnit, LunOptions, ScsiBus};
use crate::storage::lock::{self, Lock};

/// The address of one LUN.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Addr {
    pub(super) controller: Option<String>,
    pub(super) target: u8,
    pub(super) lun: u16,
}

/// Releases the `flock` of a LU that is fenced off, so its image can be
/// served again (by another LUN, another daemon, or re-opened) while the
/// descriptor itself closes when the last bus snapshot holding it is gone.
pub(super) fn release_lock(lu: &LogicalUnit) {
    // An NBD image has no file to lock.
    let Some(file) = lu.image().file() else {
        return;
    };
    if let Err(e) = lock::set(file, Lock::Unlock) {
        warn!(image = %lu.path().display(), error = %e, "releasing the image lock failed");
    }
}

/// Takes the lock of a LU back after a failed switch.
pub(super) fn retake_lock(lu: &LogicalUnit) {
    let Some(file) = lu.image().file() else {
        return;
    };
    if let Err(e) = lock::set(file, Lock::for_access(lu.read_only())) {
        warn!(image = %lu.path().display(), error = %e, "taking the image lock back failed");
    }
}

/// The `add_lun` params: the controller's name, if given, and the LUN's
/// fields.
pub(super) fn lun_params(p: &Value) -> Result<(Option<String>, LunFields), RpcError> {
    let mut p = if p.is_null() { json!({}) } else { p.clone() };
    let name = match p.as_object_mut() {
        Some(o) => match o.remove("controller") {
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(_) => return Err(err(code::INVALID_PARAMS, "\"controller\" must be a string")),
        },
        None => return Err(err(code::INVALID_PARAMS, "params must be an object")),
    };
    let fields: LunFields = serde_json::from_value(p)
        .map_err(|e| err(code::INVALID_PARAMS, format!("bad params: {e}")))?;
    Ok((name, fields))
}

/// The LUN the `add_lun` fields describe, by the same rules as a
/// `[[controller.lun]]` table; the image must be an absolute path.
pub(super) fn resolve_lun(fields: &LunFields) -> Result<LunConfig, RpcError> {
    if fields.image.is_relative()
        && !fields
            .image
            .to_str()
            .is_some_and(crate::storage::nbd::is_nbd_uri)
    {
        return Err(err(
            code::INVALID_PARAMS,
            format!(
                "image {} must be an absolute path (the daemon's working directory is not yours)",
                fields.image.display()
            ),
        ));
    }
    fields.resolve(None).map_err(|(field, msg)| {
        let c = if field == "image" {
            code::IMAGE
        } else {
            code::INVALID_PARAMS
        };
        err(c, format!("{field}: {msg}"))
    })
}

impl Service {
    /// Whether `path` is served anywhere now; with `shared`, only a LUN
    /// also marked shared may serve it.
    ///
    /// `held` is the controller whose configuration the caller has locked
    /// (and its configuration); the others are locked one at a time.
    pub(super) fn check_image_free(
        &self,
        path: &Path,
        shared: bool,
        held: (&Controller, &ControllerConfig),
    ) -> Result<(), RpcError> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        for c in &self.controllers {
            let cfg = if std::ptr::eq(c.as_ref(), held.0) {
                held.1.clone()
            } else {
                c.config()
            };
            for (t, l, lu) in c.bus.load().units() {
                let other =
                    std::fs::canonicalize(lu.path()).unwrap_or_else(|_| lu.path().to_path_buf());
                if other == canon {
                    let other_shared = cfg
                        .luns
                        .iter()
                        .any(|x| (x.spec.target, x.spec.lun) == (t, l) && x.shared);
                    if !(shared && other_shared) {
                        return Err(err(
                            code::IMAGE,
                            format!(
                                "image {} is already served by controller {} target {t} LUN {l}: remove it there first, or set shared = true on both",
                                path.display(),
                                c.name
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The logical unit another controller already serves for the shared
    /// LUN `lc` (the same image with the same options `opts`: multipath),
    /// if any. A writable shared image served with other options, or by
    /// `ctrl` itself, is refused (one logical unit, one LUN per controller).
    fn shared_unit(
        &self,
        lc: &crate::config::LunConfig,
        opts: &LunOptions,
        ctrl: &Controller,
    ) -> Result<Option<Arc<LogicalUnit>>, RpcError> {
        if !lc.shared {
            return Ok(None);
        }
        let canon = std::fs::canonicalize(&lc.spec.path).unwrap_or_else(|_| lc.spec.path.clone());
        for c in &self.controllers {
            for (t, l, lu) in c.bus.load().units() {
                let other =
                    std::fs::canonicalize(lu.path()).unwrap_or_else(|_| lu.path().to_path_buf());
                if other != canon {
                    continue;
                }
                let same_ctrl = std::ptr::eq(c.as_ref(), ctrl);
                if lu.opened_with() == opts && !same_ctrl {
                    return Ok(Some(lu.clone()));
                }
                if !(opts.read_only && lu.read_only()) {
                    return Err(err(
                        code::IMAGE,
                        format!(
                            "image {} is served writable by controller {} target {t} LUN {l}: a writable shared image is one logical unit, served once per controller with the same options",
                            lc.spec.path.display(),
                            c.name
                        ),
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Whether a controller other than `ctrl` serves `lu` (a shared LU).
    fn served_elsewhere(&self, ctrl: &Controller, lu: &Arc<LogicalUnit>) -> bool {
        self.controllers.iter().any(|c| {
            !std::ptr::eq(c.as_ref(), ctrl)
                && c.bus.load().units().any(|(_, _, x)| Arc::ptr_eq(x, lu))
        })
    }

    pub(super) fn add_lun(&self, p: &Value) -> Result<Value, RpcError> {
        let (name, fields) = lun_params(p)?;
        let ctrl = self.controller(name.as_deref())?;
        let lc = resolve_lun(&fields)?;
        let mut cfg = ctrl.lock();
        let (t, l) = (lc.spec.target, lc.spec.lun);
        let current = ctrl.bus.load_full();
        if current.entry(t, l).is_some() {
            return Err(err(
                code::LUN_EXISTS,
                format!("controller {} already has target {t} LUN {l}: remove it first or choose another LUN", ctrl.name),
            ));
        }
        self.check_image_free(&lc.spec.path, lc.shared, (ctrl, &cfg))?;
        let fault = match &lc.fault {
            Some(f) => Some(
                f.parse::<FaultSpec>()
                    .map_err(|e| err(code::INVALID_PARAMS, e.to_string()))?,
            ),
            None => None,
        };
        let opts = LunOptions {
            max_sectors: cfg.max_sectors,
            ..lc.spec.options.clone()
        };
        let lu = match self.shared_unit(&lc, &opts, ctrl)? {
            Some(lu) => lu,
            None => Arc::new(
                LogicalUnit::open(&lc.spec.path, opts)
                    .map_err(|e| err(code::IMAGE, e.to_string()))?,
            ),
        };
        let next = current
            .with_lun(t, l, lu.clone())
            .map_err(|e| err(code::INVALID_PARAMS, e.to_string()))?;
        // The LUs already on the target learn of the new one (SPC-5:
        // REPORTED LUNS DATA HAS CHANGED); the new one starts clean.
        if let Some(target) = current.target(t) {
            target.report_luns_changed();
        }
        if let Some(f) = fault {
            ctrl.opts.faults.set(t, l, f);
        }
        ctrl.bus.store(next);
        cfg.luns.push(lc);
        drop(cfg);
        let notified = notify_frontends(ctrl, t, l, Change::Added);
        Ok(json!({
            "controller": ctrl.name,
            "target": t,
            "lun": l,
            "capacity_blocks": lu.capacity_blocks(),
            "block_size": lu.block_size(),
            "frontends_notified": notified,
        }))
    }

    pub(super) fn remove_lun(&self, p: &Value) -> Result<Value, RpcError> {
        let p: Addr = params(p)?;
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        let (t, l) = (p.target, p.lun);
        let current = ctrl.bus.load_full();
        let Some((next, entry)) = current.without_lun(t, l) else {
            return Err(unknown_lun(ctrl, t, l));
        };
        // New commands see the LUN gone from here on (through this bus and
        // through any snapshot that still holds the entry).
        ctrl.bus.store(next);
        let drained = entry.fence(DRAIN_TIMEOUT);
        if !drained {
            warn!(controller = %ctrl.name, target_id = t, lun = l, in_flight = entry.in_flight(), "commands still running after the drain timeout; flushing anyway");
        }
        if let Some(target) = ctrl.bus.load().target(t) {
            target.report_luns_changed();
        }
        let flushed = entry.lu().flush();
        // A logical unit shared with another controller stays served
        // there, with its lock and its reservations.
        if !self.served_elsewhere(ctrl, entry.lu()) {
            release_lock(entry.lu());
        }
        ctrl.opts.faults.clear(t, l);
        cfg.luns.retain(|x| (x.spec.target, x.spec.lun) != (t, l));
        drop(cfg);
        let notified = notify_frontends(ctrl, t, l, Change::Removed);
        if let Err(e) = &flushed {
            return Err(err(
                code::IO,
                format!(
                    "LUN removed, but flushing {} failed: {e}; check the image",
                    entry.lu().path().display()
                ),
            ));
        }
        Ok(json!({
            "controller": ctrl.name,
            "target": t,
            "lun": l,
            "image": entry.lu().path(),
            "drained": drained,
            "flushed": true,
            "frontends_notified": notified,
        }))
    }

    pub(super) fn find(
        &self,
        ctrl: &Controller,
        t: u8,
        l: u16,
    ) -> Result<(Arc<ScsiBus>, Arc<LunEntry>), RpcError> {
        let bus = ctrl.bus.load_full();
        let entry = bus
            .entry(t, l)
            .cloned()
            .ok_or_else(|| unknown_lun(ctrl, t, l))?;
        Ok((bus, entry))
    }
}

fn unknown_lun(ctrl: &Controller, t: u8, l: u16) -> RpcError {
    let have: BTreeMap<String, ()> = ctrl
        .bus
        .load()
        .units()
        .map(|(t, l, _)| (format!("{t}:{l}"), ()))
        .collect();
    err(
        code::UNKNOWN_LUN,
        format!(
            "controller {} has no target {t} LUN {l} (it has {}): check with list",
            ctrl.name,
            if have.is_empty() {
                "none".to_string()
            } else {
                have.into_keys().collect::<Vec<_>>().join(", ")
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_file, DaemonConfig, LunSpec};

    fn image(dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        p
    }

    /// The same LUN options written as a `--lun` spec, a configuration-file
    /// table and `add_lun` params: each case is accepted by all three, with
    /// the same resolved options, or refused by all three.
    #[test]
    fn cli_toml_and_rpc_accept_and_refuse_the_same_options() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "d.img");
        let cases: Vec<(&str, &str, Value, bool)> = vec![
            (
                "revision=",
                "revision = \"\"",
                json!({"revision": ""}),
                false,
            ),
            (
                "revision=R1",
                "revision = \"R1\"",
                json!({"revision": "R1"}),
                true,
            ),
            (
                "revision=R12345",
                "revision = \"R12345\"",
                json!({"revision": "R12345"}),
                false,
            ),
            (
                "vendor=TOOLONGVENDOR",
                "vendor = \"TOOLONGVENDOR\"",
                json!({"vendor": "TOOLONGVENDOR"}),
                false,
            ),
            (
                "product=tab\there",
                "product = \"tab\\there\"",
                json!({"product": "tab\there"}),
                false,
            ),
            ("serial=", "serial = \"\"", json!({"serial": ""}), false),
            (
                "serial=ABC",
                "serial = \"ABC\"",
                json!({"serial": "ABC"}),
                true,
            ),
            (
                "bs=4096",
                "block_size = 4096",
                json!({"block_size": 4096}),
                true,
            ),
            (
                "bs=1000",
                "block_size = 1000",
                json!({"block_size": 1000}),
                false,
            ),
            ("cdrom", "type = \"cdrom\"", json!({"type": "cdrom"}), true),
            (
                "cdrom,bs=2048",
                "type = \"cdrom\"\nblock_size = 2048",
                json!({"type": "cdrom", "block_size": 2048}),
                true,
            ),
            (
                "cdrom,bs=4096",
                "type = \"cdrom\"\nblock_size = 4096",
                json!({"type": "cdrom", "block_size": 4096}),
                false,
            ),
            (
                "cdrom,rw",
                "type = \"cdrom\"\nread_only = false",
                json!({"type": "cdrom", "read_only": false}),
                true,
            ),
            (
                "pbs=4096",
                "physical_block_size = 4096",
                json!({"physical_block_size": 4096}),
                true,
            ),
            (
                "pbs=3000",
                "physical_block_size = 3000",
                json!({"physical_block_size": 3000}),
                false,
            ),
            (
                "bs=4096,pbs=512",
                "block_size = 4096\nphysical_block_size = 512",
                json!({"block_size": 4096, "physical_block_size": 512}),
                false,
            ),
            (
                "wwn=0x6001405000000001",
                "wwn = \"0x6001405000000001\"",
                json!({"wwn": "0x6001405000000001"}),
                true,
            ),
            (
                "wwn=6001405000000001",
                "wwn = \"6001405000000001\"",
                json!({"wwn": "6001405000000001"}),
                true,
            ),
            ("wwn=0xZZ", "wwn = \"0xZZ\"", json!({"wwn": "0xZZ"}), false),
            (
                "format=qcow2",
                "format = \"qcow2\"",
                json!({"format": "qcow2"}),
                true,
            ),
            (
                "format=vmdk",
                "format = \"vmdk\"",
                json!({"format": "vmdk"}),
                false,
            ),
            (
                "cache=none,aio=inline",
                "cache = \"none\"\naio = \"inline\"",
                json!({"cache": "none", "aio": "inline"}),
                true,
            ),
            (
                "cache=unsafe",
                "cache = \"unsafe\"",
                json!({"cache": "unsafe"}),
                false,
            ),
            ("aio=auto", "aio = \"auto\"", json!({"aio": "auto"}), false),
            (
                "rotation=7200",
                "rotation_rate = 7200",
                json!({"rotation_rate": 7200}),
                true,
            ),
            (
                "rotation=70000",
                "rotation_rate = 70000",
                json!({"rotation_rate": 70000}),
                false,
            ),
            (
                "wce=0",
                "write_cache = false",
                json!({"write_cache": false}),
                true,
            ),
            (
                "nodiscard",
                "discard = false",
                json!({"discard": false}),
                true,
            ),
            (
                "no-power-on-ua",
                "power_on_ua = false",
                json!({"power_on_ua": false}),
                true,
            ),
            (
                "ro,removable",
                "read_only = true\nremovable = true",
                json!({"read_only": true, "removable": true}),
                true,
            ),
        ];
        let file = dir.path().join("vscsi.toml");
        for (cli, toml, rpc, ok) in cases {
            let from_cli = format!("0:0={},{cli}", img.display())
                .parse::<LunSpec>()
                .map(|s| s.options);
            let text = format!(
                "[[controller]]\nsocket = \"{}\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n{toml}\n",
                dir.path().join("s.sock").display(),
                img.display()
            );
            let from_toml = parse_file(&file, &text)
                .map(|c: DaemonConfig| c.controllers[0].luns[0].spec.options.clone());
            let mut p = json!({"target": 0, "lun": 0, "image": img});
            for (k, v) in rpc.as_object().unwrap() {
                p[k] = v.clone();
            }
            let from_rpc = lun_params(&p)
                .and_then(|(_, f)| resolve_lun(&f))
                .map(|l| l.spec.options);
            assert_eq!(
                [from_cli.is_ok(), from_toml.is_ok(), from_rpc.is_ok()],
                [ok; 3],
                "{cli}: cli {from_cli:?}\ntoml {from_toml:?}\nrpc {from_rpc:?}"
            );
            if ok {
                let o = from_cli.unwrap();
                assert_eq!(o, from_toml.unwrap(), "{cli}");
                assert_eq!(o, from_rpc.unwrap(), "{cli}");
            }
        }
    }

    fn service(dir: &Path) -> Service {
        let spec = LunSpec::new(0, 0, image(dir, "a.img"));
        let cfg = DaemonConfig::from_cli(dir.join("s.sock"), vec![spec], 1, 128);
        Service::build(&cfg).unwrap()
    }

    #[test]
    fn add_lun_then_remove_lun() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let b = image(dir.path(), "b.img");
        let r = s
            .call(
                "add_lun",
                &json!({"target": 1, "lun": 2, "image": b, "block_size": 4096}),
            )
            .unwrap();
        assert_eq!(
            (r["target"].clone(), r["lun"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(r["capacity_blocks"], 256);
        assert_eq!(r["frontends_notified"], 0);
        let e = s
            .call("add_lun", &json!({"target": 1, "lun": 2, "image": b}))
            .unwrap_err();
        assert_eq!(e.code, code::LUN_EXISTS, "{e}");
        // The image is served (and locked) once.
        let e = s
            .call("add_lun", &json!({"target": 1, "lun": 3, "image": b}))
            .unwrap_err();
        assert_eq!(e.code, code::IMAGE, "{e}");
        let r = s
            .call("remove_lun", &json!({"target": 1, "lun": 2}))
            .unwrap();
        assert_eq!(
            (r["drained"].clone(), r["flushed"].clone()),
            (json!(true), json!(true))
        );
        let e = s
            .call("remove_lun", &json!({"target": 1, "lun": 2}))
            .unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_LUN, "{e}");
        assert!(e.message.contains("it has 0:0"), "{e}");
        // Its lock was released: it can be served again.
        s.call("add_lun", &json!({"target": 1, "lun": 3, "image": b}))
            .unwrap();
    }

    #[test]
    fn add_lun_refuses_bad_params_with_their_codes() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        for (p, c) in [
            (json!([1]), code::INVALID_PARAMS),
            (
                json!({"controller": 5, "target": 0, "lun": 1, "image": "/x"}),
                code::INVALID_PARAMS,
            ),
            (
                json!({"controller": "nope", "target": 0, "lun": 1, "image": "/x"}),
                code::UNKNOWN_CONTROLLER,
            ),
            (
                json!({"target": 0, "lun": 1, "image": "rel.img"}),
                code::INVALID_PARAMS,
            ),
            (
                json!({"target": 0, "lun": 1, "image": dir.path().join("missing.img")}),
                code::IMAGE,
            ),
            (
                json!({"target": 0, "lun": 1, "image": dir.path().join("x"), "colour": 1}),
                code::INVALID_PARAMS,
            ),
        ] {
            let e = s.call("add_lun", &p).unwrap_err();
            assert_eq!(e.code, c, "{p}: {e}");
        }
    }
}
