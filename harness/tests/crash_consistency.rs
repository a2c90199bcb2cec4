//! Crash consistency: the daemon killed with SIGKILL while several
//! frontends write loses nothing it acknowledged as durable.
//!
//! One daemon serves three controllers, one frontend each: a raw image
//! through the page cache (`cache=writeback`), a raw image with
//! `cache=none` (O_DIRECT, io_uring) and a qcow2 image. Each frontend runs
//! writers that never write an LBA twice in a round; a write is durable
//! once it completed GOOD with FUA set (SBC-4 §5.38: FUA writes reach the
//! medium before GOOD) or once a SYNCHRONIZE CACHE sent after it
//! completed GOOD (SBC-4 §5.24). At a random point of the round the daemon
//! gets SIGKILL. Then the qcow2 image must pass `qemu-img check` (leaked
//! clusters allowed, corruptions not), the daemon must start again on the
//! same images (their locks went with the dead process) and every durable
//! write of the round must read back byte for byte.
//!
//! `VSCSI_CRASH_ROUNDS=N` sets the number of kills (default 8; the soak
//! run uses 100 or more), `VSCSI_CRASH_SEED=S` replays a run.

#[path = "common/backend_bin.rs"]
mod backend_bin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vscsi_driver::{Driver, DriverOptions, QueueConfig, ScsiCommand};

const MIB: u64 = 1 << 20;
const IMAGE_SIZE: u64 = 32 * MIB;
const BLOCK: u32 = 512;
/// Writers per frontend, each on its own half of the LUN.
const WRITERS: u64 = 2;

/// One image served by one controller.
struct Controller {
    name: &'static str,
    image: PathBuf,
    socket: PathBuf,
    qcow2: bool,
}

/// A write that must survive the crash: where, how long, and the seed of
/// its content.
#[derive(Clone, Copy, Debug)]
struct Extent {
    lba: u64,
    blocks: u32,
    seed: u64,
}

fn qemu_img_present() -> bool {
    let found = Command::new("qemu-img")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("VSCSI_REQUIRE_TOOLS").is_none(),
            "qemu-img is missing: apt-get install qemu-utils (see .ci/run)"
        );
        eprintln!("SKIP: qemu-img is missing (apt-get install qemu-utils); crash test not run");
    }
    found
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (install qemu-utils)")
}

/// The content of `blocks` blocks at `lba`, written with `seed`: every 8
/// bytes say which block and which write they belong to.
fn pattern(lba: u64, blocks: u32, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(blocks as usize * BLOCK as usize);
    for b in 0..blocks as u64 {
        for w in 0..BLOCK as u64 / 8 {
            v.extend_from_slice(&(((lba + b) << 24) ^ (w << 8) ^ seed).to_le_bytes());
        }
    }
    v
}

/// WRITE(16) (SBC-4 §5.38), FUA in byte 1 bit 3.
fn write16(lba: u64, blocks: u32, fua: bool) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x8A;
    cdb[1] = if fua { 0x08 } else { 0 };
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn config(dir: &Path, controllers: &[Controller]) -> PathBuf {
    let mut toml = String::new();
    for c in controllers {
        let tuning = match (c.name, c.qcow2) {
            ("none", _) => "cache = \"none\"\n",
            (_, true) => "format = \"qcow2\"\n",
            _ => "",
        };
        toml.push_str(&format!(
            "[[controller]]\nname = \"{}\"\nsocket = \"{}\"\nqueues = 2\n\n\
             [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\npower_on_ua = false\n{tuning}\n",
            c.name,
            c.socket.display(),
            c.image.display(),
        ));
    }
    let path = dir.join("crash.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn start_daemon(bin: &Path, config: &Path, log: &Path, controllers: &[Controller]) -> Child {
    for c in controllers {
        let _ = std::fs::remove_file(&c.socket);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("vscsi-backend starts");
    let start = Instant::now();
    while !controllers.iter().all(|c| c.socket.exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not start on the images left by the killed one"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

async fn connect(socket: &Path) -> Arc<Driver> {
    let opts = DriverOptions {
        timeout: Duration::from_secs(5),
        eh_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let cfg = QueueConfig {
        queue_count: 2,
        ..Default::default()
    };
    Arc::new(
        Driver::connect_with(socket, cfg, opts)
            .await
            .expect("the driver connects to the restarted daemon"),
    )
}

/// Writes fresh extents into its half of the LUN until the daemon dies,
/// recording in `durable` every write that must survive.
async fn writer(drv: Arc<Driver>, half: u64, seed: u64, durable: Arc<Mutex<Vec<Extent>>>) {
    let blocks_per_half = IMAGE_SIZE / BLOCK as u64 / WRITERS;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut lba = half * blocks_per_half;
    let end = lba + blocks_per_half;
    let mut acked: Vec<Extent> = Vec::new();
    let mut n = 0u64;
    loop {
        let blocks = rng.u32(1..=16);
        if lba + blocks as u64 > end {
            return;
        }
        let fua = rng.u8(..4) == 0;
        let extent = Extent {
            lba,
            blocks,
            seed: seed ^ n.rotate_left(40),
        };
        n += 1;
        lba += blocks as u64;
        let cmd = ScsiCommand::Raw {
            cdb: write16(extent.lba, blocks, fua),
            data_out: pattern(extent.lba, blocks, extent.seed),
            data_in_len: 0,
        };
        match drv.send_command(0, 0, cmd).await {
            Ok(r) if r.is_good() => {}
            _ => return,
        }
        if fua {
            durable.lock().unwrap().push(extent);
        } else {
            acked.push(extent);
        }
        if n.is_multiple_of(4) {
            match drv.send_command(0, 0, ScsiCommand::SynchronizeCache).await {
                Ok(r) if r.is_good() => durable.lock().unwrap().append(&mut acked),
                _ => return,
            }
        }
    }
}

/// Reads every durable extent back; returns how many were checked.
async fn check(drv: &Driver, name: &str, round: u32, durable: &[Extent]) -> usize {
    for e in durable {
        let r = drv
            .send_command(
                0,
                0,
                ScsiCommand::Read {
                    lba: e.lba,
                    blocks: e.blocks,
                    block_size: BLOCK,
                },
            )
            .await
            .expect("READ after restart completes");
        assert!(r.is_good(), "{name}: READ of {e:?} failed: {r:?}");
        assert!(
            r.data == pattern(e.lba, e.blocks, e.seed),
            "{name}, round {round}: an acknowledged durable write is not in the image after SIGKILL: {e:?}"
        );
    }
    durable.len()
}

#[test]
fn sigkill_while_frontends_write_loses_no_durable_write() {
    if !qemu_img_present() {
        return;
    }
    let rounds: u32 = std::env::var("VSCSI_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("VSCSI_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test: {rounds} rounds, VSCSI_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let bin = backend_bin::backend_binary();
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let controllers: Vec<Controller> = [("writeback", false), ("none", false), ("qcow2", true)]
        .into_iter()
        .map(|(name, qcow2)| Controller {
            name,
            image: dir.path().join(format!("{name}.img")),
            socket: dir.path().join(format!("{name}.sock")),
            qcow2,
        })
        .collect();
    for c in &controllers {
        if c.qcow2 {
            let o = qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                c.image.to_str().unwrap(),
                &IMAGE_SIZE.to_string(),
            ]);
            assert!(o.status.success(), "qemu-img create: {o:?}");
        } else {
            std::fs::File::create(&c.image)
                .unwrap()
                .set_len(IMAGE_SIZE)
                .unwrap();
        }
    }
    let config = config(dir.path(), &controllers);
    let log = dir.path().join("daemon.log");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut daemon = backend_bin::KillOnDrop(start_daemon(&bin, &config, &log, &controllers));
    let mut last: Vec<Vec<Extent>> = vec![Vec::new(); controllers.len()];
    let mut checked = 0usize;
    for round in 0..=rounds {
        // The daemon now runs on the images the previous one left.
        let drivers: Vec<Arc<Driver>> = rt.block_on(async {
            let mut v = Vec::new();
            for (c, durable) in controllers.iter().zip(&last) {
                let drv = connect(&c.socket).await;
                checked += check(&drv, c.name, round, durable).await;
                v.push(drv);
            }
            v
        });
        if round == rounds {
            drop(drivers);
            break;
        }
        let durable: Vec<Arc<Mutex<Vec<Extent>>>> =
            controllers.iter().map(|_| Arc::default()).collect();
        let tasks: Vec<_> = drivers
            .iter()
            .zip(&durable)
            .flat_map(|(drv, d)| {
                (0..WRITERS)
                    .map(|half| {
                        let s = rng.u64(..);
                        rt.spawn(writer(drv.clone(), half, s, d.clone()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.u64(30..300)));
        daemon.0.kill().unwrap();
        daemon.0.wait().unwrap();
        rt.block_on(async {
            for t in tasks {
                t.abort();
                let _ = t.await;
            }
        });
        drop(drivers);
        for c in controllers.iter().filter(|c| c.qcow2) {
            let o = qemu_img(&["check", "-q", "-f", "qcow2", c.image.to_str().unwrap()]);
            // 0: clean; 3: leaked clusters only (allocated, unreferenced:
            // space, not data, is lost). 2 would be corruption.
            assert!(
                matches!(o.status.code(), Some(0 | 3)),
                "round {round}: qemu-img check after SIGKILL: {o:?}"
            );
        }
        last = durable
            .iter()
            .map(|d| std::mem::take(&mut *d.lock().unwrap()))
            .collect();
        daemon = backend_bin::KillOnDrop(start_daemon(&bin, &config, &log, &controllers));
    }
    // SIGTERM: a clean stop after the last check.
    // SAFETY: kill(2) on the pid of our own child, which we have not reaped.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = daemon.0.wait().unwrap();
    assert!(
        status.success(),
        "the daemon stops cleanly on SIGTERM: {status:?}"
    );
    eprintln!("crash test: {rounds} SIGKILLs, {checked} durable writes read back intact");
    assert!(
        checked > 0,
        "no write was ever durable: the writers never got going"
    );
}
