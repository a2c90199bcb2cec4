//! `vscsi-backend`: serve disk images as virtio-scsi LUNs over vhost-user.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing::{error, info};
use vscsi_backend::config::{self, LunSpec};
use vscsi_backend::daemon::{self, Shutdown};
use vscsi_backend::vhost::DeviceOptions;

/// Serve disk image files as SCSI LUNs to a vhost-user frontend
/// (QEMU `-device vhost-user-scsi-pci`, or the `vscsi` driver).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Path of the vhost-user unix socket to listen on.
    #[arg(long)]
    socket: PathBuf,
    /// Images served as LUNs 0, 1, 2... of target 0.
    images: Vec<PathBuf>,
    /// Place an image anywhere: TARGET:LUN=PATH[,OPTION...] (repeatable). Options: ro, rw,
    /// bs=512|1024|2048|4096, cdrom, removable, serial=S, wwn=0xNAA, vendor=S, product=S,
    /// revision=S, rotation=N, pbs=N, wce=0|1, nodiscard, power-on-ua.
    #[arg(long = "lun", value_name = "SPEC")]
    luns: Vec<LunSpec>,
    /// Serve every image read-only.
    #[arg(long)]
    read_only: bool,
    /// Number of request queues offered to the driver.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=62))]
    queues: u16,
    /// Largest virtqueue size the driver may use.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..=32768))]
    max_queue_size: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("vscsi-backend: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let specs = config::collect_specs(&args.images, &args.luns, args.read_only)?;
    let opts = DeviceOptions {
        request_queues: args.queues,
        max_queue_size: args.max_queue_size,
        ..Default::default()
    };
    let bus = Arc::new(config::build_bus(&specs, opts.max_sectors)?);
    for s in &specs {
        info!(target = s.target, lun = s.lun, image = %s.path.display(), read_only = s.options.read_only, "serving");
    }
    let listener = daemon::bind(&args.socket)?;
    info!(socket = %args.socket.display(), "listening");

    let shutdown = Arc::new(Shutdown::default());
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    {
        let shutdown = shutdown.clone();
        let socket = args.socket.clone();
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!(signal = sig, "stopping");
                shutdown.request();
                // Wake the accept() the serving loop may be blocked in.
                let _ = std::os::unix::net::UnixStream::connect(&socket);
            }
        });
    }

    let opts = DeviceOptions {
        request_queues: args.queues,
        max_queue_size: args.max_queue_size,
        ..Default::default()
    };
    let result = daemon::serve(listener, bus.clone(), opts, shutdown);
    let flushed = bus.flush_all();
    let _ = std::fs::remove_file(&args.socket);
    result?;
    flushed.context("flushing images")?;
    info!("stopped");
    Ok(())
}
