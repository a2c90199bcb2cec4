//! Fault injection per logical unit: added latency, stalls, error sense on an
//! LBA range, a seeded failure rate and short data transfers.
//!
//! A [`FaultTable`] is shared (through `Arc`) by every request queue worker
//! of every device the daemon creates, and can be changed at run time by
//! whoever holds it: the `fault` field of a configuration-file LUN, the
//! `set_fault` / `clear_fault` control methods, tests.
//! With no fault configured the I/O path pays one relaxed atomic load.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use vscsi_backend::fault::{FaultSpec, FaultTable};
//!
//! let faults = Arc::new(FaultTable::default());
//! // LUN 0:1 holds every command until a TMF, a ring stop or a disconnect completes it.
//! faults.set(0, 1, FaultSpec { stall: true, ..Default::default() });
//! // LUN 0:0: 5 ms added latency, and MEDIUM ERROR on LBAs 100..108.
//! faults.set(0, 0, "latency=5ms,error=100+8".parse().unwrap());
//! assert_eq!(faults.get(0, 0).unwrap().latency, Some(Duration::from_millis(5)));
//! faults.clear(0, 1);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use vscsi_protocol::sense::{Sense, SenseKey};

/// An LBA range whose medium-access commands fail with `sense`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRange {
    /// First LBA of the range.
    pub lba: u64,
    /// Number of blocks in the range.
    pub blocks: u64,
    /// The sense data answered (CHECK CONDITION).
    pub sense: Sense,
}

/// A seeded random failure rate: the same seed and the same command order
/// give the same failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailRate {
    /// Failures per million medium-access commands.
    pub per_million: u32,
    /// Seed of the sequence.
    pub seed: u64,
    /// The sense data answered (CHECK CONDITION).
    pub sense: Sense,
}

/// Faults of one logical unit. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSpec {
    /// Added before each command runs. The queue's worker waits, so the
    /// commands behind it on the same request queue wait too (a slow
    /// device); a TMF that covers the waiting command cuts the wait short.
    pub latency: Option<Duration>,
    /// Commands are held and never complete until an ABORT TASK, ABORT
    /// TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET or I_T NEXUS RESET
    /// covers them, the driver stops the ring (GET_VRING_BASE) or disconnects.
    pub stall: bool,
    /// A held command survives ABORT TASK / ABORT TASK SET / CLEAR TASK
    /// SET (the TMF still answers FUNCTION COMPLETE): a device that ignores
    /// aborts, to exercise the driver's escalation to a LUN reset.
    pub ignore_abort: bool,
    /// A held command also survives LOGICAL UNIT RESET (only I_T NEXUS
    /// RESET, a ring stop or a disconnect completes it).
    pub ignore_lun_reset: bool,
    /// A held command also survives I_T NEXUS RESET: only a ring stop
    /// (GET_VRING_BASE, the driver's queue reset), a device reset or a
    /// disconnect completes it — I/O stuck below the device, which no TMF
    /// can cancel.
    pub ignore_target_reset: bool,
    /// Medium-access commands touching these ranges fail.
    pub error_ranges: Vec<ErrorRange>,
    /// Medium-access commands fail at this seeded rate.
    pub fail_rate: Option<FailRate>,
    /// Data-in is cut to at most this many bytes (the residual says so).
    pub short_transfer: Option<u32>,
}

impl FaultSpec {
    /// Whether this spec injects anything.
    pub fn is_empty(&self) -> bool {
        *self == FaultSpec::default()
    }
}

/// What the request queue does with one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Hold the command (stall).
    pub stall: bool,
    /// Answer CHECK CONDITION with this sense instead of running it.
    pub fail: Option<Sense>,
    /// Cap data-in at this many bytes.
    pub short_transfer: Option<u32>,
}

struct LunFaults {
    spec: FaultSpec,
    /// Commands seen (drives the failure sequence of a seeded spec).
    counter: AtomicU64,
}

/// Faults by (target, LUN), changeable at run time; see the module docs.
#[derive(Default)]
pub struct FaultTable {
    any: AtomicBool,
    luns: RwLock<HashMap<(u8, u16), Arc<LunFaults>>>,
    held_now: AtomicU64,
    held_total: AtomicU64,
    released_total: AtomicU64,
}

impl fmt::Debug for FaultTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let luns = self.luns.read().unwrap_or_else(|p| p.into_inner());
        let mut m = f.debug_map();
        for ((t, l), faults) in luns.iter() {
            m.entry(&format_args!("{t}:{l}"), &faults.spec);
        }
        m.finish()
    }
}

impl FaultTable {
    /// Sets (replaces) the faults of `target:lun`; an empty spec clears them.
    pub fn set(&self, target: u8, lun: u16, spec: FaultSpec) {
        let mut luns = self.luns.write().unwrap_or_else(|p| p.into_inner());
        if spec.is_empty() {
            luns.remove(&(target, lun));
        } else {
            tracing::info!(target, lun, ?spec, "fault injection set");
            luns.insert(
                (target, lun),
                Arc::new(LunFaults {
                    spec,
                    counter: AtomicU64::new(0),
                }),
            );
        }
        self.any.store(!luns.is_empty(), Ordering::Release);
    }

    /// Removes the faults of `target:lun`. Commands already held stay held
    /// until a TMF, ring stop or disconnect completes them.
    pub fn clear(&self, target: u8, lun: u16) {
        self.set(target, lun, FaultSpec::default());
    }

    /// Removes every fault.
    pub fn clear_all(&self) {
        let mut luns = self.luns.write().unwrap_or_else(|p| p.into_inner());
        luns.clear();
        self.any.store(false, Ordering::Release);
    }

    /// The faults of `target:lun`, if any.
    pub fn get(&self, target: u8, lun: u16) -> Option<FaultSpec> {
        if !self.active() {
            return None;
        }
        let luns = self.luns.read().unwrap_or_else(|p| p.into_inner());
        luns.get(&(target, lun)).map(|f| f.spec.clone())
    }

    /// Whether any fault is configured (one relaxed load).
    #[inline]
    pub fn active(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Commands held right now (stalled), over every device sharing this table.
    pub fn held_now(&self) -> u64 {
        self.held_now.load(Ordering::SeqCst)
    }

    /// Commands ever held.
    pub fn held_total(&self) -> u64 {
        self.held_total.load(Ordering::SeqCst)
    }

    /// Held commands completed (by TMF, ring stop or disconnect).
    pub fn released_total(&self) -> u64 {
        self.released_total.load(Ordering::SeqCst)
    }

    pub(crate) fn note_held(&self) {
        self.held_now.fetch_add(1, Ordering::SeqCst);
        self.held_total.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn note_released(&self, n: usize) {
        self.held_now.fetch_sub(n as u64, Ordering::SeqCst);
        self.released_total.fetch_add(n as u64, Ordering::SeqCst);
    }

    /// Whether held commands of `target:lun` survive a TMF of `level`
    /// (0: abort, 1: LOGICAL UNIT RESET, 2: I_T NEXUS RESET).
    pub(crate) fn survives(&self, target: u8, lun: u16, level: u8) -> bool {
        if !self.active() {
            return false;
        }
        let luns = self.luns.read().unwrap_or_else(|p| p.into_inner());
        luns.get(&(target, lun)).is_some_and(|f| match level {
            0 => f.spec.ignore_abort,
            1 => f.spec.ignore_lun_reset,
            _ => f.spec.ignore_target_reset,
        })
    }

    /// What to do with a command with `cdb` to `target:lun`; `None` when
    /// nothing is injected. Cheap when no fault is configured.
    #[inline]
    pub fn decide(&self, target: u8, lun: u16, cdb: &[u8]) -> Option<Decision> {
        if !self.active() {
            return None;
        }
        self.decide_slow(target, lun, cdb)
    }

    fn decide_slow(&self, target: u8, lun: u16, cdb: &[u8]) -> Option<Decision> {
        let faults = {
            let luns = self.luns.read().unwrap_or_else(|p| p.into_inner());
            luns.get(&(target, lun))?.clone()
        };
        let spec = &faults.spec;
        let n = faults.counter.fetch_add(1, Ordering::Relaxed);
        let mut d = Decision {
            delay: spec.latency,
            stall: spec.stall,
            fail: None,
            short_transfer: spec.short_transfer,
        };
        if let Some((lba, blocks)) = medium_range(cdb) {
            let end = lba.saturating_add(blocks.max(1));
            d.fail = spec
                .error_ranges
                .iter()
                .find(|r| lba < r.lba.saturating_add(r.blocks) && r.lba < end)
                .map(|r| r.sense.with_information(lba.max(r.lba)));
            if d.fail.is_none() {
                if let Some(rate) = spec.fail_rate {
                    if (splitmix64(rate.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % 1_000_000)
                        < u64::from(rate.per_million)
                    {
                        d.fail = Some(rate.sense);
                    }
                }
            }
        }
        Some(d)
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b))
}

/// The LBA range a medium-access CDB touches: (first LBA, blocks).
pub fn medium_range(cdb: &[u8]) -> Option<(u64, u64)> {
    let op = *cdb.first()?;
    let get = |r: std::ops::Range<usize>| cdb.get(r).map(be);
    match op {
        // READ(6), WRITE(6): 21-bit LBA, 0 blocks means 256.
        0x08 | 0x0A => {
            let lba = get(1..4)? & 0x1F_FFFF;
            let n = get(4..5)?;
            Some((lba, if n == 0 { 256 } else { n }))
        }
        // READ(10), WRITE(10), WRITE AND VERIFY(10), VERIFY(10), WRITE SAME(10).
        0x28 | 0x2A | 0x2E | 0x2F | 0x41 => Some((get(2..6)?, get(7..9)?)),
        // READ(12), WRITE(12).
        0xA8 | 0xAA => Some((get(2..6)?, get(6..10)?)),
        // READ(16), WRITE(16), WRITE AND VERIFY(16), VERIFY(16), WRITE SAME(16).
        0x88 | 0x8A | 0x8E | 0x8F | 0x93 => Some((get(2..10)?, get(10..14)?)),
        // COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS in byte 13.
        0x89 => Some((get(2..10)?, get(13..14)?)),
        _ => None,
    }
}

/// A malformed fault specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fault specification '{spec}': {why} (expected e.g. 'stall', 'latency=10ms', 'error=100+8:3/11/00', 'fail=0.01@42', 'short=512', comma separated)")]
pub struct FaultParseError {
    spec: String,
    why: String,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

fn parse_sense(s: &str) -> Option<Sense> {
    let mut it = s.split('/');
    let mut next = || u8::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok();
    let key = SenseKey::from_u8(next()?)?;
    let (asc, ascq) = (next()?, next()?);
    Some(Sense::new(key, asc, ascq))
}

impl FromStr for FaultSpec {
    type Err = FaultParseError;

    /// Parses `stall`, `ignore-abort`, `ignore-lun-reset`,
    /// `ignore-target-reset`, `latency=DUR`
    /// (`us`/`ms`/`s`), `error=LBA+BLOCKS[:K/ASC/ASCQ]` (hex sense, default
    /// 3/11/00 MEDIUM ERROR), `fail=RATE[@SEED][:K/ASC/ASCQ]` (RATE a
    /// fraction, default sense 4/44/00), `short=BYTES`; comma separated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| FaultParseError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let mut spec = FaultSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            match k {
                "stall" => spec.stall = true,
                "ignore-abort" => spec.ignore_abort = true,
                "ignore-lun-reset" => spec.ignore_lun_reset = true,
                "ignore-target-reset" => spec.ignore_target_reset = true,
                "latency" => {
                    spec.latency = Some(parse_duration(v).ok_or_else(|| err("bad latency"))?)
                }
                "short" => spec.short_transfer = Some(v.parse().map_err(|_| err("bad short"))?),
                "error" => {
                    let (range, sense) = v.split_once(':').unwrap_or((v, "3/11/00"));
                    let (lba, blocks) = range
                        .split_once('+')
                        .ok_or_else(|| err("error needs LBA+BLOCKS"))?;
                    spec.error_ranges.push(ErrorRange {
                        lba: lba.parse().map_err(|_| err("bad LBA"))?,
                        blocks: blocks.parse().map_err(|_| err("bad block count"))?,
                        sense: parse_sense(sense).ok_or_else(|| err("bad sense K/ASC/ASCQ"))?,
                    });
                }
                "fail" => {
                    let (rate, sense) = v.split_once(':').unwrap_or((v, "4/44/00"));
                    let (rate, seed) = rate.split_once('@').unwrap_or((rate, "0"));
                    let rate: f64 = rate.parse().map_err(|_| err("bad rate"))?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(err("rate must be between 0 and 1"));
                    }
                    spec.fail_rate = Some(FailRate {
                        per_million: (rate * 1e6) as u32,
                        seed: seed.parse().map_err(|_| err("bad seed"))?,
                        sense: parse_sense(sense).ok_or_else(|| err("bad sense K/ASC/ASCQ"))?,
                    });
                }
                _ => return Err(err(&format!("unknown fault '{k}'"))),
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_decides_nothing() {
        let t = FaultTable::default();
        assert!(!t.active());
        assert_eq!(t.decide(0, 0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), None);
        t.set(
            0,
            0,
            FaultSpec {
                stall: true,
                ..Default::default()
            },
        );
        assert!(t.active());
        assert_eq!(t.decide(0, 1, &[0]), None);
        assert!(t.decide(0, 0, &[0]).unwrap().stall);
        t.clear(0, 0);
        assert!(!t.active());
    }

    #[test]
    fn error_range_hits_overlapping_reads_only() {
        let t = FaultTable::default();
        t.set(0, 0, "error=100+8".parse().unwrap());
        let read10 = |lba: u32, n: u16| {
            let mut c = vec![0x28, 0];
            c.extend_from_slice(&lba.to_be_bytes());
            c.push(0);
            c.extend_from_slice(&n.to_be_bytes());
            c.push(0);
            c
        };
        let hit = t.decide(0, 0, &read10(96, 8)).unwrap().fail.unwrap();
        assert_eq!(
            (hit.key, hit.asc, hit.ascq),
            (SenseKey::MediumError, 0x11, 0)
        );
        assert!(t.decide(0, 0, &read10(108, 8)).unwrap().fail.is_none());
        assert!(t.decide(0, 0, &read10(92, 8)).unwrap().fail.is_none());
        assert!(t
            .decide(0, 0, &[0x12, 0, 0, 0, 36, 0])
            .unwrap()
            .fail
            .is_none());
    }

    #[test]
    fn seeded_rate_repeats() {
        let run = || {
            let t = FaultTable::default();
            t.set(0, 0, "fail=0.25@7".parse().unwrap());
            (0..200)
                .map(|_| {
                    t.decide(0, 0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
                        .unwrap()
                        .fail
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let n = a.iter().filter(|f| **f).count();
        assert!((25..75).contains(&n), "{n} failures of 200 at 25%");
    }

    #[test]
    fn parses_specs() {
        let s: FaultSpec = "stall,latency=1.5ms,short=512,fail=0.5@9:2/04/01"
            .parse()
            .unwrap();
        assert!(s.stall);
        assert_eq!(s.latency, Some(Duration::from_micros(1500)));
        assert_eq!(s.short_transfer, Some(512));
        let f = s.fail_rate.unwrap();
        assert_eq!(
            (f.per_million, f.seed, f.sense.key),
            (500_000, 9, SenseKey::NotReady)
        );
        assert!("bogus".parse::<FaultSpec>().is_err());
        assert!("error=5".parse::<FaultSpec>().is_err());
    }
}
