//! The packed device ring against rings built by hand in guest memory.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::event::{driver_wants_call, FLAGS_DESC, FLAGS_DISABLE, FLAGS_ENABLE};
use super::ring::{PackedRing, UsedError};
use super::*;
use crate::vhost::dirty::GuestMem;
use crate::vhost::ring_guard::RingViolation;

const RING: u64 = 0x1000;
const DRIVER: u64 = 0x3000;
const IND: u64 = 0x4000;

fn mem() -> GuestMem {
    GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

fn put(m: &GuestMem, at: u64, addr: u64, len: u32, id: u16, flags: u16) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&id.to_le_bytes());
    b[14..].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&b, GuestAddress(at)).unwrap();
}

fn get(m: &GuestMem, index: u16) -> (u32, u16, u16) {
    let at = RING + 16 * u64::from(index);
    let len: u32 = m.read_obj(GuestAddress(at + 8)).unwrap();
    let id: u16 = m.read_obj(GuestAddress(at + 12)).unwrap();
    let flags: u16 = m.read_obj(GuestAddress(at + 14)).unwrap();
    (u32::from_le(len), u16::from_le(id), u16::from_le(flags))
}

/// A driver as §2.8.11 describes it: descriptors written in ring order,
/// the first one's flags last.
struct Driver {
    avail: Position,
    used: Position,
    size: u16,
    /// Descriptors per id in flight.
    sgs: Vec<u16>,
}

impl Driver {
    fn new(size: u16) -> Self {
        Self {
            avail: Position::START,
            used: Position::START,
            size,
            sgs: vec![0; usize::from(size)],
        }
    }

    fn avail_flags(wrap: bool) -> u16 {
        if wrap {
            F_AVAIL
        } else {
            F_USED
        }
    }

    /// Makes a chain of `elems` (addr, len, write) available with `id`.
    fn offer(&mut self, m: &GuestMem, elems: &[(u64, u32, bool)], id: u16) {
        let first = self.avail;
        let mut head_flags = 0;
        for (k, &(addr, len, write)) in elems.iter().enumerate() {
            let mut f = Self::avail_flags(self.avail.wrap);
            if write {
                f |= F_WRITE;
            }
            if k + 1 < elems.len() {
                f |= F_NEXT;
            }
            let at = RING + 16 * u64::from(self.avail.index);
            if k == 0 {
                head_flags = f;
                put(m, at, addr, len, id, 0);
                // The old flags stay until the end: not yet available.
                let old = Self::avail_flags(!self.avail.wrap);
                m.write_obj(old, GuestAddress(at + 14)).unwrap();
            } else {
                put(m, at, addr, len, id, f);
            }
            self.avail = self.avail.advance(1, self.size);
        }
        self.sgs[usize::from(id)] = elems.len() as u16;
        m.store(
            head_flags,
            GuestAddress(RING + 16 * u64::from(first.index) + 14),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Makes one indirect descriptor available, its table at `table`.
    fn offer_indirect(&mut self, m: &GuestMem, table: u64, entries: &[(u64, u32, bool)], id: u16) {
        for (k, &(addr, len, write)) in entries.iter().enumerate() {
            let f = if write { F_WRITE } else { 0 };
            put(m, table + 16 * k as u64, addr, len, 0xdead, f);
        }
        let at = RING + 16 * u64::from(self.avail.index);
        let f = Self::avail_flags(self.avail.wrap) | F_INDIRECT;
        put(m, at, table, 16 * entries.len() as u32, id, f);
        self.avail = self.avail.advance(1, self.size);
        self.sgs[usize::from(id)] = 1;
    }

    /// The next used descriptor, if the device wrote one: (id, len, WRITE).
    fn take_used(&mut self, m: &GuestMem) -> Option<(u16, u32, bool)> {
        let (len, id, flags) = get(m, self.used.index);
        let used = flags & F_USED != 0;
        if used != self.used.wrap || (flags & F_AVAIL != 0) != self.used.wrap {
            return None;
        }
        let n = self.sgs[usize::from(id)];
        assert!(n > 0, "used id {id} was not in flight");
        self.sgs[usize::from(id)] = 0;
        self.used = self.used.advance(n, self.size);
        Some((id, len, flags & F_WRITE != 0))
    }
}

fn ring(size: u16) -> PackedRing {
    PackedRing::new(GuestAddress(RING), size, Position::START)
}

#[test]
fn a_good_direct_and_indirect_chain_are_taken_and_used_in_place() {
    let m = mem();
    let (mut dev, mut drv) = (ring(8), Driver::new(8));
    let mut out = Vec::new();
    assert_eq!(
        dev.pop(&m, &mut out),
        Ok(None),
        "zeroed ring: nothing available"
    );
    drv.offer(&m, &[(0x8000, 51, false), (0x9000, 108, true)], 5);
    drv.offer_indirect(
        &m,
        IND,
        &[(0x8000, 51, false), (0xa000, 20, true), (0xb000, 30, true)],
        2,
    );
    assert_eq!(dev.pop(&m, &mut out), Ok(Some(5)));
    let got: Vec<(u64, u32, bool)> = out
        .iter()
        .map(|d: &Descriptor| (d.addr().0, d.len(), d.is_write_only()))
        .collect();
    assert_eq!(got, [(0x8000, 51, false), (0x9000, 108, true)]);
    assert!(out
        .iter()
        .all(|d| !d.has_next() && !d.refers_to_indirect_table()));
    assert_eq!(dev.pop(&m, &mut out), Ok(Some(2)));
    assert_eq!(out.len(), 3);
    assert_eq!(
        (out[1].addr().0, out[1].len(), out[1].is_write_only()),
        (0xa000, 20, true)
    );
    assert_eq!(dev.pop(&m, &mut out), Ok(None));
    assert_eq!(
        (dev.avail, dev.in_flight),
        (
            Position {
                index: 3,
                wrap: true
            },
            3
        )
    );
    // Out of order: the indirect chain first, at the device's used
    // position 0; the two-descriptor chain after it at 1.
    dev.add_used(&m, 2, 50).unwrap();
    assert_eq!(
        get(&m, 0),
        (50, 2, F_AVAIL | F_USED | F_WRITE),
        "byte for byte"
    );
    dev.add_used(&m, 5, 0).unwrap();
    assert_eq!(
        get(&m, 1),
        (0, 5, F_AVAIL | F_USED),
        "nothing written: no WRITE"
    );
    assert_eq!(
        dev.used,
        Position {
            index: 3,
            wrap: true
        }
    );
    assert_eq!(
        dev.add_used(&m, 5, 0),
        Err(UsedError::NotInFlight { id: 5 })
    );
    assert_eq!(drv.take_used(&m), Some((2, 50, true)));
    assert_eq!(drv.take_used(&m), Some((5, 0, false)));
    assert_eq!(drv.take_used(&m), None);
}

#[test]
fn wrap_around_many_times_with_completions_out_of_order() {
    let m = mem();
    let size = 8u16;
    let (mut dev, mut drv) = (ring(size), Driver::new(size));
    let mut out = Vec::new();
    let mut free: Vec<u16> = (0..size).rev().collect();
    let mut taken: Vec<(u16, u32)> = Vec::new();
    let (mut done, mut offered) = (0u32, 0u32);
    let mut descs_in_ring = 0u16;
    let rounds = u32::from(size) * 100;
    while done < rounds {
        // Offer chains of 1..=3 descriptors while ids and ring room last.
        loop {
            let n = 1 + (offered % 3) as u16;
            if offered >= rounds || descs_in_ring + n > size {
                break;
            }
            let Some(id) = free.pop() else { break };
            let elems: Vec<(u64, u32, bool)> = (0..n)
                .map(|k| (0x8000 + 0x100 * u64::from(k), 16, k + 1 == n))
                .collect();
            drv.offer(&m, &elems, id);
            descs_in_ring += n;
            offered += 1;
        }
        while let Some(id) = dev.pop(&m, &mut out).unwrap() {
            taken.push((id, out.len() as u32));
        }
        // Complete in reverse order, each with a length naming it.
        while let Some((id, n)) = taken.pop() {
            dev.add_used(&m, id, 1000 + u32::from(id) * 10 + n).unwrap();
        }
        while let Some((id, len, write)) = drv.take_used(&m) {
            let n = (len - 1000) % 10;
            assert_eq!(len, 1000 + u32::from(id) * 10 + n);
            assert!(write);
            descs_in_ring -= n as u16;
            free.push(id);
            done += 1;
        }
    }
    assert_eq!(done, rounds);
    assert_eq!(
        (dev.in_flight, dev.avail, dev.used),
        (0, drv.avail, drv.used)
    );
}

#[test]
fn every_packed_violation_is_named_and_takes_nothing() {
    let m = mem();
    let mut out = Vec::new();
    let at = |i: u64| RING + 16 * i;
    // AVAIL and USED both equal the wrap counter (1).
    let mut dev = ring(8);
    put(&m, at(0), 0x8000, 16, 0, F_AVAIL | F_USED);
    assert_eq!(
        dev.pop(&m, &mut out),
        Err(RingViolation::WrapCounterLie {
            index: 0,
            flags: F_AVAIL | F_USED
        })
    );
    // The first descriptor made available before the second.
    put(&m, at(0), 0x8000, 16, 0, F_AVAIL | F_NEXT);
    put(&m, at(1), 0x8000, 16, 0, 0);
    assert_eq!(
        dev.pop(&m, &mut out),
        Err(RingViolation::NotAvailable { index: 1, flags: 0 })
    );
    // A chain that never ends: NEXT on every descriptor of the ring.
    for i in 0..8 {
        put(&m, at(i), 0x8000, 16, 0, F_AVAIL | F_NEXT);
    }
    assert_eq!(
        dev.pop(&m, &mut out),
        Err(RingViolation::ChainTooLong {
            head: 0,
            table_len: 8
        })
    );
    // Ids out of range and in flight.
    put(&m, at(0), 0x8000, 16, 8, F_AVAIL);
    assert_eq!(
        dev.pop(&m, &mut out),
        Err(RingViolation::IdOutOfRange { id: 8, size: 8 })
    );
    put(&m, at(0), 0x8000, 16, 3, F_AVAIL);
    put(&m, at(1), 0x8000, 16, 3, F_AVAIL);
    assert_eq!(dev.pop(&m, &mut out), Ok(Some(3)));
    assert_eq!(dev.pop(&m, &mut out), Err(RingViolation::IdInUse { id: 3 }));
    assert_eq!(dev.avail.index, 1, "nothing taken");
    // Indirect tables in the wrong place.
    put(&m, at(1), IND, 32, 4, F_AVAIL | F_INDIRECT | F_NEXT);
    assert!(matches!(
        dev.pop(&m, &mut out),
        Err(RingViolation::IndirectMisplaced {
            index: 1,
            why: "has NEXT set"
        })
    ));
    put(&m, at(1), 0x8000, 16, 4, F_AVAIL | F_NEXT);
    put(&m, at(2), IND, 32, 4, F_AVAIL | F_INDIRECT);
    assert!(matches!(
        dev.pop(&m, &mut out),
        Err(RingViolation::IndirectMisplaced { index: 2, .. })
    ));
    for (len, addr) in [(0, IND), (24, IND), (16 * 2000, IND)] {
        put(&m, at(1), addr, len, 4, F_AVAIL | F_INDIRECT);
        assert_eq!(
            dev.pop(&m, &mut out),
            Err(RingViolation::IndirectBadLength { len })
        );
    }
    put(&m, at(1), 0xfff0, 64, 4, F_AVAIL | F_INDIRECT);
    assert!(matches!(
        dev.pop(&m, &mut out),
        Err(RingViolation::TableUnreadable { .. })
    ));
    // Inside a table only WRITE counts (§2.8.7): NEXT and INDIRECT ignored.
    put(&m, IND, 0x8000, 16, 0, F_NEXT | F_INDIRECT);
    put(&m, IND + 16, 0x9000, 16, 0, F_WRITE | F_NEXT);
    put(&m, at(1), IND, 32, 4, F_AVAIL | F_INDIRECT);
    assert_eq!(dev.pop(&m, &mut out), Ok(Some(4)));
    assert_eq!(
        (out.len(), out[0].is_write_only(), out[1].is_write_only()),
        (2, false, true)
    );
    // Descriptors made available over the two still in flight: with the
    // ring of 8 holding 2 in flight, a chain of 7 overruns it.
    let mut dev2 = ring(8);
    for i in 0..7 {
        let next = if i < 6 { F_NEXT } else { 0 };
        put(&m, at(i), 0x8000, 16, 1, F_AVAIL | next);
    }
    put(&m, at(7), 0x8000, 16, 2, F_AVAIL);
    assert_eq!(dev2.pop(&m, &mut out), Ok(Some(1)));
    assert_eq!(dev2.pop(&m, &mut out), Ok(Some(2)));
    // The driver flips slot 0 to the next lap's AVAIL before the device used it.
    put(&m, at(0), 0x8000, 16, 3, F_USED);
    assert_eq!(
        dev2.pop(&m, &mut out),
        Err(RingViolation::RingOverrun {
            in_flight: 8,
            chain: 1,
            size: 8
        })
    );
    // A table outside memory.
    let mut dev3 = PackedRing::new(GuestAddress(0xffff_0000), 8, Position::START);
    assert!(matches!(
        dev3.pop(&m, &mut out),
        Err(RingViolation::TableUnreadable { .. })
    ));
}

#[test]
fn the_driver_event_structure_decides_each_notification() {
    let m = mem();
    let set = |desc: u16, flags: u16| {
        m.write_obj(desc, GuestAddress(DRIVER)).unwrap();
        m.write_obj(flags, GuestAddress(DRIVER + 2)).unwrap();
    };
    let size = 8;
    let ask = |event_idx, new: Position, last: &mut Option<Position>| {
        driver_wants_call(
            &m,
            GuestAddress(DRIVER),
            size,
            event_idx,
            new,
            last,
            Position::START,
        )
    };
    let p = |index, wrap| Position { index, wrap };
    let mut last = None;
    set(0, FLAGS_ENABLE);
    assert!(ask(false, p(1, true), &mut last));
    set(0, FLAGS_DISABLE);
    assert!(!ask(true, p(2, true), &mut last));
    // DESC at 5 (wrap 1): used 2..4 does not reach it, 4..6 does.
    set(5 | 0x8000, FLAGS_DESC);
    assert!(!ask(true, p(4, true), &mut last));
    assert!(ask(true, p(6, true), &mut last));
    // DESC at 1 of the next lap (wrap 0): 6..(0, wrap 0) no, ..(2, wrap 0) yes.
    set(1, FLAGS_DESC);
    assert!(!ask(true, p(0, false), &mut last));
    assert!(ask(true, p(2, false), &mut last));
    // The same index with the old wrap counter is a lap behind: passed long ago.
    set(3 | 0x8000, FLAGS_DESC);
    assert!(!ask(true, p(4, false), &mut last));
    // DESC without EVENT_IDX, the reserved value 3, an offset past the ring: notify.
    set(7 | 0x8000, FLAGS_DESC);
    assert!(ask(false, p(5, false), &mut last));
    set(0, 3);
    assert!(ask(true, p(6, false), &mut last));
    set(9, FLAGS_DESC);
    assert!(ask(true, p(7, false), &mut last));
    // No driver area in memory: notify.
    let mut l = None;
    assert!(driver_wants_call(
        &m,
        GuestAddress(0xffff_0000),
        size,
        true,
        p(1, true),
        &mut l,
        Position::START
    ));
}

#[test]
fn the_device_event_structure_is_written_as_asked() {
    let m = mem();
    let area = GuestAddress(0x5000);
    super::event::disable(&m, area).unwrap();
    assert_eq!(
        m.read_obj::<u16>(GuestAddress(0x5002)).unwrap(),
        FLAGS_DISABLE
    );
    super::event::enable(
        &m,
        area,
        false,
        Position {
            index: 3,
            wrap: false,
        },
    )
    .unwrap();
    assert_eq!(
        m.read_obj::<u16>(GuestAddress(0x5002)).unwrap(),
        FLAGS_ENABLE
    );
    super::event::enable(
        &m,
        area,
        true,
        Position {
            index: 3,
            wrap: true,
        },
    )
    .unwrap();
    assert_eq!(m.read_obj::<u16>(area).unwrap(), 0x8003);
    assert_eq!(m.read_obj::<u16>(GuestAddress(0x5002)).unwrap(), FLAGS_DESC);
}
