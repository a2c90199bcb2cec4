//! A logical unit's medium on an NBD server (the NBD project's
//! `doc/proto.md`): qemu-storage-daemon, qemu-nbd or nbdkit exporting any
//! image they can open (qcow2, rbd, iscsi, nfs...).
//!
//! - [`uri`]: `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`.
//! - [`wire`]: the protocol's constants and fixed headers.
//! - [`handshake`]: connect, fixed newstyle negotiation, NBD_OPT_GO.
//! - [`client`]: one connection: pipelined requests, the reader thread,
//!   timeouts and reconnection; `stream`: socket reads and writes bounded
//!   by a deadline.
//!
//! What the export's transmission flags decide: READ_ONLY makes the LUN
//! write-protected; SEND_FLUSH absent means the server has no volatile
//! cache (writes are durable on completion), so WCE is off and a flush is a
//! no-op; SEND_FUA lets a FUA WRITE carry NBD_CMD_FLAG_FUA instead of a
//! following FLUSH; SEND_TRIM offers logical block provisioning (UNMAP ->
//! NBD_CMD_TRIM, reported with LBPRZ=0 since a trimmed range reads back as
//! anything); SEND_WRITE_ZEROES turns a WRITE SAME of zeroes into
//! NBD_CMD_WRITE_ZEROES (NO_HOLE unless the WRITE SAME has UNMAP).
//! CAN_MULTI_CONN opens up to [`MAX_CONNECTIONS`] connections, one per
//! request-queue thread (round robin), else one connection is shared.
//!
//! The client is ours rather than a crate's: the `nbd` crate is a
//! synchronous early implementation without structured replies or
//! pipelining, and libnbd's Rust bindings are not on crates.io; this is a
//! protocol client (the storage engine is the server's), written on the
//! daemon's own I/O model (a thread per connection, guest buffers read
//! and written with `readv`/`writev`, no allocation per request).

pub mod client;
pub mod handshake;
mod stream;
pub mod uri;
pub mod wire;

use std::cell::Cell;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use uri::{is_nbd_uri, NbdUri};

use self::client::{Connection, Xfer};
use self::handshake::ExportInfo;
use super::raw::OpenError;
use crate::scsi::io::{DataIn, DataOut, SliceDataOut};

/// Connections opened to one export at most (when it allows several).
pub const MAX_CONNECTIONS: usize = 4;

/// Prometheus families of each NBD connection (name, type, help), in the
/// order of [`NbdImage::metric_values`].
pub const METRICS: [(&str, &str, &str); 6] = [
    (
        "vscsi_nbd_connected",
        "gauge",
        "1 while the NBD connection is up.",
    ),
    (
        "vscsi_nbd_requests_total",
        "counter",
        "NBD requests sent (retries included).",
    ),
    (
        "vscsi_nbd_completed_total",
        "counter",
        "NBD requests completed successfully.",
    ),
    (
        "vscsi_nbd_request_seconds_total",
        "counter",
        "Time the successful NBD requests took, from submission to reply.",
    ),
    (
        "vscsi_nbd_timeouts_total",
        "counter",
        "NBD requests that missed the LUN's timeout.",
    ),
    (
        "vscsi_nbd_reconnects_total",
        "counter",
        "Times the NBD connection was re-established.",
    ),
];

/// Largest TRIM or WRITE_ZEROES range per request (the length is 32 bits).
const MAX_RANGE: u64 = 1 << 30;

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A number per thread, so that each request-queue thread keeps to one
    /// connection of a multi-connection export.
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_index() -> usize {
    THREAD_INDEX.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        c.get()
    })
}

/// An LU medium served by an NBD export.
pub struct NbdImage {
    spec: PathBuf,
    uri: NbdUri,
    info: ExportInfo,
    read_only: bool,
    conns: Vec<Arc<Connection>>,
}

impl fmt::Debug for NbdImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdImage")
            .field("uri", &self.spec)
            .field("size", &self.info.size)
            .field("flags", &self.info.flags)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Drop for NbdImage {
    fn drop(&mut self) {
        for c in &self.conns {
            c.close();
        }
    }
}

/// A [`DataIn`] over a byte slice (the storage layer's own small reads),
/// remembering how far it was written.
struct SliceIn<'a>(&'a mut [u8], usize);

impl DataIn for SliceIn<'_> {
    fn capacity(&self) -> usize {
        self.0.len()
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        let n = self.0.len().saturating_sub(offset).min(data.len());
        if n > 0 {
            self.0[offset..offset + n].copy_from_slice(&data[..n]);
            self.1 = self.1.max(offset + n);
        }
        n
    }

    fn read_from_file(
        &mut self,
        offset: usize,
        len: usize,
        file: &std::fs::File,
        file_offset: u64,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.0.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        file.read_exact_at(&mut self.0[offset..end], file_offset)
    }
}

fn read_only_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the NBD export is read-only",
    )
}

impl NbdImage {
    /// Connects to the export `spec` names (an NBD URI), shakes hands and
    /// starts serving. `read_only` asks for a write-protected LUN; a
    /// read-only export is one whatever was asked.
    pub fn open(spec: &Path, read_only: bool) -> Result<NbdImage, OpenError> {
        let mode = if read_only { "read-only" } else { "read-write" };
        let fail = |reason: String| OpenError::Unreadable {
            path: spec.to_path_buf(),
            mode,
            source: io::Error::other(reason),
        };
        let text = spec
            .to_str()
            .ok_or_else(|| fail("the NBD URI is not UTF-8".into()))?;
        let uri: NbdUri = text.parse().map_err(|e: uri::UriError| fail(e.0))?;
        let (socket, info) = client::dial(&uri, uri.timeout)
            .map_err(|e| fail(format!("NBD server {}: {e}", uri.endpoint)))?;
        if info.size == 0 {
            return Err(OpenError::Empty {
                path: spec.to_path_buf(),
            });
        }
        let label = format!("{}/{}", uri.endpoint, uri.export);
        let first = Connection::start(uri.clone(), label.clone(), socket, info)
            .map_err(|e| fail(format!("starting the NBD reader thread: {e}")))?;
        let mut conns = vec![first];
        if info.has(wire::TFLAG_CAN_MULTI_CONN) {
            // A server that allows one client at a time (qemu-nbd without
            // -e) may still advertise multi-conn: a connection that does not
            // shake hands quickly ends the attempt.
            let quick = Duration::from_secs(1).min(uri.timeout);
            while conns.len() < MAX_CONNECTIONS {
                match client::dial(&uri, quick) {
                    Ok((s, i)) if i == info => {
                        match Connection::start(uri.clone(), label.clone(), s, i) {
                            Ok(c) => conns.push(c),
                            Err(_) => break,
                        }
                    }
                    Ok((s, _)) => {
                        s.shutdown();
                        break;
                    }
                    Err(e) => {
                        tracing::info!(nbd = %label, error = %e, connections = conns.len(),
                            "the NBD server advertises multi-conn but refused another connection");
                        break;
                    }
                }
            }
        }
        tracing::info!(nbd = %label, size = info.size, flags = format_args!("{:#06x}", info.flags),
            structured = info.structured, extended = info.extended, min_block = info.min_block, max_payload = info.max_payload,
            connections = conns.len(), timeout_s = uri.timeout.as_secs(), "NBD export connected");
        Ok(NbdImage {
            spec: spec.to_path_buf(),
            read_only: read_only || info.has(wire::TFLAG_READ_ONLY),
            uri,
            info,
            conns,
        })
    }

    fn conn(&self) -> &Connection {
        &self.conns[thread_index() % self.conns.len()]
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.uri.timeout
    }

    /// The URI the image was opened from.
    pub fn path(&self) -> &Path {
        &self.spec
    }

    /// Export size in bytes (at the handshake).
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Write-protected: asked for, or a read-only export.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// What the handshake said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Connections (1, or up to [`MAX_CONNECTIONS`] with multi-conn).
    pub fn connections(&self) -> &[Arc<Connection>] {
        &self.conns
    }

    /// Per connection, the values of [`METRICS`].
    pub fn metric_values(&self) -> Vec<[String; 6]> {
        use std::sync::atomic::Ordering::Relaxed;
        self.conns
            .iter()
            .map(|c| {
                let s = &c.stats;
                [
                    u8::from(c.connected()).to_string(),
                    s.requests.load(Relaxed).to_string(),
                    s.completed.load(Relaxed).to_string(),
                    (s.latency_ns.load(Relaxed) as f64 / 1e9).to_string(),
                    s.timeouts.load(Relaxed).to_string(),
                    s.reconnects.load(Relaxed).to_string(),
                ]
            })
            .collect()
    }

    /// The server has a volatile write cache (it takes NBD_CMD_FLUSH).
    pub fn has_write_cache(&self) -> bool {
        self.info.has(wire::TFLAG_SEND_FLUSH)
    }

    /// TRIM works: a writable export that takes NBD_CMD_TRIM.
    pub fn can_trim(&self) -> bool {
        !self.read_only && self.info.has(wire::TFLAG_SEND_TRIM)
    }

    /// WRITE_ZEROES works: a writable export that takes it.
    pub fn can_write_zeroes(&self) -> bool {
        !self.read_only && self.info.has(wire::TFLAG_SEND_WRITE_ZEROES)
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let min = u64::from(self.info.min_block);
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > self.info.size) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if !offset.is_multiple_of(min) || !len.is_multiple_of(min) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("request not aligned to the export's {min}-byte minimum block"),
            ));
        }
        Ok(())
    }

    /// Reads `len` export bytes at `disk_offset` straight into `data_in`
    /// at `offset`, split at the server's maximum payload.
    pub fn read_into(
        &self,
        data_in: &mut dyn DataIn,
        offset: usize,
        len: usize,
        disk_offset: u64,
    ) -> io::Result<()> {
        self.check_range(disk_offset, len as u64)?;
        let deadline = self.deadline();
        let conn = self.conn();
        let max = self.info.max_payload as usize;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(max);
            conn.execute(
                wire::CMD_READ,
                0,
                disk_offset + done as u64,
                n as u32,
                Xfer::In(&mut *data_in, offset + done),
                deadline,
            )?;
            done += n;
        }
        Ok(())
    }

    /// Writes `len` bytes of `data_out` from `offset` at `disk_offset`.
    /// With `fua` and an export that takes NBD_CMD_FLAG_FUA, each request
    /// carries it and `Ok(true)` says the data is durable; `Ok(false)`
    /// leaves durability to a flush.
    pub fn write_from(
        &self,
        data_out: &dyn DataOut,
        offset: usize,
        len: usize,
        disk_offset: u64,
        fua: bool,
    ) -> io::Result<bool> {
        if self.read_only {
            return Err(read_only_error());
        }
        self.check_range(disk_offset, len as u64)?;
        let with_fua = fua && self.info.has(wire::TFLAG_SEND_FUA);
        let flags = if with_fua { wire::CMD_FLAG_FUA } else { 0 };
        let deadline = self.deadline();
        let conn = self.conn();
        let max = self.info.max_payload as usize;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(max);
            conn.execute(
                wire::CMD_WRITE,
                flags,
                disk_offset + done as u64,
                n as u32,
                Xfer::Out(data_out, offset + done),
                deadline,
            )?;
            done += n;
        }
        Ok(with_fua)
    }

    /// NBD_CMD_FLUSH when the server has a write cache; nothing otherwise
    /// (its writes are durable when they complete).
    pub fn sync_data(&self) -> io::Result<()> {
        if !self.has_write_cache() || self.read_only {
            return Ok(());
        }
        self.conn()
            .execute(wire::CMD_FLUSH, 0, 0, 0, Xfer::None, self.deadline())
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len();
        self.read_into(&mut SliceIn(buf, 0), 0, len, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_from(&SliceDataOut(buf), 0, buf.len(), offset, false)
            .map(|_| ())
    }

    fn ranged(&self, command: u16, flags: u16, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        self.check_range(offset, len)?;
        let deadline = self.deadline();
        let conn = self.conn();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_RANGE);
            conn.execute(
                command,
                flags,
                offset + done,
                n as u32,
                Xfer::None,
                deadline,
            )?;
            done += n;
        }
        Ok(())
    }

    /// The allocation of `[offset, offset + len)` from NBD_CMD_BLOCK_STATUS
    /// in the `base:allocation` context: extents from `offset` on, as
    /// `(bytes, is_a_hole)`, at most `max` of them, possibly covering less
    /// than `len`. `None` when the server offers no such context.
    pub fn allocation(
        &self,
        offset: u64,
        len: u64,
        max: usize,
    ) -> Option<io::Result<Vec<(u64, bool)>>> {
        self.info.allocation_context?;
        let min = u64::from(self.info.min_block);
        let len = len.min(u64::from(u32::MAX) / min * min);
        if let Err(e) = self.check_range(offset, len) {
            return Some(Err(e));
        }
        // Descriptors: length 32 + status 32, or 64 + 64 with extended
        // headers (NBD_REPLY_TYPE_BLOCK_STATUS_EXT).
        let width = if self.info.extended { 16 } else { 8 };
        let mut buf = vec![0u8; width * max.clamp(1, 4096)];
        let mut din = SliceIn(&mut buf, 0);
        let r = self.conn().execute(
            wire::CMD_BLOCK_STATUS,
            0,
            offset,
            len as u32,
            Xfer::In(&mut din, 0),
            self.deadline(),
        );
        let filled = din.1;
        Some(r.map(|()| {
            buf[..filled - filled % width]
                .chunks_exact(width)
                .map(|d| {
                    if width == 16 {
                        (
                            wire::get64(d, 0),
                            wire::get64(d, 8) & u64::from(wire::STATE_HOLE) != 0,
                        )
                    } else {
                        (
                            u64::from(wire::get32(d, 0)),
                            wire::get32(d, 4) & wire::STATE_HOLE != 0,
                        )
                    }
                })
                .filter(|&(n, _)| n > 0)
                .collect()
        }))
    }

    /// NBD_CMD_TRIM of `[offset, offset + len)`: the server may deallocate
    /// it; what it reads back afterwards is unspecified.
    pub fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.can_trim() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        self.ranged(wire::CMD_TRIM, 0, offset, len)
    }

    /// NBD_CMD_WRITE_ZEROES of `[offset, offset + len)`; `may_unmap` lets
    /// the server punch a hole (no NBD_CMD_FLAG_NO_HOLE).
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        if !self.can_write_zeroes() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let flags = if may_unmap { 0 } else { wire::CMD_FLAG_NO_HOLE };
        self.ranged(wire::CMD_WRITE_ZEROES, flags, offset, len)
    }
}

#[cfg(test)]
mod tests;
