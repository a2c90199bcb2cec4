//! A qcow2 image, served through the [`imago`] crate (its native
//! synchronous build: plain blocking calls from the queue threads).
//!
//! The container file is opened and `flock`ed exactly like a raw image
//! (see [`RawImage::open`]): the lock fd is kept here so a second daemon is
//! refused and the control socket can release/retake the lock. imago opens
//! the image (and, read-only, its backing chain) by path next to it.
//!
//! Data path: unlike the raw path, guest data goes through a per-request
//! bounce buffer (one `Vec` of the request's length): imago maps guest
//! offsets to clusters and may split, allocate or copy on write, so it
//! cannot use `preadv`/`pwritev` into guest memory directly. imago does its
//! own metadata locking; the [`RwLock`] here is taken shared by reads and
//! writes (they run concurrently) and exclusive only by discard, which
//! imago requires (`discard_to_zero(&mut self)` invalidates mappings).

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};

use super::raw::{OpenError, RawImage};
use crate::buffers::{DataIn, DataOut};

/// The qcow2 magic, the first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

type Access = FormatAccess<imago::file::File>;

/// An open, locked qcow2 image.
pub struct Qcow2Image {
    /// The container file, opened and locked as a raw image (the lock lives
    /// as long as this).
    container: RawImage,
    access: RwLock<Access>,
    size: u64,
}

impl fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.container.path())
            .field("size", &self.size)
            .field("read_only", &self.container.read_only())
            .finish_non_exhaustive()
    }
}

fn poisoned() -> io::Error {
    io::Error::other("qcow2 image lock poisoned by a panicked request")
}

fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "image is read-only")
}

impl Qcow2Image {
    /// Opens the qcow2 image in the already opened and locked `container`
    /// (read-write unless the container is read-only). A backing file named
    /// in the image is opened read-only and read through.
    pub fn open(container: RawImage) -> Result<Qcow2Image, OpenError> {
        let path = container.path().to_path_buf();
        let writable = !container.read_only();
        let qcow2 = Qcow2::<imago::file::File>::builder_path(&path)
            .write(writable)
            .open(PermissiveImplicitOpenGate::default())
            .map_err(|source| OpenError::Format {
                path: path.clone(),
                format: "qcow2",
                source,
            })?;
        let access = FormatAccess::new(qcow2);
        let size = access.size();
        if size == 0 {
            return Err(OpenError::Empty { path });
        }
        Ok(Qcow2Image {
            container,
            access: RwLock::new(access),
            size,
        })
    }

    fn shared(&self) -> io::Result<RwLockReadGuard<'_, Access>> {
        self.access.read().map_err(|_| poisoned())
    }

    fn exclusive(&self) -> io::Result<RwLockWriteGuard<'_, Access>> {
        self.access.write().map_err(|_| poisoned())
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        self.container.path()
    }

    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.container.read_only()
    }

    /// The locked container file (not for data I/O: its bytes are qcow2).
    pub fn file(&self) -> &File {
        self.container.file()
    }

    /// Reads `len` guest bytes at `disk_offset` into `data_in` at `offset`
    /// (through a bounce buffer).
    pub fn read_into(
        &self,
        data_in: &mut dyn DataIn,
        offset: usize,
        len: usize,
        disk_offset: u64,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; len];
        self.read_at(&mut buf, disk_offset)?;
        if data_in.write_at(offset, &buf) != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the data buffer",
            ));
        }
        Ok(())
    }

    /// Writes `len` bytes of `data_out` from `offset` at `disk_offset`
    /// (through a bounce buffer).
    pub fn write_from(
        &self,
        data_out: &dyn DataOut,
        offset: usize,
        len: usize,
        disk_offset: u64,
    ) -> io::Result<()> {
        if self.read_only() {
            return Err(read_only_error());
        }
        let mut buf = vec![0u8; len];
        if data_out.read_at(offset, &mut buf) != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the data buffer",
            ));
        }
        self.write_at(&buf, disk_offset)
    }

    /// Reads exactly `buf.len()` guest bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            ));
        }
        self.shared()?.read(buf, offset)
    }

    /// Writes all of `buf` at guest `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only() {
            return Err(read_only_error());
        }
        self.shared()?.write(buf, offset)
    }

    /// Flushes imago's metadata caches, then `fdatasync`s the files.
    pub fn sync_data(&self) -> io::Result<()> {
        let access = self.shared()?;
        access.flush()?;
        access.sync()
    }

    /// Discards `len` bytes at `offset`; they read back as zeros (also
    /// over a backing file: imago writes zero clusters there).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only() {
            return Err(read_only_error());
        }
        if len == 0 {
            return Ok(());
        }
        self.exclusive()?.discard_to_zero(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;

    use vscsi_protocol::cdb::Cdb;

    use crate::scsi::testutil::{run, run_cdb};
    use crate::scsi::{LogicalUnit, LunOptions, ScsiBus};
    use crate::storage::{Image, ImageFormat};

    /// Whether `qemu-img` (Debian package qemu-utils) is here. Without it a
    /// qcow2 test is skipped with a notice, unless CI (`.ci/run` sets
    /// VSCSI_REQUIRE_TOOLS=1) requires it.
    fn qemu_img_present() -> bool {
        let found = std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok();
        if !found {
            assert!(
                std::env::var_os("VSCSI_REQUIRE_TOOLS").is_none(),
                "qemu-img is missing: apt-get install qemu-utils (see .ci/run)"
            );
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIP: qemu-img is missing (apt-get install qemu-utils); qcow2 test not run\n",
            );
        }
        found
    }

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img runs (install qemu-utils)");
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    }

    fn qcow2(dir: &Path, name: &str, size: &str, backing: Option<&Path>) -> PathBuf {
        let p = dir.join(name);
        let ps = p.to_str().unwrap();
        match backing {
            None => qemu_img(&["create", "-q", "-f", "qcow2", ps, size]),
            Some(b) => qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                b.to_str().unwrap(),
                ps,
                size,
            ]),
        }
        p
    }

    /// The guest-visible bytes of a qcow2 image, through qemu-img.
    fn as_raw(dir: &Path, img: &Path) -> Vec<u8> {
        let out = dir.join("converted.raw");
        qemu_img(&[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        std::fs::read(out).unwrap()
    }

    fn bus(path: &Path, opts: LunOptions) -> ScsiBus {
        let lu = LogicalUnit::open(path, opts).unwrap();
        let mut bus = ScsiBus::new();
        bus.add_lun(0, 0, Arc::new(lu)).unwrap();
        bus
    }

    #[test]
    fn writes_land_in_the_qcow2_and_read_back() {
        if !qemu_img_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // A .img name: the format comes from the content.
        let p = qcow2(dir.path(), "disk.img", "4M", None);
        let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        {
            let bus = bus(&p, LunOptions::default());
            let t = bus.target(0).unwrap();
            let lu = t.lun(0).unwrap();
            assert_eq!(lu.image().format(), ImageFormat::Qcow2);
            assert_eq!(lu.capacity_blocks(), 4 * 2048);
            let (r, _) = run(t, 0, Cdb::write_10(100, 8, false).as_bytes(), 0, &payload);
            assert!(r.is_good(), "{r:?}");
            let (r, data) = run_cdb(t, 0, Cdb::read_10(100, 8, false), 4096);
            assert!(r.is_good());
            assert_eq!(data, payload);
            // Unwritten blocks read zero.
            let (r, data) = run_cdb(t, 0, Cdb::read_16(0, 1, false), 512);
            assert!(r.is_good());
            assert!(data.iter().all(|&b| b == 0));
            let (r, _) = run_cdb(t, 0, Cdb::synchronize_cache_10(0, 0), 0);
            assert!(r.is_good(), "{r:?}");
        }
        // The file is still qcow2 and holds the data.
        assert_eq!(&std::fs::read(&p).unwrap()[..4], b"QFI\xfb");
        let disk = as_raw(dir.path(), &p);
        assert_eq!(disk.len(), 4 << 20);
        assert_eq!(&disk[100 * 512..108 * 512], &payload[..]);
        assert!(disk[..100 * 512].iter().all(|&b| b == 0));
    }

    #[test]
    fn backing_file_reads_through_and_writes_stay_in_the_overlay() {
        if !qemu_img_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let base_data: Vec<u8> = (0..1u32 << 20).map(|i| (i / 512) as u8 ^ 0x5A).collect();
        std::fs::write(&base, &base_data).unwrap();
        let overlay = qcow2(dir.path(), "overlay.qcow2", "1M", Some(&base));
        {
            let bus = bus(&overlay, LunOptions::default());
            let t = bus.target(0).unwrap();
            let (r, data) = run_cdb(t, 0, Cdb::read_10(10, 4, false), 2048);
            assert!(r.is_good());
            assert_eq!(data, &base_data[10 * 512..14 * 512]);
            let (r, _) = run(
                t,
                0,
                Cdb::write_10(11, 1, false).as_bytes(),
                0,
                &[0xEE; 512],
            );
            assert!(r.is_good());
            let (r, data) = run_cdb(t, 0, Cdb::read_10(10, 3, false), 1536);
            assert!(r.is_good());
            assert_eq!(&data[..512], &base_data[10 * 512..11 * 512]);
            assert!(data[512..1024].iter().all(|&b| b == 0xEE));
            assert_eq!(&data[1024..], &base_data[12 * 512..13 * 512]);
        }
        // The base is untouched.
        assert_eq!(std::fs::read(&base).unwrap(), base_data);
        let disk = as_raw(dir.path(), &overlay);
        assert!(disk[11 * 512..12 * 512].iter().all(|&b| b == 0xEE));
        assert_eq!(&disk[12 * 512..], &base_data[12 * 512..]);
    }

    #[test]
    fn read_only_qcow2_refuses_writes() {
        if !qemu_img_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = qcow2(dir.path(), "ro.qcow2", "1M", None);
        let before = std::fs::read(&p).unwrap();
        let bus = bus(
            &p,
            LunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        assert!(!t.lun(0).unwrap().thin());
        let (r, _) = run(t, 0, Cdb::write_10(0, 1, false).as_bytes(), 0, &[1; 512]);
        assert_eq!(r.sense()[2] & 0x0F, 0x07); // DATA PROTECT
        let (r, _) = run_cdb(t, 0, Cdb::read_10(0, 1, false), 512);
        assert!(r.is_good());
        drop(bus);
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn unmap_discards_and_reads_zero() {
        if !qemu_img_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = qcow2(dir.path(), "thin.qcow2", "1M", None);
        let bus = bus(&p, LunOptions::default());
        let t = bus.target(0).unwrap();
        assert!(t.lun(0).unwrap().thin());
        let (r, _) = run(
            t,
            0,
            Cdb::write_10(0, 256, false).as_bytes(),
            0,
            &[0x77; 256 * 512],
        );
        assert!(r.is_good());
        // UNMAP(10) of blocks 0..128: one 16-byte descriptor.
        let mut param = vec![0u8; 24];
        param[1] = 22;
        param[3] = 16;
        param[8..16].copy_from_slice(&0u64.to_be_bytes());
        param[16..20].copy_from_slice(&128u32.to_be_bytes());
        let (r, _) = run(t, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], 0, &param);
        assert!(r.is_good(), "{r:?}");
        let (r, data) = run_cdb(t, 0, Cdb::read_10(0, 256, false), 256 * 512);
        assert!(r.is_good());
        assert!(data[..128 * 512].iter().all(|&b| b == 0));
        assert!(data[128 * 512..].iter().all(|&b| b == 0x77));
        drop(bus);
        let disk = as_raw(dir.path(), &p);
        assert!(disk[..128 * 512].iter().all(|&b| b == 0));
        assert!(disk[128 * 512..256 * 512].iter().all(|&b| b == 0x77));
    }

    #[test]
    fn format_comes_from_content_not_name_and_can_be_forced() {
        if !qemu_img_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // A raw file named .qcow2 is raw.
        let raw = dir.path().join("not-really.qcow2");
        std::fs::write(&raw, vec![0xABu8; 8192]).unwrap();
        let img = Image::open(&raw, true, ImageFormat::Auto).unwrap();
        assert_eq!(img.format(), ImageFormat::Raw);
        drop(img);
        // Forcing qcow2 on it is refused, naming the image.
        let err = Image::open(&raw, true, ImageFormat::Qcow2).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&raw.display().to_string()), "{msg}");
        assert!(msg.contains("qcow2"), "{msg}");
        // A qcow2 named .img is qcow2; format=raw serves its bytes as they are.
        let q = qcow2(dir.path(), "disk.img", "1M", None);
        let img = Image::open(&q, true, ImageFormat::Auto).unwrap();
        assert_eq!(img.format(), ImageFormat::Qcow2);
        assert_eq!(img.size(), 1 << 20);
        drop(img);
        let img = Image::open(&q, true, ImageFormat::Raw).unwrap();
        assert_eq!(img.format(), ImageFormat::Raw);
        let mut magic = [0u8; 4];
        img.read_at(&mut magic, 0).unwrap();
        assert_eq!(&magic, b"QFI\xfb");
        drop(img);
        // The lock holds for qcow2 too.
        let _a = Image::open(&q, false, ImageFormat::Auto).unwrap();
        assert!(matches!(
            Image::open(&q, false, ImageFormat::Auto),
            Err(super::OpenError::Locked { .. })
        ));
    }
}
