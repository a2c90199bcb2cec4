//! TEST UNIT READY (SPC-5), START STOP UNIT and PREVENT ALLOW MEDIUM
//! REMOVAL (SBC-4): the unit's power and removal state.
//!
//! - TEST UNIT READY: GOOD when the unit is started; while stopped the
//!   target answers it (like every medium-access command) with NOT READY,
//!   INITIALIZING COMMAND REQUIRED (2/04/02) before this handler runs.
//! - START STOP UNIT (SBC-4 START STOP UNIT command table): POWER
//!   CONDITION 0h with START=0 stops the unit (after a flush of the write
//!   cache unless NO_FLUSH), START=1 starts it. The power conditions
//!   ACTIVE (1h), IDLE (2h), STANDBY (3h), LU_CONTROL (7h), FORCE_IDLE_0
//!   (Ah) and FORCE_STANDBY_0 (Bh) are accepted and change nothing (a file
//!   has no spindle); any other value is INVALID FIELD IN CDB. On a
//!   removable LU (the CD-ROM) LOEJ=1 with START=0 ejects the medium
//!   (MEDIUM REMOVAL PREVENTED, 5/53/02, while prevented) and with START=1
//!   loads it again (MEDIUM MAY HAVE CHANGED unit attention). LOEJ on a
//!   non-removable disk is ignored, as QEMU's scsi-hd does. IMMED is
//!   accepted: the command completes before status either way.
//! - PREVENT ALLOW MEDIUM REMOVAL (SBC-4): PREVENT 00b allows, 01b
//!   prevents; 10b/11b (obsolete) → INVALID FIELD IN CDB. The state is kept
//!   (and cleared by a logical unit reset).

use vscsi_protocol::cdb::byte;

use super::command::{invalid_field, io_error_sense, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// TEST UNIT READY.
pub(crate) fn test_unit_ready(
    _: &LogicalUnit,
    _: &[u8],
    _: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    CommandResult::good(0)
}

/// START STOP UNIT.
pub(crate) fn start_stop_unit(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let b4 = byte(cdb, 4);
    let power_condition = b4 >> 4;
    let no_flush = b4 & 0x04 != 0;
    let start = b4 & 0x01 != 0;
    match power_condition {
        0x0 => {}
        0x1 | 0x2 | 0x3 | 0x7 | 0xA | 0xB => return CommandResult::good(0),
        _ => return invalid_field(4, Some(7)),
    }
    if byte(cdb, 3) & 0x0F != 0 {
        // POWER CONDITION MODIFIER must be 0 with POWER CONDITION 0h.
        return invalid_field(3, Some(3));
    }
    if b4 & 0x02 != 0 && lu.options().removable {
        // LOEJ: START=0 ejects (unless prevented), START=1 loads.
        if start {
            lu.load();
            lu.set_stopped(false);
            return CommandResult::good(0);
        }
        return match lu.eject() {
            Ok(()) => CommandResult::good(0),
            Err(sense) => CommandResult::check_condition(sense),
        };
    }
    if start {
        lu.set_stopped(false);
        return CommandResult::good(0);
    }
    if !no_flush {
        if let Err(e) = lu.flush() {
            crate::limited_site!(warn, image = %lu.path().display(), error = %e, "flush before stop failed");
            return CommandResult::check_condition(io_error_sense(&e, true));
        }
    }
    lu.set_stopped(true);
    CommandResult::good(0)
}

/// PREVENT ALLOW MEDIUM REMOVAL.
pub(crate) fn prevent_allow_medium_removal(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    match byte(cdb, 4) & 0x03 {
        0 => lu.set_prevent(false),
        1 => lu.set_prevent(true),
        _ => return invalid_field(4, Some(1)),
    }
    CommandResult::good(0)
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    #[test]
    fn stop_makes_medium_commands_not_ready_until_start() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        // SBC-4 START STOP UNIT CDB: byte 4 = POWER CONDITION | NO_FLUSH | LOEJ | START.
        let (r, _) = run(t, 0, &[0x1B, 0, 0, 0, 0x00, 0], 0, &[]);
        assert!(r.is_good(), "{r:?}");
        assert!(t.lun(0).unwrap().attention() != 0);
        for cdb in [Cdb::test_unit_ready(), Cdb::read_10(0, 1, false)] {
            let (r, _) = run(t, 0, cdb.as_bytes(), 512, &[]);
            assert_eq!(
                r.sense(),
                &[0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x02, 0, 0, 0, 0]
            );
        }
        // INQUIRY, MODE SENSE, REQUEST SENSE still answer.
        assert!(run(t, 0, Cdb::inquiry(false, 0, 36).as_bytes(), 36, &[])
            .0
            .is_good());
        let (r, data) = run(t, 0, Cdb::request_sense(false, 18).as_bytes(), 18, &[]);
        assert!(r.is_good());
        assert_eq!((data[2], data[12], data[13]), (2, 4, 2));
        let (r, _) = run(t, 0, &[0x1B, 1, 0, 0, 0x01, 0], 0, &[]);
        assert!(r.is_good());
        assert!(run(t, 0, Cdb::test_unit_ready().as_bytes(), 0, &[])
            .0
            .is_good());
        // Power conditions are accepted; reserved ones refused.
        assert!(run(t, 0, &[0x1B, 0, 0, 0, 0x30, 0], 0, &[]).0.is_good());
        let (r, _) = run(t, 0, &[0x1B, 0, 0, 0, 0x50, 0], 0, &[]);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 4, Some(7)))
        );
    }

    #[test]
    fn prevent_allow() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let lu = t.lun(0).unwrap();
        assert!(run(t, 0, &[0x1E, 0, 0, 0, 1, 0], 0, &[]).0.is_good());
        assert!(lu.removal_prevented());
        assert!(run(t, 0, &[0x1E, 0, 0, 0, 0, 0], 0, &[]).0.is_good());
        assert!(!lu.removal_prevented());
        let (r, _) = run(t, 0, &[0x1E, 0, 0, 0, 2, 0], 0, &[]);
        assert_eq!(triple(&r), (5, 0x24, 0));
    }
}
