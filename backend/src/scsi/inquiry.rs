//! INQUIRY (SPC-5): standard data and the VPD pages 00h (supported pages),
//! 80h (unit serial number, when a serial is configured) and 83h (device
//! identification).
//!
//! CDB: byte 1 bit 0 EVPD, bit 1 the obsolete CmdDt (must be 0), byte 2
//! PAGE CODE (must be 0 without EVPD), bytes 3-4 ALLOCATION LENGTH.
//! Violations → 5/24/00 INVALID FIELD IN CDB with a field pointer.
//!
//! For a LUN with no logical unit behind it SPC-5 requires standard data
//! with PERIPHERAL QUALIFIER 011b and device type 1Fh (what Linux's scan
//! treats as "nothing here"); the REPORT LUNS well-known LU answers with
//! qualifier 000b and type 1Eh (well known logical unit).

use vscsi_protocol::cdb::{be16, byte};
use vscsi_protocol::data::{
    StandardInquiry, PQ_CONNECTED, PQ_NOT_SUPPORTED, TYPE_DISK, TYPE_UNKNOWN, TYPE_WELL_KNOWN_LU,
};

use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;
use super::{invalid_field, respond, CommandResult};

/// VPD page: supported VPD pages.
pub const VPD_SUPPORTED_PAGES: u8 = 0x00;
/// VPD page: unit serial number.
pub const VPD_UNIT_SERIAL_NUMBER: u8 = 0x80;
/// VPD page: device identification.
pub const VPD_DEVICE_IDENTIFICATION: u8 = 0x83;

struct Parsed {
    evpd: bool,
    page: u8,
    alloc: usize,
}

fn parse(cdb: &[u8]) -> Result<Parsed, CommandResult> {
    let b1 = byte(cdb, 1);
    if b1 & 0x02 != 0 {
        return Err(invalid_field(1, Some(1)));
    }
    let evpd = b1 & 0x01 != 0;
    let page = byte(cdb, 2);
    if !evpd && page != 0 {
        return Err(invalid_field(2, Some(7)));
    }
    Ok(Parsed {
        evpd,
        page,
        alloc: usize::from(be16(cdb, 3)),
    })
}

/// Writes a VPD page header (SPC-5 VPD page format: PQ/type, PAGE CODE, 2-byte PAGE
/// LENGTH) before `body_len` bytes already at `buf[4..]`; returns the total.
fn vpd_header(buf: &mut [u8], pq_type: u8, page: u8, body_len: usize) -> usize {
    buf[0] = pq_type;
    buf[1] = page;
    buf[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    4 + body_len
}

/// INQUIRY to an existing logical unit.
pub(crate) fn inquiry(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let p = match parse(cdb) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !p.evpd {
        return respond(data_in, p.alloc, lu.standard_inquiry());
    }
    let pq_type = PQ_CONNECTED << 5 | TYPE_DISK;
    let serial = lu.options().serial.as_deref();
    let mut buf = [0u8; 256];
    let n = match p.page {
        VPD_SUPPORTED_PAGES => {
            let mut n = 0;
            for page in [
                VPD_SUPPORTED_PAGES,
                VPD_UNIT_SERIAL_NUMBER,
                VPD_DEVICE_IDENTIFICATION,
            ] {
                if page != VPD_UNIT_SERIAL_NUMBER || serial.is_some() {
                    buf[4 + n] = page;
                    n += 1;
                }
            }
            vpd_header(&mut buf, pq_type, p.page, n)
        }
        VPD_UNIT_SERIAL_NUMBER => match serial {
            // Length is validated at open (at most 64 bytes).
            Some(s) if s.len() <= buf.len() - 4 => {
                buf[4..4 + s.len()].copy_from_slice(s.as_bytes());
                vpd_header(&mut buf, pq_type, p.page, s.len())
            }
            _ => return invalid_field(2, Some(7)),
        },
        VPD_DEVICE_IDENTIFICATION => {
            // One designation descriptor (SPC-5 Device Identification VPD page): CODE SET 2 (ASCII),
            // ASSOCIATION 00b (the logical unit), DESIGNATOR TYPE 1 (T10
            // vendor ID based: 8-byte vendor + vendor specific identifier).
            let id = lu.designator().as_bytes();
            let id = &id[..id.len().min(buf.len() - 8)];
            buf[4] = 0x02;
            buf[5] = 0x01;
            buf[7] = id.len() as u8;
            buf[8..8 + id.len()].copy_from_slice(id);
            vpd_header(&mut buf, pq_type, p.page, 4 + id.len())
        }
        _ => return invalid_field(2, Some(7)),
    };
    respond(data_in, p.alloc, &buf[..n])
}

fn placeholder(pq: u8, device_type: u8, product: &str) -> [u8; 36] {
    let mut s = StandardInquiry::disk("VSCSI", product, "0001");
    s.peripheral_qualifier = pq;
    s.device_type = device_type;
    s.cmdque = false;
    s.to_bytes()
}

fn placeholder_inquiry(
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    pq: u8,
    device_type: u8,
    product: &str,
) -> CommandResult {
    let p = match parse(cdb) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !p.evpd {
        return respond(data_in, p.alloc, &placeholder(pq, device_type, product));
    }
    if p.page != VPD_SUPPORTED_PAGES {
        return invalid_field(2, Some(7));
    }
    respond(
        data_in,
        p.alloc,
        &[pq << 5 | device_type, 0, 0, 1, VPD_SUPPORTED_PAGES],
    )
}

/// INQUIRY to a LUN without a logical unit: PQ 011b, type 1Fh (SPC-5).
pub(crate) fn missing_lun(cdb: &[u8], data_in: &mut dyn DataIn) -> CommandResult {
    placeholder_inquiry(
        cdb,
        data_in,
        PQ_NOT_SUPPORTED,
        TYPE_UNKNOWN,
        "NO LOGICAL UNIT",
    )
}

/// INQUIRY to the REPORT LUNS well-known LU: PQ 000b, type 1Eh (SPC-5, well known logical units).
pub(crate) fn well_known(cdb: &[u8], data_in: &mut dyn DataIn) -> CommandResult {
    placeholder_inquiry(
        cdb,
        data_in,
        PQ_CONNECTED,
        TYPE_WELL_KNOWN_LU,
        "REPORT LUNS WLUN",
    )
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, run_cdb, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;
    use vscsi_protocol::data::StandardInquiry;

    #[test]
    fn standard_inquiry_bytes() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::inquiry(false, 0, 96), 256);
        assert!(r.is_good());
        let mut expect = Vec::new();
        expect.extend_from_slice(&[0x00, 0x00, 0x07, 0x12, 31, 0, 0, 0x02]);
        expect.extend_from_slice(b"VSCSI   VIRTUAL-DISK    0001");
        assert_eq!(data, expect);
        // Allocation length 5 and 0.
        let (r, data) = run_cdb(t, 0, Cdb::inquiry(false, 0, 5), 256);
        assert_eq!((r.data_in_len, &data[..]), (5, &expect[..5]));
        let (r, _) = run_cdb(t, 0, Cdb::inquiry(false, 0, 0), 256);
        assert!(r.is_good());
        assert_eq!(r.data_in_len, 0);
        // Buffer smaller than the allocation length.
        let (r, _) = run_cdb(t, 0, Cdb::inquiry(false, 0, 96), 10);
        assert_eq!(r.data_in_len, 10);
    }

    #[test]
    fn missing_lun_inquiry_is_pq3_type_1f() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 1, Cdb::inquiry(false, 0, 36), 256);
        assert!(r.is_good());
        assert_eq!(data.len(), 36);
        assert_eq!(data[0], 0x7F);
        let d = StandardInquiry::decode(&data).unwrap();
        assert_eq!((d.peripheral_qualifier, d.device_type), (3, 0x1F));
        let (r, data) = run_cdb(t, 1, Cdb::inquiry(true, 0, 36), 256);
        assert!(r.is_good());
        assert_eq!(data, [0x7F, 0, 0, 1, 0]);
        let (r, _) = run_cdb(t, 1, Cdb::inquiry(true, 0x83, 36), 256);
        assert_eq!(triple(&r), (5, 0x24, 0));
    }

    #[test]
    fn vpd_pages() {
        let (bus, _f) = bus_with(
            8,
            LunOptions {
                serial: Some("SN123".into()),
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x00, 255), 256);
        assert!(r.is_good());
        assert_eq!(data, [0, 0, 0, 3, 0x00, 0x80, 0x83]);
        let (_, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x80, 255), 256);
        assert_eq!(data, [0, 0x80, 0, 5, b'S', b'N', b'1', b'2', b'3']);
        let (_, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x83, 255), 256);
        let mut expect = vec![0, 0x83, 0, 17, 0x02, 0x01, 0, 13];
        expect.extend_from_slice(b"VSCSI   SN123");
        assert_eq!(data, expect);
        let (r, _) = run_cdb(t, 0, Cdb::inquiry(true, 0xB0, 255), 256);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xCF, 0, 2]
        );
    }

    #[test]
    fn vpd_without_serial() {
        let (bus, f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (_, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x00, 255), 256);
        assert_eq!(data, [0, 0, 0, 2, 0x00, 0x83]);
        let (r, _) = run_cdb(t, 0, Cdb::inquiry(true, 0x80, 255), 256);
        assert_eq!(triple(&r), (5, 0x24, 0));
        let (_, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x83, 255), 256);
        let id = std::str::from_utf8(&data[8..]).unwrap();
        assert!(id.starts_with("VSCSI   VIRTUAL-DISK-"), "{id}");
        assert_eq!(usize::from(data[7]), id.len());
        // Stable for the same image.
        drop(bus);
        let lu = crate::scsi::LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        assert_eq!(lu.designator(), id);
    }

    #[test]
    fn bad_inquiry_fields() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        // Page code without EVPD.
        let (r, _) = run_cdb(t, 0, Cdb::inquiry(false, 0x80, 36), 256);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 2, Some(7)))
        );
        // CmdDt.
        let (r, _) = run(t, 0, &[0x12, 0x02, 0, 0, 36, 0], 256, &[]);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 1, Some(1)))
        );
    }
}
