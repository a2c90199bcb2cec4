//! A userspace virtio-scsi driver: the vhost-user *frontend*.
//!
//! It creates the shared memory (a memfd), lays out its own split
//! virtqueues in it, speaks vhost-user to a device such as `vscsi-backend`,
//! builds SCSI requests as descriptor chains, kicks, and reaps completions,
//! behind an async tokio API:
//!
//! ```no_run
//! # async fn demo() -> Result<(), vscsi_driver::Error> {
//! use vscsi_driver::{Driver, QueueConfig, ScsiCommand};
//! let cfg = QueueConfig { queue_count: 1, queue_size: 128, use_indirect: true, event_index: true, use_packed: true };
//! let driver = Driver::connect("/tmp/vs.sock", cfg).await?;
//! let r = driver.send_command(0, 0, ScsiCommand::TestUnitReady).await?;
//! tracing::info!("status {:#x}", r.status);
//! # Ok(()) }
//! ```
//!
//! Modules: [`memory`] (the shared region, and the only code that touches
//! its bytes), [`ring`] (driver-side virtqueues behind a format seam),
//! [`transport`] (vhost-user set-up), `queue` (the queue engine of the
//! request, control and event queues: slots, in-flight table, completion
//! task), [`command`] (`ScsiCommand` → CDB), [`response`] (what a completion
//! looks like), [`tmf`] and [`events`] (control and event queue values),
//! [`driver`] (the public API, one submodule per family of operations).

pub mod command;
pub mod driver;
pub mod error;
pub mod events;
mod interrupt;
mod link;
pub mod memory;
mod queue;
pub mod response;
pub mod retry;
pub mod ring;
pub mod stats;
pub mod tmf;
pub mod topology;
pub mod transport;

pub use command::ScsiCommand;
pub use driver::{
    CommandError, CommandOptions, ConnectionEvent, Driver, DriverOptions, Features, LunInfo, Poll,
    PollError, PollMode, QueueChoice, QueueChoiceError, QueueConfig, Response,
};
pub use error::{Error, RecoveryStep, Result};
pub use events::{DeviceEvent, ResetReason};
pub use memory::SharedSlice;
pub use queue::InFlightCommand;
pub use retry::RetryPolicy;
pub use stats::{Histogram, LatencySummary, LunStats, QueueStats, ReconnectStats, StatsSnapshot};
pub use tmf::{Tmf, TmfResponse};
pub use topology::Topology;
