//! WRITE ATOMIC(16) (SBC-4 atomic writes) and what makes it atomic.
//!
//! # What "atomic" means here
//!
//! An atomic write of this device is atomic **with respect to every other
//! command of every I_T nexus and queue served by this daemon**:
//!
//! - no other write (WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE, WRITE AND
//!   VERIFY, another WRITE ATOMIC) to an overlapping range runs while it
//!   runs: it takes the exclusive range lock COMPARE AND WRITE takes
//!   ([`super::lu::RangeLocks::compare_and_write`]), which also waits for
//!   the lock-free writes in flight to drain and makes deferred writes
//!   answer BUSY meanwhile;
//! - no READ or VERIFY returns data that mixes it with older data: lock-free
//!   reads note the [`AtomicWindow`] epoch before reading and check it after;
//!   a read that overlapped an atomic write in time is read again (inline)
//!   or answered BUSY (a deferred io_uring read), so an initiator sees all
//!   old or all new data, never a torn write.
//!
//! It is **not** atomic against a crash or a power loss: the data goes to
//! the image with one positioned write, and a host file system gives no
//! all-or-nothing guarantee for a `pwrite` that is interrupted by a crash
//! (a torn page is possible). An initiator that needs crash atomicity must
//! not rely on this command for it.
//!
//! Block Limits VPD page (B0h) fields: MAXIMUM ATOMIC TRANSFER LENGTH is
//! [`MAX_ATOMIC_BYTES`] in logical blocks (the bound keeps the exclusive
//! window short); ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY
//! are 0 (no requirement: exclusion does not depend on alignment); the
//! boundary fields are 0 (atomic boundaries are not supported, so a
//! non-zero ATOMIC BOUNDARY is refused). A medium served over the network
//! (NBD) may be written by other clients of its server, so no atomicity is
//! claimed there: every atomic field is 0 and WRITE ATOMIC(16) is not
//! offered (INVALID COMMAND OPERATION CODE, not reported).

use std::sync::atomic::{fence, AtomicU64, Ordering};

use vscsi_protocol::cdb::{be16, be64, byte};
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;

use super::command::{invalid_field, io_error_sense, write_through, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// The largest atomic write, in bytes (MAXIMUM ATOMIC TRANSFER LENGTH ×
/// block size).
pub const MAX_ATOMIC_BYTES: u32 = 64 * 1024;

/// How often an inline read is retried when atomic writes keep overlapping
/// it, before it is answered BUSY.
const READ_ATTEMPTS: usize = 64;

/// The epoch counters lock-free readers check against atomic writes.
///
/// `started` counts atomic writes begun, `finished` those done; while they
/// differ an atomic write is in flight. On its own cache line: only atomic
/// writes change it, so the readers' loads stay local.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct AtomicWindow {
    started: AtomicU64,
    finished: AtomicU64,
}

/// An atomic write in flight; ends on drop.
struct InFlight<'a>(&'a AtomicWindow);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::SeqCst);
    }
}

impl AtomicWindow {
    /// The epoch a read starting now runs in, or `None` while an atomic
    /// write is in flight.
    pub fn read_epoch(&self) -> Option<u64> {
        // `finished` first: finished <= started always, so equal values
        // mean no atomic write was in flight when `started` was loaded.
        let f = self.finished.load(Ordering::SeqCst);
        let s = self.started.load(Ordering::SeqCst);
        (s == f).then_some(s)
    }

    /// Whether a read that began in `epoch` and has finished moving its data
    /// overlapped no atomic write.
    pub fn read_valid(&self, epoch: u64) -> bool {
        fence(Ordering::SeqCst);
        self.started.load(Ordering::SeqCst) == epoch
    }

    fn begin(&self) -> InFlight<'_> {
        self.started.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }
}

/// Runs the medium read `read` so that it does not overlap an atomic write
/// (see the module documentation); `None` when atomic writes kept
/// overlapping it (the caller answers BUSY). `read` may run more than once.
pub(crate) fn consistent_read<T>(lu: &LogicalUnit, mut read: impl FnMut() -> T) -> Option<T> {
    let w = lu.atomic_window();
    for _ in 0..READ_ATTEMPTS {
        let Some(epoch) = w.read_epoch() else {
            std::thread::yield_now();
            continue;
        };
        let v = read();
        if w.read_valid(epoch) {
            return Some(v);
        }
    }
    None
}

/// Whether `lu` makes atomic writes (a local image; not NBD).
pub fn supports_atomic_writes(lu: &LogicalUnit) -> bool {
    lu.image().as_nbd().is_none()
}

/// MAXIMUM ATOMIC TRANSFER LENGTH in logical blocks (0: atomic writes not
/// supported by this logical unit).
pub fn max_atomic_blocks(lu: &LogicalUnit) -> u32 {
    if supports_atomic_writes(lu) {
        MAX_ATOMIC_BYTES >> lu.block_shift()
    } else {
        0
    }
}

/// Bytes 44-63 of the Block Limits VPD page (SBC-4): MAXIMUM ATOMIC
/// TRANSFER LENGTH, ATOMIC ALIGNMENT, ATOMIC TRANSFER LENGTH GRANULARITY,
/// MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY, MAXIMUM ATOMIC
/// BOUNDARY SIZE.
pub(crate) fn block_limits_fields(lu: &LogicalUnit) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&max_atomic_blocks(lu).to_be_bytes());
    b
}

/// WRITE ATOMIC(16): byte 1 WRPROTECT (7-5), DPO (4), FUA (3); bytes 2-9
/// LBA; 10-11 ATOMIC BOUNDARY; 12-13 TRANSFER LENGTH; 14 GROUP NUMBER.
pub(crate) fn write_atomic(
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
    // MAXIMUM ATOMIC BOUNDARY SIZE is 0: any boundary exceeds it.
    if be16(cdb, 10) != 0 {
        return invalid_field(10, None);
    }
    let blocks = u64::from(be16(cdb, 12));
    if blocks > u64::from(max_atomic_blocks(lu)) {
        return invalid_field(12, None);
    }
    if lu.read_only() {
        return CommandResult::check_condition(Sense::WRITE_PROTECTED);
    }
    if let Err(s) = lu.check_range(lba, blocks) {
        return CommandResult::check_condition(s);
    }
    if blocks == 0 {
        return CommandResult::good(0);
    }
    let shift = lu.block_shift();
    let len = (blocks << shift) as usize;
    if data_out.len() < len {
        return CommandResult::buffer_overrun();
    }
    let guard = lu.locks().compare_and_write(lba, blocks);
    let in_flight = lu.atomic_window().begin();
    let res = lu.image().write_from(data_out, 0, len, lba << shift);
    drop(in_flight);
    drop(guard);
    let res = res.and_then(|()| write_through(lu, fua));
    match res {
        Ok(()) => CommandResult::good(0).with_data_out(len),
        Err(e) => {
            crate::limited_site!(warn, image = %lu.path().display(), lba, error = %e, "write atomic failed");
            CommandResult::check_condition(io_error_sense(&e, true).with_information(lba))
        }
    }
}

/// BUSY: the command was not executed (SAM-5), the initiator retries.
pub(crate) fn busy() -> CommandResult {
    CommandResult::with_status(status::BUSY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    /// SBC-4 WRITE ATOMIC(16) CDB.
    fn wa(lba: u64, boundary: u16, blocks: u16, fua: bool) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x9C;
        c[1] = if fua { 0x08 } else { 0 };
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..12].copy_from_slice(&boundary.to_be_bytes());
        c[12..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn write_atomic_writes_and_checks_its_fields() {
        let (bus, f) = bus_with(256, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, _) = run(t, 0, &wa(2, 0, 2, true), 0, &[0x5A; 1024]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 1024);
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[1024..2048].iter().all(|&b| b == 0x5A));
        assert!(disk[2048..2560].iter().all(|&b| b == 4));
        // 0 blocks: nothing, GOOD.
        assert!(run(t, 0, &wa(0, 0, 0, false), 0, &[]).0.is_good());
        // 64 KiB / 512 = 128 blocks is the maximum.
        assert!(run(t, 0, &wa(0, 0, 128, false), 0, &[1; 65536]).0.is_good());
        let (r, _) = run(t, 0, &wa(0, 0, 129, false), 0, &[1; 66048]);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xC0, 0, 12]
        );
        // ATOMIC BOUNDARY: MAXIMUM ATOMIC BOUNDARY SIZE is 0.
        let (r, _) = run(t, 0, &wa(0, 1, 1, false), 0, &[1; 512]);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 10, None))
        );
        // WRPROTECT, range, short buffer.
        let mut c = wa(0, 0, 1, false);
        c[1] = 0x20;
        assert_eq!(triple(&run(t, 0, &c, 0, &[0; 512]).0), (5, 0x24, 0));
        assert_eq!(
            triple(&run(t, 0, &wa(255, 0, 2, false), 0, &[0; 1024]).0),
            (5, 0x21, 0)
        );
        assert!(run(t, 0, &wa(0, 0, 2, false), 0, &[0; 600]).0.is_overrun());
        let (ro, _g) = bus_with(
            8,
            LunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let (r, _) = run(ro.target(0).unwrap(), 0, &wa(0, 0, 1, false), 0, &[0; 512]);
        assert_eq!(triple(&r), (7, 0x27, 0));
    }

    #[test]
    fn block_limits_report_what_is_atomic() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let lu = bus.target(0).unwrap().lun(0).unwrap();
        let mut want = [0u8; 20];
        want[..4].copy_from_slice(&128u32.to_be_bytes());
        assert_eq!(block_limits_fields(lu), want);
    }

    #[test]
    fn the_window_sees_overlapping_atomic_writes() {
        let w = AtomicWindow::default();
        let e = w.read_epoch().unwrap();
        assert!(w.read_valid(e));
        let g = w.begin();
        assert_eq!(w.read_epoch(), None);
        assert!(!w.read_valid(e));
        drop(g);
        let e2 = w.read_epoch().unwrap();
        assert_ne!(e, e2);
        assert!(w.read_valid(e2));
    }

    #[test]
    fn a_deferred_read_overlapping_an_atomic_write_is_busy() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let lu = bus.target(0).unwrap().lun(0).unwrap();
        let read = |atomic_epoch| crate::scsi::MediumTransfer {
            write: false,
            disk_offset: 0,
            len: 512,
            lba: 0,
            sync: false,
            atomic_epoch,
        };
        let e = lu.atomic_window().read_epoch().unwrap();
        let done = crate::scsi::rw::complete_transfer(lu, &read(e), Ok(()));
        assert!(done.is_good());
        assert_eq!(done.data_in_len, 512);
        let g = lu.atomic_window().begin();
        drop(g);
        let r = crate::scsi::rw::complete_transfer(lu, &read(e), Ok(()));
        assert_eq!((r.status, r.data_in_len), (status::BUSY, 0));
    }

    /// A Data-In buffer whose reads from the image are watched: the first
    /// `overlaps` of them are overlapped by an "atomic write" that lands
    /// new data (0xEE) in block 0 and moves the epoch, as a WRITE ATOMIC on
    /// another queue would.
    struct Overlapped<'a> {
        inner: crate::scsi::VecDataIn,
        lu: &'a LogicalUnit,
        image: &'a std::path::Path,
        overlaps: usize,
        reads: usize,
    }

    impl crate::scsi::DataIn for Overlapped<'_> {
        fn capacity(&self) -> usize {
            self.inner.capacity()
        }
        fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
            self.inner.write_at(offset, data)
        }
        fn read_from_file(
            &mut self,
            offset: usize,
            len: usize,
            file: &std::fs::File,
            file_offset: u64,
        ) -> std::io::Result<()> {
            self.reads += 1;
            let r = self.inner.read_from_file(offset, len, file, file_offset);
            if self.reads <= self.overlaps {
                let _in_flight = self.lu.atomic_window().begin();
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(self.image)?;
                f.write_all_at(&[0xEE; 512], 0)?;
            }
            r
        }
    }

    #[test]
    fn an_inline_read_overlapped_by_an_atomic_write_is_read_again() {
        let (bus, f) = bus_with(8, LunOptions::default());
        let lu = bus.target(0).unwrap().lun(0).unwrap();
        let cdb = Cdb::read_10(0, 1, false);
        let mut din = Overlapped {
            inner: crate::scsi::VecDataIn::new(512),
            lu,
            image: f.path(),
            overlaps: 1,
            reads: 0,
        };
        let r = crate::scsi::rw::read(lu, cdb.as_bytes(), &mut din, &crate::scsi::NO_DATA_OUT);
        assert!(r.is_good(), "{r:?}");
        // The first read saw the old block (0x00) while the write landed:
        // it was redone and returned the new data, whole.
        assert_eq!(din.reads, 2);
        assert_eq!(din.inner.as_slice(), &[0xEE; 512]);
    }

    #[test]
    fn a_read_overlapped_every_time_is_busy() {
        let (bus, f) = bus_with(8, LunOptions::default());
        let lu = bus.target(0).unwrap().lun(0).unwrap();
        let mut din = Overlapped {
            inner: crate::scsi::VecDataIn::new(512),
            lu,
            image: f.path(),
            overlaps: usize::MAX,
            reads: 0,
        };
        let cdb = Cdb::read_10(0, 1, false);
        let r = crate::scsi::rw::read(lu, cdb.as_bytes(), &mut din, &crate::scsi::NO_DATA_OUT);
        assert_eq!((r.status, r.data_in_len), (status::BUSY, 0));
        assert_eq!(din.reads, READ_ATTEMPTS);
        // VERIFY's medium reads go through the same check.
        let (bus2, _g) = bus_with(8, LunOptions::default());
        let lu2 = bus2.target(0).unwrap().lun(0).unwrap();
        let w = lu2.atomic_window();
        let mut calls = 0;
        let v = consistent_read(lu2, || {
            calls += 1;
            if calls == 1 {
                drop(w.begin());
            }
            calls
        });
        assert_eq!(v, Some(2));
    }

    #[test]
    fn writes_and_atomic_writes_on_many_threads_all_complete() {
        // WRITE ATOMIC and READ of the same blocks from four threads: every
        // command completes GOOD (or BUSY for a read), nothing deadlocks,
        // every GOOD read is one whole write, and the blocks end as one
        // whole atomic write. The largest atomic write (16 pages), since
        // the page cache seldom tears a one-page read. Tearing is rare even
        // with the epoch check removed; the two overlapped tests above are
        // the ones that pin the check down.
        const BLOCKS: u16 = 128;
        const LEN: usize = MAX_ATOMIC_BYTES as usize;
        const ROUNDS: usize = 1000;
        let (bus, f) = bus_with(256, LunOptions::default());
        // The fresh image holds a different byte in each block: one atomic
        // write first, so that every whole read is one byte repeated.
        let t = bus.target(0).unwrap();
        assert!(run(t, 0, &wa(0, 0, BLOCKS, false), 0, &[0x33; LEN])
            .0
            .is_good());
        std::thread::scope(|s| {
            for v in [0x11u8, 0x22] {
                let bus = &bus;
                s.spawn(move || {
                    let t = bus.target(0).unwrap();
                    for _ in 0..ROUNDS {
                        let (r, _) = run(t, 0, &wa(0, 0, BLOCKS, false), 0, &[v; LEN]);
                        assert!(r.is_good());
                    }
                });
                s.spawn(move || {
                    let t = bus.target(0).unwrap();
                    for _ in 0..ROUNDS {
                        let (r, d) = run(t, 0, Cdb::read_10(0, BLOCKS, false).as_bytes(), LEN, &[]);
                        assert!(r.is_good() || r.status == status::BUSY, "{r:?}");
                        // A BUSY read returns no data (its buffer holds
                        // whatever the last overlapped attempt left).
                        if r.is_good() {
                            assert_eq!(d.len(), LEN);
                            assert!(
                                [0x11, 0x22, 0x33].contains(&d[0]) && d.iter().all(|&b| b == d[0]),
                                "a torn read: {:?}",
                                d.chunks(4096).map(|c| c[0]).collect::<Vec<_>>()
                            );
                        }
                    }
                });
            }
        });
        let disk = std::fs::read(f.path()).unwrap();
        assert!(disk[..LEN].iter().all(|&b| b == disk[0]) && [0x11, 0x22].contains(&disk[0]));
    }
}
