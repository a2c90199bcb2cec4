//! Block I/O shared by `read`, `write` and `demo`: the LUN's capacity
//! (READ CAPACITY 16, falling back to 10), splitting a transfer into
//! commands no bigger than the driver's maximum, and running those
//! commands several at a time.

use std::collections::VecDeque;
use std::future::Future;

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;
use vscsi_driver::ScsiCommand;
use vscsi_protocol::data::{ReadCapacity10, ReadCapacity16};
use vscsi_protocol::sense::SenseKey;
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

use crate::device::Device;

/// What READ CAPACITY said.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// Number of logical blocks.
    pub blocks: u64,
    /// Logical block length in bytes.
    pub block_size: u32,
    /// The command that answered: `READ CAPACITY(16)` or `READ CAPACITY(10)`.
    pub source: &'static str,
    /// The full (16) data, when that command answered.
    pub rc16: Option<ReadCapacity16>,
}

impl Capacity {
    /// Capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
}

/// READ CAPACITY(16), and READ CAPACITY(10) when the device refuses 16.
pub async fn read_capacity(dev: &Device) -> Result<Capacity> {
    const RC16: &str = "READ CAPACITY(16)";
    const RC10: &str = "READ CAPACITY(10)";
    let r16 = dev
        .send(
            RC16,
            ScsiCommand::ReadCapacity16 {
                allocation_length: 32,
            },
        )
        .await?;
    if r16.is_good() {
        let c = ReadCapacity16::decode(&r16.data).with_context(|| {
            format!("{RC16} returned {} bytes of unusable data", r16.data.len())
        })?;
        return Ok(Capacity {
            blocks: c.last_lba + 1,
            block_size: c.block_len,
            source: RC16,
            rc16: Some(c),
        });
    }
    // Fall back only when the device does not know READ CAPACITY(16)
    // (INVALID COMMAND OPERATION CODE or INVALID FIELD IN CDB); any other
    // failure (no such target or LUN, not ready...) is the answer.
    let unsupported = r16.virtio() == Some(VirtioResponse::Ok)
        && r16
            .sense_data()
            .is_some_and(|s| s.key == SenseKey::IllegalRequest && matches!(s.asc, 0x20 | 0x24));
    if !unsupported {
        return Err(dev.failure(RC16, r16).into());
    }
    let r10 = dev.send_good(RC10, ScsiCommand::ReadCapacity10).await?;
    let c = ReadCapacity10::decode(&r10.data)
        .with_context(|| format!("{RC10} returned {} bytes of unusable data", r10.data.len()))?;
    Ok(Capacity {
        blocks: c.last_lba as u64 + 1,
        block_size: c.block_len,
        source: RC10,
        rc16: None,
    })
}

/// Blocks one command may move, given the driver's per-command maximum.
pub fn blocks_per_command(max_transfer: usize, block_size: u32) -> Result<u32> {
    if block_size == 0 {
        bail!("the device reports a block size of 0");
    }
    let n = max_transfer / block_size as usize;
    if n == 0 {
        bail!(
            "the block size ({block_size} bytes) is larger than the driver's maximum transfer ({max_transfer} bytes); raise --max-transfer"
        );
    }
    Ok(n.min(u32::MAX as usize) as u32)
}

/// `(lba, blocks)` of each command covering `blocks` blocks from `lba`.
pub fn split(lba: u64, blocks: u64, per_command: u32) -> impl Iterator<Item = (u64, u32)> {
    let per = per_command.max(1) as u64;
    (0..blocks.div_ceil(per)).map(move |i| {
        let start = i * per;
        (lba + start, (blocks - start).min(per) as u32)
    })
}

/// The READ or WRITE name the driver picks for this transfer, for messages.
pub fn rw_name(write: bool, lba: u64, blocks: u32) -> &'static str {
    let fits_10 = lba + blocks as u64 <= u32::MAX as u64 + 1 && blocks <= u16::MAX as u32;
    match (write, fits_10) {
        (false, true) => "READ(10)",
        (true, true) => "WRITE(10)",
        (false, false) => "READ(16)",
        (true, false) => "WRITE(16)",
    }
}

/// `"1 block"`, `"8 blocks"`.
pub fn plural(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Reads `blocks` blocks at `lba` in one command; the data must be complete.
pub async fn read_chunk(dev: Device, lba: u64, blocks: u32, block_size: u32) -> Result<Vec<u8>> {
    let what = format!(
        "{} of {} at LBA {lba}",
        rw_name(false, lba, blocks),
        plural(blocks, "block")
    );
    let r = dev
        .send_good(
            &what,
            ScsiCommand::Read {
                lba,
                blocks,
                block_size,
            },
        )
        .await?;
    let want = blocks as usize * block_size as usize;
    if r.data.len() != want {
        bail!(
            "{what}: the device returned {} of {want} bytes (residual {})",
            r.data.len(),
            r.residual
        );
    }
    Ok(r.data)
}

/// Writes whole blocks at `lba` in one command.
pub async fn write_chunk(dev: Device, lba: u64, data: Vec<u8>, block_size: u32) -> Result<()> {
    let blocks = (data.len() / block_size as usize) as u32;
    let what = format!(
        "{} of {} at LBA {lba}",
        rw_name(true, lba, blocks),
        plural(blocks, "block")
    );
    let r = dev
        .send_good(&what, ScsiCommand::Write { lba, blocks, data })
        .await?;
    if r.residual != 0 {
        bail!(
            "{what}: the device did not take {} bytes (residual)",
            r.residual
        );
    }
    Ok(())
}

/// Spawned tasks, aborted if dropped before they are awaited (an early
/// error return must not leave commands running on their own).
struct InFlight<T>(VecDeque<(u64, u32, JoinHandle<Result<T>>)>);

impl<T> Drop for InFlight<T> {
    fn drop(&mut self) {
        for (_, _, h) in &self.0 {
            h.abort();
        }
    }
}

/// Runs one task per `(lba, blocks)` chunk, up to `window` at once, and
/// hands each result to `done` in chunk order (so reads can stream out
/// in order). `start` makes a chunk's task (it may read input first);
/// the first error stops everything.
pub async fn pipeline<T, Fut>(
    chunks: impl IntoIterator<Item = (u64, u32)>,
    window: usize,
    mut start: impl FnMut(u64, u32) -> Result<Fut>,
    mut done: impl FnMut(u64, u32, T) -> Result<()>,
) -> Result<usize>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut in_flight = InFlight(VecDeque::new());
    let mut commands = 0;
    let mut chunks = chunks.into_iter().peekable();
    while chunks.peek().is_some() || !in_flight.0.is_empty() {
        while in_flight.0.len() < window.max(1) {
            let Some((lba, n)) = chunks.next() else { break };
            let task = tokio::spawn(start(lba, n)?);
            in_flight.0.push_back((lba, n, task));
        }
        if let Some((lba, n, task)) = in_flight.0.pop_front() {
            let value = task.await.context("an I/O task panicked")??;
            commands += 1;
            done(lba, n, value)?;
        }
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_range_in_order() {
        let parts: Vec<_> = split(10, 1000, 256).collect();
        assert_eq!(parts, vec![(10, 256), (266, 256), (522, 256), (778, 232)]);
        assert_eq!(split(0, 0, 8).count(), 0);
        assert_eq!(split(5, 3, 8).collect::<Vec<_>>(), vec![(5, 3)]);
        assert_eq!(split(0, 16, 8).collect::<Vec<_>>(), vec![(0, 8), (8, 8)]);
    }

    #[test]
    fn blocks_per_command_from_max_transfer() {
        assert_eq!(blocks_per_command(256 * 1024, 512).unwrap(), 512);
        assert_eq!(blocks_per_command(256 * 1024, 4096).unwrap(), 64);
        assert!(blocks_per_command(512, 4096).is_err());
        assert!(blocks_per_command(512, 0).is_err());
    }

    #[test]
    fn rw_names_follow_the_driver() {
        assert_eq!(rw_name(false, 0, 8), "READ(10)");
        assert_eq!(rw_name(true, 1 << 32, 8), "WRITE(16)");
        assert_eq!(rw_name(false, 0, 70000), "READ(16)");
    }

    #[tokio::test]
    async fn pipeline_keeps_order_and_stops_on_error() {
        let mut seen = Vec::new();
        let n = pipeline(
            split(0, 40, 4),
            3,
            |lba, n| {
                Ok(async move {
                    // Later chunks finish first.
                    tokio::time::sleep(std::time::Duration::from_millis(40 - lba)).await;
                    Ok((lba, n))
                })
            },
            |lba, _, v| {
                assert_eq!(v.0, lba);
                seen.push(lba);
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(n, 10);
        assert_eq!(seen, (0..40).step_by(4).collect::<Vec<_>>());

        let err = pipeline(
            split(0, 40, 4),
            2,
            |lba, _| {
                Ok(async move {
                    if lba == 8 {
                        bail!("chunk {lba} failed")
                    }
                    Ok(())
                })
            },
            |_, _, ()| Ok(()),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "chunk 8 failed");
    }
}
