//! Unit tests of the split ring: byte layout, chains, wrap-around, notification
//! suppression, a hostile device, and a real device model (virtio-queue).

use super::*;
use crate::memory::Carver;

const MEM_LEN: usize = 1 << 20;

fn mem(name: &str) -> Arc<SharedMemory> {
    Arc::new(SharedMemory::new(name, MEM_LEN).unwrap())
}

fn opts(event_idx: bool, indirect: bool, max_indirect: u16) -> RingOptions {
    RingOptions {
        event_idx,
        indirect,
        max_indirect,
    }
}

/// A hand-driven device that reads and writes the ring bytes directly
/// through the region: it can follow the protocol or break it on purpose.
struct RawDevice {
    mem: Arc<SharedMemory>,
    o: RingLayout,
    size: u16,
    next_avail: u16,
    next_used: u16,
}

impl RawDevice {
    fn new(ring: &SplitRing, mem: &Arc<SharedMemory>) -> Self {
        Self {
            mem: mem.clone(),
            o: ring.offsets(),
            size: ring.size(),
            next_avail: ring.next_avail_idx(),
            next_used: ring.next_avail_idx(),
        }
    }
    fn r16(&self, off: usize) -> u16 {
        let mut b = [0; 2];
        self.mem.read(off, &mut b).unwrap();
        u16::from_le_bytes(b)
    }
    fn w16(&self, off: usize, v: u16) {
        self.mem.write(off, &v.to_le_bytes()).unwrap();
    }
    fn avail_idx(&self) -> u16 {
        self.r16(self.o.avail + 2)
    }
    fn avail_flags(&self) -> u16 {
        self.r16(self.o.avail)
    }
    fn used_event(&self) -> u16 {
        self.r16(self.o.avail + 4 + 2 * usize::from(self.size))
    }
    fn set_avail_event(&self, v: u16) {
        self.w16(self.o.used + 4 + 8 * usize::from(self.size), v);
    }
    fn set_used_flags(&self, v: u16) {
        self.w16(self.o.used, v);
    }
    fn set_used_idx(&self, v: u16) {
        self.w16(self.o.used + 2, v);
    }
    /// Next published head, if any.
    fn take(&mut self) -> Option<u16> {
        if self.avail_idx() == self.next_avail {
            return None;
        }
        let slot = usize::from(self.next_avail % self.size);
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(self.r16(self.o.avail + 4 + 2 * slot))
    }
    /// Raw descriptor `i` of the table at `table` as (addr, len, flags, next).
    fn desc_at(&self, table: usize, i: usize) -> (u64, u32, u16, u16) {
        let mut b = [0u8; 16];
        self.mem.read(table + 16 * i, &mut b).unwrap();
        (
            u64::from_le_bytes(b[0..8].try_into().unwrap()),
            u32::from_le_bytes(b[8..12].try_into().unwrap()),
            u16::from_le_bytes(b[12..14].try_into().unwrap()),
            u16::from_le_bytes(b[14..16].try_into().unwrap()),
        )
    }
    fn desc(&self, i: u16) -> (u64, u32, u16, u16) {
        self.desc_at(self.o.desc, usize::from(i))
    }
    /// Writes a used element without touching the index.
    fn put_used_elem(&self, slot_idx: u16, id: u32, len: u32) {
        let off = self.o.used + 4 + 8 * usize::from(slot_idx % self.size);
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&id.to_le_bytes());
        b[4..].copy_from_slice(&len.to_le_bytes());
        self.mem.write(off, &b).unwrap();
    }
    /// Protocol-following completion: element then index.
    fn push_used(&mut self, id: u32, len: u32) {
        self.put_used_elem(self.next_used, id, len);
        self.next_used = self.next_used.wrapping_add(1);
        self.set_used_idx(self.next_used);
    }
}

fn ring_with_device(
    name: &str,
    size: u16,
    o: RingOptions,
) -> (Arc<SharedMemory>, SplitRing, RawDevice) {
    let mem = mem(name);
    let ring = SplitRing::new(mem.clone(), 0, size, o).unwrap();
    let dev = RawDevice::new(&ring, &mem);
    (mem, ring, dev)
}

// ---- pure helpers --------------------------------------------------

#[test]
fn split_ring_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SplitRing>();
    assert_send_sync::<RingError>();
}

#[test]
fn need_event_is_wrap_safe() {
    // Event inside [old, new).
    assert!(vring_need_event(5, 6, 5));
    assert!(vring_need_event(5, 10, 0));
    assert!(vring_need_event(0, 10, 0));
    assert!(vring_need_event(9, 10, 0));
    // Event outside the window.
    assert!(!vring_need_event(10, 10, 0));
    assert!(!vring_need_event(4, 10, 5));
    assert!(!vring_need_event(5, 5, 5), "empty window never notifies");
    // Across the 65535 -> 0 wrap.
    assert!(vring_need_event(65535, 2, 65534));
    assert!(vring_need_event(0, 2, 65534));
    assert!(vring_need_event(65534, 2, 65534));
    assert!(!vring_need_event(2, 2, 65534));
    assert!(!vring_need_event(65533, 2, 65534));
    // Exhaustive check against the set definition for a small window at every offset.
    for old in (0..=u16::MAX).step_by(257) {
        for k in 0..8u16 {
            let new = old.wrapping_add(k);
            for d in 0..12u16 {
                let event = old.wrapping_add(d).wrapping_sub(2);
                let in_window = (0..k).any(|j| old.wrapping_add(j) == event);
                assert_eq!(vring_need_event(event, new, old), in_window);
            }
        }
    }
}

#[test]
fn layout_offsets_and_alignment() {
    // size 256, no indirect: desc 4096 B; avail 6 + 512 = 518 -> 4614; used aligned to 4616.
    assert_eq!(
        SplitRing::layout(256, 0),
        RingLayout {
            desc: 0,
            avail: 4096,
            used: 4616,
            indirect: 4616 + 6 + 2048 + 2, // 6670 -> 6672
            total: 6672,
        }
    );
    // size 1 with indirect tables of 4: avail 16..24, used 24..38, indirect 48.
    assert_eq!(
        SplitRing::layout(1, 4),
        RingLayout {
            desc: 0,
            avail: 16,
            used: 24,
            indirect: 48,
            total: 48 + 64,
        }
    );
    let mut size = 1u16;
    loop {
        for max_ind in [0u16, 1, 3, size] {
            let l = SplitRing::layout(size, max_ind);
            let n = usize::from(size);
            assert_eq!(l.desc % 16, 0);
            assert_eq!(l.avail % 2, 0);
            assert_eq!(l.used % 4, 0);
            assert_eq!(l.indirect % 16, 0);
            assert!(l.avail >= l.desc + 16 * n, "desc/avail overlap");
            assert!(l.used >= l.avail + 6 + 2 * n, "avail/used overlap");
            assert!(l.indirect >= l.used + 6 + 8 * n, "used/indirect overlap");
            assert_eq!(l.total, l.indirect + 16 * n * usize::from(max_ind));
        }
        if size == MAX_QUEUE_SIZE {
            break;
        }
        size *= 2;
    }
}

#[test]
fn new_validates_arguments() {
    let m = mem("vq-new");
    for bad in [0u16, 3, 100, 32769, 65535] {
        assert_eq!(
            SplitRing::new(m.clone(), 0, bad, RingOptions::default()).unwrap_err(),
            RingError::InvalidSize(bad)
        );
    }
    assert_eq!(
        SplitRing::new(m.clone(), 8, 16, RingOptions::default()).unwrap_err(),
        RingError::Misaligned(8)
    );
    assert!(matches!(
        SplitRing::new(m.clone(), 0, 16, opts(false, true, 0)).unwrap_err(),
        RingError::InvalidMaxIndirect { .. }
    ));
    // A table larger than the queue is clamped to the queue size.
    let r = SplitRing::new(m.clone(), 0, 2, opts(false, true, 4)).unwrap();
    assert_eq!(r.offsets().total, SplitRing::layout(2, 2).total);
    // max_indirect is ignored without indirect.
    SplitRing::new(m.clone(), 0, 16, opts(false, false, 0)).unwrap();
    let need = SplitRing::layout(256, 0).total;
    assert!(matches!(
        SplitRing::new(m.clone(), MEM_LEN - need + 16, 256, RingOptions::default()).unwrap_err(),
        RingError::RegionTooSmall { .. }
    ));
    assert!(matches!(
        SplitRing::new(m.clone(), usize::MAX - 15, 256, RingOptions::default()).unwrap_err(),
        RingError::RegionTooSmall { .. }
    ));
    // Exactly fitting at the end is fine, and the ring memory is zeroed.
    let base = MEM_LEN - need;
    m.fill(base, need, 0xee).unwrap();
    let ring = SplitRing::new(m.clone(), base, 256, RingOptions::default()).unwrap();
    let mut buf = vec![0xffu8; need];
    m.read(base, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(ring.desc_gpa(), base as u64);
    assert_eq!(ring.avail_gpa(), (base + 4096) as u64);
    assert_eq!(ring.used_gpa(), (base + 4616) as u64);
    assert_eq!(ring.used_va(), m.host_va(base + 4616));
    assert_eq!(ring.desc_va(), m.host_addr() + base as u64);
    assert_eq!(ring.avail_va(), m.host_va(base + 4096));
    assert_eq!(ring.num_free(), 256);
    assert_eq!(ring.size(), 256);
}

#[test]
fn add_validates_segments() {
    let (_m, mut ring, _dev) = ring_with_device("vq-addval", 4, RingOptions::default());
    assert_eq!(ring.add(&[]).unwrap_err(), RingError::NoSegments);
    assert_eq!(
        ring.add(&[Segment::readable(0, 1), Segment::readable(0, 0)])
            .unwrap_err(),
        RingError::ZeroLengthSegment { index: 1 }
    );
    assert_eq!(
        ring.add(&[Segment::writable(0, 1), Segment::readable(0, 1)])
            .unwrap_err(),
        RingError::ReadableAfterWritable { index: 1 }
    );
    assert_eq!(
        ring.add(&[Segment::writable(0, u32::MAX), Segment::writable(0, 1)])
            .unwrap_err(),
        RingError::ChainTooLong
    );
    assert_eq!(
        ring.add(&[Segment::readable(0, 1); 5]).unwrap_err(),
        RingError::TooManySegments {
            segments: 5,
            max: 4
        }
    );
    // None of the failures consumed anything.
    assert_eq!(ring.num_free(), 4);
    assert_eq!(ring.in_flight(), 0);
    // u32::MAX in total is allowed.
    ring.add(&[Segment::readable(0, u32::MAX - 1), Segment::writable(0, 1)])
        .unwrap();
}

#[test]
fn direct_chain_bytes_follow_the_spec() {
    let (_m, mut ring, mut dev) = ring_with_device("vq-direct", 8, RingOptions::default());
    let segs = [
        Segment::readable(0x1000, 51),
        Segment::writable(0x2000, 108),
        Segment::writable(0x3000, 4096),
    ];
    let head = ring.add(&segs).unwrap();
    assert_eq!(head, 0);
    assert_eq!(ring.num_free(), 5);
    // Not visible to the device until published.
    assert_eq!(dev.avail_idx(), 0);
    assert!(ring.publish());
    assert_eq!(dev.avail_idx(), 1);
    assert_eq!(dev.take(), Some(0));
    // Walk the chain as the device would.
    let mut got = Vec::new();
    let mut i = head;
    loop {
        let (addr, len, flags, next) = dev.desc(i);
        assert_eq!(flags & VIRTQ_DESC_F_INDIRECT, 0);
        got.push(Segment {
            gpa: addr,
            len,
            device_writes: flags & VIRTQ_DESC_F_WRITE != 0,
        });
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            assert_eq!(next, 0);
            break;
        }
        i = next;
    }
    assert_eq!(got, segs);
    // Byte-exact first descriptor: addr 0x1000, len 51, flags NEXT, next 1.
    let mut raw = [0u8; 16];
    _m.read(ring.offsets().desc, &mut raw).unwrap();
    assert_eq!(raw, [0, 0x10, 0, 0, 0, 0, 0, 0, 51, 0, 0, 0, 1, 0, 1, 0]);
}

#[test]
fn indirect_chain_uses_one_descriptor_and_the_heads_table() {
    let (_m, mut ring, mut dev) = ring_with_device("vq-ind", 8, opts(false, true, 4));
    // Occupy head 0 with a single-segment chain (never indirect).
    let h0 = ring.add(&[Segment::writable(0x100, 8)]).unwrap();
    assert_eq!(dev.desc(h0).2, VIRTQ_DESC_F_WRITE);
    let segs = [
        Segment::readable(0x1000, 51),
        Segment::writable(0x2000, 108),
        Segment::writable(0x3000, 512),
    ];
    let head = ring.add(&segs).unwrap();
    assert_eq!(head, 1);
    assert_eq!(ring.num_free(), 6, "an indirect chain takes one descriptor");
    ring.publish();
    assert_eq!(dev.take(), Some(0));
    assert_eq!(dev.take(), Some(1));
    let table = ring.offsets().indirect + usize::from(head) * 4 * 16;
    assert_eq!(
        dev.desc(head),
        (table as u64, 3 * 16, VIRTQ_DESC_F_INDIRECT, 0)
    );
    assert_eq!(dev.desc_at(table, 0), (0x1000, 51, VIRTQ_DESC_F_NEXT, 1));
    assert_eq!(
        dev.desc_at(table, 1),
        (0x2000, 108, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2)
    );
    assert_eq!(dev.desc_at(table, 2), (0x3000, 512, VIRTQ_DESC_F_WRITE, 0));
    // More segments than a table holds fall back to a direct chain.
    let five = [Segment::readable(0x10, 1); 5];
    let h = ring.add(&five).unwrap();
    assert_eq!(ring.num_free(), 1);
    assert_eq!(dev.desc(h).2, VIRTQ_DESC_F_NEXT);
    // Writable bytes of the indirect chain bound the used len.
    ring.publish();
    dev.take();
    dev.push_used(u32::from(head), 620);
    assert_eq!(ring.pop_used().unwrap(), Some((head, 620)));
    assert_eq!(ring.num_free(), 2);
}

#[test]
fn free_list_survives_out_of_order_completion() {
    let (_m, mut ring, mut dev) = ring_with_device("vq-free", 16, RingOptions::default());
    let mut rng = 0x1234_5678u32;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    // head -> descriptors it owns, rebuilt from the shared table as the device sees it.
    let mut owned: std::collections::HashMap<u16, Vec<u16>> = Default::default();
    let mut pending: Vec<u16> = Vec::new();
    for _round in 0..2000 {
        // Add chains of 1..=4 descriptors until full.
        loop {
            let n = (next() % 4 + 1) as usize;
            let segs: Vec<Segment> = (0..n).map(|i| Segment::writable(i as u64, 10)).collect();
            match ring.add(&segs) {
                Ok(head) => {
                    let mut ids = vec![head];
                    let mut d = head;
                    while dev.desc(d).2 & VIRTQ_DESC_F_NEXT != 0 {
                        d = dev.desc(d).3;
                        ids.push(d);
                    }
                    assert_eq!(ids.len(), n);
                    for chain in owned.values() {
                        assert!(ids.iter().all(|i| !chain.contains(i)), "descriptor reused");
                    }
                    owned.insert(head, ids);
                }
                Err(RingError::Full { needed, free }) => {
                    assert!(needed > free);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let used: usize = owned.values().map(Vec::len).sum();
        assert_eq!(usize::from(ring.num_free()) + used, 16);
        ring.publish();
        while let Some(h) = dev.take() {
            pending.push(h);
        }
        // Complete a random subset in random order.
        let k = (next() as usize) % (pending.len() + 1);
        for _ in 0..k {
            let i = (next() as usize) % pending.len();
            let h = pending.swap_remove(i);
            dev.push_used(u32::from(h), 10);
            let (got, len) = ring.pop_used().unwrap().unwrap();
            assert_eq!((got, len), (h, 10));
            owned.remove(&h);
        }
    }
    for h in pending.drain(..) {
        dev.push_used(u32::from(h), 0);
    }
    while ring.pop_used().unwrap().is_some() {}
    assert_eq!(ring.num_free(), 16);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn indices_wrap_past_65535() {
    let (_m, mut ring, mut dev) = ring_with_device("vq-wrap", 4, opts(true, false, 0));
    let mut expect_idx: u16 = 0;
    for i in 0u32..70_000 {
        let len = i % 50 + 1;
        let a = ring
            .add(&[Segment::readable(8, 4), Segment::writable(16, 64)])
            .unwrap();
        let b = ring.add(&[Segment::writable(32, 64)]).unwrap();
        ring.publish();
        expect_idx = expect_idx.wrapping_add(2);
        assert_eq!(dev.avail_idx(), expect_idx);
        assert_eq!(dev.take(), Some(a));
        assert_eq!(dev.take(), Some(b));
        assert_eq!(dev.take(), None);
        // Complete in reverse order.
        dev.push_used(u32::from(b), len);
        dev.push_used(u32::from(a), 64 - len);
        assert!(ring.has_used());
        assert_eq!(ring.pop_used().unwrap(), Some((b, len)));
        assert_eq!(ring.pop_used().unwrap(), Some((a, 64 - len)));
        assert_eq!(ring.pop_used().unwrap(), None);
        assert!(!ring.has_used());
        // used_event tracks last_used while interrupts are enabled.
        assert_eq!(dev.used_event(), expect_idx);
    }
    assert_eq!(ring.next_avail_idx(), (140_000u32 % 65536) as u16);
    assert_eq!(ring.num_free(), 4);
}

// ---- notification suppression ---------------------------------------

#[test]
fn kicks_follow_used_flags_without_event_idx() {
    let (_m, mut ring, mut dev) = ring_with_device("vq-flags", 8, RingOptions::default());
    assert!(!ring.publish(), "nothing to publish, no kick");
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    assert!(ring.publish());
    dev.set_used_flags(VIRTQ_USED_F_NO_NOTIFY);
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    assert!(!ring.publish());
    dev.set_used_flags(0);
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    assert!(ring.publish());
    while dev.take().is_some() {}

    // Interrupt suppression uses the avail flags.
    ring.disable_interrupts();
    assert_eq!(dev.avail_flags(), VIRTQ_AVAIL_F_NO_INTERRUPT);
    assert!(!ring.enable_interrupts());
    assert_eq!(dev.avail_flags(), 0);
    dev.push_used(0, 0);
    ring.disable_interrupts();
    assert!(
        ring.enable_interrupts(),
        "pending used element must be reported"
    );
}

#[test]
fn kicks_follow_avail_event_with_event_idx() {
    let (_m, mut ring, mut dev) = ring_with_device("vq-evidx", 8, opts(true, false, 0));
    // avail_event starts at 0: the first publish (0 -> 1) crosses it.
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    assert!(ring.publish());
    // The device has not re-armed: 1 -> 3 does not cross 0.
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    assert!(!ring.publish());
    // Device asks to be kicked when index 5 is made available.
    dev.set_avail_event(5);
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    assert!(!ring.publish(), "3 -> 4 does not reach 5");
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    ring.add(&[Segment::readable(0, 1)]).unwrap();
    assert!(ring.publish(), "4 -> 6 crosses 5");
    // Interrupt suppression writes used_event and leaves the flags at 0 (§2.7.7.2).
    ring.disable_interrupts();
    assert_eq!(dev.avail_flags(), 0);
    assert_eq!(dev.used_event(), 0u16.wrapping_sub(1));
    assert!(!ring.enable_interrupts());
    assert_eq!(dev.used_event(), 0);
    while dev.take().is_some() {}
    dev.push_used(0, 0);
    assert!(ring.has_used());
    assert!(ring.enable_interrupts());
    assert_eq!(ring.pop_used().unwrap(), Some((0, 0)));
    assert_eq!(dev.used_event(), 1);
}

// ---- hostile device --------------------------------------------------

fn published_ring(name: &str) -> (Arc<SharedMemory>, SplitRing, RawDevice, u16, u16) {
    let (m, mut ring, mut dev) = ring_with_device(name, 8, RingOptions::default());
    let a = ring
        .add(&[Segment::readable(0, 16), Segment::writable(64, 100)])
        .unwrap();
    let b = ring.add(&[Segment::readable(0, 16)]).unwrap();
    ring.publish();
    dev.take();
    dev.take();
    (m, ring, dev, a, b)
}

fn assert_broken(ring: &mut SplitRing) {
    assert!(ring.is_broken());
    assert_eq!(ring.pop_used().unwrap_err(), RingError::Broken);
    assert_eq!(
        ring.add(&[Segment::readable(0, 1)]).unwrap_err(),
        RingError::Broken
    );
    assert!(!ring.publish());
    assert!(ring.has_used());
    assert!(ring.enable_interrupts());
    assert!(RingError::Broken.is_device_fault());
}

#[test]
fn hostile_used_id_out_of_range() {
    let (_m, mut ring, mut dev, _a, _b) = published_ring("vq-h-id");
    dev.push_used(8, 0);
    assert_eq!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { id: 8, size: 8 }
    );
    assert_broken(&mut ring);
    let (_m, mut ring, mut dev, _a, _b) = published_ring("vq-h-id2");
    dev.push_used(u32::MAX, 0);
    assert!(matches!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { id: u32::MAX, .. }
    ));
    assert_broken(&mut ring);
}

#[test]
fn hostile_used_id_not_in_flight() {
    // A free descriptor index.
    let (_m, mut ring, mut dev, _a, _b) = published_ring("vq-h-free");
    dev.push_used(7, 0);
    assert!(matches!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { id: 7, .. }
    ));
    assert_broken(&mut ring);

    // A non-head descriptor of an in-flight chain.
    let (_m, mut ring, mut dev, a, _b) = published_ring("vq-h-body");
    let body = dev.desc(a).3;
    dev.push_used(u32::from(body), 0);
    assert!(matches!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { .. }
    ));
    assert_broken(&mut ring);

    // The same head returned twice.
    let (_m, mut ring, mut dev, a, _b) = published_ring("vq-h-dup");
    dev.push_used(u32::from(a), 1);
    dev.push_used(u32::from(a), 1);
    assert_eq!(ring.pop_used().unwrap(), Some((a, 1)));
    assert!(matches!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { .. }
    ));
    assert_broken(&mut ring);

    // A chain added (slot visible to the device) but not yet published.
    let (_m, mut ring, mut dev, a, _b) = published_ring("vq-h-unpub");
    let c = ring.add(&[Segment::writable(0, 4)]).unwrap();
    dev.push_used(u32::from(a), 0);
    dev.push_used(u32::from(c), 0);
    assert_eq!(ring.pop_used().unwrap(), Some((a, 0)));
    assert!(matches!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedId { .. }
    ));
    assert_broken(&mut ring);
}

#[test]
fn hostile_used_len_too_big() {
    let (_m, mut ring, mut dev, a, b) = published_ring("vq-h-len");
    dev.push_used(u32::from(a), 100);
    assert_eq!(
        ring.pop_used().unwrap(),
        Some((a, 100)),
        "exactly the writable bytes is fine"
    );
    // b has no writable bytes at all.
    dev.push_used(u32::from(b), 1);
    assert_eq!(
        ring.pop_used().unwrap_err(),
        RingError::BadUsedLen {
            id: b,
            len: 1,
            writable: 0
        }
    );
    assert_broken(&mut ring);
}

#[test]
fn hostile_used_idx_jump() {
    // Jump beyond the queue size.
    let (_m, mut ring, dev, a, _b) = published_ring("vq-h-jump");
    dev.put_used_elem(0, u32::from(a), 0);
    dev.set_used_idx(9);
    assert_eq!(
        ring.pop_used().unwrap_err(),
        RingError::UsedIdxJump {
            last_used: 0,
            used_idx: 9,
            outstanding: 2
        }
    );
    assert_broken(&mut ring);
    // Within the queue size but beyond what is outstanding.
    let (_m, mut ring, dev, a, b) = published_ring("vq-h-jump2");
    dev.put_used_elem(0, u32::from(a), 0);
    dev.put_used_elem(1, u32::from(b), 0);
    dev.set_used_idx(3);
    assert!(matches!(
        ring.pop_used().unwrap_err(),
        RingError::UsedIdxJump { outstanding: 2, .. }
    ));
    assert_broken(&mut ring);
    // Backwards (= a huge forward jump in wrapping arithmetic).
    let (_m, mut ring, dev, _a, _b) = published_ring("vq-h-back");
    dev.set_used_idx(u16::MAX);
    assert!(matches!(
        ring.pop_used().unwrap_err(),
        RingError::UsedIdxJump { .. }
    ));
    assert_broken(&mut ring);
}

#[test]
fn hostile_scribbles_do_not_corrupt_the_free_list() {
    let (m, mut ring, mut dev) = ring_with_device("vq-h-scribble", 8, opts(false, true, 2));
    for round in 0..100u32 {
        let a = ring
            .add(&[
                Segment::readable(0, 8),
                Segment::writable(8, 8),
                Segment::writable(16, 8),
            ])
            .unwrap();
        let b = ring
            .add(&[Segment::readable(0, 8), Segment::writable(8, 8)])
            .unwrap();
        ring.publish();
        dev.take();
        dev.take();
        // The device overwrites the whole descriptor table, the indirect
        // tables, avail_event and used flags with garbage.
        let o = ring.offsets();
        m.fill(o.desc, 16 * 8, round as u8 ^ 0xa5).unwrap();
        m.fill(o.indirect, o.total - o.indirect, 0xff).unwrap();
        dev.set_avail_event((round as u16).wrapping_mul(7919));
        dev.set_used_flags(0xffff);
        dev.push_used(u32::from(b), 8);
        dev.push_used(u32::from(a), 16);
        assert_eq!(ring.pop_used().unwrap(), Some((b, 8)));
        assert_eq!(ring.pop_used().unwrap(), Some((a, 16)));
        assert_eq!(ring.num_free(), 8, "round {round}");
    }
    // All 8 descriptors are still distinct and allocatable.
    let mut heads: Vec<u16> = (0..8)
        .map(|_| ring.add(&[Segment::readable(0, 1)]).unwrap())
        .collect();
    heads.sort_unstable();
    assert_eq!(heads, (0..8).collect::<Vec<u16>>());
    assert!(matches!(
        ring.add(&[Segment::readable(0, 1)]),
        Err(RingError::Full { needed: 1, free: 0 })
    ));
}

// ---- against rust-vmm's device-side Queue ---------------------------

mod fake_device {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
    use std::time::Duration;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

    const WAIT: Duration = Duration::from_secs(2);
    /// Bytes of each per-request buffer slot.
    const SLOT: usize = 256;
    /// Device-writable segment lengths and offsets inside a slot.
    const WRITABLE: [(usize, u32); 3] = [(64, 7), (128, 64), (200, 33)];

    fn guest_memory(mem: &SharedMemory) -> GuestMemoryMmap<()> {
        let file = std::fs::File::from(mem.as_fd().try_clone_to_owned().unwrap());
        GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            mem.len(),
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap()
    }

    fn device_queue(ring: &SplitRing, event_idx: bool) -> Queue {
        let mut q = Queue::new(ring.size()).unwrap();
        q.set_size(ring.size());
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(ring.desc_gpa());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(ring.avail_gpa());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(ring.used_gpa());
        q.set_used_ring_address(lo, hi);
        q.set_event_idx(event_idx);
        q.set_next_avail(ring.next_avail_idx());
        q.set_next_used(ring.next_avail_idx());
        q.set_ready(true);
        assert!(q.is_valid(&guest_memory_probe()));
        q
    }

    /// Queue::is_valid only needs some memory covering the rings.
    fn guest_memory_probe() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap()
    }

    /// The byte the device writes at position `k` of the writable area for request `seq`
    /// whose readable bytes sum to `sum`.
    fn pattern(seq: u64, sum: u8, k: usize) -> u8 {
        (seq as u8).wrapping_mul(31) ^ (k as u8).wrapping_mul(7) ^ sum
    }

    /// Device thread: serves `total` chains, checking and answering each.
    fn serve(
        mem: GuestMemoryMmap<()>,
        mut q: Queue,
        total: u64,
        kicks: Receiver<()>,
        call: std::sync::mpsc::Sender<()>,
    ) -> Result<u64, String> {
        let mut served = 0u64;
        let mut notifications = 0u64;
        while served < total {
            q.disable_notification(&mem).map_err(|e| e.to_string())?;
            while let Some(chain) = q.pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                let mut readable = Vec::new();
                let mut writable = Vec::new();
                for d in chain {
                    if d.is_write_only() {
                        writable.push((d.addr(), d.len()));
                    } else {
                        if !writable.is_empty() {
                            return Err("readable after writable".into());
                        }
                        let mut buf = vec![0u8; d.len() as usize];
                        mem.read_slice(&mut buf, d.addr())
                            .map_err(|e| e.to_string())?;
                        readable.extend_from_slice(&buf);
                    }
                }
                if readable.len() < 8 {
                    return Err(format!("chain {head}: short header"));
                }
                let seq = u64::from_le_bytes(readable[..8].try_into().unwrap());
                let sum = readable.iter().fold(0u8, |a, b| a.wrapping_add(*b));
                let cap: u32 = writable.iter().map(|w| w.1).sum();
                let len = cap - (seq % 5) as u32;
                let mut k = 0usize;
                for (addr, dlen) in writable {
                    let n = (dlen as usize).min(len as usize - k);
                    let bytes: Vec<u8> = (k..k + n).map(|i| pattern(seq, sum, i)).collect();
                    mem.write_slice(&bytes, addr).map_err(|e| e.to_string())?;
                    k += n;
                }
                q.add_used(&mem, head, len).map_err(|e| e.to_string())?;
                served += 1;
                if q.needs_notification(&mem).map_err(|e| e.to_string())? {
                    notifications += 1;
                    let _ = call.send(());
                }
            }
            if served == total {
                break;
            }
            if q.enable_notification(&mem).map_err(|e| e.to_string())? {
                continue;
            }
            match kicks.recv_timeout(WAIT) {
                Ok(()) => while kicks.try_recv().is_ok() {},
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("device: no kick for 2 s after {served} chains"))
                }
                Err(RecvTimeoutError::Disconnected) => return Err("driver gone".into()),
            }
        }
        Ok(notifications)
    }

    struct Stats {
        kicks: u64,
        device_notifications: u64,
    }

    /// Runs `total` requests through a ring of `size` entries starting at
    /// index `start`, with a real device on another thread.
    fn run(size: u16, o: RingOptions, start: u16, total: u64) -> Stats {
        let mem = Arc::new(SharedMemory::new("vq-fake", MEM_LEN).unwrap());
        let mut carver = Carver::new(MEM_LEN);
        // Leave GPA 0 unused (virtio-queue treats an avail ring at 0 as unset).
        carver.alloc(16, 16).unwrap();
        let max_ind = if o.indirect { o.max_indirect } else { 0 };
        let base = carver
            .alloc(SplitRing::layout(size, max_ind).total, 16)
            .unwrap();
        let mut ring = SplitRing::new(mem.clone(), base, size, o).unwrap();
        ring.set_start_index(start);
        let slots_base = carver.alloc(SLOT * usize::from(size), 64).unwrap();
        let mut free_slots: Vec<usize> = (0..usize::from(size)).collect();

        let (kick_tx, kick_rx) = channel();
        let (call_tx, call_rx) = channel();
        let q = device_queue(&ring, o.event_idx);
        let gm = guest_memory(&mem);
        let device = std::thread::spawn(move || serve(gm, q, total, kick_rx, call_tx));

        let mut inflight: std::collections::HashMap<u16, (u64, usize)> = Default::default();
        let mut submitted = 0u64;
        let mut completed = 0u64;
        let mut kicks = 0u64;
        while completed < total {
            // Submit a batch of 1..=size requests with 2..=5 segments.
            let batch = (submitted % u64::from(size)) + 1;
            let mut added = 0;
            while added < batch && submitted < total && !free_slots.is_empty() {
                let seq = submitted;
                let slot = free_slots[free_slots.len() - 1];
                let sbase = slots_base + slot * SLOT;
                let mut hdr = [0u8; 16];
                hdr[..8].copy_from_slice(&seq.to_le_bytes());
                hdr[8..].copy_from_slice(&(seq.wrapping_mul(0x9e37_79b9)).to_le_bytes());
                mem.write(sbase, &hdr).unwrap();
                mem.write(sbase + 16, &[seq as u8; 16]).unwrap();
                mem.fill(sbase + 64, SLOT - 64, 0).unwrap();
                let mut segs = vec![Segment::readable(sbase as u64, 16)];
                if seq & 1 == 0 {
                    segs.push(Segment::readable(sbase as u64 + 16, 16));
                }
                for &(off, len) in &WRITABLE[..(seq % 3) as usize + 1] {
                    segs.push(Segment::writable((sbase + off) as u64, len));
                }
                match ring.add(&segs) {
                    Ok(head) => {
                        free_slots.pop();
                        assert!(inflight.insert(head, (seq, slot)).is_none());
                        submitted += 1;
                        added += 1;
                    }
                    Err(RingError::Full { .. }) => break,
                    Err(e) => panic!("add: {e}"),
                }
            }
            if ring.publish() {
                kicks += 1;
                let _ = kick_tx.send(());
            }
            let mut reaped = 0;
            while let Some((head, len)) = ring.pop_used().unwrap() {
                let (seq, slot) = inflight.remove(&head).expect("head in flight");
                check_response(&mem, slots_base + slot * SLOT, seq, len);
                free_slots.push(slot);
                completed += 1;
                reaped += 1;
            }
            if completed == total || reaped > 0 {
                continue;
            }
            if ring.enable_interrupts() {
                ring.disable_interrupts();
                continue;
            }
            match call_rx.recv_timeout(WAIT) {
                Ok(()) => while call_rx.try_recv().is_ok() {},
                Err(_) => {
                    panic!(
                        "driver: no used-buffer notification for 2 s ({completed}/{total}); device: {:?}",
                        device.join()
                    );
                }
            }
            ring.disable_interrupts();
        }
        drop(kick_tx);
        let device_notifications = device.join().unwrap().unwrap();
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(ring.num_free(), size);
        assert_eq!(ring.next_avail_idx(), start.wrapping_add(total as u16));
        Stats {
            kicks,
            device_notifications,
        }
    }

    fn check_response(mem: &SharedMemory, sbase: usize, seq: u64, len: u32) {
        let n_w = (seq % 3) as usize + 1;
        let cap: u32 = WRITABLE[..n_w].iter().map(|w| w.1).sum();
        assert_eq!(len, cap - (seq % 5) as u32, "seq {seq}: used len");
        let mut sum = 0u8;
        let mut hdr = [0u8; 16];
        mem.read(sbase, &mut hdr).unwrap();
        sum = hdr.iter().fold(sum, |a, b| a.wrapping_add(*b));
        if seq & 1 == 0 {
            sum = sum.wrapping_add((seq as u8).wrapping_mul(16));
        }
        let mut k = 0usize;
        for &(off, dlen) in &WRITABLE[..n_w] {
            let mut buf = vec![0u8; dlen as usize];
            mem.read(sbase + off, &mut buf).unwrap();
            for (i, b) in buf.iter().enumerate() {
                let want = if k + i < len as usize {
                    pattern(seq, sum, k + i)
                } else {
                    0
                };
                assert_eq!(*b, want, "seq {seq}: byte {} of the response", k + i);
            }
            k += dlen as usize;
        }
    }

    #[test]
    fn cycles_plain() {
        let s = run(16, opts(false, false, 0), 0, 4000);
        assert!(s.kicks > 0 && s.device_notifications > 0);
    }

    #[test]
    fn cycles_event_idx_across_wrap() {
        let s = run(16, opts(true, false, 0), u16::MAX - 1500, 4000);
        assert!(s.kicks <= 4000);
    }

    #[test]
    fn cycles_indirect_across_wrap() {
        run(8, opts(false, true, 4), u16::MAX - 2000, 4000);
    }

    #[test]
    fn cycles_event_idx_and_indirect_across_wrap() {
        run(32, opts(true, true, 3), u16::MAX - 100, 5000);
    }

    #[test]
    fn cycles_tiny_ring_every_index() {
        // Size 1: every request wraps the ring; indirect tables of one entry
        // are never used (single-descriptor chains only).
        let mem = Arc::new(SharedMemory::new("vq-tiny", MEM_LEN).unwrap());
        let base = 64;
        let mut ring = SplitRing::new(mem.clone(), base, 2, opts(true, false, 0)).unwrap();
        ring.set_start_index(u16::MAX - 10);
        let gm = guest_memory(&mem);
        let mut q = device_queue(&ring, true);
        for i in 0..40u32 {
            let h = ring.add(&[Segment::writable(0x8000, 4)]).unwrap();
            ring.publish();
            let chain = q.pop_descriptor_chain(&gm).unwrap();
            assert_eq!(chain.head_index(), h);
            let d = chain.into_iter().next().unwrap();
            gm.write_slice(&i.to_le_bytes(), d.addr()).unwrap();
            q.add_used(&gm, h, 4).unwrap();
            assert_eq!(ring.pop_used().unwrap(), Some((h, 4)));
            let mut b = [0u8; 4];
            mem.read(0x8000, &mut b).unwrap();
            assert_eq!(u32::from_le_bytes(b), i);
        }
    }

    /// Same-thread, deterministic: EVENT_IDX lets the device suppress kicks
    /// while it is busy, and `used_event` suppresses the device's notifications.
    #[test]
    fn event_idx_suppresses_kicks_and_interrupts() {
        let mem = Arc::new(SharedMemory::new("vq-kicks", MEM_LEN).unwrap());
        let mut ring = SplitRing::new(mem.clone(), 64, 64, opts(true, false, 0)).unwrap();
        let gm = guest_memory(&mem);
        let mut q = device_queue(&ring, true);
        let seg = [Segment::writable(0x8000, 16)];

        let mut kicks = 0;
        for _ in 0..10 {
            ring.add(&seg).unwrap();
            kicks += u32::from(ring.publish());
        }
        assert_eq!(kicks, 1, "only the first publish crosses avail_event 0");

        // Device drains and re-arms: avail_event = 10.
        let mut heads = Vec::new();
        while let Some(c) = q.pop_descriptor_chain(&gm) {
            heads.push(c.head_index());
        }
        assert_eq!(heads.len(), 10);
        assert!(!q.enable_notification(&gm).unwrap());
        ring.add(&seg).unwrap();
        assert!(ring.publish(), "device re-armed, so the next publish kicks");
        ring.add(&seg).unwrap();
        assert!(!ring.publish());
        // While the device keeps notifications disabled nothing kicks; the
        // same workload without EVENT_IDX would have kicked every time.
        q.disable_notification(&gm).unwrap();
        for _ in 0..5 {
            ring.add(&seg).unwrap();
            assert!(!ring.publish());
        }

        // Used side: with interrupts disabled the device is not asked to notify.
        ring.disable_interrupts();
        q.add_used(&gm, heads[0], 16).unwrap();
        assert!(!q.needs_notification(&gm).unwrap());
        // Enabling reports the pending element (lost-wakeup guard).
        assert!(ring.enable_interrupts());
        assert_eq!(ring.pop_used().unwrap(), Some((heads[0], 16)));
        assert!(!ring.enable_interrupts());
        q.add_used(&gm, heads[1], 0).unwrap();
        assert!(
            q.needs_notification(&gm).unwrap(),
            "used_event == last_used arms one interrupt"
        );
        q.add_used(&gm, heads[2], 0).unwrap();
        assert!(
            !q.needs_notification(&gm).unwrap(),
            "only one interrupt per arming"
        );
        assert_eq!(ring.pop_used().unwrap(), Some((heads[1], 0)));
        assert_eq!(ring.pop_used().unwrap(), Some((heads[2], 0)));
        assert_eq!(ring.pop_used().unwrap(), None);
    }

    #[test]
    fn without_event_idx_every_publish_kicks_until_no_notify() {
        let mem = Arc::new(SharedMemory::new("vq-kicks2", MEM_LEN).unwrap());
        let mut ring = SplitRing::new(mem.clone(), 64, 64, RingOptions::default()).unwrap();
        let gm = guest_memory(&mem);
        let mut q = device_queue(&ring, false);
        let seg = [Segment::writable(0x8000, 16)];
        for _ in 0..10 {
            ring.add(&seg).unwrap();
            assert!(ring.publish());
        }
        q.disable_notification(&gm).unwrap(); // sets VIRTQ_USED_F_NO_NOTIFY
        for _ in 0..10 {
            ring.add(&seg).unwrap();
            assert!(!ring.publish());
        }
        q.enable_notification(&gm).unwrap();
        ring.add(&seg).unwrap();
        assert!(ring.publish());
    }
}
