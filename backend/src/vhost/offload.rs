//! The request queue's second engine for deferred transfers: READ/WRITE
//! of a logical unit whose medium answers over the network (an NBD
//! export, [`crate::scsi::LogicalUnit::offloads_io`]) run on helper threads
//! of the queue, many at a time, so a slow or stalled server delays only
//! the commands waiting for it, never the queue's other LUNs.
//!
//! The shape is the io_uring engine's ([`super::uring`]): the queue
//! thread hands over a chain's buffers and the checked
//! [`MediumTransfer`] ([`Offload::start`]); a helper runs it with the
//! medium's blocking calls ([`crate::scsi::rw::run_transfer`], which moves
//! the data straight between the socket and guest memory) and signals the
//! queue's completion eventfd; the queue thread reaps the finished slots
//! ([`Offload::reap`]) and completes their chains in one batch. The
//! medium bounds every call by its own timeout (an NBD request fails with
//! a sense after the LUN's `timeout`), so [`Offload::drain`] always ends.
//!
//! No allocation per request: [`SLOTS`] fixed slots, job and completion
//! lists with that capacity, helper threads started on demand up to
//! [`HELPERS`] and stopped with the queue. The helpers are shared by the
//! queue's offloaded LUNs: while a stalled server holds all of them, the
//! other offloaded LUNs of that queue wait in the job list too (LUNs on
//! files never do).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryLoadGuard;

use super::guest_io::{GuestDataIn, GuestDataOut, IoVecs};
use super::response::{REQ_SIZE, RESP_SIZE};
use super::uring::{Completed, StartError};
use crate::scsi::io::MediumTransfer;
use crate::scsi::rw::{complete_transfer, run_transfer};
use crate::scsi::target::LunEntry;
use crate::vhost::dirty::GuestMem;

/// Transfers in flight per queue at most: more than a ring of the usual
/// sizes holds, so a queue never waits for a slot.
pub const SLOTS: usize = 256;

/// Helper threads per queue at most: transfers beyond them wait in the
/// job list (the queue thread never does).
pub const HELPERS: usize = 32;

/// Stack of a helper thread: the medium's calls are shallow.
const STACK: usize = 256 * 1024;

#[derive(Default)]
struct Slot {
    head: u16,
    readable: IoVecs,
    writable: IoVecs,
    transfer: Option<MediumTransfer>,
    short: Option<u32>,
    lu: Option<Arc<LunEntry>>,
    /// Keeps the mapping the iovecs point into alive.
    mem: Option<GuestMemoryLoadGuard<GuestMem>>,
    outcome: Option<io::Result<()>>,
}

struct Jobs {
    queue: VecDeque<u16>,
    stop: bool,
}

struct Shared {
    slots: Box<[Mutex<Slot>]>,
    jobs: Mutex<Jobs>,
    jobs_cv: Condvar,
    done: Mutex<Vec<u16>>,
    done_cv: Condvar,
    /// Finished slots not yet reaped (read without the lock when polling).
    ready: AtomicUsize,
    /// The queue's completion eventfd (a duplicate of the device's).
    notify: File,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its state whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One request queue's helper threads and their slots.
pub struct Offload {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    free: Vec<u16>,
    in_flight: usize,
    /// The completion list swapped out by `reap` (keeps its allocation).
    reaped: Vec<u16>,
    queue: u16,
}

impl Offload {
    /// An engine signalling its completions on `eventfd` (the queue's
    /// completion eventfd, registered in its worker's epoll; duplicated
    /// here, so the engine never writes to a descriptor it does not own).
    pub fn new(eventfd: RawFd, queue: u16) -> io::Result<Offload> {
        // SAFETY: the device keeps the queue's completion eventfd open
        // while the queue exists; it is only borrowed to be duplicated.
        let notify = unsafe { BorrowedFd::borrow_raw(eventfd) }.try_clone_to_owned()?;
        let shared = Arc::new(Shared {
            slots: (0..SLOTS).map(|_| Mutex::new(Slot::default())).collect(),
            jobs: Mutex::new(Jobs {
                queue: VecDeque::with_capacity(SLOTS),
                stop: false,
            }),
            jobs_cv: Condvar::new(),
            done: Mutex::new(Vec::with_capacity(SLOTS)),
            done_cv: Condvar::new(),
            ready: AtomicUsize::new(0),
            notify: File::from(notify),
        });
        Ok(Offload {
            shared,
            threads: Vec::with_capacity(HELPERS),
            free: (0..SLOTS as u16).rev().collect(),
            in_flight: 0,
            reaped: Vec::with_capacity(SLOTS),
            queue,
        })
    }

    /// Transfers in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether every slot is in flight.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Whether finished transfers wait to be reaped (no lock, no syscall).
    pub fn has_completions(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) > 0
    }

    /// A helper for the next job when every helper may be busy (up to
    /// [`HELPERS`]): with more helpers than transfers in flight, one is
    /// free or about to be.
    fn ensure_helper(&mut self) -> io::Result<()> {
        if self.threads.len() > self.in_flight || self.threads.len() >= HELPERS {
            return Ok(());
        }
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vscsi-offload-{}", self.queue))
            .stack_size(STACK)
            .spawn(move || helper(&shared))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Starts `transfer` of the chain `head`: takes over `readable` /
    /// `writable` (they come back empty, allocation kept) and `mem`. `lu`
    /// is the entry of the logical unit the command ran on, on which the
    /// caller called [`LunEntry::begin_transfer`]: the engine calls
    /// `end_transfer` when the transfer is reaped (not when `start` fails).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        head: u16,
        lu: &Arc<LunEntry>,
        transfer: MediumTransfer,
        short: Option<u32>,
        readable: &mut IoVecs,
        writable: &mut IoVecs,
        mem: GuestMemoryLoadGuard<GuestMem>,
    ) -> Result<(), StartError> {
        if !lu.lu().offloads_io() {
            return Err(StartError::Invalid);
        }
        let Some(&idx) = self.free.last() else {
            return Err(StartError::Full);
        };
        if let Err(e) = self.ensure_helper() {
            crate::limited_site!(warn, error = %e, "cannot start a transfer helper thread");
            if self.threads.is_empty() {
                return Err(StartError::Invalid);
            }
        }
        self.free.pop();
        {
            let mut slot = lock(&self.shared.slots[usize::from(idx)]);
            std::mem::swap(&mut slot.readable, readable);
            std::mem::swap(&mut slot.writable, writable);
            slot.head = head;
            slot.transfer = Some(transfer);
            slot.short = short;
            slot.lu = Some(lu.clone());
            slot.mem = Some(mem);
            slot.outcome = None;
        }
        self.in_flight += 1;
        lock(&self.shared.jobs).queue.push_back(idx);
        self.shared.jobs_cv.notify_one();
        Ok(())
    }

    /// Calls `done` for each finished transfer and frees its slot; returns
    /// how many finished.
    pub fn reap(&mut self, done: &mut dyn FnMut(Completed<'_>)) -> usize {
        if !self.has_completions() {
            return 0;
        }
        {
            let mut list = lock(&self.shared.done);
            std::mem::swap(&mut *list, &mut self.reaped);
            self.shared.ready.store(0, Ordering::Release);
        }
        let n = self.reaped.len();
        for &idx in &self.reaped {
            let mut guard = lock(&self.shared.slots[usize::from(idx)]);
            let slot = &mut *guard;
            let outcome = slot
                .outcome
                .take()
                .unwrap_or_else(|| Err(io::Error::other("transfer finished without an outcome")));
            let result = match (slot.transfer.take(), slot.lu.take()) {
                (Some(t), Some(entry)) => {
                    let r = complete_transfer(entry.lu(), &t, outcome);
                    entry.end_transfer();
                    r
                }
                // Not reachable: a slot is reaped only after `start` filled it.
                _ => crate::scsi::CommandResult::with_status(vscsi_protocol::status::BUSY),
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
            slot.mem = None;
            self.free.push(idx);
        }
        self.reaped.clear();
        self.in_flight -= n;
        n
    }

    /// Blocks until a transfer finished (returns at once when none is in
    /// flight or one already did).
    pub fn wait(&self) {
        if self.in_flight == 0 {
            return;
        }
        let mut list = lock(&self.shared.done);
        while list.is_empty() {
            list = self
                .shared
                .done_cv
                .wait(list)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits for every transfer in flight and hands each to `done` (ring
    /// stop, reset, disconnect). Returns how many completed.
    pub fn drain(&mut self, done: &mut dyn FnMut(Completed<'_>)) -> usize {
        let mut n = self.reap(done);
        while self.in_flight > 0 {
            self.wait();
            n += self.reap(done);
        }
        n
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        // Helpers finish the jobs queued before they look at `stop`, so
        // nothing started is left running on freed guest memory.
        lock(&self.shared.jobs).stop = true;
        self.shared.jobs_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A helper thread: runs queued jobs until the engine stops.
fn helper(shared: &Shared) {
    loop {
        let idx = {
            let mut jobs = lock(&shared.jobs);
            loop {
                if let Some(i) = jobs.queue.pop_front() {
                    break i;
                }
                if jobs.stop {
                    return;
                }
                jobs = shared.jobs_cv.wait(jobs).unwrap_or_else(|p| p.into_inner());
            }
        };
        {
            let mut guard = lock(&shared.slots[usize::from(idx)]);
            let slot = &mut *guard;
            let outcome = match (&slot.transfer, &slot.lu) {
                (Some(t), Some(entry)) => {
                    let mut data_in = GuestDataIn {
                        iov: &slot.writable,
                        base: RESP_SIZE,
                        defer: false,
                    };
                    let data_out = GuestDataOut {
                        iov: &slot.readable,
                        base: REQ_SIZE,
                        defer: false,
                    };
                    catch_unwind(AssertUnwindSafe(|| {
                        run_transfer(entry.lu(), t, &mut data_in, &data_out)
                    }))
                    .unwrap_or_else(|_| Err(io::Error::other("the transfer panicked")))
                }
                _ => Err(io::Error::other("empty transfer slot")),
            };
            slot.outcome = Some(outcome);
        }
        {
            let mut list = lock(&shared.done);
            list.push(idx);
            shared.ready.fetch_add(1, Ordering::Release);
        }
        shared.done_cv.notify_all();
        // The worker reaps on this eventfd; a full counter (never: the
        // worker empties it on every wake) would only delay the reap to
        // the next batch.
        let _ = (&shared.notify).write(&1u64.to_ne_bytes());
    }
}
