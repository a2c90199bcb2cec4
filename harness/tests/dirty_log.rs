//! Dirty-page logging for live migration (vhost-user "Migrating
//! back-ends"), through the real socket and shared memory: a frontend acks
//! `VHOST_F_LOG_ALL`, shares a log with SET_LOG_BASE
//! (`VHOST_USER_PROTOCOL_F_LOG_SHMFD`), and every guest page the daemon
//! writes — the READ's data, the response header, the used ring — is
//! marked; pages it only reads are not. SET_FEATURES without LOG_ALL stops
//! the marking.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDaemon;
use vmm_sys_util::eventfd::EventFd;
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{RingOptions, Segment, SplitRing};
use vscsi_driver::transport::vhost_user::VhostUserTransport;
use vscsi_protocol::lun::Lun;
use vscsi_protocol::virtio_scsi::{CmdReq, CmdResp};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const MEM: usize = 4 << 20;
const PAGE: usize = 4096;
const SIZE: u16 = 16;
const REQ: usize = 0x10000;
const RESP: usize = 0x20000;

struct Q {
    ring: SplitRing,
    kick: EventFd,
    _call: EventFd,
}

struct Frontend {
    t: VhostUserTransport,
    mem: Arc<SharedMemory>,
    /// Control, event, request queue 0.
    q: Vec<Q>,
}

impl Frontend {
    fn connect(socket: &std::path::Path) -> Self {
        let mut t = VhostUserTransport::connect(socket, 0).unwrap();
        let mem = Arc::new(SharedMemory::new("dirty-log", MEM).unwrap());
        t.set_memory(&mem).unwrap();
        let mut q = Vec::new();
        for (i, base) in [0usize, 0x4000, 0x8000].into_iter().enumerate() {
            let ring = SplitRing::new(mem.clone(), base, SIZE, RingOptions::default()).unwrap();
            let (kick, call) = (
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            );
            t.start_vring(i, &ring, &kick, &call).unwrap();
            q.push(Q {
                ring,
                kick,
                _call: call,
            });
        }
        Self { t, mem, q }
    }

    /// Runs `cdb` on LUN 0:0 through request queue 0 with `data_in` bytes
    /// of Data-In at `data`; returns (status, the data read).
    fn run(&mut self, cdb: &[u8], data: usize, data_in: u32) -> (u8, Vec<u8>) {
        let mut req = CmdReq::new_zeroed();
        req.lun = Lun::new(0, 0).unwrap().encode();
        req.cdb[..cdb.len()].copy_from_slice(cdb);
        self.mem.write(REQ, req.as_bytes()).unwrap();
        let (r, s, d) = (self.mem.gpa(REQ), self.mem.gpa(RESP), self.mem.gpa(data));
        let q = &mut self.q[2];
        let mut segs = vec![Segment::readable(r, 51), Segment::writable(s, 108)];
        if data_in > 0 {
            segs.push(Segment::writable(d, data_in));
        }
        let head = q.ring.add(&segs).unwrap();
        q.ring.publish();
        q.kick.write(1).unwrap();
        let start = Instant::now();
        loop {
            if let Some((id, _)) = q.ring.pop_used().unwrap() {
                assert_eq!(id, head);
                let mut b = [0u8; 108];
                self.mem.read(RESP, &mut b).unwrap();
                let resp = CmdResp::read_from_bytes(&b).unwrap();
                assert_eq!(resp.response, 0);
                let mut out = vec![0u8; data_in as usize];
                self.mem.read(data, &mut out).unwrap();
                return (resp.status, out);
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no completion within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn dirty(log: &SharedMemory, page: usize) -> bool {
    let mut b = [0u8; 1];
    log.read(page / 8, &mut b).unwrap();
    b[0] & (1 << (page % 8)) != 0
}

#[test]
fn pages_the_daemon_writes_are_logged_while_log_all_is_acked() {
    let d = TestDaemon::start_with(&[(0, 0, 1 << 20, false)], DeviceOptions::default());
    let image = d.image_path(0, 0);
    let data = common::pattern(0, 8, 512, 7);
    std::fs::write(
        &image,
        [data.as_slice(), &vec![0u8; (1 << 20) - data.len()]].concat(),
    )
    .unwrap();
    let mut fe = Frontend::connect(&d.socket);
    // The power-on unit attention, before logging starts.
    let _ = fe.run(&[0u8; 6], 0, 0);
    let _ = fe.run(&[0u8; 6], 0, 0);

    // One bit per 4 KiB page of the 4 MiB of guest memory.
    let log = SharedMemory::new("dirty-log-bitmap", PAGE).unwrap();
    fe.t.start_dirty_log(&log.fd(), PAGE as u64).unwrap();
    let (data_at, later_at) = (0x40000usize, 0x50000usize);
    let (status, got) = fe.run(&read10(0, 8), data_at, 4096);
    assert_eq!(status, 0);
    assert_eq!(got, data, "the READ returned the image's bytes");
    let used_page = fe.q[2].ring.offsets().used / PAGE;
    assert!(
        dirty(&log, data_at / PAGE),
        "the READ's data page is not logged"
    );
    assert!(dirty(&log, RESP / PAGE), "the response page is not logged");
    assert!(dirty(&log, used_page), "the used ring's page is not logged");
    assert!(
        !dirty(&log, REQ / PAGE),
        "the request page is only read by the device, yet logged"
    );
    let avail_page = fe.q[2].ring.offsets().avail / PAGE;
    if avail_page != used_page {
        assert!(!dirty(&log, avail_page), "the avail ring page is logged");
    }
    assert!(!dirty(&log, later_at / PAGE));

    // SET_FEATURES without LOG_ALL: no more marking.
    fe.t.stop_dirty_log().unwrap();
    log.fill(0, PAGE, 0).unwrap();
    let (status, got) = fe.run(&read10(0, 8), later_at, 4096);
    assert_eq!(status, 0);
    assert_eq!(got, data);
    assert!(
        (0..MEM / PAGE).all(|p| !dirty(&log, p)),
        "pages marked after LOG_ALL was cleared"
    );

    // Logging again: SET_FEATURES with LOG_ALL and a new SET_LOG_BASE.
    fe.t.start_dirty_log(&log.fd(), PAGE as u64).unwrap();
    let (status, _) = fe.run(&read10(0, 8), later_at, 4096);
    assert_eq!(status, 0);
    assert!(dirty(&log, later_at / PAGE));
}
