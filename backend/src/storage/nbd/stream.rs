//! Moving bytes on a connection's stream socket with a deadline: the
//! socket has short timeouts (`SO_RCVTIMEO`/`SO_SNDTIMEO`), so a read or
//! write that makes no progress wakes up to look at the request's deadline
//! instead of blocking forever on a stalled server.

use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

use super::handshake::Socket;
use crate::scsi::io::{DataIn, DataOut};

static ZEROES: [u8; 4096] = [0; 4096];

/// Blocks until the socket has something to read (or was shut down).
pub(super) fn wait_readable(s: &Socket) {
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&s.as_fd()),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1; poll only writes revents.
    // The result does not matter: the read that follows reports any error.
    unsafe { libc::poll(&mut pfd, 1, -1) };
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub(super) fn send_all(s: &Socket, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write_some(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if retryable(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn send_payload(
    s: &Socket,
    out: &dyn DataOut,
    at: usize,
    len: usize,
    deadline: Instant,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        match out.send_to(at + done, len - done, s.as_fd()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if retryable(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads `len` reply bytes into `din` at `at`; false if the stream broke
/// (or stalled past the deadline) part-way.
pub(super) fn receive(
    s: &Socket,
    din: &mut dyn DataIn,
    at: usize,
    len: usize,
    deadline: Instant,
) -> bool {
    let mut done = 0;
    while done < len {
        match din.recv_from(at + done, len - done, s.as_fd()) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(e) if retryable(&e) && Instant::now() < deadline => {}
            Err(_) => return false,
        }
    }
    true
}

/// Reads and drops `len` bytes (block status descriptors past what the
/// request's buffer holds); false if the stream broke.
pub(super) fn discard(s: &Socket, mut len: usize, deadline: Instant) -> bool {
    let mut buf = [0u8; 512];
    while len > 0 {
        let n = len.min(buf.len());
        match s.read_some(&mut buf[..n]) {
            Ok(0) => return false,
            Ok(k) => len -= k,
            Err(e) if retryable(&e) && Instant::now() < deadline => {}
            Err(_) => return false,
        }
    }
    true
}

pub(super) fn fill_zeroes(din: &mut dyn DataIn, at: usize, len: usize) -> bool {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROES.len());
        if din.write_at(at + done, &ZEROES[..n]) != n {
            return false;
        }
        done += n;
    }
    true
}
