//! NBD URIs (the NBD project's `doc/uri.md`): `nbd://HOST[:PORT]/EXPORT`
//! over TCP (port 10809 by default, an IPv6 host in brackets) and
//! `nbd+unix:///EXPORT?socket=PATH` over a unix socket. The export name is
//! the path after the first `/`, percent-decoded; an empty one is the
//! server's default export.
//!
//! One query parameter of ours rides along: `timeout=SECONDS` (default
//! [`DEFAULT_TIMEOUT`]), how long a command may wait for the server before
//! it fails. TLS schemes (`nbds://`, `nbds+unix://`) are refused with a
//! message saying so.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The NBD port assigned by IANA.
pub const DEFAULT_PORT: u16 = 10809;

/// How long a command waits for the server by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` (a name, an IPv4 address or an IPv6 address without brackets).
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// The server.
    pub endpoint: Endpoint,
    /// The export name (decoded).
    pub export: String,
    /// Per-command timeout.
    pub timeout: Duration,
}

/// Why a string is not a usable NBD URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UriError(pub String);

/// Whether `s` names an NBD export rather than a file (its scheme is one
/// of the NBD URI schemes).
pub fn is_nbd_uri(s: &str) -> bool {
    [
        "nbd://",
        "nbd+unix://",
        "nbds://",
        "nbds+unix://",
        "nbd+tcp://",
    ]
    .iter()
    .any(|p| s.starts_with(p))
}

fn percent_decode(s: &str) -> Result<String, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UriError(format!("bad percent escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("{s:?} is not UTF-8 once decoded")))
}

impl std::str::FromStr for NbdUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<NbdUri, UriError> {
        let bad = |why: &str| UriError(format!("NBD URI {s}: {why}"));
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("missing scheme (nbd:// or nbd+unix://)"))?;
        let unix =
            match scheme {
                "nbd" | "nbd+tcp" => false,
                "nbd+unix" => true,
                "nbds" | "nbds+unix" | "nbds+tcp" => return Err(bad(
                    "TLS (nbds) is not supported: use nbd:// on a trusted network or nbd+unix://",
                )),
                _ => return Err(bad("unknown scheme (nbd:// or nbd+unix://)")),
            };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path)?;
        let mut socket = None;
        let mut timeout = DEFAULT_TIMEOUT;
        for kv in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|kv| !kv.is_empty())
        {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "socket" => socket = Some(PathBuf::from(percent_decode(v)?)),
                "timeout" => {
                    let secs: u64 = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=3600).contains(n))
                        .ok_or_else(|| bad("timeout must be 1..=3600 seconds"))?;
                    timeout = Duration::from_secs(secs);
                }
                // uri.md: clients ignore query parameters they do not know
                // (tls-certificates and the like belong to TLS, refused above).
                _ => {}
            }
        }
        let endpoint = if unix {
            if !authority.is_empty() {
                return Err(bad(
                    "nbd+unix:// takes no host: nbd+unix:///EXPORT?socket=PATH",
                ));
            }
            Endpoint::Unix(socket.ok_or_else(|| bad("nbd+unix:// needs ?socket=PATH"))?)
        } else {
            if authority.is_empty() {
                return Err(bad("missing host: nbd://HOST[:PORT]/EXPORT"));
            }
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed [ in the host"))?;
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if after.is_empty() => None,
                    None => return Err(bad("junk after ]")),
                };
                (h.to_string(), port)
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (authority.to_string(), None),
                }
            };
            let port = match port {
                Some(p) => p.parse().map_err(|_| bad("the port must be 1..=65535"))?,
                None => DEFAULT_PORT,
            };
            if port == 0 || host.is_empty() {
                return Err(bad("missing host or port 0"));
            }
            Endpoint::Tcp { host, port }
        };
        Ok(NbdUri {
            endpoint,
            export,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NbdUri, UriError> {
        s.parse()
    }

    #[test]
    fn tcp_uris_with_default_port_and_ipv6() {
        let u = parse("nbd://127.0.0.1:10810/disk").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "disk");
        assert_eq!(u.timeout, DEFAULT_TIMEOUT);
        let u = parse("nbd://example.com").unwrap();
        assert_eq!(u.export, "");
        assert_eq!(u.endpoint.to_string(), "example.com:10809");
        let u = parse("nbd://[::1]:7000/a%20b?timeout=5").unwrap();
        assert_eq!(u.endpoint.to_string(), "[::1]:7000");
        assert_eq!(u.export, "a b");
        assert_eq!(u.timeout, Duration::from_secs(5));
        assert_eq!(
            parse("nbd://[::1]/").unwrap().endpoint.to_string(),
            "[::1]:10809"
        );
    }

    #[test]
    fn unix_uris_need_a_socket_and_no_host() {
        let u = parse("nbd+unix:///exp?socket=/tmp/s.sock&timeout=2").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/tmp/s.sock".into()));
        assert_eq!(u.export, "exp");
        assert_eq!(u.timeout, Duration::from_secs(2));
        assert!(parse("nbd+unix:///exp").is_err());
        assert!(parse("nbd+unix://host/exp?socket=/s").is_err());
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        for s in [
            "nbd:///disk",
            "nbd://h:0/d",
            "nbd://h:99999/d",
            "nbd://h/d?timeout=0",
            "nbd://h/%zz",
            "http://h/d",
            "nbd://[::1/d",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
        let e = parse("nbds://h/d").unwrap_err();
        assert!(e.0.contains("TLS"), "{e}");
        assert!(is_nbd_uri("nbd://h/d") && is_nbd_uri("nbd+unix:///d?socket=/s"));
        assert!(!is_nbd_uri("/var/lib/disk.img") && !is_nbd_uri("nbd.img"));
    }
}
