//! `vscsi tmf`: send one task management function on the control queue.

use anyhow::Result;
use serde_json::json;
use vscsi_driver::{Tmf, TmfResponse};

use crate::device::{Device, DeviceArgs};
use crate::output::{self, CheckFailed};

/// Which task management function.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// ABORT TASK (needs --tag).
    Abort,
    /// ABORT TASK SET.
    AbortTaskSet,
    /// CLEAR TASK SET.
    ClearTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// LOGICAL UNIT RESET.
    LunReset,
    /// I_T NEXUS RESET (what Linux sends for a target reset).
    TargetReset,
    /// QUERY TASK (needs --tag).
    Query,
    /// QUERY TASK SET.
    QueryTaskSet,
}

/// Send a task management function (VIRTIO 1.2 §5.6.6.2) and print the
/// device's answer; exit 1 unless FUNCTION COMPLETE or FUNCTION SUCCEEDED.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The function.
    #[arg(value_enum)]
    pub function: Function,
    /// Tag of the command to abort or query.
    #[arg(long, value_name = "TAG", value_parser = crate::parse::number)]
    pub tag: Option<u64>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Args {
    fn tmf(&self) -> Result<Tmf> {
        let tag = || {
            self.tag.ok_or_else(|| {
                crate::output::UsageError(format!("{:?} needs --tag", self.function))
            })
        };
        Ok(match self.function {
            Function::Abort => Tmf::AbortTask { tag: tag()? },
            Function::AbortTaskSet => Tmf::AbortTaskSet,
            Function::ClearTaskSet => Tmf::ClearTaskSet,
            Function::ClearAca => Tmf::ClearAca,
            Function::LunReset => Tmf::LogicalUnitReset,
            Function::TargetReset => Tmf::TargetReset,
            Function::Query => Tmf::QueryTask { tag: tag()? },
            Function::QueryTaskSet => Tmf::QueryTaskSet,
        })
    }
}

pub async fn run(args: Args) -> Result<()> {
    let tmf = args.tmf()?;
    let dev = Device::open(&args.device).await?;
    let r = dev.driver.task_management(dev.target, dev.lun, tmf).await?;
    if args.device.conn.json {
        output::print_json(&json!({
            "target": dev.target,
            "lun": dev.lun,
            "function": tmf.name(),
            "response": r.to_string(),
            "ok": r.is_success(),
        }));
    } else {
        println!("{}:{} {}: {r}", dev.target, dev.lun, tmf.name());
    }
    match r {
        TmfResponse::FunctionComplete | TmfResponse::FunctionSucceeded => Ok(()),
        _ => Err(CheckFailed(format!("{} answered {r}", tmf.name())).into()),
    }
}
