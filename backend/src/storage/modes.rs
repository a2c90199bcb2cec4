//! How an image is served: its format, host caching (like QEMU's
//! `cache=`) and how READ/WRITE are submitted (`aio=`), with their
//! configuration spellings.

/// Which format to serve an image as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// Detect from the content (qcow2 magic, else raw).
    #[default]
    Auto,
    /// Raw bytes, whatever the content.
    Raw,
    /// qcow2 (refused when the file has no qcow2 magic).
    Qcow2,
}

impl ImageFormat {
    /// The configuration spelling: `"auto"`, `"raw"` or `"qcow2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Auto => "auto",
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    /// Parses the configuration spelling.
    pub fn parse(s: &str) -> Option<ImageFormat> {
        match s {
            "auto" => Some(ImageFormat::Auto),
            "raw" => Some(ImageFormat::Raw),
            "qcow2" => Some(ImageFormat::Qcow2),
            _ => None,
        }
    }
}

/// Host caching of a raw image (QEMU's `cache=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Through the page cache (a volatile write cache: WCE=1 by default).
    #[default]
    Writeback,
    /// `O_DIRECT`: around the page cache, straight to the device.
    None,
}

impl CacheMode {
    /// The configuration spelling: `"writeback"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Writeback => "writeback",
            CacheMode::None => "none",
        }
    }

    /// Parses the configuration spelling.
    pub fn parse(s: &str) -> Option<CacheMode> {
        match s {
            "writeback" => Some(CacheMode::Writeback),
            "none" => Some(CacheMode::None),
            _ => None,
        }
    }
}

/// How a logical unit's READ/WRITE data transfers are submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioMode {
    /// `io_uring` for `cache=none`, `inline` for `cache=writeback`.
    #[default]
    Auto,
    /// `preadv`/`pwritev` on the queue thread, one request at a time.
    Inline,
    /// Many requests in flight per queue through an io_uring (the
    /// transport falls back to inline, with a warning, where io_uring
    /// cannot be set up).
    IoUring,
}

impl AioMode {
    /// The configuration spelling: `"auto"`, `"inline"` or `"io_uring"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AioMode::Auto => "auto",
            AioMode::Inline => "inline",
            AioMode::IoUring => "io_uring",
        }
    }

    /// Parses the configuration spelling (`io-uring` is accepted too).
    pub fn parse(s: &str) -> Option<AioMode> {
        match s {
            "auto" => Some(AioMode::Auto),
            "inline" => Some(AioMode::Inline),
            "io_uring" | "io-uring" => Some(AioMode::IoUring),
            _ => None,
        }
    }

    /// The mode [`AioMode::Auto`] stands for with `cache` (measured on a
    /// 2-vCPU machine, see the README: io_uring wins with `O_DIRECT`,
    /// inline wins on page-cache hits).
    pub fn resolve(self, cache: CacheMode) -> AioMode {
        match (self, cache) {
            (AioMode::Auto, CacheMode::None) => AioMode::IoUring,
            (AioMode::Auto, CacheMode::Writeback) => AioMode::Inline,
            (m, _) => m,
        }
    }
}
