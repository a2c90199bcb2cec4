//! PERSISTENT RESERVE OUT (SPC-5 §6.17, behaviour in §5.14.7-§5.14.11):
//! REGISTER, REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE, CLEAR,
//! PREEMPT, PREEMPT AND ABORT, REGISTER AND MOVE.
//!
//! The basic parameter list is 24 bytes: RESERVATION KEY, SERVICE ACTION
//! RESERVATION KEY, obsolete, byte 20 SPEC_I_PT / ALL_TG_PT / APTPL.
//! SPEC_I_PT and ALL_TG_PT are not supported (SIP_C = ATP_C = 0: each
//! controller's frontend registers through its own target port), so a list
//! setting them is INVALID FIELD IN PARAMETER LIST. REGISTER AND MOVE has
//! its own list (24 bytes + a TransportID).
//!
//! PREEMPT AND ABORT does what PREEMPT does, then aborts the task sets of
//! the preempted I_T nexuses for the logical unit ([`super::abort`]): the
//! commands the transport holds for them (fault injection) complete as
//! aborted, delayed ones are cut short, transfers in flight are waited
//! for. This target runs every other command to completion as it arrives,
//! so nothing else is waiting; the preempted nexus's next commands see
//! REGISTRATIONS PREEMPTED, then RESERVATION CONFLICT.

use vscsi_protocol::cdb::{be32, be64};
use vscsi_protocol::sense::Sense;

use super::state::{
    all_registrants, registrants_type, ua, valid_type, Persistent, Port, PrState, Registration,
    MAX_REGISTRATIONS,
};
use super::{conflict, INSUFFICIENT_REGISTRATION_RESOURCES, INVALID_RELEASE};
use crate::scsi::command::{invalid_field, invalid_param, parameter_list, CommandResult};
use crate::scsi::io::{DataIn, DataOut};
use crate::scsi::lu::LogicalUnit;
use crate::scsi::nexus::{InitiatorPort, Nexus};

/// REGISTER.
pub const REGISTER: u8 = 0x00;
/// RESERVE.
pub const RESERVE: u8 = 0x01;
/// RELEASE.
pub const RELEASE: u8 = 0x02;
/// CLEAR.
pub const CLEAR: u8 = 0x03;
/// PREEMPT.
pub const PREEMPT: u8 = 0x04;
/// PREEMPT AND ABORT.
pub const PREEMPT_AND_ABORT: u8 = 0x05;
/// REGISTER AND IGNORE EXISTING KEY.
pub const REGISTER_AND_IGNORE: u8 = 0x06;
/// REGISTER AND MOVE.
pub const REGISTER_AND_MOVE: u8 = 0x07;

/// The basic parameter list's length.
pub const BASIC_LEN: usize = 24;

/// PERSISTENT RESERVE OUT: validates the CDB and the parameter list, then
/// applies the service action to the logical unit's state.
pub fn persistent_reserve_out(
    lu: &LogicalUnit,
    nexus: &Nexus,
    cdb: &[u8],
    _data_in: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let sa = cdb[1] & 0x1F;
    let scope = cdb[2] >> 4;
    let rtype = cdb[2] & 0x0F;
    let len = be32(cdb, 5) as usize;
    if sa > REGISTER_AND_MOVE {
        return invalid_field(1, Some(4));
    }
    // SCOPE and TYPE matter to RESERVE, RELEASE, PREEMPT (AND ABORT) and
    // REGISTER AND MOVE; LU_SCOPE (0h) is the only scope.
    if matches!(sa, RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT) {
        if scope != 0 {
            return invalid_field(2, Some(7));
        }
        if !valid_type(rtype) {
            return invalid_field(2, Some(3));
        }
    }
    let pr = lu.reservations();
    let list = match read_list(data_out, len, sa == REGISTER_AND_MOVE) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let port = Port::of(nexus);
    let key = be64(&list, 0);
    let sa_key = be64(&list, 8);
    if sa == REGISTER_AND_MOVE {
        let aptpl = list[17] & 0x01 != 0;
        if aptpl && !pr.can_persist() {
            return invalid_param(17, Some(0));
        }
        let moved = match move_target(&list) {
            Ok(m) => m,
            Err(r) => return r,
        };
        return done(pr.change(|s| {
            if s.spc2.as_ref().is_some_and(|h| *h != port) {
                return Err(conflict());
            }
            register_and_move(s, &port, key, sa_key, &moved, list[17] & 0x02 != 0, aptpl)
        }))
        .0;
    }
    let flags = list[20];
    if flags & 0x08 != 0 {
        return invalid_param(20, Some(3));
    }
    if flags & 0x04 != 0 {
        return invalid_param(20, Some(2));
    }
    let aptpl = flags & 0x01 != 0;
    if aptpl && !pr.can_persist() {
        return invalid_param(20, Some(0));
    }
    let (r, preempted) = done(pr.change(|s| match sa {
        // An SPC-2 reservation of another I_T nexus conflicts with every
        // PERSISTENT RESERVE OUT (SPC-5 §5.14.3).
        _ if s.spc2.as_ref().is_some_and(|h| *h != port) => Err(conflict()),
        REGISTER => register(s, &port, key, sa_key, aptpl, false).map(|()| Vec::new()),
        REGISTER_AND_IGNORE => register(s, &port, key, sa_key, aptpl, true).map(|()| Vec::new()),
        RESERVE => reserve(s, &port, key, rtype).map(|()| Vec::new()),
        RELEASE => release(s, &port, key, rtype).map(|()| Vec::new()),
        CLEAR => clear(s, &port, key).map(|()| Vec::new()),
        _ => preempt(s, &port, key, sa_key, rtype),
    }));
    if sa == PREEMPT_AND_ABORT {
        for p in &preempted {
            let n = super::abort::abort(p, lu);
            tracing::debug!(
                initiator = p.initiator.name(),
                aborted = n,
                "PREEMPT AND ABORT"
            );
        }
    }
    r
}

/// The command's answer, and the I_T nexuses it preempted.
fn done<T: Default>(r: Result<T, CommandResult>) -> (CommandResult, T) {
    match r {
        Ok(t) => (CommandResult::good(0), t),
        Err(e) => (e, T::default()),
    }
}

/// The parameter list: exactly 24 bytes for the basic list (5/1A/00
/// otherwise), at least 24 + a TransportID for REGISTER AND MOVE.
fn read_list(data_out: &dyn DataOut, len: usize, moving: bool) -> Result<Vec<u8>, CommandResult> {
    if (!moving && len != BASIC_LEN)
        || (moving && !(BASIC_LEN + 24..=BASIC_LEN + 1024).contains(&len))
    {
        return Err(CommandResult::check_condition(
            Sense::PARAMETER_LIST_LENGTH_ERROR,
        ));
    }
    parameter_list(data_out, len)
}

/// The I_T nexus a REGISTER AND MOVE names: RELATIVE TARGET PORT
/// IDENTIFIER (bytes 18-19) and the TransportID (length at 20-23, from 24).
fn move_target(list: &[u8]) -> Result<Port, CommandResult> {
    let target_port = u16::from_be_bytes([list[18], list[19]]);
    if target_port == 0 {
        return Err(invalid_param(18, None));
    }
    let tid_len = be32(list, 20) as usize;
    if tid_len < 24 || BASIC_LEN + tid_len > list.len() {
        return Err(CommandResult::check_condition(
            Sense::PARAMETER_LIST_LENGTH_ERROR,
        ));
    }
    let (initiator, used) = InitiatorPort::parse(&list[BASIC_LEN..BASIC_LEN + tid_len])
        .map_err(|_| invalid_param(24, None))?;
    if used > tid_len {
        return Err(invalid_param(20, None));
    }
    Ok(Port {
        initiator,
        target_port,
    })
}

/// REGISTER / REGISTER AND IGNORE EXISTING KEY (SPC-5 §5.14.7, table
/// "Register behaviors").
fn register(
    s: &mut PrState,
    port: &Port,
    key: u64,
    sa_key: u64,
    aptpl: bool,
    ignore: bool,
) -> Result<(), CommandResult> {
    match s.registration(port) {
        None => {
            if key != 0 && !ignore {
                return Err(conflict());
            }
            if sa_key == 0 {
                // Nothing to register: GOOD, nothing changes.
                return Ok(());
            }
            if s.registrations.len() >= MAX_REGISTRATIONS {
                return Err(CommandResult::check_condition(
                    INSUFFICIENT_REGISTRATION_RESOURCES,
                ));
            }
            s.registrations.push(Registration {
                port: port.clone(),
                key: sa_key,
            });
        }
        Some(i) => {
            if !ignore && s.registrations[i].key != key {
                return Err(conflict());
            }
            if sa_key == 0 {
                let rtype = s.reservation.map(|p| p.rtype);
                let held = s.is_holder(port);
                if s.unregister(i) && held {
                    // A registrants-only reservation released by its
                    // holder unregistering: the others learn it.
                    if rtype.is_some_and(|t| registrants_type(t) && !all_registrants(t)) {
                        s.attention_to_registrants(port, ua::RESERVATIONS_RELEASED);
                    }
                }
            } else {
                s.registrations[i].key = sa_key;
            }
        }
    }
    s.aptpl = aptpl;
    s.bump();
    Ok(())
}

/// The registration of `port` with `key`, or RESERVATION CONFLICT.
fn registered(s: &PrState, port: &Port, key: u64) -> Result<usize, CommandResult> {
    match s.registration(port) {
        Some(i) if s.registrations[i].key == key => Ok(i),
        _ => Err(conflict()),
    }
}

/// RESERVE (SPC-5 §5.14.9).
fn reserve(s: &mut PrState, port: &Port, key: u64, rtype: u8) -> Result<(), CommandResult> {
    let i = registered(s, port, key)?;
    match s.reservation {
        None => {
            s.reservation = Some(Persistent { rtype, holder: i });
            Ok(())
        }
        Some(p) if p.rtype == rtype && s.is_holder(port) => Ok(()),
        Some(_) => Err(conflict()),
    }
}

/// RELEASE (SPC-5 §5.14.10.2).
fn release(s: &mut PrState, port: &Port, key: u64, rtype: u8) -> Result<(), CommandResult> {
    registered(s, port, key)?;
    let Some(p) = s.reservation else {
        return Ok(());
    };
    if !s.is_holder(port) {
        return Ok(());
    }
    if p.rtype != rtype {
        return Err(CommandResult::check_condition(INVALID_RELEASE));
    }
    s.reservation = None;
    if registrants_type(rtype) {
        s.attention_to_registrants(port, ua::RESERVATIONS_RELEASED);
    }
    Ok(())
}

/// CLEAR (SPC-5 §5.14.10.3): every registration and the reservation go;
/// the other registrants get RESERVATIONS PREEMPTED.
fn clear(s: &mut PrState, port: &Port, key: u64) -> Result<(), CommandResult> {
    registered(s, port, key)?;
    s.attention_to_registrants(port, ua::RESERVATIONS_PREEMPTED);
    s.registrations.clear();
    s.reservation = None;
    s.bump();
    Ok(())
}

/// PREEMPT / PREEMPT AND ABORT (SPC-5 §5.14.11); returns the I_T
/// nexuses whose registrations it removed.
fn preempt(
    s: &mut PrState,
    port: &Port,
    key: u64,
    sa_key: u64,
    rtype: u8,
) -> Result<Vec<Port>, CommandResult> {
    registered(s, port, key)?;
    let reservation = s.reservation;
    let removed = match reservation {
        // All registrants, SERVICE ACTION RESERVATION KEY 0: every other
        // registration goes, and the preempting I_T nexus holds a new
        // reservation of the type asked for.
        Some(p) if all_registrants(p.rtype) && sa_key == 0 => {
            let others: Vec<Port> = s
                .registrations
                .iter()
                .filter(|r| r.port != *port)
                .map(|r| r.port.clone())
                .collect();
            s.registrations.retain(|r| r.port == *port);
            for o in &others {
                s.attention(o, ua::REGISTRATIONS_PREEMPTED);
            }
            s.reservation = Some(Persistent { rtype, holder: 0 });
            others
        }
        // The holder's key: its registrations go, the preempting I_T
        // nexus takes the reservation (type and scope from the CDB).
        Some(p) if !all_registrants(p.rtype) && s.reservation_key() == sa_key => {
            let removed = s.remove_key(sa_key, port);
            for o in &removed {
                s.attention(o, ua::REGISTRATIONS_PREEMPTED);
            }
            let holder = s.registration(port).unwrap_or(0);
            s.reservation = Some(Persistent { rtype, holder });
            if p.rtype != rtype {
                s.attention_to_registrants(port, ua::RESERVATIONS_RELEASED);
            }
            removed
        }
        // No reservation, or another key: only registrations go.
        _ => {
            if sa_key == 0 {
                return Err(invalid_param(8, None));
            }
            let removed = s.remove_key(sa_key, port);
            if removed.is_empty() {
                return Err(conflict());
            }
            for o in &removed {
                s.attention(o, ua::REGISTRATIONS_PREEMPTED);
            }
            removed
        }
    };
    s.bump();
    Ok(removed)
}

/// REGISTER AND MOVE (SPC-5 §5.14.8): the holder registers the I_T nexus
/// `to` with `sa_key` and moves the reservation to it; with UNREG it
/// unregisters itself.
fn register_and_move(
    s: &mut PrState,
    port: &Port,
    key: u64,
    sa_key: u64,
    to: &Port,
    unreg: bool,
    aptpl: bool,
) -> Result<(), CommandResult> {
    let i = registered(s, port, key)?;
    let Some(p) = s.reservation else {
        return Err(conflict());
    };
    if all_registrants(p.rtype) || !s.is_holder(port) {
        return Err(conflict());
    }
    if sa_key == 0 {
        return Err(invalid_param(8, None));
    }
    if to == port {
        return Err(invalid_param(24, None));
    }
    let dest = match s.registration(to) {
        Some(d) => {
            s.registrations[d].key = sa_key;
            d
        }
        None => {
            if s.registrations.len() >= MAX_REGISTRATIONS {
                return Err(CommandResult::check_condition(
                    INSUFFICIENT_REGISTRATION_RESOURCES,
                ));
            }
            s.registrations.push(Registration {
                port: to.clone(),
                key: sa_key,
            });
            s.registrations.len() - 1
        }
    };
    s.reservation = Some(Persistent {
        rtype: p.rtype,
        holder: dest,
    });
    if unreg {
        s.unregister(i);
    }
    s.aptpl = aptpl;
    s.bump();
    Ok(())
}
