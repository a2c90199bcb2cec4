//! A whole request through the daemon, in-process: the driver's ring and
//! memfd, the real unix socket, the daemon's request queue worker, the SCSI
//! target and `preadv` from the page cache, and back. One 4 KiB READ at a
//! time (QD1), with both sides sleeping on their eventfds, with both
//! spinning a fixed time and with both polling adaptively.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::TestDaemon;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{Driver, DriverOptions, Poll, QueueConfig};

const MIB: u64 = 1 << 20;

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    g.throughput(Throughput::Bytes(4096));
    for (name, poll) in [
        ("read_4k_qd1_interrupts", Poll::Off),
        (
            "read_4k_qd1_polling",
            Poll::Fixed(Duration::from_micros(50)),
        ),
        ("read_4k_qd1_adaptive", Poll::ADAPTIVE),
    ] {
        let opts = DeviceOptions {
            poll,
            ..Default::default()
        };
        let d = TestDaemon::start_with(&[(0, 0, 64 * MIB, false)], opts);
        // Real data, so reads come from the page cache rather than holes.
        std::fs::write(d.image_path(0, 0), vec![0xA5u8; 64 << 20]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let drv = rt
            .block_on(Driver::connect_with(
                &d.socket,
                QueueConfig {
                    queue_count: 1,
                    ..Default::default()
                },
                DriverOptions {
                    poll,
                    ..Default::default()
                },
            ))
            .unwrap();
        let mut lba = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                lba = (lba + 8) % (64 * MIB / 512 - 8);
                rt.block_on(drv.read_with(0, 0, lba, 8, 512, |d| d.get(0)))
                    .unwrap()
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
