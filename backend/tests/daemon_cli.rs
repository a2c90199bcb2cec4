//! The `vscsi-backend` binary as users run it: refusing bad images before
//! the socket exists, image locking, and a clean stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vscsi-backend");

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_and_empty_images_are_refused_before_the_socket_exists() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vs.sock");
    let missing = dir.path().join("nope.img");
    let o = run(&[
        "--socket",
        sock.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("nope.img"),
        "names the image: {}",
        stderr(&o)
    );
    assert!(!sock.exists(), "no socket for a daemon that cannot serve");

    let empty = image(dir.path(), "empty.img", 0);
    let o = run(&["--socket", sock.to_str().unwrap(), empty.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("empty.img"), "{}", stderr(&o));
    assert!(!sock.exists());

    let o = run(&["--socket", sock.to_str().unwrap(), "--lun", "0:99999=x.img"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("0..=16383"), "{}", stderr(&o));
}

#[test]
fn a_second_daemon_on_the_same_image_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "shared.img", 1 << 20);
    let s1 = dir.path().join("a.sock");
    let mut first = spawn(&["--socket", s1.to_str().unwrap(), img.to_str().unwrap()]);
    wait_for(&s1);
    let s2 = dir.path().join("b.sock");
    let o = run(&["--socket", s2.to_str().unwrap(), img.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("shared.img") && err.contains("locked"),
        "{err}"
    );
    assert!(!s2.exists());
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "d.img", 1 << 20);
    let sock = dir.path().join("vs.sock");
    let mut child = spawn(&["--socket", sock.to_str().unwrap(), img.to_str().unwrap()]);
    wait_for(&sock);
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit 0 on SIGTERM, got {status:?}");
    assert!(!sock.exists(), "socket file removed");
}

#[test]
fn a_file_at_the_socket_path_is_not_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "d.img", 1 << 20);
    let not_socket = dir.path().join("precious.txt");
    std::fs::write(&not_socket, b"keep me").unwrap();
    let o = run(&[
        "--socket",
        not_socket.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a socket"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&not_socket).unwrap(), b"keep me");
}

#[test]
fn odd_sized_images_are_served_rounded_down_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "odd.img", (1 << 20) + 100);
    let sock = dir.path().join("vs.sock");
    let child = spawn(&["--socket", sock.to_str().unwrap(), img.to_str().unwrap()]);
    wait_for(&sock);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("odd.img") && err.to_lowercase().contains("round"),
        "{err}"
    );
}
