//! A qcow2 image served through the real socket, memfd and rings (issue 4):
//! detected by content, written and read back by the driver, and the data
//! lands in the qcow2 (checked with `qemu-img convert -O raw`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{pattern, TestDaemon};
use vscsi_backend::config::LunSpec;
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{Driver, QueueConfig, ScsiCommand};

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

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (install qemu-utils)");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

fn raw_cmd(cdb: Vec<u8>, data_out: Vec<u8>, data_in_len: usize) -> ScsiCommand {
    ScsiCommand::Raw {
        cdb,
        data_out,
        data_in_len,
    }
}

fn cdb10(op: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

#[tokio::test]
async fn qcow2_image_is_served_read_write_through_the_driver() {
    if !qemu_img_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Named .img: the format is found from the content.
    let img = dir.path().join("t0l0.img");
    qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "8M"]);
    let mut d = TestDaemon::serve(dir, &[LunSpec::new(0, 0, &img)], DeviceOptions::default());
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .expect("driver connects");

    // READ CAPACITY(10): the virtual size, not the container's.
    let r = drv
        .send_command(
            0,
            0,
            raw_cmd(vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![], 8),
        )
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(
        u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]),
        8 * 2048 - 1
    );

    let data = pattern(300, 64, 512, 42);
    let r = drv
        .send_command(0, 0, raw_cmd(cdb10(0x2A, 300, 64), data.clone(), 0))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let r = drv
        .send_command(0, 0, raw_cmd(cdb10(0x28, 300, 64), vec![], data.len()))
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data, data);
    let r = drv
        .send_command(
            0,
            0,
            raw_cmd(vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![], 0),
        )
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    drop(drv);
    d.stop();

    // The container is still qcow2 and holds the data.
    let out = d.image_path(0, 0).with_extension("raw");
    assert_eq!(&std::fs::read(&img).unwrap()[..4], b"QFI\xfb");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let disk = std::fs::read(Path::new(&out)).unwrap();
    assert_eq!(disk.len(), 8 << 20);
    assert_eq!(&disk[300 * 512..364 * 512], &data[..]);
    assert!(disk[..300 * 512].iter().all(|&b| b == 0));
}
