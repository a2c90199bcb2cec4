//! Unit tests of the packed ring against a device model written here: it
//! reads and writes the ring through the same [`SharedMemory`] atomic
//! accessors the driver uses, follows §2.8 or breaks it on purpose.

use super::event::{EVENT_WRAP_BIT, RING_EVENT_FLAGS_DESC};
use super::*;

const MEM_LEN: usize = 1 << 20;

fn opts(event_idx: bool, indirect: bool, max_indirect: u16) -> RingOptions {
    RingOptions {
        event_idx,
        indirect,
        max_indirect,
    }
}

/// One chain as the device read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    id: u16,
    /// Ring positions it took.
    n_desc: u16,
    /// (addr, len, device-writable) of each buffer.
    bufs: Vec<(u64, u32, bool)>,
    indirect: bool,
}

impl Chain {
    fn writable(&self) -> u32 {
        self.bufs.iter().filter(|b| b.2).map(|b| b.1).sum()
    }
}

/// The device side of a packed ring (§2.8), driven by hand.
struct Device {
    mem: Arc<SharedMemory>,
    o: PackedLayout,
    size: u16,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
}

impl Device {
    fn new(ring: &PackedRing, mem: &Arc<SharedMemory>) -> Self {
        Self {
            mem: mem.clone(),
            o: ring.offsets(),
            size: ring.size(),
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
        }
    }
    fn desc_off(&self, pos: u16) -> usize {
        self.o.desc + 16 * usize::from(pos)
    }
    /// (addr, len, id, flags) of the descriptor at `off`.
    fn raw(&self, off: usize) -> (u64, u32, u16, u16) {
        let lo = self.mem.load_u32(off, Ordering::Relaxed) as u64;
        let hi = self.mem.load_u32(off + 4, Ordering::Relaxed) as u64;
        (
            u64::from_le(lo | hi << 32),
            u32::from_le(self.mem.load_u32(off + 8, Ordering::Relaxed)),
            u16::from_le(self.mem.load_u16(off + 12, Ordering::Relaxed)),
            u16::from_le(self.mem.load_u16(off + 14, Ordering::Acquire)),
        )
    }
    fn flags_at(&self, pos: u16) -> u16 {
        self.raw(self.desc_off(pos)).3
    }
    fn advance(pos: &mut u16, wrap: &mut bool, size: u16, by: u16) {
        let next = u32::from(*pos) + u32::from(by);
        if next >= u32::from(size) {
            *pos = (next - u32::from(size)) as u16;
            *wrap = !*wrap;
        } else {
            *pos = next as u16;
        }
    }
    /// The next available chain, if the driver made one available.
    fn take(&mut self) -> Option<Chain> {
        let (mut pos, mut wrap) = (self.next_avail, self.avail_wrap);
        let mut bufs = Vec::new();
        let mut n_desc = 0;
        let mut id;
        let mut indirect = false;
        loop {
            let (addr, len, did, flags) = self.raw(self.desc_off(pos));
            let avail = (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap;
            if !avail {
                assert_eq!(n_desc, 0, "a chain's later descriptor is not available");
                return None;
            }
            id = did;
            n_desc += 1;
            Self::advance(&mut pos, &mut wrap, self.size, 1);
            if flags & DESC_F_INDIRECT != 0 {
                assert_eq!(flags & DESC_F_NEXT, 0, "INDIRECT with NEXT");
                indirect = true;
                let table = usize::try_from(addr).unwrap();
                for i in 0..(len as usize / 16) {
                    let (a, l, tid, f) = self.raw(table + 16 * i);
                    assert_eq!(f & !DESC_F_WRITE, 0, "only WRITE in an indirect table");
                    assert_eq!(tid, 0, "indirect ids are reserved");
                    bufs.push((a, l, f & DESC_F_WRITE != 0));
                }
                break;
            }
            bufs.push((addr, len, flags & DESC_F_WRITE != 0));
            if flags & DESC_F_NEXT == 0 {
                break;
            }
        }
        self.next_avail = pos;
        self.avail_wrap = wrap;
        Some(Chain {
            id,
            n_desc,
            bufs,
            indirect,
        })
    }
    /// Writes a used descriptor at the next used position with `flags`
    /// stored last (Release), without moving on.
    fn put_used_raw(&self, id: u16, len: u32, flags: u16) {
        let off = self.desc_off(self.next_used);
        self.mem.store_u32(off + 8, len.to_le(), Ordering::Relaxed);
        self.mem.store_u16(off + 12, id.to_le(), Ordering::Relaxed);
        self.mem
            .store_u16(off + 14, flags.to_le(), Ordering::Release);
    }
    fn used_flags(&self) -> u16 {
        if self.used_wrap {
            DESC_F_AVAIL | DESC_F_USED
        } else {
            0
        }
    }
    /// Protocol-following completion of `chain` with `len` bytes written.
    fn complete(&mut self, chain: &Chain, len: u32) {
        self.put_used_raw(chain.id, len, self.used_flags());
        Self::advance(
            &mut self.next_used,
            &mut self.used_wrap,
            self.size,
            chain.n_desc,
        );
    }
    fn set_event(&self, flags: u16, off_wrap: u16) {
        let v = u32::from(off_wrap) | u32::from(flags) << 16;
        self.mem
            .store_u32(self.o.device_event, v.to_le(), Ordering::Release);
    }
    /// The driver event suppression structure: (off_wrap, flags).
    fn driver_event(&self) -> (u16, u16) {
        let v = u32::from_le(self.mem.load_u32(self.o.driver_event, Ordering::Acquire));
        (v as u16, (v >> 16) as u16)
    }
}

fn setup(name: &str, size: u16, o: RingOptions) -> (Arc<SharedMemory>, PackedRing, Device) {
    let mem = Arc::new(SharedMemory::new(name, MEM_LEN).unwrap());
    let ring = PackedRing::new(mem.clone(), 0, size, o).unwrap();
    let dev = Device::new(&ring, &mem);
    (mem, ring, dev)
}

/// A request-like chain: `extra` + 1 readable, then writable buffers.
fn segs(k: u64, n: usize) -> Vec<Segment> {
    (0..n)
        .map(|i| {
            let gpa = 0x10_0000 + k * 0x1000 + i as u64 * 0x100;
            if i == 0 {
                Segment::readable(gpa, 32)
            } else {
                Segment::writable(gpa, 64 * i as u32)
            }
        })
        .collect()
}

#[test]
fn packed_ring_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PackedRing>();
}

#[test]
fn layout_and_alignment() {
    let l = PackedRing::layout(8, 0);
    assert_eq!((l.desc, l.driver_event, l.device_event), (0, 128, 132));
    assert_eq!((l.indirect, l.total), (144, 144));
    let l = PackedRing::layout(5, 4);
    assert_eq!((l.driver_event, l.device_event, l.indirect), (80, 84, 96));
    assert_eq!(l.total, 96 + 5 * 4 * 16);
    let mem = Arc::new(SharedMemory::new("vscsi-packed-l", 1 << 16).unwrap());
    assert_eq!(
        PackedRing::new(mem.clone(), 8, 8, RingOptions::default()).unwrap_err(),
        RingError::Misaligned(8)
    );
    for bad in [0, 32769] {
        assert_eq!(
            PackedRing::new(mem.clone(), 0, bad, RingOptions::default()).unwrap_err(),
            RingError::InvalidPackedSize(bad)
        );
    }
    assert!(PackedRing::new(mem.clone(), 0, 5, RingOptions::default()).is_ok());
    assert!(matches!(
        PackedRing::new(mem.clone(), 0, 4096, RingOptions::default()),
        Err(RingError::RegionTooSmall { .. })
    ));
    assert_eq!(
        PackedRing::new(mem, 0, 8, opts(false, true, 0)).unwrap_err(),
        RingError::InvalidMaxIndirect {
            max_indirect: 0,
            size: 8
        }
    );
}

#[test]
fn descriptors_byte_for_byte_and_head_flags_last() {
    let (mem, mut ring, mut dev) = setup("vscsi-packed-bytes", 8, RingOptions::default());
    let chain = [
        Segment::readable(0x1122_3344_5566_7788, 51),
        Segment::writable(0x2000, 108),
        Segment::writable(0x3000, 4096),
    ];
    let id = ring.add(&chain).unwrap();
    assert_eq!(id, 0);
    let mut b = [0u8; 48];
    mem.read(0, &mut b).unwrap();
    let mut want = [0u8; 48];
    // Head: addr, len, id; flags not yet written.
    want[0..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    want[8..12].copy_from_slice(&51u32.to_le_bytes());
    // Second: WRITE | NEXT | AVAIL (wrap counter 1).
    want[16..24].copy_from_slice(&0x2000u64.to_le_bytes());
    want[24..28].copy_from_slice(&108u32.to_le_bytes());
    want[30..32].copy_from_slice(&(DESC_F_WRITE | DESC_F_NEXT | DESC_F_AVAIL).to_le_bytes());
    // Third: WRITE | AVAIL, no NEXT.
    want[32..40].copy_from_slice(&0x3000u64.to_le_bytes());
    want[40..44].copy_from_slice(&4096u32.to_le_bytes());
    want[46..48].copy_from_slice(&(DESC_F_WRITE | DESC_F_AVAIL).to_le_bytes());
    assert_eq!(b, want);
    assert_eq!(dev.take(), None, "nothing is available before publish");
    assert!(
        ring.publish(),
        "a zeroed device event structure says ENABLE"
    );
    mem.read(0, &mut b).unwrap();
    want[14..16].copy_from_slice(&(DESC_F_NEXT | DESC_F_AVAIL).to_le_bytes());
    assert_eq!(b, want);
    let c = dev.take().unwrap();
    assert_eq!(c.n_desc, 3);
    assert_eq!(c.bufs[2], (0x3000, 4096, true));
    assert!(!ring.publish(), "nothing new to publish");
}

#[test]
fn every_descriptor_of_a_chain_carries_the_id() {
    let (mem, mut ring, _dev) = setup("vscsi-packed-ids", 8, RingOptions::default());
    ring.add(&segs(0, 1)).unwrap();
    let id = ring.add(&segs(1, 3)).unwrap();
    assert_eq!(id, 1);
    for pos in 1..4 {
        assert_eq!(
            u16::from_le(mem.load_u16(pos * 16 + 12, Ordering::Relaxed)),
            1
        );
    }
}

/// Many laps of the ring with chains of varying length, completed in and
/// out of order: ids, lengths and positions stay right, and the wrap
/// counters flip once a lap (`size` 8 and 5, the latter not a power of two).
#[test]
fn wrap_around_many_times() {
    for (size, o) in [
        (8, RingOptions::default()),
        (5, RingOptions::default()),
        (8, opts(true, true, 2)),
        (5, opts(true, true, 3)),
    ] {
        let (_mem, mut ring, mut dev) = setup("vscsi-packed-wrap", size, o);
        let mut done = 0u64;
        let mut laps = 0u64;
        let mut k = 0u64;
        let target = 200 * u64::from(size);
        while done < target {
            // Fill what fits, 1 to 3 segments per chain.
            let mut added = Vec::new();
            loop {
                let n = 1 + (k % 3) as usize;
                match ring.add(&segs(k, n)) {
                    Ok(id) => added.push((id, n)),
                    Err(RingError::Full { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
                k += 1;
            }
            assert!(!added.is_empty());
            ring.publish();
            let mut chains = Vec::new();
            while let Some(c) = dev.take() {
                chains.push(c);
            }
            assert_eq!(chains.len(), added.len());
            // Reverse order every other round.
            if k.is_multiple_of(2) {
                chains.reverse();
            }
            for c in &chains {
                let was = ring.next_used().1;
                dev.complete(c, c.writable());
                let (id, len) = ring.pop_used().unwrap().unwrap();
                assert_eq!((id, len), (c.id, c.writable()));
                if ring.next_used().1 != was {
                    laps += 1;
                }
                done += 1;
            }
            assert_eq!(ring.pop_used().unwrap(), None);
            assert_eq!(ring.in_flight(), 0);
            assert_eq!(ring.num_free(), size);
            assert_eq!(ring.next_used(), ring.next_avail());
            assert_eq!((dev.next_used, dev.used_wrap), ring.next_used());
        }
        assert!(laps >= 100, "{laps} laps of a ring of {size}");
    }
}

#[test]
fn out_of_order_completion_moves_by_the_returned_chain() {
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-ooo", 8, RingOptions::default());
    let a = ring.add(&segs(0, 3)).unwrap();
    let b = ring.add(&segs(1, 1)).unwrap();
    let c = ring.add(&segs(2, 2)).unwrap();
    ring.publish();
    let (ca, cb, cc) = (
        dev.take().unwrap(),
        dev.take().unwrap(),
        dev.take().unwrap(),
    );
    assert_eq!((ca.id, cb.id, cc.id), (a, b, c));
    // B first: its used descriptor goes at position 0 and the next used
    // position moves by B's one descriptor.
    dev.complete(&cb, 0);
    assert_eq!(ring.pop_used().unwrap(), Some((b, 0)));
    assert_eq!(ring.next_used(), (1, true));
    assert_eq!(ring.in_flight(), 2);
    assert_eq!(ring.num_free(), 3);
    // Id B is free again and taken by the next chain, at position 6.
    let d = ring.add(&segs(3, 1)).unwrap();
    assert_eq!(d, b);
    ring.publish();
    let cd = dev.take().unwrap();
    dev.complete(&cc, 64);
    dev.complete(&cd, 0);
    dev.complete(&ca, 192);
    assert_eq!(ring.pop_used().unwrap(), Some((c, 64)));
    assert_eq!(ring.pop_used().unwrap(), Some((d, 0)));
    assert_eq!(ring.pop_used().unwrap(), Some((a, 192)));
    assert_eq!(ring.pop_used().unwrap(), None);
    assert_eq!(ring.next_used(), (7, true));
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn used_id_out_of_range_breaks_the_ring() {
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-range", 8, RingOptions::default());
    ring.add(&segs(0, 2)).unwrap();
    ring.publish();
    dev.take().unwrap();
    dev.put_used_raw(8, 0, dev.used_flags());
    assert!(ring.has_used());
    assert_eq!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { id: 8, size: 8 }
    );
    assert!(ring.is_broken());
    assert!(
        ring.has_used(),
        "a broken ring reports work so pollers see the error"
    );
    assert_eq!(ring.pop_used().unwrap_err(), RingError::Broken);
    assert_eq!(ring.add(&segs(1, 1)).unwrap_err(), RingError::Broken);
    assert!(!ring.publish());
    assert!(RingError::BadUsedId { id: 8, size: 8 }.is_device_fault());
    // A reset makes it usable again.
    ring.reset().unwrap();
    assert!(!ring.is_broken());
    assert_eq!(ring.add(&segs(1, 1)).unwrap(), 0);
}

#[test]
fn used_id_not_in_flight_breaks_the_ring() {
    // An id that was never added, one already returned, and one added but
    // not yet published.
    for case in 0..3 {
        let (_mem, mut ring, mut dev) = setup("vscsi-packed-nif", 8, RingOptions::default());
        let a = ring.add(&segs(0, 1)).unwrap();
        ring.publish();
        let ca = dev.take().unwrap();
        let bad = match case {
            0 => 5,
            1 => {
                dev.complete(&ca, 0);
                assert_eq!(ring.pop_used().unwrap(), Some((a, 0)));
                ring.add(&segs(1, 1)).unwrap();
                ring.publish();
                dev.take().unwrap();
                a
            }
            _ => ring.add(&segs(2, 1)).unwrap(),
        };
        // Case 1 reuses id a for the second chain (the free-id stack), so
        // return a twice: the first is legitimate.
        if case == 1 {
            dev.put_used_raw(a, 0, dev.used_flags());
            Device::advance(&mut dev.next_used, &mut dev.used_wrap, 8, 1);
            assert_eq!(ring.pop_used().unwrap(), Some((a, 0)));
        }
        dev.put_used_raw(bad, 0, dev.used_flags());
        assert_eq!(
            ring.pop_used().unwrap_err(),
            RingError::BadUsedId {
                id: u32::from(bad),
                size: 8
            },
            "case {case}"
        );
        assert!(ring.is_broken());
    }
}

#[test]
fn a_used_descriptor_with_nothing_in_flight_is_refused() {
    let (_mem, mut ring, dev) = setup("vscsi-packed-idle", 4, RingOptions::default());
    dev.put_used_raw(0, 0, dev.used_flags());
    assert_eq!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { id: 0, size: 4 }
    );
}

#[test]
fn used_flags_with_the_wrong_wrap_bits_are_not_taken() {
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-flags", 4, RingOptions::default());
    // First lap (used wrap counter 1): both bits 0 is a lap-0 used
    // descriptor, AVAIL alone is still available, USED alone is neither.
    let a = ring.add(&segs(0, 1)).unwrap();
    ring.publish();
    let ca = dev.take().unwrap();
    for flags in [
        0,
        DESC_F_AVAIL,
        DESC_F_USED,
        DESC_F_WRITE,
        DESC_F_USED | DESC_F_WRITE,
    ] {
        dev.put_used_raw(a, 0, flags);
        assert!(!ring.has_used(), "{flags:#x}");
        assert_eq!(ring.pop_used().unwrap(), None, "{flags:#x}");
        assert!(!ring.enable_interrupts());
    }
    assert!(!ring.is_broken());
    // The right bits (other flag bits do not matter) are taken.
    dev.put_used_raw(a, 0, DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE);
    assert_eq!(ring.pop_used().unwrap(), Some((a, 0)));
    Device::advance(&mut dev.next_used, &mut dev.used_wrap, 4, ca.n_desc);
    // Second lap: take the ring round once, then the lap-1 bits are stale.
    let mut k = 1;
    while ring.next_used().1 {
        ring.add(&segs(k, 1)).unwrap();
        k += 1;
        ring.publish();
        let c = dev.take().unwrap();
        dev.complete(&c, 0);
        ring.pop_used().unwrap().unwrap();
    }
    assert_eq!(ring.next_used(), (0, false));
    let b = ring.add(&segs(9, 1)).unwrap();
    ring.publish();
    assert_eq!(
        dev.flags_at(0),
        DESC_F_USED,
        "available in lap 0: AVAIL 0, USED 1"
    );
    let cb = dev.take().unwrap();
    for flags in [DESC_F_AVAIL | DESC_F_USED, DESC_F_USED, DESC_F_AVAIL] {
        dev.put_used_raw(b, 0, flags);
        assert_eq!(ring.pop_used().unwrap(), None, "{flags:#x}");
    }
    dev.complete(&cb, 0);
    assert_eq!(ring.pop_used().unwrap(), Some((b, 0)));
}

#[test]
fn used_length_is_bounded_by_the_writable_bytes() {
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-len", 8, RingOptions::default());
    // Writable bytes 64 + 128.
    let a = ring.add(&segs(0, 3)).unwrap();
    ring.publish();
    let ca = dev.take().unwrap();
    dev.complete(&ca, 192);
    assert_eq!(
        ring.pop_used().unwrap(),
        Some((a, 192)),
        "exactly the bound"
    );
    // A readable-only chain: length 0 only.
    let b = ring.add(&segs(1, 1)).unwrap();
    ring.publish();
    let cb = dev.take().unwrap();
    dev.complete(&cb, 1);
    assert_eq!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedLen {
            id: b,
            len: 1,
            writable: 0
        }
    );
    assert!(ring.is_broken());

    let (_mem, mut ring, mut dev) = setup("vscsi-packed-len2", 8, opts(false, true, 4));
    let a = ring.add(&segs(0, 3)).unwrap();
    ring.publish();
    let ca = dev.take().unwrap();
    assert!(ca.indirect);
    dev.complete(&ca, 193);
    assert_eq!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedLen {
            id: a,
            len: 193,
            writable: 192
        }
    );
}

#[test]
fn indirect_chains() {
    let (mem, mut ring, mut dev) = setup("vscsi-packed-ind", 8, opts(false, true, 4));
    let one = ring.add(&segs(0, 1)).unwrap();
    let three = ring.add(&segs(1, 3)).unwrap();
    let five = ring.add(&segs(2, 5)).unwrap();
    ring.publish();
    assert_eq!(ring.num_free(), 8 - 1 - 1 - 5);
    let c1 = dev.take().unwrap();
    assert!(!c1.indirect && c1.n_desc == 1, "one segment stays direct");
    let c3 = dev.take().unwrap();
    assert!(c3.indirect && c3.n_desc == 1);
    assert_eq!(
        c3.bufs,
        vec![
            (0x10_1000, 32, false),
            (0x10_1100, 64, true),
            (0x10_1200, 128, true)
        ]
    );
    let c5 = dev.take().unwrap();
    assert!(
        !c5.indirect && c5.n_desc == 5,
        "longer than a table: direct"
    );
    // The ring descriptor of the indirect chain, byte for byte: the table
    // of id `three`, 3 * 16 bytes, INDIRECT | AVAIL, no NEXT.
    let o = ring.offsets();
    let table = o.indirect + usize::from(three) * 4 * 16;
    let mut b = [0u8; 16];
    mem.read(16, &mut b).unwrap();
    let mut want = [0u8; 16];
    want[0..8].copy_from_slice(&(table as u64).to_le_bytes());
    want[8..12].copy_from_slice(&48u32.to_le_bytes());
    want[12..14].copy_from_slice(&three.to_le_bytes());
    want[14..16].copy_from_slice(&(DESC_F_INDIRECT | DESC_F_AVAIL).to_le_bytes());
    assert_eq!(b, want);
    // Table entries: WRITE only, id 0.
    let mut t = [0u8; 48];
    mem.read(table, &mut t).unwrap();
    assert_eq!(u16::from_le_bytes([t[14], t[15]]), 0);
    assert_eq!(u16::from_le_bytes([t[30], t[31]]), DESC_F_WRITE);
    assert_eq!(u16::from_le_bytes([t[46], t[47]]), DESC_F_WRITE);
    assert_eq!(u16::from_le_bytes([t[44], t[45]]), 0);
    for c in [&c5, &c3, &c1] {
        dev.complete(c, c.writable());
    }
    assert_eq!(ring.pop_used().unwrap(), Some((five, 64 + 128 + 192 + 256)));
    assert_eq!(ring.pop_used().unwrap(), Some((three, 192)));
    assert_eq!(ring.pop_used().unwrap(), Some((one, 0)));
    assert_eq!(ring.next_used(), (7, true));
}

#[test]
fn chain_validation_errors_leave_the_ring_usable() {
    let (_mem, mut ring, _dev) = setup("vscsi-packed-val", 4, RingOptions::default());
    assert_eq!(ring.add(&[]).unwrap_err(), RingError::NoSegments);
    assert_eq!(
        ring.add(&[Segment::readable(0, 0)]).unwrap_err(),
        RingError::ZeroLengthSegment { index: 0 }
    );
    assert_eq!(
        ring.add(&[Segment::writable(0, 1), Segment::readable(0, 1)])
            .unwrap_err(),
        RingError::ReadableAfterWritable { index: 1 }
    );
    assert_eq!(
        ring.add(&segs(0, 5)).unwrap_err(),
        RingError::TooManySegments {
            segments: 5,
            max: 4
        }
    );
    assert_eq!(
        ring.add(&[Segment::writable(0, u32::MAX), Segment::writable(0, 1)])
            .unwrap_err(),
        RingError::ChainTooLong
    );
    assert_eq!(ring.in_flight(), 0);
    ring.add(&segs(0, 3)).unwrap();
    assert_eq!(
        ring.add(&segs(1, 2)).unwrap_err(),
        RingError::Full { needed: 2, free: 1 }
    );
    ring.add(&segs(1, 1)).unwrap();
    assert_eq!(ring.in_flight(), 2);
    assert!(!ring.is_broken());
}

#[test]
fn in_flight_accounting() {
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-acct", 4, opts(false, true, 4));
    // Indirect chains take one position each: four in flight, all ids used.
    for k in 0..4 {
        ring.add(&segs(k, 3)).unwrap();
        assert_eq!(ring.in_flight(), k as u16 + 1);
    }
    assert_eq!(ring.num_free(), 0);
    assert!(matches!(ring.add(&segs(4, 1)), Err(RingError::Full { .. })));
    ring.publish();
    let chains: Vec<_> = std::iter::from_fn(|| dev.take()).collect();
    assert_eq!(chains.len(), 4);
    dev.complete(&chains[2], 0);
    ring.pop_used().unwrap().unwrap();
    assert_eq!((ring.in_flight(), ring.num_free()), (3, 1));
    // Added but unpublished chains count as in flight too.
    ring.add(&segs(5, 1)).unwrap();
    assert_eq!((ring.in_flight(), ring.num_free()), (4, 0));
}

#[test]
fn kicks_follow_the_device_event_suppression() {
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-kick", 8, opts(true, false, 0));
    dev.set_event(RING_EVENT_FLAGS_DISABLE, 0);
    ring.add(&segs(0, 1)).unwrap();
    assert!(!ring.publish());
    dev.set_event(RING_EVENT_FLAGS_ENABLE, 0);
    ring.add(&segs(1, 1)).unwrap();
    assert!(ring.publish());
    // DESC: kick when position 4 (wrap 1) is made available.
    dev.set_event(RING_EVENT_FLAGS_DESC, off_wrap(4, true));
    ring.add(&segs(2, 2)).unwrap(); // positions 2, 3
    assert!(!ring.publish());
    ring.add(&segs(3, 2)).unwrap(); // positions 4, 5
    assert!(ring.publish());
    ring.add(&segs(4, 1)).unwrap(); // position 6
    assert!(!ring.publish());
    // Drain, then ask for position 1 in the next lap (wrap 0).
    while let Some(c) = dev.take() {
        dev.complete(&c, 0);
        ring.pop_used().unwrap().unwrap();
    }
    dev.set_event(RING_EVENT_FLAGS_DESC, off_wrap(1, false));
    ring.add(&segs(5, 1)).unwrap(); // position 7, wrap 1
    assert!(!ring.publish());
    ring.add(&segs(6, 1)).unwrap(); // position 0, wrap 0
    assert!(!ring.publish());
    ring.add(&segs(7, 3)).unwrap(); // positions 1..3, wrap 0
    assert!(ring.publish());
    assert_eq!(ring.next_avail(), (4, false));
    assert_eq!(ring.vring_base(), 4);
}

#[test]
fn desc_mode_needs_event_idx() {
    let (_mem, mut ring, dev) = setup("vscsi-packed-kick2", 8, RingOptions::default());
    // Without EVENT_IDX a DESC request is not honoured: the driver kicks.
    dev.set_event(RING_EVENT_FLAGS_DESC, off_wrap(6, true));
    ring.add(&segs(0, 1)).unwrap();
    assert!(ring.publish());
}

#[test]
fn driver_event_suppression_structure() {
    // Without EVENT_IDX: ENABLE / DISABLE only.
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-drv", 4, RingOptions::default());
    assert_eq!(dev.driver_event(), (0, RING_EVENT_FLAGS_ENABLE));
    ring.disable_interrupts();
    assert_eq!(dev.driver_event(), (0, RING_EVENT_FLAGS_DISABLE));
    assert!(!ring.enable_interrupts());
    assert_eq!(dev.driver_event(), (0, RING_EVENT_FLAGS_ENABLE));
    // The lost-wakeup check: a used buffer already there.
    ring.add(&segs(0, 1)).unwrap();
    ring.publish();
    let c = dev.take().unwrap();
    ring.disable_interrupts();
    dev.complete(&c, 0);
    assert!(ring.enable_interrupts());

    // With EVENT_IDX: DESC at the next used position and wrap counter,
    // moved along as buffers are popped while enabled.
    let (_mem, mut ring, mut dev) = setup("vscsi-packed-drv2", 4, opts(true, false, 0));
    assert!(!ring.enable_interrupts());
    assert_eq!(
        dev.driver_event(),
        (off_wrap(0, true), RING_EVENT_FLAGS_DESC)
    );
    for k in 0..5 {
        ring.add(&segs(k, 1)).unwrap();
        ring.publish();
        let c = dev.take().unwrap();
        dev.complete(&c, 0);
        ring.pop_used().unwrap().unwrap();
    }
    assert_eq!(ring.next_used(), (1, false));
    assert_eq!(dev.driver_event(), (1, RING_EVENT_FLAGS_DESC));
    ring.disable_interrupts();
    assert_eq!(dev.driver_event().1, RING_EVENT_FLAGS_DISABLE);
    // While disabled, popping leaves the event offset alone.
    ring.add(&segs(5, 2)).unwrap();
    ring.publish();
    let c = dev.take().unwrap();
    dev.complete(&c, 0);
    ring.pop_used().unwrap().unwrap();
    assert_eq!(dev.driver_event(), (1, RING_EVENT_FLAGS_DISABLE));
    assert!(!ring.enable_interrupts());
    assert_eq!(dev.driver_event(), (3, RING_EVENT_FLAGS_DESC));
    assert_eq!(dev.driver_event().0 & EVENT_WRAP_BIT, 0);
}

#[test]
fn reset_zeroes_the_ring_and_starts_at_wrap_1() {
    let (mem, mut ring, mut dev) = setup("vscsi-packed-reset", 4, opts(true, true, 2));
    for k in 0..5 {
        ring.add(&segs(k, 2)).unwrap();
        ring.publish();
        let c = dev.take().unwrap();
        dev.complete(&c, 0);
        ring.pop_used().unwrap().unwrap();
    }
    ring.add(&segs(9, 1)).unwrap();
    ring.add(&segs(10, 1)).unwrap();
    ring.publish();
    ring.disable_interrupts();
    assert_eq!(ring.in_flight(), 2);
    assert_eq!(ring.next_avail(), (3, false));
    ring.reset().unwrap();
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.num_free(), 4);
    assert_eq!(ring.next_avail(), (0, true));
    assert_eq!(ring.next_used(), (0, true));
    assert_eq!(ring.vring_base(), 0x8000);
    let total = ring.offsets().total;
    let mut bytes = vec![0xffu8; total];
    mem.read(0, &mut bytes).unwrap();
    assert!(bytes.iter().all(|&b| b == 0), "ring memory zeroed");
    // A fresh device model serves it from the start.
    let mut dev = Device::new(&ring, &mem);
    let id = ring.add(&segs(0, 2)).unwrap();
    assert!(ring.publish());
    let c = dev.take().unwrap();
    assert_eq!(c.id, id);
    dev.complete(&c, 64);
    assert_eq!(ring.pop_used().unwrap(), Some((id, 64)));
}

#[test]
fn the_device_scribbling_over_descriptors_changes_nothing_the_driver_trusts() {
    let (mem, mut ring, mut dev) = setup("vscsi-packed-scribble", 4, RingOptions::default());
    let a = ring.add(&segs(0, 3)).unwrap();
    ring.publish();
    let ca = dev.take().unwrap();
    // The device overwrites the chain's descriptors (lengths, ids) before
    // completing: the driver's bound and skip come from its own records.
    for pos in 0..3 {
        mem.store_u32(pos * 16 + 8, u32::MAX, Ordering::Relaxed);
        mem.store_u16(pos * 16 + 12, 3, Ordering::Relaxed);
    }
    dev.complete(&ca, 192);
    assert_eq!(ring.pop_used().unwrap(), Some((a, 192)));
    assert_eq!(ring.next_used(), (3, true));
    assert_eq!(ring.num_free(), 4);
}
