//! The target port a bus is reached through (SAM-5 SCSI target port): one
//! per controller (vhost-user socket). A logical unit served by two
//! controllers (`shared = true`) is one logical unit behind two target
//! ports, which is what lets a multipath initiator tell its paths apart.
//!
//! Two identities, both in the Device Identification VPD page (SPC-5
//! §7.7.6) with ASSOCIATION 01b (the target port the command came through):
//!
//! - RELATIVE TARGET PORT IDENTIFIER (designator type 4h, SPC-5 §7.7.6.6):
//!   the controller's position in the daemon's configuration plus one
//!   (SPC-5 reserves 0; port 1 is "relative port A");
//! - the TARGET PORT NAME, an NAA 3h (locally assigned) designator: 60 bits
//!   of a hash of the controller's socket path and relative identifier,
//!   stable across restarts with the same configuration.
//!
//! No TARGET PORT GROUP designator (type 5h): the device does not implement
//! ALUA (TPGS is 00b in the standard INQUIRY data, REPORT TARGET PORT
//! GROUPS is not offered), and every port reaches the logical unit equally.

use std::path::Path;

/// Length of the two target-port designation descriptors [`TargetPort::write_designators`] writes.
pub const DESIGNATORS_LEN: usize = 8 + 12;

/// One target port: its relative identifier and its NAA name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPort {
    relative_id: u16,
    name: u64,
}

impl Default for TargetPort {
    /// Relative port 1 named after no socket: what a bus served on its own gets.
    fn default() -> Self {
        TargetPort::for_controller(0, Path::new(""))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl TargetPort {
    /// A port with these identities. `relative_id` 0 is reserved (SPC-5)
    /// and is taken as 1; `name`'s top four bits are replaced by NAA 3h.
    pub fn new(relative_id: u16, name: u64) -> TargetPort {
        TargetPort {
            relative_id: relative_id.max(1),
            name: 0x3 << 60 | (name & 0x0FFF_FFFF_FFFF_FFFF),
        }
    }

    /// The port of the controller at `index` (0-based, in configuration
    /// order) listening on `socket`.
    pub fn for_controller(index: usize, socket: &Path) -> TargetPort {
        let relative_id = u16::try_from(index.saturating_add(1)).unwrap_or(u16::MAX);
        let mut seed = b"vscsi target port ".to_vec();
        seed.extend_from_slice(socket.as_os_str().as_encoded_bytes());
        seed.extend_from_slice(&relative_id.to_be_bytes());
        TargetPort::new(relative_id, fnv1a(&seed))
    }

    /// RELATIVE TARGET PORT IDENTIFIER (1 to 65535).
    pub fn relative_id(&self) -> u16 {
        self.relative_id
    }

    /// The NAA 3h target port name.
    pub fn name(&self) -> u64 {
        self.name
    }

    /// Writes the relative target port designator (CODE SET 1 binary,
    /// PIV 0, ASSOCIATION 01b, TYPE 4h, 4 bytes: two reserved, then the
    /// identifier) and the target port name designator (binary,
    /// ASSOCIATION 01b, TYPE 3h NAA, 8 bytes) at the start of `out`;
    /// returns [`DESIGNATORS_LEN`], or 0 if `out` is too short.
    pub fn write_designators(&self, out: &mut [u8]) -> usize {
        let Some(out) = out.get_mut(..DESIGNATORS_LEN) else {
            return 0;
        };
        out.fill(0);
        out[0] = 0x01;
        out[1] = 0x14;
        out[3] = 4;
        out[6..8].copy_from_slice(&self.relative_id.to_be_bytes());
        out[8] = 0x01;
        out[9] = 0x13;
        out[11] = 8;
        out[12..20].copy_from_slice(&self.name.to_be_bytes());
        DESIGNATORS_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn designator_bytes() {
        let p = TargetPort::new(2, 0xF123_4567_89AB_CDEF);
        assert_eq!(p.name(), 0x3123_4567_89AB_CDEF);
        let mut b = [0xEEu8; 24];
        assert_eq!(p.write_designators(&mut b), 20);
        assert_eq!(
            b[..20],
            [
                0x01, 0x14, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, // relative target port 2
                0x01, 0x13, 0x00, 0x08, 0x31, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF,
            ]
        );
        assert_eq!(b[20..], [0xEE; 4]);
        assert_eq!(p.write_designators(&mut b[..19]), 0);
    }

    #[test]
    fn controllers_get_distinct_stable_ports() {
        let a = TargetPort::for_controller(0, Path::new("/run/a.sock"));
        let b = TargetPort::for_controller(1, Path::new("/run/b.sock"));
        assert_eq!((a.relative_id(), b.relative_id()), (1, 2));
        assert_ne!(a.name(), b.name());
        assert_eq!(a.name() >> 60, 3);
        assert_eq!(a, TargetPort::for_controller(0, Path::new("/run/a.sock")));
        // The same socket at another position is another port.
        assert_ne!(
            a.name(),
            TargetPort::for_controller(1, Path::new("/run/a.sock")).name()
        );
        assert_eq!(TargetPort::new(0, 0).relative_id(), 1);
        assert_eq!(TargetPort::default().relative_id(), 1);
        assert_eq!(
            TargetPort::for_controller(usize::MAX, Path::new("")).relative_id(),
            u16::MAX
        );
    }
}
