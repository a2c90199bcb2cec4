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

use super::command::CommandResult;
use super::io::{DataIn, DataOut};
use super::lu::{DeviceType, LogicalUnit};
use super::nexus::Nexus;
use super::reservation::{pr_in, pr_out, spc2, Access};
use super::{
    atomic, buffer, capacity, cdrom, defect, format, log_sense, maintenance, mode, prefetch,
    provisioning, rw, sense_cmd, sync, unit, verify,
};

/// A handler for a command addressed to an existing logical unit; `cdb`
/// is exactly [`Command::cdb_len`] bytes.
pub(crate) type LuHandler = fn(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult;

/// A handler for a command whose effect depends on the I_T nexus it came
/// from (reservations).
pub(crate) type NexusHandler = fn(
    lu: &LogicalUnit,
    nexus: &Nexus,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult;

/// Who executes a command.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// The logical unit.
    Lu(LuHandler),
    /// The logical unit, told the I_T nexus.
    Nexus(NexusHandler),
    /// The target (REPORT LUNS, SPC-5: answered for any LUN, present or not).
    ReportLuns,
    /// INQUIRY: the logical unit, with the target port the command came
    /// through (VPD 83h reports it, see [`super::target_port`]).
    Inquiry,
    /// REPORT SUPPORTED OPERATION CODES: the logical unit, through
    /// [`super::supported_opcodes`], which reads this table.
    SupportedOperationCodes,
}

/// Which logical units offer a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Every logical unit.
    Any,
    /// Direct-access block devices (disks) only.
    Disk,
    /// Thin-provisioned disks only (the image can punch holes).
    Thin,
    /// CD-ROMs only (MMC-6).
    Cdrom,
    /// Disks that make atomic writes ([`atomic::supports_atomic_writes`]).
    Atomic,
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
    /// CDB USAGE DATA for REPORT SUPPORTED OPERATION CODES (SPC-5): the
    /// opcode, then per byte the bits the device server evaluates
    /// (service action bits hold the service action); `cdb_len` bytes.
    pub usage: &'static [u8],
    /// Accesses the medium: NOT READY while the unit is stopped.
    pub medium: bool,
    /// Needs the (removable) medium loaded: MEDIUM NOT PRESENT otherwise.
    pub present: bool,
    /// Which logical units offer it.
    pub needs: Needs,
    /// RECOMMENDED COMMAND TIMEOUT in seconds (command timeouts descriptor).
    pub timeout: u32,
    /// What kind of command it is (statistics, device types).
    pub class: Class,
    /// A READ/WRITE whose data transfer a transport may run later; any
    /// other command runs only after the transfers in flight on its queue
    /// completed (so SYNCHRONIZE CACHE covers them and COMPARE AND WRITE
    /// never waits on its own queue).
    pub may_defer: bool,
    /// Answered for any LUN, present or not, and never with a pending unit
    /// attention.
    pub any_lun: bool,
    /// Offered by the REPORT LUNS well-known logical unit.
    pub well_known_lu: bool,
    /// How the command fares under a reservation held by another I_T
    /// nexus; `None`: from its class ([`Command::access`]).
    pub access_rule: Option<Access>,
    pub(crate) handler: Handler,
}

/// What kind of command an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Reads the medium into Data-In (READ).
    Read,
    /// Writes the medium (WRITE, WRITE AND VERIFY, WRITE SAME, COMPARE AND WRITE).
    Write,
    /// Compares with the medium, writes nothing (VERIFY).
    Verify,
    /// Anything else.
    Other,
}

/// What the table says about an opcode, for the checks made before a CDB
/// is looked up (every entry of one opcode agrees on these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpcodeInfo {
    /// [`Command::class`].
    pub class: Class,
    /// [`Command::may_defer`].
    pub may_defer: bool,
    /// [`Command::any_lun`].
    pub any_lun: bool,
    /// [`Command::well_known_lu`].
    pub well_known_lu: bool,
}

/// An opcode not in the table.
const NOT_IN_TABLE: OpcodeInfo = OpcodeInfo {
    class: Class::Other,
    may_defer: false,
    any_lun: false,
    well_known_lu: false,
};

/// [`OpcodeInfo`] of every opcode, built from [`TABLE`] at compile time.
static BY_OPCODE: [OpcodeInfo; 256] = {
    let mut t = [NOT_IN_TABLE; 256];
    let mut i = 0;
    while i < TABLE.len() {
        let c = &TABLE[i];
        t[c.opcode as usize] = OpcodeInfo {
            class: c.class,
            may_defer: c.may_defer,
            any_lun: c.any_lun,
            well_known_lu: c.well_known_lu,
        };
        i += 1;
    }
    t
};

/// What the table says about `opcode` (one array load).
pub fn opcode_info(opcode: u8) -> OpcodeInfo {
    BY_OPCODE[usize::from(opcode)]
}

/// Whether the command of `cdb` (only its first byte is read) may leave its
/// data transfer to the transport ([`Command::may_defer`]).
pub fn may_defer(cdb: &[u8]) -> bool {
    cdb.first().is_some_and(|&op| opcode_info(op).may_defer)
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

impl Command {
    /// The reservation access rule ([`super::reservation::access`]): the
    /// entry's own, else READ and VERIFY read ([`Access::ReadShared`]) and
    /// everything else modifies ([`Access::Modify`]: what SPC-5 says of
    /// every command it does not list as allowed); INQUIRY, REPORT LUNS and
    /// REQUEST SENSE (any LUN) always go ([`Access::Always`]).
    pub fn access(&self) -> Access {
        match (self.access_rule, self.class) {
            (Some(a), _) => a,
            (None, _) if self.any_lun => Access::Always,
            (None, Class::Read | Class::Verify) => Access::ReadShared,
            (None, _) => Access::Modify,
        }
    }

    /// Whether logical unit `lu` offers this command.
    pub fn available(&self, lu: &LogicalUnit) -> bool {
        let disk = lu.device_type() == DeviceType::Disk;
        match self.needs {
            Needs::Any => true,
            Needs::Disk => disk,
            Needs::Thin => disk && lu.thin(),
            Needs::Cdrom => !disk,
            Needs::Atomic => disk && atomic::supports_atomic_writes(lu),
        }
    }
}

const fn cmd(
    opcode: u8,
    name: &'static str,
    usage: &'static [u8],
    data_out: bool,
    medium: bool,
    f: LuHandler,
) -> Command {
    Command {
        opcode,
        service_action: None,
        name,
        cdb_len: usage.len() as u8,
        data_out,
        usage,
        medium,
        present: medium,
        needs: Needs::Any,
        timeout: 30,
        class: Class::Other,
        may_defer: false,
        any_lun: false,
        well_known_lu: false,
        access_rule: None,
        handler: Handler::Lu(f),
    }
}

/// A command told the I_T nexus ([`Handler::Nexus`]).
const fn nexus_cmd(
    opcode: u8,
    name: &'static str,
    usage: &'static [u8],
    data_out: bool,
    f: NexusHandler,
) -> Command {
    Command {
        handler: Handler::Nexus(f),
        ..cmd(opcode, name, usage, data_out, false, unit::test_unit_ready)
    }
}

/// PERSISTENT RESERVE IN's CDB usage data, per service action 0-3
/// (ALLOCATION LENGTH evaluated).
const PR_IN_USAGE: [[u8; 10]; 4] = {
    let mut u = [[0x5E, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]; 4];
    let mut i = 0;
    while i < 4 {
        u[i][1] = i as u8;
        i += 1;
    }
    u
};

/// PERSISTENT RESERVE OUT's CDB usage data, per service action 0-7
/// (SCOPE and TYPE for RESERVE, RELEASE, PREEMPT (AND ABORT); PARAMETER
/// LIST LENGTH).
const PR_OUT_USAGE: [[u8; 10]; 8] = {
    let mut u = [[0x5F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]; 8];
    let mut i = 0;
    while i < 8 {
        u[i][1] = i as u8;
        if matches!(
            i as u8,
            pr_out::RESERVE | pr_out::RELEASE | pr_out::PREEMPT | pr_out::PREEMPT_AND_ABORT
        ) {
            u[i][2] = 0xFF;
        }
        i += 1;
    }
    u
};

/// A PERSISTENT RESERVE IN service action: allowed under every persistent
/// reservation.
const fn pr_in_sa(name: &'static str, service_action: u8, usage: &'static [u8]) -> Command {
    let mut c = nexus_cmd(
        op::PERSISTENT_RESERVE_IN,
        name,
        usage,
        false,
        pr_in::persistent_reserve_in,
    );
    c.service_action = Some(service_action);
    access(c, Access::Allowed)
}

/// A PERSISTENT RESERVE OUT service action: it applies its own rules.
const fn pr_out_sa(name: &'static str, service_action: u8, usage: &'static [u8]) -> Command {
    let mut c = nexus_cmd(
        op::PERSISTENT_RESERVE_OUT,
        name,
        usage,
        true,
        pr_out::persistent_reserve_out,
    );
    c.service_action = Some(service_action);
    own_rules(c)
}

/// RESERVE / RELEASE / PERSISTENT RESERVE OUT: the command's own rules.
const fn own_rules(c: Command) -> Command {
    access(c, Access::OwnRules)
}

/// The entry's reservation access rule (SPC-5 / SBC-4 tables).
const fn access(mut c: Command, a: Access) -> Command {
    c.access_rule = Some(a);
    c
}

/// A READ: counted as a read; its transfer may be deferred.
const fn reads(mut c: Command) -> Command {
    c.class = Class::Read;
    c.may_defer = true;
    c
}

/// A command that writes the medium: counted as a write, and offered by
/// disks only (a CD-ROM answers INVALID COMMAND OPERATION CODE, as MMC
/// drives do).
const fn writes(mut c: Command) -> Command {
    c.class = Class::Write;
    c.needs = Needs::Disk;
    c
}

/// A WRITE whose transfer may be deferred.
const fn writes_deferrable(c: Command) -> Command {
    let mut c = writes(c);
    c.may_defer = true;
    c
}

/// A command that verifies against the medium: disks only.
const fn verifies(mut c: Command) -> Command {
    c.class = Class::Verify;
    c.needs = Needs::Disk;
    c
}

/// Answered for any LUN, with or without a logical unit, and never with a
/// pending unit attention (SAM-5: INQUIRY, REPORT LUNS, REQUEST SENSE).
const fn any_lun(mut c: Command) -> Command {
    c.any_lun = true;
    c
}

/// Offered by the REPORT LUNS well-known logical unit (SPC-5: INQUIRY,
/// REPORT LUNS, REQUEST SENSE, TEST UNIT READY).
const fn well_known_lu(mut c: Command) -> Command {
    c.well_known_lu = true;
    c
}

const fn disk(mut c: Command) -> Command {
    c.needs = Needs::Disk;
    c
}

const fn cdrom(mut c: Command) -> Command {
    c.needs = Needs::Cdrom;
    c
}

const fn present(mut c: Command) -> Command {
    c.present = true;
    c
}

const fn sa(mut c: Command, service_action: u8) -> Command {
    c.service_action = Some(service_action);
    c
}

const fn thin(mut c: Command) -> Command {
    c.needs = Needs::Thin;
    c
}

const fn slow(mut c: Command, timeout: u32) -> Command {
    c.timeout = timeout;
    c
}

/// Every supported command. READ/WRITE come first: they are the hot path
/// and the lookup is a linear scan. CDB usage data follows the CDB tables
/// of SPC-5 / SBC-4 for each command (control byte: NACA evaluated, 04h).
pub static COMMANDS: &[Command] = TABLE;

/// [`COMMANDS`] as a constant, so that [`BY_OPCODE`] is built from it.
const TABLE: &[Command] = &[
    reads(cmd(
        op::READ_10,
        "READ(10)",
        &[0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04],
        false,
        true,
        rw::read,
    )),
    writes_deferrable(cmd(
        op::WRITE_10,
        "WRITE(10)",
        &[0x2A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04],
        true,
        true,
        rw::write,
    )),
    reads(cmd(
        op::READ_16,
        "READ(16)",
        &[
            0x88, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, 0x04,
        ],
        false,
        true,
        rw::read,
    )),
    writes_deferrable(cmd(
        op::WRITE_16,
        "WRITE(16)",
        &[
            0x8A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, 0x04,
        ],
        true,
        true,
        rw::write,
    )),
    reads(cmd(
        op::READ_12,
        "READ(12)",
        &[
            0xA8, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x04,
        ],
        false,
        true,
        rw::read,
    )),
    writes_deferrable(cmd(
        op::WRITE_12,
        "WRITE(12)",
        &[
            0xAA, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x04,
        ],
        true,
        true,
        rw::write,
    )),
    reads(cmd(
        op::READ_6,
        "READ(6)",
        &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x04],
        false,
        true,
        rw::read,
    )),
    writes_deferrable(cmd(
        op::WRITE_6,
        "WRITE(6)",
        &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x04],
        true,
        true,
        rw::write,
    )),
    access(
        well_known_lu(cmd(
            op::TEST_UNIT_READY,
            "TEST UNIT READY",
            &[0x00, 0, 0, 0, 0, 0x04],
            false,
            true,
            unit::test_unit_ready,
        )),
        Access::Allowed,
    ),
    well_known_lu(any_lun(nexus_cmd(
        op::REQUEST_SENSE,
        "REQUEST SENSE",
        &[0x03, 0x01, 0, 0, 0xFF, 0x04],
        false,
        sense_cmd::request_sense,
    ))),
    Command {
        handler: Handler::Inquiry,
        ..well_known_lu(any_lun(cmd(
            op::INQUIRY,
            "INQUIRY",
            &[0x12, 0x03, 0xFF, 0xFF, 0xFF, 0x04],
            false,
            false,
            unit::test_unit_ready,
        )))
    },
    cmd(
        op::MODE_SELECT_6,
        "MODE SELECT(6)",
        &[0x15, 0x11, 0, 0, 0xFF, 0x04],
        true,
        false,
        mode::mode_select,
    ),
    access(
        cmd(
            op::MODE_SENSE_6,
            "MODE SENSE(6)",
            &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x04],
            false,
            false,
            mode::mode_sense,
        ),
        Access::ReadShared,
    ),
    access(
        cmd(
            op::START_STOP_UNIT,
            "START STOP UNIT",
            &[0x1B, 0x01, 0, 0x0F, 0xF7, 0x04],
            false,
            false,
            unit::start_stop_unit,
        ),
        Access::StartStop,
    ),
    access(
        cmd(
            op::PREVENT_ALLOW_MEDIUM_REMOVAL,
            "PREVENT ALLOW MEDIUM REMOVAL",
            &[0x1E, 0, 0, 0, 0x03, 0x04],
            false,
            false,
            unit::prevent_allow_medium_removal,
        ),
        Access::PreventAllow,
    ),
    access(
        present(cmd(
            op::READ_CAPACITY_10,
            "READ CAPACITY(10)",
            &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x04],
            false,
            false,
            capacity::read_capacity_10,
        )),
        Access::Allowed,
    ),
    access(
        present(sa(
            cmd(
                op::SERVICE_ACTION_IN_16,
                "READ CAPACITY(16)",
                &[
                    0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04,
                ],
                false,
                false,
                capacity::read_capacity_16,
            ),
            op::SAI_READ_CAPACITY_16,
        )),
        Access::Allowed,
    ),
    access(
        disk(sa(
            cmd(
                op::SERVICE_ACTION_IN_16,
                "GET LBA STATUS(16)",
                &[
                    0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                    0xFF, 0, 0x04,
                ],
                false,
                true,
                provisioning::get_lba_status,
            ),
            op::SAI_GET_LBA_STATUS,
        )),
        Access::ReadShared,
    ),
    slow(
        cmd(
            op::SYNCHRONIZE_CACHE_10,
            "SYNCHRONIZE CACHE(10)",
            &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04],
            false,
            true,
            sync::synchronize_cache,
        ),
        60,
    ),
    slow(
        cmd(
            op::SYNCHRONIZE_CACHE_16,
            "SYNCHRONIZE CACHE(16)",
            &[
                0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0x1F, 0x04,
            ],
            false,
            true,
            sync::synchronize_cache,
        ),
        60,
    ),
    slow(
        verifies(cmd(
            op::VERIFY_10,
            "VERIFY(10)",
            &[0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04],
            true,
            true,
            verify::verify,
        )),
        60,
    ),
    slow(
        verifies(cmd(
            op::VERIFY_16,
            "VERIFY(16)",
            &[
                0x8F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0x1F, 0x04,
            ],
            true,
            true,
            verify::verify,
        )),
        60,
    ),
    slow(
        writes(cmd(
            op::WRITE_AND_VERIFY_10,
            "WRITE AND VERIFY(10)",
            &[0x2E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04],
            true,
            true,
            verify::write_and_verify,
        )),
        60,
    ),
    slow(
        writes(cmd(
            op::WRITE_AND_VERIFY_16,
            "WRITE AND VERIFY(16)",
            &[
                0x8E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0x1F, 0x04,
            ],
            true,
            true,
            verify::write_and_verify,
        )),
        60,
    ),
    slow(
        verifies(cmd(
            op::VERIFY_12,
            "VERIFY(12)",
            &[
                0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x04,
            ],
            true,
            true,
            verify::verify,
        )),
        60,
    ),
    slow(
        writes(cmd(
            op::WRITE_AND_VERIFY_12,
            "WRITE AND VERIFY(12)",
            &[
                0xAE, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x04,
            ],
            true,
            true,
            verify::write_and_verify,
        )),
        60,
    ),
    Command {
        needs: Needs::Atomic,
        ..writes(cmd(
            op::WRITE_ATOMIC_16,
            "WRITE ATOMIC(16)",
            &[
                0x9C, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0x1F, 0x04,
            ],
            true,
            true,
            atomic::write_atomic,
        ))
    },
    access(
        slow(
            disk(cmd(
                op::PRE_FETCH_10,
                "PRE-FETCH(10)",
                &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04],
                false,
                true,
                prefetch::pre_fetch,
            )),
            60,
        ),
        Access::ReadShared,
    ),
    access(
        slow(
            disk(cmd(
                op::PRE_FETCH_16,
                "PRE-FETCH(16)",
                &[
                    0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                    0xFF, 0x1F, 0x04,
                ],
                false,
                true,
                prefetch::pre_fetch,
            )),
            60,
        ),
        Access::ReadShared,
    ),
    access(
        disk(cmd(
            op::READ_DEFECT_DATA_10,
            "READ DEFECT DATA(10)",
            &[0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x04],
            false,
            false,
            defect::read_defect_data,
        )),
        Access::ReadShared,
    ),
    access(
        disk(cmd(
            op::READ_DEFECT_DATA_12,
            "READ DEFECT DATA(12)",
            &[
                0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04,
            ],
            false,
            false,
            defect::read_defect_data,
        )),
        Access::ReadShared,
    ),
    access(
        disk(cmd(
            op::LOG_SENSE,
            "LOG SENSE",
            &[0x4D, 0x01, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04],
            false,
            false,
            log_sense::log_sense,
        )),
        Access::Allowed,
    ),
    slow(
        disk(cmd(
            op::FORMAT_UNIT,
            "FORMAT UNIT",
            &[0x04, 0xFF, 0, 0, 0x03, 0x04],
            true,
            true,
            format::format_unit,
        )),
        120,
    ),
    writes(cmd(
        op::COMPARE_AND_WRITE,
        "COMPARE AND WRITE",
        &[
            0x89, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, 0x04,
        ],
        true,
        true,
        verify::compare_and_write,
    )),
    slow(
        writes(cmd(
            op::WRITE_SAME_10,
            "WRITE SAME(10)",
            &[0x41, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04],
            true,
            true,
            provisioning::write_same,
        )),
        120,
    ),
    slow(
        writes(cmd(
            op::WRITE_SAME_16,
            "WRITE SAME(16)",
            &[
                0x93, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0x1F, 0x04,
            ],
            true,
            true,
            provisioning::write_same,
        )),
        120,
    ),
    thin(slow(
        cmd(
            op::UNMAP,
            "UNMAP",
            &[0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0x04],
            true,
            true,
            provisioning::unmap,
        ),
        120,
    )),
    cmd(
        op::MODE_SELECT_10,
        "MODE SELECT(10)",
        &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04],
        true,
        false,
        mode::mode_select,
    ),
    access(
        cmd(
            op::MODE_SENSE_10,
            "MODE SENSE(10)",
            &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x04],
            false,
            false,
            mode::mode_sense,
        ),
        Access::ReadShared,
    ),
    cmd(
        op::WRITE_BUFFER,
        "WRITE BUFFER",
        &[0x3B, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x04],
        true,
        false,
        buffer::write_buffer,
    ),
    access(
        cmd(
            op::READ_BUFFER_10,
            "READ BUFFER(10)",
            &[0x3C, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x04],
            false,
            false,
            buffer::read_buffer,
        ),
        Access::ReadShared,
    ),
    Command {
        handler: Handler::ReportLuns,
        ..well_known_lu(any_lun(cmd(
            op::REPORT_LUNS,
            "REPORT LUNS",
            &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04],
            false,
            false,
            unit::test_unit_ready,
        )))
    },
    access(
        Command {
            handler: Handler::SupportedOperationCodes,
            ..sa(
                cmd(
                    op::MAINTENANCE_IN,
                    "REPORT SUPPORTED OPERATION CODES",
                    &[
                        0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04,
                    ],
                    false,
                    false,
                    unit::test_unit_ready,
                ),
                op::MI_REPORT_SUPPORTED_OPERATION_CODES,
            )
        },
        Access::ReadShared,
    ),
    access(
        sa(
            cmd(
                op::MAINTENANCE_IN,
                "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
                &[0xA3, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04],
                false,
                false,
                maintenance::report_supported_tmfs,
            ),
            op::MI_REPORT_SUPPORTED_TMFS,
        ),
        Access::ReadShared,
    ),
    // Reservations (SPC-5 §6.16, §6.17; SPC-2 §7.21-§7.24).
    pr_in_sa(
        "PERSISTENT RESERVE IN (READ KEYS)",
        pr_in::READ_KEYS,
        &PR_IN_USAGE[0],
    ),
    pr_in_sa(
        "PERSISTENT RESERVE IN (READ RESERVATION)",
        pr_in::READ_RESERVATION,
        &PR_IN_USAGE[1],
    ),
    pr_in_sa(
        "PERSISTENT RESERVE IN (REPORT CAPABILITIES)",
        pr_in::REPORT_CAPABILITIES,
        &PR_IN_USAGE[2],
    ),
    pr_in_sa(
        "PERSISTENT RESERVE IN (READ FULL STATUS)",
        pr_in::READ_FULL_STATUS,
        &PR_IN_USAGE[3],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (REGISTER)",
        pr_out::REGISTER,
        &PR_OUT_USAGE[0],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (RESERVE)",
        pr_out::RESERVE,
        &PR_OUT_USAGE[1],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (RELEASE)",
        pr_out::RELEASE,
        &PR_OUT_USAGE[2],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (CLEAR)",
        pr_out::CLEAR,
        &PR_OUT_USAGE[3],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (PREEMPT)",
        pr_out::PREEMPT,
        &PR_OUT_USAGE[4],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (PREEMPT AND ABORT)",
        pr_out::PREEMPT_AND_ABORT,
        &PR_OUT_USAGE[5],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)",
        pr_out::REGISTER_AND_IGNORE,
        &PR_OUT_USAGE[6],
    ),
    pr_out_sa(
        "PERSISTENT RESERVE OUT (REGISTER AND MOVE)",
        pr_out::REGISTER_AND_MOVE,
        &PR_OUT_USAGE[7],
    ),
    own_rules(nexus_cmd(
        op::RESERVE_6,
        "RESERVE(6)",
        &[0x16, 0x01, 0, 0, 0, 0x04],
        false,
        spc2::reserve,
    )),
    own_rules(nexus_cmd(
        op::RELEASE_6,
        "RELEASE(6)",
        &[0x17, 0x01, 0, 0, 0, 0x04],
        false,
        spc2::release,
    )),
    own_rules(nexus_cmd(
        op::RESERVE_10,
        "RESERVE(10)",
        &[0x56, 0x13, 0, 0, 0, 0, 0, 0, 0, 0x04],
        false,
        spc2::reserve,
    )),
    own_rules(nexus_cmd(
        op::RELEASE_10,
        "RELEASE(10)",
        &[0x57, 0x13, 0, 0, 0, 0, 0, 0, 0, 0x04],
        false,
        spc2::release,
    )),
    // MMC-6 commands of a CD-ROM.
    access(
        cdrom(present(cmd(
            op::READ_TOC,
            "READ TOC/PMA/ATIP",
            &[0x43, 0x02, 0x0F, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xC4],
            false,
            false,
            cdrom::read_toc,
        ))),
        Access::ReadShared,
    ),
    access(
        cdrom(cmd(
            op::GET_CONFIGURATION,
            "GET CONFIGURATION",
            &[0x46, 0x03, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x04],
            false,
            false,
            cdrom::get_configuration,
        )),
        Access::ReadShared,
    ),
    access(
        cdrom(cmd(
            op::GET_EVENT_STATUS_NOTIFICATION,
            "GET EVENT STATUS NOTIFICATION",
            &[0x4A, 0x01, 0, 0, 0xFF, 0, 0, 0xFF, 0xFF, 0x04],
            false,
            false,
            cdrom::get_event_status_notification,
        )),
        Access::ReadShared,
    ),
    access(
        cdrom(present(cmd(
            op::READ_DISC_INFORMATION,
            "READ DISC INFORMATION",
            &[0x51, 0x07, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04],
            false,
            false,
            cdrom::read_disc_information,
        ))),
        Access::ReadShared,
    ),
    access(
        cdrom(cmd(
            op::MECHANISM_STATUS,
            "MECHANISM STATUS",
            &[0xBD, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0x04],
            false,
            false,
            cdrom::mechanism_status,
        )),
        Access::ReadShared,
    ),
];

/// Finds the command for `cdb` among those `offered` accepts and checks the
/// fields common to all CDBs (see the module documentation). On success
/// the CDB holds at least `cdb_len` bytes.
fn find(cdb: &[u8], offered: impl Fn(&Command) -> bool) -> Result<&'static Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::INVALID_COMMAND_OPERATION_CODE);
    };
    let mut has_service_actions = false;
    let sa = byte(cdb, 1) & 0x1F;
    let found = COMMANDS.iter().find(|c| {
        c.opcode == opcode
            && offered(c)
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

/// Finds the command for `cdb` in the whole table (see the module
/// documentation for the checks).
pub fn lookup(cdb: &[u8]) -> Result<&'static Command, Sense> {
    find(cdb, |_| true)
}

/// [`lookup`] among the commands logical unit `lu` offers.
pub fn lookup_for(cdb: &[u8], lu: &LogicalUnit) -> Result<&'static Command, Sense> {
    find(cdb, |c| c.available(lu))
}

/// The commands in (opcode, service action) order, as REPORT SUPPORTED
/// OPERATION CODES lists them.
pub fn sorted_commands() -> Vec<&'static Command> {
    let mut v: Vec<&Command> = COMMANDS.iter().collect();
    v.sort_by_key(|c| (c.opcode, c.service_action));
    v
}

/// The "Supported SCSI commands" section of README.md (what goes between
/// its `<!-- commands:start -->` and `<!-- commands:end -->` markers),
/// generated from [`COMMANDS`].
pub fn readme_commands_section() -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{} commands, generated from the opcode table in `backend/src/scsi/dispatch.rs` \
         (REPORT SUPPORTED OPERATION CODES reports the same list):\n\n",
        COMMANDS.len()
    ));
    s.push_str("| Opcode | Service action | Command | CDB bytes | Data-Out | Offered by |\n");
    s.push_str("|---|---|---|---|---|---|\n");
    for c in sorted_commands() {
        let sa = c
            .service_action
            .map(|x| format!("{x:02X}h"))
            .unwrap_or_default();
        let offered = match c.needs {
            Needs::Any => "disk, CD-ROM",
            Needs::Disk => "disk",
            Needs::Thin => "thin-provisioned disk",
            Needs::Cdrom => "CD-ROM",
            Needs::Atomic => "disk (local image)",
        };
        s.push_str(&format!(
            "| {:02X}h | {} | {} | {} | {} | {} |\n",
            c.opcode,
            sa,
            c.name,
            c.cdb_len,
            if c.data_out { "yes" } else { "" },
            offered
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vscsi_protocol::cdb::Cdb;
    use vscsi_protocol::opcode::cdb_len;

    #[test]
    fn opcode_properties_come_from_the_entries() {
        // Every entry of one opcode agrees with what BY_OPCODE says of it.
        for c in COMMANDS {
            let info = opcode_info(c.opcode);
            assert_eq!(
                (c.class, c.may_defer, c.any_lun, c.well_known_lu),
                (info.class, info.may_defer, info.any_lun, info.well_known_lu),
                "{}",
                c.name
            );
            if matches!(c.class, Class::Write | Class::Verify) {
                assert!(
                    matches!(c.needs, Needs::Disk | Needs::Thin | Needs::Atomic),
                    "{}",
                    c.name
                );
            }
        }
        let deferrable: Vec<u8> = (0..=255u8).filter(|&o| may_defer(&[o])).collect();
        assert_eq!(
            deferrable,
            [
                op::READ_6,
                op::WRITE_6,
                op::READ_10,
                op::WRITE_10,
                op::READ_16,
                op::WRITE_16,
                op::READ_12,
                op::WRITE_12
            ]
        );
        let any: Vec<u8> = (0..=255u8).filter(|&o| opcode_info(o).any_lun).collect();
        assert_eq!(any, [op::REQUEST_SENSE, op::INQUIRY, op::REPORT_LUNS]);
        let wk: Vec<u8> = (0..=255u8)
            .filter(|&o| opcode_info(o).well_known_lu)
            .collect();
        assert_eq!(
            wk,
            [
                op::TEST_UNIT_READY,
                op::REQUEST_SENSE,
                op::INQUIRY,
                op::REPORT_LUNS
            ]
        );
        assert!(!may_defer(&[]));
        assert_eq!(opcode_info(0xFF), NOT_IN_TABLE);
    }

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
        // SERVICE ACTION IN(16) with service action 13h: not supported.
        let mut c = Cdb::read_capacity_16(32).padded::<16>();
        c[1] = 0x13;
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

    #[test]
    fn usage_data_matches_the_table() {
        for c in COMMANDS {
            assert_eq!(c.usage.len(), usize::from(c.cdb_len), "{}", c.name);
            assert_eq!(c.usage[0], c.opcode, "{}", c.name);
            if let Some(sa) = c.service_action {
                assert_eq!(c.usage[1] & 0x1F, sa, "{}", c.name);
            }
            // Control byte: NACA is evaluated (and refused).
            assert_eq!(
                c.usage[usize::from(c.cdb_len) - 1] & 0x07,
                0x04,
                "{}",
                c.name
            );
            assert!(c.timeout > 0);
        }
    }

    /// README.md lists exactly the commands of the table: the text between
    /// its `<!-- commands:start -->` and `<!-- commands:end -->` markers is
    /// [`readme_commands_section`]'s output. To update it, run
    /// `VSCSI_UPDATE_README=1 cargo test -p vscsi-backend readme`.
    #[test]
    fn readme_lists_the_supported_commands() {
        const START: &str = "<!-- commands:start -->\n";
        const END: &str = "<!-- commands:end -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let a = readme
            .find(START)
            .expect("README.md has <!-- commands:start -->")
            + START.len();
        let b = readme
            .find(END)
            .expect("README.md has <!-- commands:end -->");
        let want = readme_commands_section();
        if std::env::var_os("VSCSI_UPDATE_README").is_some() && readme[a..b] != want {
            let updated = format!("{}{}{}", &readme[..a], want, &readme[b..]);
            std::fs::write(path, updated).expect("README.md written");
            return;
        }
        assert_eq!(
            readme[a..b],
            want,
            "README.md's supported commands differ from the opcode table; \
             run VSCSI_UPDATE_README=1 cargo test -p vscsi-backend readme"
        );
    }
}
