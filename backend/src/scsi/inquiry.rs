//! INQUIRY (SPC-5): standard data (96 bytes, with version descriptors for
//! SAM-5, SPC-5 and SBC-4) and the VPD pages 00h (supported pages), 80h
//! (unit serial number: configured, or derived from the image path), 83h
//! (device identification: an NAA designator and a T10 vendor ID
//! designator for the logical unit, both stable across restarts and the
//! same through every controller serving the image; then the relative
//! target port and the NAA target port name of the controller the command
//! came through, see [`super::target_port`]), B0h (block limits), B1h
//! (block device characteristics) and B2h (logical block provisioning).
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
    StandardInquiry, PQ_CONNECTED, PQ_NOT_SUPPORTED, TYPE_CDROM, TYPE_DISK, TYPE_UNKNOWN,
    TYPE_WELL_KNOWN_LU,
};

use super::command::{invalid_field, respond, CommandResult};
use super::io::DataIn;
use super::lu::{DeviceType, LogicalUnit};
use super::provisioning::{max_unmap_blocks, MAX_UNMAP_DESCRIPTORS};
use super::target_port::{TargetPort, DESIGNATORS_LEN};
use super::verify::MAX_COMPARE_AND_WRITE_BLOCKS;

/// VPD page: supported VPD pages.
pub const VPD_SUPPORTED_PAGES: u8 = 0x00;
/// VPD page: unit serial number.
pub const VPD_UNIT_SERIAL_NUMBER: u8 = 0x80;
/// VPD page: device identification.
pub const VPD_DEVICE_IDENTIFICATION: u8 = 0x83;
/// VPD page: block limits (SBC-4).
pub const VPD_BLOCK_LIMITS: u8 = 0xB0;
/// VPD page: block device characteristics (SBC-4).
pub const VPD_BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
/// VPD page: logical block provisioning (SBC-4).
pub const VPD_LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;

/// The VPD pages of a disk LU, in ascending order (page 00h lists exactly these).
pub const VPD_PAGES: [u8; 6] = [
    VPD_SUPPORTED_PAGES,
    VPD_UNIT_SERIAL_NUMBER,
    VPD_DEVICE_IDENTIFICATION,
    VPD_BLOCK_LIMITS,
    VPD_BLOCK_DEVICE_CHARACTERISTICS,
    VPD_LOGICAL_BLOCK_PROVISIONING,
];

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

/// INQUIRY to an existing logical unit, received through `port`.
pub(crate) fn inquiry(
    lu: &LogicalUnit,
    port: &TargetPort,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
) -> CommandResult {
    let p = match parse(cdb) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !p.evpd {
        return respond(data_in, p.alloc, lu.standard_inquiry());
    }
    let cdrom = lu.device_type() == DeviceType::Cdrom;
    let pq_type = PQ_CONNECTED << 5 | if cdrom { TYPE_CDROM } else { TYPE_DISK };
    // A CD-ROM has no SBC block limits, characteristics or provisioning.
    let pages = if cdrom {
        &VPD_PAGES[..3]
    } else {
        &VPD_PAGES[..]
    };
    if !pages.contains(&p.page) {
        return invalid_field(2, Some(7));
    }
    let mut buf = [0u8; 256];
    let n = match p.page {
        VPD_SUPPORTED_PAGES => {
            buf[4..4 + pages.len()].copy_from_slice(pages);
            vpd_header(&mut buf, pq_type, p.page, pages.len())
        }
        VPD_UNIT_SERIAL_NUMBER => {
            // Length is validated at open (at most 64 bytes).
            let s = lu.serial().as_bytes();
            let s = &s[..s.len().min(buf.len() - 4)];
            buf[4..4 + s.len()].copy_from_slice(s);
            vpd_header(&mut buf, pq_type, p.page, s.len())
        }
        VPD_DEVICE_IDENTIFICATION => {
            // SPC-5 designation descriptors. First an NAA designator: CODE
            // SET 1 (binary), ASSOCIATION 00b (the logical unit), DESIGNATOR
            // TYPE 3 (NAA), 8 bytes.
            buf[4] = 0x01;
            buf[5] = 0x03;
            buf[7] = 8;
            buf[8..16].copy_from_slice(&lu.naa().to_be_bytes());
            // Then CODE SET 2 (ASCII), ASSOCIATION 00b, DESIGNATOR TYPE 1
            // (T10 vendor ID based: 8-byte vendor + vendor specific identifier).
            let id = lu.designator().as_bytes();
            let id = &id[..id.len().min(buf.len() - 20 - DESIGNATORS_LEN)];
            buf[16] = 0x02;
            buf[17] = 0x01;
            buf[19] = id.len() as u8;
            buf[20..20 + id.len()].copy_from_slice(id);
            // Then the target port (ASSOCIATION 01b): relative target port
            // and target port name.
            let n = port.write_designators(&mut buf[20 + id.len()..]);
            vpd_header(&mut buf, pq_type, p.page, 16 + id.len() + n)
        }
        VPD_BLOCK_LIMITS => {
            block_limits(lu, &mut buf[4..64]);
            vpd_header(&mut buf, pq_type, p.page, 60)
        }
        VPD_BLOCK_DEVICE_CHARACTERISTICS => {
            // SBC-4 Block Device Characteristics VPD page: MEDIUM ROTATION
            // RATE (bytes 4-5), PRODUCT TYPE 0, NOMINAL FORM FACTOR 0.
            buf[4..6].copy_from_slice(&lu.options().rotation_rate.to_be_bytes());
            vpd_header(&mut buf, pq_type, p.page, 60)
        }
        VPD_LOGICAL_BLOCK_PROVISIONING => {
            // SBC-4 Logical Block Provisioning VPD page: byte 5 LBPU (7),
            // LBPWS (6), LBPWS10 (5), LBPRZ (4-2, 001b: unmapped blocks read
            // zero); byte 6 PROVISIONING TYPE (010b thin, 000b full).
            if lu.thin() {
                buf[5] = 0x80 | 0x40 | 0x20;
                if lu.image().unmapped_reads_zero() {
                    buf[5] |= 0x04;
                }
                buf[6] = 0x02;
            }
            vpd_header(&mut buf, pq_type, p.page, 4)
        }
        _ => return invalid_field(2, Some(7)),
    };
    respond(data_in, p.alloc, &buf[..n])
}

/// The 60 bytes after the header of the SBC-4 Block Limits VPD page.
/// `b[i]` is byte `i + 4` of the page.
fn block_limits(lu: &LogicalUnit, b: &mut [u8]) {
    let put32 = |b: &mut [u8], page_byte: usize, v: u32| {
        b[page_byte - 4..page_byte].copy_from_slice(&v.to_be_bytes())
    };
    b[0] = 0x01; // byte 4: WSNZ (WRITE SAME with 0 blocks is refused)
    b[1] = MAX_COMPARE_AND_WRITE_BLOCKS; // byte 5
    let granularity = 1u16 << lu.lb_per_pb_exp();
    b[2..4].copy_from_slice(&granularity.to_be_bytes()); // bytes 6-7
    let max_transfer = (u64::from(lu.options().max_sectors) << 9) >> lu.block_shift();
    put32(b, 8, u32::try_from(max_transfer).unwrap_or(u32::MAX)); // bytes 8-11
    if lu.thin() {
        put32(b, 20, max_unmap_blocks(lu)); // bytes 20-23 MAXIMUM UNMAP LBA COUNT
        put32(b, 24, MAX_UNMAP_DESCRIPTORS); // bytes 24-27
        put32(b, 28, lu.unmap_granularity()); // bytes 28-31 OPTIMAL UNMAP GRANULARITY
        put32(b, 32, 0x8000_0000); // bytes 32-35 UGAVALID, alignment 0
    }
    // Bytes 36-43 MAXIMUM WRITE SAME LENGTH.
    b[32..40].copy_from_slice(&u64::from(max_unmap_blocks(lu)).to_be_bytes());
    // Bytes 44-63: the atomic write limits.
    b[40..60].copy_from_slice(&super::atomic::block_limits_fields(lu));
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
        // SPC-5 standard INQUIRY data format: 96 bytes, ADDITIONAL LENGTH
        // 91, version descriptors at bytes 58-73 (SPC-5 version descriptor
        // values: SAM-5 00A0h, SPC-5 05C0h, SBC-4 0600h).
        let mut expect = Vec::new();
        expect.extend_from_slice(&[0x00, 0x00, 0x07, 0x12, 91, 0, 0, 0x02]);
        expect.extend_from_slice(b"VSCSI   VIRTUAL-DISK    0001");
        expect.resize(58, 0);
        expect.extend_from_slice(&[0x00, 0xA0, 0x05, 0xC0, 0x06, 0x00]);
        expect.resize(96, 0);
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
        assert_eq!(data, [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
        let (_, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x80, 255), 256);
        assert_eq!(data, [0, 0x80, 0, 5, b'S', b'N', b'1', b'2', b'3']);
        let (_, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x83, 255), 256);
        // SPC-5 Device Identification VPD page: NAA 3h designator (binary,
        // LU, type 3), then the T10 vendor ID designator (ASCII, LU, type 1).
        let naa = t.lun(0).unwrap().naa();
        assert_eq!(naa >> 60, 3);
        // Then the target port's: relative target port 1 (binary, target
        // port association, type 4h) and its NAA name (binary, target port, 3h).
        let port = t.port().name();
        assert_eq!(port >> 60, 3);
        let mut expect = vec![0, 0x83, 0, 49, 0x01, 0x03, 0, 8];
        expect.extend_from_slice(&naa.to_be_bytes());
        expect.extend_from_slice(&[0x02, 0x01, 0, 13]);
        expect.extend_from_slice(b"VSCSI   SN123");
        expect.extend_from_slice(&[0x01, 0x14, 0, 4, 0, 0, 0, 1]);
        expect.extend_from_slice(&[0x01, 0x13, 0, 8]);
        expect.extend_from_slice(&port.to_be_bytes());
        assert_eq!(data, expect);
        let (r, _) = run_cdb(t, 0, Cdb::inquiry(true, 0xB3, 255), 256);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xCF, 0, 2]
        );
    }

    #[test]
    fn vpd_without_serial() {
        let (bus, f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, serial) = run_cdb(t, 0, Cdb::inquiry(true, 0x80, 255), 256);
        assert!(r.is_good());
        assert_eq!(serial.len(), 4 + 16);
        let (_, data) = run_cdb(t, 0, Cdb::inquiry(true, 0x83, 255), 256);
        let naa = data[8..16].to_vec();
        let id_len = usize::from(data[19]);
        let id = std::str::from_utf8(&data[20..20 + id_len])
            .unwrap()
            .to_string();
        assert!(id.starts_with("VSCSI   VIRTUAL-DISK-"), "{id}");
        assert_eq!(data.len(), 20 + id_len + 20);
        // Stable for the same image.
        drop(bus);
        let lu = crate::scsi::LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        assert_eq!(lu.designator(), id);
        assert_eq!(lu.naa().to_be_bytes().to_vec(), naa);
        assert_eq!(lu.serial().as_bytes(), &serial[4..]);
    }

    /// One image behind two controllers (two buses, two target ports): the
    /// logical unit designators and serial agree, the target port ones differ.
    #[test]
    fn two_ports_to_one_logical_unit() {
        use crate::scsi::{LogicalUnit, ScsiBus, TargetPort};
        use std::path::Path;
        use std::sync::Arc;
        let (_, f) = bus_with(8, LunOptions::default());
        let lu = Arc::new(LogicalUnit::open(f.path(), LunOptions::default()).unwrap());
        let page = |index: usize| {
            let mut bus = ScsiBus::new();
            bus.add_lun(0, 0, lu.clone()).unwrap();
            bus.set_port(TargetPort::for_controller(
                index,
                Path::new(&format!("/run/c{index}.sock")),
            ));
            let (r, di) = run_cdb(
                bus.target(0).unwrap(),
                0,
                Cdb::inquiry(true, 0x83, 255),
                256,
            );
            assert!(r.is_good());
            let (_, sn) = run_cdb(
                bus.target(0).unwrap(),
                0,
                Cdb::inquiry(true, 0x80, 255),
                256,
            );
            (di, sn, *bus.port())
        };
        let (a, sn_a, port_a) = page(0);
        let (b, sn_b, port_b) = page(1);
        assert_eq!(sn_a, sn_b);
        let lu_part = 4 + 12 + 4 + usize::from(a[19]);
        assert_eq!(a[..lu_part], b[..lu_part]);
        assert_eq!(a.len(), lu_part + 20);
        assert_eq!(a[lu_part..lu_part + 8], [0x01, 0x14, 0, 4, 0, 0, 0, 1]);
        assert_eq!(b[lu_part..lu_part + 8], [0x01, 0x14, 0, 4, 0, 0, 0, 2]);
        assert_eq!(a[lu_part + 12..], port_a.name().to_be_bytes());
        assert_eq!(b[lu_part + 12..], port_b.name().to_be_bytes());
        assert_ne!(port_a.name(), port_b.name());
        // A target added after set_port gets the bus's port too.
        let mut bus = ScsiBus::new();
        bus.set_port(TargetPort::new(7, 0x1234));
        let bus = bus.with_lun(3, 0, lu.clone()).unwrap();
        assert_eq!(bus.target(3).unwrap().port().relative_id(), 7);
        // Standard INQUIRY: TPGS 00b (byte 5 bits 5-4), no ALUA.
        let (_, std) = run_cdb(bus.target(3).unwrap(), 0, Cdb::inquiry(false, 0, 96), 256);
        assert_eq!(std[5] & 0x30, 0);
    }

    #[test]
    fn block_limits_characteristics_provisioning() {
        let (bus, _f) = bus_with(
            8,
            LunOptions {
                rotation_rate: 7200,
                physical_block_size: 4096,
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        let thin = t.lun(0).unwrap().thin();
        // SBC-4 Block Limits VPD page.
        let (r, b0) = run_cdb(t, 0, Cdb::inquiry(true, 0xB0, 255), 256);
        assert!(r.is_good());
        assert_eq!(b0.len(), 64);
        assert_eq!(&b0[..8], &[0, 0xB0, 0, 0x3C, 0x01, 64, 0, 8]);
        assert_eq!(&b0[8..12], &0xFFFFu32.to_be_bytes()); // max_sectors, 512-byte blocks
        assert_eq!(&b0[36..44], &(2u64 << 20).to_be_bytes()); // 1 GiB of 512-byte blocks
                                                              // MAXIMUM ATOMIC TRANSFER LENGTH 64 KiB; no alignment, granularity or boundaries.
        assert_eq!(&b0[44..48], &128u32.to_be_bytes());
        assert_eq!(&b0[48..64], &[0; 16]);
        if thin {
            assert_eq!(&b0[20..28], &[0, 0x20, 0, 0, 0, 0, 0, 255]);
            assert_eq!(b0[32], 0x80);
        }
        // SBC-4 Block Device Characteristics VPD page.
        let (_, b1) = run_cdb(t, 0, Cdb::inquiry(true, 0xB1, 255), 256);
        assert_eq!(b1.len(), 64);
        assert_eq!(&b1[..8], &[0, 0xB1, 0, 0x3C, 0x1C, 0x20, 0, 0]);
        // SBC-4 Logical Block Provisioning VPD page.
        let (_, b2) = run_cdb(t, 0, Cdb::inquiry(true, 0xB2, 255), 256);
        if thin {
            assert_eq!(b2, [0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
        } else {
            assert_eq!(b2, [0, 0xB2, 0, 4, 0, 0, 0, 0]);
        }
        let (bus, _f) = bus_with(
            8,
            LunOptions {
                discard: false,
                ..Default::default()
            },
        );
        let (_, b2) = run_cdb(
            bus.target(0).unwrap(),
            0,
            Cdb::inquiry(true, 0xB2, 255),
            256,
        );
        assert_eq!(b2, [0, 0xB2, 0, 4, 0, 0, 0, 0]);
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
