//! `vscsi luns`: REPORT LUNS.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use vscsi_driver::ScsiCommand;
use vscsi_protocol::data::report_luns_list_len;

use crate::device::{Device, DeviceArgs};
use crate::output;

/// Send REPORT LUNS (to --lun, normally 0) and list the LUNs of the target.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// SELECT REPORT: 0 = logical units, 1 = well-known LUNs, 2 = all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub select: u8,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// First allocation length: the header and 256 entries. A longer list is
/// fetched again at its full length.
const FIRST_ALLOC: u32 = 8 + 8 * 256;

/// One REPORT LUNS entry, decoded where the addressing is simple (SAM-5 §4.7).
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// Peripheral (bus 0) or flat space addressing.
    Lun(u16),
    /// A well-known LUN (extended addressing, C1xxh).
    WellKnown(u8),
    /// Anything else, shown as hex.
    Other([u8; 8]),
}

pub fn decode_entry(e: [u8; 8]) -> Entry {
    let word = u16::from_be_bytes([e[0], e[1]]);
    if e[2..] == [0; 6] {
        match word >> 14 {
            0b00 if e[0] == 0 => return Entry::Lun(word),
            0b01 => return Entry::Lun(word & 0x3FFF),
            0b11 if e[0] == 0xC1 => return Entry::WellKnown(e[1]),
            _ => {}
        }
    }
    Entry::Other(e)
}

pub async fn run(args: Args) -> Result<()> {
    let dev = Device::open(&args.device).await?;
    let mut alloc = FIRST_ALLOC;
    let r = loop {
        let cmd = ScsiCommand::ReportLuns {
            select_report: args.select,
            allocation_length: alloc,
        };
        let r = dev.send_good("REPORT LUNS", cmd).await?;
        let full = report_luns_list_len(&r.data)
            .context("REPORT LUNS returned less than its 8-byte header")? as u64
            + 8;
        let cap = dev.driver.max_transfer() as u64;
        if full > alloc as u64 && (alloc as u64) < cap {
            alloc = full.min(cap) as u32;
            continue;
        }
        break r;
    };
    let list_len = report_luns_list_len(&r.data)? as usize;
    let entries: Vec<[u8; 8]> = r
        .data
        .get(8..)
        .unwrap_or_default()
        .chunks_exact(8)
        .take(list_len / 8)
        .map(|c| c.try_into().expect("8-byte chunk"))
        .collect();
    let truncated = entries.len() < list_len / 8;

    if args.device.conn.json {
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut v = json!({ "entry": hex::encode(e) });
                match decode_entry(*e) {
                    Entry::Lun(l) => v["lun"] = json!(l),
                    Entry::WellKnown(w) => v["well_known"] = json!(w),
                    Entry::Other(_) => {}
                }
                v
            })
            .collect();
        let mut m = output::response_json(&r);
        m.insert("target".into(), json!(dev.target));
        m.insert("select_report".into(), json!(args.select));
        m.insert("reported".into(), json!(list_len / 8));
        m.insert("luns".into(), Value::Array(list));
        output::print_json(&Value::Object(m));
        return Ok(());
    }
    let n = list_len / 8;
    println!(
        "target {} reports {n} LUN{}{}",
        dev.target,
        if n == 1 { "" } else { "s" },
        if truncated {
            format!(
                " ({} shown: the list is longer than one transfer)",
                entries.len()
            )
        } else {
            String::new()
        }
    );
    for e in &entries {
        match decode_entry(*e) {
            Entry::Lun(l) => println!("  {}:{l}", dev.target),
            Entry::WellKnown(w) => println!("  well-known LUN {w:#04x} ({})", hex::encode(e)),
            Entry::Other(_) => println!("  {} (addressing not decoded)", hex::encode(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode() {
        assert_eq!(decode_entry([0, 0, 0, 0, 0, 0, 0, 0]), Entry::Lun(0));
        assert_eq!(decode_entry([0, 5, 0, 0, 0, 0, 0, 0]), Entry::Lun(5));
        assert_eq!(
            decode_entry([0x41, 0x00, 0, 0, 0, 0, 0, 0]),
            Entry::Lun(256)
        );
        assert_eq!(
            decode_entry([0xC1, 0x01, 0, 0, 0, 0, 0, 0]),
            Entry::WellKnown(1)
        );
        assert!(matches!(
            decode_entry([0, 1, 0, 1, 0, 0, 0, 0]),
            Entry::Other(_)
        ));
    }
}
