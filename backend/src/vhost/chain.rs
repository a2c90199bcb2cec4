//! Turning a descriptor chain into two byte streams (VIRTIO 1.2 §2.7.4-2.7.5).
//!
//! A virtio-scsi request is one chain: device-readable descriptors (request
//! header, then data-out) followed by device-writable ones (response header,
//! then data-in). Headers may be split across descriptors, and that must
//! work. Anything a driver can get wrong is checked here and reported as a
//! [`ChainFault`], never trusted: addresses outside guest memory, a readable
//! descriptor after a writable one, zero-length descriptors are skipped.
//! The ring's own contract (indices, loops, indirect tables) was checked by
//! [`super::ring_guard`], which walked the chain into a list of descriptors.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::dirty::GuestMem;
use super::guest_io::IoVecs;

/// What was wrong with a chain. The request is still completed: with a
/// FAILURE response if the response header is reachable, else with len 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFault {
    /// A descriptor points outside guest memory.
    BadAddress {
        /// Guest-physical address of the descriptor.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one (§2.7.4.2).
    ReadableAfterWritable,
}

/// Splits the chain `descs` into its readable stream `r` and writable stream `w`.
///
/// On a fault the readable stream keeps what came before the bad descriptor
/// and the writable stream what came before a bad writable descriptor, so a
/// FAILURE response can still be written if the writable stream got far enough.
pub fn split_chain(
    descs: &[Descriptor],
    mem: &GuestMem,
    r: &mut IoVecs,
    w: &mut IoVecs,
) -> Result<(), ChainFault> {
    r.clear();
    w.clear();
    let mut fault = None;
    for desc in descs {
        // After a bad readable descriptor, skip the rest of the readable
        // part but keep collecting the writable part, so the FAILURE
        // response can still be written. After a bad writable descriptor
        // the offsets of what follows are unknowable: stop.
        if fault.is_some() && !desc.is_write_only() {
            continue;
        }
        if let Err(e) = add_descriptor(desc, mem, r, w) {
            fault.get_or_insert(e);
            if desc.is_write_only() {
                break;
            }
        }
    }
    fault.map_or(Ok(()), Err)
}

fn add_descriptor(
    desc: &Descriptor,
    mem: &GuestMem,
    r: &mut IoVecs,
    w: &mut IoVecs,
) -> Result<(), ChainFault> {
    let (addr, len) = (desc.addr().0, desc.len());
    if len == 0 {
        return Ok(());
    }
    if !desc.is_write_only() && !w.is_empty() {
        return Err(ChainFault::ReadableAfterWritable);
    }
    let target = if desc.is_write_only() { w } else { r };
    let bad = ChainFault::BadAddress { addr, len };
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(bad);
    }
    // A buffer may in principle cross from one memory region into the next.
    // Each piece keeps its region's dirty log, to mark what the device writes.
    let (mut at, mut left) = (GuestAddress(addr), len as usize);
    while left > 0 {
        let region = mem.find_region(at).ok_or(bad)?;
        let offset = region.to_region_addr(at).ok_or(bad)?;
        let in_region = usize::try_from(region.len() - offset.raw_value()).unwrap_or(usize::MAX);
        let n = left.min(in_region);
        let host = region.get_host_address(offset).map_err(|_| bad)?;
        let log_offset = usize::try_from(offset.raw_value()).map_err(|_| bad)?;
        // The mapping's own bitmap (not the trait's slice of it): the list
        // outlives this borrow, under the worker's guard on the memory.
        target.push(host, n, Some(((**region).bitmap(), log_offset)));
        at = at.unchecked_add(n as u64);
        left -= n;
    }
    Ok(())
}
