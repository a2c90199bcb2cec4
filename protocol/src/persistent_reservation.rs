//! Persistent reservations: the PERSISTENT RESERVE IN (SPC-5 §6.15) and
//! PERSISTENT RESERVE OUT (SPC-5 §6.16) CDBs, the PR OUT basic parameter
//! list, and the four PR IN parameter data formats (READ KEYS, READ
//! RESERVATION, REPORT CAPABILITIES, READ FULL STATUS with TransportIDs,
//! SPC-5 §7.6.4).
//!
//! Both directions are here: a device encodes PR IN data and decodes PR OUT
//! parameter lists; an initiator does the opposite. Decoders never panic:
//! short data is [`DataError::TooShort`], and a list whose ADDITIONAL LENGTH
//! says more than arrived (a short ALLOCATION LENGTH) yields what arrived.

use crate::cdb::{be16, be32, be64, Cdb};
use crate::data::DataError;
use crate::opcode;

/// PERSISTENT RESERVE IN service actions (SPC-5 §6.15.1, table 157).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InAction {
    /// READ KEYS (00h): PRgeneration and the registered keys.
    ReadKeys,
    /// READ RESERVATION (01h): PRgeneration and the reservation, if any.
    ReadReservation,
    /// REPORT CAPABILITIES (02h): what the device server supports.
    ReportCapabilities,
    /// READ FULL STATUS (03h): every registration with its I_T nexus.
    ReadFullStatus,
}

impl InAction {
    /// The SERVICE ACTION code.
    pub fn code(self) -> u8 {
        match self {
            InAction::ReadKeys => 0x00,
            InAction::ReadReservation => 0x01,
            InAction::ReportCapabilities => 0x02,
            InAction::ReadFullStatus => 0x03,
        }
    }

    /// The service action for a code; `None` for reserved codes.
    pub fn from_code(code: u8) -> Option<InAction> {
        Some(match code & 0x1F {
            0x00 => InAction::ReadKeys,
            0x01 => InAction::ReadReservation,
            0x02 => InAction::ReportCapabilities,
            0x03 => InAction::ReadFullStatus,
            _ => return None,
        })
    }

    /// The name SPC-5 gives the service action.
    pub fn name(self) -> &'static str {
        match self {
            InAction::ReadKeys => "READ KEYS",
            InAction::ReadReservation => "READ RESERVATION",
            InAction::ReportCapabilities => "REPORT CAPABILITIES",
            InAction::ReadFullStatus => "READ FULL STATUS",
        }
    }
}

/// PERSISTENT RESERVE OUT service actions (SPC-5 §6.16.2, table 166).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutAction {
    /// REGISTER (00h): register, change or (with a zero new key) remove a key.
    Register,
    /// RESERVE (01h): create a reservation of a type.
    Reserve,
    /// RELEASE (02h): release the reservation the nexus holds.
    Release,
    /// CLEAR (03h): remove every registration and the reservation.
    Clear,
    /// PREEMPT (04h): remove the registrations of another key (and take over its reservation).
    Preempt,
    /// PREEMPT AND ABORT (05h): PREEMPT, also aborting the preempted nexuses' commands.
    PreemptAndAbort,
    /// REGISTER AND IGNORE EXISTING KEY (06h): register whatever key is held.
    RegisterAndIgnoreExistingKey,
    /// REGISTER AND MOVE (07h): register another I_T nexus and move the reservation to it.
    RegisterAndMove,
    /// REPLACE LOST RESERVATION (08h).
    ReplaceLostReservation,
}

impl OutAction {
    /// The SERVICE ACTION code.
    pub fn code(self) -> u8 {
        match self {
            OutAction::Register => 0x00,
            OutAction::Reserve => 0x01,
            OutAction::Release => 0x02,
            OutAction::Clear => 0x03,
            OutAction::Preempt => 0x04,
            OutAction::PreemptAndAbort => 0x05,
            OutAction::RegisterAndIgnoreExistingKey => 0x06,
            OutAction::RegisterAndMove => 0x07,
            OutAction::ReplaceLostReservation => 0x08,
        }
    }

    /// The service action for a code; `None` for reserved codes.
    pub fn from_code(code: u8) -> Option<OutAction> {
        Some(match code & 0x1F {
            0x00 => OutAction::Register,
            0x01 => OutAction::Reserve,
            0x02 => OutAction::Release,
            0x03 => OutAction::Clear,
            0x04 => OutAction::Preempt,
            0x05 => OutAction::PreemptAndAbort,
            0x06 => OutAction::RegisterAndIgnoreExistingKey,
            0x07 => OutAction::RegisterAndMove,
            0x08 => OutAction::ReplaceLostReservation,
            _ => return None,
        })
    }

    /// The name SPC-5 gives the service action.
    pub fn name(self) -> &'static str {
        match self {
            OutAction::Register => "REGISTER",
            OutAction::Reserve => "RESERVE",
            OutAction::Release => "RELEASE",
            OutAction::Clear => "CLEAR",
            OutAction::Preempt => "PREEMPT",
            OutAction::PreemptAndAbort => "PREEMPT AND ABORT",
            OutAction::RegisterAndIgnoreExistingKey => "REGISTER AND IGNORE EXISTING KEY",
            OutAction::RegisterAndMove => "REGISTER AND MOVE",
            OutAction::ReplaceLostReservation => "REPLACE LOST RESERVATION",
        }
    }
}

/// Persistent reservation types (SPC-5 §6.15.3.4, table 162): the TYPE
/// field of the PR OUT CDB and of the reservation descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReservationType {
    /// 1h Write Exclusive: only the holder writes.
    WriteExclusive,
    /// 3h Exclusive Access: only the holder reads or writes.
    ExclusiveAccess,
    /// 5h Write Exclusive – Registrants Only.
    WriteExclusiveRegistrantsOnly,
    /// 6h Exclusive Access – Registrants Only.
    ExclusiveAccessRegistrantsOnly,
    /// 7h Write Exclusive – All Registrants.
    WriteExclusiveAllRegistrants,
    /// 8h Exclusive Access – All Registrants.
    ExclusiveAccessAllRegistrants,
}

impl ReservationType {
    /// Every type, in code order.
    pub const ALL: [ReservationType; 6] = [
        ReservationType::WriteExclusive,
        ReservationType::ExclusiveAccess,
        ReservationType::WriteExclusiveRegistrantsOnly,
        ReservationType::ExclusiveAccessRegistrantsOnly,
        ReservationType::WriteExclusiveAllRegistrants,
        ReservationType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE code.
    pub fn code(self) -> u8 {
        match self {
            ReservationType::WriteExclusive => 1,
            ReservationType::ExclusiveAccess => 3,
            ReservationType::WriteExclusiveRegistrantsOnly => 5,
            ReservationType::ExclusiveAccessRegistrantsOnly => 6,
            ReservationType::WriteExclusiveAllRegistrants => 7,
            ReservationType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// The type for a TYPE code; `None` for obsolete or reserved codes.
    pub fn from_code(code: u8) -> Option<ReservationType> {
        ReservationType::ALL
            .into_iter()
            .find(|t| t.code() == code & 0x0F)
    }

    /// The short name sg_persist uses (`we`, `ea`, `we-ro`, `ea-ro`, `we-ar`, `ea-ar`).
    pub fn short_name(self) -> &'static str {
        match self {
            ReservationType::WriteExclusive => "we",
            ReservationType::ExclusiveAccess => "ea",
            ReservationType::WriteExclusiveRegistrantsOnly => "we-ro",
            ReservationType::ExclusiveAccessRegistrantsOnly => "ea-ro",
            ReservationType::WriteExclusiveAllRegistrants => "we-ar",
            ReservationType::ExclusiveAccessAllRegistrants => "ea-ar",
        }
    }

    /// The type for a short name (see [`ReservationType::short_name`]), any case.
    pub fn from_short_name(name: &str) -> Option<ReservationType> {
        ReservationType::ALL
            .into_iter()
            .find(|t| t.short_name().eq_ignore_ascii_case(name))
    }

    /// The name SPC-5 gives the type.
    pub fn name(self) -> &'static str {
        match self {
            ReservationType::WriteExclusive => "Write Exclusive",
            ReservationType::ExclusiveAccess => "Exclusive Access",
            ReservationType::WriteExclusiveRegistrantsOnly => "Write Exclusive, registrants only",
            ReservationType::ExclusiveAccessRegistrantsOnly => "Exclusive Access, registrants only",
            ReservationType::WriteExclusiveAllRegistrants => "Write Exclusive, all registrants",
            ReservationType::ExclusiveAccessAllRegistrants => "Exclusive Access, all registrants",
        }
    }

    /// This type's bit in the PERSISTENT RESERVATION TYPE MASK of REPORT
    /// CAPABILITIES (SPC-5 §6.15.4, bytes 4-5 as one big-endian u16).
    pub fn mask_bit(self) -> u16 {
        match self {
            ReservationType::WriteExclusiveAllRegistrants => 0x8000,
            ReservationType::ExclusiveAccessRegistrantsOnly => 0x4000,
            ReservationType::WriteExclusiveRegistrantsOnly => 0x2000,
            ReservationType::ExclusiveAccess => 0x0800,
            ReservationType::WriteExclusive => 0x0200,
            ReservationType::ExclusiveAccessAllRegistrants => 0x0001,
        }
    }
}

/// SCOPE 0h: the reservation applies to the whole logical unit (the only
/// scope SPC-5 keeps, §6.15.3.3).
pub const SCOPE_LU: u8 = 0x0;

/// Length of the PR OUT basic parameter list (SPC-5 §6.16.3, SPEC_I_PT zero).
pub const OUT_PARAMETER_LIST_LEN: usize = 24;

/// Length of the REPORT CAPABILITIES parameter data (SPC-5 §6.15.4).
pub const CAPABILITIES_LEN: usize = 8;

/// PERSISTENT RESERVE IN (SPC-5 §6.15.1): SERVICE ACTION in byte 1 bits
/// 4-0, ALLOCATION LENGTH in bytes 7-8.
pub fn pr_in_cdb(action: InAction, alloc_len: u16) -> Cdb {
    let mut b = [0u8; 10];
    b[0] = opcode::PERSISTENT_RESERVE_IN;
    b[1] = action.code();
    b[7..9].copy_from_slice(&alloc_len.to_be_bytes());
    Cdb::from_bytes(&b).unwrap_or_else(unreachable_cdb)
}

/// PERSISTENT RESERVE OUT (SPC-5 §6.16.1): SERVICE ACTION in byte 1 bits
/// 4-0, SCOPE (bits 7-4) and TYPE (bits 3-0) in byte 2, PARAMETER LIST
/// LENGTH in bytes 5-8. `rtype` `None` leaves TYPE zero (REGISTER, CLEAR...,
/// where the device server ignores it).
pub fn pr_out_cdb(action: OutAction, rtype: Option<ReservationType>, param_len: u32) -> Cdb {
    let mut b = [0u8; 10];
    b[0] = opcode::PERSISTENT_RESERVE_OUT;
    b[1] = action.code();
    b[2] = (SCOPE_LU << 4) | rtype.map_or(0, ReservationType::code);
    b[5..9].copy_from_slice(&param_len.to_be_bytes());
    Cdb::from_bytes(&b).unwrap_or_else(unreachable_cdb)
}

// A 10-byte array is always a valid CDB; this keeps the builders free of
// unwrap while being honest that the branch is dead.
fn unreachable_cdb() -> Cdb {
    Cdb::test_unit_ready()
}

/// The PR OUT CDB fields a device server reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutCdb {
    /// SERVICE ACTION (byte 1 bits 4-0), raw: reserved codes are the caller's to reject.
    pub service_action: u8,
    /// SCOPE (byte 2 bits 7-4).
    pub scope: u8,
    /// TYPE (byte 2 bits 3-0), raw.
    pub rtype: u8,
    /// PARAMETER LIST LENGTH (bytes 5-8).
    pub param_len: u32,
}

impl OutCdb {
    /// Reads the fields of a PERSISTENT RESERVE OUT CDB (missing bytes read as zero).
    pub fn decode(cdb: &[u8]) -> OutCdb {
        let b2 = crate::cdb::byte(cdb, 2);
        OutCdb {
            service_action: crate::cdb::byte(cdb, 1) & 0x1F,
            scope: b2 >> 4,
            rtype: b2 & 0x0F,
            param_len: be32(cdb, 5),
        }
    }
}

/// The PR OUT basic parameter list (SPC-5 §6.16.3, table 168), 24 bytes
/// when SPEC_I_PT is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutParameters {
    /// RESERVATION KEY (bytes 0-7): the key the I_T nexus is registered with.
    pub reservation_key: u64,
    /// SERVICE ACTION RESERVATION KEY (bytes 8-15): the new key (REGISTER)
    /// or the key to preempt (PREEMPT).
    pub service_action_key: u64,
    /// SPEC_I_PT (byte 20 bit 3): TransportIDs follow.
    pub spec_i_pt: bool,
    /// ALL_TG_PT (byte 20 bit 2): register on every target port.
    pub all_tg_pt: bool,
    /// APTPL (byte 20 bit 0): persist through power loss.
    pub aptpl: bool,
}

impl OutParameters {
    /// The 24 bytes.
    pub fn to_bytes(&self) -> [u8; OUT_PARAMETER_LIST_LEN] {
        let mut b = [0u8; OUT_PARAMETER_LIST_LEN];
        b[0..8].copy_from_slice(&self.reservation_key.to_be_bytes());
        b[8..16].copy_from_slice(&self.service_action_key.to_be_bytes());
        b[20] = (u8::from(self.spec_i_pt) << 3)
            | (u8::from(self.all_tg_pt) << 2)
            | u8::from(self.aptpl);
        b
    }

    /// Decodes the first 24 bytes of a parameter list.
    pub fn decode(b: &[u8]) -> Result<OutParameters, DataError> {
        need(b, OUT_PARAMETER_LIST_LEN)?;
        Ok(OutParameters {
            reservation_key: be64(b, 0),
            service_action_key: be64(b, 8),
            spec_i_pt: b[20] & 0x08 != 0,
            all_tg_pt: b[20] & 0x04 != 0,
            aptpl: b[20] & 0x01 != 0,
        })
    }
}

fn need(b: &[u8], n: usize) -> Result<(), DataError> {
    if b.len() < n {
        Err(DataError::TooShort {
            got: b.len(),
            need: n,
        })
    } else {
        Ok(())
    }
}

/// The 8-byte PR IN header: PRGENERATION and ADDITIONAL LENGTH.
fn header(generation: u32, additional: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + additional);
    b.extend_from_slice(&generation.to_be_bytes());
    b.extend_from_slice(&u32::try_from(additional).unwrap_or(u32::MAX).to_be_bytes());
    b
}

/// The bytes after the header that arrived, bounded by ADDITIONAL LENGTH.
fn body(b: &[u8]) -> Result<(u32, &[u8]), DataError> {
    need(b, 8)?;
    let additional = usize::try_from(be32(b, 4)).unwrap_or(usize::MAX);
    let end = 8usize.saturating_add(additional).min(b.len());
    Ok((be32(b, 0), &b[8..end]))
}

/// READ KEYS parameter data (SPC-5 §6.15.2, table 159).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadKeys {
    /// PRGENERATION.
    pub generation: u32,
    /// The registered reservation keys, one per registered I_T nexus.
    pub keys: Vec<u64>,
}

impl ReadKeys {
    /// The full parameter data (the caller truncates to ALLOCATION LENGTH).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = header(self.generation, self.keys.len() * 8);
        for k in &self.keys {
            b.extend_from_slice(&k.to_be_bytes());
        }
        b
    }

    /// Decodes; a list cut short by the allocation length keeps its whole keys.
    pub fn decode(b: &[u8]) -> Result<ReadKeys, DataError> {
        let (generation, list) = body(b)?;
        Ok(ReadKeys {
            generation,
            keys: list.chunks_exact(8).map(|k| be64(k, 0)).collect(),
        })
    }
}

/// A persistent reservation as READ RESERVATION reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// RESERVATION KEY of the holder (zero for an all-registrants type).
    pub key: u64,
    /// SCOPE.
    pub scope: u8,
    /// TYPE, raw (see [`ReservationType::from_code`]).
    pub rtype: u8,
}

/// READ RESERVATION parameter data (SPC-5 §6.15.3, tables 160 and 161).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadReservation {
    /// PRGENERATION.
    pub generation: u32,
    /// The reservation; `None` when ADDITIONAL LENGTH is zero.
    pub reservation: Option<Reservation>,
}

impl ReadReservation {
    /// The full parameter data: 8 bytes, or 24 with a reservation.
    pub fn encode(&self) -> Vec<u8> {
        let Some(r) = self.reservation else {
            return header(self.generation, 0);
        };
        let mut b = header(self.generation, 16);
        b.extend_from_slice(&r.key.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, (r.scope << 4) | (r.rtype & 0x0F), 0, 0]);
        b
    }

    /// Decodes; a reservation descriptor cut short is [`DataError::TooShort`].
    pub fn decode(b: &[u8]) -> Result<ReadReservation, DataError> {
        let (generation, rest) = body(b)?;
        if be32(b, 4) == 0 {
            return Ok(ReadReservation {
                generation,
                reservation: None,
            });
        }
        need(b, 24)?;
        Ok(ReadReservation {
            generation,
            reservation: Some(Reservation {
                key: be64(rest, 0),
                scope: rest[13] >> 4,
                rtype: rest[13] & 0x0F,
            }),
        })
    }
}

/// REPORT CAPABILITIES parameter data (SPC-5 §6.15.4, table 163).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// RLR_C (byte 2 bit 7): REPLACE LOST RESERVATION capable.
    pub rlr_c: bool,
    /// CRH (byte 2 bit 4): compatible reservation handling (SPC-5 §5.14.3).
    pub crh: bool,
    /// SIP_C (byte 2 bit 3): SPEC_I_PT capable.
    pub sip_c: bool,
    /// ATP_C (byte 2 bit 2): ALL_TG_PT capable.
    pub atp_c: bool,
    /// PTPL_C (byte 2 bit 0): persist through power loss capable.
    pub ptpl_c: bool,
    /// TMV (byte 3 bit 7): the type mask is valid.
    pub tmv: bool,
    /// ALLOW COMMANDS (byte 3 bits 6-4).
    pub allow_commands: u8,
    /// PTPL_A (byte 3 bit 0): persist through power loss is activated.
    pub ptpl_a: bool,
    /// PERSISTENT RESERVATION TYPE MASK (bytes 4-5), see [`ReservationType::mask_bit`].
    pub type_mask: u16,
}

impl Capabilities {
    /// The 8 bytes, LENGTH 0008h.
    pub fn to_bytes(&self) -> [u8; CAPABILITIES_LEN] {
        let mut b = [0u8; CAPABILITIES_LEN];
        b[0..2].copy_from_slice(&(CAPABILITIES_LEN as u16).to_be_bytes());
        b[2] = (u8::from(self.rlr_c) << 7)
            | (u8::from(self.crh) << 4)
            | (u8::from(self.sip_c) << 3)
            | (u8::from(self.atp_c) << 2)
            | u8::from(self.ptpl_c);
        b[3] =
            (u8::from(self.tmv) << 7) | ((self.allow_commands & 0x07) << 4) | u8::from(self.ptpl_a);
        b[4..6].copy_from_slice(&self.type_mask.to_be_bytes());
        b
    }

    /// Decodes the 8 bytes.
    pub fn decode(b: &[u8]) -> Result<Capabilities, DataError> {
        need(b, CAPABILITIES_LEN)?;
        Ok(Capabilities {
            rlr_c: b[2] & 0x80 != 0,
            crh: b[2] & 0x10 != 0,
            sip_c: b[2] & 0x08 != 0,
            atp_c: b[2] & 0x04 != 0,
            ptpl_c: b[2] & 0x01 != 0,
            tmv: b[3] & 0x80 != 0,
            allow_commands: (b[3] >> 4) & 0x07,
            ptpl_a: b[3] & 0x01 != 0,
            type_mask: be16(b, 4),
        })
    }

    /// The types the mask says are supported (empty unless TMV).
    pub fn types(&self) -> Vec<ReservationType> {
        if !self.tmv {
            return Vec::new();
        }
        ReservationType::ALL
            .into_iter()
            .filter(|t| self.type_mask & t.mask_bit() != 0)
            .collect()
    }
}

/// PROTOCOL IDENTIFIER values (SPC-5 §7.6.2, table 444) this crate names.
pub mod protocol_id {
    /// Fibre Channel (FCP-4).
    pub const FC: u8 = 0x0;
    /// iSCSI.
    pub const ISCSI: u8 = 0x5;
    /// Serial Attached SCSI.
    pub const SAS: u8 = 0x6;
    /// SCSI over PCI Express (SOP).
    pub const SOP: u8 = 0xA;
    /// No specific protocol.
    pub const NONE: u8 = 0xF;

    /// A short name for a PROTOCOL IDENTIFIER.
    pub fn name(id: u8) -> &'static str {
        match id & 0x0F {
            0x0 => "FCP",
            0x1 => "SPI",
            0x2 => "SSA",
            0x3 => "SBP",
            0x4 => "SRP",
            0x5 => "iSCSI",
            0x6 => "SAS",
            0x7 => "ADT",
            0x8 => "ATA",
            0x9 => "UAS",
            0xA => "SOP",
            0xB => "PCIe",
            0xF => "none",
            _ => "reserved",
        }
    }
}

/// A TransportID (SPC-5 §7.6.4): the initiator port of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportId {
    /// FORMAT CODE (byte 0 bits 7-6).
    pub format: u8,
    /// PROTOCOL IDENTIFIER (byte 0 bits 3-0).
    pub protocol: u8,
    /// Every byte of the TransportID, byte 0 included.
    pub bytes: Vec<u8>,
}

impl TransportId {
    /// Wraps the bytes of one TransportID; `None` when empty.
    pub fn from_bytes(bytes: &[u8]) -> Option<TransportId> {
        let b0 = *bytes.first()?;
        Some(TransportId {
            format: b0 >> 6,
            protocol: b0 & 0x0F,
            bytes: bytes.to_vec(),
        })
    }

    /// An iSCSI TransportID, format 00b (SPC-5 §7.6.4.6): ADDITIONAL LENGTH
    /// in bytes 2-3, then the null-terminated ISCSI NAME padded to a
    /// multiple of four bytes.
    pub fn iscsi(name: &str) -> TransportId {
        let mut field = name.as_bytes().to_vec();
        field.push(0);
        while !field.len().is_multiple_of(4) || field.len() < 20 {
            field.push(0);
        }
        let mut bytes = vec![protocol_id::ISCSI, 0];
        bytes.extend_from_slice(&(field.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&field);
        TransportId {
            format: 0,
            protocol: protocol_id::ISCSI,
            bytes,
        }
    }

    /// A SAS TransportID (SPC-5 §7.6.4.7, SPL): 24 bytes, the SAS ADDRESS in bytes 4-11.
    pub fn sas(address: u64) -> TransportId {
        let mut bytes = vec![0u8; 24];
        bytes[0] = protocol_id::SAS;
        bytes[4..12].copy_from_slice(&address.to_be_bytes());
        TransportId {
            format: 0,
            protocol: protocol_id::SAS,
            bytes,
        }
    }

    /// The port's name as text: the iSCSI name, `naa.` plus the 16 hex
    /// digits of a SAS address or FC N_Port name, else the bytes in hex.
    pub fn describe(&self) -> String {
        match (self.protocol, self.format) {
            (protocol_id::ISCSI, 0 | 1) => {
                let len = usize::from(be16(&self.bytes, 2));
                let end = (4 + len).min(self.bytes.len());
                let name = self.bytes.get(4..end).unwrap_or(&[]);
                let name = name.split(|&c| c == 0).next().unwrap_or(&[]);
                String::from_utf8_lossy(name).into_owned()
            }
            (protocol_id::SAS, 0) => format!("naa.{:016x}", be64(&self.bytes, 4)),
            (protocol_id::FC, 0) => format!("naa.{:016x}", be64(&self.bytes, 8)),
            _ => self.bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// How long the TransportID at the start of `b` is: its ADDITIONAL
    /// LENGTH for iSCSI, 24 bytes for the fixed-length formats.
    pub fn length_at(b: &[u8]) -> usize {
        match b.first().map(|b0| b0 & 0x0F) {
            Some(protocol_id::ISCSI) => 4 + usize::from(be16(b, 2)),
            Some(_) => 24,
            None => 0,
        }
    }
}

/// One READ FULL STATUS descriptor (SPC-5 §6.15.5, table 165).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullStatusDescriptor {
    /// RESERVATION KEY of this registration.
    pub key: u64,
    /// ALL_TG_PT (byte 12 bit 1): registered on every target port.
    pub all_tg_pt: bool,
    /// R_HOLDER (byte 12 bit 0): this registration holds the reservation.
    pub holder: bool,
    /// SCOPE (byte 13 bits 7-4), meaningful when `holder`.
    pub scope: u8,
    /// TYPE (byte 13 bits 3-0), meaningful when `holder`.
    pub rtype: u8,
    /// RELATIVE TARGET PORT IDENTIFIER (bytes 18-19), unless `all_tg_pt`.
    pub relative_target_port: u16,
    /// The initiator port's TransportID (bytes 24..).
    pub transport_id: Option<TransportId>,
}

/// READ FULL STATUS parameter data (SPC-5 §6.15.5, table 164).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadFullStatus {
    /// PRGENERATION.
    pub generation: u32,
    /// One descriptor per registered I_T nexus.
    pub descriptors: Vec<FullStatusDescriptor>,
}

impl ReadFullStatus {
    /// The full parameter data (the caller truncates to ALLOCATION LENGTH).
    pub fn encode(&self) -> Vec<u8> {
        let mut list = Vec::new();
        for d in &self.descriptors {
            let tid = d.transport_id.as_ref().map_or(&[][..], |t| &t.bytes[..]);
            list.extend_from_slice(&d.key.to_be_bytes());
            list.extend_from_slice(&[0, 0, 0, 0]);
            list.push((u8::from(d.all_tg_pt) << 1) | u8::from(d.holder));
            list.push((d.scope << 4) | (d.rtype & 0x0F));
            list.extend_from_slice(&[0, 0, 0, 0]);
            list.extend_from_slice(&d.relative_target_port.to_be_bytes());
            list.extend_from_slice(&u32::try_from(tid.len()).unwrap_or(0).to_be_bytes());
            list.extend_from_slice(tid);
        }
        let mut b = header(self.generation, list.len());
        b.extend_from_slice(&list);
        b
    }

    /// Decodes the descriptors that arrived whole.
    pub fn decode(b: &[u8]) -> Result<ReadFullStatus, DataError> {
        let (generation, mut list) = body(b)?;
        let mut descriptors = Vec::new();
        while list.len() >= 24 {
            let tid_len = usize::try_from(be32(list, 20)).unwrap_or(usize::MAX);
            let end = 24usize.saturating_add(tid_len);
            if end > list.len() {
                break;
            }
            descriptors.push(FullStatusDescriptor {
                key: be64(list, 0),
                all_tg_pt: list[12] & 0x02 != 0,
                holder: list[12] & 0x01 != 0,
                scope: list[13] >> 4,
                rtype: list[13] & 0x0F,
                relative_target_port: be16(list, 18),
                transport_id: TransportId::from_bytes(&list[24..end]),
            });
            list = &list[end..];
        }
        Ok(ReadFullStatus {
            generation,
            descriptors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_in_cdb_bytes() {
        assert_eq!(
            pr_in_cdb(InAction::ReadKeys, 0x1234).as_bytes(),
            &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x12, 0x34, 0]
        );
        assert_eq!(
            pr_in_cdb(InAction::ReadFullStatus, 8192).as_bytes(),
            &[0x5E, 0x03, 0, 0, 0, 0, 0, 0x20, 0x00, 0]
        );
        for a in [
            InAction::ReadKeys,
            InAction::ReadReservation,
            InAction::ReportCapabilities,
            InAction::ReadFullStatus,
        ] {
            assert_eq!(InAction::from_code(a.code()), Some(a));
        }
        assert_eq!(InAction::from_code(0x04), None);
    }

    #[test]
    fn pr_out_cdb_bytes() {
        // RESERVE, type 5 (WE-RO), scope LU, 24-byte list.
        let c = pr_out_cdb(
            OutAction::Reserve,
            Some(ReservationType::WriteExclusiveRegistrantsOnly),
            24,
        );
        assert_eq!(c.as_bytes(), &[0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0]);
        let c = pr_out_cdb(OutAction::RegisterAndIgnoreExistingKey, None, 24);
        assert_eq!(c.as_bytes(), &[0x5F, 0x06, 0x00, 0, 0, 0, 0, 0, 24, 0]);
        let d = OutCdb::decode(&[0x5F, 0xE4, 0x38, 0, 0, 0x01, 0x02, 0x03, 0x04, 0]);
        assert_eq!(
            d,
            OutCdb {
                service_action: 4,
                scope: 3,
                rtype: 8,
                param_len: 0x0102_0304
            }
        );
        assert_eq!(OutCdb::decode(&[0x5F]).param_len, 0);
        for code in 0..9 {
            assert_eq!(OutAction::from_code(code).map(OutAction::code), Some(code));
        }
        assert_eq!(OutAction::from_code(9), None);
    }

    #[test]
    fn reservation_types_codes_names_mask() {
        let codes: Vec<u8> = ReservationType::ALL.iter().map(|t| t.code()).collect();
        assert_eq!(codes, [1, 3, 5, 6, 7, 8]);
        for t in ReservationType::ALL {
            assert_eq!(ReservationType::from_code(t.code()), Some(t));
            assert_eq!(ReservationType::from_short_name(t.short_name()), Some(t));
        }
        for obsolete in [0, 2, 4, 9, 15] {
            assert_eq!(ReservationType::from_code(obsolete), None);
        }
        assert_eq!(
            ReservationType::from_short_name("WE-AR"),
            Some(ReservationType::WriteExclusiveAllRegistrants)
        );
        // SPC-5 table 163: byte 4 = WR_EX_AR EX_AC_RO WR_EX_RO r EX_AC r WR_EX r,
        // byte 5 bit 0 = EX_AC_AR.
        let all: u16 = ReservationType::ALL.iter().map(|t| t.mask_bit()).sum();
        assert_eq!(all.to_be_bytes(), [0xEA, 0x01]);
    }

    #[test]
    fn out_parameter_list_bytes() {
        let p = OutParameters {
            reservation_key: 0x0102_0304_0506_0708,
            service_action_key: 0xA1A2_A3A4_A5A6_A7A8,
            spec_i_pt: false,
            all_tg_pt: true,
            aptpl: true,
        };
        let b = p.to_bytes();
        let mut want = [0u8; 24];
        want[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want[8..16].copy_from_slice(&[0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8]);
        want[20] = 0x05;
        assert_eq!(b, want);
        assert_eq!(OutParameters::decode(&b), Ok(p));
        let mut s = [0u8; 24];
        s[20] = 0x08;
        assert!(OutParameters::decode(&s).unwrap().spec_i_pt);
        assert_eq!(
            OutParameters::decode(&b[..23]),
            Err(DataError::TooShort { got: 23, need: 24 })
        );
    }

    #[test]
    fn read_keys_bytes() {
        let k = ReadKeys {
            generation: 7,
            keys: vec![0x1111, 0xAABB_CCDD_EEFF_0011],
        };
        let b = k.encode();
        assert_eq!(
            b,
            [
                0, 0, 0, 7, 0, 0, 0, 16, //
                0, 0, 0, 0, 0, 0, 0x11, 0x11, //
                0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x00, 0x11,
            ]
        );
        assert_eq!(ReadKeys::decode(&b), Ok(k));
        // Cut by the allocation length: whole keys only.
        let short = ReadKeys::decode(&b[..20]).unwrap();
        assert_eq!(short.keys, [0x1111]);
        assert_eq!(
            ReadKeys::decode(&b[..7]),
            Err(DataError::TooShort { got: 7, need: 8 })
        );
        assert_eq!(
            ReadKeys::default().encode(),
            [0, 0, 0, 0, 0, 0, 0, 0].to_vec()
        );
    }

    #[test]
    fn read_reservation_bytes() {
        let none = ReadReservation {
            generation: 0x0102_0304,
            reservation: None,
        };
        assert_eq!(none.encode(), [1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(ReadReservation::decode(&none.encode()), Ok(none));
        let held = ReadReservation {
            generation: 2,
            reservation: Some(Reservation {
                key: 0xABCD,
                scope: SCOPE_LU,
                rtype: 5,
            }),
        };
        let b = held.encode();
        assert_eq!(
            b,
            [
                0, 0, 0, 2, 0, 0, 0, 16, //
                0, 0, 0, 0, 0, 0, 0xAB, 0xCD, //
                0, 0, 0, 0, 0, 0x05, 0, 0,
            ]
        );
        assert_eq!(ReadReservation::decode(&b), Ok(held));
        assert!(ReadReservation::decode(&b[..20]).is_err());
    }

    #[test]
    fn capabilities_bytes() {
        let c = Capabilities {
            crh: true,
            atp_c: true,
            ptpl_c: true,
            tmv: true,
            allow_commands: 1,
            ptpl_a: false,
            type_mask: ReservationType::ALL.iter().map(|t| t.mask_bit()).sum(),
            ..Capabilities::default()
        };
        let b = c.to_bytes();
        assert_eq!(b, [0x00, 0x08, 0x15, 0x90, 0xEA, 0x01, 0, 0]);
        assert_eq!(Capabilities::decode(&b), Ok(c));
        assert_eq!(c.types(), ReservationType::ALL);
        let no_tmv = Capabilities { tmv: false, ..c };
        assert!(no_tmv.types().is_empty());
        assert!(Capabilities::decode(&b[..7]).is_err());
    }

    #[test]
    fn transport_ids() {
        let t = TransportId::iscsi("iqn.x");
        // 5 name bytes + NUL, padded to 20 (SPC-5: at least 20, multiple of 4).
        assert_eq!(t.bytes.len(), 24);
        assert_eq!(&t.bytes[..4], &[0x05, 0, 0, 20]);
        assert_eq!(&t.bytes[4..10], b"iqn.x\0");
        assert_eq!(t.describe(), "iqn.x");
        assert_eq!(TransportId::length_at(&t.bytes), 24);
        let s = TransportId::sas(0x5001_4050_0000_0001);
        assert_eq!(
            &s.bytes[..12],
            &[6, 0, 0, 0, 0x50, 0x01, 0x40, 0x50, 0, 0, 0, 1]
        );
        assert_eq!(s.describe(), "naa.5001405000000001");
        assert_eq!(TransportId::length_at(&s.bytes), 24);
        assert_eq!(TransportId::from_bytes(&[]), None);
        let odd = TransportId::from_bytes(&[0x4F, 0xAB]).unwrap();
        assert_eq!((odd.format, odd.protocol), (1, 0xF));
        assert_eq!(odd.describe(), "4fab");
    }

    #[test]
    fn read_full_status_bytes() {
        let s = ReadFullStatus {
            generation: 3,
            descriptors: vec![
                FullStatusDescriptor {
                    key: 0x1234,
                    all_tg_pt: false,
                    holder: true,
                    scope: 0,
                    rtype: 1,
                    relative_target_port: 2,
                    transport_id: Some(TransportId::sas(0x5000_0000_0000_00AB)),
                },
                FullStatusDescriptor {
                    key: 0x99,
                    all_tg_pt: true,
                    holder: false,
                    scope: 0,
                    rtype: 0,
                    relative_target_port: 0,
                    transport_id: Some(TransportId::iscsi("iqn.2026-01.vscsi:conn-1")),
                },
            ],
        };
        let b = s.encode();
        // Header: PRgeneration 3, additional length = (24+24) + (24+32).
        assert_eq!(&b[..8], &[0, 0, 0, 3, 0, 0, 0, 104]);
        assert_eq!(b.len(), 8 + 104);
        assert_eq!(
            &b[8..32],
            &[
                0, 0, 0, 0, 0, 0, 0x12, 0x34, // key
                0, 0, 0, 0, // reserved
                0x01, 0x01, // R_HOLDER; scope 0, type 1
                0, 0, 0, 0, // reserved
                0, 2, // relative target port 2
                0, 0, 0, 24, // additional descriptor length
            ]
        );
        assert_eq!(&b[32..44], &[6, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0xAB]);
        assert_eq!(b[56 + 12], 0x02); // ALL_TG_PT
        assert_eq!(&b[56 + 20..56 + 24], &[0, 0, 0, 32]);
        assert_eq!(ReadFullStatus::decode(&b), Ok(s.clone()));
        // Truncated mid-second descriptor: the first one only.
        let short = ReadFullStatus::decode(&b[..70]).unwrap();
        assert_eq!(short.descriptors, s.descriptors[..1]);
        // A descriptor claiming a huge TransportID stops decoding, no panic.
        let mut bad = b.clone();
        bad[8 + 20..8 + 24].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(ReadFullStatus::decode(&bad).unwrap().descriptors.is_empty());
    }
}
