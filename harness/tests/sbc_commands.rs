//! The SBC-4 commands beyond the core set through the real socket, memfd
//! and rings: VERIFY(12) / WRITE AND VERIFY(12), PRE-FETCH, WRITE ATOMIC,
//! READ DEFECT DATA, LOG SENSE, FORMAT UNIT. Expected bytes come from the
//! SPC-5 / SBC-4 tables named at each check.

mod common;

use common::{host_read, image, TestDaemon};
use vscsi_backend::config::LunSpec;
use vscsi_backend::storage::{AioMode, CacheMode};
use vscsi_backend::vhost::DeviceOptions;

use vscsi_driver::{Driver, QueueConfig, Response, ScsiCommand};

const MIB: u64 = 1 << 20;

async fn raw(drv: &Driver, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> Response {
    drv.send_command(
        0,
        0,
        ScsiCommand::Raw {
            cdb: cdb.to_vec(),
            data_out: data_out.to_vec(),
            data_in_len,
        },
    )
    .await
    .expect("command completes")
}

/// (sense key, ASC, ASCQ) of fixed-format sense data.
fn triple(r: &Response) -> (u8, u8, u8) {
    let s = &r.sense;
    assert!(s.len() >= 14, "sense: {s:02x?}");
    (s[2] & 0x0F, s[12], s[13])
}

async fn connect(d: &TestDaemon) -> Driver {
    Driver::connect(
        &d.socket,
        QueueConfig {
            queue_count: 2,
            ..QueueConfig::default()
        },
    )
    .await
    .expect("driver connects")
}

/// A daemon with one 16 MiB disk, past its POWER ON unit attention.
async fn disk() -> (TestDaemon, Driver) {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = connect(&d).await;
    let _ = raw(&drv, &[0, 0, 0, 0, 0, 0], &[], 0).await;
    (d, drv)
}

#[tokio::test]
async fn verify_12_and_write_and_verify_12() {
    let (d, drv) = disk().await;
    // WRITE AND VERIFY(12) BYTCHK=1: bytes 2-5 LBA, 6-9 TRANSFER LENGTH.
    let wav = [0xAE, 0x02, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0];
    let r = raw(&drv, &wav, &[0x5C; 1024], 0).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(host_read(&d.image_path(0, 0), 8 * 512, 1024), [0x5C; 1024]);
    // VERIFY(12) BYTCHK=1 over the two blocks: equal, then a difference at
    // byte 700 (fixed sense: VALID, MISCOMPARE, INFORMATION 700, 1Dh/00h).
    let v = [0xAF, 0x02, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0];
    assert!(raw(&drv, &v, &[0x5C; 1024], 0).await.is_good());
    let mut want = vec![0x5C; 1024];
    want[700] = 0;
    let r = raw(&drv, &v, &want, 0).await;
    assert_eq!(
        r.sense,
        [0xF0, 0, 0x0E, 0, 0, 0x02, 0xBC, 10, 0, 0, 0, 0, 0x1D, 0, 0, 0, 0, 0]
    );
    // VERIFY(12) BYTCHK=0 of the whole disk; past the end: 5/21/00.
    let all = [0xAF, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0];
    assert!(raw(&drv, &all, &[], 0).await.is_good());
    let past = [0xAF, 0, 0, 0, 0, 0, 0, 0, 0x80, 1, 0, 0];
    assert_eq!(triple(&raw(&drv, &past, &[], 0).await), (5, 0x21, 0));
}

#[tokio::test]
async fn pre_fetch_is_condition_met_when_the_range_fits_the_cache() {
    let (_d, drv) = disk().await;
    // PRE-FETCH(10) of 64 blocks, then IMMED; PRE-FETCH(16) of the whole
    // 16 MiB disk (PREFETCH LENGTH 0): all within the 32 MiB cache.
    for cdb in [
        vec![0x34, 0, 0, 0, 0, 0, 0, 0, 64, 0],
        vec![0x34, 0x02, 0, 0, 0, 0, 0, 0, 64, 0],
        vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let r = raw(&drv, &cdb, &[], 0).await;
        assert_eq!((r.response, r.status), (0, 0x04), "{cdb:02x?}: {r:?}");
        assert!(r.sense.is_empty());
    }
    let r = raw(&drv, &[0x34, 0, 0, 0, 0x80, 0, 0, 0, 1, 0], &[], 0).await;
    assert_eq!(triple(&r), (5, 0x21, 0));
}

#[tokio::test]
async fn write_atomic_and_the_block_limits_atomic_fields() {
    let (d, drv) = disk().await;
    // Block Limits VPD: MAXIMUM ATOMIC TRANSFER LENGTH 128 blocks (64 KiB),
    // ATOMIC ALIGNMENT, GRANULARITY and the boundary fields 0.
    let r = raw(&drv, &[0x12, 1, 0xB0, 0, 64, 0], &[], 64).await;
    assert!(r.is_good());
    assert_eq!(&r.data[44..48], &128u32.to_be_bytes());
    assert_eq!(&r.data[48..64], &[0; 16]);
    // WRITE ATOMIC(16) of 128 blocks at LBA 16 lands.
    let mut c = [0u8; 16];
    c[0] = 0x9C;
    c[9] = 16;
    c[12..14].copy_from_slice(&128u16.to_be_bytes());
    let r = raw(&drv, &c, &[0xA7; 65536], 0).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(
        host_read(&d.image_path(0, 0), 16 * 512, 65536),
        [0xA7; 65536]
    );
    // 129 blocks: INVALID FIELD IN CDB at TRANSFER LENGTH (byte 12).
    c[12..14].copy_from_slice(&129u16.to_be_bytes());
    let r = raw(&drv, &c, &[0xA7; 66048], 0).await;
    assert_eq!(
        r.sense,
        [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xC0, 0, 12]
    );
    // ORWRITE(16) stays unsupported.
    let mut o = [0u8; 16];
    o[0] = 0x8B;
    assert_eq!(triple(&raw(&drv, &o, &[], 0).await), (5, 0x20, 0));
}

/// Atomic writes and READs of the same 64 blocks, concurrently on two
/// queues: every READ returns one write's data (or BUSY), never a mix.
async fn atomic_writes_are_never_seen_torn(drv: &Driver) {
    let wa = |v: u8| {
        let mut c = vec![0u8; 16];
        c[0] = 0x9C;
        c[12..14].copy_from_slice(&64u16.to_be_bytes());
        (c, vec![v; 64 * 512])
    };
    let (c, data) = wa(1);
    assert!(raw(drv, &c, &data, 0).await.is_good());
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 64, 0];
    let writers = async {
        for i in 0..100u8 {
            let (c, data) = wa(i);
            let r = raw(drv, &c, &data, 0).await;
            assert!(r.is_good(), "{r:?}");
        }
    };
    let readers = async {
        let mut seen = 0;
        for _ in 0..100 {
            let r = raw(drv, &read, &[], 64 * 512).await;
            if r.status == 0x08 {
                continue; // BUSY: the initiator retries.
            }
            assert!(r.is_good(), "{r:?}");
            assert!(r.data.iter().all(|&b| b == r.data[0]), "a torn read");
            seen += 1;
        }
        seen
    };
    let ((), seen) = tokio::join!(writers, readers);
    assert!(seen > 0);
}

#[tokio::test]
async fn atomic_writes_are_never_seen_torn_by_inline_reads() {
    let (_d, drv) = disk().await;
    atomic_writes_are_never_seen_torn(&drv).await;
}

#[tokio::test]
async fn atomic_writes_are_never_seen_torn_by_io_uring_reads() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut spec = LunSpec::new(0, 0, image(dir.path(), "t0l0.img", 16 * MIB));
    spec.options.cache = CacheMode::Writeback;
    spec.options.aio = AioMode::IoUring;
    let opts = DeviceOptions {
        request_queues: 2,
        ..Default::default()
    };
    let d = TestDaemon::serve(dir, &[spec], opts);
    let drv = connect(&d).await;
    atomic_writes_are_never_seen_torn(&drv).await;
}

#[tokio::test]
async fn read_defect_data_log_sense_and_format_unit() {
    let (d, drv) = disk().await;
    // READ DEFECT DATA(10), both lists, long block format: empty.
    let r = raw(&drv, &[0x37, 0, 0x1B, 0, 0, 0, 0, 0, 255, 0], &[], 255).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data, [0, 0x1B, 0, 0]);
    // READ DEFECT DATA(12): the 8-byte header.
    let r = raw(
        &drv,
        &[0xB7, 0x08, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0],
        &[],
        255,
    )
    .await;
    assert_eq!(r.data, [0, 0x08, 0, 0, 0, 0, 0, 0]);
    // LOG SENSE: supported pages; informational exceptions (no failure
    // predicted, no temperature reading).
    let r = raw(&drv, &[0x4D, 0, 0x40, 0, 0, 0, 0, 0, 255, 0], &[], 255).await;
    assert_eq!(r.data, [0, 0, 0, 2, 0x00, 0x2F]);
    let r = raw(&drv, &[0x4D, 0, 0x6F, 0, 0, 0, 0, 0, 255, 0], &[], 255).await;
    assert_eq!(r.data, [0x2F, 0, 0, 7, 0, 0, 0x03, 0x03, 0, 0, 0xFF]);
    let r = raw(&drv, &[0x4D, 1, 0x6F, 0, 0, 0, 0, 0, 255, 0], &[], 255).await;
    assert_eq!(triple(&r), (5, 0x24, 0));
    // LOG SELECT is not supported.
    let r = raw(&drv, &[0x4C, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).await;
    assert_eq!(triple(&r), (5, 0x20, 0));
    // FORMAT UNIT with a short header: GOOD, and the data is unchanged.
    let before = host_read(&d.image_path(0, 0), 0, 4096);
    let w = [0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    assert!(raw(&drv, &w, &[0x3E; 4096], 0).await.is_good());
    assert_ne!(before, [0x3E; 4096]);
    let r = raw(&drv, &[0x04, 0x10, 0, 0, 0, 0], &[0, 0x02, 0, 0], 0).await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(host_read(&d.image_path(0, 0), 0, 4096), [0x3E; 4096]);
    // A defect list is refused: INVALID FIELD IN PARAMETER LIST.
    let r = raw(
        &drv,
        &[0x04, 0x10, 0, 0, 0, 0],
        &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0],
        0,
    )
    .await;
    assert_eq!(triple(&r), (5, 0x26, 0));
}

#[tokio::test]
async fn write_buffer_then_read_buffer_on_the_next_connection() {
    let (d, drv) = disk().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    // WRITE BUFFER mode 02h, buffer 0, offset 24, 1000 bytes.
    let r = raw(&drv, &[0x3B, 0x02, 0, 0, 0, 24, 0, 0x03, 0xE8, 0], &data, 0).await;
    assert!(r.is_good(), "{r:?}");
    // The buffer belongs to the LU: the next connection reads it back.
    drop(drv);
    let mut tries = 0;
    let other = loop {
        let c = Driver::connect(&d.socket, QueueConfig::default()).await;
        match c {
            Ok(c) => break c,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reconnect: {e}"),
        }
    };
    let r = raw(
        &other,
        &[0x3C, 0x02, 0, 0, 0, 24, 0, 0x03, 0xE8, 0],
        &[],
        1000,
    )
    .await;
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data, data);
    // READ BUFFER descriptor: OFFSET BOUNDARY 0, BUFFER CAPACITY 64 KiB.
    let r = raw(&other, &[0x3C, 0x03, 0, 0, 0, 0, 0, 0, 4, 0], &[], 4).await;
    assert_eq!(r.data, [0, 0x01, 0, 0]);
    // Echo buffer mode: not supported.
    let r = raw(&other, &[0x3B, 0x0A, 0, 0, 0, 0, 0, 0, 4, 0], &[0; 4], 0).await;
    assert_eq!(triple(&r), (5, 0x24, 0));
}
