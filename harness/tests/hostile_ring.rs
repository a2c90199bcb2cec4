//! A frontend that breaks the split-ring contract (VIRTIO 1.2 §2.7) against
//! the real daemon, through the real socket and shared memory. For every
//! kind of violation: the chains taken before it are completed once, the
//! broken queue stops (and stays stopped through thousands of kicks and
//! repeated violations, with a bounded log), the connection's other queue
//! and the next connection are served, the broken-ring counter counts it,
//! and after the frontend resets the ring (GET_VRING_BASE, SET_VRING_*) the
//! queue is served again.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDaemon;
use tracing_subscriber::layer::SubscriberExt;
use vmm_sys_util::eventfd::EventFd;
use vscsi_backend::vhost::{DeviceOptions, QueueMetrics};
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{RingOptions, Segment, SplitRing};
use vscsi_driver::transport::vhost_user::VhostUserTransport;
use vscsi_driver::{Driver, QueueConfig, ScsiCommand};
use vscsi_protocol::lun::Lun;
use vscsi_protocol::virtio_scsi::{CmdReq, CmdResp};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// How long a queue or connection may take to answer before the test
/// calls it hung (a bound on liveness on a loaded machine, not a speed test).
const LIVENESS: Duration = Duration::from_secs(10);

const MEM: usize = 4 << 20;
const SIZE: u16 = 16;
const REQ: usize = 0x10000;
const RESP: usize = 0x20000;
const IND: usize = 0x30000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// Log events of the daemon's vhost and SCSI layers, counted.
static LINES: AtomicUsize = AtomicUsize::new(0);

struct Count;
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let t = e.metadata().target();
        if *e.metadata().level() <= tracing::Level::INFO
            && (t.starts_with("vscsi_backend::vhost")
                || t.starts_with("vscsi_backend::scsi")
                || t.starts_with("virtio_queue"))
        {
            LINES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Q {
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
}

struct Frontend {
    t: VhostUserTransport,
    mem: Arc<SharedMemory>,
    /// Control, event, request queue 0 (the one broken), request queue 1.
    q: Vec<Q>,
}

impl Frontend {
    fn connect(socket: &std::path::Path) -> Self {
        let mut t = VhostUserTransport::connect(socket, 0).unwrap();
        let mem = Arc::new(SharedMemory::new("hostile-ring", MEM).unwrap());
        t.set_memory(&mem).unwrap();
        let mut q = Vec::new();
        for (i, base) in [0usize, 0x4000, 0x8000, 0xC000].into_iter().enumerate() {
            let ring = SplitRing::new(mem.clone(), base, SIZE, RingOptions::default()).unwrap();
            let (kick, call) = (
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            );
            t.start_vring(i, &ring, &kick, &call).unwrap();
            q.push(Q { ring, kick, call });
        }
        Self { t, mem, q }
    }

    fn tur_header(&self) {
        let mut req = CmdReq::new_zeroed();
        req.lun = Lun::new(0, 0).unwrap().encode();
        self.mem.write(REQ, req.as_bytes()).unwrap();
    }

    /// A TEST UNIT READY through queue `i` with the ring's own driver code.
    fn tur(&mut self, i: usize) -> Result<(), String> {
        self.tur_header();
        self.mem.fill(RESP, 108, 0xEE).unwrap();
        let (req, resp) = (self.mem.gpa(REQ), self.mem.gpa(RESP));
        let q = &mut self.q[i];
        let head = q
            .ring
            .add(&[Segment::readable(req, 51), Segment::writable(resp, 108)])
            .unwrap();
        q.ring.publish();
        q.kick.write(1).unwrap();
        let start = Instant::now();
        loop {
            if let Some((id, len)) = q.ring.pop_used().unwrap() {
                assert_eq!((id, len), (head, 108));
                let mut b = [0u8; 108];
                self.mem.read(RESP, &mut b).unwrap();
                let r = CmdResp::read_from_bytes(&b).unwrap();
                assert_eq!((r.response, r.status), (0, 0));
                return Ok(());
            }
            if start.elapsed() > LIVENESS {
                return Err(format!("queue {i}: no answer within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn desc(&self, table: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write(table + usize::from(i) * 16, &d).unwrap();
    }

    /// Writes `heads` into the avail ring of request queue 0 from slot
    /// `from`, then publishes `idx` and kicks.
    fn publish_raw(&self, from: u16, heads: &[u16], idx: u16) {
        let o = self.q[2].ring.offsets();
        for (k, h) in heads.iter().enumerate() {
            let slot = usize::from(from.wrapping_add(k as u16) % SIZE);
            self.mem
                .write(o.avail + 4 + 2 * slot, &h.to_le_bytes())
                .unwrap();
        }
        self.mem.write(o.avail + 2, &idx.to_le_bytes()).unwrap();
        self.q[2].kick.write(1).unwrap();
    }

    fn used_idx(&self) -> u16 {
        let mut b = [0u8; 2];
        self.mem
            .read(self.q[2].ring.offsets().used + 2, &mut b)
            .unwrap();
        u16::from_le_bytes(b)
    }

    fn used_elem(&self, i: u16) -> (u32, u32) {
        let mut b = [0u8; 8];
        let off = self.q[2].ring.offsets().used + 4 + 8 * usize::from(i % SIZE);
        self.mem.read(off, &mut b).unwrap();
        (
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..].try_into().unwrap()),
        )
    }

    /// Resets request queue 0 as QEMU and our driver do.
    fn reset(&mut self) {
        self.t.stop_vring(2).unwrap();
        let q = &mut self.q[2];
        q.ring.reset().unwrap();
        self.t.start_vring(2, &q.ring, &q.kick, &q.call).unwrap();
    }
}

#[derive(Debug, Clone, Copy)]
enum Violation {
    AvailJump,
    HeadOutOfRange,
    NextOutOfRange,
    Loop,
    LongIndirectLoop,
    IndirectBadLength,
    IndirectWithNext,
    NestedIndirect,
    IndirectOutsideMemory,
    TableEntryOutsideMemory,
}

/// Puts a good TUR chain at descriptors 0-1 and the violation's chain
/// (head 2, unless the violation is in the index) in the ring from slot
/// `from`; returns the avail entries to publish and the new avail index.
fn stage(fe: &Frontend, v: Violation, from: u16) -> (Vec<u16>, u16) {
    let table = fe.q[2].ring.offsets().desc;
    let (req, resp, ind) = (fe.mem.gpa(REQ), fe.mem.gpa(RESP), fe.mem.gpa(IND));
    fe.tur_header();
    fe.desc(table, 0, req, 51, NEXT, 1);
    fe.desc(table, 1, resp, 108, WRITE, 0);
    let good_then = |bad: u16| (vec![0, bad], from.wrapping_add(2));
    match v {
        // One good chain (the jump follows once it is completed).
        Violation::AvailJump => (vec![0], from.wrapping_add(1)),
        Violation::HeadOutOfRange => good_then(SIZE),
        Violation::NextOutOfRange => {
            fe.desc(table, 2, req, 51, NEXT, SIZE + 3);
            good_then(2)
        }
        Violation::Loop => {
            fe.desc(table, 2, req, 51, NEXT, 3);
            fe.desc(table, 3, resp, 108, WRITE | NEXT, 2);
            good_then(2)
        }
        Violation::LongIndirectLoop => {
            // An indirect table of 4 whose last entry chains back to 0.
            fe.desc(table, 2, ind, 64, INDIRECT, 0);
            for i in 0..4 {
                fe.desc(IND, i, req, 16, NEXT, (i + 1) % 4);
            }
            good_then(2)
        }
        Violation::IndirectBadLength => {
            fe.desc(table, 2, ind, 40, INDIRECT, 0);
            good_then(2)
        }
        Violation::IndirectWithNext => {
            fe.desc(table, 2, ind, 32, INDIRECT | NEXT, 1);
            good_then(2)
        }
        Violation::NestedIndirect => {
            fe.desc(table, 2, ind, 32, INDIRECT, 0);
            fe.desc(IND, 0, req, 51, NEXT, 1);
            fe.desc(IND, 1, ind, 16, INDIRECT, 0);
            good_then(2)
        }
        Violation::IndirectOutsideMemory => {
            fe.desc(table, 2, MEM as u64 + 0x1000, 64, INDIRECT, 0);
            good_then(2)
        }
        Violation::TableEntryOutsideMemory => {
            // The table entry itself is fine, but chains into an indirect
            // table straddling the end of memory.
            fe.desc(table, 2, MEM as u64 - 16, 64, INDIRECT, 0);
            good_then(2)
        }
    }
}

#[test]
fn every_ring_violation_stops_only_that_queue_until_the_frontend_resets_it() {
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Count));
    let metrics = Arc::new(QueueMetrics::new(2));
    let d = TestDaemon::start_with(
        &[(0, 0, 1 << 20, false)],
        DeviceOptions {
            request_queues: 2,
            queue_metrics: metrics.clone(),
            ..DeviceOptions::default()
        },
    );
    let broken = || metrics.trust.snapshot().0;
    for v in [
        Violation::AvailJump,
        Violation::HeadOutOfRange,
        Violation::NextOutOfRange,
        Violation::Loop,
        Violation::LongIndirectLoop,
        Violation::IndirectBadLength,
        Violation::IndirectWithNext,
        Violation::NestedIndirect,
        Violation::IndirectOutsideMemory,
        Violation::TableEntryOutsideMemory,
    ] {
        let mut fe = Frontend::connect(&d.socket);
        let before = broken();
        let lines = LINES.load(Ordering::Relaxed);
        let (heads, idx) = stage(&fe, v, 0);
        fe.publish_raw(0, &heads, idx);
        if let Violation::AvailJump = v {
            let start = Instant::now();
            while fe.used_idx() != 1 {
                assert!(start.elapsed() < LIVENESS, "good chain");
                std::thread::sleep(Duration::from_millis(1));
            }
            // Then an avail index size + 1 ahead of the device.
            fe.publish_raw(1, &[], idx.wrapping_add(SIZE + 1));
        }
        // The good chain before the violation is completed, exactly once.
        let start = Instant::now();
        while broken() == before {
            assert!(start.elapsed() < LIVENESS, "{v:?}: not detected");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(fe.used_idx(), 1, "{v:?}: exactly the good chain completed");
        assert_eq!(fe.used_elem(0), (0, 108), "{v:?}");
        assert_eq!(broken(), before + 1, "{v:?}: counted once");
        // Thousands of kicks on the broken queue: nothing more is taken,
        // nothing more is logged, the other queue answers.
        for _ in 0..10_000 {
            fe.q[2].kick.write(1).unwrap();
        }
        fe.tur(3).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        assert_eq!(fe.used_idx(), 1, "{v:?}: a broken queue takes nothing");
        assert_eq!(broken(), before + 1, "{v:?}");
        // Reset: served again.
        fe.reset();
        fe.tur(2)
            .unwrap_or_else(|e| panic!("{v:?} after reset: {e}"));
        fe.tur(3).unwrap();
        let logged = LINES.load(Ordering::Relaxed) - lines;
        assert!(logged < 50, "{v:?}: {logged} log lines");
        // A new connection's first break and recovery are always logged.
        assert!(logged >= 2, "{v:?}: the break and the recovery are logged");
        drop(fe);
        // The next connection is served (not hung).
        let rt = tokio::runtime::Runtime::new().unwrap();
        let t = Instant::now();
        rt.block_on(async {
            let drv = Driver::connect(&d.socket, QueueConfig::default())
                .await
                .unwrap();
            assert!(drv
                .send_command(0, 0, ScsiCommand::TestUnitReady)
                .await
                .unwrap()
                .is_good());
        });
        assert!(t.elapsed() < LIVENESS, "{v:?}: {:?}", t.elapsed());
    }

    // 10,000 violations in a row on one connection (break, reset, break...):
    // every one counted, the log bounded.
    let mut fe = Frontend::connect(&d.socket);
    let lines = LINES.load(Ordering::Relaxed);
    let before = broken();
    const ROUNDS: u64 = 10_000;
    for round in 0..ROUNDS {
        let (heads, idx) = stage(&fe, Violation::HeadOutOfRange, 0);
        fe.publish_raw(0, &heads[1..], idx - 1);
        let start = Instant::now();
        while broken() == before + round {
            assert!(start.elapsed() < LIVENESS, "round {round}");
            std::hint::spin_loop();
        }
        fe.reset();
    }
    fe.tur(2).unwrap();
    fe.tur(3).unwrap();
    assert_eq!(broken(), before + ROUNDS);
    let logged = LINES.load(Ordering::Relaxed) - lines;
    eprintln!("{ROUNDS} violations: {logged} log lines");
    assert!(logged > 0, "the counting layer sees the daemon's events");
    assert!(logged < 50, "{logged} log lines for {ROUNDS} violations");
    let (_, _, suppressed, _) = metrics.trust.snapshot();
    assert!(suppressed >= ROUNDS - 50, "suppressed {suppressed}");
}

/// A frontend that sends a message no vhost-user master may send is
/// dropped, counted, and the next connection is served.
#[test]
fn a_connection_dropped_for_a_bad_message_is_counted_and_the_next_is_served() {
    use std::io::Write;
    let metrics = Arc::new(QueueMetrics::new(1));
    let d = TestDaemon::start_with(
        &[(0, 0, 1 << 20, false)],
        DeviceOptions {
            queue_metrics: metrics.clone(),
            ..DeviceOptions::default()
        },
    );
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    // Request 0x7fff_0000 (no such request), flags version 1, size 0.
    let mut hdr = [0u8; 12];
    hdr[..4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    hdr[4..8].copy_from_slice(&1u32.to_le_bytes());
    s.write_all(&hdr).unwrap();
    let start = Instant::now();
    while metrics.trust.snapshot().3 == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "connection not dropped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    assert_eq!(metrics.trust.snapshot().3, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let drv = Driver::connect(&d.socket, QueueConfig::default())
            .await
            .unwrap();
        assert!(drv
            .send_command(0, 0, ScsiCommand::TestUnitReady)
            .await
            .unwrap()
            .is_good());
    });
}

/// The control queue is guarded the same way: an avail index jump stops it
/// (the request queues go on), and after a reset it answers TMFs again.
#[test]
fn a_broken_control_queue_stops_alone_and_answers_after_a_reset() {
    use vscsi_protocol::virtio_scsi::{ctrl_type, CtrlTmfReq};
    let metrics = Arc::new(QueueMetrics::new(2));
    let d = TestDaemon::start_with(
        &[(0, 0, 1 << 20, false)],
        DeviceOptions {
            request_queues: 2,
            queue_metrics: metrics.clone(),
            ..DeviceOptions::default()
        },
    );
    let mut fe = Frontend::connect(&d.socket);
    let tmf = |fe: &mut Frontend| -> Result<u8, String> {
        let mut req = CtrlTmfReq::new_zeroed();
        req.type_ = ctrl_type::TMF.into();
        req.lun = Lun::new(0, 0).unwrap().encode();
        req.tag = 77.into();
        fe.mem.write(REQ + 0x800, req.as_bytes()).unwrap();
        fe.mem.fill(RESP + 0x800, 1, 0xEE).unwrap();
        let (r, w) = (fe.mem.gpa(REQ + 0x800), fe.mem.gpa(RESP + 0x800));
        let q = &mut fe.q[0];
        q.ring
            .add(&[Segment::readable(r, 24), Segment::writable(w, 1)])
            .unwrap();
        q.ring.publish();
        q.kick.write(1).unwrap();
        let start = Instant::now();
        loop {
            if let Some((_, len)) = q.ring.pop_used().unwrap() {
                assert_eq!(len, 1);
                let mut b = [0u8; 1];
                fe.mem.read(RESP + 0x800, &mut b).unwrap();
                return Ok(b[0]);
            }
            if start.elapsed() > LIVENESS {
                return Err("no TMF answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    assert_eq!(tmf(&mut fe), Ok(0), "ABORT TASK: FUNCTION COMPLETE");
    // An avail index 17 ahead on the control queue.
    let avail = fe.q[0].ring.offsets().avail;
    fe.mem
        .write(avail + 2, &(1u16 + SIZE + 1).to_le_bytes())
        .unwrap();
    fe.q[0].kick.write(1).unwrap();
    let start = Instant::now();
    while metrics.trust.snapshot().0 == 0 {
        assert!(start.elapsed() < LIVENESS, "not detected");
        std::thread::sleep(Duration::from_millis(1));
    }
    fe.tur(2).unwrap();
    fe.tur(3).unwrap();
    // Reset the control queue: answered again.
    fe.t.stop_vring(0).unwrap();
    let q = &mut fe.q[0];
    q.ring.reset().unwrap();
    fe.t.start_vring(0, &q.ring, &q.kick, &q.call).unwrap();
    assert_eq!(tmf(&mut fe), Ok(0));
    assert_eq!(metrics.trust.snapshot().0, 1);
}
