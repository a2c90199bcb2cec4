//! REPORT SUPPORTED OPERATION CODES (SPC-5, a MAINTENANCE IN service
//! action), generated from the opcode table in
//! [`super::dispatch`], the same table the dispatcher routes with, filtered
//! by what the logical unit offers: a command is reported exactly when it
//! is handled.
//!
//! - REPORTING OPTIONS 000b: every command, 8-byte command descriptors
//!   (20 with RCTD: a command timeouts descriptor each).
//! - 001b: one operation code; one that has service actions → INVALID
//!   FIELD IN CDB. 010b: one operation code + service action; one without
//!   service actions → INVALID FIELD IN CDB. 011b: either. The one-command
//!   format carries SUPPORT (011b supported per the standard, 001b not
//!   supported) and the CDB USAGE DATA.
//! - Other reporting options → INVALID FIELD IN CDB.

use vscsi_protocol::cdb::{be16, be32, byte};

use super::command::{invalid_field, respond, CommandResult};
use super::dispatch::{sorted_commands, Command, COMMANDS};
use super::io::DataIn;
use super::lu::LogicalUnit;

/// Command timeouts descriptor (SPC-5): DESCRIPTOR LENGTH 0Ah, COMMAND
/// SPECIFIC 0, NOMINAL COMMAND PROCESSING TIMEOUT 0 (not reported), then
/// RECOMMENDED COMMAND TIMEOUT in seconds.
fn timeouts_descriptor(c: &Command) -> [u8; 12] {
    let mut d = [0u8; 12];
    d[1] = 0x0A;
    d[8..12].copy_from_slice(&c.timeout.to_be_bytes());
    d
}

/// REPORT SUPPORTED OPERATION CODES. The table routes it here through
/// `Handler::SupportedOperationCodes` (the target calls it), not a function
/// pointer, so that this reader of the table is not also in it.
pub(crate) fn report_supported_operation_codes(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
) -> CommandResult {
    let rctd = byte(cdb, 2) & 0x80 != 0;
    let options = byte(cdb, 2) & 0x07;
    let req_op = byte(cdb, 3);
    let req_sa = be16(cdb, 4);
    let alloc = be32(cdb, 6) as usize;
    let mut out = Vec::with_capacity(512);
    if options == 0 {
        out.extend_from_slice(&[0; 4]);
        for c in sorted_commands().into_iter().filter(|c| c.available(lu)) {
            out.push(c.opcode);
            out.push(0);
            out.extend_from_slice(&u16::from(c.service_action.unwrap_or(0)).to_be_bytes());
            out.push(0);
            out.push(u8::from(c.service_action.is_some()) | if rctd { 0x02 } else { 0 });
            out.extend_from_slice(&u16::from(c.cdb_len).to_be_bytes());
            if rctd {
                out.extend_from_slice(&timeouts_descriptor(c));
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        return respond(data_in, alloc, &out);
    }
    let has_sa = COMMANDS
        .iter()
        .any(|c| c.opcode == req_op && c.service_action.is_some());
    let wanted_sa = match options {
        1 if has_sa => return invalid_field(3, None),
        1 => None,
        2 if !has_sa => return invalid_field(3, None),
        2 | 3 if has_sa => Some(req_sa),
        3 => {
            if req_sa != 0 {
                // An opcode without service actions asked with one: not supported.
                return respond(data_in, alloc, &[0, 0x01, 0, 0]);
            }
            None
        }
        _ => return invalid_field(2, Some(2)),
    };
    let found = COMMANDS
        .iter()
        .filter(|c| c.available(lu))
        .find(|c| c.opcode == req_op && c.service_action.map(u16::from) == wanted_sa);
    match found {
        None => respond(data_in, alloc, &[0, 0x01, 0, 0]),
        Some(c) => {
            out.push(0);
            out.push(0x03 | if rctd { 0x80 } else { 0 });
            out.extend_from_slice(&u16::from(c.cdb_len).to_be_bytes());
            out.extend_from_slice(c.usage);
            if rctd {
                out.extend_from_slice(&timeouts_descriptor(c));
            }
            respond(data_in, alloc, &out)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::scsi::dispatch::{lookup_for, COMMANDS};
    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;

    fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
        // SPC-5 REPORT SUPPORTED OPERATION CODES CDB.
        let mut c = [0u8; 12];
        c[0] = 0xA3;
        c[1] = 0x0C;
        c[2] = options | if rctd { 0x80 } else { 0 };
        c[3] = opcode;
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn all_commands_match_the_dispatch_table() {
        let (bus, _f) = bus_with(64, LunOptions::default());
        let t = bus.target(0).unwrap();
        let lu = t.lun(0).unwrap();
        let (r, data) = run(t, 0, &rsoc(false, 0, 0, 0, 8192), 8192, &[]);
        assert!(r.is_good(), "{r:?}");
        let n = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(data.len(), 4 + n);
        let offered = COMMANDS.iter().filter(|c| c.available(lu)).count();
        assert_eq!(n / 8, offered);
        // Every reported command is handled, every handled one reported.
        let mut reported = Vec::new();
        for d in data[4..].chunks(8) {
            let (op, sa, servactv, len) = (d[0], u16::from_be_bytes([d[2], d[3]]), d[5] & 1, d[7]);
            let mut cdb = vec![0u8; usize::from(len)];
            cdb[0] = op;
            if servactv == 1 {
                cdb[1] = sa as u8;
            }
            let c = lookup_for(&cdb, lu).unwrap();
            assert_eq!(usize::from(c.cdb_len), usize::from(len));
            reported.push((op, c.service_action));
        }
        for c in COMMANDS.iter().filter(|c| c.available(lu)) {
            assert!(
                reported.contains(&(c.opcode, c.service_action)),
                "{}",
                c.name
            );
        }
        // With RCTD: 20-byte descriptors, CTDP set, timeouts descriptor.
        let (_, data) = run(t, 0, &rsoc(true, 0, 0, 0, 8192), 8192, &[]);
        let n = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        assert_eq!(n, offered * 20);
        // TEST UNIT READY sorts first: 00h, no SA, CTDP, 6-byte CDB, 30 s.
        assert_eq!(
            &data[4..24],
            &[0, 0, 0, 0, 0, 0x02, 0, 6, 0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30]
        );
    }

    #[test]
    fn one_command_formats() {
        let (bus, _f) = bus_with(64, LunOptions::default());
        let t = bus.target(0).unwrap();
        // READ(10): SUPPORT 011b, CDB SIZE 10, usage data from SBC-4's READ(10) table.
        let (r, data) = run(t, 0, &rsoc(false, 1, 0x28, 0, 64), 64, &[]);
        assert!(r.is_good());
        assert_eq!(
            data,
            [0, 0x03, 0, 10, 0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04]
        );
        // Unsupported opcode (SANITIZE): SUPPORT 001b.
        let (_, data) = run(t, 0, &rsoc(false, 1, 0x48, 0, 64), 64, &[]);
        assert_eq!(data, [0, 0x01, 0, 0]);
        // Opcode with service actions asked without one.
        let (r, _) = run(t, 0, &rsoc(false, 1, 0x9E, 0, 64), 64, &[]);
        assert_eq!(triple(&r), (5, 0x24, 0));
        // READ CAPACITY(16) by service action, with timeouts.
        let (_, data) = run(t, 0, &rsoc(true, 2, 0x9E, 0x10, 64), 64, &[]);
        assert_eq!(&data[..6], &[0, 0x83, 0, 16, 0x9E, 0x10]);
        assert_eq!(data.len(), 4 + 16 + 12);
        // 010b for an opcode without service actions.
        let (r, _) = run(t, 0, &rsoc(false, 2, 0x28, 0, 64), 64, &[]);
        assert_eq!(triple(&r), (5, 0x24, 0));
        // 011b both ways; unknown SA.
        let (_, data) = run(t, 0, &rsoc(false, 3, 0x28, 0, 64), 64, &[]);
        assert_eq!(data[1], 0x03);
        let (_, data) = run(t, 0, &rsoc(false, 3, 0x28, 1, 64), 64, &[]);
        assert_eq!(data, [0, 0x01, 0, 0]);
        let (_, data) = run(t, 0, &rsoc(false, 3, 0x9E, 0x1F, 64), 64, &[]);
        assert_eq!(data, [0, 0x01, 0, 0]);
        let (r, _) = run(t, 0, &rsoc(false, 4, 0x28, 0, 64), 64, &[]);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 2, Some(2)))
        );
        // Every opcode: reported supported exactly when dispatched.
        let lu = t.lun(0).unwrap();
        for op in 0..=255u8 {
            let has_sa = COMMANDS
                .iter()
                .any(|c| c.opcode == op && c.service_action.is_some());
            if has_sa {
                continue;
            }
            let (_, data) = run(t, 0, &rsoc(false, 1, op, 0, 64), 64, &[]);
            let handled = lookup_for(&[op; 32], lu).is_ok()
                || COMMANDS.iter().any(|c| c.opcode == op && c.available(lu));
            assert_eq!(data[1] == 0x03, handled, "{op:#x}");
        }
    }
}
