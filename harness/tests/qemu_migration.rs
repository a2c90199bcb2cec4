//! Live migration of a Linux guest whose disk is a `vhost-user-scsi-pci`
//! device, between two QEMU processes on this machine, while fio writes and
//! verifies on that disk.
//!
//! `cargo test -p vscsi --test qemu_migration -- --nocapture`
//!
//! One `vscsi-backend` serves two controllers (two sockets) sharing one
//! writable image (`shared = true`): the source QEMU's device talks to
//! controller A, the destination's (`-incoming unix:...`) to controller B.
//! Guest RAM is a shared memfd (`memory-backend-memfd,share=on`), as
//! vhost-user needs. The guest script (`tests/guest/migration.sh`) starts
//! four background readers (O_DIRECT reads, through one 1 MiB dd buffer
//! each, of two regions the host filled before boot) and rounds of fio
//! (random writes, crc32c verify); when the readers begin, the test drives
//! the source's QMP monitor: `migrate-set-parameters` (no bandwidth cap),
//! `migrate {"uri": "unix:..."}`, `query-migrate` until `completed`. During
//! the migration the daemon logs every guest page it writes (data-in
//! buffers, used rings) in the dirty log QEMU shared (VHOST_F_LOG_ALL,
//! SET_LOG_BASE); a page missing from it reaches the destination stale.
//! The readers catch that: a read in flight when QEMU stops the source
//! lands in a buffer QEMU sent long before and the guest consumes it on the
//! destination. With marking disabled in the daemon (`DirtyBitmap::
//! mark_dirty` returning at once) the test failed each time it was run so
//! (a reader's wrong md5, or a guest that stopped making progress), while
//! fio's verify alone had passed (QEMU marks the used ring itself when it
//! stops the device, and fio's buffers are rewritten by the guest CPU).
//!
//! The guest sees the switch in band (VPD 83h's relative target port goes
//! from A's to B's), runs more rounds on the destination, verifies the last
//! round's data once more, writes a pattern the host checks in the image
//! after poweroff, and checks dmesg for SCSI errors.
//!
//! Prerequisites, knobs and the SKIP rule are those of the `qemu_guest`
//! test (`VSCSI_REQUIRE_GUEST_TEST=1` makes a missing QEMU a failure,
//! `VSCSI_GUEST_ACCEL`, `VSCSI_GUEST_TIMEOUT`, `VSCSI_GUEST_CACHE`,
//! `VSCSI_BACKEND`); logs go to `target/qemu-migration/`.

#[path = "common/backend_bin.rs"]
mod backend_bin;
#[path = "common/guest.rs"]
mod guest;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{backend_binary, profile_dir};
use guest::{
    build_guest_image, check_host_patterns, loud, md5_hex, missing_prerequisites, parse_results,
    secs, stop_daemon, tail, take_turn, wait_socket, Check, Guard, PACKAGES,
};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 128 * MIB;
/// Where fio writes and verifies each round.
const DATA_OFF: u64 = 4 * MIB;
const DATA_LEN: u64 = 16 * MIB;
/// What the host writes before boot, two regions of `HOST_LEN`: `READERS`
/// guest readers read a slice each of one, then of the other, with
/// O_DIRECT, across the migration; the first `DIRECT_LEN` bytes are read
/// each round too.
const HOST_OFF: u64 = 32 * MIB;
const HOST_LEN: u64 = 32 * MIB;
const READERS: usize = 4;
const DIRECT_LEN: u64 = 4 * MIB;
/// The guest's last pattern.
const PATTERN_OFF: u64 = 100 * MIB;
const SCRIPT: &str = include_str!("guest/migration.sh");

/// A QMP connection (QEMU's JSON monitor protocol): one JSON object a line;
/// asynchronous events (`{"event": ...}`) may come between a command and its
/// reply and are skipped.
struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects (retrying until QEMU has created the socket), reads the
    /// greeting and leaves capabilities negotiation mode.
    fn connect(path: &Path, qemu: &mut Child) -> Qmp {
        let t = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(st)) = qemu.try_wait() {
                        panic!("QEMU exited ({st}) before its QMP socket answered");
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "QMP {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut q = Qmp { stream, reader };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        q.execute("qmp_capabilities", json!({}));
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reading QMP");
        assert!(n > 0, "QMP connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs one command; returns its `return` value, panics on `error`.
    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let mut msg = json!({ "execute": command, "arguments": arguments }).to_string();
        msg.push('\n');
        self.stream.write_all(msg.as_bytes()).expect("writing QMP");
        loop {
            let v = self.read();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            if let Some(e) = v.get("error") {
                panic!("QMP {command}: {e}");
            }
        }
    }
}

/// The QEMU command line both sides share; `socket` is the controller the
/// device talks to, `extra` what differs (QMP socket, serial file, -incoming).
fn qemu_args(
    accel: &str,
    kernel: &Path,
    initrd: &Path,
    script: &Path,
    socket: &Path,
    extra: &[String],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-accel",
        accel,
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
        &format!("socket,id=vus,path={}", socket.display()),
        "-device",
        "vhost-user-scsi-pci,chardev=vus,num_queues=2",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        "console=ttyS0 panic=-1 quiet",
        "-fw_cfg",
        &format!("name=opt/vscsi/script,file={}", script.display()),
        "-monitor",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().cloned());
    a
}

fn spawn_qemu(args: &[String], log: &Path, what: &'static str) -> Guard {
    eprintln!("qemu ({what}): qemu-system-x86_64 {}", args.join(" "));
    let qlog = File::create(log).unwrap();
    let child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(qlog.try_clone().unwrap())
        .stderr(qlog)
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    Guard(Some(child), what)
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
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn linux_guest_migrates_while_fio_verifies_on_vhost_user_scsi() {
    let mut test_start = Instant::now();
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let msg = format!(
            "the QEMU migration test cannot run: missing {}.\nInstall: apt-get install {PACKAGES}",
            missing.join(", ")
        );
        if std::env::var("VSCSI_REQUIRE_GUEST_TEST").as_deref() == Ok("1") {
            panic!("{msg}\n(VSCSI_REQUIRE_GUEST_TEST=1 requires this test to run)");
        }
        loud(&format!(
            "\n{bar}\nSKIP qemu_migration: {msg}\n(set VSCSI_REQUIRE_GUEST_TEST=1 to make this a failure)\n{bar}\n",
            bar = "=".repeat(78)
        ));
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
    let logs = target_dir.join("qemu-migration");
    fs::create_dir_all(&logs).unwrap();
    let src_serial = logs.join("source-serial.log");
    let dst_serial = logs.join("destination-serial.log");
    let daemon_log = logs.join("daemon.log");
    let src_log = logs.join("source-qemu.log");
    let dst_log = logs.join("destination-qemu.log");
    for f in [&src_serial, &dst_serial, &daemon_log, &src_log, &dst_log] {
        let _ = fs::remove_file(f);
    }

    // One image, two controllers; the host's region filled before boot.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    let img = File::create(&image).unwrap();
    img.set_len(SIZE).unwrap();
    let mut host_data = vec![0u8; 2 * HOST_LEN as usize];
    fastrand::fill(&mut host_data);
    img.write_all_at(&host_data, HOST_OFF).unwrap();
    img.sync_all().unwrap();
    drop(img);
    let slice = HOST_LEN as usize / READERS;
    let slice_md5: Vec<String> = host_data.chunks(slice).map(md5_hex).collect();
    let slice_md5 = slice_md5.join(" ");
    let direct_md5 = md5_hex(&host_data[..DIRECT_LEN as usize]);

    let sockets = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let mut toml = String::new();
    for (name, socket) in ["mig-a", "mig-b"].iter().zip(&sockets) {
        toml.push_str(&format!(
            "[[controller]]\nname = \"{name}\"\nsocket = \"{}\"\nqueues = 2\n\n\
             [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\nshared = true\nserial = \"MIGRATE-0001\"\n\n",
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

    let script = format!(
        "#!/bin/sh\nDATA_OFF={DATA_OFF}\nDATA_LEN={DATA_LEN}\nHOST_OFF={HOST_OFF}\n\
         HOST_LEN={HOST_LEN}\nREADERS={READERS}\nSLICE_MD5=\"{slice_md5}\"\nDIRECT_LEN={DIRECT_LEN}\n\
         DIRECT_MD5={direct_md5}\nPATTERN_OFF={PATTERN_OFF}\n\
         MAX_ROUNDS=40\nAFTER_ROUNDS=3\n{SCRIPT}"
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
    let src_qmp = dir.path().join("source.qmp");
    let dst_qmp = dir.path().join("destination.qmp");
    let migration_socket: PathBuf = dir.path().join("migration.sock");
    let side = |qmp: &Path, serial: &Path, incoming: bool| {
        let mut e = vec![
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-serial".to_string(),
            format!("file:{}", serial.display()),
        ];
        if incoming {
            e.push("-incoming".into());
            e.push(format!("unix:{}", migration_socket.display()));
        }
        e
    };
    let src_args = qemu_args(
        &accel,
        &kernel,
        &initrd,
        &script_path,
        &sockets[0],
        &side(&src_qmp, &src_serial, false),
    );
    let dst_args = qemu_args(
        &accel,
        &kernel,
        &initrd,
        &script_path,
        &sockets[1],
        &side(&dst_qmp, &dst_serial, true),
    );
    let qemu_start = Instant::now();
    let mut source = spawn_qemu(&src_args, &src_log, "source qemu-system-x86_64");
    let mut destination = spawn_qemu(&dst_args, &dst_log, "destination qemu-system-x86_64");

    let mut failures = Vec::new();
    let mut migration_time = None;
    let mut downtime = None;
    let mut migrated_at = None;
    // The migration starts with the guest's readers.
    let ready = wait_for(
        &src_serial,
        "VSCSI-MIG-FILL ",
        source.0.as_mut().unwrap(),
        limit,
    );
    if !ready {
        failures.push("the guest's readers never began on the source".to_string());
    } else {
        let mut qmp = Qmp::connect(&src_qmp, source.0.as_mut().unwrap());
        let _ = Qmp::connect(&dst_qmp, destination.0.as_mut().unwrap());
        qmp.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 10u64 << 30 }),
        );
        let t = Instant::now();
        qmp.execute(
            "migrate",
            json!({ "uri": format!("unix:{}", migration_socket.display()) }),
        );
        let status = loop {
            let info = qmp.execute("query-migrate", json!({}));
            let status = info["status"].as_str().unwrap_or("").to_string();
            if status == "completed" {
                migration_time = Some(t.elapsed());
                downtime = info["downtime"].as_u64();
                eprintln!("query-migrate: {info}");
                break status;
            }
            if status == "failed" || status == "cancelled" || t.elapsed() > limit {
                eprintln!("query-migrate: {info}");
                break status;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        migrated_at = Some(qemu_start.elapsed());
        if status != "completed" {
            failures.push(format!("migration ended {status:?}"));
        }
        // The source is paused for good: done with it.
        let _ = qmp.execute("quit", json!({}));
    }
    let mut src_child = source.0.take().unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) && matches!(src_child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = src_child.kill();
    let _ = src_child.wait();

    // The destination carries on and powers off when its script ends.
    let mut seen_done = None;
    let dst_status = loop {
        if seen_done.is_none()
            && fs::read_to_string(&dst_serial)
                .unwrap_or_default()
                .contains("VSCSI-DONE")
        {
            seen_done = Some(qemu_start.elapsed());
        }
        if let Some(st) = destination.0.as_mut().unwrap().try_wait().unwrap() {
            break Some(st);
        }
        if qemu_start.elapsed() > limit {
            eprintln!(
                "destination QEMU still running after {} s: killing it",
                limit.as_secs()
            );
            let c = destination.0.as_mut().unwrap();
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let qemu_time = qemu_start.elapsed();
    let daemon_status = stop_daemon(daemon.0.as_mut().unwrap());

    let src_text = fs::read_to_string(&src_serial).unwrap_or_default();
    let serial = fs::read_to_string(&dst_serial).unwrap_or_default();
    let src_results = parse_results(&src_text);
    let mut results: BTreeMap<String, Check> = parse_results(&serial);
    for (name, c) in &src_results {
        results.entry(name.clone()).or_insert_with(|| c.clone());
    }
    let rounds = |text: &str| text.matches("VSCSI-MIG-ROUND ").count();
    let (src_rounds, dst_rounds) = (rounds(&src_text), rounds(&serial));
    if migration_time.is_some() && dst_rounds == 0 {
        failures.push("no fio round ran on the destination".into());
    }
    // The image holds what the guest wrote last.
    check_host_patterns(&serial, &image, &mut results);

    let required = [
        "disk",
        "port-before",
        "migrated",
        "fio-verify",
        "host-reads",
        "big-reads",
        "verify-only",
        "pattern-write",
        "dmesg-clean",
        "host-final",
    ];
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
            "VSCSI-DONE never appeared on the destination (QEMU: {dst_status:?}, limit {} s)",
            limit.as_secs()
        ));
    }
    if let Some(st) = dst_status {
        if !st.success() {
            failures.push(format!("destination QEMU exited with {st}"));
        }
    }
    match daemon_status {
        Some(st) if st.success() => {}
        other => failures.push(format!(
            "vscsi-backend did not exit 0 on SIGTERM: {other:?}"
        )),
    }

    let mut report = format!("\n{:-^78}\n", " QEMU migration checks ");
    for (name, c) in &results {
        report.push_str(&format!("{name:<30} {:<4} {}\n", c.status, c.detail));
    }
    eprint!("{report}");
    let count = |st: &str| results.values().filter(|c| c.status == st).count();
    loud(&format!(
        "qemu_migration: {} PASS, {} FAIL, {} failure(s); accel {accel}: migration took {} \
         (downtime {} ms) at {}, fio rounds {src_rounds} on the source and {dst_rounds} on the \
         destination; QEMU ran {:.1} s, VSCSI-DONE at {}, whole test {:.1} s; logs in {}",
        count("PASS"),
        count("FAIL"),
        failures.len(),
        secs(migration_time),
        downtime
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into()),
        secs(migrated_at),
        qemu_time.as_secs_f64(),
        secs(seen_done),
        test_start.elapsed().as_secs_f64(),
        logs.display()
    ));
    if !failures.is_empty() {
        let daemon_text = fs::read_to_string(&daemon_log).unwrap_or_default();
        eprintln!("{:=^78}\n{src_text}", " source serial console ");
        eprintln!("{:=^78}\n{serial}", " destination serial console ");
        eprintln!(
            "{:=^78}\n{}",
            " daemon log (last 200 lines) ",
            tail(&daemon_text, 200)
        );
        for (what, log) in [("source", &src_log), ("destination", &dst_log)] {
            eprintln!(
                "{:=^78}\n{}",
                format!(" {what} qemu stdout/stderr "),
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        panic!(
            "{} migration check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}
