//! The vhost-user transport: the only part of the backend that knows virtio.
//!
//! - [`device`]: the `VhostUserBackend` implementation (features, config
//!   space, which worker thread serves which queue).
//! - [`request_queue`]: pop a chain, parse `virtio_scsi_cmd_req`, run the
//!   SCSI command, write `virtio_scsi_cmd_resp`, complete (VIRTIO 1.2 §5.6.6.1).
//! - [`control_queue`]: task management and asynchronous notification
//!   requests (§5.6.6.2).
//! - [`event_queue`]: hot-plug and parameter change events, and the
//!   [`EventHub`](event_queue::EventHub) hook that sends them.
//! - [`chain`]: descriptor chain → iovecs, with every address checked.
//! - [`device_ring`]: the one interface over both ring formats (pop, add
//!   used, notifications) the queues use; [`packed`]: the packed format.
//! - [`ring_guard`]: the ring contract checked on every pop (the split
//!   walk here, the packed one in [`packed::ring`]); a queue whose frontend
//!   breaks it stops until the frontend resets it.
//! - [`guest_io`]: iovecs in guest memory as the SCSI layer's data buffers.
//! - [`notify`]: whether the driver wants a used buffer notification.
//! - [`uring`]: the io_uring engine of a request queue (`aio=io_uring`).
//! - [`placement`]: request-queue workers pinned over a CPU list (`--cpus`).
//! - [`inflight`], [`inflight_packed`]: inflight I/O tracking (vhost-user
//!   `INFLIGHT_SHMFD`) of split and packed rings.

pub mod chain;
pub mod control_queue;
pub mod device;
pub mod device_ring;
pub mod dirty;
pub mod event_queue;
pub mod guest_io;
pub mod held;
pub mod inflight;
pub mod inflight_packed;
pub mod notify;
pub mod offload;
pub mod packed;
pub mod placement;
pub mod queue_metrics;
pub mod request_queue;
pub mod response;
pub mod ring_guard;
pub mod uring;

pub use device::{
    check_max_queue_size, DeviceOptions, Poll, PollMode, ScsiDevice, DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_POLL, DEFAULT_REQUEST_QUEUES, MAX_REQUEST_QUEUES,
};
pub use dirty::{DirtyBitmap, GuestMem, Vring, VringState};
pub use event_queue::{Delivery, EventHub, ResetReason};
pub use queue_metrics::QueueMetrics;
