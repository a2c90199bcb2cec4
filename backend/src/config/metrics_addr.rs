//! Where the Prometheus endpoint may listen: a unix socket or a loopback
//! TCP address, never a routable one (the metrics carry no authentication).

/// A metrics address: `unix:PATH`, or `HOST:PORT` on a loopback address.
pub fn check_metrics_addr(addr: &str) -> Result<(), String> {
    if let Some(p) = addr.strip_prefix("unix:") {
        return if p.is_empty() {
            Err("unix: needs a path, e.g. unix:/run/vscsi/metrics.sock".into())
        } else {
            Ok(())
        };
    }
    let parsed: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not HOST:PORT (e.g. 127.0.0.1:9420) or unix:PATH"))?;
    if !parsed.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: metrics are served on localhost only (127.0.0.1 or [::1]) or a unix socket"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unix_only() {
        for ok in ["127.0.0.1:9420", "[::1]:9000", "unix:/run/m.sock"] {
            assert_eq!(check_metrics_addr(ok), Ok(()), "{ok}");
        }
        for bad in ["0.0.0.0:9000", "10.0.0.1:80", "unix:", "localhost", "9420"] {
            assert!(check_metrics_addr(bad).is_err(), "{bad}");
        }
    }
}
