//! One NBD connection in the transmission phase: many requests in flight
//! (pipelined, matched by cookie), a reader thread that owns the reply
//! stream, reconnection with backoff.
//!
//! Requests come from the request-queue threads, each running one SCSI
//! command synchronously (the storage interface is blocking). A request
//! takes one of [`SLOTS`] fixed slots (no allocation per request), sends
//! its header and payload under the send lock and sleeps on its slot. The
//! reader thread reads reply headers; when a reply carries data (a READ's
//! simple reply or an NBD_REPLY_TYPE_OFFSET_DATA chunk) it *hands the
//! stream* to the waiting request, which `readv`s the bytes straight into
//! its guest buffers and hands the stream back. No bounce buffer, no copy.
//!
//! Failures never leave a request waiting: a request past its deadline is
//! abandoned (the reader frees its slot when the late reply comes, or when
//! the connection goes) and the connection is shut down, because a server
//! that misses a deadline is presumed stalled. When the stream breaks (a
//! timeout, an EOF, a protocol error) every request in flight on it is
//! failed with `ECONNRESET`; each is retried once on the next connection
//! (every command this client sends is idempotent: a READ, a WRITE of the
//! same bytes at the same offset, TRIM, WRITE_ZEROES, FLUSH), within its
//! original deadline. The reader reconnects with exponential backoff
//! (100 ms doubling to 5 s); while no connection is up, a request waits for
//! one until its deadline, and once the server has been gone for longer
//! than the timeout, requests fail at once instead of each waiting.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::handshake::{handshake, ExportInfo, Socket};
use super::stream::{discard, fill_zeroes, receive, send_all, send_payload, wait_readable};
use super::uri::NbdUri;
use super::wire::{self, ReplyHeader, Request};
use crate::scsi::io::{DataIn, DataOut};

/// Requests in flight per connection at most.
pub const SLOTS: usize = 64;

/// Socket timeout in the transmission phase: how often a blocked read or
/// write wakes to look at its deadline.
const POLL: Duration = Duration::from_millis(250);

/// First and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Bytes of the reader's scratch buffer (error messages, drained data).
const SCRATCH: usize = 64 * 1024;

/// Where a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Sent (or being sent); the reply is awaited.
    Waiting,
    /// The reader hands the stream over: `len` data bytes for export offset
    /// `at` come next on the socket.
    Data {
        at: u64,
        len: u32,
    },
    /// A structured hole: `[at, at + len)` reads as zeroes.
    Hole {
        at: u64,
        len: u32,
    },
    /// `len` bytes of block status descriptors come next on the socket
    /// (read into the request's buffer from its start, as far as it holds).
    Status {
        len: u32,
    },
    /// The request is done with a handover; `ok` is false when the stream
    /// broke while it read.
    Handed {
        ok: bool,
    },
    /// The reply is complete: 0 or an errno.
    Done(i32),
    /// The request gave up; the reader frees the slot.
    Abandoned,
}

#[derive(Debug)]
struct SlotState {
    phase: Phase,
    cookie: u64,
    generation: u64,
    command: u16,
    offset: u64,
    len: u32,
    /// First error of a structured reply (0: none yet).
    error: i32,
    uses: u64,
}

#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct Link {
    socket: Option<Arc<Socket>>,
    generation: u64,
    /// When the last connection broke (None while one is up).
    down_since: Option<Instant>,
}

/// Counters of one connection.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that missed their deadline.
    pub timeouts: AtomicU64,
    /// Successful reconnections.
    pub reconnects: AtomicU64,
    /// Errors the server replied with.
    pub server_errors: AtomicU64,
    /// Requests that completed successfully.
    pub completed: AtomicU64,
    /// Their total time from submission to reply, in nanoseconds.
    pub latency_ns: AtomicU64,
}

/// Data moved by a request.
pub enum Xfer<'a> {
    /// No payload (FLUSH, TRIM, WRITE_ZEROES).
    None,
    /// A READ into `buf` at `at`.
    In(&'a mut dyn DataIn, usize),
    /// A WRITE from `buf` at `at`.
    Out(&'a dyn DataOut, usize),
}

/// One NBD connection (re-established as needed) to an export.
#[derive(Debug)]
pub struct Connection {
    uri: NbdUri,
    label: String,
    info: ExportInfo,
    link: Mutex<Link>,
    link_cv: Condvar,
    slots: Box<[Slot]>,
    free: Mutex<Vec<u16>>,
    free_cv: Condvar,
    send: Mutex<()>,
    closing: AtomicBool,
    /// Counters (requests, timeouts, reconnects, server errors).
    pub stats: ConnStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave its state
    // half-updated in a way that matters more than a lost request.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn os(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Connects and shakes hands with `uri`'s server, `timeout` bounding each step.
pub fn dial(uri: &NbdUri, timeout: Duration) -> io::Result<(Socket, ExportInfo)> {
    let s = Socket::connect(&uri.endpoint, timeout)?;
    let info = handshake(&s, uri).map_err(|e| match e {
        super::handshake::HandshakeError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    })?;
    s.set_timeouts(Some(POLL))?;
    Ok((s, info))
}

impl Connection {
    /// Starts serving requests on `socket`, connected and past the
    /// handshake that gave `info`; spawns the reader thread.
    pub fn start(
        uri: NbdUri,
        label: String,
        socket: Socket,
        info: ExportInfo,
    ) -> io::Result<Arc<Connection>> {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                state: Mutex::new(SlotState {
                    phase: Phase::Free,
                    cookie: 0,
                    generation: 0,
                    command: 0,
                    offset: 0,
                    len: 0,
                    error: 0,
                    uses: 0,
                }),
                cv: Condvar::new(),
            })
            .collect();
        let socket = Arc::new(socket);
        let conn = Arc::new(Connection {
            uri,
            label,
            info,
            link: Mutex::new(Link {
                socket: Some(socket.clone()),
                generation: 1,
                down_since: None,
            }),
            link_cv: Condvar::new(),
            slots,
            free: Mutex::new((0..SLOTS as u16).rev().collect()),
            free_cv: Condvar::new(),
            send: Mutex::new(()),
            closing: AtomicBool::new(false),
            stats: ConnStats::default(),
        });
        let c = conn.clone();
        std::thread::Builder::new()
            .name("nbd-reader".into())
            .spawn(move || c.run(socket))?;
        Ok(conn)
    }

    /// Whether a connection is up now.
    pub fn connected(&self) -> bool {
        lock(&self.link).socket.is_some()
    }

    /// Stops the connection: a polite NBD_CMD_DISC, the socket shut down,
    /// the reader thread ends, every request in flight fails.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let link = lock(&self.link);
        if let Some(s) = &link.socket {
            if let Ok(_g) = self.send.try_lock() {
                let disc = Request {
                    flags: 0,
                    command: wire::CMD_DISC,
                    cookie: 0,
                    offset: 0,
                    length: 0,
                };
                let _ = s.write_some(&disc.encode());
            }
            s.shutdown();
        }
        self.link_cv.notify_all();
    }

    // ---- request side ----

    fn take_slot(&self, deadline: Instant) -> io::Result<u16> {
        let mut free = lock(&self.free);
        loop {
            if let Some(i) = free.pop() {
                return Ok(i);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(os(libc::ETIMEDOUT));
            }
            free = self
                .free_cv
                .wait_timeout(free, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn put_slot(&self, i: u16) {
        lock(&self.free).push(i);
        self.free_cv.notify_one();
    }

    /// Runs one request (`length` bytes at export `offset`) to completion
    /// or failure by `deadline`; a request lost with its connection is sent
    /// again once.
    pub fn execute(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        mut xfer: Xfer<'_>,
        deadline: Instant,
    ) -> io::Result<()> {
        let started = Instant::now();
        let idx = self.take_slot(deadline)?;
        let mut attempt = 0;
        loop {
            match self.attempt(idx, command, flags, offset, length, &mut xfer, deadline) {
                Err(e)
                    if attempt == 0
                        && e.raw_os_error() == Some(libc::ECONNRESET)
                        && Instant::now() < deadline =>
                {
                    attempt += 1;
                    tracing::debug!(nbd = %self.label, command, offset, "request lost with its connection: sending it again");
                }
                Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {
                    // Only `wait` returns ETIMEDOUT, after abandoning the
                    // slot: the reader frees it (looking at the phase here
                    // would race with that).
                    return Err(e);
                }
                r => {
                    lock(&self.slots[idx as usize].state).phase = Phase::Free;
                    self.put_slot(idx);
                    if r.is_ok() {
                        self.stats.completed.fetch_add(1, Ordering::Relaxed);
                        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        self.stats.latency_ns.fetch_add(ns, Ordering::Relaxed);
                    }
                    return r;
                }
            }
        }
    }

    /// The connection to send on, waiting for one until `deadline` (or
    /// failing at once when the server has been gone past the timeout),
    /// with the slot armed under the link lock so that a connection that
    /// breaks now fails it.
    fn arm(
        &self,
        idx: u16,
        command: u16,
        offset: u64,
        length: u32,
        deadline: Instant,
    ) -> io::Result<(Arc<Socket>, u64, u64)> {
        let mut link = lock(&self.link);
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return Err(os(libc::ESHUTDOWN));
            }
            if let Some(s) = &link.socket {
                let s = s.clone();
                let generation = link.generation;
                let mut st = lock(&self.slots[idx as usize].state);
                st.uses += 1;
                let cookie = (st.uses << 16) | u64::from(idx);
                st.phase = Phase::Waiting;
                st.cookie = cookie;
                st.generation = generation;
                st.command = command;
                st.offset = offset;
                st.len = length;
                st.error = 0;
                return Ok((s, cookie, generation));
            }
            let now = Instant::now();
            let gone_for = link
                .down_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if now >= deadline || gone_for >= self.uri.timeout {
                return Err(os(libc::ENOTCONN));
            }
            link = self
                .link_cv
                .wait_timeout(link, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Shuts the connection of `generation` down (the reader notices,
    /// fails what is in flight and reconnects).
    fn break_link(&self, generation: u64) {
        let link = lock(&self.link);
        if link.generation == generation {
            if let Some(s) = &link.socket {
                s.shutdown();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        idx: u16,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        xfer: &mut Xfer<'_>,
        deadline: Instant,
    ) -> io::Result<()> {
        let (sock, cookie, generation) = self.arm(idx, command, offset, length, deadline)?;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        let (compact, extended);
        let header: &[u8] = if self.info.extended {
            extended = request.encode_extended();
            &extended
        } else {
            compact = request.encode();
            &compact
        };
        let sent = {
            let _g = lock(&self.send);
            let mut r = send_all(&sock, header, deadline);
            if let (Ok(()), Xfer::Out(out, at)) = (&r, &*xfer) {
                r = send_payload(&sock, *out, *at, length as usize, deadline);
            }
            r
        };
        if let Err(e) = sent {
            tracing::debug!(nbd = %self.label, error = %e, "sending a request failed");
            // The reader fails the slot (ECONNRESET) once the link is down.
            self.break_link(generation);
        }
        self.wait(idx, &sock, generation, xfer, deadline)
    }

    fn wait(
        &self,
        idx: u16,
        sock: &Socket,
        generation: u64,
        xfer: &mut Xfer<'_>,
        deadline: Instant,
    ) -> io::Result<()> {
        let slot = &self.slots[idx as usize];
        let mut st = lock(&slot.state);
        loop {
            match st.phase {
                Phase::Done(0) => return Ok(()),
                Phase::Done(e) => return Err(os(e)),
                Phase::Data { at, len } | Phase::Hole { at, len } => {
                    let hole = matches!(st.phase, Phase::Hole { .. });
                    let base = st.offset;
                    drop(st);
                    let ok = match xfer {
                        Xfer::In(din, buf_at) => {
                            let pos = *buf_at + (at - base) as usize;
                            if hole {
                                fill_zeroes(&mut **din, pos, len as usize)
                            } else {
                                receive(sock, &mut **din, pos, len as usize, deadline)
                            }
                        }
                        // The reader only hands data to a READ.
                        _ => false,
                    };
                    st = lock(&slot.state);
                    st.phase = Phase::Handed { ok };
                    slot.cv.notify_all();
                }
                Phase::Status { len } => {
                    drop(st);
                    let ok = match xfer {
                        Xfer::In(din, buf_at) => {
                            let len = len as usize;
                            let fit = len.min(din.capacity().saturating_sub(*buf_at));
                            receive(sock, &mut **din, *buf_at, fit, deadline)
                                && discard(sock, len - fit, deadline)
                        }
                        _ => false,
                    };
                    st = lock(&slot.state);
                    st.phase = Phase::Handed { ok };
                    slot.cv.notify_all();
                }
                Phase::Waiting | Phase::Handed { .. } => {
                    let now = Instant::now();
                    if now >= deadline && st.phase == Phase::Waiting {
                        st.phase = Phase::Abandoned;
                        drop(st);
                        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        crate::limited_site!(warn, nbd = %self.label, timeout_s = self.uri.timeout.as_secs(),
                            "NBD request timed out: the server is presumed stalled, reconnecting");
                        self.break_link(generation);
                        return Err(os(libc::ETIMEDOUT));
                    }
                    let left = deadline
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1));
                    st = slot
                        .cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Phase::Free | Phase::Abandoned => return Err(os(libc::EIO)),
            }
        }
    }

    // ---- reader side ----

    fn run(self: Arc<Self>, first: Arc<Socket>) {
        let mut scratch = vec![0u8; SCRATCH];
        let mut socket = Some(first);
        let mut backoff = BACKOFF_MIN;
        while !self.closing.load(Ordering::SeqCst) {
            let s = match socket.take() {
                Some(s) => s,
                None => match self.reconnect() {
                    Ok(s) => {
                        backoff = BACKOFF_MIN;
                        s
                    }
                    Err(e) => {
                        crate::limited_site!(warn, nbd = %self.label, error = %e, retry_ms = backoff.as_millis() as u64,
                            "NBD reconnection failed");
                        let link = lock(&self.link);
                        if !self.closing.load(Ordering::SeqCst) {
                            let _ = self.link_cv.wait_timeout(link, backoff);
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let err = self.serve(&s, &mut scratch);
            s.shutdown();
            self.fail_in_flight();
            if !self.closing.load(Ordering::SeqCst) {
                crate::limited_site!(warn, target: "vscsi::audit", nbd = %self.label, action = "nbd-disconnect",
                    result = "error", error = %err, "NBD connection lost; reconnecting");
            }
        }
        self.fail_in_flight();
    }

    fn reconnect(&self) -> io::Result<Arc<Socket>> {
        let (s, info) = dial(&self.uri, self.uri.timeout)?;
        if info.size != self.info.size || info.flags != self.info.flags {
            s.shutdown();
            return Err(io::Error::other(format!(
                "the export changed (size {} -> {}, flags {:#x} -> {:#x}): not serving it",
                self.info.size, info.size, self.info.flags, info.flags
            )));
        }
        let s = Arc::new(s);
        let mut link = lock(&self.link);
        link.socket = Some(s.clone());
        link.generation += 1;
        link.down_since = None;
        drop(link);
        self.link_cv.notify_all();
        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "vscsi::audit", nbd = %self.label, action = "nbd-reconnect", result = "ok",
            "NBD connection re-established");
        Ok(s)
    }

    /// Takes the link down and fails every request armed on it: a waiting
    /// one gets `ECONNRESET` (its requester may retry), an abandoned one's
    /// slot goes back to the pool.
    fn fail_in_flight(&self) {
        let mut link = lock(&self.link);
        link.socket = None;
        if link.down_since.is_none() {
            link.down_since = Some(Instant::now());
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let mut st = lock(&slot.state);
            match st.phase {
                Phase::Waiting | Phase::Handed { .. } => {
                    st.phase = Phase::Done(libc::ECONNRESET);
                    slot.cv.notify_all();
                }
                Phase::Abandoned => {
                    st.phase = Phase::Free;
                    drop(st);
                    self.put_slot(i as u16);
                }
                _ => {}
            }
        }
        drop(link);
        self.link_cv.notify_all();
    }

    /// Reads replies until the stream breaks; returns why.
    fn serve(&self, s: &Socket, scratch: &mut [u8]) -> io::Error {
        loop {
            if let Err(e) = self.one_reply(s, scratch) {
                return e;
            }
        }
    }

    fn read_full(&self, s: &Socket, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match s.read_some(&mut buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.closing.load(Ordering::SeqCst) {
                        return Err(os(libc::ESHUTDOWN));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn drain(&self, s: &Socket, mut len: usize, scratch: &mut [u8]) -> io::Result<()> {
        while len > 0 {
            let n = len.min(scratch.len());
            self.read_full(s, &mut scratch[..n])?;
            len -= n;
        }
        Ok(())
    }

    fn one_reply(&self, s: &Socket, scratch: &mut [u8]) -> io::Result<()> {
        wait_readable(s);
        let mut h = [0u8; wire::EXTENDED_LEN];
        self.read_full(s, &mut h[..4])?;
        let rest = ReplyHeader::rest_len(wire::get32(&h, 0))
            .ok_or_else(|| protocol("bad reply magic: the stream is out of sync"))?;
        self.read_full(s, &mut h[4..4 + rest])?;
        let header =
            ReplyHeader::decode(&h[..4 + rest]).ok_or_else(|| protocol("bad reply header"))?;
        let cookie = header.cookie();
        let idx = (cookie & 0xFFFF) as usize;
        let slot = self
            .slots
            .get(idx)
            .ok_or_else(|| protocol("reply for a cookie never sent"))?;
        let (command, offset, len) = {
            let st = lock(&slot.state);
            if st.cookie != cookie || !matches!(st.phase, Phase::Waiting | Phase::Abandoned) {
                return Err(protocol("reply for a cookie not in flight"));
            }
            (st.command, st.offset, st.len)
        };
        match header {
            ReplyHeader::Simple { error, .. } => {
                if error == 0 && command == wire::CMD_READ {
                    self.hand_over(s, slot, Phase::Data { at: offset, len }, scratch)?;
                }
                let e = if error == 0 {
                    0
                } else {
                    self.server_error(error)
                };
                self.finish(slot, idx, e);
            }
            ReplyHeader::Chunk {
                flags,
                kind,
                length,
                ..
            } => {
                let end = offset + u64::from(len);
                match kind {
                    wire::REPLY_TYPE_OFFSET_DATA if command == wire::CMD_READ && length >= 8 => {
                        let mut o = [0u8; 8];
                        self.read_full(s, &mut o)?;
                        let at = wire::get64(&o, 0);
                        let n = length - 8;
                        if at < offset || at.checked_add(u64::from(n)).is_none_or(|e| e > end) {
                            return Err(protocol("data chunk outside the request"));
                        }
                        self.hand_over(s, slot, Phase::Data { at, len: n }, scratch)?;
                    }
                    wire::REPLY_TYPE_OFFSET_HOLE if command == wire::CMD_READ && length == 12 => {
                        let mut o = [0u8; 12];
                        self.read_full(s, &mut o)?;
                        let (at, n) = (wire::get64(&o, 0), wire::get32(&o, 8));
                        if at < offset || at.checked_add(u64::from(n)).is_none_or(|e| e > end) {
                            return Err(protocol("hole chunk outside the request"));
                        }
                        self.hand_over(s, slot, Phase::Hole { at, len: n }, scratch)?;
                    }
                    wire::REPLY_TYPE_BLOCK_STATUS | wire::REPLY_TYPE_BLOCK_STATUS_EXT
                        if command == wire::CMD_BLOCK_STATUS
                            && (kind == wire::REPLY_TYPE_BLOCK_STATUS_EXT)
                                == self.info.extended
                            && length >= 4 =>
                    {
                        let mut id = [0u8; 8];
                        // The extended form has a descriptor count after
                        // the context id (implied by the length: skipped).
                        let head = if self.info.extended { 8 } else { 4 };
                        if length < head {
                            return Err(protocol("block status chunk too short"));
                        }
                        self.read_full(s, &mut id[..head as usize])?;
                        let n = length - head;
                        if Some(wire::get32(&id, 0)) == self.info.allocation_context {
                            self.hand_over(s, slot, Phase::Status { len: n }, scratch)?;
                        } else {
                            self.drain(s, n as usize, scratch)?;
                        }
                    }
                    wire::REPLY_TYPE_NONE if length == 0 => {}
                    k if k & wire::REPLY_TYPE_ERROR_BIT != 0 => {
                        let n = length as usize;
                        if !(6..=scratch.len()).contains(&n) {
                            return Err(protocol("bad error chunk length"));
                        }
                        self.read_full(s, &mut scratch[..n])?;
                        let error = wire::get32(scratch, 0);
                        let msg_len = usize::from(wire::get16(scratch, 4)).min(n - 6);
                        let msg = String::from_utf8_lossy(&scratch[6..6 + msg_len]);
                        tracing::debug!(nbd = %self.label, error, message = %msg, "NBD error chunk");
                        let e = self.server_error(if error == 0 { wire::EIO } else { error });
                        let mut st = lock(&slot.state);
                        if st.error == 0 {
                            st.error = e;
                        }
                    }
                    wire::REPLY_TYPE_OFFSET_DATA
                    | wire::REPLY_TYPE_OFFSET_HOLE
                    | wire::REPLY_TYPE_NONE => {
                        return Err(protocol("malformed structured reply chunk"));
                    }
                    // Chunks of types we did not ask for (block status...).
                    _ => self.drain(s, length as usize, scratch)?,
                }
                if flags & wire::REPLY_FLAG_DONE != 0 {
                    let e = lock(&slot.state).error;
                    self.finish(slot, idx, e);
                }
            }
        }
        Ok(())
    }

    fn server_error(&self, error: u32) -> i32 {
        self.stats.server_errors.fetch_add(1, Ordering::Relaxed);
        match wire::errno(error) {
            // The server is going away: the request may succeed on the next connection.
            libc::ESHUTDOWN => libc::ECONNRESET,
            e => e,
        }
    }

    fn finish(&self, slot: &Slot, idx: usize, e: i32) {
        let mut st = lock(&slot.state);
        if st.phase == Phase::Abandoned {
            st.phase = Phase::Free;
            drop(st);
            self.put_slot(idx as u16);
        } else {
            st.phase = Phase::Done(e);
            slot.cv.notify_all();
        }
    }

    /// Gives the stream to the slot's requester for one data or hole
    /// chunk and waits until it gives it back; drains the data itself when
    /// the requester is gone.
    fn hand_over(
        &self,
        s: &Socket,
        slot: &Slot,
        what: Phase,
        scratch: &mut [u8],
    ) -> io::Result<()> {
        let mut st = lock(&slot.state);
        if st.phase == Phase::Abandoned {
            drop(st);
            if let Phase::Data { len, .. } | Phase::Status { len } = what {
                self.drain(s, len as usize, scratch)?;
            }
            return Ok(());
        }
        st.phase = what;
        slot.cv.notify_all();
        loop {
            match st.phase {
                Phase::Handed { ok } => {
                    st.phase = Phase::Waiting;
                    return if ok {
                        Ok(())
                    } else {
                        Err(protocol("the stream broke while a reply's data was read"))
                    };
                }
                Phase::Data { .. } | Phase::Hole { .. } | Phase::Status { .. } => {
                    st = slot.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                _ => return Err(protocol("slot changed during a handover")),
            }
        }
    }
}
