//! Per request queue counters of a controller, kept across connections.
//!
//! Each queue's counters sit on their own cache line and are only written by
//! that queue's worker, so counting shares nothing between queues.

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters of one request queue.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct QueueCounters {
    /// Requests taken off the ring and completed.
    pub requests: AtomicU64,
    /// Times the worker woke up and found work (one batch each).
    pub batches: AtomicU64,
    /// Used-buffer notifications sent to the driver (call eventfd writes).
    pub notifications: AtomicU64,
}

impl QueueCounters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a misbehaving frontend did to a controller, so an operator sees it.
/// Written only when something goes wrong, never on the good path.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct TrustCounters {
    /// Queues stopped because the frontend broke the ring contract.
    pub broken_rings: AtomicU64,
    /// Chains completed with an error because they were malformed.
    pub malformed_chains: AtomicU64,
    /// Log lines the frontend triggered that were rate-limited away.
    pub log_suppressed: AtomicU64,
    /// Connections that ended with a protocol error.
    pub dropped_connections: AtomicU64,
    /// The number of the connection being served (1 for the first), for logs.
    pub connection: AtomicU64,
}

impl TrustCounters {
    /// Counts one event.
    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(broken_rings, malformed_chains, log_suppressed, dropped_connections)`.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&self.broken_rings),
            g(&self.malformed_chains),
            g(&self.log_suppressed),
            g(&self.dropped_connections),
        )
    }
}

/// What restarts of the daemon under a running frontend brought back, per
/// controller (vhost-user "Inflight I/O tracking"). Written once per
/// reconnect and once per request resubmitted, never on the good path.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ReconnectCounters {
    /// Connections whose frontend handed over (SET_INFLIGHT_FD) an inflight
    /// region it kept from an earlier connection: a frontend reconnecting
    /// to this daemon, or to an earlier one that was restarted or upgraded.
    pub reconnects: AtomicU64,
    /// Requests taken from an inflight region and run again.
    pub resubmitted: AtomicU64,
}

impl ReconnectCounters {
    /// `(reconnects, resubmitted)`.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.reconnects.load(Ordering::Relaxed),
            self.resubmitted.load(Ordering::Relaxed),
        )
    }
}

/// The counters of every request queue of a controller.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    queues: Vec<QueueCounters>,
    /// Per controller: what frontends did wrong.
    pub trust: TrustCounters,
    /// Per controller: reconnects with an inflight region, resubmissions.
    pub reconnect: ReconnectCounters,
}

impl QueueMetrics {
    /// Counters for `n` request queues.
    pub fn new(n: u16) -> Self {
        Self {
            queues: (0..n).map(|_| QueueCounters::default()).collect(),
            trust: TrustCounters::default(),
            reconnect: ReconnectCounters::default(),
        }
    }

    /// Request queue `index`'s counters, if it is counted.
    pub fn queue(&self, index: u16) -> Option<&QueueCounters> {
        self.queues.get(index as usize)
    }

    /// Every queue: `(index, requests, batches, notifications)`.
    pub fn snapshot(&self) -> Vec<(u16, u64, u64, u64)> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
                (i as u16, g(&c.requests), g(&c.batches), g(&c.notifications))
            })
            .collect()
    }
}
