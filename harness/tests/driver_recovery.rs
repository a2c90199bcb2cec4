//! Timeouts, the error handler, task management and fault injection: the
//! driver against the daemon through the real socket, memfd and rings.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDaemon;
use vscsi_backend::fault::{FaultSpec, FaultTable};
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{
    CommandOptions, Driver, DriverOptions, Error, QueueChoice, QueueConfig, RecoveryStep,
    RetryPolicy, ScsiCommand, Tmf, TmfResponse,
};
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

const MIB: u64 = 1 << 20;

fn daemon(queues: u16) -> (TestDaemon, Arc<FaultTable>) {
    let faults = Arc::new(FaultTable::default());
    let opts = DeviceOptions {
        request_queues: queues,
        faults: faults.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 8 * MIB, false), (0, 1, 8 * MIB, false)], opts);
    (d, faults)
}

async fn connect(d: &TestDaemon, timeout: Duration, eh: Duration, queues: u16) -> Driver {
    connect_rings(d, timeout, eh, queues, false).await
}

/// [`connect`] with split rings, or packed ones (asserted negotiated).
async fn connect_rings(
    d: &TestDaemon,
    timeout: Duration,
    eh: Duration,
    queues: u16,
    packed: bool,
) -> Driver {
    let opts = DriverOptions {
        timeout,
        eh_timeout: eh,
        // Commands one after another reach every queue (the reset one too).
        queue_choice: QueueChoice::RoundRobin,
        ..Default::default()
    };
    let cfg = QueueConfig {
        queue_count: queues,
        use_packed: packed,
        ..Default::default()
    };
    let drv = Driver::connect_with(&d.socket, cfg, opts).await.unwrap();
    assert_eq!(drv.features().packed, packed);
    drv
}

fn stall() -> FaultSpec {
    FaultSpec {
        stall: true,
        ..Default::default()
    }
}

fn sense_kcq(sense: &[u8]) -> (u8, u8, u8) {
    (sense[2] & 0xF, sense[12], sense[13])
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn stalled_lun_times_out_is_aborted_and_the_next_command_succeeds() {
    let (d, faults) = daemon(2);
    let drv = connect(&d, Duration::from_millis(300), Duration::from_secs(2), 2).await;
    assert!(drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap()
        .is_good());
    faults.set(0, 0, stall());
    let start = Instant::now();
    let e = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Timeout { recovered_by: RecoveryStep::AbortTask, after } if after == Duration::from_millis(300)),
        "{e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(faults.held_now(), 0, "the abort completed the held command");
    assert_eq!(faults.released_total(), 1);
    assert!(drv.in_flight().is_empty(), "the waiter was released");
    // The other LUN never stalled.
    assert!(drv
        .send_command(0, 1, ScsiCommand::TestUnitReady)
        .await
        .unwrap()
        .is_good());
    faults.clear(0, 0);
    let r = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let s = drv.stats();
    let l = &s
        .luns
        .iter()
        .find(|(l, _)| (l.target, l.lun) == (0, 0))
        .unwrap()
        .1;
    assert_eq!(l.timeouts, 1);
}

#[tokio::test]
async fn a_device_ignoring_aborts_gets_a_lun_reset_then_a_target_reset() {
    let (d, faults) = daemon(1);
    let drv = connect(
        &d,
        Duration::from_millis(200),
        Duration::from_millis(300),
        1,
    )
    .await;
    faults.set(0, 0, "stall,ignore-abort".parse().unwrap());
    let e = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                recovered_by: RecoveryStep::LogicalUnitReset,
                ..
            }
        ),
        "{e}"
    );
    faults.set(0, 0, "stall,ignore-abort,ignore-lun-reset".parse().unwrap());
    let e = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                recovered_by: RecoveryStep::TargetReset,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(faults.held_now(), 0);
    faults.clear(0, 0);
    // The resets left POWER ON RESET unit attentions: the retry policy
    // takes them, the caller sees GOOD.
    let r = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let r = drv
        .send_command(0, 1, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
}

#[tokio::test]
async fn a_command_surviving_every_tmf_is_recovered_by_a_queue_reset() {
    recovered_by_a_queue_reset(false).await
}

#[tokio::test]
async fn a_command_surviving_every_tmf_is_recovered_by_a_queue_reset_on_packed_rings() {
    recovered_by_a_queue_reset(true).await
}

async fn recovered_by_a_queue_reset(packed: bool) {
    let (d, faults) = daemon(2);
    let drv = connect_rings(
        &d,
        Duration::from_millis(200),
        Duration::from_millis(300),
        2,
        packed,
    )
    .await;
    // I/O stuck below the device: no TMF releases it, only a ring stop.
    faults.set(
        0,
        0,
        "stall,ignore-abort,ignore-lun-reset,ignore-target-reset"
            .parse()
            .unwrap(),
    );
    let started = Instant::now();
    let e = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                recovered_by: RecoveryStep::QueueReset,
                ..
            }
        ),
        "{e}"
    );
    // ABORT TASK, LUN RESET and I_T NEXUS RESET were each waited for
    // (the device answered them, so each wait is the full eh_timeout).
    assert!(started.elapsed() >= Duration::from_millis(200 + 3 * 300));
    assert_eq!(faults.held_now(), 0, "the ring stop released the command");
    assert_eq!(
        drv.stats().queues.iter().map(|q| q.in_flight).sum::<u32>(),
        0
    );
    faults.clear(0, 0);
    // Both queues carry commands again (round robin), the reset one included.
    for _ in 0..8 {
        let r = drv
            .send_command(0, 0, ScsiCommand::TestUnitReady)
            .await
            .unwrap();
        assert!(r.is_good(), "{r:?}");
    }
    let data = vec![0x5Au8; 4096];
    let w = drv
        .send_command(
            0,
            1,
            ScsiCommand::Write {
                lba: 8,
                blocks: 8,
                data: data.clone(),
            },
        )
        .await
        .unwrap();
    assert!(w.is_good(), "{w:?}");
    let r = drv
        .send_command(
            0,
            1,
            ScsiCommand::Read {
                lba: 8,
                blocks: 8,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.data, data);
}

#[tokio::test]
async fn a_device_reset_returns_every_command_and_the_device_works_after() {
    device_reset_returns_every_command(false).await
}

#[tokio::test]
async fn a_device_reset_returns_every_command_on_packed_rings() {
    device_reset_returns_every_command(true).await
}

async fn device_reset_returns_every_command(packed: bool) {
    let (d, faults) = daemon(2);
    let drv = connect_rings(
        &d,
        Duration::from_secs(30),
        Duration::from_secs(2),
        2,
        packed,
    )
    .await;
    let drv = Arc::new(drv);
    faults.set(0, 0, stall());
    let no_retry = CommandOptions {
        retry: Some(RetryPolicy::NONE),
        ..Default::default()
    };
    // One stalled command on each request queue.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let drv = drv.clone();
        waiting.push(tokio::spawn(async move {
            drv.send_command_with(0, 0, ScsiCommand::TestUnitReady, no_retry)
                .await
        }));
    }
    wait_for("both commands held", || faults.held_now() == 2).await;
    let queues: Vec<u16> = drv.in_flight().iter().map(|c| c.queue).collect();
    assert_eq!(queues.len(), 2);
    assert_ne!(queues[0], queues[1], "one command per queue");
    drv.reset_device().await.unwrap();
    for w in waiting {
        // The device gave them back while its rings stopped: RESET (§5.6.6.1).
        let r = w.await.unwrap().unwrap();
        assert_eq!(r.virtio(), Some(VirtioResponse::Reset), "{r:?}");
    }
    assert_eq!(faults.held_now(), 0);
    faults.clear(0, 0);
    // VHOST_USER_RESET_DEVICE reset the LUs: the next command of each LUN
    // reports it (6/29/xx POWER ON, RESET, OR BUS DEVICE RESET OCCURRED).
    for lun in [0, 1] {
        let r = drv
            .send_command_with(0, lun, ScsiCommand::TestUnitReady, no_retry)
            .await
            .unwrap();
        let (key, asc, _) = sense_kcq(&r.sense);
        assert_eq!((key, asc), (6, 0x29), "{r:?}");
    }
    // Every queue works again, and so does the control queue.
    for _ in 0..4 {
        let r = drv
            .send_command(0, 1, ScsiCommand::TestUnitReady)
            .await
            .unwrap();
        assert!(r.is_good(), "{r:?}");
    }
    let t = drv
        .task_management(0, 0, Tmf::LogicalUnitReset)
        .await
        .unwrap();
    assert_eq!(t, TmfResponse::FunctionComplete);
}

#[tokio::test]
async fn a_caller_that_gives_up_loses_no_slot_and_blocks_no_queue() {
    let (d, faults) = daemon(1);
    let drv = connect(&d, Duration::from_secs(30), Duration::from_secs(2), 1).await;
    faults.set(0, 0, "latency=200ms".parse().unwrap());
    // The caller drops its command while the device still holds it.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(30),
        drv.send_command(0, 0, ScsiCommand::TestUnitReady),
    )
    .await;
    assert!(gave_up.is_err());
    faults.clear(0, 0);
    // The completion arrives with no one waiting: the slot comes back and
    // the queue keeps serving.
    let r = drv
        .send_command(0, 1, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    wait_for("the abandoned slot back", || {
        drv.stats().queues[0].in_flight == 0
    })
    .await;
    // Every slot is usable: as many commands in flight as the queue has slots.
    let slots = drv.stats().queues[0].slots as usize;
    let all = (0..slots).map(|_| drv.send_command(0, 1, ScsiCommand::TestUnitReady));
    for r in futures_join_all(all).await {
        assert!(r.unwrap().is_good());
    }
}

/// Runs the futures concurrently on this task (no extra crate for join_all).
async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test]
async fn task_management_functions_get_the_right_answers() {
    let (d, faults) = daemon(2);
    let drv = Arc::new(connect(&d, Duration::from_secs(30), Duration::from_secs(2), 2).await);
    faults.set(0, 0, stall());
    let no_retry = CommandOptions {
        retry: Some(RetryPolicy::NONE),
        ..Default::default()
    };
    let spawn = |drv: Arc<Driver>| {
        tokio::spawn(async move {
            drv.send_command_with(0, 0, ScsiCommand::TestUnitReady, no_retry)
                .await
        })
    };
    let mut first = spawn(drv.clone());
    let mut second = spawn(drv.clone());
    wait_for("two held commands", || faults.held_now() == 2).await;
    let tags: Vec<u64> = drv.in_flight().iter().map(|c| c.tag).collect();
    assert_eq!(tags.len(), 2);
    let tmf = |lun, t| {
        let drv = drv.clone();
        async move { drv.task_management(0, lun, t).await.unwrap() }
    };
    assert_eq!(
        tmf(0, Tmf::QueryTask { tag: tags[0] }).await,
        TmfResponse::FunctionSucceeded
    );
    assert_eq!(
        tmf(0, Tmf::QueryTask { tag: 0xdead }).await,
        TmfResponse::FunctionComplete
    );
    assert_eq!(
        tmf(0, Tmf::QueryTaskSet).await,
        TmfResponse::FunctionSucceeded
    );
    assert_eq!(
        tmf(1, Tmf::QueryTaskSet).await,
        TmfResponse::FunctionComplete
    );
    assert_eq!(tmf(0, Tmf::ClearAca).await, TmfResponse::FunctionComplete);
    assert_eq!(
        tmf(0, Tmf::Other { subtype: 99 }).await,
        TmfResponse::FunctionRejected
    );
    assert_eq!(
        tmf(7, Tmf::LogicalUnitReset).await,
        TmfResponse::IncorrectLun
    );
    assert_eq!(
        drv.task_management(9, 0, Tmf::TargetReset).await.unwrap(),
        TmfResponse::BadTarget
    );
    // ABORT TASK of an unknown tag: FUNCTION COMPLETE, nothing released.
    assert_eq!(
        tmf(0, Tmf::AbortTask { tag: 0xdead }).await,
        TmfResponse::FunctionComplete
    );
    assert_eq!(faults.held_now(), 2);
    // ABORT TASK of a held one: it completes with ABORTED before the answer.
    assert_eq!(
        tmf(0, Tmf::AbortTask { tag: tags[0] }).await,
        TmfResponse::FunctionComplete
    );
    assert_eq!(faults.held_now(), 1);
    let (a, b) = tokio::select! {
        r = &mut first => (r, second),
        r = &mut second => (r, first),
    };
    let r = a.unwrap().unwrap();
    assert_eq!(r.virtio(), Some(VirtioResponse::Aborted), "{r:?}");
    // LOGICAL UNIT RESET: the other completes with RESET.
    assert_eq!(
        tmf(0, Tmf::LogicalUnitReset).await,
        TmfResponse::FunctionComplete
    );
    let r = tokio::time::timeout(Duration::from_secs(2), b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.virtio(), Some(VirtioResponse::Reset), "{r:?}");
    assert_eq!(faults.held_now(), 0);
    assert_eq!(
        tmf(0, Tmf::QueryTaskSet).await,
        TmfResponse::FunctionComplete
    );
    faults.clear(0, 0);
    // The reset established a unit attention; without retries the caller sees it.
    let r = drv
        .send_command_with(0, 0, ScsiCommand::TestUnitReady, no_retry)
        .await
        .unwrap();
    assert_eq!(sense_kcq(&r.sense), (6, 0x29, 0), "{r:?}");
    for t in [Tmf::AbortTaskSet, Tmf::ClearTaskSet, Tmf::TargetReset] {
        assert_eq!(tmf(1, t).await, TmfResponse::FunctionComplete, "{t:?}");
    }
    // With the default policy the unit attention is retried away.
    let r = drv
        .send_command(0, 1, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let s = drv.stats();
    let l1 = &s
        .luns
        .iter()
        .find(|(l, _)| (l.target, l.lun) == (0, 1))
        .unwrap()
        .1;
    assert!(l1.retries >= 1, "{l1:?}");
    assert!(s.control.kicks >= 1);
}

#[tokio::test]
async fn error_sense_fail_rate_and_short_transfer_injection() {
    let (d, faults) = daemon(1);
    let drv = connect(&d, Duration::from_secs(5), Duration::from_secs(2), 1).await;
    let read = |lba, blocks| ScsiCommand::Read {
        lba,
        blocks,
        block_size: 512,
    };
    faults.set(0, 0, "error=100+8".parse().unwrap());
    let r = drv.send_command(0, 0, read(96, 8)).await.unwrap();
    assert_eq!(
        sense_kcq(&r.sense),
        (3, 0x11, 0),
        "MEDIUM ERROR, not retried: {r:?}"
    );
    let r = drv.send_command(0, 0, read(108, 8)).await.unwrap();
    assert!(r.is_good());
    let r = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert!(r.is_good(), "only medium access fails");
    faults.set(0, 0, "error=0+1:5/21/00".parse().unwrap());
    let r = drv.send_command(0, 0, read(0, 1)).await.unwrap();
    assert_eq!(sense_kcq(&r.sense), (5, 0x21, 0));

    faults.set(0, 0, "fail=1.0@3".parse().unwrap());
    let r = drv.send_command(0, 0, read(0, 1)).await.unwrap();
    assert_eq!(
        sense_kcq(&r.sense),
        (4, 0x44, 0),
        "HARDWARE ERROR, not retried"
    );
    // NOT READY, BECOMING READY is retried up to the limit.
    faults.set(0, 0, "fail=1.0@3:2/04/01".parse().unwrap());
    let r = drv.send_command(0, 0, read(0, 1)).await.unwrap();
    assert_eq!(sense_kcq(&r.sense), (2, 4, 1));

    faults.set(0, 0, "short=512".parse().unwrap());
    let r = drv.send_command(0, 0, read(0, 8)).await.unwrap();
    assert!(r.is_good());
    assert_eq!((r.data.len(), r.residual), (512, 7 * 512));

    faults.set(0, 0, "latency=150ms".parse().unwrap());
    let start = Instant::now();
    assert!(drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap()
        .is_good());
    assert!(start.elapsed() >= Duration::from_millis(150));
    faults.clear_all();

    let s = drv.stats();
    let l = &s
        .luns
        .iter()
        .find(|(l, _)| (l.target, l.lun) == (0, 0))
        .unwrap()
        .1;
    assert_eq!(l.errors_by_sense_key[3], 1);
    assert_eq!(l.errors_by_sense_key[5], 1);
    assert_eq!(l.errors_by_sense_key[4], 1);
    assert_eq!(l.errors_by_sense_key[2], 6, "first try and 5 retries");
    assert_eq!(l.retries, 5);
    assert!(l.latency[0].count() >= 5);
    assert!(l.latency[2].max() >= 150_000);
}

#[tokio::test]
async fn latency_is_cut_short_by_an_abort() {
    let (d, faults) = daemon(1);
    let drv = connect(&d, Duration::from_millis(200), Duration::from_secs(2), 1).await;
    faults.set(0, 0, "latency=4s".parse().unwrap());
    let start = Instant::now();
    let e = drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                recovered_by: RecoveryStep::AbortTask,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn held_commands_are_completed_when_the_frontend_disconnects() {
    let (d, faults) = daemon(2);
    let drv = connect(&d, Duration::from_secs(30), Duration::from_secs(2), 2).await;
    faults.set(0, 0, stall());
    for _ in 0..3 {
        let r = tokio::time::timeout(
            Duration::from_millis(50),
            drv.send_command(0, 0, ScsiCommand::TestUnitReady),
        )
        .await;
        assert!(r.is_err(), "stalled");
    }
    wait_for("three held commands", || faults.held_now() == 3).await;
    drop(drv);
    wait_for("held commands completed", || faults.held_now() == 0).await;
    assert_eq!(faults.released_total(), 3);
    faults.clear(0, 0);
    // The daemon serves the next frontend.
    let drv = connect(&d, Duration::from_secs(5), Duration::from_secs(2), 1).await;
    assert!(drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap()
        .is_good());
}

#[tokio::test]
async fn per_lun_and_per_command_timeouts() {
    let (d, faults) = daemon(1);
    let drv = connect(&d, Duration::from_secs(30), Duration::from_secs(2), 1).await;
    faults.set(0, 1, stall());
    drv.set_lun_timeout(0, 1, Some(Duration::from_millis(100)));
    assert_eq!(drv.lun_timeout(0, 1), Duration::from_millis(100));
    assert_eq!(drv.lun_timeout(0, 0), Duration::from_secs(30));
    let e = drv
        .send_command(0, 1, ScsiCommand::TestUnitReady)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Timeout { after, .. } if after == Duration::from_millis(100)),
        "{e}"
    );
    let opts = CommandOptions {
        timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let e = drv
        .send_command_with(0, 1, ScsiCommand::TestUnitReady, opts)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Timeout { after, .. } if after == Duration::from_millis(50)),
        "{e}"
    );
    drv.set_lun_timeout(0, 1, None);
    assert_eq!(drv.lun_timeout(0, 1), Duration::from_secs(30));
}
