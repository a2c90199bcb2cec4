//! The persistent reservation state of one logical unit (SPC-5 §5.14):
//! registrations (one reservation key per I_T nexus), the persistent
//! reservation (holder, type; scope is always LU_SCOPE), PRgeneration and
//! APTPL; plus the SPC-2 reservation (RESERVE(6)/(10)) and the unit
//! attentions that reservation events establish for single I_T nexuses.
//!
//! An I_T nexus is identified by its ports ([`Port`]: initiator TransportID
//! and relative target port), not by its connection, so a frontend that
//! reconnects finds its registration again (see [`crate::scsi::nexus`]).

use serde::{Deserialize, Serialize};

use crate::scsi::nexus::{InitiatorPort, Nexus};

/// WRITE EXCLUSIVE.
pub const WRITE_EXCLUSIVE: u8 = 0x1;
/// EXCLUSIVE ACCESS.
pub const EXCLUSIVE_ACCESS: u8 = 0x3;
/// WRITE EXCLUSIVE – REGISTRANTS ONLY.
pub const WRITE_EXCLUSIVE_RO: u8 = 0x5;
/// EXCLUSIVE ACCESS – REGISTRANTS ONLY.
pub const EXCLUSIVE_ACCESS_RO: u8 = 0x6;
/// WRITE EXCLUSIVE – ALL REGISTRANTS.
pub const WRITE_EXCLUSIVE_AR: u8 = 0x7;
/// EXCLUSIVE ACCESS – ALL REGISTRANTS.
pub const EXCLUSIVE_ACCESS_AR: u8 = 0x8;

/// Whether `t` is a persistent reservation TYPE of SPC-5 table
/// "Persistent reservation type codes".
pub const fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

/// An all-registrants type: every registrant is a reservation holder.
pub const fn all_registrants(t: u8) -> bool {
    matches!(t, WRITE_EXCLUSIVE_AR | EXCLUSIVE_ACCESS_AR)
}

/// A registrants-only or all-registrants type (registered I_T nexuses
/// have access as the holder does).
pub const fn registrants_type(t: u8) -> bool {
    t >= WRITE_EXCLUSIVE_RO
}

/// The most registrations one logical unit keeps; more is INSUFFICIENT
/// REGISTRATION RESOURCES.
pub const MAX_REGISTRATIONS: usize = 256;

/// The most I_T nexuses with a pending reservation unit attention.
pub const MAX_ATTENTIONS: usize = 2 * MAX_REGISTRATIONS;

/// The ports of an I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The initiator port.
    pub initiator: InitiatorPort,
    /// RELATIVE TARGET PORT IDENTIFIER.
    pub target_port: u16,
}

impl Port {
    /// The ports of `nexus`.
    pub fn of(nexus: &Nexus) -> Self {
        Self {
            initiator: nexus.initiator().clone(),
            target_port: nexus.relative_target_port(),
        }
    }
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The registered I_T nexus.
    pub port: Port,
    /// Its reservation key (never 0).
    pub key: u64,
}

/// The persistent reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persistent {
    /// TYPE.
    pub rtype: u8,
    /// Index of the holder's registration (for an all-registrants type:
    /// the registration that reserved; every registrant holds it).
    pub holder: usize,
}

/// Unit attentions established for one I_T nexus (lowest bit first: the
/// order of precedence).
pub mod ua {
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00): a new
    /// connection of a nexus.
    pub const POWER_ON: u8 = 1 << 0;
    /// REGISTRATIONS PREEMPTED (2A/05).
    pub const REGISTRATIONS_PREEMPTED: u8 = 1 << 1;
    /// RESERVATIONS PREEMPTED (2A/03).
    pub const RESERVATIONS_PREEMPTED: u8 = 1 << 2;
    /// RESERVATIONS RELEASED (2A/04).
    pub const RESERVATIONS_RELEASED: u8 = 1 << 3;
}

/// The whole state (behind the logical unit's reservation lock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrState {
    /// PRgeneration (SPC-5 §6.16.2): counts the PERSISTENT RESERVE OUT
    /// commands that changed registrations (wraps).
    pub generation: u32,
    /// Registrations, in the order they were made.
    pub registrations: Vec<Registration>,
    /// The persistent reservation, if any.
    pub reservation: Option<Persistent>,
    /// Activate Persist Through Power Loss: the last value a REGISTER gave.
    pub aptpl: bool,
    /// The SPC-2 reservation holder (RESERVE(6)/(10)), if any.
    pub spc2: Option<Port>,
    /// Pending unit attentions per I_T nexus ([`ua`] bits).
    pub attentions: Vec<(Port, u8)>,
}

impl PrState {
    /// The registration of `port`, by index.
    pub fn registration(&self, port: &Port) -> Option<usize> {
        self.registrations.iter().position(|r| r.port == *port)
    }

    /// The key registered for `port`.
    pub fn key_of(&self, port: &Port) -> Option<u64> {
        self.registration(port).map(|i| self.registrations[i].key)
    }

    /// Whether `port` holds the persistent reservation.
    pub fn is_holder(&self, port: &Port) -> bool {
        match self.reservation {
            None => false,
            Some(p) if all_registrants(p.rtype) => self.registration(port).is_some(),
            Some(p) => self
                .registrations
                .get(p.holder)
                .is_some_and(|r| r.port == *port),
        }
    }

    /// The key READ RESERVATION reports: the holder's, 0 for an
    /// all-registrants type (SPC-5 §6.16.3.2).
    pub fn reservation_key(&self) -> u64 {
        match self.reservation {
            Some(p) if !all_registrants(p.rtype) => {
                self.registrations.get(p.holder).map_or(0, |r| r.key)
            }
            _ => 0,
        }
    }

    /// Establishes unit attention `bits` for `port`. At most
    /// [`MAX_ATTENTIONS`] I_T nexuses keep one pending (a nexus that never
    /// comes back must not make the list grow for ever): the oldest goes.
    pub fn attention(&mut self, port: &Port, bits: u8) {
        match self.attentions.iter_mut().find(|(p, _)| p == port) {
            Some((_, b)) => *b |= bits,
            None => {
                if self.attentions.len() >= MAX_ATTENTIONS {
                    self.attentions.remove(0);
                }
                self.attentions.push((port.clone(), bits));
            }
        }
    }

    /// Establishes `bits` for every registered I_T nexus but `except`.
    pub fn attention_to_registrants(&mut self, except: &Port, bits: u8) {
        let ports: Vec<Port> = self
            .registrations
            .iter()
            .filter(|r| r.port != *except)
            .map(|r| r.port.clone())
            .collect();
        for p in &ports {
            self.attention(p, bits);
        }
    }

    /// Reports and clears the pending unit attention of highest precedence
    /// for `port`.
    pub fn take_attention(&mut self, port: &Port) -> Option<u8> {
        let i = self.attentions.iter().position(|(p, _)| p == port)?;
        let bits = self.attentions[i].1;
        let bit = bits & bits.wrapping_neg();
        if bits == bit {
            self.attentions.swap_remove(i);
        } else {
            self.attentions[i].1 &= !bit;
        }
        Some(bit)
    }

    /// Removes registration `i`, keeping the reservation's holder index
    /// right; the reservation goes if `i` held it (all-registrants: when
    /// the last registrant goes). Returns whether the reservation went.
    pub fn unregister(&mut self, i: usize) -> bool {
        self.registrations.remove(i);
        let Some(mut p) = self.reservation else {
            return false;
        };
        let gone = if all_registrants(p.rtype) {
            // Every registrant holds it: any index will do.
            p.holder = 0;
            self.registrations.is_empty()
        } else if p.holder == i {
            true
        } else {
            if p.holder > i {
                p.holder -= 1;
            }
            false
        };
        self.reservation = if gone { None } else { Some(p) };
        gone
    }

    /// Removes every registration whose key is `key` except `keep`'s;
    /// returns the ports removed.
    pub fn remove_key(&mut self, key: u64, keep: &Port) -> Vec<Port> {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.registrations.len() {
            let r = &self.registrations[i];
            if r.key == key && r.port != *keep {
                removed.push(r.port.clone());
                self.unregister(i);
            } else {
                i += 1;
            }
        }
        removed
    }

    /// Counts one more change of the registrations (PRgeneration).
    pub fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Whether anything restricts access: a persistent or an SPC-2 reservation.
    pub fn engaged(&self) -> bool {
        self.reservation.is_some() || self.spc2.is_some()
    }

    /// What the APTPL state file keeps.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            version: 1,
            generation: self.generation,
            registrations: self
                .registrations
                .iter()
                .map(|r| PersistedRegistration {
                    key: r.key,
                    relative_target_port: r.port.target_port,
                    transport_id: hex(r.port.initiator.transport_id()),
                })
                .collect(),
            reservation: self.reservation.map(|p| PersistedReservation {
                rtype: p.rtype,
                holder: p.holder,
            }),
        }
    }

    /// The state an APTPL state file describes (APTPL set, nothing else
    /// pending); `None` if it does not make sense.
    pub fn restored(p: &Persisted) -> Option<PrState> {
        if p.version != 1 || p.registrations.len() > MAX_REGISTRATIONS {
            return None;
        }
        let mut s = PrState {
            generation: p.generation,
            aptpl: true,
            ..Default::default()
        };
        for r in &p.registrations {
            let tid = unhex(&r.transport_id)?;
            let (initiator, len) = InitiatorPort::parse(&tid).ok()?;
            if len != tid.len() || r.key == 0 || r.relative_target_port == 0 {
                return None;
            }
            let port = Port {
                initiator,
                target_port: r.relative_target_port,
            };
            if s.registration(&port).is_some() {
                return None;
            }
            s.registrations.push(Registration { port, key: r.key });
        }
        if let Some(r) = &p.reservation {
            if !valid_type(r.rtype) || r.holder >= s.registrations.len() {
                return None;
            }
            s.reservation = Some(Persistent {
                rtype: r.rtype,
                holder: r.holder,
            });
        }
        Some(s)
    }
}

/// The APTPL state file's content (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Format version (1).
    pub version: u32,
    /// PRgeneration.
    pub generation: u32,
    /// Registrations in order.
    pub registrations: Vec<PersistedRegistration>,
    /// The persistent reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<PersistedReservation>,
}

/// One registration in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedRegistration {
    /// Reservation key.
    pub key: u64,
    /// RELATIVE TARGET PORT IDENTIFIER.
    pub relative_target_port: u16,
    /// The initiator's TransportID, hexadecimal.
    pub transport_id: String,
}

/// The reservation in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedReservation {
    /// TYPE.
    #[serde(rename = "type")]
    pub rtype: u8,
    /// Index of the holder's registration.
    pub holder: usize,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, tp: u16) -> Port {
        Port {
            initiator: InitiatorPort::vhost_user(name),
            target_port: tp,
        }
    }

    #[test]
    fn unregistering_keeps_the_holder_index_right() {
        let mut s = PrState::default();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            s.registrations.push(Registration {
                port: port(n, i as u16 + 1),
                key: i as u64 + 1,
            });
        }
        s.reservation = Some(Persistent {
            rtype: WRITE_EXCLUSIVE,
            holder: 2,
        });
        assert!(!s.unregister(0));
        assert!(s.is_holder(&port("c", 3)));
        assert_eq!(s.reservation_key(), 3);
        assert!(s.unregister(1));
        assert_eq!(s.reservation, None);
        // All registrants: the reservation lasts while anyone is registered.
        s.reservation = Some(Persistent {
            rtype: EXCLUSIVE_ACCESS_AR,
            holder: 0,
        });
        s.registrations.push(Registration {
            port: port("d", 4),
            key: 9,
        });
        assert!(s.is_holder(&port("d", 4)));
        assert_eq!(s.reservation_key(), 0);
        assert!(!s.unregister(0));
        assert!(s.unregister(0));
    }

    #[test]
    fn attentions_are_per_nexus_in_precedence_order() {
        let mut s = PrState::default();
        let a = port("a", 1);
        s.attention(&a, ua::RESERVATIONS_RELEASED);
        s.attention(&a, ua::REGISTRATIONS_PREEMPTED);
        assert_eq!(s.take_attention(&port("b", 1)), None);
        assert_eq!(s.take_attention(&a), Some(ua::REGISTRATIONS_PREEMPTED));
        assert_eq!(s.take_attention(&a), Some(ua::RESERVATIONS_RELEASED));
        assert_eq!(s.take_attention(&a), None);
        assert!(s.attentions.is_empty());
        // Nexuses that never come back: the list stays bounded, oldest out.
        for i in 0..=MAX_ATTENTIONS {
            s.attention(&port(&format!("n{i}"), 1), ua::REGISTRATIONS_PREEMPTED);
        }
        assert_eq!(s.attentions.len(), MAX_ATTENTIONS);
        assert_eq!(s.take_attention(&port("n0", 1)), None);
        assert!(s.take_attention(&port("n1", 1)).is_some());
    }

    #[test]
    fn the_persisted_form_round_trips_and_nonsense_is_refused() {
        let mut s = PrState {
            generation: 7,
            aptpl: true,
            ..Default::default()
        };
        s.registrations.push(Registration {
            port: port("a", 1),
            key: 0x1122_3344_5566_7788,
        });
        s.registrations.push(Registration {
            port: port("b", 2),
            key: 5,
        });
        s.reservation = Some(Persistent {
            rtype: EXCLUSIVE_ACCESS_RO,
            holder: 1,
        });
        let p = s.persisted();
        let json = serde_json::to_string(&p).unwrap();
        let back: Persisted = serde_json::from_str(&json).unwrap();
        assert_eq!(PrState::restored(&back), Some(s));
        let mut bad = p.clone();
        bad.reservation = Some(PersistedReservation {
            rtype: 2,
            holder: 0,
        });
        assert_eq!(PrState::restored(&bad), None);
        let mut bad = p.clone();
        bad.registrations[0].transport_id = "06".into();
        assert_eq!(PrState::restored(&bad), None);
        let mut bad = p;
        bad.registrations[1].key = 0;
        assert_eq!(PrState::restored(&bad), None);
    }
}
