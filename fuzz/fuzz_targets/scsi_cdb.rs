//! The SCSI target fed arbitrary CDBs and Data-Out.
//!
//! Input: one configuration byte (bit 0 CD-ROM, bit 1 read-only, bit 2
//! 4096-byte blocks, bit 3 no discard), then up to eight commands, each a
//! header `[cap_hi, cap_lo, cdb_len, dout_len]` followed by `cdb_len % 33`
//! CDB bytes and `dout_len * 16` Data-Out bytes (both cut short where the
//! input ends). Every command runs on two targets built identically over
//! two identical images, in lockstep.
//!
//! Checked, per command: no panic; Data-In never longer than the buffer
//! offered, Data-Out never read past what was given; GOOD carries no sense,
//! CHECK CONDITION carries well-formed sense (SPC-5 §4.4: response code
//! 70h-73h, ADDITIONAL SENSE LENGTH + 8 = the bytes returned); both targets
//! answer the same status, sense and data. After the run a read-only
//! image is unchanged and both images are equal.
#![no_main]

use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vscsi_backend::scsi::{
    DeviceType, LogicalUnit, LunOptions, Request, ScsiBus, SliceDataOut, VecDataIn,
};
use vscsi_protocol::status;

/// Image size: 32 blocks of 4096 bytes, 64 of 2048 or 256 of 512.
const IMAGE_LEN: usize = 128 * 1024;
/// Largest Data-In buffer offered.
const MAX_CAP: usize = 16 * 1024;
const MAX_COMMANDS: usize = 8;

fn image() -> (tempfile::NamedTempFile, Vec<u8>) {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let mut f = tempfile::NamedTempFile::new_in(dir).expect("temp image");
    let data: Vec<u8> = (0..IMAGE_LEN)
        .map(|i| (i / 512) as u8 ^ (i as u8))
        .collect();
    f.write_all(&data).expect("write image");
    (f, data)
}

fn bus(path: &std::path::Path, opts: &LunOptions) -> ScsiBus {
    let lu = LogicalUnit::open(path, opts.clone()).expect("open image");
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, Arc::new(lu)).expect("add LUN");
    bus
}

/// SPC-5 §4.4: fixed (70h/71h) or descriptor (72h/73h) format, with the
/// ADDITIONAL SENSE LENGTH at byte 7 counting exactly the bytes after it.
fn check_sense(sense: &[u8]) {
    assert!(sense.len() >= 8, "sense too short: {sense:02x?}");
    let code = sense[0] & 0x7f;
    assert!((0x70..=0x73).contains(&code), "response code {code:#x}");
    assert_eq!(
        usize::from(sense[7]) + 8,
        sense.len(),
        "ADDITIONAL SENSE LENGTH vs bytes returned: {sense:02x?}"
    );
    if code <= 0x71 {
        // Fixed format: sense key, ASC and ASCQ live at bytes 2, 12, 13.
        assert!(
            sense.len() >= 14,
            "fixed sense without ASC/ASCQ: {sense:02x?}"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&config, mut rest)) = input.split_first() else {
        return;
    };
    let opts = LunOptions {
        device_type: if config & 1 != 0 {
            DeviceType::Cdrom
        } else {
            DeviceType::Disk
        },
        read_only: config & 2 != 0,
        block_size: if config & 4 != 0 { 4096 } else { 512 },
        discard: config & 8 == 0,
        // Without these both are derived from the image path, which differs
        // between the two targets.
        serial: Some("FUZZ0001".into()),
        wwn: Some(0x3000_0000_0000_0001),
        ..LunOptions::default()
    };
    let (img_a, original) = image();
    let (img_b, _) = image();
    let bus_a = bus(img_a.path(), &opts);
    let bus_b = bus(img_b.path(), &opts);
    let (ta, tb) = match (bus_a.target(0), bus_b.target(0)) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("target 0 missing"),
    };

    for _ in 0..MAX_COMMANDS {
        if rest.len() < 4 {
            break;
        }
        let cap = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % (MAX_CAP + 1);
        let cdb_len = usize::from(rest[2]) % 33;
        let dout_len = usize::from(rest[3]) * 16;
        rest = &rest[4..];
        let cdb = &rest[..cdb_len.min(rest.len())];
        rest = &rest[cdb.len()..];
        let dout = &rest[..dout_len.min(rest.len())];
        rest = &rest[dout.len()..];

        let req = Request {
            cdb,
            tag: 1,
            task_attr: 0,
            nexus: vscsi_backend::scsi::nexus::Nexus::local(),
        };
        let mut din_a = VecDataIn::new(cap);
        let mut din_b = VecDataIn::new(cap);
        let ra = ta.execute(0, &req, &mut din_a, &SliceDataOut(dout));
        let rb = tb.execute(0, &req, &mut din_b, &SliceDataOut(dout));

        assert!(
            ra.data_in_len <= cap,
            "Data-In {} > buffer {cap}",
            ra.data_in_len
        );
        assert!(
            ra.data_out_len <= dout.len(),
            "Data-Out consumed {} > given {}",
            ra.data_out_len,
            dout.len()
        );
        assert!(
            ra.transfer().is_none(),
            "transfer deferred over a VecDataIn"
        );
        match ra.status {
            status::GOOD => assert!(ra.sense().is_empty(), "GOOD with sense"),
            status::CHECK_CONDITION => check_sense(ra.sense()),
            _ => {}
        }
        assert_eq!(ra.status, rb.status, "status differs, cdb {cdb:02x?}");
        assert_eq!(ra.sense(), rb.sense(), "sense differs, cdb {cdb:02x?}");
        assert_eq!(ra.data_in_len, rb.data_in_len, "Data-In length differs");
        assert_eq!(
            &din_a.as_slice()[..ra.data_in_len],
            &din_b.as_slice()[..rb.data_in_len],
            "Data-In differs, cdb {cdb:02x?}"
        );
    }
    drop((bus_a, bus_b));
    // A PERSISTENT RESERVE OUT with APTPL=1 leaves a state file beside
    // each image (`<image>.pr`): removed with the images.
    for img in [img_a.path(), img_b.path()] {
        let mut pr = img.as_os_str().to_owned();
        pr.push(".pr");
        let _ = std::fs::remove_file(&pr);
    }

    let after_a = std::fs::read(img_a.path()).expect("read image");
    let after_b = std::fs::read(img_b.path()).expect("read image");
    assert_eq!(after_a, after_b, "images diverged");
    if opts.read_only || opts.device_type == DeviceType::Cdrom {
        assert!(after_a == original, "read-only image changed");
    }
});
