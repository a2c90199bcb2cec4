//! The `vscsi-backend` binary, for tests that need the daemon as a process
//! of its own (to kill it, or to give it to QEMU).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cargo profile directory this test binary was built into
/// (`<target-dir>/<profile>/deps/<test>-<hash>` → `<target-dir>/<profile>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent dir");
    deps.parent().expect("deps has a parent dir").to_path_buf()
}

/// The `vscsi-backend` binary to test. `cargo test` does not build the
/// binaries of a dev-dependency (only `CARGO_BIN_EXE_*` of this package
/// exist), so we run `cargo build -p vscsi-backend` with the cargo that runs
/// us, for the same profile and target dir as this test binary: a no-op of a
/// fraction of a second when it is up to date, and a stale binary from an
/// older checkout can never be tested by accident. Cargo has released its
/// build lock by the time test binaries run, so this does not deadlock.
/// `VSCSI_BACKEND=/path` skips the build.
pub fn backend_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VSCSI_BACKEND") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "VSCSI_BACKEND={} is not a file", p.display());
        return p;
    }
    let profile_dir = profile_dir();
    let target_dir = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let t = Instant::now();
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "vscsi-backend",
            "--bin",
            "vscsi-backend",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("cannot run cargo to build vscsi-backend");
    assert!(
        status.success(),
        "cargo build -p vscsi-backend --profile {profile} failed: {status}"
    );
    let bin = profile_dir.join("vscsi-backend");
    assert!(bin.is_file(), "{} missing after cargo build", bin.display());
    eprintln!(
        "vscsi-backend: {} (cargo build {:.1} s)",
        bin.display(),
        t.elapsed().as_secs_f64()
    );
    bin
}

/// A daemon process that is killed and reaped when the test lets go of it,
/// also when the test fails half-way.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One JSON-RPC 2.0 call on the daemon's control socket at `control`: its
/// `result` (panics on an error reply).
pub fn control_call(control: &Path, method: &str, params: serde_json::Value) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(control)
        .unwrap_or_else(|e| panic!("control socket {}: {e}", control.display()));
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut line =
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
            .to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("control reply {reply:?}: {e}"));
    match v.get("result") {
        Some(r) => r.clone(),
        None => panic!("{method}: {v}"),
    }
}

/// The Prometheus text of a daemon serving `--metrics unix:PATH` at `path`.
pub fn metrics_text(path: &Path) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("metrics socket {}: {e}", path.display()));
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
pub fn metric(text: &str, sample: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `fields` of every audit event (`target` `vscsi::audit`) of a daemon
/// log written with `--log-format json`, in order.
pub fn audit_events(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "vscsi::audit")
        .map(|v| v["fields"].clone())
        .collect()
}

/// A daemon configuration for restart tests in `dir`: a control socket
/// (`ctl.sock`), metrics (`metrics.sock`), one controller `vm1` on
/// `vm1.sock` with one request queue, and LUN 0:0 on `a.img` without a
/// POWER ON unit attention; `fault` is a LUN line (or empty). Written to
/// `dir/name`.
pub fn restart_config(dir: &Path, name: &str, fault: &str) -> PathBuf {
    let toml = format!(
        "control = \"{}\"\nmetrics = \"unix:{}\"\n\
         [[controller]]\nname = \"vm1\"\nsocket = \"{}\"\nqueues = 1\n\n\
         [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\npower_on_ua = false\n{fault}\n",
        dir.join("ctl.sock").display(),
        dir.join("metrics.sock").display(),
        dir.join("vm1.sock").display(),
        dir.join("a.img").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts the daemon `bin` on `config` (plus `args`), its stderr appended
/// to `log`, and waits for `socket` (a stale file is removed first).
pub fn start_daemon(bin: &Path, config: &Path, args: &[&str], log: &Path, socket: &Path) -> Child {
    let _ = std::fs::remove_file(socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("vscsi-backend starts");
    let t = Instant::now();
    while !socket.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}
