//! `vscsi stats`: run a few commands, then print the driver's metrics.

use anyhow::Result;
use serde_json::{json, Value};
use vscsi_driver::{LatencySummary, ScsiCommand, StatsSnapshot};

use crate::blockio::read_capacity;
use crate::device::{Device, DeviceArgs};
use crate::output;

/// Send TEST UNIT READY, INQUIRY, READ CAPACITY and --reads READs to the
/// LUN, then print the metrics snapshot: per queue (in flight, kicks,
/// calls) and per LUN (commands, bytes, errors, latency percentiles).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// READ commands (of --blocks each) to send before printing.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub reads: u32,
    /// Blocks per READ.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub blocks: u32,
}

fn latency_json(s: &LatencySummary) -> Value {
    json!({"count": s.count, "min_us": s.min_us, "mean_us": s.mean_us, "p50_us": s.p50_us,
           "p90_us": s.p90_us, "p99_us": s.p99_us, "max_us": s.max_us})
}

/// The snapshot as JSON.
pub fn snapshot_json(s: &StatsSnapshot) -> Value {
    let queues: Vec<Value> = s
        .queues
        .iter()
        .map(|q| {
            json!({"queue": q.index, "in_flight": q.in_flight, "slots": q.slots,
                        "utilisation": q.utilisation(), "kicks": q.kicks, "calls": q.calls,
                        "completions": q.completions})
        })
        .collect();
    let luns: Vec<Value> = s
        .luns
        .iter()
        .map(|(lun, l)| {
            let keys: serde_json::Map<String, Value> = l
                .errors_by_sense_key
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (format!("{k:X}h"), json!(n)))
                .collect();
            let responses: serde_json::Map<String, Value> = l
                .errors_by_response
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (output::virtio_response_name(k as u8), json!(n)))
                .collect();
            json!({"target": lun.target, "lun": lun.lun, "commands": l.commands,
                   "iops": s.iops(l), "bytes_read": l.bytes_read, "bytes_written": l.bytes_written,
                   "throughput_bytes_per_s": s.throughput(l),
                   "errors_by_sense_key": keys, "errors_by_response": responses,
                   "bad_status": l.bad_status, "timeouts": l.timeouts, "retries": l.retries,
                   "latency": {"read": latency_json(&l.latency[0].summary()),
                               "write": latency_json(&l.latency[1].summary()),
                               "other": latency_json(&l.latency[2].summary())}})
        })
        .collect();
    json!({"uptime_s": s.uptime.as_secs_f64(), "queues": queues,
           "control": {"kicks": s.control.kicks, "calls": s.control.calls},
           "events": s.events, "luns": luns})
}

/// The snapshot as text.
pub fn snapshot_text(s: &StatsSnapshot) -> String {
    let mut out = format!(
        "uptime {:.3} s, {} events\n",
        s.uptime.as_secs_f64(),
        s.events
    );
    for q in &s.queues {
        out += &format!(
            "queue {}: {}/{} in flight ({:.0}%), {} kicks, {} calls, {} completions\n",
            q.index,
            q.in_flight,
            q.slots,
            q.utilisation() * 100.0,
            q.kicks,
            q.calls,
            q.completions
        );
    }
    out += &format!(
        "control: {} kicks, {} calls\n",
        s.control.kicks, s.control.calls
    );
    for (lun, l) in &s.luns {
        out += &format!(
            "{}:{}: {} commands ({:.0} IOPS), {} read, {} written, {} errors, {} timeouts, {} retries\n",
            lun.target,
            lun.lun,
            l.commands,
            s.iops(l),
            output::human_size(l.bytes_read),
            output::human_size(l.bytes_written),
            l.errors(),
            l.timeouts,
            l.retries
        );
        for (name, h) in ["read", "write", "other"].iter().zip(l.latency.iter()) {
            let m = h.summary();
            if m.count > 0 {
                out += &format!(
                    "  {name:5} latency: n={} min {} us, p50 {} us, p90 {} us, p99 {} us, max {} us\n",
                    m.count, m.min_us, m.p50_us, m.p90_us, m.p99_us, m.max_us
                );
            }
        }
        for (k, n) in l
            .errors_by_sense_key
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
        {
            out += &format!("  sense key {k:X}h: {n}\n");
        }
        for (k, n) in l
            .errors_by_response
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
        {
            out += &format!("  {}: {n}\n", output::virtio_response_name(k as u8));
        }
    }
    out
}

pub async fn run(args: Args) -> Result<()> {
    let dev = Device::open(&args.device).await?;
    dev.send("TEST UNIT READY", ScsiCommand::TestUnitReady)
        .await?;
    dev.send(
        "INQUIRY",
        ScsiCommand::Inquiry {
            allocation_length: 96,
            evpd: false,
            page_code: 0,
        },
    )
    .await?;
    let cap = read_capacity(&dev).await?;
    let blocks = args.blocks.max(1);
    for i in 0..u64::from(args.reads) {
        let lba = (i * u64::from(blocks)) % cap.blocks.saturating_sub(u64::from(blocks)).max(1);
        dev.send(
            "READ",
            ScsiCommand::Read {
                lba,
                blocks,
                block_size: cap.block_size,
            },
        )
        .await?;
    }
    let s = dev.driver.stats();
    if args.device.conn.json {
        output::print_json(&snapshot_json(&s));
    } else {
        print!("{}", snapshot_text(&s));
    }
    Ok(())
}
