//! CDB parse and dispatch through the SCSI target (no transport): what one
//! command costs the daemon beyond moving its data.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vscsi_backend::scsi::{
    LogicalUnit, LunOptions, Request, ScsiBus, SliceDataOut, VecDataIn, NO_DATA_OUT,
};
use vscsi_protocol::cdb::Cdb;

fn bus(dir: &std::path::Path) -> ScsiBus {
    let path = dir.join("bench.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    // Real data, so reads come from the page cache rather than holes.
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0xA5; 64 << 20], 0).unwrap();
    let mut bus = ScsiBus::new();
    bus.add_lun(
        0,
        0,
        Arc::new(LogicalUnit::open(&path, LunOptions::default()).unwrap()),
    )
    .unwrap();
    bus
}

fn dispatch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path());
    let t = bus.target(0).unwrap();
    let mut g = c.benchmark_group("scsi");

    let tur = Cdb::test_unit_ready();
    g.bench_function("test_unit_ready", |b| {
        let mut din = VecDataIn::new(0);
        b.iter(|| {
            t.execute(
                0,
                &Request {
                    cdb: tur.as_bytes(),
                    tag: 1,
                    task_attr: 0,
                    nexus: vscsi_backend::scsi::nexus::Nexus::local(),
                },
                &mut din,
                &NO_DATA_OUT,
            )
        })
    });
    let inq = Cdb::inquiry(false, 0, 96);
    g.bench_function("inquiry", |b| {
        let mut din = VecDataIn::new(96);
        b.iter(|| {
            t.execute(
                0,
                &Request {
                    cdb: inq.as_bytes(),
                    tag: 1,
                    task_attr: 0,
                    nexus: vscsi_backend::scsi::nexus::Nexus::local(),
                },
                &mut din,
                &NO_DATA_OUT,
            )
        })
    });
    let bad = [0xC5u8, 0, 0, 0, 0, 0];
    g.bench_function("invalid_opcode", |b| {
        let mut din = VecDataIn::new(0);
        b.iter(|| {
            t.execute(
                0,
                &Request {
                    cdb: &bad,
                    tag: 1,
                    task_attr: 0,
                    nexus: vscsi_backend::scsi::nexus::Nexus::local(),
                },
                &mut din,
                &NO_DATA_OUT,
            )
        })
    });

    g.throughput(Throughput::Bytes(4096));
    let mut lba = 0u32;
    g.bench_function("read_10_4k", |b| {
        let mut din = VecDataIn::new(4096);
        b.iter_batched(
            || {
                lba = (lba + 8) % (64 << 11);
                Cdb::read_10(lba, 8, false)
            },
            |cdb| {
                t.execute(
                    0,
                    &Request {
                        cdb: cdb.as_bytes(),
                        tag: 1,
                        task_attr: 0,
                        nexus: vscsi_backend::scsi::nexus::Nexus::local(),
                    },
                    &mut din,
                    &NO_DATA_OUT,
                )
            },
            BatchSize::SmallInput,
        )
    });
    let payload = vec![0x3Cu8; 4096];
    g.bench_function("write_10_4k", |b| {
        let mut din = VecDataIn::new(0);
        b.iter_batched(
            || {
                lba = (lba + 8) % (64 << 11);
                Cdb::write_10(lba, 8, false)
            },
            |cdb| {
                t.execute(
                    0,
                    &Request {
                        cdb: cdb.as_bytes(),
                        tag: 1,
                        task_attr: 0,
                        nexus: vscsi_backend::scsi::nexus::Nexus::local(),
                    },
                    &mut din,
                    &SliceDataOut(&payload),
                )
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
