//! Where request-queue workers run: with a CPU list (`--cpus`, `cpus` in a
//! controller's table), request queue *n*'s worker thread pins itself to
//! the list's `n mod len`-th CPU the first time it handles an event (the
//! frontend enabling its ring is one), before it serves a request; the
//! io_uring and NBD helper threads it starts later inherit the CPU.
//! Without a list the workers run where the scheduler puts them.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, warn};

use crate::cpu_list::{pin_current_thread, CpuList};

/// The CPU placement of one device's request-queue workers.
#[derive(Debug, Default)]
pub struct Placement {
    cpus: Option<CpuList>,
    /// Per request queue: its worker has been placed (only that worker
    /// reads and writes its own flag).
    placed: Vec<AtomicBool>,
}

impl Placement {
    /// Placement of `queues` request-queue workers over `cpus`.
    pub fn new(cpus: Option<CpuList>, queues: usize) -> Self {
        Self {
            placed: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            cpus,
        }
    }

    /// Called on request queue `queue`'s worker thread for each event: pins
    /// it the first time. One relaxed load afterwards.
    pub fn place_current(&self, queue: usize) {
        let Some(cpus) = &self.cpus else { return };
        let Some(flag) = self.placed.get(queue) else {
            return;
        };
        if flag.load(Ordering::Relaxed) {
            return;
        }
        flag.store(true, Ordering::Relaxed);
        let cpu = cpus.for_queue(queue);
        match pin_current_thread(cpu) {
            Ok(()) => debug!(queue, cpu, "request queue worker pinned"),
            // The list was checked against the process's mask at start; a
            // cpuset changed since (or a hot-unplugged CPU) leaves the
            // worker where it was. Once per worker and connection.
            Err(e) => {
                warn!(queue, cpu, error = %e, "cannot pin the request queue worker: it runs unpinned")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's allowed CPUs, from the kernel.
    fn own_cpus() -> Vec<usize> {
        use nix::sched::{sched_getaffinity, CpuSet};
        let set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    #[test]
    fn a_worker_is_pinned_once_to_its_queues_cpu() {
        let first = own_cpus()[0];
        // Queue 1 of a list of one CPU: round robin gives that CPU.
        let p = Placement::new(Some(first.to_string().parse().unwrap()), 2);
        std::thread::spawn(move || {
            p.place_current(1);
            assert_eq!(own_cpus(), vec![first]);
            assert!(p.placed[1].load(Ordering::Relaxed));
            assert!(!p.placed[0].load(Ordering::Relaxed));
            // A queue past the list's device is ignored.
            p.place_current(7);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn without_a_list_nothing_moves() {
        let before = own_cpus();
        std::thread::spawn(move || {
            Placement::new(None, 2).place_current(0);
            assert_eq!(own_cpus(), before);
        })
        .join()
        .unwrap();
    }
}
