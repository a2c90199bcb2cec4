//! What the QEMU guest tests share: their prerequisites, the guest boot
//! image (`images/build-guest.sh`), the daemon and QEMU child processes, and
//! the `VSCSI-RESULT` lines the guest scripts print.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::backend_bin::workspace_root;

/// What a machine needs for this test (Debian package names).
pub const PACKAGES: &str =
    "qemu-system-x86 linux-image-amd64 busybox-static sg3-utils fio e2fsprogs cpio genisoimage eject";

pub fn in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// An ELF64 executable without a PT_INTERP program header (statically linked).
pub fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()) as usize)
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .map(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
            .unwrap_or(false)
    })
}

/// What is missing to run the guest test, as human-readable items.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    for (prog, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("sg_inq", "sg3-utils"),
        ("fio", "fio"),
        ("mkfs.ext4", "e2fsprogs"),
        ("cpio", "cpio"),
        ("eject", "eject"),
        ("gzip", "gzip"),
    ] {
        if in_path(prog).is_none() {
            missing.push(format!("{prog} (package {pkg})"));
        }
    }
    let busybox_static = fs::read("/bin/busybox")
        .map(|b| is_static_elf(&b))
        .unwrap_or(false);
    if in_path("genisoimage").is_none() && in_path("xorriso").is_none() {
        missing.push("genisoimage or xorriso (package genisoimage)".into());
    }
    if !busybox_static {
        missing.push("a static /bin/busybox (package busybox-static)".into());
    }
    let kernel = fs::read_dir("/boot").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("vmlinuz-")
                    .map(str::to_owned)
            })
            .find(|v| {
                Path::new("/lib/modules")
                    .join(v)
                    .join("modules.dep")
                    .is_file()
            })
    });
    if kernel.is_none() {
        missing.push("a kernel in /boot with its modules (package linux-image-amd64)".into());
    }
    missing
}

pub fn guest_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("VSCSI_GUEST_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("vscsi").join("guest")
}

/// Runs `images/build-guest.sh CACHE`; returns (kernel, initramfs).
pub fn build_guest_image() -> (PathBuf, PathBuf) {
    let script = workspace_root().join("images/build-guest.sh");
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(guest_cache())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run bash images/build-guest.sh");
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let kernel = PathBuf::from(lines.next().expect("kernel path"));
    let initrd = PathBuf::from(lines.next().expect("initramfs path"));
    assert!(
        kernel.is_file() && initrd.is_file(),
        "build-guest.sh printed {stdout}"
    );
    eprintln!(
        "guest image: {} + {} ({:.1} s)",
        kernel.display(),
        initrd.display(),
        t.elapsed().as_secs_f64()
    );
    (kernel, initrd)
}

pub struct Guard(pub Option<Child>, pub &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if let Ok(None) = c.try_wait() {
                eprintln!("killing {} (pid {})", self.1, c.id());
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn wait_socket(path: &Path, daemon: &mut Child, log: &Path) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if fs::metadata(path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false)
        {
            return;
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            panic!(
                "vscsi-backend exited ({st}) before creating its socket; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("vscsi-backend did not create {} in 20 s", path.display());
}

pub fn stop_daemon(daemon: &mut Child) -> Option<std::process::ExitStatus> {
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(st)) = daemon.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    None
}

pub fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

/// Writes to the real stderr, past libtest's output capture (which only takes
/// the print macros), so CI logs show it even when the test passes.
pub fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The tail of a log, at most `lines` lines.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut s = String::new();
    if skip > 0 {
        s.push_str(&format!("[... {skip} earlier lines ...]\n"));
    }
    for l in &all[skip..] {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[derive(Debug, Clone)]
pub struct Check {
    pub status: String,
    pub detail: String,
}

/// `VSCSI-RESULT name STATUS detail` lines of the serial log.
pub fn parse_results(serial: &str) -> BTreeMap<String, Check> {
    let mut r = BTreeMap::new();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        let Some(at) = line.find("VSCSI-RESULT ") else {
            continue;
        };
        let mut it = line[at + 13..].splitn(3, ' ');
        let (Some(name), Some(status)) = (it.next(), it.next()) else {
            continue;
        };
        let detail = it.next().unwrap_or("").trim().to_string();
        r.insert(
            name.to_string(),
            Check {
                status: status.to_string(),
                detail,
            },
        );
    }
    r
}

/// `uptime=<secs>` in the first line containing `marker`.
pub fn uptime_at(serial: &str, marker: &str) -> Option<f64> {
    let line = serial.lines().find(|l| l.contains(marker))?;
    let v = line.split("uptime=").nth(1)?.split_whitespace().next()?;
    v.parse().ok()
}

/// Waits for, then holds until the returned file is dropped, the lock the
/// QEMU guest tests of one target directory take turns with
/// (`target/qemu-guest/.lock`): two TCG guests at once on a small machine
/// make every time limit twice as tight. Returns the file and the wait.
pub fn take_turn(target_dir: &Path) -> (fs::File, Duration) {
    let dir = target_dir.join("qemu-guest");
    fs::create_dir_all(&dir).unwrap();
    let lock = fs::File::create(dir.join(".lock")).unwrap();
    let t = Instant::now();
    // SAFETY: flock on a file descriptor this function owns and returns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        panic!(
            "flock {}: {}",
            dir.join(".lock").display(),
            std::io::Error::last_os_error()
        );
    }
    (lock, t.elapsed())
}

/// Whether the guest test `name` cannot run here (prerequisites missing):
/// says so loudly and returns `true` (the test then returns), or panics
/// when `VSCSI_REQUIRE_GUEST_TEST=1` asks for the test to run.
pub fn skipped(name: &str) -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return false;
    }
    let msg = format!(
        "the QEMU test {name} cannot run: missing {}.\nInstall: apt-get install {PACKAGES}",
        missing.join(", ")
    );
    if std::env::var("VSCSI_REQUIRE_GUEST_TEST").as_deref() == Ok("1") {
        panic!("{msg}\n(VSCSI_REQUIRE_GUEST_TEST=1 requires this test to run)");
    }
    loud(&format!(
        "\n{bar}\nSKIP {name}: {msg}\n(set VSCSI_REQUIRE_GUEST_TEST=1 to make this a failure)\n{bar}\n",
        bar = "=".repeat(78)
    ));
    true
}

/// md5 of `data`, with the host's `md5sum` (coreutils), as the guest's busybox prints it.
pub fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// For each `VSCSI-PATTERN name offset length md5` line of the guest's
/// serial output, a check `host-<name>`: the image holds at `offset` the
/// `length` bytes whose md5 the guest wrote.
pub fn check_host_patterns(serial: &str, image: &Path, results: &mut BTreeMap<String, Check>) {
    use std::os::unix::fs::FileExt;
    for line in serial
        .lines()
        .filter_map(|l| l.find("VSCSI-PATTERN ").map(|at| &l[at + 14..]))
    {
        let f: Vec<&str> = line.trim_end_matches('\r').split_whitespace().collect();
        let [name, off, len, md5] = f[..] else {
            continue;
        };
        let (Ok(off), Ok(len)) = (off.parse::<u64>(), len.parse::<usize>()) else {
            continue;
        };
        let mut buf = vec![0u8; len];
        let read = fs::File::open(image).and_then(|f| f.read_exact_at(&mut buf, off));
        let got = md5_hex(&buf);
        results.insert(
            format!("host-{name}"),
            match read {
                Ok(()) if got == md5 => Check {
                    status: "PASS".into(),
                    detail: format!("image at {off}: md5 {got}"),
                },
                Ok(()) => Check {
                    status: "FAIL".into(),
                    detail: format!("image has md5 {got} at {off}, the guest wrote {md5}"),
                },
                Err(e) => Check {
                    status: "FAIL".into(),
                    detail: format!("reading the image at {off}: {e}"),
                },
            },
        );
    }
}
