//! Task management functions on the control queue (VIRTIO 1.2 §5.6.6.2).

use tracing::info;
use vscsi_protocol::virtio_scsi::{ctrl_type, CtrlTmfReq, CtrlTmfResp};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use super::Driver;
use crate::error::{Error, Result};
use crate::response::lun_field;
use crate::tmf::{Tmf, TmfResponse};

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
        let req = CtrlTmfReq {
            type_: U32::new(ctrl_type::TMF),
            subtype: U32::new(subtype),
            lun: lun_field,
            tag: U64::new(tag),
        };
        let exchange = async {
            let mut pending = self
                .control
                .call(req.as_bytes(), size_of::<CtrlTmfResp>(), lun_field, tag)
                .await?;
            let mut resp = [0u8; size_of::<CtrlTmfResp>()];
            let n = pending.finished().await?.reply(&mut resp)?;
            Ok::<_, Error>((resp, n))
        };
        let after = self.opts.eh_timeout;
        let (resp, n) =
            tokio::time::timeout(after, exchange)
                .await
                .map_err(|_| Error::TmfTimeout {
                    tmf: tmf.name(),
                    after,
                })??;
        if n == 0 {
            return Err(Error::ShortResponse(0));
        }
        let r = TmfResponse::from_u8(resp[0]);
        info!(tmf = tmf.name(), tag, response = %r, "task management function answered");
        Ok(r)
    }
}
