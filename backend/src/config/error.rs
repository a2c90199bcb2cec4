//! Why a configuration cannot be served.

use std::path::PathBuf;

/// A LUN specification or configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--lun` text that does not parse.
    #[error(
        "bad --lun '{spec}': {why} (expected TARGET:LUN=PATH[,OPTION...], e.g. 0:1=disk1.img,ro)"
    )]
    Syntax {
        /// What the user wrote.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two images at one address.
    #[error("target {target} LUN {lun} is given twice ({first} and {second})")]
    Duplicate {
        /// Target id.
        target: u8,
        /// LUN.
        lun: u16,
        /// First image.
        first: String,
        /// Second image.
        second: String,
    },
    /// One image file at two addresses (each LUN locks its image).
    #[error("image {path} is given twice (target {first_target} LUN {first_lun} and target {target} LUN {lun}): serve each image once, or use --config with shared = true on each (read-only LUNs, or one writable LUN per controller)")]
    ImageTwice {
        /// The image, as the second mention spelled it.
        path: String,
        /// Address of the first mention.
        first_target: u8,
        /// LUN of the first mention.
        first_lun: u16,
        /// Address of the second mention.
        target: u8,
        /// LUN of the second mention.
        lun: u16,
    },
    /// Nothing to serve.
    #[error("no image given: pass image paths or --lun TARGET:LUN=PATH")]
    Empty,
    /// An image could not be opened.
    #[error(transparent)]
    Open(#[from] crate::scsi::OpenError),
    /// The SCSI bus refused the LUN.
    #[error("{0}")]
    Bus(String),
    /// A configuration file error, with where it is.
    #[error("{}:{line}: {field}: {message}", .file.display())]
    File {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The field (or table) at fault.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The configuration file cannot be read.
    #[error("cannot read configuration file {}: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}
