//! The SCSI command set through the real socket, memfd and rings: at least
//! one test per opcode added on top of the core set. Expected bytes come
//! from the SPC-5 / SBC-4 tables named at each check.

mod common;

use common::{host_read, TestDaemon};
use std::sync::Arc;

use vscsi_backend::daemon::{self, Shutdown};
use vscsi_backend::scsi::dispatch::{Needs, COMMANDS};
use vscsi_backend::scsi::{DeviceType, LogicalUnit, LunOptions, ScsiBus};
use vscsi_backend::vhost::DeviceOptions;
use vscsi_driver::{Driver, QueueConfig, Response, ScsiCommand};

const MIB: u64 = 1 << 20;

async fn raw(drv: &Driver, lun: u16, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> Response {
    drv.send_command(
        0,
        lun,
        ScsiCommand::Raw {
            cdb: cdb.to_vec(),
            data_out: data_out.to_vec(),
            data_in_len,
        },
    )
    .await
    .expect("command completes")
}

/// (sense key, ASC, ASCQ) of fixed or descriptor format sense data.
fn triple(r: &Response) -> (u8, u8, u8) {
    let s = &r.sense;
    assert!(s.len() >= 4, "sense: {s:02x?}");
    match s[0] & 0x7F {
        0x70 | 0x71 => (s[2] & 0x0F, s[12], s[13]),
        _ => (s[1] & 0x0F, s[2], s[3]),
    }
}

fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, b1, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

async fn connect(d: &TestDaemon) -> Driver {
    Driver::connect(&d.socket, QueueConfig::default())
        .await
        .expect("driver connects")
}

#[tokio::test]
async fn inquiry_version_descriptors_and_vpd_pages() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = connect(&d).await;
    // SPC-5 standard INQUIRY data: 96 bytes, version descriptors at 58.
    let r = raw(&drv, 0, &[0x12, 0, 0, 0, 96, 0], &[], 96).await;
    assert!(r.is_good());
    assert_eq!(r.data.len(), 96);
    assert_eq!(r.data[4], 91);
    assert_eq!(&r.data[58..64], &[0x00, 0xA0, 0x05, 0xC0, 0x06, 0x00]);
    // Supported VPD pages lists exactly the pages served.
    let r = raw(&drv, 0, &[0x12, 1, 0x00, 0, 255, 0], &[], 255).await;
    assert_eq!(r.data, [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    for page in [0x80u8, 0x83, 0xB0, 0xB1, 0xB2] {
        let r = raw(&drv, 0, &[0x12, 1, page, 0, 255, 0], &[], 255).await;
        assert!(r.is_good(), "page {page:#x}: {r:?}");
        assert_eq!(r.data[1], page);
        assert_eq!(
            usize::from(u16::from_be_bytes([r.data[2], r.data[3]])) + 4,
            r.data.len()
        );
    }
    // 83h: NAA designator first (binary, LU, type 3, 8 bytes).
    let r = raw(&drv, 0, &[0x12, 1, 0x83, 0, 255, 0], &[], 255).await;
    assert_eq!(&r.data[4..8], &[0x01, 0x03, 0x00, 0x08]);
    // B2h: the sparse image punches holes → LBPU, LBPWS, LBPWS10, LBPRZ, thin.
    let r = raw(&drv, 0, &[0x12, 1, 0xB2, 0, 255, 0], &[], 255).await;
    assert_eq!(r.data, [0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
    // READ CAPACITY(16): LBPME and LBPRZ.
    let r = raw(&drv, 0, &cdb16(0x9E, 0x10, 0, 32), &[], 32).await;
    assert_eq!(r.data[14] & 0xC0, 0xC0);
}

#[tokio::test]
async fn mode_select_6_and_10_change_wce_and_d_sense() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = connect(&d).await;
    // MODE SELECT(6), PF=1: header + caching page with WCE=0.
    let mut list = vec![0u8, 0, 0, 0, 0x08, 0x12];
    list.resize(24, 0);
    let r = raw(&drv, 0, &[0x15, 0x10, 0, 0, 24, 0], &list, 0).await;
    assert!(r.is_good(), "{r:?}");
    // MODE SENSE(10) current caching page: WCE=0.
    let r = raw(&drv, 0, &[0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 64, 0], &[], 64).await;
    assert!(r.is_good());
    assert_eq!(&r.data[8..11], &[0x08, 0x12, 0x00]);
    // With WCE=0 writes are durable before their response, and still work.
    let r = raw(&drv, 0, &cdb10(0x2A, 0, 0, 1), &[0x77; 512], 0).await;
    assert!(r.is_good());
    // MODE SELECT(10): control page with D_SENSE=1.
    let mut list = vec![0u8; 8];
    list.extend_from_slice(&[0x0A, 0x0A, 0x04, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
    let r = raw(&drv, 0, &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0], &list, 0).await;
    assert!(r.is_good(), "{r:?}");
    // Now sense comes in descriptor format (SPC-5 descriptor format sense data).
    let r = raw(&drv, 0, &cdb10(0x28, 0, 1 << 30, 1), &[], 512).await;
    assert_eq!(r.sense, [0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]);
    // A change to a bit that is not changeable: INVALID FIELD IN PARAMETER LIST.
    let mut bad = vec![0u8; 8];
    bad.extend_from_slice(&[0x0A, 0x0A, 0x04, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
    let r = raw(&drv, 0, &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0], &bad, 0).await;
    assert_eq!(triple(&r), (5, 0x26, 0));
}

#[tokio::test]
async fn start_stop_unit_and_prevent_allow_medium_removal() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = connect(&d).await;
    let r = raw(&drv, 0, &[0x1E, 0, 0, 0, 1, 0], &[], 0).await;
    assert!(r.is_good());
    let r = raw(&drv, 0, &[0x1E, 0, 0, 0, 0, 0], &[], 0).await;
    assert!(r.is_good());
    // Stop: medium access is NOT READY, INITIALIZING COMMAND REQUIRED.
    let r = raw(&drv, 0, &[0x1B, 0, 0, 0, 0, 0], &[], 0).await;
    assert!(r.is_good());
    let r = raw(&drv, 0, &[0; 6], &[], 0).await;
    assert_eq!(
        r.sense,
        [0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x02, 0, 0, 0, 0]
    );
    let r = raw(&drv, 0, &[0x1B, 0, 0, 0, 1, 0], &[], 0).await;
    assert!(r.is_good());
    let r = raw(&drv, 0, &[0; 6], &[], 0).await;
    assert!(r.is_good());
}

#[tokio::test]
async fn write_same_unmap_and_get_lba_status() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = connect(&d).await;
    let img = d.image_path(0, 0);
    // The sparse image is one deallocated extent (SBC-4 LBA status descriptor).
    let r = raw(&drv, 0, &cdb16(0x9E, 0x12, 0, 4096), &[], 4096).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(&r.data[..4], &[0, 0, 0, 20]);
    assert_eq!(
        &r.data[8..24],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 1, 0, 0, 0]
    );
    // WRITE SAME(10): a pattern block over LBA 8..24.
    let r = raw(&drv, 0, &cdb10(0x41, 0, 8, 16), &[0xC3; 512], 0).await;
    assert!(r.is_good(), "{r:?}");
    assert!(host_read(&img, 8 * 512, 16 * 512)
        .iter()
        .all(|&b| b == 0xC3));
    let r = raw(&drv, 0, &cdb16(0x9E, 0x12, 0, 4096), &[], 4096).await;
    assert_eq!(&r.data[..4], &[0, 0, 0, 52]);
    assert_eq!(
        &r.data[24..40],
        &[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 16, 0, 0, 0, 0]
    );
    // WRITE SAME(16) with NDOB+UNMAP deallocates 8..16 again: reads zero.
    let r = raw(&drv, 0, &cdb16(0x93, 0x09, 8, 8), &[], 0).await;
    assert!(r.is_good(), "{r:?}");
    assert!(host_read(&img, 8 * 512, 8 * 512).iter().all(|&b| b == 0));
    // UNMAP (SBC-4 UNMAP parameter list) the rest.
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&16u64.to_be_bytes());
    list.extend_from_slice(&8u32.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    let r = raw(&drv, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list, 0).await;
    assert!(r.is_good(), "{r:?}");
    let r = raw(&drv, 0, &cdb10(0x28, 0, 8, 16), &[], 8192).await;
    assert!(r.data.iter().all(|&b| b == 0));
    let r = raw(&drv, 0, &cdb16(0x9E, 0x12, 0, 4096), &[], 4096).await;
    assert_eq!(&r.data[..4], &[0, 0, 0, 20], "{:02x?}", r.data);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 * MIB);
}

#[tokio::test]
async fn verify_write_and_verify_and_compare_and_write() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = connect(&d).await;
    let img = d.image_path(0, 0);
    // WRITE AND VERIFY(10) with BYTCHK, then (16).
    let r = raw(&drv, 0, &cdb10(0x2E, 0x02, 4, 2), &[0x11; 1024], 0).await;
    assert!(r.is_good(), "{r:?}");
    let r = raw(&drv, 0, &cdb16(0x8E, 0x00, 6, 1), &[0x22; 512], 0).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(host_read(&img, 6 * 512, 512), vec![0x22; 512]);
    // VERIFY(10) BYTCHK=1 matches; VERIFY(16) finds the difference at byte 1024.
    let r = raw(&drv, 0, &cdb10(0x2F, 0x02, 4, 2), &[0x11; 1024], 0).await;
    assert!(r.is_good(), "{r:?}");
    let mut want = vec![0x11; 1024];
    want.extend_from_slice(&[0x11; 512]);
    let r = raw(&drv, 0, &cdb16(0x8F, 0x02, 4, 3), &want, 0).await;
    // Fixed sense: VALID, MISCOMPARE, INFORMATION 1024, ASC 1Dh.
    assert_eq!(
        r.sense,
        [0xF0, 0, 0x0E, 0, 0, 0x04, 0x00, 10, 0, 0, 0, 0, 0x1D, 0, 0, 0, 0, 0]
    );
    // VERIFY(16) BYTCHK=0: medium verification.
    let r = raw(&drv, 0, &cdb16(0x8F, 0, 0, 64), &[], 0).await;
    assert!(r.is_good());
    // COMPARE AND WRITE: matches, then (same verify data) miscompares.
    let mut caw = vec![0u8; 16];
    caw[0] = 0x89;
    caw[9] = 6;
    caw[13] = 1;
    let mut data = vec![0x22; 512];
    data.extend_from_slice(&[0x33; 512]);
    let r = raw(&drv, 0, &caw, &data, 0).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(host_read(&img, 6 * 512, 512), vec![0x33; 512]);
    let r = raw(&drv, 0, &caw, &data, 0).await;
    assert_eq!(triple(&r), (0x0E, 0x1D, 0));
}

#[tokio::test]
async fn report_supported_operation_codes_and_tmfs() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false), (0, 1, 16 * MIB, true)]);
    let drv = connect(&d).await;
    // All commands: one 8-byte descriptor per table entry.
    let r = raw(
        &drv,
        0,
        &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        &[],
        4096,
    )
    .await;
    assert!(r.is_good(), "{r:?}");
    let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
    let disk: Vec<_> = COMMANDS
        .iter()
        .filter(|c| c.needs != Needs::Cdrom)
        .collect();
    assert_eq!(n, disk.len() * 8);
    for c in disk {
        let found = r.data[4..].chunks(8).any(|d| {
            d[0] == c.opcode
                && (d[5] & 1 == 1) == c.service_action.is_some()
                && u16::from_be_bytes([d[2], d[3]]) == u16::from(c.service_action.unwrap_or(0))
        });
        assert!(found, "{} not reported", c.name);
    }
    // One command: WRITE SAME(16), with timeouts (RCTD).
    let r = raw(
        &drv,
        0,
        &[0xA3, 0x0C, 0x81, 0x93, 0, 0, 0, 0, 0, 64, 0, 0],
        &[],
        64,
    )
    .await;
    assert_eq!(&r.data[..6], &[0, 0x83, 0, 16, 0x93, 0xFF]);
    assert_eq!(r.data.len(), 4 + 16 + 12);
    // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
    let r = raw(&drv, 1, &[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[], 4).await;
    assert!(r.is_good());
    assert_eq!(r.data, [0xFC, 0x03, 0, 0]);
    // The read-only LU refuses WRITE SAME and leaves the image alone.
    let r = raw(&drv, 1, &cdb10(0x41, 0, 0, 8), &[0xAA; 512], 0).await;
    assert_eq!(triple(&r), (7, 0x27, 0));
    assert!(host_read(&d.image_path(0, 1), 0, 4096)
        .iter()
        .all(|&b| b == 0));
}

/// A daemon serving one CD-ROM LU (an "ISO" of `blocks` 2048-byte blocks,
/// block b filled with b) at target 0 LUN 0, built like `TestDaemon`.
struct CdDaemon {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    shutdown: Arc<Shutdown>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CdDaemon {
    fn start(blocks: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("disc.iso");
        let data: Vec<u8> = (0..blocks * 2048).map(|i| (i / 2048) as u8).collect();
        std::fs::write(&iso, data).unwrap();
        let lu = LogicalUnit::open(
            &iso,
            LunOptions {
                device_type: DeviceType::Cdrom,
                ..LunOptions::default()
            },
        )
        .unwrap();
        let mut bus = ScsiBus::new();
        bus.add_lun(0, 0, Arc::new(lu)).unwrap();
        let socket = dir.path().join("cd.sock");
        let listener = daemon::bind(&socket).unwrap();
        let shutdown = Arc::new(Shutdown::default());
        let s = shutdown.clone();
        let bus = Arc::new(bus);
        let thread = std::thread::spawn(move || {
            daemon::serve(listener, bus, DeviceOptions::default(), s).expect("daemon serves");
        });
        Self {
            _dir: dir,
            socket,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for CdDaemon {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shutdown.request();
            let _ = std::os::unix::net::UnixStream::connect(&self.socket);
            let _ = t.join();
        }
    }
}

#[tokio::test]
async fn cdrom_toc_configuration_events_eject_and_load() {
    let d = CdDaemon::start(64);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .expect("driver connects");
    // Standard INQUIRY: peripheral device type 05h, RMB.
    let r = raw(&drv, 0, &[0x12, 0, 0, 0, 36, 0], &[], 36).await;
    assert_eq!(&r.data[..2], &[0x05, 0x80]);
    // READ CAPACITY(10): last LBA 63, 2048-byte blocks; READ(10) of block 5.
    let r = raw(&drv, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8).await;
    assert_eq!(r.data, [0, 0, 0, 63, 0, 0, 0x08, 0]);
    let r = raw(&drv, 0, &cdb10(0x28, 0, 5, 1), &[], 2048).await;
    assert!(r.is_good());
    assert!(r.data.iter().all(|&b| b == 5));
    // READ TOC format 0 (MMC-6): track 1 at LBA 0, lead-out at 64.
    let r = raw(&drv, 0, &[0x43, 0, 0, 0, 0, 0, 0, 0, 32, 0], &[], 32).await;
    assert_eq!(
        r.data,
        [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xAA, 0, 0, 0, 0, 64]
    );
    // READ TOC format 1, GET CONFIGURATION, READ DISC INFORMATION, MECHANISM STATUS.
    let r = raw(&drv, 0, &[0x43, 0, 1, 0, 0, 0, 0, 0, 12, 0], &[], 12).await;
    assert_eq!(r.data[..4], [0, 10, 1, 1]);
    let r = raw(&drv, 0, &[0x46, 0, 0, 0, 0, 0, 0, 0, 255, 0], &[], 255).await;
    assert_eq!(&r.data[6..8], &[0, 0x08], "current profile CD-ROM");
    let r = raw(&drv, 0, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0], &[], 34).await;
    assert_eq!(&r.data[..3], &[0, 32, 0x0E]);
    let r = raw(&drv, 0, &[0xBD, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &[], 8).await;
    assert_eq!(r.data, [0; 8]);
    // MODE SENSE(10) page 2Ah.
    let r = raw(&drv, 0, &[0x5A, 0x08, 0x2A, 0, 0, 0, 0, 0, 64, 0], &[], 64).await;
    assert_eq!(&r.data[8..10], &[0x2A, 0x14]);
    // WRITE is not a CD-ROM command.
    let r = raw(&drv, 0, &cdb10(0x2A, 0, 0, 1), &[0; 2048], 0).await;
    assert_eq!(triple(&r), (5, 0x20, 0));
    // Prevent → eject refused; allow → eject; NOT READY, MEDIUM NOT PRESENT.
    assert!(raw(&drv, 0, &[0x1E, 0, 0, 0, 1, 0], &[], 0).await.is_good());
    let r = raw(&drv, 0, &[0x1B, 0, 0, 0, 0x02, 0], &[], 0).await;
    assert_eq!(triple(&r), (5, 0x53, 0x02));
    assert!(raw(&drv, 0, &[0x1E, 0, 0, 0, 0, 0], &[], 0).await.is_good());
    assert!(raw(&drv, 0, &[0x1B, 0, 0, 0, 0x02, 0], &[], 0)
        .await
        .is_good());
    let r = raw(&drv, 0, &[0; 6], &[], 0).await;
    assert_eq!(triple(&r), (2, 0x3A, 0));
    // GET EVENT STATUS NOTIFICATION (polled, media class): media removal.
    let gesn = [0x4A, 0x01, 0, 0, 0x10, 0, 0, 0, 8, 0];
    let r = raw(&drv, 0, &gesn, &[], 8).await;
    assert_eq!(r.data, [0, 6, 0x04, 0x10, 0x03, 0x00, 0, 0]);
    // Load: MEDIUM MAY HAVE CHANGED once, then ready; new-media event.
    assert!(raw(&drv, 0, &[0x1B, 0, 0, 0, 0x03, 0], &[], 0)
        .await
        .is_good());
    let r = raw(&drv, 0, &[0; 6], &[], 0).await;
    assert_eq!(triple(&r), (6, 0x28, 0));
    assert!(raw(&drv, 0, &[0; 6], &[], 0).await.is_good());
    let r = raw(&drv, 0, &gesn, &[], 8).await;
    assert_eq!(&r.data[4..6], &[0x02, 0x02]);
}

/// Every entry of the one opcode table reaches its handler through the real
/// socket and driver: a CDB of the table's length (service action in byte 1,
/// every other field zero, which SPC/SBC define as "no transfer" or "no
/// blocks" for most commands) never answers INVALID COMMAND OPERATION CODE,
/// and never anything but GOOD or CHECK CONDITION with sense.
#[tokio::test]
async fn every_opcode_in_the_table_is_dispatched_through_the_driver() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let disk = connect(&d).await;
    let cd = CdDaemon::start(64);
    let cdrom = Driver::connect(&cd.socket, QueueConfig::default())
        .await
        .unwrap();
    let mut checked = 0;
    for c in COMMANDS {
        let drv = if c.needs == Needs::Cdrom {
            &cdrom
        } else {
            &disk
        };
        let mut cdb = vec![0u8; c.cdb_len as usize];
        cdb[0] = c.opcode;
        if let Some(sa) = c.service_action {
            cdb[1] = sa;
        }
        let data_in = if c.data_out { 0 } else { 4096 };
        let r = raw(drv, 0, &cdb, &[], data_in).await;
        // OVERRUN: the handler asked for more than the buffer (READ(6) with
        // TRANSFER LENGTH 0 means 256 blocks, SBC-4 §5.14).
        assert!(
            r.response == 0 || r.response == 1,
            "{}: virtio response {:?}",
            c.name,
            r
        );
        if r.response == 1 {
            checked += 1;
            continue;
        }
        match r.status {
            0x00 => {}
            // PRE-FETCH of the whole disk: it fits the cache (SBC-4).
            0x04 if c.name.starts_with("PRE-FETCH") => {}
            0x02 => {
                let (key, asc, _) = triple(&r);
                assert!(
                    !(key == 0x05 && asc == 0x20),
                    "{} ({:02X}h) answered INVALID COMMAND OPERATION CODE",
                    c.name,
                    c.opcode
                );
            }
            s => panic!("{}: status {s:#04x}", c.name),
        }
        checked += 1;
    }
    assert_eq!(checked, COMMANDS.len());
    assert!(checked >= 49);
}
