//! `vscsi-backend`: serve disk images as virtio-scsi LUNs over vhost-user.
//! Flags → [`DaemonConfig`] → [`service::run::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use vscsi_backend::config::{self, DaemonConfig, LunSpec};
use vscsi_backend::cpu_list::CpuList;
use vscsi_backend::vhost::{Poll, PollMode};
use vscsi_backend::{service, vhost};

/// Serve disk image files as SCSI LUNs to a vhost-user frontend
/// (QEMU `-device vhost-user-scsi-pci`, or the `vscsi` driver).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Path of the vhost-user unix socket to listen on (one controller;
    /// use --config for several).
    #[arg(long, required_unless_present_any = ["config", "check_config"])]
    socket: Option<PathBuf>,
    /// Serve the controllers, targets and LUNs of this TOML file (see the README).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["socket", "images", "luns", "read_only", "check_config"])]
    config: Option<PathBuf>,
    /// Validate a configuration file, print it resolved (every default filled in) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["socket", "images", "luns"])]
    check_config: Option<PathBuf>,
    /// JSON-RPC 2.0 control socket (mode 0600), one request per line; overrides the file's `control`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Prometheus text endpoint: HOST:PORT on a loopback address, or unix:PATH; overrides the file's `metrics`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Images served as LUNs 0, 1, 2... of target 0.
    images: Vec<PathBuf>,
    /// Place an image anywhere: TARGET:LUN=PATH[,OPTION...] (repeatable). Options: ro, rw,
    /// bs=512|1024|2048|4096, cdrom, removable, serial=S, wwn=0xNAA, vendor=S, product=S,
    /// revision=S, rotation=N, pbs=N, wce=0|1, nodiscard, format=raw|qcow2|auto, no-power-on-ua,
    /// cache=writeback|none (none: O_DIRECT, raw images), aio=inline|io_uring (default:
    /// io_uring with cache=none, inline with writeback).
    #[arg(long = "lun", value_name = "SPEC")]
    luns: Vec<LunSpec>,
    /// Serve every image read-only.
    #[arg(long)]
    read_only: bool,
    /// Request queues offered to the driver (at most 62). The default, 16,
    /// covers QEMU's vhost-user-scsi-pci default of one queue per vCPU up
    /// to 16 vCPUs; the frontend uses as many of them as it sets up.
    #[arg(long, default_value_t = vhost::DEFAULT_REQUEST_QUEUES,
          value_parser = clap::value_parser!(u16).range(1..=vhost::MAX_REQUEST_QUEUES as i64))]
    queues: u16,
    /// Largest virtqueue size the driver may use: a power of two up to
    /// 32768 (QEMU's vhost-user-scsi-pci virtqueue_size must not exceed it).
    #[arg(long, default_value_t = vhost::DEFAULT_MAX_QUEUE_SIZE,
          value_parser = |s: &str| s.parse::<u32>().map_err(|e| e.to_string()).and_then(vhost::check_max_queue_size))]
    max_queue_size: u16,
    /// How a request queue waits once it runs dry: `adaptive` (spin while
    /// spinning finds requests soon enough, then sleep on the kick eventfd;
    /// the default) or `off` (sleep at once). Overrides the file's `poll`.
    #[arg(long, value_name = "MODE", value_parser = poll_mode)]
    poll: Option<PollMode>,
    /// Alone: spin this many microseconds every time the queue runs dry
    /// (for dedicated cores; 0 = off); with `--poll adaptive`: the cap of
    /// the adaptive spin [default: 50]. Overrides the file's `poll_us`.
    #[arg(long, value_name = "US")]
    poll_us: Option<u32>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Pin request-queue workers round robin over these CPUs (e.g. 0-1 or
    /// 0,2): queue n's worker to the n-th CPU of the list, modulo its
    /// length. Every controller; overrides the file's `cpus`. Default:
    /// unpinned.
    #[arg(long, value_name = "LIST")]
    cpus: Option<CpuList>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let format = args.log_format;
    init_logging(format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: a plain line for a person, or a log record for a log
            // collector reading JSON lines.
            match format {
                LogFormat::Text => eprintln!("vscsi-backend: {}", error_text(&e)),
                LogFormat::Json => error!("{}", error_text(&e)),
            }
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause`, leaving out
/// a cause the text already says (an error that prints its source, such as
/// an OS error, and also returns it as its source).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Flags → configuration → [`service::run::run`].
fn run(args: Args) -> anyhow::Result<()> {
    if let Some(file) = &args.check_config {
        let mut cfg = config::load_file(file)?;
        override_from_flags(&mut cfg, &args)?;
        // The resolved configuration is this mode's output (stdout).
        print!("{}", cfg.to_toml());
        eprint!("{}", config::summary(&cfg));
        eprintln!("{}: configuration OK", file.display());
        return Ok(());
    }
    let mut cfg = match (&args.config, &args.socket) {
        (Some(file), _) => config::load_file(file)?,
        (None, Some(socket)) => {
            let specs = config::collect_specs(&args.images, &args.luns, args.read_only)?;
            DaemonConfig::from_cli(socket.clone(), specs, args.queues, args.max_queue_size)
        }
        (None, None) => anyhow::bail!("give --socket PATH and images, or --config FILE"),
    };
    override_from_flags(&mut cfg, &args)?;
    service::run::run(&cfg)?;
    Ok(())
}

/// A `--poll` value.
fn poll_mode(s: &str) -> Result<PollMode, String> {
    s.parse().map_err(|e: vscsi_poll::PollError| e.to_string())
}

/// `--poll`/`--poll-us`, `--control` and `--metrics` override the file.
fn override_from_flags(cfg: &mut DaemonConfig, args: &Args) -> anyhow::Result<()> {
    if args.poll.is_some() || args.poll_us.is_some() {
        cfg.poll = Poll::resolve(args.poll, args.poll_us.map(u64::from), cfg.poll)
            .map_err(|e| anyhow::anyhow!("--poll/--poll-us: {e}"))?;
    }
    if let Some(c) = &args.control {
        cfg.control = Some(c.clone());
    }
    if let Some(m) = &args.metrics {
        config::check_metrics_addr(m).map_err(|e| anyhow::anyhow!("--metrics: {e}"))?;
        cfg.metrics = Some(m.clone());
    }
    if let Some(c) = &cfg.control {
        if cfg.controllers.iter().any(|x| &x.socket == c) {
            anyhow::bail!(
                "--control {} is also a controller socket: choose another path",
                c.display()
            );
        }
    }
    if let Some(cpus) = &args.cpus {
        cpus.check_allowed()
            .map_err(|e| anyhow::anyhow!("--cpus {cpus}: {e}"))?;
        for c in &mut cfg.controllers {
            c.cpus = Some(cpus.clone());
        }
    }
    Ok(())
}
