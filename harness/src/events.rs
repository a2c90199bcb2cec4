//! `vscsi events`: print the device's events until interrupted.

use anyhow::Result;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use vscsi_driver::{ConnectionEvent, DeviceEvent};

use crate::device::{connect, ConnectArgs};

/// Follow the event queue (hot-plug, parameter changes, missed events) and
/// print one line per event until Ctrl-C (SIGINT), which exits 0.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnectArgs,
}

fn describe(ev: &DeviceEvent) -> (String, serde_json::Value) {
    match *ev {
        DeviceEvent::TransportReset { lun, reason } => (
            format!("{}:{} transport reset ({reason:?})", lun.target, lun.lun),
            json!({"event": "transport_reset", "target": lun.target, "lun": lun.lun, "reason": format!("{reason:?}")}),
        ),
        DeviceEvent::ParamChange { lun, asc, ascq } => (
            format!(
                "{}:{} parameters changed (ASC/ASCQ {asc:02X}h/{ascq:02X}h)",
                lun.target, lun.lun
            ),
            json!({"event": "param_change", "target": lun.target, "lun": lun.lun, "asc": asc, "ascq": ascq}),
        ),
        DeviceEvent::AsyncNotify { lun, events } => (
            format!(
                "{}:{} asynchronous notification {events:#x}",
                lun.target, lun.lun
            ),
            json!({"event": "async_notify", "target": lun.target, "lun": lun.lun, "events": events}),
        ),
        DeviceEvent::EventsMissed => (
            "events missed: rescan everything".to_string(),
            json!({"event": "events_missed"}),
        ),
        DeviceEvent::Unknown { event, reason } => (
            format!("unknown event {event:#x} reason {reason:#x}"),
            json!({"event": "unknown", "type": event, "reason": reason}),
        ),
    }
}

/// Ctrl-C is the normal way to stop following, so it exits 0, whenever it
/// comes: while connecting or while waiting for an event.
pub async fn run(args: Args) -> Result<()> {
    // One SIGINT stream for the whole run, installed before connecting: a
    // `ctrl_c()` future made afresh in each loop turn misses a signal that
    // arrives while an event is being printed.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let driver = tokio::select! {
        _ = interrupt.recv() => return Ok(()),
        d = connect(&args.conn) => d?,
    };
    let mut rx = driver.events();
    let _reporter = crate::device::report_reconnects(&driver, &args.conn.socket);
    let mut conn = driver.connection_events();
    if !args.conn.json {
        eprintln!("following events (Ctrl-C to stop)");
    }
    let summary = || {
        if let Some(line) = crate::device::reconnect_summary(&driver.stats().reconnect) {
            eprintln!("vscsi: {line}");
        }
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                summary();
                return Ok(());
            }
            c = conn.recv() => if let Ok(ConnectionEvent::GaveUp { error, .. }) = c {
                summary();
                anyhow::bail!("the daemon on {} did not come back: {error}", args.conn.socket.display());
            },
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let (text, v) = describe(&ev);
                    if args.conn.json {
                        // One compact JSON object per line (JSON Lines).
                        println!("{v}");
                    } else {
                        println!("{text}");
                    }
                }
                Err(RecvError::Lagged(n)) => eprintln!("vscsi: {n} events dropped (printing too slowly)"),
                Err(RecvError::Closed) => return Ok(()),
            },
        }
    }
}
