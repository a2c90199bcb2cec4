//! The APTPL state file (SPC-5 §5.14.5, Activate Persist Through Power
//! Loss): with APTPL=1, the registrations and the persistent reservation
//! are written to `<image>.pr` beside the image (JSON, see
//! [`super::state::Persisted`]) after every change and read back when the
//! image is opened again, after a restart or a crash.
//!
//! The file is replaced atomically: the new content goes to
//! `<image>.pr.tmp`, which is `fsync`ed and renamed over the old file, and
//! the directory is `fsync`ed, so a crash leaves either the old state or
//! the new one. A REGISTER with APTPL=0 removes the file (nothing persists).
//!
//! Registrations are restored for the I_T nexuses they were made on
//! (initiator TransportID + relative target port): a controller's
//! frontend that connects again after the restart is the same initiator
//! port (see [`crate::scsi::nexus`]) and finds its key and reservation.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::state::{Persisted, PrState};

/// Where the state of the LU over `image` is kept: `<image>.pr`.
pub fn state_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".pr");
    PathBuf::from(p)
}

/// The state in `path`, if the file exists and makes sense (a file that
/// does not is logged and ignored: the LU starts with no reservations).
pub fn load(path: &Path) -> Option<PrState> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the persistent reservation state; starting without it");
            return None;
        }
    };
    let state = serde_json::from_str::<Persisted>(&text)
        .ok()
        .and_then(|p| PrState::restored(&p));
    if state.is_none() {
        tracing::warn!(file = %path.display(), "the persistent reservation state file is not valid; starting without it");
    }
    state
}

/// Replaces `path` with `state` (atomically), or removes it for `None`.
pub fn store(path: &Path, state: Option<&Persisted>) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match state {
        None => match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        },
        Some(s) => {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let text = serde_json::to_string_pretty(s).map_err(io::Error::other)?;
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, path)?;
        }
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::nexus::InitiatorPort;
    use crate::scsi::reservation::state::{Persistent, Port, Registration};

    #[test]
    fn the_state_file_is_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let path = state_path(&image);
        assert_eq!(path, dir.path().join("disk.img.pr"));
        assert_eq!(load(&path), None);
        let mut s = PrState {
            aptpl: true,
            generation: 3,
            ..Default::default()
        };
        s.registrations.push(Registration {
            port: Port {
                initiator: InitiatorPort::vhost_user("a"),
                target_port: 1,
            },
            key: 0xABCD,
        });
        s.reservation = Some(Persistent {
            rtype: 5,
            holder: 0,
        });
        store(&path, Some(&s.persisted())).unwrap();
        assert_eq!(load(&path), Some(s.clone()));
        assert!(!dir.path().join("disk.img.pr.tmp").exists());
        s.generation = 4;
        store(&path, Some(&s.persisted())).unwrap();
        assert_eq!(load(&path).map(|x| x.generation), Some(4));
        store(&path, None).unwrap();
        assert!(!path.exists());
        store(&path, None).unwrap();
        // Garbage is ignored, not fatal.
        fs::write(&path, "{ not json").unwrap();
        assert_eq!(load(&path), None);
    }
}
