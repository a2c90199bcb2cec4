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
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;

/// Bytes a default [`DataIn::recv_from`] / [`DataOut::send_to`] moves per
/// call through a stack buffer (transports override them with `readv` /
/// `writev` straight into their buffers).
const STREAM_CHUNK: usize = 4096;

/// One `read(2)` from a stream socket.
fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes for the
    // whole call; `fd` is a borrowed open descriptor.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `write(2)` to a stream socket.
fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid readable buffer of `buf.len()` bytes for the
    // whole call; `fd` is a borrowed open descriptor.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

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
    /// Receives at most `len` bytes from the stream socket `fd` into the
    /// buffer at `offset` with one read (a network block device's reply
    /// data); returns the bytes received, 0 at the end of the stream. Err
    /// if `offset + len > capacity`.
    fn recv_from(&mut self, offset: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<usize> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.capacity())
        {
            return Err(out_of_range());
        }
        let mut buf = [0u8; STREAM_CHUNK];
        let n = read_fd(fd, &mut buf[..len.min(STREAM_CHUNK)])?;
        Ok(self.write_at(offset, &buf[..n]))
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
    /// Sends at most `len` bytes of the buffer from `offset` on the stream
    /// socket `fd` with one write; returns the bytes sent. Err if
    /// `offset + len > len()`.
    fn send_to(&self, offset: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<usize> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(out_of_range());
        }
        let mut buf = [0u8; STREAM_CHUNK];
        let n = self.read_at(offset, &mut buf[..len.min(STREAM_CHUNK)]);
        write_fd(fd, &buf[..n])
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
    fn default_stream_methods_move_bytes_and_check_bounds() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(&[7, 8, 9]).unwrap();
        let mut d = VecDataIn::new(8);
        assert_eq!(d.recv_from(2, 3, b.as_fd()).unwrap(), 3);
        assert_eq!(d.data(), &[0, 0, 7, 8, 9]);
        assert!(d.recv_from(6, 3, b.as_fd()).is_err());
        let out = SliceDataOut(&[1, 2, 3, 4]);
        assert_eq!(out.send_to(1, 3, b.as_fd()).unwrap(), 3);
        let mut got = [0u8; 3];
        a.read_exact(&mut got).unwrap();
        assert_eq!(got, [2, 3, 4]);
        assert!(out.send_to(2, 3, b.as_fd()).is_err());
    }

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
