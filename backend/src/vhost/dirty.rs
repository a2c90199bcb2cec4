//! The dirty-page log of guest memory (vhost-user "Migrating back-ends":
//! while the frontend logs, every page the back-end writes is marked in the
//! log it shared with SET_LOG_BASE, one bit per 4 KiB guest page).
//!
//! Guest memory is a [`GuestMem`]: each region carries a [`DirtyBitmap`].
//! Writes made through vm-memory (`Bytes`, `VolatileSlice`: the used ring)
//! mark it themselves. The queues write their buffers through raw iovecs
//! instead (copies, `preadv`, `readv`, io_uring), so
//! [`super::guest_io::IoVecs`] keeps, for each segment, its region's bitmap
//! and offset and marks the bytes written when the write completed.
//!
//! vhost-user-backend maps the frontend's log on SET_LOG_BASE and hands each
//! region's part of it to [`BitmapReplace::replace`]; until then nothing is
//! logged, and marking costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vhost_user_backend::bitmap::{AtomicBitmapMmap, BitmapMmapRegion, BitmapReplace};
use vhost_user_backend::VringRwLock;
use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::NewBitmap;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory as the device sees it: mmap regions with a dirty log each.
pub type GuestMem = GuestMemoryMmap<DirtyBitmap>;

/// A vring over [`GuestMem`].
pub type Vring = VringRwLock<GuestMemoryAtomic<GuestMem>>;

/// The state of a [`Vring`].
pub type VringState = vhost_user_backend::VringState<GuestMemoryAtomic<GuestMem>>;

/// Size of a page of the vhost-user dirty log.
pub const LOG_PAGE_SIZE: usize = 4096;

/// The dirty log of one guest memory region: inactive (marking is a no-op)
/// until the frontend shares a log. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct DirtyBitmap(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// Set once a log is in place: the fast check on every write.
    active: AtomicBool,
    /// The frontend's log, mapped by vhost-user-backend.
    log: BitmapMmapRegion,
    /// A log owned by the process, so tests can watch what is marked.
    #[cfg(test)]
    test_log: std::sync::OnceLock<vm_memory::bitmap::AtomicBitmap>,
    #[cfg(test)]
    len: usize,
}

impl DirtyBitmap {
    /// Whether a log is in place (writes are being logged).
    pub fn is_active(&self) -> bool {
        self.0.active.load(Ordering::Acquire)
    }

    /// Stops marking (the frontend acked features without LOG_ALL); the
    /// next SET_LOG_BASE starts it again.
    pub fn stop(&self) {
        self.0.active.store(false, Ordering::Release);
    }

    /// Starts logging this region into a bitmap owned by the test.
    #[cfg(test)]
    pub(crate) fn start_test_log(&self) {
        let page =
            std::num::NonZeroUsize::new(LOG_PAGE_SIZE).unwrap_or(std::num::NonZeroUsize::MIN);
        let _ = self
            .0
            .test_log
            .set(vm_memory::bitmap::AtomicBitmap::new(self.0.len, page));
        self.0.active.store(true, Ordering::Release);
    }
}

impl Bitmap for DirtyBitmap {
    /// Marks the pages of `[offset, offset + len)` (region-relative) dirty.
    #[inline]
    fn mark_dirty(&self, offset: usize, len: usize) {
        if !self.is_active() || len == 0 {
            return;
        }
        self.0.log.mark_dirty(offset, len);
        #[cfg(test)]
        if let Some(log) = self.0.test_log.get() {
            log.mark_dirty(offset, len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        #[cfg(test)]
        if let Some(log) = self.0.test_log.get() {
            return log.dirty_at(offset);
        }
        self.is_active() && self.0.log.dirty_at(offset)
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        RefSlice::new(self, offset)
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyBitmap {
    type S = RefSlice<'a, DirtyBitmap>;
}

impl NewBitmap for DirtyBitmap {
    #[cfg_attr(not(test), allow(unused_variables))]
    fn with_len(len: usize) -> Self {
        Self(Arc::new(Shared {
            #[cfg(test)]
            len,
            ..Shared::default()
        }))
    }
}

impl BitmapReplace for DirtyBitmap {
    type InnerBitmap = AtomicBitmapMmap;

    /// Puts the region's part of the frontend's log in place (SET_LOG_BASE).
    fn replace(&self, bitmap: AtomicBitmapMmap) {
        self.0.log.replace(bitmap);
        self.0.active.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn nothing_is_marked_until_a_log_is_in_place() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let region = &**mem.find_region(GuestAddress(0)).unwrap();
        region.bitmap().mark_dirty(0, 0x4000);
        assert!(!region.bitmap().is_active());
        region.bitmap().start_test_log();
        assert!((0..4).all(|p| !region.bitmap().dirty_at(p * LOG_PAGE_SIZE)));
        // A vm-memory write marks through the region's bitmap.
        mem.write_obj(7u32, GuestAddress(0x2ffe)).unwrap();
        let dirty: Vec<bool> = (0..4)
            .map(|p| region.bitmap().dirty_at(p * LOG_PAGE_SIZE))
            .collect();
        assert_eq!(dirty, [false, false, true, true]);
    }

    /// The pages of guest memory marked dirty, in order.
    fn dirty_pages(mem: &GuestMem) -> Vec<u64> {
        let region = &**mem.find_region(GuestAddress(0)).unwrap();
        (0..MEM_LEN / LOG_PAGE_SIZE)
            .filter(|&p| region.bitmap().dirty_at(p * LOG_PAGE_SIZE))
            .map(|p| p as u64)
            .collect()
    }

    const MEM_LEN: usize = 0x40000;
    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const REQ: u64 = 0x10000;
    const RESP: u64 = 0x20000;
    /// Data-In starts mid-page and is longer than the READ: its last
    /// page is never written.
    const DATA_IN: u64 = 0x30800;
    const DATA_IN_LEN: u32 = 0x2000;

    /// One READ(10) of 8 blocks at LBA 8 (4096 bytes) through a request
    /// queue whose memory is logged; returns the memory and the image.
    fn read_through_queue(aio: crate::storage::AioMode) -> (GuestMem, Vec<u8>) {
        use std::io::Write;
        use vhost_user_backend::VringT;
        use vm_memory::GuestMemoryAtomic;

        use crate::fault::FaultTable;
        use crate::scsi::{LogicalUnit, LunOptions, ScsiBus};
        use crate::vhost::queue_metrics::QueueMetrics;
        use crate::vhost::request_queue::{QueueShared, RequestQueue};
        use crate::vhost::response::RESP_SIZE;

        let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap();
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let d = DESC + 16 * i;
            mem.write_obj(addr.to_le(), GuestAddress(d)).unwrap();
            mem.write_obj(len.to_le(), GuestAddress(d + 8)).unwrap();
            mem.write_obj(flags.to_le(), GuestAddress(d + 12)).unwrap();
            mem.write_obj(next.to_le(), GuestAddress(d + 14)).unwrap();
        };
        let req_len = size_of::<vscsi_protocol::virtio_scsi::CmdReq>() as u32;
        desc(0, REQ, req_len, 1, 1);
        desc(1, RESP, RESP_SIZE as u32, 1 | 2, 2);
        desc(2, DATA_IN, DATA_IN_LEN, 2, 0);
        let mut req = [0u8; 51];
        req[..4].copy_from_slice(&[1, 0, 0x40, 0]);
        req[19..29].copy_from_slice(&[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]);
        mem.write_slice(&req, GuestAddress(REQ)).unwrap();
        mem.write_obj(0u16.to_le(), GuestAddress(AVAIL + 4))
            .unwrap();
        mem.write_obj(1u16.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();

        let mut img = tempfile::NamedTempFile::new().unwrap();
        let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        img.write_all(&image).unwrap();
        let opts = LunOptions {
            aio,
            ..LunOptions::default()
        };
        let mut bus = ScsiBus::new();
        bus.add_lun(0, 0, Arc::new(LogicalUnit::open(img.path(), opts).unwrap()))
            .unwrap();

        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vring = Vring::new(atomic.clone(), 16).unwrap();
        vring.set_queue_size(16);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);

        // The log starts now: the driver's set-up above is not logged.
        (**mem.find_region(GuestAddress(0)).unwrap())
            .bitmap()
            .start_test_log();
        assert_eq!(dirty_pages(&mem), Vec::<u64>::new());

        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let mut q = RequestQueue::new(
            Arc::new(QueueShared::new(0)),
            Arc::new(FaultTable::default()),
            vscsi_poll::Poll::Off,
            Arc::new(QueueMetrics::new(1)),
        );
        if aio == crate::storage::AioMode::IoUring {
            use std::os::fd::AsRawFd;
            q.set_completion_eventfd(efd.as_raw_fd());
        }
        q.process(&vring, &atomic, &bus).unwrap();
        q.drain();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(u16::from_le(used_idx), 1);
        (mem, image)
    }

    /// The pages of the response header, of the Data-In bytes the READ
    /// wrote (not the rest of the buffer) and of the used ring are marked;
    /// nothing else is.
    fn assert_read_is_logged(aio: crate::storage::AioMode) {
        let (mem, image) = read_through_queue(aio);
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(DATA_IN)).unwrap();
        assert_eq!(got, &image[4096..8192]);
        let resp: u8 = mem.read_obj(GuestAddress(RESP + 11)).unwrap();
        assert_eq!(resp, 0, "VIRTIO_SCSI_S_OK");
        let page = |a: u64| a / LOG_PAGE_SIZE as u64;
        assert_eq!(
            dirty_pages(&mem),
            [page(USED), page(RESP), page(DATA_IN), page(DATA_IN + 4095)]
        );
    }

    #[test]
    fn an_inline_read_marks_exactly_the_pages_it_wrote() {
        assert_read_is_logged(crate::storage::AioMode::Inline);
    }

    #[test]
    fn an_io_uring_read_marks_exactly_the_pages_it_wrote() {
        assert_read_is_logged(crate::storage::AioMode::IoUring);
    }
}
