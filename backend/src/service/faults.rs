//! `set_fault` and `clear_fault`: fault injection on one LUN at run time.

use serde::Deserialize;
use serde_json::{json, Value};

use super::luns::Addr;
use super::rpc::{code, err, params, RpcError};
use super::Service;
use crate::fault::FaultSpec;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultParams {
    controller: Option<String>,
    target: u8,
    lun: u16,
    fault: String,
}

impl Service {
    pub(super) fn set_fault(&self, p: &Value) -> Result<Value, RpcError> {
        let p: FaultParams = params(p)?;
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        self.find(ctrl, p.target, p.lun)?;
        let spec: FaultSpec = p
            .fault
            .parse()
            .map_err(|e: crate::fault::FaultParseError| err(code::INVALID_PARAMS, e.to_string()))?;
        ctrl.opts.faults.set(p.target, p.lun, spec);
        if let Some(x) = cfg
            .luns
            .iter_mut()
            .find(|x| (x.spec.target, x.spec.lun) == (p.target, p.lun))
        {
            x.fault = Some(p.fault.clone());
        }
        Ok(json!({"fault": p.fault}))
    }

    pub(super) fn clear_fault(&self, p: &Value) -> Result<Value, RpcError> {
        let p: Addr = params(p)?;
        let ctrl = self.controller(p.controller.as_deref())?;
        let mut cfg = ctrl.lock();
        self.find(ctrl, p.target, p.lun)?;
        ctrl.opts.faults.clear(p.target, p.lun);
        if let Some(x) = cfg
            .luns
            .iter_mut()
            .find(|x| (x.spec.target, x.spec.lun) == (p.target, p.lun))
        {
            x.fault = None;
        }
        Ok(json!({"fault": null}))
    }
}
