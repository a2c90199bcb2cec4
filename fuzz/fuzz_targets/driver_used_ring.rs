//! The driver's split or packed ring with a device side written by the
//! fuzzer.
//!
//! Input: one configuration byte (ring size 2^(1 + bits 0-2 % 8), bit 3
//! EVENT_IDX, bit 4 indirect descriptors, bit 5 the packed format, bit 6
//! with packed: one less, a size that is not a power of two), then
//! operations of one byte followed by its operands: add a chain, publish,
//! write a used element (split: any id, any length, any slot of the used
//! ring; packed: length, id and flags of any descriptor of the ring), write
//! `used->idx` (packed: a field of the device event suppression structure),
//! pop, reset.
//!
//! Checked: no panic; every error is typed and the ring stays broken
//! (`RingError::Broken`) after one; a popped id is a published chain in
//! flight (never handed back twice, never one not yet published), with a
//! length no larger than its device-writable bytes; an id `add` returns is
//! never one still outstanding.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{
    PackedLayout, RingFormat, RingLayout, RingOptions, Segment, Virtqueue, VirtqueueFormat,
};

const MEM_LEN: usize = 1 << 20;

struct Chain {
    writable: u64,
    published: bool,
}

fn take<const N: usize>(data: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = data.split_first_chunk::<N>()?;
    *data = rest;
    Some(*head)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some([config]) = take::<1>(&mut data) else {
        return;
    };
    let packed = config & 32 != 0;
    let mut size = 1u16 << (1 + (config & 7));
    if packed && config & 64 != 0 {
        size -= 1;
    }
    let opts = RingOptions {
        event_idx: config & 8 != 0,
        indirect: config & 16 != 0,
        max_indirect: 8,
    };
    let Ok(mem) = SharedMemory::new("fuzz-ring", MEM_LEN) else {
        return;
    };
    let mem = Arc::new(mem);
    let format = if packed {
        RingFormat::Packed
    } else {
        RingFormat::Split
    };
    let mut ring = Virtqueue::new(format, mem.clone(), 0, size, opts).expect("ring fits");
    enum Device {
        Split(RingLayout),
        Packed(PackedLayout),
    }
    let dev = match &ring {
        Virtqueue::Split(r) => Device::Split(r.offsets()),
        Virtqueue::Packed(r) => Device::Packed(r.offsets()),
    };
    let mut chains: HashMap<u16, Chain> = HashMap::new();

    while let Some([op]) = take::<1>(&mut data) {
        match op % 6 {
            0 => {
                // add: count, then per segment a length byte (bit 7 = device writes).
                let Some([count]) = take::<1>(&mut data) else {
                    break;
                };
                let mut segs = Vec::new();
                for i in 0..usize::from(count % 12) {
                    let Some([l]) = take::<1>(&mut data) else {
                        break;
                    };
                    let len = u32::from(l & 0x7f) * 16;
                    let gpa = 0x10_0000 + (i as u64) * 0x1000;
                    segs.push(if l & 0x80 != 0 {
                        Segment::writable(gpa, len)
                    } else {
                        Segment::readable(gpa, len)
                    });
                }
                let was_broken = ring.is_broken();
                // An error is typed (RingError) and leaves the model as it was.
                if let Ok(id) = ring.add(&segs) {
                    assert!(!was_broken, "add succeeded on a broken ring");
                    assert!(id < size, "head id {id} >= size {size}");
                    let writable = segs
                        .iter()
                        .filter(|s| s.device_writes)
                        .map(|s| u64::from(s.len))
                        .sum();
                    let prev = chains.insert(
                        id,
                        Chain {
                            writable,
                            published: false,
                        },
                    );
                    assert!(prev.is_none(), "head id {id} reused while outstanding");
                }
            }
            1 => {
                ring.publish();
                if !ring.is_broken() {
                    for c in chains.values_mut() {
                        c.published = true;
                    }
                }
            }
            2 => {
                // device: used element at a slot / used descriptor at a position.
                let Some(b) = take::<9>(&mut data) else {
                    break;
                };
                let slot = usize::from(b[0]) % usize::from(size);
                let off = match &dev {
                    Device::Split(o) => o.used + 4 + 8 * slot,
                    Device::Packed(o) => o.desc + 16 * slot + 8,
                };
                let _ = mem.write(off, &b[1..9]);
            }
            3 => {
                let Some(b) = take::<2>(&mut data) else {
                    break;
                };
                let off = match &dev {
                    Device::Split(o) => o.used + 2,
                    // off_wrap or flags, chosen by the low bit of the first byte.
                    Device::Packed(o) => o.device_event + 2 * usize::from(b[0] & 1),
                };
                let _ = mem.write(off, &b);
            }
            4 => {
                let was_broken = ring.is_broken();
                match ring.pop_used() {
                    Ok(Some((id, len))) => {
                        assert!(!was_broken, "pop succeeded on a broken ring");
                        let Some(c) = chains.remove(&id) else {
                            panic!("id {id} handed back while not outstanding");
                        };
                        assert!(c.published, "id {id} handed back before publish");
                        assert!(
                            u64::from(len) <= c.writable,
                            "len {len} > writable {}",
                            c.writable
                        );
                    }
                    Ok(None) => assert!(!was_broken, "broken ring popped nothing"),
                    Err(_) => {
                        assert!(ring.is_broken(), "error left the ring usable");
                        assert!(
                            ring.has_used(),
                            "a broken ring hides its error from pollers"
                        );
                        assert!(ring.pop_used().is_err(), "a broken ring popped again");
                    }
                }
            }
            _ => {
                if ring.reset().is_ok() {
                    chains.clear();
                    let free = match &ring {
                        Virtqueue::Split(r) => r.num_free(),
                        Virtqueue::Packed(r) => r.num_free(),
                    };
                    assert_eq!(free, size, "reset left descriptors in use");
                    assert_eq!(ring.in_flight(), 0, "reset left chains in flight");
                }
            }
        }
        if !ring.is_broken() {
            assert_eq!(ring.in_flight() as usize, chains.len(), "in-flight count");
        }
    }
});
