//! Tests of the packed inflight region: its bytes (vhost-user "Inflight
//! I/O tracking", `QueueRegionPacked` / `DescStatePacked`), the order of
//! its updates, recovery after a crash between any two writes (of a take,
//! of a completion, of a recovery), regions full of garbage, and
//! resubmission through a [`DeviceRing`].

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserInflight;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};

use super::*;
use crate::vhost::device_ring::DeviceRing;
use crate::vhost::dirty::{GuestMem, Vring};
use crate::vhost::inflight::{self, InflightRegion, Layout};
use crate::vhost::packed::{F_NEXT, F_WRITE};

/// Where a test stops the tracker: after `left` more writes of the region
/// (or of the ring, for the used descriptor), nothing more is written, as
/// when the daemon is killed there.
#[derive(Debug, Default)]
pub(super) struct CrashPoint {
    left: Cell<Option<usize>>,
    crashed: Cell<bool>,
}

impl CrashPoint {
    /// Whether the next write happens.
    pub(super) fn step(&self) -> bool {
        match self.left.get() {
            None => true,
            Some(0) => {
                self.crashed.set(true);
                false
            }
            Some(n) => {
                self.left.set(Some(n - 1));
                true
            }
        }
    }

    fn arm(&self, writes: usize) {
        self.left.set(Some(writes));
        self.crashed.set(false);
    }
}

const DESC: u64 = 0x1000;

fn msg(num_queues: u16, queue_size: u16) -> VhostUserInflight {
    VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues,
        queue_size,
    }
}

fn fresh_region(n: u16, size: u16) -> (Arc<InflightRegion>, VhostUserInflight, File) {
    let (r, reply, file) = InflightRegion::create_for(&msg(n, size), Layout::Packed).unwrap();
    (Arc::new(r), reply, file)
}

fn remap(reply: &VhostUserInflight, file: &File) -> Arc<InflightRegion> {
    Arc::new(InflightRegion::map_for(reply, file.try_clone().unwrap(), Layout::Packed).unwrap())
}

fn tracker(r: &Arc<InflightRegion>, q: u16) -> PackedTracker {
    PackedTracker::new(QueueRegion::new(r.clone(), q).unwrap())
}

fn bytes(file: &File, at: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    file.read_exact_at(&mut b, at).unwrap();
    b
}

fn mem() -> GuestMem {
    GuestMem::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap()
}

fn pos(index: u16, wrap: bool) -> Position {
    Position { index, wrap }
}

/// Driver and device of one packed ring, the device's writes going through
/// a tracker: chains offered at the avail position, taken, completed with
/// a used descriptor at the used position.
struct Sim {
    mem: GuestMem,
    size: u16,
    avail: Position,
    used: Position,
    /// The chain of every id taken.
    chains: Vec<Vec<RingDesc>>,
}

impl Sim {
    fn new(size: u16, at: Position) -> Self {
        Self {
            mem: mem(),
            size,
            avail: at,
            used: at,
            chains: vec![Vec::new(); usize::from(size)],
        }
    }

    fn flags_at(&self, p: Position) -> u16 {
        let at = DESC + 16 * u64::from(p.index) + 14;
        u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap())
    }

    fn set_flags(&self, p: Position, f: u16) {
        let at = DESC + 16 * u64::from(p.index) + 14;
        self.mem.write_obj(f.to_le(), GuestAddress(at)).unwrap();
    }

    /// The driver offers a chain of `n` descriptors with buffer id `id`
    /// and the device takes it.
    fn take(&mut self, t: &mut PackedTracker, id: u16, n: u16) {
        let mut chain = Vec::new();
        let mut p = self.avail;
        for k in 0..n {
            let mut flags = if p.wrap { F_AVAIL } else { F_USED };
            if k + 1 < n {
                flags |= F_NEXT;
            }
            if k > 0 {
                flags |= F_WRITE;
            }
            self.set_flags(p, flags);
            chain.push(RingDesc {
                addr: 0x10000 + 0x1000 * u64::from(id) + 0x100 * u64::from(k),
                len: 64 + u32::from(k),
                id: if k + 1 == n { id } else { 0 },
                flags,
            });
            p = p.advance(1, self.size);
        }
        t.taken(id, &chain);
        self.chains[usize::from(id)] = chain;
        self.avail = p;
    }

    /// The device completes `id` (a chain of `n`): the tracker's writes
    /// around the used descriptor; the used descriptor's flags count as
    /// one write of the crash budget.
    fn complete(&mut self, t: &mut PackedTracker, id: u16, n: u16) {
        t.before_used(id, n);
        if t.crash.step() {
            self.set_flags(self.used, if self.used.wrap { F_AVAIL | F_USED } else { 0 });
        }
        t.after_used(id);
        self.used = self.used.advance(n, self.size);
    }

    fn recover(&self, r: &Arc<InflightRegion>, q: u16) -> (PackedTracker, PackedRecovery) {
        let mut t = tracker(r, q);
        let rec = t
            .start(self.size, self.used, true, &self.mem, GuestAddress(DESC))
            .unwrap();
        (t, rec)
    }
}

/// A descriptor as (address, length, device-writable).
type Seg = (u64, u32, bool);

fn seg(d: &Descriptor) -> Seg {
    (d.addr().0, d.len(), d.is_write_only())
}

/// Every chain a recovered tracker hands out, with its descriptors.
fn drain(t: &mut PackedTracker, mem: &GuestMem) -> Vec<(u16, Vec<Seg>)> {
    let mut got = Vec::new();
    let mut out = Vec::new();
    while let Some(id) = t.next_resubmit(mem, &mut out) {
        got.push((id, out.iter().map(seg).collect()));
    }
    got
}

fn expect_descs(sim: &Sim, id: u16) -> Vec<Seg> {
    sim.chains[usize::from(id)]
        .iter()
        .map(|d| (d.addr, d.len, d.flags & F_WRITE != 0))
        .collect()
}

#[test]
fn packed_queue_regions_are_a_32_byte_header_and_32_byte_entries_rounded_to_64() {
    assert_eq!(queue_region_size(1), 64);
    assert_eq!(queue_region_size(2), 128);
    assert_eq!(queue_region_size(16), 576);
    assert_eq!(queue_region_size(128), 4160);
    assert_eq!(queue_region_size(1024), 32832);
    assert_eq!(Layout::Packed.queue_region_size(16), 576);
    assert_eq!(Layout::Split.queue_region_size(16), 320);
    let (r, reply, file) = fresh_region(3, 16);
    assert_eq!((reply.mmap_size, reply.mmap_offset), (3 * 576, 0));
    assert_eq!(file.metadata().unwrap().len(), 3 * 576);
    assert_eq!(r.layout(), Layout::Packed);
    // A SET_INFLIGHT_FD whose mmap_size holds split regions only is refused.
    let short = VhostUserInflight {
        mmap_size: 3 * 320,
        ..reply
    };
    assert!(InflightRegion::map_for(&short, file.try_clone().unwrap(), Layout::Packed).is_err());
    assert!(QueueRegion::new(remap(&reply, &file), 3).is_none());
}

#[test]
fn the_fields_sit_at_the_specs_byte_offsets() {
    let (r, _, file) = fresh_region(2, 16);
    let base = 576u64;
    let mut sim = Sim::new(16, pos(3, false));
    let mut t = tracker(&r, 1);
    let rec = t
        .start(16, sim.used, true, &sim.mem, GuestAddress(DESC))
        .unwrap();
    assert_eq!(rec, PackedRecovery::empty(pos(3, false)));
    // features 0; version 1; desc_num 16; free_head 0, old_free_head 0;
    // used_idx 3, old_used_idx 3; wrap counters 0, 0; padding.
    assert_eq!(
        bytes(&file, base, 32),
        [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 16, 0, 0, 0, 0, 0, 3, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0
        ]
    );
    // Fresh entries: not in flight, linked 0 -> 1 -> ... -> 15 -> 16.
    for i in 0..16u64 {
        let e = bytes(&file, base + 32 + 32 * i, 8);
        assert_eq!(e[0], 0);
        assert_eq!(u16::from_le_bytes([e[2], e[3]]), i as u16 + 1);
    }
    sim.take(&mut t, 9, 2);
    // desc[0], the head: inflight 1, next 1, last 1, num 2, counter 1,
    // then its copy of the first descriptor (id 0, flags NEXT | USED: wrap
    // counter 0, len 64, addr).
    let mut want = vec![1, 0, 1, 0, 1, 0, 2, 0];
    want.extend(1u64.to_le_bytes());
    want.extend([0, 0]);
    want.extend((F_NEXT | F_USED).to_le_bytes());
    want.extend(64u32.to_le_bytes());
    want.extend(0x19000u64.to_le_bytes());
    assert_eq!(bytes(&file, base + 32, 32), want);
    // desc[1]: the second descriptor (id 9, WRITE | USED, len 65).
    assert_eq!(bytes(&file, base + 64 + 16, 2), [9, 0]);
    assert_eq!(
        bytes(&file, base + 64 + 18, 2),
        (F_WRITE | F_USED).to_le_bytes()
    );
    assert_eq!(bytes(&file, base + 64 + 20, 4), 65u32.to_le_bytes());
    assert_eq!(bytes(&file, base + 64 + 24, 8), 0x19100u64.to_le_bytes());
    // free_head = old_free_head = 2.
    assert_eq!(bytes(&file, base + 12, 4), [2, 0, 2, 0]);
    sim.complete(&mut t, 9, 2);
    // desc[last = 1].next = the free head before (2); free_head =
    // old_free_head = 0; used_idx = old_used_idx = 5; head not in flight.
    assert_eq!(bytes(&file, base + 64 + 2, 2), [2, 0]);
    assert_eq!(bytes(&file, base + 12, 4), [0, 0, 0, 0]);
    assert_eq!(bytes(&file, base + 16, 6), [5, 0, 5, 0, 0, 0]);
    assert_eq!(bytes(&file, base + 32, 1), [0]);
    // Queue 0 is untouched.
    assert!(bytes(&file, 0, 576).iter().all(|&b| b == 0));
}

#[test]
fn a_restart_resubmits_what_was_in_flight_in_counter_order() {
    let (r, reply, file) = fresh_region(1, 16);
    let mut sim = Sim::new(16, Position::START);
    let mut t = tracker(&r, 0);
    t.start(16, sim.used, true, &sim.mem, GuestAddress(DESC));
    for (id, n) in [(7, 1), (1, 3), (0, 2), (4, 1)] {
        sim.take(&mut t, id, n);
    }
    // 1 completes first (out of order): the used position moves past its
    // three descriptors.
    sim.complete(&mut t, 1, 3);
    drop(t);
    let (mut t, rec) = sim.recover(&remap(&reply, &file), 0);
    assert_eq!(rec.chains, vec![(7, 1), (0, 2), (4, 1)]);
    assert_eq!((rec.dropped, rec.last), (0, LastCompletion::None));
    assert_eq!(rec.used, pos(3, true));
    assert_eq!(rec.avail, pos(7, true), "every descriptor taken");
    let got = drain(&mut t, &sim.mem);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![7, 0, 4]);
    for (id, descs) in &got {
        assert_eq!(descs, &expect_descs(&sim, *id), "id {id}");
    }
    // The chains go on from there: completed once, and a new one ordered
    // after them.
    sim.complete(&mut t, 0, 2);
    sim.take(&mut t, 2, 1);
    drop(t);
    let (mut t, rec) = sim.recover(&remap(&reply, &file), 0);
    assert_eq!(rec.chains, vec![(7, 1), (4, 1), (2, 1)]);
    assert_eq!((rec.used, rec.avail), (pos(5, true), pos(8, true)));
    assert_eq!(drain(&mut t, &sim.mem).len(), 3);
    for (id, n) in [(4, 1), (7, 1), (2, 1)] {
        sim.complete(&mut t, id, n);
    }
    drop(t);
    // Nothing in flight: the ring goes on where the frontend says.
    let (_, rec) = sim.recover(&remap(&reply, &file), 0);
    assert_eq!(rec, PackedRecovery::empty(pos(8, true)));
}

/// The state before the step under test: two chains in flight across the
/// end of a ring of 8 (used position 6, wrap counter 1).
fn two_in_flight(r: &Arc<InflightRegion>) -> (Sim, PackedTracker) {
    let mut sim = Sim::new(8, pos(5, true));
    let mut t = tracker(r, 0);
    t.start(8, sim.used, true, &sim.mem, GuestAddress(DESC));
    sim.take(&mut t, 3, 1);
    sim.complete(&mut t, 3, 1);
    sim.take(&mut t, 6, 1);
    sim.take(&mut t, 2, 2);
    (sim, t)
}

#[test]
fn a_crash_between_any_two_writes_of_a_take_is_recovered() {
    let mut full = None;
    for writes in 0.. {
        let (r, reply, file) = fresh_region(1, 8);
        let (mut sim, mut t) = two_in_flight(&r);
        t.crash.arm(writes);
        sim.take(&mut t, 5, 3);
        let crashed = t.crash.crashed.get();
        drop(t);
        let (mut t, rec) = sim.recover(&remap(&reply, &file), 0);
        if crashed {
            // Not recorded: still on the ring, read again from there.
            assert_eq!(
                rec.chains,
                vec![(6, 1), (2, 2)],
                "cut after {writes} writes"
            );
            assert_eq!(rec.avail, pos(1, false));
        } else {
            assert_eq!(rec.chains, vec![(6, 1), (2, 2), (5, 3)]);
            assert_eq!(rec.avail, pos(4, false));
            full = Some(writes);
        }
        assert_eq!((rec.used, rec.dropped), (pos(6, true), 0));
        let got = drain(&mut t, &sim.mem);
        for (id, descs) in &got {
            assert_eq!(descs, &expect_descs(&sim, *id));
        }
        // The recovered region goes on: nothing leaked, every entry usable.
        sim.avail = rec.avail;
        for (id, n) in &rec.chains {
            sim.complete(&mut t, *id, *n);
        }
        sim.take(&mut t, 1, 8);
        assert!(t.active(), "the whole free list is there after {writes}");
        if full.is_some() {
            break;
        }
    }
    // 3 for the head, 6 per descriptor, `last`, `old_free_head`.
    assert_eq!(full, Some(3 + 6 * 3 + 2));
}

#[test]
fn a_crash_between_any_two_writes_of_a_completion_is_recovered() {
    let mut full = None;
    for reuse in [false, true] {
        for writes in 0.. {
            let (r, reply, file) = fresh_region(1, 8);
            let (mut sim, mut t) = two_in_flight(&r);
            // 2 (two descriptors, at 7 and 0) completes first: its used
            // descriptor goes at 6, and the used position wraps to 0/1.
            t.crash.arm(writes);
            sim.complete(&mut t, 2, 2);
            let crashed = t.crash.crashed.get();
            let on_ring = sim.flags_at(pos(6, true)) == F_AVAIL | F_USED;
            drop(t);
            if reuse && on_ring {
                // The driver saw it and made slot 6 available again in its
                // next lap (wrap counter 0) before the new daemon came.
                sim.set_flags(pos(6, true), F_USED);
            }
            let (mut t, rec) = sim.recover(&remap(&reply, &file), 0);
            if on_ring {
                assert_eq!(rec.chains, vec![(6, 1)], "cut after {writes} writes");
                assert_eq!(rec.used, pos(0, false));
            } else {
                assert_eq!(rec.chains, vec![(6, 1), (2, 2)], "cut after {writes}");
                assert_eq!(rec.used, pos(6, true));
            }
            assert_eq!(rec.avail, pos(1, false));
            assert_eq!(drain(&mut t, &sim.mem).len(), rec.chains.len());
            if !crashed {
                assert!(on_ring);
                assert_eq!(rec.last, LastCompletion::None);
                full = Some(writes);
                break;
            }
            assert!(writes < 8);
        }
    }
    // next, free_head, positions; the used descriptor; inflight,
    // old_free_head, positions.
    assert_eq!(full, Some(7));
}

#[test]
fn a_crash_between_any_two_writes_of_a_recovery_recovers_to_the_same() {
    let build = || {
        let (r, reply, file) = fresh_region(1, 8);
        let (mut sim, mut t) = two_in_flight(&r);
        // A completion cut after its used descriptor, and garbage: the
        // free list cut short before entry 7, which is flagged in flight
        // with a chain longer than the ring.
        t.crash.arm(4);
        sim.complete(&mut t, 6, 1);
        drop(t);
        let q = QueueRegion::new(r.clone(), 0).unwrap();
        q.store_at(entry(6) + E_NEXT, 8u16);
        q.store_at(entry(7) + E_INFLIGHT, 1u8);
        q.store_at(entry(7) + E_NUM, 9u16);
        (sim, reply, file)
    };
    let (sim, reply, file) = build();
    let (_, want) = sim.recover(&remap(&reply, &file), 0);
    assert_eq!(want.chains, vec![(2, 2)]);
    assert_eq!((want.dropped, want.last), (1, LastCompletion::Committed));
    for writes in 0.. {
        let (sim, reply, file) = build();
        let mut t = tracker(&remap(&reply, &file), 0);
        t.crash.arm(writes);
        t.start(8, sim.used, true, &sim.mem, GuestAddress(DESC));
        let crashed = t.crash.crashed.get();
        drop(t);
        let (_, rec) = sim.recover(&remap(&reply, &file), 0);
        assert_eq!(rec.chains, want.chains, "cut after {writes} writes");
        assert_eq!((rec.used, rec.avail), (want.used, want.avail));
        if !crashed {
            assert_eq!((rec.dropped, rec.last), (0, LastCompletion::None));
            break;
        }
    }
}

/// Regions of random bytes that claim to be in use: recovery never
/// panics, never hands out an id twice or more descriptors than the ring
/// has, recovers to the same a second time, and leaves a region that
/// tracks the ring from then on.
#[test]
fn a_garbage_region_never_panics_nor_resubmits_an_id_twice() {
    let size = 16u16;
    let mut resubmitted = 0;
    for seed in 0..300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (_, reply, file) = fresh_region(1, size);
        let mut junk = vec![0u8; queue_region_size(size)];
        rng.fill(&mut junk);
        // Some seeds with mostly-plausible fields: small numbers and
        // in-flight flags of exactly 1.
        if seed % 2 == 0 {
            for (i, b) in junk.iter_mut().enumerate() {
                let off = i % DESC_SIZE;
                if i >= HEADER_SIZE && (off < 8 || off == 16 || off == 17) {
                    *b = match off {
                        0 => u8::from(rng.bool()),
                        1 | 3 | 5 | 7 | 17 => 0,
                        _ => rng.u8(0..18),
                    };
                }
            }
            junk[16..22].copy_from_slice(&[rng.u8(0..16), 0, rng.u8(0..16), 0, 1, rng.u8(0..2)]);
            junk[12..16].copy_from_slice(&[rng.u8(0..17), 0, rng.u8(0..17), 0]);
        }
        junk[8..12].copy_from_slice(&[1, 0, size as u8, 0]);
        file.write_all_at(&junk, 0).unwrap();
        let mut sim = Sim::new(size, pos(rng.u16(0..size), rng.bool()));
        for i in 0..size {
            sim.set_flags(pos(i, true), rng.u16(..));
        }
        let (mut t, rec) = sim.recover(&remap(&reply, &file), 0);
        let mut ids: Vec<u16> = rec.chains.iter().map(|c| c.0).collect();
        let total: u32 = rec.chains.iter().map(|c| u32::from(c.1)).sum();
        assert!(total <= u32::from(size), "seed {seed}");
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), rec.chains.len(), "seed {seed}: an id twice");
        assert!(ids.iter().all(|&i| i < size));
        resubmitted += rec.chains.len();
        let (_, again) = sim.recover(&remap(&reply, &file), 0);
        assert_eq!(again.chains, rec.chains, "seed {seed}");
        assert_eq!((again.used, again.avail), (rec.used, rec.avail));
        assert_eq!(again.dropped, 0);
        let handed = drain(&mut t, &sim.mem);
        assert_eq!(handed.len(), rec.chains.len());
        // The ring goes on from the recovered positions.
        sim.used = rec.used;
        sim.avail = rec.avail;
        for (id, n) in &rec.chains {
            sim.complete(&mut t, *id, *n);
        }
        let free_id = (0..size).find(|i| !ids.contains(i)).unwrap_or(0);
        sim.take(&mut t, free_id, size);
        assert!(t.active(), "seed {seed}: the free list lost entries");
        sim.complete(&mut t, free_id, size);
        let (_, after) = sim.recover(&remap(&reply, &file), 0);
        assert!(after.chains.is_empty(), "seed {seed}");
    }
    assert!(resubmitted > 0, "some seeds hold chains that hold together");
}

#[test]
fn a_region_for_another_ring_size_or_a_ring_in_flight_starts_empty() {
    let (r, reply, file) = fresh_region(1, 16);
    let mut sim = Sim::new(16, Position::START);
    let mut t = tracker(&r, 0);
    t.start(16, sim.used, true, &sim.mem, GuestAddress(DESC));
    sim.take(&mut t, 3, 2);
    drop(t);
    let r = remap(&reply, &file);
    let mut t = tracker(&r, 0);
    let rec = t
        .start(8, sim.used, true, &sim.mem, GuestAddress(DESC))
        .unwrap();
    assert!(rec.chains.is_empty(), "desc_num differs");
    let mut t = tracker(&r, 0);
    assert_eq!(
        t.start(32, sim.used, true, &sim.mem, GuestAddress(DESC)),
        None
    );
    assert!(t.started() && !t.active(), "ring larger than the region");
    sim.take(&mut t, 3, 2);
    // A region handed over while this device has chains in flight holds
    // none of a previous device's.
    let mut t = tracker(&r, 0);
    t.start(16, sim.used, true, &sim.mem, GuestAddress(DESC));
    sim.take(&mut t, 3, 2);
    let mut t = tracker(&r, 0);
    let rec = t
        .start(16, sim.used, false, &sim.mem, GuestAddress(DESC))
        .unwrap();
    assert!(rec.chains.is_empty());
}

// Through a DeviceRing over a packed vring.

const RING: u64 = 0x1000;
const DRIVER: u64 = 0x3000;
const DEVICE: u64 = 0x3100;

fn vring(mem: &GuestMem, base: u16) -> Vring {
    let vring = Vring::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
    vring.set_queue_size(16);
    vring.set_queue_info(RING, DRIVER, DEVICE).unwrap();
    vring.set_queue_next_avail(base);
    vring.set_queue_ready(true);
    vring
}

fn put(m: &GuestMem, index: u16, addr: u64, len: u32, id: u16, flags: u16) {
    let at = RING + 16 * u64::from(index);
    m.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
    m.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
    m.write_obj(id.to_le(), GuestAddress(at + 12)).unwrap();
    m.write_obj(flags.to_le(), GuestAddress(at + 14)).unwrap();
}

/// A chain of `n` descriptors at ring index `at` (wrap counter 1) with id
/// `id`, or one indirect descriptor whose table holds `n` entries.
fn offer(m: &GuestMem, at: u16, id: u16, n: u16, indirect: bool) {
    let data = 0x20000 + 0x1000 * u64::from(id);
    if indirect {
        let table = 0x30000 + 0x100 * u64::from(id);
        for k in 0..n {
            // A packed descriptor (§2.8.13): addr, len, id, flags.
            let at = table + 16 * u64::from(k);
            m.write_obj((data + 0x100 * u64::from(k)).to_le(), GuestAddress(at))
                .unwrap();
            m.write_obj(32u32.to_le(), GuestAddress(at + 8)).unwrap();
            m.write_obj(F_WRITE.to_le(), GuestAddress(at + 14)).unwrap();
        }
        put(m, at, table, 16 * u32::from(n), id, F_AVAIL | F_INDIRECT);
        return;
    }
    for k in (0..n).rev() {
        let next = if k + 1 < n { F_NEXT } else { 0 };
        put(
            m,
            at + k,
            data + 0x100 * u64::from(k),
            32,
            id,
            F_AVAIL | next,
        );
    }
}

fn used_at(m: &GuestMem, index: u16) -> (u16, u16) {
    let at = RING + 16 * u64::from(index);
    (
        m.read_obj::<u16>(GuestAddress(at + 12)).unwrap(),
        m.read_obj::<u16>(GuestAddress(at + 14)).unwrap(),
    )
}

/// A packed ring's chains taken by one daemon and not used come back
/// first, in the order they were taken, from the next daemon's ring (a new
/// `DeviceRing` over the same memfd and guest memory, the frontend setting
/// the base to its own next avail position); then new avail descriptors
/// follow, the used descriptors land at the positions the driver expects,
/// and GET_VRING_BASE says where the device is.
#[test]
fn a_packed_device_ring_resubmits_before_new_avail_entries() {
    let mem = mem();
    let (r, reply, file) = fresh_region(3, 16);
    let ring = DeviceRing::new();
    ring.set_packed(true);
    ring.set_inflight(QueueRegion::new(r, 2));
    let v = vring(&mem, 0x8000);
    offer(&mem, 0, 4, 2, false);
    offer(&mem, 2, 9, 3, true);
    offer(&mem, 3, 1, 1, false);
    let mut out = Vec::new();
    {
        let mut st = v.get_mut();
        for want in [4, 9, 1] {
            assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(Some(want)));
        }
        // 4 completes: its used descriptor at index 0, over its own first
        // descriptor; the used position skips its two.
        ring.add_used(&mut st, &mem, 4, 32).unwrap();
        assert_eq!(used_at(&mem, 0), (4, F_AVAIL | F_USED | F_WRITE));
    }
    drop(ring);

    // The next daemon, through SET_INFLIGHT_FD (inflight::attach).
    let rings = [
        Arc::new(DeviceRing::new()),
        Arc::new(DeviceRing::new()),
        Arc::new(DeviceRing::new()),
    ];
    for r in &rings {
        r.set_packed(true);
    }
    inflight::attach(
        &rings,
        InflightRegion::map_for(&reply, file.try_clone().unwrap(), Layout::Packed).unwrap(),
    );
    let ring = &rings[2];
    assert!(ring.has_inflight());
    let v = vring(&mem, 0x8004);
    offer(&mem, 4, 7, 1, false);
    // The driver reuses the slots 4's chain gave back.
    offer(&mem, 5, 2, 1, false);
    let mut st = v.get_mut();
    assert!(ring.has_avail(st.get_queue(), &mem));
    let mut got = Vec::new();
    while let Some(id) = ring.pop(st.get_queue_mut(), &mem, &mut out).unwrap() {
        let addrs: Vec<(u64, bool)> = out
            .iter()
            .map(|d| (d.addr().0, d.is_write_only()))
            .collect();
        got.push((id, addrs));
    }
    let data = |id: u64, n: u64, w: bool| -> Vec<(u64, bool)> {
        (0..n)
            .map(|k| (0x20000 + 0x1000 * id + 0x100 * k, w))
            .collect()
    };
    assert_eq!(
        got,
        vec![
            (9, data(9, 3, true)),
            (1, data(1, 1, false)),
            (7, data(7, 1, false)),
            (2, data(2, 1, false))
        ],
        "in flight first (the indirect table walked again), then the new descriptors"
    );
    // Used position 2, avail past 9, 1, 7 and 2; what GET_VRING_BASE
    // answers.
    assert_eq!(ring.packed_state(), Some((0x8006, 0x8002, 4)));
    assert_eq!(st.get_queue().next_avail(), 0x8006);
    for id in [1, 7, 9, 2] {
        ring.add_used(&mut st, &mem, id, 0).unwrap();
    }
    assert_eq!(used_at(&mem, 2), (1, F_AVAIL | F_USED));
    assert_eq!(used_at(&mem, 3), (7, F_AVAIL | F_USED));
    assert_eq!(used_at(&mem, 4), (9, F_AVAIL | F_USED));
    assert_eq!(used_at(&mem, 5), (2, F_AVAIL | F_USED));
    assert!(ring.add_used(&mut st, &mem, 9, 0).is_err(), "once");
    drop(st);

    // A third daemon finds nothing in flight.
    let ring = DeviceRing::new();
    ring.set_packed(true);
    ring.set_inflight(QueueRegion::new(remap(&reply, &file), 2));
    let v = vring(&mem, 0x8006);
    let mut st = v.get_mut();
    assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(None));
    assert_eq!(ring.packed_state(), Some((0x8006, 0x8006, 0)));
}

/// A garbage region through a DeviceRing: the ring is still served.
#[test]
fn a_packed_device_ring_over_a_garbage_region_serves_new_chains() {
    let mem = mem();
    for seed in 0..50u64 {
        let (_, reply, file) = fresh_region(1, 16);
        let mut junk = vec![0u8; queue_region_size(16)];
        fastrand::Rng::with_seed(seed).fill(&mut junk);
        junk[8..12].copy_from_slice(&[1, 0, 16, 0]);
        file.write_all_at(&junk, 0).unwrap();
        mem.write_slice(&[0u8; 256], GuestAddress(RING)).unwrap();
        let ring = DeviceRing::new();
        ring.set_packed(true);
        ring.set_inflight(QueueRegion::new(remap(&reply, &file), 0));
        let v = vring(&mem, 0x8000);
        let mut st = v.get_mut();
        let mut out = Vec::new();
        let mut n = 0;
        while let Ok(Some(id)) = ring.pop(st.get_queue_mut(), &mem, &mut out) {
            ring.add_used(&mut st, &mem, id, 0).unwrap();
            n += 1;
            assert!(n <= 16, "seed {seed}");
        }
        // Wherever the region put the ring, a chain offered there is
        // taken and completed.
        let (avail, _, in_flight) = ring.packed_state().unwrap();
        assert_eq!(in_flight, 0);
        let at = Position::decode(avail);
        let flags = if at.wrap { F_AVAIL } else { F_USED };
        put(&mem, at.index, 0x20000, 32, 5, flags);
        assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(Some(5)));
        ring.add_used(&mut st, &mem, 5, 0).unwrap();
    }
}
