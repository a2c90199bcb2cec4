//! The READ/WRITE path allocates nothing per request in steady state.
//!
//! A counting global allocator wraps the system one; after a warm-up, a loop
//! of READ(10), WRITE(10), READ(16) and WRITE(16) commands through the SCSI
//! target must not allocate at all (issue "Fast as the machine allows").

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use vscsi_backend::scsi::{
    LogicalUnit, LunOptions, Request, ScsiBus, SliceDataOut, VecDataIn, NO_DATA_OUT,
};
use vscsi_protocol::cdb::Cdb;

struct Counting;

thread_local! {
    /// Allocations made by this thread (other test-harness threads do not count).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // try_with: the slot may be gone while the thread is being torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts allocations on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn read_and_write_allocate_nothing_in_steady_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let lu = LogicalUnit::open(&path, LunOptions::default()).unwrap();
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, Arc::new(lu)).unwrap();
    let target = bus.target(0).unwrap();

    let payload = vec![0x5Au8; 8 * 512];
    let mut data_in = VecDataIn::new(8 * 512);
    let cdbs: Vec<(Cdb, bool)> = (0..64u32)
        .flat_map(|i| {
            [
                (Cdb::write_10(i * 8, 8, false), true),
                (Cdb::read_10(i * 8, 8, false), false),
                (Cdb::write_16(i as u64 * 8, 8, false), true),
                (Cdb::read_16(i as u64 * 8, 8, false), false),
            ]
        })
        .collect();
    let run = |data_in: &mut VecDataIn| {
        for (cdb, write) in &cdbs {
            let req = Request {
                cdb: cdb.as_bytes(),
                tag: 1,
                task_attr: 0,
            };
            let r = if *write {
                target.execute(0, &req, data_in, &SliceDataOut(&payload))
            } else {
                target.execute(0, &req, data_in, &NO_DATA_OUT)
            };
            assert_eq!(r.status, 0, "{:02x?}", cdb.as_bytes());
        }
    };
    run(&mut data_in); // warm-up: lazily initialised state, if any
    let before = allocations();
    for _ in 0..10 {
        run(&mut data_in);
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations,
        0,
        "{} commands allocated {allocations} times",
        cdbs.len() * 10
    );
    assert_eq!(&data_in.as_slice()[..512], &payload[..512]);
}
