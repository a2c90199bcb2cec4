//! SCSI operation codes (SPC-5 §4.2.5 and its numeric order codes annex, SBC-4 §5).
//!
//! The first byte of every CDB is the OPERATION CODE. Its top three bits are
//! the GROUP CODE, which fixes the CDB length for all but the variable-length
//! and vendor-specific groups (SPC-5 §4.2.5.1): see [`cdb_len`].
//! Commands that multiplex several functions behind one operation code carry a
//! SERVICE ACTION in byte 1 bits 4..0 (SPC-5 §4.2.5.2), see the `SAI_*` and
//! `MI_*` constants.

/// TEST UNIT READY (SPC-5).
pub const TEST_UNIT_READY: u8 = 0x00;
/// REZERO UNIT (obsolete).
pub const REZERO_UNIT: u8 = 0x01;
/// REQUEST SENSE (SPC-5).
pub const REQUEST_SENSE: u8 = 0x03;
/// FORMAT UNIT (SBC-4).
pub const FORMAT_UNIT: u8 = 0x04;
/// READ BLOCK LIMITS (SSC; tapes).
pub const READ_BLOCK_LIMITS: u8 = 0x05;
/// REASSIGN BLOCKS (SBC-4).
pub const REASSIGN_BLOCKS: u8 = 0x07;
/// READ(6) (SBC-4, obsolete in SBC-4 but still sent by some initiators).
pub const READ_6: u8 = 0x08;
/// WRITE(6) (SBC-4, obsolete in SBC-4 but still sent by some initiators).
pub const WRITE_6: u8 = 0x0A;
/// SEEK(6) (obsolete).
pub const SEEK_6: u8 = 0x0B;
/// INQUIRY (SPC-5).
pub const INQUIRY: u8 = 0x12;
/// MODE SELECT(6) (SPC-5).
pub const MODE_SELECT_6: u8 = 0x15;
/// RESERVE(6) (obsolete, SPC-2).
pub const RESERVE_6: u8 = 0x16;
/// RELEASE(6) (obsolete, SPC-2).
pub const RELEASE_6: u8 = 0x17;
/// MODE SENSE(6) (SPC-5).
pub const MODE_SENSE_6: u8 = 0x1A;
/// START STOP UNIT (SBC-4).
pub const START_STOP_UNIT: u8 = 0x1B;
/// RECEIVE DIAGNOSTIC RESULTS (SPC-5).
pub const RECEIVE_DIAGNOSTIC_RESULTS: u8 = 0x1C;
/// SEND DIAGNOSTIC (SPC-5).
pub const SEND_DIAGNOSTIC: u8 = 0x1D;
/// PREVENT ALLOW MEDIUM REMOVAL (SBC-4).
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
/// READ FORMAT CAPACITIES (MMC).
pub const READ_FORMAT_CAPACITIES: u8 = 0x23;
/// READ CAPACITY(10) (SBC-4).
pub const READ_CAPACITY_10: u8 = 0x25;
/// READ(10) (SBC-4).
pub const READ_10: u8 = 0x28;
/// WRITE(10) (SBC-4).
pub const WRITE_10: u8 = 0x2A;
/// SEEK(10) (obsolete).
pub const SEEK_10: u8 = 0x2B;
/// WRITE AND VERIFY(10) (SBC-4).
pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
/// VERIFY(10) (SBC-4).
pub const VERIFY_10: u8 = 0x2F;
/// PRE-FETCH(10) (SBC-4).
pub const PRE_FETCH_10: u8 = 0x34;
/// SYNCHRONIZE CACHE(10) (SBC-4).
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
/// READ DEFECT DATA(10) (SBC-4).
pub const READ_DEFECT_DATA_10: u8 = 0x37;
/// WRITE BUFFER (SPC-5).
pub const WRITE_BUFFER: u8 = 0x3B;
/// READ BUFFER(10) (SPC-5).
pub const READ_BUFFER_10: u8 = 0x3C;
/// READ LONG(10) (obsolete).
pub const READ_LONG_10: u8 = 0x3E;
/// WRITE SAME(10) (SBC-4).
pub const WRITE_SAME_10: u8 = 0x41;
/// UNMAP (SBC-4).
pub const UNMAP: u8 = 0x42;
/// READ TOC/PMA/ATIP (MMC).
pub const READ_TOC: u8 = 0x43;
/// GET CONFIGURATION (MMC).
pub const GET_CONFIGURATION: u8 = 0x46;
/// GET EVENT STATUS NOTIFICATION (MMC).
pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4A;
/// READ DISC INFORMATION (MMC-6).
pub const READ_DISC_INFORMATION: u8 = 0x51;
/// LOG SELECT (SPC-5).
pub const LOG_SELECT: u8 = 0x4C;
/// LOG SENSE (SPC-5).
pub const LOG_SENSE: u8 = 0x4D;
/// SANITIZE (SBC-4).
pub const SANITIZE: u8 = 0x48;
/// MODE SELECT(10) (SPC-5).
pub const MODE_SELECT_10: u8 = 0x55;
/// RESERVE(10) (obsolete).
pub const RESERVE_10: u8 = 0x56;
/// RELEASE(10) (obsolete).
pub const RELEASE_10: u8 = 0x57;
/// MODE SENSE(10) (SPC-5).
pub const MODE_SENSE_10: u8 = 0x5A;
/// PERSISTENT RESERVE IN (SPC-5).
pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
/// PERSISTENT RESERVE OUT (SPC-5).
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
/// Variable-length CDB (SPC-5 §4.2.3); the length is in byte 7.
pub const VARIABLE_LENGTH_CDB: u8 = 0x7F;
/// EXTENDED COPY (SPC-5).
pub const EXTENDED_COPY: u8 = 0x83;
/// RECEIVE COPY RESULTS (SPC-5).
pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
/// ATA PASS-THROUGH(16) (SAT).
pub const ATA_PASS_THROUGH_16: u8 = 0x85;
/// READ(16) (SBC-4).
pub const READ_16: u8 = 0x88;
/// COMPARE AND WRITE (SBC-4).
pub const COMPARE_AND_WRITE: u8 = 0x89;
/// WRITE(16) (SBC-4).
pub const WRITE_16: u8 = 0x8A;
/// WRITE AND VERIFY(16) (SBC-4).
pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
/// VERIFY(16) (SBC-4).
pub const VERIFY_16: u8 = 0x8F;
/// PRE-FETCH(16) (SBC-4).
pub const PRE_FETCH_16: u8 = 0x90;
/// SYNCHRONIZE CACHE(16) (SBC-4).
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
/// WRITE SAME(16) (SBC-4).
pub const WRITE_SAME_16: u8 = 0x93;
/// ORWRITE(16) (SBC-4).
pub const ORWRITE_16: u8 = 0x8B;
/// WRITE ATOMIC(16) (SBC-4).
pub const WRITE_ATOMIC_16: u8 = 0x9C;
/// SERVICE ACTION IN(16) (SPC-5, SBC-4): READ CAPACITY(16) and friends.
pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
/// SERVICE ACTION OUT(16).
pub const SERVICE_ACTION_OUT_16: u8 = 0x9F;
/// REPORT LUNS (SPC-5).
pub const REPORT_LUNS: u8 = 0xA0;
/// ATA PASS-THROUGH(12) (SAT).
pub const ATA_PASS_THROUGH_12: u8 = 0xA1;
/// SECURITY PROTOCOL IN (SPC-5).
pub const SECURITY_PROTOCOL_IN: u8 = 0xA2;
/// MAINTENANCE IN (SPC-5): REPORT SUPPORTED OPERATION CODES and friends.
pub const MAINTENANCE_IN: u8 = 0xA3;
/// MAINTENANCE OUT (SPC-5).
pub const MAINTENANCE_OUT: u8 = 0xA4;
/// READ(12) (SBC-4).
pub const READ_12: u8 = 0xA8;
/// WRITE(12) (SBC-4).
pub const WRITE_12: u8 = 0xAA;
/// WRITE AND VERIFY(12) (SBC-4).
pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
/// VERIFY(12) (SBC-4).
pub const VERIFY_12: u8 = 0xAF;
/// MECHANISM STATUS (MMC-6).
pub const MECHANISM_STATUS: u8 = 0xBD;
/// SECURITY PROTOCOL OUT (SPC-5).
pub const SECURITY_PROTOCOL_OUT: u8 = 0xB5;
/// READ DEFECT DATA(12) (SBC-4).
pub const READ_DEFECT_DATA_12: u8 = 0xB7;

/// SERVICE ACTION IN(16) service action: READ CAPACITY(16) (SBC-4).
pub const SAI_READ_CAPACITY_16: u8 = 0x10;
/// SERVICE ACTION IN(16) service action: GET LBA STATUS (SBC-4).
pub const SAI_GET_LBA_STATUS: u8 = 0x12;
/// MAINTENANCE IN service action: REPORT TARGET PORT GROUPS (SPC-5).
pub const MI_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
/// MAINTENANCE IN service action: REPORT SUPPORTED OPERATION CODES (SPC-5).
pub const MI_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0C;
/// MAINTENANCE IN service action: REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-5).
pub const MI_REPORT_SUPPORTED_TMFS: u8 = 0x0D;

/// The command name of an operation code, as SPC-5 spells it;
/// `None` for codes this table does not know.
///
/// Service-action commands are named after the operation code
/// (`SERVICE ACTION IN(16)`), since the service action is not known here.
pub fn name(opcode: u8) -> Option<&'static str> {
    Some(match opcode {
        TEST_UNIT_READY => "TEST UNIT READY",
        REZERO_UNIT => "REZERO UNIT",
        REQUEST_SENSE => "REQUEST SENSE",
        FORMAT_UNIT => "FORMAT UNIT",
        READ_BLOCK_LIMITS => "READ BLOCK LIMITS",
        REASSIGN_BLOCKS => "REASSIGN BLOCKS",
        READ_6 => "READ(6)",
        WRITE_6 => "WRITE(6)",
        SEEK_6 => "SEEK(6)",
        INQUIRY => "INQUIRY",
        MODE_SELECT_6 => "MODE SELECT(6)",
        RESERVE_6 => "RESERVE(6)",
        RELEASE_6 => "RELEASE(6)",
        MODE_SENSE_6 => "MODE SENSE(6)",
        START_STOP_UNIT => "START STOP UNIT",
        RECEIVE_DIAGNOSTIC_RESULTS => "RECEIVE DIAGNOSTIC RESULTS",
        SEND_DIAGNOSTIC => "SEND DIAGNOSTIC",
        PREVENT_ALLOW_MEDIUM_REMOVAL => "PREVENT ALLOW MEDIUM REMOVAL",
        READ_FORMAT_CAPACITIES => "READ FORMAT CAPACITIES",
        READ_CAPACITY_10 => "READ CAPACITY(10)",
        READ_10 => "READ(10)",
        WRITE_10 => "WRITE(10)",
        SEEK_10 => "SEEK(10)",
        WRITE_AND_VERIFY_10 => "WRITE AND VERIFY(10)",
        VERIFY_10 => "VERIFY(10)",
        PRE_FETCH_10 => "PRE-FETCH(10)",
        SYNCHRONIZE_CACHE_10 => "SYNCHRONIZE CACHE(10)",
        READ_DEFECT_DATA_10 => "READ DEFECT DATA(10)",
        WRITE_BUFFER => "WRITE BUFFER",
        READ_BUFFER_10 => "READ BUFFER(10)",
        READ_LONG_10 => "READ LONG(10)",
        WRITE_SAME_10 => "WRITE SAME(10)",
        UNMAP => "UNMAP",
        READ_TOC => "READ TOC/PMA/ATIP",
        GET_CONFIGURATION => "GET CONFIGURATION",
        GET_EVENT_STATUS_NOTIFICATION => "GET EVENT STATUS NOTIFICATION",
        READ_DISC_INFORMATION => "READ DISC INFORMATION",
        LOG_SELECT => "LOG SELECT",
        LOG_SENSE => "LOG SENSE",
        MODE_SELECT_10 => "MODE SELECT(10)",
        RESERVE_10 => "RESERVE(10)",
        RELEASE_10 => "RELEASE(10)",
        MODE_SENSE_10 => "MODE SENSE(10)",
        PERSISTENT_RESERVE_IN => "PERSISTENT RESERVE IN",
        PERSISTENT_RESERVE_OUT => "PERSISTENT RESERVE OUT",
        VARIABLE_LENGTH_CDB => "VARIABLE LENGTH CDB",
        EXTENDED_COPY => "EXTENDED COPY",
        RECEIVE_COPY_RESULTS => "RECEIVE COPY RESULTS",
        ATA_PASS_THROUGH_16 => "ATA PASS-THROUGH(16)",
        READ_16 => "READ(16)",
        COMPARE_AND_WRITE => "COMPARE AND WRITE",
        WRITE_16 => "WRITE(16)",
        WRITE_AND_VERIFY_16 => "WRITE AND VERIFY(16)",
        VERIFY_16 => "VERIFY(16)",
        PRE_FETCH_16 => "PRE-FETCH(16)",
        SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE CACHE(16)",
        WRITE_SAME_16 => "WRITE SAME(16)",
        SERVICE_ACTION_IN_16 => "SERVICE ACTION IN(16)",
        SERVICE_ACTION_OUT_16 => "SERVICE ACTION OUT(16)",
        REPORT_LUNS => "REPORT LUNS",
        ATA_PASS_THROUGH_12 => "ATA PASS-THROUGH(12)",
        SECURITY_PROTOCOL_IN => "SECURITY PROTOCOL IN",
        MAINTENANCE_IN => "MAINTENANCE IN",
        MAINTENANCE_OUT => "MAINTENANCE OUT",
        READ_12 => "READ(12)",
        WRITE_12 => "WRITE(12)",
        WRITE_AND_VERIFY_12 => "WRITE AND VERIFY(12)",
        VERIFY_12 => "VERIFY(12)",
        MECHANISM_STATUS => "MECHANISM STATUS",
        SECURITY_PROTOCOL_OUT => "SECURITY PROTOCOL OUT",
        READ_DEFECT_DATA_12 => "READ DEFECT DATA(12)",
        _ => return None,
    })
}

/// CDB length implied by the GROUP CODE (bits 7..5) of `opcode`
/// (SPC-5 §4.2.5.1): group 0 → 6 bytes, groups 1 and 2 → 10,
/// group 4 → 16, group 5 → 12. Group 3 (reserved, and the variable-length
/// CDB 7Fh) and the vendor-specific groups 6 and 7 → `None`.
pub const fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_codes_give_cdb_lengths() {
        assert_eq!(cdb_len(TEST_UNIT_READY), Some(6));
        assert_eq!(cdb_len(INQUIRY), Some(6));
        assert_eq!(cdb_len(READ_10), Some(10));
        assert_eq!(cdb_len(MODE_SENSE_10), Some(10));
        assert_eq!(cdb_len(READ_16), Some(16));
        assert_eq!(cdb_len(SERVICE_ACTION_IN_16), Some(16));
        assert_eq!(cdb_len(REPORT_LUNS), Some(12));
        assert_eq!(cdb_len(READ_12), Some(12));
        assert_eq!(cdb_len(VARIABLE_LENGTH_CDB), None);
        assert_eq!(cdb_len(0xC0), None);
        assert_eq!(cdb_len(0xFF), None);
    }

    #[test]
    fn names() {
        assert_eq!(name(READ_CAPACITY_10), Some("READ CAPACITY(10)"));
        assert_eq!(name(SYNCHRONIZE_CACHE_10), Some("SYNCHRONIZE CACHE(10)"));
        assert_eq!(name(0x35), Some("SYNCHRONIZE CACHE(10)"));
        assert_eq!(name(0xFF), None);
        // Every named opcode whose group has a fixed length gets one.
        for op in 0..=255u8 {
            if name(op).is_some() && op != VARIABLE_LENGTH_CDB {
                assert!(cdb_len(op).is_some(), "{op:#x}");
            }
        }
    }
}
