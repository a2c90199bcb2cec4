//! The hybrid polling policy of one queue: when it runs dry, spin for a
//! while watching its ring, then re-enable notifications and sleep on the
//! eventfd. [`Poller`] decides how long, from what spinning found before.
//!
//! Adaptive mode (in the spirit of Linux's hybrid io_poll and SPDK's
//! adaptive interrupt mode):
//!
//! - **Budget from the gaps.** A spin that finds work after `w` feeds `w`
//!   into a running average of the gaps between arrivals; the next budget
//!   is [`GAP_FACTOR`] times that average, at least [`BUDGET_FLOOR`], at
//!   most the cap. A gap longer than the budget is not worth a spin: the
//!   eventfd wake-up it would save costs about as much as the cap.
//! - **Empty spins shrink it.** A spin that ends with nothing halves the
//!   budget; [`MISS_LIMIT`] of them in a row switch the queue to sleeping
//!   (interrupt mode). An idle queue therefore costs one spin, then no CPU.
//! - **Re-arming.** In interrupt mode a wake-up that came sooner than the
//!   cap after going to sleep re-arms the full budget (spinning would have
//!   caught it), and every [`PROBE_EVERY`]th wake-up tries one spin anyway,
//!   so two peers that both fell asleep find their way back to spinning.
//! - **Spinning that hurts backs off.** At most [`crate::spin_limit`]
//!   threads of the process spin at once (one CPU is always left to the
//!   threads that produce the work), and a spinner that notices it was
//!   preempted (two consecutive clock reads more than [`PREEMPTED`] apart:
//!   some other thread needed its CPU, maybe the very peer it waits for)
//!   stops at once and sleeps through its next idle periods, twice as many
//!   each time it happens again ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]).
//!
//! Fixed mode spins its whole time every time (for dedicated cores), and
//! off never spins. Nothing here allocates or takes a lock.

use std::time::{Duration, Instant};

use crate::mode::Poll;
use crate::spinners::SpinSlot;

/// Smallest adaptive budget: shorter spins rarely catch anything.
pub const BUDGET_FLOOR: Duration = Duration::from_micros(5);
/// The budget is this many times the average gap that spins found.
pub const GAP_FACTOR: u32 = 4;
/// Empty spins in a row after which an adaptive queue sleeps at once.
pub const MISS_LIMIT: u32 = 4;
/// In interrupt mode, one spin is tried every this many wake-ups.
pub const PROBE_EVERY: u32 = 32;
/// A jump of the clock this long between two reads of one spin means the
/// spinner lost its CPU.
pub const PREEMPTED: Duration = Duration::from_micros(20);
/// Idle periods slept through after the first preemption.
pub const BACKOFF_MIN: u32 = 8;
/// The longest back-off, in idle periods.
pub const BACKOFF_MAX: u32 = 1024;
/// Clean spins (no preemption) after which the back-off length halves.
const BACKOFF_DECAY: u32 = 256;

/// How a call of [`Poller::spin_for`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinEnd {
    /// The work check said yes.
    Found,
    /// The spin's budget ran out with nothing found (or the spinner was
    /// preempted): re-enable notifications and sleep.
    Expired,
    /// The slice given to this call ran out; the spin goes on with another
    /// call (after the caller let others run).
    Sliced,
    /// Too many threads of the process spin already: sleep.
    Refused,
}

/// One spin in progress, from [`Poller::begin`].
#[derive(Debug)]
pub struct Spin {
    start: Instant,
    deadline: Instant,
}

impl Spin {
    /// When the queue ran dry.
    pub fn started(&self) -> Instant {
        self.start
    }
}

/// Counters of one poller (what its spins did).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Spins started.
    pub spins: u64,
    /// Spins that found work.
    pub found: u64,
    /// Spins that ran out.
    pub expired: u64,
    /// Spins ended because the spinner was preempted.
    pub preempted: u64,
    /// Spins refused: too many spinners in the process.
    pub refused: u64,
    /// Idle periods slept without spinning (interrupt mode, back-off).
    pub slept: u64,
}

/// The polling state of one queue; owned by the one thread or task that
/// serves it.
#[derive(Debug)]
pub struct Poller {
    poll: Poll,
    /// Current adaptive budget in ns (0: interrupt mode).
    budget: u64,
    /// Running average of the gaps spins found, in ns.
    avg_gap: u64,
    misses: u32,
    /// Idle periods still to sleep through (back-off).
    cooldown: u32,
    /// Length of the next back-off.
    backoff: u32,
    /// Spins since the last preemption.
    clean: u32,
    /// Wake-ups in interrupt mode since the last probe.
    asleep_wakes: u32,
    stats: PollStats,
}

impl Poller {
    /// A poller for `poll`; an adaptive one starts with its whole cap.
    pub fn new(poll: Poll) -> Self {
        let budget = match poll {
            Poll::Adaptive { cap } => nanos(cap),
            _ => 0,
        };
        Self {
            poll,
            budget,
            avg_gap: 0,
            misses: 0,
            cooldown: 0,
            backoff: BACKOFF_MIN,
            clean: 0,
            asleep_wakes: 0,
            stats: PollStats::default(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Poll {
        self.poll
    }

    /// The current budget (the next spin's length).
    pub fn budget(&self) -> Duration {
        match self.poll {
            Poll::Off => Duration::ZERO,
            Poll::Fixed(d) => d,
            Poll::Adaptive { .. } => Duration::from_nanos(self.budget),
        }
    }

    /// What the spins did so far.
    pub fn stats(&self) -> PollStats {
        self.stats
    }

    /// The queue ran dry at `now`: a spin to run, or `None` to sleep now.
    pub fn begin(&mut self, now: Instant) -> Option<Spin> {
        let budget = match self.poll {
            Poll::Off => return None,
            Poll::Fixed(d) => d,
            Poll::Adaptive { cap } => {
                if self.cooldown > 0 {
                    self.cooldown -= 1;
                    self.stats.slept += 1;
                    return None;
                }
                if self.budget == 0 {
                    if self.asleep_wakes < PROBE_EVERY {
                        self.stats.slept += 1;
                        return None;
                    }
                    // A probe: one spin with the whole cap.
                    self.asleep_wakes = 0;
                    self.misses = MISS_LIMIT - 1;
                    self.budget = nanos(cap);
                }
                Duration::from_nanos(self.budget)
            }
        };
        self.stats.spins += 1;
        Some(Spin {
            start: now,
            deadline: now + budget,
        })
    }

    /// Spins on `work` until it says yes, the spin's budget runs out, or
    /// `slice` (if any) passed in this call. Takes one of the process's
    /// spinner slots for the call (adaptive mode; refused when none is
    /// free).
    pub fn spin_for(
        &mut self,
        spin: &mut Spin,
        slice: Option<Duration>,
        mut work: impl FnMut() -> bool,
    ) -> SpinEnd {
        let adaptive = matches!(self.poll, Poll::Adaptive { .. });
        let _slot = if adaptive {
            match SpinSlot::take() {
                Some(s) => Some(s),
                None => {
                    self.stats.refused += 1;
                    return SpinEnd::Refused;
                }
            }
        } else {
            None
        };
        let mut last = Instant::now();
        let until = slice.map_or(spin.deadline, |s| spin.deadline.min(last + s));
        loop {
            if work() {
                self.found(last.saturating_duration_since(spin.start));
                return SpinEnd::Found;
            }
            let now = Instant::now();
            if adaptive && now.saturating_duration_since(last) > PREEMPTED {
                self.preempted();
                return SpinEnd::Expired;
            }
            last = now;
            if now >= spin.deadline {
                self.expired();
                return SpinEnd::Expired;
            }
            if now >= until {
                return SpinEnd::Sliced;
            }
            std::hint::spin_loop();
        }
    }

    /// [`Poller::begin`] and [`Poller::spin_for`] in one call, without a
    /// slice: whether `work` said yes before the spin ended (`false`: sleep).
    pub fn spin(&mut self, work: impl FnMut() -> bool) -> bool {
        match self.begin(Instant::now()) {
            Some(mut s) => self.spin_for(&mut s, None, work) == SpinEnd::Found,
            None => false,
        }
    }

    /// The queue woke on its eventfd `slept` after going to sleep.
    pub fn woke(&mut self, slept: Duration) {
        let Poll::Adaptive { cap } = self.poll else {
            return;
        };
        if self.budget == 0 && self.cooldown == 0 {
            if slept < cap {
                // Spinning this long would have caught it.
                self.budget = nanos(cap);
                self.misses = 0;
            } else {
                self.asleep_wakes = self.asleep_wakes.saturating_add(1);
            }
        }
    }

    /// A spin found work `waited` after the queue ran dry.
    fn found(&mut self, waited: Duration) {
        self.stats.found += 1;
        let Poll::Adaptive { cap } = self.poll else {
            return;
        };
        let w = nanos(waited);
        self.avg_gap = if self.avg_gap == 0 {
            w
        } else {
            (3 * self.avg_gap + w) / 4
        };
        self.misses = 0;
        self.budget = (self.avg_gap * u64::from(GAP_FACTOR)).clamp(nanos(BUDGET_FLOOR), nanos(cap));
        self.clean();
    }

    /// A spin ran out.
    fn expired(&mut self) {
        self.stats.expired += 1;
        if !matches!(self.poll, Poll::Adaptive { .. }) {
            return;
        }
        self.misses += 1;
        self.budget = if self.misses >= MISS_LIMIT {
            0
        } else {
            (self.budget / 2).max(nanos(BUDGET_FLOOR))
        };
        self.clean();
    }

    /// The spinner lost its CPU: back off.
    fn preempted(&mut self) {
        self.stats.preempted += 1;
        self.cooldown = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.clean = 0;
        self.budget = (self.budget / 2).max(nanos(BUDGET_FLOOR));
    }

    fn clean(&mut self) {
        self.clean += 1;
        if self.clean >= BACKOFF_DECAY {
            self.clean = 0;
            self.backoff = (self.backoff / 2).max(BACKOFF_MIN);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_micros(50);
    const US: fn(u64) -> Duration = Duration::from_micros;

    fn adaptive() -> Poller {
        Poller::new(Poll::Adaptive { cap: CAP })
    }

    #[test]
    fn off_never_spins_and_fixed_always_spins_its_time() {
        let mut p = Poller::new(Poll::Off);
        assert!(p.begin(Instant::now()).is_none());
        let mut p = Poller::new(Poll::Fixed(US(30)));
        for _ in 0..10 {
            p.expired();
            let s = p.begin(Instant::now()).unwrap();
            assert_eq!(s.deadline - s.start, US(30));
        }
    }

    #[test]
    fn budget_follows_the_gaps_within_floor_and_cap() {
        let mut p = adaptive();
        assert_eq!(p.budget(), CAP, "starts optimistic");
        for _ in 0..20 {
            p.found(US(2));
        }
        assert_eq!(p.budget(), US(8));
        for _ in 0..20 {
            p.found(Duration::from_nanos(100));
        }
        assert_eq!(p.budget(), BUDGET_FLOOR);
        for _ in 0..20 {
            p.found(US(40));
        }
        assert_eq!(p.budget(), CAP);
    }

    #[test]
    fn empty_spins_halve_the_budget_then_switch_to_sleeping() {
        let mut p = adaptive();
        p.expired();
        assert_eq!(p.budget(), US(25));
        p.expired();
        p.expired();
        assert!(p.begin(Instant::now()).is_some(), "still spinning");
        p.expired();
        assert_eq!(p.budget(), Duration::ZERO);
        assert!(p.begin(Instant::now()).is_none(), "interrupt mode");
        // A found spin in between starts the count again.
        let mut p = adaptive();
        for _ in 0..10 {
            p.expired();
            p.expired();
            p.found(US(10));
        }
        assert!(p.budget() > Duration::ZERO);
    }

    #[test]
    fn a_quick_wake_up_re_arms_and_long_sleeps_probe_now_and_then() {
        let mut p = adaptive();
        for _ in 0..MISS_LIMIT {
            p.expired();
        }
        // Long sleeps: an idle queue stays asleep, with a probe every PROBE_EVERY.
        let mut spins = 0;
        for _ in 0..(PROBE_EVERY * 4) {
            p.woke(Duration::from_millis(5));
            if let Some(_s) = p.begin(Instant::now()) {
                spins += 1;
                p.expired();
            }
        }
        assert_eq!(spins, 4);
        // A wake-up sooner than the cap re-arms the whole budget.
        p.woke(US(10));
        assert_eq!(p.budget(), CAP);
    }

    #[test]
    fn preemption_backs_off_for_more_idle_periods_each_time() {
        let mut p = adaptive();
        p.preempted();
        let sleeps = (0..100)
            .take_while(|_| p.begin(Instant::now()).is_none())
            .count();
        assert_eq!(sleeps, BACKOFF_MIN as usize);
        p.preempted();
        let sleeps = (0..100)
            .take_while(|_| p.begin(Instant::now()).is_none())
            .count();
        assert_eq!(sleeps, 2 * BACKOFF_MIN as usize);
        for _ in 0..20 {
            p.preempted();
        }
        assert_eq!(p.cooldown, BACKOFF_MAX);
        assert_eq!(p.stats().preempted, 22);
    }

    #[test]
    fn spin_finds_work_and_reports_expiry() {
        let mut p = Poller::new(Poll::Fixed(US(200)));
        let mut n = 0;
        assert!(p.spin(|| {
            n += 1;
            n == 50
        }));
        assert!(!p.spin(|| false));
        let s = p.stats();
        assert_eq!((s.spins, s.found, s.expired), (2, 1, 1));
        // A slice ends the call early without ending the spin.
        let mut p = Poller::new(Poll::Fixed(Duration::from_secs(10)));
        let mut s = p.begin(Instant::now()).unwrap();
        assert_eq!(p.spin_for(&mut s, Some(US(20)), || false), SpinEnd::Sliced);
        assert_eq!(p.spin_for(&mut s, Some(US(20)), || true), SpinEnd::Found);
    }
}
