//! SYNCHRONIZE CACHE(10) and (16) (SBC-4).
//!
//! Writes go through the page cache (the volatile write cache the caching
//! mode page reports with WCE=1), so this is `fdatasync` of the whole image:
//! the LBA range is checked (LBA OUT OF RANGE past the capacity; NUMBER OF
//! LOGICAL BLOCKS 0 means "to the end") but not used to narrow the flush,
//! like QEMU. IMMED (byte 1 bit 1) is accepted and the flush still
//! completes before status is returned, which the standard allows.

use vscsi_protocol::cdb::{be16, be32, be64};
use vscsi_protocol::opcode;

use super::command::{io_error_sense, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

pub(crate) fn synchronize_cache(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let (lba, blocks) = if cdb.first() == Some(&opcode::SYNCHRONIZE_CACHE_16) {
        (be64(cdb, 2), u64::from(be32(cdb, 10)))
    } else {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
    };
    if let Err(s) = lu.check_range(lba, blocks) {
        return CommandResult::check_condition(s);
    }
    match lu.flush() {
        Ok(()) => CommandResult::good(0),
        Err(e) => {
            crate::limited_site!(warn, image = %lu.path().display(), error = %e, "fdatasync failed");
            CommandResult::check_condition(io_error_sense(&e, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run_cdb, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    #[test]
    fn sync_cache_flushes_and_checks_range() {
        for ro in [false, true] {
            let (bus, _f) = bus_with(
                16,
                LunOptions {
                    read_only: ro,
                    ..Default::default()
                },
            );
            let t = bus.target(0).unwrap();
            assert!(run_cdb(t, 0, Cdb::synchronize_cache_10(0, 0), 0)
                .0
                .is_good());
            assert!(run_cdb(t, 0, Cdb::synchronize_cache_16(8, 8), 0)
                .0
                .is_good());
            let (r, _) = run_cdb(t, 0, Cdb::synchronize_cache_16(8, 9), 0);
            assert_eq!(triple(&r), (5, 0x21, 0));
            let (r, _) = run_cdb(t, 0, Cdb::synchronize_cache_10(17, 0), 0);
            assert_eq!(triple(&r), (5, 0x21, 0));
        }
    }
}
