//! The driver's split ring: add + publish a 3-segment request, the device
//! side (played here by writing the used ring directly) completes it, then
//! pop_used. The per-request cost of the ring itself, no eventfds.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{RingOptions, Segment, SplitRing};

fn ring_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("split_ring");
    for (name, indirect, event_idx) in
        [("direct", false, false), ("indirect_event_idx", true, true)]
    {
        let mem = Arc::new(SharedMemory::new("bench", 1 << 20).unwrap());
        let opts = RingOptions {
            event_idx,
            indirect,
            max_indirect: 4,
        };
        let mut ring = SplitRing::new(mem.clone(), 0, 256, opts).unwrap();
        let used = ring.offsets().used;
        let segs = [
            Segment::readable(0x10000, 51),
            Segment::writable(0x10100, 108),
            Segment::writable(0x20000, 4096),
        ];
        let mut used_idx: u16 = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let head = ring.add(&segs).unwrap();
                ring.publish();
                // The device: one used element {id, len}, then the used index.
                let slot = used + 4 + (used_idx as usize % 256) * 8;
                let mut elem = [0u8; 8];
                elem[..4].copy_from_slice(&(head as u32).to_le_bytes());
                elem[4..].copy_from_slice(&(108u32 + 4096).to_le_bytes());
                mem.write(slot, &elem).unwrap();
                used_idx = used_idx.wrapping_add(1);
                mem.write(used + 2, &used_idx.to_le_bytes()).unwrap();
                ring.pop_used().unwrap().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ring_cycle);
criterion_main!(benches);
