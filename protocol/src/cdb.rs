//! Command descriptor blocks: builders (driver side) and big-endian field
//! readers (device side).
//!
//! CDB layouts follow SPC-5 §4.2 (common formats) and the command clauses of
//! SPC-5 and SBC-4. All multi-byte CDB fields are big-endian (SPC-5 conventions).
//! The field readers never panic: bytes past the end of the slice read as
//! zero, so a device can decode a short or malformed CDB and answer it with
//! sense data instead of crashing.

use std::fmt;

use crate::opcode;

/// Largest CDB this crate handles (the virtio-scsi default `cdb_size`, VIRTIO 1.2 §5.6.4).
pub const MAX_CDB_LEN: usize = 32;

/// A CDB of 1..=32 bytes, stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    bytes: [u8; MAX_CDB_LEN],
    len: u8,
}

impl fmt::Debug for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cdb[")?;
        for (i, b) in self.as_bytes().iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{b:02x}")?;
        }
        write!(f, "]")
    }
}

impl Cdb {
    fn zeroed(len: usize) -> Self {
        Self {
            bytes: [0; MAX_CDB_LEN],
            len: len as u8,
        }
    }

    /// Copies a CDB; `None` unless `bytes` holds 1..=32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Cdb> {
        if bytes.is_empty() || bytes.len() > MAX_CDB_LEN {
            return None;
        }
        let mut c = Self::zeroed(bytes.len());
        c.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(c)
    }

    /// The CDB bytes (its length, not the 32-byte backing store).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The CDB zero-padded to `N` bytes (e.g. the 32-byte virtio-scsi `cdb` field).
    /// Bytes past `N` are dropped.
    pub fn padded<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(usize::from(self.len));
        out[..n].copy_from_slice(&self.bytes[..n]);
        out
    }

    /// The operation code.
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// TEST UNIT READY (SPC-5): 6 bytes, all zero.
    pub fn test_unit_ready() -> Cdb {
        Self::zeroed(6)
    }

    /// REQUEST SENSE (SPC-5): DESC in byte 1 bit 0, ALLOCATION LENGTH in byte 4.
    pub fn request_sense(desc: bool, alloc_len: u8) -> Cdb {
        let mut c = Self::zeroed(6);
        c.bytes[0] = opcode::REQUEST_SENSE;
        c.bytes[1] = u8::from(desc);
        c.bytes[4] = alloc_len;
        c
    }

    /// INQUIRY (SPC-5): EVPD in byte 1 bit 0, PAGE CODE in byte 2, ALLOCATION
    /// LENGTH in bytes 3-4.
    pub fn inquiry(evpd: bool, page_code: u8, alloc_len: u16) -> Cdb {
        let mut c = Self::zeroed(6);
        c.bytes[0] = opcode::INQUIRY;
        c.bytes[1] = u8::from(evpd);
        c.bytes[2] = page_code;
        c.bytes[3..5].copy_from_slice(&alloc_len.to_be_bytes());
        c
    }

    /// READ CAPACITY(10) (SBC-4): 10 bytes, LBA and PMI zero.
    pub fn read_capacity_10() -> Cdb {
        let mut c = Self::zeroed(10);
        c.bytes[0] = opcode::READ_CAPACITY_10;
        c
    }

    /// READ CAPACITY(16) (SBC-4): SERVICE ACTION IN(16) with service action
    /// 10h, ALLOCATION LENGTH in bytes 10-13.
    pub fn read_capacity_16(alloc_len: u32) -> Cdb {
        let mut c = Self::zeroed(16);
        c.bytes[0] = opcode::SERVICE_ACTION_IN_16;
        c.bytes[1] = opcode::SAI_READ_CAPACITY_16;
        c.bytes[10..14].copy_from_slice(&alloc_len.to_be_bytes());
        c
    }

    fn rw_10(op: u8, lba: u32, blocks: u16, fua: bool) -> Cdb {
        let mut c = Self::zeroed(10);
        c.bytes[0] = op;
        c.bytes[1] = if fua { 0x08 } else { 0 };
        c.bytes[2..6].copy_from_slice(&lba.to_be_bytes());
        c.bytes[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    fn rw_12(op: u8, lba: u32, blocks: u32, fua: bool) -> Cdb {
        let mut c = Self::zeroed(12);
        c.bytes[0] = op;
        c.bytes[1] = if fua { 0x08 } else { 0 };
        c.bytes[2..6].copy_from_slice(&lba.to_be_bytes());
        c.bytes[6..10].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    fn rw_16(op: u8, lba: u64, blocks: u32, fua: bool) -> Cdb {
        let mut c = Self::zeroed(16);
        c.bytes[0] = op;
        c.bytes[1] = if fua { 0x08 } else { 0 };
        c.bytes[2..10].copy_from_slice(&lba.to_be_bytes());
        c.bytes[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    fn rw_6(op: u8, lba: u32, blocks: u8) -> Cdb {
        let mut c = Self::zeroed(6);
        c.bytes[0] = op;
        let [_, a, b, d] = (lba & 0x1F_FFFF).to_be_bytes();
        c.bytes[1] = a;
        c.bytes[2] = b;
        c.bytes[3] = d;
        c.bytes[4] = blocks;
        c
    }

    /// READ(6) (SBC-4): 21-bit LBA; `blocks` 0 means 256 blocks.
    pub fn read_6(lba: u32, blocks: u8) -> Cdb {
        Self::rw_6(opcode::READ_6, lba, blocks)
    }

    /// WRITE(6) (SBC-4): 21-bit LBA; `blocks` 0 means 256 blocks.
    pub fn write_6(lba: u32, blocks: u8) -> Cdb {
        Self::rw_6(opcode::WRITE_6, lba, blocks)
    }

    /// READ(10) (SBC-4): FUA in byte 1 bit 3, LBA bytes 2-5, TRANSFER LENGTH bytes 7-8.
    pub fn read_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
        Self::rw_10(opcode::READ_10, lba, blocks, fua)
    }

    /// WRITE(10) (SBC-4), same layout as READ(10).
    pub fn write_10(lba: u32, blocks: u16, fua: bool) -> Cdb {
        Self::rw_10(opcode::WRITE_10, lba, blocks, fua)
    }

    /// READ(12) (SBC-4): LBA bytes 2-5, TRANSFER LENGTH bytes 6-9.
    pub fn read_12(lba: u32, blocks: u32, fua: bool) -> Cdb {
        Self::rw_12(opcode::READ_12, lba, blocks, fua)
    }

    /// WRITE(12) (SBC-4), same layout as READ(12).
    pub fn write_12(lba: u32, blocks: u32, fua: bool) -> Cdb {
        Self::rw_12(opcode::WRITE_12, lba, blocks, fua)
    }

    /// READ(16) (SBC-4): LBA bytes 2-9, TRANSFER LENGTH bytes 10-13.
    pub fn read_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
        Self::rw_16(opcode::READ_16, lba, blocks, fua)
    }

    /// WRITE(16) (SBC-4), same layout as READ(16).
    pub fn write_16(lba: u64, blocks: u32, fua: bool) -> Cdb {
        Self::rw_16(opcode::WRITE_16, lba, blocks, fua)
    }

    /// REPORT LUNS (SPC-5): SELECT REPORT byte 2, ALLOCATION LENGTH bytes 6-9.
    pub fn report_luns(select_report: u8, alloc_len: u32) -> Cdb {
        let mut c = Self::zeroed(12);
        c.bytes[0] = opcode::REPORT_LUNS;
        c.bytes[2] = select_report;
        c.bytes[6..10].copy_from_slice(&alloc_len.to_be_bytes());
        c
    }

    /// SYNCHRONIZE CACHE(10) (SBC-4): LBA bytes 2-5, NUMBER OF LOGICAL
    /// BLOCKS bytes 7-8 (0 = to the end of the medium).
    pub fn synchronize_cache_10(lba: u32, blocks: u16) -> Cdb {
        Self::rw_10(opcode::SYNCHRONIZE_CACHE_10, lba, blocks, false)
    }

    /// SYNCHRONIZE CACHE(16) (SBC-4): LBA bytes 2-9, NUMBER OF LOGICAL BLOCKS bytes 10-13.
    pub fn synchronize_cache_16(lba: u64, blocks: u32) -> Cdb {
        Self::rw_16(opcode::SYNCHRONIZE_CACHE_16, lba, blocks, false)
    }

    /// MODE SENSE(6) (SPC-5): DBD byte 1 bit 3, PC byte 2 bits 7-6, PAGE
    /// CODE byte 2 bits 5-0, SUBPAGE CODE byte 3, ALLOCATION LENGTH byte 4.
    pub fn mode_sense_6(dbd: bool, pc: u8, page: u8, subpage: u8, alloc_len: u8) -> Cdb {
        let mut c = Self::zeroed(6);
        c.bytes[0] = opcode::MODE_SENSE_6;
        c.bytes[1] = if dbd { 0x08 } else { 0 };
        c.bytes[2] = (pc & 3) << 6 | (page & 0x3F);
        c.bytes[3] = subpage;
        c.bytes[4] = alloc_len;
        c
    }

    /// MODE SENSE(10) (SPC-5): LLBAA byte 1 bit 4, DBD byte 1 bit 3, PC/PAGE
    /// CODE byte 2, SUBPAGE CODE byte 3, ALLOCATION LENGTH bytes 7-8.
    pub fn mode_sense_10(
        llbaa: bool,
        dbd: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc_len: u16,
    ) -> Cdb {
        let mut c = Self::zeroed(10);
        c.bytes[0] = opcode::MODE_SENSE_10;
        c.bytes[1] = if llbaa { 0x10 } else { 0 } | if dbd { 0x08 } else { 0 };
        c.bytes[2] = (pc & 3) << 6 | (page & 0x3F);
        c.bytes[3] = subpage;
        c.bytes[7..9].copy_from_slice(&alloc_len.to_be_bytes());
        c
    }
}

/// Byte `at` of `b`, or 0 past its end.
pub fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn be<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = at.checked_add(i).map_or(0, |j| byte(b, j));
    }
    out
}

/// Big-endian u16 at `at` (bytes past the end read as 0).
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(be(b, at))
}

/// Big-endian 24-bit value at `at` (bytes past the end read as 0).
pub fn be24(b: &[u8], at: usize) -> u32 {
    let [x, y, z] = be::<3>(b, at);
    u32::from_be_bytes([0, x, y, z])
}

/// Big-endian u32 at `at` (bytes past the end read as 0).
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(be(b, at))
}

/// Big-endian u64 at `at` (bytes past the end read as 0).
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(be(b, at))
}

/// The control byte (last byte of a fixed-length CDB, SPC-5 §4.2.5.7): NACA is bit 2.
pub fn control(cdb: &[u8]) -> u8 {
    cdb.last().copied().unwrap_or(0)
}

/// Decoded READ/WRITE CDB fields common to the 6/10/12/16-byte forms (SBC-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadWrite {
    /// LOGICAL BLOCK ADDRESS.
    pub lba: u64,
    /// TRANSFER LENGTH in logical blocks (READ(6)/WRITE(6): 0 means 256).
    pub blocks: u32,
    /// FUA bit (byte 1 bit 3; always false for the 6-byte forms).
    pub fua: bool,
    /// DPO bit (byte 1 bit 4).
    pub dpo: bool,
    /// RDPROTECT/WRPROTECT (byte 1 bits 7-5).
    pub protect: u8,
}

impl ReadWrite {
    /// Decodes READ/WRITE(6), (10), (12) or (16) by operation code; `None`
    /// for other opcodes. Missing bytes read as zero.
    pub fn decode(cdb: &[u8]) -> Option<ReadWrite> {
        let op = *cdb.first()?;
        let b1 = byte(cdb, 1);
        let flags = |lba, blocks| ReadWrite {
            lba,
            blocks,
            fua: b1 & 0x08 != 0,
            dpo: b1 & 0x10 != 0,
            protect: b1 >> 5,
        };
        Some(match op {
            opcode::READ_6 | opcode::WRITE_6 => {
                let blocks = match byte(cdb, 4) {
                    0 => 256,
                    n => u32::from(n),
                };
                ReadWrite {
                    lba: u64::from(be24(cdb, 1) & 0x1F_FFFF),
                    blocks,
                    fua: false,
                    dpo: false,
                    protect: 0,
                }
            }
            opcode::READ_10 | opcode::WRITE_10 => {
                flags(u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)))
            }
            opcode::READ_12 | opcode::WRITE_12 => flags(u64::from(be32(cdb, 2)), be32(cdb, 6)),
            opcode::READ_16 | opcode::WRITE_16 => flags(be64(cdb, 2), be32(cdb, 10)),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_are_byte_exact() {
        assert_eq!(Cdb::test_unit_ready().as_bytes(), &[0; 6]);
        assert_eq!(
            Cdb::request_sense(true, 252).as_bytes(),
            &[0x03, 1, 0, 0, 252, 0]
        );
        assert_eq!(
            Cdb::inquiry(true, 0x83, 0x1234).as_bytes(),
            &[0x12, 1, 0x83, 0x12, 0x34, 0]
        );
        assert_eq!(
            Cdb::read_capacity_10().as_bytes(),
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Cdb::read_capacity_16(32).as_bytes(),
            &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]
        );
        assert_eq!(
            Cdb::read_10(0x01020304, 0x0506, true).as_bytes(),
            &[0x28, 0x08, 1, 2, 3, 4, 0, 5, 6, 0]
        );
        assert_eq!(
            Cdb::write_10(7, 1, false).as_bytes(),
            &[0x2A, 0, 0, 0, 0, 7, 0, 0, 1, 0]
        );
        assert_eq!(
            Cdb::read_16(0x0102030405060708, 0x090A0B0C, false).as_bytes(),
            &[0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0]
        );
        assert_eq!(Cdb::write_16(1, 2, true).as_bytes()[..2], [0x8A, 0x08]);
        assert_eq!(
            Cdb::read_12(0x10, 0x20, false).as_bytes(),
            &[0xA8, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0]
        );
        assert_eq!(
            Cdb::write_6(0x12345, 0).as_bytes(),
            &[0x0A, 1, 0x23, 0x45, 0, 0]
        );
        assert_eq!(
            Cdb::report_luns(2, 0x1000).as_bytes(),
            &[0xA0, 0, 2, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
        );
        assert_eq!(
            Cdb::synchronize_cache_10(0, 0).as_bytes(),
            &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(Cdb::synchronize_cache_16(0, 0).as_bytes()[0], 0x91);
        assert_eq!(
            Cdb::mode_sense_6(true, 0, 0x3F, 0, 192).as_bytes(),
            &[0x1A, 0x08, 0x3F, 0, 192, 0]
        );
        assert_eq!(
            Cdb::mode_sense_10(true, false, 1, 0x08, 0, 512).as_bytes(),
            &[0x5A, 0x10, 0x48, 0, 0, 0, 0, 2, 0, 0]
        );
    }

    #[test]
    fn from_bytes_limits_and_padding() {
        assert!(Cdb::from_bytes(&[]).is_none());
        assert!(Cdb::from_bytes(&[0; 33]).is_none());
        let c = Cdb::from_bytes(&[0x12, 0, 0, 0, 36, 0]).unwrap();
        assert_eq!(c.opcode(), 0x12);
        let p: [u8; 32] = c.padded();
        assert_eq!(&p[..6], c.as_bytes());
        assert_eq!(&p[6..], &[0; 26]);
        assert_eq!(format!("{c:?}"), "Cdb[12 00 00 00 24 00]");
    }

    #[test]
    fn readers_never_panic() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(be16(&b, 0), 0x0102);
        assert_eq!(be24(&b, 1), 0x020304);
        assert_eq!(be32(&b, 5), 0x06070809);
        assert_eq!(be64(&b, 1), 0x0203040506070809);
        assert_eq!(be32(&b, 7), 0x08090000);
        assert_eq!(be64(&b, usize::MAX), 0);
        assert_eq!(be16(&[], 0), 0);
        assert_eq!(control(&[]), 0);
        assert_eq!(control(&b), 9);
    }

    #[test]
    fn read_write_decoder() {
        let rw = |c: Cdb| ReadWrite::decode(c.as_bytes()).unwrap();
        assert_eq!(
            rw(Cdb::read_6(0x1F_FFFF, 0)),
            ReadWrite {
                lba: 0x1F_FFFF,
                blocks: 256,
                fua: false,
                dpo: false,
                protect: 0
            }
        );
        let r = rw(Cdb::write_10(9, 3, true));
        assert_eq!((r.lba, r.blocks, r.fua), (9, 3, true));
        let r = rw(Cdb::read_12(9, 70000, false));
        assert_eq!((r.lba, r.blocks), (9, 70000));
        let r = rw(Cdb::write_16(u64::MAX, u32::MAX, false));
        assert_eq!((r.lba, r.blocks), (u64::MAX, u32::MAX));
        assert_eq!(ReadWrite::decode(&[0x28, 0xE0]).unwrap().protect, 7);
        assert!(ReadWrite::decode(&[0x12]).is_none());
        assert!(ReadWrite::decode(&[]).is_none());
    }
}
