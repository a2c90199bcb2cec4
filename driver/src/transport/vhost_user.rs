//! The vhost-user frontend side (QEMU docs/interop/vhost-user.rst) through
//! the `vhost` crate's `Frontend`.
//!
//! Set-up order: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
//! SET_FEATURES, GET_CONFIG, SET_MEM_TABLE, then per ring SET_VRING_NUM,
//! SET_VRING_ADDR (frontend virtual addresses; the used ring is already
//! zeroed), SET_VRING_BASE, SET_VRING_CALL, SET_VRING_KICK and
//! SET_VRING_ENABLE. A queue reset is GET_VRING_BASE and the per-ring
//! sequence again; a device reset adds RESET_DEVICE and SET_FEATURES. Messages a rust-vmm backend does not know
//! (SET_STATUS, VRING_KICK) are never sent: it drops the connection on them.
//! With REPLY_ACK every message asks for an acknowledgement, so a refused
//! request is an error here instead of a silent device that never answers.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use tracing::debug;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vmm_sys_util::eventfd::EventFd;
use vscsi_protocol::virtio_scsi::{Config, CONFIG_SIZE};
use zerocopy::FromBytes;

use crate::error::{Error, Result};
use crate::memory::SharedMemory;
use crate::ring::VirtqueueFormat;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: bit 30 of the virtio features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// `VHOST_F_LOG_ALL` (vhost-user.rst "Migrating back-ends"): bit 26 of the
/// virtio features, acked only while dirty pages are logged.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// Most virtqueues the driver will address (control + event + 64 request queues).
const MAX_VQS: u64 = 66;

/// One GET_FEATURES exchange on the bare socket, under `timeout`, before
/// the `vhost` crate's frontend (which retries a timed-out read forever)
/// takes the socket over. GET_FEATURES is the first message QEMU sends too,
/// and it may be sent again. A device that closes at once serves another
/// frontend; one that does not answer, or answers something that is not a
/// GET_FEATURES reply, is not a vhost-user device.
fn probe(stream: &mut UnixStream, path: &Path, timeout: Duration) -> Result<()> {
    use std::io::{ErrorKind, Read, Write};
    const GET_FEATURES: u32 = 1;
    const VERSION_1: u32 = 0x1;
    const REPLY: u32 = 0x4;
    let io = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::NoReply {
            path: path.to_owned(),
            timeout,
        },
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionAborted => Error::DeviceBusy {
            path: path.to_owned(),
        },
        _ => Error::Io(e),
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(Error::Io)?;
    let mut request = [0u8; 12];
    request[0..4].copy_from_slice(&GET_FEATURES.to_le_bytes());
    request[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
    stream.write_all(&request).map_err(io)?;
    let mut reply = [0u8; 20];
    stream.read_exact(&mut reply).map_err(io)?;
    let word = |i: usize| u32::from_le_bytes([reply[i], reply[i + 1], reply[i + 2], reply[i + 3]]);
    if word(0) != GET_FEATURES || word(4) & (REPLY | 0x3) != REPLY | VERSION_1 || word(8) != 8 {
        return Err(Error::NotVhostUser {
            path: path.to_owned(),
        });
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(Error::Io)
}

/// A device's inflight region (vhost-user "Inflight I/O tracking"), as
/// GET_INFLIGHT_FD returned it: kept by the frontend across a restart of
/// the device and handed to the next one with SET_INFLIGHT_FD.
#[derive(Debug)]
pub struct InflightRegion {
    /// The shared memory the device tracks its requests in flight in.
    pub file: std::fs::File,
    /// Bytes to map.
    pub mmap_size: u64,
    /// Where the region starts in `file`.
    pub mmap_offset: u64,
    /// Queues the region covers.
    pub num_queues: u16,
    /// Descriptors per queue it has room for.
    pub queue_size: u16,
}

impl InflightRegion {
    fn message(&self) -> VhostUserInflight {
        VhostUserInflight {
            mmap_size: self.mmap_size,
            mmap_offset: self.mmap_offset,
            num_queues: self.num_queues,
            queue_size: self.queue_size,
        }
    }
}

/// A negotiated vhost-user connection.
pub struct VhostUserTransport {
    fe: Frontend,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    config: Config,
}

impl VhostUserTransport {
    /// Connects to `path` and negotiates `wanted` virtio features (only the
    /// ones the device offers are acked; VERSION_1 is required).
    pub fn connect(path: &Path, wanted: u64) -> Result<Self> {
        Self::connect_timeout(path, wanted, Duration::from_secs(30))
    }

    /// [`VhostUserTransport::connect`], failing with [`Error::NoReply`] when
    /// the set-up gets no answer within `timeout`, and with
    /// [`Error::DeviceBusy`] when the device closes the connection before its
    /// first reply (a vhost-user device serves one frontend per socket).
    pub fn connect_timeout(path: &Path, wanted: u64, timeout: Duration) -> Result<Self> {
        let mut stream = UnixStream::connect(path).map_err(|e| Error::Connect {
            path: path.to_owned(),
            source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketConnect(e)),
        })?;
        probe(&mut stream, path, timeout.max(Duration::from_millis(1)))?;
        let fe = Frontend::from_stream(stream, MAX_VQS);
        fe.set_owner().map_err(Error::vhost("SET_OWNER"))?;
        let offered = fe.get_features().map_err(Error::vhost("GET_FEATURES"))?;
        Self::negotiate(fe, offered, wanted)
    }

    fn negotiate(mut fe: Frontend, offered: u64, wanted: u64) -> Result<Self> {
        debug!(offered = format_args!("{offered:#x}"), "device features");
        if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(Error::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let theirs = fe
                .get_protocol_features()
                .map_err(Error::vhost("GET_PROTOCOL_FEATURES"))?;
            protocol = theirs
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::RESET_DEVICE
                    | VhostUserProtocolFeatures::LOG_SHMFD
                    | VhostUserProtocolFeatures::INFLIGHT_SHMFD);
            fe.set_protocol_features(protocol)
                .map_err(Error::vhost("SET_PROTOCOL_FEATURES"))?;
        }
        if !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::MissingFeature("VHOST_USER_PROTOCOL_F_CONFIG"));
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let features =
            offered & (wanted | 1 << VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
        fe.set_features(features)
            .map_err(Error::vhost("SET_FEATURES"))?;
        let (_, bytes) = fe
            .get_config(
                0,
                CONFIG_SIZE as u32,
                VhostUserConfigFlags::WRITABLE,
                &[0u8; CONFIG_SIZE],
            )
            .map_err(Error::vhost("GET_CONFIG"))?;
        let config = Config::read_from_bytes(&bytes[..]).map_err(|_| {
            Error::BadConfig(format!(
                "{} bytes of config space, expected 36",
                bytes.len()
            ))
        })?;
        Ok(Self {
            fe,
            features,
            protocol,
            config,
        })
    }

    /// The virtio features both sides agreed on.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether the device tracks requests in flight in a shared region
    /// (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`, negotiated).
    pub fn has_inflight(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// A duplicate of the connection's socket descriptor, to watch for the
    /// device closing it.
    pub fn socket_fd(&self) -> Result<std::os::fd::OwnedFd> {
        // SAFETY: the frontend's socket descriptor is open for as long as
        // `self.fe` lives, which covers this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fe.as_raw_fd()) };
        fd.try_clone_to_owned().map_err(Error::Io)
    }

    /// The device configuration read at connect time.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the device answers GET_QUEUE_NUM.
    pub fn queue_num(&mut self) -> Result<Option<u64>> {
        if !self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            return Ok(None);
        }
        self.fe
            .get_queue_num()
            .map(Some)
            .map_err(Error::vhost("GET_QUEUE_NUM"))
    }

    /// Starts dirty-page logging as a migrating frontend does (vhost-user
    /// "Migrating back-ends"): SET_FEATURES with `VHOST_F_LOG_ALL`, then
    /// SET_LOG_BASE sharing `log` (`size` bytes, one bit per 4 KiB page of
    /// guest-physical memory from address 0). Needs
    /// `VHOST_USER_PROTOCOL_F_LOG_SHMFD`.
    pub fn start_dirty_log(&mut self, log: &impl AsRawFd, size: u64) -> Result<()> {
        if !self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD) {
            return Err(Error::MissingFeature("VHOST_USER_PROTOCOL_F_LOG_SHMFD"));
        }
        self.fe
            .set_features(self.features | VHOST_F_LOG_ALL)
            .map_err(Error::vhost("SET_FEATURES"))?;
        let region = VhostUserDirtyLogRegion {
            mmap_size: size,
            mmap_offset: 0,
            mmap_handle: log.as_raw_fd(),
        };
        self.fe
            .set_log_base(0, Some(region))
            .map_err(Error::vhost("SET_LOG_BASE"))
    }

    /// Ends dirty-page logging: SET_FEATURES without `VHOST_F_LOG_ALL` (a
    /// migration that ended or was cancelled).
    pub fn stop_dirty_log(&mut self) -> Result<()> {
        self.fe
            .set_features(self.features)
            .map_err(Error::vhost("SET_FEATURES"))
    }

    /// GET_INFLIGHT_FD: a new inflight region for `num_queues` queues of
    /// up to `queue_size` descriptors. Needs
    /// `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`. Send it after SET_MEM_TABLE
    /// and before the rings start, with [`Self::set_inflight`], as QEMU does.
    pub fn get_inflight(&mut self, num_queues: u16, queue_size: u16) -> Result<InflightRegion> {
        if !self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            return Err(Error::MissingFeature(
                "VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD",
            ));
        }
        let ask = VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues,
            queue_size,
        };
        let (msg, file) = self
            .fe
            .get_inflight_fd(&ask)
            .map_err(Error::vhost("GET_INFLIGHT_FD"))?;
        Ok(InflightRegion {
            file,
            mmap_size: msg.mmap_size,
            mmap_offset: msg.mmap_offset,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
        })
    }

    /// SET_INFLIGHT_FD: hands `region` (from this device or the one before
    /// a restart) to the device, before the rings start; what it records
    /// in flight the device runs again.
    pub fn set_inflight(&mut self, region: &InflightRegion) -> Result<()> {
        if !self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            return Err(Error::MissingFeature(
                "VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD",
            ));
        }
        self.fe
            .set_inflight_fd(&region.message(), region.file.as_raw_fd())
            .map_err(Error::vhost("SET_INFLIGHT_FD"))
    }

    /// Registers `mem` as the only memory region, at guest-physical address 0.
    pub fn set_memory(&self, mem: &SharedMemory) -> Result<()> {
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: mem.gpa(0),
            memory_size: mem.len() as u64,
            userspace_addr: mem.host_addr(),
            mmap_offset: 0,
            mmap_handle: mem.fd(),
        };
        self.fe
            .set_mem_table(&[region])
            .map_err(Error::vhost("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Hands virtqueue `index` to the device and enables it, whatever its
    /// format ([`VirtqueueFormat::addresses`] says what the messages carry).
    pub fn start_vring(
        &mut self,
        index: usize,
        ring: &impl VirtqueueFormat,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<()> {
        let a = ring.addresses();
        let size = a.size;
        let addrs = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: a.desc,
            used_ring_addr: a.device_area,
            avail_ring_addr: a.driver_area,
            log_addr: None,
        };
        self.fe
            .set_vring_num(index, size)
            .map_err(Error::vhost("SET_VRING_NUM"))?;
        self.fe
            .set_vring_addr(index, &addrs)
            .map_err(Error::vhost("SET_VRING_ADDR"))?;
        self.fe
            .set_vring_base(index, a.base)
            .map_err(Error::vhost("SET_VRING_BASE"))?;
        self.fe
            .set_vring_call(index, call)
            .map_err(Error::vhost("SET_VRING_CALL"))?;
        self.fe
            .set_vring_kick(index, kick)
            .map_err(Error::vhost("SET_VRING_KICK"))?;
        if self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            self.fe
                .set_vring_enable(index, true)
                .map_err(Error::vhost("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Resets the device (VHOST_USER_RESET_DEVICE, when the device offers
    /// it; otherwise stopping and re-creating every ring is the whole reset,
    /// as QEMU does for such devices) and sets the negotiated features
    /// again, which the reset cleared. The rings must be stopped first and
    /// started again after.
    pub fn reset_device(&mut self) -> Result<()> {
        if self
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            self.fe
                .reset_device()
                .map_err(Error::vhost("RESET_DEVICE"))?;
        }
        self.fe
            .set_features(self.features)
            .map_err(Error::vhost("SET_FEATURES"))
    }

    /// Stops virtqueue `index` (GET_VRING_BASE); returns the device's next avail index.
    pub fn stop_vring(&mut self, index: usize) -> Result<u32> {
        self.fe
            .get_vring_base(index)
            .map_err(Error::vhost("GET_VRING_BASE"))
    }
}
