//! NBD wire formats (the NBD project's `doc/proto.md`): magic numbers,
//! option and transmission constants, and the fixed-size headers of the
//! transmission phase, encoded and decoded on the stack (big-endian, "network
//! byte order" throughout the protocol).

/// `NBDMAGIC`, the first 8 bytes the server sends (proto.md "Newstyle negotiation").
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the server's second magic, and the prefix of every client option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454F_5054;
/// Prefix of every option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Request magic (transmission phase).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended request magic (the `EXTENDED_HEADERS` extension of proto.md).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Extended reply chunk magic.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flags (server, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server will not send the 124 zero bytes after NBD_OPT_EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (32 bits).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// The client does not want the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options (proto.md "Option types").
pub const OPT_ABORT: u32 = 2;
/// Select an export and end the handshake, with INFO replies.
pub const OPT_GO: u32 = 7;
/// Ask for structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Select metadata contexts for NBD_CMD_BLOCK_STATUS.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// NBD_OPT_EXTENDED_HEADERS: 32-byte request and reply headers.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// An NBD_REP_INFO reply to NBD_OPT_GO.
pub const REP_INFO: u32 = 3;
/// An NBD_REP_META_CONTEXT reply to NBD_OPT_SET_META_CONTEXT.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 set: an error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// The option is not known to the server.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// The export does not exist.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// The server requires TLS.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;

/// Information types of NBD_REP_INFO.
pub const INFO_EXPORT: u16 = 0;
/// Block size constraints: minimum, preferred, maximum payload.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags (16 bits, from NBD_INFO_EXPORT).
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// NBD_CMD_FLUSH is supported (the server has a write cache).
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// NBD_CMD_FLAG_FUA is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// The export is rotational media.
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
/// NBD_CMD_TRIM is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// NBD_CMD_WRITE_ZEROES is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Several connections to this export see one consistent state (a FLUSH
/// on one covers writes completed on every other).
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write the payload.
pub const CMD_WRITE: u16 = 1;
/// Soft disconnect.
pub const CMD_DISC: u16 = 2;
/// Make completed writes durable.
pub const CMD_FLUSH: u16 = 3;
/// Discard (the data read afterwards is unspecified).
pub const CMD_TRIM: u16 = 4;
/// Write zeroes (a hole unless NO_HOLE).
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Block status of a range in the negotiated metadata contexts.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// WRITE_ZEROES must leave the range allocated.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// NBD_CMD_FLAG_PAYLOAD_LEN: with extended headers, `length` counts
/// payload bytes that follow the header (every WRITE sets it).
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

/// Structured reply flag: the last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// A range that reads as zeroes.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Block status descriptors of one metadata context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// NBD_REPLY_TYPE_BLOCK_STATUS_EXT (extended headers): context id,
/// descriptor count, then 16-byte descriptors (length 64, status 64).
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// `base:allocation`: the extent is a hole (not allocated).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation`: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// Bit 15: an error chunk.
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
/// An error for the whole request.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_ERROR_BIT | 1;
/// An error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_ERROR_BIT | 2;

/// Error values (proto.md "Error values"; the same numbers as Linux errno).
pub const EPERM: u32 = 1;
/// Input/output error.
pub const EIO: u32 = 5;
/// Out of memory.
pub const ENOMEM: u32 = 12;
/// Invalid argument.
pub const EINVAL: u32 = 22;
/// No space left.
pub const ENOSPC: u32 = 28;
/// Value too large.
pub const EOVERFLOW: u32 = 75;
/// Not supported.
pub const ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Largest payload a client may send or ask for when the server gave no
/// maximum (proto.md "Block size constraints": 32 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Bytes of an extended request header and of an extended reply header.
pub const EXTENDED_LEN: usize = 32;

/// The host errno for an NBD error value (the protocol numbers are Linux's;
/// anything unknown is treated as EINVAL, as proto.md asks of clients).
pub fn errno(nbd_error: u32) -> i32 {
    match nbd_error {
        EPERM => libc::EPERM,
        EIO => libc::EIO,
        ENOMEM => libc::ENOMEM,
        EINVAL => libc::EINVAL,
        ENOSPC => libc::ENOSPC,
        EOVERFLOW => libc::EOVERFLOW,
        ENOTSUP => libc::ENOTSUP,
        ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EINVAL,
    }
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// NBD_CMD_FLAG_*.
    pub flags: u16,
    /// NBD_CMD_*.
    pub command: u16,
    /// Echoed by the server in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Byte length (of the payload for WRITE, of the range otherwise).
    pub length: u32,
}

impl Request {
    /// The 28 header bytes: magic, flags, type, cookie, offset, length.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// The 32 extended header bytes: magic, flags, type, cookie, offset,
    /// 64-bit length. A WRITE gets NBD_CMD_FLAG_PAYLOAD_LEN, as the
    /// extension requires of every command sending a payload.
    pub fn encode_extended(&self) -> [u8; EXTENDED_LEN] {
        let mut flags = self.flags;
        if self.command == CMD_WRITE {
            flags |= CMD_FLAG_PAYLOAD_LEN;
        }
        let mut b = [0u8; EXTENDED_LEN];
        b[0..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..32].copy_from_slice(&u64::from(self.length).to_be_bytes());
        b
    }
}

/// A decoded reply header: simple, or one structured chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply: error (0 = success) and cookie; a successful READ's
    /// data follows.
    Simple {
        /// NBD error value.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk header; `length` payload bytes follow.
    Chunk {
        /// NBD_REPLY_FLAG_*.
        flags: u16,
        /// NBD_REPLY_TYPE_*.
        kind: u16,
        /// The request's cookie.
        cookie: u64,
        /// Payload bytes after the header.
        length: u32,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Reads big-endian integers out of a received buffer.
pub fn get16(b: &[u8], at: usize) -> u16 {
    be16(b, at)
}

/// As [`get16`], 32 bits.
pub fn get32(b: &[u8], at: usize) -> u32 {
    be32(b, at)
}

/// As [`get16`], 64 bits.
pub fn get64(b: &[u8], at: usize) -> u64 {
    be64(b, at)
}

impl ReplyHeader {
    /// How many header bytes follow the 4-byte magic, or `None` for an
    /// unknown magic (the stream is out of sync).
    pub fn rest_len(magic: u32) -> Option<usize> {
        match magic {
            SIMPLE_REPLY_MAGIC => Some(SIMPLE_REPLY_LEN - 4),
            STRUCTURED_REPLY_MAGIC => Some(STRUCTURED_REPLY_LEN - 4),
            EXTENDED_REPLY_MAGIC => Some(EXTENDED_LEN - 4),
            _ => None,
        }
    }

    /// Decodes a whole header (magic included): 16 bytes for a simple
    /// reply, 20 for a structured chunk, 32 for an extended chunk (read
    /// as a structured one: its offset echoes the request's, and a
    /// payload longer than 32 bits, which no reply to our requests has,
    /// is refused).
    pub fn decode(b: &[u8]) -> Option<ReplyHeader> {
        if b.len() < 4 {
            return None;
        }
        match be32(b, 0) {
            SIMPLE_REPLY_MAGIC if b.len() >= SIMPLE_REPLY_LEN => Some(ReplyHeader::Simple {
                error: be32(b, 4),
                cookie: be64(b, 8),
            }),
            STRUCTURED_REPLY_MAGIC if b.len() >= STRUCTURED_REPLY_LEN => Some(ReplyHeader::Chunk {
                flags: be16(b, 4),
                kind: be16(b, 6),
                cookie: be64(b, 8),
                length: be32(b, 16),
            }),
            EXTENDED_REPLY_MAGIC if b.len() >= EXTENDED_LEN => Some(ReplyHeader::Chunk {
                flags: be16(b, 4),
                kind: be16(b, 6),
                cookie: be64(b, 8),
                length: u32::try_from(be64(b, 24)).ok()?,
            }),
            _ => None,
        }
    }

    /// The cookie of the request this answers.
    pub fn cookie(&self) -> u64 {
        match *self {
            ReplyHeader::Simple { cookie, .. } | ReplyHeader::Chunk { cookie, .. } => cookie,
        }
    }
}

/// The header of a client option: `IHAVEOPT`, option, data length.
pub fn option_header(option: u32, len: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&OPTS_MAGIC.to_be_bytes());
    b[8..12].copy_from_slice(&option.to_be_bytes());
    b[12..16].copy_from_slice(&len.to_be_bytes());
    b
}

/// A decoded option reply header (20 bytes: magic, option, type, length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option this answers.
    pub option: u32,
    /// NBD_REP_*.
    pub kind: u32,
    /// Data bytes after the header.
    pub length: u32,
}

impl OptionReply {
    /// Decodes the 20 header bytes; `None` when the magic is wrong.
    pub fn decode(b: &[u8; 20]) -> Option<OptionReply> {
        (be64(b, 0) == REP_MAGIC).then(|| OptionReply {
            option: be32(b, 8),
            kind: be32(b, 12),
            length: be32(b, 16),
        })
    }
}

/// NBD_OPT_GO data: export name, then the information types asked for.
pub fn go_data(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + export.len() + 2 * infos.len());
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// NBD_OPT_SET_META_CONTEXT data: export name, then the queries.
pub fn meta_context_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers_spell_what_proto_md_says() {
        assert_eq!(&INIT_MAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&OPTS_MAGIC.to_be_bytes(), b"IHAVEOPT");
        assert_eq!(
            REP_MAGIC.to_be_bytes(),
            [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]
        );
        assert_eq!(REQUEST_MAGIC.to_be_bytes(), [0x25, 0x60, 0x95, 0x13]);
        assert_eq!(SIMPLE_REPLY_MAGIC.to_be_bytes(), [0x67, 0x44, 0x66, 0x98]);
        assert_eq!(
            STRUCTURED_REPLY_MAGIC.to_be_bytes(),
            [0x66, 0x8e, 0x33, 0xef]
        );
        assert_eq!(REP_ERR_UNSUP, 0x8000_0001);
        assert_eq!(REP_ERR_TLS_REQD, 0x8000_0005);
        assert_eq!(REPLY_TYPE_ERROR, 0x8001);
        assert_eq!(REPLY_TYPE_ERROR_OFFSET, 0x8002);
    }

    #[test]
    fn request_header_layout_is_byte_exact() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1122_3344_5566_7788,
            length: 0x0000_1000,
        };
        assert_eq!(
            r.encode(),
            [
                0x25, 0x60, 0x95, 0x13, // magic
                0x00, 0x01, // flags: FUA
                0x00, 0x01, // type: WRITE
                1, 2, 3, 4, 5, 6, 7, 8, // cookie
                0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // offset
                0x00, 0x00, 0x10, 0x00, // length
            ]
        );
        let z = Request {
            flags: CMD_FLAG_NO_HOLE,
            command: CMD_WRITE_ZEROES,
            cookie: 0,
            offset: 0,
            length: 1,
        }
        .encode();
        assert_eq!(&z[4..8], &[0x00, 0x02, 0x00, 0x06]);
        assert_eq!(CMD_TRIM, 4);
        assert_eq!(CMD_BLOCK_STATUS, 7);
        assert_eq!(REPLY_TYPE_BLOCK_STATUS, 5);
        assert_eq!((STATE_HOLE, STATE_ZERO), (1, 2));
        assert_eq!(CMD_FLUSH, 3);
        assert_eq!(CMD_DISC, 2);
    }

    #[test]
    fn reply_headers_decode_simple_and_structured() {
        let mut s = [0u8; 16];
        s[0..4].copy_from_slice(&[0x67, 0x44, 0x66, 0x98]);
        s[4..8].copy_from_slice(&[0, 0, 0, 5]);
        s[8..16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(
            ReplyHeader::decode(&s),
            Some(ReplyHeader::Simple {
                error: EIO,
                cookie: 0x1234
            })
        );
        assert_eq!(ReplyHeader::rest_len(SIMPLE_REPLY_MAGIC), Some(12));

        let c = [
            0x66, 0x8e, 0x33, 0xef, // magic
            0x00, 0x01, // flags: DONE
            0x00, 0x02, // type: OFFSET_HOLE
            0, 0, 0, 0, 0, 0, 0, 9, // cookie
            0, 0, 0, 12, // length
        ];
        let h = ReplyHeader::decode(&c).unwrap();
        assert_eq!(
            h,
            ReplyHeader::Chunk {
                flags: REPLY_FLAG_DONE,
                kind: REPLY_TYPE_OFFSET_HOLE,
                cookie: 9,
                length: 12
            }
        );
        assert_eq!(h.cookie(), 9);
        assert_eq!(ReplyHeader::rest_len(STRUCTURED_REPLY_MAGIC), Some(16));
        assert_eq!(ReplyHeader::rest_len(0xdead_beef), None);
        assert_eq!(ReplyHeader::decode(&[0xde, 0xad, 0xbe, 0xef]), None);
    }

    #[test]
    fn option_messages_are_byte_exact() {
        assert_eq!(
            option_header(OPT_GO, 9),
            [b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T', 0, 0, 0, 7, 0, 0, 0, 9]
        );
        assert_eq!(
            go_data("ab", &[INFO_EXPORT, INFO_BLOCK_SIZE]),
            [0, 0, 0, 2, b'a', b'b', 0, 2, 0, 0, 0, 3]
        );
        assert_eq!(
            meta_context_data("", &["base:allocation"]),
            [
                &[0u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 15][..],
                b"base:allocation"
            ]
            .concat()
        );
        let mut r = [0u8; 20];
        r[0..8].copy_from_slice(&REP_MAGIC.to_be_bytes());
        r[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
        r[12..16].copy_from_slice(&REP_INFO.to_be_bytes());
        r[16..20].copy_from_slice(&12u32.to_be_bytes());
        assert_eq!(
            OptionReply::decode(&r),
            Some(OptionReply {
                option: OPT_GO,
                kind: REP_INFO,
                length: 12
            })
        );
        r[0] = 1;
        assert_eq!(OptionReply::decode(&r), None);
    }

    #[test]
    fn errors_map_to_host_errno() {
        assert_eq!(errno(EIO), libc::EIO);
        assert_eq!(errno(ENOSPC), libc::ENOSPC);
        assert_eq!(errno(EPERM), libc::EPERM);
        assert_eq!(errno(ESHUTDOWN), libc::ESHUTDOWN);
        assert_eq!(errno(4242), libc::EINVAL);
    }
}
