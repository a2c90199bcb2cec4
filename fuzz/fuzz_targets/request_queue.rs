//! A request queue (or the control queue) of the daemon fed arbitrary descriptor tables, avail
//! rings and buffer contents over a real `GuestMemoryMmap` (the daemon's `GuestMem`).
//!
//! Input: one configuration byte (bit 0 read-only LUN, bit 1 the io_uring
//! engine instead of inline I/O, bit 2 the ring served as the control
//! queue: TMFs and AN requests, bit 3 a packed ring, VIRTIO 1.2 §2.8), then 16
//! descriptors of 8 bytes `[addr_lo, addr_hi, len_lo, len_hi, flags,
//! next, wild, _]` (address `0x10000 + addr * 16`, or far outside guest
//! memory when `wild` bit 7 is set; flags bits 0-2; `next % 20`, so some
//! point past the table), then `avail->idx` (one byte) and 16 avail ring
//! entries (`% 20`); whatever remains is copied to guest memory at 0x10000
//! (request headers, CDBs, Data-Out).
//!
//! Packed (bit 3): the same 16 descriptors form the descriptor ring
//! `[addr, len, id = next, flags]`, the flags with AVAIL from `wild` bit 0
//! and USED from bit 1 (so wrap-counter lies, chains not available, ids
//! out of range, loops around the ring all occur); the avail bytes are
//! unused. Checked: no panic; every chain taken completed (nothing in
//! flight, the used position caught up with the avail one); the Queue's
//! next_avail is the device's avail position with its wrap counter (what
//! GET_VRING_BASE answers).
//!
//! Checked after the queue ran: no panic; every chain taken off the ring
//! completed exactly once (`used->idx` equal to the chains taken, the used
//! ids the same multiset as the heads taken); each `used.len` at most the
//! device-writable bytes of its chain (through indirect tables too, read as
//! the guest laid them out before the queue ran); a read-only LUN's image
//! unchanged.
#![no_main]

use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhost_user_backend::VringT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic};
use vscsi_backend::fault::FaultTable;
use vscsi_backend::scsi::{LogicalUnit, LunOptions, ScsiBus};
use vscsi_backend::storage::AioMode;
use vscsi_backend::vhost::queue_metrics::QueueMetrics;
use vscsi_backend::vhost::control_queue::{ControlQueue, TmfScope};
use vscsi_backend::vhost::{GuestMem, Vring};
use vscsi_backend::vhost::request_queue::{QueueShared, RequestQueue};

const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DATA: u64 = 0x10000;
const MEM_LEN: usize = 0x20_0000;
const IMAGE_LEN: usize = 64 * 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

fuzz_target!(|input: &[u8]| {
    let head_len = 1 + 16 * 8 + 1 + 16;
    if input.len() < head_len {
        return;
    }
    let read_only = input[0] & 1 != 0;
    let control = input[0] & 4 != 0;
    let packed = input[0] & 8 != 0;
    let aio = if input[0] & 2 != 0 {
        AioMode::IoUring
    } else {
        AioMode::Inline
    };
    let mut descs = [(0u64, 0u32, 0u16, 0u16); 16];
    let mut packed_flags = [0u16; 16];
    for (i, d) in descs.iter_mut().enumerate() {
        let b = &input[1 + 8 * i..9 + 8 * i];
        let addr = if b[6] & 0x80 != 0 {
            0xffff_0000_0000
        } else {
            DATA + u64::from(u16::from_le_bytes([b[0], b[1]])) * 16
        };
        let len = u32::from(u16::from_le_bytes([b[2], b[3]]));
        *d = (addr, len, u16::from(b[4] & 7), u16::from(b[5] % 20));
        packed_flags[i] = u16::from(b[4] & 7)
            | if b[6] & 1 != 0 { 1 << 7 } else { 0 }
            | if b[6] & 2 != 0 { 1 << 15 } else { 0 };
    }
    let avail_idx = u16::from(input[129]);
    let heads: Vec<u16> = input[130..146].iter().map(|&h| u16::from(h % 20)).collect();
    let data = &input[head_len..];

    let Ok(mem) = GuestMem::from_ranges(&[(GuestAddress(0), MEM_LEN)]) else {
        return;
    };
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        if packed {
            raw[12..14].copy_from_slice(&next.to_le_bytes());
            raw[14..16].copy_from_slice(&packed_flags[i].to_le_bytes());
        } else {
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
        }
        mem.write_slice(&raw, GuestAddress(DESC + 16 * i as u64))
            .expect("descriptor table in memory");
    }
    mem.write_obj(avail_idx.to_le(), GuestAddress(AVAIL + 2))
        .expect("avail idx");
    for (i, &h) in heads.iter().enumerate() {
        mem.write_obj(h.to_le(), GuestAddress(AVAIL + 4 + 2 * i as u64))
            .expect("avail ring");
    }
    let n = data.len().min(MEM_LEN - DATA as usize);
    mem.write_slice(&data[..n], GuestAddress(DATA))
        .expect("data region");
    // The device-writable bytes of each indirect table, as laid out before
    // the queue runs (Data-In may overwrite a table afterwards): all WRITE
    // entries of the table, an upper bound of any chain through it.
    let indirect_writable: Vec<u64> = descs
        .iter()
        .map(|&(addr, len, flags, _)| {
            if flags & F_INDIRECT == 0 {
                return 0;
            }
            (0..u64::from(len / 16))
                .map(|k| {
                    let entry = GuestAddress(addr.wrapping_add(16 * k));
                    let dlen: u32 = mem
                        .read_obj(entry.unchecked_add(8))
                        .map_or(0, u32::from_le);
                    let dflags: u16 = mem
                        .read_obj(entry.unchecked_add(12))
                        .map_or(0, u16::from_le);
                    if dflags & F_WRITE != 0 {
                        u64::from(dlen)
                    } else {
                        0
                    }
                })
                .sum()
        })
        .collect();

    let mut img = tempfile::NamedTempFile::new_in("/dev/shm")
        .or_else(|_| tempfile::NamedTempFile::new())
        .expect("temp image");
    let original: Vec<u8> = (0..IMAGE_LEN).map(|i| (i / 512) as u8).collect();
    img.write_all(&original).expect("write image");
    let opts = LunOptions {
        read_only,
        aio,
        serial: Some("FUZZ0001".into()),
        ..LunOptions::default()
    };
    let lu = LogicalUnit::open(img.path(), opts).expect("open image");
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, Arc::new(lu)).expect("add LUN");

    let atomic = GuestMemoryAtomic::new(mem.clone());
    let vring = Vring::new(atomic.clone(), QSIZE).expect("vring");
    vring.set_queue_size(QSIZE);
    vring
        .set_queue_info(DESC, AVAIL, USED)
        .expect("queue addresses");
    if packed {
        // SET_VRING_BASE of a fresh packed ring: index 0, wrap counter 1.
        vring.set_queue_next_avail(0x8000);
    }
    vring.set_queue_ready(true);
    vring.set_enabled(true);

    let shared = Arc::new(QueueShared::new(0));
    shared.ring.set_packed(packed);
    let faults = FaultTable::default();
    if control {
        // The same ring as the control queue: TMFs and AN requests
        // (VIRTIO 1.2 §5.6.6.2), over the request queue's held commands.
        let scope = TmfScope {
            bus: &bus,
            queues: std::slice::from_ref(&shared),
            faults: &faults,
            nexus: vscsi_backend::scsi::Nexus::local(),
        };
        let _ = ControlQueue::with_ring(Arc::new(QueueMetrics::new(1)), shared.ring.clone())
            .process(&vring, &atomic, &scope);
    } else {
        let mut q = RequestQueue::new(
            shared.clone(),
            Arc::new(FaultTable::default()),
            vscsi_backend::vhost::Poll::Off,
            Arc::new(QueueMetrics::new(1)),
        );
        let _ = q.process(&vring, &atomic, &bus);
        q.drain();
    }

    if packed {
        let base = vring.queue_next_avail();
        if let Some((avail, used, in_flight)) = shared.ring.packed_state() {
            assert_eq!(in_flight, 0, "packed chains taken and not completed");
            assert_eq!(used, avail, "used position behind the avail one");
            assert_eq!(avail, base, "GET_VRING_BASE out of sync");
        } else {
            assert_eq!(base, 0x8000, "nothing served, nothing moved");
        }
        drop(bus);
        if read_only {
            let after = std::fs::read(img.path()).expect("read image");
            assert!(after == original, "read-only image changed");
        }
        return;
    }
    let taken = vring.queue_next_avail();
    let used_idx: u16 = u16::from_le(mem.read_obj(GuestAddress(USED + 2)).expect("used idx"));
    assert_eq!(used_idx, taken, "chains taken vs completed");
    // The heads taken, as a multiset: a driver may offer a head again once
    // it came back, so one id can legitimately be used twice in a run.
    let mut taken_heads: Vec<u16> = (0..taken.min(QSIZE))
        .map(|k| heads[usize::from(k)])
        .collect();
    for slot in 0..used_idx.min(QSIZE) {
        let e = USED + 4 + 8 * u64::from(slot);
        let id: u32 = u32::from_le(mem.read_obj(GuestAddress(e)).expect("used id"));
        let len: u32 = u32::from_le(mem.read_obj(GuestAddress(e + 4)).expect("used len"));
        assert!(id < u32::from(QSIZE), "used id {id} out of range");
        let Some(pos) = taken_heads.iter().position(|&h| u32::from(h) == id) else {
            panic!("id {id} completed more often than taken (taken {taken_heads:?})");
        };
        taken_heads.swap_remove(pos);
        // The chain's device-writable bytes, as the guest laid it out.
        let (mut i, mut writable, mut hops) = (id as usize, 0u64, 0);
        loop {
            let (_, dlen, flags, next) = descs[i];
            if flags & F_INDIRECT != 0 {
                writable += indirect_writable[i];
            } else if flags & F_WRITE != 0 {
                writable += u64::from(dlen);
            }
            hops += 1;
            if flags & F_NEXT == 0 || usize::from(next) >= descs.len() || hops >= 16 {
                break;
            }
            i = usize::from(next);
        }
        assert!(
            u64::from(len) <= writable,
            "used.len {len} > writable {writable}"
        );
    }
    drop(bus);
    if read_only {
        let after = std::fs::read(img.path()).expect("read image");
        assert!(after == original, "read-only image changed");
    }
});
