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
        // SAFETY: flock takes an fd we own (borrowed from `file`, open for the whole
        // call) and an integer operation; it touches no memory of ours.
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
    fn read_only_refuses_writes() {
        let f = image(512);
        let img = RawImage::open(f.path(), true).unwrap();
        let data = crate::scsi::io::SliceDataOut(&[0u8; 512]);
        let err = img.write_from(&data, 0, 512, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read(f.path()).unwrap(), vec![0xA5; 512]);
    }
}
