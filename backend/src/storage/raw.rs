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

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::scsi::io::{DataIn, DataOut};

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
        reason: &'static str,
    },
}

/// An open, locked raw image.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

fn flock_nb(file: &File, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    loop {
        // flock touches no memory of ours.
        // SAFETY: flock takes an fd we own (borrowed from `file`, open for the whole call) and an integer operation.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl RawImage {
    /// Opens and locks `path`: `O_RDONLY` + shared lock when `read_only`,
    /// `O_RDWR` + exclusive lock otherwise. Refuses missing, empty and
    /// directory paths and images locked by someone else.
    pub fn open(path: &Path, read_only: bool) -> Result<RawImage, OpenError> {
        let owned = || path.to_path_buf();
        let mode = if read_only { "read-only" } else { "read-write" };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
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
        match flock_nb(&file, !read_only) {
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
        Ok(RawImage {
            file,
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

    /// Reads `len` bytes at `file_offset` into `data_in` at `offset`.
    pub fn read_into(
        &self,
        data_in: &mut dyn DataIn,
        offset: usize,
        len: usize,
        file_offset: u64,
    ) -> io::Result<()> {
        data_in.read_from_file(offset, len, &self.file, file_offset)
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
        data_out.write_to_file(offset, len, &self.file, file_offset)
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

    #[test]
    fn read_only_refuses_writes() {
        let f = image(512);
        let img = RawImage::open(f.path(), true).unwrap();
        let data = crate::scsi::io::SliceDataOut(&[0u8; 512]);
        let err = img.write_from(&data, 0, 512, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read(f.path()).unwrap(), vec![0xA5; 512]);
    }
}
