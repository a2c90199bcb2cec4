//! `list` and `stats`: what the service serves now.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::rpc::{params, RpcError};
use super::{Controller, Service};
use crate::scsi::DeviceType;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ControllerParam {
    pub(super) controller: Option<String>,
}

impl Service {
    pub(super) fn list(&self, p: &Value) -> Result<Value, RpcError> {
        let p: ControllerParam = params(p)?;
        let ctrls: Vec<&Arc<Controller>> = match &p.controller {
            Some(n) => vec![self.controller(Some(n))?],
            None => self.controllers.iter().collect(),
        };
        let list: Vec<Value> = ctrls
            .iter()
            .map(|c| {
                let cfg = c.config();
                let bus = c.bus.load();
                let luns: Vec<Value> = bus
                    .entries()
                    .map(|(t, l, e)| {
                        let lu = e.lu();
                        let lc = cfg.luns.iter().find(|x| (x.spec.target, x.spec.lun) == (t, l));
                        json!({
                            "target": t,
                            "lun": l,
                            "image": lu.path(),
                            "type": match lu.device_type() { DeviceType::Disk => "disk", DeviceType::Cdrom => "cdrom" },
                            "read_only": lu.read_only(),
                            "removable": lu.options().removable,
                            "block_size": lu.block_size(),
                            "capacity_blocks": lu.capacity_blocks(),
                            "size_bytes": lu.capacity_blocks() * u64::from(lu.block_size()),
                            "medium_present": lu.medium_present(),
                            "state": e.state_name(),
                            "shared": lc.is_some_and(|x| x.shared),
                            "fault": c.opts.faults.get(t, l).map(|_| lc.and_then(|x| x.fault.clone()).unwrap_or_default()),
                        })
                    })
                    .collect();
                json!({
                    "name": c.name,
                    "socket": c.socket,
                    "mode": format!("{:04o}", cfg.access.mode),
                    "queues": cfg.queues,
                    "queue_size": cfg.queue_size,
                    "connected": c.connections.connected.load(Ordering::Relaxed),
                    "luns": luns,
                })
            })
            .collect();
        Ok(json!({ "controllers": list }))
    }

    pub(super) fn stats(&self, p: &Value) -> Result<Value, RpcError> {
        let p: ControllerParam = params(p)?;
        if let Some(n) = &p.controller {
            self.controller(Some(n))?;
        }
        Ok(super::metrics::stats_json(self, p.controller.as_deref()))
    }

    pub(super) fn shutdown_method(&self, p: &Value) -> Result<Value, RpcError> {
        let _: ControllerParam = params(p)?;
        self.shutdown();
        Ok(json!({"stopping": true}))
    }
}
