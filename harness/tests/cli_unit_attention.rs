//! One-shot verbs of the `vscsi` binary against a daemon whose LUN reports
//! POWER ON, RESET to every new frontend (the daemon's default): the verb
//! clears it first, like the Linux sd driver at scan, unless `raw --keep-ua`.

mod common;

use std::process::Command;

use common::{image, TestDaemon};
use vscsi_backend::config::LunSpec;
use vscsi_backend::vhost::DeviceOptions;

const MIB: u64 = 1 << 20;

fn daemon_with_power_on_ua() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = LunSpec::new(0, 0, image(dir.path(), "t0l0.img", 8 * MIB));
    spec.options.power_on_ua = true;
    TestDaemon::serve_exact(dir, &[spec], DeviceOptions::default())
}

fn vscsi(d: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vscsi"))
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const READ_CAPACITY_10: &str = "25 00 00 00 00 00 00 00 00 00";

#[test]
fn raw_read_capacity_on_a_fresh_connection_returns_the_capacity() {
    let d = daemon_with_power_on_ua();
    for _ in 0..2 {
        // Each invocation is a new frontend, owed a new POWER ON, RESET.
        let (code, out, err) = vscsi(
            &d,
            &["raw", "--cdb", READ_CAPACITY_10, "--data-in", "8", "--json"],
        );
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["status"], "GOOD", "{v}");
        // SBC-4 §5.20.2: RETURNED LOGICAL BLOCK ADDRESS (the last LBA,
        // 8 MiB / 512 - 1 = 0x3FFF) then BLOCK LENGTH IN BYTES (512).
        assert_eq!(v["data_in"], "00003fff00000200", "{v}");
        assert_eq!(err, "", "nothing on stderr without -v");
    }
}

#[test]
fn raw_keep_ua_shows_the_power_on_unit_attention() {
    let d = daemon_with_power_on_ua();
    let (code, out, err) = vscsi(
        &d,
        &[
            "raw",
            "--keep-ua",
            "--cdb",
            READ_CAPACITY_10,
            "--data-in",
            "8",
            "--json",
        ],
    );
    assert_eq!(code, 0, "raw exits 0 whatever the status: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "CHECK CONDITION", "{v}");
    assert_eq!(v["status_code"], 2);
    let sense = hex::decode(v["sense_hex"].as_str().unwrap()).unwrap();
    // Fixed format: sense key byte 2, ASC byte 12, ASCQ byte 13.
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (6, 0x29, 0x00));
    assert_eq!(v["data_in"], "");
}

#[test]
fn verbose_says_what_was_cleared() {
    let d = daemon_with_power_on_ua();
    let (code, out, err) = vscsi(&d, &["readcap", "-v"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("16384"), "{out}{err}");
    assert!(err.contains("cleared unit attention on 0:0"), "{err}");
    assert!(err.contains("POWER ON"), "{err}");
    for verb in [
        &["tur"][..],
        &["inquiry"],
        &["read", "--blocks", "1", "--out", "/dev/null"],
    ] {
        let (code, out, err) = vscsi(&d, verb);
        assert_eq!(code, 0, "{verb:?}: {out}{err}");
    }
}
