//! Every ring mode: split and packed rings × indirect descriptors on/off ×
//! event index on/off × 1 and 4 request queues × queue sizes 16 to 1024,
//! each doing verified I/O with many commands in flight, through the real
//! daemon.

mod common;

use std::sync::Arc;

use common::{pattern, TestDaemon};
use tokio::task::JoinSet;
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{Driver, DriverOptions, QueueConfig, ScsiCommand};

const MIB: u64 = 1 << 20;
const BLOCKS: u32 = 8;
const COMMANDS: u64 = 96;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_ring_mode_does_verified_io_with_many_commands_in_flight() {
    let opts = DeviceOptions {
        request_queues: 4,
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 16 * MIB, false)], opts);
    let mut combo = 0u64;
    for use_packed in [false, true] {
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
                            use_packed,
                        };
                        let dopts = DriverOptions {
                            max_transfer: 16 * 1024,
                            ..Default::default()
                        };
                        let drv =
                            Arc::new(Driver::connect_with(&d.socket, cfg, dopts).await.unwrap());
                        let f = drv.features();
                        assert_eq!(
                            (
                                f.packed,
                                f.indirect,
                                f.event_index,
                                f.queue_count,
                                f.queue_size
                            ),
                            (
                                use_packed,
                                use_indirect,
                                event_index,
                                queue_count,
                                queue_size
                            )
                        );
                        let what = format!("{cfg:?}");
                        let seed = combo;
                        // Each combination writes its own region with its own seed.
                        let base = (combo % 8) * COMMANDS * BLOCKS as u64;
                        let mut set = JoinSet::new();
                        for i in 0..COMMANDS {
                            let drv = drv.clone();
                            let lba = base + i * BLOCKS as u64;
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
                        for i in 0..COMMANDS {
                            let drv = drv.clone();
                            let lba = base + i * BLOCKS as u64;
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
                        let total: u64 = s.queues.iter().map(|q| q.completions).sum();
                        assert!(total >= 2 * COMMANDS, "{what}: {total} completions");
                        let kicks: u64 = s.queues.iter().map(|q| q.kicks).sum();
                        assert!(kicks <= total, "{what}: {kicks} kicks for {total} commands");
                        if queue_count == 4 {
                            assert!(
                                s.queues.iter().all(|q| q.completions > 0),
                                "{what}: every queue carried commands: {:?}",
                                s.queues
                            );
                        }
                        assert!(s.queues.iter().all(|q| q.in_flight == 0));
                        let lun = &s.luns[0].1;
                        assert_eq!(lun.bytes_written, COMMANDS * BLOCKS as u64 * 512, "{what}");
                        assert!(lun.bytes_read >= COMMANDS * BLOCKS as u64 * 512, "{what}");
                        assert_eq!(lun.errors(), 0, "{what}");
                        drop(drv);
                    }
                }
            }
        }
    }
    assert_eq!(combo, 64);
}
