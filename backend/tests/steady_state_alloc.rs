//! The READ/WRITE path allocates nothing per request in steady state.
//!
//! A counting global allocator wraps the system one; after a warm-up, a loop
//! of READ(10), WRITE(10), READ(16) and WRITE(16) commands through the SCSI
//! target must not allocate at all (issue "Fast as the machine allows").

use std::sync::Arc;

use vscsi_backend::scsi::{
    LogicalUnit, LunOptions, Request, ScsiBus, SliceDataOut, VecDataIn, NO_DATA_OUT,
};
use vscsi_protocol::cdb::Cdb;

mod counting_alloc;

use counting_alloc::allocations;

#[test]
fn read_and_write_allocate_nothing_in_steady_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let lu = LogicalUnit::open(&path, LunOptions::default()).unwrap();
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, Arc::new(lu)).unwrap();
    let target = bus.target(0).unwrap();

    let payload = vec![0x5Au8; 8 * 512];
    let mut data_in = VecDataIn::new(8 * 512);
    let cdbs: Vec<(Cdb, bool)> = (0..64u32)
        .flat_map(|i| {
            [
                (Cdb::write_10(i * 8, 8, false), true),
                (Cdb::read_10(i * 8, 8, false), false),
                (Cdb::write_16(i as u64 * 8, 8, false), true),
                (Cdb::read_16(i as u64 * 8, 8, false), false),
            ]
        })
        .collect();
    let run = |data_in: &mut VecDataIn| {
        for (cdb, write) in &cdbs {
            let req = Request {
                cdb: cdb.as_bytes(),
                tag: 1,
                task_attr: 0,
                nexus: vscsi_backend::scsi::nexus::Nexus::local(),
            };
            let r = if *write {
                target.execute(0, &req, data_in, &SliceDataOut(&payload))
            } else {
                target.execute(0, &req, data_in, &NO_DATA_OUT)
            };
            assert_eq!(r.status, 0, "{:02x?}", cdb.as_bytes());
        }
    };
    run(&mut data_in); // warm-up: lazily initialised state, if any
    let before = allocations();
    for _ in 0..10 {
        run(&mut data_in);
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations,
        0,
        "{} commands allocated {allocations} times",
        cdbs.len() * 10
    );
    assert_eq!(&data_in.as_slice()[..512], &payload[..512]);
}

/// The io_uring path (`aio=io_uring`): READ/WRITE through the SCSI target
/// return a deferred transfer, the queue's engine runs it (READV/WRITEV
/// straight from the buffers, a slot of its preallocated slab, the iovec
/// lists swapped in and out) and reaps it; after a warm-up none of that
/// allocates.
#[test]
fn io_uring_path_allocates_nothing_in_steady_state() {
    use vscsi_backend::scsi::rw::complete_transfer;
    use vscsi_backend::scsi::{DataIn, DataOut};
    use vscsi_backend::storage::AioMode;
    use vscsi_backend::vhost::guest_io::{GuestDataIn, GuestDataOut, IoVecs};
    use vscsi_backend::vhost::uring::Uring;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let opts = LunOptions {
        aio: AioMode::IoUring,
        ..LunOptions::default()
    };
    let lu = Arc::new(LogicalUnit::open(&path, opts).unwrap());
    assert!(lu.defers_io());
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, lu.clone()).unwrap();
    let target = bus.target(0).unwrap();
    let entry = target.entry(0).unwrap().clone();
    let mut engine = match Uring::new(None) {
        Ok(e) => e,
        Err(e) => {
            // No io_uring here (seccomp, io_uring_disabled): nothing to measure.
            tracing::warn!(error = %e, "io_uring unavailable: test skipped");
            return;
        }
    };

    let mut out_buf = vec![0x3Cu8; 8 * 512];
    let mut in_buf = vec![0u8; 8 * 512];
    let (mut readable, mut writable) = (IoVecs::default(), IoVecs::default());
    let mut statuses = 0u64;
    let mut run = |engine: &mut Uring, readable: &mut IoVecs, writable: &mut IoVecs| {
        for i in 0..64u32 {
            for write in [true, false] {
                readable.clear();
                writable.clear();
                if write {
                    readable.push(out_buf.as_mut_ptr(), out_buf.len(), None);
                } else {
                    writable.push(in_buf.as_mut_ptr(), in_buf.len(), None);
                }
                let cdb = if write {
                    Cdb::write_10(i * 8, 8, false)
                } else {
                    Cdb::read_10(i * 8, 8, false)
                };
                let req = Request {
                    cdb: cdb.as_bytes(),
                    tag: 1,
                    task_attr: 0,
                    nexus: vscsi_backend::scsi::nexus::Nexus::local(),
                };
                let mut din = GuestDataIn {
                    iov: writable,
                    base: 0,
                    defer: true,
                };
                let dout = GuestDataOut {
                    iov: readable,
                    base: 0,
                    defer: true,
                };
                assert!(din.can_defer() && dout.can_defer());
                // Counted in flight on the LUN from before the command runs
                // until the engine completes it, as the request queue does.
                entry.begin_transfer();
                let r = target.execute(0, &req, &mut din, &dout);
                let t = *r.transfer().expect("READ/WRITE deferred");
                if engine
                    .start(
                        i as u16,
                        &entry,
                        t,
                        r,
                        None,
                        (readable, 0),
                        (writable, 0),
                        None,
                    )
                    .is_err()
                {
                    let _ = complete_transfer(&lu, &t, Ok(()));
                    panic!("engine refused a transfer");
                }
                while engine.in_flight() > 0 {
                    engine.wait().unwrap();
                    engine.reap(&mut |c| {
                        assert_eq!(c.result.status, 0);
                        statuses += 1;
                    });
                }
            }
        }
    };
    run(&mut engine, &mut readable, &mut writable); // warm-up
    let before = allocations();
    for _ in 0..10 {
        run(&mut engine, &mut readable, &mut writable);
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations, 0,
        "io_uring path allocated {allocations} times"
    );
    assert_eq!(statuses, 11 * 128);
    assert_eq!(entry.in_flight(), 0, "every transfer left the LUN");
    assert!(in_buf.iter().all(|&b| b == 0x3C), "reads see the writes");
    let disk = std::fs::read(&path).unwrap();
    assert!(disk[..64 * 8 * 512].iter().all(|&b| b == 0x3C));
}

/// An NBD LUN (qemu-nbd exporting a raw file over a unix socket): after a
/// warm-up, READ and WRITE through the SCSI target allocate nothing on the
/// queue thread (a fixed slot, the header on the stack, reply data read
/// straight into the buffer). Skipped loudly without qemu-nbd unless
/// VSCSI_REQUIRE_TOOLS=1.
#[test]
fn nbd_path_allocates_nothing_in_steady_state() {
    use std::process::{Command, Stdio};
    let present = Command::new("qemu-nbd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var_os("VSCSI_REQUIRE_TOOLS").is_none(),
            "qemu-nbd is missing: apt-get install qemu-utils (see .ci/run)"
        );
        eprintln!(
            "SKIP: qemu-nbd is missing (apt-get install qemu-utils); NBD allocation test not run"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let sock = dir.path().join("nbd.sock");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new("qemu-nbd")
            .args(["-t", "-f", "raw", "-x", "disk", "-k"])
            .arg(&sock)
            .arg(&path)
            .spawn()
            .unwrap(),
    );
    let t = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed().as_secs() < 20, "qemu-nbd never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let lu = LogicalUnit::open(std::path::Path::new(&uri), LunOptions::default()).unwrap();
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, Arc::new(lu)).unwrap();
    let target = bus.target(0).unwrap();

    let payload = vec![0xA5u8; 8 * 512];
    let mut data_in = VecDataIn::new(8 * 512);
    let cdbs: Vec<(Cdb, bool)> = (0..32u32)
        .flat_map(|i| {
            [
                (Cdb::write_10(i * 8, 8, false), true),
                (Cdb::read_10(i * 8, 8, false), false),
            ]
        })
        .collect();
    let run = |data_in: &mut VecDataIn| {
        for (cdb, write) in &cdbs {
            let req = Request {
                cdb: cdb.as_bytes(),
                tag: 1,
                task_attr: 0,
                nexus: vscsi_backend::scsi::nexus::Nexus::local(),
            };
            let r = if *write {
                target.execute(0, &req, data_in, &SliceDataOut(&payload))
            } else {
                target.execute(0, &req, data_in, &NO_DATA_OUT)
            };
            assert_eq!(r.status, 0, "{:02x?}", cdb.as_bytes());
        }
    };
    run(&mut data_in);
    let before = allocations();
    for _ in 0..10 {
        run(&mut data_in);
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations,
        0,
        "{} NBD commands allocated {allocations} times",
        cdbs.len() * 10
    );
    assert_eq!(&data_in.as_slice()[..512], &payload[..512]);
}

/// A request queue on a packed ring (VIRTIO 1.2 §2.8): after a warm-up,
/// READ(10) chains taken off the ring, run, and completed with used
/// descriptors (lap after lap, the ring's id table reused) allocate nothing.
#[test]
fn packed_ring_request_path_allocates_nothing_in_steady_state() {
    packed_ring_request_path(vscsi_backend::vhost::Poll::Off);
}

/// The same with the worker polling the ring once it runs dry: a fixed
/// spin, and the adaptive policy (its spins, its switch to sleeping, its
/// wake-ups and probes) allocate nothing either.
#[test]
fn polling_request_paths_allocate_nothing_in_steady_state() {
    use std::time::Duration;
    use vscsi_backend::vhost::Poll;
    packed_ring_request_path(Poll::Fixed(Duration::from_micros(20)));
    packed_ring_request_path(Poll::ADAPTIVE);
    packed_ring_request_path(Poll::Adaptive {
        cap: Duration::from_micros(10),
    });
}

fn packed_ring_request_path(poll: vscsi_backend::vhost::Poll) {
    use vhost_user_backend::VringT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
    use vscsi_backend::fault::FaultTable;
    use vscsi_backend::vhost::queue_metrics::QueueMetrics;
    use vscsi_backend::vhost::request_queue::{QueueShared, RequestQueue};
    use vscsi_backend::vhost::{GuestMem, Vring};

    const RING: u64 = 0x1000;
    const SIZE: u16 = 16;
    const AVAIL: u16 = 1 << 7;
    const USED: u16 = 1 << 15;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mut bus = ScsiBus::new();
    let lu = LogicalUnit::open(&path, LunOptions::default()).unwrap();
    bus.add_lun(0, 0, Arc::new(lu)).unwrap();
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let vring = Vring::new(atomic.clone(), SIZE).unwrap();
    vring.set_queue_size(SIZE);
    vring.set_queue_info(RING, 0x3000, 0x3004).unwrap();
    vring.set_queue_next_avail(0x8000);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let shared = Arc::new(QueueShared::new(0));
    shared.ring.set_packed(true);
    let mut q = RequestQueue::new(
        shared,
        Arc::new(FaultTable::default()),
        poll,
        Arc::new(QueueMetrics::default()),
    );
    let mut req = [0u8; 51];
    req[..4].copy_from_slice(&[1, 0, 0x40, 0]);
    req[19..29].copy_from_slice(&Cdb::read_10(8, 8, false).as_bytes()[..10]);
    mem.write_slice(&req, GuestAddress(0x10000)).unwrap();
    let put = |i: u16, addr: u64, len: u32, id: u16, flags: u16| {
        let at = RING + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(id, GuestAddress(at + 12)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 14)).unwrap();
    };
    // Chains of three descriptors in a ring of 16: the positions and wrap
    // counters go all around the ring and the id table.
    let (mut pos, mut wrap, mut id) = (0u16, true, 0u16);
    let mut round = || {
        let a = if wrap { AVAIL } else { USED };
        let at = |k: u16| (pos + k) % SIZE;
        let w = |k: u16| if pos + k >= SIZE { !wrap } else { wrap };
        let fl = |k: u16| if w(k) { AVAIL } else { USED };
        put(at(1), 0x11000, 108, 0, fl(1) | 2 | 1);
        put(at(2), 0x12000, 4096, id, fl(2) | 2);
        put(at(0), 0x10000, 51, 0, a | 1);
        q.process(&vring, &atomic, &bus).unwrap();
        let flags: u16 = mem
            .read_obj(GuestAddress(RING + 16 * u64::from(pos) + 14))
            .unwrap();
        let used_id: u16 = mem
            .read_obj(GuestAddress(RING + 16 * u64::from(pos) + 12))
            .unwrap();
        // Used: AVAIL and USED both equal the device's wrap counter.
        let both = if wrap { AVAIL | USED } else { 0 };
        assert_eq!((used_id, flags & (AVAIL | USED)), (id, both));
        (pos, wrap) = if pos + 3 >= SIZE {
            (pos + 3 - SIZE, !wrap)
        } else {
            (pos + 3, wrap)
        };
        id = (id + 1) % SIZE;
    };
    for _ in 0..100 {
        round();
    }
    let before = allocations();
    for _ in 0..1000 {
        round();
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations, 0,
        "1000 packed-ring requests allocated {allocations} times ({poll})"
    );
}
