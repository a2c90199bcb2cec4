//! Run-time changes seen by the driver through real sockets: two
//! controllers isolated from each other, a LUN added (a RESCAN event on
//! the live connection, then seen by its scan), and a
//! LUN removed while writes run (every completed write is in the image,
//! later commands get LOGICAL UNIT NOT SUPPORTED).

use std::sync::Arc;

mod common;

use common::{host_read, image, RunningService};
use serde_json::json;
use vscsi_driver::{Driver, QueueConfig, ScsiCommand};

fn pattern(lba: u64, blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks as usize * 512)
        .map(|i| (lba as usize * 7 + i / 512 + seed as usize) as u8 ^ 0x5A)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_hotplug_and_unplug_under_io() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    image(dir, "a.img", 4 << 20);
    let b = image(dir, "b.img", 4 << 20);
    let c = image(dir, "c.img", 4 << 20);
    let run = RunningService::start(
        dir,
        "[[controller]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"a.img\"\n\
         [[controller]]\nname = \"vm2\"\nsocket = \"vm2.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"b.img\"\n",
    );
    let vm1 = Driver::connect(dir.join("vm1.sock"), QueueConfig::default())
        .await
        .unwrap();
    let vm2 = Driver::connect(dir.join("vm2.sock"), QueueConfig::default())
        .await
        .unwrap();

    // Isolation: the same address on each socket is a different image.
    let data = pattern(10, 8, 1);
    let w = vm1
        .send_command(
            0,
            0,
            ScsiCommand::Write {
                lba: 10,
                blocks: 8,
                data: data.clone(),
            },
        )
        .await
        .unwrap();
    assert!(w.is_good());
    let r = vm2
        .send_command(
            0,
            0,
            ScsiCommand::Read {
                lba: 10,
                blocks: 8,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good());
    assert_ne!(r.data, data);
    assert_eq!(host_read(&b, 10 * 512, data.len()), vec![0; data.len()]);
    // vm2 cannot reach vm1's LUNs whatever it asks for.
    let scan2 = vm2.scan().await.unwrap();
    assert_eq!(scan2.len(), 1);

    // Hot-plug on vm1: the live connection gets a TRANSPORT_RESET RESCAN
    // event (VIRTIO 1.2 §5.6.6.3) and its next scan finds the LUN.
    let mut events = vm1.events();
    let r = run
        .service
        .call(
            "add_lun",
            &json!({"controller": "vm1", "target": 0, "lun": 1, "image": c}),
        )
        .unwrap();
    assert_eq!(r["capacity_blocks"], 8192);
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("a hot-plug event within 5 s")
        .unwrap();
    assert_eq!(
        event,
        vscsi_driver::DeviceEvent::TransportReset {
            lun: vscsi_protocol::lun::Lun { target: 0, lun: 1 },
            reason: vscsi_driver::events::ResetReason::Rescan,
        }
    );
    let found: Vec<(u8, u16)> = vm1
        .scan()
        .await
        .unwrap()
        .iter()
        .map(|l| (l.lun.target, l.lun.lun))
        .collect();
    assert_eq!(found, vec![(0, 0), (0, 1)]);
    assert_eq!(
        vm2.scan().await.unwrap().len(),
        1,
        "vm2 does not see vm1's new LUN"
    );

    // Resize while connected: PARAM_CHANGE with CAPACITY DATA HAS CHANGED
    // (2A/09) on the event queue, then READ CAPACITY shows the new size.
    let r = run
        .service
        .call(
            "resize_lun",
            &json!({"controller": "vm1", "target": 0, "lun": 1, "size": "8M"}),
        )
        .unwrap();
    assert_eq!(r["capacity_blocks"], 16384, "{r}");
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("a parameter change event within 5 s")
        .unwrap();
    assert_eq!(
        event,
        vscsi_driver::DeviceEvent::ParamChange {
            lun: vscsi_protocol::lun::Lun { target: 0, lun: 1 },
            asc: 0x2A,
            ascq: 0x09,
        }
    );
    let cap = vm1
        .send_command(
            0,
            1,
            ScsiCommand::ReadCapacity16 {
                allocation_length: 32,
            },
        )
        .await
        .unwrap();
    let cap = if cap.is_good() {
        cap
    } else {
        // The pending CAPACITY DATA HAS CHANGED unit attention answers first.
        vm1.send_command(
            0,
            1,
            ScsiCommand::ReadCapacity16 {
                allocation_length: 32,
            },
        )
        .await
        .unwrap()
    };
    assert!(cap.is_good(), "{cap:?}");
    assert_eq!(&cap.data[..8], &(16384u64 - 1).to_be_bytes());

    // Hot-unplug while writes run: every completed write is in the image.
    let vm1 = Arc::new(vm1);
    let writer = {
        let vm1 = vm1.clone();
        tokio::spawn(async move {
            let mut done = Vec::new();
            for lba in (0..8000u64).step_by(8) {
                let data = pattern(lba, 8, 3);
                let r = vm1
                    .send_command(
                        0,
                        1,
                        ScsiCommand::Write {
                            lba,
                            blocks: 8,
                            data,
                        },
                    )
                    .await
                    .unwrap();
                if !r.is_good() {
                    return (done, r);
                }
                done.push(lba);
            }
            panic!("the LUN was never removed");
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let service = run.service.clone();
    let removed = tokio::task::spawn_blocking(move || {
        service.call(
            "remove_lun",
            &json!({"controller": "vm1", "target": 0, "lun": 1}),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(removed["drained"], true);
    let (done, refused) = writer.await.unwrap();
    assert!(!done.is_empty());
    let sense = refused.sense.clone();
    assert_eq!(
        (sense[2] & 0xF, sense[12]),
        (5, 0x25),
        "LOGICAL UNIT NOT SUPPORTED"
    );
    for lba in &done {
        assert_eq!(
            host_read(&c, lba * 512, 8 * 512),
            pattern(*lba, 8, 3),
            "LBA {lba}"
        );
    }
    // The other LUN of the connection and the other controller still work.
    let r = vm1
        .send_command(
            0,
            0,
            ScsiCommand::Read {
                lba: 10,
                blocks: 8,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.data, data);
    assert!(vm2
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap()
        .is_good());
    let stats = run
        .service
        .call("stats", &json!({"controller": "vm1"}))
        .unwrap();
    assert!(
        stats["controllers"][0]["luns"][0]["commands"]
            .as_u64()
            .unwrap()
            >= 2,
        "{stats}"
    );
    // Per request queue counters: every command vm1 sent went through queue 0.
    let q = &stats["controllers"][0]["queues"][0];
    assert_eq!(q["queue"], 0, "{stats}");
    let requests = q["requests"].as_u64().unwrap();
    assert!(
        requests
            >= stats["controllers"][0]["luns"][0]["commands"]
                .as_u64()
                .unwrap(),
        "{stats}"
    );
    let batches = q["batches"].as_u64().unwrap();
    assert!(batches >= 1 && batches <= requests, "{stats}");
    let lun = &stats["controllers"][0]["luns"][0];
    assert_eq!(
        lun["cache_none_misaligned"], 0,
        "a writeback image: {stats}"
    );
    let commands = lun["commands"].as_u64().unwrap();
    // The Prometheus text of the same counters (the --metrics endpoint);
    // the driver's topology task may have sent a probe since the snapshot.
    let text = vscsi_backend::service::metrics::render(&run.service);
    let value = |series: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
        line[series.len()..].trim().parse().unwrap()
    };
    assert!(text.contains("# TYPE vscsi_lun_commands_total counter\n"));
    let lun_labels = "{controller=\"vm1\",target=\"0\",lun=\"0\"}";
    assert!(value(&format!("vscsi_lun_commands_total{lun_labels}")) >= commands);
    assert_eq!(
        value(&format!(
            "vscsi_lun_cache_none_misaligned_total{lun_labels}"
        )),
        0
    );
    assert!(value("vscsi_queue_requests_total{controller=\"vm1\",queue=\"0\"}") >= requests);
}
