//! A packed descriptor ring seen from the device (VIRTIO 1.2 §2.8).
//!
//! [`PackedRing::pop`] reads the descriptor at the device's next avail
//! position, and when it is available (§2.8.1: its AVAIL bit equals the
//! device's avail wrap counter and its USED bit does not) walks the chain
//! from there, reading every descriptor once, into the same scratch list of
//! descriptors the split walk fills (so [`crate::vhost::chain`] turns
//! either into iovecs). It refuses, as a [`RingViolation`], with nothing
//! taken:
//!
//! - a first descriptor whose AVAIL and USED bits both equal the wrap
//!   counter (no driver writes that; §2.8.1);
//! - a later descriptor of the chain that is not available (§2.8.6: the
//!   driver makes the first descriptor available after all the others);
//! - a chain longer than the ring (§2.8.19: loops are forbidden), or of
//!   more than 2^32 bytes;
//! - a chain that would take more descriptors than the driver got back:
//!   the driver made available descriptors the device has not used yet;
//! - a buffer id at or above the queue size, or one already in flight
//!   (§2.8.6: the id is in the last descriptor of the chain);
//! - an indirect descriptor with NEXT or after another in a chain (§2.8.20),
//!   an indirect table of 0 bytes, not a multiple of 16, over
//!   [`MAX_INDIRECT`] entries, or outside guest memory (§2.8.7);
//! - a descriptor that cannot be read.
//!
//! Inside an indirect table only WRITE counts: §2.8.7 makes the other flags
//! and the id reserved and ignored, so a table is its `len / 16` entries in
//! order.
//!
//! [`PackedRing::add_used`] writes one used descriptor per chain at the
//! device's next used position, in completion order (§2.8.17: "in the
//! order in which they complete"): id and len first, then, after a release
//! barrier, the flags with AVAIL and USED equal to the used wrap counter
//! (WRITE when the device wrote something, §2.8.3). The used position then
//! advances by the number of ring descriptors the chain took (§2.8.6), as
//! the driver does when it reads the used descriptor, so used descriptors
//! land where the driver looks for them whatever the completion order.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::{
    Position, DESC_SIZE, FLAGS_OFFSET, F_AVAIL, F_INDIRECT, F_NEXT, F_USED, F_WRITE, ID_OFFSET,
    LEN_OFFSET,
};
use crate::vhost::dirty::GuestMem;
use crate::vhost::ring_guard::{RingViolation, MAX_INDIRECT};

/// What `add_used` could not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsedError {
    /// No chain with this id is in flight (a device bug, never the driver's).
    #[error("buffer id {id} is not in flight")]
    NotInFlight {
        /// The id.
        id: u16,
    },
    /// The used descriptor could not be written.
    #[error("used descriptor at {addr:#x} is not in guest memory")]
    Unwritable {
        /// Guest address.
        addr: u64,
    },
}

/// One ring descriptor of a chain as the device read it (§2.8.13), for the
/// inflight region's copy of each chain in flight
/// ([`crate::vhost::inflight_packed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingDesc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Buffer id (meaningful in the last descriptor of a chain).
    pub id: u16,
    /// Flags, as the walk went by them.
    pub flags: u16,
}

/// The device's state of one packed ring: where it reads and writes, and
/// which buffer ids are in flight with how many descriptors each took.
#[derive(Debug)]
pub struct PackedRing {
    /// Descriptor ring (SET_VRING_ADDR's descriptor address).
    pub desc: GuestAddress,
    /// Queue size.
    pub size: u16,
    /// The next descriptor the device reads.
    pub avail: Position,
    /// The next descriptor the device writes a used descriptor at.
    pub used: Position,
    /// Ring descriptors taken and not yet used.
    pub in_flight: u32,
    /// Per buffer id: the ring descriptors its chain took, 0 when the id is
    /// not in flight. Sized once when the ring starts.
    counts: Vec<u16>,
    /// The ring descriptors of the chain the last `pop` took (scratch,
    /// reused).
    chain: Vec<RingDesc>,
}

impl PackedRing {
    /// A ring of `size` at `desc`, the device at `avail` (SET_VRING_BASE)
    /// with nothing in flight, so its used position is the same.
    pub fn new(desc: GuestAddress, size: u16, avail: Position) -> Self {
        Self {
            desc,
            size,
            avail,
            used: avail,
            in_flight: 0,
            counts: vec![0; usize::from(size)],
            chain: Vec::new(),
        }
    }

    /// Starts again at `avail` with nothing in flight, keeping the id table
    /// when the size is the same (no allocation on a ring restart).
    pub fn restart(&mut self, desc: GuestAddress, size: u16, avail: Position) {
        self.desc = desc;
        self.size = size;
        self.avail = avail;
        self.used = avail;
        self.in_flight = 0;
        self.counts.clear();
        self.counts.resize(usize::from(size), 0);
    }

    /// The ring descriptors of the chain the last successful `pop` took,
    /// in ring order (an indirect chain: its one indirect descriptor).
    pub fn chain(&self) -> &[RingDesc] {
        &self.chain
    }

    /// The ring descriptors the chain with buffer id `id` took, when it is
    /// in flight.
    pub fn count(&self, id: u16) -> Option<u16> {
        self.counts.get(usize::from(id)).copied().filter(|&c| c > 0)
    }

    /// Takes over a chain of `count` ring descriptors with buffer id `id`
    /// that a previous device took at the avail position (the inflight
    /// region's record of it): in flight, the avail position past it.
    /// Refused (`false`) for an id out of range or in flight, or a chain
    /// the ring has no room for.
    pub fn adopt(&mut self, id: u16, count: u16) -> bool {
        let size = self.size;
        let fits = count > 0 && self.in_flight + u32::from(count) <= u32::from(size);
        match self.counts.get_mut(usize::from(id)) {
            Some(slot) if *slot == 0 && fits => {
                *slot = count;
                self.in_flight += u32::from(count);
                self.avail = self.avail.advance(count, size);
                true
            }
            _ => false,
        }
    }

    fn slot(&self, index: u16) -> Option<GuestAddress> {
        self.desc.checked_add(u64::from(index) * DESC_SIZE)
    }

    /// The flags of the descriptor at `index` (an acquire load: what the
    /// driver wrote before them is visible after).
    fn flags(&self, mem: &GuestMem, index: u16) -> Result<u16, RingViolation> {
        let unreadable = RingViolation::TableUnreadable {
            addr: self.desc.0,
            len: u64::from(self.size) * DESC_SIZE,
        };
        let addr = self
            .slot(index)
            .and_then(|a| a.checked_add(FLAGS_OFFSET))
            .ok_or(unreadable)?;
        mem.load::<u16>(addr, Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| unreadable)
    }

    /// Whether the descriptor at the device's avail position is available.
    pub fn has_avail(&self, mem: &GuestMem) -> bool {
        self.size > 0
            && self
                .flags(mem, self.avail.index)
                .is_ok_and(|f| avail_state(f, self.avail.wrap) != Avail::No)
    }

    /// Takes the next chain: its buffer id, with its descriptors in `out`
    /// (addr, len, WRITE); `None` when nothing is available. On a violation
    /// nothing is taken.
    pub fn pop(
        &mut self,
        mem: &GuestMem,
        out: &mut Vec<Descriptor>,
    ) -> Result<Option<u16>, RingViolation> {
        out.clear();
        self.chain.clear();
        let size = self.size;
        if size == 0 {
            return Ok(None);
        }
        let first = self.avail;
        let flags = self.flags(mem, first.index)?;
        match avail_state(flags, first.wrap) {
            Avail::No => return Ok(None),
            Avail::Lie => {
                return Err(RingViolation::WrapCounterLie {
                    index: first.index,
                    flags,
                })
            }
            Avail::Yes => {}
        }
        let (mut pos, mut flags) = (first, flags);
        let (mut count, mut bytes) = (0u16, 0u64);
        let id = loop {
            count += 1;
            if count > size {
                return Err(RingViolation::ChainTooLong {
                    head: first.index,
                    table_len: u32::from(size),
                });
            }
            if count > 1 {
                flags = self.flags(mem, pos.index)?;
                if avail_state(flags, pos.wrap) != Avail::Yes {
                    return Err(RingViolation::NotAvailable {
                        index: pos.index,
                        flags,
                    });
                }
            }
            let d = self.read(mem, pos.index)?;
            self.chain.push(RingDesc {
                addr: d.addr,
                len: d.len,
                id: d.id,
                flags,
            });
            if flags & F_INDIRECT != 0 {
                if count > 1 || flags & F_NEXT != 0 {
                    return Err(RingViolation::IndirectMisplaced {
                        index: pos.index,
                        why: if count > 1 {
                            "follows another descriptor of its chain"
                        } else {
                            "has NEXT set"
                        },
                    });
                }
                walk_indirect(mem, d.addr, d.len, out, &mut bytes, first.index)?;
                break d.id;
            }
            bytes += u64::from(d.len);
            if bytes > u64::from(u32::MAX) {
                return Err(RingViolation::ChainTooLong {
                    head: first.index,
                    table_len: u32::from(size),
                });
            }
            out.push(Descriptor::new(d.addr, d.len, flags & F_WRITE, 0));
            if flags & F_NEXT == 0 {
                break d.id;
            }
            pos = pos.advance(1, size);
        };
        let in_flight = self.in_flight;
        // The id table has exactly `size` entries.
        let slot = match self.counts.get_mut(usize::from(id)) {
            Some(slot) if id < size => slot,
            _ => return Err(RingViolation::IdOutOfRange { id, size }),
        };
        if *slot != 0 {
            return Err(RingViolation::IdInUse { id });
        }
        if in_flight + u32::from(count) > u32::from(size) {
            return Err(RingViolation::RingOverrun {
                in_flight,
                chain: count,
                size,
            });
        }
        *slot = count;
        self.in_flight += u32::from(count);
        self.avail = first.advance(count, size);
        Ok(Some(id))
    }

    /// The descriptor at `index` (its flags were read before, with acquire;
    /// the walk goes by those).
    fn read(&self, mem: &GuestMem, index: u16) -> Result<Raw, RingViolation> {
        let addr = self.slot(index).ok_or(RingViolation::TableUnreadable {
            addr: self.desc.0,
            len: DESC_SIZE,
        })?;
        read_raw(mem, addr)
    }

    /// Writes the used descriptor of the chain with buffer id `id`, `len`
    /// bytes written into it, at the device's used position, and moves
    /// that position past the descriptors the chain took.
    pub fn add_used(&mut self, mem: &GuestMem, id: u16, len: u32) -> Result<(), UsedError> {
        let count = match self.counts.get(usize::from(id)) {
            Some(&c) if c > 0 => c,
            _ => return Err(UsedError::NotInFlight { id }),
        };
        let at = self.used;
        let base = self
            .slot(at.index)
            .ok_or(UsedError::Unwritable { addr: self.desc.0 })?;
        let unwritable = UsedError::Unwritable { addr: base.0 };
        let mut flags = if at.wrap { F_AVAIL | F_USED } else { 0 };
        if len > 0 {
            flags |= F_WRITE;
        }
        mem.store(id.to_le(), base.unchecked_add(ID_OFFSET), Ordering::Relaxed)
            .map_err(|_| unwritable)?;
        mem.store(
            len.to_le(),
            base.unchecked_add(LEN_OFFSET),
            Ordering::Relaxed,
        )
        .map_err(|_| unwritable)?;
        // The release store orders id and len before the flags that make
        // the descriptor used (§2.8.21).
        mem.store(
            flags.to_le(),
            base.unchecked_add(FLAGS_OFFSET),
            Ordering::Release,
        )
        .map_err(|_| unwritable)?;
        if let Some(slot) = self.counts.get_mut(usize::from(id)) {
            *slot = 0;
        }
        self.in_flight = self.in_flight.saturating_sub(u32::from(count));
        self.used = at.advance(count, self.size);
        Ok(())
    }
}

/// How a descriptor's AVAIL/USED bits compare to the wrap counter of its
/// position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Avail {
    /// Available: AVAIL equals the counter, USED does not.
    Yes,
    /// Not (yet) available: AVAIL differs from the counter.
    No,
    /// AVAIL and USED both equal the counter: no driver writes that.
    Lie,
}

fn avail_state(flags: u16, wrap: bool) -> Avail {
    let (avail, used) = (flags & F_AVAIL != 0, flags & F_USED != 0);
    match (avail == wrap, used == wrap) {
        (true, false) => Avail::Yes,
        (true, true) => Avail::Lie,
        (false, _) => Avail::No,
    }
}

/// A descriptor's fields other than its flags.
struct Raw {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

fn read_raw(mem: &GuestMem, addr: GuestAddress) -> Result<Raw, RingViolation> {
    let mut b = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut b, addr)
        .map_err(|_| RingViolation::TableUnreadable {
            addr: addr.0,
            len: DESC_SIZE,
        })?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, i0, i1, f0, f1] = b;
    Ok(Raw {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        id: u16::from_le_bytes([i0, i1]),
        flags: u16::from_le_bytes([f0, f1]),
    })
}

/// Reads the indirect table at `addr` of `len` bytes into `out` (§2.8.7:
/// entries in order, only WRITE counts), `bytes` counting the chain's
/// bytes (at most 2^32 - 1).
pub(crate) fn walk_indirect(
    mem: &GuestMem,
    addr: u64,
    len: u32,
    out: &mut Vec<Descriptor>,
    bytes: &mut u64,
    head: u16,
) -> Result<(), RingViolation> {
    let entry = DESC_SIZE as u32;
    if len == 0 || !len.is_multiple_of(entry) || len / entry > MAX_INDIRECT {
        return Err(RingViolation::IndirectBadLength { len });
    }
    let table = GuestAddress(addr);
    if !mem.check_range(table, len as usize, Permissions::Read) {
        return Err(RingViolation::TableUnreadable {
            addr,
            len: u64::from(len),
        });
    }
    for k in 0..len / entry {
        let at = table.unchecked_add(u64::from(k) * DESC_SIZE);
        let d = read_raw(mem, at)?;
        *bytes += u64::from(d.len);
        if *bytes > u64::from(u32::MAX) {
            return Err(RingViolation::ChainTooLong {
                head,
                table_len: len / entry,
            });
        }
        out.push(Descriptor::new(d.addr, d.len, d.flags & F_WRITE, 0));
    }
    Ok(())
}
