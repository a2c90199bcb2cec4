//! Deferred data transfers between the SCSI target and its transport.
//!
//! The buffers themselves are [`crate::buffers`] (re-exported here). A
//! transport that can run data transfers itself, later (the virtio
//! transport's io_uring engine), says so with [`DataIn::can_defer`] /
//! [`DataOut::can_defer`]. READ and WRITE on a logical unit configured for
//! it (`aio=io_uring`) then do every check and return a [`MediumTransfer`]
//! in their [`super::CommandResult`] instead of moving the data; the
//! transport executes it and turns the outcome into the final result with
//! [`super::rw::complete_transfer`].

pub use crate::buffers::{DataIn, DataOut, SliceDataOut, VecDataIn, NO_DATA_OUT};

/// A READ or WRITE data transfer, checked by the SCSI layer and left to the
/// transport to execute (SBC-4 READ/WRITE: `len` bytes between the
/// medium at byte `disk_offset` and the command's data buffer at offset 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediumTransfer {
    /// WRITE (Data-Out to medium) or READ (medium to Data-In).
    pub write: bool,
    /// Byte offset on the medium (LBA × block size).
    pub disk_offset: u64,
    /// Bytes to move (TRANSFER LENGTH × block size), never 0.
    pub len: usize,
    /// The command's first LBA (INFORMATION of an error's sense data).
    pub lba: u64,
    /// A WRITE with FUA, or WCE=0: make it durable (`fdatasync`) before
    /// completing it.
    pub sync: bool,
    /// A READ: the [`super::atomic::AtomicWindow`] epoch it was issued in
    /// (its data is valid only if no atomic write began before it
    /// completed). Unused for a WRITE.
    pub atomic_epoch: u64,
}
