//! One frontend per controller socket, through the real socket: a second
//! frontend is refused at once with the busy error while the first keeps
//! working, and a socket that is not a vhost-user device (the control
//! socket) fails within the driver's timeout.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{image, RunningService, TestDaemon};
use vscsi_backend::config::SocketAccess;
use vscsi_backend::daemon;
use vscsi_driver::{Driver, DriverOptions, Error, QueueConfig};

const MIB: u64 = 1 << 20;

fn opts(timeout: Duration) -> DriverOptions {
    DriverOptions {
        timeout,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_frontend_is_refused_fast_and_the_first_keeps_working() {
    let d = TestDaemon::start(&[(0, 0, 4 * MIB, false)]);
    let first = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    for _ in 0..3 {
        let start = Instant::now();
        let second = Driver::connect_with(
            &d.socket,
            QueueConfig::default(),
            opts(Duration::from_secs(10)),
        )
        .await;
        let elapsed = start.elapsed();
        let Err(e) = second else {
            panic!("a second frontend was accepted")
        };
        assert!(matches!(e, Error::DeviceBusy { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the vhost-user device at {} closed the connection: another frontend is probably connected (one frontend per controller socket)",
                d.socket.display()
            )
        );
        // Refused by the daemon, not by the driver's 10 s timeout.
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        // The first frontend is untouched.
        assert!(first.probe(0, 0).await.unwrap().is_some());
    }
    drop(first);
    // Once the first is gone, the next frontend is served.
    let start = Instant::now();
    loop {
        match Driver::connect(&d.socket, QueueConfig::default()).await {
            Ok(drv) => {
                assert!(drv.probe(0, 0).await.unwrap().is_some());
                break;
            }
            Err(Error::DeviceBusy { .. }) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_not_a_vhost_user_device() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path(), "a.img", 4 * MIB);
    let run = RunningService::start(
        dir.path(),
        "[[controller]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"a.img\"\n",
    );
    let control = dir.path().join("control.sock");
    let l = daemon::bind_with(&control, &SocketAccess::default()).unwrap();
    let service: Arc<_> = run.service.clone();
    std::thread::spawn(move || service.serve_control(l));
    let start = Instant::now();
    let r = Driver::connect_with(
        &control,
        QueueConfig::default(),
        opts(Duration::from_millis(500)),
    )
    .await;
    let elapsed = start.elapsed();
    let Err(e) = r else {
        panic!("the control socket negotiated as a device")
    };
    assert!(
        matches!(e, Error::NoReply { .. } | Error::NotVhostUser { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("not a vhost-user device"), "{e}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}
