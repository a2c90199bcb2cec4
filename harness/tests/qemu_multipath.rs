//! A Linux guest in QEMU reaches one disk through two paths: one
//! `vscsi-backend` serves two controllers (two sockets) sharing one writable
//! image (`shared = true`), and the guest has two `vhost-user-scsi-pci`
//! devices, one per socket.
//!
//! `cargo test -p vscsi --test qemu_multipath -- --nocapture`
//!
//! The guest script (`tests/guest/multipath.sh`, given through fw_cfg)
//! checks that both paths show the same logical unit (NAA WWN, Linux's
//! wwid, serial) through different target ports (relative target port and
//! port name in VPD 83h), then runs `sg_persist` over both: registrations
//! on each path, READ FULL STATUS with both relative ports, reservations of
//! type Write Exclusive, Write Exclusive – Registrants Only and Exclusive
//! Access taken on path A with path B's WRITE (or READ) ending in
//! RESERVATION CONFLICT, registered and not, Write Exclusive – All
//! Registrants, a PREEMPT from B, release and clear; finally
//! data written through one path is read back through the other. After
//! poweroff the host checks the image holds what the guest wrote.
//!
//! Prerequisites, knobs and the SKIP rule are those of the `qemu_guest`
//! test (`VSCSI_REQUIRE_GUEST_TEST=1` makes a missing QEMU a failure,
//! `VSCSI_GUEST_ACCEL`, `VSCSI_GUEST_TIMEOUT`, `VSCSI_GUEST_CACHE`,
//! `VSCSI_BACKEND`); logs go to `target/qemu-multipath/`.

#[path = "common/backend_bin.rs"]
mod backend_bin;
#[path = "common/guest.rs"]
mod guest;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{backend_binary, profile_dir};
use guest::{
    build_guest_image, check_host_patterns, loud, parse_results, secs, skipped, stop_daemon, tail,
    take_turn, wait_socket, Check, Guard,
};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;
const SERIAL: &str = "MPATH-0001";
const SCRIPT: &str = include_str!("guest/multipath.sh");

#[test]
fn linux_guest_uses_one_disk_through_two_controllers() {
    let mut test_start = Instant::now();
    if skipped("qemu_multipath") {
        return;
    }
    let (kernel, initrd) = build_guest_image();
    let backend = backend_binary();

    let target_dir = profile_dir().parent().unwrap().to_path_buf();
    let (_turn, waited) = take_turn(&target_dir);
    if waited > Duration::from_secs(1) {
        eprintln!(
            "waited {:.1} s for another QEMU guest test",
            waited.as_secs_f64()
        );
    }
    test_start += waited;
    let logs = target_dir.join("qemu-multipath");
    fs::create_dir_all(&logs).unwrap();
    let serial_log = logs.join("serial.log");
    let daemon_log = logs.join("daemon.log");
    let qemu_log = logs.join("qemu.log");
    for f in [&serial_log, &daemon_log, &qemu_log] {
        let _ = fs::remove_file(f);
    }

    // One image, two controllers.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    File::create(&image).unwrap().set_len(SIZE).unwrap();
    let sockets = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let mut toml = String::new();
    for (name, socket) in ["path-a", "path-b"].iter().zip(&sockets) {
        toml.push_str(&format!(
            "[[controller]]\nname = \"{name}\"\nsocket = \"{}\"\n\n\
             [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\nshared = true\nserial = \"{SERIAL}\"\n\n",
            socket.display(),
            image.display()
        ));
    }
    let config = logs.join("vscsi.toml");
    fs::write(&config, &toml).unwrap();
    let dlog = File::create(&daemon_log).unwrap();
    let daemon = Command::new(&backend)
        .arg("--config")
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("VSCSI_GUEST_RUST_LOG").unwrap_or_else(|_| "debug".into()),
        )
        .stdout(dlog.try_clone().unwrap())
        .stderr(dlog)
        .spawn()
        .expect("cannot start vscsi-backend");
    let mut daemon = Guard(Some(daemon), "vscsi-backend");
    eprintln!(
        "daemon: {} --config {}",
        backend.display(),
        config.display()
    );
    for s in &sockets {
        wait_socket(s, daemon.0.as_mut().unwrap(), &daemon_log);
    }

    let script =
        format!("#!/bin/sh\nSERIAL={SERIAL}\nSIZE={SIZE}\nKEY_A=a1a1\nKEY_B=b2b2\n{SCRIPT}");
    let script_path = logs.join("test.sh");
    fs::write(&script_path, &script).unwrap();

    let accel = std::env::var("VSCSI_GUEST_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".into());
    let limit = Duration::from_secs(
        std::env::var("VSCSI_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(240),
    );
    let mut qemu_args: Vec<String> = [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (i, s) in sockets.iter().enumerate() {
        qemu_args.extend([
            "-chardev".into(),
            format!("socket,id=vus{i},path={}", s.display()),
            "-device".into(),
            format!("vhost-user-scsi-pci,chardev=vus{i},num_queues=1"),
        ]);
    }
    qemu_args.extend(
        [
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-fw_cfg",
            &format!("name=opt/vscsi/script,file={}", script_path.display()),
            "-serial",
            &format!("file:{}", serial_log.display()),
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    eprintln!("qemu: qemu-system-x86_64 {}", qemu_args.join(" "));
    let qlog = File::create(&qemu_log).unwrap();
    let qemu_start = Instant::now();
    let qemu = Command::new("qemu-system-x86_64")
        .args(&qemu_args)
        .stdin(Stdio::null())
        .stdout(qlog.try_clone().unwrap())
        .stderr(qlog)
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let mut qemu = Guard(Some(qemu), "qemu-system-x86_64");
    let mut seen_done = None;
    let qemu_status = loop {
        if seen_done.is_none()
            && fs::read_to_string(&serial_log)
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
    let daemon_status = stop_daemon(daemon.0.as_mut().unwrap());

    let serial = fs::read_to_string(&serial_log).unwrap_or_default();
    let mut results: BTreeMap<String, Check> = parse_results(&serial);
    // The image holds what the guest wrote through each path.
    check_host_patterns(&serial, &image, &mut results);

    let required = [
        "hbas",
        "paths",
        "mp-same-wwn",
        "mp-same-sysfs-wwid",
        "mp-same-serial",
        "mp-relative-ports",
        "mp-port-names",
        "pr-none-at-start",
        "pr-register-a",
        "pr-register-b",
        "pr-keys-both",
        "pr-full-status-ports",
        "pr-we-reserve-a",
        "pr-we-seen-on-b",
        "pr-we-write-b-registered",
        "pr-we-read-b",
        "pr-we-write-a",
        "pr-unregister-b",
        "pr-we-write-b-unregistered",
        "pr-we-release-a",
        "pr-we-released",
        "pr-write-b-no-reservation",
        "pr-wero-reserve-a",
        "pr-wero-write-b-unregistered",
        "pr-wero-read-b-unregistered",
        "pr-wero-register-b",
        "pr-wero-write-b-registered",
        "pr-wero-release-a",
        "pr-ea-reserve-a",
        "pr-ea-read-b",
        "pr-ea-read-a",
        "pr-ea-release-a",
        "pr-wear-reserve-a",
        "pr-wear-seen-on-b",
        "pr-wear-write-b-registered",
        "pr-wear-unregister-b",
        "pr-wear-write-b-unregistered",
        "pr-wear-register-b",
        "pr-wear-release-a",
        "pr-preempt-reserve-a",
        "pr-preempt-b",
        "pr-preempt-holder-b",
        "pr-preempt-a-unregistered",
        "pr-preempt-write-a",
        "pr-preempt-write-b",
        "pr-clear",
        "pr-cleared",
        "mp-io-a-to-b",
        "mp-io-b-to-a",
        "host-mp-io-a-to-b",
        "host-mp-io-b-to-a",
    ];
    let mut failures = Vec::new();
    for name in required {
        match results.get(name) {
            None => failures.push(format!("{name}: no result")),
            Some(c) if c.status == "PASS" => {}
            Some(c) => failures.push(format!("{name}: {} {}", c.status, c.detail)),
        }
    }
    for (name, c) in &results {
        if c.status != "PASS" && !required.contains(&name.as_str()) {
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
    match daemon_status {
        Some(st) if st.success() => {}
        other => failures.push(format!(
            "vscsi-backend did not exit 0 on SIGTERM: {other:?}"
        )),
    }

    let mut report = format!("\n{:-^78}\n", " QEMU multipath checks ");
    for (name, c) in &results {
        report.push_str(&format!("{name:<30} {:<4} {}\n", c.status, c.detail));
    }
    eprint!("{report}");
    let count = |st: &str| results.values().filter(|c| c.status == st).count();
    loud(&format!(
        "qemu_multipath: {} PASS, {} FAIL, {} failure(s); accel {accel}: QEMU ran {:.1} s, \
         VSCSI-DONE at {}, whole test {:.1} s; logs in {}",
        count("PASS"),
        count("FAIL"),
        failures.len(),
        qemu_time.as_secs_f64(),
        secs(seen_done),
        test_start.elapsed().as_secs_f64(),
        logs.display()
    ));
    if !failures.is_empty() {
        let daemon_text = fs::read_to_string(&daemon_log).unwrap_or_default();
        eprintln!("{:=^78}\n{serial}", " serial console ");
        eprintln!(
            "{:=^78}\n{}",
            " daemon log (last 200 lines) ",
            tail(&daemon_text, 200)
        );
        eprintln!(
            "{:=^78}\n{}",
            " qemu stdout/stderr ",
            fs::read_to_string(&qemu_log).unwrap_or_default()
        );
        panic!(
            "{} multipath check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}
