//! WRITE BUFFER and READ BUFFER(10) (SPC-5) on the logical unit's data
//! buffer: [`BUFFER_CAPACITY`] bytes of memory, buffer ID 0, zeros at open,
//! shared by every I_T nexus (what one initiator writes another reads: it
//! is a diagnostic buffer, not the medium).
//!
//! - WRITE BUFFER mode 02h (data): PARAMETER LIST LENGTH bytes from Data-Out
//!   at BUFFER OFFSET; beyond the capacity → INVALID FIELD IN CDB.
//! - READ BUFFER mode 02h (data): the buffer from BUFFER OFFSET to its end,
//!   truncated to the ALLOCATION LENGTH; an offset past the capacity →
//!   INVALID FIELD IN CDB. Mode 03h (descriptor): OFFSET BOUNDARY 00h (any
//!   byte offset), BUFFER CAPACITY; all zeros for a buffer ID that does not
//!   exist, as SPC-5 asks.
//! - Another buffer ID in data mode → INVALID FIELD IN CDB at byte 2. Every
//!   other mode → INVALID FIELD IN CDB at byte 1: no header-and-data mode
//!   (obsolete), no echo buffer (it is per I_T nexus), no microcode
//!   download (there is no firmware to replace), no error history.

use std::sync::Mutex;

use vscsi_protocol::cdb::byte;

use super::command::{invalid_field, respond, CommandResult};
use super::io::{DataIn, DataOut};
use super::lu::LogicalUnit;

/// BUFFER CAPACITY of buffer 0, in bytes.
pub const BUFFER_CAPACITY: usize = 64 * 1024;

/// MODE 02h: data.
const MODE_DATA: u8 = 0x02;
/// MODE 03h: descriptor (READ BUFFER only).
const MODE_DESCRIPTOR: u8 = 0x03;

/// The data buffer of a logical unit, allocated on its first WRITE BUFFER.
#[derive(Debug, Default)]
pub struct DataBuffer(Mutex<Option<Box<[u8]>>>);

fn be24(cdb: &[u8], at: usize) -> usize {
    (usize::from(byte(cdb, at)) << 16)
        | (usize::from(byte(cdb, at + 1)) << 8)
        | usize::from(byte(cdb, at + 2))
}

/// WRITE BUFFER: byte 1 MODE (4-0); byte 2 BUFFER ID; bytes 3-5 BUFFER
/// OFFSET; 6-8 PARAMETER LIST LENGTH.
pub(crate) fn write_buffer(
    lu: &LogicalUnit,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &dyn DataOut,
) -> CommandResult {
    if byte(cdb, 1) & 0x1F != MODE_DATA {
        return invalid_field(1, Some(4));
    }
    if byte(cdb, 2) != 0 {
        return invalid_field(2, None);
    }
    let (offset, len) = (be24(cdb, 3), be24(cdb, 6));
    if offset > BUFFER_CAPACITY {
        return invalid_field(3, None);
    }
    if offset + len > BUFFER_CAPACITY {
        return invalid_field(6, None);
    }
    if data_out.len() < len {
        return CommandResult::buffer_overrun();
    }
    let mut b = lu.data_buffer().0.lock().unwrap_or_else(|e| e.into_inner());
    let buf = b.get_or_insert_with(|| vec![0u8; BUFFER_CAPACITY].into_boxed_slice());
    if data_out.read_at(0, &mut buf[offset..offset + len]) < len {
        return CommandResult::buffer_overrun();
    }
    CommandResult::good(0).with_data_out(len)
}

/// READ BUFFER(10): byte 1 MODE (4-0); byte 2 BUFFER ID; bytes 3-5 BUFFER
/// OFFSET; 6-8 ALLOCATION LENGTH.
pub(crate) fn read_buffer(
    lu: &LogicalUnit,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &dyn DataOut,
) -> CommandResult {
    let id = byte(cdb, 2);
    let (offset, alloc) = (be24(cdb, 3), be24(cdb, 6));
    match byte(cdb, 1) & 0x1F {
        MODE_DESCRIPTOR => {
            let mut d = [0u8; 4];
            if id == 0 {
                d[1..4].copy_from_slice(&(BUFFER_CAPACITY as u32).to_be_bytes()[1..]);
            }
            respond(data_in, alloc, &d)
        }
        MODE_DATA => {
            if id != 0 {
                return invalid_field(2, None);
            }
            if offset > BUFFER_CAPACITY {
                return invalid_field(3, None);
            }
            let n = (BUFFER_CAPACITY - offset).min(alloc);
            let b = lu.data_buffer().0.lock().unwrap_or_else(|e| e.into_inner());
            match b.as_deref() {
                Some(buf) => respond(data_in, n, &buf[offset..offset + n]),
                None => respond(data_in, n, &vec![0u8; n]),
            }
        }
        _ => invalid_field(1, Some(4)),
    }
}

#[cfg(test)]
mod tests {
    use super::BUFFER_CAPACITY;
    use crate::scsi::testutil::{bus_with, run};
    use crate::scsi::LunOptions;

    /// SPC-5 WRITE BUFFER / READ BUFFER(10) CDB.
    fn buf_cdb(op: u8, mode: u8, id: u8, offset: u32, len: u32) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = op;
        c[1] = mode;
        c[2] = id;
        c[3..6].copy_from_slice(&offset.to_be_bytes()[1..]);
        c[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
        c
    }

    #[test]
    fn data_written_is_read_back() {
        let (bus, f) = bus_with(8, LunOptions::default());
        let before = std::fs::read(f.path()).unwrap();
        let t = bus.target(0).unwrap();
        // Descriptor: offset boundary 0, capacity 64 KiB; other IDs zeros.
        let (r, d) = run(t, 0, &buf_cdb(0x3C, 3, 0, 0, 4), 4, &[]);
        assert!(r.is_good());
        assert_eq!(d, [0, 0x01, 0x00, 0x00]);
        assert_eq!(run(t, 0, &buf_cdb(0x3C, 3, 1, 0, 4), 4, &[]).1, [0; 4]);
        // Zeros before any write.
        assert_eq!(run(t, 0, &buf_cdb(0x3C, 2, 0, 0, 16), 16, &[]).1, [0; 16]);
        let data: Vec<u8> = (0..100u8).collect();
        let (r, _) = run(t, 0, &buf_cdb(0x3B, 2, 0, 10, 100), 0, &data);
        assert!(r.is_good(), "{r:?}");
        assert_eq!(r.data_out_len, 100);
        let (_, d) = run(t, 0, &buf_cdb(0x3C, 2, 0, 10, 100), 100, &[]);
        assert_eq!(d, data);
        // Reading to the end is truncated at the capacity.
        let (r, _) = run(t, 0, &buf_cdb(0x3C, 2, 0, 65530, 100), 100, &[]);
        assert_eq!(r.data_in_len, 6);
        // The medium is not the buffer.
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        assert_eq!(BUFFER_CAPACITY, 65536);
    }

    #[test]
    fn refused_modes_ids_and_ranges() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let fp = |c: &[u8], out: &[u8]| {
            let (r, _) = run(t, 0, c, 64, out);
            let s = r.decoded_sense().unwrap();
            ((s.key as u8, s.asc, s.ascq), s.field_pointer())
        };
        let field = |b, bit| ((5, 0x24, 0), Some((true, b, bit)));
        // Echo buffer (0Ah), microcode download (05h), header+data (00h).
        assert_eq!(
            fp(&buf_cdb(0x3B, 0x0A, 0, 0, 4), &[0; 4]),
            field(1, Some(4))
        );
        assert_eq!(
            fp(&buf_cdb(0x3B, 0x05, 0, 0, 4), &[0; 4]),
            field(1, Some(4))
        );
        assert_eq!(fp(&buf_cdb(0x3C, 0x00, 0, 0, 4), &[]), field(1, Some(4)));
        assert_eq!(fp(&buf_cdb(0x3C, 0x0B, 0, 0, 4), &[]), field(1, Some(4)));
        assert_eq!(fp(&buf_cdb(0x3B, 2, 1, 0, 4), &[0; 4]), field(2, None));
        assert_eq!(fp(&buf_cdb(0x3C, 2, 1, 0, 4), &[]), field(2, None));
        assert_eq!(fp(&buf_cdb(0x3B, 2, 0, 65535, 2), &[0; 2]), field(6, None));
        assert_eq!(fp(&buf_cdb(0x3C, 2, 0, 65537, 1), &[]), field(3, None));
        assert!(run(t, 0, &buf_cdb(0x3B, 2, 0, 0, 8), 0, &[0; 4])
            .0
            .is_overrun());
    }
}
