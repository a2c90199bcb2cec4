//! Driver side of a packed virtqueue (VIRTIO 1.2 §2.8 "Packed Virtqueues").
//!
//! Memory layout (all little-endian):
//!
//! | part                            | alignment | size                       | written by |
//! |---------------------------------|-----------|----------------------------|------------|
//! | descriptor ring                 | 16        | `16 * size`                | both       |
//! | driver event suppression        | 4         | 4                          | driver     |
//! | device event suppression        | 4         | 4                          | device     |
//! | indirect tables                 | 16        | `16 * max_indirect * size` | driver     |
//!
//! A descriptor (`struct pvirtq_desc`, §2.8.13) is `addr: le64, len: le32,
//! id: le16, flags: le16`. The driver makes a descriptor available by
//! writing `AVAIL` (bit 7) equal to its avail wrap counter and `USED` (bit
//! 15) to its inverse (§2.8.1); the device marks a buffer used by writing
//! one descriptor at the next used position with both bits equal to its
//! used wrap counter, the buffer id and the bytes written, then skips as
//! many positions as that buffer's chain took (§2.8.6). Both wrap counters
//! start at 1 and flip each time their position passes the end of the ring.
//!
//! Buffer ids are not ring positions: a chain takes the next `n` positions,
//! whatever its id, and ids come from a free-id list. The indirect tables
//! (§2.8.7) are this crate's convention: one preallocated table per buffer
//! id, so id `i` always uses table `i`, which is free exactly when `i` is.
//!
//! # Trust
//!
//! As on the split ring, nothing the driver wrote is read back: every
//! in-flight buffer id has a private record (descriptors taken, writable
//! bytes, published), and the wrap counters and positions are private. The
//! device's writes, the used descriptor at the next used position and the
//! device event suppression structure, are loaded with atomic operations
//! and validated: a used descriptor counts only when both flag bits equal the
//! used wrap counter, its id must be a published buffer in flight and its
//! length at most that buffer's device-writable bytes. A violation breaks the
//! ring for good ([`RingError`]).
//!
//! # Memory ordering
//!
//! * Every descriptor of a chain except the head's flags is written by
//!   [`PackedRing::add`]; [`PackedRing::publish`] writes the pending head
//!   flags, the batch's first head last, each with `Release`, so the device
//!   sees whole chains (§2.8.21: "the driver MUST NOT make the first
//!   descriptor in the list available before all subsequent descriptors").
//! * A `SeqCst` fence separates that store from the load of the device
//!   event suppression structure that decides the kick (§2.8.21.3), and the
//!   driver event suppression stores from the re-check of the next used
//!   descriptor in [`PackedRing::enable_interrupts`].
//! * A used descriptor's flags are loaded with `Acquire` before its id and
//!   length (§2.8.22: the device writes the flags last).

pub mod event;

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use self::event::{
    need_kick, off_wrap, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE,
};
use super::split::RingOptions;
use super::{RingError, Segment};
use crate::memory::SharedMemory;

/// Largest queue size a packed virtqueue may have (§2.8: 32768; it need
/// not be a power of two).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Size of one descriptor, `struct pvirtq_desc` (§2.8.13).
const DESC_SIZE: usize = 16;
/// `VIRTQ_DESC_F_NEXT`: the buffer continues in the next descriptor (§2.8.6).
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device write-only.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer holds a table of descriptors (§2.8.7).
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_DESC_F_AVAIL` (bit 7, §2.8.1).
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// `VIRTQ_DESC_F_USED` (bit 15, §2.8.1).
pub const DESC_F_USED: u16 = 1 << 15;

/// Offsets of the parts of a packed virtqueue, relative to the ring base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayout {
    /// Descriptor ring (16-byte aligned).
    pub desc: usize,
    /// Driver event suppression structure (4-byte aligned).
    pub driver_event: usize,
    /// Device event suppression structure (4-byte aligned).
    pub device_event: usize,
    /// Indirect descriptor tables, one per buffer id of `max_indirect`
    /// descriptors (16-byte aligned; empty when `max_indirect == 0`).
    pub indirect: usize,
    /// Total bytes, from the base to the end of the last part.
    pub total: usize,
}

/// What the driver remembers about a buffer id it has handed to the device.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Ring positions the chain takes (1 for an indirect chain): how far the
    /// next used position moves when this id comes back (§2.8.6).
    n_desc: u16,
    /// Total device-writable bytes: the upper bound for the used length.
    writable: u32,
    /// The head's flags were written, so the device may return it.
    published: bool,
}

/// A chain added and not yet published: where its head is and the flags
/// that make it available.
#[derive(Debug, Clone, Copy)]
struct PendingHead {
    pos: u16,
    flags: u16,
    id: u16,
}

/// The driver side of one packed virtqueue living in a [`SharedMemory`] region.
///
/// See the [module documentation](self) for layout, trust and ordering rules.
#[derive(Debug)]
pub struct PackedRing {
    mem: Arc<SharedMemory>,
    base: usize,
    layout: PackedLayout,
    size: u16,
    event_idx: bool,
    /// Descriptors per indirect table; 0 when indirect descriptors are off.
    max_indirect: u16,
    /// Per buffer id in-flight records.
    ids: Box<[Option<InFlight>]>,
    /// Buffer ids not in flight (a stack; capacity `size`, never reallocates).
    free_ids: Vec<u16>,
    /// Ring positions not taken by a chain in flight.
    num_free: u16,
    /// Chains added and not yet returned.
    in_flight: u16,
    /// Next ring position to fill, and the avail wrap counter.
    next_avail: u16,
    avail_wrap: bool,
    /// Chains added since the last publish, in ring order (capacity `size`).
    pending: Vec<PendingHead>,
    /// Ring positions those chains take.
    pending_descs: u16,
    /// Next ring position the device writes a used descriptor at, and the
    /// used wrap counter.
    next_used: u16,
    used_wrap: bool,
    /// The `flags` last written to the driver event suppression structure.
    driver_flags: u16,
    interrupts_enabled: bool,
    broken: bool,
}

impl PackedRing {
    /// Offsets (relative to the ring base) for a ring of `size` descriptors
    /// and, when `max_indirect > 0`, `size` indirect tables of
    /// `max_indirect` descriptors. Alignments per §2.8.10.1 / §2.8.13:
    /// descriptor ring 16, event suppression structures 4; indirect tables
    /// 16. `size` is not validated here (see [`new`](Self::new)).
    pub fn layout(size: u16, max_indirect: u16) -> PackedLayout {
        let n = usize::from(size);
        let desc = 0;
        let driver_event = desc + DESC_SIZE * n;
        let device_event = driver_event + 4;
        let indirect = align_up(device_event + 4, 16);
        let total = indirect + n * usize::from(max_indirect) * DESC_SIZE;
        PackedLayout {
            desc,
            driver_event,
            device_event,
            indirect,
            total,
        }
    }

    /// Sets up a ring of `size` descriptors at offset `base` of `mem`.
    ///
    /// Zeroes the ring memory: a zeroed descriptor is neither available nor
    /// used with both wrap counters at 1, and zeroed event suppression
    /// structures say `ENABLE` (§2.8.10). `base` must be 16-byte aligned;
    /// the region must hold `layout(size, max_indirect).total` bytes from
    /// `base` (`max_indirect` taken as 0 when `opts.indirect` is off and
    /// clamped to `size` otherwise).
    pub fn new(
        mem: Arc<SharedMemory>,
        base: usize,
        size: u16,
        opts: RingOptions,
    ) -> Result<Self, RingError> {
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(RingError::InvalidPackedSize(size));
        }
        let max_indirect = if opts.indirect {
            if opts.max_indirect == 0 {
                return Err(RingError::InvalidMaxIndirect {
                    max_indirect: opts.max_indirect,
                    size,
                });
            }
            // No chain may be longer than the queue size, so larger tables
            // could never be filled.
            opts.max_indirect.min(size)
        } else {
            0
        };
        if base & (DESC_SIZE - 1) != 0 {
            return Err(RingError::Misaligned(base));
        }
        let layout = Self::layout(size, max_indirect);
        let too_small = RingError::RegionTooSmall {
            base,
            needed: layout.total,
            region_len: mem.len(),
        };
        match base.checked_add(layout.total) {
            Some(end) if end <= mem.len() => {}
            _ => return Err(too_small),
        }
        if mem.fill(base, layout.total, 0).is_err() {
            return Err(too_small);
        }
        let n = usize::from(size);
        Ok(Self {
            mem,
            base,
            layout,
            size,
            event_idx: opts.event_idx,
            max_indirect,
            ids: vec![None; n].into_boxed_slice(),
            // Popped from the end: id 0 first.
            free_ids: (0..size).rev().collect(),
            num_free: size,
            in_flight: 0,
            next_avail: 0,
            avail_wrap: true,
            pending: Vec::with_capacity(n),
            pending_descs: 0,
            next_used: 0,
            used_wrap: true,
            driver_flags: RING_EVENT_FLAGS_ENABLE,
            interrupts_enabled: true,
            broken: false,
        })
    }

    /// Zeroes the ring and forgets everything in flight, as
    /// [`PackedRing::new`] left it: the state after a queue reset (the
    /// device stopped the ring with GET_VRING_BASE and is given it again
    /// from position 0, wrap counter 1).
    pub fn reset(&mut self) -> Result<(), RingError> {
        let opts = RingOptions {
            event_idx: self.event_idx,
            indirect: self.max_indirect > 0,
            max_indirect: self.max_indirect,
        };
        *self = Self::new(self.mem.clone(), self.base, self.size, opts)?;
        Ok(())
    }

    /// Queue size (descriptors in the ring).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Ring positions not taken by a chain in flight.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains added and not yet returned by [`pop_used`](Self::pop_used).
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// `VIRTIO_F_EVENT_IDX` in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Indirect descriptors in use (per-table capacity > 0).
    pub fn indirect(&self) -> bool {
        self.max_indirect > 0
    }

    /// A device protocol violation was detected; every operation now fails.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The next ring position to fill and the avail wrap counter.
    pub fn next_avail(&self) -> (u16, bool) {
        (self.next_avail, self.avail_wrap)
    }

    /// The next ring position a used descriptor is expected at and the used
    /// wrap counter.
    pub fn next_used(&self) -> (u16, bool) {
        (self.next_used, self.used_wrap)
    }

    /// The SET_VRING_BASE value (vhost-user "Ring states"): the next avail
    /// position in bits 0-14 and the avail wrap counter in bit 15.
    pub fn vring_base(&self) -> u16 {
        off_wrap(self.next_avail, self.avail_wrap)
    }

    /// Absolute offsets of the ring parts within the region (`base` added).
    pub fn offsets(&self) -> PackedLayout {
        PackedLayout {
            desc: self.base + self.layout.desc,
            driver_event: self.base + self.layout.driver_event,
            device_event: self.base + self.layout.device_event,
            indirect: self.base + self.layout.indirect,
            total: self.layout.total,
        }
    }

    /// Frontend virtual address of the descriptor ring (SET_VRING_ADDR's
    /// descriptor address).
    pub fn desc_va(&self) -> u64 {
        self.mem.host_va(self.base + self.layout.desc)
    }
    /// Frontend virtual address of the driver event suppression structure
    /// (SET_VRING_ADDR's "available ring" address).
    pub fn driver_event_va(&self) -> u64 {
        self.mem.host_va(self.base + self.layout.driver_event)
    }
    /// Frontend virtual address of the device event suppression structure
    /// (SET_VRING_ADDR's "used ring" address).
    pub fn device_event_va(&self) -> u64 {
        self.mem.host_va(self.base + self.layout.device_event)
    }

    /// Adds one chain and returns its buffer id (the token
    /// [`pop_used`](Self::pop_used) returns).
    ///
    /// Device-readable segments come first, then device-writable ones. With
    /// indirect descriptors and `1 < segments.len() <= max_indirect` the
    /// chain takes one ring position, a descriptor pointing at the id's
    /// indirect table, whose entries carry only the WRITE flag (§2.8.7:
    /// NEXT is not used in an indirect table, their ids are reserved);
    /// otherwise one position per segment, linked by NEXT (§2.8.6). Every
    /// descriptor of a direct chain carries the buffer id, so a device
    /// reading it from the first or the last descriptor gets the same.
    ///
    /// Everything but the head's flags is written now; the chain is not
    /// available to the device before [`publish`](Self::publish).
    pub fn add(&mut self, segments: &[Segment]) -> Result<u16, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let writable = super::check_chain(segments, usize::from(self.size))?;
        // n <= size <= 32768, so these conversions are lossless.
        let n16 = segments.len() as u16;
        let use_indirect = self.max_indirect > 0 && n16 > 1 && n16 <= self.max_indirect;
        let needed = if use_indirect { 1 } else { n16 };
        let full = RingError::Full {
            needed,
            free: self.num_free,
        };
        if needed > self.num_free {
            return Err(full);
        }
        // A free position means a chain fewer than `size` is in flight, so
        // a free id exists; the check keeps that an invariant, not a panic.
        let Some(id) = self.free_ids.pop() else {
            return Err(full);
        };

        let head = self.next_avail;
        let head_flags = if use_indirect {
            let table = self.indirect_table_offset(id);
            for (i, seg) in segments.iter().enumerate() {
                let flags = if seg.device_writes { DESC_F_WRITE } else { 0 };
                self.store_desc(table + i * DESC_SIZE, seg.gpa, seg.len, 0);
                self.store16(table + i * DESC_SIZE + 14, flags, Ordering::Relaxed);
            }
            let len = u32::from(n16) * DESC_SIZE as u32;
            self.store_desc(self.desc_offset(head), self.mem.gpa(table), len, id);
            let flags = DESC_F_INDIRECT | self.avail_bits();
            self.advance_avail();
            flags
        } else {
            let mut head_flags = 0;
            for (i, seg) in segments.iter().enumerate() {
                let pos = self.next_avail;
                let mut flags = self.avail_bits();
                if seg.device_writes {
                    flags |= DESC_F_WRITE;
                }
                if i + 1 < segments.len() {
                    flags |= DESC_F_NEXT;
                }
                self.store_desc(self.desc_offset(pos), seg.gpa, seg.len, id);
                if i == 0 {
                    head_flags = flags;
                } else {
                    self.store16(self.desc_offset(pos) + 14, flags, Ordering::Relaxed);
                }
                self.advance_avail();
            }
            head_flags
        };
        self.pending.push(PendingHead {
            pos: head,
            flags: head_flags,
            id,
        });
        self.pending_descs += needed;
        self.num_free -= needed;
        self.in_flight += 1;
        self.ids[usize::from(id)] = Some(InFlight {
            n_desc: needed,
            writable,
            published: false,
        });
        Ok(id)
    }

    /// Makes every chain added since the last call available and says
    /// whether the device must be notified (kicked).
    ///
    /// Writes the pending head flags, last first, so that the batch's first
    /// head, the one the device is waiting on, is stored last (`Release`).
    /// Then, after a full fence, reads the device event suppression
    /// structure (one 32-bit load, so offset and flags are one snapshot)
    /// and decides per §2.8.21.3 ([`event::need_kick`]). Returns `false`
    /// when there was nothing to publish or the ring is broken.
    pub fn publish(&mut self) -> bool {
        if self.broken || self.pending.is_empty() {
            return false;
        }
        for i in (0..self.pending.len()).rev() {
            let p = self.pending[i];
            // Release: the chain's other descriptors (and every later chain
            // of the batch) become visible before this head is available.
            self.store16(self.desc_offset(p.pos) + 14, p.flags, Ordering::Release);
            if let Some(rec) = self.ids[usize::from(p.id)].as_mut() {
                rec.published = true;
            }
        }
        let batch = self.pending_descs;
        self.pending.clear();
        self.pending_descs = 0;
        // The head stores must be visible before the device's suppression
        // state is read, or a device going to sleep could be missed.
        fence(Ordering::SeqCst);
        let event = self.load32(self.base + self.layout.device_event, Ordering::Relaxed);
        let (device_off_wrap, device_flags) = (event as u16, (event >> 16) as u16);
        need_kick(
            device_flags,
            device_off_wrap,
            self.event_idx,
            self.next_avail,
            self.avail_wrap,
            batch,
            self.size,
        )
    }

    /// Pops one used buffer (§2.8.22 "Receiving Used Buffers From The
    /// Device").
    ///
    /// Returns `Ok(None)` when the descriptor at the next used position is
    /// not used in the current lap (its AVAIL and USED bits are not both
    /// equal to the used wrap counter: a descriptor still available, or one
    /// of the lap before, is never taken). Otherwise the buffer id and the
    /// bytes the device wrote, validated: the id must be a published buffer
    /// in flight and the length at most its device-writable bytes (the
    /// length is taken whatever the used descriptor's WRITE flag says). A
    /// violation returns the specific error once and [`RingError::Broken`]
    /// afterwards.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let desc = self.desc_offset(self.next_used);
        // Acquire: the id and length are read after the flags that cover them.
        let flags = self.load16(desc + 14, Ordering::Acquire);
        if !is_used(flags, self.used_wrap) {
            return Ok(None);
        }
        let id = self.load16(desc + 12, Ordering::Relaxed);
        let len = self.load32(desc + 8, Ordering::Relaxed);
        let rec = match self.ids.get(usize::from(id)) {
            Some(Some(rec)) if rec.published => *rec,
            _ => {
                return Err(self.fail(RingError::BadUsedId {
                    id: u32::from(id),
                    size: self.size,
                }))
            }
        };
        if len > rec.writable {
            return Err(self.fail(RingError::BadUsedLen {
                id,
                len,
                writable: rec.writable,
            }));
        }
        self.ids[usize::from(id)] = None;
        self.free_ids.push(id);
        self.num_free += rec.n_desc;
        self.in_flight -= 1;
        // §2.8.6: the device skips as many positions as the chain took.
        let next = u32::from(self.next_used) + u32::from(rec.n_desc);
        if next >= u32::from(self.size) {
            self.next_used = (next - u32::from(self.size)) as u16;
            self.used_wrap = !self.used_wrap;
        } else {
            self.next_used = next as u16;
        }
        if self.event_idx && self.interrupts_enabled {
            self.store_used_event();
        }
        Ok(Some((id, len)))
    }

    /// `true` if the device has returned a buffer not yet popped (or the
    /// ring is broken, so that a caller polling with
    /// [`pop_used`](Self::pop_used) sees the error).
    pub fn has_used(&self) -> bool {
        if self.broken {
            return true;
        }
        let flags = self.load16(self.desc_offset(self.next_used) + 14, Ordering::Acquire);
        is_used(flags, self.used_wrap)
    }

    /// Asks the device for used-buffer notifications (§2.8.10): with
    /// `VIRTIO_F_EVENT_IDX` the `DESC` mode at the next used position and
    /// wrap counter (`off_wrap` written before the flags), otherwise
    /// `ENABLE`.
    ///
    /// Returns `true` if a used buffer is already pending: the device may
    /// have written it before it could see the request, so the caller must
    /// poll again instead of sleeping (the lost-wakeup race).
    pub fn enable_interrupts(&mut self) -> bool {
        self.interrupts_enabled = true;
        if self.event_idx {
            self.store_used_event();
            self.set_driver_flags(RING_EVENT_FLAGS_DESC);
        } else {
            self.set_driver_flags(RING_EVENT_FLAGS_ENABLE);
        }
        // The request must be visible before we re-check the used descriptor.
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Tells the device used-buffer notifications are not needed
    /// (`DISABLE`, §2.8.10; valid with or without `VIRTIO_F_EVENT_IDX`).
    /// Only a hint: the device may still notify.
    pub fn disable_interrupts(&mut self) {
        self.interrupts_enabled = false;
        self.set_driver_flags(RING_EVENT_FLAGS_DISABLE);
    }

    // ---- internals -------------------------------------------------------

    /// Marks the ring broken and logs the first violation.
    fn fail(&mut self, err: RingError) -> RingError {
        self.broken = true;
        tracing::error!(error = %err, "packed virtqueue device protocol violation; ring is now broken");
        err
    }

    /// The AVAIL/USED bits that make a descriptor at the current avail
    /// position available: AVAIL equal to the avail wrap counter, USED its
    /// inverse (§2.8.1).
    fn avail_bits(&self) -> u16 {
        if self.avail_wrap {
            DESC_F_AVAIL
        } else {
            DESC_F_USED
        }
    }

    fn advance_avail(&mut self) {
        self.next_avail += 1;
        if self.next_avail == self.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
    }

    /// The driver's `off_wrap`: the next used position and wrap counter,
    /// where the device should notify in `DESC` mode.
    fn store_used_event(&self) {
        let value = off_wrap(self.next_used, self.used_wrap);
        self.store16(
            self.base + self.layout.driver_event,
            value,
            Ordering::Relaxed,
        );
    }

    /// Stores the driver event `flags` (with `Release`, after `off_wrap`)
    /// unless they already say that.
    fn set_driver_flags(&mut self, flags: u16) {
        if self.driver_flags != flags {
            self.driver_flags = flags;
            self.store16(
                self.base + self.layout.driver_event + 2,
                flags,
                Ordering::Release,
            );
        }
    }

    /// Writes a descriptor's address, length and id; the flags are stored
    /// separately (they decide when the device may look at it).
    fn store_desc(&self, offset: usize, addr: u64, len: u32, id: u16) {
        self.check_field(offset, DESC_SIZE);
        self.mem.store_u64(offset, addr.to_le(), Ordering::Relaxed);
        self.mem
            .store_u32(offset + 8, len.to_le(), Ordering::Relaxed);
        self.store16(offset + 12, id, Ordering::Relaxed);
    }

    fn desc_offset(&self, pos: u16) -> usize {
        self.base + self.layout.desc + usize::from(pos) * DESC_SIZE
    }
    fn indirect_table_offset(&self, id: u16) -> usize {
        self.base
            + self.layout.indirect
            + usize::from(id) * usize::from(self.max_indirect) * DESC_SIZE
    }

    /// Ring fields are accessed only through [`SharedMemory`]'s atomic
    /// accessors, little-endian. `offset` always comes from the offset
    /// helpers above, inside `[base, base + layout.total)` (checked against
    /// the region in [`new`](Self::new)) and naturally aligned (base
    /// 16-aligned, parts aligned as in [`layout`](Self::layout)); the
    /// accessors check both again.
    fn load16(&self, offset: usize, order: Ordering) -> u16 {
        self.check_field(offset, 2);
        u16::from_le(self.mem.load_u16(offset, order))
    }
    fn store16(&self, offset: usize, value: u16, order: Ordering) {
        self.check_field(offset, 2);
        self.mem.store_u16(offset, value.to_le(), order)
    }
    fn load32(&self, offset: usize, order: Ordering) -> u32 {
        self.check_field(offset, 4);
        u32::from_le(self.mem.load_u32(offset, order))
    }
    /// A field of `len` bytes at `offset` belongs to this ring.
    fn check_field(&self, offset: usize, len: usize) {
        debug_assert!(
            offset >= self.base && offset + len <= self.base + self.layout.total,
            "field {offset:#x}+{len} outside the ring at {:#x}",
            self.base
        );
    }
}

/// A descriptor is used in the lap of `wrap` when its AVAIL and USED bits
/// are equal to each other and to the used wrap counter (§2.8.1).
fn is_used(flags: u16, wrap: bool) -> bool {
    let avail = flags & DESC_F_AVAIL != 0;
    let used = flags & DESC_F_USED != 0;
    avail == used && used == wrap
}

const fn align_up(v: usize, align: usize) -> usize {
    (v + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests;
