//! Sending a command: queue choice, retries, splitting transfers bigger
//! than a slot, submission under the deadline, waiting and its metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vscsi_protocol::lun::LunAddress;
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

use super::options::CommandOptions;
use super::Driver;
use crate::command::ScsiCommand;
use crate::error::{Error, RecoveryStep, Result};
use crate::queue::{Completed, Deadline, Outcome, Pending, SlotQueue};
use crate::response::{describe, lun_field, to_response, Response};
use crate::retry::RetryPolicy;
use crate::stats::CommandClass;

impl Driver {
    /// Sends `command` to `lun` of `target` and waits for its completion.
    ///
    /// A completed command is `Ok` whatever its SCSI status: check
    /// [`Response::is_good`] or use [`Response::ok`]. The request queue is
    /// chosen by [`DriverOptions::queue_choice`](crate::DriverOptions::queue_choice).
    /// Transient conditions (UNIT ATTENTION, BUSY...) are retried by [`DriverOptions::retry`] (not for
    /// [`ScsiCommand::Raw`]); a command that does not complete within the
    /// LUN's timeout goes through the error handler and ends in
    /// [`Error::Timeout`] naming the [`RecoveryStep`](crate::RecoveryStep) that cleared it.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// use vscsi_driver::ScsiCommand;
    /// let r = driver.send_command(0, 0, ScsiCommand::Read { lba: 0, blocks: 8, block_size: 512 }).await?;
    /// assert_eq!(r.data.len(), 4096);
    /// # Ok(()) }
    /// ```
    pub async fn send_command(
        &self,
        target: u8,
        lun: u16,
        command: ScsiCommand,
    ) -> Result<Response> {
        self.send_to(lun_field(target, lun)?, &command).await
    }

    /// Sends `command` with a raw 8-byte virtio LUN field (for probing
    /// addressing the spec does not allow, or the REPORT LUNS well-known LUN).
    pub async fn send_to(&self, lun_field: [u8; 8], command: &ScsiCommand) -> Result<Response> {
        self.send_to_with(lun_field, command, CommandOptions::default())
            .await
    }

    /// [`Driver::send_command`] with per-command options (timeout, retry policy).
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// use std::time::Duration;
    /// use vscsi_driver::{CommandOptions, Error, RecoveryStep, ScsiCommand};
    /// let opts = CommandOptions { timeout: Some(Duration::from_secs(1)), ..Default::default() };
    /// match driver.send_command_with(0, 0, ScsiCommand::TestUnitReady, opts).await {
    ///     Err(Error::Timeout { recovered_by: RecoveryStep::AbortTask, .. }) => tracing::info!("aborted"),
    ///     other => tracing::info!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_command_with(
        &self,
        target: u8,
        lun: u16,
        command: ScsiCommand,
        opts: CommandOptions,
    ) -> Result<Response> {
        self.send_to_with(lun_field(target, lun)?, &command, opts)
            .await
    }

    /// [`Driver::send_to`] with per-command options.
    pub async fn send_to_with(
        &self,
        lun_field: [u8; 8],
        command: &ScsiCommand,
        opts: CommandOptions,
    ) -> Result<Response> {
        if let ScsiCommand::Raw {
            cdb,
            data_out,
            data_in_len,
        } = command
        {
            if cdb.is_empty() || cdb.len() > 32 {
                return Err(Error::BadCdb(cdb.len()));
            }
            if !data_out.is_empty() && *data_in_len > 0 {
                return Err(Error::BadConfig(
                    "a command with both data-out and data-in needs VIRTIO_SCSI_F_INOUT, which is not negotiated".into(),
                ));
            }
        }
        if let Some(parts) = self.split(command) {
            return self.send_split(lun_field, parts, opts).await;
        }
        let (target, lun) = match LunAddress::decode(&lun_field) {
            Ok(LunAddress::Unit(l)) => (l.target, l.lun),
            _ => (lun_field[1], u16::MAX),
        };
        let timeout = opts
            .timeout
            .unwrap_or_else(|| self.lun_timeout(target, lun));
        // A pass-through CDB is not retried unless asked (like SG_IO): the
        // caller sees exactly what the device answered.
        let policy = opts.retry.unwrap_or(match command {
            ScsiCommand::Raw { .. } => RetryPolicy::NONE,
            _ => self.opts.retry,
        });
        let mut attempt = 0;
        loop {
            let queue = self.pick_queue();
            let r = match self
                .execute_once(queue, lun_field, target, lun, command, timeout)
                .await
            {
                // Taken off a ring that was reset under it, or lost with a
                // connection the device could not resubmit it on: like a
                // RESET answer.
                Err(Error::QueueReset { queue } | Error::Disconnected { queue, .. })
                    if attempt < policy.max_retries =>
                {
                    attempt += 1;
                    debug!(
                        target,
                        lun, queue, attempt, "retrying after a queue reset or a lost connection"
                    );
                    continue;
                }
                r => r?,
            };
            match policy.should_retry(&r, attempt) {
                Some(delay) => {
                    attempt += 1;
                    debug!(target, lun, attempt, ?delay, outcome = %describe(&r), "retrying");
                    queue.record(target, lun, |s| s.retries += 1);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
                None => return Ok(r),
            }
        }
    }

    /// A READ or WRITE bigger than one request slot, as several commands of
    /// at most [`Driver::max_transfer`] bytes each; `None` if it fits.
    fn split(&self, command: &ScsiCommand) -> Option<Vec<ScsiCommand>> {
        let max = self.max_transfer();
        let (lba, blocks, block_size, data) = match command {
            ScsiCommand::Read {
                lba,
                blocks,
                block_size,
            } => (*lba, *blocks, *block_size, None),
            ScsiCommand::Write { lba, blocks, data }
                if *blocks > 0 && data.len() % *blocks as usize == 0 =>
            {
                (
                    *lba,
                    *blocks,
                    (data.len() / *blocks as usize) as u32,
                    Some(data),
                )
            }
            _ => return None,
        };
        let per = (max / block_size.max(1) as usize) as u32;
        if per == 0 || blocks as usize * block_size as usize <= max {
            return None;
        }
        let mut parts = Vec::new();
        let mut done = 0u32;
        while done < blocks {
            let n = per.min(blocks - done);
            let (start, len) = (
                done as usize * block_size as usize,
                n as usize * block_size as usize,
            );
            parts.push(match data {
                None => ScsiCommand::Read {
                    lba: lba + done as u64,
                    blocks: n,
                    block_size,
                },
                Some(d) => ScsiCommand::Write {
                    lba: lba + done as u64,
                    blocks: n,
                    data: d[start..start + len].to_vec(),
                },
            });
            done += n;
        }
        Some(parts)
    }

    /// Sends the parts of a split transfer one after the other and joins
    /// their answers; the first part that does not complete with GOOD status
    /// is returned as it is (later parts are not sent).
    async fn send_split(
        &self,
        lun_field: [u8; 8],
        parts: Vec<ScsiCommand>,
        opts: CommandOptions,
    ) -> Result<Response> {
        let mut joined: Option<Response> = None;
        for part in &parts {
            let r = Box::pin(self.send_to_with(lun_field, part, opts)).await?;
            if !r.is_good() {
                return Ok(r);
            }
            match &mut joined {
                None => joined = Some(r),
                Some(j) => {
                    j.data.extend_from_slice(&r.data);
                    j.residual += r.residual;
                }
            }
        }
        joined.ok_or(Error::Closed)
    }

    /// One attempt: submit, wait, and on timeout run the error handler.
    async fn execute_once(
        &self,
        queue: &Arc<SlotQueue>,
        lun_field: [u8; 8],
        target: u8,
        lun: u16,
        command: &ScsiCommand,
        timeout: Duration,
    ) -> Result<Response> {
        let (cdb, data_out, data_in_len) = command.encode();
        // While the driver reconnects, a new command waits here, before its
        // timeout starts.
        self.wait_link().await?;
        let start = Instant::now();
        let mut pending = self
            .submit(
                queue,
                (target, lun),
                lun_field,
                &cdb,
                data_out,
                data_in_len,
                Deadline::after(start, timeout),
                timeout,
            )
            .await?;
        let done = match self.wait_done(&mut pending).await? {
            Outcome::Done(done) => done,
            Outcome::Expired => {
                self.timed_out(queue, (target, lun), &pending, timeout);
                return self.recover(lun_field, pending, timeout, data_in_len).await;
            }
        };
        drop(pending);
        let r = to_response(&done, data_in_len)?;
        drop(done);
        let class = if !data_out.is_empty() {
            CommandClass::Write
        } else if matches!(cdb.as_bytes()[0], 0x08 | 0x28 | 0xA8 | 0x88) {
            CommandClass::Read
        } else {
            CommandClass::Other
        };
        record_completion(
            queue,
            (target, lun),
            class,
            start,
            &r,
            r.data.len(),
            data_out.len(),
        );
        Ok(r)
    }

    /// Puts a command on `queue`: at once when a slot is free, else after
    /// waiting for one until `deadline` ([`RecoveryStep::NotSubmitted`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn submit(
        &self,
        queue: &Arc<SlotQueue>,
        (target, lun): (u8, u16),
        lun_field: [u8; 8],
        cdb: &vscsi_protocol::cdb::Cdb,
        data_out: &[u8],
        data_in_len: usize,
        deadline: Deadline,
        timeout: Duration,
    ) -> Result<Pending> {
        if let Some(p) = queue.try_start(lun_field, cdb, data_out, data_in_len, deadline)? {
            return Ok(p);
        }
        match tokio::time::timeout_at(
            deadline.at.unwrap_or(deadline.started + timeout).into(),
            queue.start(lun_field, cdb, data_out, data_in_len, deadline),
        )
        .await
        {
            Ok(p) => p,
            Err(_) => Err(self.not_submitted(queue, target, lun, timeout)),
        }
    }

    /// Waits for a submitted command until the completion task wakes it
    /// (that task polls the used ring per [`DriverOptions::poll`]) or the
    /// watchdog says its deadline passed.
    pub(super) async fn wait_done(&self, pending: &mut Pending) -> Result<Outcome> {
        pending.wait(true).await
    }

    pub(super) fn timed_out(
        &self,
        queue: &SlotQueue,
        (target, lun): (u8, u16),
        pending: &Pending,
        timeout: Duration,
    ) {
        queue.record(target, lun, |s| s.timeouts += 1);
        warn!(
            target,
            lun,
            tag = pending.tag(),
            ?timeout,
            "command timed out: running the error handler"
        );
    }

    pub(super) fn pick_queue(&self) -> &Arc<SlotQueue> {
        let n = self
            .queue_picker
            .pick(self.queues.len(), |i| self.queues[i].in_flight_now());
        &self.queues[n]
    }

    pub(super) fn not_submitted(
        &self,
        queue: &SlotQueue,
        target: u8,
        lun: u16,
        timeout: Duration,
    ) -> Error {
        queue.record(target, lun, |s| s.timeouts += 1);
        Error::Timeout {
            after: timeout,
            recovered_by: RecoveryStep::NotSubmitted,
        }
    }

    /// Waits for a submitted command: `Ok(slot)` when it completed in time,
    /// `Err(response)` when it timed out and the error handler released it
    /// (the answer then is a copy).
    pub(super) async fn wait_slot(
        &self,
        queue: &SlotQueue,
        (target, lun): (u8, u16),
        lun_field: [u8; 8],
        mut pending: Pending,
        timeout: Duration,
        data_in_len: usize,
    ) -> Result<std::result::Result<Completed, Response>> {
        match self.wait_done(&mut pending).await? {
            Outcome::Done(done) => Ok(Ok(done)),
            Outcome::Expired => {
                self.timed_out(queue, (target, lun), &pending, timeout);
                Ok(Err(self
                    .recover(lun_field, pending, timeout, data_in_len)
                    .await?))
            }
        }
    }
}

/// Updates the metrics of `target:lun` for one completed command.
pub(super) fn record_completion(
    queue: &SlotQueue,
    (target, lun): (u8, u16),
    class: CommandClass,
    start: Instant,
    r: &Response,
    bytes_read: usize,
    data_out_len: usize,
) {
    let us = start.elapsed().as_micros() as u64;
    queue.record(target, lun, |s| {
        s.commands += 1;
        s.latency[class as usize].record(us);
        if r.response != VirtioResponse::Ok as u8 {
            s.errors_by_response[usize::from(r.response).min(12)] += 1;
            return;
        }
        s.bytes_read += bytes_read as u64;
        if r.status == status::GOOD {
            s.bytes_written += data_out_len as u64;
        }
        match r.status {
            status::GOOD => {}
            status::CHECK_CONDITION => {
                let key = r.sense_data().map_or(0, |s| s.key as usize);
                s.errors_by_sense_key[key & 0xF] += 1;
            }
            _ => s.bad_status += 1,
        }
    });
}
