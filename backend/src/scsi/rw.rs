//! READ(6)/(10)/(12)/(16) and WRITE(6)/(10)/(12)/(16) (SBC-4 clause 5):
//! the hot path.
//!
//! No allocation: the CDB is decoded into a small value, and data moves in
//! one call between the image and the transport's buffer
//! ([`DataIn::read_from_file`] /
//! [`DataOut::write_to_file`]).
//!
//! Checks, in order:
//! 1. RDPROTECT/WRPROTECT ≠ 0 → 5/24/00 at byte 1 bit 7 (no protection
//!    information: READ CAPACITY(16) reports PROT_EN=0).
//! 2. WRITE to a read-only LU → 7/27/00 WRITE PROTECTED; the image was
//!    opened `O_RDONLY` and is not touched.
//! 3. LBA range (overflow-safe) → 5/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE
//!    (no INFORMATION). I/O errors carry the command's first LBA in
//!    INFORMATION, so an initiator counts no block as transferred.
//! 4. TRANSFER LENGTH 0 (10/12/16-byte forms) → GOOD, nothing moved
//!    ("shall not be considered an error"). For the 6-byte forms 0 means 256.
//! 5. A buffer smaller than TRANSFER LENGTH × block size → 5/0E/03 INVALID
//!    FIELD IN COMMAND INFORMATION UNIT, nothing transferred. SAM-5 leaves
//!    a Data-In/Data-Out buffer that disagrees with the CDB to the transport;
//!    like the Linux target (LIO) we refuse it instead of moving a partial
//!    transfer, so a WRITE never half-lands. A larger buffer is fine: the
//!    transport reports the residual from `data_in_len`/`data_out_len`.
//!
//! FUA on WRITE, or WCE=0 in the caching mode page: `fdatasync` after the
//! write, before the response (the image is accessed through the page
//! cache, i.e. a volatile write cache). A write waits only while a COMPARE
//! AND WRITE is active (see [`super::lu::RangeLocks`]). FUA on READ needs nothing: the page cache is coherent with the
//! image. DPO and the group number are hints and are ignored.
//!
//! Deferred transfers (`aio=io_uring`): when the transport's buffers say
//! [`DataIn::can_defer`] and the logical unit [`LogicalUnit::defers_io`],
//! every check above still runs here, and the data transfer is returned as
//! a [`MediumTransfer`] for the transport to execute (many in flight);
//! [`complete_transfer`] turns its outcome into the command's final result
//! (GOOD, or the same sense an inline failure gets). A deferred WRITE counts
//! as a fast writer until it completes, so COMPARE AND WRITE still waits
//! for it; while a COMPARE AND WRITE is active on the unit such a WRITE
//! gets BUSY (SAM-5: "temporarily unable to accept a command"; initiators
//! retry) rather than blocking a queue thread that has transfers in flight.
//!
//! Reads take no lock; they check the WRITE ATOMIC epoch instead (see
//! [`super::atomic`]): an inline read that overlapped an atomic write is
//! read again, a deferred one is answered BUSY.

use std::io;

use vscsi_protocol::cdb::ReadWrite;
use vscsi_protocol::sense::Sense;
use vscsi_protocol::status;

use super::atomic;
use super::command::{invalid_field, io_error_sense, write_through, CommandResult};
use super::io::{DataIn, DataOut, MediumTransfer};
use super::lu::LogicalUnit;

/// Decodes, validates and sizes a READ/WRITE: `(file offset, byte count)`.
fn prepare(
    lu: &LogicalUnit,
    cdb: &[u8],
    write: bool,
) -> Result<(u64, u64, ReadWrite), CommandResult> {
    let Some(rw) = ReadWrite::decode(cdb) else {
        return Err(CommandResult::check_condition(
            Sense::INVALID_COMMAND_OPERATION_CODE,
        ));
    };
    if rw.protect != 0 {
        return Err(invalid_field(1, Some(7)));
    }
    if write && lu.read_only() {
        return Err(CommandResult::check_condition(Sense::WRITE_PROTECTED));
    }
    let blocks = u64::from(rw.blocks);
    lu.check_range(rw.lba, blocks)
        .map_err(CommandResult::check_condition)?;
    // lba + blocks <= capacity, and capacity << shift is the image size: no overflow.
    let shift = lu.block_shift();
    Ok((rw.lba << shift, blocks << shift, rw))
}

/// READ(6)/(10)/(12)/(16).
pub(crate) fn read(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _data_out: &dyn DataOut,
) -> CommandResult {
    let (offset, bytes, rw) = match prepare(lu, cdb, false) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if bytes == 0 {
        return CommandResult::good(0);
    }
    let len = match usize::try_from(bytes) {
        Ok(len) if len <= data_in.capacity() => len,
        _ => return CommandResult::buffer_overrun(),
    };
    if data_in.can_defer() && lu.defers_io() {
        let Some(atomic_epoch) = lu.atomic_window().read_epoch() else {
            tracing::debug!(lba = rw.lba, "READ during a WRITE ATOMIC: BUSY");
            return atomic::busy();
        };
        return CommandResult::good(len).with_transfer(MediumTransfer {
            write: false,
            disk_offset: offset,
            len,
            lba: rw.lba,
            sync: false,
            atomic_epoch,
        });
    }
    let res = atomic::consistent_read(lu, || lu.image().read_into(data_in, 0, len, offset));
    match res {
        None => atomic::busy(),
        Some(Ok(())) => CommandResult::good(len),
        Some(Err(e)) => {
            crate::limited_site!(warn, image = %lu.path().display(), lba = rw.lba, blocks = rw.blocks, error = %e, "read failed");
            CommandResult::check_condition(io_error_sense(&e, false).with_information(rw.lba))
        }
    }
}

/// WRITE(6)/(10)/(12)/(16).
pub(crate) fn write(
    lu: &LogicalUnit,
    cdb: &[u8],
    _data_in: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let (offset, bytes, rw) = match prepare(lu, cdb, true) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if bytes == 0 {
        return CommandResult::good(0);
    }
    let len = match usize::try_from(bytes) {
        Ok(len) if len <= data_out.len() => len,
        _ => return CommandResult::buffer_overrun(),
    };
    if data_out.can_defer() && lu.defers_io() {
        if !lu.locks().begin_deferred_write() {
            tracing::debug!(lba = rw.lba, "WRITE during a COMPARE AND WRITE: BUSY");
            return CommandResult::with_status(status::BUSY);
        }
        return CommandResult::good(0)
            .with_data_out(len)
            .with_transfer(MediumTransfer {
                write: true,
                disk_offset: offset,
                len,
                lba: rw.lba,
                sync: rw.fua || !lu.write_cache(),
                atomic_epoch: 0,
            });
    }
    let guard = lu.locks().write(rw.lba, u64::from(rw.blocks));
    let durable = rw.fua || !lu.write_cache();
    let res = lu.image().write_from_fua(data_out, 0, len, offset, durable);
    drop(guard);
    // A medium that made the write durable itself (NBD FUA) needs no flush.
    let res = match res {
        Ok(true) => Ok(()),
        Ok(false) => write_through(lu, rw.fua),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => CommandResult::good(0).with_data_out(len),
        Err(e) => {
            crate::limited_site!(warn, image = %lu.path().display(), lba = rw.lba, blocks = rw.blocks, error = %e, "write failed");
            CommandResult::check_condition(io_error_sense(&e, true).with_information(rw.lba))
        }
    }
}

/// Runs a deferred `transfer` with the medium's blocking calls, between
/// the medium and the command's buffers (`data_in` for a READ, `data_out`
/// for a WRITE, both from offset 0), making a WRITE durable when it asks
/// (FUA on the medium when it has it, else a flush). For transports that
/// run the transfers of an [`LogicalUnit::offloads_io`] LU on helper
/// threads; the outcome goes to [`complete_transfer`]. The range lock of a
/// deferred WRITE was taken when the command returned the transfer.
pub fn run_transfer(
    lu: &LogicalUnit,
    transfer: &MediumTransfer,
    data_in: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> io::Result<()> {
    if !transfer.write {
        return lu
            .image()
            .read_into(data_in, 0, transfer.len, transfer.disk_offset);
    }
    let durable = lu.image().write_from_fua(
        data_out,
        0,
        transfer.len,
        transfer.disk_offset,
        transfer.sync,
    )?;
    if transfer.sync && !durable {
        lu.flush()?;
    }
    Ok(())
}

/// The final result of a command whose data `transfer` the transport ran
/// (READ/WRITE returned it, see the module doc) with outcome `res`: GOOD
/// with the data length, or CHECK CONDITION with the sense an inline
/// failure gets (INFORMATION = first LBA; descriptor format with D_SENSE).
/// Releases what a deferred WRITE held; call it exactly once per transfer.
pub fn complete_transfer(
    lu: &LogicalUnit,
    transfer: &MediumTransfer,
    res: io::Result<()>,
) -> CommandResult {
    if transfer.write {
        lu.locks().end_deferred_write();
    }
    let r = match res {
        // The data may mix old and new blocks of a WRITE ATOMIC.
        Ok(()) if !transfer.write && !lu.atomic_window().read_valid(transfer.atomic_epoch) => {
            return atomic::busy();
        }
        Ok(()) if transfer.write => CommandResult::good(0).with_data_out(transfer.len),
        Ok(()) => CommandResult::good(transfer.len),
        Err(e) => {
            crate::limited_site!(warn, image = %lu.path().display(), lba = transfer.lba, bytes = transfer.len,
                write = transfer.write, error = %e, "deferred transfer failed");
            CommandResult::check_condition(
                io_error_sense(&e, transfer.write).with_information(transfer.lba),
            )
        }
    };
    if !r.is_good() && lu.descriptor_sense() {
        r.in_descriptor_format()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, run_cdb, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    #[test]
    fn reads_every_form() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        for cdb in [
            Cdb::read_10(3, 2, false),
            Cdb::read_10(3, 2, true),
            Cdb::read_12(3, 2, false),
            Cdb::read_16(3, 2, false),
            Cdb::read_6(3, 2),
        ] {
            let (r, data) = run_cdb(t, 0, cdb, 4096);
            assert!(r.is_good(), "{cdb:?}: {r:?}");
            assert_eq!(r.data_in_len, 1024);
            assert!(data[..512].iter().all(|&b| b == 3));
            assert!(data[512..].iter().all(|&b| b == 4));
        }
    }

    #[test]
    fn read_6_zero_means_256_blocks() {
        let (bus, _f) = bus_with(300, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, _) = run_cdb(t, 0, Cdb::read_6(0, 0), 256 * 512);
        assert!(r.is_good());
        assert_eq!(r.data_in_len, 256 * 512);
    }

    #[test]
    fn out_of_range_is_5_21_00_byte_exact() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        for cdb in [
            Cdb::read_10(15, 2, false),
            Cdb::read_16(u64::MAX, 1, false),
            Cdb::read_16(17, 0, false),
            Cdb::write_10(16, 1, false),
        ] {
            let (r, _) = run(t, 0, cdb.as_bytes(), 4096, &[0; 4096]);
            assert_eq!(r.status, 2, "{cdb:?}");
            assert_eq!(triple(&r), (5, 0x21, 0), "{cdb:?}");
        }
        let (r, _) = run_cdb(t, 0, Cdb::read_10(15, 2, false), 4096);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]
        );
        // 0 blocks at LBA == capacity is fine.
        let (r, _) = run_cdb(t, 0, Cdb::read_10(16, 0, false), 0);
        assert!(r.is_good());
    }

    #[test]
    fn write_then_read_back() {
        let (bus, f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let payload: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        for (cdb, lba) in [
            (Cdb::write_10(1, 2, false), 1u64),
            (Cdb::write_16(5, 2, true), 5),
            (Cdb::write_12(9, 2, false), 9),
            (Cdb::write_6(12, 2), 12),
        ] {
            let (r, _) = run(t, 0, cdb.as_bytes(), 0, &payload);
            assert!(r.is_good(), "{r:?}");
            assert_eq!(r.data_out_len, 1024);
            let (r, data) = run_cdb(t, 0, Cdb::read_16(lba, 2, false), 1024);
            assert!(r.is_good());
            assert_eq!(data, payload);
        }
        let disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&disk[512..1536], &payload[..]);
        assert!(disk[..512].iter().all(|&b| b == 0));
    }

    #[test]
    fn write_to_read_only_is_7_27_00_and_leaves_image_unchanged() {
        let (bus, f) = bus_with(
            16,
            LunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let before = std::fs::read(f.path()).unwrap();
        let t = bus.target(0).unwrap();
        for cdb in [
            Cdb::write_10(0, 1, false),
            Cdb::write_16(0, 1, true),
            Cdb::write_6(0, 1),
        ] {
            let (r, _) = run(t, 0, cdb.as_bytes(), 0, &[0xEE; 512]);
            assert_eq!(
                r.sense(),
                &[0x70, 0, 0x07, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0x00, 0, 0, 0, 0]
            );
            assert_eq!(r.data_out_len, 0);
        }
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        // Reads still work.
        let (r, _) = run_cdb(t, 0, Cdb::read_10(0, 1, false), 512);
        assert!(r.is_good());
    }

    #[test]
    fn zero_length_and_short_buffers() {
        let (bus, f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let before = std::fs::read(f.path()).unwrap();
        let (r, _) = run_cdb(t, 0, Cdb::write_10(0, 0, false), 0);
        assert!(r.is_good());
        // Data-Out shorter than the transfer: refused, image untouched.
        let (r, _) = run(t, 0, Cdb::write_10(0, 2, false).as_bytes(), 0, &[1; 700]);
        assert_eq!(triple(&r), (5, 0x0E, 0x03));
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        // Data-In shorter than the transfer.
        let (r, _) = run_cdb(t, 0, Cdb::read_10(0, 2, false), 1000);
        assert_eq!(triple(&r), (5, 0x0E, 0x03));
        // A bigger Data-In buffer is fine; data_in_len tells the residual.
        let (r, _) = run_cdb(t, 0, Cdb::read_10(0, 1, false), 4096);
        assert_eq!(r.data_in_len, 512);
    }

    #[test]
    fn protect_field_is_rejected() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let mut c = Cdb::read_10(0, 1, false).padded::<10>();
        c[1] = 0x20;
        let (r, _) = run(t, 0, &c, 512, &[]);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xCF, 0, 1]
        );
    }

    #[test]
    fn block_size_4096() {
        let (bus, _f) = bus_with(
            16,
            LunOptions {
                block_size: 4096,
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::read_10(1, 1, false), 4096);
        assert!(r.is_good());
        assert_eq!(data.len(), 4096);
        assert_eq!(data[0], 8);
        assert_eq!(data[4095], 15);
        let (r, _) = run_cdb(t, 0, Cdb::read_10(2, 1, false), 4096);
        assert_eq!(triple(&r), (5, 0x21, 0));
    }
}
