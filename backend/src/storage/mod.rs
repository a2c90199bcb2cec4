//! Backing stores for logical units. For now only raw image files
//! (regular files or block devices), see [`raw`].

pub mod raw;

pub use raw::{OpenError, RawImage};
