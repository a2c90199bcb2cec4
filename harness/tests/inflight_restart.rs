//! A daemon killed with SIGKILL while requests are in flight, and started
//! again on the same socket: the frontend kept the inflight region
//! (vhost-user "Inflight I/O tracking", GET_INFLIGHT_FD) and its guest
//! memory, reconnects, sends SET_MEM_TABLE, SET_INFLIGHT_FD and the rings
//! again, and the new daemon runs exactly the requests the old one never
//! completed, before any new one. Through the real socket, memfd shared
//! memory and the daemon binary as a child process.

#[path = "common/backend_bin.rs"]
mod backend_bin;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_bin::{
    audit_events, backend_binary, control_call, metric, metrics_text, restart_config, start_daemon,
    KillOnDrop,
};
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;
use vscsi_driver::memory::SharedMemory;
use vscsi_driver::ring::{RingOptions, Segment, SplitRing};
use vscsi_driver::transport::vhost_user::VhostUserTransport;
use vscsi_protocol::lun::Lun;
use vscsi_protocol::virtio_scsi::{CmdReq, CmdResp};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const MEM: usize = 4 << 20;
const SIZE: u16 = 16;
/// Vrings: control, event, request queue 0.
const VRINGS: usize = 3;
const RING_BASE: [usize; VRINGS] = [0, 0x4000, 0x8000];
/// Request `i`'s header at `REQ + i * STRIDE`, its response at +0x100,
/// its data at +0x200.
const REQ: usize = 0x10000;
const STRIDE: usize = 0x1000;
const IMAGE: u64 = 1 << 20;

struct Vq {
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
}

/// Connects a frontend and sets the device up: SET_MEM_TABLE, then the
/// inflight region (a new one from GET_INFLIGHT_FD, or the kept one), then
/// every ring.
fn connect(
    socket: &Path,
    mem: &SharedMemory,
    vqs: &mut [Vq],
    kept: Option<&vscsi_driver::transport::vhost_user::InflightRegion>,
) -> (
    VhostUserTransport,
    Option<vscsi_driver::transport::vhost_user::InflightRegion>,
) {
    let mut t = VhostUserTransport::connect(socket, 0).unwrap();
    t.set_memory(mem).unwrap();
    let fresh = match kept {
        Some(r) => {
            t.set_inflight(r).unwrap();
            None
        }
        None => {
            let r = t.get_inflight(VRINGS as u16, SIZE).unwrap();
            assert_eq!((r.num_queues, r.queue_size), (VRINGS as u16, SIZE));
            // Three 64-byte aligned queue regions of 16 + 16 * 16 bytes.
            assert_eq!((r.mmap_size, r.mmap_offset), (3 * 320, 0));
            t.set_inflight(&r).unwrap();
            Some(r)
        }
    };
    for (i, q) in vqs.iter_mut().enumerate() {
        // A new connection gets new eventfds, as QEMU's do.
        q.kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        q.call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        t.start_vring(i, &q.ring, &q.kick, &q.call).unwrap();
    }
    (t, fresh)
}

/// Puts READ(10) of one block at LBA `i` as request `i` on `q`.
fn submit_read(mem: &SharedMemory, q: &mut Vq, i: usize) -> u16 {
    let at = REQ + i * STRIDE;
    let mut req = CmdReq::new_zeroed();
    req.lun = Lun::new(0, 0).unwrap().encode();
    req.tag = (i as u64).into();
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&(i as u32).to_be_bytes());
    cdb[8] = 1;
    req.cdb[..10].copy_from_slice(&cdb);
    mem.write(at, req.as_bytes()).unwrap();
    mem.fill(at + 0x100, 0x1100, 0xEE).unwrap();
    let segs = [
        Segment::readable(mem.gpa(at), 51),
        Segment::writable(mem.gpa(at + 0x100), 108),
        Segment::writable(mem.gpa(at + 0x200), 512),
    ];
    let head = q.ring.add(&segs).unwrap();
    q.ring.publish();
    head
}

/// Used entries until `n` arrived (or 10 s passed).
fn wait_used(q: &mut Vq, n: usize) -> Vec<(u16, u32)> {
    let mut got = Vec::new();
    let t = Instant::now();
    while got.len() < n && t.elapsed() < Duration::from_secs(10) {
        match q.ring.pop_used().unwrap() {
            Some(u) => got.push(u),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    got
}

/// Request `i`'s response: (response, status) and its data block.
fn result(mem: &SharedMemory, i: usize) -> (u8, u8, Vec<u8>) {
    let at = REQ + i * STRIDE;
    let mut b = [0u8; 108];
    mem.read(at + 0x100, &mut b).unwrap();
    let resp = CmdResp::read_from_bytes(&b).unwrap();
    let mut data = vec![0u8; 512];
    mem.read(at + 0x200, &mut data).unwrap();
    (resp.response, resp.status, data)
}

#[test]
fn requests_in_flight_at_a_sigkill_are_resubmitted_by_the_next_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..IMAGE / 512)
        .flat_map(|b| common::pattern(b, 1, 512, 0x51))
        .collect();
    std::fs::write(dir.path().join("a.img"), &image).unwrap();
    let socket = dir.path().join("vm1.sock");
    let log = dir.path().join("daemon.log");
    let bin = backend_binary();
    let stalled = restart_config(dir.path(), "stall.toml", "fault = \"stall\"");
    let plain = restart_config(dir.path(), "plain.toml", "");

    let mem = Arc::new(SharedMemory::new("inflight-restart", MEM).unwrap());
    let mut vqs: Vec<Vq> = RING_BASE
        .iter()
        .map(|&base| Vq {
            ring: SplitRing::new(mem.clone(), base, SIZE, RingOptions::default()).unwrap(),
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        })
        .collect();

    // The first daemon holds every command (fault `stall`).
    let mut daemon = KillOnDrop(start_daemon(
        &bin,
        &stalled,
        &["--log-format", "json"],
        &log,
        &socket,
    ));
    let (t, region) = connect(&socket, &mem, &mut vqs, None);
    let region = region.unwrap();
    const HELD: usize = 5;
    let mut head_of = BTreeMap::new();
    for i in 0..HELD {
        let head = submit_read(&mem, &mut vqs[2], i);
        head_of.insert(head, i);
    }
    assert!(head_of.contains_key(&0), "a request at ring index 0");
    vqs[2].kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        wait_used(&mut vqs[2], 0).is_empty() && !vqs[2].ring.has_used(),
        "the stall fault did not hold the requests"
    );
    // The first connection asked for its own region: no reconnect yet.
    let control = dir.path().join("ctl.sock");
    let stats = control_call(&control, "stats", json!({}));
    let c = &stats["controllers"][0];
    assert_eq!(c["held"], HELD, "{stats}");
    assert_eq!(
        c["reconnect"],
        json!({"reconnects": 0, "resubmitted": 0}),
        "{stats}"
    );

    // SIGKILL with the five requests in flight; the frontend keeps its
    // memory, its rings and the inflight region.
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    drop(t);

    // The next daemon, without the fault, on the same socket and image.
    let _daemon = KillOnDrop(start_daemon(
        &bin,
        &plain,
        &["--log-format", "json"],
        &log,
        &socket,
    ));
    let (_t, none) = connect(&socket, &mem, &mut vqs, Some(&region));
    assert!(none.is_none());
    // No kick: the daemon serves the ring once when it is enabled, so the
    // resubmission does not wait for one (a reconnecting frontend need not
    // kick).
    let used = wait_used(&mut vqs[2], HELD);
    let heads: Vec<u16> = used.iter().map(|&(h, _)| h).collect();
    assert_eq!(
        heads.len(),
        HELD,
        "resubmitted requests completed: {heads:?} (daemon log: {})",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut sorted = heads.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        head_of.keys().copied().collect::<Vec<_>>(),
        "exactly the held requests, each once"
    );
    for (head, len) in used {
        let i = head_of[&head];
        let (response, status, data) = result(&mem, i);
        assert_eq!((response, status), (0, 0), "request {i} (head {head})");
        assert_eq!(len, 108 + 512, "request {i}: header and data written");
        assert_eq!(data, common::pattern(i as u64, 1, 512, 0x51), "LBA {i}");
    }
    // The operator's view: the reconnect and the resubmission in the audit
    // log, and the controller's counters in `stats` and the metrics.
    let text = std::fs::read_to_string(&log).unwrap();
    let audit = audit_events(&text);
    let reconnects: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "inflight-reconnect")
        .collect();
    assert_eq!(reconnects.len(), 1, "one reconnect audited: {text}");
    let r = reconnects[0];
    assert_eq!(
        (
            &r["controller"],
            &r["connection"],
            &r["in_flight"],
            &r["queues"]
        ),
        (&json!("vm1"), &json!(1), &json!(HELD), &json!(VRINGS)),
        "{r}"
    );
    let resubmits: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "inflight-resubmit")
        .collect();
    assert_eq!(resubmits.len(), 1, "one ring resubmitted: {text}");
    let r = resubmits[0];
    assert_eq!(
        (
            &r["controller"],
            &r["vring"],
            &r["resubmitted"],
            &r["cleared"]
        ),
        (&json!("vm1"), &json!(2), &json!(HELD), &json!(0)),
        "{r}"
    );
    let stats = control_call(&control, "stats", json!({}));
    assert_eq!(
        stats["controllers"][0]["reconnect"],
        json!({"reconnects": 1, "resubmitted": HELD}),
        "{stats}"
    );
    let m = metrics_text(&dir.path().join("metrics.sock"));
    assert_eq!(
        metric(
            &m,
            "vscsi_controller_inflight_reconnects_total{controller=\"vm1\"}"
        ),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "vscsi_controller_resubmitted_requests_total{controller=\"vm1\"}"
        ),
        Some(HELD as u64),
        "{m}"
    );
    eprintln!("in flight at the kill: {HELD}; resubmitted and completed: {HELD}");

    // New requests follow, and nothing comes back twice.
    let head = submit_read(&mem, &mut vqs[2], 7);
    vqs[2].kick.write(1).unwrap();
    let used = wait_used(&mut vqs[2], 1);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), vec![head]);
    let (response, status, data) = result(&mem, 7);
    assert_eq!((response, status), (0, 0));
    assert_eq!(data, common::pattern(7, 1, 512, 0x51));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!vqs[2].ring.has_used(), "a request completed twice");
}
