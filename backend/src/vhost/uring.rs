//! The io_uring engine of one request queue (`aio=io_uring`).
//!
//! READ and WRITE on a logical unit with `aio=io_uring` return a checked
//! [`MediumTransfer`] instead of moving data (see [`crate::scsi::rw`]); the
//! queue worker hands it here with the chain's iovecs, and this engine
//! submits one `IORING_OP_READV` / `IORING_OP_WRITEV` built straight from
//! the guest's data segments (no bounce buffer), with many requests in
//! flight per queue. The ring's completion eventfd is registered in the
//! queue worker's epoll (`VringEpollHandler::register_listener`), so the
//! worker reaps completions between kicks, turns each into the virtio
//! response and publishes them with the rest of its batch.
//!
//! Per-request state lives in a slab of [`SLOTS`] preallocated slots: a
//! slot takes over the chain's iovec lists by swapping them with its own
//! (empty, already allocated) ones, so the steady state allocates nothing.
//! Each slot keeps what its I/O touches alive until the CQE is reaped: the
//! guest memory mapping (a `GuestMemoryLoadGuard`) and the logical unit
//! (and so the file). The engine is drained ([`Uring::wait`] until
//! [`Uring::in_flight`] is 0) before a ring stops (GET_VRING_BASE), on
//! reset and on disconnect, so no request writes into guest memory after
//! the driver got its ring back, and every request is completed exactly
//! once.
//!
//! Short transfers are resubmitted for the rest (a direct descriptor falls
//! back to the buffered one if the rest is no longer aligned); a transfer
//! that makes no progress (end of file) fails like the inline path
//! (`UnexpectedEof`, MEDIUM ERROR). A WRITE with FUA (or WCE=0) is
//! followed by an `IORING_OP_FSYNC` (DATASYNC) before it completes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use vm_memory::GuestMemoryLoadGuard;

use super::guest_io::IoVecs;
use crate::scsi::rw::complete_transfer;
use crate::scsi::target::LunEntry;
use crate::scsi::{CommandResult, MediumTransfer};
use crate::vhost::dirty::GuestMem;

/// Requests in flight per queue at most (slots in the slab; also the
/// submission queue size, so a submission never finds the ring full).
pub const SLOTS: usize = 256;

/// Most iovecs one READV/WRITEV takes (`IOV_MAX`); a longer chain is moved
/// in several steps, like a short transfer.
const IOV_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    Data,
    Sync,
}

/// One request in flight.
struct Slot {
    phase: Phase,
    head: u16,
    readable: IoVecs,
    writable: IoVecs,
    /// The data segments still to move (front trimmed after a short transfer).
    data: Vec<libc::iovec>,
    /// Where the data starts in the stream it is taken from (after the
    /// request or response header): a READ's bytes are marked dirty there.
    base: usize,
    first: usize,
    done: usize,
    fd: RawFd,
    transfer: Option<MediumTransfer>,
    result: CommandResult,
    short: Option<u32>,
    /// The LUN's run-time entry: keeps the logical unit (and its file)
    /// alive, and its in-flight count (taken by the caller with
    /// [`LunEntry::begin_transfer`]) is released when the request finishes.
    lu: Option<Arc<LunEntry>>,
    /// Keeps the mapping the iovecs point into alive until the CQE.
    mem: Option<GuestMemoryLoadGuard<GuestMem>>,
}

// SAFETY: the iovecs in `data` point into guest memory, mapped for every
// thread while `mem` holds it; a slot is used only by the worker owning the
// engine, or under the same per-queue mutex by the thread draining it.
unsafe impl Send for Slot {}

impl Slot {
    fn new() -> Self {
        Self {
            phase: Phase::Free,
            head: 0,
            readable: IoVecs::default(),
            writable: IoVecs::default(),
            data: Vec::with_capacity(64),
            base: 0,
            first: 0,
            done: 0,
            fd: -1,
            transfer: None,
            result: CommandResult::good(0),
            short: None,
            lu: None,
            mem: None,
        }
    }
}

/// Why a transfer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Every slot is in flight: wait for one first.
    #[error("every io_uring slot is in flight")]
    Full,
    /// The transfer's range is not inside the chain's data buffer (the
    /// SCSI layer checked it, so this is a bug) or the LU is not raw.
    #[error("transfer does not fit the request's buffers or image")]
    Invalid,
}

/// A request whose transfer finished: the caller writes the response and
/// completes the chain.
pub struct Completed<'a> {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// The chain's device-writable stream (response header first).
    pub writable: &'a IoVecs,
    /// Bytes of the chain's device-readable stream.
    pub readable_len: usize,
    /// The command's final result.
    pub result: CommandResult,
    /// Short-transfer fault cap on Data-In bytes.
    pub short: Option<u32>,
}

/// One queue's io_uring and its slab of in-flight requests.
pub struct Uring {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u16>,
    in_flight: usize,
    /// SQEs pushed since the last `io_uring_enter`.
    unsubmitted: usize,
}

fn last_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

impl Uring {
    /// An io_uring of [`SLOTS`] entries whose completions signal `eventfd`
    /// (if given). Fails where io_uring is unavailable (ENOSYS, EPERM under
    /// seccomp or `kernel.io_uring_disabled`).
    pub fn new(eventfd: Option<RawFd>) -> io::Result<Uring> {
        let ring = IoUring::new(SLOTS as u32)?;
        if let Some(fd) = eventfd {
            ring.submitter().register_eventfd(fd)?;
        }
        Ok(Uring {
            ring,
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            free: (0..SLOTS as u16).rev().collect(),
            in_flight: 0,
            unsubmitted: 0,
        })
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether completions are waiting to be reaped (no syscall).
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Whether every slot is in flight.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Starts `transfer` of the chain `head` (whose command gave
    /// `result`): takes over `readable` / `writable` (they come back empty,
    /// allocation kept) and `mem`, and queues the SQE (sent by the next
    /// [`Uring::submit`]). `lu` is the entry of the raw logical unit the
    /// command ran on, on which the caller called
    /// [`LunEntry::begin_transfer`]: the engine calls `end_transfer` when
    /// the request finishes (not when `start` fails).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        head: u16,
        lu: &Arc<LunEntry>,
        transfer: MediumTransfer,
        result: CommandResult,
        short: Option<u32>,
        (readable, req_size): (&mut IoVecs, usize),
        (writable, resp_size): (&mut IoVecs, usize),
        mem: Option<GuestMemoryLoadGuard<GuestMem>>,
    ) -> Result<(), StartError> {
        let Some(raw) = lu.lu().raw_image() else {
            return Err(StartError::Invalid);
        };
        let Some(&idx) = self.free.last() else {
            return Err(StartError::Full);
        };
        let slot = &mut self.slots[usize::from(idx)];
        let ok = if transfer.write {
            readable.segments(req_size, transfer.len, &mut slot.data)
        } else {
            writable.segments(resp_size, transfer.len, &mut slot.data)
        };
        if !ok || slot.data.is_empty() {
            slot.data.clear();
            return Err(StartError::Invalid);
        }
        let data = &slot.data;
        let file = raw.file_for(transfer.disk_offset, transfer.len, |a| {
            data.iter()
                .all(|v| (v.iov_base as usize).is_multiple_of(a) && v.iov_len.is_multiple_of(a))
        });
        self.free.pop();
        std::mem::swap(&mut slot.readable, readable);
        std::mem::swap(&mut slot.writable, writable);
        slot.phase = Phase::Data;
        slot.head = head;
        slot.base = if transfer.write { req_size } else { resp_size };
        slot.first = 0;
        slot.done = 0;
        slot.fd = file.as_raw_fd();
        slot.transfer = Some(transfer);
        slot.result = result;
        slot.short = short;
        slot.lu = Some(lu.clone());
        slot.mem = mem;
        self.in_flight += 1;
        self.push(idx);
        Ok(())
    }

    /// Queues the SQE of slot `idx` for its current phase.
    fn push(&mut self, idx: u16) {
        let slot = &self.slots[usize::from(idx)];
        let Some(t) = slot.transfer else {
            return;
        };
        let fd = types::Fd(slot.fd);
        let sqe = match slot.phase {
            Phase::Data => {
                let iov = &slot.data[slot.first..];
                let n = iov.len().min(IOV_MAX) as u32;
                let offset = t.disk_offset + slot.done as u64;
                if t.write {
                    opcode::Writev::new(fd, iov.as_ptr(), n)
                        .offset(offset)
                        .build()
                } else {
                    opcode::Readv::new(fd, iov.as_ptr(), n)
                        .offset(offset)
                        .build()
                }
            }
            Phase::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Phase::Free => return,
        }
        .user_data(u64::from(idx));
        loop {
            // The SQE points at `slot.data` (iovecs into guest memory kept
            // mapped by `slot.mem`) and at `slot.fd` (kept open by
            // `slot.lu`); the slot is neither reused nor its `data` touched
            // until this request's CQE is reaped in `reap`, and `Drop` waits
            // for every request in flight.
            // SAFETY: what the SQE names outlives the request (above).
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                self.unsubmitted += 1;
                return;
            }
            // Cannot happen (one SQE per slot, as many SQ entries as
            // slots), but a full SQ only needs a submit.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Sends every queued SQE to the kernel (one `io_uring_enter`, none
    /// when nothing is queued).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ overflow back-pressure: the caller reaps and retries.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits what is queued and blocks until at least one completion is
    /// ready (nothing to wait for: returns at once).
    pub fn wait(&mut self) -> io::Result<()> {
        if self.in_flight == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles every completion ready (no syscall unless something had to
    /// be resubmitted): resubmits short transfers, starts the flush of a
    /// FUA write, and calls `done` for
    /// each request that finished, then frees its slot. Returns how many
    /// finished.
    pub fn reap(&mut self, done: &mut dyn FnMut(Completed<'_>)) -> usize {
        let mut finished = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let Ok(idx) = u16::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(slot) = self.slots.get_mut(usize::from(idx)) else {
                continue;
            };
            let Some(t) = slot.transfer else {
                continue;
            };
            let res = cqe.result();
            let outcome: Option<io::Result<()>> = match slot.phase {
                Phase::Free => continue,
                Phase::Data | Phase::Sync if res == -libc::EAGAIN || res == -libc::EINTR => None,
                _ if res < 0 => Some(Err(last_error(res))),
                Phase::Data if res == 0 => Some(Err(io::ErrorKind::UnexpectedEof.into())),
                Phase::Data => {
                    let n = res as usize;
                    if !t.write {
                        // The kernel wrote these guest bytes: log them now.
                        slot.writable.mark_written(slot.base + slot.done, n);
                    }
                    slot.done += n;
                    if slot.done < t.len {
                        Self::advance(slot, n, &t);
                        None
                    } else if t.sync {
                        slot.phase = Phase::Sync;
                        None
                    } else {
                        Some(Ok(()))
                    }
                }
                Phase::Sync => Some(Ok(())),
            };
            if outcome.is_none() {
                self.push(idx);
            }
            let Some(outcome) = outcome else {
                continue;
            };
            let slot = &mut self.slots[usize::from(idx)];
            let result = match &slot.lu {
                Some(entry) => {
                    let r = complete_transfer(entry.lu(), &t, outcome);
                    entry.end_transfer();
                    r
                }
                None => slot.result,
            };
            done(Completed {
                head: slot.head,
                writable: &slot.writable,
                readable_len: slot.readable.len(),
                result,
                short: slot.short,
            });
            slot.readable.clear();
            slot.writable.clear();
            slot.data.clear();
            slot.transfer = None;
            slot.lu = None;
            slot.mem = None;
            slot.phase = Phase::Free;
            self.free.push(idx);
            self.in_flight -= 1;
            finished += 1;
        }
        // Resubmissions (short transfer, EAGAIN) and FSYNCs queued above
        // must reach the kernel now: the worker may go back to epoll next.
        if self.unsubmitted > 0 {
            if let Err(e) = self.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
        finished
    }

    /// Drops the first `n` bytes of the slot's remaining segments after a
    /// short transfer; switches an `O_DIRECT` descriptor to the buffered
    /// one when the rest is no longer aligned for it.
    fn advance(slot: &mut Slot, mut n: usize, t: &MediumTransfer) {
        while n > 0 && slot.first < slot.data.len() {
            let v = &mut slot.data[slot.first];
            if n >= v.iov_len {
                n -= v.iov_len;
                slot.first += 1;
            } else {
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                n = 0;
            }
        }
        if let Some(raw) = slot.lu.as_ref().and_then(|e| e.lu().raw_image()) {
            let rest = &slot.data[slot.first..];
            let file = raw.file_for(t.disk_offset + slot.done as u64, t.len - slot.done, |a| {
                rest.iter()
                    .all(|v| (v.iov_base as usize).is_multiple_of(a) && v.iov_len.is_multiple_of(a))
            });
            slot.fd = file.as_raw_fd();
        }
    }

    /// Waits for every request in flight and hands each to `done` (ring
    /// stop, reset, disconnect). Returns how many completed.
    pub fn drain(&mut self, done: &mut dyn FnMut(Completed<'_>)) -> usize {
        let mut n = self.reap(done);
        while self.in_flight > 0 {
            if let Err(e) = self.wait() {
                // Nothing sane is left to do but retry: the kernel still
                // owns the buffers, and they must not be reused.
                tracing::warn!(error = %e, in_flight = self.in_flight, "io_uring wait failed while draining; retrying");
                std::thread::yield_now();
            }
            n += self.reap(done);
        }
        n
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Never free slots (and the guest mappings they hold) under I/O.
        if self.in_flight > 0 {
            let n = self.drain(&mut |c| {
                tracing::warn!(
                    head = c.head,
                    "io_uring engine dropped with a request in flight: completed without a response"
                );
            });
            tracing::warn!(n, "io_uring engine dropped with requests in flight");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{LogicalUnit, LunOptions, Request, ScsiBus};
    use crate::storage::{AioMode, CacheMode};
    use crate::vhost::guest_io::{GuestDataIn, GuestDataOut};
    use std::os::unix::fs::FileExt;
    use std::time::Duration;
    use vscsi_protocol::cdb::Cdb;

    struct Setup {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        lu: Arc<LogicalUnit>,
        bus: ScsiBus,
    }

    impl Setup {
        /// The LUN's entry, with a transfer begun on it (as the queue does).
        fn entry(&self) -> Arc<LunEntry> {
            let e = self.bus.target(0).unwrap().entry(0).unwrap().clone();
            e.begin_transfer();
            e
        }
    }

    fn setup(cache: CacheMode, size: u64) -> Option<Setup> {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let path = dir.path().join("u.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let pattern: Vec<u8> = (0..size).map(|i| (i / 512 % 251) as u8).collect();
        f.write_all_at(&pattern, 0).unwrap();
        let opts = LunOptions {
            aio: AioMode::IoUring,
            cache,
            ..LunOptions::default()
        };
        let lu = match LogicalUnit::open(&path, opts) {
            Ok(lu) => Arc::new(lu),
            Err(crate::scsi::OpenError::InvalidOption { field: "cache", .. }) => return None,
            Err(e) => panic!("{e}"),
        };
        let mut bus = ScsiBus::new();
        bus.add_lun(0, 0, lu.clone()).unwrap();
        Some(Setup {
            _dir: dir,
            path,
            lu,
            bus,
        })
    }

    /// Runs one command through the SCSI layer and, deferred, the engine;
    /// returns the final result.
    fn run(
        s: &Setup,
        u: &mut Uring,
        cdb: &[u8],
        readable: &mut IoVecs,
        writable: &mut IoVecs,
    ) -> CommandResult {
        let t = s.bus.target(0).unwrap();
        let req = Request {
            cdb,
            tag: 7,
            task_attr: 0,
            nexus: crate::scsi::nexus::Nexus::local(),
        };
        let mut din = GuestDataIn {
            iov: writable,
            base: 0,
            defer: true,
        };
        let dout = GuestDataOut {
            iov: readable,
            base: 0,
            defer: true,
        };
        let r = t.execute(0, &req, &mut din, &dout);
        let Some(&tr) = r.transfer() else {
            return r;
        };
        u.start(
            9,
            &s.entry(),
            tr,
            r,
            None,
            (readable, 0),
            (writable, 0),
            None,
        )
        .unwrap();
        assert_eq!(u.in_flight(), 1);
        let mut out = None;
        u.drain(&mut |c| {
            assert_eq!(c.head, 9);
            out = Some(c.result);
        });
        assert_eq!(u.in_flight(), 0);
        out.unwrap()
    }

    fn engine() -> Option<Uring> {
        Uring::new(None).ok()
    }

    #[test]
    fn read_write_fua_and_many_in_flight() {
        let (Some(s), Some(mut u)) = (setup(CacheMode::Writeback, 1 << 20), engine()) else {
            return;
        };
        let (mut rd, mut wr) = (IoVecs::default(), IoVecs::default());
        // READ over three segments of odd sizes.
        let mut a = vec![0u8; 100];
        let mut b = vec![0u8; 700];
        let mut c = vec![0u8; 224];
        wr.push(a.as_mut_ptr(), a.len(), None);
        wr.push(b.as_mut_ptr(), b.len(), None);
        wr.push(c.as_mut_ptr(), c.len(), None);
        let r = run(
            &s,
            &mut u,
            Cdb::read_10(4, 2, false).as_bytes(),
            &mut rd,
            &mut wr,
        );
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_in_len, 1024);
        assert!(
            wr.is_empty(),
            "the engine handed back the slot's empty list"
        );
        let got: Vec<u8> = [a, b, c].concat();
        assert!(got[..512].iter().all(|&x| x == 4) && got[512..].iter().all(|&x| x == 5));

        // WRITE with FUA: the write and then an FSYNC, one completion.
        let mut data = vec![0xC3u8; 1024];
        rd.push(data.as_mut_ptr(), data.len(), None);
        let r = run(
            &s,
            &mut u,
            Cdb::write_16(10, 2, true).as_bytes(),
            &mut rd,
            &mut wr,
        );
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 1024);
        let disk = std::fs::read(&s.path).unwrap();
        assert!(disk[10 * 512..12 * 512].iter().all(|&x| x == 0xC3));

        // Many in flight at once: every one completes exactly once.
        let t = s.bus.target(0).unwrap();
        let mut bufs = vec![vec![0u8; 512]; 64];
        for (i, buf) in bufs.iter_mut().enumerate() {
            let (mut rd, mut wr) = (IoVecs::default(), IoVecs::default());
            wr.push(buf.as_mut_ptr(), 512, None);
            let cdb = Cdb::read_10(i as u32, 1, false);
            let req = Request {
                cdb: cdb.as_bytes(),
                tag: i as u64,
                task_attr: 0,
                nexus: crate::scsi::nexus::Nexus::local(),
            };
            let mut din = GuestDataIn {
                iov: &wr,
                base: 0,
                defer: true,
            };
            let r = t.execute(0, &req, &mut din, &crate::scsi::NO_DATA_OUT);
            let tr = *r.transfer().unwrap();
            u.start(
                i as u16,
                &s.entry(),
                tr,
                r,
                None,
                (&mut rd, 0),
                (&mut wr, 0),
                None,
            )
            .unwrap();
        }
        assert_eq!(u.in_flight(), 64);
        // Each counts on the LUN (a fence waits for it) until it is reaped.
        let entry = s.bus.target(0).unwrap().entry(0).unwrap().clone();
        assert_eq!(entry.in_flight(), 64);
        assert!(
            !entry.fence(Duration::from_millis(5)),
            "fence waits for the transfers"
        );
        let mut seen = [0u8; 64];
        let n = u.drain(&mut |c| {
            assert!(c.result.is_good());
            seen[usize::from(c.head)] += 1;
        });
        assert_eq!(n, 64);
        assert!(
            seen.iter().all(|&x| x == 1),
            "each completed once: {seen:?}"
        );
        assert_eq!(
            entry.in_flight(),
            0,
            "every transfer left the LUN's in-flight count"
        );
        assert!(entry.fence(Duration::from_millis(5)));
        for (i, buf) in bufs.iter().enumerate() {
            let want = if (10..12).contains(&i) {
                0xC3
            } else {
                (i % 251) as u8
            };
            assert!(buf.iter().all(|&x| x == want), "block {i}");
        }
    }

    #[test]
    fn short_read_then_eof_is_a_medium_error_like_inline() {
        let (Some(s), Some(mut u)) = (setup(CacheMode::Writeback, 64 * 1024), engine()) else {
            return;
        };
        // The image shrinks under the LU: the READ gets half, is
        // resubmitted for the rest, and hits end of file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&s.path)
            .unwrap()
            .set_len(8 * 512 + 512)
            .unwrap();
        let (mut rd, mut wr) = (IoVecs::default(), IoVecs::default());
        let mut buf = vec![0u8; 2048];
        wr.push(buf.as_mut_ptr(), buf.len(), None);
        let r = run(
            &s,
            &mut u,
            Cdb::read_10(8, 4, false).as_bytes(),
            &mut rd,
            &mut wr,
        );
        assert_eq!(r.status, 2, "{r:?}");
        let sense = r.sense();
        assert_eq!((sense[2] & 0xF, sense[12], sense[13]), (3, 0x11, 0));
        // INFORMATION = the first LBA, as the inline path reports.
        assert_eq!(&sense[3..7], &8u32.to_be_bytes());
        assert!(
            buf[..512].iter().all(|&x| x == 8),
            "the part before EOF arrived"
        );
    }

    #[test]
    fn cache_none_misaligned_buffers_go_buffered_and_are_counted() {
        let (Some(s), Some(mut u)) = (setup(CacheMode::None, 1 << 20), engine()) else {
            return;
        };
        let raw = s.lu.raw_image().unwrap();
        let align = raw.dio_align().unwrap();
        let (mut rd, mut wr) = (IoVecs::default(), IoVecs::default());
        // An aligned buffer: O_DIRECT, not counted.
        let len = 2 * align;
        let layout = std::alloc::Layout::from_size_align(3 * align, align).unwrap();
        // SAFETY: non-zero size; freed below with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        wr.push(ptr, len, None);
        let blocks = (len / 512) as u16;
        let r = run(
            &s,
            &mut u,
            Cdb::read_10(0, blocks, false).as_bytes(),
            &mut rd,
            &mut wr,
        );
        assert!(r.is_good(), "{r:?}");
        assert_eq!(raw.misaligned(), 0);
        // The same read into a buffer one byte off: buffered fd, counted.
        wr.push(ptr.wrapping_add(1), len, None);
        let r = run(
            &s,
            &mut u,
            Cdb::read_10(0, blocks, false).as_bytes(),
            &mut rd,
            &mut wr,
        );
        assert!(r.is_good(), "{r:?}");
        assert_eq!(raw.misaligned(), 1);
        // SAFETY: `ptr` points at `3 * align` live bytes we allocated.
        let got = unsafe { std::slice::from_raw_parts(ptr.wrapping_add(1), len) };
        assert!(got[..512].iter().all(|&x| x == 0) && got[512..1024].iter().all(|&x| x == 1));
        // SAFETY: allocated above with this layout, no longer referenced.
        unsafe { std::alloc::dealloc(ptr, layout) };
    }
}
