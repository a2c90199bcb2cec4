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
    daemon: Option<KillOnDrop>,
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
        std::fs::write(dir.path().join("vscsi.toml"), toml).unwrap();
        let mut p = TwoPaths {
            dir,
            daemon: None,
            a,
            b,
        };
        p.restart();
        p
    }

    /// Starts the daemon (again: SIGKILL first, as a crash would).
    fn restart(&mut self) {
        self.daemon = None;
        let (dir, a, b) = (self.dir.path(), &self.a, &self.b);
        for s in [a, b] {
            let _ = std::fs::remove_file(s);
        }
        let cfg = dir.join("vscsi.toml");
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let mut child = Command::new(backend_binary())
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while ![a, b].iter().all(|s| is_socket(s)) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "vscsi-backend exited ({st}): {}",
                    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
                );
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no sockets in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(KillOnDrop(child));
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
    let p = TwoPaths::start(false);
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

/// `vscsi pr ARGS --json` that must exit 0.
fn pr(socket: &Path, args: &[&str]) -> Value {
    json_ok("pr", socket, args)
}

/// `vscsi VERB` that must fail with RESERVATION CONFLICT (exit 1).
fn conflict(verb: &str, socket: &Path, args: &[&str]) {
    let (code, out, err) = vscsi(verb, socket, args);
    assert_eq!(code, 1, "vscsi {verb} {args:?}: {out} {err}");
    assert!(err.contains("RESERVATION CONFLICT"), "{err}");
}

#[test]
fn pr_verb_registers_reserves_preempts_and_clears_across_two_paths() {
    let p = TwoPaths::start(false);
    let block = p.dir.path().join("block.bin");
    std::fs::write(&block, [0x5Au8; 512]).unwrap();
    let block = block.to_str().unwrap();
    let write = ["--lba", "8", "--in", block];
    let read_out = p.dir.path().join("read.bin");
    let read = [
        "--lba",
        "8",
        "--blocks",
        "1",
        "--out",
        read_out.to_str().unwrap(),
    ];

    let k = pr(&p.a, &["--read-keys"]);
    assert_eq!(k["keys"], serde_json::json!([]));
    assert_eq!(k["action"], "READ KEYS");
    let (code, out, _) = vscsi("pr", &p.a, &["--read-keys"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("there are NO registered reservation keys"),
        "{out}"
    );

    let r = pr(&p.a, &["--register", "0xa1"]);
    assert_eq!(
        (r["action"].as_str(), r["service_action_key"].as_str()),
        (Some("REGISTER"), Some("0xa1"))
    );
    pr(&p.b, &["--register", "b2"]);
    let k = pr(&p.b, &["--read-keys"]);
    let mut keys: Vec<&str> = k["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["0xa1", "0xb2"]);
    assert_eq!(k["generation"], 2);

    // READ FULL STATUS: one registration per path, with its port and TransportID.
    let f = pr(&p.a, &["--read-full-status"]);
    let regs = f["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 2, "{f}");
    for (key, port, name) in [("0xa1", 1, "vhost-user:a"), ("0xb2", 2, "vhost-user:b")] {
        let r = regs.iter().find(|r| r["key"] == key).unwrap();
        assert_eq!(r["relative_target_port"], port, "{r}");
        assert_eq!(r["transport_id"]["name"], name, "{r}");
        assert_eq!(r["transport_id"]["protocol_name"], "iSCSI", "{r}");
        assert_eq!(r["holder"], false);
    }

    // Write Exclusive held through A: B (registered) reads but does not write.
    pr(&p.a, &["--reserve", "--key", "a1", "--type", "we"]);
    let r = pr(&p.b, &["--read-reservation"]);
    assert_eq!(r["reservation"]["key"], "0xa1");
    assert_eq!(r["reservation"]["type"]["code"], 1);
    assert_eq!(r["reservation"]["type"]["name"], "we");
    conflict("write", &p.b, &write);
    json_ok("read", &p.b, &read);
    json_ok("write", &p.a, &write);
    // B cannot take a reservation A holds.
    conflict("pr", &p.b, &["--reserve", "--key", "b2", "--type", "we"]);

    // PREEMPT from B: A's registration goes, B holds WE-RO.
    pr(&p.b, &["--preempt", "a1", "--key", "b2", "--type", "we-ro"]);
    let r = pr(&p.a, &["--read-reservation"]);
    assert_eq!(r["reservation"]["key"], "0xb2");
    assert_eq!(r["reservation"]["type"]["name"], "we-ro");
    assert_eq!(
        pr(&p.a, &["--read-keys"])["keys"],
        serde_json::json!(["0xb2"])
    );
    conflict("write", &p.a, &write);
    // Registered again, A may write under registrants-only.
    pr(&p.a, &["--register-ignore", "a1"]);
    json_ok("write", &p.a, &write);
    let f = pr(&p.a, &["--read-full-status"]);
    let holder = f["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["holder"] == true)
        .unwrap()
        .clone();
    assert_eq!(
        (
            holder["key"].as_str(),
            holder["relative_target_port"].as_u64()
        ),
        (Some("0xb2"), Some(2))
    );

    // RELEASE must name the type held: 5/26/04 otherwise.
    let (code, _, err) = vscsi("pr", &p.b, &["--release", "--key", "b2", "--type", "we"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("5/26/04") || err.to_uppercase().contains("INVALID RELEASE"),
        "{err}"
    );
    pr(&p.b, &["--release", "--key", "b2", "--type", "5"]);
    assert_eq!(
        pr(&p.a, &["--read-reservation"])["reservation"],
        Value::Null
    );

    let c = pr(&p.a, &["--report-capabilities"]);
    assert_eq!(c["tmv"], true, "{c}");
    assert_eq!(
        c["types"],
        serde_json::json!(["we", "ea", "we-ro", "ea-ro", "we-ar", "ea-ar"])
    );
    let (_, out, _) = vscsi("pr", &p.a, &["--report-capabilities"]);
    assert!(out.contains("Type Mask Valid(TMV): 1"), "{out}");

    // CLEAR through A: nothing left, and the generation moved on.
    let before = pr(&p.b, &["--read-keys"])["generation"].as_u64().unwrap();
    pr(&p.a, &["--clear", "--key", "a1"]);
    let k = pr(&p.b, &["--read-keys"]);
    assert_eq!(k["keys"], serde_json::json!([]));
    assert!(k["generation"].as_u64().unwrap() > before, "{k}");
    json_ok("write", &p.b, &write);

    // PREEMPT AND ABORT: B takes A's Exclusive Access reservation over.
    pr(&p.a, &["--register", "a1"]);
    pr(&p.b, &["--register", "b2"]);
    pr(&p.a, &["--reserve", "--key", "a1", "--type", "ea"]);
    conflict("read", &p.b, &read);
    let r = pr(
        &p.b,
        &["--preempt-abort", "a1", "--key", "b2", "--type", "ea"],
    );
    assert_eq!(r["action"], "PREEMPT AND ABORT");
    let (code, out, _) = vscsi("pr", &p.a, &["--read-full-status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("    Key=0xb2\n      All target ports bit clear\n      Relative port address: 0x2\n      << Reservation holder >>\n      scope: LU_SCOPE,  type: Exclusive Access\n"),
        "{out}"
    );
    assert!(
        out.contains("        iSCSI (format 0): vhost-user:b\n"),
        "{out}"
    );
    assert!(!out.contains("0xa1"), "{out}");
    conflict("read", &p.a, &read);
    json_ok("read", &p.b, &read);
    pr(&p.b, &["--clear", "--key", "b2"]);
}

#[test]
fn pr_verb_aptpl_registration_survives_a_daemon_crash() {
    let mut p = TwoPaths::start(false);
    pr(&p.a, &["--register", "0xa1", "--aptpl"]);
    pr(&p.a, &["--reserve", "--key", "a1", "--type", "ea-ro"]);
    assert_eq!(pr(&p.a, &["--report-capabilities"])["ptpl_a"], true);
    p.restart();
    assert_eq!(
        pr(&p.b, &["--read-keys"])["keys"],
        serde_json::json!(["0xa1"])
    );
    let r = pr(&p.b, &["--read-reservation"]);
    assert_eq!(r["reservation"]["type"]["name"], "ea-ro", "{r}");
    // Exclusive access, registrants only: unregistered B may not even read.
    conflict(
        "read",
        &p.b,
        &["--lba", "0", "--blocks", "1", "--out", "/dev/null"],
    );
}
