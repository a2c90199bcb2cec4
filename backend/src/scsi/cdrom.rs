//! The MMC-6 commands a CD-ROM logical unit needs for a Linux guest to
//! mount an ISO 9660 image and for eject / load to work: READ TOC/PMA/ATIP
//! (formats 0 and 1), GET CONFIGURATION, GET EVENT STATUS NOTIFICATION
//! (media class, polled), READ DISC INFORMATION and MECHANISM STATUS. The
//! medium is one data track (track 1, mode 1, 2048-byte blocks) in one
//! complete session, like a pressed CD-ROM.
//!
//! READ(10)/(12), READ CAPACITY, MODE SENSE (page 2Ah), START STOP UNIT
//! (LOEJ) and PREVENT ALLOW MEDIUM REMOVAL are shared with the disk.

use vscsi_protocol::cdb::{be16, byte};

use super::command::{invalid_field, respond, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::{LogicalUnit, MEDIA_EVENT_NONE};

/// Profile 0008h: CD-ROM (MMC-6 profile list).
pub const PROFILE_CD_ROM: u16 = 0x0008;

/// LBA → MSF (MMC-6: the 150-block pre-gap; 75 frames a second).
fn msf(lba: u64) -> [u8; 4] {
    let f = lba + 150;
    let m = u8::try_from(f / (75 * 60)).unwrap_or(0xFF);
    [0, m, ((f / 75) % 60) as u8, (f % 75) as u8]
}

fn address(lba: u64, msf_form: bool) -> [u8; 4] {
    if msf_form {
        msf(lba)
    } else {
        u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes()
    }
}

/// READ TOC/PMA/ATIP (MMC-6), formats 0000b (TOC) and 0001b (session
/// information); the old format field in the CONTROL byte (bits 7-6) is
/// honoured when FORMAT is 0. Other formats → INVALID FIELD IN CDB.
pub(crate) fn read_toc(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let msf_form = byte(cdb, 1) & 0x02 != 0;
    let mut format = byte(cdb, 2) & 0x0F;
    if format == 0 {
        format = byte(cdb, 9) >> 6;
    }
    let track = byte(cdb, 6);
    let alloc = usize::from(be16(cdb, 7));
    let mut out = Vec::with_capacity(20);
    match format {
        0 => {
            // TOC: header (DATA LENGTH, FIRST and LAST TRACK NUMBER), then
            // track descriptors from the STARTING TRACK: track 1 and the
            // lead-out (AAh). ADR 1, CONTROL 4 (data track).
            if track > 1 && track != 0xAA {
                return invalid_field(6, Some(7));
            }
            out.extend_from_slice(&[0, 0, 1, 1]);
            if track <= 1 {
                out.extend_from_slice(&[0, 0x14, 1, 0]);
                out.extend_from_slice(&address(0, msf_form));
            }
            out.extend_from_slice(&[0, 0x14, 0xAA, 0]);
            out.extend_from_slice(&address(lu.capacity_blocks(), msf_form));
        }
        1 => {
            // Session information: first/last complete session 1, the
            // first track of the last session (1) at LBA 0.
            out.extend_from_slice(&[0, 0, 1, 1, 0, 0x14, 1, 0]);
            out.extend_from_slice(&address(0, msf_form));
        }
        _ => return invalid_field(2, Some(3)),
    }
    let len = (out.len() - 2) as u16;
    out[..2].copy_from_slice(&len.to_be_bytes());
    respond(data_in, alloc, &out)
}

/// GET CONFIGURATION (MMC-6): feature header with the CURRENT PROFILE
/// (CD-ROM, or 0 with no medium), then the Profile List (0000h), Core
/// (0001h), Morphing (0002h), Removable Medium (0003h), Random Readable
/// (0010h) and CD Read (001Eh) features. RT 00b all features from
/// STARTING FEATURE NUMBER, 01b the current ones, 10b that one feature;
/// 11b → INVALID FIELD IN CDB.
pub(crate) fn get_configuration(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let rt = byte(cdb, 1) & 0x03;
    if rt == 3 {
        return invalid_field(1, Some(1));
    }
    let start = be16(cdb, 2);
    let alloc = usize::from(be16(cdb, 7));
    let present = lu.medium_present();
    let bs = lu.block_size().to_be_bytes();
    // (feature code, current, feature-dependent data); VERSION in bits 5-2,
    // PERSISTENT bit 1, CURRENT bit 0.
    let features: [(u16, bool, u8, Vec<u8>); 6] = [
        (0x0000, true, 0x03, vec![0x00, 0x08, u8::from(present), 0]),
        (0x0001, true, 0x0B, vec![0, 0, 0, 0x01, 0x01, 0, 0, 0]), // Core: SCSI family interface, DBE
        (0x0002, true, 0x07, vec![0x00, 0, 0, 0]),                // Morphing: polled events only
        (
            0x0003,
            true,
            0x03,
            // Removable Medium: LOADING MECHANISM TYPE tray (001b), LOAD, EJECT, LOCK.
            vec![0x20 | 0x10 | 0x08 | 0x01, 0, 0, 0],
        ),
        (
            0x0010,
            present,
            0x01,
            vec![bs[0], bs[1], bs[2], bs[3], 0, 0x01, 0, 0], // Random Readable: block size, BLOCKING 1
        ),
        (0x001E, present, 0x09, vec![0, 0, 0, 0]), // CD Read
    ];
    let mut out = vec![0u8; 8];
    out[6..8].copy_from_slice(&(if present { PROFILE_CD_ROM } else { 0 }).to_be_bytes());
    for (code, current, version_bits, data) in features.iter() {
        let wanted = match rt {
            0 => *code >= start,
            1 => *code >= start && *current,
            _ => *code == start,
        };
        if !wanted {
            continue;
        }
        out.extend_from_slice(&code.to_be_bytes());
        out.push(version_bits & !0x01 | u8::from(*current));
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    respond(data_in, alloc, &out)
}

/// GET EVENT STATUS NOTIFICATION (MMC-6), polled only (POLLED=0 →
/// INVALID FIELD IN CDB: asynchronous notification is not supported).
/// SUPPORTED EVENT CLASSES: media (bit 4). A request for the media class
/// returns the pending media event (new media after a load, media removal
/// after an eject) and the MEDIA PRESENT bit; any other request gets NEA.
pub(crate) fn get_event_status_notification(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    if byte(cdb, 1) & 0x01 == 0 {
        return invalid_field(1, Some(0));
    }
    let classes = byte(cdb, 4);
    let alloc = usize::from(be16(cdb, 7));
    const MEDIA_CLASS: u8 = 0x10;
    if classes & MEDIA_CLASS == 0 {
        // NEA, NOTIFICATION CLASS 0, no event data.
        return respond(data_in, alloc, &[0, 2, 0x80, MEDIA_CLASS]);
    }
    let event = if alloc >= 8 {
        lu.take_media_event()
    } else {
        MEDIA_EVENT_NONE
    };
    let out = [
        0,
        6,
        0x04, // NOTIFICATION CLASS 100b: media
        MEDIA_CLASS,
        event,
        if lu.medium_present() { 0x02 } else { 0 },
        0,
        0,
    ];
    respond(data_in, alloc, &out)
}

/// READ DISC INFORMATION (MMC-6), DATA TYPE 000b (standard disc
/// information): a complete disc with one complete session of one track,
/// unrestricted use, CD-ROM disc type. Other data types → INVALID FIELD IN CDB.
pub(crate) fn read_disc_information(
    _: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    if byte(cdb, 1) & 0x07 != 0 {
        return invalid_field(1, Some(2));
    }
    let alloc = usize::from(be16(cdb, 7));
    let mut out = [0u8; 34];
    out[1] = 32; // DISC INFORMATION LENGTH
    out[2] = 0x0E; // last session complete (11b), disc complete (10b)
    out[3] = 1; // first track on disc
    out[4] = 1; // sessions (LSB)
    out[5] = 1; // first track in last session
    out[6] = 1; // last track in last session
    out[7] = 0x20; // URU: unrestricted use
    out[8] = 0x00; // DISC TYPE: CD-DA or CD-ROM
                   // Last session lead-in / last possible lead-out start: FFFFFFFFh (not CD-R).
    out[16..24].fill(0xFF);
    respond(data_in, alloc, &out)
}

/// MECHANISM STATUS (MMC-6): an 8-byte header, no changer: MECHANISM
/// STATE idle, DOOR OPEN when the medium is ejected, no slot table.
pub(crate) fn mechanism_status(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let alloc = usize::from(be16(cdb, 8));
    let door_open = if lu.medium_present() { 0 } else { 0x10 };
    respond(data_in, alloc, &[0, door_open, 0, 0, 0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::scsi::lu::DeviceType;
    use crate::scsi::testutil::{image_file, run, triple};
    use crate::scsi::{LogicalUnit, LunOptions, ScsiBus};
    use vscsi_protocol::cdb::Cdb;

    fn cd_bus(blocks: usize) -> (ScsiBus, tempfile::NamedTempFile) {
        let f = image_file(blocks * 2048);
        let lu = LogicalUnit::open(
            f.path(),
            LunOptions {
                device_type: DeviceType::Cdrom,
                ..Default::default()
            },
        )
        .unwrap();
        let mut bus = ScsiBus::new();
        bus.add_lun(0, 0, Arc::new(lu)).unwrap();
        (bus, f)
    }

    #[test]
    fn identity_capacity_and_reads() {
        let (bus, _f) = cd_bus(100);
        let t = bus.target(0).unwrap();
        let (r, inq) = run(t, 0, Cdb::inquiry(false, 0, 96).as_bytes(), 96, &[]);
        assert!(r.is_good());
        // SPC-5 standard INQUIRY data: type 05h, RMB.
        assert_eq!(&inq[..2], &[0x05, 0x80]);
        assert_eq!(&inq[16..32], b"VIRTUAL-CDROM   ");
        let (_, cap) = run(t, 0, Cdb::read_capacity_10().as_bytes(), 8, &[]);
        assert_eq!(cap, [0, 0, 0, 99, 0, 0, 0x08, 0]);
        let (r, data) = run(t, 0, Cdb::read_10(1, 1, false).as_bytes(), 2048, &[]);
        assert!(r.is_good());
        assert_eq!(data.len(), 2048);
        // Disk-only commands are not offered.
        let (r, _) = run(t, 0, Cdb::write_10(0, 1, false).as_bytes(), 0, &[0; 2048]);
        assert_eq!(triple(&r), (5, 0x20, 0));
        let (_, vpd) = run(t, 0, Cdb::inquiry(true, 0, 64).as_bytes(), 64, &[]);
        assert_eq!(vpd, [0x05, 0, 0, 3, 0x00, 0x80, 0x83]);
    }

    #[test]
    fn read_toc_formats_0_and_1() {
        let (bus, _f) = cd_bus(100);
        let t = bus.target(0).unwrap();
        // MMC-6 READ TOC/PMA/ATIP, format 0, LBA form.
        let (r, toc) = run(t, 0, &[0x43, 0, 0, 0, 0, 0, 0, 0, 64, 0], 64, &[]);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(
            toc,
            [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xAA, 0, 0, 0, 0, 100]
        );
        // MSF form: track 1 at 00:02:00, lead-out at 100 + 150 frames = 00:03:25.
        let (_, toc) = run(t, 0, &[0x43, 0x02, 0, 0, 0, 0, 0, 0, 64, 0], 64, &[]);
        assert_eq!(&toc[8..12], &[0, 0, 2, 0]);
        assert_eq!(&toc[16..20], &[0, 0, 3, 25]);
        // Format 1: session information.
        let (_, s) = run(t, 0, &[0x43, 0, 1, 0, 0, 0, 0, 0, 64, 0], 64, &[]);
        assert_eq!(s, [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
        let (r, _) = run(t, 0, &[0x43, 0, 5, 0, 0, 0, 0, 0, 64, 0], 64, &[]);
        assert_eq!(triple(&r), (5, 0x24, 0));
    }

    #[test]
    fn eject_prevent_load_and_events() {
        let (bus, _f) = cd_bus(100);
        let t = bus.target(0).unwrap();
        let gesn = [0x4A, 0x01, 0, 0, 0x10, 0, 0, 0, 8, 0];
        let (_, ev) = run(t, 0, &gesn, 8, &[]);
        assert_eq!(ev, [0, 6, 0x04, 0x10, 0, 0x02, 0, 0]);
        // PREVENT, then eject (START STOP UNIT LOEJ=1 START=0) is refused.
        assert!(run(t, 0, &[0x1E, 0, 0, 0, 1, 0], 0, &[]).0.is_good());
        let (r, _) = run(t, 0, &[0x1B, 0, 0, 0, 0x02, 0], 0, &[]);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x53, 0x02, 0, 0, 0, 0]
        );
        assert!(run(t, 0, &[0x1E, 0, 0, 0, 0, 0], 0, &[]).0.is_good());
        assert!(run(t, 0, &[0x1B, 0, 0, 0, 0x02, 0], 0, &[]).0.is_good());
        // No medium: NOT READY, MEDIUM NOT PRESENT (2/3A/00).
        for cdb in [
            Cdb::test_unit_ready(),
            Cdb::read_10(0, 1, false),
            Cdb::read_capacity_10(),
        ] {
            let (r, _) = run(t, 0, cdb.as_bytes(), 2048, &[]);
            assert_eq!(
                r.sense(),
                &[0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x3A, 0x00, 0, 0, 0, 0]
            );
        }
        let (_, ev) = run(t, 0, &gesn, 8, &[]);
        assert_eq!(ev, [0, 6, 0x04, 0x10, 0x03, 0x00, 0, 0]);
        let (_, ms) = run(t, 0, &[0xBD, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8, &[]);
        assert_eq!(ms[1], 0x10);
        // GET CONFIGURATION without medium: current profile 0.
        let (_, gc) = run(t, 0, &[0x46, 0x02, 0, 0, 0, 0, 0, 0, 64, 0], 64, &[]);
        assert_eq!(
            &gc[..16],
            &[0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0x03, 4, 0, 0x08, 0, 0]
        );
        // Load (LOEJ=1 START=1): MEDIUM MAY HAVE CHANGED, then ready.
        assert!(run(t, 0, &[0x1B, 0, 0, 0, 0x03, 0], 0, &[]).0.is_good());
        let (r, _) = run(t, 0, Cdb::test_unit_ready().as_bytes(), 0, &[]);
        assert_eq!(triple(&r), (6, 0x28, 0));
        assert!(run(t, 0, Cdb::test_unit_ready().as_bytes(), 0, &[])
            .0
            .is_good());
        let (_, ev) = run(t, 0, &gesn, 8, &[]);
        assert_eq!(ev[4..6], [0x02, 0x02]);
    }

    #[test]
    fn configuration_disc_information_and_mode_page_2a() {
        let (bus, _f) = cd_bus(100);
        let t = bus.target(0).unwrap();
        let (r, gc) = run(t, 0, &[0x46, 0, 0, 0, 0, 0, 0, 1, 0, 0], 256, &[]);
        assert!(r.is_good());
        // Feature header: CURRENT PROFILE 0008h (CD-ROM).
        assert_eq!(&gc[6..8], &[0, 0x08]);
        let len = u32::from_be_bytes(gc[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, gc.len());
        // Profile list feature: profile 0008h, current.
        assert_eq!(&gc[8..16], &[0, 0, 0x03, 4, 0, 0x08, 1, 0]);
        // RT 10b: only the CD Read feature.
        let (_, one) = run(t, 0, &[0x46, 0x02, 0, 0x1E, 0, 0, 0, 0, 64, 0], 64, &[]);
        assert_eq!(&one[8..12], &[0, 0x1E, 0x09, 4]);
        assert_eq!(one.len(), 16);
        let (r, di) = run(t, 0, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0], 34, &[]);
        assert!(r.is_good());
        assert_eq!(&di[..9], &[0, 32, 0x0E, 1, 1, 1, 1, 0x20, 0]);
        // MODE SENSE(10) page 2Ah.
        let (r, ms) = run(
            t,
            0,
            Cdb::mode_sense_10(false, true, 0, 0x2A, 0, 64).as_bytes(),
            64,
            &[],
        );
        assert!(r.is_good(), "{r:?}");
        assert_eq!(&ms[8..10], &[0x2A, 0x14]);
        assert_eq!(ms[8 + 6] & 0x08, 0x08, "eject supported");
        assert_eq!(ms.len(), 8 + 22);
    }
}
