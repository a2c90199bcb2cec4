//! Which commands a reservation lets through: SPC-5 table "SPC commands
//! that are allowed in the presence of various reservations" and SBC-4
//! table "SBC-4 commands that are allowed in the presence of various
//! reservations", as data.
//!
//! Each command of the opcode table has an [`Access`] rule (derived from
//! its class unless the entry says otherwise); [`MATRIX`] gives, per rule,
//! the six columns of those tables. The reservation holder is always
//! allowed. Under an all-registrants or registrants-only type a registered
//! I_T nexus is allowed whatever the command (the "registered" columns are
//! all Allowed); under WRITE EXCLUSIVE / EXCLUSIVE ACCESS every other I_T
//! nexus, registered or not, gets the "from any I_T nexus" column.
//!
//! Where SPC-5 allows a command only through WRITE EXCLUSIVE reservations
//! (MODE SENSE, REPORT SUPPORTED OPERATION CODES and TASK MANAGEMENT
//! FUNCTIONS, READ DEFECT DATA, READ BUFFER: what ALLOW COMMANDS 011b in
//! REPORT CAPABILITIES says) the rule is [`Access::ReadShared`], as for READ
//! and VERIFY.
//!
//! An SPC-2 reservation (RESERVE(6)/(10)) held by another I_T nexus lets
//! through only [`Access::Always`] commands (SPC-2 §5.5.1: INQUIRY, REPORT
//! LUNS, REQUEST SENSE) and RELEASE (answered GOOD without effect).

use super::state::{registrants_type, Port, PrState};
use super::state::{EXCLUSIVE_ACCESS, EXCLUSIVE_ACCESS_AR, EXCLUSIVE_ACCESS_RO, WRITE_EXCLUSIVE};

/// How a command fares under reservations held by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed under every reservation, SPC-2 ones included (INQUIRY,
    /// REPORT LUNS, REQUEST SENSE).
    Always,
    /// Allowed under every persistent reservation (TEST UNIT READY, READ
    /// CAPACITY, LOG SENSE, PERSISTENT RESERVE IN); conflicts with an
    /// SPC-2 reservation.
    Allowed,
    /// Reads or reports: allowed through WRITE EXCLUSIVE types, conflicts
    /// with EXCLUSIVE ACCESS ones for I_T nexuses without access.
    ReadShared,
    /// Writes or changes the logical unit: conflicts for every I_T nexus
    /// without access (WRITE, SYNCHRONIZE CACHE, MODE SELECT, ...).
    Modify,
    /// START STOP UNIT: [`Access::Allowed`] with START=1 and POWER
    /// CONDITION 0h, [`Access::Modify`] otherwise (SBC-4).
    StartStop,
    /// PREVENT ALLOW MEDIUM REMOVAL: [`Access::Allowed`] with PREVENT 00b,
    /// [`Access::Modify`] otherwise (SBC-4).
    PreventAllow,
    /// PERSISTENT RESERVE OUT, RESERVE, RELEASE: the command applies its
    /// own rules (SPC-5 §5.14, SPC-2 §7.21/§7.24).
    OwnRules,
}

/// Who sends the command, seen from the persistent reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// A reservation holder.
    Holder,
    /// A registered I_T nexus that is not a holder.
    Registered,
    /// An I_T nexus with no registration.
    NotRegistered,
}

/// The six columns of SPC-5's table, per rule: from any I_T nexus (WE,
/// EA), from a registered I_T nexus under RO/AR types (WE, EA), from an
/// I_T nexus not registered under RO/AR types (WE, EA). `true` = Allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// WRITE EXCLUSIVE, any I_T nexus not holding it.
    pub we_any: bool,
    /// EXCLUSIVE ACCESS, any I_T nexus not holding it.
    pub ea_any: bool,
    /// WE – RO / WE – AR, a registered I_T nexus.
    pub we_registered: bool,
    /// EA – RO / EA – AR, a registered I_T nexus.
    pub ea_registered: bool,
    /// WE – RO / WE – AR, an I_T nexus not registered.
    pub we_not_registered: bool,
    /// EA – RO / EA – AR, an I_T nexus not registered.
    pub ea_not_registered: bool,
}

const fn cols(row: [bool; 6]) -> Columns {
    Columns {
        we_any: row[0],
        ea_any: row[1],
        we_registered: row[2],
        ea_registered: row[3],
        we_not_registered: row[4],
        ea_not_registered: row[5],
    }
}

const A: bool = true;
const C: bool = false;

/// SPC-5 / SBC-4's tables, one row per rule (A = Allowed, C = Conflict).
pub const MATRIX: [(Access, Columns); 4] = [
    (Access::Always, cols([A, A, A, A, A, A])),
    (Access::Allowed, cols([A, A, A, A, A, A])),
    (Access::ReadShared, cols([A, C, A, A, A, C])),
    (Access::Modify, cols([C, C, A, A, C, C])),
];

/// The columns of a rule after the CDB refined it.
fn columns(access: Access, cdb: &[u8]) -> Columns {
    let access = match access {
        Access::StartStop => {
            let b4 = cdb.get(4).copied().unwrap_or(0);
            if b4 & 0x01 != 0 && b4 & 0xF0 == 0 {
                Access::Allowed
            } else {
                Access::Modify
            }
        }
        Access::PreventAllow => {
            if cdb.get(4).copied().unwrap_or(0) & 0x03 == 0 {
                Access::Allowed
            } else {
                Access::Modify
            }
        }
        Access::OwnRules => Access::Allowed,
        a => a,
    };
    MATRIX
        .iter()
        .find(|(a, _)| *a == access)
        .map_or(cols([C; 6]), |(_, c)| *c)
}

/// Whether a command with rule `access` (and CDB `cdb`) from an I_T
/// nexus in `relation` to a persistent reservation of type `rtype` is allowed.
pub fn allowed(access: Access, cdb: &[u8], rtype: u8, relation: Relation) -> bool {
    if relation == Relation::Holder {
        return true;
    }
    let c = columns(access, cdb);
    let exclusive_access = matches!(
        rtype,
        EXCLUSIVE_ACCESS | EXCLUSIVE_ACCESS_RO | EXCLUSIVE_ACCESS_AR
    );
    if !registrants_type(rtype) {
        return if rtype == WRITE_EXCLUSIVE {
            c.we_any
        } else {
            c.ea_any
        };
    }
    match (relation, exclusive_access) {
        (Relation::Registered, false) => c.we_registered,
        (Relation::Registered, true) => c.ea_registered,
        (_, false) => c.we_not_registered,
        (_, true) => c.ea_not_registered,
    }
}

/// Whether the state lets `port` run a command of rule `access`: the
/// SPC-2 reservation first, then the persistent one.
pub fn permits(state: &PrState, port: &Port, access: Access, cdb: &[u8]) -> bool {
    if let Some(holder) = &state.spc2 {
        if holder != port && !matches!(access, Access::Always | Access::OwnRules) {
            return false;
        }
    }
    let Some(p) = state.reservation else {
        return true;
    };
    let relation = if state.is_holder(port) {
        Relation::Holder
    } else if state.registration(port).is_some() {
        Relation::Registered
    } else {
        Relation::NotRegistered
    };
    allowed(access, cdb, p.rtype, relation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::reservation::state::{
        Persistent, Registration, EXCLUSIVE_ACCESS_RO, WRITE_EXCLUSIVE_AR, WRITE_EXCLUSIVE_RO,
    };
    use crate::scsi::InitiatorPort;

    /// SPC-5 / SBC-4: for every type x holder / registered / not
    /// registered x read / write, what the tables say, written out.
    #[test]
    fn the_matrix_is_spc5s_table() {
        use Relation::*;
        // (type, relation, READ allowed, WRITE allowed)
        let want = [
            (1, Holder, true, true),
            (1, Registered, true, false),
            (1, NotRegistered, true, false),
            (3, Holder, true, true),
            (3, Registered, false, false),
            (3, NotRegistered, false, false),
            (5, Holder, true, true),
            (5, Registered, true, true),
            (5, NotRegistered, true, false),
            (6, Holder, true, true),
            (6, Registered, true, true),
            (6, NotRegistered, false, false),
            // All registrants: a registrant is a holder.
            (7, Holder, true, true),
            (7, NotRegistered, true, false),
            (8, Holder, true, true),
            // SPDK lets this one write; SPC-5 says conflict.
            (8, NotRegistered, false, false),
        ];
        for (t, rel, read, write) in want {
            assert_eq!(
                allowed(Access::ReadShared, &[], t, rel),
                read,
                "read type {t} {rel:?}"
            );
            assert_eq!(
                allowed(Access::Modify, &[], t, rel),
                write,
                "write type {t} {rel:?}"
            );
            // INQUIRY-like and TEST UNIT READY-like commands always go.
            assert!(allowed(Access::Always, &[], t, rel));
            assert!(allowed(Access::Allowed, &[], t, rel));
        }
        // A registered non-holder under RO types has the holder's access.
        for t in [5, 6] {
            assert!(allowed(Access::Modify, &[], t, Registered));
        }
    }

    #[test]
    fn start_stop_and_prevent_allow_depend_on_the_cdb() {
        let start = [0x1B, 0, 0, 0, 0x01, 0];
        let stop = [0x1B, 0, 0, 0, 0x00, 0];
        let power = [0x1B, 0, 0, 0, 0x31, 0];
        for t in [1, 3] {
            assert!(allowed(
                Access::StartStop,
                &start,
                t,
                Relation::NotRegistered
            ));
            assert!(!allowed(
                Access::StartStop,
                &stop,
                t,
                Relation::NotRegistered
            ));
            assert!(!allowed(Access::StartStop, &power, t, Relation::Registered));
        }
        let allow = [0x1E, 0, 0, 0, 0, 0];
        let prevent = [0x1E, 0, 0, 0, 1, 0];
        assert!(allowed(
            Access::PreventAllow,
            &allow,
            3,
            Relation::NotRegistered
        ));
        assert!(!allowed(
            Access::PreventAllow,
            &prevent,
            3,
            Relation::NotRegistered
        ));
        assert!(allowed(
            Access::PreventAllow,
            &prevent,
            6,
            Relation::Registered
        ));
    }

    fn port(n: &str) -> Port {
        Port {
            initiator: InitiatorPort::vhost_user(n),
            target_port: 1,
        }
    }

    #[test]
    fn permits_reads_the_state() {
        let (a, b, c) = (port("a"), port("b"), port("c"));
        let mut s = PrState::default();
        assert!(permits(&s, &c, Access::Modify, &[]));
        s.registrations.push(Registration {
            port: a.clone(),
            key: 1,
        });
        s.registrations.push(Registration {
            port: b.clone(),
            key: 2,
        });
        for (t, b_writes) in [
            (WRITE_EXCLUSIVE, false),
            (WRITE_EXCLUSIVE_RO, true),
            (EXCLUSIVE_ACCESS_RO, true),
            (WRITE_EXCLUSIVE_AR, true),
        ] {
            s.reservation = Some(Persistent {
                rtype: t,
                holder: 0,
            });
            assert!(permits(&s, &a, Access::Modify, &[]));
            assert_eq!(permits(&s, &b, Access::Modify, &[]), b_writes, "type {t}");
            assert!(!permits(&s, &c, Access::Modify, &[]), "type {t}");
        }
        // An SPC-2 reservation of another nexus: only INQUIRY and the like.
        s.reservation = None;
        s.spc2 = Some(a.clone());
        assert!(permits(&s, &a, Access::Modify, &[]));
        assert!(!permits(&s, &b, Access::Allowed, &[]));
        assert!(!permits(&s, &b, Access::ReadShared, &[]));
        assert!(permits(&s, &b, Access::Always, &[]));
    }
}

/// Every command of the opcode table with the rule SPC-5 / SBC-4 give it:
/// a command added to the table fails this test until it is classified
/// here (and, if its class does not say it, in its entry).
#[cfg(test)]
mod table_rules {
    use super::Access::{self, *};
    use crate::scsi::dispatch::COMMANDS;

    const RULES: &[(&str, Access)] = &[
        ("TEST UNIT READY", Allowed),
        ("REQUEST SENSE", Always),
        ("INQUIRY", Always),
        ("REPORT LUNS", Always),
        ("READ CAPACITY(10)", Allowed),
        ("READ CAPACITY(16)", Allowed),
        ("PERSISTENT RESERVE IN (READ KEYS)", Allowed),
        ("PERSISTENT RESERVE IN (READ RESERVATION)", Allowed),
        ("PERSISTENT RESERVE IN (REPORT CAPABILITIES)", Allowed),
        ("PERSISTENT RESERVE IN (READ FULL STATUS)", Allowed),
        ("READ(6)", ReadShared),
        ("READ(10)", ReadShared),
        ("READ(12)", ReadShared),
        ("READ(16)", ReadShared),
        ("VERIFY(10)", ReadShared),
        ("VERIFY(16)", ReadShared),
        ("GET LBA STATUS(16)", ReadShared),
        ("MODE SENSE(6)", ReadShared),
        ("MODE SENSE(10)", ReadShared),
        ("REPORT SUPPORTED OPERATION CODES", ReadShared),
        ("REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", ReadShared),
        ("READ TOC/PMA/ATIP", ReadShared),
        ("GET CONFIGURATION", ReadShared),
        ("GET EVENT STATUS NOTIFICATION", ReadShared),
        ("READ DISC INFORMATION", ReadShared),
        ("MECHANISM STATUS", ReadShared),
        ("WRITE(6)", Modify),
        ("WRITE(10)", Modify),
        ("WRITE(12)", Modify),
        ("WRITE(16)", Modify),
        ("WRITE AND VERIFY(10)", Modify),
        ("WRITE AND VERIFY(16)", Modify),
        ("COMPARE AND WRITE", Modify),
        ("WRITE SAME(10)", Modify),
        ("WRITE SAME(16)", Modify),
        ("UNMAP", Modify),
        ("SYNCHRONIZE CACHE(10)", Modify),
        ("SYNCHRONIZE CACHE(16)", Modify),
        ("MODE SELECT(6)", Modify),
        ("MODE SELECT(10)", Modify),
        ("START STOP UNIT", StartStop),
        ("PREVENT ALLOW MEDIUM REMOVAL", PreventAllow),
        ("RESERVE(6)", OwnRules),
        ("RELEASE(6)", OwnRules),
        ("RESERVE(10)", OwnRules),
        ("RELEASE(10)", OwnRules),
        ("PERSISTENT RESERVE OUT (REGISTER)", OwnRules),
        ("PERSISTENT RESERVE OUT (RESERVE)", OwnRules),
        ("PERSISTENT RESERVE OUT (RELEASE)", OwnRules),
        ("PERSISTENT RESERVE OUT (CLEAR)", OwnRules),
        ("PERSISTENT RESERVE OUT (PREEMPT)", OwnRules),
        ("PERSISTENT RESERVE OUT (PREEMPT AND ABORT)", OwnRules),
        (
            "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)",
            OwnRules,
        ),
        ("PERSISTENT RESERVE OUT (REGISTER AND MOVE)", OwnRules),
        // SBC-4 Table "SBC commands that are allowed in the presence of
        // various reservations" and SPC-5's table for LOG SENSE and the
        // buffer commands.
        ("VERIFY(12)", ReadShared),
        ("WRITE AND VERIFY(12)", Modify),
        ("WRITE ATOMIC(16)", Modify),
        ("PRE-FETCH(10)", ReadShared),
        ("PRE-FETCH(16)", ReadShared),
        ("READ DEFECT DATA(10)", ReadShared),
        ("READ DEFECT DATA(12)", ReadShared),
        ("LOG SENSE", Allowed),
        ("FORMAT UNIT", Modify),
        ("WRITE BUFFER", Modify),
        ("READ BUFFER(10)", ReadShared),
    ];

    #[test]
    fn every_command_of_the_table_has_its_spc5_rule() {
        for c in COMMANDS {
            let want = RULES
                .iter()
                .find(|(n, _)| *n == c.name)
                .map(|(_, a)| *a)
                .unwrap_or_else(|| panic!("{}: classify it for reservations", c.name));
            assert_eq!(c.access(), want, "{}", c.name);
        }
        assert_eq!(RULES.len(), COMMANDS.len());
    }
}
