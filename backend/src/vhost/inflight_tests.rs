//! Tests of the inflight region: its bytes (vhost-user "Inflight I/O
//! tracking", `QueueRegionSplit` / `DescStateSplit`), the order of its
//! updates, recovery after a crash between any two steps, and resubmission
//! through a [`DeviceRing`].

use std::os::unix::fs::FileExt;

use vhost::vhost_user::message::VhostUserInflight;
use vhost_user_backend::VringT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};

use super::*;
use crate::vhost::dirty::{GuestMem, Vring};

fn msg(num_queues: u16, queue_size: u16) -> VhostUserInflight {
    VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues,
        queue_size,
    }
}

/// A fresh region of `n` queues of `size` and its memfd.
fn fresh(n: u16, size: u16) -> (Arc<InflightRegion>, VhostUserInflight, File) {
    let (r, reply, file) = InflightRegion::create(&msg(n, size)).unwrap();
    (Arc::new(r), reply, file)
}

/// The same memfd mapped again, as the next daemon maps it (SET_INFLIGHT_FD).
fn remap(reply: &VhostUserInflight, file: &File) -> Arc<InflightRegion> {
    Arc::new(InflightRegion::map(reply, file.try_clone().unwrap()).unwrap())
}

fn tracker(r: &Arc<InflightRegion>, q: u16) -> SplitTracker {
    SplitTracker::new(QueueRegion::new(r.clone(), q).unwrap())
}

fn bytes(file: &File, at: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    file.read_exact_at(&mut b, at).unwrap();
    b
}

#[test]
fn queue_regions_are_header_plus_entries_rounded_to_64_bytes() {
    assert_eq!(queue_region_size(1), 64);
    assert_eq!(queue_region_size(3), 64);
    assert_eq!(queue_region_size(4), 128);
    assert_eq!(queue_region_size(16), 320);
    assert_eq!(queue_region_size(128), 16 + 16 * 128 + 48);
    assert_eq!(queue_region_size(1024), 16448);
    let (_, reply, file) = fresh(3, 16);
    assert_eq!((reply.mmap_size, reply.mmap_offset), (960, 0));
    assert_eq!((reply.num_queues, reply.queue_size), (3, 16));
    assert_eq!(file.metadata().unwrap().len(), 960);
    assert!(InflightRegion::create(&msg(0, 16)).is_err());
    assert!(InflightRegion::create(&msg(2, 0)).is_err());
    // A SET_INFLIGHT_FD whose mmap_size cannot hold the queues is refused.
    let short = VhostUserInflight {
        mmap_size: 959,
        ..reply
    };
    assert!(InflightRegion::map(&short, file.try_clone().unwrap()).is_err());
    assert!(QueueRegion::new(remap(&reply, &file), 3).is_none());
}

#[test]
fn the_fields_sit_at_the_specs_byte_offsets() {
    let (r, _, file) = fresh(3, 16);
    let mut t = tracker(&r, 1);
    let base = 320u64;
    assert_eq!(
        t.start(16, 0x1234),
        Some(Recovery {
            resubmit: vec![],
            cleared: 0,
            next_avail: 0x1234
        })
    );
    // Header: features (8 bytes, untouched), version 1, desc_num 16,
    // last_batch_head 0, used_idx 0x1234 (little-endian host).
    assert_eq!(
        bytes(&file, base, 16),
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 16, 0, 0, 0, 0x34, 0x12]
    );
    t.taken(3);
    t.taken(9);
    // desc[3]: inflight 1, padding, next 0, counter 1; desc[9]: counter 2.
    assert_eq!(
        bytes(&file, base + 16 + 3 * 16, 16),
        [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(bytes(&file, base + 16 + 9 * 16 + 8, 8), 2u64.to_le_bytes());
    t.before_used(9);
    t.before_used(3);
    // desc[3].next = 9 (the previous last_batch_head), last_batch_head = 3.
    assert_eq!(bytes(&file, base + 16 + 3 * 16 + 6, 2), [9, 0]);
    assert_eq!(bytes(&file, base + 12, 2), [3, 0]);
    t.after_used(3, 0x1236);
    assert_eq!(bytes(&file, base + 16 + 3 * 16, 1), [0]);
    assert_eq!(bytes(&file, base + 14, 2), [0x36, 0x12]);
    // Queues 0 and 2 are untouched.
    assert!(bytes(&file, 0, 320).iter().all(|&b| b == 0));
    assert!(bytes(&file, 640, 320).iter().all(|&b| b == 0));
}

#[test]
fn a_restart_resubmits_what_was_in_flight_in_counter_order() {
    let (r, reply, file) = fresh(1, 16);
    let mut t = tracker(&r, 0);
    t.start(16, 0);
    for h in [7, 1, 0, 4] {
        t.taken(h);
    }
    // 1 completes fully (used index 1).
    t.before_used(1);
    t.after_used(1, 1);
    drop(t);
    // The daemon dies; the next one maps the same memfd.
    let mut t = tracker(&remap(&reply, &file), 0);
    let rec = t.start(16, 1).unwrap();
    assert_eq!(rec.resubmit, vec![7, 0, 4]);
    assert_eq!((rec.cleared, rec.next_avail), (0, 4));
    assert_eq!(
        (t.next_resubmit(), t.next_resubmit(), t.next_resubmit()),
        (Some(7), Some(0), Some(4))
    );
    assert_eq!(t.next_resubmit(), None);
    // New heads are ordered after the resubmitted ones.
    t.taken(2);
    assert!(t.q.counter(2) > t.q.counter(4));
}

#[test]
fn a_crash_between_the_used_entry_and_the_clear_drops_the_completed_head() {
    let (r, reply, file) = fresh(1, 8);
    let mut t = tracker(&r, 0);
    t.start(8, 10);
    t.taken(5);
    t.taken(2);
    t.before_used(5);
    // The used entry and index reached the ring (11), then the crash.
    drop(t);
    let mut t = tracker(&remap(&reply, &file), 0);
    let rec = t.start(8, 11).unwrap();
    assert_eq!(rec.resubmit, vec![2], "5 is on the used ring");
    assert_eq!((rec.cleared, rec.next_avail), (1, 12));
    assert_eq!(t.q.used_idx(), 11);
}

#[test]
fn a_crash_before_the_used_entry_resubmits_the_head() {
    let (r, reply, file) = fresh(1, 8);
    let mut t = tracker(&r, 0);
    t.start(8, 0);
    t.taken(5);
    t.before_used(5);
    drop(t);
    let mut t = tracker(&remap(&reply, &file), 0);
    let rec = t.start(8, 0).unwrap();
    assert_eq!(rec.resubmit, vec![5]);
    assert_eq!((rec.cleared, rec.next_avail), (0, 1));
}

/// A region handed out while the ring's used index is past 0 (after
/// a migration, or a first GET_INFLIGHT_FD on a running ring): its
/// `used_idx` and `last_batch_head` must not make a restart clear a live
/// request at head 0.
#[test]
fn a_request_at_head_0_survives_a_restart_of_a_ring_past_index_0() {
    let (r, reply, file) = fresh(1, 16);
    let mut t = tracker(&r, 0);
    t.start(16, 3);
    t.taken(0);
    drop(t);
    let mut t = tracker(&remap(&reply, &file), 0);
    let rec = t.start(16, 3).unwrap();
    assert_eq!(rec.resubmit, vec![0]);
    assert_eq!((rec.cleared, rec.next_avail), (0, 4));
    // And once more after it completed at a used index that wrapped.
    let mut t = tracker(&remap(&reply, &file), 0);
    t.start(16, u16::MAX).unwrap();
    t.next_resubmit();
    t.before_used(0);
    t.after_used(0, 0);
    t.taken(0);
    drop(t);
    let mut t = tracker(&remap(&reply, &file), 0);
    let rec = t.start(16, 0).unwrap();
    assert_eq!(rec.resubmit, vec![0]);
    assert_eq!((rec.cleared, rec.next_avail), (0, 1));
}

#[test]
fn a_region_for_another_ring_size_or_too_small_starts_empty() {
    let (r, reply, file) = fresh(1, 16);
    let mut t = tracker(&r, 0);
    t.start(16, 0);
    t.taken(3);
    drop(t);
    let mut t = tracker(&remap(&reply, &file), 0);
    assert_eq!(
        t.start(8, 0).unwrap().resubmit,
        Vec::<u16>::new(),
        "desc_num differs"
    );
    let mut t = tracker(&remap(&reply, &file), 0);
    assert_eq!(t.start(32, 0), None, "ring larger than the region");
    assert!(t.started());
    t.taken(20);
    assert_eq!(t.next_resubmit(), None);
}

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

fn vring(mem: &GuestMem, base: u16) -> Vring {
    let vring = Vring::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
    vring.set_queue_size(16);
    vring.set_queue_info(DESC, AVAIL, USED).unwrap();
    vring.set_queue_next_avail(base);
    vring.set_queue_ready(true);
    vring
}

fn offer(mem: &GuestMem, slot: u16, head: u16) {
    mem.write_obj(
        Descriptor::new(0x8000 + 0x100 * u64::from(head), 64, 0, 0),
        GuestAddress(DESC + 16 * u64::from(head)),
    )
    .unwrap();
    mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(slot % 16)))
        .unwrap();
    mem.write_obj(slot.wrapping_add(1), GuestAddress(AVAIL + 2))
        .unwrap();
}

fn used_idx(mem: &GuestMem) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// Through a [`DeviceRing`]: heads taken by one daemon and not used come
/// back first, in the order they were taken, from the next daemon's ring
/// (a new `DeviceRing` over the same memfd and guest memory, the frontend
/// setting the base to the used index as QEMU does); then new avail
/// entries follow, and nothing already used comes back.
#[test]
fn a_device_ring_resubmits_before_new_avail_entries() {
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let (r, reply, file) = fresh(3, 16);
    let ring = DeviceRing::new();
    ring.set_inflight(QueueRegion::new(r, 2));
    let v = vring(&mem, 0);
    for (slot, head) in [(0, 0), (1, 5), (2, 3)] {
        offer(&mem, slot, head);
    }
    let mut out = Vec::new();
    {
        let mut st = v.get_mut();
        for want in [0, 5, 3] {
            assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(Some(want)));
        }
        ring.add_used(&mut st, &mem, 5, 64).unwrap();
    }
    assert_eq!(used_idx(&mem), 1);
    drop(ring);

    // The next daemon: base = the used index (1), same memory.
    let ring = DeviceRing::new();
    let rings = [
        Arc::new(DeviceRing::new()),
        Arc::new(DeviceRing::new()),
        Arc::new(ring),
    ];
    attach(
        &rings,
        InflightRegion::map(&reply, file.try_clone().unwrap()).unwrap(),
    );
    let ring = &rings[2];
    assert!(ring.has_inflight());
    let v = vring(&mem, 1);
    offer(&mem, 3, 9);
    let mut st = v.get_mut();
    let mut got = Vec::new();
    while let Some(h) = ring.pop(st.get_queue_mut(), &mem, &mut out).unwrap() {
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].addr().0, 0x8000 + 0x100 * u64::from(h));
        got.push(h);
    }
    assert_eq!(got, vec![0, 3, 9], "in flight first, then the new entry");
    assert_eq!(st.get_queue().next_avail(), 4);
    for h in [3, 0, 9] {
        ring.add_used(&mut st, &mem, h, 64).unwrap();
    }
    assert_eq!(used_idx(&mem), 4);
    drop(st);
    // A third daemon finds nothing in flight.
    let ring = DeviceRing::new();
    ring.set_inflight(QueueRegion::new(remap(&reply, &file), 2));
    let v = vring(&mem, 4);
    let mut st = v.get_mut();
    assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(None));
    // A ring restart within a connection sets the tracking up again.
    ring.restart();
    offer(&mem, 4, 1);
    assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(Some(1)));
}

/// SET_FEATURES mid-run (a migration turning dirty logging on) with heads
/// in flight: they are still the running daemon's, not resubmitted.
#[test]
fn set_features_mid_run_does_not_resubmit_live_heads() {
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let (r, _, _) = fresh(1, 16);
    let ring = DeviceRing::new();
    ring.set_inflight(QueueRegion::new(r, 0));
    let v = vring(&mem, 0);
    offer(&mem, 0, 4);
    let mut out = Vec::new();
    let mut st = v.get_mut();
    assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(Some(4)));
    ring.set_packed(false);
    assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(None));
    ring.add_used(&mut st, &mem, 4, 0).unwrap();
    assert_eq!(used_idx(&mem), 1);
    assert_eq!(ring.pop(st.get_queue_mut(), &mem, &mut out), Ok(None));
}

#[test]
fn in_flight_counts_the_flagged_entries_of_the_queues_set_up() {
    let (_, reply, file) = fresh(3, 8);
    let q = queue_region_size(8) as u64;
    let put16 = |at: u64, v: u16| file.write_all_at(&v.to_ne_bytes(), at).unwrap();
    let flag = |at: u64| file.write_all_at(&[1], at).unwrap();
    // Queue 0 set up (version 1, 8 descriptors), entries 2 and 5 in flight.
    put16(8, 1);
    put16(10, 8);
    flag(16 + 16 * 2);
    flag(16 + 16 * 5);
    // Queue 1 never set up (version 0): its flag does not count.
    flag(q + 16);
    // Queue 2 claims more descriptors than the region has room for.
    put16(2 * q + 8, 1);
    put16(2 * q + 10, 9);
    flag(2 * q + 16);
    let region = remap(&reply, &file);
    assert_eq!(region.in_flight(), 2);
    // A tracker sees the heads it took and has not completed.
    let mut t = tracker(&region, 1);
    t.start(8, 0).unwrap();
    assert_eq!(t.in_flight(), 0, "a fresh queue region starts empty");
    t.taken(3);
    t.taken(4);
    assert_eq!(t.in_flight(), 2);
    t.before_used(3);
    t.after_used(3, 1);
    assert_eq!(t.in_flight(), 1);
    assert_eq!(region.in_flight(), 3, "queue 1 is set up now");
}
