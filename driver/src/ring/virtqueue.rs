//! The ring-format seam: [`VirtqueueFormat`], what the queue engines need
//! from a virtqueue whatever its layout, and [`Virtqueue`], the formats the
//! driver can set up (VIRTIO 1.2 §2.7 split, §2.8 packed).

use std::sync::Arc;

use super::packed::PackedRing;
use super::split::{RingOptions, SplitRing};
use super::{RingError, Segment};
use crate::memory::SharedMemory;

/// What vhost-user needs to hand a ring to the device (vhost-user spec
/// "Ring addresses" and "Ring states"): SET_VRING_NUM, SET_VRING_ADDR and
/// SET_VRING_BASE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddresses {
    /// Queue size (SET_VRING_NUM).
    pub size: u16,
    /// Frontend virtual address of the descriptor area: the split
    /// descriptor table, or the packed descriptor ring.
    pub desc: u64,
    /// Frontend virtual address of the driver area: the split available
    /// ring, or the packed driver event suppression structure.
    pub driver_area: u64,
    /// Frontend virtual address of the device area: the split used ring,
    /// or the packed device event suppression structure.
    pub device_area: u64,
    /// The SET_VRING_BASE value: the next available index; a packed ring
    /// carries its wrap counter in bit 15.
    pub base: u16,
}

/// The operations a virtqueue format provides to the queue engines (the
/// driver side of §2.7 / §2.8), in the shape of libblkio's
/// `VirtqueueFormat`. Every format keeps its own trusted shadow of what it
/// published and validates what the device returns (see [`super`]).
pub trait VirtqueueFormat {
    /// Adds one chain (device-readable segments first) and returns its id,
    /// the token [`pop_used`](Self::pop_used) gives back; not visible to
    /// the device before [`publish`](Self::publish).
    fn add(&mut self, segments: &[Segment]) -> Result<u16, RingError>;
    /// Makes every added chain visible to the device; `true` if the device
    /// asked to be notified (kicked).
    fn publish(&mut self) -> bool;
    /// One chain the device returned and the bytes it wrote, validated.
    fn pop_used(&mut self) -> Result<Option<(u16, u32)>, RingError>;
    /// The device returned chains not yet popped (or the ring is broken).
    fn has_used(&self) -> bool;
    /// Asks for used-buffer notifications; `true` if chains are already
    /// pending (poll again instead of sleeping).
    fn enable_interrupts(&mut self) -> bool;
    /// Tells the device notifications are not needed (a hint).
    fn disable_interrupts(&mut self);
    /// Zeroes the ring and forgets everything in flight (after the device
    /// stopped it with GET_VRING_BASE).
    fn reset(&mut self) -> Result<(), RingError>;
    /// Queue size.
    fn size(&self) -> u16;
    /// Chains added and not yet popped.
    fn in_flight(&self) -> u16;
    /// A device protocol violation broke the ring.
    fn is_broken(&self) -> bool;
    /// What SET_VRING_NUM / ADDR / BASE carry for this ring.
    fn addresses(&self) -> RingAddresses;
}

/// The virtqueue formats the driver can set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingFormat {
    /// Split virtqueues (§2.7).
    #[default]
    Split,
    /// Packed virtqueues (§2.8, `VIRTIO_F_RING_PACKED`).
    Packed,
}

impl RingFormat {
    /// Bytes a ring of `size` entries (and `max_indirect`-descriptor
    /// indirect tables) takes in the shared region; the ring's base must be
    /// 16-byte aligned.
    pub fn ring_bytes(self, size: u16, max_indirect: u16) -> usize {
        match self {
            RingFormat::Split => SplitRing::layout(size, max_indirect).total,
            RingFormat::Packed => PackedRing::layout(size, max_indirect).total,
        }
    }
}

/// One virtqueue of any [`RingFormat`]: what the queue engines hold. Static
/// dispatch (one `match` per operation), no allocation.
#[derive(Debug)]
pub enum Virtqueue {
    /// A split ring.
    Split(SplitRing),
    /// A packed ring.
    Packed(PackedRing),
}

impl Virtqueue {
    /// Sets up a ring of `format` with `size` entries at `base` of `mem`
    /// (see [`SplitRing::new`], [`PackedRing::new`]).
    pub fn new(
        format: RingFormat,
        mem: Arc<SharedMemory>,
        base: usize,
        size: u16,
        opts: RingOptions,
    ) -> Result<Self, RingError> {
        Ok(match format {
            RingFormat::Split => Virtqueue::Split(SplitRing::new(mem, base, size, opts)?),
            RingFormat::Packed => Virtqueue::Packed(PackedRing::new(mem, base, size, opts)?),
        })
    }

    /// The format of this ring.
    pub fn format(&self) -> RingFormat {
        match self {
            Virtqueue::Split(_) => RingFormat::Split,
            Virtqueue::Packed(_) => RingFormat::Packed,
        }
    }
}

/// Forwards one [`VirtqueueFormat`] call to the ring behind a [`Virtqueue`].
macro_rules! dispatch {
    ($self:expr, $ring:ident => $call:expr) => {
        match $self {
            Virtqueue::Split($ring) => $call,
            Virtqueue::Packed($ring) => $call,
        }
    };
}

impl VirtqueueFormat for Virtqueue {
    fn add(&mut self, segments: &[Segment]) -> Result<u16, RingError> {
        dispatch!(self, r => r.add(segments))
    }
    fn publish(&mut self) -> bool {
        dispatch!(self, r => r.publish())
    }
    fn pop_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        dispatch!(self, r => r.pop_used())
    }
    fn has_used(&self) -> bool {
        dispatch!(self, r => r.has_used())
    }
    fn enable_interrupts(&mut self) -> bool {
        dispatch!(self, r => r.enable_interrupts())
    }
    fn disable_interrupts(&mut self) {
        dispatch!(self, r => r.disable_interrupts())
    }
    fn reset(&mut self) -> Result<(), RingError> {
        dispatch!(self, r => r.reset())
    }
    fn size(&self) -> u16 {
        dispatch!(self, r => r.size())
    }
    fn in_flight(&self) -> u16 {
        dispatch!(self, r => r.in_flight())
    }
    fn is_broken(&self) -> bool {
        dispatch!(self, r => r.is_broken())
    }
    fn addresses(&self) -> RingAddresses {
        dispatch!(self, r => VirtqueueFormat::addresses(r))
    }
}

impl VirtqueueFormat for SplitRing {
    fn add(&mut self, segments: &[Segment]) -> Result<u16, RingError> {
        SplitRing::add(self, segments)
    }
    fn publish(&mut self) -> bool {
        SplitRing::publish(self)
    }
    fn pop_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        SplitRing::pop_used(self)
    }
    fn has_used(&self) -> bool {
        SplitRing::has_used(self)
    }
    fn enable_interrupts(&mut self) -> bool {
        SplitRing::enable_interrupts(self)
    }
    fn disable_interrupts(&mut self) {
        SplitRing::disable_interrupts(self)
    }
    fn reset(&mut self) -> Result<(), RingError> {
        SplitRing::reset(self)
    }
    fn size(&self) -> u16 {
        SplitRing::size(self)
    }
    fn in_flight(&self) -> u16 {
        SplitRing::in_flight(self)
    }
    fn is_broken(&self) -> bool {
        SplitRing::is_broken(self)
    }
    /// §2.7: descriptor table, available ring, used ring; the base is the
    /// next available index (0 on a new or reset ring).
    fn addresses(&self) -> RingAddresses {
        RingAddresses {
            size: self.size(),
            desc: self.desc_va(),
            driver_area: self.avail_va(),
            device_area: self.used_va(),
            base: self.next_avail_idx(),
        }
    }
}

impl VirtqueueFormat for PackedRing {
    fn add(&mut self, segments: &[Segment]) -> Result<u16, RingError> {
        PackedRing::add(self, segments)
    }
    fn publish(&mut self) -> bool {
        PackedRing::publish(self)
    }
    fn pop_used(&mut self) -> Result<Option<(u16, u32)>, RingError> {
        PackedRing::pop_used(self)
    }
    fn has_used(&self) -> bool {
        PackedRing::has_used(self)
    }
    fn enable_interrupts(&mut self) -> bool {
        PackedRing::enable_interrupts(self)
    }
    fn disable_interrupts(&mut self) {
        PackedRing::disable_interrupts(self)
    }
    fn reset(&mut self) -> Result<(), RingError> {
        PackedRing::reset(self)
    }
    fn size(&self) -> u16 {
        PackedRing::size(self)
    }
    fn in_flight(&self) -> u16 {
        PackedRing::in_flight(self)
    }
    fn is_broken(&self) -> bool {
        PackedRing::is_broken(self)
    }
    /// §2.8 and the vhost-user spec: descriptor ring, driver event
    /// suppression, device event suppression; the base is the next avail
    /// position with the avail wrap counter in bit 15 (0x8000 on a new or
    /// reset ring).
    fn addresses(&self) -> RingAddresses {
        RingAddresses {
            size: self.size(),
            desc: self.desc_va(),
            driver_area: self.driver_event_va(),
            device_area: self.device_event_va(),
            base: self.vring_base(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_addresses_are_the_split_parts() {
        let mem = Arc::new(SharedMemory::new("vscsi-test-vq", 1 << 16).unwrap());
        let opts = RingOptions::default();
        let vq = Virtqueue::new(RingFormat::Split, mem.clone(), 4096, 8, opts).unwrap();
        let split = SplitRing::new(mem.clone(), 4096, 8, opts).unwrap();
        assert_eq!(vq.format(), RingFormat::Split);
        let a = vq.addresses();
        assert_eq!(a.size, 8);
        assert_eq!(a.desc, mem.host_va(4096));
        assert_eq!(a.driver_area, split.avail_va());
        assert_eq!(a.device_area, split.used_va());
        assert_eq!(a.base, 0);
        assert_eq!(
            RingFormat::Split.ring_bytes(8, 4),
            SplitRing::layout(8, 4).total
        );
    }

    #[test]
    fn virtqueue_forwards_to_its_ring() {
        let mem = Arc::new(SharedMemory::new("vscsi-test-vq2", 1 << 16).unwrap());
        let mut vq =
            Virtqueue::new(RingFormat::Split, mem.clone(), 0, 4, RingOptions::default()).unwrap();
        let id = vq.add(&[Segment::readable(0x8000, 16)]).unwrap();
        assert_eq!(vq.in_flight(), 1);
        assert!(vq.publish(), "no NO_NOTIFY flag: the device wants a kick");
        assert_eq!(vq.addresses().base, 1, "next avail index after one chain");
        assert!(!vq.has_used());
        // The device returns it: used element {id, 0}, then used->idx = 1.
        let used = SplitRing::layout(4, 0).used;
        mem.write(used + 4, &u32::from(id).to_le_bytes()).unwrap();
        mem.write(used + 2, &1u16.to_le_bytes()).unwrap();
        assert!(vq.has_used());
        assert_eq!(vq.pop_used().unwrap(), Some((id, 0)));
        assert!(!vq.enable_interrupts());
        vq.reset().unwrap();
        assert_eq!(vq.in_flight(), 0);
        assert!(!vq.is_broken());
        assert_eq!(vq.size(), 4);
    }

    #[test]
    fn packed_addresses_are_the_packed_parts() {
        let mem = Arc::new(SharedMemory::new("vscsi-test-vq3", 1 << 16).unwrap());
        let opts = RingOptions::default();
        let mut vq = Virtqueue::new(RingFormat::Packed, mem.clone(), 4096, 8, opts).unwrap();
        assert_eq!(vq.format(), RingFormat::Packed);
        let a = vq.addresses();
        assert_eq!(a.size, 8);
        assert_eq!(a.desc, mem.host_va(4096));
        assert_eq!(a.driver_area, mem.host_va(4096 + 8 * 16));
        assert_eq!(a.device_area, mem.host_va(4096 + 8 * 16 + 4));
        assert_eq!(a.base, 0x8000, "position 0, avail wrap counter 1");
        assert_eq!(
            RingFormat::Packed.ring_bytes(8, 4),
            PackedRing::layout(8, 4).total
        );
        for _ in 0..8 {
            vq.add(&[Segment::readable(0x8000, 16)]).unwrap();
        }
        assert!(vq.publish());
        assert_eq!(vq.addresses().base, 0, "position 0 again, wrap counter 0");
        assert_eq!(vq.in_flight(), 8);
        vq.reset().unwrap();
        assert_eq!(vq.addresses().base, 0x8000);
        assert_eq!(vq.in_flight(), 0);
    }
}
