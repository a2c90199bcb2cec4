//! `vscsi scan`: find every logical unit, as the Linux SCSI scan does.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use vscsi_driver::LunInfo;

use crate::device::{self, ConnectArgs};
use crate::output::{self, capacity, device_type_short};

/// REPORT LUNS on every target, then INQUIRY and READ CAPACITY on every
/// LUN; one line per LUN: target:LUN, type, vendor, product, revision,
/// capacity.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// `0:0  disk  VSCSI     VIRTUAL-DISK      0001  64.0 MiB (67108864 bytes)`.
pub fn line(lu: &LunInfo) -> String {
    format!(
        "{:<6} {:<5} {:<8}  {:<16}  {:<4}  {}",
        format!("{}:{}", lu.lun.target, lu.lun.lun),
        device_type_short(lu.inquiry.device_type),
        lu.inquiry.vendor,
        lu.inquiry.product,
        lu.inquiry.revision,
        capacity(lu.capacity()),
    )
}

pub fn to_json(lu: &LunInfo) -> Value {
    json!({
        "target": lu.lun.target,
        "lun": lu.lun.lun,
        "device_type": lu.inquiry.device_type,
        "device_type_name": device_type_short(lu.inquiry.device_type),
        "vendor": lu.inquiry.vendor,
        "product": lu.inquiry.product,
        "revision": lu.inquiry.revision,
        "blocks": lu.blocks,
        "block_size": lu.block_size,
        "bytes": lu.capacity(),
    })
}

pub async fn run(args: Args) -> Result<()> {
    let driver = device::connect(&args.conn).await?;
    let found = driver
        .scan()
        .await
        .with_context(|| format!("scanning {} failed", args.conn.socket.display()))?;
    if args.conn.json {
        output::print_json(&json!({
            "socket": args.conn.socket.display().to_string(),
            "luns": found.iter().map(to_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if found.is_empty() {
        eprintln!(
            "no logical units found behind {}",
            args.conn.socket.display()
        );
    }
    for lu in &found {
        println!("{}", line(lu));
    }
    Ok(())
}
