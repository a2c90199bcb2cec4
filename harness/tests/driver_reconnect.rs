//! Our driver across a daemon restart: `vscsi verify` (the CLI binary, split
//! rings so the daemon tracks them in its inflight region) runs against the
//! daemon binary, the daemon is killed with SIGKILL while commands are in
//! flight and started again with the same socket and image; verify notices
//! the loss, reconnects, the new daemon resubmits what the old one had
//! taken, and verify finishes with every block right. A daemon that never
//! comes back makes verify fail with the reconnect deadline, not hang.

#[path = "common/backend_bin.rs"]
mod backend_bin;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{backend_binary, restart_config, start_daemon};

/// Generous liveness bound for a whole verify run on a loaded machine.
const LIVENESS: Duration = Duration::from_secs(180);

/// The daemon's configuration; `fault` is a LUN fault line (or empty).
fn verify(socket: &Path, reconnect: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .arg("verify")
        .arg("--socket")
        .arg(socket)
        .args(["--size", "64M", "--no-packed", "--iodepth", "32"])
        .args(["--reconnect", reconnect])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vscsi verify starts")
}

/// Waits for `child` within [`LIVENESS`]; its status, stdout and stderr.
fn finish(mut child: Child) -> (std::process::ExitStatus, String, String) {
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > LIVENESS {
            let _ = child.kill();
            panic!("vscsi verify did not finish within {LIVENESS:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let at = text.find(prefix)? + prefix.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn image(dir: &Path) {
    std::fs::File::create(dir.join("a.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
}

#[test]
fn verify_carries_on_across_a_sigkill_and_a_restart() {
    let bin = backend_binary();
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    let socket = dir.path().join("vm1.sock");
    let log = dir.path().join("backend.log");
    // Every command waits 20 ms in the first daemon, so a kill finds
    // commands taken off the ring and not completed.
    let slow = restart_config(dir.path(), "slow.toml", "fault = \"latency=20ms\"");
    let plain = restart_config(dir.path(), "plain.toml", "");
    let mut first = start_daemon(&bin, &slow, &["--log-format", "json"], &log, &socket);
    let run = verify(&socket, "60");
    std::thread::sleep(Duration::from_millis(600));
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = start_daemon(&bin, &plain, &["--log-format", "json"], &log, &socket);
    let (status, out, err) = finish(run);
    let _ = second.kill();
    let _ = second.wait();
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "verify failed: {status}\nstdout: {out}\nstderr: {err}\ndaemon: {daemon_log}"
    );
    let lost =
        number_after(&err, "went away with ").unwrap_or_else(|| panic!("no loss reported: {err}"));
    assert!(lost > 0, "the kill found commands in flight: {err}");
    let carried =
        number_after(&err, "attempts): ").unwrap_or_else(|| panic!("no reconnect reported: {err}"));
    // Each command in flight at the loss is carried over, failed and
    // retried, or was completed by the old daemon just before it died (its
    // used entry was on the ring when the driver noticed the loss; verify's
    // success above shows its data arrived).
    let failed = number_after(&err, "carried over and resubmitted, ")
        .unwrap_or_else(|| panic!("no failed count reported: {err}"));
    assert!(
        carried > 0 && carried + failed <= lost && failed == 0,
        "commands in flight carried over (split rings: none failed): {err}"
    );
    assert!(
        daemon_log.contains("inflight-reconnect"),
        "the new daemon audited the reconnect: {daemon_log}"
    );
    // What the new daemon ran again from the region: the commands the old
    // one had taken and not completed (the others it took from the avail
    // ring as new).
    let resubmitted: u64 = daemon_log
        .lines()
        .filter(|l| l.contains("inflight-resubmit"))
        .filter_map(|l| number_after(l, "\"resubmitted\":"))
        .sum();
    assert!(
        resubmitted > 0 && resubmitted <= lost,
        "resubmitted {resubmitted} of {lost}: {daemon_log}"
    );
    eprintln!(
        "driver_reconnect: {lost} commands in flight at the kill, {carried} carried over, {resubmitted} resubmitted by the new daemon"
    );
}

#[test]
fn a_daemon_that_never_comes_back_fails_verify_at_the_deadline() {
    let bin = backend_binary();
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    let socket = dir.path().join("vm1.sock");
    let log = dir.path().join("backend.log");
    let slow = restart_config(dir.path(), "slow.toml", "fault = \"latency=20ms\"");
    let mut only = start_daemon(&bin, &slow, &["--log-format", "json"], &log, &socket);
    let run = verify(&socket, "2");
    std::thread::sleep(Duration::from_millis(600));
    only.kill().unwrap();
    only.wait().unwrap();
    let (status, out, err) = finish(run);
    assert!(!status.success(), "verify cannot pass: {out}");
    assert!(
        err.contains("did not come back"),
        "the driver says it gave up: {err}"
    );
}
