//! MODE SENSE(6)/(10) and MODE SELECT(6)/(10) (SPC-5): the caching mode
//! page 08h (SBC-4), the control mode page 0Ah (SPC-5) and the
//! informational exceptions control mode page 1Ch (SPC-5), alone or
//! through 3Fh (all pages), with the block descriptor unless DBD is set.
//!
//! - Mode parameter header: DEVICE-SPECIFIC PARAMETER (SBC-4) has WP (bit 7)
//!   for a read-only LU and DPOFUA (bit 4): FUA is honoured (fdatasync after
//!   the write).
//! - Block descriptor: short (8 bytes; NUMBER OF LOGICAL BLOCKS FFFFFFFFh
//!   when the capacity does not fit) or, for MODE SENSE(10) with LLBAA, long
//!   (16 bytes, LONGLBA set in the header).
//! - Caching page: WCE (changeable; 1 by default: writes land in the host
//!   page cache until SYNCHRONIZE CACHE or FUA; 0: every write is
//!   `fdatasync`ed before its response).
//! - Control page: D_SENSE (changeable: 1 selects descriptor format sense
//!   for this LU), QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering),
//!   QERR 00b.
//! - Informational exceptions page: DEXCPT=1 (no failure prediction), MRIE 0.
//! - PC 00b current, 01b changeable (masks), 10b default;
//!   11b saved → 5/39/00 SAVING PARAMETERS NOT SUPPORTED.
//! - Other page codes, or a SUBPAGE CODE other than 00h/FFh → 5/24/00.
//!
//! MODE SELECT takes PF=1 only (SP=1 → INVALID FIELD IN CDB: parameters
//! cannot be saved). The parameter list is checked whole before anything
//! changes: a short header or page → PARAMETER LIST LENGTH ERROR; a block
//! descriptor whose block length differs from the LU's, or whose block
//! count is neither 0 nor the capacity, an unknown page, a wrong PAGE
//! LENGTH, a subpage, or any bit that differs from the current value and
//! is not changeable → INVALID FIELD IN PARAMETER LIST with the field
//! pointer on it. Turning WCE off flushes the cache first. With one I_T
//! nexus per connection there is no other nexus to give MODE PARAMETERS
//! CHANGED to.

use vscsi_protocol::cdb::{be16, be32, be64, byte};
use vscsi_protocol::opcode;
use vscsi_protocol::sense::Sense;

use super::command::{
    invalid_field, invalid_param, io_error_sense, parameter_list, respond, CommandResult,
};
use super::io::{DataIn, DataOut};
use super::lu::{DeviceType, LogicalUnit};

/// Caching mode page code (SBC-4).
pub const PAGE_CACHING: u8 = 0x08;
/// Control mode page code (SPC-5).
pub const PAGE_CONTROL: u8 = 0x0A;
/// Informational exceptions control mode page code (SPC-5).
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
/// CD/DVD capabilities and mechanical status mode page code (MMC-6).
pub const PAGE_CAPABILITIES: u8 = 0x2A;
/// "Return all mode pages".
pub const PAGE_ALL: u8 = 0x3F;

const CACHING_LEN: usize = 20;
const CONTROL_LEN: usize = 12;
const IEC_LEN: usize = 12;
const CAPABILITIES_LEN: usize = 22;

/// Page control: which values MODE SENSE returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

/// The mode pages of a disk in ascending page code order: (code, length).
const DISK_PAGES: [(u8, usize); 3] = [
    (PAGE_CACHING, CACHING_LEN),
    (PAGE_CONTROL, CONTROL_LEN),
    (PAGE_INFORMATIONAL_EXCEPTIONS, IEC_LEN),
];

/// The mode pages of a CD-ROM.
const CDROM_PAGES: [(u8, usize); 2] = [
    (PAGE_CONTROL, CONTROL_LEN),
    (PAGE_CAPABILITIES, CAPABILITIES_LEN),
];

fn pages(lu: &LogicalUnit) -> &'static [(u8, usize)] {
    match lu.device_type() {
        DeviceType::Disk => &DISK_PAGES,
        DeviceType::Cdrom => &CDROM_PAGES,
    }
}

/// Writes page `code` into `out` (which is the page's length) for `pc`.
fn page(lu: &LogicalUnit, code: u8, pc: Pc, out: &mut [u8]) {
    out.fill(0);
    out[0] = code;
    out[1] = (out.len() - 2) as u8;
    match (code, pc) {
        (PAGE_CACHING, Pc::Changeable) => out[2] = 0x04,
        (PAGE_CACHING, Pc::Current) => out[2] = if lu.write_cache() { 0x04 } else { 0 },
        (PAGE_CACHING, Pc::Default) => out[2] = if lu.options().write_cache { 0x04 } else { 0 },
        (PAGE_CONTROL, Pc::Changeable) => out[2] = 0x04,
        (PAGE_CONTROL, _) => {
            if pc == Pc::Current && lu.descriptor_sense() {
                out[2] = 0x04;
            }
            out[3] = 0x10; // QUEUE ALGORITHM MODIFIER = 1
        }
        (PAGE_INFORMATIONAL_EXCEPTIONS, Pc::Changeable) => {}
        (PAGE_INFORMATIONAL_EXCEPTIONS, _) => out[2] = 0x08, // DEXCPT
        (PAGE_CAPABILITIES, Pc::Changeable) => {}
        (PAGE_CAPABILITIES, _) => {
            // MMC-6 CD/DVD Capabilities and Mechanical Status page (the
            // fields Linux's sr reads): reads CD-R/CD-RW media, writes none;
            // multi-session, mode 2 form 1; tray loading, EJECT, LOCK, and
            // LOCK STATE while medium removal is prevented.
            out[2] = 0x03;
            out[4] = 0x40 | 0x10;
            out[6] = 0x20 | 0x08 | 0x01 | if lu.removal_prevented() { 0x02 } else { 0 };
            out[8..10].copy_from_slice(&(176u16 * 24).to_be_bytes()); // obsolete max speed, KB/s
            out[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer size, KiB
        }
        _ => {}
    }
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
    let pc = match byte(cdb, 2) >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => {
            return CommandResult::check_condition(
                Sense::SAVING_PARAMETERS_NOT_SUPPORTED.with_field_pointer(true, 2, Some(7)),
            )
        }
    };
    let code = byte(cdb, 2) & 0x3F;
    let subpage = byte(cdb, 3);
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(byte(cdb, 4))
    };
    if code != PAGE_ALL && !pages(lu).iter().any(|&(c, _)| c == code) {
        return invalid_field(2, Some(5));
    }
    if subpage != 0x00 && subpage != 0xFF {
        return invalid_field(3, Some(7));
    }

    let mut buf = [0u8; 128];
    let header_len = if ten { 8 } else { 4 };
    let mut n = header_len;
    let wp_dpofua = match lu.device_type() {
        DeviceType::Disk => (if lu.read_only() { 0x80 } else { 0 }) | 0x10,
        // MMC: the device-specific parameter is reserved.
        DeviceType::Cdrom => 0,
    };
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
    for &(c, len) in pages(lu) {
        if code == PAGE_ALL || code == c {
            page(lu, c, pc, &mut buf[n..n + len]);
            n += len;
        }
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

/// MODE SELECT(6) and MODE SELECT(10).
pub(crate) fn mode_select(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    let ten = cdb.first() == Some(&opcode::MODE_SELECT_10);
    let b1 = byte(cdb, 1);
    if b1 & 0x10 == 0 {
        return invalid_field(1, Some(4)); // PF=0: vendor-specific pages
    }
    if b1 & 0x01 != 0 {
        return invalid_field(1, Some(0)); // SP: saving not supported
    }
    let len = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(byte(cdb, 4))
    };
    if len == 0 {
        return CommandResult::good(0);
    }
    let header_len = if ten { 8 } else { 4 };
    if len < header_len {
        return CommandResult::check_condition(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let list = match parameter_list(data_out, len) {
        Ok(l) => l,
        Err(r) => return r,
    };
    match check_and_apply(lu, &list, ten) {
        Ok(()) => CommandResult::good(0).with_data_out(len),
        Err(r) => r.with_data_out(len),
    }
}

fn check_and_apply(lu: &LogicalUnit, list: &[u8], ten: bool) -> Result<(), CommandResult> {
    let length_error = || CommandResult::check_condition(Sense::PARAMETER_LIST_LENGTH_ERROR);
    let (header_len, bd_len, long) = if ten {
        (8, usize::from(be16(list, 6)), list[4] & 0x01 != 0)
    } else {
        (4, usize::from(list[3]), false)
    };
    // MEDIUM TYPE must be 0 (SBC-4: direct access devices use 00h).
    let medium_type_at = if ten { 2 } else { 1 };
    if list[medium_type_at] != 0 {
        return Err(invalid_param(medium_type_at, Some(7)));
    }
    let mut at = header_len;
    match (bd_len, long) {
        (0, _) => {}
        (8, false) | (16, true) => {
            let d = list.get(at..at + bd_len).ok_or_else(length_error)?;
            let (blocks, block_len, len_at) = if long {
                (be64(d, 0), be32(d, 12), 12)
            } else {
                (u64::from(be32(d, 0)), be32(d, 4) & 0xFF_FFFF, 5)
            };
            let cap = lu.capacity_blocks();
            let cap_field = if long {
                cap
            } else {
                cap.min(u64::from(u32::MAX))
            };
            if blocks != 0 && blocks != cap_field {
                return Err(invalid_param(at, Some(7)));
            }
            if block_len != lu.block_size() {
                return Err(invalid_param(at + len_at, Some(7)));
            }
            at += bd_len;
        }
        _ => {
            let bd_len_at = if ten { 6 } else { 3 };
            return Err(invalid_param(bd_len_at, Some(7)));
        }
    }
    let mut wce = lu.write_cache();
    let mut d_sense = lu.descriptor_sense();
    while at < list.len() {
        if list.len() - at < 2 {
            return Err(length_error());
        }
        if list[at] & 0x40 != 0 {
            return Err(invalid_param(at, Some(6))); // SPF: no subpages
        }
        let code = list[at] & 0x3F;
        let Some(&(_, page_len)) = pages(lu).iter().find(|&&(c, _)| c == code) else {
            return Err(invalid_param(at, Some(5)));
        };
        if usize::from(list[at + 1]) != page_len - 2 {
            return Err(invalid_param(at + 1, Some(7)));
        }
        let given = list.get(at..at + page_len).ok_or_else(length_error)?;
        let mut current = [0u8; 32];
        let mut mask = [0u8; 32];
        page(lu, code, Pc::Current, &mut current[..page_len]);
        page(lu, code, Pc::Changeable, &mut mask[..page_len]);
        for i in 2..page_len {
            let diff = (given[i] ^ current[i]) & !mask[i];
            if diff != 0 {
                return Err(invalid_param(at + i, Some(7 - diff.leading_zeros() as u8)));
            }
        }
        match code {
            PAGE_CACHING => wce = given[2] & 0x04 != 0,
            PAGE_CONTROL => d_sense = given[2] & 0x04 != 0,
            _ => {}
        }
        at += page_len;
    }
    if lu.write_cache() && !wce {
        lu.flush().map_err(|e| {
            crate::limited_site!(warn, image = %lu.path().display(), error = %e, "flush on WCE=0 failed");
            CommandResult::check_condition(io_error_sense(&e, true))
        })?;
    }
    lu.set_mode(wce, d_sense);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, run_cdb, triple};
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
        assert_eq!(&data[..4], &[3 + 20 + 12 + 12, 0, 0x90, 0]);
        assert_eq!(&data[4..7], &[0x08, 0x12, 0x04]);
        assert_eq!(&data[24..28], &[0x0A, 0x0A, 0x00, 0x10]);
        // SPC-5 Informational Exceptions Control mode page: DEXCPT=1.
        assert_eq!(
            &data[36..48],
            &[0x1C, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(data.len(), 48);
        // Truncated to the allocation length (Linux first asks for 4 bytes).
        let (r, data) = run_cdb(t, 0, Cdb::mode_sense_6(true, 0, 0x3F, 0, 4), 192);
        assert_eq!((r.data_in_len, data[0], data[2]), (4, 47, 0x90));
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
        // Changeable values: WCE only.
        let (_, data) = run_cdb(t, 0, Cdb::mode_sense_10(false, true, 1, 0x08, 0, 512), 512);
        assert_eq!(&data[8..], &{
            let mut p = [0u8; 20];
            p[0] = 8;
            p[1] = 0x12;
            p[2] = 0x04;
            p
        });
        // Control page changeable: D_SENSE only.
        let (_, data) = run_cdb(t, 0, Cdb::mode_sense_10(false, true, 1, 0x0A, 0, 512), 512);
        assert_eq!(&data[8..12], &[0x0A, 0x0A, 0x04, 0]);
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

    /// MODE SELECT(6) CDB (SPC-5): PF byte 1 bit 4, SP bit 0, PARAMETER LIST LENGTH byte 4.
    fn select_6(len: u8) -> [u8; 6] {
        [0x15, 0x10, 0, 0, len, 0]
    }

    /// A MODE SELECT(6) parameter list: 4-byte header (no block descriptor)
    /// and the caching page with `wce`.
    fn caching_list(wce: bool) -> Vec<u8> {
        let mut v = vec![0u8, 0, 0, 0, 0x08, 0x12];
        v.push(if wce { 0x04 } else { 0 });
        v.resize(4 + 20, 0);
        v
    }

    #[test]
    fn mode_select_changes_wce_and_d_sense() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let lu = t.lun(0).unwrap();
        let list = caching_list(false);
        let (r, _) = run(t, 0, &select_6(list.len() as u8), 0, &list);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 24);
        assert!(!lu.write_cache());
        let (_, data) = run_cdb(t, 0, Cdb::mode_sense_6(true, 0, 0x08, 0, 255), 255);
        assert_eq!(data[6], 0);
        // Default values still say WCE=1.
        let (_, data) = run_cdb(t, 0, Cdb::mode_sense_6(true, 2, 0x08, 0, 255), 255);
        assert_eq!(data[6], 0x04);
        // Writes still work with WCE=0 (each one fdatasync'ed).
        let (r, _) = run(t, 0, Cdb::write_10(0, 1, false).as_bytes(), 0, &[1; 512]);
        assert!(r.is_good());

        // MODE SELECT(10) with a short block descriptor and the control
        // page with D_SENSE=1.
        let mut list = vec![0u8, 0, 0, 0, 0, 0, 0, 8];
        list.extend_from_slice(&[0, 0, 0, 16, 0, 0, 2, 0]);
        list.extend_from_slice(&[0x0A, 0x0A, 0x04, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut c = [0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
        c[8] = list.len() as u8;
        let (r, _) = run(t, 0, &c, 0, &list);
        assert!(r.is_good(), "{r:?}");
        assert!(lu.descriptor_sense());
        // Sense now comes in descriptor format (SPC-5 descriptor format sense data).
        let (r, _) = run_cdb(t, 0, Cdb::read_10(16, 1, false), 512);
        assert_eq!(r.sense(), &[0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]);
        // A logical unit reset restores the defaults.
        lu.reset();
        assert!(lu.write_cache() && !lu.descriptor_sense());
    }

    #[test]
    fn mode_select_errors() {
        let (bus, _f) = bus_with(16, LunOptions::default());
        let t = bus.target(0).unwrap();
        let lu = t.lun(0).unwrap();
        let list = caching_list(false);
        // PF=0, SP=1.
        let (r, _) = run(t, 0, &[0x15, 0x00, 0, 0, 24, 0], 0, &list);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 1, Some(4)))
        );
        let (r, _) = run(t, 0, &[0x15, 0x11, 0, 0, 24, 0], 0, &list);
        assert_eq!(
            r.decoded_sense().unwrap().field_pointer(),
            Some((true, 1, Some(0)))
        );
        // Parameter list shorter than the header; page cut short.
        assert_eq!(triple(&run(t, 0, &select_6(3), 0, &list).0), (5, 0x1A, 0));
        assert_eq!(triple(&run(t, 0, &select_6(10), 0, &list).0), (5, 0x1A, 0));
        // A non-changeable bit (RCD, byte 2 bit 0 of the caching page) at
        // parameter list byte 6: field pointer C/D=0, byte 6, bit 0.
        let mut bad = caching_list(true);
        bad[6] |= 0x01;
        let (r, _) = run(t, 0, &select_6(24), 0, &bad);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x26, 0, 0, 0x88, 0, 6]
        );
        // Unknown page, wrong page length, block length mismatch.
        let mut bad = caching_list(true);
        bad[4] = 0x01;
        assert_eq!(
            run(t, 0, &select_6(24), 0, &bad)
                .0
                .decoded_sense()
                .unwrap()
                .field_pointer(),
            Some((false, 4, Some(5)))
        );
        let mut bad = caching_list(true);
        bad[5] = 0x10;
        assert_eq!(triple(&run(t, 0, &select_6(24), 0, &bad).0), (5, 0x26, 0));
        let bad = [0u8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert_eq!(
            run(t, 0, &select_6(12), 0, &bad)
                .0
                .decoded_sense()
                .unwrap()
                .field_pointer(),
            Some((false, 9, Some(7)))
        );
        // Nothing changed by any of these; an empty list is fine.
        assert!(lu.write_cache());
        assert!(run(t, 0, &select_6(0), 0, &[]).0.is_good());
        // Data-Out shorter than the parameter list.
        assert_eq!(
            triple(&run(t, 0, &select_6(24), 0, &list[..10]).0),
            (5, 0x0E, 3)
        );
    }
}
