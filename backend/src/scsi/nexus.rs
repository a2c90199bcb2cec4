//! The I_T nexus a command arrives on (SAM-5 §4.7: the relationship
//! between one initiator port and one target port), as the target sees it:
//! an opaque initiator port named by its TransportID, the relative target
//! port identifier of the port the command came through, and the number of
//! the connection that carries the nexus.
//!
//! The SCSI layer knows nothing of the transport that builds these values.
//!
//! # The TransportID of a vhost-user frontend
//!
//! SPC-5 §7.6.4 defines TransportID formats per SCSI transport protocol; a
//! vhost-user connection has none of its own (PROTOCOL IDENTIFIER Fh, "no
//! specific protocol", defines no TransportID). The daemon uses the iSCSI
//! form, FORMAT CODE 00b, PROTOCOL IDENTIFIER 5h (SPC-5 table "iSCSI
//! initiator device TransportID format"): byte 0 = 05h, byte 1 reserved,
//! bytes 2-3 ADDITIONAL LENGTH (a multiple of 4, at least 20), then the
//! ISCSI NAME, UTF-8, NUL-terminated and zero-padded. It is the only defined
//! form that carries a variable-length name, so the name can be the
//! operator's own: `vhost-user:<controller name>` (controller names are 1-64
//! of `A-Z a-z 0-9 - _ .`). `sg_persist` and Linux print it as-is. The
//! prefix is not an `iqn.`/`eui.`/`naa.` name, so it cannot collide with a
//! real iSCSI initiator's.
//!
//! The name identifies the frontend side of one controller socket, not one
//! connection: vhost-user lets one frontend at a time on a socket, so the
//! controller names the initiator port uniquely at any moment, and a
//! frontend that reconnects (a QEMU restart, or the daemon's own restart
//! with APTPL state, SPC-5 §5.14.5) is the same initiator port again, as a
//! real HBA's port name survives a host reboot. Each connection is still
//! its own I_T nexus: when it ends, the nexus is lost (SPC-2 reservations
//! go, SPC-5 §5.14.3 / SPC-2 §5.5.1), and the next one starts with POWER ON
//! unit attention. Two controllers are two initiator ports and two target
//! ports, so several controllers serving one shared logical unit are
//! several I_T nexuses to it (multipath).

use std::sync::{Arc, OnceLock};

/// The PROTOCOL IDENTIFIER of the TransportIDs this target builds (iSCSI).
pub const PROTOCOL_ISCSI: u8 = 0x5;
/// Prefix of the iSCSI NAME of a vhost-user frontend.
pub const NAME_PREFIX: &str = "vhost-user:";
/// The longest iSCSI NAME accepted in a TransportID (RFC 3720 §3.2.6.1:
/// 223 bytes, plus the terminating NUL).
const MAX_ISCSI_NAME: usize = 224;

/// An initiator port, named by its TransportID (SPC-5 §7.6.4).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InitiatorPort {
    transport_id: Arc<[u8]>,
}

/// A TransportID that cannot name an initiator port of this target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportIdError {
    /// Fewer bytes than the header and the minimum name field.
    #[error("TransportID shorter than 24 bytes")]
    TooShort,
    /// Not FORMAT CODE 00b with PROTOCOL IDENTIFIER 5h.
    #[error("TransportID of an unsupported format or protocol")]
    Format,
    /// ADDITIONAL LENGTH is not a multiple of 4, runs past the list, or the
    /// name has no NUL terminator.
    #[error("malformed iSCSI TransportID")]
    Malformed,
}

impl InitiatorPort {
    /// The initiator port with the iSCSI NAME `name` (see the module
    /// documentation for the layout).
    pub fn iscsi(name: &str) -> Self {
        let name = &name.as_bytes()[..name.len().min(MAX_ISCSI_NAME - 1)];
        // NUL-terminated, padded to a multiple of 4, at least 20 bytes.
        let field = (name.len() + 1).div_ceil(4).max(5) * 4;
        let mut t = vec![0u8; 4 + field];
        t[0] = PROTOCOL_ISCSI;
        t[2..4].copy_from_slice(&(field as u16).to_be_bytes());
        t[4..4 + name.len()].copy_from_slice(name);
        Self {
            transport_id: t.into(),
        }
    }

    /// The frontend side of the controller named `controller`.
    pub fn vhost_user(controller: &str) -> Self {
        Self::iscsi(&format!("{NAME_PREFIX}{controller}"))
    }

    /// Reads one TransportID at the start of `bytes` (a parameter list):
    /// the port and how many bytes the TransportID took. Only the iSCSI
    /// form 00b is understood; a name is compared as this target builds it
    /// (trailing padding normalized).
    pub fn parse(bytes: &[u8]) -> Result<(Self, usize), TransportIdError> {
        if bytes.len() < 24 {
            return Err(TransportIdError::TooShort);
        }
        if bytes[0] != PROTOCOL_ISCSI {
            return Err(TransportIdError::Format);
        }
        let field = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if field % 4 != 0 || field < 20 || 4 + field > bytes.len() {
            return Err(TransportIdError::Malformed);
        }
        let name = &bytes[4..4 + field];
        let end = name
            .iter()
            .position(|&b| b == 0)
            .ok_or(TransportIdError::Malformed)?;
        let name = std::str::from_utf8(&name[..end]).map_err(|_| TransportIdError::Malformed)?;
        Ok((Self::iscsi(name), 4 + field))
    }

    /// The TransportID bytes (READ FULL STATUS, the APTPL state file).
    pub fn transport_id(&self) -> &[u8] {
        &self.transport_id
    }

    /// The iSCSI NAME, for logs.
    pub fn name(&self) -> &str {
        let n = &self.transport_id[4..];
        let end = n.iter().position(|&b| b == 0).unwrap_or(n.len());
        std::str::from_utf8(&n[..end]).unwrap_or("?")
    }
}

impl std::fmt::Debug for InitiatorPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InitiatorPort({:?})", self.name())
    }
}

/// One I_T nexus: who sent a command, and through which target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexus {
    initiator: InitiatorPort,
    relative_target_port: u16,
    connection: u64,
}

impl Nexus {
    /// The nexus of connection `connection` from `initiator` through the
    /// target port `relative_target_port` (SPC-5: 1 to FFFFh; 0 is reserved).
    pub fn new(initiator: InitiatorPort, relative_target_port: u16, connection: u64) -> Self {
        Self {
            initiator,
            relative_target_port: relative_target_port.max(1),
            connection,
        }
    }

    /// The nexus of a controller's frontend: initiator
    /// [`InitiatorPort::vhost_user`] of `controller`, the controller's
    /// target port, connection 0 until [`Nexus::for_connection`].
    pub fn controller(controller: &str, relative_target_port: u16) -> Self {
        Self::new(
            InitiatorPort::vhost_user(controller),
            relative_target_port,
            0,
        )
    }

    /// The same ports, on connection `connection`.
    pub fn for_connection(&self, connection: u64) -> Self {
        Self {
            connection,
            ..self.clone()
        }
    }

    /// The nexus used where no transport is involved (unit tests, benches,
    /// a transport that has only one initiator): controller `local`, target port 1.
    pub fn local() -> &'static Nexus {
        static LOCAL: OnceLock<Nexus> = OnceLock::new();
        LOCAL.get_or_init(|| Nexus::controller("local", 1))
    }

    /// The initiator port.
    pub fn initiator(&self) -> &InitiatorPort {
        &self.initiator
    }

    /// RELATIVE TARGET PORT IDENTIFIER of the target port (SPC-5 §7.7.6.7).
    pub fn relative_target_port(&self) -> u16 {
        self.relative_target_port
    }

    /// The connection carrying the nexus (1, 2, ... per controller).
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// Whether `other` is the same I_T nexus (same initiator port and
    /// target port; the connection number is not part of the identity).
    pub fn same_ports(&self, other: &Nexus) -> bool {
        self.relative_target_port == other.relative_target_port && self.initiator == other.initiator
    }
}

impl Default for Nexus {
    fn default() -> Self {
        Nexus::local().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_id_is_the_iscsi_form_byte_for_byte() {
        let p = InitiatorPort::vhost_user("ctrl0");
        // "vhost-user:ctrl0" is 16 bytes, + NUL = 17, padded to 20.
        let mut want = vec![0x05, 0x00, 0x00, 20];
        want.extend_from_slice(b"vhost-user:ctrl0");
        want.extend_from_slice(&[0; 4]);
        assert_eq!(p.transport_id(), &want[..]);
        assert_eq!(p.transport_id().len(), 24);
        assert_eq!(p.name(), "vhost-user:ctrl0");
        // A longer name: 4 + 28.
        let q = InitiatorPort::vhost_user("controller-number-7");
        assert_eq!(q.transport_id().len(), 4 + 32);
        assert_eq!(&q.transport_id()[2..4], &[0, 32]);
        assert_eq!(q.transport_id()[4 + 30], 0);
        // A short name still has the minimum 20-byte field.
        assert_eq!(InitiatorPort::iscsi("a").transport_id().len(), 24);
    }

    #[test]
    fn transport_ids_parse_back_and_bad_ones_are_refused() {
        let p = InitiatorPort::vhost_user("b");
        let mut list = p.transport_id().to_vec();
        list.extend_from_slice(&[0xAA; 8]);
        assert_eq!(InitiatorPort::parse(&list), Ok((p.clone(), 24)));
        assert_eq!(
            InitiatorPort::parse(&list[..20]),
            Err(TransportIdError::TooShort)
        );
        let mut sas = list.clone();
        sas[0] = 0x06;
        assert_eq!(InitiatorPort::parse(&sas), Err(TransportIdError::Format));
        // FORMAT CODE 01b (name + ISID) is not taken.
        let mut f1 = list.clone();
        f1[0] = 0x45;
        assert_eq!(InitiatorPort::parse(&f1), Err(TransportIdError::Format));
        let mut odd = list.clone();
        odd[3] = 21;
        assert_eq!(InitiatorPort::parse(&odd), Err(TransportIdError::Malformed));
        let mut long = list.clone();
        long[3] = 40;
        assert_eq!(
            InitiatorPort::parse(&long),
            Err(TransportIdError::Malformed)
        );
        let mut no_nul = p.transport_id().to_vec();
        no_nul[4..24].fill(b'x');
        assert_eq!(
            InitiatorPort::parse(&no_nul),
            Err(TransportIdError::Malformed)
        );
    }

    #[test]
    fn a_nexus_is_its_ports_whatever_the_connection() {
        let a1 = Nexus::controller("a", 1).for_connection(1);
        let a2 = a1.for_connection(2);
        let b = Nexus::controller("b", 2).for_connection(1);
        assert!(a1.same_ports(&a2));
        assert!(!a1.same_ports(&b));
        assert_eq!(a2.connection(), 2);
        assert_eq!(b.relative_target_port(), 2);
        assert_eq!(
            Nexus::new(InitiatorPort::iscsi("x"), 0, 0).relative_target_port(),
            1
        );
    }
}
