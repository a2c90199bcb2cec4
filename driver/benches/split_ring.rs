//! The driver's rings, split and packed in one group so they run in one
//! go: add + publish a 3-segment request, the device side (played here by
//! writing the used ring, or the used descriptor, directly) completes it,
//! then pop_used. The per-request cost of the ring itself, no eventfds.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::packed::{DESC_F_AVAIL, DESC_F_USED};
use vscsi_driver::ring::{PackedRing, RingOptions, Segment, SplitRing};

const SIZE: u16 = 256;

const SEGS: [Segment; 3] = [
    Segment::readable(0x10000, 51),
    Segment::writable(0x10100, 108),
    Segment::writable(0x20000, 4096),
];

const MODES: [(&str, bool, bool); 2] =
    [("direct", false, false), ("indirect_event_idx", true, true)];

fn ring_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_cycle");
    for (name, indirect, event_idx) in MODES {
        let mem = Arc::new(SharedMemory::new("bench", 1 << 20).unwrap());
        let opts = RingOptions {
            event_idx,
            indirect,
            max_indirect: 4,
        };
        let mut ring = SplitRing::new(mem.clone(), 0, SIZE, opts).unwrap();
        let used = ring.offsets().used;
        let mut used_idx: u16 = 0;
        g.bench_function(format!("split_{name}"), |b| {
            b.iter(|| {
                let head = ring.add(&SEGS).unwrap();
                ring.publish();
                // The device: one used element {id, len}, then the used
                // index (Release), through the same atomic accessors as the
                // packed device below.
                let slot = used + 4 + (used_idx % SIZE) as usize * 8;
                mem.store_u32(slot, u32::from(head).to_le(), Ordering::Relaxed);
                mem.store_u32(slot + 4, (108u32 + 4096).to_le(), Ordering::Relaxed);
                used_idx = used_idx.wrapping_add(1);
                mem.store_u16(used + 2, used_idx.to_le(), Ordering::Release);
                ring.pop_used().unwrap().unwrap()
            })
        });
    }
    for (name, indirect, event_idx) in MODES {
        let mem = Arc::new(SharedMemory::new("bench", 1 << 20).unwrap());
        let opts = RingOptions {
            event_idx,
            indirect,
            max_indirect: 4,
        };
        let mut ring = PackedRing::new(mem.clone(), 0, SIZE, opts).unwrap();
        let desc = ring.offsets().desc;
        let skip = if indirect { 1 } else { SEGS.len() as u16 };
        let (mut pos, mut wrap) = (0u16, true);
        g.bench_function(format!("packed_{name}"), |b| {
            b.iter(|| {
                let id = ring.add(&SEGS).unwrap();
                ring.publish();
                // The device: len and id, then the flags with both wrap
                // bits equal to its used wrap counter, then skip the chain.
                let off = desc + pos as usize * 16;
                mem.store_u32(off + 8, (108u32 + 4096).to_le(), Ordering::Relaxed);
                mem.store_u16(off + 12, id.to_le(), Ordering::Relaxed);
                let flags = if wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
                mem.store_u16(off + 14, flags.to_le(), Ordering::Release);
                pos += skip;
                if pos >= SIZE {
                    pos -= SIZE;
                    wrap = !wrap;
                }
                ring.pop_used().unwrap().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ring_cycle);
criterion_main!(benches);
