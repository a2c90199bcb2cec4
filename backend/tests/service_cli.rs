//! The daemon binary as a service: configuration file checks, socket
//! permissions, the JSON-RPC control socket (bad requests get errors and
//! the daemon keeps serving), shutdown through the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vscsi-backend");

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn check(dir: &Path, toml: &str) -> (bool, String, String) {
    let f = dir.join("c.toml");
    std::fs::write(&f, toml).unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_resolved_and_refuses_bad_files_naming_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    image(d.path(), "a.img", 1 << 20);
    image(d.path(), "b.img", 1 << 20);
    let (ok, out, err) = check(
        d.path(),
        "control = \"ctl.sock\"\n[[controller]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\nqueues = 2\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"a.img\"\n[[controller.lun]]\ntarget = 1\nlun = 5\nimage = \"b.img\"\ntype = \"cdrom\"\n",
    );
    assert!(ok, "{err}");
    let a = std::fs::canonicalize(d.path().join("a.img")).unwrap();
    assert!(
        out.contains(&format!("image = \"{}\"", a.display())),
        "{out}"
    );
    assert!(out.contains("mode = \"0660\""), "{out}");
    assert!(out.contains("queue_size = 1024"), "{out}");
    assert!(out.contains("type = \"cdrom\""), "{out}");
    assert!(
        out.contains("block_size = 2048") || out.contains("block_size = 512"),
        "{out}"
    );
    // The printed configuration is itself a valid configuration.
    let (ok, out2, err) = check(d.path(), &out);
    assert!(ok, "{err}");
    assert_eq!(out, out2);

    let head = "[[controller]]\nsocket = \"x.sock\"\n";
    let lun = |t: u32, l: u32, img: &str| {
        format!("[[controller.lun]]\ntarget = {t}\nlun = {l}\nimage = \"{img}\"\n")
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "bogus = 1\n".to_string() + head,
            ":1: bogus",
            "unknown field",
        ),
        (format!("{head}colour = 1\n"), ":3: colour", "unknown field"),
        (
            format!("{head}{}", lun(0, 16384, "a.img")),
            ":3: controller[0].lun (target 0 lun 16384).lun",
            "0..=16383",
        ),
        (
            format!("{head}{}{}", lun(0, 1, "a.img"), lun(0, 1, "b.img")),
            ":7: controller[0].lun",
            "already defined at line 3",
        ),
        (
            format!(
                "{head}{}[[controller]]\nsocket = \"y.sock\"\n{}",
                lun(0, 1, "a.img"),
                lun(0, 1, "a.img")
            ),
            ":9: controller[1].lun (target 0 lun 1).image",
            "shared = true",
        ),
        (
            format!("{head}{}", lun(0, 1, "missing.img")),
            ".image",
            "does not exist",
        ),
        (
            format!("{head}{}block_size = 1000\n", lun(0, 1, "a.img")),
            ".block_size",
            "512, 1024, 2048 or 4096",
        ),
        (
            format!("{head}mode = \"0666\"\n"),
            ":3: mode",
            "world-writable",
        ),
        (
            format!("{head}queue_size = 1000\n"),
            ":3: queue_size",
            "power of two",
        ),
        (format!("{head}queues = 0\n"), ":3: queues", "1..=62"),
        (
            format!("{head}{}", lun(300, 1, "a.img")),
            ":4: target",
            "u8",
        ),
        (
            "metrics = \"0.0.0.0:9000\"\n".to_string() + head,
            ":1: metrics",
            "loopback",
        ),
        ("".to_string(), "controller", "no [[controller]]"),
    ];
    for (toml, where_, what) in cases {
        let (ok, _, err) = check(d.path(), &toml);
        assert!(!ok, "{toml}");
        assert!(
            err.contains("c.toml") && err.contains(where_) && err.contains(what),
            "{toml}\n→ {err}"
        );
    }
    // Tiny image: bad size.
    image(d.path(), "tiny.img", 100);
    let (ok, _, err) = check(d.path(), &format!("{head}{}", lun(0, 0, "tiny.img")));
    assert!(
        !ok && err.contains("smaller than one 512-byte block"),
        "{err}"
    );
}

struct Daemon {
    child: std::process::Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(p: &Path) {
    let start = Instant::now();
    while !p.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Rpc {
    out: UnixStream,
    inp: BufReader<UnixStream>,
}

impl Rpc {
    fn connect(p: &Path) -> Rpc {
        let s = UnixStream::connect(p).unwrap();
        Rpc {
            inp: BufReader::new(s.try_clone().unwrap()),
            out: s,
        }
    }
    fn raw(&mut self, line: &str) -> serde_json::Value {
        writeln!(self.out, "{line}").unwrap();
        let mut l = String::new();
        self.inp.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.raw(
            &serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
                .to_string(),
        )
    }
}

#[test]
fn control_socket_errors_change_nothing_and_the_daemon_keeps_serving() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    image(dir, "a.img", 1 << 20);
    let extra = image(dir, "extra.img", 1 << 20);
    image(dir, "cd.iso", 64 * 2048);
    let cd2 = image(dir, "cd2.iso", 32 * 2048);
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[[controller]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"a.img\"\n[[controller.lun]]\ntarget = 0\nlun = 3\nimage = \"cd.iso\"\ntype = \"cdrom\"\n[[controller]]\nname = \"vm2\"\nsocket = \"vm2.sock\"\nmode = \"0600\"\n",
    )
    .unwrap();
    let ctl = dir.join("ctl.sock");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--control")
        .arg(&ctl)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child };
    wait_for(&ctl);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("vm1.sock")), 0o660);
    assert_eq!(mode(&dir.join("vm2.sock")), 0o600);
    assert_eq!(mode(&ctl), 0o600);

    let mut rpc = Rpc::connect(&ctl);
    let list_before = rpc.call("list", serde_json::json!({}));
    assert!(list_before.get("result").is_some(), "{list_before}");
    let code = |v: &serde_json::Value| v["error"]["code"].as_i64().unwrap_or(0);
    // Bad requests: each its error.
    assert_eq!(code(&rpc.raw("not json")), -32700);
    assert_eq!(code(&rpc.raw("[1,2]")), -32600);
    assert_eq!(code(&rpc.raw(r#"{"id":1,"method":"list"}"#)), -32600);
    assert_eq!(code(&rpc.call("frobnicate", serde_json::json!({}))), -32601);
    assert_eq!(
        code(&rpc.call("list", serde_json::json!({"bogus": 1}))),
        -32602
    );
    let e = rpc.call(
        "add_lun",
        serde_json::json!({"target": 0, "lun": 1, "image": extra}),
    );
    assert_eq!(code(&e), -32001, "two controllers, none named: {e}");
    let e = rpc.call(
        "add_lun",
        serde_json::json!({"controller": "nope", "target": 0, "lun": 1, "image": extra}),
    );
    assert_eq!(code(&e), -32001);
    let e = rpc.call(
        "add_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0, "image": extra}),
    );
    assert_eq!(code(&e), -32003, "{e}");
    let e = rpc.call("add_lun", serde_json::json!({"controller": "vm1", "target": 0, "lun": 1, "image": dir.join("missing.img")}));
    assert_eq!(code(&e), -32004, "{e}");
    let e = rpc.call(
        "add_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 1, "image": "rel.img"}),
    );
    assert_eq!(code(&e), -32602, "{e}");
    let e = rpc.call(
        "add_lun",
        serde_json::json!({"controller": "vm2", "target": 0, "lun": 1, "image": dir.join("a.img")}),
    );
    assert_eq!(code(&e), -32004, "image already served: {e}");
    let e = rpc.call(
        "add_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 20000, "image": extra}),
    );
    assert_eq!(code(&e), -32602, "{e}");
    let e = rpc.call(
        "remove_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 9}),
    );
    assert_eq!(code(&e), -32002, "{e}");
    let e = rpc.call(
        "resize_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0, "size": "512K"}),
    );
    assert_eq!(code(&e), -32005, "shrink without force: {e}");
    let e = rpc.call(
        "resize_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0, "size": 1000000}),
    );
    assert_eq!(code(&e), -32005, "not a block multiple: {e}");
    let e = rpc.call(
        "resize_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 3, "size": "1M"}),
    );
    assert_eq!(code(&e), -32006, "cdrom: {e}");
    let e = rpc.call(
        "eject_media",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0}),
    );
    assert_eq!(code(&e), -32006, "fixed disk: {e}");
    let e = rpc.call(
        "set_fault",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0, "fault": "sometimes"}),
    );
    assert_eq!(code(&e), -32602, "{e}");
    // Nothing changed.
    assert_eq!(rpc.call("list", serde_json::json!({})), list_before);
    assert_eq!(std::fs::metadata(dir.join("a.img")).unwrap().len(), 1 << 20);

    // Good requests, on a new connection too.
    let mut rpc2 = Rpc::connect(&ctl);
    let r = rpc2.call("add_lun", serde_json::json!({"controller": "vm2", "target": 2, "lun": 7, "image": extra, "read_only": true}));
    assert_eq!(r["result"]["capacity_blocks"], 2048, "{r}");
    let r = rpc2.call(
        "resize_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0, "size": "2M"}),
    );
    assert_eq!(r["result"]["capacity_blocks"], 4096, "{r}");
    assert_eq!(std::fs::metadata(dir.join("a.img")).unwrap().len(), 2 << 20);
    let r = rpc2.call(
        "set_read_only",
        serde_json::json!({"controller": "vm2", "target": 2, "lun": 7, "read_only": false}),
    );
    assert_eq!(r["result"]["changed"], true, "{r}");
    let r = rpc2.call(
        "eject_media",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 3}),
    );
    assert_eq!(r["result"]["medium_present"], false, "{r}");
    let r = rpc2.call(
        "insert_media",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 3, "image": cd2}),
    );
    assert_eq!(r["result"]["capacity_blocks"], 32, "{r}");
    let r = rpc2.call(
        "set_fault",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0, "fault": "latency=1ms"}),
    );
    assert!(r.get("result").is_some(), "{r}");
    let r = rpc2.call(
        "clear_fault",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 0}),
    );
    assert!(r.get("result").is_some(), "{r}");
    let r = rpc2.call("stats", serde_json::json!({}));
    assert_eq!(
        r["result"]["controllers"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    let list = rpc2.call("list", serde_json::json!({"controller": "vm2"}));
    let luns = &list["result"]["controllers"][0]["luns"];
    assert_eq!(luns[0]["target"], 2);
    assert_eq!(luns[0]["read_only"], false);
    let r = rpc2.call(
        "remove_lun",
        serde_json::json!({"controller": "vm2", "target": 2, "lun": 7}),
    );
    assert_eq!(r["result"]["flushed"], true, "{r}");
    // The removed image can be served again at once (its lock is released).
    let r = rpc2.call(
        "add_lun",
        serde_json::json!({"controller": "vm1", "target": 0, "lun": 1, "image": extra}),
    );
    assert!(r.get("result").is_some(), "{r}");
    // A notification gets no answer; the next request still does.
    writeln!(rpc2.out, r#"{{"jsonrpc":"2.0","method":"list"}}"#).unwrap();
    let r = rpc2.call("list", serde_json::json!({}));
    assert_eq!(r["id"], 7);

    // Shutdown through the control socket: exit 0, sockets removed.
    let r = rpc2.call("shutdown", serde_json::json!({}));
    assert_eq!(r["result"]["stopping"], true);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = daemon.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(!dir.join("vm1.sock").exists() && !ctl.exists());
}

#[test]
fn a_non_socket_at_a_controller_path_is_refused_not_deleted() {
    let d = tempfile::tempdir().unwrap();
    image(d.path(), "a.img", 1 << 20);
    std::fs::write(d.path().join("vm.sock"), "precious").unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, "[[controller]]\nsocket = \"vm.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"a.img\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(
        std::fs::read_to_string(d.path().join("vm.sock")).unwrap(),
        "precious"
    );
}

#[test]
fn a_qcow2_lun_is_never_resized_by_truncating_its_file() {
    if !qemu_img_present() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let q = dir.join("q.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("4M")
        .status()
        .expect("qemu-img (Debian package qemu-utils, installed by .ci/run)");
    assert!(made.success());
    let before = std::fs::read(&q).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[[controller]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"q.qcow2\"\n",
    )
    .unwrap();
    let ctl = dir.join("ctl.sock");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--control")
        .arg(&ctl)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon { child };
    wait_for(&ctl);
    let mut rpc = Rpc::connect(&ctl);
    for size in ["1M", "64M"] {
        let e = rpc.call(
            "resize_lun",
            serde_json::json!({"controller": "vm1", "target": 0, "lun": 0, "size": size, "force": true}),
        );
        assert_eq!(e["error"]["code"], -32006, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("qemu-img resize"),
            "{e}"
        );
    }
    assert_eq!(
        std::fs::read(&q).unwrap(),
        before,
        "the qcow2 file is untouched"
    );
}

/// Whether `qemu-img` (Debian package qemu-utils) is here. Without it a
/// qcow2 test is skipped with a notice, unless CI (`.ci/run` sets
/// VSCSI_REQUIRE_TOOLS=1) requires it.
fn qemu_img_present() -> bool {
    let found = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("VSCSI_REQUIRE_TOOLS").is_none(),
            "qemu-img is missing: apt-get install qemu-utils (see .ci/run)"
        );
        eprintln!("SKIP: qemu-img is missing (apt-get install qemu-utils); qcow2 test not run");
    }
    found
}
