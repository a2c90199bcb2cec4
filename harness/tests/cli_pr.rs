//! `vscsi pr` and `vscsi inquiry --page 83` against the real `vscsi-backend`
//! binary serving one image on two controllers (`shared = true`): two
//! target ports to one logical unit, so two I_T nexuses (multipath).

#[path = "common/backend_bin.rs"]
mod backend_bin;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{backend_binary, KillOnDrop};
use serde_json::Value;

/// One daemon, controllers `a` and `b` sharing `shared.img` at 0:0.
struct TwoPaths {
    dir: tempfile::TempDir,
    _daemon: KillOnDrop,
    a: PathBuf,
    b: PathBuf,
}

impl TwoPaths {
    fn start(read_only: bool) -> TwoPaths {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("shared.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
        let mut toml = String::new();
        for (name, sock) in [("a", &a), ("b", &b)] {
            toml.push_str(&format!(
                "[[controller]]\nname = \"{name}\"\nsocket = \"{}\"\n\
                 [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\nshared = true\n\
                 serial = \"MPATH-1\"\nread_only = {read_only}\n",
                sock.display(),
                img.display()
            ));
        }
        let cfg = dir.path().join("vscsi.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut child = Command::new(backend_binary())
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while ![&a, &b].iter().all(|s| is_socket(s)) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "vscsi-backend exited ({st}): {}",
                    std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
                );
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no sockets in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        TwoPaths {
            dir,
            _daemon: KillOnDrop(child),
            a,
            b,
        }
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// Runs `vscsi VERB --socket SOCKET ARGS...`: (exit code, stdout, stderr).
fn vscsi(verb: &str, socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .arg(verb)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vscsi VERB ... --json` that must exit 0, parsed.
fn json_ok(verb: &str, socket: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, out, err) = vscsi(verb, socket, &args);
    assert_eq!(code, 0, "vscsi {verb} {args:?}: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn data(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().unwrap()).unwrap()
}

/// SPC-5 §7.7.6: the designation descriptors of a Device Identification
/// page, as (code set, PIV/association/type byte, designator).
fn designators(page: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = usize::from(page[at + 3]);
        out.push((page[at], page[at + 1], page[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

#[test]
fn two_controllers_show_one_logical_unit_through_two_target_ports() {
    let p = TwoPaths::start(true);
    let page = |s: &Path| data(&json_ok("inquiry", s, &["--page", "83"]), "data_hex");
    let (a, b) = (page(&p.a), page(&p.b));
    let (da, db) = (designators(&a), designators(&b));
    // Association 00b (logical unit): NAA (type 3) and T10 vendor ID (type 1), equal.
    let lu = |d: &[(u8, u8, Vec<u8>)]| -> Vec<(u8, u8, Vec<u8>)> {
        d.iter().filter(|x| x.1 & 0x30 == 0).cloned().collect()
    };
    assert_eq!(lu(&da), lu(&db));
    assert_eq!(
        lu(&da).iter().map(|x| x.1).collect::<Vec<_>>(),
        [0x03, 0x01]
    );
    assert_eq!(lu(&da)[0].2[0] >> 4, 3, "NAA 3h");
    assert_eq!(lu(&da)[1].2, b"VSCSI   MPATH-1");
    // Association 01b (target port): relative port 1 and 2, NAA names that differ.
    let port = |d: &[(u8, u8, Vec<u8>)], ty: u8| {
        d.iter()
            .find(|x| x.1 == 0x10 | ty)
            .map(|x| x.2.clone())
            .unwrap()
    };
    assert_eq!(port(&da, 4), [0, 0, 0, 1]);
    assert_eq!(port(&db, 4), [0, 0, 0, 2]);
    assert_ne!(port(&da, 3), port(&db, 3));
    assert_eq!(port(&da, 3).len(), 8);
    // VPD 80h: the same serial on both paths.
    let serial = |s: &Path| data(&json_ok("inquiry", s, &["--page", "80"]), "data_hex");
    assert_eq!(serial(&p.a), serial(&p.b));
    assert_eq!(&serial(&p.a)[4..], b"MPATH-1");
    drop(p.dir);
}

#[test]
fn pr_verb_refuses_bad_flag_combinations_before_connecting() {
    // No daemon: a usage error (2) must come before any connection attempt (3).
    let nowhere = Path::new("/nonexistent/vscsi.sock");
    for args in [
        &["--reserve"][..],
        &["--release", "--key", "1"],
        &["--preempt", "5"],
        &["--read-keys", "--type", "1"],
        &["--clear", "--aptpl"],
    ] {
        let (code, _, err) = vscsi("pr", nowhere, args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) = vscsi("pr", nowhere, &["--reserve", "--type", "we"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not exist"), "{err}");
}
