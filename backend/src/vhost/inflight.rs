//! Inflight I/O tracking (vhost-user "Inflight I/O tracking",
//! `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`), split rings.
//!
//! The device keeps, in a memory region it shares with the frontend, which
//! descriptor heads it took off each avail ring and has not yet put on the
//! used ring. The frontend keeps that region across a restart of the daemon
//! (it got it with `GET_INFLIGHT_FD` and hands it back with
//! `SET_INFLIGHT_FD` on the next connection), so the new daemon finds the
//! requests the old one never completed and runs them again, in the order
//! they were taken, before any new avail entry.
//!
//! Layout of one queue's region (all fields in the host's byte order, the
//! spec's `QueueRegionSplit`):
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | `features: u64` |
//! | 8 | `version: u16` |
//! | 10 | `desc_num: u16` |
//! | 12 | `last_batch_head: u16` |
//! | 14 | `used_idx: u16` |
//! | 16 + 16·i | `desc[i]`: `inflight: u8`, `padding[5]`, `next: u16` (at +6), `counter: u64` (at +8) |
//!
//! Queue `q` starts at `q ·` [`queue_region_size`]`(queue_size)`: the
//! header and `queue_size` entries, rounded up to 64 bytes, as
//! libvhost-user lays it out.
//!
//! The spec's order, which makes a crash between any two steps
//! recoverable: taking head `i` sets `desc[i].counter` then
//! `desc[i].inflight = 1`; completing it sets `desc[i].next =
//! last_batch_head`, `last_batch_head = i`, writes the used entry and
//! index, then `desc[i].inflight = 0` and `used_idx` = the used index.
//! On reconnect, a `used_idx` behind the used ring's index means the last
//! batch reached the used ring but its flags were not cleared: they are
//! cleared first (walking `next` from `last_batch_head`), then every entry
//! still flagged is resubmitted in counter order.
//!
//! The region is memory the frontend can write: it is touched only through
//! vm-memory's atomic accessors of a [`MmapRegion`], never as `&[u8]`.
//!
//! A packed ring's region has the spec's other layout, `QueueRegionPacked`
//! ([`Layout::Packed`]): its tracking is [`super::inflight_packed`]. Which
//! layout a region has is decided when it is created or mapped, by the
//! ring format the driver negotiated (the frontend sends SET_FEATURES
//! before GET_INFLIGHT_FD and SET_INFLIGHT_FD, as QEMU does).

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserInflight;
use vm_memory::mmap::MmapRegion;
use vm_memory::{AtomicAccess, Bytes, FileOffset, VolatileMemory, VolatileSlice};

use super::device_ring::DeviceRing;

/// Size of the spec's `QueueRegionSplit` header.
pub const HEADER_SIZE: usize = 16;
/// Size of the spec's `DescStateSplit`.
pub const DESC_SIZE: usize = 16;
/// Alignment of each queue's region (libvhost-user's `INFLIGHT_ALIGNMENT`).
pub const QUEUE_ALIGN: usize = 64;
/// The region layout version this device writes and reads.
pub const VERSION: u16 = 1;

/// Header field offsets.
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
/// `DescStateSplit` field offsets.
const OFF_INFLIGHT: usize = 0;
const OFF_NEXT: usize = 6;
const OFF_COUNTER: usize = 8;

/// The two queue region layouts of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `QueueRegionSplit` (this module).
    #[default]
    Split,
    /// `QueueRegionPacked` ([`super::inflight_packed`]).
    Packed,
}

impl Layout {
    /// The layout for a ring format (`packed`: VIRTIO_F_RING_PACKED).
    pub fn for_ring(packed: bool) -> Self {
        if packed {
            Layout::Packed
        } else {
            Layout::Split
        }
    }

    /// Bytes of one queue's region for rings of up to `queue_size`
    /// descriptors.
    pub fn queue_region_size(self, queue_size: u16) -> usize {
        match self {
            Layout::Split => queue_region_size(queue_size),
            Layout::Packed => super::inflight_packed::queue_region_size(queue_size),
        }
    }
}

/// What the device could not do with an inflight region.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The region asked for or offered is empty or too large.
    #[error("inflight region of {num_queues} queues of {queue_size} descriptors: {why}")]
    BadGeometry {
        /// Queues asked for.
        num_queues: u16,
        /// Descriptors per queue.
        queue_size: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// The memfd could not be made or sized.
    #[error("inflight memfd: {0}")]
    Memfd(#[source] std::io::Error),
    /// The region could not be mapped.
    #[error("inflight region mmap: {0}")]
    Map(#[from] vm_memory::mmap::MmapRegionError),
}

/// Bytes of one queue's region for rings of up to `queue_size` descriptors.
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER_SIZE + DESC_SIZE * usize::from(queue_size)).div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

/// A mapped inflight region: one queue region per vring.
#[derive(Debug)]
pub struct InflightRegion {
    map: MmapRegion,
    num_queues: u16,
    queue_size: u16,
    layout: Layout,
}

impl InflightRegion {
    fn check(num_queues: u16, queue_size: u16, layout: Layout) -> Result<usize, InflightError> {
        let bad = |why| InflightError::BadGeometry {
            num_queues,
            queue_size,
            why,
        };
        if num_queues == 0 || queue_size == 0 {
            return Err(bad("empty"));
        }
        Ok(usize::from(num_queues) * layout.queue_region_size(queue_size))
    }

    /// `GET_INFLIGHT_FD`: a zeroed memfd region for `msg.num_queues` queues
    /// of `msg.queue_size` descriptors, the message that describes it
    /// (`mmap_size`, `mmap_offset` 0) and the memfd to send.
    pub fn create(
        msg: &VhostUserInflight,
    ) -> Result<(Self, VhostUserInflight, File), InflightError> {
        Self::create_for(msg, Layout::Split)
    }

    /// [`InflightRegion::create`] for queue regions of `layout`.
    pub fn create_for(
        msg: &VhostUserInflight,
        layout: Layout,
    ) -> Result<(Self, VhostUserInflight, File), InflightError> {
        let size = Self::check(msg.num_queues, msg.queue_size, layout)?;
        let file = memfd(size).map_err(InflightError::Memfd)?;
        let map = MmapRegion::from_file(
            FileOffset::new(file.try_clone().map_err(InflightError::Memfd)?, 0),
            size,
        )?;
        let reply = VhostUserInflight {
            mmap_size: size as u64,
            mmap_offset: 0,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
        };
        let region = Self {
            map,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
            layout,
        };
        Ok((region, reply, file))
    }

    /// `SET_INFLIGHT_FD`: maps the region the frontend kept. Its size must
    /// hold `num_queues` queue regions of `queue_size` descriptors.
    pub fn map(msg: &VhostUserInflight, file: File) -> Result<Self, InflightError> {
        Self::map_for(msg, file, Layout::Split)
    }

    /// [`InflightRegion::map`] for queue regions of `layout`.
    pub fn map_for(
        msg: &VhostUserInflight,
        file: File,
        layout: Layout,
    ) -> Result<Self, InflightError> {
        let need = Self::check(msg.num_queues, msg.queue_size, layout)?;
        let size = usize::try_from(msg.mmap_size).unwrap_or(usize::MAX);
        if size < need {
            return Err(InflightError::BadGeometry {
                num_queues: msg.num_queues,
                queue_size: msg.queue_size,
                why: "mmap_size is smaller than the queues' regions",
            });
        }
        let map = MmapRegion::from_file(FileOffset::new(file, msg.mmap_offset), need)?;
        Ok(Self {
            map,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
            layout,
        })
    }

    /// The layout of its queue regions.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Number of queue regions.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Entries flagged in flight over every queue region a device has set
    /// up (version [`VERSION`], a ring size it has room for): what a
    /// frontend brings back after a restart. A last batch already on the
    /// used ring is among them until its ring starts (then it is cleared,
    /// not run again).
    pub fn in_flight(&self) -> usize {
        let m = self.slice();
        let load16 = |at: usize| m.load::<u16>(at, Ordering::Acquire).unwrap_or(0);
        // Both layouts have `version` and `desc_num` at the same offsets and
        // `inflight` first in each entry; only the header and entry sizes
        // differ (in a packed region only a chain's first entry is marked).
        let (header, entry) = match self.layout {
            Layout::Split => (HEADER_SIZE, DESC_SIZE),
            Layout::Packed => (
                super::inflight_packed::HEADER_SIZE,
                super::inflight_packed::DESC_SIZE,
            ),
        };
        let mut n = 0;
        for q in 0..usize::from(self.num_queues) {
            let base = q * self.layout.queue_region_size(self.queue_size);
            let size = load16(base + OFF_DESC_NUM);
            if load16(base + OFF_VERSION) != VERSION || size > self.queue_size {
                continue;
            }
            n += (0..usize::from(size))
                .filter(|i| {
                    let at = base + header + entry * i + OFF_INFLIGHT;
                    m.load::<u8>(at, Ordering::Acquire).unwrap_or(0) == 1
                })
                .count();
        }
        n
    }

    fn slice(&self) -> VolatileSlice<'_> {
        self.map.as_volatile_slice()
    }
}

/// Hands each ring its queue region of `region` (vring `i` gets queue
/// region `i`; rings past the region's queues are not tracked).
pub fn attach(rings: &[Arc<DeviceRing>], region: InflightRegion) {
    let region = Arc::new(region);
    for (i, ring) in rings.iter().enumerate() {
        let q = u16::try_from(i)
            .ok()
            .and_then(|i| QueueRegion::new(region.clone(), i));
        ring.set_inflight(q);
    }
}

/// A memfd of `size` bytes, zeroed.
fn memfd(size: usize) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create takes a NUL-terminated name (a C string literal)
    // and flags; it returns a new fd or -1, checked below.
    let fd = unsafe { libc::memfd_create(c"vscsi-inflight".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    Ok(file)
}

/// One vring's queue region, `index` in its [`InflightRegion`].
#[derive(Debug, Clone)]
pub struct QueueRegion {
    region: Arc<InflightRegion>,
    base: usize,
}

impl QueueRegion {
    /// The region of vring `index`; `None` past the region's queues.
    pub fn new(region: Arc<InflightRegion>, index: u16) -> Option<Self> {
        (index < region.num_queues).then(|| Self {
            base: usize::from(index) * region.layout.queue_region_size(region.queue_size),
            region,
        })
    }

    /// Descriptors this region has room for.
    pub fn capacity(&self) -> u16 {
        self.region.queue_size
    }

    /// The layout of the region.
    pub fn layout(&self) -> Layout {
        self.region.layout
    }

    /// Loads the `T` at byte `off` of this queue's region (acquire); 0 when
    /// `off` is past the mapping (callers keep offsets inside it).
    pub(crate) fn load_at<T: AtomicAccess + Default>(&self, off: usize) -> T {
        self.region
            .slice()
            .load::<T>(self.base + off, Ordering::Acquire)
            .unwrap_or_default()
    }

    /// Stores `v` at byte `off` of this queue's region (release: no earlier
    /// store of the device moves after it); dropped past the mapping.
    pub(crate) fn store_at<T: AtomicAccess>(&self, off: usize, v: T) {
        let _ = self
            .region
            .slice()
            .store(v, self.base + off, Ordering::Release);
    }

    // Accessors: every offset is inside the mapping (base + header + entries
    // of `capacity()`, callers check the index), so the accessors' errors
    // cannot happen; a failed load reads as 0 and a failed store is dropped.
    fn load16(&self, off: usize) -> u16 {
        self.region
            .slice()
            .load::<u16>(self.base + off, Ordering::Acquire)
            .unwrap_or(0)
    }
    fn store16(&self, off: usize, v: u16) {
        let _ = self
            .region
            .slice()
            .store(v, self.base + off, Ordering::Release);
    }
    fn desc_off(i: u16) -> usize {
        HEADER_SIZE + DESC_SIZE * usize::from(i)
    }

    /// `version`.
    pub fn version(&self) -> u16 {
        self.load16(OFF_VERSION)
    }
    /// `desc_num`.
    pub fn desc_num(&self) -> u16 {
        self.load16(OFF_DESC_NUM)
    }
    /// `last_batch_head`.
    pub fn last_batch_head(&self) -> u16 {
        self.load16(OFF_LAST_BATCH_HEAD)
    }
    /// `used_idx`.
    pub fn used_idx(&self) -> u16 {
        self.load16(OFF_USED_IDX)
    }
    /// `desc[i].inflight`.
    pub fn inflight(&self, i: u16) -> bool {
        self.region
            .slice()
            .load::<u8>(
                self.base + Self::desc_off(i) + OFF_INFLIGHT,
                Ordering::Acquire,
            )
            .unwrap_or(0)
            == 1
    }
    /// `desc[i].counter`.
    pub fn counter(&self, i: u16) -> u64 {
        self.region
            .slice()
            .load::<u64>(
                self.base + Self::desc_off(i) + OFF_COUNTER,
                Ordering::Acquire,
            )
            .unwrap_or(0)
    }
    /// `desc[i].next`.
    pub fn next(&self, i: u16) -> u16 {
        self.load16(Self::desc_off(i) + OFF_NEXT)
    }

    fn set_inflight(&self, i: u16, on: bool) {
        let _ = self.region.slice().store(
            u8::from(on),
            self.base + Self::desc_off(i) + OFF_INFLIGHT,
            Ordering::Release,
        );
    }
    fn set_counter(&self, i: u16, c: u64) {
        let _ = self.region.slice().store(
            c,
            self.base + Self::desc_off(i) + OFF_COUNTER,
            Ordering::Release,
        );
    }
}

/// The tracking state of one split ring over its [`QueueRegion`].
#[derive(Debug)]
pub struct SplitTracker {
    q: QueueRegion,
    /// Set up against the ring (fresh or recovered) since it (re)started.
    started: bool,
    /// Ring size the entries are valid for.
    size: u16,
    /// The next `counter` value.
    counter: u64,
    /// Heads still to resubmit, in counter order.
    resubmit: VecDeque<u16>,
}

/// What [`SplitTracker::start`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Heads to run again, in the order they were first taken.
    pub resubmit: Vec<u16>,
    /// Entries of the last batch found on the used ring and cleared.
    pub cleared: u16,
    /// Where the device takes its next avail entry: the used index plus
    /// the heads in flight (every entry taken is either used or in flight).
    pub next_avail: u16,
}

impl SplitTracker {
    /// Tracking over `q`, set up at the first use of the ring.
    pub fn new(q: QueueRegion) -> Self {
        Self {
            q,
            started: false,
            size: 0,
            counter: 1,
            resubmit: VecDeque::new(),
        }
    }

    /// Whether the tracker was set up since the ring (re)started.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The ring (re)started: it is set up again at its next use.
    pub fn restart(&mut self) {
        self.started = false;
    }

    /// Sets the region up for a ring of `size` descriptors whose used ring
    /// index is `used`. A region never used (version 0, as the frontend
    /// got it from `GET_INFLIGHT_FD`) or one for another ring size starts
    /// empty, with `used_idx` = `used` (never 0: a stale `used_idx` would
    /// make the next start clear a live entry of the "last batch"). A
    /// region in use is recovered. `None`: the ring is larger than the
    /// region (not tracked).
    pub fn start(&mut self, size: u16, used: u16) -> Option<Recovery> {
        self.started = true;
        self.resubmit.clear();
        if size == 0 || size > self.q.capacity() {
            self.size = 0;
            return None;
        }
        self.size = size;
        let q = &self.q;
        if q.version() != VERSION || q.desc_num() != size {
            for i in 0..size {
                q.set_inflight(i, false);
                q.set_counter(i, 0);
            }
            q.store16(OFF_DESC_NUM, size);
            q.store16(OFF_LAST_BATCH_HEAD, 0);
            q.store16(OFF_USED_IDX, used);
            q.store16(OFF_VERSION, VERSION);
            self.counter = 1;
            return Some(Recovery {
                resubmit: Vec::new(),
                cleared: 0,
                next_avail: used,
            });
        }
        // The last batch reached the used ring but its flags were not
        // cleared: clear the batch (used - used_idx entries from
        // last_batch_head along `next`).
        let batch = used.wrapping_sub(q.used_idx());
        let mut cleared = 0;
        if batch != 0 && batch <= size {
            let mut i = q.last_batch_head();
            for _ in 0..batch {
                if i >= size {
                    break;
                }
                q.set_inflight(i, false);
                cleared += 1;
                i = q.next(i);
            }
        }
        q.store16(OFF_USED_IDX, used);
        let mut live: Vec<(u64, u16)> = (0..size)
            .filter(|&i| q.inflight(i))
            .map(|i| (q.counter(i), i))
            .collect();
        live.sort_unstable();
        self.counter = live.last().map_or(1, |&(c, _)| c.wrapping_add(1));
        self.resubmit = live.iter().map(|&(_, i)| i).collect();
        Some(Recovery {
            resubmit: self.resubmit.iter().copied().collect(),
            cleared,
            next_avail: used.wrapping_add(live.len() as u16),
        })
    }

    /// Heads flagged in flight now (taken, not yet used); 0 before the
    /// ring started.
    pub fn in_flight(&self) -> usize {
        (0..self.size).filter(|&i| self.q.inflight(i)).count()
    }

    /// The next head to run again, if any (already marked in flight).
    pub fn next_resubmit(&mut self) -> Option<u16> {
        self.resubmit.pop_front()
    }

    /// Head `head` was taken off the avail ring: `counter` then `inflight`.
    pub fn taken(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        self.q.set_counter(head, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.q.set_inflight(head, true);
    }

    /// Before head `head`'s used entry: it becomes the last batch
    /// (`next` = the previous `last_batch_head`, `last_batch_head` = head).
    pub fn before_used(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        let prev = self.q.last_batch_head();
        self.q.store16(QueueRegion::desc_off(head) + OFF_NEXT, prev);
        self.q.store16(OFF_LAST_BATCH_HEAD, head);
    }

    /// After head `head`'s used entry and index (`used`) are written:
    /// `inflight` = 0, then `used_idx` = `used`.
    pub fn after_used(&mut self, head: u16, used: u16) {
        if head < self.size {
            self.q.set_inflight(head, false);
        }
        self.q.store16(OFF_USED_IDX, used);
    }
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
