//! A qcow2 image exported by `qemu-nbd` over a unix socket, for tests that
//! give the daemon a LUN on network storage: the test creates the image with
//! `qemu-img`, starts the server, hands the daemon the export's NBD URI, and
//! afterwards reads what landed in the image through `qemu-img convert`.
//!
//! Include with `#[path = "common/qemu_nbd.rs"] mod qemu_nbd;` next to
//! `common/backend_bin.rs` (whose `KillOnDrop` holds the server process).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::backend_bin::KillOnDrop;

/// The export name the server offers and the URI asks for.
const EXPORT: &str = "disk";

/// Whether `qemu-nbd` and `qemu-img` (package qemu-utils) run. When they do
/// not, says so loudly on stderr, or panics when `VSCSI_REQUIRE_TOOLS` is set
/// (CI installs them).
pub fn available() -> bool {
    let runs = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = ["qemu-nbd", "qemu-img"]
        .into_iter()
        .filter(|t| !runs(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} missing (apt-get install qemu-utils): the NBD LUN is left out",
        missing.join(" and ")
    );
    assert!(
        std::env::var_os("VSCSI_REQUIRE_TOOLS").is_none(),
        "{msg} (VSCSI_REQUIRE_TOOLS is set)"
    );
    // To the real stderr, past libtest's capture (which takes only the print
    // macros), so a run without --nocapture shows it too.
    let bar = "=".repeat(78);
    let _ = writeln!(std::io::stderr(), "\n{bar}\nSKIP NBD part: {msg}\n{bar}\n");
    false
}

/// A running `qemu-nbd` serving one qcow2 image, killed when dropped.
pub struct QemuNbd {
    server: Option<KillOnDrop>,
    pub image: PathBuf,
    pub socket: PathBuf,
}

impl QemuNbd {
    /// Creates an empty `size`-byte qcow2 at `dir/nbd.qcow2` and exports it
    /// (writable, persistent: the daemon may connect once per request queue)
    /// on `dir/nbd.sock`; returns once the socket accepts connections.
    pub fn start(dir: &Path, size: u64) -> QemuNbd {
        let image = dir.join("nbd.qcow2");
        let socket = dir.join("nbd.sock");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg(size.to_string()));
        let child = Command::new("qemu-nbd")
            .arg("--persistent")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--export-name={EXPORT}"))
            .arg("--format=qcow2")
            .arg(&image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot start qemu-nbd");
        let mut server = KillOnDrop(child);
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(st)) = server.0.try_wait() {
                panic!(
                    "qemu-nbd exited ({st}) before listening on {}",
                    socket.display()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "qemu-nbd did not listen on {} in 20 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "qemu-nbd (pid {}) exports {} on {}",
            server.0.id(),
            image.display(),
            socket.display()
        );
        QemuNbd {
            server: Some(server),
            image,
            socket,
        }
    }

    /// The export's URI, as `--lun T:L=URI` takes it.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{EXPORT}?socket={}", self.socket.display())
    }

    /// SIGTERM and wait, so qemu-nbd writes its qcow2 metadata and lets go
    /// of the image's lock. Returns whether it exited with status 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut s) = self.server.take() else {
            return false;
        };
        // SAFETY: kill takes a pid and a signal number; it touches no memory.
        unsafe { libc::kill(s.0.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = s.0.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false // KillOnDrop kills it
    }

    /// The image's disk contents as a raw file `out` (qemu-img convert);
    /// call after [`QemuNbd::stop`], when no server holds the image.
    pub fn convert_to_raw(&self, out: &Path) -> Result<(), String> {
        let o = Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&self.image)
            .arg(out)
            .output()
            .map_err(|e| format!("qemu-img: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "qemu-img convert {}: {}",
                self.image.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("cannot run qemu-img");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
