//! Clearing the unit attentions a new frontend is owed, as the Linux sd
//! driver does at scan: TEST UNIT READY until the LUN stops answering
//! CHECK CONDITION / UNIT ATTENTION (SPC-5 §5.14, unit attention condition).
//!
//! Every `vscsi` invocation is a new I_T nexus, and a LUN that models a
//! real disk reports POWER ON, RESET (6/29/00) to it. A one-shot verb
//! that did not consume it would get that answer instead of its own.

use anyhow::{Context, Result};
use vscsi_driver::{CommandOptions, Driver, RetryPolicy, ScsiCommand};
use vscsi_protocol::sense::{Sense, SenseKey};
use vscsi_protocol::status;
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

/// How many TEST UNIT READY commands one LUN gets: each clears one unit
/// attention, and SPC-5 queues only a handful (power-on, capacity,
/// mode parameters, reported LUNs...).
pub const MAX_TRIES: usize = 8;

/// Sends TEST UNIT READY to `target`:`lun` until it answers with anything
/// but a unit attention (at most [`MAX_TRIES`] times) and returns the unit
/// attentions it cleared, in order. Any other answer (GOOD, NOT READY, a
/// LUN that does not exist) is left for the verb's own command to report.
pub async fn clear(driver: &Driver, target: u8, lun: u16) -> Result<Vec<Sense>> {
    // Without the driver's retries, which would consume unit attentions
    // silently: each one is seen here, to be reported with -v.
    let no_retry = CommandOptions {
        retry: Some(RetryPolicy::NONE),
        ..CommandOptions::default()
    };
    let mut cleared = Vec::new();
    for _ in 0..MAX_TRIES {
        let r = driver
            .send_command_with(target, lun, ScsiCommand::TestUnitReady, no_retry)
            .await
            .with_context(|| format!("TEST UNIT READY to {target}:{lun} failed"))?;
        let ua = match r.sense_data() {
            Some(s)
                if r.virtio() == Some(VirtioResponse::Ok)
                    && r.status == status::CHECK_CONDITION
                    && s.key == SenseKey::UnitAttention =>
            {
                s
            }
            _ => break,
        };
        cleared.push(ua);
    }
    Ok(cleared)
}
