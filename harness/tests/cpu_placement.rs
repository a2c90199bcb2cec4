//! `--cpus LIST` and `cpus = "..."`: the daemon's request-queue workers
//! pinned round robin over a CPU list, read back from the kernel
//! (`/proc/PID/task/TID/status`, `Cpus_allowed_list`) while a real driver
//! is connected; a CPU the process may not run on refused before the
//! socket exists, naming it.

#[path = "common/backend_bin.rs"]
mod backend_bin;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::{backend_binary, KillOnDrop};
use vscsi_driver::{Driver, DriverOptions, QueueChoice, QueueConfig, ScsiCommand};

/// A kernel cpulist (`0-1,3`) as CPU numbers.
fn parse_cpulist(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

/// `Cpus_allowed_list` of a status file.
fn allowed(status: &str) -> Vec<usize> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status");
    parse_cpulist(line)
}

/// The CPUs each thread named `name` of process `pid` may run on.
fn threads_named(pid: u32, name: &str) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(t.join("comm")),
            std::fs::read_to_string(t.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim() == name {
            out.push(allowed(&status));
        }
    }
    out
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("d.img");
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    p
}

fn spawn(args: &[&str], dir: &Path) -> (KillOnDrop, PathBuf) {
    let socket = dir.join("vs.sock");
    let child = Command::new(backend_binary())
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .arg(image(dir))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !socket.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    (KillOnDrop(child), socket)
}

#[test]
fn request_queue_workers_are_pinned_round_robin_over_the_list() {
    let mine = allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    assert!(
        mine.len() >= 2,
        "this test needs two CPUs to tell pinned from unpinned threads; allowed: {mine:?}"
    );
    let (a, b) = (mine[0], mine[1]);
    let dir = tempfile::tempdir().unwrap();
    let list = format!("{a},{b}");
    let (daemon, socket) = spawn(&["--queues", "3", "--cpus", &list], dir.path());
    let pid = daemon.0.id();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = QueueConfig {
            queue_count: 3,
            ..Default::default()
        };
        let drv = Driver::connect_with(&socket, cfg, round_robin())
            .await
            .unwrap();
        // Round robin over the three queues, twice: every worker served.
        for _ in 0..6 {
            drv.send_command(0, 0, ScsiCommand::TestUnitReady)
                .await
                .unwrap();
        }
        // vhost-user-backend names every worker of the connection
        // `vring_worker`: the control/event queue's and three request
        // queues'. Queues 0, 1, 2 go to a, b, a; the control worker is
        // left where the process may run.
        let mut by_cpus: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
        for cpus in threads_named(pid, "vring_worker") {
            *by_cpus.entry(cpus).or_default() += 1;
        }
        let want = BTreeMap::from([(vec![a], 2), (vec![b], 1), (mine.clone(), 1)]);
        assert_eq!(
            by_cpus,
            want,
            "{}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap()
        );
        // The daemon's other threads (main, listener) are not pinned.
        let main = allowed(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap());
        assert_eq!(main, mine);
        drv.close();
    });
}

#[test]
fn without_cpus_no_worker_is_pinned() {
    let mine = allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (daemon, socket) = spawn(&["--queues", "2"], dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = QueueConfig {
            queue_count: 2,
            ..Default::default()
        };
        let drv = Driver::connect_with(&socket, cfg, round_robin())
            .await
            .unwrap();
        for _ in 0..4 {
            drv.send_command(0, 0, ScsiCommand::TestUnitReady)
                .await
                .unwrap();
        }
        let workers = threads_named(daemon.0.id(), "vring_worker");
        assert_eq!(workers.len(), 3, "{workers:?}");
        assert!(workers.iter().all(|c| *c == mine), "{workers:?}");
        drv.close();
    });
}

#[test]
fn a_cpu_outside_the_affinity_mask_is_refused_before_the_socket_exists() {
    let mine = allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    let outside = (0..).find(|c| !mine.contains(c)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vs.sock");
    let list = format!("{},{outside}", mine[0]);
    let out = Command::new(backend_binary())
        .arg("--socket")
        .arg(&socket)
        .args(["--cpus", &list])
        .arg(image(dir.path()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let mask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|s| s.trim().to_string())
        })
        .unwrap();
    assert!(
        err.contains(&format!(
            "--cpus {list}: CPU {outside} is not in this process's CPU affinity mask ({mask})"
        )),
        "{err}"
    );
    assert!(!socket.exists());

    // Not a CPU list: a usage error from the flag parser.
    let out = Command::new(backend_binary())
        .arg("--socket")
        .arg(&socket)
        .args(["--cpus", "0-"])
        .arg(image(dir.path()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a CPU list"), "{err}");

    // The same check for a controller's `cpus` in a file, with its line.
    let toml = format!(
        "[[controller]]\nsocket = \"{}\"\ncpus = \"{outside}\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n",
        socket.display(),
        dir.path().join("d.img").display()
    );
    let file = dir.path().join("vscsi.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(backend_binary())
        .arg("--check-config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("vscsi.toml:3")
            && err.contains("cpus")
            && err.contains(&format!("CPU {outside} is not in")),
        "{err}"
    );
    // A good list is printed back resolved.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace(
            &format!("cpus = \"{outside}\""),
            &format!("cpus = \"{}\"", mine[0]),
        ),
    )
    .unwrap();
    let out = Command::new(backend_binary())
        .arg("--check-config")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("cpus = \"{}\"", mine[0])), "{text}");
}

/// Commands one after another reach every request queue (and its worker).
fn round_robin() -> DriverOptions {
    DriverOptions {
        queue_choice: QueueChoice::RoundRobin,
        ..DriverOptions::default()
    }
}
