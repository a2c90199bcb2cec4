//! What a new user of the `vscsi` binary runs into after the first
//! commands: exit codes as `vscsi --help` documents them (2 for a usage
//! mistake, 1 for a CHECK CONDITION or a LUN that does not exist),
//! ranges checked against the capacity up front, sizes that say they
//! clamp, and logs without colour codes when not on a terminal.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::TestDaemon;
use vscsi_backend::vhost::DeviceOptions;

const MIB: u64 = 1 << 20;

fn vscsi(d: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    vscsi_env(d, args, &[])
}

fn vscsi_env(d: &TestDaemon, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_mistakes_exit_2() {
    let d = TestDaemon::start(&[(0, 0, 8 * MIB, false)]);
    let (code, _, err) = vscsi(&d, &["read", "--blocks", "0", "--out", "/dev/null"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--blocks must be at least 1"), "{err}");

    let (code, _, err) = vscsi(&d, &["tmf", "abort"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs --tag"), "{err}");

    // A --bs the LUN's 512-byte blocks do not divide names --bs, not a
    // flag bench does not have.
    let (code, _, err) = vscsi(&d, &["bench", "--bs", "1000", "--runtime", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bs 1000"), "{err}");
    assert!(!err.contains("--max-transfer"), "{err}");
}

#[test]
fn read_past_the_end_is_refused_up_front_naming_the_last_lba() {
    let d = TestDaemon::start(&[(0, 0, 8 * MIB, false)]);
    let (code, out, err) = vscsi(&d, &["read", "--lba", "16000", "--blocks", "1000"]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "nothing read before the refusal");
    assert!(err.contains("last LBA is 16383"), "{err}");
    // The last block itself is fine.
    let (code, out, err) = vscsi(&d, &["read", "--lba", "16383", "--blocks", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 512);
}

#[test]
fn sizes_larger_than_the_lun_say_they_clamp() {
    let d = TestDaemon::start(&[(0, 0, 4 * MIB, false)]);
    let (code, out, err) = vscsi(&d, &["verify", "--size", "64M", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("clamped to 4194304 bytes"), "{err}");
    let (code, out, err) = vscsi(
        &d,
        &[
            "bench",
            "--size",
            "64M",
            "--runtime",
            "0.2",
            "--no-progress",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("clamped to 4194304 bytes"), "{err}");
}

#[test]
fn inquiry_of_a_missing_lun_exits_1() {
    let d = TestDaemon::start(&[(0, 0, 4 * MIB, false)]);
    let (code, out, err) = vscsi(&d, &["inquiry", "--lun", "5"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("0:5 does not exist"), "{err}");
    let (code, _, _) = vscsi(&d, &["inquiry", "--lun", "0"]);
    assert_eq!(code, 0);
}

#[test]
fn bench_exits_1_on_a_check_condition() {
    let faults = Arc::new(vscsi_backend::fault::FaultTable::default());
    let opts = DeviceOptions {
        faults: faults.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 4 * MIB, false)], opts);
    faults.set(0, 0, "fail=1".parse().unwrap());
    let (code, out, err) = vscsi(&d, &["bench", "--runtime", "1", "--no-progress"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("HARDWARE ERROR"), "{err}");
}

#[test]
fn logs_have_no_colour_codes_when_not_on_a_terminal() {
    let d = TestDaemon::start(&[(0, 0, 4 * MIB, false)]);
    let (code, _, err) = vscsi_env(&d, &["tur"], &[("RUST_LOG", "debug")]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.is_empty(), "debug logs expected");
    assert!(!err.contains('\x1b'), "{err:?}");
}

#[test]
fn bench_randrw_reports_read_and_write_like_fio() {
    let d = TestDaemon::start(&[(0, 0, 4 * MIB, false)]);
    let (code, out, err) = vscsi(
        &d,
        &["bench", "--rw", "randrw", "--runtime", "0.3", "--json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let job = &v["jobs"][0];
    for (dir, count) in [("read", "reads"), ("write", "writes")] {
        let s = &job[dir];
        assert!(s["iops"].as_f64().unwrap() > 0.0, "{dir}: {s}");
        assert_eq!(s["total_ios"], v[count], "{dir}");
        assert_eq!(s["clat_ns"]["N"], v[count], "{dir}");
        let p99 = s["clat_ns"]["percentile"]["99.000000"].as_u64().unwrap();
        let p50 = s["clat_ns"]["percentile"]["50.000000"].as_u64().unwrap();
        assert!(p99 >= p50 && p50 > 0, "{dir}: {s}");
        assert!(s["clat_ns"]["stddev"].as_f64().is_some());
        assert_eq!(s["io_bytes"], s["total_ios"].as_u64().unwrap() * 4096);
    }
    // The keys from before stay.
    assert!(v["iops"].as_f64().unwrap() > 0.0 && v["lat_us"]["p99"].is_number());

    let (code, out, err) = vscsi(
        &d,
        &[
            "bench",
            "--rw",
            "randrw",
            "--runtime",
            "0.3",
            "--no-progress",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("  read: IOPS="), "{out}");
    assert!(out.contains("  write: IOPS="), "{out}");
    assert_eq!(out.matches("stdev=").count(), 2, "{out}");
    assert!(out.contains("99.00th=["), "{out}");
}

#[test]
fn bench_reports_the_latency_tail_and_warns_on_slow_completions() {
    // Every command of the LUN is delayed 30 ms by the device: each one is
    // over a 10 ms threshold, none is over 60 s.
    let faults = Arc::new(vscsi_backend::fault::FaultTable::default());
    let opts = DeviceOptions {
        faults: faults.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 4 * MIB, false)], opts);
    faults.set(0, 0, "latency=30ms".parse().unwrap());
    let bench = [
        "bench",
        "--runtime",
        "0.5",
        "--iodepth",
        "2",
        "--no-progress",
    ];

    let (code, out, err) = vscsi(
        &d,
        &[&bench[..], &["--warn-latency", "10", "--json"]].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let done = v["reads"].as_u64().unwrap();
    assert!(done >= 2, "{v}");
    let t = &v["tail"];
    assert_eq!(
        t["over_warn_latency"], done,
        "every completion was over: {t}"
    );
    assert_eq!(t["warn_latency_ms"], 10.0);
    let f = |k: &str| t[k].as_f64().unwrap();
    assert!(f("p50") >= 30_000.0, "{t}");
    assert!(f("p50") <= f("p99") && f("p99") <= f("p99.99"), "{t}");
    assert!(f("p99.99") <= f("max") && f("max") >= 30_000.0, "{t}");
    assert_eq!(v["lat_us"]["p99.99"], t["p99.99"]);
    assert_eq!(v["lat_us"]["max"], t["max"]);
    assert!(
        err.contains(&format!(
            "warning: {done} of {done} completions took longer than 10 ms"
        )),
        "{err}"
    );

    let (code, out, err) = vscsi(&d, &[&bench[..], &["--warn-latency", "60000"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("tail (us):"))
        .unwrap_or_else(|| panic!("{out}"));
    for field in ["p50=", "p99=", "p99.99=", "max=", "(0 over 60000 ms)"] {
        assert!(line.contains(field), "{field}: {line}");
    }
    assert!(!err.contains("warning"), "no completion took 60 s: {err}");

    let (code, _, err) = vscsi(&d, &["bench", "--warn-latency", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--warn-latency"), "{err}");
}

/// Runs `vscsi` with stderr on a new pseudo-terminal and returns the exit
/// code and what it drew there.
fn vscsi_on_a_terminal(d: &TestDaemon, args: &[&str]) -> (i32, String) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the two ints; the
    // name, termios and window size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vscsi"));
        cmd.args(args)
            .arg("--socket")
            .arg(&d.socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(slave));
        cmd.spawn().unwrap()
        // `cmd`, and with it this side's copy of the terminal, closes here.
    };
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // Reads end with EIO once the child's side is closed.
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, reader.join().unwrap())
}

#[test]
fn read_and_verify_show_progress_only_on_a_terminal() {
    let d = TestDaemon::start(&[(0, 0, 64 * MIB, false)]);
    let out = d.dir.path().join("out.bin");
    let out = out.to_str().unwrap();
    let read = ["read", "--blocks", "131072", "--out", out];
    let (code, tty) = vscsi_on_a_terminal(&d, &read);
    assert_eq!(code, 0, "{tty}");
    assert!(tty.contains("read ["), "a bar labelled read: {tty:?}");
    assert!(tty.contains("MiB"), "{tty:?}");
    let (code, tty) = vscsi_on_a_terminal(&d, &["verify", "--size", "64M"]);
    assert_eq!(code, 0, "{tty}");
    assert!(tty.contains("write ["), "{tty:?}");
    assert!(tty.contains("read back ["), "{tty:?}");
    // With --json, even on a terminal: nothing.
    let (code, tty) = vscsi_on_a_terminal(&d, &["verify", "--size", "64M", "--json"]);
    assert_eq!(code, 0, "{tty}");
    assert!(tty.is_empty(), "{tty:?}");
    // Piped: nothing either.
    let (code, _, err) = vscsi(&d, &read);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err:?}");
}

#[test]
fn a_check_condition_exits_1_from_every_verb() {
    let faults = Arc::new(vscsi_backend::fault::FaultTable::default());
    let opts = DeviceOptions {
        faults: faults.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 4 * MIB, false)], opts);
    let block = d.dir.path().join("block.bin");
    std::fs::write(&block, vec![0u8; 512]).unwrap();
    let block = block.to_str().unwrap();
    // MEDIUM ERROR on LBAs 0..8.
    faults.set(0, 0, "error=0+8".parse().unwrap());
    for verb in [
        &["read", "--lba", "0", "--blocks", "1", "--out", "/dev/null"][..],
        &["write", "--lba", "0", "--in", block],
        &["verify", "--size", "8K"],
    ] {
        let (code, out, err) = vscsi(&d, verb);
        assert_eq!(code, 1, "{verb:?}: {out}{err}");
        assert!(err.contains("MEDIUM ERROR"), "{verb:?}: {err}");
    }
    // TEST UNIT READY to a LUN that does not exist: CHECK CONDITION.
    let (code, out, err) = vscsi(&d, &["tur", "--lun", "9"]);
    assert_eq!(code, 1, "{out}{err}");
}
