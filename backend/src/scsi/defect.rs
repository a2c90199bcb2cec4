//! READ DEFECT DATA(10) and (12) (SBC-4).
//!
//! An image has no defects: both the primary (PLIST, the "manufacturer's")
//! and the grown (GLIST) defect lists exist and are empty. The answer is
//! the defect list header only:
//!
//! - PLISTV / GLISTV are set exactly when REQ_PLIST / REQ_GLIST ask for
//!   the list (neither: the header alone, both bits 0);
//! - DEFECT LIST FORMAT echoes the format asked: an empty list is valid in
//!   every defined format (000b short block, 001b extended bytes from
//!   index, 010b extended physical sector, 011b long block, 100b bytes
//!   from index, 101b physical sector, 110b vendor specific); the reserved
//!   111b → INVALID FIELD IN CDB;
//! - DEFECT LIST LENGTH 0; the 12-byte form's GENERATION CODE is 0000h
//!   (generation code not supported: the lists never change) and its
//!   ADDRESS DESCRIPTOR INDEX selects nothing in an empty list;
//! - the header is truncated to the ALLOCATION LENGTH.

use vscsi_protocol::cdb::{be16, be32, byte};
use vscsi_protocol::opcode as op;

use super::command::{invalid_field, respond, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// READ DEFECT DATA(10): byte 2 REQ_PLIST (4), REQ_GLIST (3), DEFECT LIST
/// FORMAT (2-0); bytes 7-8 ALLOCATION LENGTH. READ DEFECT DATA(12): the
/// same bits in byte 1; bytes 2-5 ADDRESS DESCRIPTOR INDEX, 6-9 ALLOCATION
/// LENGTH.
pub(crate) fn read_defect_data(
    _: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let twelve = byte(cdb, 0) == op::READ_DEFECT_DATA_12;
    let flags_byte = if twelve { 1 } else { 2 };
    let flags = byte(cdb, flags_byte) & 0x1F;
    if flags & 0x07 == 0x07 {
        return invalid_field(flags_byte as u16, Some(2));
    }
    if twelve {
        // Byte 1: PLISTV, GLISTV, format; 2-3 GENERATION CODE; 4-7 length.
        let header = [0, flags, 0, 0, 0, 0, 0, 0];
        respond(data_in, be32(cdb, 6) as usize, &header)
    } else {
        // Byte 1: PLISTV, GLISTV, format; 2-3 DEFECT LIST LENGTH.
        let header = [0, flags, 0, 0];
        respond(data_in, usize::from(be16(cdb, 7)), &header)
    }
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run};
    use crate::scsi::LunOptions;

    #[test]
    fn empty_lists_in_the_format_asked() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        // (10): REQ_PLIST + REQ_GLIST, long block format (011b).
        let (r, d) = run(t, 0, &[0x37, 0, 0x1B, 0, 0, 0, 0, 0, 255, 0], 255, &[]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(d, [0, 0x1B, 0, 0]);
        // Only the grown list, short block format; neither list.
        let (_, d) = run(t, 0, &[0x37, 0, 0x08, 0, 0, 0, 0, 0, 4, 0], 255, &[]);
        assert_eq!(d, [0, 0x08, 0, 0]);
        let (_, d) = run(t, 0, &[0x37, 0, 0x04, 0, 0, 0, 0, 0, 4, 0], 255, &[]);
        assert_eq!(d, [0, 0x04, 0, 0]);
        // Allocation length truncates.
        let (r, d) = run(t, 0, &[0x37, 0, 0x1B, 0, 0, 0, 0, 0, 2, 0], 255, &[]);
        assert_eq!((r.data_in_len, d), (2, vec![0, 0x1B]));
        // (12): 8-byte header, PLIST only, physical sector format (101b).
        let mut c = [0u8; 12];
        c[0] = 0xB7;
        c[1] = 0x15;
        c[9] = 64;
        let (r, d) = run(t, 0, &c, 255, &[]);
        assert!(r.is_good());
        assert_eq!(d, [0, 0x15, 0, 0, 0, 0, 0, 0]);
        c[9] = 3;
        assert_eq!(run(t, 0, &c, 255, &[]).1, [0, 0x15, 0]);
        // Reserved format 111b.
        let (r, _) = run(t, 0, &[0x37, 0, 0x1F, 0, 0, 0, 0, 0, 4, 0], 255, &[]);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xCA, 0, 2]
        );
        c[1] = 0x07;
        let (r, _) = run(t, 0, &c, 255, &[]);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 1, Some(2)))
        );
    }
}
