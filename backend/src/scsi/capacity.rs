//! READ CAPACITY(10) and READ CAPACITY(16) (SBC-4).

use vscsi_protocol::cdb::{be32, byte};
use vscsi_protocol::data::{ReadCapacity10, ReadCapacity16};

use super::command::{invalid_field, respond, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// READ CAPACITY(10): 8 bytes, last LBA clamped to FFFFFFFFh so the
/// initiator switches to READ CAPACITY(16). The obsolete LOGICAL BLOCK
/// ADDRESS field must be zero unless the obsolete PMI bit is set
/// (SBC-3 rule, kept by QEMU); with PMI the last LBA is returned anyway.
/// There is no ALLOCATION LENGTH: the data is truncated only to the buffer.
pub(crate) fn read_capacity_10(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    if byte(cdb, 8) & 1 == 0 && be32(cdb, 2) != 0 {
        return invalid_field(2, Some(7));
    }
    let data = ReadCapacity10::for_capacity(lu.capacity_blocks(), lu.block_size()).to_bytes();
    respond(data_in, data.len(), &data)
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16), service action 10h): 32
/// bytes truncated to the ALLOCATION LENGTH (bytes 10-13). No protection
/// information, RC BASIS 01b, the LOGICAL BLOCKS PER PHYSICAL BLOCK
/// EXPONENT of the configured physical block size, LBPME = LBPRZ = 1 on a
/// thin-provisioned LU (unmapped blocks are holes and read zero).
pub(crate) fn read_capacity_16(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let alloc = be32(cdb, 10) as usize;
    let data = ReadCapacity16 {
        lb_per_pb_exp: lu.lb_per_pb_exp(),
        lbpme: lu.thin(),
        lbprz: lu.thin() && lu.image().unmapped_reads_zero(),
        ..ReadCapacity16::for_capacity(lu.capacity_blocks(), lu.block_size())
    }
    .to_bytes();
    respond(data_in, alloc, &data)
}

#[cfg(test)]
mod tests {
    use crate::scsi::testutil::{bus_with, run, run_cdb, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    #[test]
    fn read_capacity_10_bytes() {
        let (bus, _f) = bus_with(2048, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::read_capacity_10(), 64);
        assert!(r.is_good());
        assert_eq!(data, [0, 0, 0x07, 0xFF, 0, 0, 0x02, 0x00]);
        // Obsolete LBA without PMI.
        let mut c = Cdb::read_capacity_10().padded::<10>();
        c[5] = 1;
        let (r, _) = run(t, 0, &c, 8, &[]);
        assert_eq!(triple(&r), (5, 0x24, 0));
        c[8] = 1;
        let (r, _) = run(t, 0, &c, 8, &[]);
        assert!(r.is_good());
    }

    #[test]
    fn read_capacity_16_512e_and_full_provisioning() {
        let (bus, _f) = bus_with(
            2048,
            LunOptions {
                physical_block_size: 4096,
                discard: false,
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        let (_, data) = run_cdb(t, 0, Cdb::read_capacity_16(32), 512);
        assert_eq!(&data[12..16], &[0x10, 0x03, 0, 0]);
    }

    #[test]
    fn read_capacity_16_bytes() {
        let (bus, _f) = bus_with(2048, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, data) = run_cdb(t, 0, Cdb::read_capacity_16(32), 512);
        assert!(r.is_good());
        // SBC-4 READ CAPACITY(16) parameter data table.
        let mut expect = [0u8; 32];
        expect[6..8].copy_from_slice(&[0x07, 0xFF]);
        expect[10] = 0x02;
        expect[12] = 0x10;
        if t.lun(0).unwrap().thin() {
            expect[14] = 0xC0; // LBPME, LBPRZ
        }
        assert_eq!(data, expect);
        // Allocation length truncates; 0 transfers nothing.
        let (r, data) = run_cdb(t, 0, Cdb::read_capacity_16(12), 512);
        assert_eq!(r.data_in_len, 12);
        assert_eq!(&data[..], &expect[..12]);
        let (r, _) = run_cdb(t, 0, Cdb::read_capacity_16(0), 512);
        assert!(r.is_good());
        assert_eq!(r.data_in_len, 0);
    }
}
