//! `vscsi demo`: start a backend on an image, find the disk, write a
//! pattern over all of it, read it back, verify, stop the backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vscsi_driver::{Driver, QueueConfig};

use crate::blockio::{self, read_chunk, write_chunk};
use crate::daemon::{self, Backend};
use crate::device::Device;
use crate::output::{capacity, human_size, CheckFailed};
use crate::{parse, pattern};

/// Start vscsi-backend on a disk image, scan, write a seeded pattern over
/// the whole LUN, read it back and verify it, then stop the backend.
/// Exits 0 only when every byte verified and the backend stopped cleanly.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The disk image (its contents are overwritten). Default: a fresh
    /// image in $XDG_CACHE_HOME/vscsi (or ~/.cache/vscsi, or /tmp/vscsi-demo).
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Size of the image to create (e.g. 64M, 1G) [default: 64M].
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub size: Option<u64>,
    /// The vscsi-backend binary [default: next to this executable, built
    /// with cargo if missing and this is its source workspace].
    #[arg(long, value_name = "PATH")]
    pub backend: Option<PathBuf>,
    /// Never run cargo to build a missing vscsi-backend.
    #[arg(long)]
    pub no_build: bool,
    /// Request queues (the backend offers as many; the driver uses them all).
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=62))]
    pub queues: u16,
    /// Commands kept in flight.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub depth: u16,
    /// Require packed virtqueues (VIRTIO_F_RING_PACKED) for every queue
    /// (the default uses them when offered).
    #[arg(long, conflicts_with = "no_packed")]
    pub packed: bool,
    /// Use split virtqueues.
    #[arg(long)]
    pub no_packed: bool,
    /// Pattern seed [default: new each run, so stale data cannot pass].
    #[arg(long, value_name = "N", value_parser = parse::number)]
    pub seed: Option<u64>,
    /// Seconds to wait for the backend's socket to appear.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse::seconds)]
    pub startup_timeout: Duration,
}

/// `println!` that ignores a closed stdout (`vscsi demo | head`): a panic
/// here would skip stopping the backend properly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const DEFAULT_SIZE: u64 = 64 << 20;
/// Mismatching blocks described in detail.
const SHOW_MISMATCHES: usize = 10;

/// `$XDG_CACHE_HOME/vscsi`, `~/.cache/vscsi`, or `/tmp/vscsi-demo`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = env("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return x.join("vscsi");
    }
    if let Some(home) = env("HOME") {
        return home.join(".cache").join("vscsi");
    }
    PathBuf::from("/tmp/vscsi-demo")
}

/// Makes or checks the image; returns its path, size, and how it came to be.
fn prepare_image(args: &Args) -> Result<(PathBuf, u64, &'static str)> {
    let check = |size: u64| -> Result<()> {
        if size == 0 || size & 511 != 0 {
            bail!("the image size must be a non-zero multiple of 512 bytes, not {size}");
        }
        Ok(())
    };
    if let Some(path) = &args.image {
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                bail!("--image {} is not a regular file", path.display());
            }
            if let Some(want) = args.size.filter(|&s| s != meta.len()) {
                bail!(
                    "--image {} exists with {} bytes, not --size {want}; drop --size to use it as it is, or remove it",
                    path.display(),
                    meta.len()
                );
            }
            check(meta.len())?;
            return Ok((path.clone(), meta.len(), "existing, will be overwritten"));
        }
        let size = args.size.unwrap_or(DEFAULT_SIZE);
        check(size)?;
        create_sparse(path, size)?;
        return Ok((path.clone(), size, "new"));
    }
    let size = args.size.unwrap_or(DEFAULT_SIZE);
    check(size)?;
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
    let path = dir.join("demo.img");
    create_sparse(&path, size)?;
    Ok((path, size, "new"))
}

fn create_sparse(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("cannot create the image {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("cannot size the image {} to {size} bytes", path.display()))
}

fn rate(bytes: u64, t: Duration) -> String {
    let secs = t.as_secs_f64().max(1e-9);
    format!(
        "{} in {secs:.2} s ({:.0} MiB/s)",
        human_size(bytes),
        bytes as f64 / secs / (1 << 20) as f64
    )
}

pub async fn run(args: Args) -> Result<()> {
    let backend_path = daemon::locate(args.backend.as_deref(), !args.no_build)?;
    let (image, size, how) = prepare_image(&args)?;
    say!(
        "image    {} ({}, {size} bytes, {how})",
        image.display(),
        human_size(size)
    );

    let tmp = tempfile::Builder::new()
        .prefix("vscsi-demo-")
        .tempdir()
        .context("cannot create a temporary folder for the socket")?;
    let socket = tmp.path().join("vscsi.sock");
    let mut backend = Backend::spawn(
        &backend_path,
        &socket,
        &image,
        args.queues,
        &[],
        &tmp.path().join("backend.log"),
    )?;
    say!("backend  {} (pid {})", backend_path.display(), backend.pid);
    backend.wait_for_socket(args.startup_timeout).await?;
    say!("socket   {}", socket.display());

    // Whatever happens to the I/O, stop the backend and say how that went.
    let io = exercise(&socket, &args).await;
    let stop = backend.stop(Duration::from_secs(10)).await;
    let stopped = match stop {
        Ok(status) if status.success() && !socket.exists() => {
            say!("backend  stopped ({status}), socket removed");
            Ok(())
        }
        Ok(status) if status.success() => Err(anyhow::anyhow!(
            "vscsi-backend exited ({status}) but left its socket {} behind",
            socket.display()
        )),
        Ok(status) => Err(anyhow::anyhow!(
            "vscsi-backend did not exit cleanly: {status}"
        )),
        Err(e) => Err(e),
    };
    match (io, stopped) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Err(e), Err(stop)) => {
            Err(e.context(format!("(and stopping the backend failed too: {stop:#})")))
        }
    }
}

/// Connects, scans, writes, reads back and verifies.
async fn exercise(socket: &Path, args: &Args) -> Result<()> {
    let cfg = QueueConfig {
        queue_count: args.queues,
        use_packed: !args.no_packed,
        ..QueueConfig::default()
    };
    let driver = Driver::connect(socket, cfg)
        .await
        .with_context(|| format!("cannot connect the driver to {}", socket.display()))?;
    if args.packed && !driver.features().packed {
        bail!(
            "the backend does not offer packed virtqueues (VIRTIO_F_RING_PACKED, feature bit 34); \
             drop --packed to use split rings"
        );
    }
    let f = driver.features();
    say!(
        "driver   {} request queue{} x {} descriptors{}{}{}, {} per command",
        f.queue_count,
        if f.queue_count == 1 { "" } else { "s" },
        f.queue_size,
        if f.indirect {
            ", indirect descriptors"
        } else {
            ""
        },
        if f.event_index { ", event index" } else { "" },
        if f.packed { ", packed rings" } else { "" },
        human_size(driver.max_transfer() as u64),
    );
    let found = driver.scan().await.context("scanning the device failed")?;
    for lu in &found {
        say!(
            "found {}:{}  {:<8} {}  {}  {}",
            lu.lun.target,
            lu.lun.lun,
            lu.inquiry.vendor,
            lu.inquiry.product,
            lu.inquiry.revision,
            capacity(lu.capacity())
        );
    }
    let Some(lu) = found
        .iter()
        .find(|lu| lu.inquiry.device_type == 0 && lu.blocks > 0)
    else {
        bail!(
            "the scan found no disk with a capacity (found {} logical units)",
            found.len()
        );
    };
    let dev = Device {
        driver: Arc::new(driver),
        target: lu.lun.target,
        lun: lu.lun.lun,
    };
    let (blocks, bs, bytes) = (lu.blocks, lu.block_size, lu.capacity());
    let per = blockio::blocks_per_command(dev.driver.max_transfer(), bs)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    say!(
        "pattern  seed {seed:#x}, {blocks} blocks of {bs} bytes, {} commands each way, up to {} in flight",
        blocks.div_ceil(per as u64),
        args.depth
    );

    let t = Instant::now();
    blockio::pipeline(
        blockio::split(0, blocks, per),
        args.depth as usize,
        |lba, n| {
            let dev = dev.clone();
            Ok(async move { write_chunk(dev, lba, pattern::blocks(lba, n, bs, seed), bs).await })
        },
        |_, _, ()| Ok(()),
    )
    .await
    .context("writing the pattern failed")?;
    say!("wrote {}", rate(bytes, t.elapsed()));

    let t = Instant::now();
    let mut shown = Vec::new();
    let mut bad_blocks = 0u64;
    blockio::pipeline(
        blockio::split(0, blocks, per),
        args.depth as usize,
        |lba, n| {
            let dev = dev.clone();
            Ok(async move {
                let data = read_chunk(dev, lba, n, bs).await?;
                Ok(pattern::check(&data, lba, bs, seed, SHOW_MISMATCHES))
            })
        },
        |_, _, (found, bad): (Vec<String>, u64)| {
            bad_blocks += bad;
            shown.extend(
                found
                    .into_iter()
                    .take(SHOW_MISMATCHES - shown.len().min(SHOW_MISMATCHES)),
            );
            Ok(())
        },
    )
    .await
    .context("reading the pattern back failed")?;
    say!("read {}", rate(bytes, t.elapsed()));
    drop(dev); // closes the vhost-user connection before the backend is stopped

    if bad_blocks == 0 {
        say!("verified {bytes} bytes: OK");
        return Ok(());
    }
    for m in &shown {
        say!("  {m}");
    }
    if bad_blocks > shown.len() as u64 {
        say!("  ... and {} more", bad_blocks - shown.len() as u64);
    }
    say!("verified {bytes} bytes: FAILED");
    Err(CheckFailed(format!(
        "verification failed: {bad_blocks} of {blocks} blocks did not read back as written"
    ))
    .into())
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (std::process::id() as u64).rotate_left(32);
    // One splitmix64 round so close seeds look unrelated.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) & 0xFFFF_FFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_formats() {
        assert_eq!(
            rate(64 << 20, Duration::from_millis(250)),
            "64.0 MiB in 0.25 s (256 MiB/s)"
        );
    }
}
