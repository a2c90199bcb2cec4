//! MODE SENSE(6) and MODE SENSE(10) (SPC-5), minimal: the caching mode page
//! 08h (SBC-4) and the control mode page 0Ah (SPC-5), alone or through
//! 3Fh (all pages), with the block descriptor unless DBD is set.
//!
//! - Mode parameter header: DEVICE-SPECIFIC PARAMETER (SBC-4) has WP (bit 7)
//!   for a read-only LU and DPOFUA (bit 4): FUA is honoured (fdatasync after
//!   the write).
//! - Block descriptor: short (8 bytes; NUMBER OF LOGICAL BLOCKS FFFFFFFFh
//!   when the capacity does not fit) or, for MODE SENSE(10) with LLBAA, long
//!   (16 bytes, LONGLBA set in the header).
//! - Caching page: WCE=1 (writes land in the host page cache until
//!   SYNCHRONIZE CACHE or FUA), everything else 0.
//! - Control page: D_SENSE=0 (fixed format sense), QUEUE ALGORITHM MODIFIER
//!   1 (unrestricted reordering), QERR 00b.
//! - PC 00b current and 10b default return these values; 01b changeable
//!   returns all-zero masks (MODE SELECT is not supported, nothing changes);
//!   11b saved → 5/39/00 SAVING PARAMETERS NOT SUPPORTED.
//! - Other page codes, or a SUBPAGE CODE other than 00h/FFh → 5/24/00.

use vscsi_protocol::cdb::{be16, byte};
use vscsi_protocol::opcode;
use vscsi_protocol::sense::Sense;

use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;
use super::{invalid_field, respond, CommandResult};

/// Caching mode page code (SBC-4).
pub const PAGE_CACHING: u8 = 0x08;
/// Control mode page code (SPC-5).
pub const PAGE_CONTROL: u8 = 0x0A;
/// "Return all mode pages".
pub const PAGE_ALL: u8 = 0x3F;

const CACHING_LEN: usize = 20;
const CONTROL_LEN: usize = 12;

fn caching_page(changeable: bool) -> [u8; CACHING_LEN] {
    let mut p = [0u8; CACHING_LEN];
    p[0] = PAGE_CACHING;
    p[1] = (CACHING_LEN - 2) as u8;
    if !changeable {
        p[2] = 0x04; // WCE
    }
    p
}

fn control_page(changeable: bool) -> [u8; CONTROL_LEN] {
    let mut p = [0u8; CONTROL_LEN];
    p[0] = PAGE_CONTROL;
    p[1] = (CONTROL_LEN - 2) as u8;
    if !changeable {
        p[3] = 0x10; // QUEUE ALGORITHM MODIFIER = 1
    }
    p
}

/// MODE SENSE(6) and MODE SENSE(10).
pub(crate) fn mode_sense(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let ten = cdb.first() == Some(&opcode::MODE_SENSE_10);
    let b1 = byte(cdb, 1);
    let dbd = b1 & 0x08 != 0;
    let llbaa = ten && b1 & 0x10 != 0;
    let pc = byte(cdb, 2) >> 6;
    let page = byte(cdb, 2) & 0x3F;
    let subpage = byte(cdb, 3);
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(byte(cdb, 4))
    };
    if pc == 3 {
        return CommandResult::check_condition(
            Sense::SAVING_PARAMETERS_NOT_SUPPORTED.with_field_pointer(true, 2, Some(7)),
        );
    }
    let (caching, control) = match page {
        PAGE_CACHING => (true, false),
        PAGE_CONTROL => (false, true),
        PAGE_ALL => (true, true),
        _ => return invalid_field(2, Some(5)),
    };
    if subpage != 0x00 && subpage != 0xFF {
        return invalid_field(3, Some(7));
    }
    let changeable = pc == 1;

    let mut buf = [0u8; 64];
    let header_len = if ten { 8 } else { 4 };
    let mut n = header_len;
    let wp_dpofua = if lu.read_only() { 0x80 } else { 0 } | 0x10;
    let bd_len = match (dbd, llbaa) {
        (true, _) => 0,
        (false, false) => {
            let blocks = u32::try_from(lu.capacity_blocks()).unwrap_or(u32::MAX);
            buf[n..n + 4].copy_from_slice(&blocks.to_be_bytes());
            buf[n + 5..n + 8].copy_from_slice(&lu.block_size().to_be_bytes()[1..]);
            8
        }
        (false, true) => {
            buf[n..n + 8].copy_from_slice(&lu.capacity_blocks().to_be_bytes());
            buf[n + 12..n + 16].copy_from_slice(&lu.block_size().to_be_bytes());
            16
        }
    };
    n += bd_len;
    if caching {
        buf[n..n + CACHING_LEN].copy_from_slice(&caching_page(changeable));
        n += CACHING_LEN;
    }
    if control {
        buf[n..n + CONTROL_LEN].copy_from_slice(&control_page(changeable));
        n += CONTROL_LEN;
    }
    if ten {
        buf[0..2].copy_from_slice(&((n - 2) as u16).to_be_bytes());
        buf[3] = wp_dpofua;
        buf[4] = u8::from(bd_len == 16); // LONGLBA
        buf[6..8].copy_from_slice(&(bd_len as u16).to_be_bytes());
    } else {
        buf[0] = (n - 1) as u8;
        buf[2] = wp_dpofua;
        buf[3] = bd_len as u8;
    }
    respond(data_in, alloc, &buf[..n])
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run_cdb, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    #[test]
    fn mode_sense_6_caching_page_bytes() {
        let (bus, _f) = bus_with(2048, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::mode_sense_6(false, 0, 0x08, 0, 255), 255);
        assert!(r.is_good());
        let mut expect = vec![4 + 8 + 20 - 1, 0, 0x10, 8];
        expect.extend_from_slice(&[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
        expect.extend_from_slice(&[0x08, 0x12, 0x04]);
        expect.extend_from_slice(&[0; 17]);
        assert_eq!(data, expect);
    }

    #[test]
    fn mode_sense_all_pages_read_only_wp() {
        let (bus, _f) = bus_with(
            16,
            LunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::mode_sense_6(true, 0, 0x3F, 0, 192), 192);
        assert!(r.is_good());
        assert_eq!(&data[..4], &[3 + 20 + 12, 0, 0x90, 0]);
        assert_eq!(&data[4..7], &[0x08, 0x12, 0x04]);
        assert_eq!(&data[24..28], &[0x0A, 0x0A, 0x00, 0x10]);
        assert_eq!(data.len(), 36);
        // Truncated to the allocation length (Linux first asks for 4 bytes).
        let (r, data) = run_cdb(t, 0, Cdb::mode_sense_6(true, 0, 0x3F, 0, 4), 192);
        assert_eq!((r.data_in_len, data[0], data[2]), (4, 35, 0x90));
    }

    #[test]
    fn mode_sense_10_long_descriptor_and_control() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::mode_sense_10(true, false, 0, 0x0A, 0, 512), 512);
        assert!(r.is_good());
        let mut expect = vec![0, 8 + 16 + 12 - 2, 0, 0x10, 0x01, 0, 0, 16];
        expect.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 2, 0]);
        expect.extend_from_slice(&[0x0A, 0x0A, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(data, expect);
        // Changeable values: all-zero masks.
        let (_, data) = run_cdb(t, 0, Cdb::mode_sense_10(false, true, 1, 0x08, 0, 512), 512);
        assert_eq!(&data[8..], &{
            let mut p = [0u8; 20];
            p[0] = 8;
            p[1] = 0x12;
            p
        });
    }

    #[test]
    fn mode_sense_errors() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, _) = run_cdb(t, 0, Cdb::mode_sense_6(false, 3, 0x08, 0, 255), 255);
        assert_eq!(triple(&r), (5, 0x39, 0));
        let (r, _) = run_cdb(t, 0, Cdb::mode_sense_6(false, 0, 0x01, 0, 255), 255);
        assert_eq!(triple(&r), (5, 0x24, 0));
        let (r, _) = run_cdb(t, 0, Cdb::mode_sense_6(false, 0, 0x08, 0x01, 255), 255);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 3, Some(7)))
        );
        let (r, _) = run_cdb(t, 0, Cdb::mode_sense_6(false, 0, 0x3F, 0xFF, 255), 255);
        assert!(r.is_good());
    }
}
