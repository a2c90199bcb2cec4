//! PRE-FETCH(10) and PRE-FETCH(16) (SBC-4).
//!
//! The cache of this device is the host page cache of the image, and only
//! where it serves the image's reads: a raw image opened with
//! `cache=writeback` ([`crate::storage::Image::page_cached_file`]). Its
//! capacity, as PRE-FETCH reports it, is [`PREFETCH_CACHE_BYTES`] per
//! command: a range that long or shorter "fits the cache". (The page cache
//! is shared with the rest of the host, so pages may later be evicted, as
//! any cache may replace what it holds.)
//!
//! - The LBA range is checked (LBA OUT OF RANGE past the capacity);
//!   PREFETCH LENGTH 0 means "to the last logical block".
//! - IMMED=1: `posix_fadvise(POSIX_FADV_WILLNEED)` on the range (the
//!   kernel reads it ahead in the background), then CONDITION MET if the
//!   range fits the cache, else GOOD (the first [`PREFETCH_CACHE_BYTES`]
//!   are asked for).
//! - IMMED=0: the range (at most its first [`PREFETCH_CACHE_BYTES`]) is
//!   read through the page cache before status: CONDITION MET when all of
//!   it was transferred to the cache, GOOD when it did not fit and only
//!   the part that fits was; a read error is reported like READ's.
//! - No cache (`cache=none`, qcow2, NBD): GOOD, nothing done (SBC-4: the
//!   blocks do not fit a cache of capacity 0).

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vscsi_protocol::cdb::{be16, be32, be64, byte};
use vscsi_protocol::opcode as op;
use vscsi_protocol::status;

use super::command::{io_error_sense, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// The capacity of the cache a PRE-FETCH fills, in bytes.
pub const PREFETCH_CACHE_BYTES: u64 = 32 << 20;

/// Scratch buffer size of a synchronous (IMMED=0) prefetch.
const CHUNK: usize = 256 * 1024;

/// PRE-FETCH(10): byte 1 IMMED (bit 1), bytes 2-5 LBA, 7-8 PREFETCH LENGTH.
/// PRE-FETCH(16): byte 1 IMMED, bytes 2-9 LBA, 10-13 PREFETCH LENGTH.
pub(crate) fn pre_fetch(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let immed = byte(cdb, 1) & 0x02 != 0;
    let (lba, length) = if byte(cdb, 0) == op::PRE_FETCH_16 {
        (be64(cdb, 2), u64::from(be32(cdb, 10)))
    } else {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
    };
    if let Err(s) = lu.check_range(lba, length) {
        return CommandResult::check_condition(s);
    }
    let blocks = if length == 0 {
        lu.capacity_blocks() - lba
    } else {
        length
    };
    let Some(file) = lu.image().page_cached_file() else {
        return CommandResult::good(0);
    };
    let shift = lu.block_shift();
    let fits = blocks <= PREFETCH_CACHE_BYTES >> shift;
    let offset = lba << shift;
    let bytes = (blocks << shift).min(PREFETCH_CACHE_BYTES);
    let done = CommandResult::with_status(if fits {
        status::CONDITION_MET
    } else {
        status::GOOD
    });
    if bytes == 0 {
        return done;
    }
    // SAFETY: posix_fadvise only reads its integer arguments; the
    // descriptor is open for the lifetime of `file`.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            bytes as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    if rc != 0 {
        tracing::debug!(
            error = rc,
            "posix_fadvise(WILLNEED) failed; prefetch continues"
        );
    }
    if immed {
        return done;
    }
    let mut buf = vec![0u8; CHUNK.min(bytes as usize)];
    let mut pos = 0u64;
    while pos < bytes {
        let n = (bytes - pos).min(buf.len() as u64) as usize;
        if let Err(e) = file.read_exact_at(&mut buf[..n], offset + pos) {
            crate::limited_site!(warn, image = %lu.path().display(), lba, error = %e, "prefetch read failed");
            return CommandResult::check_condition(io_error_sense(&e, false).with_information(lba));
        }
        pos += n as u64;
    }
    done
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::status;

    /// SBC-4 PRE-FETCH(10) CDB.
    fn pf10(lba: u32, blocks: u16, immed: bool) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x34;
        c[1] = if immed { 0x02 } else { 0 };
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// SBC-4 PRE-FETCH(16) CDB.
    fn pf16(lba: u64, blocks: u32, immed: bool) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x90;
        c[1] = if immed { 0x02 } else { 0 };
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn prefetch_reports_condition_met_when_the_range_fits() {
        // 40 MiB of 512-byte blocks: the whole disk does not fit 32 MiB.
        let (bus, _f) = bus_with(80 * 1024, LunOptions::default());
        let t = bus.target(0).unwrap();
        for immed in [false, true] {
            let (r, _) = run(t, 0, &pf10(0, 16, immed), 0, &[]);
            assert_eq!(r.status, status::CONDITION_MET, "{r:?}");
            assert!(r.sense().is_empty());
            let (r, _) = run(t, 0, &pf16(8, 64 * 1024, immed), 0, &[]);
            assert_eq!(r.status, status::CONDITION_MET);
            // 0 = to the end: 40 MiB does not fit.
            let (r, _) = run(t, 0, &pf16(0, 0, immed), 0, &[]);
            assert_eq!(r.status, status::GOOD);
            let (r, _) = run(t, 0, &pf16(0, 64 * 1024 + 1, immed), 0, &[]);
            assert_eq!(r.status, status::GOOD);
            // From near the end, "to the end" fits.
            let (r, _) = run(t, 0, &pf10(80 * 1024 - 4, 0, immed), 0, &[]);
            assert_eq!(r.status, status::CONDITION_MET);
        }
        assert_eq!(
            triple(&run(t, 0, &pf10(80 * 1024 - 1, 2, false), 0, &[]).0),
            (5, 0x21, 0)
        );
        assert_eq!(
            triple(&run(t, 0, &pf16(u64::MAX, 1, true), 0, &[]).0),
            (5, 0x21, 0)
        );
    }

    #[test]
    fn no_page_cache_means_good_without_action() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
        let opts = LunOptions {
            cache: crate::storage::CacheMode::None,
            ..Default::default()
        };
        // A file system that refuses O_DIRECT cannot serve cache=none.
        let Ok(lu) = crate::scsi::LogicalUnit::open(&path, opts) else {
            return;
        };
        let mut bus = crate::scsi::ScsiBus::new();
        bus.add_lun(0, 0, std::sync::Arc::new(lu)).unwrap();
        let (r, _) = run(bus.target(0).unwrap(), 0, &pf10(0, 8, false), 0, &[]);
        assert_eq!(r.status, status::GOOD);
        assert!(r.sense().is_empty());
    }
}
