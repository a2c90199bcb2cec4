//! `vscsi read`: READ blocks to stdout or a file.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use crate::blockio::{self, plural, read_chunk};
use crate::device::{Device, DeviceArgs};
use crate::output::{self, human_size};
use crate::parse;

/// Read blocks and write them, exactly, to stdout (nothing else goes to
/// stdout then) or to --out FILE. The block size comes from READ
/// CAPACITY; reads bigger than one command's maximum are split. With
/// --json and no --out, the data is in the JSON object as hex.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// First logical block (decimal, or hex with 0x).
    #[arg(long, value_name = "N", default_value = "0", value_parser = parse::number)]
    pub lba: u64,
    /// Number of blocks.
    #[arg(long, value_name = "N", value_parser = parse::number)]
    pub blocks: u64,
    /// Write the data to FILE instead of stdout (and print a summary).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub async fn run(args: Args) -> Result<()> {
    if args.blocks == 0 {
        output::usage!("--blocks must be at least 1");
    }
    let json = args.device.conn.json;
    let dev = Device::open(&args.device).await?;
    let cap = blockio::read_capacity(&dev).await?;
    let bs = cap.block_size;
    let per = blockio::blocks_per_command(dev.driver.max_transfer(), bs)?;
    let bytes = args
        .blocks
        .checked_mul(bs as u64)
        .context("--blocks times the block size overflows")?;
    let last = cap.blocks.saturating_sub(1);
    if args.lba > last || args.blocks > cap.blocks - args.lba {
        output::usage!(
            "--lba {} --blocks {} ends past the end of {}:{}: its last LBA is {last}",
            args.lba,
            args.blocks,
            dev.target,
            dev.lun
        );
    }

    // Where the data goes: a file, stdout, or (JSON without --out) memory.
    enum Sink {
        File(io::BufWriter<File>),
        Stdout(io::StdoutLock<'static>),
        Memory(Vec<u8>),
    }
    let mut sink = match (&args.out, json) {
        (Some(path), _) => Sink::File(io::BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        (None, false) => Sink::Stdout(io::stdout().lock()),
        (None, true) => Sink::Memory(Vec::new()),
    };
    let sink_name = match &args.out {
        Some(p) => p.display().to_string(),
        None => "stdout".to_string(),
    };

    let pb = crate::progress::bytes(bytes, "read", json);
    let result = blockio::pipeline(
        blockio::split(args.lba, args.blocks, per),
        dev.window(),
        |lba, n| Ok(read_chunk(dev.clone(), lba, n, bs)),
        |_, _, data: Vec<u8>| {
            if let Some(pb) = &pb {
                pb.inc(data.len() as u64);
            }
            match &mut sink {
                Sink::File(f) => f.write_all(&data),
                Sink::Stdout(s) => s.write_all(&data),
                Sink::Memory(m) => {
                    m.extend_from_slice(&data);
                    Ok(())
                }
            }
            .with_context(|| format!("writing to {sink_name}"))
        },
    )
    .await;
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let commands = match result {
        Ok(n) => n,
        Err(e) if is_broken_pipe(&e) => return Ok(()), // `vscsi read ... | head` is fine
        Err(e) => return Err(e),
    };
    let data = match sink {
        Sink::File(mut f) => {
            f.flush()
                .with_context(|| format!("writing to {sink_name}"))?;
            None
        }
        Sink::Stdout(mut s) => {
            match s.flush() {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                other => other.context("writing to stdout")?,
            }
            return Ok(());
        }
        Sink::Memory(m) => Some(m),
    };

    if json {
        let mut v = json!({
            "ok": true,
            "target": dev.target,
            "lun": dev.lun,
            "lba": args.lba,
            "blocks": args.blocks,
            "block_size": bs,
            "bytes": bytes,
            "commands": commands,
        });
        match data {
            Some(d) => v["data_hex"] = json!(hex::encode(d)),
            None => v["out"] = json!(sink_name),
        }
        output::print_json(&v);
    } else {
        println!(
            "read {} ({}) from {}:{} LBA {} in {} to {sink_name}",
            plural(args.blocks, "block"),
            human_size(bytes),
            dev.target,
            dev.lun,
            args.lba,
            plural(commands as u64, "command"),
        );
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}
