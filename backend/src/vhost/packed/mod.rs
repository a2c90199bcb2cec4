//! The device side of packed virtqueues (VIRTIO 1.2 §2.8), of our own:
//! virtio-queue serves split rings only.
//!
//! - [`ring`]: the descriptor ring: the device's avail and used positions
//!   with their wrap counters (§2.8.1), a chain walked and checked on every
//!   pop (§2.8.6, §2.8.7), used descriptors written id and length first,
//!   flags last (§2.8.21), in the order chains complete.
//! - [`event`]: the two event suppression structures (§2.8.10, §2.8.14):
//!   the driver's read before a used buffer notification, the device's
//!   written to enable or disable available buffer notifications.
//!
//! Both are reached through [`super::device_ring::DeviceRing`], the one
//! interface the queues use for either format.

pub mod event;
pub mod ring;
#[cfg(test)]
mod ring_tests;

/// `VIRTQ_DESC_F_NEXT` (§2.8.6).
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE` (§2.8.3).
pub const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT` (§2.8.7).
pub const F_INDIRECT: u16 = 4;
/// `VIRTQ_DESC_F_AVAIL` (§2.8.1).
pub const F_AVAIL: u16 = 1 << 7;
/// `VIRTQ_DESC_F_USED` (§2.8.1).
pub const F_USED: u16 = 1 << 15;

/// Bytes of one `struct pvirtq_desc` (§2.8.13: addr le64, len le32, id
/// le16, flags le16).
pub const DESC_SIZE: u64 = 16;
/// Offset of `len` in a descriptor.
pub const LEN_OFFSET: u64 = 8;
/// Offset of `id` in a descriptor.
pub const ID_OFFSET: u64 = 12;
/// Offset of `flags` in a descriptor.
pub const FLAGS_OFFSET: u64 = 14;

/// A position in the descriptor ring with the wrap counter that goes with
/// it (§2.8.1: each side's counter starts at 1 and flips every time it
/// passes the last descriptor of the ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Descriptor index, below the queue size.
    pub index: u16,
    /// The ring wrap counter at that index.
    pub wrap: bool,
}

impl Default for Position {
    fn default() -> Self {
        Self::START
    }
}

impl Position {
    /// Where both sides start: index 0, wrap counter 1.
    pub const START: Position = Position {
        index: 0,
        wrap: true,
    };

    /// The vhost-user ring state form (vhost-user "Ring states": bits 0-14
    /// the index, bit 15 the wrap counter).
    pub fn encode(self) -> u16 {
        (self.index & 0x7fff) | (u16::from(self.wrap) << 15)
    }

    /// The position a vhost-user ring state value names.
    pub fn decode(v: u16) -> Self {
        Position {
            index: v & 0x7fff,
            wrap: v & 0x8000 != 0,
        }
    }

    /// This position `n` descriptors further in a ring of `size`.
    pub fn advance(self, n: u16, size: u16) -> Self {
        let mut index = u32::from(self.index) + u32::from(n);
        let mut wrap = self.wrap;
        let size = u32::from(size.max(1));
        while index >= size {
            index -= size;
            wrap = !wrap;
        }
        Position {
            index: index as u16,
            wrap,
        }
    }

    /// The position as a count modulo twice the ring size, starting from
    /// [`Position::START`] at 0: what event-index comparisons work on.
    pub fn linear(self, size: u16) -> u32 {
        u32::from(self.index) + if self.wrap { 0 } else { u32::from(size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_wrap_and_encode_as_vhost_user_says() {
        let p = Position::START;
        assert_eq!(p.encode(), 0x8000);
        assert_eq!(
            Position::decode(0x8005),
            Position {
                index: 5,
                wrap: true
            }
        );
        let q = p.advance(3, 4).advance(2, 4);
        assert_eq!(
            q,
            Position {
                index: 1,
                wrap: false
            }
        );
        assert_eq!(q.encode(), 1);
        assert_eq!(q.linear(4), 5);
        assert_eq!(
            q.advance(3, 4),
            Position {
                index: 0,
                wrap: true
            }
        );
        assert_eq!(
            Position {
                index: 0,
                wrap: true
            }
            .linear(4),
            0
        );
    }
}
