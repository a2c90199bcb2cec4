//! LOG SENSE (SPC-5) with the log pages a virtual disk can answer
//! truthfully.
//!
//! - Page 00h subpage 00h, Supported Log Pages: 00h, 2Fh.
//! - Page 00h subpage FFh, Supported Log Pages and Subpages: (00h,00h),
//!   (00h,FFh), (2Fh,00h).
//! - Page 2Fh subpage 00h, Informational Exceptions: one general
//!   parameter (code 0000h) with INFORMATIONAL EXCEPTION ADDITIONAL SENSE
//!   CODE / QUALIFIER 00h/00h (no failure predicted: an image predicts
//!   none) and MOST RECENT TEMPERATURE READING FFh ("no valid temperature
//!   reading": a file has no temperature).
//!
//! No other page is offered: counters such as errors, temperature or
//! start-stop cycles would be made up. LOG SELECT is not supported either:
//! no log parameter can be reset or set.
//!
//! Fields: SP=1 (save parameters) → INVALID FIELD IN CDB (nothing is
//! saved); byte 1 bit 1 (obsolete, once PPC) is ignored. PC: no parameter
//! accumulates or has a threshold, so every page control value returns
//! the same page. PARAMETER POINTER: the parameters with a code at least
//! that value; beyond the largest code of the page → INVALID FIELD IN CDB
//! (for page 00h, which has no parameter codes, any value but 0). An
//! unsupported page or subpage → INVALID FIELD IN CDB pointing at it. The
//! page is truncated to the ALLOCATION LENGTH.

use vscsi_protocol::cdb::{be16, byte};

use super::command::{invalid_field, respond, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// Supported Log Pages (SPC-5).
pub const PAGE_SUPPORTED: u8 = 0x00;
/// Informational Exceptions log page (SPC-5).
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x2F;

/// The (page, subpage) pairs offered, ascending.
const PAGES: [(u8, u8); 3] = [
    (PAGE_SUPPORTED, 0x00),
    (PAGE_SUPPORTED, 0xFF),
    (PAGE_INFORMATIONAL_EXCEPTIONS, 0x00),
];

/// LOG SENSE: byte 1 SP (bit 0); byte 2 PC (7-6), PAGE CODE (5-0); byte 3
/// SUBPAGE CODE; bytes 5-6 PARAMETER POINTER; 7-8 ALLOCATION LENGTH.
pub(crate) fn log_sense(
    _: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    if byte(cdb, 1) & 0x01 != 0 {
        return invalid_field(1, Some(0));
    }
    let page = byte(cdb, 2) & 0x3F;
    let subpage = byte(cdb, 3);
    let pointer = be16(cdb, 5);
    let alloc = usize::from(be16(cdb, 7));
    if !PAGES.iter().any(|&(p, _)| p == page) {
        return invalid_field(2, Some(5));
    }
    if !PAGES.contains(&(page, subpage)) {
        return invalid_field(3, None);
    }
    let mut out = Vec::with_capacity(16);
    match (page, subpage) {
        (PAGE_SUPPORTED, 0x00) => {
            if pointer != 0 {
                return invalid_field(5, None);
            }
            out.extend_from_slice(&[PAGE_SUPPORTED, 0, 0, 0]);
            for &(p, s) in &PAGES {
                if s == 0 {
                    out.push(p);
                }
            }
        }
        (PAGE_SUPPORTED, _) => {
            if pointer != 0 {
                return invalid_field(5, None);
            }
            // SPF=1: a subpage format page.
            out.extend_from_slice(&[0x40 | PAGE_SUPPORTED, 0xFF, 0, 0]);
            for &(p, s) in &PAGES {
                out.extend_from_slice(&[p, s]);
            }
        }
        _ => {
            // One parameter, code 0000h: the largest code is 0.
            if pointer != 0 {
                return invalid_field(5, None);
            }
            out.extend_from_slice(&[PAGE_INFORMATIONAL_EXCEPTIONS, 0, 0, 0]);
            // PARAMETER CODE 0000h; control: FORMAT AND LINKING 11b
            // (binary list); PARAMETER LENGTH 3; ASC, ASCQ, temperature.
            out.extend_from_slice(&[0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0xFF]);
        }
    }
    let len = (out.len() - 4) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    respond(data_in, alloc, &out)
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, triple};
    use crate::scsi::LunOptions;

    /// SPC-5 LOG SENSE CDB.
    fn ls(sp: bool, pc: u8, page: u8, subpage: u8, pointer: u16, alloc: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x4D;
        c[1] = u8::from(sp);
        c[2] = pc << 6 | page;
        c[3] = subpage;
        c[5..7].copy_from_slice(&pointer.to_be_bytes());
        c[7..9].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn supported_pages_and_informational_exceptions() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, d) = run(t, 0, &ls(false, 1, 0, 0, 0, 255), 255, &[]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(d, [0x00, 0x00, 0x00, 0x02, 0x00, 0x2F]);
        let (_, d) = run(t, 0, &ls(false, 1, 0, 0xFF, 0, 255), 255, &[]);
        assert_eq!(
            d,
            [0x40, 0xFF, 0x00, 0x06, 0x00, 0x00, 0x00, 0xFF, 0x2F, 0x00]
        );
        for pc in 0..4 {
            let (r, d) = run(t, 0, &ls(false, pc, 0x2F, 0, 0, 255), 255, &[]);
            assert!(r.is_good());
            assert_eq!(
                d,
                [0x2F, 0x00, 0x00, 0x07, 0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0xFF]
            );
        }
        // Allocation length truncates; the page length still says 7.
        let (r, d) = run(t, 0, &ls(false, 1, 0x2F, 0, 0, 4), 255, &[]);
        assert_eq!((r.data_in_len, d), (4, vec![0x2F, 0, 0, 7]));
        // Byte 1 bit 1 (obsolete PPC) is ignored.
        let mut c = ls(false, 1, 0x2F, 0, 0, 255);
        c[1] = 0x02;
        assert!(run(t, 0, &c, 255, &[]).0.is_good());
    }

    #[test]
    fn refused_fields_point_at_themselves() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let fp = |c: &[u8]| {
            let (r, _) = run(t, 0, c, 255, &[]);
            assert_eq!(triple(&r), (5, 0x24, 0));
            r.decoded_sense().unwrap().field_pointer()
        };
        assert_eq!(fp(&ls(true, 1, 0x2F, 0, 0, 255)), Some((true, 1, Some(0))));
        // Temperature (0Dh) is not offered: nothing truthful to report.
        assert_eq!(fp(&ls(false, 1, 0x0D, 0, 0, 255)), Some((true, 2, Some(5))));
        assert_eq!(fp(&ls(false, 1, 0x2F, 0xFF, 0, 255)), Some((true, 3, None)));
        assert_eq!(fp(&ls(false, 1, 0x2F, 0, 1, 255)), Some((true, 5, None)));
        assert_eq!(fp(&ls(false, 1, 0x00, 0, 1, 255)), Some((true, 5, None)));
        // Fixed-format bytes of one of them.
        let (r, _) = run(t, 0, &ls(false, 1, 0x0D, 0, 0, 255), 255, &[]);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xCD, 0, 2]
        );
    }
}
