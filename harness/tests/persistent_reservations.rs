//! Persistent reservations across I_T nexuses, through the daemon binary,
//! real unix sockets and memfd shared memory.
//!
//! One daemon serves one writable image as a shared logical unit on three
//! controllers (`shared = true` in its TOML configuration): three target
//! ports, and one frontend (initiator port) on each, so three I_T nexuses to
//! one logical unit. The checks follow SPC-5 §5.14: registration and
//! reservation seen from every path, RESERVATION CONFLICT for the other
//! nexuses per type, PREEMPT with REGISTRATIONS PREEMPTED, RELEASE, CLEAR,
//! an SPC-2 reservation released by the end of its connection, resets,
//! APTPL state that survives SIGKILL and a restart, and (in-process, to
//! set a fault at run time) PREEMPT AND ABORT completing the commands held
//! for the preempted path.

#[path = "common/backend_bin.rs"]
mod backend_bin;
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_bin::KillOnDrop;
use vscsi_driver::{
    Driver, DriverOptions, QueueConfig, Response, RetryPolicy, ScsiCommand, Tmf, TmfResponse,
};

const RESERVATION_CONFLICT: u8 = 0x18;
const PATHS: [&str; 3] = ["pa", "pb", "pc"];

struct Setup {
    dir: tempfile::TempDir,
    bin: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("shared.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let mut toml = String::new();
        for name in PATHS {
            toml.push_str(&format!(
                "[[controller]]\nname = \"{name}\"\nsocket = \"{}\"\nqueues = 1\n\n\
                 [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\nshared = true\npower_on_ua = false\n\n",
                dir.path().join(format!("{name}.sock")).display(),
                image.display()
            ));
        }
        let config = dir.path().join("pr.toml");
        std::fs::write(&config, toml).unwrap();
        Self {
            bin: backend_bin::backend_binary(),
            dir,
            config,
        }
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    fn start(&self) -> KillOnDrop {
        for p in PATHS {
            let _ = std::fs::remove_file(self.socket(p));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child: Child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("vscsi-backend starts");
        let start = Instant::now();
        while !PATHS.iter().all(|p| self.socket(p).exists()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the daemon did not start: {}",
                std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        KillOnDrop(child)
    }

    async fn connect(&self, name: &str) -> Driver {
        let opts = DriverOptions {
            timeout: Duration::from_secs(5),
            // Every answer to the test: unit attentions are what it checks.
            retry: RetryPolicy::NONE,
            ..Default::default()
        };
        Driver::connect_with(&self.socket(name), QueueConfig::default(), opts)
            .await
            .expect("the driver connects")
    }
}

async fn raw(drv: &Driver, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> Response {
    drv.send_command(
        0,
        0,
        ScsiCommand::Raw {
            cdb: cdb.to_vec(),
            data_out: data_out.to_vec(),
            data_in_len,
        },
    )
    .await
    .expect("command completes")
}

fn triple(r: &Response) -> (u8, u8, u8) {
    let s = &r.sense;
    assert!(s.len() >= 14, "status {:#x}, sense {s:02x?}", r.status);
    (s[2] & 0x0F, s[12], s[13])
}

async fn pr_in(drv: &Driver, sa: u8) -> Vec<u8> {
    let r = raw(drv, &[0x5E, sa, 0, 0, 0, 0, 0, 0x04, 0x00, 0], &[], 1024).await;
    assert!(r.is_good(), "PR IN {sa}: {:#x} {:02x?}", r.status, r.sense);
    r.data
}

async fn pr_out(drv: &Driver, sa: u8, rtype: u8, key: u64, sa_key: u64, flags: u8) -> Response {
    let mut list = vec![0u8; 24];
    list[0..8].copy_from_slice(&key.to_be_bytes());
    list[8..16].copy_from_slice(&sa_key.to_be_bytes());
    list[20] = flags;
    raw(drv, &[0x5F, sa, rtype, 0, 0, 0, 0, 0, 24, 0], &list, 0).await
}

async fn write(drv: &Driver) -> Response {
    raw(drv, &[0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0], &[0x5A; 512], 0).await
}

async fn read(drv: &Driver) -> Response {
    raw(drv, &[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0], &[], 512).await
}

fn keys(data: &[u8]) -> Vec<u64> {
    data[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn three_paths_are_three_nexuses_to_one_logical_unit() {
    let s = Setup::new();
    let _daemon = s.start();
    runtime().block_on(async {
        let (a, b, c) = (
            s.connect("pa").await,
            s.connect("pb").await,
            s.connect("pc").await,
        );
        // One logical unit: the same serial (VPD 80h) on every path.
        let serial = |d: Vec<u8>| d[4..].to_vec();
        let sa = serial(raw(&a, &[0x12, 1, 0x80, 0, 0xFF, 0], &[], 255).await.data);
        assert!(!sa.is_empty());
        assert_eq!(
            sa,
            serial(raw(&b, &[0x12, 1, 0x80, 0, 0xFF, 0], &[], 255).await.data)
        );
        // A write through one path reads back through another.
        assert!(write(&a).await.is_good());
        assert_eq!(read(&c).await.data, vec![0x5A; 512]);

        assert!(pr_out(&a, 0, 0, 0, 0xAAAA, 0).await.is_good());
        assert!(pr_out(&b, 0, 0, 0, 0xBBBB, 0).await.is_good());
        let k = pr_in(&c, 0).await;
        assert_eq!(&k[..4], &[0, 0, 0, 2], "PRgeneration");
        assert_eq!(keys(&k), [0xAAAA, 0xBBBB]);
        // READ FULL STATUS: each nexus's TransportID and target port.
        assert!(pr_out(&a, 1, 1, 0xAAAA, 0, 0).await.is_good());
        let f = pr_in(&c, 3).await;
        assert_eq!(&f[4..8], &[0, 0, 0, 96]);
        assert_eq!(&f[8..16], &0xAAAAu64.to_be_bytes());
        assert_eq!(f[20], 0x01, "R_HOLDER");
        assert_eq!(f[21], 0x01, "TYPE");
        assert_eq!(&f[26..28], &[0, 1], "relative target port of pa");
        assert_eq!(&f[32..48], b"\x05\x00\x00\x14vhost-user:p");
        assert_eq!(&f[48..52], b"a\0\0\0");
        assert_eq!(&f[56 + 18..56 + 20], &[0, 2], "relative target port of pb");
        assert_eq!(&f[56 + 24..56 + 40], b"\x05\x00\x00\x14vhost-user:p");
        assert_eq!(f[56 + 40], b'b');
        assert!(pr_out(&a, 2, 1, 0xAAAA, 0, 0).await.is_good());
        assert!(pr_out(&a, 3, 0, 0xAAAA, 0, 0).await.is_good());
        // CLEAR told b.
        assert_eq!(triple(&read(&b).await), (6, 0x2A, 0x03));
    });
}

#[test]
fn writes_on_the_other_paths_conflict_per_type() {
    let s = Setup::new();
    let _daemon = s.start();
    runtime().block_on(async {
        let (a, b, c) = (
            s.connect("pa").await,
            s.connect("pb").await,
            s.connect("pc").await,
        );
        // (type, b registered may write, b may read, c unregistered may
        // write, c may read): SPC-5 / SBC-4 tables.
        for (rtype, b_w, b_r, c_w, c_r) in [
            (1u8, false, true, false, true),
            (3, false, false, false, false),
            (5, true, true, false, true),
            (6, true, true, false, false),
            (7, true, true, false, true),
            (8, true, true, false, false),
        ] {
            assert!(pr_out(&a, 0, 0, 0, 0xA, 0).await.is_good());
            assert!(pr_out(&b, 0, 0, 0, 0xB, 0).await.is_good());
            assert!(
                pr_out(&a, 1, rtype, 0xA, 0, 0).await.is_good(),
                "type {rtype}"
            );
            assert_eq!(pr_in(&c, 1).await[21], rtype);
            assert!(write(&a).await.is_good(), "type {rtype}");
            for (drv, w, r, who) in [(&b, b_w, b_r, "b"), (&c, c_w, c_r, "c")] {
                let wr = write(drv).await;
                assert_eq!(wr.is_good(), w, "type {rtype}: write from {who}");
                if !w {
                    assert_eq!(wr.status, RESERVATION_CONFLICT, "type {rtype} {who}");
                    assert!(wr.sense.is_empty());
                }
                let rd = read(drv).await;
                assert_eq!(rd.is_good(), r, "type {rtype}: read from {who}");
                if !r {
                    assert_eq!(rd.status, RESERVATION_CONFLICT, "type {rtype} {who}");
                }
                // TEST UNIT READY and PERSISTENT RESERVE IN always go.
                assert!(raw(drv, &[0, 0, 0, 0, 0, 0], &[], 0).await.is_good());
            }
            // Release (types 5-8 tell the other registrant), then clear.
            assert!(pr_out(&a, 2, rtype, 0xA, 0, 0).await.is_good());
            if rtype >= 5 {
                assert_eq!(triple(&read(&b).await), (6, 0x2A, 0x04), "type {rtype}");
            }
            assert!(write(&c).await.is_good(), "type {rtype}: released");
            assert!(pr_out(&b, 3, 0, 0xB, 0, 0).await.is_good());
            assert_eq!(triple(&read(&a).await), (6, 0x2A, 0x03), "type {rtype}");
        }
    });
}

#[test]
fn preempt_takes_over_and_the_preempted_path_is_told() {
    let s = Setup::new();
    let _daemon = s.start();
    runtime().block_on(async {
        let (a, b) = (s.connect("pa").await, s.connect("pb").await);
        assert!(pr_out(&a, 0, 0, 0, 0xA, 0).await.is_good());
        assert!(pr_out(&b, 0, 0, 0, 0xB, 0).await.is_good());
        assert!(pr_out(&a, 1, 3, 0xA, 0, 0).await.is_good());
        assert_eq!(write(&b).await.status, RESERVATION_CONFLICT);
        // PREEMPT AND ABORT: b holds WRITE EXCLUSIVE, a is gone.
        assert!(pr_out(&b, 5, 1, 0xB, 0xA, 0).await.is_good());
        assert_eq!(triple(&write(&a).await), (6, 0x2A, 0x05));
        assert_eq!(write(&a).await.status, RESERVATION_CONFLICT);
        assert!(read(&a).await.is_good());
        assert!(write(&b).await.is_good());
        assert_eq!(keys(&pr_in(&a, 0).await), [0xB]);
        let r = pr_in(&a, 1).await;
        assert_eq!(&r[8..16], &0xBu64.to_be_bytes());
        assert_eq!(r[21], 1);
    });
}

#[test]
fn an_spc2_reservation_ends_with_its_connection() {
    let s = Setup::new();
    let _daemon = s.start();
    runtime().block_on(async {
        let b = s.connect("pb").await;
        {
            let a = s.connect("pa").await;
            assert!(raw(&a, &[0x16, 0, 0, 0, 0, 0], &[], 0).await.is_good());
            assert_eq!(read(&b).await.status, RESERVATION_CONFLICT);
            assert_eq!(
                raw(&b, &[0x16, 0, 0, 0, 0, 0], &[], 0).await.status,
                RESERVATION_CONFLICT
            );
            assert!(write(&a).await.is_good());
        }
        // The connection of pa ended: I_T nexus loss releases it.
        let start = Instant::now();
        while read(&b).await.status == RESERVATION_CONFLICT {
            assert!(start.elapsed() < Duration::from_secs(5), "still reserved");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(write(&b).await.is_good());
    });
}

#[test]
fn resets_keep_persistent_reservations_and_drop_spc2_ones() {
    let s = Setup::new();
    let _daemon = s.start();
    runtime().block_on(async {
        let (a, b) = (s.connect("pa").await, s.connect("pb").await);
        // RESERVE(6) by a; b's LOGICAL UNIT RESET releases it.
        assert!(raw(&a, &[0x16, 0, 0, 0, 0, 0], &[], 0).await.is_good());
        assert_eq!(read(&b).await.status, RESERVATION_CONFLICT);
        let tmf = b
            .task_management(0, 0, Tmf::LogicalUnitReset)
            .await
            .unwrap();
        assert_eq!(tmf, TmfResponse::FunctionComplete);
        assert_eq!(triple(&read(&b).await), (6, 0x29, 0x00));
        assert!(read(&b).await.is_good());
        // A persistent reservation stays through LOGICAL UNIT RESET and
        // I_T NEXUS RESET, from either path.
        assert!(pr_out(&a, 0, 0, 0, 0xA, 0).await.is_good());
        assert!(pr_out(&a, 1, 1, 0xA, 0, 0).await.is_good());
        for (who, t) in [
            (&b, Tmf::LogicalUnitReset),
            (&a, Tmf::TargetReset),
            (&b, Tmf::TargetReset),
        ] {
            assert_eq!(
                who.task_management(0, 0, t).await.unwrap(),
                TmfResponse::FunctionComplete
            );
        }
        let _ = read(&b).await;
        let _ = read(&a).await;
        assert_eq!(pr_in(&b, 1).await[21], 1);
        assert_eq!(write(&b).await.status, RESERVATION_CONFLICT);
        assert!(write(&a).await.is_good());
    });
}

#[test]
fn aptpl_state_survives_sigkill_and_a_restart() {
    let s = Setup::new();
    let mut daemon = s.start();
    let rt = runtime();
    rt.block_on(async {
        let (a, b) = (s.connect("pa").await, s.connect("pb").await);
        assert!(pr_out(&a, 0, 0, 0, 0xA, 0x01).await.is_good());
        assert!(pr_out(&b, 0, 0, 0, 0xB, 0x01).await.is_good());
        assert!(pr_out(&a, 1, 5, 0xA, 0, 0).await.is_good());
        // PTPL_A.
        assert_eq!(pr_in(&a, 2).await[3] & 0x01, 1);
    });
    let state = s.dir.path().join("shared.img.pr");
    assert!(state.exists(), "{} written", state.display());
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    let _daemon = s.start();
    rt.block_on(async {
        // The frontends of pa and pb are the same initiator ports again.
        let (a, b, c) = (
            s.connect("pa").await,
            s.connect("pb").await,
            s.connect("pc").await,
        );
        let k = pr_in(&c, 0).await;
        assert_eq!(&k[..4], &[0, 0, 0, 2], "PRgeneration kept");
        assert_eq!(keys(&k), [0xA, 0xB]);
        let r = pr_in(&c, 1).await;
        assert_eq!(&r[8..16], &0xAu64.to_be_bytes());
        assert_eq!(r[21], 5);
        assert!(write(&a).await.is_good());
        assert!(write(&b).await.is_good(), "a registrant of type 5");
        assert_eq!(write(&c).await.status, RESERVATION_CONFLICT);
        // APTPL=0 on the next REGISTER: the state file goes.
        assert!(pr_out(&b, 0, 0, 0xB, 0xB, 0).await.is_good());
        assert!(!state.exists());
    });
}

#[test]
fn preempt_and_abort_aborts_the_commands_held_for_the_preempted_path() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mut toml = String::new();
    for name in ["pa", "pb"] {
        toml.push_str(&format!(
            "[[controller]]\nname = \"{name}\"\nsocket = \"{}\"\nqueues = 1\n\n\
             [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\nshared = true\npower_on_ua = false\n\n",
            dir.path().join(format!("{name}.sock")).display(),
            image.display()
        ));
    }
    let svc = common::RunningService::start(dir.path(), &toml);
    runtime().block_on(async {
        let opts = || DriverOptions {
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::NONE,
            ..Default::default()
        };
        let connect = |n: &str| {
            let p = dir.path().join(format!("{n}.sock"));
            async move {
                Driver::connect_with(&p, QueueConfig::default(), opts())
                    .await
                    .unwrap()
            }
        };
        let a = std::sync::Arc::new(connect("pa").await);
        let b = connect("pb").await;
        assert!(pr_out(&a, 0, 0, 0, 0xA, 0).await.is_good());
        assert!(pr_out(&b, 0, 0, 0, 0xB, 0).await.is_good());
        assert!(pr_out(&a, 1, 3, 0xA, 0, 0).await.is_good());
        // pa's commands now wait in its task set.
        svc.call(
            "set_fault",
            serde_json::json!({"controller": "pa", "target": 0, "lun": 0, "fault": "stall"}),
        )
        .await;
        let held = tokio::spawn({
            let a = a.clone();
            async move { write(&a).await }
        });
        let start = Instant::now();
        while svc.service.controllers()[0].opts.faults.held_now() == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "never held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // b preempts pa and aborts its task set: the held WRITE completes.
        assert!(pr_out(&b, 5, 1, 0xB, 0xA, 0).await.is_good());
        let r = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("the held WRITE completes")
            .unwrap();
        assert_eq!(r.response, 2, "VIRTIO_SCSI_S_ABORTED");
        svc.call(
            "clear_fault",
            serde_json::json!({"controller": "pa", "target": 0, "lun": 0}),
        )
        .await;
        assert_eq!(triple(&write(&a).await), (6, 0x2A, 0x05));
        assert_eq!(write(&a).await.status, RESERVATION_CONFLICT);
        assert!(write(&b).await.is_good());
    });
}

#[test]
fn add_lun_makes_a_second_path_to_the_same_logical_unit() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let other = dir.path().join("other.img");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    // pb starts with a LUN of its own (a controller needs one).
    let toml = format!(
        "[[controller]]\nname = \"pa\"\nsocket = \"{}\"\nqueues = 1\n\n\
         [[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\nshared = true\npower_on_ua = false\n\n\
         [[controller]]\nname = \"pb\"\nsocket = \"{}\"\nqueues = 1\n\n\
         [[controller.lun]]\ntarget = 1\nlun = 0\nimage = \"{}\"\npower_on_ua = false\n",
        dir.path().join("pa.sock").display(),
        image.display(),
        dir.path().join("pb.sock").display(),
        other.display()
    );
    let svc = common::RunningService::start(dir.path(), &toml);
    let add = |params: serde_json::Value| svc.service.call("add_lun", &params);
    // Other options than pa's: refused (one logical unit, one identity).
    let e = add(
        serde_json::json!({"controller": "pb", "target": 0, "lun": 0,
        "image": image, "shared": true, "power_on_ua": false, "serial": "OTHER"}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("same options"), "{e}");
    // Not marked shared: refused.
    assert!(add(
        serde_json::json!({"controller": "pb", "target": 0, "lun": 0,
        "image": image, "power_on_ua": false})
    )
    .is_err());
    add(
        serde_json::json!({"controller": "pb", "target": 0, "lun": 0,
        "image": image, "shared": true, "power_on_ua": false}),
    )
    .unwrap();
    runtime().block_on(async {
        let opts = || DriverOptions {
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::NONE,
            ..Default::default()
        };
        let a = Driver::connect_with(&dir.path().join("pa.sock"), QueueConfig::default(), opts())
            .await
            .unwrap();
        let b = Driver::connect_with(&dir.path().join("pb.sock"), QueueConfig::default(), opts())
            .await
            .unwrap();
        assert!(pr_out(&a, 0, 0, 0, 0xA, 0).await.is_good());
        assert!(pr_out(&a, 1, 1, 0xA, 0, 0).await.is_good());
        // The same reservation through the new path.
        assert_eq!(keys(&pr_in(&b, 0).await), [0xA]);
        assert_eq!(write(&b).await.status, RESERVATION_CONFLICT);
        assert!(write(&a).await.is_good());
        assert_eq!(read(&b).await.data, vec![0x5A; 512]);
    });
    // Removing it from pb leaves pa serving it, reservation and all.
    svc.service
        .call(
            "remove_lun",
            &serde_json::json!({"controller": "pb", "target": 0, "lun": 0}),
        )
        .unwrap();
    runtime().block_on(async {
        let a = Driver::connect_with(
            &dir.path().join("pa.sock"),
            QueueConfig::default(),
            DriverOptions {
                retry: RetryPolicy::NONE,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(pr_in(&a, 1).await[21], 1);
        assert!(write(&a).await.is_good());
    });
}

#[test]
fn a_reconnecting_path_gets_power_on_and_the_others_do_not() {
    let s = Setup::new();
    let toml = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        toml.replace("power_on_ua = false", "power_on_ua = true"),
    )
    .unwrap();
    let _daemon = s.start();
    runtime().block_on(async {
        let a = s.connect("pa").await;
        // The LU-wide POWER ON of a freshly opened LU, to whoever asks first.
        assert_eq!(triple(&read(&a).await), (6, 0x29, 0x00));
        assert!(read(&a).await.is_good());
        for _ in 0..2 {
            let b = s.connect("pb").await;
            assert_eq!(triple(&read(&b).await), (6, 0x29, 0x00), "pb's new nexus");
            assert!(read(&b).await.is_good());
            assert!(
                read(&a).await.is_good(),
                "pa is not told of pb's connection"
            );
        }
    });
}
