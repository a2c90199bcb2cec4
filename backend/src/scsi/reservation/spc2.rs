//! RESERVE(6)/(10) and RELEASE(6)/(10) (SPC-2 §7.21-§7.24, obsolete in
//! SPC-5): a reservation of the whole logical unit by one I_T nexus.
//! Third-party reservations (3RDPTY) and extents are not supported.
//!
//! While it lasts, every other I_T nexus gets RESERVATION CONFLICT for
//! everything but INQUIRY, REPORT LUNS, REQUEST SENSE and RELEASE (see
//! [`super::access`]). It ends with RELEASE from its holder, a logical unit
//! reset, or the loss of its I_T nexus (the connection ends).
//!
//! With persistent reservations in place (a registration or a
//! reservation), SPC-5 §5.14.3 applies with CRH = 1: RESERVE and RELEASE
//! complete with GOOD and change nothing when they come from the
//! persistent reservation holder, or from a registered I_T nexus under a
//! registrants-only or all-registrants type; otherwise they get
//! RESERVATION CONFLICT.

use super::conflict;
use super::state::{registrants_type, Port, PrState};
use crate::scsi::command::{invalid_field, CommandResult};
use crate::scsi::io::{DataIn, DataOut};
use crate::scsi::lu::LogicalUnit;
use crate::scsi::nexus::Nexus;

/// SPC-5 §5.14.3 with CRH = 1: `None` when no persistent reservation or
/// registration exists (SPC-2 rules apply), else the answer.
fn under_persistent(s: &PrState, port: &Port) -> Option<Result<(), CommandResult>> {
    if s.registrations.is_empty() && s.reservation.is_none() {
        return None;
    }
    let exempt = s.is_holder(port)
        || (s.registration(port).is_some()
            && s.reservation.is_some_and(|p| registrants_type(p.rtype)));
    Some(if exempt { Ok(()) } else { Err(conflict()) })
}

/// Byte 1 of RESERVE/RELEASE: 3RDPTY (bit 4), LONGID (bit 1) and the
/// obsolete EXTENT (bit 0) are refused.
fn check_cdb(cdb: &[u8]) -> Option<CommandResult> {
    let b1 = cdb[1];
    if b1 & 0x10 != 0 {
        return Some(invalid_field(1, Some(4)));
    }
    if b1 & 0x02 != 0 {
        return Some(invalid_field(1, Some(1)));
    }
    if b1 & 0x01 != 0 {
        return Some(invalid_field(1, Some(0)));
    }
    None
}

/// RESERVE(6) / RESERVE(10).
pub fn reserve(
    lu: &LogicalUnit,
    nexus: &Nexus,
    cdb: &[u8],
    _data_in: &mut dyn DataIn,
    _data_out: &dyn DataOut,
) -> CommandResult {
    if let Some(r) = check_cdb(cdb) {
        return r;
    }
    let port = Port::of(nexus);
    let r = lu.reservations().change(|s| {
        if let Some(r) = under_persistent(s, &port) {
            return r;
        }
        match &s.spc2 {
            Some(h) if *h != port => Err(conflict()),
            _ => {
                s.spc2 = Some(port.clone());
                Ok(())
            }
        }
    });
    r.map_or_else(|e| e, |()| CommandResult::good(0))
}

/// RELEASE(6) / RELEASE(10): releases the holder's reservation; from any
/// other I_T nexus, GOOD and nothing changes.
pub fn release(
    lu: &LogicalUnit,
    nexus: &Nexus,
    cdb: &[u8],
    _data_in: &mut dyn DataIn,
    _data_out: &dyn DataOut,
) -> CommandResult {
    if let Some(r) = check_cdb(cdb) {
        return r;
    }
    let port = Port::of(nexus);
    let r = lu.reservations().change(|s| {
        if let Some(r) = under_persistent(s, &port) {
            return r;
        }
        if s.spc2.as_ref() == Some(&port) {
            s.spc2 = None;
        }
        Ok(())
    });
    r.map_or_else(|e| e, |()| CommandResult::good(0))
}
