//! `vscsi write`: WRITE blocks taken from a file or stdin.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::blockio::{self, plural, write_chunk};
use crate::device::{Device, DeviceArgs};
use crate::output::{self, human_size};
use crate::parse;

/// Write blocks from --in FILE or stdin at --lba. The data must be whole
/// blocks (the block size comes from READ CAPACITY); writes bigger than
/// one command's maximum are split.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// First logical block to write (decimal, or hex with 0x).
    #[arg(long, value_name = "N", value_parser = parse::number)]
    pub lba: u64,
    /// Take the data from FILE instead of stdin.
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The data to write: a reader and how many bytes it holds.
struct Input {
    reader: Box<dyn Read + Send>,
    len: u64,
    name: String,
}

fn open_input(path: Option<&PathBuf>) -> Result<Input> {
    let Some(path) = path else {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            bail!(
                "no --in FILE given and stdin is a terminal: pipe the data in, or pass --in FILE"
            );
        }
        let mut data = Vec::new();
        stdin
            .lock()
            .read_to_end(&mut data)
            .context("reading stdin")?;
        let len = data.len() as u64;
        return Ok(Input {
            reader: Box::new(io::Cursor::new(data)),
            len,
            name: "stdin".into(),
        });
    };
    let name = path.display().to_string();
    let mut file = File::open(path).with_context(|| format!("cannot open {name}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {name}"))?;
    if meta.is_file() {
        return Ok(Input {
            reader: Box::new(file),
            len: meta.len(),
            name,
        });
    }
    // A pipe or device: its length is only known once read.
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .with_context(|| format!("reading {name}"))?;
    let len = data.len() as u64;
    Ok(Input {
        reader: Box::new(io::Cursor::new(data)),
        len,
        name,
    })
}

pub async fn run(args: Args) -> Result<()> {
    let mut input = open_input(args.input.as_ref())?;
    if input.len == 0 {
        bail!("{} is empty: nothing to write", input.name);
    }
    let dev = Device::open(&args.device).await?;
    let cap = blockio::read_capacity(&dev).await?;
    let bs = cap.block_size;
    if input.len % bs as u64 != 0 {
        bail!(
            "{} holds {} bytes, which is not a whole number of {bs}-byte blocks ({} bytes too many or {} too few); nothing was written",
            input.name,
            input.len,
            input.len % bs as u64,
            bs as u64 - input.len % bs as u64
        );
    }
    let blocks = input.len / bs as u64;
    let per = blockio::blocks_per_command(dev.driver.max_transfer(), bs)?;
    let name = input.name.clone();
    let commands = blockio::pipeline(
        blockio::split(args.lba, blocks, per),
        dev.window(),
        |lba, n| {
            let mut data = vec![0u8; n as usize * bs as usize];
            input.reader.read_exact(&mut data).with_context(|| {
                format!("reading {name} (it changed size while being written?)")
            })?;
            Ok(write_chunk(dev.clone(), lba, data, bs))
        },
        |_, _, ()| Ok(()),
    )
    .await?;

    if args.device.conn.json {
        output::print_json(&json!({
            "ok": true,
            "target": dev.target,
            "lun": dev.lun,
            "lba": args.lba,
            "blocks": blocks,
            "block_size": bs,
            "bytes": input.len,
            "commands": commands,
            "in": input.name,
        }));
    } else {
        println!(
            "wrote {} ({}) from {} to {}:{} LBA {} in {}",
            plural(blocks, "block"),
            human_size(input.len),
            input.name,
            dev.target,
            dev.lun,
            args.lba,
            plural(commands as u64, "command"),
        );
    }
    Ok(())
}
