//! From a configuration file or command-line LUN specifications to the
//! daemon's controllers and their [`ScsiBus`](crate::scsi::ScsiBus)es.
//!
//! - [`lun_spec`]: positional images and `--lun TARGET:LUN=PATH[,OPTION...]`
//!   (one [`ControllerConfig`]), and the bus they make.
//! - [`lun_fields`]: a `[[controller.lun]]` table or `add_lun` params.
//! - [`file`]: the TOML file ([`load_file`]; every error names the file, the
//!   line and the field) and its resolved form.
//! - [`access`]: socket owner, group and mode; [`metrics_addr`]: where the
//!   Prometheus endpoint may listen.
//!
//! The LUN options' rules are in [`crate::lun_options`], shared by all of
//! them. Every image is opened (and locked) before any socket exists, so a
//! bad image stops the daemon with a message naming it.

pub mod access;
mod error;
pub mod file;
pub mod lun_fields;
pub mod lun_spec;
pub mod metrics_addr;
mod model;

pub use access::{SocketAccess, CONTROL_SOCKET_MODE, DEFAULT_SOCKET_MODE};
pub use error::ConfigError;
pub use file::{load_file, parse_file};
pub use lun_fields::{LunFields, Wwn};
pub use lun_spec::{build_bus, collect_specs, LunSpec, LUN_OPTIONS_HELP};
pub use metrics_addr::check_metrics_addr;
pub use model::{summary, ControllerConfig, DaemonConfig, LunConfig};

use crate::scsi::LunOptions;

/// The options a LUN the daemon serves starts from ([`LunOptions::served`]).
pub fn served_defaults() -> LunOptions {
    LunOptions::served()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{AioMode, CacheMode};

    #[test]
    fn cache_and_aio_options() {
        let s: LunSpec = "0:0=a.img".parse().unwrap();
        assert_eq!(s.options.cache, CacheMode::Writeback);
        assert_eq!(s.options.aio, AioMode::Auto);
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::Inline);
        let s: LunSpec = "0:0=a.img,cache=none".parse().unwrap();
        assert_eq!(s.options.cache, CacheMode::None);
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::IoUring);
        let s: LunSpec = "0:0=a.img,cache=none,aio=inline".parse().unwrap();
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::Inline);
        let s: LunSpec = "0:0=a.img,cache=writeback,aio=io_uring".parse().unwrap();
        assert_eq!(s.options.aio.resolve(s.options.cache), AioMode::IoUring);
        for (bad, why) in [
            ("0:0=a.img,cache=unsafe", "cache must be writeback or none"),
            ("0:0=a.img,cache", "cache must be writeback or none"),
            ("0:0=a.img,aio=threads", "aio must be inline or io_uring"),
            ("0:0=a.img,aio=auto", "aio must be inline or io_uring"),
        ] {
            let err = bad.parse::<LunSpec>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }

        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let file = dir.path().join("vscsi.toml");
        let text = |lun: &str| {
            format!(
                "[[controller]]\nsocket = \"{}\"\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n{lun}\n",
                dir.path().join("s.sock").display(),
                img.display()
            )
        };
        let c = parse_file(&file, &text("cache = \"none\"")).unwrap();
        let printed = c.to_toml();
        assert!(
            printed.contains("cache = \"none\"") && printed.contains("aio = \"io_uring\""),
            "{printed}"
        );
        let c = parse_file(&file, &text("")).unwrap();
        let printed = c.to_toml();
        assert!(
            printed.contains("cache = \"writeback\"") && printed.contains("aio = \"inline\""),
            "{printed}"
        );
        let err = parse_file(&file, &text("cache = \"directsync\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vscsi.toml:") && err.contains(".cache") && err.contains("\"none\""),
            "{err}"
        );
        let err = parse_file(&file, &text("aio = \"native\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains(".aio") && err.contains("io_uring"), "{err}");
    }
}
