//! `vscsi inquiry`: standard INQUIRY data, or a VPD page with `--page`.

use anyhow::Result;
use serde_json::{json, Value};
use vscsi_driver::ScsiCommand;
use vscsi_protocol::data::StandardInquiry;

use crate::device::{Device, DeviceArgs};
use crate::output::{self, device_type_long, hex_dump};
use crate::parse;

/// Send INQUIRY and print the standard data, or a VPD page in hex.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A vital product data page to fetch instead (hex: 00, 80, 83, b0...).
    #[arg(long, value_name = "HEX", value_parser = parse::hex_u8)]
    pub page: Option<u8>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Standard data the device may return (SPC-5 suggests at least 36; 96 is what Linux asks).
const STANDARD_LEN: u16 = 96;
/// First try for a VPD page; a longer page is fetched again at its length.
const VPD_LEN: u16 = 4096;

pub async fn run(args: Args) -> Result<()> {
    let dev = Device::open(&args.device).await?;
    match args.page {
        None => standard(&dev, args.device.conn.json).await,
        Some(page) => vpd(&dev, page, args.device.conn.json).await,
    }
}

async fn standard(dev: &Device, json: bool) -> Result<()> {
    let cmd = ScsiCommand::Inquiry {
        allocation_length: STANDARD_LEN,
        evpd: false,
        page_code: 0,
    };
    let r = dev.send_good("INQUIRY", cmd).await?;
    let inq = StandardInquiry::decode(&r.data).map_err(|e| {
        anyhow::anyhow!(
            "INQUIRY returned {} bytes that do not decode: {e}",
            r.data.len()
        )
    })?;
    // SPC-5 §6.7.2: PERIPHERAL QUALIFIER 011b is how a target answers
    // INQUIRY for a LUN it does not have.
    if inq.peripheral_qualifier == 3 {
        return Err(output::CheckFailed(format!(
            "{}:{} does not exist (INQUIRY: peripheral qualifier 011b, no logical unit); `vscsi scan` lists the LUNs",
            dev.target, dev.lun
        ))
        .into());
    }
    if json {
        let mut m = output::response_json(&r);
        m.insert("target".into(), json!(dev.target));
        m.insert("lun".into(), json!(dev.lun));
        m.insert(
            "inquiry".into(),
            json!({
                "peripheral_qualifier": inq.peripheral_qualifier,
                "device_type": inq.device_type,
                "device_type_name": device_type_long(inq.device_type),
                "removable": inq.removable,
                "version": inq.version,
                "response_data_format": inq.response_data_format,
                "hisup": inq.hisup,
                "cmdque": inq.cmdque,
                "vendor": inq.vendor,
                "product": inq.product,
                "revision": inq.revision,
            }),
        );
        m.insert("data_hex".into(), json!(hex::encode(&r.data)));
        output::print_json(&Value::Object(m));
        return Ok(());
    }
    let qualifier = match inq.peripheral_qualifier {
        0 => "connected",
        1 => "not connected now",
        3 => "no device here",
        _ => "reserved",
    };
    println!("standard INQUIRY of {}:{}", dev.target, dev.lun);
    println!("  vendor:        {}", inq.vendor);
    println!("  product:       {}", inq.product);
    println!("  revision:      {}", inq.revision);
    println!(
        "  device type:   {:#04x} {}",
        inq.device_type,
        device_type_long(inq.device_type)
    );
    println!(
        "  qualifier:     {} ({qualifier})",
        inq.peripheral_qualifier
    );
    println!(
        "  version:       {:#04x}{}",
        inq.version,
        version_name(inq.version)
    );
    println!("  data format:   {}", inq.response_data_format);
    println!("  removable:     {}", yes_no(inq.removable));
    println!("  HiSup:         {}", yes_no(inq.hisup));
    println!("  CmdQue:        {}", yes_no(inq.cmdque));
    Ok(())
}

async fn vpd(dev: &Device, page: u8, json: bool) -> Result<()> {
    let what = format!("INQUIRY VPD page {page:#04x}");
    let mut len = VPD_LEN;
    let r = loop {
        let cmd = ScsiCommand::Inquiry {
            allocation_length: len,
            evpd: true,
            page_code: page,
        };
        let r = dev.send_good(&what, cmd).await?;
        // PAGE LENGTH (bytes 2-3) counts the bytes after the 4-byte header.
        let full = match r.data.get(2..4) {
            Some(b) => 4 + u16::from_be_bytes([b[0], b[1]]) as usize,
            None => r.data.len(),
        };
        if full > len as usize && len < u16::MAX {
            len = full.min(u16::MAX as usize) as u16;
            continue;
        }
        break r;
    };
    if json {
        let mut m = output::response_json(&r);
        m.insert("target".into(), json!(dev.target));
        m.insert("lun".into(), json!(dev.lun));
        m.insert("page".into(), json!(page));
        m.insert("page_name".into(), json!(vpd_name(page)));
        m.insert("length".into(), json!(r.data.len()));
        m.insert("data_hex".into(), json!(hex::encode(&r.data)));
        output::print_json(&Value::Object(m));
        return Ok(());
    }
    let name = vpd_name(page)
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    println!(
        "VPD page {page:#04x}{name} of {}:{}, {} bytes",
        dev.target,
        dev.lun,
        r.data.len()
    );
    if page == 0x00 && r.data.len() > 4 {
        let pages: Vec<String> = r.data[4..].iter().map(|p| format!("{p:02x}")).collect();
        println!("supported pages: {}", pages.join(" "));
    }
    print!("{}", hex_dump(&r.data));
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn version_name(v: u8) -> &'static str {
    match v {
        0x00 => " (no standard claimed)",
        0x03 => " (SPC)",
        0x04 => " (SPC-2)",
        0x05 => " (SPC-3)",
        0x06 => " (SPC-4)",
        0x07 => " (SPC-5)",
        _ => "",
    }
}

/// Names of the common VPD pages (SPC-5 §7.7, SBC-4 §6.6).
pub fn vpd_name(page: u8) -> Option<&'static str> {
    Some(match page {
        0x00 => "Supported VPD Pages",
        0x80 => "Unit Serial Number",
        0x83 => "Device Identification",
        0x86 => "Extended INQUIRY Data",
        0x87 => "Mode Page Policy",
        0x88 => "SCSI Ports",
        0x89 => "ATA Information",
        0xB0 => "Block Limits",
        0xB1 => "Block Device Characteristics",
        0xB2 => "Logical Block Provisioning",
        _ => return None,
    })
}
