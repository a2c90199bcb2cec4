//! The advisory lock that keeps an image to one server: `flock(2)` on the
//! image's file description, shared for a read-only LUN, exclusive for a
//! writable one, never waiting (`LOCK_NB`). QEMU does the same with OFD
//! locks.
//!
//! Written against libc rather than nix's `Flock`: that type owns the file
//! and unlocks only by being consumed, while a LUN that is fenced off must
//! release its lock in place (its descriptor stays open in bus snapshots
//! until the last one is dropped) and take it back if a switch fails.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A lock operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Shared (`LOCK_SH`): other readers may hold it too.
    Shared,
    /// Exclusive (`LOCK_EX`).
    Exclusive,
    /// Release (`LOCK_UN`).
    Unlock,
}

impl Lock {
    /// The lock a LUN holds on its image: shared when read-only.
    pub fn for_access(read_only: bool) -> Lock {
        if read_only {
            Lock::Shared
        } else {
            Lock::Exclusive
        }
    }
}

/// Applies `lock` to `file` without waiting: a conflicting lock held
/// elsewhere is `ErrorKind::WouldBlock`. Retried on `EINTR`.
pub fn set(file: &File, lock: Lock) -> io::Result<()> {
    let op = match lock {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
        Lock::Unlock => libc::LOCK_UN,
    } | libc::LOCK_NB;
    loop {
        // SAFETY: flock takes a descriptor borrowed from `file` (open for
        // the whole call) and an integer operation; it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_until_released_and_shared_shares() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = File::open(f.path()).unwrap();
        let b = File::open(f.path()).unwrap();
        set(&a, Lock::Exclusive).unwrap();
        let e = set(&b, Lock::Shared).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        set(&a, Lock::Unlock).unwrap();
        set(&b, Lock::Shared).unwrap();
        set(&a, Lock::Shared).unwrap();
        assert_eq!(
            set(&a, Lock::Exclusive).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
