//! Shared output: human-readable sizes, hex dumps, names of SCSI values,
//! the JSON form of a response, and the two "failed" errors that map to
//! exit code 1 (see `main.rs` for the exit codes).

use std::fmt;

use serde_json::{json, Map, Value};
use vscsi_driver::Response;
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

/// `67108864` -> `"64.0 MiB"`; below 1 KiB, `"512 B"`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `"64.0 MiB (67108864 bytes)"`.
pub fn capacity(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", human_size(bytes))
}

/// Bytes as `"12 00 00 00 24 00"`.
pub fn spaced_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A classic hex dump: offset, 16 bytes in two groups of 8, ASCII.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (row, chunk) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:08x} ", row * 16));
        for i in 0..16 {
            if i == 8 {
                out.push(' ');
            }
            match chunk.get(i) {
                Some(b) => out.push_str(&format!(" {b:02x}")),
                None => out.push_str("   "),
            }
        }
        out.push_str("  |");
        out.extend(chunk.iter().map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// Short name of a peripheral device type (SPC-5 table 50), as `lsscsi` shows it.
pub fn device_type_short(t: u8) -> &'static str {
    match t {
        0x00 => "disk",
        0x01 => "tape",
        0x02 => "printer",
        0x03 => "process",
        0x04 => "worm",
        0x05 => "cd/dvd",
        0x07 => "optical",
        0x08 => "mediumx",
        0x0C => "storage",
        0x0D => "enclosu",
        0x0E => "rbc",
        0x11 => "osd",
        0x14 => "zbc",
        0x1E => "wlun",
        0x1F => "no-dev",
        _ => "other",
    }
}

/// Long name of a peripheral device type (SPC-5 table 50).
pub fn device_type_long(t: u8) -> &'static str {
    match t {
        0x00 => "direct access block device (disk)",
        0x01 => "sequential access device (tape)",
        0x02 => "printer device",
        0x03 => "processor device",
        0x04 => "write-once device",
        0x05 => "CD/DVD device",
        0x07 => "optical memory device",
        0x08 => "media changer device",
        0x0C => "storage array controller device",
        0x0D => "enclosure services device",
        0x0E => "simplified direct-access device",
        0x11 => "object-based storage device",
        0x14 => "host managed zoned block device",
        0x1E => "well known logical unit",
        0x1F => "unknown or no device type",
        _ => "reserved device type",
    }
}

/// The virtio response byte by its spec name, or `"0x.. (undefined)"`.
pub fn virtio_response_name(code: u8) -> String {
    match VirtioResponse::from_u8(code) {
        Some(r) => r.name().to_string(),
        None => format!("{code:#04x} (undefined)"),
    }
}

/// One line saying how a command ended: `GOOD`, `CHECK CONDITION: ILLEGAL
/// REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (5/21/00)`, or the virtio
/// response when the device did not run the command.
pub fn outcome(r: &Response) -> String {
    match r.virtio() {
        Some(VirtioResponse::Ok) => {
            let name = status::name(r.status);
            match (r.status, r.sense_data()) {
                (status::GOOD, _) => name.to_string(),
                (_, Some(sense)) => format!("{name}: {sense}"),
                (_, None) if r.sense.is_empty() => format!("{name} (no sense data)"),
                (_, None) => format!("{name} (undecodable sense data {})", spaced_hex(&r.sense)),
            }
        }
        Some(VirtioResponse::BadTarget) => "VIRTIO_SCSI_S_BAD_TARGET: no such target".into(),
        Some(v) => format!("virtio response {}", v.name()),
        None => format!("virtio response {:#04x} (undefined)", r.response),
    }
}

/// The decoded sense as JSON, or `null`.
pub fn sense_json(sense: &[u8]) -> Value {
    match Sense::decode(sense) {
        Ok(s) => json!({
            "key": s.key.name(),
            "key_code": s.key as u8,
            "asc": s.asc,
            "ascq": s.ascq,
            "description": s.description(),
            "information": s.information,
            "text": s.to_string(),
        }),
        Err(_) => Value::Null,
    }
}

/// The response fields every JSON answer carries: virtio response, status,
/// sense (decoded and hex) and residual.
pub fn response_json(r: &Response) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ok".into(), json!(r.is_good()));
    m.insert("response".into(), json!(virtio_response_name(r.response)));
    m.insert("response_code".into(), json!(r.response));
    m.insert("status".into(), json!(status::name(r.status)));
    m.insert("status_code".into(), json!(r.status));
    m.insert("sense".into(), sense_json(&r.sense));
    m.insert("sense_hex".into(), json!(hex::encode(&r.sense)));
    m.insert("residual".into(), json!(r.residual));
    m
}

/// Prints a JSON value, pretty, to stdout.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

/// An error and its causes on one line, `outer: cause: cause`, leaving out
/// a cause the text already says (an error that prints its source, such as
/// an OS error, and also returns it as its source).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

/// A mistake on the command line found after parsing (a flag another
/// one requires, a size the LUN's block size does not divide): `main`
/// prints it and exits with code 2, as for the mistakes clap finds.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns early with a [`UsageError`] (exit status 2).
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::output::UsageError(format!($($arg)*)).into())
    };
}
pub(crate) use usage;

/// A command completed, but not with GOOD status (or the device did not
/// run it: BAD_TARGET and the like). Verbs return it as their error; `main`
/// prints it (decoded sense and sense hex) and exits with code 1.
#[derive(Debug)]
pub struct ScsiFailure {
    /// What was sent, e.g. `READ(10) at LBA 40000`.
    pub command: String,
    /// Target id.
    pub target: u8,
    /// LUN.
    pub lun: u16,
    /// What came back.
    pub response: Response,
}

impl fmt::Display for ScsiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to {}:{}: {}",
            self.command,
            self.target,
            self.lun,
            outcome(&self.response)
        )
    }
}

impl std::error::Error for ScsiFailure {}

impl ScsiFailure {
    /// The JSON object printed in `--json` mode.
    pub fn to_json(&self) -> Value {
        let mut m = response_json(&self.response);
        m.insert("command".into(), json!(self.command));
        m.insert("target".into(), json!(self.target));
        m.insert("lun".into(), json!(self.lun));
        m.insert("error".into(), json!(self.to_string()));
        Value::Object(m)
    }

    /// The text printed to stderr.
    pub fn to_text(&self) -> String {
        let mut s = format!("vscsi: {self}");
        if !self.response.sense.is_empty() {
            s.push_str(&format!(
                "\nsense data: {}",
                spaced_hex(&self.response.sense)
            ));
        }
        s
    }
}

/// A check that did not pass (the demo's verification): exit code 1.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u8, sense: Vec<u8>) -> Response {
        Response {
            response: 0,
            status,
            sense,
            residual: 0,
            data: vec![],
        }
    }

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(capacity(67108864), "64.0 MiB (67108864 bytes)");
    }

    #[test]
    fn hex_dump_rows() {
        let dump = hex_dump(b"\x00\x01VSCSI   0123456789");
        let lines: Vec<_> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "00000000  00 01 56 53 43 53 49 20  20 20 30 31 32 33 34 35  |..VSCSI   012345|"
        );
        assert!(lines[1].starts_with("00000010  36 37 38 39   "));
        assert!(lines[1].ends_with("|6789|"));
        assert_eq!(hex_dump(&[]), "");
    }

    #[test]
    fn outcome_decodes_sense() {
        let sense = Sense::LBA_OUT_OF_RANGE.to_fixed().to_vec();
        let r = response(status::CHECK_CONDITION, sense.clone());
        assert_eq!(
            outcome(&r),
            "CHECK CONDITION: ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (5/21/00)"
        );
        let j = Value::Object(response_json(&r));
        assert_eq!(j["status"], "CHECK CONDITION");
        assert_eq!(j["status_code"], 2);
        assert_eq!(j["sense_hex"], hex::encode(&sense));
        assert_eq!(j["sense"]["asc"], 0x21);
        assert_eq!(j["ok"], false);
        assert_eq!(outcome(&response(0, vec![])), "GOOD");
        let bad = Response {
            response: VirtioResponse::BadTarget as u8,
            ..response(0, vec![])
        };
        assert!(outcome(&bad).contains("BAD_TARGET"));
    }

    #[test]
    fn failure_text_has_sense_hex() {
        let f = ScsiFailure {
            command: "READ(10) at LBA 9".into(),
            target: 0,
            lun: 1,
            response: response(
                status::CHECK_CONDITION,
                Sense::LBA_OUT_OF_RANGE.to_fixed().to_vec(),
            ),
        };
        let text = f.to_text();
        assert!(
            text.starts_with("vscsi: READ(10) at LBA 9 to 0:1: CHECK CONDITION: ILLEGAL REQUEST")
        );
        assert!(text.contains("\nsense data: 70 00 05"));
        assert_eq!(f.to_json()["lun"], 1);
    }
}
