//! Data buffers of one request as host iovecs into guest memory, and the
//! SCSI layer's [`DataIn`] / [`DataOut`] over them.
//!
//! The device-readable and device-writable descriptors of a chain are
//! translated once into `iovec`s pointing into the mapped guest memory, so
//! READ and WRITE move data with `preadv`/`pwritev` straight between the
//! image and the guest's buffers: no bounce buffer. The vectors are owned by
//! the queue worker and reused from one request to the next, so the steady
//! state allocates nothing.
//!
//! Each segment also remembers its region's dirty log and its offset in
//! the region: whatever writes guest memory through the list (a copy, a
//! `preadv`/`readv`, an io_uring READV when it completes) marks the bytes
//! it wrote with [`IoVecs::mark_written`] ([`super::dirty`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::dirty::DirtyBitmap;
use crate::scsi::{DataIn, DataOut};
use vm_memory::bitmap::Bitmap;

/// How many iovecs one `preadv`/`pwritev` call takes from the stack at most.
const IOV_BATCH: usize = 64;

/// A list of host buffers (a byte stream cut into segments) inside guest memory.
///
/// Invariant: every `(iov_base, iov_len)` lies inside the guest memory mapping
/// that the worker holds a guard on for as long as the list is in use, and
/// every non-null `logs[i].bitmap` is the bitmap of the region segment `i`
/// lies in, owned by that same mapping; the worker clears the list before
/// it releases the guard.
#[derive(Default)]
pub struct IoVecs {
    iov: Vec<libc::iovec>,
    /// Where each segment is logged (same index as `iov`).
    logs: Vec<SegmentLog>,
    len: usize,
}

/// The dirty log of one segment: its region's bitmap (null: not logged,
/// memory that is not guest memory) and the segment's offset in the region.
#[derive(Clone, Copy)]
struct SegmentLog {
    bitmap: *const DirtyBitmap,
    offset: usize,
}

// SAFETY: the raw pointers refer to the shared guest memory mapping, which is
// valid for every thread of the process; the list is only used by the queue
// worker that owns it.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Forget all segments (keeps the allocation).
    pub fn clear(&mut self) {
        self.iov.clear();
        self.logs.clear();
        self.len = 0;
    }

    /// Appends a segment. `ptr..ptr+len` must lie in guest memory (see the
    /// type's invariant), at `log.1` in the region whose bitmap is `log.0`
    /// (`None`: writes to it are not logged).
    pub fn push(&mut self, ptr: *mut u8, len: usize, log: Option<(&DirtyBitmap, usize)>) {
        if len == 0 {
            return;
        }
        self.iov.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        });
        self.logs.push(match log {
            Some((bitmap, offset)) => SegmentLog { bitmap, offset },
            None => SegmentLog {
                bitmap: std::ptr::null(),
                offset: 0,
            },
        });
        self.len += len;
    }

    /// Marks `[offset, offset + len)` of the stream dirty in the logs of
    /// the regions it lies in: called after the device wrote those bytes.
    /// Costs an atomic load per segment while no log is in place.
    pub fn mark_written(&self, offset: usize, len: usize) {
        self.walk(offset, len, |i, at, n| {
            let log = &self.logs[i];
            // SAFETY: a non-null bitmap belongs to the guest memory mapping
            // the worker holds a guard on while the list is in use (type
            // invariant), so it is alive.
            if let Some(bitmap) = unsafe { log.bitmap.as_ref() } {
                bitmap.mark_dirty(log.offset + at, n);
            }
        });
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with each piece of `[offset, offset + len)` as `(segment
    /// index, offset in the segment, length)`.
    fn walk(&self, mut offset: usize, mut len: usize, mut f: impl FnMut(usize, usize, usize)) {
        for (i, v) in self.iov.iter().enumerate() {
            if len == 0 {
                break;
            }
            if offset >= v.iov_len {
                offset -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - offset).min(len);
            f(i, offset, n);
            offset = 0;
            len -= n;
        }
    }

    /// Calls `f` with each piece of `[offset, offset + len)` as `(ptr, len)`.
    fn pieces(&self, offset: usize, len: usize, mut f: impl FnMut(*mut u8, usize)) {
        self.walk(offset, len, |i, at, n| {
            // The pointer arithmetic stays inside the segment: at < iov_len.
            f(self.iov[i].iov_base.cast::<u8>().wrapping_add(at), n)
        });
    }

    /// Whether every piece of `[offset, offset + len)` starts at an address
    /// and has a length that are multiples of `align` (`O_DIRECT`), and the
    /// range is inside the stream.
    pub fn is_aligned(&self, offset: usize, len: usize, align: usize) -> bool {
        if align == 0 || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return false;
        }
        let mut ok = true;
        self.pieces(offset, len, |ptr, n| {
            ok &= (ptr as usize).is_multiple_of(align) && n.is_multiple_of(align);
        });
        ok
    }

    /// Replaces `out` with the pieces of `[offset, offset + len)` (the
    /// data part of a chain, for an io_uring READV/WRITEV); keeps `out`'s
    /// allocation. Returns false (and leaves `out` empty) when the range
    /// is not inside the stream.
    pub fn segments(&self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) -> bool {
        out.clear();
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return false;
        }
        self.pieces(offset, len, |ptr, n| {
            out.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: n,
            })
        });
        true
    }

    /// Copies `data` into the stream at `offset`, truncated at the end; returns bytes copied.
    pub fn copy_in(&self, offset: usize, data: &[u8]) -> usize {
        let n = data.len().min(self.len.saturating_sub(offset));
        let mut done = 0;
        self.pieces(offset, n, |ptr, len| {
            // The pieces add up to `n <= data.len()`, so `data[done..done+len]`
            // is in bounds; the regions cannot overlap (ours and the guest's).
            // SAFETY: `ptr..ptr+len` is inside a segment of guest memory (type
            // invariant) and the source range is in bounds (above).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(done), ptr, len) };
            done += len;
        });
        self.mark_written(offset, n);
        n
    }

    /// Copies from the stream at `offset` into `out`, truncated at the end; returns bytes copied.
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len.saturating_sub(offset));
        let mut done = 0;
        self.pieces(offset, n, |ptr, len| {
            // SAFETY: as in `copy_in`, with the roles of the buffers swapped.
            unsafe { std::ptr::copy_nonoverlapping(ptr, out.as_mut_ptr().add(done), len) };
            done += len;
        });
        n
    }

    /// Runs `op` (a `preadv` or `pwritev`) over `[offset, offset + len)` of
    /// the stream and `file_offset` of the file until every byte moved,
    /// batching up to [`IOV_BATCH`] segments per call.
    fn transfer(
        &self,
        (offset, len): (usize, usize),
        file_offset: u64,
        writes_guest: bool,
        op: impl Fn(&[libc::iovec], u64) -> io::Result<usize>,
    ) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range past the data buffer",
            ));
        }
        let (mut offset, mut left, mut file_offset) = (offset, len, file_offset);
        while left > 0 {
            let mut batch = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_BATCH];
            let mut count = 0;
            let mut want = 0;
            self.pieces(offset, left, |ptr, n| {
                if count < IOV_BATCH {
                    batch[count] = libc::iovec {
                        iov_base: ptr.cast(),
                        iov_len: n,
                    };
                    count += 1;
                    want += n;
                }
            });
            let done = op(&batch[..count], file_offset)?;
            if done == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let done = done.min(want);
            if writes_guest {
                self.mark_written(offset, done);
            }
            offset += done;
            left -= done;
            file_offset += done as u64;
        }
        Ok(())
    }
}

impl IoVecs {
    /// One vector call `op` (a `readv` or `writev` on a stream) over the
    /// first [`IOV_BATCH`] pieces of `[offset, offset + len)`; returns what
    /// it returned (bytes moved), marked dirty when `writes_guest`.
    fn once(
        &self,
        (offset, len): (usize, usize),
        writes_guest: bool,
        op: impl Fn(&[libc::iovec]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range past the data buffer",
            ));
        }
        let mut batch = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_BATCH];
        let mut count = 0;
        self.pieces(offset, len, |ptr, n| {
            if count < IOV_BATCH {
                batch[count] = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: n,
                };
                count += 1;
            }
        });
        let done = op(&batch[..count])?;
        if writes_guest {
            self.mark_written(offset, done.min(len));
        }
        Ok(done)
    }
}

fn readv(fd: BorrowedFd<'_>, iov: &[libc::iovec]) -> io::Result<usize> {
    let (fd, n) = (fd.as_raw_fd(), iov.len() as libc::c_int);
    // SAFETY: every iovec points into mapped guest memory (IoVecs
    // invariant) that the kernel may write; the count matches the slice.
    retry_eintr(|| unsafe { libc::readv(fd, iov.as_ptr(), n) })
}

fn writev(fd: BorrowedFd<'_>, iov: &[libc::iovec]) -> io::Result<usize> {
    let (fd, n) = (fd.as_raw_fd(), iov.len() as libc::c_int);
    // SAFETY: every iovec points into mapped guest memory (IoVecs
    // invariant) that the kernel only reads; the count matches the slice.
    retry_eintr(|| unsafe { libc::writev(fd, iov.as_ptr(), n) })
}

/// Runs a positional vector I/O call until it is not interrupted by a signal.
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn preadv(file: &File, iov: &[libc::iovec], offset: u64) -> io::Result<usize> {
    let (fd, n) = (file.as_raw_fd(), iov.len() as libc::c_int);
    // SAFETY: every iovec points into mapped guest memory (IoVecs
    // invariant) that the kernel may write; the count matches the slice.
    retry_eintr(|| unsafe { libc::preadv(fd, iov.as_ptr(), n, offset as libc::off_t) })
}

fn pwritev(file: &File, iov: &[libc::iovec], offset: u64) -> io::Result<usize> {
    let (fd, n) = (file.as_raw_fd(), iov.len() as libc::c_int);
    // SAFETY: every iovec points into mapped guest memory (IoVecs
    // invariant) that the kernel only reads; the count matches the slice.
    retry_eintr(|| unsafe { libc::pwritev(fd, iov.as_ptr(), n, offset as libc::off_t) })
}

/// The data-in part of a request: device-writable bytes after the response header.
pub struct GuestDataIn<'a> {
    /// The whole writable stream of the chain.
    pub iov: &'a IoVecs,
    /// Where data-in starts in it (after `virtio_scsi_cmd_resp`).
    pub base: usize,
    /// The queue has an io_uring engine with room: READ may leave its
    /// transfer to it ([`DataIn::can_defer`]).
    pub defer: bool,
}

impl DataIn for GuestDataIn<'_> {
    fn capacity(&self) -> usize {
        self.iov.len().saturating_sub(self.base)
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        self.iov.copy_in(self.base + offset, data)
    }

    fn read_from_file(
        &mut self,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> io::Result<()> {
        self.iov
            .transfer((self.base + offset, len), file_offset, true, |iov, off| {
                preadv(file, iov, off)
            })
    }

    fn is_aligned(&self, offset: usize, len: usize, align: usize) -> bool {
        self.iov.is_aligned(self.base + offset, len, align)
    }

    fn can_defer(&self) -> bool {
        self.defer
    }

    fn recv_from(&mut self, offset: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.iov
            .once((self.base + offset, len), true, |iov| readv(fd, iov))
    }
}

/// The data-out part of a request: device-readable bytes after the request header.
pub struct GuestDataOut<'a> {
    /// The whole readable stream of the chain.
    pub iov: &'a IoVecs,
    /// Where data-out starts in it (after `virtio_scsi_cmd_req`).
    pub base: usize,
    /// As [`GuestDataIn::defer`], for WRITE.
    pub defer: bool,
}

impl DataOut for GuestDataOut<'_> {
    fn len(&self) -> usize {
        self.iov.len().saturating_sub(self.base)
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize {
        self.iov.copy_out(self.base + offset, buf)
    }

    fn write_to_file(
        &self,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> io::Result<()> {
        self.iov
            .transfer((self.base + offset, len), file_offset, false, |iov, off| {
                pwritev(file, iov, off)
            })
    }

    fn is_aligned(&self, offset: usize, len: usize, align: usize) -> bool {
        self.iov.is_aligned(self.base + offset, len, align)
    }

    fn can_defer(&self) -> bool {
        self.defer
    }

    fn send_to(&self, offset: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.iov
            .once((self.base + offset, len), false, |iov| writev(fd, iov))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn streams_cross_segment_boundaries() {
        let mut a = [0u8; 5];
        let mut b = [0u8; 3];
        let mut c = [0u8; 8];
        let mut iov = IoVecs::default();
        iov.push(a.as_mut_ptr(), a.len(), None);
        iov.push(b.as_mut_ptr(), b.len(), None);
        iov.push(c.as_mut_ptr(), c.len(), None);
        assert_eq!(iov.len(), 16);
        assert_eq!(iov.copy_in(3, &[1, 2, 3, 4, 5, 6]), 6);
        let mut out = [0u8; 20];
        assert_eq!(iov.copy_out(0, &mut out), 16);
        assert_eq!(
            &out[..16],
            &[0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0]
        );
        // Truncated at the end of the stream.
        assert_eq!(iov.copy_in(14, &[9, 9, 9, 9]), 2);
        let mut segs = Vec::new();
        assert!(iov.segments(4, 6, &mut segs));
        assert_eq!(
            segs.iter().map(|v| v.iov_len).collect::<Vec<_>>(),
            vec![1, 3, 2]
        );
        assert_eq!(segs[1].iov_base as usize, b.as_ptr() as usize);
        assert!(!iov.segments(10, 7, &mut segs) && segs.is_empty());
        // Alignment: 1-byte alignment always holds inside the stream; a
        // segment of 3 bytes is not 2-aligned; past the end is never aligned.
        assert!(iov.is_aligned(0, 16, 1));
        assert!(!iov.is_aligned(5, 3, 2));
        assert!(!iov.is_aligned(0, 17, 1));
        iov.clear();
        assert!(iov.is_empty());
        let _ = (&mut a, &mut b, &mut c);
    }

    #[test]
    fn readv_and_writev_on_a_stream_fill_and_drain_segments() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut bufs = [[0u8; 3]; 4];
        let mut iov = IoVecs::default();
        for x in bufs.iter_mut() {
            iov.push(x.as_mut_ptr(), 3, None);
        }
        a.write_all(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
        let mut din = GuestDataIn {
            iov: &iov,
            base: 2,
            defer: false,
        };
        let mut got = 0;
        while got < 7 {
            got += din.recv_from(got, 7 - got, b.as_fd()).unwrap();
        }
        assert!(din.recv_from(5, 6, b.as_fd()).is_err());
        let dout = GuestDataOut {
            iov: &iov,
            base: 3,
            defer: false,
        };
        let mut sent = 0;
        while sent < 5 {
            sent += dout.send_to(sent, 5 - sent, b.as_fd()).unwrap();
        }
        let mut back = [0u8; 5];
        a.read_exact(&mut back).unwrap();
        assert_eq!(back, [2, 3, 4, 5, 6]);
        let flat: Vec<u8> = bufs.iter().flatten().copied().collect();
        assert_eq!(flat, [0, 0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0]);
    }

    #[test]
    fn preadv_and_pwritev_move_file_bytes_over_many_segments() {
        let file = tempfile::tempfile().unwrap();
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all_at(&pattern, 0).unwrap();

        // 100 segments of 3 bytes: more than one IOV_BATCH.
        let mut bufs = vec![[0u8; 3]; 100];
        let mut iov = IoVecs::default();
        for b in bufs.iter_mut() {
            iov.push(b.as_mut_ptr(), 3, None);
        }
        let mut din = GuestDataIn {
            iov: &iov,
            base: 10,
            defer: false,
        };
        assert_eq!(din.capacity(), 290);
        din.read_from_file(0, 290, &file, 1000).unwrap();
        let flat: Vec<u8> = bufs.iter().flatten().copied().collect();
        assert_eq!(&flat[10..300], &pattern[1000..1290]);
        assert!(din.read_from_file(1, 290, &file, 0).is_err());

        let dout = GuestDataOut {
            iov: &iov,
            base: 10,
            defer: false,
        };
        dout.write_to_file(0, 290, &file, 4096).unwrap();
        let mut back = vec![0u8; 290];
        file.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, &pattern[1000..1290]);

        // Reading past EOF is an error, not a silent short read.
        let mut din = GuestDataIn {
            iov: &iov,
            base: 10,
            defer: false,
        };
        assert_eq!(
            din.read_from_file(0, 100, &file, 8150).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn bytes_received_into_guest_memory_are_logged_in_each_region() {
        use super::super::chain::split_chain;
        use super::super::dirty::{GuestMem, LOG_PAGE_SIZE};
        use std::io::Write;
        use std::os::fd::AsFd;
        use virtio_queue::desc::split::Descriptor;
        use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

        // Two regions of 2 pages; a writable buffer across their boundary.
        let mem =
            GuestMem::from_ranges(&[(GuestAddress(0), 0x2000), (GuestAddress(0x2000), 0x2000)])
                .unwrap();
        for r in mem.iter() {
            (**r).bitmap().start_test_log();
        }
        let desc = Descriptor::new(0x1ffc, 0x10, 2, 0);
        let (mut r, mut w) = (IoVecs::default(), IoVecs::default());
        split_chain(&[desc], &mem, &mut r, &mut w).unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
        let mut din = GuestDataIn {
            iov: &w,
            base: 2,
            defer: false,
        };
        let mut got = 0;
        while got < 6 {
            got += din.recv_from(got, 6 - got, b.as_fd()).unwrap();
        }
        // Written: GPA 0x1ffe..0x2004, i.e. page 1 and page 2 (the second
        // region's first page); nothing else.
        let dirty: Vec<u64> = mem
            .iter()
            .flat_map(|r| {
                let start = r.start_addr().0;
                (0..2u64).filter_map(move |p| {
                    (**r)
                        .bitmap()
                        .dirty_at(p as usize * LOG_PAGE_SIZE)
                        .then_some(start / LOG_PAGE_SIZE as u64 + p)
                })
            })
            .collect();
        assert_eq!(dirty, [1, 2]);
    }
}
