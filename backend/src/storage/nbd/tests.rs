//! The client against a scripted server on a unix socket: the bytes it
//! sends in the handshake and in requests (proto.md layouts), structured
//! replies reassembled whatever their order, errors, and a broken stream
//! failing the request instead of hanging it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::wire::*;
use super::NbdImage;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn option_reply(s: &mut UnixStream, option: u32, kind: u32, data: &[u8]) {
    let mut m = REP_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// The server side of a fixed newstyle handshake; returns every byte the
/// client sent.
fn serve_handshake(s: &mut UnixStream, size: u64, flags: u16) -> Vec<u8> {
    serve_handshake_ext(s, size, flags, false)
}

/// [`serve_handshake`], accepting NBD_OPT_EXTENDED_HEADERS when `extended`.
fn serve_handshake_ext(s: &mut UnixStream, size: u64, flags: u16, extended: bool) -> Vec<u8> {
    let mut hello = INIT_MAGIC.to_be_bytes().to_vec();
    hello.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).unwrap();
    let mut got = vec![0u8; 4];
    s.read_exact(&mut got).unwrap();
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let mut data = vec![0u8; be32(&h, 12) as usize];
        s.read_exact(&mut data).unwrap();
        got.extend_from_slice(&h);
        got.extend_from_slice(&data);
        match be32(&h, 8) {
            OPT_EXTENDED_HEADERS if extended => option_reply(s, OPT_EXTENDED_HEADERS, REP_ACK, &[]),
            OPT_EXTENDED_HEADERS => option_reply(s, OPT_EXTENDED_HEADERS, REP_ERR_UNSUP, &[]),
            OPT_STRUCTURED_REPLY => option_reply(s, OPT_STRUCTURED_REPLY, REP_ACK, &[]),
            OPT_SET_META_CONTEXT => {
                let mut d = 5u32.to_be_bytes().to_vec();
                d.extend_from_slice(b"base:allocation");
                option_reply(s, OPT_SET_META_CONTEXT, REP_META_CONTEXT, &d);
                option_reply(s, OPT_SET_META_CONTEXT, REP_ACK, &[]);
            }
            OPT_GO => {
                let mut e = INFO_EXPORT.to_be_bytes().to_vec();
                e.extend_from_slice(&size.to_be_bytes());
                e.extend_from_slice(&flags.to_be_bytes());
                option_reply(s, OPT_GO, REP_INFO, &e);
                let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [512u32, 4096, 64 * 1024] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
                option_reply(s, OPT_GO, REP_INFO, &b);
                option_reply(s, OPT_GO, REP_ACK, &[]);
                return got;
            }
            other => panic!("unexpected option {other}"),
        }
    }
}

fn chunk(s: &mut UnixStream, flags: u16, kind: u16, cookie: u64, payload: &[u8]) {
    let mut m = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    s.write_all(&m).unwrap();
}

fn simple(s: &mut UnixStream, error: u32, cookie: u64) {
    let mut m = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&error.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    s.write_all(&m).unwrap();
}

const FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;

/// What a scripted server saw: the handshake bytes and the request headers.
type Seen = (Vec<u8>, Vec<[u8; 28]>);

/// A scripted server: one connection, the handshake, then `serve` with
/// the stream; returns what the handshake received and the requests seen.
fn server(
    dir: &Path,
    serve: impl FnOnce(&mut UnixStream) -> Vec<[u8; 28]> + Send + 'static,
) -> (String, JoinHandle<Seen>) {
    let sock = dir.join("fake.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        drop(l);
        let hs = serve_handshake(&mut s, 1 << 20, FLAGS);
        let reqs = serve(&mut s);
        (hs, reqs)
    });
    (
        format!("nbd+unix:///exp?socket={}&timeout=2", sock.display()),
        h,
    )
}

fn request(s: &mut UnixStream) -> Option<[u8; 28]> {
    let mut r = [0u8; 28];
    s.read_exact(&mut r).ok()?;
    Some(r)
}

#[test]
fn handshake_bytes_and_export_info() {
    let dir = tempfile::tempdir().unwrap();
    let (uri, h) = server(dir.path(), |_| Vec::new());
    let img = NbdImage::open(Path::new(&uri), false).unwrap();
    let (hs, _) = h.join().unwrap();
    // Client flags: FIXED_NEWSTYLE | NO_ZEROES.
    assert_eq!(&hs[..4], &[0, 0, 0, 3]);
    // NBD_OPT_EXTENDED_HEADERS with no data (refused: NBD_REP_ERR_UNSUP),
    // then NBD_OPT_STRUCTURED_REPLY with no data.
    assert_eq!(&hs[4..20], &option_header(OPT_EXTENDED_HEADERS, 0));
    let hs = [&hs[..4], &hs[20..]].concat();
    assert_eq!(&hs[4..20], &option_header(OPT_STRUCTURED_REPLY, 0));
    // NBD_OPT_SET_META_CONTEXT: export "exp", one query "base:allocation".
    let meta = meta_context_data("exp", &["base:allocation"]);
    assert_eq!(
        &hs[20..36],
        &option_header(OPT_SET_META_CONTEXT, meta.len() as u32)
    );
    assert_eq!(&hs[36..36 + meta.len()], meta.as_slice());
    // NBD_OPT_GO: export "exp", one information request: NBD_INFO_BLOCK_SIZE.
    let go = &hs[36 + meta.len()..];
    assert_eq!(&go[..16], &option_header(OPT_GO, 11));
    assert_eq!(&go[16..], &[0, 0, 0, 3, b'e', b'x', b'p', 0, 1, 0, 3]);
    let i = img.info();
    assert_eq!((i.size, i.flags), (1 << 20, FLAGS));
    assert_eq!(
        (i.min_block, i.preferred_block, i.max_payload),
        (512, 4096, 64 * 1024)
    );
    assert!(i.structured && !i.extended);
    assert_eq!(i.allocation_context, Some(5));
    assert!(!img.read_only() && img.has_write_cache() && img.can_trim());
}

#[test]
fn requests_are_byte_exact_and_structured_chunks_reassemble_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let (uri, h) = server(dir.path(), |s| {
        let mut seen = Vec::new();
        while let Some(r) = request(s) {
            seen.push(r);
            let (cmd, cookie, off, len) = (
                u16::from_be_bytes([r[6], r[7]]),
                be64(&r, 8),
                be64(&r, 16),
                be32(&r, 24) as usize,
            );
            match cmd {
                CMD_READ => {
                    // Second half as data first, then the first half as a
                    // hole, then an empty final chunk.
                    let half = len / 2;
                    let mut d = (off + half as u64).to_be_bytes().to_vec();
                    d.extend(std::iter::repeat_n(0xBB, half));
                    chunk(s, 0, REPLY_TYPE_OFFSET_DATA, cookie, &d);
                    let mut hole = off.to_be_bytes().to_vec();
                    hole.extend_from_slice(&(half as u32).to_be_bytes());
                    chunk(s, 0, REPLY_TYPE_OFFSET_HOLE, cookie, &hole);
                    chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, &[]);
                }
                CMD_WRITE => {
                    let mut p = vec![0u8; len];
                    s.read_exact(&mut p).unwrap();
                    assert!(p.iter().all(|&b| b == 0x11));
                    simple(s, 0, cookie);
                }
                CMD_FLUSH => {
                    let mut e = EIO.to_be_bytes().to_vec();
                    e.extend_from_slice(&4u16.to_be_bytes());
                    e.extend_from_slice(b"oops");
                    chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, &e);
                }
                CMD_TRIM => simple(s, ENOSPC, cookie),
                CMD_WRITE_ZEROES => simple(s, EPERM, cookie),
                CMD_DISC => break,
                other => panic!("command {other}"),
            }
        }
        seen
    });
    let img = NbdImage::open(Path::new(&uri), false).unwrap();
    // 96 KiB: two READs (64 KiB maximum payload), each reassembled.
    let mut buf = vec![0xFFu8; 96 * 1024];
    img.read_at(&mut buf, 4096).unwrap();
    for (part, range) in [(0, 0..64 * 1024), (1, 64 * 1024..96 * 1024)] {
        let b = &buf[range];
        let half = b.len() / 2;
        assert!(
            b[..half].iter().all(|&x| x == 0),
            "part {part}: the hole zero-filled"
        );
        assert!(
            b[half..].iter().all(|&x| x == 0xBB),
            "part {part}: the data"
        );
    }
    img.write_at(&[0x11; 1024], 8192).unwrap();
    // A FUA write carries the flag and is durable on its own.
    let durable = img
        .write_from(
            &crate::scsi::io::SliceDataOut(&[0x11; 512]),
            0,
            512,
            0,
            true,
        )
        .unwrap();
    assert!(durable);
    // Server errors come back as their errno.
    assert_eq!(img.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(
        img.trim(0, 4096).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        img.write_zeroes(0, 4096, false).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    // Misaligned to the 512-byte minimum block: refused before sending.
    assert!(img.read_at(&mut [0u8; 100], 0).is_err());
    drop(img);
    let (_, seen) = h.join().unwrap();
    let cmds: Vec<(u16, u16, u64, u32)> = seen
        .iter()
        .map(|r| {
            assert_eq!(be32(r, 0), REQUEST_MAGIC);
            (
                u16::from_be_bytes([r[4], r[5]]),
                u16::from_be_bytes([r[6], r[7]]),
                be64(r, 16),
                be32(r, 24),
            )
        })
        .collect();
    assert_eq!(
        cmds,
        [
            (0, CMD_READ, 4096, 64 * 1024),
            (0, CMD_READ, 4096 + 64 * 1024, 32 * 1024),
            (0, CMD_WRITE, 8192, 1024),
            (CMD_FLAG_FUA, CMD_WRITE, 0, 512),
            (0, CMD_FLUSH, 0, 0),
            (0, CMD_TRIM, 0, 4096),
            (CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0, 4096),
            // Closing the image says goodbye.
            (0, CMD_DISC, 0, 0),
        ]
    );
    // Cookies are distinct for requests in the same slot.
    assert_ne!(be64(&seen[0], 8), be64(&seen[1], 8));
}

#[test]
fn a_broken_stream_fails_the_request_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (uri, h) = server(dir.path(), |s| {
        let r = request(s).unwrap();
        // Garbage instead of a reply: the client must drop the connection.
        s.write_all(&[[0xde, 0xad, 0xbe, 0xef]; 4].concat())
            .unwrap();
        // The server is gone afterwards (the listener was closed at accept).
        vec![r]
    });
    let img = NbdImage::open(Path::new(&uri), false).unwrap();
    let t = Instant::now();
    let e = img.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let errno = e.raw_os_error();
    assert!(
        matches!(errno, Some(libc::ECONNRESET | libc::ENOTCONN)),
        "{e}"
    );
    // The next request does not wait the whole timeout again once the
    // server has been gone that long.
    std::thread::sleep(Duration::from_millis(2100));
    let t = Instant::now();
    assert!(img.read_at(&mut [0u8; 512], 0).is_err());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    h.join().unwrap();
}

/// An extended reply chunk header (32 bytes) and its payload.
fn ext_chunk(s: &mut UnixStream, flags: u16, kind: u16, cookie: u64, offset: u64, payload: &[u8]) {
    let mut m = EXTENDED_REPLY_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    m.extend_from_slice(payload);
    s.write_all(&m).unwrap();
}

#[test]
fn extended_headers_carry_requests_replies_and_block_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ext.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let hs = serve_handshake_ext(&mut s, 1 << 20, FLAGS, true);
        let mut seen = Vec::new();
        // A WRITE of 512 bytes: 32-byte header with PAYLOAD_LEN, then data.
        let mut r = [0u8; 32];
        s.read_exact(&mut r).unwrap();
        let mut data = vec![0u8; be64(&r, 24) as usize];
        s.read_exact(&mut data).unwrap();
        seen.push(r);
        ext_chunk(
            &mut s,
            REPLY_FLAG_DONE,
            REPLY_TYPE_NONE,
            be64(&r, 8),
            be64(&r, 16),
            &[],
        );
        // A READ of 1024 bytes: one data chunk and one hole chunk.
        s.read_exact(&mut r).unwrap();
        seen.push(r);
        let (cookie, off) = (be64(&r, 8), be64(&r, 16));
        let mut d = (off + 512).to_be_bytes().to_vec();
        d.extend_from_slice(&[0xAB; 512]);
        ext_chunk(&mut s, 0, REPLY_TYPE_OFFSET_DATA, cookie, off, &d);
        let mut hole = off.to_be_bytes().to_vec();
        hole.extend_from_slice(&512u32.to_be_bytes());
        ext_chunk(
            &mut s,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_HOLE,
            cookie,
            off,
            &hole,
        );
        // BLOCK_STATUS: context 5, two 64-bit descriptors.
        s.read_exact(&mut r).unwrap();
        seen.push(r);
        let mut b = 5u32.to_be_bytes().to_vec();
        b.extend_from_slice(&2u32.to_be_bytes());
        for (len, st) in [(4096u64, 0u64), (8192, u64::from(STATE_HOLE | STATE_ZERO))] {
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&st.to_be_bytes());
        }
        ext_chunk(
            &mut s,
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS_EXT,
            be64(&r, 8),
            be64(&r, 16),
            &b,
        );
        (hs, seen, data)
    });
    let uri = format!("nbd+unix:///exp?socket={}&timeout=2", sock.display());
    let img = NbdImage::open(Path::new(&uri), false).unwrap();
    assert!(img.info().extended && img.info().structured);
    img.write_at(&[0x5A; 512], 4096).unwrap();
    let mut buf = [0x11u8; 1024];
    img.read_at(&mut buf, 8192).unwrap();
    assert!(
        buf[..512].iter().all(|&b| b == 0),
        "the hole reads as zeroes"
    );
    assert!(buf[512..].iter().all(|&b| b == 0xAB));
    let extents = img.allocation(0, 12288, 16).unwrap().unwrap();
    assert_eq!(extents, vec![(4096, false), (8192, true)]);
    let (hs, seen, data) = h.join().unwrap();
    // The first option asked for extended headers; structured replies
    // were not asked for separately.
    assert_eq!(&hs[4..20], &option_header(OPT_EXTENDED_HEADERS, 0));
    let meta = meta_context_data("exp", &["base:allocation"]);
    assert_eq!(
        &hs[20..36],
        &option_header(OPT_SET_META_CONTEXT, meta.len() as u32)
    );
    // WRITE: magic, flags PAYLOAD_LEN, type 1, offset 4096, length 512.
    assert_eq!(
        &seen[0][0..8],
        &[0x21, 0xe4, 0x1c, 0x71, 0x00, 0x20, 0x00, 0x01]
    );
    assert_eq!((be64(&seen[0], 16), be64(&seen[0], 24)), (4096, 512));
    assert!(data.iter().all(|&b| b == 0x5A));
    // READ: no flags, type 0, 64-bit length.
    assert_eq!(&seen[1][0..8], &[0x21, 0xe4, 0x1c, 0x71, 0, 0, 0, 0]);
    assert_eq!((be64(&seen[1], 16), be64(&seen[1], 24)), (8192, 1024));
    // BLOCK_STATUS: type 7.
    assert_eq!(&seen[2][4..8], &[0, 0, 0, 7]);
}
