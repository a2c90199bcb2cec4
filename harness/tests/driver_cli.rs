//! The `tmf`, `events`, `verify` and `stats` verbs of the `vscsi` binary
//! against an in-process daemon.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDaemon;
use vscsi_backend::vhost::{DeviceOptions, EventHub, ResetReason};

const MIB: u64 = 1 << 20;

fn vscsi(d: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_tmf_and_stats_verbs() {
    let faults = Arc::new(vscsi_backend::fault::FaultTable::default());
    let opts = DeviceOptions {
        request_queues: 4,
        faults: faults.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 16 * MIB, false)], opts);
    let (code, out, err) = vscsi(
        &d,
        &[
            "verify",
            "--queues",
            "4",
            "--iodepth",
            "16",
            "--size",
            "4M",
            "--seed",
            "7",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["blocks"], 8192);
    assert_eq!(v["mismatched_lbas"].as_array().unwrap().len(), 0);

    // Reads cut short by fault injection: every block past the first of a
    // command is reported, and the exit code is 1.
    faults.set(0, 0, "short=512".parse().unwrap());
    let (code, out, err) = vscsi(
        &d,
        &[
            "verify",
            "--size",
            "16K",
            "--blocks-per-command",
            "16",
            "--lba",
            "32",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("mismatch at LBA"))
        .collect();
    assert_eq!(bad.len(), 30, "{out}");
    assert_eq!(bad[0], "mismatch at LBA 33");
    faults.clear_all();

    let (code, out, err) = vscsi(&d, &["tmf", "lun-reset"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("LOGICAL UNIT RESET: FUNCTION COMPLETE"),
        "{out}"
    );
    let (code, out, _) = vscsi(&d, &["tmf", "abort", "--tag", "0x1234"]);
    assert_eq!(code, 0);
    assert!(out.contains("ABORT TASK: FUNCTION COMPLETE"), "{out}");
    let (code, out, _) = vscsi(&d, &["tmf", "target-reset", "--target", "5"]);
    assert_eq!(code, 1, "BAD TARGET is a failed check");
    assert!(out.contains("BAD TARGET"), "{out}");
    let (code, _, err) = vscsi(&d, &["tmf", "abort"]);
    assert_ne!(code, 0);
    assert!(err.contains("--tag"), "{err}");

    let (code, out, err) = vscsi(&d, &["reset", "device"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("device reset"), "{out}");
    assert!(
        out.contains("TEST UNIT READY after the reset: GOOD"),
        "{out}"
    );
    let (code, out, err) = vscsi(&d, &["reset", "queue", "--queue", "1", "--queues", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("request queue 1 reset"), "{out}");
    let (code, _, err) = vscsi(&d, &["reset", "queue", "--queue", "7"]);
    assert_ne!(code, 0);
    assert!(err.contains("request queue 7 does not exist"), "{err}");

    let (code, out, err) = vscsi(&d, &["stats", "--reads", "16", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let lun = &v["luns"][0];
    assert!(lun["commands"].as_u64().unwrap() >= 19, "{v}");
    assert_eq!(lun["latency"]["read"]["count"], 16);
    assert!(lun["bytes_read"].as_u64().unwrap() >= 16 * 8 * 512);
    assert!(v["queues"][0]["kicks"].as_u64().unwrap() >= 1);
    let (code, out, _) = vscsi(&d, &["stats", "--reads", "4"]);
    assert_eq!(code, 0);
    assert!(out.contains("read  latency: n=4"), "{out}");
}

#[test]
fn events_verb_prints_hotplug_events() {
    let hub = Arc::new(EventHub::default());
    let opts = DeviceOptions {
        events: hub.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 8 * MIB, false)], opts);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .args(["events", "--json", "--socket"])
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while hub.transport_reset(0, 3, ResetReason::Rescan) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = false;
    for line in lines.by_ref().take(5) {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "transport_reset" {
            assert_eq!(
                (v["target"].as_u64(), v["lun"].as_u64()),
                (Some(0), Some(3))
            );
            assert_eq!(v["reason"], "Rescan");
            found = true;
            break;
        }
    }
    // Stop the child this test started, by its own handle.
    let _ = child.kill();
    let _ = child.wait();
    assert!(found);
}

#[test]
fn events_verb_exits_promptly_on_sigint() {
    let hub = Arc::new(EventHub::default());
    let opts = DeviceOptions {
        events: hub.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 8 * MIB, false)], opts);
    for round in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vscsi"))
            .args(["events", "--socket"])
            .arg(&d.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("following events"), "ready line: {line}");
        // Events keep the loop busy printing while the signal arrives.
        for _ in 0..round * 20 {
            hub.transport_reset(0, 0, ResetReason::Rescan);
        }
        // SAFETY: plain kill(2) on this test's own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(2) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("vscsi events ignored SIGINT (round {round})");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "Ctrl-C is the normal end");
    }
}

#[test]
fn packed_flag_fails_clearly_when_the_device_lacks_packed_rings() {
    use virtio_bindings::virtio_config::VIRTIO_F_RING_PACKED;
    use vscsi_backend::vhost::device::OPTIONAL_FEATURES;
    let opts = DeviceOptions {
        features: OPTIONAL_FEATURES & !(1 << VIRTIO_F_RING_PACKED),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, MIB, false)], opts);
    for verb in [&["tur"][..], &["verify", "--size", "64K"]] {
        let args: Vec<&str> = verb.iter().copied().chain(["--packed"]).collect();
        let (code, out, err) = vscsi(&d, &args);
        assert_ne!(code, 0, "{verb:?}: {out}{err}");
        assert!(
            err.contains("does not offer packed virtqueues (VIRTIO_F_RING_PACKED"),
            "{verb:?}: {err}"
        );
        assert!(err.contains("drop --packed"), "{err}");
    }
    // Without the flag the same device serves the verb on split rings.
    let (code, out, err) = vscsi(&d, &["tur"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `vscsi verify --packed` on a 16-entry ring: 2048 one-block writes and
/// as many reads, more than 100 times the ring size, with and without
/// indirect descriptors and the event index (`--packed` succeeds only
/// when packed rings were negotiated).
#[test]
fn verify_packed_wraps_the_ring_many_times() {
    let opts = DeviceOptions {
        request_queues: 2,
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 2 * MIB, false)], opts);
    for extra in [
        &[][..],
        &["--no-indirect"],
        &["--no-event-idx", "--queues", "2"],
    ] {
        let mut args = vec![
            "verify",
            "--packed",
            "--queue-size",
            "16",
            "--iodepth",
            "8",
            "--size",
            "1M",
            "--blocks-per-command",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = vscsi(&d, &args);
        assert_eq!(code, 0, "{extra:?}: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["ok"], true, "{extra:?}");
        assert_eq!(v["blocks"], 2048, "{extra:?}");
        assert!(v["mismatched_lbas"].as_array().unwrap().is_empty());
    }
}
