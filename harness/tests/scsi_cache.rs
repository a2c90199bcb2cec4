//! `cache=` and `aio=` through the real daemon, socket, memfd and rings
//! (issue 8): verified random I/O with many commands in flight over two
//! queues on `cache=none` + io_uring and `cache=writeback` + io_uring, the
//! data on the host side of the image, errors still answered by the SCSI
//! layer, SYNCHRONIZE CACHE and FUA on the deferred path, a ring reset and a
//! disconnect with transfers in flight.
//!
//! The daemon runs in this process, so its io_uring instances are visible
//! in `/proc/self/fd` (`anon_inode:[io_uring]`): the tests count them to
//! prove which engine served a LUN. They run one at a time (a lock) so the
//! counts are their own.

mod common;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{host_read, image, pattern, TestDaemon};
use tokio::task::JoinSet;
use vscsi_backend::config::LunSpec;
use vscsi_backend::storage::{AioMode, CacheMode};
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{Driver, QueueConfig, Response, ScsiCommand};

const MIB: u64 = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// io_uring instances open in this process.
fn uring_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("io_uring"))
        .count()
}

/// Waits up to 5 s for the io_uring count to become `n`.
fn wait_uring_fds(n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = uring_fds();
        if c == n || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon with LUN 0:0 on a fresh `size` image in /tmp (ext4: O_DIRECT
/// works), `queues` request queues, and the given cache/aio options.
fn serve(cache: CacheMode, aio: AioMode, size: u64, queues: u16) -> TestDaemon {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut spec = LunSpec::new(0, 0, image(dir.path(), "t0l0.img", size));
    spec.options.cache = cache;
    spec.options.aio = aio;
    TestDaemon::serve(
        dir,
        &[spec],
        DeviceOptions {
            request_queues: queues,
            ..Default::default()
        },
    )
}

async fn connect(d: &TestDaemon, queues: u16) -> Arc<Driver> {
    let cfg = QueueConfig {
        queue_count: queues,
        ..Default::default()
    };
    Arc::new(
        Driver::connect(&d.socket, cfg)
            .await
            .expect("driver connects"),
    )
}

async fn raw(drv: &Driver, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> Response {
    drv.send_command(
        0,
        0,
        ScsiCommand::Raw {
            cdb: cdb.to_vec(),
            data_out: data_out.to_vec(),
            data_in_len,
        },
    )
    .await
    .expect("command completes")
}

fn triple(r: &Response) -> (u8, u8, u8) {
    let s = &r.sense;
    assert!(s.len() >= 14, "sense: {s:02x?}");
    (s[2] & 0x0F, s[12], s[13])
}

fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, b1, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `n` random extents (lba, blocks) that do not overlap: extent i lives in
/// its own 32-block window at a random place and with a random length.
fn extents(n: u64, seed: u64) -> Vec<(u64, u32)> {
    let mut rng = Rng(seed | 1);
    let mut order: Vec<u64> = (0..n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    order
        .into_iter()
        .map(|w| {
            let blocks = 1 + (rng.next() % 24) as u32;
            let start = rng.next() % (32 - u64::from(blocks) + 1);
            (w * 32 + start, blocks)
        })
        .collect()
}

/// Writes every extent concurrently (all in flight at once), then reads
/// them back concurrently and compares; returns the extents and patterns.
async fn random_write_read(drv: &Arc<Driver>, n: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let ext = extents(n, seed);
    let mut set = JoinSet::new();
    for &(lba, blocks) in &ext {
        let drv = drv.clone();
        set.spawn(async move {
            let data = pattern(lba, blocks, 512, seed);
            let w = drv
                .send_command(0, 0, ScsiCommand::Write { lba, blocks, data })
                .await
                .unwrap();
            assert!(w.is_good(), "write {lba}+{blocks}: {w:?}");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    for &(lba, blocks) in &ext {
        let drv = drv.clone();
        set.spawn(async move {
            let r = drv
                .send_command(
                    0,
                    0,
                    ScsiCommand::Read {
                        lba,
                        blocks,
                        block_size: 512,
                    },
                )
                .await
                .unwrap();
            assert!(r.is_good(), "read {lba}+{blocks}: {r:?}");
            assert!(
                r.data == pattern(lba, blocks, 512, seed),
                "extent {lba}+{blocks} reads back different bytes"
            );
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    ext.into_iter()
        .map(|(lba, blocks)| (lba, pattern(lba, blocks, 512, seed)))
        .collect()
}

#[test]
fn cache_none_io_uring_random_io_over_two_queues_lands_in_the_image() {
    let _g = serial();
    let before = uring_fds();
    let mut d = serve(CacheMode::None, AioMode::Auto, 64 * MIB, 2);
    let img = d.image_path(0, 0);
    block_on(async {
        let drv = connect(&d, 2).await;
        let written = random_write_read(&drv, 1024, 0x5EED).await;
        // One engine per request queue that saw READ/WRITE: both queues.
        assert_eq!(uring_fds(), before + 2, "cache=none defaults to io_uring");
        // The bytes are in the file, as the host reads it.
        for (lba, data) in written.iter().step_by(7) {
            assert!(
                host_read(&img, lba * 512, data.len()) == *data,
                "host view of LBA {lba}"
            );
        }
        // Short of a full block on each side: blocks in between are untouched zeros.
        let r = drv
            .send_command(
                0,
                0,
                ScsiCommand::Read {
                    lba: 32 * 1024 + 5,
                    blocks: 3,
                    block_size: 512,
                },
            )
            .await
            .unwrap();
        assert!(r.is_good() && r.data.iter().all(|&b| b == 0));
    });
    d.stop();
    // The device of the connection is gone, with its engines.
    assert_eq!(
        wait_uring_fds(before),
        before,
        "engines closed after the disconnect"
    );
}

#[test]
fn cache_writeback_with_io_uring_and_inline_default() {
    let _g = serial();
    let before = uring_fds();
    {
        let d = serve(CacheMode::Writeback, AioMode::IoUring, 32 * MIB, 2);
        let img = d.image_path(0, 0);
        block_on(async {
            let drv = connect(&d, 2).await;
            let written = random_write_read(&drv, 512, 0xB00C).await;
            assert_eq!(uring_fds(), before + 2, "aio=io_uring was asked for");
            for (lba, data) in &written {
                assert!(
                    host_read(&img, lba * 512, data.len()) == *data,
                    "host view of LBA {lba}"
                );
            }
        });
    }
    assert_eq!(wait_uring_fds(before), before);
    // The default with writeback is inline: no io_uring at all.
    let d = serve(CacheMode::Writeback, AioMode::Auto, 32 * MIB, 2);
    block_on(async {
        let drv = connect(&d, 2).await;
        random_write_read(&drv, 256, 0x1A1A).await;
        assert_eq!(uring_fds(), before, "writeback defaults to inline");
    });
}

#[test]
fn io_uring_lun_keeps_scsi_checks_sync_cache_and_fua() {
    let _g = serial();
    let d = serve(CacheMode::None, AioMode::IoUring, 4 * MIB, 1);
    let img = d.image_path(0, 0);
    block_on(async {
        let drv = connect(&d, 1).await;
        let blocks = (4 * MIB / 512) as u32;
        // LBA range checked by the SCSI layer: ILLEGAL REQUEST 21/00, no data.
        for (lba, n) in [(blocks - 1, 2u16), (blocks, 1)] {
            let r = raw(&drv, &cdb10(0x28, 0, lba, n), &[], 1024).await;
            assert_eq!(r.status, 2, "READ {lba}+{n}: {r:?}");
            assert_eq!(triple(&r), (5, 0x21, 0));
            let r = raw(
                &drv,
                &cdb10(0x2A, 0, lba, n),
                &vec![1u8; 512 * usize::from(n)],
                0,
            )
            .await;
            assert_eq!(triple(&r), (5, 0x21, 0), "WRITE {lba}+{n}");
        }
        // The last block is fine; a buffer smaller than the transfer is an overrun.
        let last = pattern(u64::from(blocks - 1), 1, 512, 3);
        let r = raw(&drv, &cdb10(0x2A, 0, blocks - 1, 1), &last, 0).await;
        assert!(r.is_good(), "{r:?}");
        assert_eq!(host_read(&img, u64::from(blocks - 1) * 512, 512), last);
        // Writes in flight, then SYNCHRONIZE CACHE(10) and a FUA write.
        let mut set = JoinSet::new();
        for i in 0..64u64 {
            let drv = drv.clone();
            set.spawn(async move {
                let data = pattern(i * 8, 8, 512, 11);
                let fua = i % 2 == 0;
                let r = raw(
                    &drv,
                    &cdb10(0x2A, if fua { 0x08 } else { 0 }, i as u32 * 8, 8),
                    &data,
                    0,
                )
                .await;
                assert!(r.is_good(), "write {i} (fua {fua}): {r:?}");
            });
        }
        let r = raw(&drv, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).await;
        assert!(r.is_good(), "SYNCHRONIZE CACHE: {r:?}");
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        for i in 0..64u64 {
            assert_eq!(
                host_read(&img, i * 8 * 512, 4096),
                pattern(i * 8, 8, 512, 11)
            );
        }
        // Residual: a READ into a bigger buffer reports the unused bytes.
        let r = raw(&drv, &cdb10(0x28, 0, 0, 1), &[], 4096).await;
        assert!(r.is_good());
        assert_eq!(r.data.len(), 512);
        assert_eq!(r.residual, 4096 - 512);
    });
}

#[test]
fn ring_reset_and_disconnect_with_transfers_in_flight() {
    let _g = serial();
    let before = uring_fds();
    let d = serve(CacheMode::None, AioMode::IoUring, 64 * MIB, 2);
    let img = d.image_path(0, 0);
    block_on(async {
        // GET_VRING_BASE (a queue reset) while big writes are in flight: the
        // device waits for them and returns each; the copying API retries the
        // ones the reset failed, so every write ends up GOOD and in place.
        let drv = connect(&d, 2).await;
        let mut set = JoinSet::new();
        for i in 0..128u64 {
            let drv = drv.clone();
            set.spawn(async move {
                let data = pattern(i * 256, 256, 512, 21);
                let w = drv
                    .send_command(
                        0,
                        0,
                        ScsiCommand::Write {
                            lba: i * 256,
                            blocks: 256,
                            data,
                        },
                    )
                    .await
                    .unwrap();
                assert!(w.is_good(), "write {i}: {w:?}");
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        drv.reset_queue(0).await.expect("queue reset");
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        for i in (0..128u64).step_by(9) {
            assert!(
                host_read(&img, i * 256 * 512, 256 * 512) == pattern(i * 256, 256, 512, 21),
                "extent {i}"
            );
        }

        // Disconnect with transfers in flight: the tasks are aborted and
        // the driver dropped while the device still has I/O in the kernel.
        for i in 0..128u64 {
            let drv = drv.clone();
            set.spawn(async move {
                let data = pattern(i * 256, 256, 512, 22);
                let _ = drv
                    .send_command(
                        0,
                        0,
                        ScsiCommand::Write {
                            lba: i * 256,
                            blocks: 256,
                            data,
                        },
                    )
                    .await;
            });
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        set.abort_all();
        while set.join_next().await.is_some() {}
        drop(drv);
    });
    // The old device drained and closed its engines; a new frontend is
    // served, with fresh engines.
    assert_eq!(
        wait_uring_fds(before),
        before,
        "engines closed after the disconnect"
    );
    block_on(async {
        let drv = connect(&d, 2).await;
        random_write_read(&drv, 256, 0xD15C).await;
        assert_eq!(uring_fds(), before + 2);
    });
}

#[test]
fn io_uring_with_busy_polling() {
    // --poll-us: the worker spins on the avail ring; io_uring completions
    // end the spin and are reaped at once.
    let _g = serial();
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut spec = LunSpec::new(0, 0, image(dir.path(), "t0l0.img", 16 * MIB));
    spec.options.cache = CacheMode::None;
    let d = TestDaemon::serve(
        dir,
        &[spec],
        DeviceOptions {
            request_queues: 2,
            poll: vscsi_backend::vhost::Poll::Fixed(Duration::from_micros(200)),
            ..Default::default()
        },
    );
    let img = d.image_path(0, 0);
    block_on(async {
        let drv = connect(&d, 2).await;
        let t = Instant::now();
        let written = random_write_read(&drv, 256, 0x9011).await;
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        for (lba, data) in written.iter().step_by(5) {
            assert!(
                host_read(&img, lba * 512, data.len()) == *data,
                "host view of LBA {lba}"
            );
        }
    });
}
