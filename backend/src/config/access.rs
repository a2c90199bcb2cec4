//! Who may connect to a socket the daemon creates: owner, group and mode,
//! as a configuration file writes them. Names are looked up through NSS
//! (`getpwnam_r` / `getgrnam_r`), so users and groups from LDAP or sssd
//! work as they do for `chown`.

use nix::unistd::{Group, User};
use serde::Deserialize;

/// A number or a name (owner, group), or an octal mode written as a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumOrText {
    Num(u64),
    Text(String),
}

/// Default socket mode: owner and group may connect (QEMU often runs as
/// another user of a shared group); never world-writable.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Mode of the control socket and of a unix metrics socket.
pub const CONTROL_SOCKET_MODE: u32 = 0o600;

/// Who may connect to a socket the daemon creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Owner uid to `chown` to (`None`: the daemon's).
    pub uid: Option<u32>,
    /// Group gid to `chown` to (`None`: the daemon's).
    pub gid: Option<u32>,
    /// Permission bits (never world-writable).
    pub mode: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            uid: None,
            gid: None,
            mode: DEFAULT_SOCKET_MODE,
        }
    }
}

/// Which name database an owner or group is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdKind {
    /// Users (`owner`).
    User,
    /// Groups (`group`).
    Group,
}

/// A user or group id: a number as is (also written as a string), or a
/// name looked up through NSS.
pub(super) fn lookup_id(kind: IdKind, v: &NumOrText) -> Result<u32, String> {
    let name = match v {
        NumOrText::Num(n) => {
            return u32::try_from(*n).map_err(|_| format!("{n} is not a valid id"))
        }
        NumOrText::Text(name) => name,
    };
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let (found, what) = match kind {
        IdKind::User => (
            User::from_name(name).map(|u| u.map(|u| u.uid.as_raw())),
            "user",
        ),
        IdKind::Group => (
            Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw())),
            "group",
        ),
    };
    match found {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(format!(
            "there is no {what} {name:?}: give an existing name or a number"
        )),
        Err(e) => Err(format!("looking up {what} {name:?} failed: {e}")),
    }
}

/// A socket mode: a TOML integer (`0o660`) or an octal string (`"0660"`).
/// World-writable modes are refused.
pub(super) fn mode_of(v: &NumOrText) -> Result<u32, String> {
    let mode = match v {
        NumOrText::Num(n) => u32::try_from(*n).map_err(|_| format!("mode {n} is too big"))?,
        NumOrText::Text(t) => {
            let digits = t.strip_prefix("0o").unwrap_or(t);
            u32::from_str_radix(digits, 8)
                .map_err(|_| format!("mode {t:?} is not an octal number (e.g. \"0660\")"))?
        }
    };
    if mode > 0o777 {
        return Err(format!(
            "mode {mode:o} has bits beyond 0777: give permission bits only"
        ));
    }
    if mode & 0o002 != 0 {
        return Err(format!(
            "mode {mode:04o} is world-writable: anyone could connect; use 0660 with a group, or 0600"
        ));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_unknown_names() {
        let root = NumOrText::Text("root".into());
        assert_eq!(lookup_id(IdKind::User, &root), Ok(0));
        assert_eq!(lookup_id(IdKind::Group, &root), Ok(0));
        assert_eq!(lookup_id(IdKind::User, &NumOrText::Num(1234)), Ok(1234));
        assert_eq!(
            lookup_id(IdKind::Group, &NumOrText::Text("4321".into())),
            Ok(4321)
        );
        let e = lookup_id(IdKind::User, &NumOrText::Text("no-such-user-x7".into())).unwrap_err();
        assert!(e.contains("no user \"no-such-user-x7\""), "{e}");
        assert!(lookup_id(IdKind::User, &NumOrText::Num(1 << 40)).is_err());
    }

    #[test]
    fn modes_are_octal_and_never_world_writable() {
        assert_eq!(mode_of(&NumOrText::Num(0o660)), Ok(0o660));
        assert_eq!(mode_of(&NumOrText::Text("0600".into())), Ok(0o600));
        assert_eq!(mode_of(&NumOrText::Text("0o640".into())), Ok(0o640));
        for bad in ["0666", "1777", "rw", "0o7777"] {
            assert!(mode_of(&NumOrText::Text(bad.into())).is_err(), "{bad}");
        }
    }
}
