//! SCSI status codes (SAM-5 §5.3.1).
//!
//! The status byte ends every command. Only [`GOOD`], [`CHECK_CONDITION`]
//! (sense data accompanies it), [`BUSY`], [`RESERVATION_CONFLICT`],
//! [`TASK_SET_FULL`], [`ACA_ACTIVE`] and [`TASK_ABORTED`] are current;
//! the others are obsolete but still decoded for display.

/// The command completed without error.
pub const GOOD: u8 = 0x00;
/// Sense data describes why the command did not complete normally.
pub const CHECK_CONDITION: u8 = 0x02;
/// A PRE-FETCH or similar condition was met.
pub const CONDITION_MET: u8 = 0x04;
/// The logical unit is busy; the initiator may retry later.
pub const BUSY: u8 = 0x08;
/// Obsolete (linked commands).
pub const INTERMEDIATE: u8 = 0x10;
/// Obsolete (linked commands).
pub const INTERMEDIATE_CONDITION_MET: u8 = 0x14;
/// The logical unit is reserved by another I_T nexus.
pub const RESERVATION_CONFLICT: u8 = 0x18;
/// Obsolete.
pub const COMMAND_TERMINATED: u8 = 0x22;
/// The task set is full; the initiator should send fewer commands.
pub const TASK_SET_FULL: u8 = 0x28;
/// An ACA condition exists.
pub const ACA_ACTIVE: u8 = 0x30;
/// The command was aborted on behalf of another I_T nexus (TAS=1).
pub const TASK_ABORTED: u8 = 0x40;

/// Name of a status code as SAM-5 spells it; `"RESERVED"` for unassigned values.
pub fn name(status: u8) -> &'static str {
    match status {
        GOOD => "GOOD",
        CHECK_CONDITION => "CHECK CONDITION",
        CONDITION_MET => "CONDITION MET",
        BUSY => "BUSY",
        INTERMEDIATE => "INTERMEDIATE",
        INTERMEDIATE_CONDITION_MET => "INTERMEDIATE-CONDITION MET",
        RESERVATION_CONFLICT => "RESERVATION CONFLICT",
        COMMAND_TERMINATED => "COMMAND TERMINATED",
        TASK_SET_FULL => "TASK SET FULL",
        ACA_ACTIVE => "ACA ACTIVE",
        TASK_ABORTED => "TASK ABORTED",
        _ => "RESERVED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_sam5() {
        assert_eq!(name(0x00), "GOOD");
        assert_eq!(name(0x02), "CHECK CONDITION");
        assert_eq!(name(0x18), "RESERVATION CONFLICT");
        assert_eq!(name(0x28), "TASK SET FULL");
        assert_eq!(name(0x40), "TASK ABORTED");
        assert_eq!(name(0x01), "RESERVED");
    }
}
