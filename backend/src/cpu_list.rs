//! CPU placement of request-queue workers: a CPU list (`--cpus 0-1`,
//! `cpus = "0,2-3"` per controller), checked against the CPUs this process
//! may run on, and pinning the calling thread to one of them.
//!
//! The list has the kernel's cpulist syntax (`/proc/self/status`
//! `Cpus_allowed_list`, `taskset -c`): CPU numbers and inclusive ranges,
//! comma-separated. Request queue *n*'s worker runs on the list's
//! `n mod len`-th CPU (round robin in the order given; a CPU may appear
//! twice to take two queues in a row).
//!
//! The affinity calls are nix's safe wrappers of `sched_getaffinity(2)` /
//! `sched_setaffinity(2)` (nix is already a dependency): no `unsafe` and no
//! new crate. `core_affinity` was the other candidate; it can only pin to a
//! "core id" it enumerates itself and cannot tell why a CPU is refused.

use std::fmt;
use std::str::FromStr;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Why a CPU list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// Not cpulist syntax.
    #[error("{0:?} is not a CPU list (numbers and ranges such as 0-1,3)")]
    Syntax(String),
    /// An empty list, or a range whose end is before its start.
    #[error("{0:?} names no CPU")]
    Empty(String),
    /// A CPU past what the kernel's CPU sets can hold.
    #[error("CPU {cpu} is past the largest CPU number {max}")]
    TooLarge {
        /// The CPU asked for.
        cpu: usize,
        /// The largest CPU number a CPU set holds.
        max: usize,
    },
    /// A CPU this process may not run on.
    #[error("CPU {cpu} is not in this process's CPU affinity mask ({allowed})")]
    NotAllowed {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs the process may run on, as a CPU list.
        allowed: String,
    },
    /// The kernel refused to tell or to set the affinity.
    #[error("{call}: {errno}")]
    Os {
        /// The system call.
        call: &'static str,
        /// Its error.
        errno: nix::errno::Errno,
    },
}

/// CPUs in the order given, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// The CPUs, in order.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// The CPU of request queue `queue` (round robin).
    pub fn for_queue(&self, queue: usize) -> usize {
        self.0[queue % self.0.len()]
    }

    /// Refuses a CPU the process may not run on (not in its affinity mask:
    /// offline, outside its cpuset, or outside a `taskset` it was started
    /// under), naming it and the CPUs allowed.
    pub fn check_allowed(&self) -> Result<(), CpuListError> {
        let mask = sched_getaffinity(Pid::from_raw(0)).map_err(|errno| CpuListError::Os {
            call: "sched_getaffinity",
            errno,
        })?;
        for &cpu in &self.0 {
            if !mask.is_set(cpu).unwrap_or(false) {
                return Err(CpuListError::NotAllowed {
                    cpu,
                    allowed: allowed_list(&mask),
                });
            }
        }
        Ok(())
    }
}

/// The CPUs of a mask as a compact CPU list.
fn allowed_list(mask: &CpuSet) -> String {
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| mask.is_set(c).unwrap_or(false))
        .collect();
    compact(&cpus)
}

/// `[0, 1, 2, 5]` → `0-2,5`.
fn compact(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), CpuListError> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|_| CpuListError::TooLarge {
        cpu,
        max: CpuSet::count() - 1,
    })?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|errno| CpuListError::Os {
        call: "sched_setaffinity",
        errno,
    })
}

impl FromStr for CpuList {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CpuListError::Syntax(s.to_string());
        let max = CpuSet::count() - 1;
        let number = |t: &str| -> Result<usize, CpuListError> {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let cpu: usize = t.parse().map_err(|_| syntax())?;
            if cpu > max {
                return Err(CpuListError::TooLarge { cpu, max });
            }
            Ok(cpu)
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (number(a)?, number(b)?);
                    if b < a {
                        return Err(CpuListError::Empty(part.trim().to_string()));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(number(part)?),
            }
        }
        if cpus.is_empty() {
            return Err(CpuListError::Empty(s.to_string()));
        }
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    /// Ranges where the list counts up by one, as the kernel prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&compact(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_ranges_in_order() {
        let l: CpuList = "0-2,5, 7".parse().unwrap();
        assert_eq!(l.cpus(), &[0, 1, 2, 5, 7]);
        assert_eq!(l.to_string(), "0-2,5,7");
        assert_eq!(
            (0..7).map(|q| l.for_queue(q)).collect::<Vec<_>>(),
            [0, 1, 2, 5, 7, 0, 1]
        );
        let l: CpuList = "1,0".parse().unwrap();
        assert_eq!(
            (l.for_queue(0), l.for_queue(1), l.to_string().as_str()),
            (1, 0, "1,0")
        );
        assert_eq!("3".parse::<CpuList>().unwrap().cpus(), &[3]);
    }

    #[test]
    fn refuses_what_is_not_a_cpu_list() {
        for bad in ["", "a", "1,,2", "-1", "1-", "0x1", "1.5", "1-2-3"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "3-1".parse::<CpuList>().unwrap_err(),
            CpuListError::Empty("3-1".into())
        );
        let e = "99999".parse::<CpuList>().unwrap_err().to_string();
        assert!(e.contains("CPU 99999 is past"), "{e}");
    }

    #[test]
    fn checks_the_list_against_this_process_mask() {
        let mask = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let first = (0..CpuSet::count())
            .find(|&c| mask.is_set(c).unwrap())
            .unwrap();
        let list: CpuList = first.to_string().parse().unwrap();
        list.check_allowed().unwrap();
        // The highest CPU a set holds is online on no machine this runs on.
        let far = CpuSet::count() - 1;
        let e = CpuList(vec![first, far]).check_allowed().unwrap_err();
        assert_eq!(
            e,
            CpuListError::NotAllowed {
                cpu: far,
                allowed: allowed_list(&mask)
            }
        );
        assert!(
            e.to_string().contains(&format!("CPU {far} is not in")),
            "{e}"
        );
    }

    #[test]
    fn compacts_runs() {
        assert_eq!(compact(&[0, 1, 2, 5, 6, 9]), "0-2,5-6,9");
        assert_eq!(compact(&[4]), "4");
    }
}
