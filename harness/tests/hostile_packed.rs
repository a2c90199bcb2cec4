//! A frontend that negotiates VIRTIO_F_RING_PACKED and breaks the packed
//! ring contract (VIRTIO 1.2 §2.8) against the real daemon, through the
//! real socket and shared memory, with rings written by hand. For every
//! kind of violation (wrap-counter lies, ids out of range, avail flags
//! flipped early, chains that never end, indirect tables in the wrong
//! place): the chain before it is completed once, byte for byte where
//! §2.8 fixes the bytes; the broken queue stops (through thousands of
//! kicks) while the connection's other queue answers; GET_VRING_BASE
//! reports the device's next avail index and wrap counter (bit 15); after
//! the frontend re-creates the ring the queue is served again; and the next
//! connection is served. A clean packed queue also wraps around the ring
//! more than a hundred times.

mod common;

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDaemon;
use virtio_bindings::virtio_config::VIRTIO_F_RING_PACKED;
use vmm_sys_util::eventfd::EventFd;
use vscsi_backend::vhost::{DeviceOptions, QueueMetrics};
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{RingAddresses, RingError, Segment, VirtqueueFormat};
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
const AVAIL: u16 = 1 << 7;
const USED: u16 = 1 << 15;

/// A packed ring in the shared region, driven by hand: descriptor ring at
/// `off`, driver event area at `off + 0x1000`, device event area after it.
struct PRing {
    off: usize,
    host: u64,
    avail: (u16, bool),
    used: (u16, bool),
    sgs: [u16; SIZE as usize],
    base: u16,
}

impl PRing {
    fn new(mem: &SharedMemory, off: usize) -> Self {
        mem.fill(off, 0x2000, 0).unwrap();
        Self {
            off,
            host: mem.host_va(off),
            avail: (0, true),
            used: (0, true),
            sgs: [0; SIZE as usize],
            base: 0x8000,
        }
    }

    fn slot(&self, i: u16) -> usize {
        self.off + 16 * usize::from(i)
    }

    fn avail_flags(wrap: bool) -> u16 {
        if wrap {
            AVAIL
        } else {
            USED
        }
    }

    fn put(&self, mem: &SharedMemory, i: u16, addr: u64, len: u32, id: u16, flags: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&id.to_le_bytes());
        d[14..].copy_from_slice(&flags.to_le_bytes());
        mem.write(self.slot(i), &d).unwrap();
    }

    fn advance(p: (u16, bool), n: u16) -> (u16, bool) {
        let i = p.0 + n;
        if i >= SIZE {
            (i - SIZE, !p.1)
        } else {
            (i, p.1)
        }
    }

    /// Makes the chain `segs` (addr, len, write) available with `id`, the
    /// first descriptor's flags last (§2.8.11).
    fn offer(&mut self, mem: &SharedMemory, segs: &[(u64, u32, bool)], id: u16) {
        let first = self.avail;
        let mut head = 0;
        for (k, &(addr, len, write)) in segs.iter().enumerate() {
            let mut f = Self::avail_flags(self.avail.1) | if write { WRITE } else { 0 };
            if k + 1 < segs.len() {
                f |= NEXT;
            }
            if k == 0 {
                head = f;
                let keep = mem.load_u16(self.slot(self.avail.0) + 14, Ordering::Relaxed);
                self.put(mem, self.avail.0, addr, len, id, keep);
            } else {
                self.put(mem, self.avail.0, addr, len, id, f);
            }
            self.avail = Self::advance(self.avail, 1);
        }
        self.sgs[usize::from(id)] = segs.len() as u16;
        fence(Ordering::SeqCst);
        mem.store_u16(self.slot(first.0) + 14, head, Ordering::Release);
    }

    /// The next used descriptor: (id, len, flags).
    fn take_used(&mut self, mem: &SharedMemory) -> Option<(u16, u32, u16)> {
        let flags = mem.load_u16(self.slot(self.used.0) + 14, Ordering::Acquire);
        let wrap = self.used.1;
        if (flags & USED != 0) != wrap || (flags & AVAIL != 0) != wrap {
            return None;
        }
        let id = mem.load_u16(self.slot(self.used.0) + 12, Ordering::Relaxed);
        let len = mem.load_u32(self.slot(self.used.0) + 8, Ordering::Relaxed);
        let n = self.sgs[usize::from(id)];
        assert!(n > 0, "device used id {id}, not in flight");
        self.sgs[usize::from(id)] = 0;
        self.used = Self::advance(self.used, n);
        Some((id, len, flags))
    }
}

/// What the transport needs of a ring: its addresses.
struct Addrs(RingAddresses);

impl VirtqueueFormat for Addrs {
    fn add(&mut self, _: &[Segment]) -> Result<u16, RingError> {
        unreachable!("rings here are driven by hand")
    }
    fn publish(&mut self) -> bool {
        false
    }
    fn pop_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        Ok(None)
    }
    fn has_used(&self) -> bool {
        false
    }
    fn enable_interrupts(&mut self) -> bool {
        false
    }
    fn disable_interrupts(&mut self) {}
    fn reset(&mut self) -> Result<(), RingError> {
        Ok(())
    }
    fn size(&self) -> u16 {
        self.0.size
    }
    fn in_flight(&self) -> u16 {
        0
    }
    fn is_broken(&self) -> bool {
        false
    }
    fn addresses(&self) -> RingAddresses {
        self.0
    }
}

struct Q {
    ring: PRing,
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
        let t = VhostUserTransport::connect(socket, 1 << VIRTIO_F_RING_PACKED).unwrap();
        assert_ne!(
            t.features() & 1 << VIRTIO_F_RING_PACKED,
            0,
            "packed negotiated"
        );
        let mem = Arc::new(SharedMemory::new("hostile-packed", MEM).unwrap());
        t.set_memory(&mem).unwrap();
        let mut fe = Self {
            t,
            mem,
            q: Vec::new(),
        };
        for (i, off) in [0usize, 0x4000, 0x8000, 0xC000].into_iter().enumerate() {
            let q = Q {
                ring: PRing::new(&fe.mem, off),
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            };
            fe.q.push(q);
            fe.start(i);
        }
        fe
    }

    fn start(&mut self, i: usize) {
        let r = &self.q[i].ring;
        let a = RingAddresses {
            size: SIZE,
            desc: r.host,
            driver_area: r.host + 0x1000,
            device_area: r.host + 0x1004,
            base: r.base,
        };
        let q = &self.q[i];
        self.t.start_vring(i, &Addrs(a), &q.kick, &q.call).unwrap();
    }

    /// GET_VRING_BASE, then a zeroed ring handed over again at index 0,
    /// wrap counter 1.
    fn reset(&mut self, i: usize) -> u32 {
        let base = self.t.stop_vring(i).unwrap();
        let off = self.q[i].ring.off;
        self.q[i].ring = PRing::new(&self.mem, off);
        self.start(i);
        base
    }

    fn tur_header(&self) {
        let mut req = CmdReq::new_zeroed();
        req.lun = Lun::new(0, 0).unwrap().encode();
        self.mem.write(REQ, req.as_bytes()).unwrap();
    }

    fn tur_segs(&self, i: usize) -> [(u64, u32, bool); 2] {
        let resp = RESP + 0x200 * i;
        [
            (self.mem.gpa(REQ), 51, false),
            (self.mem.gpa(resp), 108, true),
        ]
    }

    /// A TEST UNIT READY through queue `i`, answered GOOD (within [`LIVENESS`]).
    fn tur(&mut self, i: usize, id: u16) -> Result<(), String> {
        self.tur_header();
        self.mem.fill(RESP + 0x200 * i, 108, 0xEE).unwrap();
        let segs = self.tur_segs(i);
        let mem = self.mem.clone();
        let q = &mut self.q[i];
        q.ring.offer(&mem, &segs, id);
        q.kick.write(1).unwrap();
        let start = Instant::now();
        loop {
            if let Some((got, len, flags)) = q.ring.take_used(&mem) {
                assert_eq!((got, len), (id, 108), "queue {i}");
                assert_ne!(flags & WRITE, 0, "used with bytes written: WRITE");
                let mut b = [0u8; 108];
                mem.read(RESP + 0x200 * i, &mut b).unwrap();
                let r = CmdResp::read_from_bytes(&b).unwrap();
                assert_eq!((r.response, r.status), (0, 0));
                return Ok(());
            }
            if start.elapsed() > LIVENESS {
                return Err(format!("queue {i}: no answer within 10 s"));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Violation {
    /// AVAIL and USED both equal the wrap counter.
    WrapCounterLie,
    IdOutOfRange,
    /// The first descriptor made available before the second.
    FlagsFlippedEarly,
    /// NEXT on every descriptor, made available all around the ring.
    NeverEnds,
    IndirectWithNext,
    IndirectInAChain,
    IndirectOutsideMemory,
    IndirectBadLength,
}

/// After the good chain at 0-1 was used: the violation's chain from index 2.
fn stage(fe: &Frontend, v: Violation) {
    let r = &fe.q[2].ring;
    let (m, req, resp, ind) = (&*fe.mem, fe.mem.gpa(REQ), fe.mem.gpa(RESP), fe.mem.gpa(IND));
    let a = AVAIL; // wrap counter 1
    match v {
        Violation::WrapCounterLie => r.put(m, 2, req, 51, 1, a | USED),
        Violation::IdOutOfRange => r.put(m, 2, req, 51, SIZE, a),
        Violation::FlagsFlippedEarly => {
            r.put(m, 3, resp, 108, 1, WRITE); // still the zeroed ring's flags
            r.put(m, 2, req, 51, 1, a | NEXT);
        }
        Violation::NeverEnds => {
            // 0 and 1 of the next lap (wrap 0: USED set), 3..15, then 2.
            r.put(m, 0, req, 16, 1, USED | NEXT);
            r.put(m, 1, req, 16, 1, USED | NEXT);
            for i in 3..SIZE {
                r.put(m, i, req, 16, 1, a | NEXT);
            }
            r.put(m, 2, req, 16, 1, a | NEXT);
        }
        Violation::IndirectWithNext => {
            r.put(m, 3, resp, 108, 1, a | WRITE);
            r.put(m, 2, ind, 32, 1, a | INDIRECT | NEXT);
        }
        Violation::IndirectInAChain => {
            r.put(m, 3, ind, 32, 1, a | INDIRECT);
            r.put(m, 2, req, 51, 1, a | NEXT);
        }
        Violation::IndirectOutsideMemory => {
            r.put(m, 2, MEM as u64 + 0x1000, 64, 1, a | INDIRECT);
        }
        Violation::IndirectBadLength => r.put(m, 2, ind, 40, 1, a | INDIRECT),
    }
}

#[test]
fn every_packed_ring_violation_stops_only_that_queue_until_the_frontend_resets_it() {
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
        Violation::WrapCounterLie,
        Violation::IdOutOfRange,
        Violation::FlagsFlippedEarly,
        Violation::NeverEnds,
        Violation::IndirectWithNext,
        Violation::IndirectInAChain,
        Violation::IndirectOutsideMemory,
        Violation::IndirectBadLength,
    ] {
        let mut fe = Frontend::connect(&d.socket);
        let before = broken();
        // A good chain (id 0 at 0-1), used in place: id 0, len 108,
        // flags AVAIL|USED|WRITE, byte for byte.
        fe.tur(2, 0).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        let mut used = [0u8; 16];
        fe.mem.read(fe.q[2].ring.slot(0), &mut used).unwrap();
        assert_eq!(&used[8..], &[108, 0, 0, 0, 0, 0, 0x82, 0x80], "{v:?}");
        stage(&fe, v);
        let mut staged = [0u8; 16 * SIZE as usize];
        fe.mem.read(fe.q[2].ring.off, &mut staged).unwrap();
        fe.q[2].kick.write(1).unwrap();
        let start = Instant::now();
        while broken() == before {
            assert!(start.elapsed() < LIVENESS, "{v:?}: not detected");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(broken(), before + 1, "{v:?}: counted once");
        // Nothing of the bad chain was taken or used.
        for _ in 0..10_000 {
            fe.q[2].kick.write(1).unwrap();
        }
        fe.tur(3, 0).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        fe.tur(3, 1).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        let mut now = [0u8; 16 * SIZE as usize];
        fe.mem.read(fe.q[2].ring.off, &mut now).unwrap();
        assert_eq!(
            now, staged,
            "{v:?}: a broken queue writes nothing into its ring"
        );
        assert_eq!(broken(), before + 1, "{v:?}");
        // GET_VRING_BASE: the device's next avail is index 2, wrap 1.
        assert_eq!(fe.reset(2), 0x8002, "{v:?}: vring base");
        fe.tur(2, 5)
            .unwrap_or_else(|e| panic!("{v:?} after reset: {e}"));
        fe.tur(3, 2).unwrap();
        drop(fe);
        // The next connection (split rings) is served.
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
}

#[test]
fn a_packed_queue_wraps_around_more_than_a_hundred_times_and_restarts_mid_lap() {
    let d = TestDaemon::start_with(
        &[(0, 0, 1 << 20, false)],
        DeviceOptions {
            request_queues: 2,
            ..DeviceOptions::default()
        },
    );
    let mut fe = Frontend::connect(&d.socket);
    // Chains of 2 in a ring of 16: 8 per lap.
    let n = u32::from(SIZE) * 100;
    for k in 0..n {
        fe.tur(2, (k % u32::from(SIZE)) as u16)
            .unwrap_or_else(|e| panic!("{k}: {e}"));
    }
    // 1600 chains of 2 descriptors: 200 laps, back at index 0, wrap 1.
    assert_eq!(fe.q[2].ring.avail, (0, true));
    fe.tur(2, 1).unwrap();
    // A stop mid-lap (index 2, wrap 1) and a restart at the same base
    // within the connection: served on from there.
    let base = fe.t.stop_vring(2).unwrap();
    assert_eq!(base, 0x8002);
    fe.q[2].ring.base = base as u16;
    fe.start(2);
    // 8 chains from index 2: past the end once more, to index 2, wrap 0.
    for k in 0..8 {
        fe.tur(2, k).unwrap();
    }
    assert_eq!(
        fe.q[2].ring.avail,
        (2, false),
        "past the end once more: wrap 0"
    );
    assert_eq!(fe.t.stop_vring(2).unwrap(), 2, "index 2, wrap counter 0");
}

/// With chains held in flight (a stall fault): a chain reusing a buffer id
/// still in flight, and descriptors made available over the ones the device
/// has not used yet (the driver's avail flags flipped a lap early), break
/// the ring; GET_VRING_BASE then completes every held chain (RESET), each
/// with its own id at the used position the driver expects, in the order
/// completed, and the re-created ring is served.
#[test]
fn reused_ids_and_overruns_over_held_chains_break_the_ring_and_every_held_chain_comes_back() {
    use vscsi_backend::fault::{FaultSpec, FaultTable};
    let metrics = Arc::new(QueueMetrics::new(2));
    let faults = Arc::new(FaultTable::default());
    let d = TestDaemon::start_with(
        &[(0, 0, 1 << 20, false)],
        DeviceOptions {
            request_queues: 2,
            queue_metrics: metrics.clone(),
            faults: faults.clone(),
            ..DeviceOptions::default()
        },
    );
    let broken = || metrics.trust.snapshot().0;
    let wait_broken = |n: u64, what: &str| {
        let start = Instant::now();
        while broken() != n {
            assert!(start.elapsed() < LIVENESS, "{what}: not detected");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let wait_held = |n: usize| {
        let start = Instant::now();
        while faults.held_now() != n as u64 {
            assert!(start.elapsed() < LIVENESS, "{n} held");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for overrun in [false, true] {
        let mut fe = Frontend::connect(&d.socket);
        faults.set(
            0,
            0,
            FaultSpec {
                stall: true,
                ..FaultSpec::default()
            },
        );
        fe.tur_header();
        let segs = fe.tur_segs(2);
        let mem = fe.mem.clone();
        let held = if overrun { 8 } else { 1 };
        // `held` chains of 2 taken and held: ids 0.. at 0, 2, 4, ...
        for id in 0..held {
            fe.q[2].ring.offer(&mem, &segs, id);
        }
        fe.q[2].kick.write(1).unwrap();
        wait_held(usize::from(held));
        let before = broken();
        let r = &fe.q[2].ring;
        if overrun {
            // The ring is full of held chains; the driver makes slot 0
            // available for the next lap (wrap 0: USED set) anyway.
            r.put(&mem, 0, mem.gpa(REQ), 51, 9, USED);
        } else {
            // Id 0 again while it is held.
            r.put(&mem, 2, mem.gpa(REQ), 51, 0, AVAIL);
        }
        fe.q[2].kick.write(1).unwrap();
        wait_broken(before + 1, if overrun { "overrun" } else { "id in use" });
        // The other queue is served meanwhile (the fault covers LUN 0/0:
        // lift it first).
        faults.clear(0, 0);
        fe.tur(3, 0).unwrap();
        // GET_VRING_BASE completes the held chains with RESET.
        let base = fe.t.stop_vring(2).unwrap();
        let expect = if overrun { 0 } else { 0x8002 };
        assert_eq!(base, expect, "overrun {overrun}: vring base");
        let mut ids = Vec::new();
        while let Some((id, len, flags)) = fe.q[2].ring.take_used(&mem) {
            assert_eq!(len, 108, "a RESET response header");
            assert_ne!(flags & WRITE, 0);
            ids.push(id);
        }
        ids.sort_unstable();
        assert_eq!(
            ids,
            (0..held).collect::<Vec<_>>(),
            "every held chain came back once"
        );
        let mut b = [0u8; 108];
        mem.read(RESP + 0x400, &mut b).unwrap();
        assert_eq!(
            CmdResp::read_from_bytes(&b).unwrap().response,
            vscsi_protocol::virtio_scsi::Response::Reset as u8
        );
        let off = fe.q[2].ring.off;
        fe.q[2].ring = PRing::new(&mem, off);
        fe.start(2);
        fe.tur(2, 4).unwrap();
        assert_eq!(faults.held_now(), 0);
    }
}
