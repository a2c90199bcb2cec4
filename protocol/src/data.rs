//! Response-data codecs: standard INQUIRY data (SPC-5 INQUIRY
//! command), READ CAPACITY(10)/(16) parameter data (SBC-4) and the REPORT
//! LUNS parameter data (SPC-5).
//!
//! The device encodes with these and the driver decodes with them, so the
//! bytes are written once. Decoders accept data truncated by a short
//! ALLOCATION LENGTH where the missing fields are optional, and report
//! [`DataError::TooShort`] otherwise; they never panic.

use crate::cdb::{be16, be32, be64};
use crate::lun::MAX_LUN;

/// Why response data could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Fewer bytes than the mandatory part of the data.
    #[error("response data too short: {got} bytes, need at least {need}")]
    TooShort {
        /// Bytes available.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
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

/// Peripheral device type: direct access block device (SBC-4), from SPC-5 standard INQUIRY data.
pub const TYPE_DISK: u8 = 0x00;
/// Peripheral device type: CD/DVD device (MMC-6).
pub const TYPE_CDROM: u8 = 0x05;
/// Peripheral device type: well known logical unit.
pub const TYPE_WELL_KNOWN_LU: u8 = 0x1E;
/// Peripheral device type: unknown or no device type.
pub const TYPE_UNKNOWN: u8 = 0x1F;
/// Peripheral qualifier 000b: a device of the given type is (or may be) connected.
pub const PQ_CONNECTED: u8 = 0b000;
/// Peripheral qualifier 011b: the device server cannot support a peripheral
/// device at this logical unit (SPC-5 standard INQUIRY data), used with type 1Fh for
/// LUNs that do not exist.
pub const PQ_NOT_SUPPORTED: u8 = 0b011;
/// VERSION value claiming SPC-5.
pub const VERSION_SPC5: u8 = 0x07;

/// Length of the standard INQUIRY data this crate writes (the 36-byte
/// minimum, ADDITIONAL LENGTH 31).
pub const STANDARD_INQUIRY_LEN: usize = 36;

/// Standard INQUIRY data (SPC-5 INQUIRY command), the fields this project uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandardInquiry {
    /// PERIPHERAL QUALIFIER (byte 0 bits 7-5).
    pub peripheral_qualifier: u8,
    /// PERIPHERAL DEVICE TYPE (byte 0 bits 4-0).
    pub device_type: u8,
    /// RMB: removable medium (byte 1 bit 7).
    pub removable: bool,
    /// VERSION (byte 2): 07h = SPC-5.
    pub version: u8,
    /// HISUP: hierarchical LUN addressing supported (byte 3 bit 4).
    pub hisup: bool,
    /// RESPONSE DATA FORMAT (byte 3 bits 3-0): 2.
    pub response_data_format: u8,
    /// CMDQUE: command management model / tagged queuing (byte 7 bit 1).
    pub cmdque: bool,
    /// T10 VENDOR IDENTIFICATION (bytes 8-15), trailing spaces trimmed.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION (bytes 16-31), trailing spaces trimmed.
    pub product: String,
    /// PRODUCT REVISION LEVEL (bytes 32-35), trailing spaces trimmed.
    pub revision: String,
}

fn put_ascii(out: &mut [u8], s: &str) {
    // SPC-5 §4.3.1: ASCII data fields are left-aligned and space padded;
    // only printable ASCII (20h-7Eh) is allowed, anything else becomes '?'.
    out.fill(b' ');
    for (o, c) in out.iter_mut().zip(s.bytes()) {
        *o = if (0x20..=0x7E).contains(&c) { c } else { b'?' };
    }
}

fn get_ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

impl StandardInquiry {
    /// Standard data for a direct-access block device: PQ 000b, type 00h,
    /// VERSION SPC-5, HISUP, format 2, CMDQUE.
    pub fn disk(vendor: &str, product: &str, revision: &str) -> Self {
        Self {
            peripheral_qualifier: PQ_CONNECTED,
            device_type: TYPE_DISK,
            removable: false,
            version: VERSION_SPC5,
            hisup: true,
            response_data_format: 2,
            cmdque: true,
            vendor: vendor.to_string(),
            product: product.to_string(),
            revision: revision.to_string(),
        }
    }

    /// The 36 bytes of standard INQUIRY data (ADDITIONAL LENGTH 31).
    /// Identification strings are truncated to 8/16/4 bytes and space padded.
    pub fn to_bytes(&self) -> [u8; STANDARD_INQUIRY_LEN] {
        let mut b = [0u8; STANDARD_INQUIRY_LEN];
        b[0] = (self.peripheral_qualifier & 0x7) << 5 | (self.device_type & 0x1F);
        b[1] = if self.removable { 0x80 } else { 0 };
        b[2] = self.version;
        b[3] = if self.hisup { 0x10 } else { 0 } | (self.response_data_format & 0x0F);
        b[4] = (STANDARD_INQUIRY_LEN - 5) as u8;
        b[7] = if self.cmdque { 0x02 } else { 0 };
        put_ascii(&mut b[8..16], &self.vendor);
        put_ascii(&mut b[16..32], &self.product);
        put_ascii(&mut b[32..36], &self.revision);
        b
    }

    /// Writes the data into `out`, truncated to its length; returns bytes written.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let b = self.to_bytes();
        let n = b.len().min(out.len());
        out[..n].copy_from_slice(&b[..n]);
        n
    }

    /// Decodes standard INQUIRY data; needs the first 36 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DataError> {
        need(b, STANDARD_INQUIRY_LEN)?;
        Ok(Self {
            peripheral_qualifier: b[0] >> 5,
            device_type: b[0] & 0x1F,
            removable: b[1] & 0x80 != 0,
            version: b[2],
            hisup: b[3] & 0x10 != 0,
            response_data_format: b[3] & 0x0F,
            cmdque: b[7] & 0x02 != 0,
            vendor: get_ascii(&b[8..16]),
            product: get_ascii(&b[16..32]),
            revision: get_ascii(&b[32..36]),
        })
    }
}

/// READ CAPACITY(10) parameter data (SBC-4 READ CAPACITY(10) command), 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadCapacity10 {
    /// RETURNED LOGICAL BLOCK ADDRESS: the last LBA, or FFFFFFFFh when it
    /// does not fit (the initiator must then use READ CAPACITY(16)).
    pub last_lba: u32,
    /// LOGICAL BLOCK LENGTH IN BYTES.
    pub block_len: u32,
}

impl ReadCapacity10 {
    /// Data for a medium of `blocks` logical blocks (must be > 0) of `block_len` bytes,
    /// clamping the last LBA to FFFFFFFFh.
    pub fn for_capacity(blocks: u64, block_len: u32) -> Self {
        let last = blocks.saturating_sub(1);
        Self {
            last_lba: u32::try_from(last).unwrap_or(u32::MAX),
            block_len,
        }
    }

    /// The 8 bytes.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.last_lba.to_be_bytes());
        b[4..].copy_from_slice(&self.block_len.to_be_bytes());
        b
    }

    /// Decodes the 8 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DataError> {
        need(b, 8)?;
        Ok(Self {
            last_lba: be32(b, 0),
            block_len: be32(b, 4),
        })
    }
}

/// READ CAPACITY(16) parameter data (SBC-4 READ CAPACITY(16) command), 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadCapacity16 {
    /// RETURNED LOGICAL BLOCK ADDRESS (bytes 0-7).
    pub last_lba: u64,
    /// LOGICAL BLOCK LENGTH IN BYTES (bytes 8-11).
    pub block_len: u32,
    /// RC BASIS (byte 12 bits 5-4): 01b = the last LBA of the logical unit.
    pub rc_basis: u8,
    /// PROT_EN (byte 12 bit 0).
    pub prot_en: bool,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (byte 13 bits 3-0).
    pub lb_per_pb_exp: u8,
    /// LBPME: logical block provisioning management enabled (byte 14 bit 7).
    pub lbpme: bool,
    /// LBPRZ: unmapped blocks read as zero (byte 14 bit 6).
    pub lbprz: bool,
    /// LOWEST ALIGNED LOGICAL BLOCK ADDRESS (14 bits, bytes 14-15).
    pub lowest_aligned: u16,
}

impl ReadCapacity16 {
    /// Data for a fully provisioned medium of `blocks` logical blocks (must
    /// be > 0) of `block_len` bytes: RC BASIS 01b, no protection, one
    /// logical block per physical block, no provisioning management.
    pub fn for_capacity(blocks: u64, block_len: u32) -> Self {
        Self {
            last_lba: blocks.saturating_sub(1),
            block_len,
            rc_basis: 1,
            prot_en: false,
            lb_per_pb_exp: 0,
            lbpme: false,
            lbprz: false,
            lowest_aligned: 0,
        }
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&self.last_lba.to_be_bytes());
        b[8..12].copy_from_slice(&self.block_len.to_be_bytes());
        b[12] = (self.rc_basis & 3) << 4 | u8::from(self.prot_en);
        b[13] = self.lb_per_pb_exp & 0x0F;
        let [hi, lo] = (self.lowest_aligned & 0x3FFF).to_be_bytes();
        b[14] = hi | if self.lbpme { 0x80 } else { 0 } | if self.lbprz { 0x40 } else { 0 };
        b[15] = lo;
        b
    }

    /// Decodes the data; needs the first 16 bytes (the rest is reserved).
    pub fn decode(b: &[u8]) -> Result<Self, DataError> {
        need(b, 16)?;
        Ok(Self {
            last_lba: be64(b, 0),
            block_len: be32(b, 8),
            rc_basis: (b[12] >> 4) & 3,
            prot_en: b[12] & 1 != 0,
            lb_per_pb_exp: b[13] & 0x0F,
            lbpme: b[14] & 0x80 != 0,
            lbprz: b[14] & 0x40 != 0,
            lowest_aligned: be16(b, 14) & 0x3FFF,
        })
    }
}

/// The 8-byte REPORT LUNS parameter data header (SPC-5 REPORT LUNS command): LUN LIST
/// LENGTH (bytes 0-3) = `entries * 8`, then 4 reserved bytes.
pub fn report_luns_header(entries: usize) -> [u8; 8] {
    let len = u32::try_from(entries.saturating_mul(8)).unwrap_or(u32::MAX);
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&len.to_be_bytes());
    b
}

/// The LUN LIST LENGTH of REPORT LUNS data (bytes in the full list, without
/// the header), so an initiator can retry with a larger ALLOCATION LENGTH.
pub fn report_luns_list_len(b: &[u8]) -> Result<u32, DataError> {
    need(b, 4)?;
    Ok(be32(b, 0))
}

/// LUN numbers in REPORT LUNS data (SPC-5 REPORT LUNS command, SAM-5 LUN formats): entries
/// using peripheral device addressing (bus 0) or flat space addressing.
/// Other addressing methods (well-known LUNs, extended and multi-level
/// addresses) are skipped, and so is a truncated final entry: the list is
/// read within both the LUN LIST LENGTH and the bytes given.
pub fn decode_report_luns(b: &[u8]) -> Vec<u16> {
    let Ok(list_len) = report_luns_list_len(b) else {
        return Vec::new();
    };
    let end = usize::try_from(list_len)
        .unwrap_or(usize::MAX)
        .saturating_add(8)
        .min(b.len());
    b.get(8..end)
        .unwrap_or(&[])
        .chunks_exact(8)
        .filter_map(|e| {
            if e[2..] != [0; 6] {
                return None;
            }
            let word = u16::from_be_bytes([e[0], e[1]]);
            match word >> 14 {
                0b00 if e[0] == 0 => Some(word),
                0b01 => Some(word & MAX_LUN),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun::Lun;

    #[test]
    fn standard_inquiry_is_byte_exact() {
        let inq = StandardInquiry::disk("VSCSI", "VIRTUAL-DISK", "0001");
        let mut expect = [0u8; 36];
        expect[..8].copy_from_slice(&[0x00, 0x00, 0x07, 0x12, 31, 0, 0, 0x02]);
        expect[8..16].copy_from_slice(b"VSCSI   ");
        expect[16..32].copy_from_slice(b"VIRTUAL-DISK    ");
        expect[32..36].copy_from_slice(b"0001");
        assert_eq!(inq.to_bytes(), expect);
        assert_eq!(StandardInquiry::decode(&expect), Ok(inq.clone()));

        let mut short = [0u8; 5];
        assert_eq!(inq.encode(&mut short), 5);
        assert_eq!(short, [0, 0, 7, 0x12, 31]);
        assert_eq!(
            StandardInquiry::decode(&expect[..35]),
            Err(DataError::TooShort { got: 35, need: 36 })
        );
    }

    #[test]
    fn inquiry_missing_lun_and_sanitising() {
        let mut inq = StandardInquiry::disk("A-VERY-LONG-VENDOR", "p\u{e9}", "12345");
        inq.peripheral_qualifier = PQ_NOT_SUPPORTED;
        inq.device_type = TYPE_UNKNOWN;
        let b = inq.to_bytes();
        assert_eq!(b[0], 0x7F);
        assert_eq!(&b[8..16], b"A-VERY-L");
        // Non-ASCII bytes become '?', truncated at the field end.
        assert_eq!(&b[16..20], b"p?? ");
        assert_eq!(&b[32..36], b"1234");
        let d = StandardInquiry::decode(&b).unwrap();
        assert_eq!((d.peripheral_qualifier, d.device_type), (3, 0x1F));
        assert_eq!(d.product, "p??");
    }

    #[test]
    fn read_capacity_10_is_byte_exact() {
        let rc = ReadCapacity10::for_capacity(2048, 512);
        assert_eq!(rc.to_bytes(), [0, 0, 0x07, 0xFF, 0, 0, 0x02, 0x00]);
        assert_eq!(ReadCapacity10::decode(&rc.to_bytes()), Ok(rc));
        let huge = ReadCapacity10::for_capacity(1 << 33, 4096);
        assert_eq!(huge.to_bytes(), [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0]);
        assert!(ReadCapacity10::decode(&[0; 7]).is_err());
    }

    #[test]
    fn read_capacity_16_is_byte_exact() {
        let rc = ReadCapacity16::for_capacity(1 << 33, 4096);
        let mut expect = [0u8; 32];
        expect[..16].copy_from_slice(&[
            0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0, 0x10, 0, 0, 0,
        ]);
        assert_eq!(rc.to_bytes(), expect);
        assert_eq!(ReadCapacity16::decode(&expect), Ok(rc));
        let other = ReadCapacity16 {
            lbpme: true,
            lbprz: true,
            lb_per_pb_exp: 3,
            lowest_aligned: 0x3FFF,
            prot_en: true,
            ..rc
        };
        let b = other.to_bytes();
        assert_eq!(&b[12..16], &[0x11, 0x03, 0xFF, 0xFF]);
        assert_eq!(ReadCapacity16::decode(&b), Ok(other));
        assert!(ReadCapacity16::decode(&b[..15]).is_err());
    }

    #[test]
    fn report_luns_roundtrip() {
        let mut data = report_luns_header(4).to_vec();
        for l in [0u16, 5, 300] {
            data.extend_from_slice(&Lun::report_luns_entry(l));
        }
        // Well-known REPORT LUNS LU: skipped by the decoder.
        data.extend_from_slice(&[0xC1, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&data[..8], &[0, 0, 0, 32, 0, 0, 0, 0]);
        assert_eq!(decode_report_luns(&data), vec![0, 5, 300]);
        assert_eq!(report_luns_list_len(&data), Ok(32));
        // Truncated by a short allocation length.
        assert_eq!(decode_report_luns(&data[..20]), vec![0]);
        assert_eq!(decode_report_luns(&data[..3]), Vec::<u16>::new());
        // List length shorter than the buffer.
        let mut short = data.clone();
        short[3] = 8;
        assert_eq!(decode_report_luns(&short), vec![0]);
    }
}
