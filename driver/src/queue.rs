//! One request queue: its ring, its request slots in shared memory, its
//! in-flight table and its completion task.
//!
//! Each slot owns a header area (`virtio_scsi_cmd_req` + `virtio_scsi_cmd_resp`)
//! and a data buffer of `max_transfer` bytes in the shared region, so a
//! command costs no set-up beyond copying its CDB and data. Queues share
//! nothing: each has its own lock, kick and call eventfds and task.
//!
//! Slot lifetime: a slot is taken when a command is submitted and comes back
//! when the [`Completed`] value carrying it is dropped, whoever drops it (the
//! caller after reading the answer, or the completion task when the caller
//! gave up waiting). A slot is therefore never reused while the device may
//! still write into it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;
use vscsi_protocol::cdb::Cdb;
use vscsi_protocol::virtio_scsi::{task_attr, CmdReq, CmdResp, CDB_SIZE};
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::error::{Error, Result};
use crate::memory::SharedMemory;
use crate::ring::split::SplitRing;
use crate::ring::{RingError, Segment};
use crate::stats::{LunStats, LunTable, QueueStats};

/// Bytes reserved per slot for the request and response headers.
pub(crate) const HEADER_AREA: usize = 256;
/// Offset of the response header inside a slot's header area.
const RESP_OFFSET: usize = 128;
const REQ_SIZE: usize = size_of::<CmdReq>();
const RESP_SIZE: usize = size_of::<CmdResp>();
/// Bytes of `CmdResp` before `sense`.
const RESP_FIXED: usize = 12;

/// Where a queue's pieces sit in the shared region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuePlacement {
    /// Offset of the ring (see `SplitRing::layout`).
    pub ring: usize,
    /// Offset of `slots * HEADER_AREA` bytes of headers.
    pub headers: usize,
    /// Offset of `slots * max_transfer` bytes of data buffers.
    pub data: usize,
    /// Number of request slots.
    pub slots: u16,
    /// Data buffer bytes per slot.
    pub max_transfer: usize,
}

struct Inner {
    ring: SplitRing,
    free: Vec<u16>,
    /// Indexed by ring head id.
    in_flight: Vec<Option<InFlight>>,
    next_tag: u64,
    broken: Option<RingError>,
}

struct InFlight {
    slot: u16,
    tag: u64,
    lun: [u8; 8],
    started: Instant,
    done: oneshot::Sender<Result<Completed>>,
}

/// A command the device has not completed yet (see [`crate::Driver::in_flight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightCommand {
    /// Request queue.
    pub queue: u16,
    /// The command's tag (what ABORT TASK names).
    pub tag: u64,
    /// Its 8-byte virtio LUN field.
    pub lun: [u8; 8],
    /// How long it has been in flight.
    pub age: Duration,
}

/// A submitted command: its tag and the completion to wait for.
pub(crate) struct Pending {
    pub tag: u64,
    pub rx: oneshot::Receiver<Result<Completed>>,
}

/// State shared by submitters and the completion task of one queue.
pub(crate) struct RequestQueue {
    index: u16,
    mem: Arc<SharedMemory>,
    place: QueuePlacement,
    inner: Mutex<Inner>,
    slots_free: Semaphore,
    kick: EventFd,
    kicks: AtomicU64,
    calls: AtomicU64,
    completions: AtomicU64,
    closed: AtomicBool,
    /// Per-LUN metrics of the commands this queue carried.
    stats: Mutex<LunTable>,
}

/// A finished command still holding its slot (returned on drop).
pub(crate) struct Completed {
    queue: Arc<RequestQueue>,
    slot: u16,
    used_len: u32,
}

/// A request slot taken off the free list and not yet on the ring: given
/// back on drop (an error or a panicking fill closure) unless offered.
struct SlotGuard<'a> {
    queue: &'a RequestQueue,
    slot: u16,
    armed: bool,
}

impl SlotGuard<'_> {
    fn disarm(&mut self) -> u16 {
        self.armed = false;
        self.slot
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.lock().free.push(self.slot);
            self.queue.slots_free.add_permits(1);
        }
    }
}

/// What the device answered, copied out of shared memory.
pub(crate) struct RawResponse {
    pub resp: CmdResp,
    pub sense_len: usize,
    pub data: Vec<u8>,
}

impl RequestQueue {
    pub(crate) fn new(
        index: u16,
        mem: Arc<SharedMemory>,
        place: QueuePlacement,
        ring: SplitRing,
        kick: EventFd,
    ) -> Self {
        let size = ring.size() as usize;
        Self {
            index,
            mem,
            place,
            inner: Mutex::new(Inner {
                ring,
                free: (0..place.slots).rev().collect(),
                in_flight: (0..size).map(|_| None).collect(),
                next_tag: 1,
                broken: None,
            }),
            slots_free: Semaphore::new(place.slots as usize),
            kick,
            kicks: Default::default(),
            calls: Default::default(),
            completions: Default::default(),
            closed: AtomicBool::new(false),
            stats: Mutex::default(),
        }
    }

    /// Updates the metrics of `target:lun` (this queue's share).
    pub(crate) fn record(&self, target: u8, lun: u16, f: impl FnOnce(&mut LunStats)) {
        let mut t = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(t.entry((target, lun)).or_default());
    }

    /// This queue's per-LUN metrics, merged into `into`.
    pub(crate) fn merge_stats(&self, into: &mut LunTable) {
        let t = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in t.iter() {
            into.entry(*k).or_default().merge(v);
        }
    }

    /// Counters of this queue.
    pub(crate) fn queue_stats(&self) -> QueueStats {
        let inner = self.lock();
        let in_flight = inner.in_flight.iter().filter(|f| f.is_some()).count() as u32;
        drop(inner);
        QueueStats {
            index: self.index,
            in_flight,
            slots: u32::from(self.place.slots),
            kicks: self.kicks(),
            calls: self.calls.load(Ordering::Relaxed),
            completions: self.completions.load(Ordering::Relaxed),
        }
    }

    /// Commands in flight on this queue.
    pub(crate) fn in_flight(&self) -> Vec<InFlightCommand> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .in_flight
            .iter()
            .flatten()
            .map(|f| InFlightCommand {
                queue: self.index,
                tag: f.tag,
                lun: f.lun,
                age: now.duration_since(f.started),
            })
            .collect()
    }

    /// How many times the driver kicked the device (notification suppression shows here).
    pub(crate) fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    /// Bytes one command may move.
    pub(crate) fn max_transfer(&self) -> usize {
        self.place.max_transfer
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn header_off(&self, slot: u16) -> usize {
        self.place.headers + slot as usize * HEADER_AREA
    }

    fn data_off(&self, slot: u16) -> usize {
        self.place.data + slot as usize * self.place.max_transfer
    }

    /// Sends one command and waits for the device to complete it.
    #[allow(dead_code)]
    pub(crate) async fn submit(
        self: &Arc<Self>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out: &[u8],
        data_in_len: usize,
    ) -> Result<Completed> {
        let p = self.start(lun, cdb, data_out, data_in_len).await?;
        p.rx.await.map_err(|_| Error::Closed)?
    }

    /// Offers one command to the device (waiting for a free slot); the
    /// returned [`Pending`] resolves when the device completes it.
    pub(crate) async fn start(
        self: &Arc<Self>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out: &[u8],
        data_in_len: usize,
    ) -> Result<Pending> {
        self.check_len(data_out.len(), data_in_len)?;
        let slot = self.take_slot().await?;
        if !data_out.is_empty() {
            self.mem.write(self.data_off(slot.slot), data_out)?;
        }
        self.offer(slot, lun, cdb, data_out.len(), data_in_len)
    }

    /// [`RequestQueue::start`] with the data-out bytes written in place by
    /// `fill`, which gets the slot's buffer in shared memory (zero-copy).
    /// `fill` runs before the slot is offered, so the device cannot see the buffer yet.
    pub(crate) async fn start_filled<T>(
        self: &Arc<Self>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out_len: usize,
        fill: impl FnOnce(&mut [u8]) -> T,
    ) -> Result<(Pending, T)> {
        self.check_len(data_out_len, 0)?;
        let slot = self.take_slot().await?;
        let ptr = self
            .mem
            .checked_ptr(self.data_off(slot.slot), data_out_len)?;
        // The slot was just taken off the free list, so no other command
        // uses its buffer, and it is not on the ring yet, so a device keeping
        // the ring contract does not touch it; `buf` is dead before `offer`.
        // SAFETY: the range is inside the live mapping (checked_ptr), kept
        // mapped by `self.mem`, and nothing else writes it meanwhile (above).
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, data_out_len) };
        let out = fill(buf);
        let pending = self.offer(slot, lun, cdb, data_out_len, 0)?;
        Ok((pending, out))
    }

    fn check_len(&self, data_out_len: usize, data_in_len: usize) -> Result<()> {
        let max = self.place.max_transfer;
        if data_out_len > max || data_in_len > max {
            return Err(Error::TransferTooLarge {
                len: data_out_len.max(data_in_len),
                max,
            });
        }
        Ok(())
    }

    /// Takes a free request slot, waiting for one.
    async fn take_slot(&self) -> Result<SlotGuard<'_>> {
        self.slots_free
            .acquire()
            .await
            .map_err(|_| Error::Closed)?
            .forget();
        let mut inner = self.lock();
        if let Some(e) = &inner.broken {
            let e = Error::DeviceBroken {
                queue: self.index,
                source: e.clone(),
            };
            drop(inner);
            self.slots_free.add_permits(1);
            return Err(e);
        }
        let Some(slot) = inner.free.pop() else {
            drop(inner);
            self.slots_free.add_permits(1);
            return Err(Error::Closed);
        };
        Ok(SlotGuard {
            queue: self,
            slot,
            armed: true,
        })
    }

    /// Puts the request of `slot` on the ring and kicks if needed.
    fn offer(
        self: &Arc<Self>,
        mut slot: SlotGuard<'_>,
        lun: [u8; 8],
        cdb: &Cdb,
        data_out_len: usize,
        data_in_len: usize,
    ) -> Result<Pending> {
        let mut inner = self.lock();
        if let Some(e) = &inner.broken {
            return Err(Error::DeviceBroken {
                queue: self.index,
                source: e.clone(),
            });
        }
        let tag = inner.next_tag | (self.index as u64) << 48;
        inner.next_tag = inner.next_tag.wrapping_add(1) & ((1 << 48) - 1);
        let mut req = CmdReq::new_zeroed();
        req.lun = lun;
        req.tag = U64::new(tag);
        req.task_attr = task_attr::SIMPLE;
        let bytes = cdb.as_bytes();
        req.cdb[..bytes.len().min(CDB_SIZE)].copy_from_slice(&bytes[..bytes.len().min(CDB_SIZE)]);
        let hdr = self.header_off(slot.slot);
        let data = self.data_off(slot.slot);
        self.mem.write(hdr, req.as_bytes())?;
        let mut segs = [Segment {
            gpa: 0,
            len: 0,
            device_writes: false,
        }; 4];
        let mut n = 0;
        let mut push = |gpa: u64, len: usize, device_writes: bool| {
            segs[n] = Segment {
                gpa,
                len: len as u32,
                device_writes,
            };
            n += 1;
        };
        push(self.mem.gpa(hdr), REQ_SIZE, false);
        if data_out_len > 0 {
            push(self.mem.gpa(data), data_out_len, false);
        }
        push(self.mem.gpa(hdr + RESP_OFFSET), RESP_SIZE, true);
        if data_in_len > 0 {
            push(self.mem.gpa(data), data_in_len, true);
        }
        let head = match inner.ring.add(&segs[..n]) {
            Ok(head) => head,
            Err(e) => {
                return Err(Error::DeviceBroken {
                    queue: self.index,
                    source: e,
                });
            }
        };
        let (tx, rx) = oneshot::channel();
        inner.in_flight[head as usize] = Some(InFlight {
            slot: slot.disarm(),
            tag,
            lun,
            started: Instant::now(),
            done: tx,
        });
        if inner.ring.publish() {
            self.kicks.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.kick.write(1) {
                warn!(queue = self.index, error = %e, "kick failed");
            }
        }
        Ok(Pending { tag, rx })
    }

    /// Drains the used ring, waking the submitters. Returns false once the
    /// queue is broken or closed.
    /// Reaps whatever the device has completed, now (the polling path).
    pub(crate) fn reap_now(self: &Arc<Self>) {
        self.reap();
    }

    fn reap(self: &Arc<Self>) -> bool {
        let mut inner = self.lock();
        loop {
            loop {
                match inner.ring.pop_used() {
                    Ok(Some((head, len))) => {
                        let Some(f) = inner
                            .in_flight
                            .get_mut(head as usize)
                            .and_then(Option::take)
                        else {
                            // The ring validated the id; a missing entry is our bug, not the device's.
                            error!(
                                queue = self.index,
                                head, "completion for a head with no waiter"
                            );
                            continue;
                        };
                        let done = Completed {
                            queue: self.clone(),
                            slot: f.slot,
                            used_len: len,
                        };
                        self.completions.fetch_add(1, Ordering::Relaxed);
                        // If the caller gave up, dropping `done` here frees the slot.
                        let _ = f.done.send(Ok(done));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error!(queue = self.index, error = %e, "device broke the ring contract; queue disabled");
                        inner.broken = Some(e.clone());
                        for f in inner.in_flight.iter_mut().filter_map(Option::take) {
                            let _ = f.done.send(Err(Error::DeviceBroken {
                                queue: self.index,
                                source: e.clone(),
                            }));
                        }
                        return false;
                    }
                }
            }
            if !inner.ring.enable_interrupts() {
                return !self.closed.load(Ordering::Relaxed);
            }
        }
    }

    /// The completion task: waits on the call eventfd and reaps.
    pub(crate) async fn run_completions(self: Arc<Self>, call: EventFd) {
        let queue = format!("request {}", self.index);
        crate::interrupt::completion_loop(queue, call, &self.calls, || self.reap()).await
    }

    /// Fails every waiter (driver shutdown).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.slots_free.close();
        let mut inner = self.lock();
        for f in inner.in_flight.iter_mut().filter_map(Option::take) {
            let _ = f.done.send(Err(Error::Closed));
        }
        debug!(queue = self.index, "closed");
    }
}

impl Completed {
    /// The response header, the sense length and how many data-in bytes
    /// (of `data_in_len` asked for) the device moved.
    fn header(&self, data_in_len: usize) -> Result<(CmdResp, usize, usize)> {
        let q = &self.queue;
        if (self.used_len as usize) < RESP_FIXED {
            return Err(Error::ShortResponse(self.used_len));
        }
        let mut raw = [0u8; RESP_SIZE];
        q.mem
            .read(q.header_off(self.slot) + RESP_OFFSET, &mut raw)?;
        let resp =
            CmdResp::read_from_bytes(&raw).map_err(|_| Error::ShortResponse(self.used_len))?;
        let sense_len = (resp.sense_len.get() as usize)
            .min(resp.sense.len())
            .min((self.used_len as usize).saturating_sub(RESP_FIXED));
        // Trust neither field alone: what the residual says was moved, capped
        // by what the used length says was written.
        let moved = data_in_len.saturating_sub(resp.resid.get() as usize);
        let written = (self.used_len as usize).saturating_sub(RESP_SIZE);
        Ok((
            resp,
            sense_len,
            moved.min(written).min(q.place.max_transfer),
        ))
    }

    /// Copies the response header, sense and `data_in_len` bytes of data-in out of the slot.
    pub(crate) fn read(&self, data_in_len: usize) -> Result<RawResponse> {
        let (resp, sense_len, len) = self.header(data_in_len)?;
        let mut data = vec![0u8; len];
        self.queue
            .mem
            .read(self.queue.data_off(self.slot), &mut data)?;
        Ok(RawResponse {
            resp,
            sense_len,
            data,
        })
    }

    /// A copy of the first `len` bytes of the slot's data buffer (the
    /// data-out a zero-copy write filled in, to resend it on a retry).
    pub(crate) fn copy_data(&self, len: usize) -> Result<Vec<u8>> {
        let mut data = vec![0u8; len.min(self.queue.place.max_transfer)];
        self.queue
            .mem
            .read(self.queue.data_off(self.slot), &mut data)?;
        Ok(data)
    }

    /// The response (with no data copied) and the data-in bytes the device
    /// moved, borrowed straight from the slot's buffer in shared memory.
    pub(crate) fn read_in_place(&self, data_in_len: usize) -> Result<(RawResponse, &[u8])> {
        let (resp, sense_len, len) = self.header(data_in_len)?;
        let ptr = self
            .queue
            .mem
            .checked_ptr(self.queue.data_off(self.slot), len)?
            .cast_const();
        // The device returned this request (its used entry was popped before
        // `self` was made) and the slot stays off the free list until `self`
        // drops, so neither the device (keeping the ring contract) nor another
        // command writes these bytes while the borrow of `self` lasts.
        // SAFETY: the range is inside the live mapping (checked_ptr), kept
        // mapped by `self.queue.mem`; any byte is a valid u8.
        let data = unsafe { std::slice::from_raw_parts(ptr, len) };
        Ok((
            RawResponse {
                resp,
                sense_len,
                data: Vec::new(),
            },
            data,
        ))
    }
}

impl Drop for Completed {
    fn drop(&mut self) {
        self.queue.lock().free.push(self.slot);
        self.queue.slots_free.add_permits(1);
    }
}
