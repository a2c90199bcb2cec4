//! PERSISTENT RESERVE IN (SPC-5 §6.16): READ KEYS, READ RESERVATION,
//! REPORT CAPABILITIES, READ FULL STATUS. Every multi-byte field is
//! big-endian, reservation keys included.

use vscsi_protocol::cdb::be16;

use super::state::PrState;
use crate::scsi::command::{invalid_field, respond, CommandResult};
use crate::scsi::io::{DataIn, DataOut};
use crate::scsi::lu::LogicalUnit;
use crate::scsi::nexus::Nexus;

/// READ KEYS.
pub const READ_KEYS: u8 = 0x00;
/// READ RESERVATION.
pub const READ_RESERVATION: u8 = 0x01;
/// REPORT CAPABILITIES.
pub const REPORT_CAPABILITIES: u8 = 0x02;
/// READ FULL STATUS.
pub const READ_FULL_STATUS: u8 = 0x03;

/// PERSISTENT RESERVATION TYPE MASK: every type of SPC-5 is supported
/// (byte 4: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; byte 5: EX_AC_AR).
pub const TYPE_MASK: [u8; 2] = [0xEA, 0x01];

/// PERSISTENT RESERVE IN: the answer to service action `cdb[1]`,
/// truncated to the ALLOCATION LENGTH (bytes 7-8).
pub fn persistent_reserve_in(
    lu: &LogicalUnit,
    _nexus: &Nexus,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _data_out: &dyn DataOut,
) -> CommandResult {
    let alloc = usize::from(be16(cdb, 7));
    let pr = lu.reservations();
    let data = match cdb[1] & 0x1F {
        READ_KEYS => read_keys(&pr.snapshot()),
        READ_RESERVATION => read_reservation(&pr.snapshot()),
        REPORT_CAPABILITIES => report_capabilities(pr.can_persist(), pr.snapshot().aptpl).to_vec(),
        READ_FULL_STATUS => read_full_status(&pr.snapshot()),
        _ => return invalid_field(1, Some(4)),
    };
    respond(data_in, alloc, &data)
}

fn header(generation: u32, additional: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + additional);
    v.extend_from_slice(&generation.to_be_bytes());
    v.extend_from_slice(&u32::try_from(additional).unwrap_or(u32::MAX).to_be_bytes());
    v
}

/// READ KEYS parameter data (SPC-5 §6.16.2): PRgeneration, ADDITIONAL
/// LENGTH, then each registered key.
pub fn read_keys(s: &PrState) -> Vec<u8> {
    let mut v = header(s.generation, 8 * s.registrations.len());
    for r in &s.registrations {
        v.extend_from_slice(&r.key.to_be_bytes());
    }
    v
}

/// READ RESERVATION parameter data (SPC-5 §6.16.3): with a reservation,
/// its key (0 for all-registrants types), SCOPE (0h, LU_SCOPE) and TYPE.
pub fn read_reservation(s: &PrState) -> Vec<u8> {
    match s.reservation {
        None => header(s.generation, 0),
        Some(p) => {
            let mut v = header(s.generation, 16);
            v.extend_from_slice(&s.reservation_key().to_be_bytes());
            v.extend_from_slice(&[0; 4]);
            v.push(0);
            v.push(p.rtype & 0x0F);
            v.extend_from_slice(&[0; 2]);
            v
        }
    }
}

/// REPORT CAPABILITIES parameter data (SPC-5 §6.16.4): CRH (RESERVE and
/// RELEASE follow SPC-5 §5.14.3's exceptions), no SIP_C (no SPEC_I_PT), no
/// ATP_C (no ALL_TG_PT), PTPL_C when the state can be saved; TMV with
/// every type, ALLOW COMMANDS 011b (TEST UNIT READY through every
/// persistent reservation; MODE SENSE, REPORT SUPPORTED OPERATION CODES and
/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS, the commands of that list
/// this device has, through WRITE EXCLUSIVE ones; no RECEIVE COPY
/// RESULTS), PTPL_A.
pub fn report_capabilities(ptpl_c: bool, ptpl_a: bool) -> [u8; 8] {
    [
        0x00,
        0x08,
        0x10 | u8::from(ptpl_c),
        0x80 | 0x30 | u8::from(ptpl_a),
        TYPE_MASK[0],
        TYPE_MASK[1],
        0,
        0,
    ]
}

/// READ FULL STATUS parameter data (SPC-5 §6.16.5): one descriptor per
/// registration: key, ALL_TG_PT (0) and R_HOLDER, SCOPE and TYPE (holders
/// only), RELATIVE TARGET PORT IDENTIFIER, ADDITIONAL DESCRIPTOR LENGTH,
/// the initiator's TransportID.
pub fn read_full_status(s: &PrState) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &s.registrations {
        let holder = s.is_holder(&r.port);
        let tid = r.port.initiator.transport_id();
        body.extend_from_slice(&r.key.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.push(u8::from(holder));
        body.push(match s.reservation {
            Some(p) if holder => p.rtype & 0x0F,
            _ => 0,
        });
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&r.port.target_port.to_be_bytes());
        body.extend_from_slice(&u32::try_from(tid.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(tid);
    }
    let mut v = header(s.generation, body.len());
    v.extend_from_slice(&body);
    v
}
