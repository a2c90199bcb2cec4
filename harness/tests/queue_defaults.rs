//! The daemon's queue limits as QEMU meets them: enough request queues by
//! default for QEMU's `num_queues` = vCPU count, a frontend that asks for
//! more (or for a larger ring) told why in one line of the daemon's log,
//! and a bad `--max-queue-size` refused before the socket exists.

#[path = "common/backend_bin.rs"]
mod backend_bin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{RingOptions, SplitRing};
use vscsi_driver::transport::vhost_user::VhostUserTransport;
use vscsi_driver::{Driver, DriverOptions, QueueChoice, QueueConfig, ScsiCommand};

struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("d.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let socket = dir.path().join("vs.sock");
        let log = dir.path().join("daemon.log");
        let child = Command::new(backend_bin::backend_binary())
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .arg(&image)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_log(d: &Daemon, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let log = d.log();
        if log.contains(needle) || start.elapsed() > Duration::from_secs(5) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn by_default_the_daemon_offers_sixteen_request_queues_and_serves_the_ones_used() {
    let d = Daemon::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for queues in [1u16, 2, 4, 16] {
            let cfg = QueueConfig {
                queue_count: queues,
                queue_size: 128,
                ..Default::default()
            };
            let opts = DriverOptions {
                strict_features: true,
                queue_choice: QueueChoice::RoundRobin,
                ..Default::default()
            };
            let drv = Driver::connect_with(&d.socket, cfg, opts)
                .await
                .unwrap_or_else(|e| panic!("{queues} queues of 128 (QEMU's default): {e}"));
            assert_eq!(drv.config().num_queues, 16, "config num_queues (§5.6.4)");
            // One command per queue used: round robin reaches each of them.
            for _ in 0..queues {
                let r = drv
                    .send_command(0, 0, ScsiCommand::TestUnitReady)
                    .await
                    .unwrap();
                assert!(r.virtio().is_some());
            }
            drv.close();
        }
    });
}

/// A frontend that sets up one request queue more than offered, as QEMU
/// does with `-smp 2` against `--queues 1`.
fn set_up_queue(socket: &Path, index: usize, size: u16) -> bool {
    let mut t = VhostUserTransport::connect(socket, 0).unwrap();
    let mem = Arc::new(SharedMemory::new("limits", 1 << 20).unwrap());
    t.set_memory(&mem).unwrap();
    let ring = SplitRing::new(mem, 0, size, RingOptions::default()).unwrap();
    let (k, c) = (
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    );
    t.start_vring(index, &ring, &k, &c).is_ok()
}

#[test]
fn a_frontend_asking_for_more_queues_or_a_larger_ring_is_told_the_limits() {
    let d = Daemon::start(&["--queues", "1", "--max-queue-size", "256"]);
    // Queues 0 and 1 are control and event; 2 is the one request queue.
    assert!(!set_up_queue(&d.socket, 3, 128), "queue 3 is refused");
    let log = wait_for_log(&d, "offers 1 request queues");
    assert!(
        log.contains("offers 1 request queues of at most 256 descriptors")
            && log.contains("--queues")
            && log.contains("num_queues="),
        "one clear line names the limit and the fix: {log}"
    );
    assert_eq!(
        log.matches("offers 1 request queues").count(),
        1,
        "one line: {log}"
    );
    assert!(!set_up_queue(&d.socket, 2, 512), "a 512 ring is refused");
    let log = wait_for_log(&d, "512");
    assert!(
        log.contains("out of range (1-256)") && log.contains("--max-queue-size"),
        "the ring size asked and the limit: {log}"
    );
    // The next frontend that fits is served.
    assert!(set_up_queue(&d.socket, 2, 256));
}

#[test]
fn a_bad_max_queue_size_is_refused_before_the_socket_exists() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("d.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let socket = dir.path().join("vs.sock");
    for bad in ["0", "1000", "65536"] {
        let out = Command::new(backend_bin::backend_binary())
            .arg("--socket")
            .arg(&socket)
            .args(["--max-queue-size", bad])
            .arg(&image)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: usage error: {err}");
        assert!(err.contains("power of two"), "{bad}: says why: {err}");
        assert!(!socket.exists(), "{bad}: no socket was created");
    }
}
