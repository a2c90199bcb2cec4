//! FORMAT UNIT (SBC-4): validated, and then a no-op on the data.
//!
//! An image is always formatted: the logical unit has no format-corrupt
//! state to clear (it either opens the image and serves it, or refuses it
//! at configuration time), and the block size is fixed by the LUN options.
//! So a FORMAT UNIT that asks for nothing this device cannot keep is
//! answered GOOD without touching a byte of the medium: data is never
//! destroyed. What is refused:
//!
//! - a write-protected logical unit → 7/27/00 WRITE PROTECTED;
//! - FMTPINFO ≠ 0 (no protection information) → 5/24/00 at byte 1 bit 7;
//! - FFMT 11b (reserved) → 5/24/00 at byte 4 bit 1 (00b, 01b and 10b are
//!   all satisfied: the medium is not written, and reads never fail);
//! - with FMTDATA=1, DEFECT LIST FORMAT 111b (reserved) → 5/24/00 at byte 1
//!   bit 2; the parameter list header (4 bytes, or 8 with LONGLIST=1) is
//!   read from Data-Out (a shorter buffer: 5/0E/03) and checked: PROTECTION
//!   FIELD USAGE ≠ 0, DPRY/DCRT/STPF/IP set with FOV=0, IP=1 (an
//!   initialization pattern would overwrite data), P_I_INFORMATION or
//!   PROTECTION INTERVAL EXPONENT ≠ 0 (long header), and a non-zero DEFECT
//!   LIST LENGTH (no defect list can be added to an image) → 5/26/00
//!   INVALID FIELD IN PARAMETER LIST pointing at the field.
//!
//! IMMED in the header is accepted: the command completes at once either
//! way, so there is never a format in progress to report.

use vscsi_protocol::cdb::{be16, be32, byte};
use vscsi_protocol::sense::Sense;

use super::command::{invalid_field, invalid_param, parameter_list, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// FORMAT UNIT: byte 1 FMTPINFO (7-6), LONGLIST (5), FMTDATA (4), CMPLST
/// (3), DEFECT LIST FORMAT (2-0); byte 4 FFMT (1-0).
pub(crate) fn format_unit(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let b1 = byte(cdb, 1);
    if b1 >> 6 != 0 {
        return invalid_field(1, Some(7));
    }
    if byte(cdb, 4) & 0x03 == 0x03 {
        return invalid_field(4, Some(1));
    }
    let fmtdata = b1 & 0x10 != 0;
    let longlist = b1 & 0x20 != 0;
    if fmtdata && b1 & 0x07 == 0x07 {
        return invalid_field(1, Some(2));
    }
    if lu.read_only() {
        return CommandResult::check_condition(Sense::WRITE_PROTECTED);
    }
    if !fmtdata {
        return CommandResult::good(0);
    }
    let header_len = if longlist { 8 } else { 4 };
    let h = match parameter_list(data_out, header_len) {
        Ok(h) => h,
        Err(r) => return r,
    };
    if h[0] & 0x07 != 0 {
        return invalid_param(0, Some(2));
    }
    let fov = h[1] & 0x80 != 0;
    if !fov {
        // DPRY, DCRT, STPF, IP shall be zero when FOV is zero.
        for bit in (3..=6).rev() {
            if h[1] & (1 << bit) != 0 {
                return invalid_param(1, Some(bit));
            }
        }
    } else if h[1] & 0x08 != 0 {
        return invalid_param(1, Some(3));
    }
    let (defect_len, at) = if longlist {
        if h[3] & 0xF0 != 0 {
            return invalid_param(3, Some(7));
        }
        if h[3] & 0x0F != 0 {
            return invalid_param(3, Some(3));
        }
        (be32(&h, 4), 4)
    } else {
        (u32::from(be16(&h, 2)), 2)
    };
    if defect_len != 0 {
        return invalid_param(at, None);
    }
    CommandResult::good(0).with_data_out(header_len)
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;

    fn fu(b1: u8, ffmt: u8) -> [u8; 6] {
        [0x04, b1, 0, 0, ffmt, 0]
    }

    #[test]
    fn format_unit_validates_and_keeps_the_data() {
        let (bus, f) = bus_with(8, LunOptions::default());
        let before = std::fs::read(f.path()).unwrap();
        let t = bus.target(0).unwrap();
        // No parameter list; every FFMT but the reserved one.
        for ffmt in 0..3 {
            assert!(run(t, 0, &fu(0, ffmt), 0, &[]).0.is_good());
        }
        // Short header, IMMED; long header with FOV and DCRT.
        let (r, _) = run(t, 0, &fu(0x10, 0), 0, &[0, 0x02, 0, 0]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 4);
        let (r, _) = run(t, 0, &fu(0x33, 0), 0, &[0, 0xA0, 0, 0, 0, 0, 0, 0]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 8);
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
    }

    #[test]
    fn format_unit_refusals_point_at_the_field() {
        let (bus, f) = bus_with(8, LunOptions::default());
        let before = std::fs::read(f.path()).unwrap();
        let t = bus.target(0).unwrap();
        let fp = |cdb: &[u8], out: &[u8]| {
            let (r, _) = run(t, 0, cdb, 0, out);
            let s = r.decoded_sense().unwrap();
            ((s.key as u8, s.asc, s.ascq), s.field_pointer())
        };
        let cdb_field = |b, bit| ((5, 0x24, 0), Some((true, b, bit)));
        let param_field = |b, bit| ((5, 0x26, 0), Some((false, b, bit)));
        assert_eq!(fp(&fu(0x40, 0), &[]), cdb_field(1, Some(7)));
        assert_eq!(fp(&fu(0, 3), &[]), cdb_field(4, Some(1)));
        assert_eq!(fp(&fu(0x17, 0), &[0; 4]), cdb_field(1, Some(2)));
        assert_eq!(fp(&fu(0x10, 0), &[1, 0, 0, 0]), param_field(0, Some(2)));
        // DCRT without FOV; IP with FOV.
        assert_eq!(fp(&fu(0x10, 0), &[0, 0x20, 0, 0]), param_field(1, Some(5)));
        assert_eq!(fp(&fu(0x10, 0), &[0, 0x88, 0, 0]), param_field(1, Some(3)));
        // A defect list, short and long.
        assert_eq!(fp(&fu(0x10, 0), &[0, 0, 0, 4]), param_field(2, None));
        assert_eq!(
            fp(&fu(0x30, 0), &[0, 0, 0, 0, 0, 0, 0, 8]),
            param_field(4, None)
        );
        assert_eq!(
            fp(&fu(0x30, 0), &[0, 0, 0, 0x10, 0, 0, 0, 0]),
            param_field(3, Some(7))
        );
        assert_eq!(
            fp(&fu(0x30, 0), &[0, 0, 0, 0x01, 0, 0, 0, 0]),
            param_field(3, Some(3))
        );
        // The header does not fit the Data-Out buffer.
        assert!(run(t, 0, &fu(0x30, 0), 0, &[0; 4]).0.is_overrun());
        // Byte-exact fixed sense of a parameter-list refusal (C/D=0).
        let (r, _) = run(t, 0, &fu(0x10, 0), 0, &[0, 0, 0, 4]);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x26, 0, 0, 0x80, 0, 2]
        );
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        let (ro, _g) = bus_with(
            8,
            LunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        let (r, _) = run(ro.target(0).unwrap(), 0, &fu(0, 0), 0, &[]);
        assert_eq!(triple(&r), (7, 0x27, 0));
    }
}
