//! Driver side of a split virtqueue (VIRTIO 1.2 §2.7 "Split Virtqueues").
//!
//! Memory layout (all little-endian, §2.7 alignment table):
//!
//! | part               | alignment | size                          | written by |
//! |--------------------|-----------|-------------------------------|------------|
//! | descriptor table   | 16        | `16 * size`                   | driver     |
//! | available ring     | 2         | `6 + 2 * size` (incl. `used_event`) | driver |
//! | used ring          | 4         | `6 + 8 * size` (incl. `avail_event`) | device |
//! | indirect tables    | 16        | `16 * max_indirect * size`    | driver     |
//!
//! The indirect tables (§2.7.5.3) are this crate's convention: one preallocated
//! table per possible chain head, so a chain whose head is `h` always uses table
//! `h`, which is free exactly when `h` is.
//!
//! # Trust
//!
//! Following the shadow-state discipline of rcore-os `virtio-drivers`, the ring
//! never reads back anything from shared memory that it wrote itself: the free
//! list and the chain structure live in a private shadow descriptor table, and
//! per-head in-flight records remember how many descriptors and device-writable
//! bytes each chain has. What the device writes (`used->idx`, used elements,
//! `used->flags`, `avail_event`) is loaded with atomic operations and validated;
//! a violation breaks the ring for good (see [`RingError`]).
//!
//! # Memory ordering
//!
//! * Descriptors and avail ring slots are stored before `avail->idx`, which is
//!   stored with `Release` (§2.7.13.2–§2.7.13.3: the device must see the
//!   entries before the index).
//! * A `SeqCst` fence separates the `avail->idx` store from the load of
//!   `avail_event` / `used->flags` that decides whether to notify (§2.7.13.4),
//!   and separates `used_event` / `avail->flags` stores from the re-check of
//!   `used->idx` in [`SplitRing::enable_interrupts`].
//! * `used->idx` is loaded with `Acquire` before the used element it covers (§2.7.14).

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::{RingError, Segment};
use crate::memory::SharedMemory;

/// Largest queue size a split virtqueue may have (§2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Size of one descriptor, `struct virtq_desc` (§2.7.5).
const DESC_SIZE: usize = 16;
/// `VIRTQ_DESC_F_NEXT`: the buffer continues via the `next` field (§2.7.5).
const VIRTQ_DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device write-only (§2.7.5).
const VIRTQ_DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer holds a table of descriptors (§2.7.5.3).
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` in `avail->flags` (§2.7.7).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY` in `used->flags` (§2.7.10).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Whether a notification is needed after moving an index from `old` to `new`,
/// given the other side's event index (§2.7.10 "Available Buffer Notification
/// Suppression" / §2.7.7; the `vring_need_event` helper of the spec's
/// `virtio_ring.h`, §2.7.11).
///
/// True iff `event` lies in the half-open window `[old, new)` of the circular
/// 16-bit index space, i.e. the other side asked to be notified when the index
/// passes `event` and this update crossed it. All arithmetic wraps, so the
/// result is correct across the 65535 → 0 boundary.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Offsets of the parts of a split virtqueue, relative to the ring base (§2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Descriptor table (16-byte aligned).
    pub desc: usize,
    /// Available ring (2-byte aligned).
    pub avail: usize,
    /// Used ring (4-byte aligned).
    pub used: usize,
    /// Indirect descriptor tables, `size` tables of `max_indirect` descriptors
    /// (16-byte aligned; empty when `max_indirect == 0`).
    pub indirect: usize,
    /// Total bytes, from the base to the end of the last part.
    pub total: usize,
}

/// Negotiated features and limits for a [`SplitRing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingOptions {
    /// `VIRTIO_F_EVENT_IDX` (bit 29) was negotiated: use `used_event` / `avail_event`
    /// (§2.7.7, §2.7.10) instead of the flag fields.
    pub event_idx: bool,
    /// `VIRTIO_F_INDIRECT_DESC` (bit 28) was negotiated: chains of more than one
    /// segment use one indirect descriptor (§2.7.5.3).
    pub indirect: bool,
    /// Descriptors per indirect table (at least 1; values above the queue size
    /// are clamped to it, §2.7.5.2); ignored unless `indirect`.
    pub max_indirect: u16,
}

/// Trusted copy of a descriptor as the driver wrote it (§2.7.5 `struct virtq_desc`).
/// For free descriptors, `next` links the free list.
#[derive(Debug, Clone, Copy, Default)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// What the driver remembers about a chain head it has handed to the device.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Descriptors of the main table the chain occupies (1 for an indirect chain).
    n_desc: u16,
    /// Total device-writable bytes: the upper bound for the used `len`.
    writable: u32,
    /// `avail->idx` has been advanced past this chain, so the device may return it.
    published: bool,
}

/// The driver side of one split virtqueue living in a [`SharedMemory`] region.
///
/// See the [module documentation](self) for layout, trust and ordering rules.
#[derive(Debug)]
pub struct SplitRing {
    mem: Arc<SharedMemory>,
    base: usize,
    layout: RingLayout,
    size: u16,
    event_idx: bool,
    /// Descriptors per indirect table; 0 when indirect descriptors are off.
    max_indirect: u16,
    /// Shadow descriptor table (trusted copy; free list links).
    shadow: Box<[Desc]>,
    free_head: u16,
    num_free: u16,
    /// Per-head in-flight records, indexed by head id.
    heads: Box<[Option<InFlight>]>,
    /// Shadow of the avail ring entries (heads by slot).
    avail_shadow: Box<[u16]>,
    /// Next avail index to fill (includes added but unpublished chains).
    next_avail: u16,
    /// Value last stored to `avail->idx`.
    published: u16,
    /// Used index up to which elements have been consumed.
    last_used: u16,
    interrupts_enabled: bool,
    broken: bool,
}

impl SplitRing {
    /// Offsets (relative to the ring base) for a ring of `size` entries and, when
    /// `max_indirect > 0`, `size` indirect tables of `max_indirect` descriptors
    /// each. Alignments per §2.7: descriptor table 16, available ring 2, used
    /// ring 4; indirect tables 16. `size` is not validated here (see [`new`](Self::new)).
    pub fn layout(size: u16, max_indirect: u16) -> RingLayout {
        let n = usize::from(size);
        let desc = 0;
        let avail = desc + DESC_SIZE * n;
        // flags, idx, ring[size], used_event
        let avail_end = avail + 6 + 2 * n;
        let used = align_up(avail_end, 4);
        // flags, idx, ring[size] of {id: le32, len: le32}, avail_event
        let used_end = used + 6 + 8 * n;
        let indirect = align_up(used_end, 16);
        let total = indirect + n * usize::from(max_indirect) * DESC_SIZE;
        RingLayout {
            desc,
            avail,
            used,
            indirect,
            total,
        }
    }

    /// Sets up a ring of `size` entries at offset `base` of `mem`.
    ///
    /// Zeroes the ring memory (the used ring must be zero before the device is
    /// given its address, `VHOST_USER_SET_VRING_ADDR`) and builds the free list.
    /// `base` must be 16-byte aligned; the region must hold
    /// `layout(size, max_indirect).total` bytes from `base` (with `max_indirect`
    /// taken as 0 when `opts.indirect` is off and clamped to `size` otherwise), so
    /// reserving `layout(size, opts.max_indirect).total` is always enough.
    pub fn new(
        mem: Arc<SharedMemory>,
        base: usize,
        size: u16,
        opts: RingOptions,
    ) -> Result<Self, RingError> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(RingError::InvalidSize(size));
        }
        let max_indirect = if opts.indirect {
            if opts.max_indirect == 0 {
                return Err(RingError::InvalidMaxIndirect {
                    max_indirect: opts.max_indirect,
                    size,
                });
            }
            // §2.7.5.2: no chain may be longer than the Queue Size, so larger
            // tables could never be filled.
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
        let shadow: Box<[Desc]> = (0..n)
            .map(|i| Desc {
                // The last link wraps to 0; it is never followed because
                // allocation is bounded by `num_free`.
                next: ((i + 1) % n) as u16,
                ..Desc::default()
            })
            .collect();
        Ok(Self {
            mem,
            base,
            layout,
            size,
            event_idx: opts.event_idx,
            max_indirect,
            shadow,
            free_head: 0,
            num_free: size,
            heads: vec![None; n].into_boxed_slice(),
            avail_shadow: vec![0; n].into_boxed_slice(),
            next_avail: 0,
            published: 0,
            last_used: 0,
            interrupts_enabled: true,
            broken: false,
        })
    }

    /// Zeroes the ring and forgets everything in flight, as [`SplitRing::new`]
    /// left it: the state after a queue reset (the device stopped the ring
    /// with GET_VRING_BASE, and is given it again from index 0).
    pub fn reset(&mut self) -> Result<(), RingError> {
        let opts = RingOptions {
            event_idx: self.event_idx,
            indirect: self.max_indirect > 0,
            max_indirect: self.max_indirect,
        };
        *self = Self::new(self.mem.clone(), self.base, self.size, opts)?;
        Ok(())
    }

    /// Queue size (number of descriptors and ring entries).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptors of the main table currently free.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains added and not yet returned by [`pop_used`](Self::pop_used).
    pub fn in_flight(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
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

    /// The next available index the driver will publish (for `VHOST_USER_SET_VRING_BASE`
    /// when re-attaching a device to an existing ring).
    pub fn next_avail_idx(&self) -> u16 {
        self.next_avail
    }

    /// Absolute offsets of the ring parts within the region (`base` added).
    pub fn offsets(&self) -> RingLayout {
        RingLayout {
            desc: self.base + self.layout.desc,
            avail: self.base + self.layout.avail,
            used: self.base + self.layout.used,
            indirect: self.base + self.layout.indirect,
            total: self.layout.total,
        }
    }

    /// GPA of the descriptor table.
    pub fn desc_gpa(&self) -> u64 {
        self.mem.gpa(self.base + self.layout.desc)
    }
    /// GPA of the available ring.
    pub fn avail_gpa(&self) -> u64 {
        self.mem.gpa(self.base + self.layout.avail)
    }
    /// GPA of the used ring.
    pub fn used_gpa(&self) -> u64 {
        self.mem.gpa(self.base + self.layout.used)
    }
    /// Frontend virtual address of the descriptor table (`VHOST_USER_SET_VRING_ADDR`).
    pub fn desc_va(&self) -> u64 {
        self.mem.host_va(self.base + self.layout.desc)
    }
    /// Frontend virtual address of the available ring.
    pub fn avail_va(&self) -> u64 {
        self.mem.host_va(self.base + self.layout.avail)
    }
    /// Frontend virtual address of the used ring.
    pub fn used_va(&self) -> u64 {
        self.mem.host_va(self.base + self.layout.used)
    }

    /// Adds one chain and returns its head id (the token [`pop_used`](Self::pop_used) returns).
    ///
    /// Device-readable segments must come first, then device-writable ones
    /// (§2.7.4 "Message Framing", §2.7.5.2). With indirect descriptors and
    /// `1 < segments.len() <= max_indirect` the chain takes a single descriptor
    /// pointing at the head's indirect table (§2.7.5.3); otherwise it takes one
    /// descriptor per segment (§2.7.13.1).
    ///
    /// The avail ring slot is written, but `avail->idx` is not advanced: call
    /// [`publish`](Self::publish) to expose this and any other added chains.
    pub fn add(&mut self, segments: &[Segment]) -> Result<u16, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let n = segments.len();
        let writable = super::check_chain(segments, usize::from(self.size))?;

        // n <= size <= 32768, so these conversions are lossless.
        let n16 = n as u16;
        let use_indirect = self.max_indirect > 0 && n > 1 && n16 <= self.max_indirect;
        let needed = if use_indirect { 1 } else { n16 };
        if needed > self.num_free {
            return Err(RingError::Full {
                needed,
                free: self.num_free,
            });
        }

        let head = self.free_head;
        if use_indirect {
            let table = self.indirect_table_offset(head);
            for (i, seg) in segments.iter().enumerate() {
                let last = i + 1 == n;
                let desc = Desc {
                    addr: seg.gpa,
                    len: seg.len,
                    flags: desc_flags(seg, last),
                    next: if last { 0 } else { (i + 1) as u16 },
                };
                self.store_desc(table + i * DESC_SIZE, desc);
            }
            self.free_head = self.shadow[usize::from(head)].next;
            let desc = Desc {
                addr: self.mem.gpa(table),
                len: u32::from(n16) * DESC_SIZE as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            };
            self.shadow[usize::from(head)] = desc;
            self.store_desc(self.desc_offset(head), desc);
        } else {
            let mut d = head;
            for (i, seg) in segments.iter().enumerate() {
                let last = i + 1 == n;
                let link = self.shadow[usize::from(d)].next;
                let desc = Desc {
                    addr: seg.gpa,
                    len: seg.len,
                    flags: desc_flags(seg, last),
                    next: if last { 0 } else { link },
                };
                self.shadow[usize::from(d)] = desc;
                self.store_desc(self.desc_offset(d), desc);
                if last {
                    self.free_head = link;
                } else {
                    d = link;
                }
            }
        }
        self.num_free -= needed;
        self.heads[usize::from(head)] = Some(InFlight {
            n_desc: needed,
            writable,
            published: false,
        });

        // §2.7.13.2: place the head in the next avail ring slot.
        let slot = self.next_avail % self.size;
        self.avail_shadow[usize::from(slot)] = head;
        self.store16(self.avail_ring_offset(slot), head, Ordering::Relaxed);
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(head)
    }

    /// Publishes every chain added since the last call and says whether the
    /// device must be notified (kicked).
    ///
    /// Stores `avail->idx` with `Release` ordering (§2.7.13.3), then after a
    /// full fence decides per §2.7.13.4: with `VIRTIO_F_EVENT_IDX`,
    /// [`vring_need_event`]`(avail_event, new, old)` (§2.7.10); otherwise
    /// `!(used->flags & VIRTQ_USED_F_NO_NOTIFY)`. Returns `false` when there was
    /// nothing to publish or the ring is broken.
    pub fn publish(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return false;
        }
        let mut idx = old;
        while idx != new {
            let head = self.avail_shadow[usize::from(idx % self.size)];
            if let Some(rec) = self.heads[usize::from(head)].as_mut() {
                rec.published = true;
            }
            idx = idx.wrapping_add(1);
        }
        // Release: the descriptor and avail ring stores above become visible
        // to the device before the new index (§2.7.13.3).
        self.store16(self.avail_idx_offset(), new, Ordering::Release);
        self.published = new;
        // The index store must be visible before we read the device's
        // suppression state, or a device going to sleep could be missed (§2.7.13.4).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = self.load16(self.avail_event_offset(), Ordering::Relaxed);
            vring_need_event(event, new, old)
        } else {
            let flags = self.load16(self.used_flags_offset(), Ordering::Relaxed);
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// Pops one used element (§2.7.14 "Receiving Used Buffers From The Device").
    ///
    /// Returns `Ok(None)` when the device has returned nothing new, else the
    /// chain's head id and the number of bytes the device wrote. The element is
    /// validated: `used->idx` may advance by at most the number of published
    /// in-flight chains, the id must be such a chain's head, and `len` must not
    /// exceed its device-writable bytes. A violation returns the specific error
    /// once and [`RingError::Broken`] afterwards.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        // Acquire: the used element is read after the index that covers it.
        let used_idx = self.load16(self.used_idx_offset(), Ordering::Acquire);
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        let outstanding = self.published.wrapping_sub(self.last_used);
        if pending > outstanding {
            return Err(self.fail(RingError::UsedIdxJump {
                last_used: self.last_used,
                used_idx,
                outstanding,
            }));
        }
        let slot = self.last_used % self.size;
        let elem = self.used_elem_offset(slot);
        let id = self.load32(elem, Ordering::Relaxed);
        let len = self.load32(elem + 4, Ordering::Relaxed);

        let rec = match usize::try_from(id).ok().and_then(|i| self.heads.get(i)) {
            Some(Some(rec)) if rec.published => *rec,
            _ => {
                return Err(self.fail(RingError::BadUsedId {
                    id,
                    size: self.size,
                }))
            }
        };
        // id < size <= 32768 here.
        let head = id as u16;
        if len > rec.writable {
            return Err(self.fail(RingError::BadUsedLen {
                id: head,
                len,
                writable: rec.writable,
            }));
        }

        self.free_chain(head, rec.n_desc);
        self.heads[usize::from(head)] = None;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            self.store_used_event();
        }
        Ok(Some((head, len)))
    }

    /// `true` if the device has returned elements not yet popped (or the ring is
    /// broken, so that a caller polling with [`pop_used`](Self::pop_used) sees the error).
    pub fn has_used(&self) -> bool {
        if self.broken {
            return true;
        }
        self.load16(self.used_idx_offset(), Ordering::Acquire) != self.last_used
    }

    /// Asks the device for used-buffer notifications (§2.7.7): with
    /// `VIRTIO_F_EVENT_IDX` writes `used_event = last_used_idx`, otherwise clears
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`.
    ///
    /// Returns `true` if used elements are already pending: the device may have
    /// returned them before it could see the request, so the caller must poll
    /// again instead of sleeping (the lost-wakeup race).
    pub fn enable_interrupts(&mut self) -> bool {
        self.interrupts_enabled = true;
        if self.event_idx {
            self.store_used_event();
        } else {
            self.store16(self.avail_flags_offset(), 0, Ordering::Relaxed);
        }
        // The request must be visible before we re-check used->idx.
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Tells the device used-buffer notifications are not needed (§2.7.7):
    /// with `VIRTIO_F_EVENT_IDX` moves `used_event` just behind `last_used_idx`
    /// (so the device's index will not cross it until it wraps; the flags field
    /// must stay 0 in this mode), otherwise sets `VIRTQ_AVAIL_F_NO_INTERRUPT`.
    /// Only a hint: the device may still notify.
    pub fn disable_interrupts(&mut self) {
        self.interrupts_enabled = false;
        if self.event_idx {
            self.store_used_event();
        } else {
            self.store16(
                self.avail_flags_offset(),
                VIRTQ_AVAIL_F_NO_INTERRUPT,
                Ordering::Relaxed,
            );
        }
    }

    // ---- internals -------------------------------------------------------

    /// Marks the ring broken and logs the first violation.
    fn fail(&mut self, err: RingError) -> RingError {
        self.broken = true;
        tracing::error!(error = %err, "virtqueue device protocol violation; ring is now broken");
        err
    }

    /// Returns the `n_desc` descriptors of the chain at `head` to the free list,
    /// walking the trusted shadow table (never the shared one).
    fn free_chain(&mut self, head: u16, n_desc: u16) {
        let mut tail = head;
        for _ in 1..n_desc {
            tail = self.shadow[usize::from(tail)].next;
        }
        self.shadow[usize::from(tail)].next = self.free_head;
        self.free_head = head;
        self.num_free += n_desc;
    }

    fn store_used_event(&self) {
        let value = if self.interrupts_enabled {
            self.last_used
        } else {
            self.last_used.wrapping_sub(1)
        };
        self.store16(self.used_event_offset(), value, Ordering::Relaxed);
    }

    fn store_desc(&self, offset: usize, desc: Desc) {
        self.check_field(offset, DESC_SIZE);
        self.mem
            .store_u64(offset, desc.addr.to_le(), Ordering::Relaxed);
        self.mem
            .store_u32(offset + 8, desc.len.to_le(), Ordering::Relaxed);
        self.store16(offset + 12, desc.flags, Ordering::Relaxed);
        self.store16(offset + 14, desc.next, Ordering::Relaxed);
    }

    fn desc_offset(&self, i: u16) -> usize {
        self.base + self.layout.desc + usize::from(i) * DESC_SIZE
    }
    fn indirect_table_offset(&self, head: u16) -> usize {
        self.base
            + self.layout.indirect
            + usize::from(head) * usize::from(self.max_indirect) * DESC_SIZE
    }
    fn avail_flags_offset(&self) -> usize {
        self.base + self.layout.avail
    }
    fn avail_idx_offset(&self) -> usize {
        self.base + self.layout.avail + 2
    }
    fn avail_ring_offset(&self, slot: u16) -> usize {
        self.base + self.layout.avail + 4 + 2 * usize::from(slot)
    }
    fn used_event_offset(&self) -> usize {
        self.base + self.layout.avail + 4 + 2 * usize::from(self.size)
    }
    fn used_flags_offset(&self) -> usize {
        self.base + self.layout.used
    }
    fn used_idx_offset(&self) -> usize {
        self.base + self.layout.used + 2
    }
    fn used_elem_offset(&self, slot: u16) -> usize {
        self.base + self.layout.used + 4 + 8 * usize::from(slot)
    }
    fn avail_event_offset(&self) -> usize {
        self.base + self.layout.used + 4 + 8 * usize::from(self.size)
    }

    /// Ring fields are accessed only through [`SharedMemory`]'s atomic
    /// accessors, little-endian (§2.4 "virtio endian"). `offset` always comes
    /// from the offset helpers above, which stay inside `[base, base +
    /// layout.total)` (checked against the region in [`new`](Self::new)) and
    /// are naturally aligned (base 16-aligned, mapping page-aligned, parts
    /// aligned per §2.7); the accessors check both again.
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

    /// Test hook: start all indices at `idx` (as if the ring had already
    /// processed `idx` chains), to exercise 16-bit wrap-around quickly.
    #[cfg(test)]
    fn set_start_index(&mut self, idx: u16) {
        assert_eq!(self.in_flight(), 0);
        self.next_avail = idx;
        self.published = idx;
        self.last_used = idx;
        self.store16(self.avail_idx_offset(), idx, Ordering::Relaxed);
        self.store16(self.used_idx_offset(), idx, Ordering::Relaxed);
        if self.event_idx {
            self.store_used_event();
        }
    }
}

fn desc_flags(seg: &Segment, last: bool) -> u16 {
    let mut flags = 0;
    if seg.device_writes {
        flags |= VIRTQ_DESC_F_WRITE;
    }
    if !last {
        flags |= VIRTQ_DESC_F_NEXT;
    }
    flags
}

const fn align_up(v: usize, align: usize) -> usize {
    (v + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests;
