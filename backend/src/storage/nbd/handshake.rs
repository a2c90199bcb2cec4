//! Connecting to an NBD server and the fixed newstyle handshake (proto.md
//! "Fixed newstyle negotiation"): NBD_OPT_EXTENDED_HEADERS (the
//! `EXTENDED_HEADERS` extension; qemu-nbd >= 9 has it), else
//! NBD_OPT_STRUCTURED_REPLY, then NBD_OPT_SET_META_CONTEXT
//! `base:allocation` (when either was accepted), then NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE; the
//! server's NBD_INFO_EXPORT gives the size and the transmission flags.
//!
//! Every read and write of the handshake is bounded by the socket timeouts
//! the caller set, and every option reply by [`MAX_OPTION_REPLY`] bytes, so
//! a server that stalls or floods cannot hold a connection attempt forever.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::uri::{Endpoint, NbdUri};
use super::wire::{self, get16, get32, get64, OptionReply};

/// Largest option reply the client reads (proto.md strings are at most
/// 4096 bytes; INFO replies are a few bytes).
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// A connected socket, TCP or unix.
#[derive(Debug)]
pub enum Socket {
    /// `nbd://`.
    Tcp(TcpStream),
    /// `nbd+unix://`.
    Unix(UnixStream),
}

impl Socket {
    /// Connects to `endpoint`, each attempt bounded by `timeout`.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Socket> {
        let s = match endpoint {
            Endpoint::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                Socket::Tcp(s)
            }
            Endpoint::Unix(path) => Socket::Unix(UnixStream::connect(path)?),
        };
        s.set_timeouts(Some(timeout))?;
        Ok(s)
    }

    /// Sets both socket timeouts (`SO_RCVTIMEO`, `SO_SNDTIMEO`).
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Socket::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    /// Shuts both directions down: a thread blocked reading it wakes.
    pub fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// One `read`.
    pub fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).read(buf),
            Socket::Unix(s) => (&*s).read(buf),
        }
    }

    /// One `write`.
    pub fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => (&*s).write(buf),
            Socket::Unix(s) => (&*s).write(buf),
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(s) => s.as_fd(),
            Socket::Unix(s) => s.as_fd(),
        }
    }
}

/// What NBD_OPT_GO told about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`wire::TFLAG_*`).
    pub flags: u16,
    /// Minimum block size (offsets and lengths are multiples of it).
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest payload of a READ or WRITE.
    pub max_payload: u32,
    /// Structured replies were negotiated (also with extended headers).
    pub structured: bool,
    /// Extended headers were negotiated: 32-byte request and reply
    /// headers, 64-bit block status descriptors.
    pub extended: bool,
    /// The `base:allocation` context id, when the server offers it.
    pub allocation_context: Option<u32>,
}

impl ExportInfo {
    /// Whether transmission flag `f` is set.
    pub fn has(&self, f: u16) -> bool {
        self.flags & wire::TFLAG_HAS_FLAGS != 0 && self.flags & f != 0
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed (or timed out).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server does not speak fixed newstyle NBD, or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the export.
    #[error("{0}")]
    Refused(String),
}

fn read_exact(s: &Socket, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match s.read_some(&mut buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all(s: &Socket, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write_some(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn send_option(s: &Socket, option: u32, data: &[u8]) -> io::Result<()> {
    let mut msg = wire::option_header(option, data.len() as u32).to_vec();
    msg.extend_from_slice(data);
    write_all(s, &msg)
}

fn read_reply(s: &Socket, option: u32) -> Result<(OptionReply, Vec<u8>), HandshakeError> {
    let mut h = [0u8; 20];
    read_exact(s, &mut h)?;
    let r = OptionReply::decode(&h)
        .ok_or_else(|| HandshakeError::Protocol("bad option reply magic".into()))?;
    if r.option != option {
        return Err(HandshakeError::Protocol(format!(
            "reply for option {} while option {option} was sent",
            r.option
        )));
    }
    if r.length > MAX_OPTION_REPLY {
        return Err(HandshakeError::Protocol(format!(
            "option reply of {} bytes",
            r.length
        )));
    }
    let mut data = vec![0u8; r.length as usize];
    read_exact(s, &mut data)?;
    Ok((r, data))
}

fn error_text(kind: u32, data: &[u8]) -> String {
    let what = match kind {
        wire::REP_ERR_UNSUP => "option not supported",
        wire::REP_ERR_UNKNOWN => "no such export",
        wire::REP_ERR_TLS_REQD => "the server requires TLS, which this client does not speak",
        _ => "refused",
    };
    let msg = String::from_utf8_lossy(data);
    if msg.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {msg}")
    }
}

/// Runs the handshake on a freshly connected `s` for `uri`'s export.
pub fn handshake(s: &Socket, uri: &NbdUri) -> Result<ExportInfo, HandshakeError> {
    let mut hello = [0u8; 18];
    read_exact(s, &mut hello)?;
    if get64(&hello, 0) != wire::INIT_MAGIC {
        return Err(HandshakeError::Protocol(
            "not an NBD server (no NBDMAGIC)".into(),
        ));
    }
    if get64(&hello, 8) != wire::OPTS_MAGIC {
        return Err(HandshakeError::Protocol(
            "the server speaks oldstyle NBD; only fixed newstyle is supported".into(),
        ));
    }
    let hflags = get16(&hello, 16);
    if hflags & wire::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::Protocol(
            "the server does not speak fixed newstyle NBD".into(),
        ));
    }
    let mut cflags = wire::FLAG_C_FIXED_NEWSTYLE;
    if hflags & wire::FLAG_NO_ZEROES != 0 {
        cflags |= wire::FLAG_C_NO_ZEROES;
    }
    write_all(s, &cflags.to_be_bytes())?;

    // Extended headers first (they include structured replies); a server
    // without them answers NBD_REP_ERR_UNSUP and gets structured replies.
    send_option(s, wire::OPT_EXTENDED_HEADERS, &[])?;
    let (r, _) = read_reply(s, wire::OPT_EXTENDED_HEADERS)?;
    let extended = r.kind == wire::REP_ACK;
    let structured = extended || {
        send_option(s, wire::OPT_STRUCTURED_REPLY, &[])?;
        let (r, _) = read_reply(s, wire::OPT_STRUCTURED_REPLY)?;
        r.kind == wire::REP_ACK
    };

    let mut allocation_context = None;
    if structured {
        let data = wire::meta_context_data(&uri.export, &["base:allocation"]);
        send_option(s, wire::OPT_SET_META_CONTEXT, &data)?;
        loop {
            let (r, d) = read_reply(s, wire::OPT_SET_META_CONTEXT)?;
            match r.kind {
                wire::REP_META_CONTEXT if d.len() >= 4 => {
                    if &d[4..] == b"base:allocation" {
                        allocation_context = Some(get32(&d, 0));
                    }
                }
                wire::REP_ACK => break,
                k if k & wire::REP_FLAG_ERROR != 0 => break,
                _ => {
                    return Err(HandshakeError::Protocol(
                        "unexpected reply to NBD_OPT_SET_META_CONTEXT".into(),
                    ))
                }
            }
        }
    }

    let data = wire::go_data(&uri.export, &[wire::INFO_BLOCK_SIZE]);
    send_option(s, wire::OPT_GO, &data)?;
    let mut export: Option<(u64, u16)> = None;
    let (mut min_block, mut preferred_block, mut max_payload) =
        (1, 4096, wire::DEFAULT_MAX_PAYLOAD);
    loop {
        let (r, d) = read_reply(s, wire::OPT_GO)?;
        match r.kind {
            wire::REP_INFO if d.len() >= 2 => match get16(&d, 0) {
                wire::INFO_EXPORT if d.len() >= 12 => export = Some((get64(&d, 2), get16(&d, 10))),
                wire::INFO_BLOCK_SIZE if d.len() >= 14 => {
                    min_block = get32(&d, 2).max(1);
                    preferred_block = get32(&d, 6).max(1);
                    max_payload = get32(&d, 10);
                }
                _ => {}
            },
            wire::REP_ACK => break,
            k if k & wire::REP_FLAG_ERROR != 0 => {
                return Err(HandshakeError::Refused(format!(
                    "export {:?}: {}",
                    uri.export,
                    error_text(k, &d)
                )))
            }
            _ => {
                return Err(HandshakeError::Protocol(
                    "unexpected reply to NBD_OPT_GO".into(),
                ))
            }
        }
    }
    let (size, flags) = export.ok_or_else(|| {
        HandshakeError::Protocol("NBD_OPT_GO ended without NBD_INFO_EXPORT".into())
    })?;
    if !min_block.is_power_of_two() || min_block > 65536 {
        return Err(HandshakeError::Protocol(format!(
            "minimum block size {min_block} is not a power of two up to 64 KiB"
        )));
    }
    let max_payload = max_payload.clamp(min_block, wire::DEFAULT_MAX_PAYLOAD);
    // A payload limit that is not a multiple of the minimum block would
    // split requests off the block grid.
    let max_payload = max_payload - max_payload % min_block;
    Ok(ExportInfo {
        size,
        flags,
        min_block,
        preferred_block,
        max_payload,
        structured,
        extended,
        allocation_context,
    })
}
