//! The targets-and-LUNs model:
//! what [`crate::Driver::scan`] found, kept current by the device's events.
//!
//! A background task (spawned by [`crate::Driver::connect`], ended when the
//! driver is dropped) follows the event stream:
//!
//! | event | action |
//! |---|---|
//! | TRANSPORT_RESET RESCAN, LUN > 0 | probe the LUN (INQUIRY, READ CAPACITY): add, update or drop it |
//! | TRANSPORT_RESET RESCAN, LUN 0 (whole target) | rescan the target (REPORT LUNS, then probe each) |
//! | TRANSPORT_RESET REMOVED | drop the LUN (LUN 0: rescan the target) |
//! | TRANSPORT_RESET HARD / other | re-probe the LUN |
//! | PARAM_CHANGE | re-probe the LUN (re-reads its capacity) |
//! | EVENTS_MISSED, or the stream lagged | rescan every target |
//!
//! The task's commands go straight to the request queues with the driver's
//! retry policy and timeout but without the error handler, and are not
//! counted in [`crate::Driver::stats`]. A failed probe is logged and leaves
//! the model as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};
use vscsi_protocol::data::{decode_report_luns, ReadCapacity10, ReadCapacity16, StandardInquiry};
use vscsi_protocol::lun::Lun;
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

use crate::command::ScsiCommand;
use crate::driver::QueuePicker;
use crate::error::{Error, RecoveryStep, Result};
use crate::events::{DeviceEvent, ResetReason};
use crate::queue::{Deadline, Outcome, SlotQueue};
use crate::response::{to_response, LunInfo, Response};
use crate::retry::RetryPolicy;

/// The driver's current view of the device's targets and logical units.
///
/// ```no_run
/// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
/// driver.scan().await?;
/// let topo = driver.topology();
/// for ((target, lun), info) in &topo.luns {
///     tracing::info!("{target}:{lun} {} blocks of {}", info.blocks, info.block_size);
/// }
/// assert_eq!(topo.targets().len() <= topo.luns.len(), true);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Every known logical unit, by `(target, lun)`.
    pub luns: BTreeMap<(u8, u16), LunInfo>,
}

impl Topology {
    /// The targets that have at least one known LUN.
    pub fn targets(&self) -> BTreeSet<u8> {
        self.luns.keys().map(|(t, _)| *t).collect()
    }

    /// The LUN `target:lun`, if known.
    pub fn get(&self, target: u8, lun: u16) -> Option<&LunInfo> {
        self.luns.get(&(target, lun))
    }

    /// The known LUNs of `target`.
    pub fn luns_of(&self, target: u8) -> impl Iterator<Item = &LunInfo> {
        self.luns
            .range((target, 0)..=(target, u16::MAX))
            .map(|(_, l)| l)
    }

    /// Replaces the whole model with a full scan's result.
    pub(crate) fn replace_all(&mut self, found: &[LunInfo]) {
        self.luns = found
            .iter()
            .map(|l| ((l.lun.target, l.lun.lun), l.clone()))
            .collect();
    }

    /// Replaces what is known of `target` (`None`: the target is gone).
    pub(crate) fn replace_target(&mut self, target: u8, found: Option<&[LunInfo]>) {
        self.luns.retain(|(t, _), _| *t != target);
        for l in found.unwrap_or_default() {
            self.luns.insert((l.lun.target, l.lun.lun), l.clone());
        }
    }
}

/// INQUIRY and READ CAPACITY of one LUN through `send`; `None` if nothing is there.
pub(crate) async fn probe_with<F, Fut>(send: &F, target: u8, lun: u16) -> Result<Option<LunInfo>>
where
    F: Fn(u8, u16, ScsiCommand) -> Fut,
    Fut: Future<Output = Result<Response>>,
{
    let inq = send(
        target,
        lun,
        ScsiCommand::Inquiry {
            allocation_length: 96,
            evpd: false,
            page_code: 0,
        },
    )
    .await?;
    if !inq.is_good() {
        return Ok(None);
    }
    let Ok(inquiry) = StandardInquiry::decode(&inq.data) else {
        return Ok(None);
    };
    if inquiry.peripheral_qualifier != 0 {
        return Ok(None);
    }
    let (mut blocks, mut block_size) = (0, 0);
    let rc16 = send(
        target,
        lun,
        ScsiCommand::ReadCapacity16 {
            allocation_length: 32,
        },
    )
    .await?;
    if let (true, Ok(c)) = (rc16.is_good(), ReadCapacity16::decode(&rc16.data)) {
        (blocks, block_size) = (c.last_lba + 1, c.block_len);
    } else {
        let rc10 = send(target, lun, ScsiCommand::ReadCapacity10).await?;
        if let (true, Ok(c)) = (rc10.is_good(), ReadCapacity10::decode(&rc10.data)) {
            (blocks, block_size) = (c.last_lba as u64 + 1, c.block_len);
        }
    }
    Ok(Some(LunInfo {
        lun: Lun { target, lun },
        inquiry,
        blocks,
        block_size,
    }))
}

/// REPORT LUNS on `target`, then a probe of each LUN; `None` if the target
/// does not exist (BAD_TARGET).
pub(crate) async fn scan_target_with<F, Fut>(send: &F, target: u8) -> Result<Option<Vec<LunInfo>>>
where
    F: Fn(u8, u16, ScsiCommand) -> Fut,
    Fut: Future<Output = Result<Response>>,
{
    let report = send(
        target,
        0,
        ScsiCommand::ReportLuns {
            select_report: 0,
            allocation_length: 8 + 8 * 512,
        },
    )
    .await?;
    if report.virtio() == Some(VirtioResponse::BadTarget) {
        return Ok(None);
    }
    let luns = if report.is_good() {
        decode_report_luns(&report.data)
    } else {
        vec![0]
    };
    let mut found = Vec::new();
    for lun in luns {
        if let Some(info) = probe_with(send, target, lun).await? {
            found.push(info);
        }
    }
    Ok(Some(found))
}

/// Every target up to `max_target`.
pub(crate) async fn scan_with<F, Fut>(send: &F, max_target: u8) -> Result<Vec<LunInfo>>
where
    F: Fn(u8, u16, ScsiCommand) -> Fut,
    Fut: Future<Output = Result<Response>>,
{
    let mut found = Vec::new();
    for target in 0..=max_target {
        if let Some(luns) = scan_target_with(send, target).await? {
            found.extend(luns);
        }
    }
    Ok(found)
}

/// Sends the topology task's commands: round robin over the request
/// queues, with the retry policy and a timeout, without the error handler.
pub(crate) struct Prober {
    pub queues: Vec<Arc<SlotQueue>>,
    /// A [`QueueChoice::RoundRobin`](crate::QueueChoice::RoundRobin) picker.
    pub picker: QueuePicker,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub max_target: u8,
}

impl Prober {
    async fn send(&self, target: u8, lun: u16, command: ScsiCommand) -> Result<Response> {
        let addr = crate::response::lun_field(target, lun)?;
        let (cdb, data_out, data_in_len) = command.encode();
        let mut attempt = 0;
        loop {
            let n = self.picker.pick(self.queues.len(), |_| 0);
            let queue = self.queues.get(n).ok_or(Error::Closed)?;
            let deadline = Deadline::after(std::time::Instant::now(), self.timeout);
            let mut pending = queue
                .start(addr, &cdb, data_out, data_in_len, deadline)
                .await?;
            // On timeout the pending command is dropped; its slot comes back
            // when the device eventually answers.
            let done = match pending.wait(true).await? {
                Outcome::Done(done) => done,
                Outcome::Expired => {
                    return Err(Error::Timeout {
                        after: self.timeout,
                        recovered_by: RecoveryStep::NotRecovered,
                    })
                }
            };
            drop(pending);
            let r = to_response(&done, data_in_len)?;
            drop(done);
            match self.retry.should_retry(&r, attempt) {
                Some(delay) => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                None => return Ok(r),
            }
        }
    }

    async fn probe(&self, target: u8, lun: u16) -> Result<Option<LunInfo>> {
        probe_with(&|t, l, c| self.send(t, l, c), target, lun).await
    }

    async fn scan_target(&self, target: u8) -> Result<Option<Vec<LunInfo>>> {
        scan_target_with(&|t, l, c| self.send(t, l, c), target).await
    }

    async fn scan(&self) -> Result<Vec<LunInfo>> {
        scan_with(&|t, l, c| self.send(t, l, c), self.max_target).await
    }

    /// Applies one event to the model.
    async fn apply(&self, state: &watch::Sender<Topology>, ev: DeviceEvent) -> Result<()> {
        let reprobe = |lun: Lun| async move {
            let info = self.probe(lun.target, lun.lun).await?;
            state.send_modify(|t| match info {
                Some(i) => {
                    t.luns.insert((lun.target, lun.lun), i);
                }
                None => {
                    t.luns.remove(&(lun.target, lun.lun));
                }
            });
            Ok::<_, Error>(())
        };
        let rescan_target = |target: u8| async move {
            let found = self.scan_target(target).await?;
            state.send_modify(|t| t.replace_target(target, found.as_deref()));
            Ok::<_, Error>(())
        };
        match ev {
            DeviceEvent::TransportReset {
                lun,
                reason: ResetReason::Rescan,
            } if lun.lun == 0 => rescan_target(lun.target).await,
            DeviceEvent::TransportReset {
                lun,
                reason: ResetReason::Removed,
            } => {
                state.send_modify(|t| {
                    t.luns.remove(&(lun.target, lun.lun));
                });
                if lun.lun == 0 {
                    rescan_target(lun.target).await?;
                }
                Ok(())
            }
            DeviceEvent::TransportReset { lun, .. } | DeviceEvent::ParamChange { lun, .. } => {
                reprobe(lun).await
            }
            DeviceEvent::EventsMissed => {
                let found = self.scan().await?;
                state.send_modify(|t| t.replace_all(&found));
                Ok(())
            }
            DeviceEvent::AsyncNotify { .. } | DeviceEvent::Unknown { .. } => Ok(()),
        }
    }
}

/// The topology task: applies every event until the stream closes.
pub(crate) async fn follow(
    prober: Prober,
    state: Arc<watch::Sender<Topology>>,
    mut events: broadcast::Receiver<DeviceEvent>,
) {
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    dropped = n,
                    "topology fell behind the event stream: rescanning"
                );
                DeviceEvent::EventsMissed
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        debug!(?ev, "topology: applying event");
        match prober.apply(&state, ev).await {
            Ok(()) => info!(?ev, luns = state.borrow().luns.len(), "topology updated"),
            Err(Error::Closed) => return,
            Err(e) => warn!(?ev, error = %e, "topology: could not apply event"),
        }
    }
}
