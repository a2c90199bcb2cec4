//! PREEMPT AND ABORT's reach into other I_T nexuses (SPC-5 §5.14.11.2.5):
//! the tasks of the preempted I_T nexuses for the logical unit are aborted
//! as by ABORT TASK SET on each.
//!
//! The SCSI layer does not hold tasks: a transport that keeps commands of a
//! nexus waiting (the vhost device: commands held or delayed by fault
//! injection, transfers in flight in io_uring) registers a [`TaskSet`]
//! for that nexus here, and PREEMPT AND ABORT calls it for each preempted
//! one. A transport dropped (its connection ended) is forgotten.

use std::sync::{Mutex, Weak};

use super::state::Port;
use crate::scsi::lu::LogicalUnit;
use crate::scsi::nexus::Nexus;

/// The commands one I_T nexus has in its task sets.
pub trait TaskSet: Send + Sync {
    /// Aborts every command of the nexus for logical unit `lu` (ABORT TASK
    /// SET); returns when they are completed, with how many.
    fn abort_task_set(&self, lu: &LogicalUnit) -> usize;
}

type Registry = Vec<(Port, Weak<dyn TaskSet>)>;

static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers the task sets of `nexus` (replacing an earlier registration
/// of the same ports: a reconnected frontend).
pub fn register(nexus: &Nexus, tasks: Weak<dyn TaskSet>) {
    let port = Port::of(nexus);
    let mut r = registry();
    r.retain(|(p, w)| w.strong_count() > 0 && *p != port);
    r.push((port, tasks));
}

/// Aborts the tasks of the I_T nexus `port` for `lu`; how many.
pub fn abort(port: &Port, lu: &LogicalUnit) -> usize {
    let target = registry()
        .iter()
        .find(|(p, _)| p == port)
        .and_then(|(_, w)| w.upgrade());
    target.map_or(0, |t| t.abort_task_set(lu))
}
