//! Driver-side virtqueues (VIRTIO 1.2 §2.5 "Virtqueues").
//!
//! Two layouts: split (§2.7) in [`split`] and packed (§2.8) in [`packed`].
//! The queue engines hold a [`Virtqueue`] and use it through
//! [`VirtqueueFormat`] ([`virtqueue`], the format seam); the types in this
//! module ([`Segment`], [`RingError`], [`check_chain`]) are format-neutral.
//!
//! Trust model: the device is another process that can write any byte of the
//! shared region. Everything it writes (used ring or used descriptors,
//! `avail_event` or the device event suppression structure, even the
//! descriptors, which it can scribble over) is treated as untrusted input:
//! the ring keeps a private shadow copy of what it published and validates every
//! used element against it. A violation yields a typed [`RingError`] and leaves
//! the ring permanently broken ([`RingError::Broken`]) rather than panicking.

pub mod packed;
pub mod split;
pub mod virtqueue;

pub use packed::{PackedLayout, PackedRing};
pub use split::{RingLayout, RingOptions, SplitRing};
pub use virtqueue::{RingAddresses, RingFormat, Virtqueue, VirtqueueFormat};

/// One buffer of a request, as a guest physical address range (§2.7.5 "The
/// Virtqueue Descriptor Table": `addr`, `len`, `VIRTQ_DESC_F_WRITE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the buffer.
    pub gpa: u64,
    /// Length in bytes; must be non-zero.
    pub len: u32,
    /// `true` for a device-writable buffer (`VIRTQ_DESC_F_WRITE`), `false` for device-readable.
    pub device_writes: bool,
}

impl Segment {
    /// A device-readable (driver → device) buffer.
    pub const fn readable(gpa: u64, len: u32) -> Self {
        Self {
            gpa,
            len,
            device_writes: false,
        }
    }

    /// A device-writable (device → driver) buffer.
    pub const fn writable(gpa: u64, len: u32) -> Self {
        Self {
            gpa,
            len,
            device_writes: true,
        }
    }
}

/// Errors of the driver-side virtqueue.
///
/// The first group are set-up and caller errors; they leave the ring usable.
/// [`BadUsedId`](Self::BadUsedId), [`BadUsedLen`](Self::BadUsedLen) and
/// [`UsedIdxJump`](Self::UsedIdxJump) report a device that broke the protocol;
/// after one of them the ring is broken and every later operation returns
/// [`Broken`](Self::Broken). The device must then be reset (§2.1.2
/// "Device Status Field": `DEVICE_NEEDS_RESET` / driver-initiated reset).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// The queue size is not a power of two in `1..=32768` (§2.7: "Queue Size
    /// value is always a power of 2. The maximum Queue Size value is 32768").
    #[error("invalid queue size {0}: must be a power of two between 1 and 32768")]
    InvalidSize(u16),
    /// The queue size of a packed ring is not in `1..=32768` (§2.8: a packed
    /// ring's size need not be a power of two; the largest is 32768).
    #[error("invalid packed queue size {0}: must be between 1 and 32768")]
    InvalidPackedSize(u16),
    /// Indirect descriptors were requested with a table size of 0.
    #[error("invalid indirect table size {max_indirect} for queue size {size}")]
    InvalidMaxIndirect {
        /// Requested descriptors per indirect table.
        max_indirect: u16,
        /// Queue size.
        size: u16,
    },
    /// The ring base offset is not 16-byte aligned (§2.7: descriptor table alignment 16).
    #[error("ring base offset {0:#x} is not 16-byte aligned")]
    Misaligned(usize),
    /// The shared region cannot hold the ring at the given base.
    #[error("ring needs {needed:#x} bytes at offset {base:#x} but the region is only {region_len:#x} bytes")]
    RegionTooSmall {
        /// Ring base offset.
        base: usize,
        /// Bytes the ring needs.
        needed: usize,
        /// Region length.
        region_len: usize,
    },
    /// A chain must have at least one segment.
    #[error("a descriptor chain needs at least one segment")]
    NoSegments,
    /// A segment has length 0.
    #[error("segment {index} has length 0")]
    ZeroLengthSegment {
        /// Position of the segment in the chain.
        index: usize,
    },
    /// A device-readable segment follows a device-writable one (§2.7.4
    /// "Message Framing" / §2.7.5.2: writable descriptors come after readable ones).
    #[error("segment {index} is device-readable but follows a device-writable segment")]
    ReadableAfterWritable {
        /// Position of the offending segment.
        index: usize,
    },
    /// The chain's total length exceeds 2^32 − 1 bytes (§2.7.5.2: "Drivers MUST
    /// NOT add a descriptor chain longer than 2^32 bytes in total").
    #[error("descriptor chain is longer than 2^32 - 1 bytes")]
    ChainTooLong,
    /// More segments than the queue size (§2.7.5.2: a chain must not be longer than the Queue Size).
    #[error("{segments} segments exceed the limit of {max} per chain")]
    TooManySegments {
        /// Requested segments.
        segments: usize,
        /// Maximum segments per chain.
        max: usize,
    },
    /// Not enough free descriptors right now; retry after popping used buffers.
    #[error("virtqueue full: {needed} descriptors needed, {free} free")]
    Full {
        /// Descriptors the chain needs.
        needed: u16,
        /// Descriptors currently free.
        free: u16,
    },
    /// The device returned a used element whose id is not the head of a chain
    /// that is in flight (published and not yet returned) (§2.7.8: `id` "indicates
    /// the head entry of the descriptor chain describing the buffer"); on a
    /// packed ring the buffer id of a published buffer in flight, §2.8.14).
    #[error(
        "device returned used id {id}, which is not an in-flight chain head (queue size {size})"
    )]
    BadUsedId {
        /// The id the device wrote.
        id: u32,
        /// Queue size.
        size: u16,
    },
    /// The device claims to have written more bytes than the chain's writable
    /// buffers hold (§2.7.8.1: the device "MUST NOT set len to a value greater
    /// than the total size of the descriptors" it may write; the same bound
    /// on a packed ring's used descriptor).
    #[error(
        "device returned len {len} for chain {id}, which has only {writable} device-writable bytes"
    )]
    BadUsedLen {
        /// Chain head.
        id: u16,
        /// The length the device wrote.
        len: u32,
        /// Device-writable bytes of that chain.
        writable: u32,
    },
    /// `used->idx` advanced by more entries than there are chains outstanding.
    #[error("device moved used idx from {last_used} to {used_idx} with only {outstanding} chains outstanding")]
    UsedIdxJump {
        /// Our last consumed used index.
        last_used: u16,
        /// The index the device wrote.
        used_idx: u16,
        /// Chains published and not yet returned.
        outstanding: u16,
    },
    /// An earlier device protocol violation broke the ring; reset the device.
    #[error("virtqueue is broken after a device protocol violation; the device must be reset")]
    Broken,
}

/// Checks a chain the driver is about to add, whatever the format: at least
/// one segment, at most `max` segments, no empty segment, device-readable
/// segments before device-writable ones (§2.7.4 / §2.8 "Message Framing"),
/// at most 2^32 - 1 bytes in all. Returns the device-writable bytes, the
/// bound for the used length the device may report.
pub fn check_chain(segments: &[Segment], max: usize) -> Result<u32, RingError> {
    let n = segments.len();
    if n == 0 {
        return Err(RingError::NoSegments);
    }
    if n > max {
        return Err(RingError::TooManySegments { segments: n, max });
    }
    let mut total: u32 = 0;
    let mut writable: u32 = 0;
    let mut seen_writable = false;
    for (index, seg) in segments.iter().enumerate() {
        if seg.len == 0 {
            return Err(RingError::ZeroLengthSegment { index });
        }
        total = total.checked_add(seg.len).ok_or(RingError::ChainTooLong)?;
        if seg.device_writes {
            seen_writable = true;
            // Cannot overflow: writable <= total, which was just checked.
            writable += seg.len;
        } else if seen_writable {
            return Err(RingError::ReadableAfterWritable { index });
        }
    }
    Ok(writable)
}

impl RingError {
    /// `true` for the errors that mean the device broke the protocol (and the ring is now broken).
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Self::BadUsedId { .. }
                | Self::BadUsedLen { .. }
                | Self::UsedIdxJump { .. }
                | Self::Broken
        )
    }
}
