//! Logical block provisioning (SBC-4): UNMAP, WRITE SAME(10)/(16) and
//! GET LBA STATUS(16).
//!
//! A thin-provisioned logical unit ([`LogicalUnit::thin`]: a writable
//! regular file on a filesystem that punches holes) deallocates with
//! `fallocate(PUNCH_HOLE | KEEP_SIZE)`; a punched range reads back as
//! zeros, hence LBPRZ=1 in READ CAPACITY(16) and VPD page B2h.
//!
//! - UNMAP (SBC-4 UNMAP command and parameter list tables): ANCHOR=1 →
//!   INVALID FIELD IN CDB (anchored state unsupported, ANC_SUP=0);
//!   PARAMETER LIST LENGTH 0 → nothing; 1..7 → PARAMETER LIST LENGTH ERROR;
//!   more than [`MAX_UNMAP_DESCRIPTORS`] descriptors or more than
//!   [`max_unmap_blocks`] blocks in total → INVALID FIELD IN PARAMETER LIST;
//!   a descriptor past the capacity → LBA OUT OF RANGE. Every descriptor
//!   is checked before anything is deallocated. Only thin LUs offer UNMAP.
//! - WRITE SAME (SBC-4 WRITE SAME(10)/(16) tables): WRPROTECT, ANCHOR,
//!   PBDATA, LBDATA → INVALID FIELD IN CDB; NUMBER OF LOGICAL BLOCKS 0 →
//!   INVALID FIELD IN CDB (WSNZ=1), above the MAXIMUM WRITE SAME LENGTH too.
//!   With UNMAP=1 on a thin LU and a zero block (or NDOB=1) the range is
//!   punched; otherwise the block (zeros with NDOB) is written over the range.
//! - GET LBA STATUS (SBC-4 GET LBA STATUS parameter data): extents from the
//!   image's real holes (`SEEK_DATA` / `SEEK_HOLE`): PROVISIONING STATUS 0h
//!   mapped, 1h deallocated. A block partly holding data is mapped. An NBD
//!   export reports its own extents (NBD_CMD_BLOCK_STATUS, `base:allocation`:
//!   NBD_STATE_HOLE is deallocated). Any other LU that is not a regular
//!   file reports one mapped extent.

use vscsi_protocol::cdb::{be16, be32, be64, byte};
use vscsi_protocol::opcode as op;
use vscsi_protocol::sense::Sense;

use super::command::{
    invalid_field, invalid_param, io_error_sense, parameter_list, respond, write_through,
    CommandResult,
};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (VPD page B0h).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 255;

/// Bytes per UNMAP / WRITE SAME command at most (as QEMU's `max_unmap_size`).
const MAX_RANGE_BYTES: u64 = 1 << 30;

/// MAXIMUM UNMAP LBA COUNT and MAXIMUM WRITE SAME LENGTH, in blocks.
pub fn max_unmap_blocks(lu: &LogicalUnit) -> u32 {
    u32::try_from(MAX_RANGE_BYTES >> lu.block_shift()).unwrap_or(u32::MAX)
}

const WRITE_CHUNK: usize = 256 * 1024;

fn write_failed(lu: &LogicalUnit, lba: u64, e: &std::io::Error) -> CommandResult {
    crate::limited_site!(warn, image = %lu.path().display(), lba, error = %e, "deallocation or write same failed");
    CommandResult::check_condition(io_error_sense(e, true).with_information(lba))
}

/// UNMAP.
pub(crate) fn unmap(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    if byte(cdb, 1) & 0x01 != 0 {
        return invalid_field(1, Some(0));
    }
    let param_len = usize::from(be16(cdb, 7));
    if lu.read_only() {
        return CommandResult::check_condition(Sense::WRITE_PROTECTED);
    }
    if param_len == 0 {
        return CommandResult::good(0);
    }
    if param_len < 8 {
        return CommandResult::check_condition(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let list = match parameter_list(data_out, param_len) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let bd_len = usize::from(be16(&list, 2)).min(param_len - 8);
    let count = bd_len / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return invalid_param(2, None);
    }
    let mut total = 0u64;
    for i in 0..count {
        let d = 8 + 16 * i;
        let lba = be64(&list, d);
        let blocks = u64::from(be32(&list, d + 8));
        if let Err(s) = lu.check_range(lba, blocks) {
            return CommandResult::check_condition(s).with_data_out(param_len);
        }
        total += blocks;
    }
    if total > u64::from(max_unmap_blocks(lu)) {
        return invalid_param(8, None);
    }
    let shift = lu.block_shift();
    for i in 0..count {
        let d = 8 + 16 * i;
        let lba = be64(&list, d);
        let blocks = u64::from(be32(&list, d + 8));
        let _guard = lu.locks().locked(lba, blocks);
        if let Err(e) = lu.image().punch_hole(lba << shift, blocks << shift) {
            return write_failed(lu, lba, &e);
        }
    }
    if let Err(e) = write_through(lu, false) {
        return write_failed(lu, 0, &e);
    }
    CommandResult::good(0).with_data_out(param_len)
}

/// WRITE SAME(10) and WRITE SAME(16).
pub(crate) fn write_same(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let ws16 = byte(cdb, 0) == op::WRITE_SAME_16;
    let b1 = byte(cdb, 1);
    if b1 >> 5 != 0 {
        return invalid_field(1, Some(7));
    }
    if b1 & 0x10 != 0 {
        return invalid_field(1, Some(4));
    }
    if b1 & 0x06 != 0 {
        return invalid_field(1, Some(2));
    }
    let unmap = b1 & 0x08 != 0;
    let ndob = b1 & 0x01 != 0;
    if ndob && !ws16 {
        return invalid_field(1, Some(0));
    }
    let (lba, blocks, len_at) = if ws16 {
        (be64(cdb, 2), u64::from(be32(cdb, 10)), 10)
    } else {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)), 7)
    };
    if blocks == 0 || blocks > u64::from(max_unmap_blocks(lu)) {
        return invalid_field(len_at, None);
    }
    if lu.read_only() {
        return CommandResult::check_condition(Sense::WRITE_PROTECTED);
    }
    if let Err(s) = lu.check_range(lba, blocks) {
        return CommandResult::check_condition(s);
    }
    let bs = lu.block_size() as usize;
    let mut block = vec![0u8; bs];
    if !ndob && data_out.read_at(0, &mut block) < bs {
        return CommandResult::buffer_overrun();
    }
    let consumed = if ndob { 0 } else { bs };
    let zero = block.iter().all(|&b| b == 0);
    let shift = lu.block_shift();
    let (offset, len) = (lba << shift, blocks << shift);
    let guard = lu.locks().locked(lba, blocks);
    let zeroes = if zero {
        lu.image().write_zeroes(offset, len, unmap && lu.thin())
    } else {
        None
    };
    let res = if let Some(res) = zeroes {
        res
    } else if unmap && zero && lu.thin() && lu.image().unmapped_reads_zero() {
        lu.image().punch_hole(offset, len)
    } else {
        let chunk_len = usize::try_from(len).unwrap_or(WRITE_CHUNK).min(WRITE_CHUNK);
        let mut chunk = vec![0u8; chunk_len];
        if !zero {
            for c in chunk.chunks_mut(bs) {
                c.copy_from_slice(&block[..c.len()]);
            }
        }
        let mut pos = 0u64;
        let mut res = Ok(());
        while pos < len && res.is_ok() {
            let n = usize::try_from(len - pos)
                .unwrap_or(chunk_len)
                .min(chunk_len);
            res = lu.image().write_at(&chunk[..n], offset + pos);
            pos += n as u64;
        }
        res
    };
    drop(guard);
    match res.and_then(|()| write_through(lu, false)) {
        Ok(()) => CommandResult::good(0).with_data_out(consumed),
        Err(e) => write_failed(lu, lba, &e),
    }
}

/// Provisioning status of an extent (SBC-4 LBA status descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Mapped = 0,
    Deallocated = 1,
}

struct Extents {
    list: Vec<(u64, u64, Status)>,
    limit: usize,
}

impl Extents {
    /// Adds [start, end), merging with the previous extent and splitting at
    /// the 32-bit NUMBER OF LOGICAL BLOCKS. Returns false once full.
    fn push(&mut self, mut start: u64, end: u64, status: Status) -> bool {
        while start < end {
            if let Some(last) = self.list.last_mut() {
                if last.2 == status && last.1 == start && last.1 - last.0 < u64::from(u32::MAX) {
                    let room = u64::from(u32::MAX) - (last.1 - last.0);
                    let take = room.min(end - start);
                    last.1 += take;
                    start += take;
                    continue;
                }
            }
            if self.list.len() >= self.limit {
                return false;
            }
            let take = (end - start).min(u64::from(u32::MAX));
            self.list.push((start, start + take, status));
            start += take;
        }
        true
    }
}

fn lba_extents(
    lu: &LogicalUnit,
    lba: u64,
    limit: usize,
) -> std::io::Result<Vec<(u64, u64, Status)>> {
    let cap = lu.capacity_blocks();
    let mut ex = Extents {
        list: Vec::new(),
        limit,
    };
    let shift = lu.block_shift();
    let bs = u64::from(lu.block_size());
    if let Some(extents) = lu
        .image()
        .allocation(lba << shift, (cap - lba) << shift, limit)
    {
        // A block partly allocated is mapped: a hole covers the blocks it
        // holds whole, data every block it touches.
        let (mut pos, mut cur) = (lba << shift, lba);
        for (bytes, hole) in extents? {
            let next = pos.saturating_add(bytes);
            let end = if hole { next / bs } else { next.div_ceil(bs) }.min(cap);
            let status = if hole {
                Status::Deallocated
            } else {
                Status::Mapped
            };
            if end > cur {
                if !ex.push(cur, end, status) {
                    break;
                }
                cur = end;
            }
            pos = next;
        }
        if ex.list.is_empty() {
            ex.push(lba, cap, Status::Mapped);
        }
        return Ok(ex.list);
    }
    if !lu.image().is_regular_file() {
        ex.push(lba, cap, Status::Mapped);
        return Ok(ex.list);
    }
    let mut cur = lba;
    while cur < cap && ex.list.len() <= limit {
        let Some(data) = lu.image().seek(cur << shift, libc::SEEK_DATA)? else {
            ex.push(cur, cap, Status::Deallocated);
            break;
        };
        let data_blk = (data >> shift).min(cap);
        if data_blk > cur {
            if !ex.push(cur, data_blk, Status::Deallocated) {
                break;
            }
            cur = data_blk;
            continue;
        }
        let hole = lu
            .image()
            .seek(data, libc::SEEK_HOLE)?
            .unwrap_or(cap << shift);
        let end = hole.div_ceil(bs).max(cur + 1).min(cap);
        if !ex.push(cur, end, Status::Mapped) {
            break;
        }
        cur = end;
    }
    Ok(ex.list)
}

/// GET LBA STATUS(16).
pub(crate) fn get_lba_status(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let lba = be64(cdb, 2);
    let alloc = be32(cdb, 10) as usize;
    if lba >= lu.capacity_blocks() {
        return CommandResult::check_condition(Sense::LBA_OUT_OF_RANGE);
    }
    if alloc == 0 {
        return CommandResult::good(0);
    }
    let limit = (alloc.saturating_sub(8) / 16).clamp(1, 512);
    let extents = match lba_extents(lu, lba, limit) {
        Ok(e) => e,
        Err(e) => {
            crate::limited_site!(warn, image = %lu.path().display(), error = %e, "SEEK_DATA/SEEK_HOLE failed");
            return CommandResult::check_condition(io_error_sense(&e, false).with_information(lba));
        }
    };
    let mut out = vec![0u8; 8 + 16 * extents.len()];
    let param_len = (4 + 16 * extents.len()) as u32;
    out[..4].copy_from_slice(&param_len.to_be_bytes());
    for (i, &(start, end, status)) in extents.iter().enumerate() {
        let d = &mut out[8 + 16 * i..24 + 16 * i];
        d[..8].copy_from_slice(&start.to_be_bytes());
        d[8..12].copy_from_slice(&((end - start) as u32).to_be_bytes());
        d[12] = status as u8;
    }
    respond(data_in, alloc, &out)
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, run_cdb, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    /// SBC-4 UNMAP parameter list: header (UNMAP DATA LENGTH, BLOCK
    /// DESCRIPTOR DATA LENGTH) then 16-byte descriptors (LBA, count).
    fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        v[0..2].copy_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
        v[2..4].copy_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
        for &(lba, n) in ranges {
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
        v
    }

    fn unmap_cdb(len: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x42;
        c[7..9].copy_from_slice(&len.to_be_bytes());
        c
    }

    fn get_lba_status(lba: u64, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x9E;
        c[1] = 0x12;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn unmap_punches_holes_that_read_zero_and_get_lba_status_sees_them() {
        let (bus, f) = bus_with(256, LunOptions::default());
        let t = bus.target(0).unwrap();
        let lu = t.lun(0).unwrap();
        if !lu.thin() {
            return; // filesystem without hole support
        }
        // Fully mapped at first: one descriptor (SBC-4 LBA status descriptor).
        let (r, data) = run(t, 0, &get_lba_status(0, 4096), 4096, &[]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(
            data,
            [0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
        );
        let list = unmap_list(&[(64, 64)]);
        let (r, _) = run(t, 0, &unmap_cdb(list.len() as u16), 0, &list);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 24);
        let (r, data) = run_cdb(t, 0, Cdb::read_10(64, 64, false), 64 * 512);
        assert!(r.is_good());
        assert!(data.iter().all(|&b| b == 0));
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 256 * 512);
        let (_, data) = run(t, 0, &get_lba_status(0, 4096), 4096, &[]);
        assert_eq!(&data[..4], &[0, 0, 0, 52]);
        assert_eq!(
            &data[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0]
        );
        assert_eq!(
            &data[24..40],
            &[0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 64, 1, 0, 0, 0]
        );
        assert_eq!(
            &data[40..56],
            &[0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0, 128, 0, 0, 0, 0]
        );
        // From inside the hole; truncated by the allocation length.
        let (r, data) = run(t, 0, &get_lba_status(100, 24), 4096, &[]);
        assert_eq!(r.data_in_len, 24);
        assert_eq!(
            &data[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 28, 1, 0, 0, 0]
        );
        assert_eq!(
            triple(&run(t, 0, &get_lba_status(256, 64), 64, &[]).0),
            (5, 0x21, 0)
        );
    }

    #[test]
    fn unmap_errors() {
        let (bus, _f) = bus_with(256, LunOptions::default());
        let t = bus.target(0).unwrap();
        if !t.lun(0).unwrap().thin() {
            return;
        }
        assert!(run(t, 0, &unmap_cdb(0), 0, &[]).0.is_good());
        assert_eq!(
            triple(&run(t, 0, &unmap_cdb(6), 0, &[0; 6]).0),
            (5, 0x1A, 0)
        );
        let mut anchor = unmap_cdb(0);
        anchor[1] = 1;
        assert_eq!(triple(&run(t, 0, &anchor, 0, &[]).0), (5, 0x24, 0));
        let list = unmap_list(&[(0, 1), (250, 7)]);
        let (r, _) = run(t, 0, &unmap_cdb(list.len() as u16), 0, &list);
        assert_eq!(triple(&r), (5, 0x21, 0));
        // Nothing was unmapped: block 0 still holds its data.
        let (_, data) = run_cdb(t, 0, Cdb::read_10(0, 1, false), 512);
        assert_eq!(data, vec![0u8; 512]); // block 0 of testutil images is zeros
        let (_, data) = run_cdb(t, 0, Cdb::read_10(1, 1, false), 512);
        assert_eq!(data, vec![1u8; 512]);
    }

    #[test]
    fn unmap_not_offered_without_thin_provisioning() {
        let (bus, _f) = bus_with(
            16,
            LunOptions {
                discard: false,
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        assert_eq!(triple(&run(t, 0, &unmap_cdb(0), 0, &[]).0), (5, 0x20, 0));
        // WRITE SAME with UNMAP still works: it writes zeros.
        let mut c = [0u8; 10];
        c[0] = 0x41;
        c[1] = 0x08;
        c[5] = 3;
        c[8] = 2;
        assert!(run(t, 0, &c, 0, &[0; 512]).0.is_good());
        let (_, data) = run_cdb(t, 0, Cdb::read_10(3, 2, false), 1024);
        assert!(data.iter().all(|&b| b == 0));
    }

    #[test]
    fn write_same_pattern_zero_ndob_and_errors() {
        let (bus, _f) = bus_with(64, LunOptions::default());
        let t = bus.target(0).unwrap();
        // WRITE SAME(10): bytes 2-5 LBA, 7-8 NUMBER OF LOGICAL BLOCKS.
        let (r, _) = run(t, 0, &[0x41, 0, 0, 0, 0, 2, 0, 0, 3, 0], 0, &[0x5A; 512]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 512);
        let (_, data) = run_cdb(t, 0, Cdb::read_10(1, 5, false), 5 * 512);
        assert!(data[..512].iter().all(|&b| b == 1));
        assert!(data[512..2048].iter().all(|&b| b == 0x5A));
        assert!(data[2048..].iter().all(|&b| b == 5));
        // WRITE SAME(16) NDOB + UNMAP: no Data-Out, zeros.
        let mut c = [0u8; 16];
        c[0] = 0x93;
        c[1] = 0x09;
        c[9] = 2;
        c[13] = 3;
        let (r, _) = run(t, 0, &c, 0, &[]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 0);
        let (_, data) = run_cdb(t, 0, Cdb::read_10(2, 3, false), 3 * 512);
        assert!(data.iter().all(|&b| b == 0));
        // NUMBER OF LOGICAL BLOCKS 0 (WSNZ=1), ANCHOR, LBDATA, NDOB in (10), range.
        let (r, _) = run(t, 0, &[0x41, 0, 0, 0, 0, 2, 0, 0, 0, 0], 0, &[0; 512]);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 7, None))
        );
        for b1 in [0x10u8, 0x02, 0x01, 0x20] {
            let (r, _) = run(t, 0, &[0x41, b1, 0, 0, 0, 2, 0, 0, 1, 0], 0, &[0; 512]);
            assert_eq!(triple(&r), (5, 0x24, 0), "{b1:#x}");
        }
        let (r, _) = run(t, 0, &[0x41, 0, 0, 0, 0, 63, 0, 0, 2, 0], 0, &[0; 512]);
        assert_eq!(triple(&r), (5, 0x21, 0));
        let (r, _) = run(t, 0, &[0x41, 0, 0, 0, 0, 2, 0, 0, 1, 0], 0, &[0; 100]);
        assert_eq!(triple(&r), (5, 0x0E, 3));
    }

    #[test]
    fn read_only_refuses_unmap_and_write_same() {
        let (bus, f) = bus_with(
            16,
            LunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let before = std::fs::read(f.path()).unwrap();
        let t = bus.target(0).unwrap();
        let (r, _) = run(t, 0, &[0x41, 0x08, 0, 0, 0, 2, 0, 0, 3, 0], 0, &[0; 512]);
        assert_eq!(triple(&r), (7, 0x27, 0));
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        // GET LBA STATUS works read-only.
        let (r, _) = run(t, 0, &get_lba_status(0, 64), 64, &[]);
        assert!(r.is_good());
    }
}
