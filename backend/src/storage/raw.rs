//! A raw disk image: a regular file or block device served byte for byte.
//!
//! The image is opened `O_RDONLY` for read-only logical units (so a write
//! can never reach it) and `O_RDWR` otherwise, then locked with
//! `flock(LOCK_SH | LOCK_NB)` / `flock(LOCK_EX | LOCK_NB)` so a second
//! daemon cannot serve the same image read-write behind the first one's back
//! (QEMU does the same with OFD locks). The lock lives as long as the file
//! description, i.e. until the [`RawImage`] is dropped.
//!
//! Data moves with positioned I/O (`pread`/`pwrite` family) on `&File`, so
//! one `RawImage` serves any number of threads without a lock.
//!
//! `cache=none` ([`CacheMode::None`]): the image is opened a second time
//! with `O_DIRECT` (that descriptor is not locked: the lock of the first
//! one covers the file). A transfer whose file offset, length and every
//! guest buffer segment are aligned to the file's direct-I/O alignment
//! (`statx` `STATX_DIOALIGN`; 4096 when the kernel does not say) uses it;
//! any other goes through the buffered descriptor and is counted in
//! [`RawImage::misaligned`]. The kernel keeps the two coherent (a direct
//! write invalidates the cached pages, a direct read writes dirty ones back
//! first), so mixing them is safe.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::modes::CacheMode;
use crate::buffers::{DataIn, DataOut};

/// Direct-I/O alignment assumed when `statx` does not report one.
const DEFAULT_DIO_ALIGN: usize = 4096;

/// Why an image could not be opened. Every message names the image.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path does not exist.
    #[error("image {} does not exist", .path.display())]
    NotFound {
        /// The image path.
        path: PathBuf,
    },
    /// `open` or `stat` failed (permissions, read-only filesystem, ...).
    #[error("image {} cannot be opened {mode}: {source}", .path.display())]
    Unreadable {
        /// The image path.
        path: PathBuf,
        /// `"read-only"` or `"read-write"`.
        mode: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path is a directory.
    #[error("image {} is a directory, not a disk image", .path.display())]
    NotAnImage {
        /// The image path.
        path: PathBuf,
    },
    /// The image has no bytes.
    #[error("image {} is empty (0 bytes): nothing to serve", .path.display())]
    Empty {
        /// The image path.
        path: PathBuf,
    },
    /// The image is smaller than one logical block.
    #[error(
        "image {} is smaller than one {block_size}-byte block ({size} bytes): nothing to serve",
        .path.display()
    )]
    TooSmall {
        /// The image path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The logical block size asked for.
        block_size: u32,
    },
    /// Another open file description holds a conflicting `flock`.
    #[error(
        "image {} is locked by another process (another vscsi-backend?); stop it or serve a copy",
        .path.display()
    )]
    Locked {
        /// The image path.
        path: PathBuf,
    },
    /// The image is not in the format asked for, or its format metadata
    /// cannot be read (a corrupt qcow2, a missing backing file, ...).
    #[error("image {} cannot be opened as {format}: {source}", .path.display())]
    Format {
        /// The image path.
        path: PathBuf,
        /// The format tried (`"qcow2"`).
        format: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A logical unit option is invalid.
    #[error("image {}: invalid {field} {value:?}: {reason}", .path.display())]
    InvalidOption {
        /// The image path.
        path: PathBuf,
        /// Option name.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is allowed.
        reason: String,
    },
}

/// An open, locked raw image.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    /// The `O_DIRECT` descriptor of `cache=none`.
    direct: Option<File>,
    /// Alignment of offsets, lengths and buffers for `direct`.
    dio_align: usize,
    /// Transfers of a `cache=none` image that went through `file` because
    /// they were not aligned for `direct`.
    misaligned: AtomicU64,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

/// The direct-I/O alignment of `file`: the larger of the memory and offset
/// alignments `statx(STATX_DIOALIGN)` reports (Linux ≥ 6.1), else 4096.
fn dio_alignment(file: &File) -> usize {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx writes at most one `struct statx` into the buffer we
    // pass (zero-initialised, correctly sized and aligned); the path is an
    // empty C string and AT_EMPTY_PATH makes it act on the fd we own.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return DEFAULT_DIO_ALIGN;
    }
    // SAFETY: statx succeeded, so it filled the structure (and it was
    // zero-initialised anyway: every bit pattern is a valid statx).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return DEFAULT_DIO_ALIGN;
    }
    let align = stx.stx_dio_mem_align.max(stx.stx_dio_offset_align) as usize;
    if align.is_power_of_two() {
        align
    } else {
        DEFAULT_DIO_ALIGN
    }
}

impl RawImage {
    /// Opens and locks `path`: `O_RDONLY` + shared lock when `read_only`,
    /// `O_RDWR` + exclusive lock otherwise. Refuses missing, empty and
    /// directory paths and images locked by someone else.
    pub fn open(path: &Path, read_only: bool) -> Result<RawImage, OpenError> {
        Self::open_with(path, read_only, CacheMode::Writeback)
    }

    /// [`RawImage::open`], plus an `O_DIRECT` descriptor for
    /// [`CacheMode::None`]; a file system that refuses `O_DIRECT` (tmpfs)
    /// is an [`OpenError::InvalidOption`] naming `cache`.
    pub fn open_with(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
    ) -> Result<RawImage, OpenError> {
        let owned = || path.to_path_buf();
        let mode = if read_only { "read-only" } else { "read-write" };
        // O_NOATIME: a read need not update the image's access time (2 % of
        // the daemon's time at 300k reads/s). Only the file's owner (or
        // CAP_FOWNER) may ask; anyone else gets EPERM and opens without it.
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(flags)
                .open(path)
        };
        let mut file = match open(libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
            r => r,
        }
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound { path: owned() },
            io::ErrorKind::IsADirectory => OpenError::NotAnImage { path: owned() },
            _ => OpenError::Unreadable {
                path: owned(),
                mode,
                source,
            },
        })?;
        let meta = file.metadata().map_err(|source| OpenError::Unreadable {
            path: owned(),
            mode,
            source,
        })?;
        if meta.is_dir() {
            return Err(OpenError::NotAnImage { path: owned() });
        }
        match super::lock::set(&file, super::lock::Lock::for_access(read_only)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(OpenError::Locked { path: owned() })
            }
            Err(e) => {
                // e.g. ENOLCK on some network filesystems: serve, but say so.
                tracing::warn!(image = %path.display(), error = %e, "cannot lock image; serving it unlocked");
            }
        }
        // Seeking to the end gives the size of block devices too (st_size is 0 for them).
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| OpenError::Unreadable {
                path: owned(),
                mode,
                source,
            })?;
        if size == 0 {
            return Err(OpenError::Empty { path: owned() });
        }
        let (direct, dio_align) = match cache {
            CacheMode::Writeback => (None, DEFAULT_DIO_ALIGN),
            CacheMode::None => {
                let direct = OpenOptions::new()
                    .read(true)
                    .write(!read_only)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .map_err(|e| {
                        tracing::warn!(image = %path.display(), error = %e, "O_DIRECT open failed");
                        OpenError::InvalidOption {
                            path: owned(),
                            field: "cache",
                            value: "none".into(),
                            reason:
                                "the file system refuses O_DIRECT (tmpfs?): use cache=writeback"
                                    .into(),
                        }
                    })?;
                let align = dio_alignment(&direct);
                tracing::debug!(image = %path.display(), dio_align = align, "cache=none: O_DIRECT");
                (Some(direct), align)
            }
        };
        Ok(RawImage {
            file,
            direct,
            dio_align,
            misaligned: AtomicU64::new(0),
            path: owned(),
            size,
            read_only,
        })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes at open time.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The open file (for transports that do their own I/O).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The cache mode the image was opened with.
    pub fn cache(&self) -> CacheMode {
        if self.direct.is_some() {
            CacheMode::None
        } else {
            CacheMode::Writeback
        }
    }

    /// The `O_DIRECT` alignment (offsets, lengths and buffer segments), if
    /// the image has an `O_DIRECT` descriptor.
    pub fn dio_align(&self) -> Option<usize> {
        self.direct.as_ref().map(|_| self.dio_align)
    }

    /// Requests that went through the buffered descriptor of a
    /// `cache=none` image because they were not aligned.
    pub fn misaligned(&self) -> u64 {
        self.misaligned.load(Ordering::Relaxed)
    }

    /// The descriptor a transfer of `len` bytes at `file_offset` uses:
    /// the `O_DIRECT` one when there is one and `buffers_aligned(align)`
    /// says the memory side is aligned too, else the buffered one (counted
    /// as misaligned on a `cache=none` image).
    pub fn file_for(
        &self,
        file_offset: u64,
        len: usize,
        buffers_aligned: impl FnOnce(usize) -> bool,
    ) -> &File {
        let Some(direct) = &self.direct else {
            return &self.file;
        };
        let a = self.dio_align;
        if file_offset.is_multiple_of(a as u64) && len.is_multiple_of(a) && buffers_aligned(a) {
            direct
        } else {
            if self.misaligned.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!(image = %self.path.display(), dio_align = a,
                    "cache=none: a request not aligned for O_DIRECT is served through the page cache (counted, logged once)");
            }
            &self.file
        }
    }

    /// Reads `len` bytes at `file_offset` into `data_in` at `offset`.
    pub fn read_into(
        &self,
        data_in: &mut dyn DataIn,
        offset: usize,
        len: usize,
        file_offset: u64,
    ) -> io::Result<()> {
        let file = self.file_for(file_offset, len, |a| data_in.is_aligned(offset, len, a));
        data_in.read_from_file(offset, len, file, file_offset)
    }

    /// Writes `len` bytes of `data_out` from `offset` at `file_offset`.
    /// Fails with `PermissionDenied` on a read-only image without touching it.
    pub fn write_from(
        &self,
        data_out: &dyn DataOut,
        offset: usize,
        len: usize,
        file_offset: u64,
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "image is read-only",
            ));
        }
        let file = self.file_for(file_offset, len, |a| data_out.is_aligned(offset, len, a));
        data_out.write_to_file(offset, len, file, file_offset)
    }

    /// `fdatasync`: makes written data durable.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Reads exactly `buf.len()` bytes at `offset` (commands that compare
    /// or copy through a scratch buffer: VERIFY, COMPARE AND WRITE).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`; `PermissionDenied` on a read-only image.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "image is read-only",
            ));
        }
        self.file.write_all_at(buf, offset)
    }

    /// Current size of the image in bytes (it may have been resized since
    /// open).
    pub fn current_size(&self) -> io::Result<u64> {
        let meta = self.file.metadata()?;
        if meta.is_file() {
            return Ok(meta.len());
        }
        // Block devices: st_size is 0; ask lseek (positioned I/O never uses
        // the file offset, so moving it is harmless).
        self.seek(0, libc::SEEK_END)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENXIO))
    }

    /// Whether the image is a regular file (holes, `SEEK_DATA`,
    /// `FALLOC_FL_PUNCH_HOLE` are meaningful).
    pub fn is_regular_file(&self) -> bool {
        self.file.metadata().map(|m| m.is_file()).unwrap_or(false)
    }

    /// Deallocates `len` bytes at `offset`: `fallocate(PUNCH_HOLE |
    /// KEEP_SIZE)`. The range reads back as zeros afterwards (Linux
    /// fallocate(2): "subsequent reads from this range will return zeros").
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "image is read-only",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // fallocate touches no memory of ours.
            // SAFETY: fallocate takes an fd we own (borrowed from `self.file`, open for the whole call) and integers.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    n,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Whether holes can be punched: a writable regular file on a
    /// filesystem that accepts `FALLOC_FL_PUNCH_HOLE`. Probed by punching
    /// one block past the end of the file with KEEP_SIZE, which changes
    /// neither the data nor the size.
    pub fn probe_punch_hole(&self) -> bool {
        if self.read_only || !self.is_regular_file() {
            return false;
        }
        let end = self.current_size().unwrap_or(self.size);
        match self.punch_hole(end, 4096) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(image = %self.path.display(), error = %e, "cannot punch holes: thin provisioning off");
                false
            }
        }
    }

    /// `lseek(offset, whence)` for `SEEK_DATA` / `SEEK_HOLE` / `SEEK_END`:
    /// `Ok(None)` on ENXIO (no data at or after `offset`).
    pub fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Ok(None);
        };
        // No I/O here uses the file offset (all of it is positioned).
        // SAFETY: lseek takes an fd we own (borrowed from `self.file`, open for the whole call) and integers.
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(err),
            };
        }
        Ok(u64::try_from(rc).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0xA5; len]).unwrap();
        f
    }

    #[test]
    fn the_owner_opens_without_access_time_updates() {
        use std::os::fd::AsRawFd;
        let f = image(4096);
        let img = RawImage::open(f.path(), true).unwrap();
        // SAFETY: F_GETFL on a descriptor `img` keeps open; no memory is passed.
        let flags = unsafe { libc::fcntl(img.file.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0);
        assert_ne!(flags & libc::O_NOATIME, 0, "flags {flags:#o}");
    }

    #[test]
    fn opens_and_reports_size() {
        let f = image(4096);
        let img = RawImage::open(f.path(), false).unwrap();
        assert_eq!(img.size(), 4096);
        assert!(!img.read_only());
        assert_eq!(img.path(), f.path());
    }

    #[test]
    fn second_open_is_refused_naming_the_image() {
        let f = image(512);
        let _first = RawImage::open(f.path(), false).unwrap();
        let err = RawImage::open(f.path(), false).unwrap_err();
        assert!(matches!(err, OpenError::Locked { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("locked by another process"), "{msg}");
        // A reader is refused too while a writer holds it.
        assert!(matches!(
            RawImage::open(f.path(), true),
            Err(OpenError::Locked { .. })
        ));
    }

    #[test]
    fn readers_share_but_exclude_a_writer() {
        let f = image(512);
        let _a = RawImage::open(f.path(), true).unwrap();
        let _b = RawImage::open(f.path(), true).unwrap();
        assert!(matches!(
            RawImage::open(f.path(), false),
            Err(OpenError::Locked { .. })
        ));
    }

    #[test]
    fn lock_is_released_on_drop() {
        let f = image(512);
        drop(RawImage::open(f.path(), false).unwrap());
        RawImage::open(f.path(), false).unwrap();
    }

    #[test]
    fn refuses_missing_empty_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.img");
        let err = RawImage::open(&missing, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("image {} does not exist", missing.display())
        );
        let empty = image(0);
        let err = RawImage::open(empty.path(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "image {} is empty (0 bytes): nothing to serve",
                empty.path().display()
            )
        );
        assert!(matches!(
            RawImage::open(dir.path(), true),
            Err(OpenError::NotAnImage { .. })
        ));
    }

    #[test]
    fn punch_hole_reads_zero_and_seek_finds_it() {
        let f = image(64 * 1024);
        let img = RawImage::open(f.path(), false).unwrap();
        if !img.probe_punch_hole() {
            return; // filesystem without hole support
        }
        assert_eq!(img.current_size().unwrap(), 64 * 1024);
        img.punch_hole(16 * 1024, 16 * 1024).unwrap();
        let mut b = vec![1u8; 16 * 1024];
        img.read_at(&mut b, 16 * 1024).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(img.seek(0, libc::SEEK_HOLE).unwrap(), Some(16 * 1024));
        assert_eq!(
            img.seek(16 * 1024, libc::SEEK_DATA).unwrap(),
            Some(32 * 1024)
        );
        assert_eq!(img.seek(1 << 40, libc::SEEK_DATA).unwrap(), None);
        assert_eq!(img.current_size().unwrap(), 64 * 1024);
        let ro = image(512);
        assert!(!RawImage::open(ro.path(), true).unwrap().probe_punch_hole());
    }

    /// An aligned buffer of `n` bytes (for O_DIRECT tests).
    struct Aligned {
        ptr: *mut u8,
        layout: std::alloc::Layout,
    }

    impl Aligned {
        fn new(n: usize) -> Self {
            let layout = std::alloc::Layout::from_size_align(n, 4096).unwrap();
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Self { ptr, layout }
        }
        fn slice(&mut self) -> &mut [u8] {
            // SAFETY: `ptr` is a live allocation of `layout.size()` bytes we own.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
        }
    }

    impl Drop for Aligned {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, self.layout) };
        }
    }

    /// A DataIn/DataOut over an aligned buffer that says whether it is aligned.
    struct AlignedData<'a>(&'a mut [u8]);

    impl DataIn for AlignedData<'_> {
        fn capacity(&self) -> usize {
            self.0.len()
        }
        fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
            self.0[offset..offset + data.len()].copy_from_slice(data);
            data.len()
        }
        fn read_from_file(
            &mut self,
            offset: usize,
            len: usize,
            file: &File,
            at: u64,
        ) -> io::Result<()> {
            file.read_exact_at(&mut self.0[offset..offset + len], at)
        }
        fn is_aligned(&self, offset: usize, len: usize, align: usize) -> bool {
            (self.0.as_ptr() as usize + offset).is_multiple_of(align) && len.is_multiple_of(align)
        }
    }

    #[test]
    fn cache_none_uses_o_direct_when_aligned_and_counts_the_rest() {
        // /tmp is ext4 on the CI machine; a tmpfs would refuse O_DIRECT.
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, vec![0x5Au8; 64 * 1024]).unwrap();
        let img = match RawImage::open_with(&path, false, CacheMode::None) {
            Ok(i) => i,
            Err(OpenError::InvalidOption { field: "cache", .. }) => return, // tmpfs
            Err(e) => panic!("{e}"),
        };
        assert_eq!(img.cache(), CacheMode::None);
        let align = img.dio_align().unwrap();
        assert!(align.is_power_of_two() && align >= 512, "{align}");
        let mut buf = Aligned::new(8192);
        let mut d = AlignedData(buf.slice());
        img.read_into(&mut d, 0, 8192, 4096).unwrap();
        assert_eq!(img.misaligned(), 0, "an aligned read uses O_DIRECT");
        assert!(d.0.iter().all(|&b| b == 0x5A));
        // Misaligned buffer offset: served through the buffered fd, counted.
        img.read_into(&mut d, 1, 100, 0).unwrap();
        assert_eq!(img.misaligned(), 1);
        // A misaligned file offset too.
        let src = crate::buffers::SliceDataOut(&[7u8; 512]);
        img.write_from(&src, 0, 512, 3).unwrap();
        assert_eq!(img.misaligned(), 2);
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(&disk[3..515], &[7u8; 512][..]);
        // The direct descriptor is open O_DIRECT.
        let direct = img.direct.as_ref().unwrap();
        // SAFETY: F_GETFL on an fd we own; no memory involved.
        let fl = unsafe { libc::fcntl(direct.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_DIRECT, 0);
        assert_eq!(
            RawImage::open_with(&path, false, CacheMode::None)
                .err()
                .map(|e| matches!(e, OpenError::Locked { .. })),
            Some(true)
        );
    }

    #[test]
    fn read_only_refuses_writes() {
        let f = image(512);
        let img = RawImage::open(f.path(), true).unwrap();
        let data = crate::buffers::SliceDataOut(&[0u8; 512]);
        let err = img.write_from(&data, 0, 512, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read(f.path()).unwrap(), vec![0xA5; 512]);
    }
}
