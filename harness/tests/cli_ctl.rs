//! `vscsi ctl` against a daemon's real control socket: errors in the words
//! of the command line (its flags, not the JSON-RPC params) and a clear
//! message for a path that is not a socket.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{image, RunningService};

fn ctl(control: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .arg("ctl")
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctl_errors_name_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img", 4 << 20);
    let toml = format!(
        "[[controller]]\nsocket = \"{}\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n",
        dir.path().join("vs.sock").display(),
        img.display()
    );
    let svc = RunningService::start(dir.path(), &toml);
    let control = dir.path().join("ctl.sock");
    let listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
    let service: Arc<_> = svc.service.clone();
    std::thread::spawn(move || service.serve_control(listener));

    // A flag the method needs, named as a flag; a usage mistake (2).
    let (code, _, err) = ctl(&control, &["add-lun", "--target", "0", "--lun", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("add-lun needs --image"), "{err}");

    // The daemon's own refusal, with its param spelled as the flag.
    let (code, _, err) = ctl(
        &control,
        &["resize-lun", "--target", "0", "--lun", "0", "--size", "1M"],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(!err.contains("force = true"), "{err}");

    let (code, out, err) = ctl(&control, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("a.img"), "{out}");
}

#[test]
fn ctl_on_a_path_that_is_not_a_socket_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("plain");
    std::fs::write(&f, "").unwrap();
    let (code, _, err) = ctl(&f, &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a unix socket"), "{err}");
}
