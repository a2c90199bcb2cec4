//! Finding, starting and stopping a `vscsi-backend` child process (for `demo`).

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const BACKEND: &str = "vscsi-backend";

/// This crate's workspace root, when the binary still runs where it was
/// built (its `Cargo.toml` and `backend/` are there).
fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    (root.join("Cargo.toml").is_file() && root.join("backend/Cargo.toml").is_file())
        .then(|| root.to_path_buf())
}

/// `cargo`: the one running us (`cargo run` sets `CARGO`), else from `PATH`.
fn cargo_program() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("CARGO").map(PathBuf::from) {
        if c.is_file() {
            return Some(c);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("cargo"))
        .find(|c| c.is_file())
}

/// The cargo profile directory the running binary sits in (`release` or
/// `debug`), so a backend built for us lands next to it.
fn profile_of(exe_dir: &Path) -> &'static str {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let dir = match name(exe_dir).as_deref() {
        Some("deps") | Some("examples") => exe_dir.parent().unwrap_or(exe_dir).to_path_buf(),
        _ => exe_dir.to_path_buf(),
    };
    match name(&dir).as_deref() {
        Some("debug") => "debug",
        _ => "release",
    }
}

fn build_command(profile: &str) -> String {
    match profile {
        "debug" => format!("cargo build -p {BACKEND}"),
        _ => format!("cargo build --release -p {BACKEND}"),
    }
}

/// What to do when the backend is missing (and will not be built).
fn not_found_help(exe: &Path, looked: &Path, root: Option<&Path>, command: &str) -> String {
    let build = match root {
        Some(root) => format!("build it with:\n    cd {} && {command}", root.display()),
        None => format!("build it in the vscsi workspace with:\n    {command}"),
    };
    format!(
        "{BACKEND} was not found next to {} (looked for {}).\n\
         {build}\n\
         and run the demo with:\n    cargo run --release -p vscsi -- demo\n\
         or pass --backend /path/to/{BACKEND}",
        exe.display(),
        looked.display(),
    )
}

/// Where `vscsi-backend` is: `--backend`, else next to this executable,
/// else (when this binary runs inside its source workspace and `build` is
/// on) built with cargo for the same profile.
pub fn locate(explicit: Option<&Path>, build: bool) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--backend {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe =
        std::env::current_exe().context("cannot find the path of the running vscsi executable")?;
    let exe_dir = exe
        .parent()
        .context("the vscsi executable has no parent directory")?
        .to_path_buf();
    let next_to_us = exe_dir.join(BACKEND);
    if next_to_us.is_file() {
        return Ok(next_to_us);
    }
    let profile = profile_of(&exe_dir);
    let command = build_command(profile);
    let Some(root) = workspace_root() else {
        bail!(not_found_help(&exe, &next_to_us, None, &command));
    };
    let candidates = || {
        let mut c = vec![
            next_to_us.clone(),
            root.join("target").join(profile).join(BACKEND),
        ];
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            c.push(PathBuf::from(t).join(profile).join(BACKEND));
        }
        c
    };
    if let Some(found) = candidates().into_iter().find(|c| c.is_file()) {
        return Ok(found);
    }
    let cargo = cargo_program();
    let (true, Some(cargo)) = (build, cargo) else {
        bail!(not_found_help(&exe, &next_to_us, Some(&root), &command));
    };
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "building {BACKEND}: {command}  (in {})",
            root.display()
        );
    }
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root).args(["build", "-p", BACKEND]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", cargo.display()))?;
    if !status.success() {
        bail!("`{command}` failed ({status}); fix the build, or pass --backend /path/to/{BACKEND}");
    }
    candidates()
        .into_iter()
        .find(|c| c.is_file())
        .with_context(|| {
            format!(
                "`{command}` succeeded but {BACKEND} is in none of: {}",
                candidates()
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// A running `vscsi-backend`; killed (SIGKILL) if dropped without [`Backend::stop`].
pub struct Backend {
    child: Option<Child>,
    /// Its process id.
    pub pid: u32,
    socket: PathBuf,
    log: PathBuf,
}

impl Backend {
    /// Starts `binary --socket SOCKET --queues N IMAGE`, its output going to `log`.
    pub fn spawn(
        binary: &Path,
        socket: &Path,
        image: &Path,
        queues: u16,
        extra: &[String],
        log: &Path,
    ) -> Result<Backend> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut args: Vec<OsString> = vec!["--socket".into(), socket.into()];
        args.extend(["--queues".into(), queues.to_string().into()]);
        args.extend(extra.iter().map(OsString::from));
        args.push(image.into());
        let child = Command::new(binary)
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Backend {
            pid: child.id(),
            child: Some(child),
            socket: socket.to_owned(),
            log: log.to_owned(),
        })
    }

    /// The last lines the backend logged, indented, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        if tail.is_empty() {
            return "(the backend printed nothing)".into();
        }
        tail.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the socket to appear; fails if the backend exits first or
    /// `timeout` passes, showing what it printed.
    pub async fn wait_for_socket(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let is_socket = std::fs::symlink_metadata(&self.socket)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if is_socket {
                return Ok(());
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "{BACKEND} exited ({status}) before creating its socket; it said:\n{}",
                    self.log_tail()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{BACKEND} did not create {} within {:.1} s; it said:\n{}",
                    self.socket.display(),
                    timeout.as_secs_f64(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the backend with SIGTERM and waits up to `timeout` for it to
    /// exit (then SIGKILL and an error). Returns its exit status.
    pub async fn stop(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("the backend was already reaped")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: plain kill(2) on our own child, which is not yet reaped
        // (so the pid cannot have been reused).
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            bail!("cannot send SIGTERM to {BACKEND} (pid {}): {e}", self.pid);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{BACKEND} (pid {}) did not exit within {:.0} s of SIGTERM and was killed; it said:\n{}",
                    self.pid,
                    timeout.as_secs_f64(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_follows_the_executable_directory() {
        assert_eq!(profile_of(Path::new("/w/target/release")), "release");
        assert_eq!(profile_of(Path::new("/w/target/debug")), "debug");
        assert_eq!(profile_of(Path::new("/w/target/debug/deps")), "debug");
        assert_eq!(profile_of(Path::new("/usr/local/bin")), "release");
        assert_eq!(
            build_command("release"),
            "cargo build --release -p vscsi-backend"
        );
        assert_eq!(build_command("debug"), "cargo build -p vscsi-backend");
    }

    #[test]
    fn missing_backend_message_gives_the_commands() {
        let m = not_found_help(
            Path::new("/opt/bin/vscsi"),
            Path::new("/opt/bin/vscsi-backend"),
            Some(Path::new("/src/vscsi")),
            &build_command("release"),
        );
        assert!(m.starts_with("vscsi-backend was not found next to /opt/bin/vscsi (looked for /opt/bin/vscsi-backend)."));
        assert!(
            m.contains("cd /src/vscsi && cargo build --release -p vscsi-backend"),
            "{m}"
        );
        assert!(m.contains("cargo run --release -p vscsi -- demo"), "{m}");
        assert!(m.contains("--backend"), "{m}");
    }
}
