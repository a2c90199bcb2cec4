//! `vscsi reset`: the error handler's last two steps on demand — reset one
//! request queue (GET_VRING_BASE, ring re-created, SET_VRING_* and ENABLE
//! again) or the whole device (VHOST_USER_RESET_DEVICE and every ring
//! re-created) — then a TEST UNIT READY through the reset rings.

use anyhow::{Context, Result};
use serde_json::json;
use vscsi_driver::ScsiCommand;

use crate::device::{Device, DeviceArgs};
use crate::output::{self, CheckFailed};

/// What to reset.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// One request queue (--queue).
    Queue,
    /// The whole device.
    Device,
}

/// Reset a request queue or the device, then check it still answers
/// (exit 1 unless TEST UNIT READY then completes with GOOD status).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to reset.
    #[arg(value_enum)]
    pub what: What,
    /// The request queue to reset (with `queue`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub queue: u16,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let dev = Device::open(&args.device).await?;
    let (name, failed) = match args.what {
        What::Queue => {
            let n = dev
                .driver
                .reset_queue(args.queue)
                .await
                .with_context(|| format!("resetting request queue {}", args.queue))?;
            (format!("request queue {}", args.queue), n)
        }
        What::Device => {
            dev.driver
                .reset_device()
                .await
                .context("resetting the device")?;
            ("device".to_string(), 0)
        }
    };
    // The retry policy takes the reset's unit attention.
    let r = dev
        .driver
        .send_command(dev.target, dev.lun, ScsiCommand::TestUnitReady)
        .await?;
    if args.device.conn.json {
        output::print_json(&json!({
            "reset": name,
            "commands_failed": failed,
            "test_unit_ready_good": r.is_good(),
        }));
    } else {
        println!("{name} reset ({failed} commands in flight failed)");
        println!(
            "{}:{} TEST UNIT READY after the reset: {}",
            dev.target,
            dev.lun,
            if r.is_good() { "GOOD" } else { "not GOOD" }
        );
    }
    if r.is_good() {
        Ok(())
    } else {
        Err(CheckFailed(format!(
            "TEST UNIT READY after the reset: {}",
            vscsi_driver::CommandError(r)
        ))
        .into())
    }
}
