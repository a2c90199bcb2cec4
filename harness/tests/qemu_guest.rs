//! A real Linux guest in QEMU uses our disks (issue 7).
//!
//! `cargo test -p vscsi --test qemu_guest -- --nocapture`
//!
//! Builds the guest boot image with `images/build-guest.sh` (cached and
//! idempotent), starts the `vscsi-backend` binary with disks 0:0, 0:1
//! (read-only), 0:2 (thin, sparse image), 1:0 (4096-byte blocks), 1:1, a
//! CD-ROM at 2:0 (an ISO made with genisoimage), 4:0 on network storage (a
//! qcow2 the test exports with `qemu-nbd` over a unix socket, given to the
//! daemon as an `nbd+unix://` URI) and a control socket, and
//! otherwise the daemon's default options, boots the Debian kernel in QEMU
//! (TCG) on `-smp 2` with `-device vhost-user-scsi-pci` and QEMU's default
//! device properties (so `num_queues` is the vCPU count, 2), runs `tests/guest/battery.sh` inside
//! the guest (given through fw_cfg), and parses its `VSCSI-RESULT` lines: each
//! is one check. After poweroff the host checks that the image files hold the
//! patterns the guest wrote (for 4:0, in the qcow2 read back through
//! `qemu-img convert` once qemu-nbd has exited), and that the thin image lost
//! the blocks the guest discarded. Without qemu-nbd or qemu-img only the NBD
//! LUN is left out, with a loud SKIP (a failure with `VSCSI_REQUIRE_TOOLS`).
//!
//! While the guest runs, the test tails the serial log: on each
//! `VSCSI-WAIT <name>` line it calls the daemon's control socket (hot-plug
//! add / resize / remove of 3:0, set / clear a latency fault on 1:1); the
//! guest polls for the effect with a time limit.
//!
//! Without QEMU or a kernel the test prints a loud SKIP and passes, unless
//! `VSCSI_REQUIRE_GUEST_TEST=1` (CI) makes it fail. Logs (serial console,
//! daemon with RUST_LOG=debug, QEMU, the script) are kept in
//! `target/qemu-guest/` and printed on failure.
//!
//! Knobs: `VSCSI_BACKEND=/path/to/vscsi-backend` (skip the build),
//! `VSCSI_GUEST_CACHE=DIR` (image cache), `VSCSI_GUEST_ACCEL=kvm` (default
//! `tcg,thread=multi`), `VSCSI_GUEST_TIMEOUT=SECS` (default 240).

#[path = "common/backend_bin.rs"]
mod backend_bin;
#[path = "common/guest.rs"]
mod guest;
#[path = "common/qemu_nbd.rs"]
mod qemu_nbd;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{backend_binary, profile_dir};
use guest::{
    build_guest_image, in_path, loud, md5_hex, parse_results, secs, skipped, stop_daemon, tail,
    uptime_at, wait_socket, Check, Guard,
};

const MIB: u64 = 1 << 20;
const VENDOR: &str = "VSCSI";
const PRODUCT: &str = "VIRTUAL-DISK";
/// vCPUs of the guest, and so its request queues: QEMU's vhost-user-scsi-pci
/// defaults `num_queues` to the vCPU count, and the daemon's default offers more.
const QUEUES: u32 = 2;
const BATTERY: &str = include_str!("guest/battery.sh");

struct Lun {
    target: u8,
    lun: u16,
    size: u64,
    block_size: u32,
    read_only: bool,
    file: PathBuf,
}

impl Lun {
    fn tl(&self) -> String {
        format!("{}:{}", self.target, self.lun)
    }
}

/// A deterministic byte pattern (xorshift), for the read-only image.
fn fill_pattern(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Builds an ISO 9660 image (Rock Ridge) of `dir` with genisoimage, or xorriso.
fn make_iso(dir: &Path, iso: &Path) {
    let mut cmd = if in_path("genisoimage").is_some() {
        Command::new("genisoimage")
    } else {
        let mut c = Command::new("xorriso");
        c.args(["-as", "mkisofs"]);
        c
    };
    let out = cmd
        .args(["-quiet", "-r", "-V", "VSCSI_CD", "-o"])
        .arg(iso)
        .arg(dir)
        .output()
        .expect("cannot run genisoimage / xorriso");
    assert!(
        out.status.success(),
        "making {} failed: {}",
        iso.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One JSON-RPC 2.0 call on the daemon's control socket: one request line,
/// one response line. Ok(response) when it has a `result`.
fn rpc(control: &Path, id: u32, method: &str, params: &str) -> Result<String, String> {
    let call = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(control)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        writeln!(
            s,
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
        )?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    };
    match call() {
        Ok(resp) if resp.contains("\"result\"") && !resp.contains("\"error\"") => Ok(resp),
        Ok(resp) => Err(format!("{method} {params}: {resp}")),
        Err(e) => Err(format!("{method} {params}: {e}")),
    }
}

/// Allocated bytes of a file (st_blocks x 512).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[test]
fn linux_guest_uses_our_disks() {
    let mut test_start = Instant::now();
    if skipped("qemu_guest") {
        return;
    }

    let (kernel, initrd) = build_guest_image();
    let backend = backend_binary();

    // Logs where CI (and people) find them.
    let logs = profile_dir().parent().unwrap().join("qemu-guest");
    fs::create_dir_all(&logs).unwrap();
    // One run at a time per target dir: two runs (say `cargo test --workspace`
    // and a run by hand) would overwrite each other's logs, and two TCG guests
    // on a 2-core machine make every time limit twice as tight. The lock goes
    // with the process.
    let lock = File::create(logs.join(".lock")).unwrap();
    let t = Instant::now();
    // SAFETY: flock on a file descriptor we own for the whole test.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        panic!(
            "flock {}: {}",
            logs.join(".lock").display(),
            std::io::Error::last_os_error()
        );
    }
    if t.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "waited {:.1} s for another qemu_guest run (lock {})",
            t.elapsed().as_secs_f64(),
            logs.join(".lock").display()
        );
    }
    test_start += t.elapsed(); // the whole test's time leaves the wait out
    let serial_log = logs.join("serial.log");
    let daemon_log = logs.join("daemon.log");
    let qemu_log = logs.join("qemu.log");
    for f in [&serial_log, &daemon_log, &qemu_log] {
        let _ = fs::remove_file(f);
    }

    // Images: 2 targets x 2 LUNs.
    let dir = tempfile::tempdir().unwrap();
    let mk = |target, lun, size, block_size, read_only| Lun {
        target,
        lun,
        size,
        block_size,
        read_only,
        file: dir.path().join(format!("t{target}l{lun}.img")),
    };
    let luns = [
        mk(0, 0, 64 * MIB, 512, false),  // fio verify, pattern at 32 MiB
        mk(0, 1, 16 * MIB, 512, true),   // read-only, pre-filled
        mk(1, 0, 64 * MIB, 4096, false), // 4 KiB blocks: ext4
        mk(1, 1, 32 * MIB, 512, false),  // LUN reset, pattern at 1 MiB, slow LUN
        mk(0, 2, 32 * MIB, 512, false),  // thin: sparse image, discard
    ];
    let thin = &luns[4];
    // Not in `luns` (they are not plain disks from the start): the CD-ROM at
    // 2:0 and the LUN the host hot-plugs at 3:0 through the control socket.
    let cd_tl = "2:0";
    let hot_tl = "3:0";
    let (hot_target, hot_lun) = (3, 0);
    let hot_size = 16 * MIB;
    let hot_new_size = 24 * MIB;
    let hot_file = dir.path().join("t3l0-hot.img");
    File::create(&hot_file).unwrap().set_len(hot_size).unwrap();
    let (slow_target, slow_lun, slow_ms) = (1, 1, 200);
    let cd_dir = dir.path().join("cd");
    fs::create_dir(&cd_dir).unwrap();
    let cd_content = fill_pattern(300_000, 0xcdcd_0001_2345_6789);
    fs::write(cd_dir.join("data.bin"), &cd_content).unwrap();
    fs::write(cd_dir.join("README.TXT"), b"vscsi guest test CD\n").unwrap();
    let cd_md5 = md5_hex(&cd_content);
    let iso = dir.path().join("cd.iso");
    make_iso(&cd_dir, &iso);
    let ro_content = fill_pattern(16 * MIB as usize, 0x5eed_1234_abcd_0042);
    for l in &luns {
        let f = File::create(&l.file).unwrap();
        f.set_len(l.size).unwrap();
        if l.read_only {
            f.write_all_at(&ro_content, 0).unwrap();
        }
    }
    let ro_md5_first_mib = md5_hex(&ro_content[..MIB as usize]);
    // The LUN on network storage: alone on its target, like the hot LUN, so
    // the other targets' REPORT LUNS counts do not depend on qemu-nbd.
    let nbd_tl = "4:0";
    let nbd_size = 32 * MIB;
    let mut nbd = qemu_nbd::available().then(|| qemu_nbd::QemuNbd::start(dir.path(), nbd_size));
    let ro_md5_all = md5_hex(&ro_content);

    // The daemon binary, with debug logs.
    let socket = dir.path().join("vscsi.sock");
    let control = dir.path().join("ctl.sock");
    let mut args: Vec<String> = vec![
        "--socket".into(),
        socket.display().to_string(),
        "--control".into(),
        control.display().to_string(),
    ];
    for l in &luns {
        let mut spec = format!("{}={}", l.tl(), l.file.display());
        if l.read_only {
            spec.push_str(",ro");
        }
        if l.block_size != 512 {
            spec.push_str(&format!(",bs={}", l.block_size));
        }
        args.push("--lun".into());
        args.push(spec);
    }
    args.push("--lun".into());
    args.push(format!("{cd_tl}={},cdrom", iso.display()));
    if let Some(n) = &nbd {
        args.push("--lun".into());
        args.push(format!("{nbd_tl}={}", n.uri()));
    }
    let dlog = File::create(&daemon_log).unwrap();
    let daemon = Command::new(&backend)
        .args(&args)
        .env(
            "RUST_LOG",
            std::env::var("VSCSI_GUEST_RUST_LOG").unwrap_or_else(|_| "debug".into()),
        )
        .stdout(dlog.try_clone().unwrap())
        .stderr(dlog)
        .spawn()
        .expect("cannot start vscsi-backend");
    let mut daemon = Guard(Some(daemon), "vscsi-backend");
    eprintln!("daemon: {} {}", backend.display(), args.join(" "));
    wait_socket(&socket, daemon.0.as_mut().unwrap(), &daemon_log);

    // The guest's script: expectations, then the battery.
    let mut lun_list: Vec<String> = luns
        .iter()
        .map(|l| {
            format!(
                "{}:{}:{}:{}",
                l.tl(),
                l.size,
                l.block_size,
                if l.read_only { "ro" } else { "rw" }
            )
        })
        .collect();
    // Every per-LUN check runs on the NBD LUN too: none is skipped because
    // the medium is remote.
    if nbd.is_some() {
        lun_list.push(format!("{nbd_tl}:{nbd_size}:512:rw"));
    }
    let nbd_pattern_off = 8 * MIB;
    let patterns = [("0:0", 32 * MIB), ("1:1", MIB)];
    let pattern_list: Vec<String> = patterns
        .iter()
        .map(|(tl, off)| format!("{tl}:{off}"))
        .collect();
    let script = format!(
        "#!/bin/sh\nLUNS=\"{}\"\nVENDOR=\"{VENDOR}\"\nPRODUCT=\"{PRODUCT}\"\nRO_MD5={ro_md5_first_mib}\n\
         FIO_LUN=0:0\nFS_LUN=1:0\nRESET_LUN=1:1\nPATTERN_LUNS=\"{}\"\nQUEUES={QUEUES}\n\
         CD_LUN={cd_tl}\nCD_FILE=data.bin\nCD_MD5={cd_md5}\nTHIN_LUN={}\n\
         HOT_LUN={hot_tl}\nHOT_SIZE={hot_size}\nHOT_NEW_SIZE={hot_new_size}\n\
         SLOW_LUN={slow_target}:{slow_lun}\nSLOW_MS={slow_ms}\n\
         NBD_LUN={}\nNBD_SIZE={nbd_size}\nNBD_OFFSET={nbd_pattern_off}\n{BATTERY}",
        lun_list.join(" "),
        pattern_list.join(" "),
        thin.tl(),
        if nbd.is_some() { nbd_tl } else { "" },
    );
    let script_path = logs.join("test.sh");
    fs::write(&script_path, &script).unwrap();

    // QEMU.
    let accel = std::env::var("VSCSI_GUEST_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".into());
    let limit = Duration::from_secs(
        std::env::var("VSCSI_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(240),
    );
    let qemu_args: Vec<String> = [
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-accel",
        &accel,
        "-cpu",
        "max",
        "-smp",
        &QUEUES.to_string(),
        "-m",
        "512M",
        "-object",
        "memory-backend-memfd,id=mem,size=512M,share=on",
        "-machine",
        "q35,memory-backend=mem",
        "-chardev",
        &format!("socket,id=vus,path={}", socket.display()),
        "-device",
        "vhost-user-scsi-pci,chardev=vus",
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
    .map(|s| s.to_string())
    .collect();
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

    // Host actions on `VSCSI-WAIT <name>` markers (complete lines only).
    let mut handled: BTreeSet<String> = BTreeSet::new();
    let mut host_checks: BTreeMap<String, Check> = BTreeMap::new();
    let mut rpc_id = 100;
    let mut seen_init: Option<Duration> = None;
    let mut seen_done: Option<Duration> = None;
    let mut timed_out = false;
    let qemu_status = loop {
        let serial = fs::read_to_string(&serial_log).unwrap_or_default();
        if seen_init.is_none() && serial.contains("VSCSI-INIT") {
            seen_init = Some(qemu_start.elapsed());
        }
        if seen_done.is_none() && serial.contains("VSCSI-DONE") {
            seen_done = Some(qemu_start.elapsed());
        }
        for line in serial.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let Some(at) = line.find("VSCSI-WAIT ") else {
                continue;
            };
            let name = line[at + 11..].trim().to_string();
            if !handled.insert(name.clone()) {
                continue;
            }
            let (method, params) = match name.as_str() {
                "hotplug-add" => (
                    "add_lun",
                    format!(
                        r#"{{"target":{hot_target},"lun":{hot_lun},"image":"{}"}}"#,
                        hot_file.display()
                    ),
                ),
                "hotplug-resize" => (
                    "resize_lun",
                    format!(r#"{{"target":{hot_target},"lun":{hot_lun},"size":{hot_new_size}}}"#),
                ),
                "hotplug-remove" => (
                    "remove_lun",
                    format!(r#"{{"target":{hot_target},"lun":{hot_lun}}}"#),
                ),
                "fault-set" => (
                    "set_fault",
                    format!(
                        r#"{{"target":{slow_target},"lun":{slow_lun},"fault":"latency={slow_ms}ms"}}"#
                    ),
                ),
                "fault-clear" => (
                    "clear_fault",
                    format!(r#"{{"target":{slow_target},"lun":{slow_lun}}}"#),
                ),
                other => {
                    host_checks.insert(
                        format!("ctl-{other}"),
                        Check {
                            status: "FAIL".into(),
                            detail: "unknown VSCSI-WAIT marker".into(),
                        },
                    );
                    continue;
                }
            };
            rpc_id += 1;
            let t = Instant::now();
            let r = rpc(&control, rpc_id, method, &params);
            eprintln!(
                "[{:.1} s] {name}: {method} {params} -> {r:?} ({:.0} ms)",
                qemu_start.elapsed().as_secs_f64(),
                t.elapsed().as_secs_f64() * 1000.0
            );
            host_checks.insert(
                format!("ctl-{name}"),
                match r {
                    Ok(resp) => Check {
                        status: "PASS".into(),
                        detail: format!("{method}: {resp}"),
                    },
                    Err(e) => Check {
                        status: "FAIL".into(),
                        detail: e,
                    },
                },
            );
        }
        if let Some(st) = qemu.0.as_mut().unwrap().try_wait().unwrap() {
            break Some(st);
        }
        if qemu_start.elapsed() > limit {
            timed_out = true;
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
    let mut results = parse_results(&serial);
    results.extend(host_checks);

    // The NBD export, now that the daemon has flushed and let go of it: stop
    // qemu-nbd (it writes the qcow2's metadata) and flatten the image to raw,
    // where the host-pattern check below reads what the guest wrote.
    let nbd_raw = dir.path().join("nbd.raw");
    if let Some(n) = nbd.as_mut() {
        let stopped = n.stop();
        let converted = n.convert_to_raw(&nbd_raw);
        results.insert(
            "host-nbd-image".into(),
            match (stopped, converted) {
                (true, Ok(())) => Check {
                    status: "PASS".into(),
                    detail: format!("qemu-nbd exited 0; {} converted to raw", n.image.display()),
                },
                (false, _) => Check {
                    status: "FAIL".into(),
                    detail: "qemu-nbd did not exit 0 on SIGTERM".into(),
                },
                (true, Err(e)) => Check {
                    status: "FAIL".into(),
                    detail: e,
                },
            },
        );
    }

    // Host side: the image files hold what the guest wrote.
    let mut pattern_lines = 0;
    for line in serial
        .lines()
        .filter_map(|l| l.find("VSCSI-PATTERN ").map(|at| &l[at + 14..]))
    {
        let f: Vec<&str> = line.trim_end_matches('\r').split_whitespace().collect();
        let [tl, off, len, md5] = f[..] else { continue };
        pattern_lines += 1;
        let name = format!("host-pattern-{tl}");
        let check = match (
            luns.iter()
                .map(|l| (l.tl(), l.file.clone()))
                .chain([(hot_tl.to_string(), hot_file.clone())])
                .chain(nbd.is_some().then(|| (nbd_tl.to_string(), nbd_raw.clone())))
                .find(|(t, _)| t == tl),
            off.parse::<u64>(),
            len.parse::<usize>(),
        ) {
            (Some((_, file)), Ok(off), Ok(len)) => {
                let mut buf = vec![0u8; len];
                let read = File::open(&file).and_then(|f| f.read_exact_at(&mut buf, off));
                let got = md5_hex(&buf);
                if let Err(e) = read {
                    Check {
                        status: "FAIL".into(),
                        detail: format!("reading {} at {off}: {e}", file.display()),
                    }
                } else if got == md5 {
                    Check {
                        status: "PASS".into(),
                        detail: format!("{} at {off}: md5 {got}", file.display()),
                    }
                } else {
                    Check {
                        status: "FAIL".into(),
                        detail: format!("image has md5 {got}, guest wrote {md5}"),
                    }
                }
            }
            _ => Check {
                status: "FAIL".into(),
                detail: format!("bad pattern line: {line}"),
            },
        };
        results.insert(name, check);
    }
    // The thin LUN: the guest wrote 8 MiB and discarded the first 6 MiB, so
    // the sparse image holds about 2 MiB (the daemon punched holes).
    let thin_alloc = allocated(&thin.file);
    let written = 8 * MIB;
    results.insert(
        format!("host-thin-{}", thin.tl()),
        if !serial.contains("VSCSI-THIN ") {
            Check {
                status: "FAIL".into(),
                detail: "the guest printed no VSCSI-THIN line".into(),
            }
        } else if (2 * MIB..=4 * MIB).contains(&thin_alloc) {
            Check {
                status: "PASS".into(),
                detail: format!(
                    "{} allocates {} KiB after 8192 KiB written and 6144 KiB discarded",
                    thin.file.display(),
                    thin_alloc / 1024
                ),
            }
        } else {
            Check {
                status: "FAIL".into(),
                detail: format!(
                    "{} allocates {} KiB after {} KiB written and 6144 KiB discarded (want 2048..=4096 KiB)",
                    thin.file.display(),
                    thin_alloc / 1024,
                    written / 1024
                ),
            }
        },
    );
    let ro_now = md5_hex(&fs::read(&luns[1].file).unwrap());
    results.insert(
        "host-ro-unchanged".into(),
        if ro_now == ro_md5_all {
            Check {
                status: "PASS".into(),
                detail: "read-only image unchanged".into(),
            }
        } else {
            Check {
                status: "FAIL".into(),
                detail: format!("read-only image md5 {ro_now}, was {ro_md5_all}"),
            }
        },
    );

    // Which checks must be there, and which may SKIP.
    let mut required: Vec<String> = [
        "hba",
        "mq-queues",
        "fio-verify",
        "mq-both-used",
        "fs-mkfs",
        "fs-mount",
        "fs-write",
        "fs-readback",
        "fs-fsck",
        "reset-lun-1:1",
        "io-after-reset-1:1",
        "cd-present",
        "cd-mount",
        "cd-read",
        "cd-eject",
        "cd-gone",
        "thin-discard-limits",
        "thin-write",
        "thin-blkdiscard",
        "thin-kept",
        "host-thin-0:2",
        "host-pattern-0:2",
        "hotplug-add",
        "hotplug-lun-number",
        "hotplug-io",
        "hotplug-resize",
        "hotplug-remove",
        "host-pattern-3:0",
        "ctl-hotplug-add",
        "ctl-hotplug-resize",
        "ctl-hotplug-remove",
        "fault-slow",
        "fault-clear",
        "ctl-fault-set",
        "ctl-fault-clear",
        // SBC_EXTRA: the SBC-4 commands beyond the core set, with sg_raw.
        "sbc-write-and-verify12",
        "sbc-verify12",
        "sbc-verify12-miscompare",
        "sbc-prefetch10",
        "sbc-prefetch16",
        "sbc-atomic-limits",
        "sbc-write-atomic",
        "sbc-write-atomic-data",
        "sbc-write-atomic-too-long",
        "sbc-defect10",
        "sbc-defect12",
        "sbc-log-pages",
        "sbc-log-ie",
        "sbc-log-sp",
        "sbc-format-unit",
        "sbc-format-keeps-data",
        "sbc-format-defect-list",
        "sbc-buffer",
        "sbc-opcodes-count",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let nbd_lun = nbd.is_some().then(|| (nbd_tl.to_string(), false));
    for (tl, read_only) in luns.iter().map(|l| (l.tl(), l.read_only)).chain(nbd_lun) {
        for c in [
            "present",
            "inquiry",
            "vpd00",
            "vpd80",
            "vpd83",
            "vpdb0",
            "vpdb1",
            "vpdb2",
            "readcap",
            "sysfs-size",
            "luns",
            "tur",
            "modes",
            "requests",
            "sync",
            "opcodes",
        ] {
            required.push(format!("{c}-{tl}"));
        }
        if read_only {
            required.extend([
                format!("ro-flag-{tl}"),
                format!("ro-write-refused-{tl}"),
                format!("ro-read-{tl}"),
            ]);
        } else {
            required.push(format!("rw-flag-{tl}"));
        }
    }
    for (tl, _) in patterns {
        required.push(format!("pattern-{tl}"));
        required.push(format!("host-pattern-{tl}"));
    }
    if nbd.is_some() {
        for c in ["nbd-size", "nbd-pattern", "host-pattern"] {
            required.push(format!("{c}-{nbd_tl}"));
        }
        required.push("host-nbd-image".into());
    }
    // Every check must pass: the daemon now serves all the VPD pages and
    // REPORT SUPPORTED OPERATION CODES that earlier versions skipped.
    let may_skip = |_: &str| false;

    let mut failures = Vec::new();
    let mut no_result = Vec::new();
    for name in &required {
        match results.get(name) {
            None => no_result.push(name.as_str()),
            Some(c) if c.status == "PASS" => {}
            Some(c) if c.status == "SKIP" && may_skip(name) => {}
            Some(c) => failures.push(format!("{name}: {} {}", c.status, c.detail)),
        }
    }
    for (name, c) in &results {
        if c.status == "FAIL" && !required.contains(name) {
            failures.push(format!("{name}: FAIL {}", c.detail));
        }
    }
    if !no_result.is_empty() {
        failures.push(format!(
            "{} check(s) printed no result: {}",
            no_result.len(),
            no_result.join(" ")
        ));
    }
    let done = serial.contains("VSCSI-DONE");
    if !done {
        failures.push(if timed_out {
            format!(
                "VSCSI-DONE never appeared: QEMU killed after {} s",
                limit.as_secs()
            )
        } else {
            format!("VSCSI-DONE never appeared: QEMU exited with {qemu_status:?}")
        });
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

    // Report.
    let mut report = String::new();
    report.push_str(&format!("\n{:-^78}\n", " QEMU guest checks "));
    for (name, c) in &results {
        report.push_str(&format!("{:<28} {:<4} {}\n", name, c.status, c.detail));
    }
    let init_up = uptime_at(&serial, "VSCSI-INIT");
    let done_up = uptime_at(&serial, "VSCSI-DONE");
    let battery = match (init_up, done_up) {
        (Some(a), Some(b)) => format!("{:.1} s", b - a),
        _ => "-".into(),
    };
    let count = |st: &str| results.values().filter(|c| c.status == st).count();
    let summary = format!(
        "qemu_guest: {} PASS, {} SKIP, {} FAIL, {} failure(s); accel {accel}: init reached {} after \
         QEMU start (guest uptime {}), battery {battery}, QEMU ran {:.1} s, VSCSI-DONE at {}, \
         whole test {:.1} s; logs in {}",
        count("PASS"),
        count("SKIP"),
        count("FAIL"),
        failures.len(),
        secs(seen_init),
        init_up.map(|u| format!("{u:.1} s")).unwrap_or("-".into()),
        qemu_time.as_secs_f64(),
        secs(seen_done),
        test_start.elapsed().as_secs_f64(),
        logs.display()
    );
    eprint!("{report}");
    loud(&summary);
    if pattern_lines == 0 {
        eprintln!("(the guest printed no VSCSI-PATTERN line)");
    }

    if !failures.is_empty() {
        let daemon_text = fs::read_to_string(&daemon_log).unwrap_or_default();
        eprintln!("{:=^78}\n{serial}", " serial console ");
        eprintln!(
            "{:=^78}\n{}",
            format!(
                " daemon log (RUST_LOG=debug, last 300 of {} lines; full log {}) ",
                daemon_text.lines().count(),
                daemon_log.display()
            ),
            tail(&daemon_text, 300)
        );
        eprintln!(
            "{:=^78}\n{}",
            " qemu stdout/stderr ",
            fs::read_to_string(&qemu_log).unwrap_or_default()
        );
        panic!(
            "{} guest check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}
