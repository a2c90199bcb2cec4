//! Bench results per direction in fio's shapes: a `read:` and a `write:`
//! section of text (IOPS, bandwidth, clat with stdev and percentiles) and
//! the `jobs[0].read` / `jobs[0].write` objects of `fio --output-format=json`
//! (`iops`, `bw` in KiB/s, `runtime` in ms, `clat_ns.percentile["99.000000"]`),
//! so tooling written for fio reads them.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// The percentiles fio reports by default (its `percentile_list`).
pub const PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// One direction's results: operations and their completion latencies (ns).
pub struct Direction<'a> {
    /// "read" or "write".
    pub name: &'static str,
    /// Completion latencies in nanoseconds, one per operation.
    pub clat: &'a Histogram<u64>,
    /// Bytes per operation.
    pub bs: u64,
    /// Seconds the bench ran.
    pub elapsed: f64,
}

impl Direction<'_> {
    fn ops(&self) -> u64 {
        self.clat.len()
    }

    fn iops(&self) -> f64 {
        self.ops() as f64 / self.elapsed.max(1e-9)
    }

    fn bytes(&self) -> u64 {
        self.ops() * self.bs
    }

    /// fio's `jobs[0].<name>` object (zeros for a direction that did nothing).
    pub fn to_json(&self) -> Value {
        let h = self.clat;
        let empty = h.is_empty();
        let mut pct = Map::new();
        for p in PERCENTILES {
            let v = if empty { 0 } else { h.value_at_percentile(p) };
            pct.insert(format!("{p:.6}"), json!(v));
        }
        let stat = json!({
            "min": if empty { 0 } else { h.min() },
            "max": if empty { 0 } else { h.max() },
            "mean": if empty { 0.0 } else { h.mean() },
            "stddev": if empty { 0.0 } else { h.stdev() },
            "N": h.len(),
            "percentile": pct,
        });
        json!({
            "io_bytes": self.bytes(),
            "io_kbytes": self.bytes() / 1024,
            "bw_bytes": (self.iops() * self.bs as f64) as u64,
            "bw": (self.iops() * self.bs as f64 / 1024.0) as u64,
            "iops": self.iops(),
            "runtime": (self.elapsed * 1000.0) as u64,
            "total_ios": self.ops(),
            "clat_ns": stat,
            // Submission is not measured apart: completion latency is the
            // whole latency here, as fio's lat_ns is clat plus slat.
            "lat_ns": stat,
        })
    }

    /// fio's text section: `read: IOPS=..., BW=...` then clat lines.
    pub fn print(&self) {
        let h = self.clat;
        let mib_s = self.iops() * self.bs as f64 / (1 << 20) as f64;
        println!(
            "  {}: IOPS={:.0}, BW={:.1}MiB/s ({} ios, {:.1}MiB in {:.1}s)",
            self.name,
            self.iops(),
            mib_s,
            self.ops(),
            self.bytes() as f64 / (1 << 20) as f64,
            self.elapsed
        );
        if h.is_empty() {
            return;
        }
        let us = |ns: f64| ns / 1000.0;
        println!(
            "    clat (usec): min={:.1}, max={:.1}, avg={:.2}, stdev={:.2}",
            us(h.min() as f64),
            us(h.max() as f64),
            us(h.mean()),
            us(h.stdev())
        );
        println!("    clat percentiles (usec):");
        for row in PERCENTILES.chunks(4) {
            let cells: Vec<String> = row
                .iter()
                .map(|&p| {
                    format!(
                        "{:>6}th=[{:.1}]",
                        format!("{p:.2}"),
                        us(h.value_at_percentile(p) as f64)
                    )
                })
                .collect();
            println!("     | {}", cells.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_fios_keys_and_units() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for ns in [1000u64, 2000, 3000, 4000] {
            h.record(ns).unwrap();
        }
        let d = Direction {
            name: "read",
            clat: &h,
            bs: 4096,
            elapsed: 2.0,
        };
        let v = d.to_json();
        assert_eq!(v["total_ios"], 4);
        assert_eq!(v["iops"], 2.0);
        assert_eq!(v["bw"], 8, "KiB/s: 2 IOPS of 4 KiB");
        assert_eq!(v["runtime"], 2000);
        assert_eq!(v["clat_ns"]["N"], 4);
        assert_eq!(v["clat_ns"]["min"], 1000);
        assert_eq!(v["clat_ns"]["percentile"]["50.000000"], 2000);
        assert!(v["clat_ns"]["percentile"]["99.000000"].as_u64().unwrap() >= 4000);
        assert_eq!(
            PERCENTILES.len(),
            v["clat_ns"]["percentile"].as_object().unwrap().len()
        );
    }
}
