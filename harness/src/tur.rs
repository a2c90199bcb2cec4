//! `vscsi tur`: TEST UNIT READY.

use anyhow::Result;
use serde_json::{json, Value};
use vscsi_driver::ScsiCommand;

use crate::device::{Device, DeviceArgs};
use crate::output;

/// Send TEST UNIT READY: prints "ready" (exit 0), or the sense data that
/// says why not (exit 1).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let dev = Device::open(&args.device).await?;
    let r = dev
        .send_good("TEST UNIT READY", ScsiCommand::TestUnitReady)
        .await?;
    if args.device.conn.json {
        let mut m = output::response_json(&r);
        m.insert("target".into(), json!(dev.target));
        m.insert("lun".into(), json!(dev.lun));
        m.insert("ready".into(), json!(true));
        output::print_json(&Value::Object(m));
    } else {
        println!("{}:{} ready", dev.target, dev.lun);
    }
    Ok(())
}
