//! A real `vscsi-backend` daemon for tests: real unix socket, real memfd
//! shared memory, real rings. It runs in-process (the library's serving
//! loop on a thread) so a test can start as many as it needs.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use vscsi_backend::config::{build_bus, LunSpec};
use vscsi_backend::daemon::{self, Shutdown};
use vscsi_backend::service::Service;
use vscsi_backend::vhost::DeviceOptions;

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    shutdown: Arc<Shutdown>,
    thread: Option<JoinHandle<()>>,
}

/// Makes a `size`-byte image (sparse) in `dir`.
pub fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    path
}

/// Reads `len` bytes of an image file at `offset`, as the host sees them.
pub fn host_read(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// A block pattern that tells where it belongs: LBA and seed in every 8 bytes.
pub fn pattern(lba: u64, blocks: u32, block_size: u32, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(blocks as usize * block_size as usize);
    for b in 0..blocks as u64 {
        for w in 0..block_size as u64 / 8 {
            v.extend_from_slice(&((lba + b) << 20 ^ w ^ seed.rotate_left(17)).to_le_bytes());
        }
    }
    v
}

impl TestDaemon {
    /// Serves `luns` (target, lun, size, read_only) from fresh images.
    pub fn start(luns: &[(u8, u16, u64, bool)]) -> Self {
        Self::start_with(luns, DeviceOptions::default())
    }

    pub fn start_with(luns: &[(u8, u16, u64, bool)], opts: DeviceOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let specs: Vec<LunSpec> = luns
            .iter()
            .map(|&(target, lun, size, read_only)| {
                let mut spec = LunSpec::new(
                    target,
                    lun,
                    image(dir.path(), &format!("t{target}l{lun}.img"), size),
                );
                spec.options.read_only = read_only;
                spec
            })
            .collect();
        Self::serve(dir, &specs, opts)
    }

    /// Serves existing images. Their LUs start without the POWER ON, RESET
    /// unit attention a real disk (and the daemon, by default) reports to a
    /// new frontend, so each test's first command gets its own answer; the
    /// unit attention has its own test.
    pub fn serve(dir: tempfile::TempDir, specs: &[LunSpec], opts: DeviceOptions) -> Self {
        let specs: Vec<LunSpec> = specs
            .iter()
            .cloned()
            .map(|mut s| {
                s.options.power_on_ua = false;
                s
            })
            .collect();
        Self::serve_exact(dir, &specs, opts)
    }

    /// Serves existing images with their options exactly as given.
    pub fn serve_exact(dir: tempfile::TempDir, specs: &[LunSpec], opts: DeviceOptions) -> Self {
        let bus = Arc::new(build_bus(specs, opts.max_sectors).expect("images open"));
        let socket = dir.path().join("vs.sock");
        let listener = daemon::bind(&socket).unwrap();
        let shutdown = Arc::new(Shutdown::default());
        let s = shutdown.clone();
        let thread = std::thread::spawn(move || {
            daemon::serve(listener, bus, opts, s).expect("daemon serves");
        });
        Self {
            dir,
            socket,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn image_path(&self, target: u8, lun: u16) -> PathBuf {
        self.dir.path().join(format!("t{target}l{lun}.img"))
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shutdown.request();
            let _ = std::os::unix::net::UnixStream::connect(&self.socket);
            t.join().unwrap();
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The daemon as a service, in-process: a TOML configuration, its
/// controllers each on their own socket and accept thread, and the control
/// methods callable directly (`service.call`), as the control socket does.
pub struct RunningService {
    pub service: Arc<Service>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningService {
    /// Writes `toml` to `dir/c.toml` and serves it.
    pub fn start(dir: &Path, toml: &str) -> RunningService {
        let f = dir.join("c.toml");
        std::fs::write(&f, toml).unwrap();
        let cfg = vscsi_backend::config::load_file(&f).unwrap();
        let service = Arc::new(Service::build(&cfg).unwrap());
        let mut threads = Vec::new();
        for (c, cc) in service.controllers().iter().zip(&cfg.controllers) {
            let l = daemon::bind_with(&cc.socket, &cc.access).unwrap();
            let c = c.clone();
            threads.push(std::thread::spawn(move || {
                daemon::serve_controller(
                    l,
                    &c.bus,
                    c.opts.clone(),
                    c.shutdown.clone(),
                    &c.name,
                    &c.connections,
                )
                .unwrap();
            }));
        }
        RunningService { service, threads }
    }

    /// A control method, from async code (the service blocks).
    pub async fn call(&self, method: &'static str, params: serde_json::Value) -> serde_json::Value {
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || service.call(method, &params))
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.service.shutdown();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
