//! Finding logical units (scan, probe) and the topology the driver keeps current.

use tokio::sync::watch;

use super::Driver;
use crate::error::Result;
use crate::response::LunInfo;
use crate::topology::Topology;

impl Driver {
    /// Finds every logical unit: REPORT LUNS on each target (a target
    /// answering BAD_TARGET does not exist), then INQUIRY and READ CAPACITY
    /// on each LUN, as the Linux SCSI scan does.
    ///
    /// The result also replaces [`Driver::topology`].
    pub async fn scan(&self) -> Result<Vec<LunInfo>> {
        let max_target = self.config.max_target.get().min(255) as u8;
        let found =
            crate::topology::scan_with(&|t, l, c| self.send_command(t, l, c), max_target).await?;
        self.topology.send_modify(|t| t.replace_all(&found));
        Ok(found)
    }

    /// INQUIRY and READ CAPACITY of one LUN; `None` if nothing is connected there.
    /// The answer also updates [`Driver::topology`].
    pub async fn probe(&self, target: u8, lun: u16) -> Result<Option<LunInfo>> {
        let info =
            crate::topology::probe_with(&|t, l, c| self.send_command(t, l, c), target, lun).await?;
        self.topology.send_modify(|t| match &info {
            Some(i) => {
                t.luns.insert((target, lun), i.clone());
            }
            None => {
                t.luns.remove(&(target, lun));
            }
        });
        Ok(info)
    }

    /// The current targets and LUNs: what [`Driver::scan`] found, kept
    /// current by a background task that follows the device's events
    /// (hot-plug, hot-unplug, capacity changes, missed events; see
    /// [`crate::topology`]). Empty until the first scan or event.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// driver.scan().await?;
    /// if let Some(lu) = driver.topology().get(0, 0) {
    ///     tracing::info!("0:0 has {} bytes", lu.capacity());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn topology(&self) -> Topology {
        self.topology.borrow().clone()
    }

    /// A receiver that sees every change of [`Driver::topology`].
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) {
    /// let mut changes = driver.topology_changes();
    /// while changes.changed().await.is_ok() {
    ///     tracing::info!("{} LUNs", changes.borrow().luns.len());
    /// }
    /// # }
    /// ```
    pub fn topology_changes(&self) -> watch::Receiver<Topology> {
        self.topology.subscribe()
    }
}
