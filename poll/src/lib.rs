//! Hybrid polling for virtqueues, one policy for both ends of the ring: a
//! daemon request queue waiting for new requests and the driver's
//! completion path waiting for used buffers.
//!
//! When a queue runs dry it may spin a while, watching its ring with
//! notifications still disabled (the peer neither kicks nor signals while
//! it spins), before it re-enables them (EVENT_IDX `avail_event` /
//! `used_event`, the NO_NOTIFY / NO_INTERRUPT flags, or a packed ring's
//! event suppression structure), checks the ring once more (the request
//! or completion published just before the re-enable would otherwise be
//! lost) and sleeps on its eventfd. [`Poll`] says whether and how long;
//! [`Poller`] is the state that makes the adaptive mode adapt.

mod mode;
mod policy;
mod spinners;

pub use mode::{Poll, PollError, PollMode, DEFAULT_ADAPTIVE_CAP};
pub use policy::{
    PollStats, Poller, Spin, SpinEnd, BACKOFF_MAX, BACKOFF_MIN, BUDGET_FLOOR, GAP_FACTOR,
    MISS_LIMIT, PREEMPTED, PROBE_EVERY,
};
pub use spinners::{spin_limit, spinning};
