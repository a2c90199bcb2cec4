//! The error handler for a command that timed out (ABORT TASK, LOGICAL UNIT
//! RESET, I_T NEXUS RESET, queue reset, device reset) and the two resets.

use std::time::Duration;

use tracing::{error, info, warn};
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

use super::{blocking, Driver};
use crate::error::{Error, RecoveryStep, Result};
use crate::queue::{Completed, Outcome, Pending};
use crate::response::{to_response, Response};
use crate::tmf::Tmf;

impl Driver {
    /// The error handler for a command that timed out, as Linux's
    /// scsi_error.c escalates: ABORT TASK, then LOGICAL UNIT RESET, then
    /// I_T NEXUS RESET, then a reset of the command's request queue, then a
    /// device reset, each only if the previous step did not get the command
    /// back. Returns the device's answer if the command finished on its own
    /// meanwhile, else [`Error::Timeout`] naming the step that cleared it.
    pub(super) async fn recover(
        &self,
        lun_field: [u8; 8],
        mut pending: Pending,
        timeout: Duration,
        data_in_len: usize,
    ) -> Result<Response> {
        let tag = pending.tag();
        let queue = pending.queue().index();
        let released = |r: Result<Completed>, step: RecoveryStep| -> Result<Response> {
            let timed_out = Error::Timeout {
                after: timeout,
                recovered_by: step,
            };
            let done = match r {
                Ok(done) => done,
                Err(Error::QueueReset { .. }) => return Err(timed_out),
                Err(e) => return Err(e),
            };
            let r = to_response(&done, data_in_len)?;
            info!(tag, step = %step, response = r.response, "timed-out command released");
            match r.virtio() {
                Some(VirtioResponse::Aborted | VirtioResponse::Reset) => Err(timed_out),
                // It finished on its own while we were recovering it.
                _ => Ok(r),
            }
        };
        let steps = [
            (Tmf::AbortTask { tag }, RecoveryStep::AbortTask),
            (Tmf::LogicalUnitReset, RecoveryStep::LogicalUnitReset),
            (Tmf::TargetReset, RecoveryStep::TargetReset),
        ];
        for (tmf, step) in steps {
            if let Some(r) = self.await_reconnect(tag, &mut pending).await {
                return released(r, RecoveryStep::Reconnect);
            }
            let answered = match self.task_management_to(lun_field, tmf).await {
                Ok(r) if r.is_success() => true,
                Ok(r) => {
                    warn!(tmf = tmf.name(), response = %r, "error handler: TMF failed");
                    false
                }
                Err(e) => {
                    warn!(tmf = tmf.name(), error = %e, "error handler: TMF failed");
                    false
                }
            };
            // The device completes covered commands before it answers the
            // TMF; give the completion task time to deliver it.
            let wait = if answered {
                self.opts.eh_timeout
            } else {
                Duration::from_millis(10)
            };
            match tokio::time::timeout(wait, pending.wait(false)).await {
                Ok(Ok(Outcome::Done(done))) => return released(Ok(done), step),
                Ok(Err(e)) => return released(Err(e), step),
                Ok(Ok(Outcome::Expired)) | Err(_) => continue,
            }
        }
        if let Some(r) = self.await_reconnect(tag, &mut pending).await {
            return released(r, RecoveryStep::Reconnect);
        }
        warn!(
            tag,
            queue, "timed-out command survived I_T NEXUS RESET: resetting its request queue"
        );
        match self.reset_queue(queue).await {
            Ok(_) => {
                if let Some(r) = pending.try_now() {
                    return released(r, RecoveryStep::QueueReset);
                }
            }
            Err(e) => warn!(queue, error = %e, "queue reset failed: resetting the device"),
        }
        if let Some(r) = self.await_reconnect(tag, &mut pending).await {
            return released(r, RecoveryStep::Reconnect);
        }
        match self.reset_device().await {
            Ok(()) => {
                if let Some(r) = pending.try_now() {
                    return released(r, RecoveryStep::DeviceReset);
                }
            }
            Err(e) => error!(error = %e, "device reset failed"),
        }
        warn!(tag, "timed-out command survived every error handler step");
        Err(Error::Timeout {
            after: timeout,
            recovered_by: RecoveryStep::NotRecovered,
        })
    }

    /// While the connection is down the error handler does not escalate (a
    /// TMF would sit on a ring nobody serves, a reset would fail on the
    /// closed socket): it waits for the reconnect, then gives the command
    /// `eh_timeout` to come back from the device that took over, which
    /// resubmits it. `None`: the link is up and the command still out, go
    /// on with the next step.
    async fn await_reconnect(&self, tag: u64, pending: &mut Pending) -> Option<Result<Completed>> {
        if self.link.is_up() {
            return None;
        }
        info!(
            tag,
            "connection lost: the error handler waits for the reconnect"
        );
        if let Err(e) = self.link.ready().await {
            // Gone for good: the command fails (with this same error).
            return Some(pending.try_now().unwrap_or(Err(e)));
        }
        match tokio::time::timeout(self.opts.eh_timeout, pending.wait(false)).await {
            Ok(Ok(Outcome::Done(done))) => Some(Ok(done)),
            Ok(Err(e)) => Some(Err(e)),
            Ok(Ok(Outcome::Expired)) | Err(_) => None,
        }
    }

    /// Resets request queue `queue` (the error handler's step after I_T
    /// NEXUS RESET): GET_VRING_BASE stops the ring (a device completes or
    /// drops what it holds), then the ring is zeroed and handed to the
    /// device again (SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE). Commands the
    /// device did not return fail with [`Error::QueueReset`] (the copying
    /// API retries them). Also revives a queue the device broke
    /// ([`Error::DeviceBroken`]). Returns how many commands failed.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// let failed = driver.reset_queue(0).await?;
    /// tracing::info!("queue 0 reset, {failed} commands failed");
    /// # Ok(()) }
    /// ```
    pub async fn reset_queue(&self, queue: u16) -> Result<usize> {
        let q = self
            .queues
            .get(usize::from(queue))
            .ok_or_else(|| {
                Error::BadConfig(format!(
                    "request queue {queue} does not exist ({} queues)",
                    self.queues.len()
                ))
            })?
            .clone();
        let transport = self.transport.clone();
        let failed = blocking(move || {
            let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
            let vq = 2 + usize::from(queue);
            t.stop_vring(vq)?;
            q.reset(|ring, kick, call| t.start_vring(vq, ring, kick, call))
        })
        .await?;
        info!(queue, failed, "request queue reset");
        Ok(failed)
    }

    /// Resets the whole device (the error handler's last step; Linux's host
    /// reset): every ring is stopped (GET_VRING_BASE), the device is reset
    /// (VHOST_USER_RESET_DEVICE when the device offers it; its LUs then
    /// report a reset unit attention), the features are set again and every
    /// ring is re-created. Commands the device did not return fail with
    /// [`Error::QueueReset`]; event buffers are posted again.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// driver.reset_device().await?;
    /// # Ok(()) }
    /// ```
    pub async fn reset_device(&self) -> Result<()> {
        let transport = self.transport.clone();
        let (control, event_queue, queues) = (
            self.control.clone(),
            self.event_queue.clone(),
            self.queues.clone(),
        );
        blocking(move || {
            let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
            for vq in 0..2 + queues.len() {
                t.stop_vring(vq)?;
            }
            t.reset_device()?;
            control.reset(|ring, kick, call| t.start_vring(0, ring, kick, call))?;
            event_queue.reset(|ring, kick, call| t.start_vring(1, ring, kick, call))?;
            for (n, q) in queues.iter().enumerate() {
                q.reset(|ring, kick, call| t.start_vring(2 + n, ring, kick, call))?;
            }
            Ok(())
        })
        .await?;
        info!("device reset");
        Ok(())
    }
}
