//! A logical unit: a direct-access block device (SBC-4) over a raw image.
//!
//! `LogicalUnit` is shared by the request-queue worker threads through an
//! `Arc`: every method takes `&self`, the identity data is computed once at
//! open, and READ/WRITE go straight to positioned I/O on the image with no
//! lock and no allocation.

use std::io;
use std::path::Path;

use vscsi_protocol::data::{StandardInquiry, STANDARD_INQUIRY_LEN};
use vscsi_protocol::sense::Sense;

use crate::storage::{OpenError, RawImage};

/// Per-LU settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunOptions {
    /// Serve the image read-only: opened `O_RDONLY`, WRITE gets DATA
    /// PROTECT / WRITE PROTECTED, MODE SENSE sets WP.
    pub read_only: bool,
    /// Logical block size: 512 (default), 1024, 2048 or 4096.
    pub block_size: u32,
    /// T10 VENDOR IDENTIFICATION, at most 8 printable ASCII characters.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION, at most 16 printable ASCII characters.
    pub product: String,
    /// PRODUCT REVISION LEVEL, at most 4 printable ASCII characters.
    pub revision: String,
    /// Unit serial number (VPD page 80h), at most 64 printable ASCII
    /// characters; also used in the VPD 83h identifier.
    pub serial: Option<String>,
}

impl Default for LunOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            block_size: 512,
            vendor: "VSCSI".into(),
            product: "VIRTUAL-DISK".into(),
            revision: "0001".into(),
            serial: None,
        }
    }
}

/// Longest serial number accepted.
pub const MAX_SERIAL_LEN: usize = 64;

/// A logical unit serving one image.
#[derive(Debug)]
pub struct LogicalUnit {
    image: RawImage,
    opts: LunOptions,
    blocks: u64,
    block_shift: u32,
    inquiry: [u8; STANDARD_INQUIRY_LEN],
    /// VPD 83h T10 vendor ID designator (vendor + identifier), printable ASCII.
    designator: String,
}

fn check_ascii(
    path: &Path,
    field: &'static str,
    value: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), OpenError> {
    let reason = if value.len() > max {
        Some("too long for its INQUIRY field")
    } else if value.is_empty() && !allow_empty {
        Some("must not be empty")
    } else if !value.bytes().all(|c| (0x20..=0x7E).contains(&c)) {
        Some("must be printable ASCII (SPC-5 §4.3.1)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(OpenError::InvalidOption {
            path: path.to_path_buf(),
            field,
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// 64-bit FNV-1a, to derive a stable identifier from the image path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl LogicalUnit {
    /// Opens (and locks) the image at `path` and checks `opts`.
    ///
    /// An image whose size is not a multiple of the block size is served
    /// rounded down, with a warning naming it; one smaller than a block is
    /// refused.
    pub fn open(path: &Path, opts: LunOptions) -> Result<LogicalUnit, OpenError> {
        if !matches!(opts.block_size, 512 | 1024 | 2048 | 4096) {
            return Err(OpenError::InvalidOption {
                path: path.to_path_buf(),
                field: "block size",
                value: opts.block_size.to_string(),
                reason: "must be 512, 1024, 2048 or 4096",
            });
        }
        check_ascii(path, "vendor", &opts.vendor, 8, false)?;
        check_ascii(path, "product", &opts.product, 16, false)?;
        check_ascii(path, "revision", &opts.revision, 4, true)?;
        if let Some(serial) = &opts.serial {
            check_ascii(path, "serial", serial, MAX_SERIAL_LEN, false)?;
        }
        let image = RawImage::open(path, opts.read_only)?;
        let block_shift = opts.block_size.trailing_zeros();
        let blocks = image.size() >> block_shift;
        if blocks == 0 {
            return Err(OpenError::TooSmall {
                path: path.to_path_buf(),
                size: image.size(),
                block_size: opts.block_size,
            });
        }
        let tail = image.size() - (blocks << block_shift);
        if tail != 0 {
            tracing::warn!(
                image = %path.display(),
                size = image.size(),
                block_size = opts.block_size,
                ignored_bytes = tail,
                "image size is not a multiple of the block size; serving it rounded down"
            );
        }
        let inquiry = StandardInquiry::disk(&opts.vendor, &opts.product, &opts.revision).to_bytes();
        let id = match &opts.serial {
            Some(s) => s.clone(),
            None => {
                let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                format!(
                    "{}-{:016x}",
                    opts.product,
                    fnv1a(canon.as_os_str().as_encoded_bytes())
                )
            }
        };
        let designator = format!("{:<8}{}", opts.vendor, id);
        Ok(LogicalUnit {
            image,
            opts,
            blocks,
            block_shift,
            inquiry,
            designator,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        self.image.path()
    }

    /// Capacity in logical blocks (image size rounded down).
    pub fn capacity_blocks(&self) -> u64 {
        self.blocks
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.opts.block_size
    }

    /// Whether the LU is write protected.
    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }

    /// The options the LU was opened with.
    pub fn options(&self) -> &LunOptions {
        &self.opts
    }

    /// `fdatasync` of the image.
    pub fn flush(&self) -> io::Result<()> {
        self.image.sync_data()
    }

    pub(crate) fn image(&self) -> &RawImage {
        &self.image
    }

    pub(crate) fn block_shift(&self) -> u32 {
        self.block_shift
    }

    pub(crate) fn standard_inquiry(&self) -> &[u8; STANDARD_INQUIRY_LEN] {
        &self.inquiry
    }

    pub(crate) fn designator(&self) -> &str {
        &self.designator
    }

    /// SBC-4 LBA range check, overflow-safe: `blocks` blocks from `lba`
    /// must end at or before the capacity (a 0-block access at LBA ==
    /// capacity is allowed, as in QEMU). Otherwise LBA OUT OF RANGE.
    pub(crate) fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::testutil::image_file;

    #[test]
    fn odd_sized_image_is_rounded_down() {
        let f = image_file(4096 + 100);
        let lu = LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        assert_eq!(lu.capacity_blocks(), 8);
        let lu4k = {
            drop(lu);
            LogicalUnit::open(
                f.path(),
                LunOptions {
                    block_size: 4096,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        assert_eq!(lu4k.capacity_blocks(), 1);
    }

    #[test]
    fn zero_sized_and_sub_block_images_are_refused_naming_them() {
        let f = image_file(0);
        let err = LogicalUnit::open(f.path(), LunOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("empty (0 bytes)"), "{msg}");
        let f = image_file(511);
        let err = LogicalUnit::open(f.path(), LunOptions::default()).unwrap_err();
        assert!(matches!(err, OpenError::TooSmall { size: 511, .. }));
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn second_open_is_refused_as_locked() {
        let f = image_file(4096);
        let _lu = LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        let err = LogicalUnit::open(f.path(), LunOptions::default()).unwrap_err();
        assert!(matches!(err, OpenError::Locked { .. }));
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn bad_options_are_refused() {
        let f = image_file(4096);
        for opts in [
            LunOptions {
                block_size: 520,
                ..Default::default()
            },
            LunOptions {
                vendor: "TOO-LONG-VENDOR".into(),
                ..Default::default()
            },
            LunOptions {
                product: "tab\there".into(),
                ..Default::default()
            },
            LunOptions {
                serial: Some(String::new()),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                LogicalUnit::open(f.path(), opts),
                Err(OpenError::InvalidOption { .. })
            ));
        }
    }

    #[test]
    fn range_check_is_overflow_safe() {
        let f = image_file(8 * 512);
        let lu = LogicalUnit::open(f.path(), LunOptions::default()).unwrap();
        assert!(lu.check_range(0, 8).is_ok());
        assert!(lu.check_range(8, 0).is_ok());
        assert!(lu.check_range(7, 2).is_err());
        assert!(lu.check_range(9, 0).is_err());
        assert!(lu.check_range(u64::MAX, 2).is_err());
    }
}
