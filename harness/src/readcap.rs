//! `vscsi readcap`: the LUN's capacity (READ CAPACITY 16, falling back to 10).

use anyhow::Result;
use serde_json::json;

use crate::blockio;
use crate::device::{Device, DeviceArgs};
use crate::output::{self, capacity};

/// Send READ CAPACITY(16) (or (10) if the device refuses it) and print
/// the number of blocks, the block size and the capacity in bytes.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let dev = Device::open(&args.device).await?;
    let cap = blockio::read_capacity(&dev).await?;
    if args.device.conn.json {
        let mut v = json!({
            "ok": true,
            "target": dev.target,
            "lun": dev.lun,
            "command": cap.source,
            "blocks": cap.blocks,
            "last_lba": cap.blocks.saturating_sub(1),
            "block_size": cap.block_size,
            "bytes": cap.bytes(),
        });
        if let Some(c) = cap.rc16 {
            v["logical_blocks_per_physical_block_exponent"] = json!(c.lb_per_pb_exp);
            v["lowest_aligned_lba"] = json!(c.lowest_aligned);
            v["protection"] = json!(c.prot_en);
            v["thin_provisioned"] = json!(c.lbpme);
            v["unmapped_reads_zero"] = json!(c.lbprz);
        }
        output::print_json(&v);
        return Ok(());
    }
    println!("capacity of {}:{} ({})", dev.target, dev.lun, cap.source);
    println!("  blocks:      {}", cap.blocks);
    println!("  block size:  {} bytes", cap.block_size);
    println!("  capacity:    {}", capacity(cap.bytes()));
    println!("  last LBA:    {}", cap.blocks.saturating_sub(1));
    if let Some(c) = cap.rc16 {
        let physical = cap.block_size as u64 * (1u64 << c.lb_per_pb_exp.min(31));
        println!(
            "  physical:    {physical}-byte blocks (exponent {})",
            c.lb_per_pb_exp
        );
        if c.lbpme {
            println!(
                "  thin provisioned (LBPME){}",
                if c.lbprz {
                    ", unmapped blocks read as zeros"
                } else {
                    ""
                }
            );
        }
        if c.prot_en {
            println!("  protection information enabled");
        }
    }
    Ok(())
}
