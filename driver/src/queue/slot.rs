//! A request slot's life: its completion cell, the waiter ([`Pending`]) and
//! the finished command holding the slot ([`Completed`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use tracing::error;
use vscsi_protocol::virtio_scsi::CmdResp;
use zerocopy::FromBytes;

use super::{SlotQueue, RESP_FIXED, RESP_SIZE};
use crate::error::{Error, Result};
use crate::memory::SharedSlice;

// Slot states (`SlotCell::state`).
/// Free, or taken by a submitter and not on the ring yet.
pub(super) const IDLE: u8 = 0;
/// On the ring; a waiter ([`Pending`]) watches it.
pub(super) const IN_FLIGHT: u8 = 1;
/// The device returned it; the waiter takes it as a [`Completed`].
pub(super) const DONE: u8 = 2;
/// Taken off the ring without an answer (reset, broken queue, shutdown).
pub(super) const FAILED: u8 = 3;
/// On the ring, and its waiter is gone: whoever completes it frees it.
pub(super) const ABANDONED: u8 = 4;

/// Why a command ended without an answer from the device (`SlotCell::failure`).
pub(super) const FAIL_CLOSED: u8 = 1;
pub(super) const FAIL_BROKEN: u8 = 2;
pub(super) const FAIL_RESET: u8 = 3;
/// The connection was lost and the ring re-created without it.
pub(crate) const FAIL_DISCONNECTED: u8 = 4;
/// The device did not come back within the reconnect deadline.
pub(crate) const FAIL_GONE: u8 = 5;

/// The completion state of one request slot, shared lock-free between the
/// submitter waiting on it and whoever completes it (the completion task,
/// a queue reset, shutdown). No allocation per command: the cells live as
/// long as the queue.
///
/// Ownership of the slot: a waiter that sees DONE gets a [`Completed`]
/// (which frees the slot on drop) and one that sees FAILED frees it at
/// once; a completer that finds the waiter gone (ABANDONED) frees it.
pub(super) struct SlotCell {
    pub(super) state: AtomicU8,
    pub(super) failure: AtomicU8,
    pub(super) used_len: AtomicU32,
    /// When the command times out, in ns since the queue's epoch (`u64::MAX`: never).
    pub(super) deadline: AtomicU64,
    /// Set once by the watchdog when the deadline passed.
    pub(super) expired: AtomicBool,
    pub(super) waker: AtomicWaker,
}

impl SlotCell {
    pub(super) fn new() -> Self {
        Self {
            state: AtomicU8::new(IDLE),
            failure: AtomicU8::new(0),
            used_len: AtomicU32::new(0),
            deadline: AtomicU64::new(u64::MAX),
            expired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }
}

/// When a command was submitted and when it times out (`None`: never).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub started: Instant,
    pub at: Option<Instant>,
}

impl Deadline {
    /// Started now, timing out after `timeout`.
    pub(crate) fn after(started: Instant, timeout: Duration) -> Self {
        Self {
            started,
            at: Some(started + timeout),
        }
    }
}

/// A finished command still holding its slot (returned on drop).
pub(crate) struct Completed {
    pub(super) queue: Arc<SlotQueue>,
    pub(super) slot: u16,
    pub(super) used_len: u32,
}

/// A request slot taken off the free list and not yet on the ring: given
/// back on drop (an error or a panicking fill closure) unless offered.
pub(super) struct SlotGuard<'a> {
    pub(super) queue: &'a SlotQueue,
    pub(super) slot: u16,
    pub(super) armed: bool,
}

impl SlotGuard<'_> {
    pub(super) fn disarm(&mut self) -> u16 {
        self.armed = false;
        self.slot
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.release(self.slot);
        }
    }
}

/// What the device answered, copied out of shared memory.
pub(crate) struct RawResponse {
    pub resp: CmdResp,
    pub sense_len: usize,
    pub data: Vec<u8>,
}

/// How waiting on a [`Pending`] command ended.
pub(crate) enum Outcome {
    /// The device returned it.
    Done(Completed),
    /// Its deadline passed and it is still in flight.
    Expired,
}

/// A command on the ring. Dropping it before it completed abandons the
/// command: its slot comes back when the device returns it.
pub(crate) struct Pending {
    pub(super) queue: Arc<SlotQueue>,
    pub(super) slot: u16,
    pub(super) tag: u64,
    /// Still watching the slot (no terminal state taken yet).
    pub(super) live: bool,
}

impl Pending {
    /// The command's tag (what ABORT TASK names).
    pub(crate) fn tag(&self) -> u64 {
        self.tag
    }

    /// The queue the command is on.
    pub(crate) fn queue(&self) -> &Arc<SlotQueue> {
        &self.queue
    }

    fn poll_state(&mut self, cx: Option<&Context<'_>>, expiry: bool) -> Poll<Result<Outcome>> {
        if !self.live {
            return Poll::Ready(Err(Error::Closed));
        }
        let cell = &self.queue.cells[usize::from(self.slot)];
        if let Some(cx) = cx {
            cell.waker.register(cx.waker());
        }
        match cell.state.load(Ordering::Acquire) {
            DONE => {
                self.live = false;
                Poll::Ready(Ok(Outcome::Done(Completed {
                    queue: self.queue.clone(),
                    slot: self.slot,
                    used_len: cell.used_len.load(Ordering::Relaxed),
                })))
            }
            FAILED => {
                self.live = false;
                let why = cell.failure.load(Ordering::Relaxed);
                self.queue.release(self.slot);
                Poll::Ready(Err(self.queue.failure_error(why)))
            }
            _ if expiry && cell.expired.load(Ordering::Relaxed) => {
                Poll::Ready(Ok(Outcome::Expired))
            }
            _ => Poll::Pending,
        }
    }

    /// Waits until the device returns the command, or (with `expiry`)
    /// until its deadline passed.
    pub(crate) fn wait(&mut self, expiry: bool) -> Wait<'_> {
        Wait {
            pending: self,
            expiry,
        }
    }

    /// Waits until the device returns the command, with no deadline.
    pub(crate) async fn finished(&mut self) -> Result<Completed> {
        loop {
            if let Outcome::Done(done) = self.wait(false).await? {
                return Ok(done);
            }
        }
    }

    /// The outcome if the command is finished now (the polling path).
    pub(crate) fn try_now(&mut self) -> Option<Result<Completed>> {
        match self.poll_state(None, false) {
            Poll::Ready(Ok(Outcome::Done(c))) => Some(Ok(c)),
            Poll::Ready(Err(e)) => Some(Err(e)),
            _ => None,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let cell = &self.queue.cells[usize::from(self.slot)];
        match cell
            .state
            .compare_exchange(IN_FLIGHT, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            // Finished meanwhile: the slot is ours to give back.
            Err(DONE | FAILED) => self.queue.release(self.slot),
            Err(s) => error!(
                queue = self.queue.index,
                slot = self.slot,
                state = s,
                "pending command in an unexpected state"
            ),
        }
    }
}

/// The future of [`Pending::wait`].
pub(crate) struct Wait<'a> {
    pending: &'a mut Pending,
    expiry: bool,
}

impl Future for Wait<'_> {
    type Output = Result<Outcome>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.pending.poll_state(Some(cx), this.expiry)
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
        q.mem.read(q.resp_off(self.slot), &mut raw)?;
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

    /// Copies the reply of a control or event request ([`SlotQueue::call`])
    /// into `out`: as many bytes as the device wrote, at most `out.len()`.
    /// Returns how many.
    pub(crate) fn reply(&self, out: &mut [u8]) -> Result<usize> {
        let n = out.len().min(self.used_len as usize);
        self.queue
            .mem
            .read(self.queue.resp_off(self.slot), &mut out[..n])?;
        Ok(n)
    }

    /// The response (with no data copied) and a volatile view of the data-in
    /// bytes the device moved, in the slot's buffer in shared memory. The
    /// slot stays off the free list until `self` drops, so no other command
    /// reuses the buffer while the view lives.
    pub(crate) fn read_in_place(
        &self,
        data_in_len: usize,
    ) -> Result<(RawResponse, SharedSlice<'_>)> {
        let (resp, sense_len, len) = self.header(data_in_len)?;
        let data = self.queue.mem.slice(self.queue.data_off(self.slot), len)?;
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
        self.queue.release(self.slot);
    }
}
