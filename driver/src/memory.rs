//! Shared "guest" memory for the userspace driver.
//!
//! A vhost-user frontend has no guest RAM: the memory it shares with the backend
//! (`VHOST_USER_SET_MEM_TABLE`, vhost-user spec "Memory regions") is an ordinary
//! anonymous file created with `memfd_create(2)`, mapped `MAP_SHARED` here and
//! mapped again by the backend from the passed file descriptor. Everything the
//! device may touch — the virtqueues (VIRTIO 1.2 §2.7) and the request buffers —
//! is carved out of one such region.
//!
//! GPA convention: the region is announced to the backend at guest physical
//! address 0, so the GPA of a byte is its offset in the region
//! ([`SharedMemory::gpa`]).
//!
//! The device runs in another process and may write any byte of the region at
//! any time, so no `&[u8]` / `&mut [u8]` to the mapped bytes is ever made.
//! Everything else reaches them through this module: bulk copies and the
//! zero-copy view [`SharedSlice`] (raw-pointer copies and volatile loads and
//! stores, vm-memory's `VolatileSlice`), and one atomic accessor per ring
//! field width ([`SharedMemory::load_u16`] and its siblings).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use vm_memory::VolatileSlice;

/// Errors creating or accessing a [`SharedMemory`] region, or carving it up with a [`Carver`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The region name contains a NUL byte, so it cannot be passed to `memfd_create(2)`.
    #[error("shared memory name {0:?} contains a NUL byte")]
    InvalidName(String),
    /// A zero-length region was requested; `mmap(2)` cannot map it.
    #[error("shared memory region {name:?} must not be empty")]
    ZeroLength {
        /// Name of the region.
        name: String,
    },
    /// The requested length does not fit in `off_t`.
    #[error("shared memory region {name:?}: length {len} is too large")]
    TooLarge {
        /// Name of the region.
        name: String,
        /// Requested length in bytes.
        len: usize,
    },
    /// `memfd_create(2)` failed.
    #[error("memfd_create({name:?}) failed: {source}")]
    Create {
        /// Name of the region.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `ftruncate(2)` of the memfd to the region length failed.
    #[error("ftruncate of memfd {name:?} to {len} bytes failed: {source}")]
    Resize {
        /// Name of the region.
        name: String,
        /// Requested length in bytes.
        len: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `mmap(2)` of the memfd failed.
    #[error("mmap of memfd {name:?} ({len} bytes, MAP_SHARED) failed: {source}")]
    Map {
        /// Name of the region.
        name: String,
        /// Requested length in bytes.
        len: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An access `[offset, offset + len)` does not lie inside the region.
    #[error(
        "access of {len} bytes at offset {offset:#x} is outside the {region_len:#x}-byte region"
    )]
    OutOfBounds {
        /// Start of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Length of the region.
        region_len: usize,
    },
    /// A [`Carver`] allocation asked for an alignment that is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(usize),
    /// A [`Carver`] ran out of space.
    #[error("shared memory exhausted: {size} bytes (align {align}) requested, {used} of {len} bytes already used")]
    Exhausted {
        /// Requested size.
        size: usize,
        /// Requested alignment.
        align: usize,
        /// Bytes already handed out (including alignment padding).
        used: usize,
        /// Total bytes the carver manages.
        len: usize,
    },
}

/// A memfd-backed `MAP_SHARED` region: the "guest memory" shared with the device.
///
/// GPA convention: the region sits at GPA 0, so `GPA == offset`.
///
/// The mapping is removed (`munmap`) and the memfd closed on drop. The type is
/// `Send + Sync`: it only hands out raw addresses and performs volatile copies,
/// so sharing it between threads is no different from sharing it with the
/// device process.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: SharedMemory owns its mapping and fd; it exposes only raw pointers/addresses and volatile copies, never references to the mapped bytes, so moving it to another thread is sound.
unsafe impl Send for SharedMemory {}
// SAFETY: every method takes &self and accesses the mapping only through volatile raw-pointer operations (the bytes are concurrently writable by the device process anyway), so concurrent use from several threads introduces no new aliasing hazard.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates a region of `len` bytes: `memfd_create(name, MFD_CLOEXEC)`,
    /// `ftruncate(len)`, `mmap(PROT_READ | PROT_WRITE, MAP_SHARED)`.
    ///
    /// The contents start zeroed (a fresh memfd reads as zeros).
    pub fn new(name: &str, len: usize) -> Result<Self, MemoryError> {
        let cname = CString::new(name).map_err(|_| MemoryError::InvalidName(name.to_owned()))?;
        if len == 0 {
            return Err(MemoryError::ZeroLength {
                name: name.to_owned(),
            });
        }
        let off_len = libc::off_t::try_from(len).map_err(|_| MemoryError::TooLarge {
            name: name.to_owned(),
            len,
        })?;

        // SAFETY: cname is a valid NUL-terminated string that outlives the call; memfd_create has no other preconditions.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(MemoryError::Create {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: raw is a freshly created, valid file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: fd is a valid open memfd; ftruncate only changes its size.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), off_len) };
        if rc != 0 {
            return Err(MemoryError::Resize {
                name: name.to_owned(),
                len,
                source: io::Error::last_os_error(),
            });
        }

        // SAFETY: a NULL hint lets the kernel choose the address; fd is a valid memfd of exactly len bytes, so the new mapping aliases no Rust object.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                name: name.to_owned(),
                len,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or_else(|| MemoryError::Map {
            name: name.to_owned(),
            len,
            source: io::Error::other("mmap returned NULL"),
        })?;
        Ok(Self { fd, ptr, len })
    }

    /// The memfd, e.g. to pass in `VHOST_USER_SET_MEM_TABLE`. Owned by `self`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a region is never empty (see [`MemoryError::ZeroLength`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frontend virtual address of the mapping (vhost-user `userspace_addr`).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The guest physical address of `offset` (GPA convention: base 0, so `== offset`).
    pub fn gpa(&self, offset: usize) -> u64 {
        offset as u64
    }

    /// The frontend virtual address of `offset`, as used by `VHOST_USER_SET_VRING_ADDR`.
    pub fn host_va(&self, offset: usize) -> u64 {
        self.host_addr().wrapping_add(offset as u64)
    }

    /// Checks that `[offset, offset + len)` lies inside the region and returns
    /// a pointer to its first byte. The bytes behind it may change at any
    /// time (the device writes them): the pointer is only ever used for
    /// volatile or atomic accesses, never turned into a reference.
    #[inline]
    fn checked_ptr(&self, offset: usize, len: usize) -> Result<*mut u8, MemoryError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // wrapping_add never creates UB; the bounds check above keeps the
                // result inside the mapping.
                Ok(self.ptr.as_ptr().wrapping_add(offset))
            }
            _ => Err(MemoryError::OutOfBounds {
                offset,
                len,
                region_len: self.len,
            }),
        }
    }

    /// A volatile view of `[offset, offset + len)` (bounds-checked), borrowed
    /// from `self`: what the zero-copy API hands to its callers.
    pub fn slice(&self, offset: usize, len: usize) -> Result<SharedSlice<'_>, MemoryError> {
        let ptr = self.checked_ptr(offset, len)?;
        // SAFETY: [ptr, ptr + len) is inside the mapping (checked above), mapped
        // while the borrow of `self` lives; VolatileSlice only accesses it
        // through raw-pointer copies and volatile loads and stores.
        let inner = unsafe { VolatileSlice::new(ptr, len) };
        Ok(SharedSlice { inner })
    }

    /// Copies `data` into the region at `offset` (bounds-checked).
    ///
    /// A raw-pointer copy (`VolatileSlice::copy_from`, as rust-vmm's device
    /// code does): no reference to the shared bytes is made, so a device that
    /// writes them meanwhile can only make them wrong, not the program
    /// unsound. The ring protocol keeps a device off request headers and
    /// data buffers until `avail->idx` publishes them and after `used->idx`
    /// returns them.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        self.slice(offset, data.len())?.copy_from(data);
        Ok(())
    }

    /// Copies `out.len()` bytes at `offset` out of the region (bounds-checked),
    /// the same way as [`write`](Self::write).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        self.slice(offset, out.len())?.copy_to(out);
        Ok(())
    }

    /// Loads the naturally aligned `u16` at `offset` with `order`.
    ///
    /// The ring's accessors for the fields both sides write (VIRTIO 1.2
    /// §2.7.13-§2.7.14 need acquire/release on the indices). Panics if
    /// `offset` is misaligned or out of bounds: callers compute offsets from
    /// a ring layout validated against the region when the ring was made.
    #[inline]
    pub fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        let ptr = self.field_ptr::<u16>(offset);
        // SAFETY: field_ptr gave an aligned pointer to 2 bytes of the live mapping;
        // here the field is only accessed atomically, and the `&AtomicU16` lives
        // for this one load (an atomic permits the device's concurrent writes).
        unsafe { AtomicU16::from_ptr(ptr) }.load(order)
    }

    /// Stores `value` into the naturally aligned `u16` at `offset` with
    /// `order` (see [`load_u16`](Self::load_u16)).
    #[inline]
    pub fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        let ptr = self.field_ptr::<u16>(offset);
        // SAFETY: as in load_u16: aligned, inside the live mapping, only
        // accessed atomically here; the `&AtomicU16` lives for this one store.
        unsafe { AtomicU16::from_ptr(ptr) }.store(value, order)
    }

    /// Loads the naturally aligned `u32` at `offset` with `order` (see
    /// [`load_u16`](Self::load_u16)).
    #[inline]
    pub fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        let ptr = self.field_ptr::<u32>(offset);
        // SAFETY: as in load_u16, for 4 aligned bytes.
        unsafe { AtomicU32::from_ptr(ptr) }.load(order)
    }

    /// Stores `value` into the naturally aligned `u32` at `offset` with
    /// `order` (see [`load_u16`](Self::load_u16)).
    #[inline]
    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        let ptr = self.field_ptr::<u32>(offset);
        // SAFETY: as in load_u16, for 4 aligned bytes.
        unsafe { AtomicU32::from_ptr(ptr) }.store(value, order)
    }

    /// Stores `value` into the naturally aligned `u64` at `offset` with
    /// `order` (see [`load_u16`](Self::load_u16)).
    #[inline]
    pub fn store_u64(&self, offset: usize, value: u64, order: Ordering) {
        let ptr = self.field_ptr::<u64>(offset);
        // SAFETY: as in load_u16, for 8 aligned bytes.
        unsafe { AtomicU64::from_ptr(ptr) }.store(value, order)
    }

    /// The pointer to a naturally aligned `T` at `offset`; panics if it is
    /// misaligned or not inside the region (see [`load_u16`](Self::load_u16)).
    #[inline]
    fn field_ptr<T>(&self, offset: usize) -> *mut T {
        let size = size_of::<T>();
        match offset.checked_add(size) {
            Some(end) if end <= self.len && offset.is_multiple_of(align_of::<T>()) => {
                // The mapping is page-aligned, so an aligned offset is an
                // aligned address; wrapping_add stays inside the mapping.
                self.ptr.as_ptr().wrapping_add(offset).cast()
            }
            _ => bad_field(offset, size, self.len),
        }
    }

    /// Sets `len` bytes at `offset` to `byte` (bounds-checked, volatile stores).
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemoryError> {
        self.slice(offset, len)?.fill(byte);
        Ok(())
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe exactly the mapping created in new(), which is unmapped only here; no references into it exist (only raw pointers, which are dead once self is dropped).
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                len = self.len,
                "munmap of shared memory failed"
            );
        }
        // The memfd is closed by OwnedFd's Drop.
    }
}

/// The panic of a misaligned or out-of-bounds ring field access: a bug in
/// the caller's offsets, never something the device can cause.
#[cold]
#[inline(never)]
fn bad_field(offset: usize, size: usize, region_len: usize) -> ! {
    if offset.is_multiple_of(size) {
        panic!("ring field access of {size} bytes at {offset:#x} is outside the {region_len:#x}-byte region")
    }
    panic!("ring field at offset {offset:#x} is not {size}-byte aligned")
}

/// A volatile view of bytes the device may write: a range of a
/// [`SharedMemory`] region (or of an ordinary buffer, [`From<&mut [u8]>`]),
/// read and written only by copies and volatile loads and stores, never
/// through a Rust reference.
///
/// This is what the zero-copy API ([`crate::Driver::read_with`],
/// [`crate::Driver::write_with`]) hands out instead of `&[u8]` / `&mut [u8]`:
/// a device that broke the ring contract and wrote the buffer meanwhile can
/// make its bytes wrong, but not the program unsound.
///
/// ```
/// # use vscsi_driver::memory::SharedMemory;
/// let mem = SharedMemory::new("doc", 4096).unwrap();
/// let s = mem.slice(16, 4).unwrap();
/// s.copy_from(b"abcd");
/// let mut out = [0u8; 4];
/// assert_eq!(s.copy_to(&mut out), 4);
/// assert_eq!(&out, b"abcd");
/// assert!(s == b"abcd"[..]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SharedSlice<'a> {
    inner: VolatileSlice<'a>,
}

impl<'a> SharedSlice<'a> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// `true` for a zero-length view.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Copies the first `min(self.len(), out.len())` bytes into `out` and
    /// returns how many.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        self.inner.copy_to(out)
    }

    /// Copies the first `min(self.len(), data.len())` bytes of `data` into
    /// the view and returns how many.
    pub fn copy_from(&self, data: &[u8]) -> usize {
        let n = data.len().min(self.len());
        self.inner.copy_from(&data[..n]);
        n
    }

    /// A copy of every byte.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        self.copy_to(&mut v);
        v
    }

    /// The byte at `index` (one volatile load), `None` past the end.
    pub fn get(&self, index: usize) -> Option<u8> {
        if index >= self.len() {
            return None;
        }
        let ptr = self.inner.ptr_guard();
        // SAFETY: index < len, so the byte is inside the range this view was
        // made for, which outlives 'a; a volatile load makes no reference.
        Some(unsafe { ptr.as_ptr().add(index).read_volatile() })
    }

    /// Every byte in order, each one volatile load (no allocation).
    pub fn iter(&self) -> impl Iterator<Item = u8> + 'a {
        let this = *self;
        (0..this.len()).filter_map(move |i| this.get(i))
    }

    /// Sets every byte to `byte` (volatile stores).
    pub fn fill(&self, byte: u8) {
        let ptr = self.inner.ptr_guard_mut();
        // SAFETY: the range [ptr, ptr + len) is the one this view was made
        // for, alive for 'a; volatile_fill only uses volatile stores.
        unsafe { volatile_fill(ptr.as_ptr(), self.len(), byte) }
    }

    /// The sub-view `[offset, offset + len)`, `None` if it does not fit.
    pub fn subslice(&self, offset: usize, len: usize) -> Option<SharedSlice<'a>> {
        self.inner
            .subslice(offset, len)
            .ok()
            .map(|inner| SharedSlice { inner })
    }
}

impl<'a> From<&'a mut [u8]> for SharedSlice<'a> {
    /// A view of an ordinary buffer (e.g. data a retry copied out of shared memory).
    fn from(buf: &'a mut [u8]) -> Self {
        Self {
            inner: VolatileSlice::from(buf),
        }
    }
}

impl PartialEq<[u8]> for SharedSlice<'_> {
    /// Byte-for-byte equality, without copying.
    fn eq(&self, other: &[u8]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, &b)| a == b)
    }
}

/// Volatile stores of `byte` into `len` bytes from `dst`, 8 at a time where aligned.
///
/// # Safety
///
/// `[dst, dst + len)` must be valid for writes.
unsafe fn volatile_fill(dst: *mut u8, len: usize, byte: u8) {
    let word = u64::from_ne_bytes([byte; 8]);
    let mut i = 0;
    while i < len && (dst as usize + i) & 7 != 0 {
        // SAFETY: dst + i < dst + len, valid for writes (caller).
        unsafe { dst.add(i).write_volatile(byte) };
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: dst + i is 8-byte aligned and its 8 bytes are below dst + len (caller).
        unsafe { dst.add(i).cast::<u64>().write_volatile(word) };
        i += 8;
    }
    while i < len {
        // SAFETY: dst + i < dst + len, valid for writes (caller).
        unsafe { dst.add(i).write_volatile(byte) };
        i += 1;
    }
}

/// Bump allocator that carves rings and buffers out of a region at set-up time.
///
/// It only hands out offsets; nothing is ever freed. Offsets are relative to the
/// start of the region, so with the GPA convention they are also GPAs.
#[derive(Debug, Clone)]
pub struct Carver {
    next: usize,
    len: usize,
}

impl Carver {
    /// A carver for a region of `len` bytes, starting at offset 0.
    pub fn new(len: usize) -> Self {
        Self { next: 0, len }
    }

    /// Reserves `size` bytes aligned to `align` (a power of two) and returns their offset.
    pub fn alloc(&mut self, size: usize, align: usize) -> Result<usize, MemoryError> {
        if !align.is_power_of_two() {
            return Err(MemoryError::BadAlignment(align));
        }
        let exhausted = || MemoryError::Exhausted {
            size,
            align,
            used: self.next,
            len: self.len,
        };
        let start = self
            .next
            .checked_add(align - 1)
            .map(|v| v & !(align - 1))
            .ok_or_else(exhausted)?;
        let end = start.checked_add(size).ok_or_else(exhausted)?;
        if end > self.len {
            return Err(exhausted());
        }
        self.next = end;
        Ok(start)
    }

    /// Bytes handed out so far, including alignment padding.
    pub fn used(&self) -> usize {
        self.next
    }

    /// Bytes still available (ignoring future alignment padding).
    pub fn remaining(&self) -> usize {
        self.len - self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn shared_memory_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SharedMemory>();
    }

    #[test]
    fn new_maps_zeroed_region_and_roundtrips() {
        let mem = SharedMemory::new("vscsi-test", 8192).unwrap();
        assert_eq!(mem.len(), 8192);
        assert!(!mem.is_empty());
        assert!(mem.fd() >= 0);
        assert_eq!(mem.host_addr() % 4096, 0, "mmap base is page aligned");
        assert_eq!(mem.gpa(0x123), 0x123);
        assert_eq!(mem.host_va(0x10), mem.host_addr() + 0x10);

        let mut buf = vec![0xffu8; 8192];
        mem.read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));

        // Unaligned start and odd length exercise all three copy phases.
        let data: Vec<u8> = (0..1003u32).map(|i| (i * 7 + 3) as u8).collect();
        mem.write(13, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read(13, &mut back).unwrap();
        assert_eq!(back, data);
        // Neighbours untouched.
        let mut edge = [0xaau8; 1];
        mem.read(12, &mut edge).unwrap();
        assert_eq!(edge, [0]);
        mem.read(13 + 1003, &mut edge).unwrap();
        assert_eq!(edge, [0]);
    }

    #[test]
    fn writes_are_visible_through_the_memfd() {
        let mem = SharedMemory::new("vscsi-test-fd", 4096).unwrap();
        mem.write(100, b"hello device").unwrap();
        let file = std::fs::File::from(mem.as_fd().try_clone_to_owned().unwrap());
        let mut buf = [0u8; 12];
        file.read_exact_at(&mut buf, 100).unwrap();
        assert_eq!(&buf, b"hello device");
        // And the other direction: a write through the fd shows up in the mapping.
        file.write_all_at(b"from device", 2000).unwrap();
        let mut buf = [0u8; 11];
        mem.read(2000, &mut buf).unwrap();
        assert_eq!(&buf, b"from device");
    }

    #[test]
    fn fill_sets_exact_range() {
        let mem = SharedMemory::new("vscsi-test-fill", 4096).unwrap();
        mem.fill(5, 37, 0x5a).unwrap();
        let mut buf = [0u8; 50];
        mem.read(0, &mut buf).unwrap();
        for (i, b) in buf.iter().enumerate() {
            let want = if (5..42).contains(&i) { 0x5a } else { 0 };
            assert_eq!(*b, want, "byte {i}");
        }
    }

    #[test]
    fn out_of_bounds_accesses_are_errors() {
        let mem = SharedMemory::new("vscsi-test-oob", 4096).unwrap();
        let mut buf = [0u8; 2];
        assert!(matches!(
            mem.read(4095, &mut buf),
            Err(MemoryError::OutOfBounds {
                offset: 4095,
                len: 2,
                region_len: 4096
            })
        ));
        assert!(mem.write(4096, &[1]).is_err());
        assert!(mem.write(usize::MAX, &[1]).is_err(), "offset overflow");
        assert!(mem.fill(1, usize::MAX, 0).is_err(), "length overflow");
        assert!(mem.checked_ptr(0, 4096).is_ok());
        assert!(mem.checked_ptr(4096, 0).is_ok());
        assert!(mem.checked_ptr(4096, 1).is_err());
        // An empty access at the end is fine.
        mem.write(4096, &[]).unwrap();
    }

    #[test]
    fn new_rejects_bad_arguments() {
        assert!(matches!(
            SharedMemory::new("x", 0),
            Err(MemoryError::ZeroLength { .. })
        ));
        assert!(matches!(
            SharedMemory::new("a\0b", 4096),
            Err(MemoryError::InvalidName(_))
        ));
        assert!(matches!(
            SharedMemory::new("huge", usize::MAX),
            Err(MemoryError::TooLarge { .. })
        ));
    }

    #[test]
    fn shared_slice_copies_byte_exact() {
        let mem = SharedMemory::new("vscsi-test-slice", 4096).unwrap();
        let s = mem.slice(3, 21).unwrap();
        assert_eq!(s.len(), 21);
        assert!(!s.is_empty());
        // copy_from copies what fits and says how much.
        let data: Vec<u8> = (1..=30u8).collect();
        assert_eq!(s.copy_from(&data), 21);
        let mut back = [0u8; 25];
        mem.read(0, &mut back).unwrap();
        let mut want = [0u8; 25];
        want[3..24].copy_from_slice(&data[..21]);
        assert_eq!(back, want, "exactly bytes 3..24 written");
        // copy_to, to_vec, get, iter and == read the same bytes.
        let mut out = [0u8; 40];
        assert_eq!(s.copy_to(&mut out), 21);
        assert_eq!(&out[..21], &data[..21]);
        assert_eq!(s.to_vec(), &data[..21]);
        assert_eq!(s.get(0), Some(1));
        assert_eq!(s.get(20), Some(21));
        assert_eq!(s.get(21), None);
        assert!(s.iter().eq(1..=21u8));
        assert!(s == data[..21]);
        assert!(s != data[..20], "length differs");
        assert!(s != data[1..22], "bytes differ");
        // A sub-view, and fill through it.
        let sub = s.subslice(5, 3).unwrap();
        assert_eq!(sub.to_vec(), [6, 7, 8]);
        assert!(s.subslice(20, 2).is_none());
        sub.fill(0xee);
        assert_eq!(s.to_vec()[4..9], [5, 0xee, 0xee, 0xee, 9]);
        assert!(matches!(
            mem.slice(4090, 7),
            Err(MemoryError::OutOfBounds {
                offset: 4090,
                len: 7,
                ..
            })
        ));
        assert!(mem.slice(4096, 0).unwrap().is_empty());
    }

    #[test]
    fn shared_slice_over_an_ordinary_buffer() {
        let mut buf = vec![0u8; 10];
        let s = SharedSlice::from(&mut buf[..]);
        s.copy_from(b"0123456789");
        assert!(s == b"0123456789"[..]);
        assert_eq!(buf, b"0123456789");
    }

    #[test]
    fn atomic_accessors_are_little_endian_and_in_place() {
        let mem = SharedMemory::new("vscsi-test-atomic", 4096).unwrap();
        mem.store_u16(2, 0x1234, Ordering::Release);
        mem.store_u32(4, 0x89ab_cdef, Ordering::Relaxed);
        mem.store_u64(8, 0x0102_0304_0506_0708, Ordering::Relaxed);
        let mut b = [0u8; 16];
        mem.read(0, &mut b).unwrap();
        let want = [
            0, 0, 0x34, 0x12, 0xef, 0xcd, 0xab, 0x89, 8, 7, 6, 5, 4, 3, 2, 1,
        ];
        // The accessors store host order; on little-endian hosts that is the wire order.
        if cfg!(target_endian = "little") {
            assert_eq!(b, want);
        }
        assert_eq!(mem.load_u16(2, Ordering::Acquire), 0x1234);
        assert_eq!(mem.load_u32(4, Ordering::Relaxed), 0x89ab_cdef);
        mem.write(4094, &[0xaa, 0x55]).unwrap();
        assert_eq!(
            mem.load_u16(4094, Ordering::Relaxed),
            u16::from_ne_bytes([0xaa, 0x55])
        );
    }

    #[test]
    #[should_panic(expected = "not 2-byte aligned")]
    fn misaligned_field_access_panics() {
        let mem = SharedMemory::new("vscsi-test-misaligned", 4096).unwrap();
        mem.load_u16(3, Ordering::Relaxed);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_field_access_panics() {
        let mem = SharedMemory::new("vscsi-test-oob-field", 4096).unwrap();
        mem.store_u32(4096, 1, Ordering::Relaxed);
    }

    #[test]
    fn carver_aligns_and_exhausts() {
        let mut c = Carver::new(100);
        assert_eq!(c.alloc(3, 1).unwrap(), 0);
        assert_eq!(c.alloc(4, 16).unwrap(), 16);
        assert_eq!(c.used(), 20);
        assert_eq!(c.alloc(0, 4).unwrap(), 20);
        assert_eq!(c.alloc(8, 8).unwrap(), 24);
        assert_eq!(c.remaining(), 68);
        assert!(matches!(c.alloc(1, 3), Err(MemoryError::BadAlignment(3))));
        assert!(matches!(c.alloc(1, 0), Err(MemoryError::BadAlignment(0))));
        assert!(matches!(
            c.alloc(69, 1),
            Err(MemoryError::Exhausted {
                size: 69,
                used: 32,
                ..
            })
        ));
        // A failed allocation leaves the state untouched.
        assert_eq!(c.used(), 32);
        assert_eq!(c.alloc(68, 1).unwrap(), 32);
        assert_eq!(c.remaining(), 0);
        assert!(c.alloc(usize::MAX, 1).is_err());
        assert!(c.alloc(0, 1 << 63).is_err());
    }
}
