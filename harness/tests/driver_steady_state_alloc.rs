//! The driver's command path allocates nothing per command in steady state
//! (issue "The userspace virtio-scsi driver, complete": buffers from the
//! pool, no heap allocation per command).
//!
//! A counting global allocator counts the allocations of this test's thread
//! only. The driver runs on a current-thread tokio runtime on that thread
//! (its completion tasks and watchdog included); the daemon runs in its own
//! threads and does not count. After a warm-up, zero-copy WRITE and READ
//! commands, one at a time and four in flight, must not allocate at all.

mod common;

use common::TestDaemon;
use std::time::Duration;

use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{Driver, DriverOptions, Poll, QueueConfig};

#[path = "../../backend/tests/counting_alloc/mod.rs"]
mod counting_alloc;

use counting_alloc::allocations;

const MIB: u64 = 1 << 20;

async fn round(drv: &Driver, i: u64) {
    let lba = (i * 8) % 4096;
    let w = drv
        .write_with(0, 0, lba, 8, 512, |b| b.fill(i as u8))
        .await
        .unwrap();
    assert!(w.is_ok());
    let ok = drv
        .read_with(0, 0, lba, 8, 512, |d| d.iter().all(|b| b == i as u8))
        .await
        .unwrap()
        .unwrap();
    assert!(ok, "read back what was written at LBA {lba}");
}

async fn four_in_flight(drv: &Driver, i: u64) {
    let r = |k: u64| drv.read_with(0, 0, (i * 32 + k * 8) % 4096, 8, 512, |d| d.get(0));
    let (a, b, c, d) = tokio::join!(r(0), r(1), r(2), r(3));
    for x in [a, b, c, d] {
        assert!(x.unwrap().is_ok());
    }
}

#[test]
fn zero_copy_commands_allocate_nothing_in_steady_state() {
    steady_state(false, Poll::Off);
}

#[test]
fn zero_copy_commands_allocate_nothing_in_steady_state_on_packed_rings() {
    steady_state(true, Poll::Off);
}

/// Both sides polling: the completion task's spins (its slices, yields,
/// the adaptive policy's bookkeeping) allocate nothing per command.
#[test]
fn zero_copy_commands_allocate_nothing_in_steady_state_when_polling() {
    steady_state(true, Poll::ADAPTIVE);
    steady_state(false, Poll::Fixed(Duration::from_micros(50)));
}

fn steady_state(use_packed: bool, poll: Poll) {
    let d = TestDaemon::start_with(
        &[(0, 0, 4 * MIB, false)],
        DeviceOptions {
            poll,
            ..Default::default()
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = QueueConfig {
            queue_count: 1,
            queue_size: 64,
            use_packed,
            ..Default::default()
        };
        let opts = DriverOptions {
            poll,
            ..Default::default()
        };
        let drv = Driver::connect_with(&d.socket, cfg, opts).await.unwrap();
        assert_eq!(drv.features().packed, use_packed);
        // Warm-up: metrics entries, histogram buckets, the runtime's queues.
        for i in 0..2000 {
            round(&drv, i).await;
            four_in_flight(&drv, i).await;
        }
        let before = allocations();
        let n = 4000;
        for i in 0..n {
            round(&drv, i).await;
            four_in_flight(&drv, i).await;
        }
        let allocs = allocations() - before;
        assert_eq!(
            allocs,
            0,
            "{allocs} allocations over {} commands in steady state ({poll})",
            n * 6
        );
    });
}
