//! Which completed commands are worth sending again, and when.

use std::time::Duration;

use vscsi_protocol::sense::{Sense, SenseKey};
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

use crate::response::Response;

/// The retry policy (Linux sd/scsi_lib-like).
///
/// Retried: UNIT ATTENTION (at once: the condition is reported once),
/// BUSY, TASK SET FULL, NOT READY with LOGICAL UNIT IS IN PROCESS OF
/// BECOMING READY (04h/01h) and the virtio BUSY and RESET responses (a reset
/// caused by someone else), with exponential backoff from `backoff` up to
/// `max_backoff`. Never retried: every other CHECK CONDITION (ILLEGAL
/// REQUEST, DATA PROTECT, MEDIUM ERROR, HARDWARE ERROR...) and the other
/// virtio responses.
///
/// ```
/// use std::time::Duration;
/// use vscsi_driver::RetryPolicy;
/// let patient = RetryPolicy { max_retries: 20, backoff: Duration::from_millis(50), ..RetryPolicy::default() };
/// assert!(RetryPolicy::NONE.max_retries == 0 && patient.max_retries == 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry).
    pub max_retries: u32,
    /// First backoff delay.
    pub backoff: Duration,
    /// Largest backoff delay.
    pub max_backoff: Duration,
    /// Retry UNIT ATTENTION.
    pub unit_attention: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            unit_attention: true,
        }
    }
}

impl RetryPolicy {
    /// Never retry: every completion goes to the caller.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_retries: 0,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        unit_attention: false,
    };

    /// `Some(delay)` when `r` should be retried after `attempt` earlier retries.
    pub fn should_retry(&self, r: &Response, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        let backoff = || {
            self.backoff
                .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .min(self.max_backoff)
        };
        match VirtioResponse::from_u8(r.response) {
            Some(VirtioResponse::Ok) => {}
            Some(VirtioResponse::Busy | VirtioResponse::Reset) => return Some(backoff()),
            _ => return None,
        }
        match r.status {
            status::BUSY | status::TASK_SET_FULL => Some(backoff()),
            status::CHECK_CONDITION => {
                let sense = Sense::decode(&r.sense).ok()?;
                match sense.key {
                    SenseKey::UnitAttention if self.unit_attention => Some(Duration::ZERO),
                    SenseKey::NotReady if (sense.asc, sense.ascq) == (0x04, 0x01) => {
                        Some(backoff())
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(key: SenseKey, asc: u8, ascq: u8) -> Response {
        Response {
            response: 0,
            status: status::CHECK_CONDITION,
            sense: Sense::new(key, asc, ascq).to_fixed().to_vec(),
            residual: 0,
            data: vec![],
        }
    }

    #[test]
    fn retries_transient_conditions_only() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.should_retry(&cc(SenseKey::UnitAttention, 0x29, 0), 0),
            Some(Duration::ZERO)
        );
        assert_eq!(
            p.should_retry(&cc(SenseKey::NotReady, 4, 1), 2),
            Some(Duration::from_millis(40))
        );
        assert_eq!(p.should_retry(&cc(SenseKey::NotReady, 0x3A, 0), 0), None);
        assert_eq!(
            p.should_retry(&cc(SenseKey::IllegalRequest, 0x24, 0), 0),
            None
        );
        assert_eq!(p.should_retry(&cc(SenseKey::DataProtect, 0x27, 0), 0), None);
        assert_eq!(p.should_retry(&cc(SenseKey::MediumError, 0x11, 0), 0), None);
        let busy = Response {
            status: status::BUSY,
            ..cc(SenseKey::NoSense, 0, 0)
        };
        assert_eq!(p.should_retry(&busy, 0), Some(Duration::from_millis(10)));
        assert_eq!(p.should_retry(&busy, 5), None);
        assert_eq!(p.should_retry(&busy, 20), None);
        assert_eq!(RetryPolicy::NONE.should_retry(&busy, 0), None);
        let aborted = Response {
            response: VirtioResponse::Aborted as u8,
            ..busy
        };
        assert_eq!(p.should_retry(&aborted, 0), None);
    }
}
