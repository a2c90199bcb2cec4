//! Hot-plug and parameter change events: the daemon-level hook
//! (`EventHub`) to the driver's event stream, through the real event queue.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDaemon;
use vscsi_backend::vhost::{DeviceOptions, EventHub, ResetReason as BackendReason};
use vscsi_driver::{DeviceEvent, Driver, QueueConfig, ResetReason, ScsiCommand, Tmf};
use vscsi_protocol::lun::Lun;

const MIB: u64 = 1 << 20;

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<DeviceEvent>) -> DeviceEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("stream open");
        if ev != DeviceEvent::EventsMissed {
            return ev;
        }
    }
}

/// Sends with `send` until a connected driver had buffers posted.
async fn deliver(send: impl Fn() -> usize) {
    for _ in 0..500 {
        if send() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("event never delivered");
}

async fn events_reach_the_stream(event_index: bool, use_packed: bool) {
    let hub = Arc::new(EventHub::default());
    let opts = DeviceOptions {
        events: hub.clone(),
        ..Default::default()
    };
    assert_eq!(
        hub.transport_reset(0, 1, BackendReason::Rescan),
        0,
        "no driver yet"
    );
    let d = TestDaemon::start_with(&[(0, 0, 8 * MIB, false)], opts);
    let cfg = QueueConfig {
        event_index,
        use_packed,
        ..Default::default()
    };
    let drv = Driver::connect(&d.socket, cfg).await.unwrap();
    assert!(drv.features().hotplug && drv.features().change);
    assert_eq!(drv.features().packed, use_packed);
    let mut rx = drv.events();
    // A control round trip makes the device's worker see the event ring.
    drv.task_management(0, 0, Tmf::QueryTaskSet).await.unwrap();

    deliver(|| hub.transport_reset(0, 1, BackendReason::Rescan)).await;
    assert_eq!(
        next_event(&mut rx).await,
        DeviceEvent::TransportReset {
            lun: Lun { target: 0, lun: 1 },
            reason: ResetReason::Rescan
        }
    );
    // More events than buffers: each is re-posted after use.
    for i in 0..20u16 {
        deliver(|| hub.param_change(0, i, 0x2A, 0x09)).await;
        assert_eq!(
            next_event(&mut rx).await,
            DeviceEvent::ParamChange {
                lun: Lun { target: 0, lun: i },
                asc: 0x2A,
                ascq: 0x09
            }
        );
    }
    deliver(|| hub.transport_reset(3, 0, BackendReason::Removed)).await;
    assert_eq!(
        next_event(&mut rx).await,
        DeviceEvent::TransportReset {
            lun: Lun { target: 3, lun: 0 },
            reason: ResetReason::Removed
        }
    );
    assert!(drv.stats().events >= 22);
    // A burst faster than the driver re-posts: the dropped ones are
    // reported as EVENTS_MISSED once a buffer comes back.
    let delivered: usize = (0..100).map(|i| hub.param_change(1, i, 0x2A, 0x09)).sum();
    assert!(delivered >= 1);
    if delivered < 100 {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("EVENTS_MISSED within 5 s")
                .expect("stream open");
            if ev == DeviceEvent::EventsMissed {
                break;
            }
        }
    }
    while rx.try_recv().is_ok() {}
    // Commands still work alongside.
    assert!(drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap()
        .is_good());
    drop(drv);
    // After the disconnect nothing is delivered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hub.transport_reset(0, 1, BackendReason::Rescan), 0);
}

#[tokio::test]
async fn hotplug_and_param_change_events_reach_the_driver_with_event_index() {
    events_reach_the_stream(true, false).await;
}

#[tokio::test]
async fn events_reach_the_driver_on_packed_rings_with_and_without_event_index() {
    events_reach_the_stream(true, true).await;
    events_reach_the_stream(false, true).await;
}

#[tokio::test]
async fn hotplug_and_param_change_events_reach_the_driver_without_event_index() {
    events_reach_the_stream(false, false).await;
}

#[tokio::test]
async fn events_still_arrive_after_a_device_reset() {
    let hub = Arc::new(EventHub::default());
    let opts = DeviceOptions {
        events: hub.clone(),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 8 * MIB, false)], opts);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let mut rx = drv.events();
    drv.task_management(0, 0, Tmf::QueryTaskSet).await.unwrap();
    deliver(|| hub.param_change(0, 0, 0x2A, 0x09)).await;
    assert!(matches!(
        next_event(&mut rx).await,
        DeviceEvent::ParamChange { .. }
    ));
    // The reset takes the posted event buffers off the ring; the driver
    // posts them again on the new one.
    drv.reset_device().await.unwrap();
    drv.task_management(0, 0, Tmf::QueryTaskSet).await.unwrap();
    for lun in 1..4u16 {
        deliver(|| hub.transport_reset(0, lun, BackendReason::Rescan)).await;
        assert_eq!(
            next_event(&mut rx).await,
            DeviceEvent::TransportReset {
                lun: Lun { target: 0, lun },
                reason: ResetReason::Rescan
            }
        );
    }
}
