//! The 8-byte LUN field of virtio-scsi requests (VIRTIO 1.2 §5.6.6.1).
//!
//! "The lun field addresses a target and logical unit in the virtio-scsi
//! device's SCSI domain. The only supported format for the LUN field is:
//! first byte set to 1, second byte set to target, third and fourth byte
//! representing a single level LUN structure, followed by four zero bytes."
//! The single level LUN uses the flat space addressing method of SAM-5
//! (`0x4000 | lun`), so LUN numbers go up to 16383. Linux also sends LUNs
//! below 256 with peripheral addressing (third byte 0), which we accept.

/// Highest LUN number the flat space addressing method can carry.
pub const MAX_LUN: u16 = 0x3FFF;

/// The REPORT LUNS well-known logical unit (SPC-5 §8.2), as a virtio LUN
/// field: `[0xC1, 0x01, 0, ..]` in the third and fourth bytes' place means
/// "well-known LUN 01h". Linux never sends it; sg3_utils can.
pub const REPORT_LUNS_WELL_KNOWN: [u8; 8] = [1, 0, 0xC1, 0x01, 0, 0, 0, 0];

/// A (target, LUN) pair addressed by a virtio-scsi request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lun {
    /// Target id, 0..=255.
    pub target: u8,
    /// Logical unit number, 0..=16383.
    pub lun: u16,
}

/// What a received 8-byte LUN field addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LunAddress {
    /// An ordinary logical unit.
    Unit(Lun),
    /// The REPORT LUNS well-known logical unit of a target.
    ReportLunsWellKnown {
        /// Target id the request was sent to.
        target: u8,
    },
}

/// Why a LUN field could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LunError {
    /// The first byte is not 1 (§5.6.6.1 fixes it).
    #[error("LUN field byte 0 is {0:#04x}, must be 0x01")]
    BadFirstByte(u8),
    /// Bytes 2-3 use an addressing method other than flat or peripheral.
    #[error("unsupported LUN addressing method in bytes 2-3: {0:#06x}")]
    UnsupportedAddressing(u16),
    /// Bytes 4-7 must be zero (a single level LUN structure).
    #[error("LUN field bytes 4-7 must be zero")]
    MultiLevel,
}

impl Lun {
    /// A new address; `lun` must be at most [`MAX_LUN`].
    pub fn new(target: u8, lun: u16) -> Option<Self> {
        (lun <= MAX_LUN).then_some(Self { target, lun })
    }

    /// Encodes as the virtio-scsi LUN field: `[1, target, 0x40 | lun >> 8, lun & 0xff, 0, 0, 0, 0]`.
    pub fn encode(self) -> [u8; 8] {
        let flat = 0x4000 | (self.lun & MAX_LUN);
        let [hi, lo] = flat.to_be_bytes();
        [1, self.target, hi, lo, 0, 0, 0, 0]
    }

    /// Encodes as the LUN field of an event (§5.6.6.3): the single level
    /// LUN the way REPORT LUNS reports it, peripheral addressing below 256
    /// and flat space above, as QEMU does. Linux's virtio_scsi takes bytes
    /// 2-3 of an event as the LUN number itself, so a flat-space bit on a
    /// small LUN would make it add a device at LUN 16384 + n.
    pub fn encode_event(self) -> [u8; 8] {
        let [hi, lo, ..] = Self::report_luns_entry(self.lun);
        [1, self.target, hi, lo, 0, 0, 0, 0]
    }

    /// Encodes the LUN number as an 8-byte SAM-5 LUN, as REPORT LUNS lists it:
    /// peripheral addressing (`00b`) below 256, flat space (`01b`) above, like
    /// Linux's `int_to_scsilun` and QEMU do.
    pub fn report_luns_entry(lun: u16) -> [u8; 8] {
        let word = if lun < 256 {
            lun
        } else {
            0x4000 | (lun & MAX_LUN)
        };
        let [hi, lo] = word.to_be_bytes();
        [hi, lo, 0, 0, 0, 0, 0, 0]
    }
}

impl LunAddress {
    /// Decodes a virtio-scsi LUN field received from a driver.
    pub fn decode(bytes: &[u8; 8]) -> Result<Self, LunError> {
        if bytes[0] != 1 {
            return Err(LunError::BadFirstByte(bytes[0]));
        }
        let target = bytes[1];
        let word = u16::from_be_bytes([bytes[2], bytes[3]]);
        if bytes[4..] != [0, 0, 0, 0] {
            return Err(LunError::MultiLevel);
        }
        match word >> 14 {
            // Peripheral device addressing, bus 0: LUN in the low byte.
            0b00 if word >> 8 == 0 => Ok(Self::Unit(Lun {
                target,
                lun: word & 0xff,
            })),
            0b01 => Ok(Self::Unit(Lun {
                target,
                lun: word & MAX_LUN,
            })),
            // Extended logical unit addressing: well-known LUN 01h = REPORT LUNS.
            0b11 if word == 0xC101 => Ok(Self::ReportLunsWellKnown { target }),
            _ => Err(LunError::UnsupportedAddressing(word)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_flat_space_per_spec() {
        assert_eq!(
            Lun::new(0, 0).unwrap().encode(),
            [1, 0, 0x40, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Lun::new(3, 1).unwrap().encode(),
            [1, 3, 0x40, 1, 0, 0, 0, 0]
        );
        assert_eq!(
            Lun::new(255, 0x3FFF).unwrap().encode(),
            [1, 255, 0x7F, 0xFF, 0, 0, 0, 0]
        );
        assert_eq!(
            Lun::new(1, 0x1234).unwrap().encode(),
            [1, 1, 0x52, 0x34, 0, 0, 0, 0]
        );
        assert!(Lun::new(0, 0x4000).is_none());
    }

    #[test]
    fn decodes_what_it_encodes_and_what_linux_sends() {
        for (t, l) in [(0u8, 0u16), (1, 1), (7, 300), (255, 16383)] {
            let lun = Lun::new(t, l).unwrap();
            assert_eq!(LunAddress::decode(&lun.encode()), Ok(LunAddress::Unit(lun)));
        }
        // Peripheral addressing (what REPORT LUNS returns below 256).
        assert_eq!(
            LunAddress::decode(&[1, 2, 0, 5, 0, 0, 0, 0]),
            Ok(LunAddress::Unit(Lun { target: 2, lun: 5 }))
        );
        assert_eq!(
            LunAddress::decode(&REPORT_LUNS_WELL_KNOWN),
            Ok(LunAddress::ReportLunsWellKnown { target: 0 })
        );
    }

    #[test]
    fn rejects_malformed_fields() {
        assert_eq!(
            LunAddress::decode(&[0, 0, 0x40, 0, 0, 0, 0, 0]),
            Err(LunError::BadFirstByte(0))
        );
        assert_eq!(
            LunAddress::decode(&[1, 0, 0x40, 0, 0, 0, 0, 1]),
            Err(LunError::MultiLevel)
        );
        assert_eq!(
            LunAddress::decode(&[1, 0, 0x80, 0, 0, 0, 0, 0]),
            Err(LunError::UnsupportedAddressing(0x8000))
        );
        // Peripheral addressing with a non-zero bus number.
        assert_eq!(
            LunAddress::decode(&[1, 0, 0x01, 0, 0, 0, 0, 0]),
            Err(LunError::UnsupportedAddressing(0x0100))
        );
    }

    #[test]
    fn event_lun_fields_use_the_report_luns_encoding() {
        assert_eq!(
            Lun::new(3, 0).unwrap().encode_event(),
            [1, 3, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Lun::new(3, 7).unwrap().encode_event(),
            [1, 3, 0, 7, 0, 0, 0, 0]
        );
        assert_eq!(
            Lun::new(0, 300).unwrap().encode_event(),
            [1, 0, 0x41, 0x2C, 0, 0, 0, 0]
        );
        for l in [0u16, 7, 255, 256, 16383] {
            let lun = Lun::new(9, l).unwrap();
            assert_eq!(
                LunAddress::decode(&lun.encode_event()),
                Ok(LunAddress::Unit(lun))
            );
        }
    }

    #[test]
    fn report_luns_entries_match_sam5() {
        assert_eq!(Lun::report_luns_entry(0), [0; 8]);
        assert_eq!(Lun::report_luns_entry(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::report_luns_entry(300), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    }
}
