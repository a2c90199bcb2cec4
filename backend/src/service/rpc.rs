//! JSON-RPC 2.0 over the control socket: one request per line (UTF-8,
//! `\n`-terminated, at most 1 MiB), one response line per request that has
//! an `id` (a notification, without `id`, is executed and not answered).
//! Batches are refused. Every call is an audit event (`target:
//! "vscsi::audit"`) naming who (the socket and the peer's uid/pid), what and
//! the result.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

pub(super) use super::error::{code, err, RpcError};
use super::Service;

/// Longest request line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// The peer of a control connection, for the audit log.
fn peer_of(stream: &UnixStream) -> String {
    match crate::peer::credentials(stream) {
        Some(cred) => format!("uid={} pid={}", cred.uid, cred.pid),
        None => "unknown peer".into(),
    }
}

/// The params of a method as `T`; absent params are `{}`.
pub(super) fn params<T: for<'de> Deserialize<'de>>(p: &Value) -> Result<T, RpcError> {
    let p = if p.is_null() { json!({}) } else { p.clone() };
    serde_json::from_value(p).map_err(|e| err(code::INVALID_PARAMS, format!("bad params: {e}")))
}

/// One method: its params in, its result out.
type Method = fn(&Service, &Value) -> Result<Value, RpcError>;

/// Every method of the control socket.
const METHODS: &[(&str, Method)] = &[
    ("list", Service::list),
    ("add_lun", Service::add_lun),
    ("remove_lun", Service::remove_lun),
    ("resize_lun", Service::resize_lun),
    ("set_read_only", Service::set_read_only),
    ("insert_media", Service::insert_media),
    ("eject_media", Service::eject_media),
    ("set_fault", Service::set_fault),
    ("clear_fault", Service::clear_fault),
    ("stats", Service::stats),
    ("shutdown", Service::shutdown_method),
];

impl Service {
    /// Serves the control socket until [`Service::shutdown`]: one thread
    /// per client connection.
    pub fn serve_control(self: &Arc<Self>, listener: UnixListener) {
        let socket = self
            .control
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        for stream in listener.incoming() {
            if self.stopping() {
                break;
            }
            let Ok(stream) = stream else { continue };
            let service = self.clone();
            let socket = socket.clone();
            std::thread::spawn(move || service.serve_client(stream, &socket));
        }
    }

    fn serve_client(&self, stream: UnixStream, socket: &str) {
        let who = format!("{socket} {}", peer_of(&stream));
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            let n = match (&mut reader).take(MAX_LINE as u64 + 1).read_line(&mut line) {
                Ok(n) => n,
                Err(e) => {
                    let resp = error_response(
                        Value::Null,
                        err(code::PARSE_ERROR, format!("unreadable request: {e}")),
                    );
                    let _ = writeln!(out, "{resp}");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            if line.len() > MAX_LINE {
                let resp = error_response(
                    Value::Null,
                    err(
                        code::INVALID_REQUEST,
                        "request longer than 1 MiB: send one request per line",
                    ),
                );
                let _ = writeln!(out, "{resp}");
                return;
            }
            if line.trim().is_empty() {
                continue;
            }
            if let Some(resp) = self.handle_line(&line, &who) {
                if writeln!(out, "{resp}").is_err() {
                    return;
                }
            }
            if self.stopping() {
                return;
            }
        }
    }

    /// Handles one request line; the response line, if the request wants one.
    pub fn handle_line(&self, line: &str, who: &str) -> Option<String> {
        let req: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return Some(error_response(
                    Value::Null,
                    err(
                        code::PARSE_ERROR,
                        format!("not JSON: {e}; send one JSON-RPC 2.0 request per line"),
                    ),
                ))
            }
        };
        let Some(obj) = req.as_object() else {
            return Some(error_response(
                Value::Null,
                err(
                    code::INVALID_REQUEST,
                    "send one JSON-RPC 2.0 request object per line (batches are not supported)",
                ),
            ));
        };
        let id = obj.get("id").cloned();
        let reply_id = id.clone().unwrap_or(Value::Null);
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Some(error_response(
                reply_id,
                err(code::INVALID_REQUEST, "\"jsonrpc\": \"2.0\" is required"),
            ));
        }
        let Some(method) = obj.get("method").and_then(Value::as_str) else {
            return Some(error_response(
                reply_id,
                err(code::INVALID_REQUEST, "\"method\" (a string) is required"),
            ));
        };
        let p = obj.get("params").cloned().unwrap_or(Value::Null);
        let result = self.call(method, &p);
        match &result {
            Ok(_) => {
                info!(target: "vscsi::audit", who, action = method, params = %p, result = "ok", "control")
            }
            Err(e) => {
                warn!(target: "vscsi::audit", who, action = method, params = %p, result = "error", code = e.code, error = %e.message, "control")
            }
        }
        id.as_ref()?;
        Some(match result {
            Ok(v) => json!({"jsonrpc": "2.0", "id": reply_id, "result": v}).to_string(),
            Err(e) => error_response(reply_id, e),
        })
    }

    /// Runs one method.
    pub fn call(&self, method: &str, p: &Value) -> Result<Value, RpcError> {
        let _one_at_a_time = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        match METHODS.iter().find(|(name, _)| *name == method) {
            Some((_, run)) => run(self, p),
            None => {
                let names: Vec<&str> = METHODS.iter().map(|(n, _)| *n).collect();
                Err(err(
                    code::METHOD_NOT_FOUND,
                    format!("no method {method:?}: use {}", names.join(", ")),
                ))
            }
        }
    }
}

fn error_response(id: Value, e: RpcError) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DaemonConfig, LunSpec};

    fn service() -> (tempfile::TempDir, Arc<Service>) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let cfg = DaemonConfig::from_cli(
            dir.path().join("s.sock"),
            vec![LunSpec::new(0, 0, img)],
            1,
            128,
        );
        let s = Arc::new(Service::build(&cfg).unwrap());
        (dir, s)
    }

    fn reply(s: &Service, line: &str) -> Value {
        serde_json::from_str(&s.handle_line(line, "test").expect("a response")).unwrap()
    }

    #[test]
    fn malformed_requests_get_their_json_rpc_error_codes() {
        let (_d, s) = service();
        for (line, code, id) in [
            ("not json", code::PARSE_ERROR, Value::Null),
            ("[1,2]", code::INVALID_REQUEST, Value::Null),
            (
                r#"{"id":1,"method":"list"}"#,
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a"}"#,
                code::INVALID_REQUEST,
                json!("a"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"frobnicate"}"#,
                code::METHOD_NOT_FOUND,
                json!(2),
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"list","params":{"x":1}}"#,
                code::INVALID_PARAMS,
                json!(3),
            ),
        ] {
            let r = reply(&s, line);
            assert_eq!(r["jsonrpc"], "2.0", "{line}");
            assert_eq!(r["id"], id, "{line}");
            assert_eq!(r["error"]["code"], code, "{line}: {r}");
            assert!(r.get("result").is_none(), "{line}");
        }
        let r = reply(&s, r#"{"jsonrpc":"2.0","id":2,"method":"frobnicate"}"#);
        let msg = r["error"]["message"].as_str().unwrap();
        for (name, _) in METHODS {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn a_result_echoes_the_id_and_a_notification_is_run_unanswered() {
        let (_d, s) = service();
        let r = reply(&s, r#"{"jsonrpc":"2.0","id":7,"method":"list"}"#);
        assert_eq!(r["id"], 7);
        assert_eq!(r["result"]["controllers"][0]["name"], "ctrl0");
        assert_eq!(
            r["result"]["controllers"][0]["luns"][0]["fault"],
            Value::Null
        );
        let none = s.handle_line(
            r#"{"jsonrpc":"2.0","method":"set_fault","params":{"target":0,"lun":0,"fault":"latency=1ms"}}"#,
            "test",
        );
        assert_eq!(none, None);
        let r = reply(&s, r#"{"jsonrpc":"2.0","id":8,"method":"list"}"#);
        assert_eq!(
            r["result"]["controllers"][0]["luns"][0]["fault"],
            "latency=1ms"
        );
    }

    #[test]
    fn the_socket_answers_line_by_line_and_refuses_an_overlong_line() {
        let (_d, s) = service();
        let (client, server) = UnixStream::pair().unwrap();
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.serve_client(server, "test"))
        };
        let mut w = client.try_clone().unwrap();
        let mut r = BufReader::new(client);
        writeln!(w, "\n{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"list\"}}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], 1, "{line}");
        let long = "x".repeat(MAX_LINE + 10);
        // The daemon stops reading (and closes) after 1 MiB: the rest of
        // the line may find the socket closed.
        let _ = writeln!(w, "{long}");
        line.clear();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], code::INVALID_REQUEST, "{line}");
        // The connection is closed after it (end of file, or a reset: the
        // daemon closed with the rest of the line unread).
        line.clear();
        assert!(matches!(r.read_line(&mut line), Ok(0) | Err(_)), "{line}");
        t.join().unwrap();
    }
}
