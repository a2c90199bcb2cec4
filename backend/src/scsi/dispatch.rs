//! The opcode table: the one place that says which commands exist, how
//! long their CDBs are, and which function executes them.
//!
//! [`COMMANDS`] is also the data REPORT SUPPORTED OPERATION CODES (SPC-5)
//! will be generated from. Lookup validates what is common to every CDB
//! before a handler runs, so handlers see a CDB of exactly the length the
//! table gives and can index it freely:
//!
//! - no opcode, or an opcode not in the table → 5/20/00 INVALID COMMAND
//!   OPERATION CODE (SPC-5 §4.2.5.1);
//! - an opcode with service actions but an unknown SERVICE ACTION → 5/24/00
//!   INVALID FIELD IN CDB pointing at byte 1 bit 4 (SPC-5 §4.2.5.2);
//! - a CDB shorter than its opcode needs → 5/24/00 INVALID FIELD IN CDB
//!   (field pointer at the first missing byte);
//! - NACA=1 in the CONTROL byte → 5/24/00 pointing at it: ACA is not
//!   supported (SAM-5 NACA bit / SPC-5 §4.2.5.7 CONTROL byte).

use vscsi_protocol::cdb::byte;
use vscsi_protocol::opcode as op;
use vscsi_protocol::sense::Sense;

use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;
use super::{capacity, inquiry, mode, rw, sense_cmd, sync, CommandResult};

/// A handler for a command addressed to an existing logical unit; `cdb`
/// is exactly [`Command::cdb_len`] bytes.
pub(crate) type LuHandler = fn(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult;

/// Who executes a command.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// The logical unit.
    Lu(LuHandler),
    /// The target (REPORT LUNS, SPC-5: answered for any LUN, present or not).
    ReportLuns,
}

/// One supported command.
pub struct Command {
    /// OPERATION CODE.
    pub opcode: u8,
    /// SERVICE ACTION (byte 1 bits 4-0), for multiplexed opcodes.
    pub service_action: Option<u8>,
    /// Command name as in SPC-5 / SBC-4.
    pub name: &'static str,
    /// CDB length in bytes.
    pub cdb_len: u8,
    /// Whether the command transfers data from the initiator (Data-Out).
    pub data_out: bool,
    pub(crate) handler: Handler,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("opcode", &format_args!("{:#04x}", self.opcode))
            .field("service_action", &self.service_action)
            .field("name", &self.name)
            .field("cdb_len", &self.cdb_len)
            .finish()
    }
}

const fn lu(opcode: u8, name: &'static str, cdb_len: u8, data_out: bool, f: LuHandler) -> Command {
    Command {
        opcode,
        service_action: None,
        name,
        cdb_len,
        data_out,
        handler: Handler::Lu(f),
    }
}

/// TEST UNIT READY (SPC-5): the medium is always present and ready.
fn test_unit_ready(
    _: &LogicalUnit,
    _: &[u8],
    _: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    CommandResult::good(0)
}

/// Every supported command. READ/WRITE come first: they are the hot path
/// and the lookup is a linear scan.
pub static COMMANDS: &[Command] = &[
    lu(op::READ_10, "READ(10)", 10, false, rw::read),
    lu(op::WRITE_10, "WRITE(10)", 10, true, rw::write),
    lu(op::READ_16, "READ(16)", 16, false, rw::read),
    lu(op::WRITE_16, "WRITE(16)", 16, true, rw::write),
    lu(op::READ_12, "READ(12)", 12, false, rw::read),
    lu(op::WRITE_12, "WRITE(12)", 12, true, rw::write),
    lu(op::READ_6, "READ(6)", 6, false, rw::read),
    lu(op::WRITE_6, "WRITE(6)", 6, true, rw::write),
    lu(
        op::TEST_UNIT_READY,
        "TEST UNIT READY",
        6,
        false,
        test_unit_ready,
    ),
    lu(
        op::REQUEST_SENSE,
        "REQUEST SENSE",
        6,
        false,
        sense_cmd::request_sense,
    ),
    lu(op::INQUIRY, "INQUIRY", 6, false, inquiry::inquiry),
    lu(
        op::MODE_SENSE_6,
        "MODE SENSE(6)",
        6,
        false,
        mode::mode_sense,
    ),
    lu(
        op::MODE_SENSE_10,
        "MODE SENSE(10)",
        10,
        false,
        mode::mode_sense,
    ),
    lu(
        op::READ_CAPACITY_10,
        "READ CAPACITY(10)",
        10,
        false,
        capacity::read_capacity_10,
    ),
    Command {
        opcode: op::SERVICE_ACTION_IN_16,
        service_action: Some(op::SAI_READ_CAPACITY_16),
        name: "READ CAPACITY(16)",
        cdb_len: 16,
        data_out: false,
        handler: Handler::Lu(capacity::read_capacity_16),
    },
    lu(
        op::SYNCHRONIZE_CACHE_10,
        "SYNCHRONIZE CACHE(10)",
        10,
        false,
        sync::synchronize_cache,
    ),
    lu(
        op::SYNCHRONIZE_CACHE_16,
        "SYNCHRONIZE CACHE(16)",
        16,
        false,
        sync::synchronize_cache,
    ),
    Command {
        opcode: op::REPORT_LUNS,
        service_action: None,
        name: "REPORT LUNS",
        cdb_len: 12,
        data_out: false,
        handler: Handler::ReportLuns,
    },
];

/// Finds the command for `cdb` and checks the fields common to all CDBs
/// (see the module documentation). On success the CDB holds at least
/// `cdb_len` bytes.
pub fn lookup(cdb: &[u8]) -> Result<&'static Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::INVALID_COMMAND_OPERATION_CODE);
    };
    let mut has_service_actions = false;
    let sa = byte(cdb, 1) & 0x1F;
    let found = COMMANDS.iter().find(|c| {
        c.opcode == opcode
            && match c.service_action {
                None => true,
                Some(s) => {
                    has_service_actions = true;
                    s == sa
                }
            }
    });
    let Some(cmd) = found else {
        return Err(if has_service_actions {
            Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, 1, Some(4))
        } else {
            Sense::INVALID_COMMAND_OPERATION_CODE
        });
    };
    let len = usize::from(cmd.cdb_len);
    if cdb.len() < len {
        return Err(Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, cdb.len() as u16, None));
    }
    if cdb[len - 1] & 0x04 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.with_field_pointer(
            true,
            (len - 1) as u16,
            Some(2),
        ));
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vscsi_protocol::cdb::Cdb;
    use vscsi_protocol::opcode::cdb_len;

    #[test]
    fn table_is_consistent() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert_eq!(
                cdb_len(c.opcode),
                Some(usize::from(c.cdb_len)),
                "{}",
                c.name
            );
            for d in &COMMANDS[i + 1..] {
                assert!(
                    !(c.opcode == d.opcode && c.service_action == d.service_action),
                    "duplicate {}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn lookup_rejects_bad_cdbs() {
        assert_eq!(
            lookup(&[]).unwrap_err(),
            Sense::INVALID_COMMAND_OPERATION_CODE
        );
        assert_eq!(
            lookup(&[0xFF; 16]).unwrap_err(),
            Sense::INVALID_COMMAND_OPERATION_CODE
        );
        // SERVICE ACTION IN(16) with GET LBA STATUS: not supported.
        let mut c = Cdb::read_capacity_16(32).padded::<16>();
        c[1] = 0x12;
        assert_eq!(
            lookup(&c).unwrap_err(),
            Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, 1, Some(4))
        );
        // Too short.
        assert_eq!(
            lookup(&[op::READ_10, 0, 0]).unwrap_err(),
            Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, 3, None)
        );
        // NACA.
        let mut c = Cdb::read_10(0, 1, false).padded::<10>();
        c[9] = 0x04;
        assert_eq!(
            lookup(&c).unwrap_err(),
            Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, 9, Some(2))
        );
        assert_eq!(
            lookup(Cdb::read_capacity_16(32).as_bytes()).unwrap().name,
            "READ CAPACITY(16)"
        );
        // Padding beyond the CDB length (virtio's 32 bytes) is fine.
        assert_eq!(
            lookup(&Cdb::inquiry(false, 0, 36).padded::<32>())
                .unwrap()
                .name,
            "INQUIRY"
        );
    }
}
