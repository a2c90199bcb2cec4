//! REPORT LUNS (SPC-5), answered by the target for any LUN address,
//! including LUNs with no logical unit and the REPORT LUNS well-known LU.
//!
//! SELECT REPORT (byte 2):
//! - 00h: every logical unit except well-known ones;
//! - 01h: only well-known LUs: here the REPORT LUNS well-known LU (C101h);
//! - 02h: everything (LUs, then the well-known LU);
//! - 10h: administrative LUs only → empty (no conglomerates);
//! - 11h: administrative LUs and LUs that are not subsidiary → same as 00h;
//! - 12h: subsidiaries of the addressed administrative LU → empty;
//! - anything else → 5/24/00 pointing at byte 2.
//!
//! ALLOCATION LENGTH (bytes 6-9) truncates the list (SPC-5 §4.2.5.6); the
//! LUN LIST LENGTH still gives the full size so the initiator can retry.
//! Entries use peripheral addressing below 256 and flat space above
//! ([`Lun::report_luns_entry`]). The list is written entry by entry into the
//! Data-In buffer: no allocation even for 16384 LUNs.

use vscsi_protocol::cdb::{be32, byte};
use vscsi_protocol::data::report_luns_header;
use vscsi_protocol::Lun;

use super::command::{invalid_field, CommandResult};
use super::io::DataIn;

/// The REPORT LUNS well-known LUN as an 8-byte REPORT LUNS entry (SAM-5
/// extended addressing, well-known LUN 01h).
pub const WELL_KNOWN_ENTRY: [u8; 8] = [0xC1, 0x01, 0, 0, 0, 0, 0, 0];

struct Limited<'a> {
    data_in: &'a mut dyn DataIn,
    limit: usize,
    at: usize,
    written: usize,
}

impl Limited<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.at).min(bytes.len());
        if room > 0 {
            self.written += self.data_in.write_at(self.at, &bytes[..room]);
        }
        self.at = self.at.saturating_add(bytes.len());
    }
}

/// REPORT LUNS for a target with `count` logical units, numbered `luns`
/// in ascending order.
pub(crate) fn report_luns(
    count: usize,
    luns: impl Iterator<Item = u16>,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
) -> CommandResult {
    let (units, well_known) = match byte(cdb, 2) {
        0x00 | 0x11 => (true, false),
        0x01 => (false, true),
        0x02 => (true, true),
        0x10 | 0x12 => (false, false),
        _ => return invalid_field(2, Some(7)),
    };
    let alloc = be32(cdb, 6) as usize;
    let count = if units { count } else { 0 } + usize::from(well_known);
    let mut w = Limited {
        data_in,
        limit: alloc,
        at: 0,
        written: 0,
    };
    w.put(&report_luns_header(count));
    if units {
        for lun in luns {
            if w.at >= w.limit {
                break;
            }
            w.put(&Lun::report_luns_entry(lun));
        }
    }
    if well_known {
        w.put(&WELL_KNOWN_ENTRY);
    }
    CommandResult::good(w.written)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::scsi::testutil::{image_file, run_cdb, triple};
    use crate::scsi::{LogicalUnit, LunOptions, ScsiBus};
    use vscsi_protocol::cdb::Cdb;
    use vscsi_protocol::data::decode_report_luns;

    fn bus(luns: &[u16]) -> (ScsiBus, Vec<tempfile::NamedTempFile>) {
        let mut bus = ScsiBus::new();
        let mut files = Vec::new();
        for &l in luns {
            let f = image_file(4096);
            bus.add_lun(
                0,
                l,
                Arc::new(LogicalUnit::open(f.path(), LunOptions::default()).unwrap()),
            )
            .unwrap();
            files.push(f);
        }
        (bus, files)
    }

    #[test]
    fn lists_luns_byte_exact() {
        let (bus, _f) = bus(&[300, 0, 5]);
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::report_luns(0, 4096), 4096);
        assert!(r.is_good());
        assert_eq!(
            data,
            [
                0, 0, 0, 24, 0, 0, 0, 0, // header: 3 entries
                0, 0, 0, 0, 0, 0, 0, 0, // LUN 0
                0, 5, 0, 0, 0, 0, 0, 0, // LUN 5
                0x41, 0x2C, 0, 0, 0, 0, 0, 0, // LUN 300, flat space
            ]
        );
        assert_eq!(decode_report_luns(&data), vec![0, 5, 300]);
        // Also from a LUN that does not exist.
        let (r, data2) = run_cdb(t, 9, Cdb::report_luns(0, 4096), 4096);
        assert!(r.is_good());
        assert_eq!(data2, data);
    }

    #[test]
    fn select_report_variants() {
        let (bus, _f) = bus(&[0, 1]);
        let t = bus.target(0).unwrap();
        let (_, data) = run_cdb(t, 0, Cdb::report_luns(1, 4096), 4096);
        assert_eq!(data, [0, 0, 0, 8, 0, 0, 0, 0, 0xC1, 1, 0, 0, 0, 0, 0, 0]);
        let (_, data) = run_cdb(t, 0, Cdb::report_luns(2, 4096), 4096);
        assert_eq!(&data[..4], &[0, 0, 0, 24]);
        assert_eq!(&data[24..26], &[0xC1, 1]);
        assert_eq!(decode_report_luns(&data), vec![0, 1]);
        let (_, data) = run_cdb(t, 0, Cdb::report_luns(0x10, 4096), 4096);
        assert_eq!(data, [0; 8]);
        let (_, data) = run_cdb(t, 0, Cdb::report_luns(0x11, 4096), 4096);
        assert_eq!(decode_report_luns(&data), vec![0, 1]);
        let (r, _) = run_cdb(t, 0, Cdb::report_luns(3, 4096), 4096);
        assert_eq!(triple(&r), (5, 0x24, 0));
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 2, Some(7)))
        );
    }

    #[test]
    fn allocation_length_truncates_but_keeps_full_length() {
        let (bus, _f) = bus(&[0, 1, 2]);
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::report_luns(0, 20), 4096);
        assert_eq!(r.data_in_len, 20);
        assert_eq!(&data[..8], &[0, 0, 0, 24, 0, 0, 0, 0]);
        assert_eq!(&data[8..20], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        let (r, _) = run_cdb(t, 0, Cdb::report_luns(0, 0), 4096);
        assert!(r.is_good());
        assert_eq!(r.data_in_len, 0);
        // Buffer smaller than the allocation length.
        let (r, _) = run_cdb(t, 0, Cdb::report_luns(0, 4096), 12);
        assert_eq!(r.data_in_len, 12);
    }
}
