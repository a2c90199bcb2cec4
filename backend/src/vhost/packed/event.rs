//! The event suppression structures of a packed ring (VIRTIO 1.2 §2.8.10,
//! §2.8.14): `struct pvirtq_event_suppress { le16 desc; le16 flags; }`,
//! `desc` the offset (bits 0-14) and wrap counter (bit 15) of one
//! descriptor, `flags` ENABLE (0), DISABLE (1) or DESC (2, only with
//! VIRTIO_F_RING_EVENT_IDX).
//!
//! The driver's structure (Driver Area) is read here before every used
//! buffer notification: ENABLE notifies, DISABLE does not, DESC notifies
//! when the descriptor it names was among those the device used since the
//! last check. The reserved value 3, and DESC without EVENT_IDX, notify:
//! a notification too many costs the driver a wake-up, one too few a hang.
//!
//! The device's structure (Device Area) is written here: DISABLE while the
//! device is working through the ring, and when it goes back to sleep
//! ENABLE, or with EVENT_IDX DESC naming its next avail position (the
//! descriptor whose making available wakes it).

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, Bytes, GuestAddress};

use super::Position;
use crate::vhost::dirty::GuestMem;

/// `RING_EVENT_FLAGS_ENABLE`.
pub const FLAGS_ENABLE: u16 = 0;
/// `RING_EVENT_FLAGS_DISABLE`.
pub const FLAGS_DISABLE: u16 = 1;
/// `RING_EVENT_FLAGS_DESC`.
pub const FLAGS_DESC: u16 = 2;

/// Whether the driver wants a used buffer notification now: its structure
/// at `driver_area` read against the device's used position `new` (in a
/// ring of `size`) and the used position of the last check, `*last`
/// (updated; `None`: nothing checked since the ring started, which counts
/// as the position the ring started at, `start`).
pub fn driver_wants_call(
    mem: &GuestMem,
    driver_area: GuestAddress,
    size: u16,
    event_idx: bool,
    new: Position,
    last: &mut Option<Position>,
    start: Position,
) -> bool {
    let old = last.replace(new).unwrap_or(start);
    // Our used descriptors are visible before the driver's structure is read.
    fence(Ordering::SeqCst);
    let Some(flags_addr) = driver_area.checked_add(2) else {
        return true;
    };
    let flags = match mem.load::<u16>(flags_addr, Ordering::Relaxed) {
        Ok(f) => u16::from_le(f) & 3,
        Err(_) => return true,
    };
    match flags {
        FLAGS_DISABLE => false,
        FLAGS_DESC if event_idx => {
            let Ok(desc) = mem.load::<u16>(driver_area, Ordering::Relaxed) else {
                return true;
            };
            let event = Position::decode(u16::from_le(desc));
            if event.index >= size {
                return true;
            }
            need_event(
                event.linear(size),
                new.linear(size),
                old.linear(size),
                2 * u32::from(size),
            )
        }
        _ => true,
    }
}

/// §2.7.10's `vring_need_event` on positions counted modulo `m` (twice the
/// ring size for a packed ring): whether `event` is in `[old, new)`.
pub fn need_event(event: u32, new: u32, old: u32, m: u32) -> bool {
    let m = m.max(1);
    (new + m - event + m - 1) % m < (new + m - old) % m
}

/// Asks the driver for no available buffer notifications (DISABLE).
pub fn disable(
    mem: &GuestMem,
    device_area: GuestAddress,
) -> Result<(), vm_memory::GuestMemoryError> {
    let flags =
        device_area
            .checked_add(2)
            .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(
                device_area,
            ))?;
    mem.store(FLAGS_DISABLE.to_le(), flags, Ordering::Release)
}

/// Asks the driver for available buffer notifications again: ENABLE, or
/// with EVENT_IDX DESC at `next` (the device's next avail position).
pub fn enable(
    mem: &GuestMem,
    device_area: GuestAddress,
    event_idx: bool,
    next: Position,
) -> Result<(), vm_memory::GuestMemoryError> {
    let flags =
        device_area
            .checked_add(2)
            .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(
                device_area,
            ))?;
    if event_idx {
        mem.store(next.encode().to_le(), device_area, Ordering::Relaxed)?;
        mem.store(FLAGS_DESC.to_le(), flags, Ordering::Release)
    } else {
        mem.store(FLAGS_ENABLE.to_le(), flags, Ordering::Release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_is_the_range_the_device_just_used() {
        let m = 32;
        // Used 3..7: an event at 3..=6 was passed, 7 not yet, 2 earlier.
        for e in 3..7 {
            assert!(need_event(e, 7, 3, m), "{e}");
        }
        assert!(!need_event(7, 7, 3, m));
        assert!(!need_event(2, 7, 3, m));
        // Across the end of the count (30 -> 2).
        assert!(need_event(31, 2, 30, m));
        assert!(need_event(0, 2, 30, m));
        assert!(!need_event(2, 2, 30, m));
        assert!(!need_event(5, 5, 5, m), "nothing used");
    }
}
