//! `vscsi bench`: a fio-like load generator through the driver.
//!
//! `--iodepth` commands are kept in flight, spread over `--queues` request
//! queues, for `--runtime`; each command's latency (submission to
//! completion, fio's clat) goes into an hdrhistogram. At the end: IOPS,
//! MiB/s, latency percentiles and the CPU seconds used by the bench and by
//! the daemon (from /proc). It drives a running daemon (`--socket`) or
//! starts one itself on an image in /dev/shm (tmpfs) or `--image`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use vscsi_driver::{Driver, PollMode, QueueChoice, ScsiCommand};

use crate::blockio;
use crate::daemon::{self, Backend};
use crate::device::{ConnectArgs, Device, DeviceArgs};
use crate::output::human_size;
use crate::parse;
use crate::tail_latency::{self, Recorder};

/// The I/O pattern, as fio names it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random reads and writes (`--rwmixread` percent reads).
    Randrw,
}

/// Measure IOPS, bandwidth and latency percentiles through the driver.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A running daemon's socket; without it, the bench starts vscsi-backend itself.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Image for the daemon the bench starts [default: a fresh file in /dev/shm].
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Size of the image the bench creates.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse::size)]
    pub image_size: u64,
    /// The vscsi-backend binary for a daemon the bench starts.
    #[arg(long, value_name = "PATH")]
    pub backend: Option<PathBuf>,
    /// The daemon's pid, to report its CPU time when it was started elsewhere.
    #[arg(long, value_name = "PID")]
    pub daemon_pid: Option<u32>,
    /// I/O pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Percentage of reads for randrw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Block size of each command (e.g. 4k, 128k).
    #[arg(long, value_name = "SIZE", default_value = "4k", value_parser = parse::size)]
    pub bs: u64,
    /// Commands in flight in total.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub iodepth: u32,
    /// How long to run.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse::seconds)]
    pub runtime: Duration,
    /// Bytes of the LUN to use, from LBA 0 [default: all of it].
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub size: Option<u64>,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Use the driver's copying API (`send_command`: data copied into and
    /// out of the shared buffers, a `Vec` per read) instead of the
    /// zero-copy one (`read_with` / `write_with`: the data stays in the
    /// request slot's buffer in shared memory, as fio's buffers do).
    #[arg(long)]
    pub copy: bool,
    /// tokio worker threads running the submitters and the driver's
    /// completion tasks (1 avoids cross-thread wake-ups).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Warn (on stderr, and in the JSON) when any completion takes longer
    /// than this many milliseconds.
    #[arg(long, value_name = "MS", default_value = "100", value_parser = tail_latency::parse_ms)]
    pub warn_latency: Duration,
    /// For a daemon the bench starts: pin its request-queue workers over
    /// these CPUs (its --cpus).
    #[arg(long, value_name = "LIST")]
    pub daemon_cpus: Option<String>,
    #[command(flatten)]
    pub device: BenchDevice,
}

/// The driver flags of the other verbs, with `--socket` made optional.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchDevice {
    /// Target id.
    #[arg(long, default_value_t = 0)]
    pub target: u8,
    /// Logical unit number.
    #[arg(long, default_value_t = 0)]
    pub lun: u16,
    /// Request queues to use (the daemon the bench starts offers as many).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=62))]
    pub queues: u16,
    /// Descriptors per request queue (a power of two; at least iodepth / queues).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Do not negotiate indirect descriptors.
    #[arg(long)]
    pub no_indirect: bool,
    /// Do not negotiate event index suppression.
    #[arg(long)]
    pub no_event_idx: bool,
    /// Require packed virtqueues (VIRTIO_F_RING_PACKED); the default uses
    /// them when the device offers them.
    #[arg(long, conflicts_with = "no_packed")]
    pub packed: bool,
    /// Use split virtqueues even if the device offers packed ones.
    #[arg(long)]
    pub no_packed: bool,
    /// Driver side: how completion tasks wait (`adaptive` or `off`; as
    /// the other verbs' --poll).
    #[arg(long, value_name = "MODE", value_parser = parse::poll_mode)]
    pub poll: Option<PollMode>,
    /// Driver side: a fixed spin of this many µs, or with `--poll
    /// adaptive` its cap (as the other verbs' --poll-us).
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u64>,
    /// Which request queue each command goes to (`sticky` or
    /// `round-robin`; as the other verbs' --queue-choice).
    #[arg(long, value_name = "CHOICE", default_value = "sticky", value_parser = parse::queue_choice)]
    pub queue_choice: QueueChoice,
    /// Daemon side (for a daemon the bench starts): its --poll.
    #[arg(long, value_name = "MODE", value_parser = parse::poll_mode)]
    pub daemon_poll: Option<PollMode>,
    /// Seconds to keep reconnecting after the daemon went away before
    /// commands fail; 0: do not reconnect (see the other verbs).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse::seconds_or_zero)]
    pub reconnect: Duration,
    /// Daemon side (for a daemon the bench starts): its --poll-us.
    #[arg(long, value_name = "US")]
    pub daemon_poll_us: Option<u64>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What one worker counted (latencies go to the bench's one histogram).
struct WorkerResult {
    reads: u64,
    writes: u64,
}

/// A small, fast, seedable generator (xorshift64*): offsets only.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// CPU seconds (user + system) of this process so far.
fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: getrusage returned 0, so it initialised the struct.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds (user + system) of another process, from /proc/PID/stat.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

pub async fn run(args: Args) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vscsi-bench-")
        .tempdir()
        .context("cannot create a temporary folder for the bench's socket")?;
    let mut own: Option<(Backend, Option<PathBuf>)> = None;
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let (image, created) = match &args.image {
                Some(p) => (p.clone(), false),
                None => {
                    let base = if std::path::Path::new("/dev/shm").is_dir() {
                        PathBuf::from("/dev/shm")
                    } else {
                        std::env::temp_dir()
                    };
                    let p = base.join(format!("vscsi-bench-{}.img", std::process::id()));
                    make_image(&p, args.image_size)?;
                    (p, true)
                }
            };
            let binary = daemon::locate(args.backend.as_deref(), true)?;
            let socket = dir.path().join("vscsi.sock");
            let log = dir.path().join("backend.log");
            let mut extra = vec![];
            if let Some(mode) = args.device.daemon_poll {
                extra.extend(["--poll".to_string(), mode.to_string()]);
            }
            if let Some(us) = args.device.daemon_poll_us {
                extra.extend(["--poll-us".to_string(), us.to_string()]);
            }
            if let Some(cpus) = &args.daemon_cpus {
                extra.extend(["--cpus".to_string(), cpus.clone()]);
            }
            let mut backend =
                Backend::spawn(&binary, &socket, &image, args.device.queues, &extra, &log)?;
            backend.wait_for_socket(Duration::from_secs(10)).await?;
            own = Some((backend, created.then_some(image)));
            socket
        }
    };
    let daemon_pid = args.daemon_pid.or(own.as_ref().map(|(b, _)| b.pid));
    let result = bench(&args, socket, daemon_pid).await;
    if let Some((backend, image)) = own {
        let status = backend.stop(Duration::from_secs(10)).await;
        if let Some(image) = image {
            let _ = std::fs::remove_file(image);
        }
        let status = status?;
        if !status.success() && result.is_ok() {
            bail!("vscsi-backend exited with {status}");
        }
    }
    result
}

/// A file of `size` bytes with data in it (reads of holes would be free).
fn make_image(path: &std::path::Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])
            .with_context(|| format!("cannot fill {}", path.display()))?;
        left -= n as u64;
    }
    Ok(())
}

async fn bench(args: &Args, socket: PathBuf, daemon_pid: Option<u32>) -> Result<()> {
    let d = &args.device;
    let conn = ConnectArgs {
        socket,
        queues: d.queues,
        queue_size: d.queue_size,
        no_indirect: d.no_indirect,
        no_event_idx: d.no_event_idx,
        packed: d.packed,
        no_packed: d.no_packed,
        timeout: Duration::from_secs(30),
        reconnect: d.reconnect,
        // Room for one --bs per command; a --bs the LUN's blocks do not
        // divide is refused below, naming --bs.
        max_transfer: Some(args.bs.max(512).next_multiple_of(512)),
        poll: d.poll,
        poll_us: d.poll_us,
        queue_choice: d.queue_choice,
        json: d.json,
        verbose: false,
    };
    let dev = Device::open(&DeviceArgs {
        conn: conn.clone(),
        target: d.target,
        lun: d.lun,
    })
    .await?;
    let cap = blockio::read_capacity(&dev).await?;
    let bs = args.bs;
    if bs == 0 || !bs.is_multiple_of(cap.block_size as u64) {
        crate::output::usage!(
            "--bs {bs} is not a multiple of the LUN's {}-byte blocks",
            cap.block_size
        );
    }
    let region = args.size.unwrap_or(cap.bytes()).min(cap.bytes());
    if args.size.is_some_and(|s| s > cap.bytes()) {
        eprintln!(
            "vscsi: --size is larger than {}:{} ({} bytes); clamped to {region} bytes",
            d.target,
            d.lun,
            cap.bytes()
        );
    }
    let slots = region / bs;
    if slots == 0 {
        bail!("--size {region} is smaller than one block of --bs {bs}");
    }
    let driver: Arc<Driver> = dev.driver.clone();
    let _reporter = crate::device::report_reconnects(&driver, &conn.socket);
    let blocks = (bs / cap.block_size as u64) as u32;

    let stop = Arc::new(AtomicBool::new(false));
    let done_ops = Arc::new(AtomicU64::new(0));
    let cursor = Arc::new(AtomicU64::new(0));
    let cpu0 = own_cpu_seconds();
    let dcpu0 = daemon_pid.and_then(process_cpu_seconds);
    let start = Instant::now();

    let mut tasks = tokio::task::JoinSet::new();
    // One histogram for every submitter: one per submitter (up to 4096 of
    // them, 200 KiB each at this precision) made each record a cache miss,
    // 16 % of the bench's time at QD128. The lock is uncontended with the
    // default single tokio thread.
    // Reads and writes apart, as fio reports them, and the exact tail.
    let hist = Arc::new(std::sync::Mutex::new(Recorder::new(args.warn_latency)?));
    for w in 0..args.iodepth {
        let (driver, stop, done_ops, cursor) = (
            driver.clone(),
            stop.clone(),
            done_ops.clone(),
            cursor.clone(),
        );
        let (rw, mix, target, lun, block_size) = (
            args.rw,
            args.rwmixread as u64,
            d.target,
            d.lun,
            cap.block_size,
        );
        let mut rng = XorShift::new(args.seed ^ (w as u64) << 32);
        let payload = vec![0xA5u8; bs as usize];
        let copy = args.copy;
        let hist = hist.clone();
        tasks.spawn(async move {
            let mut r = WorkerResult {
                reads: 0,
                writes: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let slot = match rw {
                    Rw::Read | Rw::Write => cursor.fetch_add(1, Ordering::Relaxed) % slots,
                    _ => rng.next() % slots,
                };
                let write = match rw {
                    Rw::Write | Rw::Randwrite => true,
                    Rw::Read | Rw::Randread => false,
                    Rw::Randrw => rng.next() % 100 >= mix,
                };
                let lba = slot * blocks as u64;
                let t0 = Instant::now();
                let outcome = if copy {
                    let cmd = if write {
                        ScsiCommand::Write {
                            lba,
                            blocks,
                            data: payload.clone(),
                        }
                    } else {
                        ScsiCommand::Read {
                            lba,
                            blocks,
                            block_size,
                        }
                    };
                    driver
                        .send_command(target, lun, cmd)
                        .await
                        .map(|r| r.ok().map(drop))
                } else if write {
                    // The buffer keeps what the last command left in it, as
                    // fio's buffers do without refill_buffers.
                    driver
                        .write_with(target, lun, lba, blocks, block_size, |_| ())
                        .await
                } else {
                    driver
                        .read_with(target, lun, lba, blocks, block_size, |_| ())
                        .await
                };
                let outcome = match outcome {
                    Ok(o) => o,
                    // Lost with a connection the daemon that took over could
                    // not resubmit it on: counted (the summary says how
                    // many), and the worker goes on.
                    Err(vscsi_driver::Error::Disconnected { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                let ns = t0.elapsed().as_nanos() as u64;
                if let Err(e) = outcome {
                    // A CHECK CONDITION (or other non-GOOD answer): exit 1,
                    // with the decoded sense, as from every other verb.
                    return Err(crate::output::ScsiFailure {
                        command: format!("{} at LBA {lba}", if write { "WRITE" } else { "READ" }),
                        target,
                        lun,
                        response: e.0,
                    }
                    .into());
                }
                hist.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(ns, write);
                if write {
                    r.writes += 1;
                } else {
                    r.reads += 1;
                }
                done_ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(r)
        });
    }

    let progress = (!args.no_progress
        && !d.json
        && std::io::IsTerminal::is_terminal(&std::io::stderr()))
    .then(|| {
        let pb = indicatif::ProgressBar::new(args.runtime.as_millis() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    let mut last = (Instant::now(), 0u64);
    while start.elapsed() < args.runtime {
        tokio::time::sleep(
            Duration::from_millis(250).min(args.runtime.saturating_sub(start.elapsed())),
        )
        .await;
        if let Some(pb) = &progress {
            let now = (Instant::now(), done_ops.load(Ordering::Relaxed));
            let iops =
                (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-9);
            pb.set_position(start.elapsed().as_millis() as u64);
            pb.set_message(format!(
                "{:.0} IOPS, {:.1} MiB/s",
                iops,
                iops * bs as f64 / (1 << 20) as f64
            ));
            last = now;
        }
        if tasks.try_join_next().is_some() {
            break; // a worker failed: stop and report below
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut reads, mut writes) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let r = r.context("a bench worker panicked")??;
        reads += r.reads;
        writes += r.writes;
    }
    let recorded = std::mem::replace(
        &mut *hist.lock().unwrap_or_else(|p| p.into_inner()),
        Recorder::new(args.warn_latency)?,
    );
    let [read_hist, write_hist] = &recorded.by_direction;
    let hist = recorded.all()?;
    let tail = recorded.tail()?;
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let cpu = own_cpu_seconds() - cpu0;
    let dcpu = match (dcpu0, daemon_pid.and_then(process_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let ops = reads + writes;
    let iops = ops as f64 / elapsed;
    let mib_s = iops * bs as f64 / (1 << 20) as f64;
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let f = driver.features();
    let sections = [("read", read_hist), ("write", write_hist)].map(|(name, clat)| {
        crate::fio_report::Direction {
            name,
            clat,
            bs,
            elapsed,
        }
    });
    if d.json {
        let tail_json = tail.to_json();
        crate::output::print_json(&json!({
            "rw": format!("{:?}", args.rw).to_lowercase(),
            "bs": bs, "iodepth": args.iodepth, "queues": f.queue_count, "queue_size": f.queue_size,
            "indirect": f.indirect, "event_idx": f.event_index, "packed": f.packed,
            "runtime_s": elapsed, "reads": reads, "writes": writes,
            "iops": iops, "mib_s": mib_s,
            "lat_us": { "min": hist.min() as f64 / 1000.0, "mean": hist.mean() / 1000.0,
                        "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p99.9": us(0.999),
                        "p99.99": tail_json["p99.99"], "max": tail_json["max"] },
            "tail": tail_json,
            "cpu_s": { "bench": cpu, "daemon": dcpu },
            "kicks": driver.kicks(),
            "reconnect": crate::device::reconnect_json(&driver.stats().reconnect),
            "jobs": [{
                "jobname": format!("{:?}", args.rw).to_lowercase(),
                "read": sections[0].to_json(),
                "write": sections[1].to_json(),
            }],
        }));
    } else {
        println!(
            "{:?}: bs={} iodepth={} queues={} queue_size={} indirect={} event_idx={} packed={} runtime={:.1}s",
            args.rw, human_size(bs), args.iodepth, f.queue_count, f.queue_size, f.indirect, f.event_index, f.packed, elapsed
        );
        println!(
            "  IOPS={:.0}  BW={:.1} MiB/s  ({reads} reads, {writes} writes)",
            iops, mib_s
        );
        if args.rw == Rw::Randrw {
            for s in &sections {
                s.print();
            }
            println!("  all:");
        }
        println!(
            "  clat (us): min={:.1} mean={:.1} p50={:.1} p90={:.1} p99={:.1} p99.9={:.1} max={:.1}",
            hist.min() as f64 / 1000.0,
            hist.mean() / 1000.0,
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            tail.max_ns as f64 / 1000.0
        );
        println!("{}", tail.line());
        match dcpu {
            Some(dcpu) => println!(
                "  cpu: bench {cpu:.2}s ({:.0}%), daemon {dcpu:.2}s ({:.0}%), kicks {}",
                100.0 * cpu / elapsed,
                100.0 * dcpu / elapsed,
                driver.kicks()
            ),
            None => println!(
                "  cpu: bench {cpu:.2}s ({:.0}%), daemon unknown (pass --daemon-pid)",
                100.0 * cpu / elapsed
            ),
        }
        if let Some(line) = crate::device::reconnect_summary(&driver.stats().reconnect) {
            println!("  {line}");
        }
    }
    // On stderr, so the JSON on stdout stays one document.
    if let Some(w) = tail.warning() {
        eprintln!("{w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_seeded_and_spreads() {
        let mut a = XorShift::new(7);
        let mut b = XorShift::new(7);
        let mut c = XorShift::new(8);
        let xs: Vec<u64> = (0..1000).map(|_| a.next() % 100).collect();
        let ys: Vec<u64> = (0..1000).map(|_| b.next() % 100).collect();
        assert_eq!(xs, ys, "same seed, same offsets");
        assert_ne!(xs, (0..1000).map(|_| c.next() % 100).collect::<Vec<_>>());
        let distinct: std::collections::HashSet<_> = xs.iter().collect();
        assert!(distinct.len() > 90, "covers the range");
    }

    #[test]
    fn reads_this_process_cpu_time_from_proc() {
        let t = process_cpu_seconds(std::process::id()).expect("own /proc/PID/stat");
        assert!(t >= 0.0);
        assert!(own_cpu_seconds() >= 0.0);
    }
}
