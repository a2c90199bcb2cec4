//! A logical unit: a direct-access block device (SBC-4) over a raw or qcow2
//! image (see [`crate::storage`]).
//!
//! `LogicalUnit` is shared by the request-queue worker threads through an
//! `Arc`: every method takes `&self`, the identity data is computed once at
//! open, and READ/WRITE go straight to positioned I/O on the image with no
//! lock and no allocation.
//!
//! Mutable per-LU state (mode parameters WCE and D_SENSE, unit attentions,
//! the stopped state, PREVENT ALLOW MEDIUM REMOVAL) lives in atomics: the
//! READ/WRITE path reads one word (`LogicalUnit::attention`) and, for a
//! write, the WCE flag. COMPARE AND WRITE atomicity comes from
//! [`RangeLocks`], which plain writes only touch while a COMPARE AND WRITE
//! is active; WRITE ATOMIC's adds an epoch reads check
//! ([`super::atomic::AtomicWindow`]).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use vscsi_protocol::data::{StandardInquiry, TYPE_CDROM, TYPE_DISK};
use vscsi_protocol::sense::Sense;

use super::nexus::Nexus;
use super::reservation::Reservations;
pub use crate::lun_options::{DeviceType, LunOptions, MAX_SERIAL_LEN};
use crate::storage::{AioMode, Image, OpenError};

/// Pending unit attention: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
pub const UA_POWER_ON_RESET: u32 = 1 << 0;
/// Pending unit attention: NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
pub const UA_MEDIUM_CHANGED: u32 = 1 << 4;
/// Pending unit attention: CAPACITY DATA HAS CHANGED.
pub const UA_CAPACITY_CHANGED: u32 = 1 << 1;
/// Pending unit attention: REPORTED LUNS DATA HAS CHANGED.
pub const UA_REPORTED_LUNS_CHANGED: u32 = 1 << 2;
/// Pending unit attention: MODE PARAMETERS CHANGED.
pub const UA_MODE_PARAMETERS_CHANGED: u32 = 1 << 3;
const UA_MASK: u32 = 0xFFFF;
/// Not a unit attention: the LU was stopped by START STOP UNIT.
pub(crate) const STATE_STOPPED: u32 = 1 << 16;
/// Not a unit attention: the removable medium is ejected.
pub(crate) const STATE_NO_MEDIUM: u32 = 1 << 17;

/// GET EVENT STATUS NOTIFICATION media event codes (MMC-6).
pub(crate) const MEDIA_EVENT_NONE: u8 = 0;
/// New medium loaded.
pub(crate) const MEDIA_EVENT_NEW_MEDIA: u8 = 2;
/// Medium removed.
pub(crate) const MEDIA_EVENT_REMOVAL: u8 = 3;

/// The sense of each unit attention bit, in SPC-5 order of precedence
/// (SAM-5 unit attention condition; lowest bit first).
const UA_SENSE: [(u32, Sense); 5] = [
    (UA_POWER_ON_RESET, Sense::POWER_ON_RESET),
    (UA_MEDIUM_CHANGED, Sense::MEDIUM_MAY_HAVE_CHANGED),
    (UA_CAPACITY_CHANGED, Sense::CAPACITY_DATA_HAS_CHANGED),
    (
        UA_REPORTED_LUNS_CHANGED,
        Sense::REPORTED_LUNS_DATA_HAS_CHANGED,
    ),
    (UA_MODE_PARAMETERS_CHANGED, Sense::MODE_PARAMETERS_CHANGED),
];

/// LBA-range locks for COMPARE AND WRITE atomicity (SBC-4: no other
/// command may modify the blocks between the compare and the write).
///
/// Plain WRITEs take no lock while no COMPARE AND WRITE is active: they
/// bump `fast_writers`, check `caw_active` (both `SeqCst`, Dekker style: a
/// writer and a COMPARE AND WRITE cannot both miss each other) and go. A
/// COMPARE AND WRITE registers its range, then waits for the fast writers
/// already in flight to drain; writers arriving while it is active register
/// their range too and wait for overlapping ones.
#[derive(Debug, Default)]
pub struct RangeLocks {
    caw_active: AtomicUsize,
    fast_writers: AtomicUsize,
    ranges: Mutex<Vec<(u64, u64)>>,
    released: Condvar,
}

/// Held while a write (or COMPARE AND WRITE) runs; releases on drop.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: Option<(u64, u64)>,
    caw: bool,
}

impl RangeLocks {
    fn table(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.ranges.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_range(&self, lba: u64, blocks: u64) -> (u64, u64) {
        let end = lba.saturating_add(blocks.max(1));
        let mut t = self.table();
        while t.iter().any(|&(s, e)| s < end && lba < e) {
            t = self.released.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        t.push((lba, end));
        (lba, end)
    }

    /// A plain write of `blocks` blocks at `lba`: lock-free unless a
    /// COMPARE AND WRITE is active.
    pub fn write(&self, lba: u64, blocks: u64) -> RangeGuard<'_> {
        self.fast_writers.fetch_add(1, Ordering::SeqCst);
        if self.caw_active.load(Ordering::SeqCst) == 0 {
            return RangeGuard {
                locks: self,
                range: None,
                caw: false,
            };
        }
        self.fast_writers.fetch_sub(1, Ordering::SeqCst);
        self.locked(lba, blocks)
    }

    /// A plain write whose data transfer the transport runs later: counted
    /// as a fast writer until [`RangeLocks::end_deferred_write`], so a
    /// COMPARE AND WRITE waits for it. Refused (false, nothing taken) while
    /// a COMPARE AND WRITE is active.
    pub fn begin_deferred_write(&self) -> bool {
        self.fast_writers.fetch_add(1, Ordering::SeqCst);
        if self.caw_active.load(Ordering::SeqCst) == 0 {
            return true;
        }
        self.fast_writers.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// The deferred write of [`RangeLocks::begin_deferred_write`] is done.
    pub fn end_deferred_write(&self) {
        self.fast_writers.fetch_sub(1, Ordering::SeqCst);
    }

    /// A write that always registers its range (UNMAP, WRITE SAME, WRITE
    /// AND VERIFY: not hot, and they span many blocks).
    pub fn locked(&self, lba: u64, blocks: u64) -> RangeGuard<'_> {
        let range = self.take_range(lba, blocks);
        RangeGuard {
            locks: self,
            range: Some(range),
            caw: false,
        }
    }

    /// COMPARE AND WRITE: exclusive against every other write to the range.
    pub fn compare_and_write(&self, lba: u64, blocks: u64) -> RangeGuard<'_> {
        self.caw_active.fetch_add(1, Ordering::SeqCst);
        let range = self.take_range(lba, blocks);
        let guard = RangeGuard {
            locks: self,
            range: Some(range),
            caw: true,
        };
        while self.fast_writers.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        guard
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        match self.range {
            None => {
                self.locks.fast_writers.fetch_sub(1, Ordering::SeqCst);
            }
            Some(r) => {
                let mut t = self.locks.table();
                if let Some(i) = t.iter().position(|&x| x == r) {
                    t.swap_remove(i);
                }
                drop(t);
                if self.caw {
                    self.locks.caw_active.fetch_sub(1, Ordering::SeqCst);
                }
                self.locks.released.notify_all();
            }
        }
    }
}

/// Length of the standard INQUIRY data served: 96 bytes, with version
/// descriptors (SPC-5 standard INQUIRY data format).
pub const INQUIRY_LEN: usize = 96;

/// Version descriptors claimed in standard INQUIRY data (SPC-5 version
/// descriptor values): SAM-5, SPC-5, SBC-4, each "no version claimed".
pub const VERSION_DESCRIPTORS: [u16; 3] = [0x00A0, 0x05C0, 0x0600];

/// A logical unit serving one image.
#[derive(Debug)]
pub struct LogicalUnit {
    image: Image,
    opts: LunOptions,
    /// The options as given to [`LogicalUnit::open`] (before the medium
    /// settled some): how a controller finds a shared LU to reuse.
    asked: LunOptions,
    blocks: AtomicU64,
    block_shift: u32,
    inquiry: [u8; INQUIRY_LEN],
    /// VPD 83h T10 vendor ID designator (vendor + identifier), printable ASCII.
    designator: String,
    /// VPD 80h serial (configured or derived).
    serial: String,
    /// VPD 83h NAA designator.
    naa: u64,
    /// Thin provisioned: holes can be punched (UNMAP, WRITE SAME UNMAP).
    thin: bool,
    /// Unmap granularity in logical blocks (filesystem block / logical block).
    unmap_granularity: u32,
    /// Unit attentions and the stopped state (see `UA_*`).
    attention: AtomicU32,
    wce: AtomicBool,
    d_sense: AtomicBool,
    prevent: AtomicBool,
    media_event: AtomicU8,
    locks: RangeLocks,
    /// What lock-free reads check against WRITE ATOMIC.
    atomic: super::atomic::AtomicWindow,
    /// WRITE BUFFER / READ BUFFER's buffer.
    data_buffer: super::buffer::DataBuffer,
    /// Persistent and SPC-2 reservations.
    pr: Reservations,
}

/// 64-bit FNV-1a, to derive a stable identifier from the image path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl LogicalUnit {
    /// Opens (and locks) the image at `path` and checks `opts`.
    ///
    /// An image whose size is not a multiple of the block size is served
    /// rounded down, with a warning naming it; one smaller than a block is
    /// refused.
    pub fn open(path: &Path, mut opts: LunOptions) -> Result<LogicalUnit, OpenError> {
        let asked = opts.clone();
        opts.settle_device_type();
        opts.check().map_err(|e| OpenError::InvalidOption {
            path: path.to_path_buf(),
            field: e.option.field(),
            value: e.value.clone(),
            reason: e.message(crate::lun_options::Spelling::Field),
        })?;
        let image = Image::open_with(path, opts.read_only, opts.format, opts.cache)?;
        // The medium may know better: a read-only NBD export is write
        // protected, one without a volatile cache has WCE off.
        if image.read_only() {
            opts.read_only = true;
        }
        if !image.has_write_cache() {
            opts.write_cache = false;
        }
        if opts.aio == AioMode::IoUring && image.as_raw().is_none() {
            return Err(OpenError::InvalidOption {
                path: path.to_path_buf(),
                field: "aio",
                value: "io_uring".into(),
                reason:
                    "io_uring serves raw images only (qcow2 goes through imago): use aio=inline"
                        .into(),
            });
        }
        let block_shift = opts.block_size.trailing_zeros();
        let blocks = image.size() >> block_shift;
        if blocks == 0 {
            return Err(OpenError::TooSmall {
                path: path.to_path_buf(),
                size: image.size(),
                block_size: opts.block_size,
            });
        }
        let tail = image.size() - (blocks << block_shift);
        if tail != 0 {
            tracing::warn!(
                image = %path.display(),
                size = image.size(),
                block_size = opts.block_size,
                ignored_bytes = tail,
                "image size is not a multiple of the block size; serving it rounded down"
            );
        }
        let mut inquiry = [0u8; INQUIRY_LEN];
        let mut std_inq = StandardInquiry::disk(&opts.vendor, &opts.product, &opts.revision);
        std_inq.removable = opts.removable;
        std_inq.device_type = match opts.device_type {
            DeviceType::Disk => TYPE_DISK,
            DeviceType::Cdrom => TYPE_CDROM,
        };
        inquiry[..36].copy_from_slice(&std_inq.to_bytes());
        inquiry[4] = (INQUIRY_LEN - 5) as u8;
        // A CD-ROM claims SAM-5 and SPC-5 only (MMC is not fully implemented).
        let claims = match opts.device_type {
            DeviceType::Disk => &VERSION_DESCRIPTORS[..],
            DeviceType::Cdrom => &VERSION_DESCRIPTORS[..2],
        };
        for (i, v) in claims.iter().enumerate() {
            inquiry[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let path_hash = fnv1a(canon.as_os_str().as_encoded_bytes());
        let id = match &opts.serial {
            Some(s) => s.clone(),
            None => format!("{}-{:016x}", opts.product, path_hash),
        };
        let serial = match &opts.serial {
            Some(s) => s.clone(),
            None => format!("{path_hash:016X}"),
        };
        let designator = format!("{:<8}{}", opts.vendor, id);
        // NAA 3h (locally assigned, SPC-5 NAA designator formats): 60 bits of
        // the hash of the designator, stable across restarts.
        let naa = opts
            .wwn
            .unwrap_or(0x3 << 60 | (fnv1a(designator.as_bytes()) & 0x0FFF_FFFF_FFFF_FFFF));
        let thin = opts.discard && image.probe_punch_hole();
        let unmap_granularity = if thin && matches!(image, Image::Raw(_)) {
            use std::os::unix::fs::MetadataExt;
            let fs_block = image
                .file()
                .and_then(|f| f.metadata().ok())
                .map_or(4096, |m| m.blksize());
            u32::try_from(fs_block >> block_shift).unwrap_or(1).max(1)
        } else {
            1
        };
        let attention = if opts.power_on_ua {
            UA_POWER_ON_RESET
        } else {
            0
        };
        let wce = opts.write_cache;
        // The APTPL state file sits beside an image file; an NBD export or
        // a block device has no directory of its own for it (PTPL_C=0).
        let persist = image.file().is_some() && std::fs::metadata(path).is_ok_and(|m| m.is_file());
        let pr = Reservations::open(path, persist);
        Ok(LogicalUnit {
            pr,
            image,
            blocks: AtomicU64::new(blocks),
            block_shift,
            inquiry,
            designator,
            serial,
            naa,
            thin,
            unmap_granularity,
            attention: AtomicU32::new(attention),
            wce: AtomicBool::new(wce),
            d_sense: AtomicBool::new(false),
            prevent: AtomicBool::new(false),
            media_event: AtomicU8::new(MEDIA_EVENT_NONE),
            locks: RangeLocks::default(),
            atomic: Default::default(),
            data_buffer: Default::default(),
            opts,
            asked,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        self.image.path()
    }

    /// Capacity in logical blocks (image size rounded down).
    pub fn capacity_blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.opts.block_size
    }

    /// Whether the LU is write protected.
    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }

    /// The options the LU was opened with.
    pub fn options(&self) -> &LunOptions {
        &self.opts
    }

    /// The options given to [`LogicalUnit::open`], before the medium
    /// settled any (a read-only export, no volatile cache).
    pub fn opened_with(&self) -> &LunOptions {
        &self.asked
    }

    /// `fdatasync` of the image.
    pub fn flush(&self) -> io::Result<()> {
        self.image.sync_data()
    }

    pub(crate) fn image(&self) -> &Image {
        &self.image
    }

    /// Whether READ/WRITE may leave their data transfer to a transport
    /// that can defer it: `aio=io_uring` (resolved) on a raw image, and
    /// every NBD export (its requests wait on the network: the transport
    /// runs them off the queue thread, many at a time, see
    /// [`super::rw::run_transfer`]).
    pub fn defers_io(&self) -> bool {
        self.offloads_io()
            || (self.opts.aio.resolve(self.opts.cache) == AioMode::IoUring
                && self.image.as_raw().is_some())
    }

    /// Whether a deferred transfer of this LU is run by blocking calls on
    /// a helper thread ([`super::rw::run_transfer`]) rather than by
    /// io_uring on the image's descriptor: an NBD export.
    pub fn offloads_io(&self) -> bool {
        self.image.as_nbd().is_some()
    }

    /// The image's descriptor for a transfer (see
    /// [`crate::storage::RawImage::file_for`]); `None` for qcow2.
    pub fn raw_image(&self) -> Option<&crate::storage::RawImage> {
        self.image.as_raw()
    }

    pub(crate) fn block_shift(&self) -> u32 {
        self.block_shift
    }

    pub(crate) fn standard_inquiry(&self) -> &[u8; INQUIRY_LEN] {
        &self.inquiry
    }

    /// VPD page 80h PRODUCT SERIAL NUMBER (configured or derived).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// VPD page 83h NAA designator.
    pub fn naa(&self) -> u64 {
        self.naa
    }

    /// Thin provisioned: UNMAP and WRITE SAME with UNMAP punch holes that
    /// read back as zeros (LBPME = LBPRZ = 1).
    pub fn thin(&self) -> bool {
        self.thin
    }

    pub(crate) fn unmap_granularity(&self) -> u32 {
        self.unmap_granularity
    }

    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
    pub fn lb_per_pb_exp(&self) -> u8 {
        let pbs = self.opts.physical_block_size.max(self.opts.block_size);
        (pbs / self.opts.block_size).trailing_zeros() as u8
    }

    /// Current WCE (caching mode page).
    pub fn write_cache(&self) -> bool {
        self.wce.load(Ordering::Relaxed)
    }

    /// Current D_SENSE (control mode page): descriptor format sense.
    pub fn descriptor_sense(&self) -> bool {
        self.d_sense.load(Ordering::Relaxed)
    }

    pub(crate) fn set_mode(&self, wce: bool, d_sense: bool) {
        self.wce.store(wce, Ordering::Relaxed);
        self.d_sense.store(d_sense, Ordering::Relaxed);
    }

    /// Disk or CD-ROM.
    pub fn device_type(&self) -> DeviceType {
        self.opts.device_type
    }

    /// Whether the medium is loaded (always, for a non-removable LU).
    pub fn medium_present(&self) -> bool {
        self.attention() & STATE_NO_MEDIUM == 0
    }

    /// Ejects the removable medium (START STOP UNIT with LOEJ): refused with
    /// MEDIUM REMOVAL PREVENTED while PREVENT ALLOW MEDIUM REMOVAL prevents it.
    pub fn eject(&self) -> Result<(), Sense> {
        if self.removal_prevented() {
            return Err(Sense::MEDIUM_REMOVAL_PREVENTED);
        }
        let was = self.attention.fetch_or(STATE_NO_MEDIUM, Ordering::SeqCst);
        if was & STATE_NO_MEDIUM == 0 {
            self.media_event
                .store(MEDIA_EVENT_REMOVAL, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Loads the medium (the image) again: NOT READY TO READY CHANGE,
    /// MEDIUM MAY HAVE CHANGED unit attention and a new-media event.
    pub fn load(&self) {
        let was = self.attention.fetch_and(!STATE_NO_MEDIUM, Ordering::SeqCst);
        if was & STATE_NO_MEDIUM != 0 {
            self.set_unit_attention(UA_MEDIUM_CHANGED);
            self.media_event
                .store(MEDIA_EVENT_NEW_MEDIA, Ordering::SeqCst);
        }
    }

    /// Reports and clears the pending media event (GET EVENT STATUS
    /// NOTIFICATION, media class).
    pub(crate) fn take_media_event(&self) -> u8 {
        self.media_event.swap(MEDIA_EVENT_NONE, Ordering::SeqCst)
    }

    /// Whether medium removal is prevented (PREVENT ALLOW MEDIUM REMOVAL).
    pub fn removal_prevented(&self) -> bool {
        self.prevent.load(Ordering::Relaxed)
    }

    pub(crate) fn set_prevent(&self, prevent: bool) {
        self.prevent.store(prevent, Ordering::Relaxed);
    }

    pub(crate) fn locks(&self) -> &RangeLocks {
        &self.locks
    }

    pub(crate) fn atomic_window(&self) -> &super::atomic::AtomicWindow {
        &self.atomic
    }

    pub(crate) fn data_buffer(&self) -> &super::buffer::DataBuffer {
        &self.data_buffer
    }

    /// Pending unit attentions and the stopped state in one word: 0 on the
    /// fast path.
    pub(crate) fn attention(&self) -> u32 {
        self.attention.load(Ordering::Relaxed)
    }

    pub(crate) fn set_stopped(&self, stopped: bool) {
        if stopped {
            self.attention.fetch_or(STATE_STOPPED, Ordering::SeqCst);
        } else {
            self.attention.fetch_and(!STATE_STOPPED, Ordering::SeqCst);
        }
    }

    /// Establishes unit attention(s) `bits` (`UA_*`) for the I_T nexus.
    pub fn set_unit_attention(&self, bits: u32) {
        self.attention.fetch_or(bits & UA_MASK, Ordering::SeqCst);
    }

    /// Pending unit attention bits.
    pub fn pending_unit_attentions(&self) -> u32 {
        self.attention() & UA_MASK
    }

    /// Reports and clears the unit attention of highest precedence, if any.
    pub(crate) fn take_unit_attention(&self) -> Option<Sense> {
        let mut cur = self.attention.load(Ordering::SeqCst);
        loop {
            let &(bit, sense) = UA_SENSE.iter().find(|(b, _)| cur & b != 0)?;
            match self.attention.compare_exchange(
                cur,
                cur & !bit,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(sense),
                Err(now) => cur = now,
            }
        }
    }

    /// A logical unit reset (SAM-5 LOGICAL UNIT RESET; also what a hard
    /// reset does): mode parameters back to their defaults, medium removal
    /// allowed, and POWER ON, RESET, OR BUS DEVICE RESET OCCURRED pending
    /// (it supersedes the other unit attentions).
    ///
    /// Reservations are not touched: a LOGICAL UNIT RESET also releases the
    /// SPC-2 one ([`LogicalUnit::lun_reset`]); persistent ones survive.
    pub fn reset(&self) {
        self.set_mode(self.opts.write_cache, false);
        self.set_prevent(false);
        let mut cur = self.attention.load(Ordering::SeqCst);
        loop {
            let new = (cur & !UA_MASK) | UA_POWER_ON_RESET;
            match self
                .attention
                .compare_exchange(cur, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// LOGICAL UNIT RESET (SAM-5 §7.6): [`LogicalUnit::reset`], and the
    /// SPC-2 reservation is released (persistent reservations stay).
    pub fn lun_reset(&self) {
        self.reset();
        self.pr.reset();
    }

    /// The reservations of the LU (persistent and SPC-2).
    pub fn reservations(&self) -> &Reservations {
        &self.pr
    }

    /// A new connection of `nexus` (SAM-5: a new I_T nexus is owed POWER
    /// ON, RESET, OR BUS DEVICE RESET OCCURRED): established for that nexus
    /// alone, so the other paths of a shared LU see nothing, unless the
    /// LU-wide one is still pending (the first connection after open).
    pub fn nexus_power_on(&self, nexus: &Nexus) {
        if self.pending_unit_attentions() & UA_POWER_ON_RESET == 0 {
            self.pr.power_on(nexus);
        }
    }

    /// The I_T nexus `nexus` is gone: its SPC-2 reservation goes with it
    /// (registrations and persistent reservations stay).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        self.pr.nexus_lost(nexus);
    }

    /// Re-reads the image size; when the capacity changed, serves the new
    /// one and establishes CAPACITY DATA HAS CHANGED. Returns whether it changed.
    pub fn refresh_capacity(&self) -> io::Result<bool> {
        let blocks = self.image.current_size()? >> self.block_shift;
        if blocks == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "image shrank below one block",
            ));
        }
        let old = self.blocks.swap(blocks, Ordering::SeqCst);
        if old != blocks {
            tracing::info!(image = %self.path().display(), old, new = blocks, "capacity changed");
            self.set_unit_attention(UA_CAPACITY_CHANGED);
        }
        Ok(old != blocks)
    }

    pub(crate) fn designator(&self) -> &str {
        &self.designator
    }

    /// SBC-4 LBA range check, overflow-safe: `blocks` blocks from `lba`
    /// must end at or before the capacity (a 0-block access at LBA ==
    /// capacity is allowed, as in QEMU). Otherwise LBA OUT OF RANGE.
    pub(crate) fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.capacity_blocks() => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::testutil::image_file;

    #[test]
    fn odd_sized_image_is_rounded_down() {
        let f = image_file(4096 + 100);
        let lu = LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        assert_eq!(lu.capacity_blocks(), 8);
        let lu4k = {
            drop(lu);
            LogicalUnit::open(
                f.path(),
                LunOptions {
                    block_size: 4096,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        assert_eq!(lu4k.capacity_blocks(), 1);
    }

    #[test]
    fn zero_sized_and_sub_block_images_are_refused_naming_them() {
        let f = image_file(0);
        let err = LogicalUnit::open(f.path(), LunOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("empty (0 bytes)"), "{msg}");
        let f = image_file(511);
        let err = LogicalUnit::open(f.path(), LunOptions::default()).unwrap_err();
        assert!(matches!(err, OpenError::TooSmall { size: 511, .. }));
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn second_open_is_refused_as_locked() {
        let f = image_file(4096);
        let _lu = LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        let err = LogicalUnit::open(f.path(), LunOptions::default()).unwrap_err();
        assert!(matches!(err, OpenError::Locked { .. }));
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn bad_options_are_refused() {
        let f = image_file(4096);
        for opts in [
            LunOptions {
                block_size: 520,
                ..Default::default()
            },
            LunOptions {
                vendor: "TOO-LONG-VENDOR".into(),
                ..Default::default()
            },
            LunOptions {
                product: "tab\there".into(),
                ..Default::default()
            },
            LunOptions {
                serial: Some(String::new()),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                LogicalUnit::open(f.path(), opts),
                Err(OpenError::InvalidOption { .. })
            ));
        }
    }

    #[test]
    fn range_check_is_overflow_safe() {
        let f = image_file(8 * 512);
        let lu = LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        assert!(lu.check_range(0, 8).is_ok());
        assert!(lu.check_range(8, 0).is_ok());
        assert!(lu.check_range(7, 2).is_err());
        assert!(lu.check_range(9, 0).is_err());
        assert!(lu.check_range(u64::MAX, 2).is_err());
    }
}
