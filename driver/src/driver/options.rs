//! What a caller asks of the driver ([`QueueConfig`], [`DriverOptions`],
//! [`CommandOptions`]) and what the device agreed to ([`Features`]).

use std::time::Duration;

pub use super::queue_choice::{QueueChoice, QueueChoiceError};
use crate::retry::RetryPolicy;
pub use vscsi_poll::{Poll, PollError, PollMode};

/// Virtqueue settings the driver asks for (count, size, indirect
/// descriptors, event index, ring format).
///
/// The device decides: `queue_count` is capped at the device's `num_queues`,
/// and `use_indirect` / `event_index` / `use_packed` fall back to off when
/// the device does not offer them. [`Driver::features`] reports what was agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Request queues to use.
    pub queue_count: u16,
    /// Descriptors per request queue (a power of two, 1..=32768).
    pub queue_size: u16,
    /// Negotiate VIRTIO_RING_F_INDIRECT_DESC (§2.7.5.3).
    pub use_indirect: bool,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX (§2.7.10, §2.8.10).
    pub event_index: bool,
    /// Negotiate VIRTIO_F_RING_PACKED (§2.8): every queue (request, control,
    /// event) is then a packed ring. On by default, falling back to split
    /// rings when the device does not offer it: end to end (`vscsi bench`,
    /// 4 KiB random reads against vscsi-backend) packed rings gave 4% more
    /// IOPS at QD1 and 12-13% more at QD32 and QD128 (medians of five
    /// interleaved runs each; BENCHMARKS.md). The ring alone (`cargo bench
    /// -p vscsi-driver --bench split_ring`) is faster packed with direct
    /// chains and about as fast with indirect descriptors.
    pub use_packed: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            queue_count: 1,
            queue_size: 128,
            use_indirect: true,
            event_index: true,
            use_packed: true,
        }
    }
}

/// Driver settings beyond the virtqueues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverOptions {
    /// Largest data transfer of one command, in bytes (each request slot
    /// has a buffer this big in the shared region).
    pub max_transfer: usize,
    /// How long a command may take before the error handler runs and the
    /// caller gets [`Error::Timeout`] (Linux sd: 30 s). Per LUN:
    /// [`Driver::set_lun_timeout`]; per command: [`CommandOptions`].
    pub timeout: Duration,
    /// How long each error-handler step (a TMF, then the release of the
    /// timed-out command) may take before the next step.
    pub eh_timeout: Duration,
    /// Which completions are retried ([`RetryPolicy`]); not applied to
    /// [`ScsiCommand::Raw`] (pass-through) unless [`CommandOptions::retry`] asks.
    pub retry: RetryPolicy,
    /// How each request queue's completion task waits once its used ring
    /// runs dry: [`Poll::Adaptive`] (the default) spins while spinning
    /// finds completions soon enough, with used-buffer notifications
    /// disabled (the device does not signal the call eventfd meanwhile),
    /// then re-enables them and sleeps on the eventfd; [`Poll::Fixed`]
    /// spins its whole time every time (for a dedicated core);
    /// [`Poll::Off`] sleeps at once. The spin yields to the other tasks of
    /// its tokio worker every few microseconds, so submitters and other
    /// queues go on running beside it.
    pub poll: Poll,
    /// What to do when the device lacks what [`QueueConfig`] asks for
    /// (indirect descriptors, event index, packed rings, as many request queues):
    /// `false` (the default) falls back (without the feature, with the
    /// queues the device has; [`Driver::features`] says what was agreed),
    /// `true` fails [`Driver::connect_with`] with [`Error::MissingFeature`]
    /// or [`Error::BadConfig`].
    pub strict_features: bool,
    /// How long the driver keeps trying to connect again after the device
    /// went away (its daemon exited, was killed or restarted: the socket
    /// closed), with backoff from 10 ms to 500 ms between attempts; `None`:
    /// never. While it reconnects, commands in flight wait (the error
    /// handler sends no TMF), and new ones wait before they are submitted.
    /// On success it replays the set-up (features, SET_MEM_TABLE,
    /// SET_INFLIGHT_FD, every ring with its current state, kicks): with
    /// inflight I/O tracking (split rings on a device offering
    /// `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`) the commands in flight are
    /// resubmitted by the device and complete; without it they fail with
    /// [`Error::Disconnected`](crate::Error::Disconnected). When the
    /// deadline passes, every command fails with
    /// [`Error::ReconnectDeadline`](crate::Error::ReconnectDeadline).
    /// Default 30 s, the default command timeout: long enough for a
    /// supervisor to restart the daemon, short enough that a device gone for
    /// good ends a run.
    pub reconnect: Option<Duration>,
    /// Which request queue each command goes to: [`QueueChoice::Sticky`]
    /// (the default: commands sent one after another stay on one queue,
    /// concurrent ones spread) or [`QueueChoice::RoundRobin`].
    pub queue_choice: QueueChoice,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            max_transfer: 256 * 1024,
            timeout: Duration::from_secs(30),
            eh_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            poll: Poll::ADAPTIVE,
            strict_features: false,
            reconnect: Some(Duration::from_secs(30)),
            queue_choice: QueueChoice::Sticky,
        }
    }
}

/// Per-command overrides of [`DriverOptions`] ([`Driver::send_command_with`]).
///
/// ```
/// use std::time::Duration;
/// use vscsi_driver::{CommandOptions, RetryPolicy};
/// let quick = CommandOptions { timeout: Some(Duration::from_secs(2)), retry: Some(RetryPolicy::NONE) };
/// assert_eq!(CommandOptions::default().timeout, None);
/// # let _ = quick;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandOptions {
    /// Timeout of this command (else the LUN's, else the driver's).
    pub timeout: Option<Duration>,
    /// Retry policy of this command (else the driver's).
    pub retry: Option<RetryPolicy>,
}

/// What the device and the driver agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// All acked virtio feature bits.
    pub bits: u64,
    /// Indirect descriptors are in use.
    pub indirect: bool,
    /// Event index notification suppression is in use.
    pub event_index: bool,
    /// Every queue is a packed ring (VIRTIO_F_RING_PACKED).
    pub packed: bool,
    /// The device reports hot-plug events.
    pub hotplug: bool,
    /// The device reports parameter changes.
    pub change: bool,
    /// Request queues in use.
    pub queue_count: u16,
    /// Descriptors per request queue.
    pub queue_size: u16,
}
