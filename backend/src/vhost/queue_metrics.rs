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

/// The counters of every request queue of a controller.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    queues: Vec<QueueCounters>,
}

impl QueueMetrics {
    /// Counters for `n` request queues.
    pub fn new(n: u16) -> Self {
        Self {
            queues: (0..n).map(|_| QueueCounters::default()).collect(),
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
