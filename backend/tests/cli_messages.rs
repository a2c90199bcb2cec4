//! What the `vscsi-backend` binary says: each error once on one line, no
//! colour codes off a terminal, an image given twice called that, and
//! `--check-config` printing a CD-ROM LUN as it is served.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vscsi-backend");

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_same_image_twice_says_it_is_given_twice() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img", 1 << 20);
    let sock = dir.path().join("vs.sock");
    let img = img.to_str().unwrap();
    let o = run(&["--socket", sock.to_str().unwrap(), img, img]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("is given twice"), "{err}");
    assert!(err.contains("target 0 LUN 0 and target 0 LUN 1"), "{err}");
    assert!(!err.contains("locked"), "{err}");
    assert!(!sock.exists());
}

#[test]
fn an_error_is_printed_once_without_its_os_error_twice_or_colours() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img", 1 << 20);
    let sock = dir.path().join("no-such-dir").join("vs.sock");
    let o = run(&["--socket", sock.to_str().unwrap(), img.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert_eq!(err.matches("cannot listen on").count(), 1, "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(
        !err.contains("ERROR"),
        "no log record besides the line: {err}"
    );
    // The INFO lines before it (stderr is a pipe here): no ANSI escapes.
    assert!(err.contains("serving"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
}

fn cdrom_config(dir: &Path, extra: &str) -> PathBuf {
    image(dir, "cd.iso", 1 << 20);
    let f = dir.join("c.toml");
    std::fs::write(
        &f,
        format!(
            "[[controller]]\nsocket = \"{}\"\n\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"cd.iso\"\ntype = \"cdrom\"\n{extra}",
            dir.join("vs.sock").display()
        ),
    )
    .unwrap();
    f
}

#[test]
fn check_config_prints_a_cdrom_as_it_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let f = cdrom_config(dir.path(), "");
    let o = run(&["--check-config", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for line in [
        "type = \"cdrom\"",
        "read_only = true",
        "block_size = 2048",
        "removable = true",
        "product = \"VIRTUAL-CDROM\"",
    ] {
        assert!(out.lines().any(|l| l.trim() == line), "{line} in\n{out}");
    }
    // Also what the summary on stderr says.
    assert!(
        !text(&o.stderr).contains("VIRTUAL-DISK"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_cdrom_with_another_block_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = cdrom_config(dir.path(), "block_size = 512\n");
    let o = run(&["--check-config", f.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("block_size"), "{err}");
    assert!(err.contains("2048"), "{err}");
    // 2048 spelled out is fine.
    let f = cdrom_config(dir.path(), "block_size = 2048\n");
    let o = run(&["--check-config", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn the_readme_example_configuration_injects_no_fault() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### Configuration file")
        .nth(1)
        .expect("README has a configuration file section");
    let example = section
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a TOML example");
    assert!(example.contains("[[controller]]"), "{example}");
    assert!(
        !example.lines().any(|l| l.trim_start().starts_with("fault")),
        "{example}"
    );
}
