//! Zero-copy READ and WRITE: the caller works on the request slot's buffer
//! in shared memory through a [`SharedSlice`], with no copy and no allocation.

use std::time::{Duration, Instant};

use tracing::debug;
use vscsi_protocol::cdb::Cdb;

use super::send::record_completion;
use super::Driver;
use crate::command::{rw_cdb, ScsiCommand};
use crate::error::Result;
use crate::memory::SharedSlice;
use crate::queue::Deadline;
use crate::response::{describe, header_response, lun_field, to_response, CommandError};
use crate::stats::CommandClass;

impl Driver {
    /// Zero-copy READ: reads `blocks` blocks of `block_size` bytes at `lba`
    /// of `target:lun` and calls `f` on the data where the device put it,
    /// in the request slot's buffer in the shared memory region (no copy,
    /// no allocation). `f` runs after the device returned the request, and
    /// the slot is not reused before `f` returns.
    ///
    /// The transfer must fit one slot ([`Driver::max_transfer`]; no
    /// splitting, else [`Error::TransferTooLarge`]). A completion that is
    /// not GOOD is `Ok(Err(CommandError))`. Timeouts and the error handler
    /// are those of [`Driver::send_command`]; a retried command (UNIT
    /// ATTENTION, BUSY...) is re-sent through the copying path, so `f` still
    /// runs once.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> Result<(), Box<dyn std::error::Error>> {
    /// let sum: u64 = driver
    ///     .read_with(0, 0, 0, 8, 512, |data| data.iter().map(u64::from).sum())
    ///     .await??;
    /// tracing::info!("checksum {sum}");
    /// # Ok(()) }
    /// ```
    pub async fn read_with<T>(
        &self,
        target: u8,
        lun: u16,
        lba: u64,
        blocks: u32,
        block_size: u32,
        f: impl FnOnce(SharedSlice<'_>) -> T,
    ) -> Result<std::result::Result<T, CommandError>> {
        self.wait_link().await?;
        let queue = self.pick_queue();
        let Prepared {
            lun_field,
            len,
            cdb,
            timeout,
            start,
        } = self.prepare(target, lun, (false, lba, blocks, block_size))?;
        let pending = self
            .submit(
                queue,
                (target, lun),
                lun_field,
                &cdb,
                &[],
                len,
                Deadline::after(start, timeout),
                timeout,
            )
            .await?;
        let r = match self
            .wait_slot(queue, (target, lun), lun_field, pending, timeout, len)
            .await?
        {
            Ok(done) => {
                let (raw, data) = done.read_in_place(len)?;
                let r = header_response(&raw);
                record_completion(
                    queue,
                    (target, lun),
                    CommandClass::Read,
                    start,
                    &r,
                    data.len(),
                    0,
                );
                if r.is_good() {
                    debug!(target, lun, lba, blocks, "zero-copy read");
                    return Ok(Ok(f(data)));
                }
                r
            }
            Err(r) => r,
        };
        if self.opts.retry.should_retry(&r, 0).is_none() {
            return Ok(Err(CommandError(r)));
        }
        debug!(target, lun, outcome = %describe(&r), "zero-copy read: retrying through the copying path");
        let r = self
            .send_command(
                target,
                lun,
                ScsiCommand::Read {
                    lba,
                    blocks,
                    block_size,
                },
            )
            .await?;
        Ok(if r.is_good() {
            let mut data = r.data;
            Ok(f(SharedSlice::from(&mut data[..])))
        } else {
            Err(CommandError(r))
        })
    }

    /// Zero-copy WRITE: `f` fills the `blocks * block_size` bytes to write
    /// at `lba` of `target:lun` directly in the request slot's buffer in the
    /// shared memory region (no copy, no allocation); the command is offered
    /// to the device after `f` returns. `f`'s value comes back when the
    /// command completed with GOOD status; otherwise `Ok(Err(CommandError))`.
    ///
    /// Same rules as [`Driver::read_with`]: one slot at most, the driver's
    /// timeout and error handler, and a retry (UNIT ATTENTION, BUSY...)
    /// re-sends a copy of the bytes `f` wrote through the copying path.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> Result<(), Box<dyn std::error::Error>> {
    /// driver
    ///     .write_with(0, 0, 100, 8, 512, |buf| buf.fill(0xA5))
    ///     .await??;
    /// # Ok(()) }
    /// ```
    pub async fn write_with<T>(
        &self,
        target: u8,
        lun: u16,
        lba: u64,
        blocks: u32,
        block_size: u32,
        f: impl FnOnce(SharedSlice<'_>) -> T,
    ) -> Result<std::result::Result<T, CommandError>> {
        self.wait_link().await?;
        let Prepared {
            lun_field,
            len,
            cdb,
            timeout,
            start,
        } = self.prepare(target, lun, (true, lba, blocks, block_size))?;
        let queue = self.pick_queue();
        let deadline = Deadline::after(start, timeout);
        let (pending, out) = match tokio::time::timeout_at(
            (start + timeout).into(),
            queue.start_filled(lun_field, &cdb, len, deadline, f),
        )
        .await
        {
            Ok(p) => p?,
            Err(_) => return Err(self.not_submitted(queue, target, lun, timeout)),
        };
        let r = match self
            .wait_slot(queue, (target, lun), lun_field, pending, timeout, 0)
            .await?
        {
            Ok(done) => {
                let r = to_response(&done, 0)?;
                record_completion(queue, (target, lun), CommandClass::Write, start, &r, 0, len);
                if r.is_good() {
                    debug!(target, lun, lba, blocks, "zero-copy write");
                    return Ok(Ok(out));
                }
                if self.opts.retry.should_retry(&r, 0).is_some() {
                    debug!(target, lun, outcome = %describe(&r), "zero-copy write: retrying through the copying path");
                    let data = done.copy_data(len)?;
                    drop(done);
                    let r = self
                        .send_command(target, lun, ScsiCommand::Write { lba, blocks, data })
                        .await?;
                    return Ok(if r.is_good() {
                        Ok(out)
                    } else {
                        Err(CommandError(r))
                    });
                }
                r
            }
            Err(r) => r,
        };
        Ok(Err(CommandError(r)))
    }

    /// What both directions work out first: the LUN field, the transfer
    /// length, the READ/WRITE CDB for `(write, lba, blocks, block_size)`,
    /// the LUN's timeout and the start time.
    fn prepare(
        &self,
        target: u8,
        lun: u16,
        (write, lba, blocks, block_size): (bool, u64, u32, u32),
    ) -> Result<Prepared> {
        Ok(Prepared {
            lun_field: lun_field(target, lun)?,
            len: blocks as usize * block_size as usize,
            cdb: rw_cdb(write, lba, blocks),
            timeout: self.lun_timeout(target, lun),
            start: Instant::now(),
        })
    }
}

/// A zero-copy command before it is submitted.
struct Prepared {
    lun_field: [u8; 8],
    len: usize,
    cdb: Cdb,
    timeout: Duration,
    start: Instant,
}
