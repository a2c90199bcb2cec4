//! The zero-copy buffer API (`Driver::read_with` / `Driver::write_with`)
//! through the real daemon: byte-exact round trips, agreement with the
//! copying API and the image file, many commands in flight over several
//! queues, and the error paths.

mod common;

use std::sync::Arc;

use common::{host_read, pattern, TestDaemon};
use vscsi_driver::{Driver, DriverOptions, Error, QueueConfig, ScsiCommand};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_copy_round_trip_is_byte_exact() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let data = pattern(100, 16, 512, 7);

    // Written in place, read back in place.
    let filled = drv
        .write_with(0, 0, 100, 16, 512, |buf| {
            assert_eq!(buf.len(), data.len());
            buf.copy_from(&data);
            buf.len()
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(filled, 16 * 512);
    let same = drv
        .read_with(0, 0, 100, 16, 512, |got| got == data[..])
        .await
        .unwrap()
        .unwrap();
    assert!(same, "zero-copy read differs from what was written");

    // The copying API and the image agree.
    let r = drv
        .send_command(
            0,
            0,
            ScsiCommand::Read {
                lba: 100,
                blocks: 16,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good());
    assert_eq!(r.data, data);
    assert_eq!(host_read(&d.image_path(0, 0), 100 * 512, data.len()), data);

    // Written by the copying API, read in place.
    let other = pattern(300, 4, 512, 9);
    assert!(drv
        .send_command(
            0,
            0,
            ScsiCommand::Write {
                lba: 300,
                blocks: 4,
                data: other.clone()
            }
        )
        .await
        .unwrap()
        .is_good());
    let copy = drv
        .read_with(0, 0, 300, 4, 512, |s| s.to_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy, other);
    let stats = drv.stats();
    let lu = &stats.luns[0].1;
    assert!(lu.bytes_read >= 2 * 16 * 512 + 4 * 512, "{lu:?}");
    assert!(lu.bytes_written >= 16 * 512 + 4 * 512, "{lu:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_copy_many_in_flight_over_queues() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let cfg = QueueConfig {
        queue_count: 4,
        queue_size: 32,
        ..Default::default()
    };
    let drv = Arc::new(Driver::connect(&d.socket, cfg).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let drv = drv.clone();
        tasks.push(tokio::spawn(async move {
            let lba = i * 8;
            let data = pattern(lba, 8, 512, 3);
            drv.write_with(0, 0, lba, 8, 512, |buf| buf.copy_from(&data))
                .await
                .unwrap()
                .unwrap();
        }));
    }
    for t in tasks.drain(..) {
        t.await.unwrap();
    }
    for i in 0..64u64 {
        let drv = drv.clone();
        tasks.push(tokio::spawn(async move {
            let lba = i * 8;
            let want = pattern(lba, 8, 512, 3);
            let ok = drv
                .read_with(0, 0, lba, 8, 512, |got| got == want[..])
                .await
                .unwrap()
                .unwrap();
            assert!(ok, "LBA {lba}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every slot came back: nothing in flight, and a further command works.
    assert!(drv.in_flight().is_empty());
    assert!(drv.stats().queues.iter().all(|q| q.completions > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_errors() {
    let d = TestDaemon::start(&[(0, 0, MIB, false)]);
    let opts = DriverOptions {
        max_transfer: 64 * 1024,
        ..Default::default()
    };
    let drv = Driver::connect_with(&d.socket, QueueConfig::default(), opts)
        .await
        .unwrap();
    // Bigger than one slot: refused, the closure never runs.
    let e = drv
        .read_with(0, 0, 0, 256, 512, |_| panic!("must not run"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TransferTooLarge { .. }), "{e}");
    let e = drv
        .write_with(0, 0, 0, 256, 512, |_| panic!("must not run"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TransferTooLarge { .. }), "{e}");
    // Past the end of the LUN: CHECK CONDITION, ILLEGAL REQUEST; the read
    // closure is not called.
    let e = drv
        .read_with(0, 0, 2048, 8, 512, |_| panic!("must not run"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.0.sense_data().unwrap().key as u8, 5, "{e}");
    let e = drv
        .write_with(0, 0, 2048, 8, 512, |buf| buf.fill(1))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.0.sense_data().unwrap().key as u8, 5, "{e}");
    // The slots of the failed commands came back.
    for _ in 0..300 {
        drv.read_with(0, 0, 0, 1, 512, |b| b.len())
            .await
            .unwrap()
            .unwrap();
    }
}
