//! One daemon, many connections of every kind: what a connection creates
//! (eventfds, epoll sets, threads, io_uring instances, mappings of the
//! frontend's memory) is released however it ends, so the daemon's open
//! descriptors, threads and RSS after thousands of connections are where
//! they were after the first few.
//!
//! The kinds, in turn: a clean command and close; a frontend that drops
//! with a READ in flight (as a killed VM or `vscsi` does); one that drops
//! while a command is held by a `stall` fault; a connection closed before
//! negotiating; one that sends garbage; one that stops mid-negotiation.
//! The raw image is served with `cache=none` (io_uring) and writeback, so
//! both engines are covered.
//!
//! `VSCSI_SOAK_CYCLES=N` sets the number of connections (default 300; the
//! soak run uses 10,000). The RSS is sampled ten times along the way and
//! printed: glibc gives each new thread an arena (at most eight per core),
//! so the RSS rises over the first connections and then stays flat; the
//! last half of the run must not grow it by more than a few pages per
//! hundred connections.

#[path = "common/backend_bin.rs"]
mod backend_bin;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vscsi_driver::{Driver, DriverOptions, QueueConfig, ScsiCommand};

struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let count = |dir: String| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Usage {
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        rss_kib,
    }
}

/// Waits until the daemon has finished with the last connection and set up
/// the device for the next one: its descriptor and thread counts stay put
/// for a quarter of a second (one connection's teardown and the next
/// device's start can each take longer than a single sample on a loaded
/// machine), or reach `expect`.
fn settled(pid: u32, expect: Option<&Usage>) -> Usage {
    let mut last = usage(pid);
    let mut steady = 0;
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = usage(pid);
        if expect.is_some_and(|e| (e.fds, e.threads) == (now.fds, now.threads)) {
            return now;
        }
        steady = if (now.fds, now.threads) == (last.fds, last.threads) {
            steady + 1
        } else {
            0
        };
        if (expect.is_none() && steady >= 5) || start.elapsed() > Duration::from_secs(10) {
            return now;
        }
        last = now;
    }
}

fn start(dir: &Path) -> (Child, PathBuf) {
    for (name, size) in [("a.img", 16u64 << 20), ("b.img", 16 << 20)] {
        std::fs::File::create(dir.join(name))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    let socket = dir.join("vs.sock");
    let config = dir.join("soak.toml");
    std::fs::write(
        &config,
        format!(
            "[[controller]]\nsocket = \"{}\"\n\n\
             [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\ncache = \"none\"\n\n\
             [[controller.lun]]\ntarget = 0\nlun = 1\nimage = \"{}\"\nfault = \"stall\"\n",
            socket.display(),
            dir.join("a.img").display(),
            dir.join("b.img").display()
        ),
    )
    .unwrap();
    let child = Command::new(backend_bin::backend_binary())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !socket.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, socket)
}

async fn driver(socket: &Path) -> Driver {
    // Generous: a disconnect flushes the images (fdatasync), which a
    // loaded CI machine can make slow; a wedged daemon still fails it.
    let opts = DriverOptions {
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let cfg = QueueConfig {
        queue_count: 2,
        queue_size: 64,
        ..Default::default()
    };
    Driver::connect_with(socket, cfg, opts)
        .await
        .expect("the daemon serves the next frontend")
}

/// One connection of kind `n % 6`.
async fn cycle(socket: &Path, n: usize) {
    match n % 6 {
        0 => {
            let d = driver(socket).await;
            let r = d.send_command(0, 0, ScsiCommand::TestUnitReady).await;
            assert!(r.is_ok(), "cycle {n}: {r:?}");
            d.close();
        }
        1 => {
            // Dropped with a READ in flight on the io_uring LUN.
            let d = std::sync::Arc::new(driver(socket).await);
            let d2 = d.clone();
            let t = tokio::spawn(async move {
                let _ = d2
                    .send_command(
                        0,
                        0,
                        ScsiCommand::Read {
                            lba: (n as u64 * 64) % 32000,
                            blocks: 64,
                            block_size: 512,
                        },
                    )
                    .await;
            });
            tokio::task::yield_now().await;
            t.abort();
            let _ = t.await;
            drop(d);
        }
        2 => {
            // Dropped while the stalled LUN holds a command.
            let d = std::sync::Arc::new(driver(socket).await);
            let d2 = d.clone();
            let t = tokio::spawn(async move {
                let _ = d2.send_command(0, 1, ScsiCommand::TestUnitReady).await;
            });
            tokio::time::sleep(Duration::from_millis(2)).await;
            t.abort();
            let _ = t.await;
            drop(d);
        }
        3 => drop(UnixStream::connect(socket).unwrap()),
        4 => {
            let mut s = UnixStream::connect(socket).unwrap();
            let _ = s.write_all(&[0xAB; 64]);
        }
        _ => {
            // GET_FEATURES (request 1, flags: version 1), then gone.
            let mut s = UnixStream::connect(socket).unwrap();
            let mut msg = [0u8; 12];
            msg[0] = 1;
            msg[4] = 1;
            let _ = s.write_all(&msg);
        }
    }
}

#[test]
fn thousands_of_connections_leave_fds_threads_and_rss_where_they_were() {
    let cycles: usize = std::env::var("VSCSI_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let (child, socket) = start(dir.path());
    let mut child = backend_bin::KillOnDrop(child);
    let pid = child.0.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let warm = 24;
    for n in 0..warm {
        rt.block_on(cycle(&socket, n));
    }
    let before = settled(pid, None);
    let t = Instant::now();
    let step = cycles.div_ceil(10).max(1);
    let mut samples = Vec::new();
    for n in warm..warm + cycles {
        rt.block_on(cycle(&socket, n));
        if (n - warm + 1) % step == 0 {
            samples.push((n - warm + 1, usage(pid).rss_kib));
        }
    }
    let after = settled(pid, Some(&before));
    eprintln!("soak: RSS KiB by connection: {samples:?}");
    // Growth over the second half, per hundred connections: a leak of even
    // one small allocation per connection shows here once the arenas are
    // all in use.
    let half = samples.len() / 2;
    if let (true, Some(&(n_mid, mid))) = (cycles >= 2000, samples.get(half.saturating_sub(1))) {
        let growth = after.rss_kib.saturating_sub(mid);
        let per_hundred = growth * 100 / (cycles - n_mid).max(1) as u64;
        assert!(
            per_hundred <= 16,
            "RSS still growing in the second half: {mid} -> {} KiB over {} connections",
            after.rss_kib,
            cycles - n_mid
        );
    }
    eprintln!(
        "soak: {cycles} connections in {:.1} s; fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        t.elapsed().as_secs_f64(),
        before.fds,
        after.fds,
        before.threads,
        after.threads,
        before.rss_kib,
        after.rss_kib
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert_eq!(
        after.fds, before.fds,
        "open descriptors; daemon log:\n{log}"
    );
    assert_eq!(after.threads, before.threads, "threads");
    assert!(
        after.rss_kib <= before.rss_kib + before.rss_kib / 4 + 4096,
        "RSS grew from {} to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    // Still serving, and still stopping on SIGTERM.
    rt.block_on(cycle(&socket, 0));
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success(), "exit 0 on SIGTERM");
}
