//! The daemon restarted and upgraded under a running Linux guest whose disk
//! is a `vhost-user-scsi-pci` device on a reconnecting chardev
//! (`-chardev socket,...,reconnect-ms=500`, QEMU >= 8.2), while fio writes
//! and verifies on both request queues: no I/O is lost.
//!
//! `cargo test -p vscsi --test qemu_reconnect -- --nocapture`
//!
//! The guest script (`tests/guest/reconnect.sh`) runs three phases of fio
//! (two jobs, one per vCPU and so one per request queue, random 4k writes
//! at iodepth 8, crc32c verify) with a pattern written beside each. At the
//! start of each phase the host makes requests be in flight in the daemon
//! with a fault set through the control socket, then:
//!
//! 1. `stall` (every command held), and once the daemon holds at least
//!    [`MIN_HELD`] requests (`held` in `stats`), SIGKILL. The new daemon
//!    (same arguments, no fault) gets the inflight region back from QEMU
//!    (SET_INFLIGHT_FD) and runs the held requests again.
//! 2. `latency=100ms` (each queue's worker busy with one request at a
//!    time), then SIGTERM: the daemon completes what it took before it
//!    exits, so the next one (same arguments) has nothing to run again.
//! 3. The same with another build of the daemon started in its place (an
//!    upgrade): `VSCSI_UPGRADE_DAEMON=/path`, or a release build made here
//!    into `<target>/upgrade-daemon` (`cargo build --release -p
//!    vscsi-backend`; a no-op when up to date).
//!
//! The daemon's audit log (`--log-format json`) says what was in flight at
//! each stop (`disconnect`'s `in_flight`) and what the next daemon found
//! (`inflight-reconnect`'s `in_flight`) and ran again (`inflight-resubmit`);
//! the test checks them against each other, against `held`, and against
//! the `reconnect` counters of `stats`. The guest checks fio, the patterns
//! (found in the image by the host after poweroff), a last verify pass over
//! every phase, and that dmesg has no SCSI error, abort, reset or timeout.
//!
//! Prerequisites, knobs and the SKIP rule are those of the `qemu_guest`
//! test (`VSCSI_REQUIRE_GUEST_TEST=1` makes a missing QEMU a failure,
//! `VSCSI_GUEST_ACCEL`, `VSCSI_GUEST_TIMEOUT`, `VSCSI_GUEST_CACHE`,
//! `VSCSI_BACKEND`); logs go to `target/qemu-reconnect/`.

#[path = "common/backend_bin.rs"]
mod backend_bin;
#[path = "common/guest.rs"]
mod guest;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{audit_events, backend_binary, control_call, profile_dir, workspace_root};
use guest::{
    build_guest_image, check_host_patterns, loud, parse_results, secs, skipped, stop_daemon, tail,
    take_turn, wait_socket, Check, Guard,
};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 128 * MIB;
const DATA_OFF: u64 = 4 * MIB;
/// What each of the two fio jobs of a phase writes.
const JOB_LEN: u64 = 8 * MIB;
const PATTERN_OFF: u64 = 100 * MIB;
const PATTERN_LEN: u64 = MIB;
/// Requests the stalled daemon must hold before the SIGKILL.
const MIN_HELD: u64 = 4;
const SCRIPT: &str = include_str!("guest/reconnect.sh");

/// How the daemon goes away in a phase.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    Kill,
    Term,
    Upgrade,
}

const PHASES: [Stop; 3] = [Stop::Kill, Stop::Term, Stop::Upgrade];

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Kill => "sigkill",
            Stop::Term => "sigterm",
            Stop::Upgrade => "upgrade",
        }
    }
    fn fault(self) -> &'static str {
        match self {
            Stop::Kill => "stall",
            Stop::Term | Stop::Upgrade => "latency=100ms",
        }
    }
}

/// The other build of the daemon for the upgrade, and how long getting it took.
fn upgrade_binary() -> (PathBuf, Duration) {
    let t = Instant::now();
    if let Some(p) = std::env::var_os("VSCSI_UPGRADE_DAEMON") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "VSCSI_UPGRADE_DAEMON={} is not a file",
            p.display()
        );
        return (p, t.elapsed());
    }
    let target = profile_dir().parent().unwrap().join("upgrade-daemon");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "vscsi-backend",
            "--bin",
            "vscsi-backend",
        ])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cannot run cargo to build the upgrade daemon");
    assert!(
        status.success(),
        "cargo build --release -p vscsi-backend failed: {status}"
    );
    (target.join("release/vscsi-backend"), t.elapsed())
}

/// Starts `bin` with the test's arguments, its log in `log`; waits for the
/// vhost-user socket.
fn start_daemon(bin: &Path, config: &Path, log: &Path, socket: &Path) -> Guard {
    let out = File::create(log).unwrap();
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .env(
            "RUST_LOG",
            std::env::var("VSCSI_GUEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("cannot start vscsi-backend");
    let mut g = Guard(Some(child), "vscsi-backend");
    wait_socket(socket, g.0.as_mut().unwrap(), log);
    g
}

/// Waits until `file` contains `marker`, QEMU exits or `limit` passes.
fn wait_for(file: &Path, marker: &str, qemu: &mut Child, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if fs::read_to_string(file)
            .unwrap_or_default()
            .contains(marker)
        {
            return true;
        }
        if let Ok(Some(_)) = qemu.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What one phase's stop and restart showed.
#[derive(Debug, Default)]
struct Observed {
    /// `held` in `stats` just before the stop.
    held: u64,
    /// Requests each request queue completed under the stopped daemon.
    queue_requests: Vec<u64>,
    /// The stopped daemon's `disconnect` event: requests in flight when the
    /// connection ended (absent after a SIGKILL).
    in_flight_at_stop: Option<u64>,
    /// Its `inflight-drain` event: requests still in flight once it had
    /// stopped its workers.
    left_at_stop: Option<u64>,
    /// The next daemon's `inflight-reconnect` event: requests its region
    /// held in flight.
    found: Option<u64>,
    /// The sum of its `inflight-resubmit` events.
    resubmitted: u64,
    /// Its `stats` counters (reconnects, resubmitted), at the next stop.
    counters: Option<(u64, u64)>,
    stop_took: Option<Duration>,
}

fn field(e: &Value, name: &str) -> u64 {
    e[name].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn linux_guest_keeps_its_io_across_daemon_restarts_and_an_upgrade() {
    let mut test_start = Instant::now();
    if skipped("qemu_reconnect") {
        return;
    }
    let (kernel, initrd) = build_guest_image();
    let backend = backend_binary();
    let (upgrade, upgrade_took) = upgrade_binary();
    loud(&format!(
        "qemu_reconnect: upgrade daemon {} ({:.1} s to get it)",
        upgrade.display(),
        upgrade_took.as_secs_f64()
    ));

    let target_dir = profile_dir().parent().unwrap().to_path_buf();
    let (_turn, waited) = take_turn(&target_dir);
    test_start += waited;
    let logs = target_dir.join("qemu-reconnect");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).unwrap();
    let serial = logs.join("serial.log");
    let qemu_log = logs.join("qemu.log");

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    File::create(&image).unwrap().set_len(SIZE).unwrap();
    let socket = dir.path().join("vs.sock");
    let control = dir.path().join("ctl.sock");
    // No POWER ON unit attention from each new daemon: the guest's dmesg
    // stays clean of "reset" (Linux retries it either way).
    let toml = format!(
        "control = \"{}\"\n\n[[controller]]\nname = \"rc\"\nsocket = \"{}\"\nqueues = 2\n\n\
         [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\naio = \"io_uring\"\npower_on_ua = false\n",
        control.display(),
        socket.display(),
        image.display()
    );
    let config = logs.join("vscsi.toml");
    fs::write(&config, &toml).unwrap();
    let daemon_log = |n: usize| logs.join(format!("daemon-{n}.log"));
    let mut daemon = start_daemon(&backend, &config, &daemon_log(0), &socket);
    eprintln!(
        "daemon: {} --config {} --log-format json",
        backend.display(),
        config.display()
    );

    let script = format!(
        "#!/bin/sh\nPHASES={}\nDATA_OFF={DATA_OFF}\nJOB_LEN={JOB_LEN}\n\
         PATTERN_OFF={PATTERN_OFF}\nPATTERN_LEN={PATTERN_LEN}\n{SCRIPT}",
        PHASES.len()
    );
    let script_path = logs.join("test.sh");
    fs::write(&script_path, &script).unwrap();
    let accel = std::env::var("VSCSI_GUEST_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".into());
    let limit = Duration::from_secs(
        std::env::var("VSCSI_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let args: Vec<String> = [
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-accel",
        &accel,
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "512M",
        "-object",
        "memory-backend-memfd,id=mem,size=512M,share=on",
        "-machine",
        "q35,memory-backend=mem",
        "-chardev",
        &format!("socket,id=vus,path={},reconnect-ms=500", socket.display()),
        "-device",
        "vhost-user-scsi-pci,chardev=vus,num_queues=2",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        "console=ttyS0 panic=-1 quiet",
        "-fw_cfg",
        &format!("name=opt/vscsi/script,file={}", script_path.display()),
        "-serial",
        &format!("file:{}", serial.display()),
        "-monitor",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    eprintln!("qemu: qemu-system-x86_64 {}", args.join(" "));
    let qlog = File::create(&qemu_log).unwrap();
    let qemu_start = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(qlog.try_clone().unwrap())
        .stderr(qlog)
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let mut qemu = Guard(Some(child), "qemu-system-x86_64");

    let mut failures: Vec<String> = Vec::new();
    let mut observed: Vec<Observed> = Vec::new();
    for (i, stop) in PHASES.iter().copied().enumerate() {
        let k = i + 1;
        let mut o = Observed::default();
        if !wait_for(
            &serial,
            &format!("VSCSI-RC-PHASE {k} "),
            qemu.0.as_mut().unwrap(),
            limit,
        ) {
            failures.push(format!("phase {k} never began"));
            break;
        }
        control_call(
            &control,
            "set_fault",
            json!({"target": 0, "lun": 0, "fault": stop.fault()}),
        );
        // Requests in flight: held ones (stall), or each queue's worker
        // busy with a delayed one (latency).
        let t = Instant::now();
        loop {
            let s = control_call(&control, "stats", json!({}));
            let c = &s["controllers"][0];
            o.held = c["held"].as_u64().unwrap_or(0);
            o.queue_requests = c["queues"]
                .as_array()
                .map(|q| {
                    q.iter()
                        .map(|q| q["requests"].as_u64().unwrap_or(0))
                        .collect()
                })
                .unwrap_or_default();
            let r = &c["reconnect"];
            if k > 1 {
                // The daemon that serves this phase came up in the previous one.
                let prev: &mut Observed = observed.last_mut().unwrap();
                prev.counters = Some((
                    r["reconnects"].as_u64().unwrap_or(0),
                    r["resubmitted"].as_u64().unwrap_or(0),
                ));
            }
            let enough = match stop {
                Stop::Kill => o.held >= MIN_HELD,
                Stop::Term | Stop::Upgrade => t.elapsed() >= Duration::from_secs(1),
            };
            if enough {
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                failures.push(format!(
                    "phase {k}: the daemon held only {} requests after 20 s",
                    o.held
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let old = daemon.0.as_mut().unwrap();
        let t = Instant::now();
        match stop {
            Stop::Kill => {
                old.kill().unwrap();
                old.wait().unwrap();
            }
            Stop::Term | Stop::Upgrade => match stop_daemon(old) {
                Some(st) if st.success() => {}
                other => failures.push(format!(
                    "phase {k}: vscsi-backend did not exit 0 on SIGTERM: {other:?}"
                )),
            },
        }
        o.stop_took = Some(t.elapsed());
        daemon.0 = None;
        let bin = if stop == Stop::Upgrade {
            &upgrade
        } else {
            &backend
        };
        daemon = start_daemon(bin, &config, &daemon_log(k), &socket);
        observed.push(o);
    }

    // The guest finishes and powers off.
    let mut seen_done = None;
    let qemu_status = loop {
        if seen_done.is_none()
            && fs::read_to_string(&serial)
                .unwrap_or_default()
                .contains("VSCSI-DONE")
        {
            seen_done = Some(qemu_start.elapsed());
        }
        if let Some(st) = qemu.0.as_mut().unwrap().try_wait().unwrap() {
            break Some(st);
        }
        if qemu_start.elapsed() > limit {
            eprintln!("QEMU still running after {} s: killing it", limit.as_secs());
            let c = qemu.0.as_mut().unwrap();
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let qemu_time = qemu_start.elapsed();
    if let (Some(last), true) = (observed.last_mut(), control.exists()) {
        let s = control_call(&control, "stats", json!({}));
        let r = &s["controllers"][0]["reconnect"];
        last.counters = Some((
            r["reconnects"].as_u64().unwrap_or(0),
            r["resubmitted"].as_u64().unwrap_or(0),
        ));
    }
    match stop_daemon(daemon.0.as_mut().unwrap()) {
        Some(st) if st.success() => {}
        other => failures.push(format!(
            "the last vscsi-backend did not exit 0 on SIGTERM: {other:?}"
        )),
    }

    // What each daemon's audit log says about each stop and restart.
    let audit: Vec<Vec<Value>> = (0..=observed.len())
        .map(|n| audit_events(&fs::read_to_string(daemon_log(n)).unwrap_or_default()))
        .collect();
    for (i, o) in observed.iter_mut().enumerate() {
        let stop = PHASES[i];
        let k = i + 1;
        let (old, new) = (&audit[i], &audit[i + 1]);
        let last_of = |events: &Vec<Value>, action: &str| {
            events.iter().rev().find(|e| e["action"] == action).cloned()
        };
        o.in_flight_at_stop = last_of(old, "disconnect").map(|e| field(&e, "in_flight"));
        o.left_at_stop = last_of(old, "inflight-drain").map(|e| field(&e, "left"));
        let reconnects: Vec<&Value> = new
            .iter()
            .filter(|e| e["action"] == "inflight-reconnect")
            .collect();
        o.found = reconnects.first().map(|e| field(e, "in_flight"));
        o.resubmitted = new
            .iter()
            .filter(|e| e["action"] == "inflight-resubmit")
            .map(|e| field(e, "resubmitted"))
            .sum();
        let name = format!("phase {k} ({})", stop.name());
        if reconnects.len() != 1 {
            failures.push(format!(
                "{name}: the next daemon audited {} inflight reconnects, not 1",
                reconnects.len()
            ));
        }
        if o.queue_requests.len() != 2 || o.queue_requests.contains(&0) {
            failures.push(format!(
                "{name}: both request queues must carry I/O, completed {:?}",
                o.queue_requests
            ));
        }
        match stop {
            Stop::Kill => {
                // Everything held at the kill (and anything taken after
                // the last look) comes back, and is run again.
                if o.found.is_none_or(|f| f < o.held.max(1)) {
                    failures.push(format!(
                        "{name}: held {} at the kill, the next daemon found {:?} in flight",
                        o.held, o.found
                    ));
                }
                if Some(o.resubmitted) != o.found {
                    failures.push(format!(
                        "{name}: found {:?} in flight, resubmitted {}",
                        o.found, o.resubmitted
                    ));
                }
            }
            Stop::Term | Stop::Upgrade => {
                // Requests were in flight at the stop; the stopping daemon
                // completed them all, so nothing is run twice.
                if o.in_flight_at_stop.is_none_or(|n| n == 0) {
                    failures.push(format!(
                        "{name}: nothing in flight at the stop ({:?}): the stop did not land during I/O",
                        o.in_flight_at_stop
                    ));
                }
                if o.left_at_stop != Some(0) || o.found != Some(0) || o.resubmitted != 0 {
                    failures.push(format!(
                        "{name}: a graceful stop left {:?}, the next daemon found {:?} and resubmitted {}",
                        o.left_at_stop, o.found, o.resubmitted
                    ));
                }
            }
        }
        if o.counters != Some((1, o.resubmitted)) {
            failures.push(format!(
                "{name}: the next daemon's stats say (reconnects, resubmitted) = {:?}, its audit log (1, {})",
                o.counters, o.resubmitted
            ));
        }
    }

    let text = fs::read_to_string(&serial).unwrap_or_default();
    let mut results: BTreeMap<String, Check> = parse_results(&text);
    check_host_patterns(&text, &image, &mut results);
    let mut required: Vec<String> = [
        "disk",
        "fio-verify",
        "pattern-writes",
        "verify-only",
        "dmesg-clean",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    required.extend((1..=PHASES.len()).map(|k| format!("host-phase-{k}")));
    for name in &required {
        match results.get(name) {
            None => failures.push(format!("{name}: no result")),
            Some(c) if c.status == "PASS" => {}
            Some(c) => failures.push(format!("{name}: {} {}", c.status, c.detail)),
        }
    }
    for (name, c) in &results {
        if c.status != "PASS" && !required.contains(name) {
            failures.push(format!("{name}: {} {}", c.status, c.detail));
        }
    }
    if seen_done.is_none() {
        failures.push(format!(
            "VSCSI-DONE never appeared (QEMU: {qemu_status:?}, limit {} s)",
            limit.as_secs()
        ));
    }
    if let Some(st) = qemu_status {
        if !st.success() {
            failures.push(format!("QEMU exited with {st}"));
        }
    }

    let mut report = format!("\n{:-^78}\n", " QEMU reconnect checks ");
    for (name, c) in &results {
        report.push_str(&format!("{name:<30} {:<4} {}\n", c.status, c.detail));
    }
    eprint!("{report}");
    let phases: Vec<String> = observed
        .iter()
        .zip(PHASES)
        .map(|(o, stop)| {
            format!(
                "{}: held {} / in flight at the stop {} (left {}), found by the next daemon {}, \
                 resubmitted {}, stop took {}",
                stop.name(),
                o.held,
                o.in_flight_at_stop
                    .map_or("- (killed)".into(), |n| n.to_string()),
                o.left_at_stop.map_or("-".into(), |n| n.to_string()),
                o.found.map_or("-".into(), |n| n.to_string()),
                o.resubmitted,
                secs(o.stop_took)
            )
        })
        .collect();
    let count = |st: &str| results.values().filter(|c| c.status == st).count();
    loud(&format!(
        "qemu_reconnect: {} PASS, {} FAIL, {} failure(s); accel {accel}; {}; QEMU ran {:.1} s, \
         VSCSI-DONE at {}, whole test {:.1} s (upgrade build {:.1} s); logs in {}",
        count("PASS"),
        count("FAIL"),
        failures.len(),
        phases.join("; "),
        qemu_time.as_secs_f64(),
        secs(seen_done),
        test_start.elapsed().as_secs_f64(),
        upgrade_took.as_secs_f64(),
        logs.display()
    ));
    if !failures.is_empty() {
        eprintln!("{:=^78}\n{text}", " serial console ");
        for n in 0..=observed.len() {
            eprintln!(
                "{:=^78}\n{}",
                format!(" daemon {n} log (last 60 lines) "),
                tail(&fs::read_to_string(daemon_log(n)).unwrap_or_default(), 60)
            );
        }
        eprintln!(
            "{:=^78}\n{}",
            " qemu stdout/stderr ",
            fs::read_to_string(&qemu_log).unwrap_or_default()
        );
        panic!(
            "{} reconnect check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}
