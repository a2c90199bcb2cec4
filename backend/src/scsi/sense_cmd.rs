//! REQUEST SENSE (SPC-5).
//!
//! Sense data always travels with CHECK CONDITION (autosense: the
//! virtio-scsi response carries it), so no sense is ever left pending and
//! REQUEST SENSE reports NO SENSE (0/00/00) — except for a LUN that does not
//! exist, where SPC-5 requires LOGICAL UNIT NOT SUPPORTED as parameter data
//! with GOOD status. DESC (byte 1 bit 0) selects descriptor format
//! (SPC-5 §4.4.2) over fixed format (§4.4.3); ALLOCATION LENGTH is byte 4.

use vscsi_protocol::cdb::byte;
use vscsi_protocol::sense::Sense;

use super::command::{respond, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::{LogicalUnit, STATE_NO_MEDIUM, STATE_STOPPED};
use super::nexus::Nexus;

/// Returns `sense` as REQUEST SENSE parameter data, GOOD status.
pub(crate) fn respond_with(cdb: &[u8], data_in: &mut dyn DataIn, sense: Sense) -> CommandResult {
    let alloc = usize::from(byte(cdb, 4));
    if byte(cdb, 1) & 1 != 0 {
        let (b, n) = sense.to_descriptor();
        respond(data_in, alloc, &b[..n])
    } else {
        respond(data_in, alloc, &sense.to_fixed())
    }
}

/// REQUEST SENSE to an existing logical unit: a pending unit attention
/// (the logical unit's, then one established for `nexus` alone) is
/// reported and cleared.
pub(crate) fn request_sense(
    lu: &LogicalUnit,
    nexus: &Nexus,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let pending = lu
        .take_unit_attention()
        .or_else(|| lu.reservations().take_attention(nexus));
    let sense = match pending {
        Some(ua) => ua,
        None if lu.attention() & STATE_NO_MEDIUM != 0 => Sense::MEDIUM_NOT_PRESENT,
        None if lu.attention() & STATE_STOPPED != 0 => {
            Sense::NOT_READY_INITIALIZING_COMMAND_REQUIRED
        }
        None => Sense::NO_SENSE,
    };
    respond_with(cdb, data_in, sense)
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run_cdb};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    #[test]
    fn no_sense_fixed_and_descriptor() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::request_sense(false, 252), 252);
        assert!(r.is_good());
        assert_eq!(
            data,
            [0x70, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let (r, data) = run_cdb(t, 0, Cdb::request_sense(true, 252), 252);
        assert!(r.is_good());
        assert_eq!(data, [0x72, 0, 0, 0, 0, 0, 0, 0]);
        let (_, data) = run_cdb(t, 0, Cdb::request_sense(false, 8), 252);
        assert_eq!(data.len(), 8);
    }

    #[test]
    fn missing_lun_reports_5_25_00_with_good_status() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 7, Cdb::request_sense(false, 18), 252);
        assert!(r.is_good());
        assert_eq!(
            data,
            [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0, 0, 0, 0, 0]
        );
    }
}
