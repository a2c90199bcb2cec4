//! Stopping the service (what SIGTERM does) while a frontend is attached and
//! its request is held by a `stall` fault: the held request is completed
//! (VIRTIO_SCSI_S_RESET) and every controller thread ends within a bound.

mod common;

use std::time::{Duration, Instant};

use common::{image, RunningService};
use vscsi_driver::{Driver, QueueConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_with_a_stalled_request_in_flight_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path(), "a.img", 4 << 20);
    let run = RunningService::start(
        dir.path(),
        "[[controller]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"a.img\"\nfault = \"stall\"\n",
    );
    let drv = Driver::connect(dir.path().join("vm1.sock"), QueueConfig::default())
        .await
        .unwrap();
    // INQUIRY is held by the stall fault.
    let held = tokio::spawn(async move { drv.probe(0, 0).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "the stall fault did not hold the request"
    );
    let start = Instant::now();
    tokio::task::spawn_blocking(move || drop(run))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    held.abort();
}
