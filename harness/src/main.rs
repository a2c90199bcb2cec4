//! `vscsi`: talk SCSI to a vhost-user virtio-scsi device (such as
//! `vscsi-backend`) through the userspace driver.
//!
//! One file per verb: `inquiry.rs`, `readcap.rs`, `tur.rs`, `luns.rs`,
//! `read.rs`, `write.rs`, `raw.rs`, `scan.rs`, `demo.rs`, `pr.rs`. Shared pieces:
//! `device.rs` (common flags, connecting), `attention.rs` (clearing the
//! unit attentions owed to a new frontend), `blockio.rs` (capacity, split
//! and pipelined transfers), `output.rs` (formatting, JSON, failures, exit
//! codes), `progress.rs` (progress bars on a terminal), `fio_report.rs`
//! (bench results in fio's shapes), `tail_latency.rs` (the bench's p50 to max
//! and slow-completion warning), `parse.rs` (hex, sizes), `pattern.rs`
//! and `daemon.rs` (for the demo).

mod attention;
mod bench;
mod blockio;
mod ctl;
mod daemon;
mod demo;
mod device;
mod events;
mod fio_report;
mod inquiry;
mod luns;
mod output;
mod parse;
mod pattern;
mod pr;
mod progress;
mod raw;
mod read;
mod readcap;
mod reset;
mod scan;
mod stats;
mod tail_latency;
mod tmf;
mod tur;
mod verify;
mod write;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::{CheckFailed, ScsiFailure, UsageError};

const AFTER_HELP: &str = "\
Exit status:
  0  success (raw: the command completed, whatever its SCSI status)
  1  the command ended with a status other than GOOD (CHECK CONDITION...),
     from every verb but raw (bench included), the LUN does not exist
     (inquiry), or a verification failed (demo, verify)
  2  bad command line (also what is only found wrong after connecting:
     a --bs the block size does not divide, --blocks past the last LBA)
  3  any other error: no socket, connection or transport failure, I/O error

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see more than warnings.

Example:
  vscsi-backend --socket /tmp/vs.sock disk.img &
  vscsi scan --socket /tmp/vs.sock
  vscsi read --socket /tmp/vs.sock --lba 0 --blocks 8 | xxd | head";

/// Send SCSI commands to a vhost-user virtio-scsi device (such as
/// vscsi-backend) through the userspace virtio-scsi driver.
#[derive(Parser, Debug)]
#[command(name = "vscsi", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// INQUIRY: standard data, or a VPD page (--page) as hex.
    Inquiry(inquiry::Args),
    /// READ CAPACITY (16, falling back to 10): blocks, block size, bytes.
    Readcap(readcap::Args),
    /// TEST UNIT READY.
    Tur(tur::Args),
    /// REPORT LUNS: the LUNs of a target.
    Luns(luns::Args),
    /// READ blocks to stdout or a file.
    Read(read::Args),
    /// WRITE blocks from stdin or a file.
    Write(write::Args),
    /// Send any CDB, like sg_raw, and show everything that came back.
    Raw(raw::Args),
    /// Find every LUN: one line per LUN with type, identity and capacity.
    Scan(scan::Args),
    /// Start vscsi-backend on an image and write, read back and verify all of it.
    Demo(demo::Args),
    /// Measure IOPS, bandwidth and latency percentiles (fio-like).
    Bench(bench::Args),
    /// Send a task management function: abort, lun-reset, target-reset...
    Tmf(tmf::Args),
    /// Reset a request queue or the whole device (the error handler's last steps).
    Reset(reset::Args),
    /// Follow the device's events (hot-plug, parameter changes) until Ctrl-C.
    Events(events::Args),
    /// Write a seeded pattern with many commands in flight, read back, report bad LBAs.
    Verify(verify::Args),
    /// Run a few commands and print the driver's metrics.
    Stats(stats::Args),
    /// Manage a running vscsi-backend through its control socket (JSON-RPC).
    Ctl(ctl::Args),
    /// Persistent reservations, like sg_persist: register, reserve, release, read keys...
    Pr(pr::Args),
}

impl Command {
    /// Whether errors should be reported as JSON on stdout.
    fn json(&self) -> bool {
        match self {
            Command::Inquiry(a) => a.device.conn.json,
            Command::Readcap(a) => a.device.conn.json,
            Command::Tur(a) => a.device.conn.json,
            Command::Luns(a) => a.device.conn.json,
            Command::Read(a) => a.device.conn.json,
            Command::Write(a) => a.device.conn.json,
            Command::Raw(a) => a.device.conn.json,
            Command::Scan(a) => a.conn.json,
            Command::Demo(_) => false,
            Command::Bench(a) => a.device.json,
            Command::Tmf(a) => a.device.conn.json,
            Command::Reset(a) => a.device.conn.json,
            Command::Events(a) => a.conn.json,
            Command::Verify(a) => a.device.conn.json,
            Command::Stats(a) => a.device.conn.json,
            Command::Ctl(a) => a.json,
            Command::Pr(a) => a.device.conn.json,
        }
    }

    async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Inquiry(a) => inquiry::run(a).await,
            Command::Readcap(a) => readcap::run(a).await,
            Command::Tur(a) => tur::run(a).await,
            Command::Luns(a) => luns::run(a).await,
            Command::Read(a) => read::run(a).await,
            Command::Write(a) => write::run(a).await,
            Command::Raw(a) => raw::run(a).await,
            Command::Scan(a) => scan::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Tmf(a) => tmf::run(a).await,
            Command::Reset(a) => reset::run(a).await,
            Command::Events(a) => events::run(a).await,
            Command::Verify(a) => verify::run(a).await,
            Command::Stats(a) => stats::run(a).await,
            Command::Ctl(a) => ctl::run(a).await,
            Command::Pr(a) => pr::run(a).await,
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Prints an error (as JSON on stdout with `--json`) and picks the exit code.
fn report(e: &anyhow::Error, json: bool) -> ExitCode {
    if let Some(f) = e.downcast_ref::<ScsiFailure>() {
        if json {
            output::print_json(&f.to_json());
        } else {
            eprintln!("{}", f.to_text());
        }
        return ExitCode::from(1);
    }
    let code = if e.downcast_ref::<CheckFailed>().is_some() {
        1
    } else if e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        3
    };
    if json {
        output::print_json(&serde_json::json!({ "ok": false, "error": output::error_text(e) }));
    }
    eprintln!("vscsi: {}", output::error_text(e));
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let json = cli.command.json();
    if !matches!(cli.command, Command::Demo(_) | Command::Read(_)) {
        // Die quietly on a closed stdout (`vscsi raw ... | head`) like other
        // Unix tools, instead of panicking in println!. `read` handles EPIPE
        // itself; `demo` must live on to stop its backend.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Bench(a) = &cli.command {
        // One worker by default: the driver's completion tasks and the
        // bench's submitters then wake each other without a cross-thread
        // (cross-vCPU) wake-up, which costs tens of microseconds in a VM.
        builder.worker_threads(a.threads.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vscsi: cannot start the tokio runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn common_flags_parse() {
        let cli = Cli::try_parse_from([
            "vscsi",
            "read",
            "--socket",
            "/s",
            "--target",
            "1",
            "--lun",
            "2",
            "--lba",
            "0x10",
            "--blocks",
            "8",
            "--queues",
            "2",
            "--queue-size",
            "64",
            "--no-indirect",
            "--no-event-idx",
            "--packed",
            "--timeout",
            "5",
            "--max-transfer",
            "64k",
            "--json",
        ])
        .unwrap();
        let Command::Read(a) = cli.command else {
            panic!()
        };
        assert_eq!(
            (a.lba, a.blocks, a.device.target, a.device.lun),
            (16, 8, 1, 2)
        );
        assert_eq!(a.device.conn.max_transfer, Some(65536));
        assert!(a.device.conn.no_indirect && a.device.conn.json && a.device.conn.packed);
        assert!(
            Cli::try_parse_from(["vscsi", "tur", "--socket", "/s", "--packed", "--no-packed"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["vscsi", "tur", "--socket", "/s", "--queue-size", "100"]).is_err()
        );
        assert!(Cli::try_parse_from(["vscsi", "tur"]).is_err());
        let raw = Cli::try_parse_from([
            "vscsi",
            "raw",
            "--socket",
            "/s",
            "--cdb",
            "12 00 00 00 24 00",
            "--data-in",
            "36",
        ])
        .unwrap();
        let Command::Raw(r) = raw.command else {
            panic!()
        };
        assert_eq!(r.cdb, vec![0x12, 0, 0, 0, 0x24, 0]);
        assert!(Cli::try_parse_from([
            "vscsi",
            "raw",
            "--socket",
            "/s",
            "--cdb",
            "2a",
            "--data-in",
            "1",
            "--data-out",
            "f"
        ])
        .is_err());
    }

    #[test]
    fn pr_flags_parse() {
        let pr = |extra: &[&str]| {
            let mut v = vec!["vscsi", "pr", "--socket", "/s"];
            v.extend_from_slice(extra);
            Cli::try_parse_from(v)
        };
        let Command::Pr(a) = pr(&["--register", "0xab", "--key", "12", "--aptpl"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!((a.register, a.key, a.aptpl), (Some(0xAB), 0x12, true));
        let Command::Pr(a) = pr(&["--reserve", "--type", "we-ro", "--key", "ab"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(a.reserve);
        assert_eq!(a.rtype.map(|t| t.code()), Some(5));
        assert!(pr(&["--read-keys"]).is_ok());
        assert!(pr(&["-s", "--json"]).is_ok());
        // Exactly one action.
        assert!(pr(&[]).is_err());
        assert!(pr(&["--read-keys", "--read-reservation"]).is_err());
        assert!(pr(&["--register", "1", "--clear"]).is_err());
        assert!(pr(&["--reserve", "--type", "2"]).is_err());
        assert!(pr(&["--register", "0xg"]).is_err());
    }
}
