//! The flags every driver verb shares, connecting, and sending commands to
//! one LUN with errors that name the command.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vscsi_driver::{
    ConnectionEvent, Driver, DriverOptions, Error as DriverError, Poll, PollMode, QueueChoice,
    QueueConfig, ReconnectStats, Response, ScsiCommand,
};
use vscsi_protocol::lun::MAX_LUN;

use crate::attention;
use crate::output::ScsiFailure;
use crate::parse;

/// How to reach the device and how to set up the driver.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// The vhost-user socket vscsi-backend listens on.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Request queues to use (capped at what the device offers).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,
    /// Descriptors per request queue (a power of two).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = queue_size)]
    pub queue_size: u16,
    /// Do not negotiate indirect descriptors (VIRTIO_RING_F_INDIRECT_DESC).
    #[arg(long)]
    pub no_indirect: bool,
    /// Do not negotiate event index suppression (VIRTIO_RING_F_EVENT_IDX).
    #[arg(long)]
    pub no_event_idx: bool,
    /// Require packed virtqueues (VIRTIO_F_RING_PACKED) for every queue:
    /// fail if the device does not offer them (without this flag the driver
    /// uses them when offered and split rings otherwise).
    #[arg(long, conflicts_with = "no_packed")]
    pub packed: bool,
    /// Use split virtqueues even if the device offers packed ones.
    #[arg(long)]
    pub no_packed: bool,
    /// Seconds a command may take before it fails.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse::seconds)]
    pub timeout: Duration,
    /// Seconds to keep reconnecting after the daemon went away (restarted,
    /// upgraded or killed: the socket closed) before commands fail; 0: do
    /// not reconnect. Commands wait meanwhile; the daemon that takes over
    /// resubmits the ones in flight (split rings) or they are retried.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse::seconds_or_zero)]
    pub reconnect: Duration,
    /// Largest transfer of one command (e.g. 256K); bigger reads and
    /// writes are split into several commands.
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub max_transfer: Option<u64>,
    /// How each request queue's completion task waits once its used ring
    /// runs dry: `adaptive` (spin while spinning finds completions soon
    /// enough, then sleep on the call eventfd; the default) or `off`
    /// (sleep at once).
    #[arg(long, value_name = "MODE", value_parser = parse::poll_mode)]
    pub poll: Option<PollMode>,
    /// Alone: spin this many microseconds every time the used ring runs
    /// dry (for a dedicated core; 0 = off); with `--poll adaptive`: the
    /// cap of the adaptive spin [default: 50].
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u64>,
    /// Which request queue each command goes to: `sticky` (the queue of
    /// the last command while nothing is in flight, else round robin:
    /// commands one after another stay on one queue, overlapping ones
    /// spread) or `round-robin`.
    #[arg(long, value_name = "CHOICE", default_value = "sticky", value_parser = parse::queue_choice)]
    pub queue_choice: QueueChoice,
    /// Print the answer as a JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Say on stderr what happened before the command itself (the unit
    /// attentions cleared after connecting).
    #[arg(short, long)]
    pub verbose: bool,
}

/// The connection flags plus the LUN a command goes to.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Target id.
    #[arg(
        long,
        value_name = "T",
        default_value_t = 0,
        help_heading = "Connection"
    )]
    pub target: u8,
    /// Logical unit number (0 to 16383).
    #[arg(long, value_name = "L", default_value_t = 0, help_heading = "Connection",
          value_parser = clap::value_parser!(u16).range(0..=MAX_LUN as i64))]
    pub lun: u16,
}

fn queue_size(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number from 1 to 32768"))?;
    if n == 0 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two (try 64, 128 or 256)"));
    }
    Ok(n)
}

fn start_hint(socket: &Path) -> String {
    format!(
        "is vscsi-backend running? start it with: vscsi-backend --socket {} disk.img",
        socket.display()
    )
}

/// Connects the driver, with errors that say what to do.
pub async fn connect(args: &ConnectArgs) -> Result<Driver> {
    let socket = &args.socket;
    match std::fs::metadata(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "socket {} does not exist; {}",
                socket.display(),
                start_hint(socket)
            )
        }
        Err(e) => bail!("cannot use socket {}: {e}", socket.display()),
        Ok(m) if !m.file_type().is_socket() => bail!(
            "{} is not a unix socket; pass the path vscsi-backend was started with (--socket)",
            socket.display()
        ),
        Ok(_) => {}
    }
    let cfg = QueueConfig {
        queue_count: args.queues,
        queue_size: args.queue_size,
        use_indirect: !args.no_indirect,
        event_index: !args.no_event_idx,
        use_packed: !args.no_packed,
    };
    let poll = Poll::resolve(args.poll, args.poll_us, DriverOptions::default().poll)
        .map_err(|e| anyhow!("--poll/--poll-us: {e}"))?;
    let mut opts = DriverOptions {
        timeout: args.timeout,
        poll,
        reconnect: (!args.reconnect.is_zero()).then_some(args.reconnect),
        queue_choice: args.queue_choice,
        ..DriverOptions::default()
    };
    if let Some(max) = args.max_transfer {
        if max == 0 || max % 512 != 0 {
            bail!("--max-transfer {max} must be a non-zero multiple of 512 bytes");
        }
        opts.max_transfer = usize::try_from(max).context("--max-transfer is too large")?;
    }
    match Driver::connect_with(socket, cfg, opts).await {
        Ok(d) if args.packed && !d.features().packed => bail!(
            "the device on {} does not offer packed virtqueues (VIRTIO_F_RING_PACKED, \
             feature bit 34); drop --packed to use split rings",
            socket.display()
        ),
        Ok(d) => Ok(d),
        Err(DriverError::Connect { source, .. }) => Err(anyhow!(
            "cannot connect to {}: {source}; {}",
            socket.display(),
            start_hint(socket)
        )),
        Err(e) => Err(e).with_context(|| {
            format!(
                "setting up the virtio-scsi driver on {} failed",
                socket.display()
            )
        }),
    }
}

/// One logical unit behind a connected driver. Cheap to clone (the driver
/// is shared), so commands can run in spawned tasks.
#[derive(Clone)]
pub struct Device {
    /// The driver.
    pub driver: Arc<Driver>,
    /// Target id.
    pub target: u8,
    /// LUN.
    pub lun: u16,
}

impl Device {
    /// Connects, addresses `--target`/`--lun` and clears the unit
    /// attentions it reports to a new frontend (see [`attention`]), as the
    /// kernel does before a user's first command on Linux.
    pub async fn open(args: &DeviceArgs) -> Result<Device> {
        Self::open_with(args, true).await
    }

    /// [`Device::open`], leaving pending unit attentions for the first
    /// command to receive when `clear_ua` is false.
    pub async fn open_with(args: &DeviceArgs, clear_ua: bool) -> Result<Device> {
        let driver = connect(&args.conn).await?;
        if clear_ua {
            let cleared = attention::clear(&driver, args.target, args.lun).await?;
            if args.conn.verbose {
                for s in &cleared {
                    eprintln!(
                        "vscsi: cleared unit attention on {}:{}: {s}",
                        args.target, args.lun
                    );
                }
            }
        }
        Ok(Device {
            driver: Arc::new(driver),
            target: args.target,
            lun: args.lun,
        })
    }

    /// Sends a command; `Err` only for transport failures (any SCSI status is `Ok`).
    pub async fn send(&self, what: &str, command: ScsiCommand) -> Result<Response> {
        self.driver
            .send_command(self.target, self.lun, command)
            .await
            .with_context(|| format!("{what} to {}:{} failed", self.target, self.lun))
    }

    /// Sends a command and requires GOOD status ([`ScsiFailure`] otherwise).
    pub async fn send_good(&self, what: &str, command: ScsiCommand) -> Result<Response> {
        let r = self.send(what, command).await?;
        if r.is_good() {
            Ok(r)
        } else {
            Err(self.failure(what, r).into())
        }
    }

    /// A [`ScsiFailure`] for a response from this LUN.
    pub fn failure(&self, what: &str, response: Response) -> ScsiFailure {
        ScsiFailure {
            command: what.to_string(),
            target: self.target,
            lun: self.lun,
            response,
        }
    }

    /// Commands worth keeping in flight for streaming transfers.
    pub fn window(&self) -> usize {
        16 * self.driver.features().queue_count.max(1) as usize
    }
}

/// Prints a line on stderr for each connection event of `driver` (lost,
/// reconnected and how long it took, given up), for the verbs that run
/// long (`bench`, `verify`, `events`). The task ends with the driver.
pub fn report_reconnects(driver: &Driver, socket: &Path) -> tokio::task::JoinHandle<()> {
    let mut rx = driver.connection_events();
    let socket = socket.display().to_string();
    let resubmits = driver.resubmits_after_reconnect();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(ConnectionEvent::Lost { in_flight }) => eprintln!(
                    "vscsi: the daemon on {socket} went away with {in_flight} commands in flight; reconnecting{}",
                    if resubmits { " (it resubmits them)" } else { " (they will be retried)" }
                ),
                Ok(ConnectionEvent::Reconnected { after, attempts, carried, failed }) => eprintln!(
                    "vscsi: reconnected to {socket} after {:.2} s ({attempts} attempts): \
                     {carried} commands in flight carried over and resubmitted, {failed} failed and retried",
                    after.as_secs_f64()
                ),
                Ok(ConnectionEvent::GaveUp { after, failed, error }) => eprintln!(
                    "vscsi: the daemon on {socket} did not come back ({error}); gave up after {:.2} s, {failed} commands failed",
                    after.as_secs_f64()
                ),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// The reconnect part of a long verb's summary: `None` when the
/// connection was never lost.
pub fn reconnect_summary(r: &ReconnectStats) -> Option<String> {
    (r.disconnects > 0).then(|| {
        format!(
            "reconnects: {} of {} lost connections (outage {:.2} s in all); commands in flight at the losses: {}, resubmitted: {}, failed: {}{}",
            r.reconnects,
            r.disconnects,
            r.total_outage.as_secs_f64(),
            r.in_flight_at_disconnect,
            r.resubmitted,
            r.failed,
            if r.gave_up { "; gave up" } else { "" }
        )
    })
}

/// The reconnect counters as JSON (every long verb's `--json` output).
pub fn reconnect_json(r: &ReconnectStats) -> serde_json::Value {
    serde_json::json!({
        "disconnects": r.disconnects,
        "reconnects": r.reconnects,
        "in_flight_at_disconnect": r.in_flight_at_disconnect,
        "carried": r.carried,
        "resubmitted": r.resubmitted,
        "failed": r.failed,
        "outage_s": r.total_outage.as_secs_f64(),
        "gave_up": r.gave_up,
    })
}
