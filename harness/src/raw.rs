//! `vscsi raw`: send any CDB, like sg_raw, and report everything that came back.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vscsi_driver::ScsiCommand;
use vscsi_protocol::opcode;
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;

use crate::device::{Device, DeviceArgs};
use crate::output::{self, hex_dump, spaced_hex, virtio_response_name};
use crate::parse;

/// Send any CDB and print the virtio response, status, sense, residual
/// and data-in. Exits 0 whenever the command completed, whatever its SCSI
/// status (like sg_raw); non-zero only when it could not be sent.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The CDB in hex: "12 00 00 00 24 00" or "120000002400".
    #[arg(long, value_name = "HEX", value_parser = parse::hex_bytes)]
    pub cdb: parse::HexBytes,
    /// Send the contents of FILE as data-out.
    #[arg(long, value_name = "FILE", conflicts_with = "data_in")]
    pub data_out: Option<PathBuf>,
    /// Offer a data-in buffer of LEN bytes (e.g. 36, 4k).
    #[arg(long, value_name = "LEN", value_parser = parse::size)]
    pub data_in: Option<u64>,
    /// Write the data-in bytes, raw, to FILE instead of a hex dump.
    #[arg(long, value_name = "FILE", requires = "data_in")]
    pub out: Option<PathBuf>,
    /// Do not clear the unit attentions pending after connecting (POWER ON,
    /// RESET for a new frontend): the CDB then receives the first of them.
    #[arg(long)]
    pub keep_ua: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub async fn run(args: Args) -> Result<()> {
    if args.cdb.len() > 32 {
        bail!(
            "the CDB is {} bytes; virtio-scsi carries at most 32",
            args.cdb.len()
        );
    }
    let data_out = match &args.data_out {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("cannot read --data-out {}", p.display()))?
        }
        None => Vec::new(),
    };
    let data_in_len =
        usize::try_from(args.data_in.unwrap_or(0)).context("--data-in is too large")?;
    let dev = Device::open_with(&args.device, !args.keep_ua).await?;
    let max = dev.driver.max_transfer();
    if data_in_len > max || data_out.len() > max {
        bail!(
            "the transfer ({} bytes) exceeds the driver's per-command maximum of {max} bytes; raise --max-transfer",
            data_in_len.max(data_out.len())
        );
    }
    let op = args.cdb[0];
    let op_name = opcode::name(op).unwrap_or("unknown opcode");
    let cmd = ScsiCommand::Raw {
        cdb: args.cdb.clone(),
        data_out: data_out.clone(),
        data_in_len,
    };
    let r = dev
        .send(&format!("CDB {}", hex::encode(&args.cdb)), cmd)
        .await?;

    if let Some(path) = &args.out {
        std::fs::write(path, &r.data)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    if args.device.conn.json {
        let mut m = output::response_json(&r);
        m.insert("target".into(), json!(dev.target));
        m.insert("lun".into(), json!(dev.lun));
        m.insert("cdb".into(), json!(hex::encode(&args.cdb)));
        m.insert("opcode".into(), json!(opcode::name(op)));
        m.insert("data_out_len".into(), json!(data_out.len()));
        m.insert("data_in_len".into(), json!(r.data.len()));
        match &args.out {
            Some(p) => m.insert("data_in_file".into(), json!(p.display().to_string())),
            None => m.insert("data_in".into(), json!(hex::encode(&r.data))),
        };
        output::print_json(&Value::Object(m));
        return Ok(());
    }

    println!("cdb:        {}  ({op_name})", spaced_hex(&args.cdb));
    println!("target:     {}:{}", dev.target, dev.lun);
    if !data_out.is_empty() {
        println!("data-out:   {} bytes", data_out.len());
    }
    println!(
        "response:   {} ({:#04x})",
        virtio_response_name(r.response),
        r.response
    );
    println!("status:     {} ({:#04x})", status::name(r.status), r.status);
    if r.sense.is_empty() {
        println!("sense:      none");
    } else {
        match Sense::decode(&r.sense) {
            Ok(s) => println!("sense:      {s}"),
            Err(e) => println!("sense:      not decodable ({e})"),
        }
        println!("sense hex:  {}", spaced_hex(&r.sense));
    }
    println!("residual:   {}", r.residual);
    if data_in_len > 0 {
        match &args.out {
            Some(p) => println!(
                "data-in:    {} bytes written to {}",
                r.data.len(),
                p.display()
            ),
            None => {
                println!("data-in:    {} bytes", r.data.len());
                print!("{}", hex_dump(&r.data));
            }
        }
    }
    Ok(())
}
