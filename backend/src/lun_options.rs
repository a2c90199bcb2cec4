//! The options of one logical unit and their rules, in one place.
//!
//! A LUN is described in three ways: a `--lun TARGET:LUN=PATH[,OPTION...]`
//! spec (`config::lun_spec`), a `[[controller.lun]]` table of the
//! configuration file and the params of the `add_lun` control method (both
//! `config::lun_fields`). Each of them is a thin adapter that only reads its
//! own syntax into a [`LunRequest`] (what was asked, option by option);
//! [`LunRequest::resolve`] applies the defaults and every rule and gives the
//! [`LunOptions`] a [`crate::scsi::LogicalUnit`] is opened with, and
//! `LogicalUnit::open` checks options built in code by the same
//! [`LunOptions::check`]. So the three spellings accept and refuse the same
//! values, with the same reasons.

use crate::storage::{AioMode, CacheMode, ImageFormat};

/// What a logical unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceType {
    /// Direct-access block device (SBC-4, peripheral device type 00h).
    #[default]
    Disk,
    /// CD-ROM (MMC-6, peripheral device type 05h): removable, read-only,
    /// 2048-byte blocks.
    Cdrom,
}

impl DeviceType {
    /// The configuration spelling: `"disk"` or `"cdrom"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Disk => "disk",
            DeviceType::Cdrom => "cdrom",
        }
    }
}

/// Per-LU settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunOptions {
    /// Disk or CD-ROM. A CD-ROM is always read-only, removable, with
    /// 2048-byte blocks and no thin provisioning, whatever the other fields say.
    pub device_type: DeviceType,
    /// RMB in standard INQUIRY data: the medium can be removed (START STOP
    /// UNIT with LOEJ ejects it). Always true for a CD-ROM.
    pub removable: bool,
    /// Serve the image read-only: opened `O_RDONLY`, WRITE gets DATA
    /// PROTECT / WRITE PROTECTED, MODE SENSE sets WP.
    pub read_only: bool,
    /// Logical block size: 512 (default), 1024, 2048 or 4096.
    pub block_size: u32,
    /// T10 VENDOR IDENTIFICATION, 1 to 8 printable ASCII characters.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION, 1 to 16 printable ASCII characters.
    pub product: String,
    /// PRODUCT REVISION LEVEL, 1 to 4 printable ASCII characters.
    pub revision: String,
    /// Unit serial number (VPD page 80h), 1 to 64 printable ASCII
    /// characters; also used in the VPD 83h identifier. Without one a
    /// serial stable for the image path is derived.
    pub serial: Option<String>,
    /// Initial (and default) WCE of the caching mode page. With WCE=0 every
    /// write is made durable (`fdatasync`) before its response.
    pub write_cache: bool,
    /// MEDIUM ROTATION RATE of VPD page B1h: 1 = non-rotating (default),
    /// 0 = not reported, 0401h..FFFEh = rpm.
    pub rotation_rate: u16,
    /// Physical block size in bytes (a power of two ≥ the logical block
    /// size, e.g. 4096 for 512e); 0 means equal to the logical block size.
    pub physical_block_size: u32,
    /// Largest transfer per command in 512-byte sectors (the virtio-scsi
    /// `max_sectors`), reported as MAXIMUM TRANSFER LENGTH in VPD page B0h.
    pub max_sectors: u32,
    /// NAA designator of VPD page 83h (8 bytes, NAA in the top nibble);
    /// without one a locally assigned (NAA 3h) value stable for the image
    /// path or serial is derived.
    pub wwn: Option<u64>,
    /// Offer logical block provisioning (UNMAP, WRITE SAME with UNMAP, holes
    /// in the image) when the image can punch holes. Default on.
    pub discard: bool,
    /// Establish the POWER ON, RESET, OR BUS DEVICE RESET OCCURRED unit
    /// attention (6/29/00) at start, as a real disk does. Off in
    /// [`LunOptions::default`] (initiators that do not expect it see their
    /// first command fail); on in [`LunOptions::served`].
    pub power_on_ua: bool,
    /// Image format: detected from the content (default), or forced.
    pub format: ImageFormat,
    /// Host caching: page cache (`writeback`, default) or `O_DIRECT` (`none`).
    pub cache: CacheMode,
    /// How READ/WRITE data transfers are submitted (default: io_uring for
    /// `cache=none`, inline for `writeback`; see [`AioMode::resolve`]).
    pub aio: AioMode,
}

impl Default for LunOptions {
    fn default() -> Self {
        Self {
            device_type: DeviceType::Disk,
            removable: false,
            read_only: false,
            block_size: 512,
            vendor: "VSCSI".into(),
            product: DISK_PRODUCT.into(),
            revision: "0001".into(),
            serial: None,
            write_cache: true,
            rotation_rate: 1,
            physical_block_size: 0,
            max_sectors: 0xFFFF,
            wwn: None,
            discard: true,
            power_on_ua: false,
            format: ImageFormat::Auto,
            cache: CacheMode::Writeback,
            aio: AioMode::Auto,
        }
    }
}

/// The product identification of a disk LUN that names none.
const DISK_PRODUCT: &str = "VIRTUAL-DISK";
/// The product identification of a CD-ROM LUN that names none.
const CDROM_PRODUCT: &str = "VIRTUAL-CDROM";
/// The block size of a CD-ROM LUN (MMC-6 §4.2: 2048-byte user data sectors).
pub const CDROM_BLOCK_SIZE: u32 = 2048;
/// Logical block sizes served.
pub const BLOCK_SIZES: [u32; 4] = [512, 1024, 2048, 4096];
/// Longest serial number accepted.
pub const MAX_SERIAL_LEN: usize = 64;
/// The largest physical block of a logical one (LOGICAL BLOCKS PER PHYSICAL
/// BLOCK EXPONENT of READ CAPACITY (16) is 4 bits, SBC-4 §5.20.2).
const MAX_PBS_EXPONENT: u32 = 15;

impl LunOptions {
    /// What a LUN the daemon serves starts from: [`LunOptions::default`]
    /// plus the POWER ON, RESET unit attention a real disk reports to each
    /// new initiator (SPC-5 §5.14).
    pub fn served() -> LunOptions {
        LunOptions {
            power_on_ua: true,
            ..LunOptions::default()
        }
    }

    /// Makes a CD-ROM what a CD-ROM is, whatever the disk fields said:
    /// read-only, 2048-byte blocks, removable, no UNMAP, no separate
    /// physical block, product `VIRTUAL-CDROM` unless one was given. A disk
    /// is left as it is.
    pub fn settle_device_type(&mut self) {
        if self.device_type != DeviceType::Cdrom {
            return;
        }
        self.block_size = CDROM_BLOCK_SIZE;
        self.read_only = true;
        self.removable = true;
        self.discard = false;
        self.physical_block_size = 0;
        if self.product == DISK_PRODUCT {
            self.product = CDROM_PRODUCT.into();
        }
    }

    /// The rules on the values themselves (the image-dependent ones, such
    /// as io_uring on a qcow2 image, are checked when the image is open).
    pub fn check(&self) -> Result<(), LunOptionError> {
        if !BLOCK_SIZES.contains(&self.block_size) {
            return Err(LunOptionError::new(
                LunOption::BlockSize,
                self.block_size,
                Rule::OneOf(&["512", "1024", "2048", "4096"]),
            ));
        }
        check_text(LunOption::Vendor, &self.vendor, 8)?;
        check_text(LunOption::Product, &self.product, 16)?;
        check_text(LunOption::Revision, &self.revision, 4)?;
        if let Some(serial) = &self.serial {
            check_text(LunOption::Serial, serial, MAX_SERIAL_LEN)?;
        }
        let pbs = self.physical_block_size;
        if pbs != 0
            && (!pbs.is_power_of_two()
                || pbs < self.block_size
                || pbs / self.block_size > 1 << MAX_PBS_EXPONENT)
        {
            return Err(LunOptionError::new(
                LunOption::PhysicalBlockSize,
                pbs,
                Rule::PhysicalBlockSize {
                    block_size: self.block_size,
                },
            ));
        }
        Ok(())
    }
}

/// An INQUIRY or VPD text field: 1 to `max` printable ASCII characters
/// (SPC-5 §4.3.1).
fn check_text(option: LunOption, value: &str, max: usize) -> Result<(), LunOptionError> {
    if value.is_empty() || value.len() > max || !value.bytes().all(|c| (0x20..=0x7E).contains(&c)) {
        return Err(LunOptionError::new(option, value, Rule::Text { max }));
    }
    Ok(())
}

/// One LUN option, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LunOption {
    /// `format`.
    Format,
    /// `cache`.
    Cache,
    /// `aio`.
    Aio,
    /// `type` (`cdrom` on the command line).
    DeviceType,
    /// `read_only` (`ro` / `rw`).
    ReadOnly,
    /// `block_size` (`bs`).
    BlockSize,
    /// `removable`.
    Removable,
    /// `vendor`.
    Vendor,
    /// `product`.
    Product,
    /// `revision`.
    Revision,
    /// `serial`.
    Serial,
    /// `wwn`.
    Wwn,
    /// `rotation_rate` (`rotation`).
    RotationRate,
    /// `physical_block_size` (`pbs`).
    PhysicalBlockSize,
    /// `write_cache` (`wce`).
    WriteCache,
    /// `discard` (`nodiscard`).
    Discard,
    /// `power_on_ua` (`power-on-ua` / `no-power-on-ua`).
    PowerOnUa,
}

impl LunOption {
    /// The name in a configuration file and in `add_lun` params.
    pub fn field(self) -> &'static str {
        match self {
            LunOption::Format => "format",
            LunOption::Cache => "cache",
            LunOption::Aio => "aio",
            LunOption::DeviceType => "type",
            LunOption::ReadOnly => "read_only",
            LunOption::BlockSize => "block_size",
            LunOption::Removable => "removable",
            LunOption::Vendor => "vendor",
            LunOption::Product => "product",
            LunOption::Revision => "revision",
            LunOption::Serial => "serial",
            LunOption::Wwn => "wwn",
            LunOption::RotationRate => "rotation_rate",
            LunOption::PhysicalBlockSize => "physical_block_size",
            LunOption::WriteCache => "write_cache",
            LunOption::Discard => "discard",
            LunOption::PowerOnUa => "power_on_ua",
        }
    }

    /// The key in a `--lun` spec.
    pub fn cli_key(self) -> &'static str {
        match self {
            LunOption::DeviceType => "cdrom",
            LunOption::ReadOnly => "ro",
            LunOption::BlockSize => "bs",
            LunOption::RotationRate => "rotation",
            LunOption::PhysicalBlockSize => "pbs",
            LunOption::WriteCache => "wce",
            LunOption::Discard => "nodiscard",
            LunOption::PowerOnUa => "power-on-ua",
            other => other.field(),
        }
    }

    /// Whether the option's value is text (quoted in a configuration file).
    fn is_text(self) -> bool {
        !matches!(
            self,
            LunOption::BlockSize | LunOption::RotationRate | LunOption::PhysicalBlockSize
        )
    }
}

/// Which spelling an error is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// `--lun` keys (`bs`, `pbs`...), values bare.
    Cli,
    /// Configuration-file and `add_lun` field names, text values quoted.
    Field,
}

/// What a refused value breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Must be one of these spellings.
    OneOf(&'static [&'static str]),
    /// Must be 1 to `max` printable ASCII characters.
    Text {
        /// Longest length.
        max: usize,
    },
    /// Must be a hexadecimal number.
    Hex,
    /// A CD-ROM has 2048-byte blocks.
    CdromBlockSize,
    /// Must be 0, or a power of two from the logical block size to 2^15
    /// logical blocks.
    PhysicalBlockSize {
        /// The logical block size.
        block_size: u32,
    },
}

/// A LUN option value that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message(Spelling::Field))]
pub struct LunOptionError {
    /// The option.
    pub option: LunOption,
    /// The value refused, as given.
    pub value: String,
    /// What it breaks.
    pub rule: Rule,
}

impl LunOptionError {
    fn new(option: LunOption, value: impl ToString, rule: Rule) -> Self {
        LunOptionError {
            option,
            value: value.to_string(),
            rule,
        }
    }

    /// What is wrong and what to give instead, naming the option as
    /// `spelling` does.
    pub fn message(&self, spelling: Spelling) -> String {
        let (name, value) = match spelling {
            Spelling::Cli => (self.option.cli_key(), self.value.clone()),
            Spelling::Field if self.option.is_text() => {
                (self.option.field(), format!("{:?}", self.value))
            }
            Spelling::Field => (self.option.field(), self.value.clone()),
        };
        match &self.rule {
            Rule::OneOf(choices) => {
                let quote = spelling == Spelling::Field && self.option.is_text();
                let list: Vec<String> = choices
                    .iter()
                    .map(|c| {
                        if quote {
                            format!("{c:?}")
                        } else {
                            c.to_string()
                        }
                    })
                    .collect();
                let list = match list.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                };
                match spelling {
                    Spelling::Cli => format!("{name} must be {list}, not {value:?}"),
                    Spelling::Field => format!("{name} {value} is not supported: use {list}"),
                }
            }
            Rule::Text { max } => format!(
                "{name} {:?} must be 1 to {max} printable ASCII characters (SPC-5 §4.3.1)",
                self.value
            ),
            Rule::Hex => format!(
                "{name} {:?} is not a hexadecimal number (e.g. 0x6001405000000001)",
                self.value
            ),
            Rule::CdromBlockSize => format!(
                "a CD-ROM has {CDROM_BLOCK_SIZE}-byte blocks (MMC-6 §4.2), not {value}: \
                 remove {name} or set it to {CDROM_BLOCK_SIZE}"
            ),
            Rule::PhysicalBlockSize { block_size } => format!(
                "{name} {value} must be 0 or a power of two from the logical block size \
                 ({block_size}) to {} times it",
                1u32 << MAX_PBS_EXPONENT
            ),
        }
    }
}

/// A WWN written as text: hexadecimal, with or without `0x`.
pub fn parse_wwn(text: &str) -> Result<u64, LunOptionError> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(hex, 16).map_err(|_| LunOptionError::new(LunOption::Wwn, text, Rule::Hex))
}

/// What was asked for one LUN, option by option (`None`: not given, the
/// default applies). Built by the `--lun`, configuration-file and
/// `add_lun` adapters; [`LunRequest::resolve`] is the one place that turns
/// it into [`LunOptions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LunRequest {
    /// Image format.
    pub format: Option<ImageFormat>,
    /// Host caching.
    pub cache: Option<CacheMode>,
    /// READ/WRITE submission (never [`AioMode::Auto`]: leave it unset).
    pub aio: Option<AioMode>,
    /// Disk or CD-ROM.
    pub device_type: Option<DeviceType>,
    /// Serve read-only.
    pub read_only: Option<bool>,
    /// Logical block size.
    pub block_size: Option<u32>,
    /// RMB: removable medium.
    pub removable: Option<bool>,
    /// INQUIRY vendor.
    pub vendor: Option<String>,
    /// INQUIRY product.
    pub product: Option<String>,
    /// INQUIRY revision.
    pub revision: Option<String>,
    /// Unit serial number.
    pub serial: Option<String>,
    /// NAA WWN.
    pub wwn: Option<u64>,
    /// Medium rotation rate.
    pub rotation_rate: Option<u16>,
    /// Physical block size.
    pub physical_block_size: Option<u32>,
    /// Initial WCE.
    pub write_cache: Option<bool>,
    /// Thin provisioning when the image can punch holes.
    pub discard: Option<bool>,
    /// POWER ON unit attention at each connection.
    pub power_on_ua: Option<bool>,
}

impl LunRequest {
    /// Sets a text-valued option (`format`, `cache`, `aio`, `type`,
    /// `vendor`, `product`, `revision`, `serial`, `wwn`) from its spelling,
    /// the same in every adapter.
    pub fn set_text(&mut self, option: LunOption, text: &str) -> Result<(), LunOptionError> {
        let refuse = |rule| Err(LunOptionError::new(option, text, rule));
        match option {
            LunOption::Format => match ImageFormat::parse(text) {
                Some(f) => self.format = Some(f),
                None => return refuse(Rule::OneOf(&["raw", "qcow2", "auto"])),
            },
            LunOption::Cache => match CacheMode::parse(text) {
                Some(c) => self.cache = Some(c),
                None => return refuse(Rule::OneOf(&["writeback", "none"])),
            },
            LunOption::Aio => match AioMode::parse(text).filter(|a| *a != AioMode::Auto) {
                Some(a) => self.aio = Some(a),
                None => return refuse(Rule::OneOf(&["inline", "io_uring"])),
            },
            LunOption::DeviceType => match text {
                "disk" => self.device_type = Some(DeviceType::Disk),
                "cdrom" => self.device_type = Some(DeviceType::Cdrom),
                _ => return refuse(Rule::OneOf(&["disk", "cdrom"])),
            },
            LunOption::Vendor => self.vendor = Some(text.into()),
            LunOption::Product => self.product = Some(text.into()),
            LunOption::Revision => self.revision = Some(text.into()),
            LunOption::Serial => self.serial = Some(text.into()),
            LunOption::Wwn => self.wwn = Some(parse_wwn(text)?),
            _ => return refuse(Rule::OneOf(&[])),
        }
        Ok(())
    }

    /// The options to serve: [`LunOptions::served`] with every given field
    /// set, a CD-ROM settled (an explicit block size other than 2048 is
    /// refused rather than overridden), and [`LunOptions::check`] passed.
    pub fn resolve(&self) -> Result<LunOptions, LunOptionError> {
        let mut o = LunOptions::served();
        macro_rules! apply {
            ($($field:ident),*) => {
                $(if let Some(v) = &self.$field {
                    o.$field = v.clone();
                })*
            };
        }
        apply!(
            format,
            cache,
            aio,
            device_type,
            read_only,
            block_size,
            removable,
            vendor,
            product,
            revision,
            rotation_rate,
            physical_block_size,
            write_cache,
            discard,
            power_on_ua
        );
        o.serial = self.serial.clone();
        o.wwn = self.wwn;
        if o.device_type == DeviceType::Cdrom {
            if let Some(bs) = self.block_size.filter(|&bs| bs != CDROM_BLOCK_SIZE) {
                return Err(LunOptionError::new(
                    LunOption::BlockSize,
                    bs,
                    Rule::CdromBlockSize,
                ));
            }
            o.settle_device_type();
        }
        o.check()?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_rules() {
        LunOptions::default().check().unwrap();
        assert_eq!(
            LunRequest::default().resolve().unwrap(),
            LunOptions::served()
        );
    }

    #[test]
    fn text_fields_are_one_to_max_printable_characters() {
        for (option, max) in [
            (LunOption::Vendor, 8),
            (LunOption::Product, 16),
            (LunOption::Revision, 4),
            (LunOption::Serial, MAX_SERIAL_LEN),
        ] {
            for (text, ok) in [
                ("".to_string(), false),
                ("A".to_string(), true),
                ("B".repeat(max), true),
                ("C".repeat(max + 1), false),
                ("tab\t".to_string(), false),
                ("é".to_string(), false),
            ] {
                let mut r = LunRequest::default();
                r.set_text(option, &text).unwrap();
                assert_eq!(r.resolve().is_ok(), ok, "{option:?} {text:?}");
            }
        }
    }

    #[test]
    fn a_cdrom_is_settled_and_refuses_another_block_size() {
        let r = LunRequest {
            device_type: Some(DeviceType::Cdrom),
            read_only: Some(false),
            ..LunRequest::default()
        };
        let o = r.resolve().unwrap();
        assert_eq!(
            (o.block_size, o.read_only, o.removable, o.discard),
            (2048, true, true, false)
        );
        assert_eq!(o.product, "VIRTUAL-CDROM");
        let r = LunRequest {
            block_size: Some(512),
            ..r
        };
        let e = r.resolve().unwrap_err();
        assert_eq!(
            (e.option, &e.rule),
            (LunOption::BlockSize, &Rule::CdromBlockSize)
        );
        assert!(
            e.message(Spelling::Field).contains("remove block_size"),
            "{e}"
        );
        assert!(e.message(Spelling::Cli).contains("remove bs"), "{e}");
    }

    #[test]
    fn physical_block_size_is_a_power_of_two_from_the_logical_one() {
        for (lbs, pbs, ok) in [
            (512, 0, true),
            (512, 512, true),
            (512, 4096, true),
            (512, 512 << 15, true),
            (512, 512 << 16, false),
            (4096, 512, false),
            (512, 3000, false),
        ] {
            let r = LunRequest {
                block_size: Some(lbs),
                physical_block_size: Some(pbs),
                ..LunRequest::default()
            };
            assert_eq!(r.resolve().is_ok(), ok, "{lbs} {pbs}");
        }
    }

    #[test]
    fn messages_name_the_option_in_each_spelling() {
        let mut r = LunRequest::default();
        let e = r.set_text(LunOption::Cache, "unsafe").unwrap_err();
        assert_eq!(
            e.message(Spelling::Cli),
            "cache must be writeback or none, not \"unsafe\""
        );
        assert_eq!(
            e.message(Spelling::Field),
            "cache \"unsafe\" is not supported: use \"writeback\" or \"none\""
        );
        let e = LunRequest {
            block_size: Some(1000),
            ..LunRequest::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(
            e.message(Spelling::Field),
            "block_size 1000 is not supported: use 512, 1024, 2048 or 4096"
        );
        assert_eq!(
            e.message(Spelling::Cli),
            "bs must be 512, 1024, 2048 or 4096, not \"1000\""
        );
        let e = r.set_text(LunOption::Wwn, "0xZZ").unwrap_err();
        assert!(e.message(Spelling::Field).contains("hexadecimal"), "{e}");
        r.set_text(LunOption::Wwn, "6001405000000001").unwrap();
        assert_eq!(r.wwn, Some(0x6001_4050_0000_0001));
    }
}
