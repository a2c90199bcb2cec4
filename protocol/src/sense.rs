//! Sense data: sense keys, additional sense codes, and the fixed and
//! descriptor format codecs (SPC-5 §4.4).
//!
//! A device returns sense data with CHECK CONDITION status. virtio-scsi
//! carries it in the `sense` field of the command response (autosense,
//! VIRTIO 1.2 §5.6.6.1), so REQUEST SENSE is rarely needed.
//!
//! - Fixed format (SPC-5 §4.4.3): response code 70h (current) or 71h
//!   (deferred), 18 bytes here (ADDITIONAL SENSE LENGTH 10).
//! - Descriptor format (SPC-5 §4.4.2): response code 72h/73h, an 8-byte header
//!   followed by descriptors; this codec writes the information descriptor
//!   (type 00h) and the sense-key specific descriptor (type 02h)
//!   and skips any other type when decoding.

use std::fmt;

/// Sense key (SPC-5 §4.4, sense key descriptions): the general category of the condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// No specific sense key information.
    NoSense = 0x0,
    /// The command completed after recovery action.
    RecoveredError = 0x1,
    /// The logical unit is not accessible.
    NotReady = 0x2,
    /// Non-recovered error, probably caused by a flaw in the medium.
    MediumError = 0x3,
    /// Non-recoverable hardware failure.
    HardwareError = 0x4,
    /// Illegal CDB or parameter list.
    IllegalRequest = 0x5,
    /// Unit attention condition (reset, medium change, ...).
    UnitAttention = 0x6,
    /// Access to the data is blocked (for example write protected).
    DataProtect = 0x7,
    /// Blank or non-blank medium encountered (sequential or write-once devices).
    BlankCheck = 0x8,
    /// Vendor-specific condition.
    VendorSpecific = 0x9,
    /// An EXTENDED COPY command was aborted.
    CopyAborted = 0xA,
    /// The device server aborted the command.
    AbortedCommand = 0xB,
    /// Obsolete (was EQUAL, for SEARCH DATA).
    Equal = 0xC,
    /// A buffered device reached the end of the partition.
    VolumeOverflow = 0xD,
    /// Source data did not match the data read from the medium.
    Miscompare = 0xE,
    /// Sense data returned without an error (for example ATA PASS-THROUGH results).
    Completed = 0xF,
}

impl SenseKey {
    /// Decodes a 4-bit sense key; `None` above 0Fh.
    pub fn from_u8(v: u8) -> Option<Self> {
        use SenseKey::*;
        const ALL: [SenseKey; 16] = [
            NoSense,
            RecoveredError,
            NotReady,
            MediumError,
            HardwareError,
            IllegalRequest,
            UnitAttention,
            DataProtect,
            BlankCheck,
            VendorSpecific,
            CopyAborted,
            AbortedCommand,
            Equal,
            VolumeOverflow,
            Miscompare,
            Completed,
        ];
        ALL.get(usize::from(v)).copied()
    }

    /// The name SPC-5 §4.4 gives the key, e.g. `ILLEGAL REQUEST`.
    pub fn name(self) -> &'static str {
        match self {
            SenseKey::NoSense => "NO SENSE",
            SenseKey::RecoveredError => "RECOVERED ERROR",
            SenseKey::NotReady => "NOT READY",
            SenseKey::MediumError => "MEDIUM ERROR",
            SenseKey::HardwareError => "HARDWARE ERROR",
            SenseKey::IllegalRequest => "ILLEGAL REQUEST",
            SenseKey::UnitAttention => "UNIT ATTENTION",
            SenseKey::DataProtect => "DATA PROTECT",
            SenseKey::BlankCheck => "BLANK CHECK",
            SenseKey::VendorSpecific => "VENDOR SPECIFIC",
            SenseKey::CopyAborted => "COPY ABORTED",
            SenseKey::AbortedCommand => "ABORTED COMMAND",
            SenseKey::Equal => "EQUAL",
            SenseKey::VolumeOverflow => "VOLUME OVERFLOW",
            SenseKey::Miscompare => "MISCOMPARE",
            SenseKey::Completed => "COMPLETED",
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Length of fixed format sense data as this crate writes it (SPC-5 §4.4.3).
pub const FIXED_LEN: usize = 18;
/// Largest descriptor format sense data this crate writes: header (8) +
/// information descriptor (12) + sense-key specific descriptor (8).
pub const DESCRIPTOR_MAX_LEN: usize = 28;

/// Fixed format, current error (SPC-5 §4.4).
pub const RESPONSE_FIXED_CURRENT: u8 = 0x70;
/// Fixed format, deferred error.
pub const RESPONSE_FIXED_DEFERRED: u8 = 0x71;
/// Descriptor format, current error.
pub const RESPONSE_DESC_CURRENT: u8 = 0x72;
/// Descriptor format, deferred error.
pub const RESPONSE_DESC_DEFERRED: u8 = 0x73;

/// One sense condition: key, ASC/ASCQ, and the optional INFORMATION and
/// SENSE KEY SPECIFIC fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: SenseKey,
    /// ADDITIONAL SENSE CODE.
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER.
    pub ascq: u8,
    /// INFORMATION field (for example the first LBA in error), if valid.
    pub information: Option<u64>,
    /// The 3 SENSE KEY SPECIFIC bytes with SKSV (bit 7 of the first byte)
    /// set, e.g. a field pointer (SPC-5 §4.4, sense key specific field pointer), if valid.
    pub sks: Option<[u8; 3]>,
}

/// Why sense data could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SenseError {
    /// Fewer bytes than the format's mandatory part.
    #[error("sense data too short: {got} bytes, need at least {need}")]
    TooShort {
        /// Bytes available.
        got: usize,
        /// Bytes the response code's format needs.
        need: usize,
    },
    /// RESPONSE CODE is not 70h..73h.
    #[error("unknown sense response code {0:#04x}")]
    UnknownResponseCode(u8),
}

impl Sense {
    /// Builds a sense condition without INFORMATION or SENSE KEY SPECIFIC data.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            information: None,
            sks: None,
        }
    }

    /// 0/00/00 NO ADDITIONAL SENSE INFORMATION.
    pub const NO_SENSE: Sense = Sense::new(SenseKey::NoSense, 0x00, 0x00);
    /// 5/20/00 INVALID COMMAND OPERATION CODE.
    pub const INVALID_COMMAND_OPERATION_CODE: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x20, 0x00);
    /// 5/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(SenseKey::IllegalRequest, 0x21, 0x00);
    /// 5/24/00 INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(SenseKey::IllegalRequest, 0x24, 0x00);
    /// 5/25/00 LOGICAL UNIT NOT SUPPORTED.
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Sense = Sense::new(SenseKey::IllegalRequest, 0x25, 0x00);
    /// 5/26/00 INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x00);
    /// 5/1A/00 PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00);
    /// 5/0E/03 INVALID FIELD IN COMMAND INFORMATION UNIT (the transport's
    /// buffer does not match what the CDB asks for).
    pub const INVALID_FIELD_IN_COMMAND_IU: Sense = Sense::new(SenseKey::IllegalRequest, 0x0E, 0x03);
    /// 5/39/00 SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x39, 0x00);
    /// 7/27/00 WRITE PROTECTED.
    pub const WRITE_PROTECTED: Sense = Sense::new(SenseKey::DataProtect, 0x27, 0x00);
    /// 7/27/07 SPACE ALLOCATION FAILED WRITE PROTECT (backing store full).
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(SenseKey::DataProtect, 0x27, 0x07);
    /// 3/11/00 UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(SenseKey::MediumError, 0x11, 0x00);
    /// 3/0C/00 WRITE ERROR.
    pub const WRITE_ERROR: Sense = Sense::new(SenseKey::MediumError, 0x0C, 0x00);
    /// 6/29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: Sense = Sense::new(SenseKey::UnitAttention, 0x29, 0x00);
    /// 6/2A/09 CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_DATA_HAS_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x09);
    /// 6/3F/0E REPORTED LUNS DATA HAS CHANGED.
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Sense =
        Sense::new(SenseKey::UnitAttention, 0x3F, 0x0E);
    /// B/08/00 LOGICAL UNIT COMMUNICATION FAILURE (a network medium is unreachable).
    pub const LU_COMMUNICATION_FAILURE: Sense = Sense::new(SenseKey::AbortedCommand, 0x08, 0x00);
    /// B/08/01 LOGICAL UNIT COMMUNICATION TIME-OUT (a network medium stalled).
    pub const LU_COMMUNICATION_TIMEOUT: Sense = Sense::new(SenseKey::AbortedCommand, 0x08, 0x01);
    /// 4/44/00 INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(SenseKey::HardwareError, 0x44, 0x00);
    /// 2/04/00 LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY: Sense = Sense::new(SenseKey::NotReady, 0x04, 0x00);

    /// 6/2A/01 MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x01);
    /// 6/28/00 NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    pub const MEDIUM_MAY_HAVE_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x28, 0x00);
    /// 2/04/02 LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (stopped
    /// by START STOP UNIT; a START brings it back).
    pub const NOT_READY_INITIALIZING_COMMAND_REQUIRED: Sense =
        Sense::new(SenseKey::NotReady, 0x04, 0x02);
    /// 2/3A/00 MEDIUM NOT PRESENT.
    pub const MEDIUM_NOT_PRESENT: Sense = Sense::new(SenseKey::NotReady, 0x3A, 0x00);
    /// 5/53/02 MEDIUM REMOVAL PREVENTED.
    pub const MEDIUM_REMOVAL_PREVENTED: Sense = Sense::new(SenseKey::IllegalRequest, 0x53, 0x02);
    /// E/1D/00 MISCOMPARE DURING VERIFY OPERATION (INFORMATION: offset of
    /// the first byte that did not match).
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(SenseKey::Miscompare, 0x1D, 0x00);

    /// Adds a field pointer (SPC-5 §4.4, sense key specific field pointer): SKSV=1, C/D=`in_cdb`
    /// (1: the error is in the CDB, 0: in the parameter list), and when `bit`
    /// is given BPV=1 with the BIT POINTER naming the most significant bit
    /// of the field in error; `byte` is the FIELD POINTER.
    pub const fn with_field_pointer(mut self, in_cdb: bool, byte: u16, bit: Option<u8>) -> Self {
        let mut b0 = 0x80;
        if in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = byte.to_be_bytes();
        self.sks = Some([b0, hi, lo]);
        self
    }

    /// Adds an INFORMATION field value (e.g. the LBA of the first error).
    pub const fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    /// Fixed format sense data (SPC-5 §4.4.3): response code 70h,
    /// ADDITIONAL SENSE LENGTH 10. VALID and the INFORMATION field are set
    /// when `information` fits in 32 bits (a larger value needs descriptor
    /// format and is dropped here); SKSV and bytes 15-17 from `sks`.
    pub fn to_fixed(&self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[0] = RESPONSE_FIXED_CURRENT;
        b[2] = self.key as u8;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[7] = (FIXED_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sks {
            b[15..18].copy_from_slice(&sks);
            b[15] |= 0x80;
        }
        b
    }

    /// Writes fixed format sense data into `out`, truncated to its length;
    /// returns the number of bytes written.
    pub fn encode_fixed(&self, out: &mut [u8]) -> usize {
        copy_prefix(&self.to_fixed(), out)
    }

    /// Descriptor format sense data (SPC-5 §4.4.2) in a fixed
    /// buffer, and its length: header with response code 72h, then an
    /// information descriptor (type 00h, VALID=1) when `information` is set
    /// and a sense-key specific descriptor (type 02h) when `sks` is set.
    pub fn to_descriptor(&self) -> ([u8; DESCRIPTOR_MAX_LEN], usize) {
        let mut b = [0u8; DESCRIPTOR_MAX_LEN];
        b[0] = RESPONSE_DESC_CURRENT;
        b[1] = self.key as u8;
        b[2] = self.asc;
        b[3] = self.ascq;
        let mut n = 8;
        if let Some(info) = self.information {
            // Information sense data descriptor: type 00h, ADDITIONAL LENGTH 0Ah, VALID, reserved, 8-byte INFORMATION.
            b[n] = 0x00;
            b[n + 1] = 0x0A;
            b[n + 2] = 0x80;
            b[n + 4..n + 12].copy_from_slice(&info.to_be_bytes());
            n += 12;
        }
        if let Some(sks) = self.sks {
            // Sense key specific sense data descriptor: type 02h, ADDITIONAL LENGTH 06h, 2 reserved, 3 SKS bytes, reserved.
            b[n] = 0x02;
            b[n + 1] = 0x06;
            b[n + 4..n + 7].copy_from_slice(&sks);
            b[n + 4] |= 0x80;
            n += 8;
        }
        b[7] = (n - 8) as u8;
        (b, n)
    }

    /// Writes descriptor format sense data into `out`, truncated to its
    /// length; returns the number of bytes written.
    pub fn encode_descriptor(&self, out: &mut [u8]) -> usize {
        let (b, n) = self.to_descriptor();
        copy_prefix(&b[..n], out)
    }

    /// Decodes fixed (70h/71h) or descriptor (72h/73h) format sense data.
    ///
    /// Fixed format needs at least 14 bytes (through the ASCQ); SKS is read
    /// when 18 bytes are present and SKSV is set. Descriptor format needs the
    /// 8-byte header; descriptors are walked within both the ADDITIONAL SENSE
    /// LENGTH and the bytes given, and unknown or truncated ones are skipped.
    /// Deferred errors (71h/73h) decode like current ones.
    pub fn decode(bytes: &[u8]) -> Result<Sense, SenseError> {
        let Some(&code) = bytes.first() else {
            return Err(SenseError::TooShort { got: 0, need: 1 });
        };
        let code = code & 0x7F;
        match code {
            RESPONSE_FIXED_CURRENT | RESPONSE_FIXED_DEFERRED => {
                if bytes.len() < 14 {
                    return Err(SenseError::TooShort {
                        got: bytes.len(),
                        need: 14,
                    });
                }
                let key = sense_key(bytes[2]);
                let information = (bytes[0] & 0x80 != 0).then(|| {
                    u64::from(u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]))
                });
                let sks = match bytes.get(15..18) {
                    Some(s) if s[0] & 0x80 != 0 => Some([s[0], s[1], s[2]]),
                    _ => None,
                };
                Ok(Sense {
                    key,
                    asc: bytes[12],
                    ascq: bytes[13],
                    information,
                    sks,
                })
            }
            RESPONSE_DESC_CURRENT | RESPONSE_DESC_DEFERRED => {
                if bytes.len() < 8 {
                    return Err(SenseError::TooShort {
                        got: bytes.len(),
                        need: 8,
                    });
                }
                let mut sense = Sense::new(sense_key(bytes[1]), bytes[2], bytes[3]);
                let end = bytes.len().min(8 + usize::from(bytes[7]));
                let mut at = 8;
                while at + 2 <= end {
                    let kind = bytes[at];
                    let len = 2 + usize::from(bytes[at + 1]);
                    let Some(d) = bytes.get(at..at + len).filter(|_| at + len <= end) else {
                        break;
                    };
                    match kind {
                        0x00 if len >= 12 && d[2] & 0x80 != 0 => {
                            let mut info = [0u8; 8];
                            info.copy_from_slice(&d[4..12]);
                            sense.information = Some(u64::from_be_bytes(info));
                        }
                        0x02 if len >= 7 && d[4] & 0x80 != 0 => {
                            sense.sks = Some([d[4], d[5], d[6]]);
                        }
                        _ => {}
                    }
                    at += len;
                }
                Ok(sense)
            }
            other => Err(SenseError::UnknownResponseCode(other)),
        }
    }

    /// The field pointer of `sks` as (in CDB, byte, bit) when SKSV is set
    /// and the sense key is ILLEGAL REQUEST (SPC-5 §4.4, sense key specific field pointer).
    pub fn field_pointer(&self) -> Option<(bool, u16, Option<u8>)> {
        let sks = self.sks?;
        if self.key != SenseKey::IllegalRequest || sks[0] & 0x80 == 0 {
            return None;
        }
        let bit = (sks[0] & 0x08 != 0).then_some(sks[0] & 0x07);
        Some((
            sks[0] & 0x40 != 0,
            u16::from_be_bytes([sks[1], sks[2]]),
            bit,
        ))
    }

    /// Description of this sense's ASC/ASCQ (see [`asc_description`]).
    pub fn description(&self) -> Option<&'static str> {
        asc_description(self.asc, self.ascq)
    }
}

fn sense_key(b: u8) -> SenseKey {
    // Low nibble is always a valid key.
    SenseKey::from_u8(b & 0x0F).unwrap_or(SenseKey::NoSense)
}

fn copy_prefix(src: &[u8], out: &mut [u8]) -> usize {
    let n = src.len().min(out.len());
    out[..n].copy_from_slice(&src[..n]);
    n
}

impl fmt::Display for Sense {
    /// `ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (5/21/00)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(d) => write!(f, "{}: {}", self.key, d)?,
            None => write!(
                f,
                "{}: ASC {:#04x} ASCQ {:#04x}",
                self.key, self.asc, self.ascq
            )?,
        }
        write!(
            f,
            " ({:X}/{:02X}/{:02X})",
            self.key as u8, self.asc, self.ascq
        )?;
        if let Some(info) = self.information {
            write!(f, " information {info:#x}")?;
        }
        if let Some((cdb, byte, bit)) = self.field_pointer() {
            let place = if cdb { "CDB" } else { "parameter list" };
            match bit {
                Some(bit) => write!(f, " [{place} byte {byte} bit {bit}]")?,
                None => write!(f, " [{place} byte {byte}]")?,
            }
        }
        Ok(())
    }
}

/// ASC/ASCQ assignments from SPC-5 (numeric order codes annex, ASC and ASCQ assignments), the commonly
/// met subset: everything this project sends plus the usual others.
const ASC_TABLE: &[(u8, u8, &str)] = &[
    (0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION"),
    (0x00, 0x06, "I/O PROCESS TERMINATED"),
    (0x00, 0x16, "OPERATION IN PROGRESS"),
    (0x00, 0x1D, "ATA PASS THROUGH INFORMATION AVAILABLE"),
    (0x02, 0x00, "NO SEEK COMPLETE"),
    (0x04, 0x00, "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE"),
    (0x04, 0x01, "LOGICAL UNIT IS IN PROCESS OF BECOMING READY"),
    (
        0x04,
        0x02,
        "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
    ),
    (
        0x04,
        0x03,
        "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
    ),
    (0x04, 0x04, "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS"),
    (
        0x04,
        0x0A,
        "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
    ),
    (
        0x04,
        0x0B,
        "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE",
    ),
    (
        0x04,
        0x0C,
        "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE",
    ),
    (0x08, 0x00, "LOGICAL UNIT COMMUNICATION FAILURE"),
    (0x08, 0x01, "LOGICAL UNIT COMMUNICATION TIME-OUT"),
    (0x0C, 0x00, "WRITE ERROR"),
    (0x0C, 0x02, "WRITE ERROR - AUTO REALLOCATION FAILED"),
    (0x0E, 0x03, "INVALID FIELD IN COMMAND INFORMATION UNIT"),
    (0x10, 0x01, "LOGICAL BLOCK GUARD CHECK FAILED"),
    (0x10, 0x02, "LOGICAL BLOCK APPLICATION TAG CHECK FAILED"),
    (0x10, 0x03, "LOGICAL BLOCK REFERENCE TAG CHECK FAILED"),
    (0x11, 0x00, "UNRECOVERED READ ERROR"),
    (
        0x11,
        0x04,
        "UNRECOVERED READ ERROR - AUTO REALLOCATE FAILED",
    ),
    (0x14, 0x01, "RECORD NOT FOUND"),
    (0x1A, 0x00, "PARAMETER LIST LENGTH ERROR"),
    (0x1D, 0x00, "MISCOMPARE DURING VERIFY OPERATION"),
    (0x20, 0x00, "INVALID COMMAND OPERATION CODE"),
    (0x21, 0x00, "LOGICAL BLOCK ADDRESS OUT OF RANGE"),
    (0x21, 0x01, "INVALID ELEMENT ADDRESS"),
    (0x24, 0x00, "INVALID FIELD IN CDB"),
    (0x25, 0x00, "LOGICAL UNIT NOT SUPPORTED"),
    (0x26, 0x00, "INVALID FIELD IN PARAMETER LIST"),
    (0x26, 0x01, "PARAMETER NOT SUPPORTED"),
    (0x26, 0x02, "PARAMETER VALUE INVALID"),
    (0x27, 0x00, "WRITE PROTECTED"),
    (0x27, 0x01, "HARDWARE WRITE PROTECTED"),
    (0x27, 0x02, "LOGICAL UNIT SOFTWARE WRITE PROTECTED"),
    (0x27, 0x07, "SPACE ALLOCATION FAILED WRITE PROTECT"),
    (
        0x28,
        0x00,
        "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED",
    ),
    (0x29, 0x00, "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"),
    (0x29, 0x01, "POWER ON OCCURRED"),
    (0x29, 0x02, "SCSI BUS RESET OCCURRED"),
    (0x29, 0x03, "BUS DEVICE RESET FUNCTION OCCURRED"),
    (0x29, 0x04, "DEVICE INTERNAL RESET"),
    (0x29, 0x07, "I_T NEXUS LOSS OCCURRED"),
    (0x2A, 0x01, "MODE PARAMETERS CHANGED"),
    (0x2A, 0x09, "CAPACITY DATA HAS CHANGED"),
    (0x2C, 0x00, "COMMAND SEQUENCE ERROR"),
    (0x2F, 0x00, "COMMANDS CLEARED BY ANOTHER INITIATOR"),
    (0x31, 0x00, "MEDIUM FORMAT CORRUPTED"),
    (0x39, 0x00, "SAVING PARAMETERS NOT SUPPORTED"),
    (0x3A, 0x00, "MEDIUM NOT PRESENT"),
    (0x3E, 0x02, "TIMEOUT ON LOGICAL UNIT"),
    (0x3E, 0x03, "LOGICAL UNIT FAILED SELF-TEST"),
    (0x3F, 0x01, "MICROCODE HAS BEEN CHANGED"),
    (0x3F, 0x03, "INQUIRY DATA HAS CHANGED"),
    (0x3F, 0x0E, "REPORTED LUNS DATA HAS CHANGED"),
    (0x44, 0x00, "INTERNAL TARGET FAILURE"),
    (0x47, 0x00, "SCSI PARITY ERROR"),
    (0x49, 0x00, "INVALID MESSAGE ERROR"),
    (0x4B, 0x00, "DATA PHASE ERROR"),
    (0x4E, 0x00, "OVERLAPPED COMMANDS ATTEMPTED"),
    (0x53, 0x02, "MEDIUM REMOVAL PREVENTED"),
    (0x55, 0x03, "INSUFFICIENT RESOURCES"),
    (0x5D, 0x00, "FAILURE PREDICTION THRESHOLD EXCEEDED"),
    (0x5E, 0x00, "LOW POWER CONDITION ON"),
];

/// The SPC-5 numeric order codes annex description of an ASC/ASCQ pair, for the common codes;
/// `None` for pairs not in this table.
pub fn asc_description(asc: u8, ascq: u8) -> Option<&'static str> {
    ASC_TABLE
        .iter()
        .find(|&&(a, q, _)| a == asc && q == ascq)
        .map(|&(_, _, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_lba_out_of_range_is_byte_exact() {
        assert_eq!(
            Sense::LBA_OUT_OF_RANGE.to_fixed(),
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0]
        );
        assert_eq!(
            Sense::INVALID_COMMAND_OPERATION_CODE.to_fixed(),
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0]
        );
        assert_eq!(
            Sense::WRITE_PROTECTED.to_fixed(),
            [0x70, 0, 0x07, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0x00, 0, 0, 0, 0]
        );
        assert_eq!(
            Sense::LOGICAL_UNIT_NOT_SUPPORTED.to_fixed(),
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0x00, 0, 0, 0, 0]
        );
    }

    #[test]
    fn fixed_with_information_and_field_pointer() {
        let s = Sense::INVALID_FIELD_IN_CDB
            .with_field_pointer(true, 1, Some(7))
            .with_information(0x1234_5678);
        assert_eq!(
            s.to_fixed(),
            [
                0xF0, 0, 0x05, 0x12, 0x34, 0x56, 0x78, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xCF, 0x00,
                0x01
            ]
        );
        // Information beyond 32 bits cannot be carried in fixed format.
        let big = Sense::LBA_OUT_OF_RANGE.with_information(1 << 40);
        assert_eq!(big.to_fixed()[0], 0x70);
        assert_eq!(&big.to_fixed()[3..7], &[0, 0, 0, 0]);
        // Parameter-list pointer without bit pointer.
        let p = Sense::INVALID_FIELD_IN_PARAMETER_LIST.with_field_pointer(false, 0x0102, None);
        assert_eq!(&p.to_fixed()[15..18], &[0x80, 0x01, 0x02]);
    }

    #[test]
    fn encode_truncates() {
        let mut small = [0u8; 8];
        assert_eq!(Sense::LBA_OUT_OF_RANGE.encode_fixed(&mut small), 8);
        assert_eq!(small, [0x70, 0, 5, 0, 0, 0, 0, 10]);
        let mut big = [0xAAu8; 96];
        assert_eq!(Sense::LBA_OUT_OF_RANGE.encode_fixed(&mut big), 18);
        assert_eq!(big[18], 0xAA);
    }

    #[test]
    fn descriptor_format_is_byte_exact() {
        let mut out = [0u8; 96];
        assert_eq!(Sense::LBA_OUT_OF_RANGE.encode_descriptor(&mut out), 8);
        assert_eq!(&out[..8], &[0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]);

        let s = Sense::INVALID_FIELD_IN_CDB
            .with_information(0x0102_0304_0506_0708)
            .with_field_pointer(true, 2, None);
        let n = s.encode_descriptor(&mut out);
        assert_eq!(n, 28);
        assert_eq!(
            &out[..n],
            &[
                0x72, 0x05, 0x24, 0x00, 0, 0, 0, 20, // header
                0x00, 0x0A, 0x80, 0, 1, 2, 3, 4, 5, 6, 7, 8, // information
                0x02, 0x06, 0, 0, 0xC0, 0x00, 0x02, 0, // sense-key specific
            ]
        );
    }

    #[test]
    fn decode_roundtrips_both_formats() {
        let cases = [
            Sense::NO_SENSE,
            Sense::LBA_OUT_OF_RANGE.with_information(77),
            Sense::INVALID_FIELD_IN_CDB.with_field_pointer(true, 9, Some(2)),
            Sense::WRITE_PROTECTED,
        ];
        for s in cases {
            assert_eq!(Sense::decode(&s.to_fixed()), Ok(s));
            let (b, n) = s.to_descriptor();
            assert_eq!(Sense::decode(&b[..n]), Ok(s));
        }
        let big = Sense::LBA_OUT_OF_RANGE.with_information(1 << 40);
        let (b, n) = big.to_descriptor();
        assert_eq!(Sense::decode(&b[..n]), Ok(big));
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        assert_eq!(
            Sense::decode(&[]),
            Err(SenseError::TooShort { got: 0, need: 1 })
        );
        assert_eq!(
            Sense::decode(&[0x70, 0, 5]),
            Err(SenseError::TooShort { got: 3, need: 14 })
        );
        assert_eq!(
            Sense::decode(&[0x72, 5]),
            Err(SenseError::TooShort { got: 2, need: 8 })
        );
        assert_eq!(
            Sense::decode(&[0x00; 18]),
            Err(SenseError::UnknownResponseCode(0))
        );
        // Descriptor whose length runs past the buffer, and a deferred error.
        let s = Sense::decode(&[0x73, 0x03, 0x11, 0x00, 0, 0, 0, 30, 0x00, 0x0A, 0x80]).unwrap();
        assert_eq!(s, Sense::UNRECOVERED_READ_ERROR);
        // Every short prefix of every length decodes or errors, never panics.
        let (b, n) = Sense::INVALID_FIELD_IN_CDB
            .with_information(5)
            .with_field_pointer(true, 1, None)
            .to_descriptor();
        for i in 0..=n {
            let _ = Sense::decode(&b[..i]);
        }
        let f = Sense::INVALID_FIELD_IN_CDB.to_fixed();
        for i in 0..=f.len() {
            let _ = Sense::decode(&f[..i]);
        }
    }

    #[test]
    fn keys_and_descriptions() {
        for v in 0..16u8 {
            assert_eq!(SenseKey::from_u8(v).map(|k| k as u8), Some(v));
        }
        assert_eq!(SenseKey::from_u8(16), None);
        assert_eq!(SenseKey::DataProtect.name(), "DATA PROTECT");
        assert_eq!(
            asc_description(0x25, 0x00),
            Some("LOGICAL UNIT NOT SUPPORTED")
        );
        assert_eq!(asc_description(0x7F, 0x7F), None);
        for &(asc, ascq, _) in ASC_TABLE {
            let dups = ASC_TABLE
                .iter()
                .filter(|e| e.0 == asc && e.1 == ascq)
                .count();
            assert_eq!(dups, 1, "{asc:02x}/{ascq:02x}");
        }
        assert!(ASC_TABLE.len() >= 50);
    }

    #[test]
    fn display() {
        assert_eq!(
            Sense::LBA_OUT_OF_RANGE.to_string(),
            "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (5/21/00)"
        );
        assert_eq!(
            Sense::INVALID_FIELD_IN_CDB
                .with_field_pointer(true, 1, Some(4))
                .to_string(),
            "ILLEGAL REQUEST: INVALID FIELD IN CDB (5/24/00) [CDB byte 1 bit 4]"
        );
        assert_eq!(
            Sense::new(SenseKey::VendorSpecific, 0x80, 0x01).to_string(),
            "VENDOR SPECIFIC: ASC 0x80 ASCQ 0x01 (9/80/01)"
        );
    }
}
