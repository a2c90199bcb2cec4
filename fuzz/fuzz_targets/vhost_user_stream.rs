//! Fuzzes the daemon's vhost-user connection handling: one long-lived
//! `serve_controller` loop (the daemon's own, over a real unix socket) is
//! fed one connection per input, each an arbitrary sequence of vhost-user
//! messages with arbitrary headers, payloads and attached fds, including
//! fds that are not what the message says (a memfd as a kick eventfd, a
//! pipe whose writer is gone, /dev/null as a memory region, a socket).
//!
//! Input: a sequence of messages, each
//!
//! ```text
//! request: u8    vhost-user request code (value % 48; 0 and 45-47 are unknown)
//! control: u8    bit 0 NEED_REPLY, bit 1 a wrong version in the flags,
//!                bit 2 the header's size comes from the next 2 bytes (LE)
//!                instead of the payload's real length, bits 4-7 the fds
//!                attached (see `attach`)
//! [size: u16]    only with control bit 2
//! len: u8        payload bytes that follow
//! payload        `len` bytes (fewer if the input ends)
//! ```
//!
//! Checked for every input:
//! - no panic, in the daemon's threads included (the process aborts);
//! - after the client closes, the daemon closes its end within
//!   [`HANG_LIMIT`] (no hang on any message sequence);
//! - the daemon then serves the next connection: GET_FEATURES is answered
//!   within [`HANG_LIMIT`] (a connection refused as busy while the last one
//!   ends is retried);
//! - resources come back: measured while that next connection is served,
//!   the daemon's open fds and threads never grow past the first
//!   measurement by more than a small slack, so nothing a connection
//!   creates or is sent outlives it.
#![no_main]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vscsi_backend::daemon::{self, ConnectionStats, Shutdown};
use vscsi_backend::scsi::target::BusHandle;
use vscsi_backend::scsi::{LogicalUnit, LunOptions, ScsiBus};
use vscsi_backend::storage::AioMode;
use vscsi_backend::vhost::DeviceOptions;

/// How long the daemon may take to end a connection or answer a new one.
const HANG_LIMIT: Duration = Duration::from_secs(10);

/// Open fds and threads a served connection may have beyond the first
/// measurement (the fuzzer's own transient files, a thread still exiting).
const FD_SLACK: usize = 48;
const THREAD_SLACK: usize = 8;

const VHOST_USER_VERSION: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;
const GET_FEATURES: u32 = 1;
const HEADER_LEN: usize = 12;

struct Daemon {
    socket: PathBuf,
    baseline: OnceLock<(usize, usize)>,
    _dir: tempfile::TempDir,
    _shutdown: Arc<Shutdown>,
}

fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("temp dir");
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
        let opts = LunOptions {
            aio: AioMode::Inline,
            serial: Some("FUZZ0001".into()),
            ..LunOptions::default()
        };
        let lu = LogicalUnit::open(&image, opts).expect("open image");
        let mut bus = ScsiBus::new();
        bus.add_lun(0, 0, Arc::new(lu)).expect("add LUN");
        let bus = BusHandle::new(bus);
        let socket = dir.path().join("vscsi.sock");
        let listener = daemon::bind(&socket).expect("bind");
        let shutdown = Arc::new(Shutdown::default());
        let device = DeviceOptions {
            request_queues: 2,
            max_queue_size: 256,
            ..DeviceOptions::default()
        };
        let stop = shutdown.clone();
        std::thread::Builder::new()
            .name("fuzz-daemon".into())
            .spawn(move || {
                let stats = ConnectionStats::default();
                let r = daemon::serve_controller(listener, &bus, device, stop, "ctrl0", &stats);
                // The loop only returns when asked to stop, which nothing does.
                panic!("serve_controller returned: {r:?}");
            })
            .expect("daemon thread");
        Daemon {
            socket,
            baseline: OnceLock::new(),
            _dir: dir,
            _shutdown: shutdown,
        }
    })
}

/// The fds attached to a message, by the high nibble of its control byte,
/// and what the client keeps of them (ends it must hold or close itself).
fn attach(kind: u8) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
    let memfd = |len: i64| -> OwnedFd {
        // SAFETY: memfd_create with a valid NUL-terminated name; the
        // returned fd is checked before it is owned.
        let fd = unsafe { libc::memfd_create(c"fuzz-mem".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: fd is a fresh memfd only this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on the memfd just created.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }, 0);
        fd
    };
    let eventfd = |kicked: bool| -> OwnedFd {
        // SAFETY: eventfd(2) with valid flags; the fd is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd");
        // SAFETY: fd is a fresh eventfd only this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if kicked {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to the eventfd.
            unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
        fd
    };
    let pipe = || -> (OwnedFd, OwnedFd) {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created by pipe2 and are owned once each.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    };
    let file = |path: &str| -> OwnedFd {
        OwnedFd::from(std::fs::File::open(path).expect("open fd source"))
    };
    match kind {
        0 => (vec![], vec![]),
        1 => (vec![memfd(64 << 10)], vec![]),
        2 => (vec![memfd(1 << 20)], vec![]),
        3 => (vec![eventfd(true)], vec![]),
        4 => (vec![eventfd(false)], vec![]),
        // A pipe whose writer is closed: always readable, reads 0 bytes.
        5 => (vec![pipe().0], vec![]),
        // A pipe whose writer the client holds: never readable.
        6 => {
            let (r, w) = pipe();
            (vec![r], vec![w])
        }
        7 => (vec![file("/dev/null")], vec![]),
        8 => (vec![file("/")], vec![]),
        // One end of a socket pair, the other held by the client (a
        // backend request channel that never answers).
        9 => {
            let (a, b) = UnixStream::pair().expect("socketpair");
            (vec![OwnedFd::from(a)], vec![OwnedFd::from(b)])
        }
        10 => (vec![memfd(1 << 20), eventfd(false)], vec![]),
        11 => ((0..8).map(|_| memfd(4096)).collect(), vec![]),
        12 => (vec![eventfd(true), eventfd(true)], vec![]),
        // A zero-length memfd: mapping it fails.
        13 => (vec![memfd(0)], vec![]),
        14 => (vec![memfd(2 << 20)], vec![]),
        _ => (vec![eventfd(false), memfd(1 << 20), file("/dev/null")], vec![]),
    }
}

/// Sends one message with `fds` attached (SCM_RIGHTS). False once the
/// daemon has closed the connection.
fn send(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) -> bool {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmsg = vec![0u8; 256];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        let data_len = std::mem::size_of_val(raw.as_slice()) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cmsg` (256 bytes), larger than
        // `space` for at most 16 fds, so the first header and its data lie
        // inside it; the fds are copied unaligned into that data area.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(hdr),
                data_len as usize,
            );
        }
    }
    // SAFETY: msg points at live buffers (iov over `bytes`, control over
    // `cmsg`) for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    n >= 0 && (n as usize) == bytes.len() || (n > 0 && {
        // A partial write: send the rest without fds.
        let mut s = sock;
        s.write_all(&bytes[n as usize..]).is_ok()
    })
}

/// Reads until the daemon closes the connection; panics past [`HANG_LIMIT`].
fn wait_closed(sock: &mut UnixStream, what: &str) {
    let start = Instant::now();
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            // ECONNRESET and the like: closed.
            Err(_) => return,
        }
        if start.elapsed() > HANG_LIMIT {
            panic!("daemon did not close the connection within {HANG_LIMIT:?} after {what}");
        }
    }
}

/// Connects and asks GET_FEATURES until the daemon answers (a connection
/// refused while the previous one ends is retried), then measures the
/// process's fds and threads while that connection is open.
fn served_next(d: &Daemon) -> (usize, usize) {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = UnixStream::connect(&d.socket) {
            s.set_read_timeout(Some(Duration::from_secs(1))).ok();
            let mut hdr = [0u8; HEADER_LEN];
            hdr[0..4].copy_from_slice(&GET_FEATURES.to_le_bytes());
            hdr[4..8].copy_from_slice(&VHOST_USER_VERSION.to_le_bytes());
            let mut reply = [0u8; HEADER_LEN + 8];
            if s.write_all(&hdr).is_ok() && s.read_exact(&mut reply).is_ok() {
                assert_eq!(&reply[0..4], &GET_FEATURES.to_le_bytes(), "reply to GET_FEATURES");
                let features = u64::from_le_bytes(reply[12..20].try_into().unwrap());
                assert_ne!(features & 1 << 32, 0, "VERSION_1 offered");
                let counts = (fd_count(), thread_count());
                drop(s);
                return counts;
            }
        }
        if start.elapsed() > HANG_LIMIT {
            panic!("daemon did not serve a new connection within {HANG_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let d = daemon();
    if d.baseline.get().is_none() {
        let _ = d.baseline.set(served_next(d));
    }
    let Ok(mut sock) = UnixStream::connect(&d.socket) else {
        panic!("connect to the daemon's socket failed");
    };
    let mut held = Vec::new();
    let mut input = data;
    let mut take = |n: usize| -> &[u8] {
        let (a, b) = input.split_at(n.min(input.len()));
        input = b;
        a
    };
    let mut msg = Vec::with_capacity(HEADER_LEN + 256);
    let mut sent = 0;
    while sent < 64 {
        let head = take(2);
        if head.len() < 2 {
            break;
        }
        let (request, control) = (u32::from(head[0] % 48), head[1]);
        let declared = if control & 4 != 0 {
            let s = take(2);
            Some(u32::from(s.first().copied().unwrap_or(0)) | u32::from(s.get(1).copied().unwrap_or(0)) << 8)
        } else {
            None
        };
        let len = usize::from(take(1).first().copied().unwrap_or(0));
        let payload = take(len);
        let mut flags = VHOST_USER_VERSION;
        if control & 1 != 0 {
            flags |= NEED_REPLY;
        }
        if control & 2 != 0 {
            flags = u32::from(control) << 8 | 0x2;
        }
        msg.clear();
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&declared.unwrap_or(payload.len() as u32).to_le_bytes());
        msg.extend_from_slice(payload);
        let (fds, keep) = attach(control >> 4);
        held.extend(keep);
        if !send(&sock, &msg, &fds) {
            break;
        }
        sent += 1;
    }
    // The client is done: half-close, so the daemon reads EOF after the
    // last message, and drain its replies until it closes its end.
    let _ = sock.shutdown(std::net::Shutdown::Write);
    wait_closed(&mut sock, "the client's EOF");
    drop(sock);
    drop(held);

    let (fds, threads) = served_next(d);
    let (fds0, threads0) = *d.baseline.get().expect("baseline");
    assert!(
        fds <= fds0 + FD_SLACK,
        "open fds grew from {fds0} to {fds} while serving one connection after another"
    );
    assert!(
        threads <= threads0 + THREAD_SLACK,
        "threads grew from {threads0} to {threads} while serving one connection after another"
    );
});
