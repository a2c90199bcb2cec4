//! VERIFY(10)/(12)/(16), WRITE AND VERIFY(10)/(12)/(16) and COMPARE AND
//! WRITE (SBC-4). The three CDB sizes differ only in where the LBA and the
//! length sit (10: bytes 2-5 and 7-8; 12: 2-5 and 6-9; 16: 2-9 and 10-13).
//!
//! - VERIFY: VRPROTECT ≠ 0 → INVALID FIELD IN CDB (no protection
//!   information). BYTCHK 00b reads the range (an unreadable block gives
//!   MEDIUM ERROR); 01b compares the Data-Out buffer (VERIFICATION LENGTH ×
//!   block size bytes) with the medium; 11b compares one Data-Out block
//!   with every block of the range; 10b is reserved → INVALID FIELD IN CDB.
//!   A difference is MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION
//!   (E/1D/00) with INFORMATION = offset of the first differing byte
//!   (SBC-4 VERIFY command, byte-by-byte comparison).
//! - WRITE AND VERIFY: the write, made durable (`fdatasync`: the medium is
//!   what is verified), then with BYTCHK 01b the data read back and
//!   compared.
//! - COMPARE AND WRITE: the Data-Out buffer holds NUMBER OF LOGICAL BLOCKS
//!   of verify data then as many of write data. Atomic against every other
//!   write to the same blocks from any queue ([`super::lu::RangeLocks`]).
//!   NUMBER OF LOGICAL BLOCKS above [`MAX_COMPARE_AND_WRITE_BLOCKS`] (VPD
//!   page B0h) → INVALID FIELD IN CDB.
//!
//! VERIFY reads without a lock, like READ: its reads are redone when they
//! overlapped a WRITE ATOMIC ([`super::atomic::consistent_read`]), so a
//! torn atomic write never shows as a miscompare.
//!
//! These are not the hot path: they compare through scratch buffers.

use vscsi_protocol::cdb::{be16, be32, be64, byte};
use vscsi_protocol::opcode as op;
use vscsi_protocol::sense::Sense;

use super::command::{invalid_field, io_error_sense, write_through, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// MAXIMUM COMPARE AND WRITE LENGTH (VPD page B0h), in logical blocks.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 64;

/// Scratch chunk for comparisons and verification reads.
const CHUNK: usize = 256 * 1024;

fn lba_and_length(cdb: &[u8]) -> (u64, u64) {
    match byte(cdb, 0) {
        op::VERIFY_10 | op::WRITE_AND_VERIFY_10 => {
            (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
        }
        op::VERIFY_12 | op::WRITE_AND_VERIFY_12 => {
            (u64::from(be32(cdb, 2)), u64::from(be32(cdb, 6)))
        }
        _ => (be64(cdb, 2), u64::from(be32(cdb, 10))),
    }
}

fn read_error(lu: &LogicalUnit, lba: u64, e: &std::io::Error) -> CommandResult {
    crate::limited_site!(warn, image = %lu.path().display(), lba, error = %e, "verify read failed");
    CommandResult::check_condition(io_error_sense(e, false).with_information(lba))
}

fn miscompare(offset: u64) -> CommandResult {
    CommandResult::check_condition(Sense::MISCOMPARE_DURING_VERIFY.with_information(offset))
}

/// The answer of a compare ([`compare_medium`]'s result) that took
/// `data_out` bytes: its error, MISCOMPARE at the first differing offset,
/// or GOOD.
fn verdict(compared: Result<Option<u64>, CommandResult>, data_out: usize) -> CommandResult {
    match compared {
        Err(r) => r,
        Ok(Some(at)) => miscompare(at).with_data_out(data_out),
        Ok(None) => CommandResult::good(0).with_data_out(data_out),
    }
}

/// Compares `len` bytes of the medium at `offset` with `expected(pos, buf)`
/// which fills `buf` with the expected bytes at byte `pos` of the range.
/// Returns the first differing byte's position.
fn compare_medium(
    lu: &LogicalUnit,
    lba: u64,
    offset: u64,
    len: u64,
    mut expected: impl FnMut(u64, &mut [u8]) -> bool,
) -> Result<Option<u64>, CommandResult> {
    let chunk = usize::try_from(len).unwrap_or(CHUNK).min(CHUNK);
    let mut medium = vec![0u8; chunk];
    let mut want = vec![0u8; chunk];
    let mut pos = 0u64;
    while pos < len {
        let n = usize::try_from(len - pos).unwrap_or(chunk).min(chunk);
        if let Err(e) = lu.image().read_at(&mut medium[..n], offset + pos) {
            return Err(read_error(lu, lba, &e));
        }
        if !expected(pos, &mut want[..n]) {
            return Err(CommandResult::buffer_overrun());
        }
        if let Some(i) = medium[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    Ok(None)
}

/// Reads `len` bytes of the medium at `offset` (medium verification).
fn read_medium(lu: &LogicalUnit, lba: u64, offset: u64, len: u64) -> Result<(), CommandResult> {
    let chunk = usize::try_from(len).unwrap_or(CHUNK).min(CHUNK);
    let mut buf = vec![0u8; chunk];
    let mut pos = 0u64;
    while pos < len {
        let n = usize::try_from(len - pos).unwrap_or(chunk).min(chunk);
        if let Err(e) = lu.image().read_at(&mut buf[..n], offset + pos) {
            return Err(read_error(lu, lba, &e));
        }
        pos += n as u64;
    }
    Ok(())
}

/// VERIFY(10) and VERIFY(16).
pub(crate) fn verify(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let b1 = byte(cdb, 1);
    if b1 >> 5 != 0 {
        return invalid_field(1, Some(7));
    }
    let bytchk = (b1 >> 1) & 3;
    if bytchk == 2 {
        return invalid_field(1, Some(2));
    }
    let (lba, blocks) = lba_and_length(cdb);
    if let Err(s) = lu.check_range(lba, blocks) {
        return CommandResult::check_condition(s);
    }
    if blocks == 0 {
        return CommandResult::good(0);
    }
    let shift = lu.block_shift();
    let (offset, len) = (lba << shift, blocks << shift);
    let bs = u64::from(lu.block_size());
    // Data-Out is checked once, before the (possibly repeated) medium reads.
    let mut block = Vec::new();
    let consumed = match bytchk {
        0 => 0,
        1 if (data_out.len() as u64) < len => return CommandResult::buffer_overrun(),
        1 => len,
        _ => {
            block = vec![0u8; bs as usize];
            if data_out.read_at(0, &mut block) < block.len() {
                return CommandResult::buffer_overrun();
            }
            bs
        }
    };
    let checked = super::atomic::consistent_read(lu, || match bytchk {
        0 => read_medium(lu, lba, offset, len).map(|()| None),
        1 => compare_medium(lu, lba, offset, len, |pos, buf| {
            usize::try_from(pos).is_ok_and(|p| data_out.read_at(p, buf) == buf.len())
        }),
        _ => compare_medium(lu, lba, offset, len, |pos, buf| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = block[((pos + i as u64) % bs) as usize];
            }
            true
        }),
    });
    let Some(result) = checked else {
        return super::atomic::busy();
    };
    let consumed = usize::try_from(consumed).unwrap_or(usize::MAX);
    verdict(result, consumed)
}

/// WRITE AND VERIFY(10) and (16).
pub(crate) fn write_and_verify(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let b1 = byte(cdb, 1);
    if b1 >> 5 != 0 {
        return invalid_field(1, Some(7));
    }
    let bytchk = (b1 >> 1) & 3;
    if bytchk > 1 {
        return invalid_field(1, Some(2));
    }
    if lu.read_only() {
        return CommandResult::check_condition(Sense::WRITE_PROTECTED);
    }
    let (lba, blocks) = lba_and_length(cdb);
    if let Err(s) = lu.check_range(lba, blocks) {
        return CommandResult::check_condition(s);
    }
    if blocks == 0 {
        return CommandResult::good(0);
    }
    let shift = lu.block_shift();
    let (offset, len) = (lba << shift, blocks << shift);
    let Some(n) = usize::try_from(len).ok().filter(|&n| n <= data_out.len()) else {
        return CommandResult::buffer_overrun();
    };
    let guard = lu.locks().locked(lba, blocks);
    let mut res = lu.image().write_from(data_out, 0, n, offset);
    if res.is_ok() {
        res = lu.flush();
    }
    if let Err(e) = res {
        crate::limited_site!(warn, image = %lu.path().display(), lba, error = %e, "write and verify failed");
        return CommandResult::check_condition(io_error_sense(&e, true).with_information(lba));
    }
    let r = if bytchk == 1 {
        compare_medium(lu, lba, offset, len, |pos, buf| {
            usize::try_from(pos).is_ok_and(|p| data_out.read_at(p, buf) == buf.len())
        })
    } else {
        Ok(None)
    };
    drop(guard);
    verdict(r, n)
}

/// COMPARE AND WRITE.
pub(crate) fn compare_and_write(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let b1 = byte(cdb, 1);
    if b1 >> 5 != 0 {
        return invalid_field(1, Some(7));
    }
    let fua = b1 & 0x08 != 0;
    let lba = be64(cdb, 2);
    let blocks = byte(cdb, 13);
    if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
        return invalid_field(13, None);
    }
    if lu.read_only() {
        return CommandResult::check_condition(Sense::WRITE_PROTECTED);
    }
    if let Err(s) = lu.check_range(lba, u64::from(blocks)) {
        return CommandResult::check_condition(s);
    }
    if blocks == 0 {
        return CommandResult::good(0);
    }
    let len = usize::from(blocks) << lu.block_shift();
    let offset = lba << lu.block_shift();
    if data_out.len() < 2 * len {
        return CommandResult::buffer_overrun();
    }
    let mut buf = vec![0u8; 3 * len];
    let (verify_data, rest) = buf.split_at_mut(len);
    let (write_data, medium) = rest.split_at_mut(len);
    if data_out.read_at(0, verify_data) < len || data_out.read_at(len, write_data) < len {
        return CommandResult::buffer_overrun();
    }
    let guard = lu.locks().compare_and_write(lba, u64::from(blocks));
    if let Err(e) = lu.image().read_at(medium, offset) {
        return read_error(lu, lba, &e);
    }
    if let Some(i) = medium
        .iter()
        .zip(verify_data.iter())
        .position(|(a, b)| a != b)
    {
        return miscompare(i as u64).with_data_out(2 * len);
    }
    let mut res = lu.image().write_at(write_data, offset);
    drop(guard);
    if res.is_ok() {
        res = write_through(lu, fua);
    }
    match res {
        Ok(()) => CommandResult::good(0).with_data_out(2 * len),
        Err(e) => {
            crate::limited_site!(warn, image = %lu.path().display(), lba, error = %e, "compare and write failed");
            CommandResult::check_condition(io_error_sense(&e, true).with_information(lba))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    /// SBC-4 VERIFY(10) CDB: byte 1 VRPROTECT|DPO|BYTCHK, bytes 2-5 LBA, 7-8 VERIFICATION LENGTH.
    fn verify_10(lba: u32, blocks: u16, bytchk: u8) -> Vec<u8> {
        let mut c = vec![0x2F, bytchk << 1, 0, 0, 0, 0, 0, 0, 0, 0];
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn verify_bytchk_0_1_3_and_miscompare_offset() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        // testutil images: every byte of block b is b.
        assert!(run(t, 0, &verify_10(0, 16, 0), 0, &[]).0.is_good());
        let mut expect = vec![3u8; 512];
        expect.extend_from_slice(&[4u8; 512]);
        let (r, _) = run(t, 0, &verify_10(3, 2, 1), 0, &expect);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 1024);
        expect[700] = 0;
        let (r, _) = run(t, 0, &verify_10(3, 2, 1), 0, &expect);
        // Fixed sense (SPC-5 fixed format table): VALID, key E, INFORMATION 700, ASC 1D.
        assert_eq!(
            r.sense(),
            &[0xF0, 0, 0x0E, 0, 0, 0x02, 0xBC, 10, 0, 0, 0, 0, 0x1D, 0, 0, 0, 0, 0]
        );
        // BYTCHK 11b: one block against each block of the range.
        let (r, _) = run(t, 0, &verify_10(5, 1, 3), 0, &[5u8; 512]);
        assert!(r.is_good());
        let (r, _) = run(t, 0, &verify_10(5, 2, 3), 0, &[5u8; 512]);
        assert_eq!(r.decoded_sense().unwrap().information, Some(512));
        // Reserved BYTCHK, VRPROTECT, range, short Data-Out.
        assert_eq!(
            triple(&run(t, 0, &verify_10(0, 1, 2), 0, &[]).0),
            (5, 0x24, 0)
        );
        let mut c = verify_10(0, 1, 0);
        c[1] |= 0x20;
        assert_eq!(triple(&run(t, 0, &c, 0, &[]).0), (5, 0x24, 0));
        assert_eq!(
            triple(&run(t, 0, &verify_10(15, 2, 0), 0, &[]).0),
            (5, 0x21, 0)
        );
        assert_eq!(
            triple(&run(t, 0, &verify_10(0, 2, 1), 0, &[0; 512]).0),
            (5, 0x0E, 3)
        );
        // VERIFY(16).
        let mut c16 = [0u8; 16];
        c16[0] = 0x8F;
        c16[1] = 0x02;
        c16[9] = 7;
        c16[13] = 1;
        assert!(run(t, 0, &c16, 0, &[7u8; 512]).0.is_good());
    }

    #[test]
    fn twelve_byte_forms_share_the_ten_and_sixteen_byte_code() {
        let (bus, f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        // VERIFY(12): bytes 2-5 LBA, 6-9 VERIFICATION LENGTH.
        let v12 = |lba: u32, blocks: u32, bytchk: u8| {
            let mut c = [0u8; 12];
            c[0] = 0xAF;
            c[1] = bytchk << 1;
            c[2..6].copy_from_slice(&lba.to_be_bytes());
            c[6..10].copy_from_slice(&blocks.to_be_bytes());
            c
        };
        assert!(run(t, 0, &v12(0, 16, 0), 0, &[]).0.is_good());
        let mut expect = vec![6u8; 512];
        expect.extend_from_slice(&[7u8; 512]);
        assert!(run(t, 0, &v12(6, 2, 1), 0, &expect).0.is_good());
        expect[513] = 9;
        let (r, _) = run(t, 0, &v12(6, 2, 1), 0, &expect);
        assert_eq!(
            r.sense(),
            &[0xF0, 0, 0x0E, 0, 0, 0x02, 0x01, 10, 0, 0, 0, 0, 0x1D, 0, 0, 0, 0, 0]
        );
        // BYTCHK 11b: blocks 9-11 differ from block 9's pattern at byte 512.
        let (r, _) = run(t, 0, &v12(9, 3, 3), 0, &[9u8; 512]);
        assert_eq!(r.decoded_sense().unwrap().information, Some(512));
        assert_eq!(triple(&run(t, 0, &v12(0, 1, 2), 0, &[]).0), (5, 0x24, 0));
        assert_eq!(triple(&run(t, 0, &v12(16, 1, 0), 0, &[]).0), (5, 0x21, 0));
        // A length only the 12-byte form can carry is range-checked whole.
        assert_eq!(
            triple(&run(t, 0, &v12(0, 0x1_0000, 0), 0, &[]).0),
            (5, 0x21, 0)
        );
        // WRITE AND VERIFY(12).
        let mut c = [0u8; 12];
        c[0] = 0xAE;
        c[1] = 0x02;
        c[5] = 3;
        c[9] = 1;
        let (r, _) = run(t, 0, &c, 0, &[0xCD; 512]);
        assert!(r.is_good(), "{r:?}");
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[1536..2048].iter().all(|&b| b == 0xCD));
        c[1] = 0x04;
        assert_eq!(triple(&run(t, 0, &c, 0, &[0; 512]).0), (5, 0x24, 0));
    }

    #[test]
    fn write_and_verify_writes_durably() {
        let (bus, f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let mut c = [0u8; 10];
        c[0] = 0x2E;
        c[1] = 0x02; // BYTCHK
        c[5] = 2;
        c[8] = 1;
        let (r, _) = run(t, 0, &c, 0, &[0xAB; 512]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 512);
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[1024..1536].iter().all(|&b| b == 0xAB));
        let (ro, _g) = bus_with(
            16,
            LunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let (r, _) = run(ro.target(0).unwrap(), 0, &c, 0, &[0xAB; 512]);
        assert_eq!(triple(&r), (7, 0x27, 0));
    }

    /// SBC-4 COMPARE AND WRITE CDB: bytes 2-9 LBA, byte 13 NUMBER OF LOGICAL BLOCKS.
    fn caw(lba: u64, blocks: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x89;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = blocks;
        c
    }

    #[test]
    fn compare_and_write_semantics() {
        let (bus, f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let mut data = vec![4u8; 512];
        data.extend_from_slice(&[0x44; 512]);
        let (r, _) = run(t, 0, &caw(4, 1), 0, &data);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 1024);
        // Now the compare fails at byte 0; the medium is unchanged.
        let (r, _) = run(t, 0, &caw(4, 1), 0, &data);
        assert_eq!(
            r.sense(),
            &[0xF0, 0, 0x0E, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x1D, 0, 0, 0, 0, 0]
        );
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[2048..2560].iter().all(|&b| b == 0x44));
        assert!(run(t, 0, &caw(4, 0), 0, &[]).0.is_good());
        assert_eq!(triple(&run(t, 0, &caw(4, 65), 0, &[]).0), (5, 0x24, 0));
        assert_eq!(triple(&run(t, 0, &caw(16, 1), 0, &data).0), (5, 0x21, 0));
        assert_eq!(
            triple(&run(t, 0, &caw(4, 1), 0, &data[..600]).0),
            (5, 0x0E, 3)
        );
    }

    #[test]
    fn compare_and_write_is_atomic_against_writes() {
        // Many threads increment a counter in block 0 with COMPARE AND WRITE
        // while others overwrite block 1..; every successful CAW must have
        // seen the value the previous one wrote.
        let (bus, _f) = bus_with(16, LunOptions::default());
        let bus = Arc::new(bus);
        let successes = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let t = bus.target(0).unwrap();
                    for _ in 0..200 {
                        let (r, cur) = run(t, 0, Cdb::read_10(0, 1, false).as_bytes(), 512, &[]);
                        assert!(r.is_good());
                        let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
                        let mut next = cur.clone();
                        next[..8].copy_from_slice(&(v + 1).to_le_bytes());
                        let mut d = cur.clone();
                        d.extend_from_slice(&next);
                        let (r, _) = run(t, 0, &caw(0, 1), 0, &d);
                        if r.is_good() {
                            successes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
            for i in 0..2u8 {
                let bus = bus.clone();
                s.spawn(move || {
                    let t = bus.target(0).unwrap();
                    for _ in 0..200 {
                        let (r, _) = run(
                            t,
                            0,
                            Cdb::write_10(1 + u32::from(i), 1, false).as_bytes(),
                            0,
                            &[i; 512],
                        );
                        assert!(r.is_good());
                    }
                });
            }
        });
        let t = bus.target(0).unwrap();
        let (_, cur) = run(t, 0, Cdb::read_10(0, 1, false).as_bytes(), 512, &[]);
        let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
        // Block 0 started as all zeros: the counter equals the successes.
        assert_eq!(v, successes.load(std::sync::atomic::Ordering::SeqCst));
        assert!(v > 0);
    }
}
