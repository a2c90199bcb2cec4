//! A command's data buffers, between the SCSI target, the storage that
//! fills and drains them, and the transport that owns them.
//!
//! SAM-5 (Execute Command procedure) models a command's data as a Data-In buffer (device to
//! initiator) and a Data-Out buffer (initiator to device). The transport
//! (virtio-scsi: the device-writable and device-readable parts of a
//! descriptor chain) implements these traits; the SCSI layer never sees
//! guest memory. READ and WRITE move data straight between the image file
//! and the buffer with [`DataIn::read_from_file`] / [`DataOut::write_to_file`]
//! (preadv/pwritev in the transport), so there is no bounce buffer.
//!
//! A transport that can run data transfers itself, later (the virtio
//! transport's io_uring engine), says so with [`DataIn::can_defer`] /
//! [`DataOut::can_defer`]; see [`crate::scsi::io`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The Data-In buffer of a command: where the device writes data for the initiator.
pub trait DataIn {
    /// Size of the buffer in bytes.
    fn capacity(&self) -> usize;
    /// Copies `data` at `offset`; bytes past capacity are dropped; returns bytes copied.
    fn write_at(&mut self, offset: usize, data: &[u8]) -> usize;
    /// Reads `len` bytes of `file` at `file_offset` straight into the buffer at `offset`.
    /// Err if `offset + len > capacity`; a short read at end of file is
    /// [`io::ErrorKind::UnexpectedEof`].
    fn read_from_file(
        &mut self,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> io::Result<()>;
    /// Whether every segment of `[offset, offset + len)` starts at an
    /// address and has a length that are multiples of `align` (for
    /// `O_DIRECT`). Defaults to false: buffered I/O is always correct.
    fn is_aligned(&self, _offset: usize, _len: usize, _align: usize) -> bool {
        false
    }
    /// Whether the transport executes a
    /// [`MediumTransfer`](crate::scsi::MediumTransfer) into this
    /// buffer itself, after the command returns.
    fn can_defer(&self) -> bool {
        false
    }
}

/// The Data-Out buffer of a command: data the initiator sends to the device.
pub trait DataOut {
    /// Size of the buffer in bytes.
    fn len(&self) -> usize;
    /// True when the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies bytes at `offset` into `buf`; returns bytes copied (short at the end).
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize;
    /// Writes `len` bytes from the buffer at `offset` into `file` at `file_offset`.
    /// Err if `offset + len > len()`.
    fn write_to_file(
        &self,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> io::Result<()>;
    /// As [`DataIn::is_aligned`].
    fn is_aligned(&self, _offset: usize, _len: usize, _align: usize) -> bool {
        false
    }
    /// As [`DataIn::can_defer`].
    fn can_defer(&self) -> bool {
        false
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "range outside the data buffer")
}

/// A [`DataIn`] over a `Vec` of fixed capacity (tests, and non-virtio users).
#[derive(Debug, Clone, Default)]
pub struct VecDataIn {
    buf: Vec<u8>,
    high_water: usize,
}

impl VecDataIn {
    /// A zero-filled buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            high_water: 0,
        }
    }

    /// The bytes up to the furthest byte written.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.high_water]
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    fn range(&self, offset: usize, len: usize) -> Option<std::ops::Range<usize>> {
        let end = offset.checked_add(len)?;
        (end <= self.buf.len()).then_some(offset..end)
    }
}

impl DataIn for VecDataIn {
    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        let n = self.buf.len().saturating_sub(offset).min(data.len());
        if n > 0 {
            self.buf[offset..offset + n].copy_from_slice(&data[..n]);
            self.high_water = self.high_water.max(offset + n);
        }
        n
    }

    fn read_from_file(
        &mut self,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> io::Result<()> {
        let r = self.range(offset, len).ok_or_else(out_of_range)?;
        let end = r.end;
        file.read_exact_at(&mut self.buf[r], file_offset)?;
        self.high_water = self.high_water.max(end);
        Ok(())
    }
}

/// A [`DataOut`] over a byte slice (tests, and non-virtio users).
#[derive(Debug, Clone, Copy, Default)]
pub struct SliceDataOut<'a>(pub &'a [u8]);

/// An empty Data-Out buffer, for commands that carry none.
pub const NO_DATA_OUT: SliceDataOut<'static> = SliceDataOut(&[]);

impl DataOut for SliceDataOut<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize {
        let src = self.0.get(offset..).unwrap_or(&[]);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        n
    }

    fn write_to_file(
        &self,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        let src = self.0.get(offset..end).ok_or_else(out_of_range)?;
        file.write_all_at(src, file_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_data_in_truncates_and_tracks() {
        let mut d = VecDataIn::new(4);
        assert_eq!(d.write_at(2, &[1, 2, 3]), 2);
        assert_eq!(d.data(), &[0, 0, 1, 2]);
        assert_eq!(d.write_at(9, &[1]), 0);
        let f = tempfile::tempfile().unwrap();
        assert!(d.read_from_file(3, 2, &f, 0).is_err());
        assert_eq!(
            d.read_from_file(0, 2, &f, 0).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn slice_data_out_bounds() {
        let d = SliceDataOut(&[1, 2, 3]);
        let mut b = [0u8; 4];
        assert_eq!(d.read_at(1, &mut b), 2);
        assert_eq!(&b[..2], &[2, 3]);
        assert_eq!(d.read_at(7, &mut b), 0);
        let f = tempfile::tempfile().unwrap();
        assert!(d.write_to_file(2, 2, &f, 0).is_err());
        assert!(d.write_to_file(usize::MAX, 2, &f, 0).is_err());
        d.write_to_file(0, 3, &f, 1).unwrap();
        let mut back = [9u8; 4];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [0, 1, 2, 3]);
    }
}
