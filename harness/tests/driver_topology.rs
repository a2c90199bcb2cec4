//! The driver's topology model kept current by events, through a real
//! in-process service: a LUN added, resized and removed at run time shows
//! up in `driver.topology()` without calling `scan` again.

use std::time::Duration;

mod common;

use common::{image, RunningService};
use serde_json::json;
use vscsi_driver::{Driver, QueueConfig, Topology};

/// Waits up to 5 s for the topology to satisfy `ok`.
async fn wait_for(driver: &Driver, what: &str, ok: impl Fn(&Topology) -> bool) -> Topology {
    let mut changes = driver.topology_changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let t = driver.topology();
        if ok(&t) {
            return t;
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            panic!("{what}: not seen within 5 s; topology {t:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topology_follows_add_resize_remove() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    image(dir, "a.img", 4 << 20);
    let c = image(dir, "c.img", 4 << 20);
    let run = RunningService::start(
        dir,
        "[[controller]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"a.img\"\n",
    );
    let drv = Driver::connect(dir.join("vm1.sock"), QueueConfig::default())
        .await
        .unwrap();
    assert!(
        drv.topology().luns.is_empty(),
        "empty before the first scan"
    );
    let found = drv.scan().await.unwrap();
    assert_eq!(found.len(), 1);
    let t = drv.topology();
    assert_eq!(t.luns.keys().copied().collect::<Vec<_>>(), vec![(0, 0)]);
    assert_eq!(t.get(0, 0).unwrap().blocks, 8192);
    assert_eq!(t.targets().into_iter().collect::<Vec<_>>(), vec![0]);

    // Hot-plug: the RESCAN event makes the background task probe 0:1.
    let r = run
        .call(
            "add_lun",
            json!({"controller": "vm1", "target": 0, "lun": 1, "image": c}),
        )
        .await;
    assert_eq!(r["capacity_blocks"], 8192);
    let t = wait_for(&drv, "hot-plugged LUN", |t| t.get(0, 1).is_some()).await;
    let lu = t.get(0, 1).unwrap();
    assert_eq!((lu.blocks, lu.block_size), (8192, 512));
    assert_eq!(t.luns_of(0).count(), 2);

    // Resize: PARAM_CHANGE makes it re-read the capacity.
    let r = run
        .call(
            "resize_lun",
            json!({"controller": "vm1", "target": 0, "lun": 1, "size": "8M"}),
        )
        .await;
    assert_eq!(r["capacity_blocks"], 16384, "{r}");
    let t = wait_for(&drv, "new capacity", |t| {
        t.get(0, 1).is_some_and(|l| l.blocks == 16384)
    })
    .await;
    assert_eq!(t.get(0, 1).unwrap().capacity(), 8 << 20);
    assert_eq!(t.get(0, 0).unwrap().blocks, 8192, "0:0 untouched");

    // Hot-unplug: REMOVED drops it.
    let r = run
        .call(
            "remove_lun",
            json!({"controller": "vm1", "target": 0, "lun": 1}),
        )
        .await;
    assert_eq!(r["drained"], true);
    let t = wait_for(&drv, "removed LUN gone", |t| t.get(0, 1).is_none()).await;
    assert_eq!(t.luns.keys().copied().collect::<Vec<_>>(), vec![(0, 0)]);

    // A full scan agrees with the event-maintained model.
    drv.scan().await.unwrap();
    assert_eq!(drv.topology(), t);
}
