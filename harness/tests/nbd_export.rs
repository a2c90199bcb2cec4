//! LUNs served from NBD exports, end to end: real NBD servers (qemu-nbd,
//! nbdkit) started here, the real `vscsi-backend` binary with
//! `--lun 0:0=nbd...`, and the driver over the unix socket and memfd.
//!
//! Without qemu-nbd / nbdkit / qemu-img a test says SKIP on stderr and
//! passes, unless VSCSI_REQUIRE_TOOLS=1 (CI, `.ci/run`) makes it fail.

#[path = "common/backend_bin.rs"]
mod backend_bin;
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{backend_binary, KillOnDrop};
use common::pattern;
use vscsi_driver::{Driver, QueueConfig, Response, ScsiCommand};

const BS: u32 = 512;

/// Whether `tool` runs; a loud skip (or, with VSCSI_REQUIRE_TOOLS=1, a
/// failure) when it does not.
fn have(tool: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("VSCSI_REQUIRE_TOOLS").is_none(),
            "{tool} is missing: apt-get install {package} (see .ci/run)"
        );
        eprintln!("SKIP: {tool} is missing (apt-get install {package}); NBD test not run");
    }
    found
}

fn run(tool: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    out
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} never became ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM and wait: the daemon flushes its LUNs (NBD_CMD_FLUSH) and
/// qemu-nbd writes its qcow2 metadata before they exit.
fn stop(p: &mut KillOnDrop) {
    // SAFETY: kill takes a pid and a signal number; it touches no memory.
    unsafe { libc::kill(p.0.id() as libc::pid_t, libc::SIGTERM) };
    let _ = p.0.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An NBD server process, listening once this returns.
fn server(tool: &str, args: &[String], listening: impl FnMut() -> bool) -> KillOnDrop {
    let child = Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let s = KillOnDrop(child);
    wait_for(tool, listening);
    s
}

fn qemu_nbd_unix(sock: &Path, image: &Path, extra: &[&str]) -> KillOnDrop {
    let mut args: Vec<String> = vec![
        "-t".into(),
        "-k".into(),
        sock.display().to_string(),
        "-x".into(),
        "disk".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(image.display().to_string());
    let _ = std::fs::remove_file(sock);
    let sock = sock.to_path_buf();
    server("qemu-nbd", &args, move || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    })
}

fn nbdkit_unix(sock: &Path, args: &[&str]) -> KillOnDrop {
    let mut a: Vec<String> = vec![
        "-f".into(),
        "--exit-with-parent".into(),
        "-U".into(),
        sock.display().to_string(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    let sock = sock.to_path_buf();
    server("nbdkit", &a, move || sock.exists())
}

fn unix_uri(sock: &Path, extra: &str) -> String {
    format!("nbd+unix:///disk?socket={}{extra}", sock.display())
}

/// The daemon binary serving `lun` (a `--lun` spec) with two request
/// queues; returns it and its vhost-user socket.
fn daemon(dir: &Path, luns: &[String]) -> (KillOnDrop, PathBuf) {
    daemon_with(dir, luns, &[])
}

/// [`daemon`] with more daemon flags.
fn daemon_with(dir: &Path, luns: &[String], extra: &[&str]) -> (KillOnDrop, PathBuf) {
    daemon_queues(dir, luns, extra, 2)
}

/// [`daemon_with`] serving `queues` request queues.
fn daemon_queues(
    dir: &Path,
    luns: &[String],
    extra: &[&str],
    queues: u16,
) -> (KillOnDrop, PathBuf) {
    let socket = dir.join("vs.sock");
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut cmd = Command::new(backend_binary());
    cmd.arg("--socket")
        .arg(&socket)
        .args(["--queues", &queues.to_string()])
        .args(extra);
    for l in luns {
        // Without the POWER ON unit attention: the first raw command is
        // the one under test.
        cmd.arg("--lun").arg(format!("{l},no-power-on-ua"));
    }
    let mut child = KillOnDrop(cmd.stderr(log).spawn().unwrap());
    let s = socket.clone();
    wait_for("vscsi-backend", || {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!(
                "vscsi-backend exited ({st}): {}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            );
        }
        s.exists()
    });
    (child, socket)
}

async fn connect(socket: &Path) -> Driver {
    connect_queues(socket, 2).await
}

async fn connect_queues(socket: &Path, queue_count: u16) -> Driver {
    Driver::connect(
        socket,
        QueueConfig {
            queue_count,
            ..QueueConfig::default()
        },
    )
    .await
    .expect("driver connects")
}

fn raw(cdb: Vec<u8>, data_out: Vec<u8>, data_in_len: usize) -> ScsiCommand {
    ScsiCommand::Raw {
        cdb,
        data_out,
        data_in_len,
    }
}

fn cdb10(op: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

async fn write(drv: &Driver, lba: u64, data: Vec<u8>) -> Response {
    let blocks = (data.len() / BS as usize) as u32;
    drv.send_command(0, 0, ScsiCommand::Write { lba, blocks, data })
        .await
        .unwrap()
}

async fn read(drv: &Driver, lba: u64, blocks: u32) -> Response {
    drv.send_command(
        0,
        0,
        ScsiCommand::Read {
            lba,
            blocks,
            block_size: BS,
        },
    )
    .await
    .unwrap()
}

/// (sense key, ASC, ASCQ) of fixed-format sense data, byte-checked: the
/// response code 70h, the key in byte 2, ASC/ASCQ in bytes 12 and 13.
fn fixed_sense(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, 0x02, "CHECK CONDITION expected: {r:?}");
    assert!(r.sense.len() >= 14, "{r:?}");
    assert_eq!(r.sense[0] & 0x7F, 0x70, "fixed format, current: {r:?}");
    (r.sense[2] & 0x0F, r.sense[12], r.sense[13])
}

/// Runs the futures concurrently on this task (no extra crate for join_all).
async fn join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// The disk bytes of a qcow2 image, through qemu-img.
fn qcow2_bytes(dir: &Path, image: &Path) -> Vec<u8> {
    let out = dir.join("flat.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

#[tokio::test]
async fn qcow2_over_a_unix_socket_is_written_on_two_queues_and_lands_in_the_qcow2() {
    if !have("qemu-nbd", "qemu-utils") || !have("qemu-img", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"],
    );
    let sock = dir.path().join("nbd.sock");
    let mut srv = qemu_nbd_unix(&sock, &img, &["-f", "qcow2"]);
    let (mut d, vs) = daemon(dir.path(), &[format!("0:0={}", unix_uri(&sock, ""))]);
    let drv = connect(&vs).await;

    // READ CAPACITY(10): the qcow2's virtual size.
    let r = drv
        .send_command(0, 0, raw(vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![], 8))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(
        u32::from_be_bytes(r.data[0..4].try_into().unwrap()),
        16 * 2048 - 1
    );

    // 32 writes of 64 KiB in flight at once, spread over both queues.
    let extents: Vec<(u64, u32)> = (0..32u64).map(|i| (i * 1000, 128)).collect();
    let writes = extents
        .iter()
        .map(|&(lba, n)| write(&drv, lba, pattern(lba, n, BS, 11)));
    for r in join_all(writes).await {
        assert!(r.is_good(), "{r:?}");
    }
    let reads = extents.iter().map(|&(lba, n)| read(&drv, lba, n));
    for (r, &(lba, n)) in join_all(reads).await.iter().zip(&extents) {
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data, pattern(lba, n, BS, 11), "LBA {lba}");
    }
    let stats = drv.stats();
    assert!(
        stats.queues.iter().filter(|q| q.completions > 0).count() >= 2,
        "both queues carried commands: {stats:?}"
    );
    // SYNCHRONIZE CACHE(10) -> NBD_CMD_FLUSH.
    let r = drv
        .send_command(0, 0, raw(cdb10(0x35, 0, 0), vec![], 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    drop(drv);
    stop(&mut d);
    stop(&mut srv);

    let disk = qcow2_bytes(dir.path(), &img);
    for &(lba, n) in &extents {
        let at = (lba * u64::from(BS)) as usize;
        assert_eq!(
            &disk[at..at + (n * BS) as usize],
            pattern(lba, n, BS, 11).as_slice(),
            "LBA {lba} in the qcow2"
        );
    }
    run("qemu-img", &["check", "-q", img.to_str().unwrap()]);
}

#[test]
fn qcow2_over_tcp_loopback_passes_vscsi_verify_on_two_queues() {
    if !have("qemu-nbd", "qemu-utils") || !have("qemu-img", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("t.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "8M"],
    );
    let port = free_port();
    let args: Vec<String> = [
        "-t",
        "-b",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-x",
        "disk",
        "-f",
        "qcow2",
        img.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut srv = server("qemu-nbd", &args, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (mut d, vs) = daemon(dir.path(), &[format!("0:0=nbd://127.0.0.1:{port}/disk")]);
    let out = Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .args([
            "verify",
            "--socket",
            vs.to_str().unwrap(),
            "--queues",
            "2",
            "--size",
            "4M",
        ])
        .args(["--seed", "5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "vscsi verify: {out:?}");
    assert!(text.contains("OK") && text.contains("2 queue"), "{text}");
    stop(&mut d);
    stop(&mut srv);
    // The verified pattern is in the qcow2: the first 4 MiB hold data, the
    // rest is still zero.
    let disk = qcow2_bytes(dir.path(), &img);
    assert_eq!(disk.len(), 8 << 20);
    for mib in 0..4 {
        let chunk = &disk[mib << 20..(mib + 1) << 20];
        assert!(chunk.iter().any(|&b| b != 0), "MiB {mib} was written");
    }
    assert!(disk[4 << 20..].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn a_read_only_export_makes_a_write_protected_lun() {
    if !have("qemu-nbd", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ro.raw");
    std::fs::write(&img, pattern(0, 2048, BS, 3)).unwrap();
    let sock = dir.path().join("ro.sock");
    let _srv = qemu_nbd_unix(&sock, &img, &["-r", "-f", "raw"]);
    let (_d, vs) = daemon(dir.path(), &[format!("0:0={}", unix_uri(&sock, ""))]);
    let drv = connect(&vs).await;

    let r = read(&drv, 100, 8).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data, pattern(100, 8, BS, 3));
    // WRITE: DATA PROTECT / WRITE PROTECTED, 7/27/00, nothing sent.
    let r = write(&drv, 100, vec![0xAA; 8 * BS as usize]).await;
    assert_eq!(fixed_sense(&r), (0x07, 0x27, 0x00));
    // MODE SENSE(6): WP (bit 7 of the device-specific parameter, byte 2).
    let r = drv
        .send_command(0, 0, raw(vec![0x1A, 0, 0x3F, 0, 255, 0], vec![], 255))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data[2] & 0x80, 0x80, "WP set: {:?}", &r.data[..4]);
    let r = read(&drv, 100, 8).await;
    assert_eq!(r.data, pattern(100, 8, BS, 3), "the export is unchanged");
    // No atomicity is claimed for a network medium: the Block Limits
    // atomic fields (bytes 44-63) are 0 and WRITE ATOMIC(16) is not a
    // command of this LU; PRE-FETCH has no local cache to fill: GOOD.
    let r = drv
        .send_command(0, 0, raw(vec![0x12, 1, 0xB0, 0, 64, 0], vec![], 64))
        .await
        .unwrap();
    assert_eq!(&r.data[44..64], &[0; 20]);
    let mut wa = vec![0u8; 16];
    wa[0] = 0x9C;
    let r = drv.send_command(0, 0, raw(wa, vec![], 0)).await.unwrap();
    assert_eq!(fixed_sense(&r), (0x05, 0x20, 0x00));
    let pf = vec![0x34, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    let r = drv.send_command(0, 0, raw(pf, vec![], 0)).await.unwrap();
    assert!(r.is_good(), "{r:?}");
}

#[tokio::test]
async fn server_errors_become_the_sense_sbc_asks_for() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("err.sock");
    // Every read fails with EIO, every write with ENOSPC, every trim with EPERM.
    let _srv = nbdkit_unix(
        &sock,
        &[
            "--filter=error",
            "memory",
            "8M",
            "error-pread=EIO",
            "error-pread-rate=100%",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%",
            "error-trim=EPERM",
            "error-trim-rate=100%",
        ],
    );
    let (_d, vs) = daemon(dir.path(), &[format!("0:0={}", unix_uri(&sock, ""))]);
    let drv = connect(&vs).await;
    // MEDIUM ERROR / UNRECOVERED READ ERROR, INFORMATION = the first LBA.
    let r = read(&drv, 40, 4).await;
    assert_eq!(fixed_sense(&r), (0x03, 0x11, 0x00));
    assert_eq!(r.sense[0] & 0x80, 0x80, "VALID: INFORMATION holds the LBA");
    assert_eq!(u32::from_be_bytes(r.sense[3..7].try_into().unwrap()), 40);
    // DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (SBC-4 4.7.3.7).
    let r = write(&drv, 8, vec![1; BS as usize]).await;
    assert_eq!(fixed_sense(&r), (0x07, 0x27, 0x07));
    // EPERM on a TRIM (UNMAP of 8 blocks at LBA 64): WRITE PROTECTED.
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&64u64.to_be_bytes());
    list.extend_from_slice(&8u32.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    let r = drv
        .send_command(0, 0, raw(cdb10(0x42, 0, 24), list, 0))
        .await
        .unwrap();
    assert_eq!(fixed_sense(&r), (0x07, 0x27, 0x00));
}

#[tokio::test]
async fn a_stalled_server_fails_the_command_after_the_timeout_and_the_lun_recovers() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("slow.sock");
    // Reads take 20 s; writes are quick. The LUN's timeout is 2 s.
    let _srv = nbdkit_unix(&sock, &["--filter=delay", "memory", "8M", "rdelay=20"]);
    let (_d, vs) = daemon(
        dir.path(),
        &[format!("0:0={}", unix_uri(&sock, "&timeout=2"))],
    );
    let drv = connect(&vs).await;

    let t = Instant::now();
    let r = read(&drv, 0, 8).await;
    let took = t.elapsed();
    // ABORTED COMMAND / LOGICAL UNIT COMMUNICATION TIME-OUT, after about
    // the timeout: completed, not hung for the server's 20 s.
    assert_eq!(fixed_sense(&r), (0x0B, 0x08, 0x01), "{r:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // The client reconnected: a write (not delayed) succeeds.
    let t = Instant::now();
    loop {
        let r = write(&drv, 16, pattern(16, 8, BS, 1)).await;
        if r.is_good() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the LUN never recovered: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_server_killed_and_restarted_mid_io_is_reconnected() {
    if !have("qemu-nbd", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let sock = dir.path().join("r.sock");
    let mut srv = qemu_nbd_unix(&sock, &img, &["-f", "raw"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let (_d, vs) = daemon_with(
        dir.path(),
        &[format!("0:0={}", unix_uri(&sock, "&timeout=5"))],
        &["--metrics", &metrics],
    );
    let drv = std::sync::Arc::new(connect(&vs).await);

    // Writers keep going while the server dies and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (drv, stop) = (drv.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut good, mut failed) = (0u32, 0u32);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let lba = (w * 4096 + (i % 64) * 8) % 16384;
                let r = write(&drv, lba, pattern(lba, 8, BS, w)).await;
                if r.is_good() {
                    good += 1;
                } else {
                    // A command lost with the server: ABORTED COMMAND.
                    assert_eq!(fixed_sense(&r).0, 0x0B, "{r:?}");
                    failed += 1;
                }
                i += 1;
            }
            (good, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.0.kill().unwrap();
    let _ = srv.0.wait();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _srv2 = qemu_nbd_unix(&sock, &img, &["-f", "raw"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    for task in tasks {
        let (good, failed) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("every command completed")
            .unwrap();
        eprintln!("writer: {good} writes completed GOOD, {failed} failed with ABORTED COMMAND");
        assert!(good > 0);
    }
    assert!(t.elapsed() < Duration::from_secs(20));
    // After the restart the LUN serves reads and writes again.
    let r = write(&drv, 12000, pattern(12000, 16, BS, 9)).await;
    assert!(r.is_good(), "{r:?}");
    let r = read(&drv, 12000, 16).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data, pattern(12000, 16, BS, 9));
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("NBD connection re-established"), "{log}");
    assert!(
        log.contains("action=\"nbd-reconnect\""),
        "an audit event: {log}"
    );
    // The connection's metrics: up again, reconnected once, requests counted.
    let mut m = std::net::TcpStream::connect(&metrics).unwrap();
    std::io::Write::write_all(&mut m, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut m, &mut text).unwrap();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l.contains("connection=\"0\""))
            .unwrap_or_else(|| panic!("{name} missing: {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("vscsi_nbd_connected{"), 1.0);
    assert!(value("vscsi_nbd_reconnects_total{") >= 1.0);
    assert!(value("vscsi_nbd_completed_total{") >= 2.0);
    assert!(value("vscsi_nbd_request_seconds_total{") > 0.0);
}

/// The request lines of nbdkit's log filter (one per NBD command received).
fn nbd_requests(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" id=") && l.ends_with(" ...") && !l.contains("Preconnect"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn scsi_commands_become_the_nbd_commands_the_transmission_flags_allow() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("log.sock");
    let log = dir.path().join("nbd.log");
    let logfile = format!("logfile={}", log.display());
    let _srv = nbdkit_unix(&sock, &["--filter=log", "memory", "8M", &logfile]);
    let (_d, vs) = daemon(dir.path(), &[format!("0:0={}", unix_uri(&sock, ""))]);
    let drv = connect(&vs).await;
    let since = |n: usize| nbd_requests(&log)[n..].to_vec();
    let seen = nbd_requests(&log).len();

    // VPD B2h: LBPU, LBPWS, LBPWS10, and LBPRZ 000b (a TRIM promises no zeroes).
    let r = drv
        .send_command(0, 0, raw(vec![0x12, 1, 0xB2, 0, 64, 0], vec![], 64))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data[5], 0xE0, "{:?}", r.data);

    // WRITE(10) with FUA (byte 1 bit 3) -> NBD_CMD_WRITE with NBD_CMD_FLAG_FUA.
    let mut c = cdb10(0x2A, 16, 1);
    c[1] = 0x08;
    let r = drv
        .send_command(0, 0, raw(c, vec![5; 512], 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let reqs = since(seen);
    assert!(
        reqs.len() == 1
            && reqs[0].contains("Write")
            && reqs[0].contains("offset=0x2000 count=0x200 fua=1"),
        "{reqs:?}"
    );
    // SYNCHRONIZE CACHE(10) -> NBD_CMD_FLUSH.
    let seen = nbd_requests(&log).len();
    let r = drv
        .send_command(0, 0, raw(cdb10(0x35, 0, 0), vec![], 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let reqs = since(seen);
    assert!(reqs.len() == 1 && reqs[0].contains("Flush"), "{reqs:?}");

    // WRITE SAME(16) of a zero block over 8 blocks at LBA 32 -> WRITE_ZEROES
    // keeping the range allocated (NO_HOLE: nbdkit logs trim=0) ...
    let ws16 = |flags: u8, lba: u64| {
        let mut c = vec![0x93, flags, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c
    };
    let seen = nbd_requests(&log).len();
    let r = drv
        .send_command(0, 0, raw(ws16(0, 32), vec![0; 512], 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let reqs = since(seen);
    assert!(
        reqs.len() == 1
            && reqs[0].contains("Zero")
            && reqs[0].contains("offset=0x4000 count=0x1000 trim=0"),
        "{reqs:?}"
    );
    // ... and with UNMAP (byte 1 bit 3) the server may punch it (trim=1).
    let seen = nbd_requests(&log).len();
    let r = drv
        .send_command(0, 0, raw(ws16(0x08, 64), vec![0; 512], 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let reqs = since(seen);
    assert!(
        reqs.len() == 1
            && reqs[0].contains("Zero")
            && reqs[0].contains("offset=0x8000 count=0x1000 trim=1"),
        "{reqs:?}"
    );
    // UNMAP of 8 blocks at LBA 128 -> NBD_CMD_TRIM.
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&128u64.to_be_bytes());
    list.extend_from_slice(&8u32.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    let seen = nbd_requests(&log).len();
    let r = drv
        .send_command(0, 0, raw(cdb10(0x42, 0, 24), list, 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let reqs = since(seen);
    assert!(
        reqs.len() == 1
            && reqs[0].contains("Trim")
            && reqs[0].contains("offset=0x10000 count=0x1000"),
        "{reqs:?}"
    );
    // The data written with FUA reads back; the zeroed range reads zero.
    let r = read(&drv, 16, 1).await;
    assert_eq!(r.data, vec![5; 512]);
    let r = read(&drv, 32, 8).await;
    assert!(r.is_good() && r.data.iter().all(|&b| b == 0), "{r:?}");
}

#[tokio::test]
async fn unmap_on_a_qcow2_export_frees_its_clusters() {
    if !have("qemu-nbd", "qemu-utils") || !have("qemu-img", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("u.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "8M"],
    );
    let sock = dir.path().join("u.sock");
    let mut srv = qemu_nbd_unix(&sock, &img, &["-f", "qcow2", "--discard=unmap"]);
    let (mut d, vs) = daemon(dir.path(), &[format!("0:0={}", unix_uri(&sock, ""))]);
    let drv = connect(&vs).await;
    // 1 MiB of data at LBA 0, then UNMAP of it (NBD_CMD_TRIM).
    let r = write(&drv, 0, pattern(0, 2048, BS, 4)).await;
    assert!(r.is_good(), "{r:?}");
    let r = drv
        .send_command(0, 0, raw(cdb10(0x35, 0, 0), vec![], 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    // Allocated now (read with -U while qemu-nbd holds the image).
    let out = run(
        "qemu-img",
        &[
            "map",
            "-U",
            "--output=json",
            "-f",
            "qcow2",
            img.to_str().unwrap(),
        ],
    );
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(map[0]["start"], 0);
    assert_eq!(map[0]["data"], serde_json::Value::Bool(true), "{map}");
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&0u64.to_be_bytes());
    list.extend_from_slice(&2048u32.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    let r = drv
        .send_command(0, 0, raw(cdb10(0x42, 0, 24), list, 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    drop(drv);
    stop(&mut d);
    stop(&mut srv);
    // qemu-img map: no allocated data left in the first MiB.
    let out = run(
        "qemu-img",
        &["map", "--output=json", "-f", "qcow2", img.to_str().unwrap()],
    );
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for e in map.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        if start < 1 << 20 {
            assert_eq!(
                e["data"],
                serde_json::Value::Bool(false),
                "cluster still allocated: {map}"
            );
        }
    }
}

#[tokio::test]
async fn get_lba_status_reports_the_exports_allocation_from_block_status() {
    if !have("qemu-nbd", "qemu-utils") || !have("qemu-img", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "8M"],
    );
    let sock = dir.path().join("s.sock");
    let _srv = qemu_nbd_unix(&sock, &img, &["-f", "qcow2", "--discard=unmap"]);
    let (_d, vs) = daemon(dir.path(), &[format!("0:0={}", unix_uri(&sock, ""))]);
    let drv = connect(&vs).await;
    // One 64 KiB cluster of data at LBA 2048; the rest never written.
    let r = write(&drv, 2048, pattern(2048, 128, BS, 2)).await;
    assert!(r.is_good(), "{r:?}");
    let mut cdb = vec![0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    cdb[2..10].copy_from_slice(&0u64.to_be_bytes());
    let r = drv
        .send_command(0, 0, raw(cdb, vec![], 4096))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    // SBC-4 LBA status descriptors: LBA (8), blocks (4), provisioning status.
    let n = (u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize - 4) / 16;
    let d: Vec<(u64, u32, u8)> = (0..n)
        .map(|i| {
            let b = &r.data[8 + 16 * i..24 + 16 * i];
            (
                u64::from_be_bytes(b[0..8].try_into().unwrap()),
                u32::from_be_bytes(b[8..12].try_into().unwrap()),
                b[12] & 0x0F,
            )
        })
        .collect();
    assert_eq!(
        &d[..3],
        &[(0, 2048, 1), (2048, 128, 0), (2176, 16384 - 2176, 1)],
        "{d:?}"
    );
}

#[tokio::test]
async fn a_slow_server_holds_only_its_own_commands() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow.sock");
    let fast = dir.path().join("fast.sock");
    // LUN 0: reads take 2 s, within its 10 s timeout. LUN 1: another server.
    let _s = nbdkit_unix(&slow, &["--filter=delay", "memory", "8M", "rdelay=2"]);
    let _f = nbdkit_unix(&fast, &["memory", "8M"]);
    let (_d, vs) = daemon(
        dir.path(),
        &[
            format!("0:0={}", unix_uri(&slow, "&timeout=10")),
            format!("0:1={}", unix_uri(&fast, "")),
        ],
    );
    let drv = std::sync::Arc::new(connect(&vs).await);
    let t = Instant::now();
    let d = drv.clone();
    let stalled = tokio::spawn(async move { read(&d, 0, 8).await });
    tokio::task::yield_now().await;
    // The first request queue holds the stalled READ: this READ of LUN 1
    // goes to the other one (the driver picks the queue with fewer in
    // flight), whose thread is not waiting on the slow server.
    let r = drv
        .send_command(
            0,
            1,
            ScsiCommand::Read {
                lba: 0,
                blocks: 8,
                block_size: BS,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert!(
        !stalled.is_finished(),
        "LUN 1 waited for LUN 0's server: {:?}",
        t.elapsed()
    );
    // A slow reply within the timeout is a success, not an error.
    let r = stalled.await.unwrap();
    assert!(r.is_good(), "{r:?}");
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_slow_server_holds_no_other_lun_of_its_request_queue() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow.sock");
    let file = dir.path().join("disk.img");
    std::fs::write(&file, vec![0x5Au8; 1 << 20]).unwrap();
    // One request queue for both LUNs: LUN 0's reads take 3 s (within
    // its 20 s timeout); LUN 1 is a file.
    let _s = nbdkit_unix(&slow, &["--filter=delay", "memory", "8M", "rdelay=3"]);
    let (_d, vs) = daemon_queues(
        dir.path(),
        &[
            format!("0:0={}", unix_uri(&slow, "&timeout=20")),
            format!("0:1={}", file.display()),
        ],
        &[],
        1,
    );
    let drv = std::sync::Arc::new(connect_queues(&vs, 1).await);
    // Several READs of the slow LUN in flight at once on the one queue...
    let slow_reads: Vec<_> = (0..4u64)
        .map(|i| {
            let d = drv.clone();
            tokio::spawn(async move { read(&d, i * 8, 8).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and a READ of the file LUN behind them on the same queue is
    // answered while they still wait for the server.
    let r = drv
        .send_command(
            0,
            1,
            ScsiCommand::Read {
                lba: 0,
                blocks: 8,
                block_size: BS,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert!(r.data.iter().all(|&b| b == 0x5A));
    let pending = slow_reads.iter().filter(|h| !h.is_finished()).count();
    assert_eq!(
        pending, 4,
        "the file LUN's READ waited for the NBD server's replies"
    );
    // A TEST UNIT READY of the file LUN is not held either (only commands
    // of the network LUN itself wait for its transfers).
    let r = drv
        .send_command(0, 1, raw(vec![0u8; 6], vec![], 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(slow_reads.iter().filter(|h| !h.is_finished()).count(), 4);
    for h in slow_reads {
        let r = h.await.unwrap();
        assert!(r.is_good(), "{r:?}");
    }
}

#[tokio::test]
async fn a_toml_image_and_add_lun_take_nbd_uris() {
    if !have("qemu-nbd", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    std::fs::write(&a, pattern(0, 8192, BS, 21)).unwrap();
    std::fs::File::create(&b).unwrap().set_len(8 << 20).unwrap();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let _qa = qemu_nbd_unix(&sa, &a, &["-f", "raw"]);
    let _qb = qemu_nbd_unix(&sb, &b, &["-f", "raw"]);
    // A relative socket path in the TOML is the configuration's; the image
    // URI is taken as it is (no file check, no path joined to it).
    let run = common::RunningService::start(
        dir.path(),
        &format!(
            "[[controller]]\nsocket = \"c.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n",
            unix_uri(&sa, "&timeout=5")
        ),
    );
    let drv = Driver::connect(dir.path().join("c.sock"), QueueConfig::default())
        .await
        .expect("driver connects");
    let r = read(&drv, 100, 4).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data, pattern(100, 4, BS, 21));

    let added = run
        .call(
            "add_lun",
            serde_json::json!({"target": 0, "lun": 1, "image": unix_uri(&sb, "")}),
        )
        .await;
    assert_eq!(added["capacity_blocks"], 16384, "{added}");
    let w = drv
        .send_command(
            0,
            1,
            ScsiCommand::Write {
                lba: 7,
                blocks: 1,
                data: vec![0x77; 512],
            },
        )
        .await
        .unwrap();
    assert!(w.is_good(), "{w:?}");
    let removed = run
        .call("remove_lun", serde_json::json!({"target": 0, "lun": 1}))
        .await;
    assert!(removed.is_object(), "{removed}");
    drop(drv);
    drop(run);
    // The write went through the export into the file.
    assert_eq!(common::host_read(&b, 7 * 512, 512), vec![0x77; 512]);
}
