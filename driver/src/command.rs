//! SCSI commands as values: what to send, and which way data moves.

use vscsi_protocol::cdb::Cdb;

/// A SCSI command the driver can send (READ/WRITE, INQUIRY, capacity, sense, sync and raw CDBs).
///
/// READ and WRITE pick the 10- or 16-byte CDB from the LBA and length, as
/// Linux sd does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScsiCommand {
    /// TEST UNIT READY (SPC-5 §6.47).
    TestUnitReady,
    /// INQUIRY (SPC-5 §6.7): standard data or a VPD page.
    Inquiry {
        /// Bytes the device may return.
        allocation_length: u16,
        /// Ask for a vital product data page.
        evpd: bool,
        /// The VPD page (with `evpd`).
        page_code: u8,
    },
    /// READ CAPACITY (10) (SBC-4 §5.20).
    ReadCapacity10,
    /// READ CAPACITY (16) (SBC-4 §5.21).
    ReadCapacity16 {
        /// Bytes the device may return (32 is the full parameter data).
        allocation_length: u32,
    },
    /// READ (10) or (16) (SBC-4 §5.13, §5.16).
    Read {
        /// First logical block.
        lba: u64,
        /// Number of blocks.
        blocks: u32,
        /// Logical block length of the LUN, to size the buffer.
        block_size: u32,
    },
    /// WRITE (10) or (16) (SBC-4 §5.35, §5.38); `data` is whole blocks.
    Write {
        /// First logical block.
        lba: u64,
        /// Number of blocks.
        blocks: u32,
        /// The blocks.
        data: Vec<u8>,
    },
    /// REPORT LUNS (SPC-5 §6.33).
    ReportLuns {
        /// SELECT REPORT field.
        select_report: u8,
        /// Bytes the device may return.
        allocation_length: u32,
    },
    /// REQUEST SENSE (SPC-5 §6.39), fixed format.
    RequestSense {
        /// Bytes the device may return.
        allocation_length: u8,
    },
    /// SYNCHRONIZE CACHE (10) of the whole LUN (SBC-4 §5.24).
    SynchronizeCache,
    /// Any CDB, like sg_raw.
    Raw {
        /// The CDB (1 to 32 bytes).
        cdb: Vec<u8>,
        /// Data sent to the device.
        data_out: Vec<u8>,
        /// Bytes of data-in buffer offered.
        data_in_len: usize,
    },
}

impl ScsiCommand {
    /// The CDB, the data-out bytes and the data-in length of this command.
    pub fn encode(&self) -> (Cdb, &[u8], usize) {
        match self {
            ScsiCommand::TestUnitReady => (Cdb::test_unit_ready(), &[], 0),
            ScsiCommand::Inquiry {
                allocation_length,
                evpd,
                page_code,
            } => (
                Cdb::inquiry(*evpd, *page_code, *allocation_length),
                &[],
                *allocation_length as usize,
            ),
            ScsiCommand::ReadCapacity10 => (Cdb::read_capacity_10(), &[], 8),
            ScsiCommand::ReadCapacity16 { allocation_length } => (
                Cdb::read_capacity_16(*allocation_length),
                &[],
                *allocation_length as usize,
            ),
            ScsiCommand::Read {
                lba,
                blocks,
                block_size,
            } => {
                let len = *blocks as usize * *block_size as usize;
                (rw_cdb(false, *lba, *blocks), &[], len)
            }
            ScsiCommand::Write { lba, blocks, data } => {
                (rw_cdb(true, *lba, *blocks), data.as_slice(), 0)
            }
            ScsiCommand::ReportLuns {
                select_report,
                allocation_length,
            } => (
                Cdb::report_luns(*select_report, *allocation_length),
                &[],
                *allocation_length as usize,
            ),
            ScsiCommand::RequestSense { allocation_length } => (
                Cdb::request_sense(false, *allocation_length),
                &[],
                *allocation_length as usize,
            ),
            ScsiCommand::SynchronizeCache => (Cdb::synchronize_cache_10(0, 0), &[], 0),
            ScsiCommand::Raw {
                cdb,
                data_out,
                data_in_len,
            } => {
                // Validated by the driver before encoding (Error::BadCdb).
                let cdb = Cdb::from_bytes(cdb).unwrap_or_else(Cdb::test_unit_ready);
                (cdb, data_out.as_slice(), *data_in_len)
            }
        }
    }
}

pub(crate) fn rw_cdb(write: bool, lba: u64, blocks: u32) -> Cdb {
    let fits_10 = lba + blocks as u64 <= u32::MAX as u64 + 1 && blocks <= u16::MAX as u32;
    match (write, fits_10) {
        (false, true) => Cdb::read_10(lba as u32, blocks as u16, false),
        (true, true) => Cdb::write_10(lba as u32, blocks as u16, false),
        (false, false) => Cdb::read_16(lba, blocks, false),
        (true, false) => Cdb::write_16(lba, blocks, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_pick_10_or_16_byte_cdbs() {
        let (cdb, _, len) = ScsiCommand::Read {
            lba: 8,
            blocks: 2,
            block_size: 512,
        }
        .encode();
        assert_eq!(cdb.as_bytes(), &[0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0]);
        assert_eq!(len, 1024);
        let (cdb, _, _) = ScsiCommand::Read {
            lba: 1 << 32,
            blocks: 1,
            block_size: 512,
        }
        .encode();
        assert_eq!(cdb.as_bytes()[0], 0x88);
        assert_eq!(cdb.as_bytes().len(), 16);
        let (cdb, _, _) = ScsiCommand::Read {
            lba: 0,
            blocks: 70000,
            block_size: 512,
        }
        .encode();
        assert_eq!(cdb.as_bytes()[0], 0x88);
        let data = vec![0u8; 512];
        let write = ScsiCommand::Write {
            lba: 1,
            blocks: 1,
            data,
        };
        let (cdb, out, len) = write.encode();
        assert_eq!(cdb.as_bytes()[0], 0x2A);
        assert_eq!((out.len(), len), (512, 0));
    }
}
