//! Event suppression of a packed virtqueue (VIRTIO 1.2 §2.8.10 "Driver and
//! Device Event Suppression", §2.8.14 "Event Suppression Structure Format",
//! §2.8.21.3 "Sending Available Buffer Notifications").
//!
//! Each side owns one 4-byte `struct pvirtq_event_suppress`:
//!
//! | offset | field      | meaning                                          |
//! |--------|------------|--------------------------------------------------|
//! | 0      | `off_wrap` | bits 0-14: descriptor ring offset; bit 15: wrap counter |
//! | 2      | `flags`    | bits 0-1: `ENABLE` (0), `DISABLE` (1), `DESC` (2) |
//!
//! The driver writes the driver event suppression structure (when it wants
//! used-buffer notifications); the device writes the device event
//! suppression structure (when it wants available-buffer notifications,
//! i.e. kicks), which the driver only ever reads.

use crate::ring::split::vring_need_event;

/// `RING_EVENT_FLAGS_ENABLE`: notify on every event (§2.8.14).
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// `RING_EVENT_FLAGS_DISABLE`: do not notify (§2.8.14).
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// `RING_EVENT_FLAGS_DESC`: notify when the descriptor at `off_wrap` is
/// made available / used; only with `VIRTIO_F_EVENT_IDX` (§2.8.14).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;
/// Bit of `off_wrap` holding the wrap counter (§2.8.14).
pub const EVENT_WRAP_BIT: u16 = 1 << 15;

/// An `off_wrap` value: descriptor ring `offset` (below 2^15) and `wrap`
/// counter in bit 15 (§2.8.14).
pub const fn off_wrap(offset: u16, wrap: bool) -> u16 {
    (offset & !EVENT_WRAP_BIT) | if wrap { EVENT_WRAP_BIT } else { 0 }
}

/// Whether the driver must notify the device after making the descriptors
/// of ring positions `[old, new)` available (§2.8.21.3: the driver reads
/// the device event suppression structure
/// after making the descriptors available).
///
/// `flags` and `off_wrap` are what the device wrote in its structure;
/// `new` is the driver's next avail offset (in `0..size`) after the batch,
/// `avail_wrap` its avail wrap counter, and `batch` how many descriptors
/// the batch made available (at most `size`). With `DISABLE` there is no
/// notification; `DESC` counts only when `event_idx` was negotiated (a
/// device may not use it otherwise, so the driver then falls back to a
/// notification, the safe answer); every other value, `ENABLE` or the
/// reserved 3, notifies.
///
/// `DESC` asks for a notification when the descriptor at `off_wrap` is
/// made available. The event offset lies in the current lap when its wrap
/// counter equals the driver's, else in the lap before; shifted into one
/// 16-bit circular index space (a lap back is `- size`), the question is the
/// split ring's: does `event` lie in `[old, new)` ([`vring_need_event`]).
pub fn need_kick(
    flags: u16,
    off_wrap: u16,
    event_idx: bool,
    new: u16,
    avail_wrap: bool,
    batch: u16,
    size: u16,
) -> bool {
    match flags {
        RING_EVENT_FLAGS_DISABLE => false,
        RING_EVENT_FLAGS_DESC if event_idx => {
            let old = new.wrapping_sub(batch);
            let wrap = off_wrap & EVENT_WRAP_BIT != 0;
            let mut event = off_wrap & !EVENT_WRAP_BIT;
            if wrap != avail_wrap {
                event = event.wrapping_sub(size);
            }
            vring_need_event(event, new, old)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_wrap_puts_the_wrap_counter_in_bit_15() {
        assert_eq!(off_wrap(5, false), 5);
        assert_eq!(off_wrap(5, true), 0x8005);
        assert_eq!(off_wrap(0x7fff, true), 0xffff);
        assert_eq!(off_wrap(0, true), 0x8000);
    }

    #[test]
    fn enable_disable_and_reserved_flags() {
        assert!(need_kick(RING_EVENT_FLAGS_ENABLE, 0, true, 1, true, 1, 8));
        assert!(!need_kick(RING_EVENT_FLAGS_DISABLE, 0, true, 1, true, 1, 8));
        assert!(!need_kick(
            RING_EVENT_FLAGS_DISABLE,
            0,
            false,
            1,
            true,
            1,
            8
        ));
        assert!(
            need_kick(3, 0, true, 1, true, 1, 8),
            "reserved value notifies"
        );
        // DESC without EVENT_IDX is a device error: notify anyway.
        assert!(need_kick(
            RING_EVENT_FLAGS_DESC,
            off_wrap(7, true),
            false,
            1,
            true,
            1,
            8
        ));
    }

    #[test]
    fn desc_mode_within_one_lap() {
        let desc = RING_EVENT_FLAGS_DESC;
        // Batch made positions 2, 3, 4 available (new = 5), wrap 1.
        for off in 2..5 {
            assert!(
                need_kick(desc, off_wrap(off, true), true, 5, true, 3, 8),
                "{off}"
            );
        }
        for off in [0, 1, 5, 6, 7] {
            assert!(
                !need_kick(desc, off_wrap(off, true), true, 5, true, 3, 8),
                "{off}"
            );
        }
        // The same offsets with the other wrap counter are a lap away.
        for off in 0..8 {
            assert!(
                !need_kick(desc, off_wrap(off, false), true, 5, true, 3, 8),
                "{off}"
            );
        }
    }

    #[test]
    fn desc_mode_across_the_wrap() {
        let desc = RING_EVENT_FLAGS_DESC;
        // Size 8: the batch made 6, 7 (wrap 1) and 0, 1 (wrap 0) available;
        // after it next avail is 2 with the wrap counter flipped to 0.
        let kicks = |off, wrap| need_kick(desc, off_wrap(off, wrap), true, 2, false, 4, 8);
        assert!(kicks(6, true) && kicks(7, true));
        assert!(kicks(0, false) && kicks(1, false));
        assert!(!kicks(5, true) && !kicks(0, true) && !kicks(1, true));
        assert!(!kicks(2, false) && !kicks(6, false) && !kicks(7, false));
        // A whole ring at once (size 5, not a power of two): every
        // position of the lap just completed asks for the kick.
        for off in 0..5 {
            assert!(need_kick(desc, off_wrap(off, true), true, 0, false, 5, 5));
            assert!(!need_kick(desc, off_wrap(off, false), true, 0, false, 5, 5));
        }
    }

    #[test]
    fn desc_mode_at_the_largest_queue() {
        let desc = RING_EVENT_FLAGS_DESC;
        let size = 32768;
        // Positions 32767 (wrap 0) and 0 (wrap 1): new = 1, avail wrap 1.
        assert!(need_kick(
            desc,
            off_wrap(32767, false),
            true,
            1,
            true,
            2,
            size
        ));
        assert!(need_kick(desc, off_wrap(0, true), true, 1, true, 2, size));
        assert!(!need_kick(desc, off_wrap(1, true), true, 1, true, 2, size));
        assert!(!need_kick(
            desc,
            off_wrap(32766, false),
            true,
            1,
            true,
            2,
            size
        ));
    }
}
