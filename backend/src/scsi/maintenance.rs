//! MAINTENANCE IN service actions (SPC-5) other than REPORT SUPPORTED
//! OPERATION CODES (see [`super::supported_opcodes`]): REPORT SUPPORTED TASK
//! MANAGEMENT FUNCTIONS.

use vscsi_protocol::cdb::{be32, byte};

use super::command::{invalid_field, respond, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// The task management functions the control queue carries out
/// (SPC-5 REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS parameter data, byte
/// 0): ABORT TASK, ABORT TASK SET, CLEAR ACA, CLEAR TASK SET, LOGICAL UNIT
/// RESET, QUERY TASK.
pub const TMF_BYTE_0: u8 = 0x80 | 0x40 | 0x20 | 0x10 | 0x08 | 0x04;
/// Byte 1: QUERY TASK SET and I_T NEXUS RESET.
pub const TMF_BYTE_1: u8 = 0x02 | 0x01;

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: 4 bytes, or 16 with REPD
/// (ADDITIONAL DATA LENGTH 0Ch, no timeouts reported). An ALLOCATION
/// LENGTH below 4 → INVALID FIELD IN CDB (SPC-5).
pub(crate) fn report_supported_tmfs(
    _: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let repd = byte(cdb, 2) & 0x80 != 0;
    let alloc = be32(cdb, 6) as usize;
    if alloc < 4 {
        return invalid_field(6, None);
    }
    let mut b = [0u8; 16];
    b[0] = TMF_BYTE_0;
    b[1] = TMF_BYTE_1;
    if repd {
        b[3] = 0x0C;
        respond(data_in, alloc, &b)
    } else {
        respond(data_in, alloc, &b[..4])
    }
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;

    #[test]
    fn task_management_functions() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        // SPC-5 REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS CDB.
        let (r, data) = run(t, 0, &[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], 64, &[]);
        assert!(r.is_good());
        assert_eq!(data, [0xFC, 0x03, 0, 0]);
        let (_, data) = run(
            t,
            0,
            &[0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0],
            64,
            &[],
        );
        assert_eq!(data.len(), 16);
        assert_eq!(&data[..4], &[0xFC, 0x03, 0, 0x0C]);
        let (r, _) = run(t, 0, &[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0], 64, &[]);
        assert_eq!(triple(&r), (5, 0x24, 0));
    }
}
