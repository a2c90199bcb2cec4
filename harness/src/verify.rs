//! `vscsi verify`: write a seeded pattern with many commands in flight over
//! every request queue, read it back, and report every mismatching LBA.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use tokio::task::JoinSet;
use vscsi_driver::ScsiCommand;

use crate::blockio::{blocks_per_command, read_capacity, split};
use crate::device::{Device, DeviceArgs};
use crate::output::{self, CheckFailed};
use crate::pattern;

/// Write a seeded pattern over a region of the LUN with --iodepth commands
/// in flight (spread over --queues request queues), read it
/// back the same way and check every block. Exit 1 on any mismatch,
/// listing each bad LBA.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Commands in flight.
    #[arg(long, value_name = "D", default_value_t = 32)]
    pub iodepth: usize,
    /// Bytes to verify from --lba (default: 64 MiB or the whole LUN if smaller).
    #[arg(long, value_name = "SIZE", value_parser = crate::parse::size)]
    pub size: Option<u64>,
    /// First LBA.
    #[arg(long, value_name = "LBA", default_value_t = 0, value_parser = crate::parse::number)]
    pub lba: u64,
    /// Pattern seed.
    #[arg(long, value_name = "X", default_value_t = 1, value_parser = crate::parse::number)]
    pub seed: u64,
    /// Blocks per command (default: as many as the driver moves at once, up to 128).
    #[arg(long, value_name = "N")]
    pub blocks_per_command: Option<u32>,
}

async fn run_all<F>(iodepth: usize, jobs: Vec<F>) -> Result<Vec<F::Output>>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        if set.len() >= iodepth.max(1) {
            if let Some(r) = set.join_next().await {
                out.push(r.context("an I/O task failed")?);
            }
        }
        set.spawn(job);
    }
    while let Some(r) = set.join_next().await {
        out.push(r.context("an I/O task failed")?);
    }
    Ok(out)
}

pub async fn run(args: Args) -> Result<()> {
    let dev = Device::open(&args.device).await?;
    let _reporter = crate::device::report_reconnects(&dev.driver, &args.device.conn.socket);
    let cap = read_capacity(&dev).await?;
    let bs = cap.block_size;
    anyhow::ensure!(
        args.lba < cap.blocks,
        "--lba {} is past the end ({} blocks)",
        args.lba,
        cap.blocks
    );
    let room = (cap.blocks - args.lba) * u64::from(bs);
    let size = args.size.unwrap_or(64 << 20).min(room);
    if args.size.is_some_and(|s| s > room) {
        eprintln!(
            "vscsi: --size is larger than {}:{} from LBA {} ({room} bytes); clamped to {size} bytes",
            dev.target, dev.lun, args.lba
        );
    }
    let blocks = size / u64::from(bs);
    anyhow::ensure!(blocks > 0, "--size is smaller than one block ({bs} bytes)");
    let per = match args.blocks_per_command {
        Some(n) => n.max(1),
        None => blocks_per_command(dev.driver.max_transfer(), bs)?.min(128),
    };
    let chunks: Vec<(u64, u32)> = split(args.lba, blocks, per).collect();
    let seed = args.seed;
    let start = Instant::now();
    let json = args.device.conn.json;
    let pb = crate::progress::bytes(blocks * u64::from(bs), "write", json);
    let writes = chunks
        .iter()
        .map(|&(lba, n)| {
            let dev = dev.clone();
            let pb = pb.clone();
            async move {
                if let Some(pb) = &pb {
                    pb.inc(u64::from(n) * u64::from(bs));
                }
                let data = pattern::blocks(lba, n, bs, seed);
                dev.send_good(
                    "WRITE",
                    ScsiCommand::Write {
                        lba,
                        blocks: n,
                        data,
                    },
                )
                .await
                .map(|_| ())
            }
        })
        .collect();
    for r in run_all(args.iodepth, writes).await? {
        r?;
    }
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let pb = crate::progress::bytes(blocks * u64::from(bs), "read back", json);
    let reads = chunks
        .iter()
        .map(|&(lba, n)| {
            let dev = dev.clone();
            let pb = pb.clone();
            async move {
                if let Some(pb) = &pb {
                    pb.inc(u64::from(n) * u64::from(bs));
                }
                let r = dev
                    .send_good(
                        "READ",
                        ScsiCommand::Read {
                            lba,
                            blocks: n,
                            block_size: bs,
                        },
                    )
                    .await?;
                let mut bad = Vec::new();
                let mut expected = vec![0u8; bs as usize];
                for (i, block) in r.data.chunks(bs as usize).enumerate() {
                    let at = lba + i as u64;
                    pattern::fill_block(&mut expected, at, seed);
                    if block != &expected[..] {
                        bad.push(at);
                    }
                }
                if r.data.len() < n as usize * bs as usize {
                    let got = (r.data.len() / bs as usize) as u64;
                    bad.extend(lba + got..lba + u64::from(n));
                }
                anyhow::Ok(bad)
            }
        })
        .collect();
    let mut bad: Vec<u64> = Vec::new();
    for r in run_all(args.iodepth, reads).await? {
        bad.extend(r?);
    }
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    bad.sort_unstable();
    let elapsed = start.elapsed();
    let bytes = blocks * u64::from(bs);
    let queues = dev.driver.features().queue_count;
    let _ = Arc::strong_count(&dev.driver);
    if args.device.conn.json {
        output::print_json(&json!({
            "target": dev.target, "lun": dev.lun, "first_lba": args.lba, "blocks": blocks,
            "block_size": bs, "bytes": bytes, "seed": seed, "queues": queues,
            "iodepth": args.iodepth, "seconds": elapsed.as_secs_f64(),
            "mismatched_lbas": bad, "ok": bad.is_empty(),
            "reconnect": crate::device::reconnect_json(&dev.driver.stats().reconnect),
        }));
    } else {
        for lba in &bad {
            println!("mismatch at LBA {lba}");
        }
        println!(
            "{}:{} verified {} blocks ({}) from LBA {} in {:.2} s over {queues} queue(s), iodepth {}: {}",
            dev.target,
            dev.lun,
            blocks,
            output::human_size(bytes),
            args.lba,
            elapsed.as_secs_f64(),
            args.iodepth,
            if bad.is_empty() { "OK".to_string() } else { format!("{} bad blocks", bad.len()) }
        );
        if let Some(line) = crate::device::reconnect_summary(&dev.driver.stats().reconnect) {
            println!("{line}");
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(CheckFailed(format!("{} of {blocks} blocks did not verify", bad.len())).into())
    }
}
