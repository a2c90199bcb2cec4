//! A frontend that builds its own descriptor chains, well-formed and not,
//! against the real daemon. Whatever it sends, every chain is completed with
//! the right answer and the daemon keeps serving (VIRTIO 1.2 §5.6.6.1).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDaemon;
use vmm_sys_util::eventfd::EventFd;
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{RingOptions, Segment, SplitRing};
use vscsi_driver::transport::vhost_user::VhostUserTransport;
use vscsi_driver::{Driver, QueueConfig, ScsiCommand};
use vscsi_protocol::lun::Lun;
use vscsi_protocol::virtio_scsi::{CmdReq, CmdResp, Response};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const MEM: usize = 4 << 20;
const REQ: usize = 0x10000; // request headers
const RESP: usize = 0x20000; // response headers
const DATA: usize = 0x30000; // data buffers

struct RawFrontend {
    _t: VhostUserTransport,
    mem: Arc<SharedMemory>,
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
    _aux: Vec<(SplitRing, EventFd, EventFd)>,
}

impl RawFrontend {
    fn connect(socket: &std::path::Path) -> Self {
        let mut t = VhostUserTransport::connect(socket, 0).unwrap();
        let mem = Arc::new(SharedMemory::new("hostile", MEM).unwrap());
        t.set_memory(&mem).unwrap();
        let opts = RingOptions::default();
        let mut aux = Vec::new();
        for (i, base) in [0usize, 0x4000].into_iter().enumerate() {
            let ring = SplitRing::new(mem.clone(), base, 16, opts).unwrap();
            let (k, c) = (
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            );
            t.start_vring(i, &ring, &k, &c).unwrap();
            aux.push((ring, k, c));
        }
        let ring = SplitRing::new(mem.clone(), 0x8000, 16, opts).unwrap();
        let (kick, call) = (
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        );
        t.start_vring(2, &ring, &kick, &call).unwrap();
        Self {
            _t: t,
            mem,
            ring,
            kick,
            call,
            _aux: aux,
        }
    }

    fn header(&self, lun: [u8; 8], cdb: &[u8]) -> Vec<u8> {
        let mut req = CmdReq::new_zeroed();
        req.lun = lun;
        req.cdb[..cdb.len()].copy_from_slice(cdb);
        req.as_bytes().to_vec()
    }

    /// Offers `segs`, kicks, waits for the completion; returns the used length.
    fn run(&mut self, segs: &[Segment]) -> u32 {
        self.mem.fill(RESP, 0x1000, 0xEE).unwrap();
        let head = self.ring.add(segs).unwrap();
        if self.ring.publish() {
            self.kick.write(1).unwrap();
        }
        let start = Instant::now();
        loop {
            if let Some((id, len)) = self.ring.pop_used().unwrap() {
                assert_eq!(id, head);
                return len;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "request never completed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn resp(&self) -> CmdResp {
        let mut b = [0u8; 108];
        self.mem.read(RESP, &mut b).unwrap();
        CmdResp::read_from_bytes(&b).unwrap()
    }
}

fn lun00() -> [u8; 8] {
    Lun::new(0, 0).unwrap().encode()
}

#[test]
fn malformed_chains_are_answered_and_the_daemon_keeps_serving() {
    let d = TestDaemon::start(&[(0, 0, 1 << 20, false)]);
    let mut fe = RawFrontend::connect(&d.socket);
    let g = |off: usize| fe.mem.gpa(off);
    let (req, resp, data) = (g(REQ), g(RESP), g(DATA));

    // 1. A request header split over three descriptors is valid and must work.
    let hdr = fe.header(lun00(), &[0x12, 0, 0, 0, 36, 0]);
    fe.mem.write(REQ, &hdr[..7]).unwrap();
    fe.mem.write(REQ + 0x100, &hdr[7..30]).unwrap();
    fe.mem.write(REQ + 0x200, &hdr[30..]).unwrap();
    let used = fe.run(&[
        Segment::readable(req, 7),
        Segment::readable(req + 0x100, 23),
        Segment::readable(req + 0x200, 21),
        Segment::writable(resp, 50),
        Segment::writable(resp + 50, 58),
        Segment::writable(data, 36),
    ]);
    let r = fe.resp();
    assert_eq!((r.response, r.status), (Response::Ok as u8, 0));
    assert_eq!(used, 108 + 36);
    let mut inq = [0u8; 36];
    fe.mem.read(DATA, &mut inq).unwrap();
    assert_eq!(&inq[8..13], b"VSCSI");

    // 2. A data-out buffer outside the shared memory: FAILURE, nothing written.
    let hdr = fe.header(lun00(), &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    fe.mem.write(REQ, &hdr).unwrap();
    let used = fe.run(&[
        Segment::readable(req, 51),
        Segment::readable(MEM as u64 + 0x10_0000, 512),
        Segment::writable(resp, 108),
    ]);
    assert_eq!(used, 108);
    assert_eq!(fe.resp().response, Response::Failure as u8);

    // 3. A header shorter than virtio_scsi_cmd_req: FAILURE.
    let used = fe.run(&[Segment::readable(req, 20), Segment::writable(resp, 108)]);
    assert_eq!(used, 108);
    assert_eq!(fe.resp().response, Response::Failure as u8);

    // 4. No room for a response: completed with used length 0.
    assert_eq!(fe.run(&[Segment::readable(req, 51)]), 0);
    assert_eq!(
        fe.run(&[Segment::readable(req, 51), Segment::writable(resp, 50)]),
        0
    );

    // 5. A data-in buffer outside memory after a good response header: FAILURE.
    let hdr = fe.header(lun00(), &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    fe.mem.write(REQ, &hdr).unwrap();
    let used = fe.run(&[
        Segment::readable(req, 51),
        Segment::writable(resp, 108),
        Segment::writable(u64::MAX - 100, 512),
    ]);
    assert_eq!(used, 108);
    assert_eq!(fe.resp().response, Response::Failure as u8);

    // 6. A READ whose data-in buffer is smaller than the transfer:
    //    VIRTIO_SCSI_S_OVERRUN, and nothing written past the buffer.
    let hdr = fe.header(lun00(), &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]);
    fe.mem.write(REQ, &hdr).unwrap();
    fe.mem.fill(DATA + 100, 16, 0x5A).unwrap();
    let used = fe.run(&[
        Segment::readable(req, 51),
        Segment::writable(resp, 108),
        Segment::writable(data, 100),
    ]);
    assert_eq!(used, 108);
    assert_eq!(
        fe.resp().response,
        Response::Overrun as u8,
        "data-in buffer too small (§5.6.6.1)"
    );
    let mut after = [0u8; 16];
    fe.mem.read(DATA + 100, &mut after).unwrap();
    assert_eq!(after, [0x5A; 16], "nothing written past the offered buffer");

    // 7. An invalid CDB field: INQUIRY with EVPD=0 and a PAGE CODE "shall"
    //    be terminated with CHECK CONDITION, INVALID FIELD IN CDB (SPC-5 §6.7.1).
    let hdr = fe.header(lun00(), &[0x12, 0x00, 0x80, 0, 36, 0]);
    fe.mem.write(REQ, &hdr).unwrap();
    fe.run(&[Segment::readable(req, 51), Segment::writable(resp, 108)]);
    let r = fe.resp();
    assert_eq!((r.response, r.status), (Response::Ok as u8, 0x02));
    assert_eq!(
        (r.sense[2] & 0xF, r.sense[12], r.sense[13]),
        (0x05, 0x24, 0x00)
    );

    // The same connection still serves good requests...
    let hdr = fe.header(lun00(), &[0x00, 0, 0, 0, 0, 0]);
    fe.mem.write(REQ, &hdr).unwrap();
    assert_eq!(
        fe.run(&[Segment::readable(req, 51), Segment::writable(resp, 108)]),
        108
    );
    assert_eq!((fe.resp().response, fe.resp().status), (0, 0));
    drop(fe);

    // ...and so does the next connection.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let drv = Driver::connect(&d.socket, QueueConfig::default())
            .await
            .unwrap();
        assert!(drv
            .send_command(0, 0, ScsiCommand::TestUnitReady)
            .await
            .unwrap()
            .is_good());
    });
}

/// Without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT in the driver's flags
/// means the device SHOULD NOT notify (VIRTIO 1.2 §2.7.7.2); flags 0 means
/// it MUST.
#[test]
fn the_no_interrupt_flag_suppresses_the_call_without_event_idx() {
    let d = TestDaemon::start(&[(0, 0, 1 << 20, false)]);
    let mut fe = RawFrontend::connect(&d.socket);
    let tur = fe.header(lun00(), &[0, 0, 0, 0, 0, 0]);
    fe.mem.write(REQ, &tur).unwrap();
    let segs = [
        Segment::readable(fe.mem.gpa(REQ), 51),
        Segment::writable(fe.mem.gpa(RESP), 108),
    ];
    let called = |fe: &RawFrontend| {
        // The call follows the used entry; give the worker time to write it.
        std::thread::sleep(Duration::from_millis(50));
        fe.call.read().is_ok()
    };
    let _ = fe.call.read();
    assert_eq!(fe.run(&segs), 108);
    assert!(called(&fe), "flags 0: the device must notify");
    fe.ring.disable_interrupts();
    assert_eq!(fe.run(&segs), 108);
    assert!(!called(&fe), "VRING_AVAIL_F_NO_INTERRUPT: no notification");
    // Cleared again: notified again.
    assert!(!fe.ring.enable_interrupts(), "nothing left to reap");
    assert_eq!(fe.run(&segs), 108);
    assert!(called(&fe), "flags 0 again: the device must notify");
}
