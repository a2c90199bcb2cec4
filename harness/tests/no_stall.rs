//! Polling never stalls a command: `vscsi bench` (its own daemon process,
//! the real socket, rings and eventfds) in every polling mode on both
//! sides — off, adaptive, and a fixed 50 µs spin — at QD1, QD32 and QD128
//! on one and two request queues; no completion may take a second or more.
//!
//! Not a speed test: a second is a liveness bound thousands of times the
//! normal latency. Spinners that starve the thread they wait for (more
//! spinners than CPUs, or a submitter spinning while the tasks whose
//! completions it reaps cannot run) once made completions take seconds.

#[path = "common/backend_bin.rs"]
mod backend_bin;

use std::process::Command;

use backend_bin::backend_binary;

/// The driver's and the daemon's flags of each mode.
const MODES: [(&str, &[&str]); 3] = [
    ("off", &["--poll", "off", "--daemon-poll", "off"]),
    (
        "adaptive",
        &["--poll", "adaptive", "--daemon-poll", "adaptive"],
    ),
    (
        "fixed 50 us",
        &["--poll-us", "50", "--daemon-poll-us", "50"],
    ),
];

/// Longest completion allowed, in microseconds.
const LIMIT_US: f64 = 1_000_000.0;

#[test]
fn no_completion_takes_a_second_in_any_polling_mode() {
    let backend = backend_binary();
    let mut failures = Vec::new();
    for (mode, flags) in MODES {
        for queues in ["1", "2"] {
            for qd in ["1", "32", "128"] {
                let out = Command::new(env!("CARGO_BIN_EXE_vscsi"))
                    .args(["bench", "--rw", "randread", "--bs", "4k", "--runtime", "2"])
                    .args(["--image-size", "64M", "--json", "--no-progress"])
                    .args(["--iodepth", qd, "--queues", queues])
                    .arg("--backend")
                    .arg(&backend)
                    .args(flags)
                    .output()
                    .expect("run vscsi bench");
                let what = format!("{mode}, QD{qd}, {queues} queue(s)");
                assert!(
                    out.status.success(),
                    "{what}: vscsi bench failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", out.stdout));
                let max = v["lat_us"]["max"].as_f64().expect("lat_us.max");
                let reads = v["reads"].as_u64().expect("reads");
                eprintln!(
                    "{what}: {:.0} IOPS, p50 {} us, max {max:.0} us",
                    v["iops"].as_f64().unwrap_or(0.0),
                    v["lat_us"]["p50"]
                );
                assert!(reads > 0, "{what}: no command completed");
                if max >= LIMIT_US {
                    failures.push(format!("{what}: a completion took {max:.0} us"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "stalls: {failures:#?}");
}
