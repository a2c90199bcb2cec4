//! Who owns a socket path: a second daemon refuses a path a live daemon
//! listens on (and the first keeps serving), and a daemon whose socket file
//! was removed under it still stops on SIGTERM.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vscsi-backend");

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    p
}

fn spawn(sock: &Path, img: &Path) -> Child {
    Command::new(BIN)
        .args(["--socket", sock.to_str().unwrap(), img.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("daemon did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// VHOST_USER_GET_FEATURES (request 1, version 1 flags): the reply is a
/// 12-byte header with the reply flag (0x4) and a u64 payload.
fn get_features(sock: &Path) -> u64 {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    s.write_all(&msg).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_le_bytes(reply[0..4].try_into().unwrap()), 1);
    assert_eq!(
        u32::from_le_bytes(reply[4..8].try_into().unwrap()) & 0x4,
        0x4
    );
    assert_eq!(u32::from_le_bytes(reply[8..12].try_into().unwrap()), 8);
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}

#[test]
fn a_second_daemon_refuses_a_live_socket_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vs.sock");
    let mut first = spawn(&sock, &image(dir.path(), "a.img"));
    wait_for(&sock);
    let second = Command::new(BIN)
        .args([
            "--socket",
            sock.to_str().unwrap(),
            image(dir.path(), "b.img").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!second.status.success(), "second daemon must fail");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!(
            "{} is in use: process {} is listening on it",
            sock.display(),
            first.id()
        )),
        "names the path and the pid: {err}"
    );
    // VIRTIO_F_VERSION_1 (bit 32) and VHOST_USER_F_PROTOCOL_FEATURES (bit 30).
    let features = get_features(&sock);
    assert_eq!(features & (1 << 32 | 1 << 30), 1 << 32 | 1 << 30);
    sigterm(&first);
    assert!(wait_exit(&mut first, Duration::from_secs(5)).success());
    assert!(!sock.exists(), "socket removed on exit");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vs.sock");
    // Bound then closed: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let stale = std::fs::metadata(&sock).unwrap().ino();
    let mut d = spawn(&sock, &image(dir.path(), "a.img"));
    // The daemon replaces the file with its own socket (a new inode). Ready
    // is read from the file, not probed by connecting: a probe connection
    // would be the daemon's one frontend until it noticed the probe's end.
    let start = Instant::now();
    while std::fs::metadata(&sock).map(|m| m.ino()).unwrap_or(stale) == stale {
        assert!(d.try_wait().unwrap().is_none(), "daemon exited");
        assert!(start.elapsed() < Duration::from_secs(10), "never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    get_features(&sock);
    sigterm(&d);
    assert!(wait_exit(&mut d, Duration::from_secs(5)).success());
}

#[test]
fn sigterm_stops_a_daemon_whose_socket_file_was_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vs.sock");
    let mut d = spawn(&sock, &image(dir.path(), "a.img"));
    wait_for(&sock);
    get_features(&sock);
    std::fs::remove_file(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    sigterm(&d);
    assert!(wait_exit(&mut d, Duration::from_secs(3)).success());
}

#[test]
fn sigterm_stops_a_daemon_with_a_frontend_attached() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vs.sock");
    let mut d = spawn(&sock, &image(dir.path(), "a.img"));
    wait_for(&sock);
    // A frontend that negotiated and stays connected.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    sigterm(&d);
    assert!(wait_exit(&mut d, Duration::from_secs(3)).success());
    assert!(!sock.exists(), "socket removed on exit");
}
