//! Test helpers: images, a bus, and a one-call command runner.

use std::io::Write;
use std::sync::Arc;

use vscsi_protocol::cdb::Cdb;

use super::io::{SliceDataOut, VecDataIn};
use super::{CommandResult, LogicalUnit, LunOptions, Request, ScsiBus, Target};

/// A temp file of `len` bytes where byte `i` of block `b` (512-byte blocks) is `b as u8`.
pub fn image_file(len: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i / 512) as u8).collect();
    f.write_all(&data).unwrap();
    f
}

/// A bus with target 0, LUN 0 over a fresh image of `blocks` 512-byte blocks.
pub fn bus_with(blocks: usize, opts: LunOptions) -> (ScsiBus, tempfile::NamedTempFile) {
    let f = image_file(blocks * 512);
    let lu = LogicalUnit::open(f.path(), opts).unwrap();
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, Arc::new(lu)).unwrap();
    (bus, f)
}

/// Runs `cdb` on `lun` of `t` with a Data-In buffer of `cap` bytes and `out` as Data-Out.
pub fn run(t: &Target, lun: u16, cdb: &[u8], cap: usize, out: &[u8]) -> (CommandResult, Vec<u8>) {
    let mut din = VecDataIn::new(cap);
    let req = Request {
        cdb,
        tag: 1,
        task_attr: 0,
        nexus: crate::scsi::nexus::Nexus::local(),
    };
    let r = t.execute(lun, &req, &mut din, &SliceDataOut(out));
    let data = din.as_slice()[..r.data_in_len].to_vec();
    (r, data)
}

/// [`run`] with a [`Cdb`] and no Data-Out.
pub fn run_cdb(t: &Target, lun: u16, cdb: Cdb, cap: usize) -> (CommandResult, Vec<u8>) {
    run(t, lun, cdb.as_bytes(), cap, &[])
}

/// The fixed-format sense triple of a result.
pub fn triple(r: &CommandResult) -> (u8, u8, u8) {
    let s = r.decoded_sense().expect("sense data");
    (s.key as u8, s.asc, s.ascq)
}
