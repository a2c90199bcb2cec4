//! Surviving a restart of the device: noticing that it went away,
//! connecting again with backoff until [`DriverOptions::reconnect`]
//! passes, and replaying the set-up on the new connection (vhost-user
//! "Inflight I/O tracking": the frontend keeps its memory, its rings and
//! the inflight region; the new back-end resubmits what the old one took
//! and never completed).
//!
//! The replay: SET_OWNER, GET_FEATURES, the protocol features and
//! SET_FEATURES with exactly the features the driver runs with (a device
//! that no longer offers one of them is refused, and tried again until the
//! deadline), SET_MEM_TABLE with the same memfd, SET_INFLIGHT_FD with the
//! kept region, then each ring: with inflight tracking as it is
//! (SET_VRING_BASE = the driver's next avail index; the device resubmits
//! from the region and takes the rest from the avail ring), without it
//! zeroed after failing its commands with [`Error::Disconnected`]; then a
//! kick per ring.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::{error, info, warn};

use super::blocking;
use super::options::{DriverOptions, Features};
use crate::error::{Error, Result};
use crate::link::{watch_socket, Link, SocketWatch};
use crate::memory::SharedMemory;
use crate::queue::{SlotQueue, FAIL_DISCONNECTED, FAIL_GONE};
use crate::stats::ReconnectStats;
use crate::transport::vhost_user::{InflightRegion, VhostUserTransport};

/// First pause between two connection attempts; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What happened to the connection ([`crate::Driver::connection_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The device closed the connection; the driver reconnects (if
    /// [`DriverOptions::reconnect`] allows).
    Lost {
        /// Commands on the request queues at that moment.
        in_flight: usize,
    },
    /// A new connection is set up and the commands go on.
    Reconnected {
        /// From the loss to the end of the replayed set-up.
        after: Duration,
        /// Connection attempts it took.
        attempts: u32,
        /// Commands left on the rings for the new device, which resubmits
        /// them (inflight I/O tracking).
        carried: usize,
        /// Commands that failed with [`Error::Disconnected`] instead (no
        /// inflight tracking for these rings).
        failed: usize,
    },
    /// The device did not come back within the deadline: every command
    /// fails with [`Error::ReconnectDeadline`].
    GaveUp {
        /// From the loss to giving up.
        after: Duration,
        /// Commands that failed then.
        failed: usize,
        /// Why the last attempt failed.
        error: String,
    },
}

/// Everything a reconnect needs, shared by the driver and its reconnect task.
pub(super) struct Reconnector {
    pub path: PathBuf,
    pub mem: Arc<SharedMemory>,
    pub features: Features,
    pub opts: DriverOptions,
    pub transport: Arc<Mutex<VhostUserTransport>>,
    /// The region GET_INFLIGHT_FD returned at set-up (split rings only).
    pub inflight: Option<InflightRegion>,
    pub link: Arc<Link>,
    pub control: Arc<SlotQueue>,
    pub event_queue: Arc<SlotQueue>,
    pub queues: Vec<Arc<SlotQueue>>,
    pub events: broadcast::Sender<ConnectionEvent>,
    watch: Mutex<Option<SocketWatch>>,
    reconnects: AtomicU64,
    in_flight_at_loss: AtomicU64,
    carried: AtomicU64,
    outage_ns: AtomicU64,
    /// Nanoseconds of the last outage, `u64::MAX` before the first.
    last_outage_ns: AtomicU64,
}

/// What one successful replay did.
struct Replayed {
    carried: usize,
    failed: usize,
}

impl Reconnector {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        path: PathBuf,
        mem: Arc<SharedMemory>,
        features: Features,
        opts: DriverOptions,
        transport: Arc<Mutex<VhostUserTransport>>,
        inflight: Option<InflightRegion>,
        link: Arc<Link>,
        (control, event_queue, queues): (Arc<SlotQueue>, Arc<SlotQueue>, Vec<Arc<SlotQueue>>),
    ) -> Self {
        Self {
            path,
            mem,
            features,
            opts,
            transport,
            inflight,
            link,
            control,
            event_queue,
            queues,
            events: broadcast::channel(16).0,
            watch: Mutex::new(None),
            reconnects: AtomicU64::new(0),
            in_flight_at_loss: AtomicU64::new(0),
            carried: AtomicU64::new(0),
            outage_ns: AtomicU64::new(0),
            last_outage_ns: AtomicU64::new(u64::MAX),
        }
    }

    /// Starts watching the socket of `transport` (replacing any older watch).
    pub(super) fn watch(&self, transport: &VhostUserTransport) -> Result<()> {
        let w = watch_socket(transport.socket_fd()?, self.link.clone())?;
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        Ok(())
    }

    /// Stops watching (the driver closes).
    pub(super) fn stop(&self) {
        self.watch.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Whether commands in flight survive a reconnect (inflight tracking).
    pub(super) fn resubmits(&self) -> bool {
        self.inflight.is_some()
    }

    /// The reconnect counters.
    pub(super) fn stats(&self) -> ReconnectStats {
        let last = self.last_outage_ns.load(Ordering::Relaxed);
        ReconnectStats {
            disconnects: self.link.disconnects.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            in_flight_at_disconnect: self.in_flight_at_loss.load(Ordering::Relaxed),
            carried: self.carried.load(Ordering::Relaxed),
            resubmitted: self.queues.iter().map(|q| q.resubmitted()).sum(),
            failed: self.queues.iter().map(|q| q.disconnect_failures()).sum(),
            last_outage: (last != u64::MAX).then(|| Duration::from_nanos(last)),
            total_outage: Duration::from_nanos(self.outage_ns.load(Ordering::Relaxed)),
            gave_up: self.link.is_gone(),
        }
    }

    fn request_in_flight(&self) -> usize {
        self.queues.iter().map(|q| q.in_flight_now() as usize).sum()
    }

    /// The reconnect task: one reconnect per lost connection, until the
    /// device is gone for good.
    pub(super) async fn run(self: Arc<Self>) {
        loop {
            self.link.wait_lost().await;
            if self.link.is_up() || self.link.is_gone() {
                continue;
            }
            if !self.clone().reconnect().await {
                return;
            }
        }
    }

    /// One outage: attempts with backoff until one replays the set-up or
    /// the deadline passes. Returns false when it gave up.
    async fn reconnect(self: Arc<Self>) -> bool {
        let lost = Instant::now();
        self.stop();
        let in_flight = self.request_in_flight();
        self.in_flight_at_loss
            .fetch_add(in_flight as u64, Ordering::Relaxed);
        let _ = self.events.send(ConnectionEvent::Lost { in_flight });
        let Some(limit) = self.opts.reconnect else {
            warn!(socket = %self.path.display(), in_flight, "the device closed the connection; reconnecting is off");
            self.give_up(lost, Duration::ZERO, "reconnecting is off".into());
            return false;
        };
        warn!(socket = %self.path.display(), in_flight, deadline = ?limit, "the device closed the connection: reconnecting");
        let deadline = lost + limit;
        let mut pause = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let this = self.clone();
            let budget = deadline.saturating_duration_since(Instant::now());
            match blocking(move || this.replay(budget)).await {
                Ok(r) => {
                    let after = lost.elapsed();
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.carried.fetch_add(r.carried as u64, Ordering::Relaxed);
                    let ns = after.as_nanos() as u64;
                    self.outage_ns.fetch_add(ns, Ordering::Relaxed);
                    self.last_outage_ns.store(ns, Ordering::Relaxed);
                    self.link.restored();
                    // Watched only now: a loss reported while the link was
                    // still reconnecting would be ignored, and the socket
                    // watch is level-triggered, so a device that died since
                    // is seen at once.
                    let watched = {
                        let t = self.transport.lock().unwrap_or_else(|p| p.into_inner());
                        self.watch(&t)
                    };
                    if let Err(e) = watched {
                        error!(error = %e, "cannot watch the new connection");
                    }
                    info!(socket = %self.path.display(), ?after, attempts, carried = r.carried, failed = r.failed, "reconnected");
                    let _ = self.events.send(ConnectionEvent::Reconnected {
                        after,
                        attempts,
                        carried: r.carried,
                        failed: r.failed,
                    });
                    return true;
                }
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.give_up(lost, limit, e.to_string());
                        return false;
                    }
                    tracing::debug!(attempts, error = %e, "reconnect attempt failed");
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The device did not come back: everything in flight fails.
    fn give_up(&self, lost: Instant, deadline: Duration, last_error: String) {
        self.link.give_up(deadline, last_error.clone());
        let failed: usize = self.queues.iter().map(|q| q.fail_all(FAIL_GONE)).sum();
        self.control.fail_all(FAIL_GONE);
        self.event_queue.fail_all(FAIL_GONE);
        let after = lost.elapsed();
        error!(socket = %self.path.display(), ?after, failed, error = %last_error, "the device did not come back: giving up");
        let _ = self.events.send(ConnectionEvent::GaveUp {
            after,
            failed,
            error: last_error,
        });
    }

    /// One attempt: connects and replays the set-up. Blocking.
    fn replay(&self, budget: Duration) -> Result<Replayed> {
        let bits = self.features.bits;
        let mut t = VhostUserTransport::connect_timeout(
            &self.path,
            bits,
            budget.clamp(Duration::from_millis(100), self.opts.timeout),
        )?;
        if t.features() != bits {
            return Err(Error::BadConfig(format!(
                "the device came back with features {:#x}; the driver runs with {bits:#x}",
                t.features()
            )));
        }
        let vrings = 2 + u64::from(self.features.queue_count);
        let offered = u64::from(t.config().num_queues.get());
        let total = t.queue_num()?.unwrap_or(vrings);
        if offered < u64::from(self.features.queue_count) || total < vrings {
            return Err(Error::BadConfig(format!(
                "the device came back with {offered} request queues; the driver uses {}",
                self.features.queue_count
            )));
        }
        t.set_memory(&self.mem)?;
        let carry = match &self.inflight {
            Some(region) if t.has_inflight() => {
                t.set_inflight(region)?;
                true
            }
            _ => false,
        };
        let mut current = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        let rings = [&self.control, &self.event_queue]
            .into_iter()
            .chain(self.queues.iter());
        let (mut carried, mut failed) = (0, 0);
        for (vq, q) in rings.enumerate() {
            let request = vq >= 2;
            let start = |ring: &_, kick: &_, call: &_| t.start_vring(vq, ring, kick, call);
            if carry {
                let n = q.carry_over(start)?;
                carried += if request { n } else { 0 };
            } else {
                let n = q.reset_failing(FAIL_DISCONNECTED, start)?;
                failed += if request { n } else { 0 };
            }
        }
        *current = t;
        Ok(Replayed { carried, failed })
    }
}
