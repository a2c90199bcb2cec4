//! Backing stores for logical units: raw images (regular files or block
//! devices, see [`raw`]) and qcow2 images (see [`qcow2`]), behind one
//! [`Image`].
//!
//! The format comes from the file's content, not its name: an image whose
//! first four bytes are the qcow2 magic `QFI\xfb` is qcow2, anything else is
//! raw ([`ImageFormat::Auto`], the default). [`ImageFormat::Raw`] and
//! [`ImageFormat::Qcow2`] force it (forcing qcow2 on a file without the
//! magic is refused; forcing raw serves a qcow2 file's bytes as they are).
//!
//! The raw path is unchanged by the enum: one `match` and then the same
//! direct `preadv`/`pwritev` into guest memory, no allocation, no lock.
//!
//! Caching ([`CacheMode`], like QEMU's `cache=`): `writeback` (default)
//! goes through the host page cache; `none` opens a raw image a second time
//! with `O_DIRECT` and moves every aligned request through that descriptor
//! (a request whose guest buffers are not aligned to the file system's
//! direct-I/O alignment goes through the buffered descriptor of the same
//! file instead, never through a bounce buffer, and is counted). qcow2
//! images refuse `cache=none`: imago does its own buffered I/O.
//!
//! Submission ([`AioMode`]): `inline` runs `preadv`/`pwritev` on the queue
//! thread; `io_uring` lets the transport keep many requests in flight (see
//! `vhost/uring.rs`). The default is `io_uring` with `cache=none` (I/O that
//! blocks on the device) and `inline` with `writeback` (page-cache hits
//! complete in about a microsecond, io_uring buys nothing for them).
//!
//! Network storage ([`nbd`]): an "image" spelled as an NBD URI
//! (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`) is an
//! export of an NBD server, served through the daemon's own NBD client
//! (`cache`, `aio` and `format` do not apply: the server does the caching
//! and the format).

pub mod lock;
pub mod modes;
pub mod nbd;
pub mod qcow2;
pub mod raw;

use std::fs::File;
use std::io;
use std::path::Path;

pub use modes::{AioMode, CacheMode, ImageFormat};
pub use nbd::NbdImage;
pub use qcow2::{Qcow2Image, QCOW2_MAGIC};
pub use raw::{OpenError, RawImage};

use crate::buffers::{DataIn, DataOut};

/// An open, locked image of any supported format.
#[derive(Debug)]
pub enum Image {
    /// Served byte for byte.
    Raw(RawImage),
    /// Served through imago.
    Qcow2(Qcow2Image),
    /// An NBD export.
    Nbd(NbdImage),
}

fn has_qcow2_magic(raw: &RawImage) -> bool {
    let mut magic = [0u8; 4];
    raw.size() >= 4 && raw.read_at(&mut magic, 0).is_ok() && magic == QCOW2_MAGIC
}

impl Image {
    /// Opens and locks `path` (see [`RawImage::open`]) and serves it in
    /// `format` (detected from the content for [`ImageFormat::Auto`]).
    pub fn open(path: &Path, read_only: bool, format: ImageFormat) -> Result<Image, OpenError> {
        Self::open_with(path, read_only, format, CacheMode::Writeback)
    }

    /// [`Image::open`] with a cache mode: `cache=none` opens a raw image a
    /// second time with `O_DIRECT` ([`RawImage::open_with`]) and is refused
    /// for qcow2 (imago's I/O is buffered) with an error naming the field.
    pub fn open_with(
        path: &Path,
        read_only: bool,
        format: ImageFormat,
        cache: CacheMode,
    ) -> Result<Image, OpenError> {
        if path.to_str().is_some_and(nbd::is_nbd_uri) {
            if cache == CacheMode::None {
                return Err(OpenError::InvalidOption {
                    path: path.to_path_buf(),
                    field: "cache",
                    value: "none".into(),
                    reason: "an NBD export is cached (or not) by its server: use cache=writeback"
                        .into(),
                });
            }
            if format == ImageFormat::Qcow2 {
                return Err(OpenError::InvalidOption {
                    path: path.to_path_buf(),
                    field: "format",
                    value: "qcow2".into(),
                    reason: "an NBD export is served as the server presents it: let the server open the qcow2 (format=raw or auto here)".into(),
                });
            }
            return Ok(Image::Nbd(NbdImage::open(path, read_only)?));
        }
        let raw = RawImage::open_with(path, read_only, cache)?;
        let qcow2 = match format {
            ImageFormat::Raw => false,
            ImageFormat::Auto => has_qcow2_magic(&raw),
            ImageFormat::Qcow2 => {
                if !has_qcow2_magic(&raw) {
                    return Err(OpenError::Format {
                        path: path.to_path_buf(),
                        format: "qcow2",
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "no qcow2 magic (QFI\\xfb) at the start of the file",
                        ),
                    });
                }
                true
            }
        };
        if qcow2 && cache == CacheMode::None {
            return Err(OpenError::InvalidOption {
                path: path.to_path_buf(),
                field: "cache",
                value: "none".into(),
                reason: "cache=none needs a raw image (qcow2 is served through imago's buffered I/O): use cache=writeback".into(),
            });
        }
        if qcow2 {
            Ok(Image::Qcow2(Qcow2Image::open(raw)?))
        } else {
            Ok(Image::Raw(raw))
        }
    }

    /// The raw image, if this is one (the transport's io_uring engine
    /// submits straight on its descriptors).
    pub fn as_raw(&self) -> Option<&RawImage> {
        match self {
            Image::Raw(r) => Some(r),
            Image::Qcow2(_) | Image::Nbd(_) => None,
        }
    }

    /// The NBD export, if this is one.
    pub fn as_nbd(&self) -> Option<&NbdImage> {
        match self {
            Image::Nbd(n) => Some(n),
            _ => None,
        }
    }

    /// Requests served through the buffered descriptor of a `cache=none`
    /// image because their buffers were not aligned for `O_DIRECT`.
    pub fn misaligned(&self) -> u64 {
        self.as_raw().map_or(0, RawImage::misaligned)
    }

    /// The format being served (never `Auto`).
    pub fn format(&self) -> ImageFormat {
        match self {
            Image::Raw(_) | Image::Nbd(_) => ImageFormat::Raw,
            Image::Qcow2(_) => ImageFormat::Qcow2,
        }
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        match self {
            Image::Raw(r) => r.path(),
            Image::Qcow2(q) => q.path(),
            Image::Nbd(n) => n.path(),
        }
    }

    /// Disk size in bytes at open time.
    pub fn size(&self) -> u64 {
        match self {
            Image::Raw(r) => r.size(),
            Image::Qcow2(q) => q.size(),
            Image::Nbd(n) => n.size(),
        }
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        match self {
            Image::Raw(r) => r.read_only(),
            Image::Qcow2(q) => q.read_only(),
            Image::Nbd(n) => n.read_only(),
        }
    }

    /// The open (and locked) file; for qcow2 the container, whose bytes are
    /// not the disk's; none for an NBD export.
    pub fn file(&self) -> Option<&File> {
        match self {
            Image::Raw(r) => Some(r.file()),
            Image::Qcow2(q) => Some(q.file()),
            Image::Nbd(_) => None,
        }
    }

    /// Reads `len` disk bytes at `disk_offset` into `data_in` at `offset`.
    #[inline]
    pub fn read_into(
        &self,
        data_in: &mut dyn DataIn,
        offset: usize,
        len: usize,
        disk_offset: u64,
    ) -> io::Result<()> {
        match self {
            Image::Raw(r) => r.read_into(data_in, offset, len, disk_offset),
            Image::Qcow2(q) => q.read_into(data_in, offset, len, disk_offset),
            Image::Nbd(n) => n.read_into(data_in, offset, len, disk_offset),
        }
    }

    /// Writes `len` bytes of `data_out` from `offset` at `disk_offset`;
    /// `PermissionDenied` on a read-only image.
    #[inline]
    pub fn write_from(
        &self,
        data_out: &dyn DataOut,
        offset: usize,
        len: usize,
        disk_offset: u64,
    ) -> io::Result<()> {
        match self {
            Image::Raw(r) => r.write_from(data_out, offset, len, disk_offset),
            Image::Qcow2(q) => q.write_from(data_out, offset, len, disk_offset),
            Image::Nbd(n) => n
                .write_from(data_out, offset, len, disk_offset, false)
                .map(|_| ()),
        }
    }

    /// [`Image::write_from`] that is to be durable when `fua`: `Ok(true)`
    /// when the medium made it durable itself (an NBD export taking
    /// NBD_CMD_FLAG_FUA), `Ok(false)` when the caller still has to flush.
    pub fn write_from_fua(
        &self,
        data_out: &dyn DataOut,
        offset: usize,
        len: usize,
        disk_offset: u64,
        fua: bool,
    ) -> io::Result<bool> {
        match self {
            Image::Nbd(n) => n.write_from(data_out, offset, len, disk_offset, fua),
            _ => self
                .write_from(data_out, offset, len, disk_offset)
                .map(|()| false),
        }
    }

    /// Whether the medium has a volatile write cache that a flush empties
    /// (an NBD export without SEND_FLUSH has none: WCE starts off).
    pub fn has_write_cache(&self) -> bool {
        match self {
            Image::Nbd(n) => n.has_write_cache(),
            _ => true,
        }
    }

    /// Whether a deallocated range reads back as zeroes (LBPRZ): holes in a
    /// file and discarded qcow2 clusters do; an NBD TRIM promises nothing.
    pub fn unmapped_reads_zero(&self) -> bool {
        !matches!(self, Image::Nbd(_))
    }

    /// Writes zeroes over `[offset, offset + len)` in one medium operation
    /// where the medium has one (NBD_CMD_WRITE_ZEROES; `may_unmap` lets it
    /// deallocate); `None` when the caller has to write zero blocks.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Option<io::Result<()>> {
        match self {
            Image::Nbd(n) if n.can_write_zeroes() => Some(n.write_zeroes(offset, len, may_unmap)),
            _ => None,
        }
    }

    /// Makes written data durable.
    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            Image::Raw(r) => r.sync_data(),
            Image::Qcow2(q) => q.sync_data(),
            Image::Nbd(n) => n.sync_data(),
        }
    }

    /// The descriptor whose reads fill the host page cache that serves this
    /// image's reads: a raw image with `cache=writeback`. `None` for
    /// `cache=none` (reads bypass the page cache), qcow2 (its clusters are
    /// not where the guest's blocks are) and NBD (no local cache).
    pub fn page_cached_file(&self) -> Option<&File> {
        match self {
            Image::Raw(r) if r.cache() == CacheMode::Writeback => Some(r.file()),
            _ => None,
        }
    }

    /// Reads exactly `buf.len()` disk bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Image::Raw(r) => r.read_at(buf, offset),
            Image::Qcow2(q) => q.read_at(buf, offset),
            Image::Nbd(n) => n.read_at(buf, offset),
        }
    }

    /// Writes all of `buf` at disk `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            Image::Raw(r) => r.write_at(buf, offset),
            Image::Qcow2(q) => q.write_at(buf, offset),
            Image::Nbd(n) => n.write_at(buf, offset),
        }
    }

    /// Current disk size in bytes (a raw image may have been resized; a
    /// qcow2 disk's virtual size is the one read at open).
    pub fn current_size(&self) -> io::Result<u64> {
        match self {
            Image::Raw(r) => r.current_size(),
            Image::Qcow2(q) => Ok(q.size()),
            Image::Nbd(n) => Ok(n.size()),
        }
    }

    /// The allocation of `len` bytes at `offset` as the medium reports it
    /// (an NBD export's `base:allocation` block status): `(bytes, hole)`
    /// extents from `offset`, at most `max`; `None` where the medium has no
    /// such report (files use [`Image::seek`]).
    pub fn allocation(
        &self,
        offset: u64,
        len: u64,
        max: usize,
    ) -> Option<io::Result<Vec<(u64, bool)>>> {
        match self {
            Image::Nbd(n) => n.allocation(offset, len, max),
            _ => None,
        }
    }

    /// Whether `SEEK_DATA`/`SEEK_HOLE` describe the disk's allocation: a
    /// raw regular file only.
    pub fn is_regular_file(&self) -> bool {
        match self {
            Image::Raw(r) => r.is_regular_file(),
            Image::Qcow2(_) | Image::Nbd(_) => false,
        }
    }

    /// Deallocates `len` bytes at `offset`; the range reads back as zeros
    /// (raw: `fallocate(PUNCH_HOLE)`; qcow2: imago's discard-to-zero)
    /// unless [`Image::unmapped_reads_zero`] says otherwise (NBD TRIM).
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Image::Raw(r) => r.punch_hole(offset, len),
            Image::Qcow2(q) => q.discard(offset, len),
            Image::Nbd(n) => n.trim(offset, len),
        }
    }

    /// Whether [`Image::punch_hole`] works: a raw writable regular file on a
    /// filesystem that punches holes, or any writable qcow2 image.
    pub fn probe_punch_hole(&self) -> bool {
        match self {
            Image::Raw(r) => r.probe_punch_hole(),
            Image::Qcow2(q) => !q.read_only(),
            Image::Nbd(n) => n.can_trim(),
        }
    }

    /// `lseek` for `SEEK_DATA` / `SEEK_HOLE` / `SEEK_END` on a raw image
    /// (see [`RawImage::seek`]); `Unsupported` on qcow2.
    pub fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        match self {
            Image::Raw(r) => r.seek(offset, whence),
            Image::Qcow2(_) | Image::Nbd(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn qcow2_refuses_cache_none_naming_the_field() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let path = dir.path().join("q.img");
        let mut bytes = QCOW2_MAGIC.to_vec();
        bytes.resize(64 * 1024, 0);
        std::fs::write(&path, &bytes).unwrap();
        let err = Image::open_with(&path, false, ImageFormat::Auto, CacheMode::None).unwrap_err();
        match &err {
            // A tmpfs refuses O_DIRECT first; both name the cache field.
            OpenError::InvalidOption { field, .. } => assert_eq!(*field, "cache"),
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("cache"),
            "{msg}"
        );
        // The same bytes served raw with cache=none are fine.
        let raw = Image::open_with(&path, false, ImageFormat::Raw, CacheMode::None);
        if let Ok(img) = raw {
            assert_eq!(img.format(), ImageFormat::Raw);
            assert_eq!(img.misaligned(), 0);
        }
    }

    #[test]
    fn aio_defaults_follow_the_cache_mode() {
        assert_eq!(AioMode::Auto.resolve(CacheMode::None), AioMode::IoUring);
        assert_eq!(AioMode::Auto.resolve(CacheMode::Writeback), AioMode::Inline);
        assert_eq!(AioMode::Inline.resolve(CacheMode::None), AioMode::Inline);
        assert_eq!(
            AioMode::IoUring.resolve(CacheMode::Writeback),
            AioMode::IoUring
        );
        for m in [AioMode::Auto, AioMode::Inline, AioMode::IoUring] {
            assert_eq!(AioMode::parse(m.as_str()), Some(m));
        }
        for c in [CacheMode::Writeback, CacheMode::None] {
            assert_eq!(CacheMode::parse(c.as_str()), Some(c));
        }
        assert_eq!(CacheMode::parse("unsafe"), None);
    }
}
