//! How a queue waits once it runs dry: the modes, their names on command
//! lines and in configuration files, and the one rule that turns a mode and
//! a microsecond count into a [`Poll`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The cap of the adaptive spin budget when none is given: about what one
/// eventfd sleep and wake-up across vCPUs costs on a small VM (tens of µs).
/// Spinning longer than a wake-up costs never saves latency.
pub const DEFAULT_ADAPTIVE_CAP: Duration = Duration::from_micros(50);

/// How a queue waits for work once it runs dry (a daemon request queue for
/// new requests, the driver's completion path for completions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Sleep on the eventfd at once, with notifications enabled.
    Off,
    /// Spin while spinning finds work soon enough, within a budget that
    /// follows the observed gaps between arrivals and never exceeds `cap`;
    /// back off to sleeping when spinning does not pay or hurts (more
    /// spinners than CPUs, spins that keep ending empty, the spinner being
    /// preempted). See [`crate::Poller`].
    Adaptive {
        /// Longest spin.
        cap: Duration,
    },
    /// Spin this long every time, whatever it finds (for dedicated cores).
    Fixed(Duration),
}

impl Poll {
    /// Adaptive polling with the default cap.
    pub const ADAPTIVE: Poll = Poll::Adaptive {
        cap: DEFAULT_ADAPTIVE_CAP,
    };

    /// The wait a mode (`--poll`) and a microsecond count (`--poll-us`)
    /// describe, each possibly absent; `default` when neither is given.
    ///
    /// | mode       | µs      | result                     |
    /// |------------|---------|----------------------------|
    /// | —          | —       | `default`                  |
    /// | —          | 0       | `Off`                      |
    /// | —          | N > 0   | `Fixed(N)`                 |
    /// | `off`      | — or 0  | `Off`                      |
    /// | `off`      | N > 0   | error                      |
    /// | `adaptive` | —       | `Adaptive` with the default cap |
    /// | `adaptive` | N > 0   | `Adaptive { cap: N }`      |
    /// | `adaptive` | 0       | error                      |
    pub fn resolve(
        mode: Option<PollMode>,
        us: Option<u64>,
        default: Poll,
    ) -> Result<Poll, PollError> {
        let us = us.map(Duration::from_micros);
        match (mode, us) {
            (None, None) => Ok(default),
            (None, Some(d)) if d.is_zero() => Ok(Poll::Off),
            (None, Some(d)) => Ok(Poll::Fixed(d)),
            (Some(PollMode::Off), None) => Ok(Poll::Off),
            (Some(PollMode::Off), Some(d)) if d.is_zero() => Ok(Poll::Off),
            (Some(PollMode::Off), Some(d)) => Err(PollError::SpinWhenOff(d.as_micros() as u64)),
            (Some(PollMode::Adaptive), None) => Ok(Poll::ADAPTIVE),
            (Some(PollMode::Adaptive), Some(d)) if d.is_zero() => Err(PollError::ZeroCap),
            (Some(PollMode::Adaptive), Some(cap)) => Ok(Poll::Adaptive { cap }),
        }
    }

    /// The mode name and microsecond count that [`Poll::resolve`] turns
    /// back into this value (what a resolved configuration prints).
    pub fn parts(self) -> (Option<PollMode>, u64) {
        match self {
            Poll::Off => (Some(PollMode::Off), 0),
            Poll::Adaptive { cap } => (Some(PollMode::Adaptive), cap.as_micros() as u64),
            Poll::Fixed(d) => (None, d.as_micros() as u64),
        }
    }

    /// Whether this wait ever spins.
    pub fn spins(self) -> bool {
        !matches!(self, Poll::Off)
    }
}

impl fmt::Display for Poll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Poll::Off => f.write_str("off"),
            Poll::Adaptive { cap } => write!(f, "adaptive (cap {} µs)", cap.as_micros()),
            Poll::Fixed(d) => write!(f, "fixed {} µs", d.as_micros()),
        }
    }
}

/// The named modes of `--poll` and of the configuration key `poll` (a
/// fixed spin is chosen with a microsecond count alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// [`Poll::Adaptive`].
    Adaptive,
    /// [`Poll::Off`].
    Off,
}

impl PollMode {
    /// Every mode with its name: the one table parsing, printing and help
    /// texts use.
    pub const ALL: [(PollMode, &'static str); 2] =
        [(PollMode::Adaptive, "adaptive"), (PollMode::Off, "off")];

    /// The name of this mode.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("?", |(_, n)| n)
    }
}

impl fmt::Display for PollMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PollMode {
    type Err = PollError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(m, _)| *m)
            .ok_or_else(|| PollError::UnknownMode(s.to_owned()))
    }
}

/// A mode and microsecond count that do not make a [`Poll`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// Not a mode name.
    #[error(
        "unknown poll mode {0:?}: use \"adaptive\" or \"off\" (a fixed spin is --poll-us N alone)"
    )]
    UnknownMode(String),
    /// `off` with a spin time.
    #[error("poll mode \"off\" never spins, yet a spin of {0} µs was given: drop one of them")]
    SpinWhenOff(u64),
    /// `adaptive` with a zero cap.
    #[error("poll mode \"adaptive\" needs a cap above 0 µs (or none for the default)")]
    ZeroCap,
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: fn(u64) -> Duration = Duration::from_micros;

    #[test]
    fn resolve_follows_the_table() {
        let d = Poll::Off;
        assert_eq!(Poll::resolve(None, None, d), Ok(d));
        assert_eq!(
            Poll::resolve(None, None, Poll::ADAPTIVE),
            Ok(Poll::ADAPTIVE)
        );
        assert_eq!(Poll::resolve(None, Some(0), Poll::ADAPTIVE), Ok(Poll::Off));
        assert_eq!(Poll::resolve(None, Some(50), d), Ok(Poll::Fixed(US(50))));
        assert_eq!(Poll::resolve(Some(PollMode::Off), None, d), Ok(Poll::Off));
        assert_eq!(
            Poll::resolve(Some(PollMode::Off), Some(0), d),
            Ok(Poll::Off)
        );
        assert_eq!(
            Poll::resolve(Some(PollMode::Off), Some(7), d),
            Err(PollError::SpinWhenOff(7))
        );
        assert_eq!(
            Poll::resolve(Some(PollMode::Adaptive), None, d),
            Ok(Poll::Adaptive {
                cap: DEFAULT_ADAPTIVE_CAP
            })
        );
        assert_eq!(
            Poll::resolve(Some(PollMode::Adaptive), Some(20), d),
            Ok(Poll::Adaptive { cap: US(20) })
        );
        assert_eq!(
            Poll::resolve(Some(PollMode::Adaptive), Some(0), d),
            Err(PollError::ZeroCap)
        );
    }

    #[test]
    fn parts_resolve_back_to_the_same_value() {
        for p in [
            Poll::Off,
            Poll::ADAPTIVE,
            Poll::Adaptive { cap: US(9) },
            Poll::Fixed(US(50)),
        ] {
            let (mode, us) = p.parts();
            assert_eq!(Poll::resolve(mode, Some(us), Poll::Off), Ok(p), "{p}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        for (m, n) in PollMode::ALL {
            assert_eq!(n.parse::<PollMode>(), Ok(m));
            assert_eq!(m.to_string(), n);
        }
        assert!(
            matches!("fixed".parse::<PollMode>(), Err(PollError::UnknownMode(s)) if s == "fixed")
        );
    }
}
