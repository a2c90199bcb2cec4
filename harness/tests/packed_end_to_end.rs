//! The driver's packed rings against the daemon's (VIRTIO 1.2 §2.8),
//! through the real socket and shared memory: every ring mode (indirect x
//! event index x 1 and 4 request queues x sizes 16 to 1024) with verified
//! I/O and many commands in flight, on an inline LUN and on an io_uring LUN
//! (whose transfers complete out of order, so used descriptors are written
//! out of order); more commands than a 16-entry ring's size times 100;
//! a queue reset and a device reset with transfers in flight.

mod common;

use std::sync::Arc;

use common::{host_read, image, pattern, TestDaemon};
use tokio::task::JoinSet;
use vscsi_backend::config::LunSpec;
use vscsi_backend::storage::AioMode;
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{Driver, DriverOptions, QueueConfig, ScsiCommand};

const MIB: u64 = 1 << 20;
const BLOCKS: u32 = 8;

fn serve(aio: AioMode) -> TestDaemon {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut spec = LunSpec::new(0, 0, image(dir.path(), "t0l0.img", 16 * MIB));
    spec.options.aio = aio;
    TestDaemon::serve(
        dir,
        &[spec],
        DeviceOptions {
            request_queues: 4,
            ..Default::default()
        },
    )
}

async fn packed(d: &TestDaemon, cfg: QueueConfig) -> Arc<Driver> {
    let dopts = DriverOptions {
        max_transfer: 16 * 1024,
        ..Default::default()
    };
    let drv = Driver::connect_with(&d.socket, cfg, dopts).await.unwrap();
    let f = drv.features();
    assert!(f.packed, "{cfg:?}: packed negotiated");
    assert_eq!(
        (f.indirect, f.event_index, f.queue_count, f.queue_size),
        (
            cfg.use_indirect,
            cfg.event_index,
            cfg.queue_count,
            cfg.queue_size
        )
    );
    Arc::new(drv)
}

/// `n` writes at `base` then `n` reads, `n` in flight at once, verified.
async fn verified_io(drv: &Arc<Driver>, base: u64, n: u64, seed: u64, what: &str) {
    let mut set = JoinSet::new();
    for i in 0..n {
        let drv = drv.clone();
        let lba = base + i * u64::from(BLOCKS);
        set.spawn(async move {
            let data = pattern(lba, BLOCKS, 512, seed);
            let w = ScsiCommand::Write {
                lba,
                blocks: BLOCKS,
                data,
            };
            drv.send_command(0, 0, w).await.unwrap().ok().unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let mut set = JoinSet::new();
    for i in 0..n {
        let drv = drv.clone();
        let lba = base + i * u64::from(BLOCKS);
        set.spawn(async move {
            let r = ScsiCommand::Read {
                lba,
                blocks: BLOCKS,
                block_size: 512,
            };
            let got = drv.send_command(0, 0, r).await.unwrap().ok().unwrap();
            (lba, got.data == pattern(lba, BLOCKS, 512, seed))
        });
    }
    while let Some(r) = set.join_next().await {
        let (lba, ok) = r.unwrap();
        assert!(ok, "{what}: mismatch at LBA {lba}");
    }
    let s = drv.stats();
    assert!(s.queues.iter().all(|q| q.in_flight == 0), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_packed_ring_mode_does_verified_io_inline_and_out_of_order() {
    for aio in [AioMode::Inline, AioMode::IoUring] {
        let d = serve(aio);
        let mut combo = 0u64;
        for use_indirect in [false, true] {
            for event_index in [false, true] {
                for queue_count in [1u16, 4] {
                    for queue_size in [16u16, 64, 256, 1024] {
                        combo += 1;
                        let cfg = QueueConfig {
                            queue_count,
                            queue_size,
                            use_indirect,
                            event_index,
                            use_packed: true,
                        };
                        let drv = packed(&d, cfg).await;
                        let base = (combo % 8) * 96 * u64::from(BLOCKS);
                        verified_io(&drv, base, 96, combo, &format!("{aio:?} {cfg:?}")).await;
                        if queue_count == 4 {
                            let s = drv.stats();
                            assert!(s.queues.iter().all(|q| q.completions > 0), "{cfg:?}");
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_commands_than_a_hundred_times_the_ring_with_resets_in_between() {
    let d = serve(AioMode::IoUring);
    let cfg = QueueConfig {
        queue_count: 1,
        queue_size: 16,
        use_indirect: false,
        event_index: true,
        use_packed: true,
    };
    let drv = packed(&d, cfg).await;
    // 16 * 100 writes and as many reads, 12 in flight at a time: hundreds
    // of laps of the ring, with used descriptors written out of order.
    for round in 0..150u64 {
        verified_io(&drv, (round % 16) * 96, 12, round, "wrap").await;
    }
    let total: u64 = drv.stats().queues.iter().map(|q| q.completions).sum();
    assert!(total >= 16 * 100, "{total} completions");

    // A queue reset with transfers in flight: the daemon completes them,
    // GET_VRING_BASE gives the packed position, the ring starts again.
    let mut set = JoinSet::new();
    for i in 0..12u64 {
        let drv = drv.clone();
        set.spawn(async move {
            let data = pattern(i * 256, 32, 512, 41);
            let w = ScsiCommand::Write {
                lba: i * 256,
                blocks: 32,
                data,
            };
            assert!(drv.send_command(0, 0, w).await.unwrap().is_good());
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    drv.reset_queue(0).await.expect("queue reset");
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let img = d.image_path(0, 0);
    for i in 0..12u64 {
        assert!(host_read(&img, i * 256 * 512, 32 * 512) == pattern(i * 256, 32, 512, 41));
    }
    verified_io(&drv, 0, 12, 99, "after the queue reset").await;
    // A device reset: every ring stopped, RESET_DEVICE, SET_FEATURES, the
    // rings created again (packed still).
    drv.reset_device().await.expect("device reset");
    verified_io(&drv, 512, 12, 100, "after the device reset").await;
}

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<vscsi_driver::DeviceEvent>,
) -> vscsi_driver::DeviceEvent {
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("stream open");
        if ev != vscsi_driver::DeviceEvent::EventsMissed {
            return ev;
        }
    }
}

/// The control and event queues on packed rings: TMFs answered, hot-plug
/// and parameter change events delivered one after the other (each event
/// buffer used, re-posted, used again around the ring), with and without
/// EVENT_IDX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_event_queues_serve_packed_rings() {
    use std::time::Duration;
    use vscsi_backend::vhost::{EventHub, ResetReason as BackendReason};
    use vscsi_driver::{DeviceEvent, ResetReason, Tmf, TmfResponse};
    use vscsi_protocol::lun::Lun;

    for event_index in [false, true] {
        let hub = Arc::new(EventHub::default());
        let d = TestDaemon::start_with(
            &[(0, 0, 8 * MIB, false)],
            DeviceOptions {
                events: hub.clone(),
                ..Default::default()
            },
        );
        let cfg = QueueConfig {
            event_index,
            use_packed: true,
            ..Default::default()
        };
        let drv = Driver::connect(&d.socket, cfg).await.unwrap();
        assert!(drv.features().packed && drv.features().hotplug);
        let mut rx = drv.events();
        for _ in 0..40 {
            let r = drv.task_management(0, 0, Tmf::QueryTaskSet).await.unwrap();
            assert_eq!(
                r,
                TmfResponse::FunctionComplete,
                "QUERY TASK SET, nothing in flight"
            );
        }
        let deliver = |send: &dyn Fn() -> usize| {
            for _ in 0..500 {
                if send() == 1 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("event never delivered");
        };
        deliver(&|| hub.transport_reset(0, 1, BackendReason::Rescan));
        assert_eq!(
            next_event(&mut rx).await,
            DeviceEvent::TransportReset {
                lun: Lun { target: 0, lun: 1 },
                reason: ResetReason::Rescan
            }
        );
        for i in 0..40u16 {
            deliver(&|| hub.param_change(0, i, 0x2A, 0x09));
            assert_eq!(
                next_event(&mut rx).await,
                DeviceEvent::ParamChange {
                    lun: Lun { target: 0, lun: i },
                    asc: 0x2A,
                    ascq: 0x09
                }
            );
        }
        assert!(drv
            .send_command(0, 0, ScsiCommand::TestUnitReady)
            .await
            .unwrap()
            .is_good());
    }
}
