//! Task management functions on the control queue (VIRTIO 1.2 §5.6.6.2).

use tracing::info;

use super::Driver;
use crate::control::{Tmf, TmfResponse};
use crate::error::{Error, Result};
use crate::response::lun_field;

impl Driver {
    /// Sends a task management function to `target:lun` and returns the answer.
    ///
    /// ```no_run
    /// # async fn demo(driver: &vscsi_driver::Driver) -> vscsi_driver::Result<()> {
    /// use vscsi_driver::{Tmf, TmfResponse};
    /// for cmd in driver.in_flight() {
    ///     let r = driver.task_management(0, 0, Tmf::AbortTask { tag: cmd.tag }).await?;
    ///     assert_eq!(r, TmfResponse::FunctionComplete);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn task_management(&self, target: u8, lun: u16, tmf: Tmf) -> Result<TmfResponse> {
        self.task_management_to(lun_field(target, lun)?, tmf).await
    }

    /// [`Driver::task_management`] with a raw 8-byte LUN field.
    pub async fn task_management_to(&self, lun_field: [u8; 8], tmf: Tmf) -> Result<TmfResponse> {
        let (subtype, tag) = tmf.encode();
        let mut req = [0u8; 24];
        req[0..4].copy_from_slice(&vscsi_protocol::virtio_scsi::ctrl_type::TMF.to_le_bytes());
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8..16].copy_from_slice(&lun_field);
        req[16..24].copy_from_slice(&tag.to_le_bytes());
        let after = self.opts.eh_timeout;
        let resp = tokio::time::timeout(after, self.control.call(&req, 1))
            .await
            .map_err(|_| Error::TmfTimeout {
                tmf: tmf.name(),
                after,
            })??;
        let Some(&byte) = resp.first() else {
            return Err(Error::ShortResponse(0));
        };
        let r = TmfResponse::from_u8(byte);
        info!(tmf = tmf.name(), tag, response = %r, "task management function answered");
        Ok(r)
    }
}
