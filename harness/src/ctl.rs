//! `vscsi ctl`: a client of vscsi-backend's JSON-RPC 2.0 control socket.
//!
//! One verb per method (`add-lun` sends `add_lun`...); the flags given become
//! the request's params. The result is printed as JSON (pretty, or one line
//! with `--json`); a JSON-RPC error is printed and exits 1.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Map, Value};

/// The control methods.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Controllers, targets and LUNs with their state.
    List,
    /// Add a LUN (--target --lun --image [--read-only] [--type] [--block-size] [--shared] [--fault]).
    AddLun,
    /// Remove a LUN: new commands refused, image flushed and closed.
    RemoveLun,
    /// Resize a LUN's image (--size, e.g. 48M; shrinking needs --force).
    ResizeLun,
    /// Serve a LUN read-only (--read-only true) or read-write (--read-only false).
    SetReadOnly,
    /// Load the medium of a removable LUN, or a new image (--image).
    InsertMedia,
    /// Eject the medium of a removable LUN (--force overrides PREVENT).
    EjectMedia,
    /// Inject faults on a LUN (--fault "latency=5ms,error=100+8").
    SetFault,
    /// Stop injecting faults on a LUN.
    ClearFault,
    /// Counters per controller and LUN.
    Stats,
    /// Stop the daemon.
    Shutdown,
}

impl Method {
    fn wire_name(self) -> &'static str {
        match self {
            Method::List => "list",
            Method::AddLun => "add_lun",
            Method::RemoveLun => "remove_lun",
            Method::ResizeLun => "resize_lun",
            Method::SetReadOnly => "set_read_only",
            Method::InsertMedia => "insert_media",
            Method::EjectMedia => "eject_media",
            Method::SetFault => "set_fault",
            Method::ClearFault => "clear_fault",
            Method::Stats => "stats",
            Method::Shutdown => "shutdown",
        }
    }
}

/// `vscsi ctl` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The daemon's control socket (vscsi-backend --control PATH).
    #[arg(long)]
    pub control: PathBuf,
    /// The method.
    #[arg(value_enum)]
    pub method: Method,
    /// Controller name (needed when the daemon has several).
    #[arg(long)]
    pub controller: Option<String>,
    /// Target id.
    #[arg(long)]
    pub target: Option<u8>,
    /// LUN.
    #[arg(long)]
    pub lun: Option<u16>,
    /// Image path (made absolute before it is sent).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// New size: bytes, or with a K/M/G/T suffix.
    #[arg(long)]
    pub size: Option<String>,
    /// Shrink (resize-lun), or eject despite PREVENT (eject-media).
    #[arg(long)]
    pub force: bool,
    /// add-lun: serve read-only; set-read-only: true or false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// add-lun: disk or cdrom.
    #[arg(long = "type")]
    pub device_type: Option<String>,
    /// add-lun: logical block size.
    #[arg(long)]
    pub block_size: Option<u32>,
    /// add-lun: the image is shared with other read-only LUNs.
    #[arg(long)]
    pub shared: bool,
    /// Fault spec (set-fault, add-lun).
    #[arg(long)]
    pub fault: Option<String>,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The params object the flags describe.
fn params(a: &Args) -> anyhow::Result<Value> {
    let mut p = Map::new();
    if let Some(c) = &a.controller {
        p.insert("controller".into(), json!(c));
    }
    if let Some(t) = a.target {
        p.insert("target".into(), json!(t));
    }
    if let Some(l) = a.lun {
        p.insert("lun".into(), json!(l));
    }
    if let Some(i) = &a.image {
        let abs = std::path::absolute(i).with_context(|| format!("{}", i.display()))?;
        p.insert("image".into(), json!(abs));
    }
    if let Some(s) = &a.size {
        match s.parse::<u64>() {
            Ok(n) => p.insert("size".into(), json!(n)),
            Err(_) => p.insert("size".into(), json!(s)),
        };
    }
    if a.force {
        p.insert("force".into(), json!(true));
    }
    if let Some(ro) = a.read_only {
        p.insert("read_only".into(), json!(ro));
    }
    if let Some(t) = &a.device_type {
        p.insert("type".into(), json!(t));
    }
    if let Some(b) = a.block_size {
        p.insert("block_size".into(), json!(b));
    }
    if a.shared {
        p.insert("shared".into(), json!(true));
    }
    if let Some(f) = &a.fault {
        p.insert("fault".into(), json!(f));
    }
    Ok(Value::Object(p))
}

/// The flags a method cannot do without (checked before anything is sent,
/// so the message names the flags, not the request's params).
fn required(m: Method) -> &'static [&'static str] {
    match m {
        Method::List | Method::Stats | Method::Shutdown => &[],
        Method::AddLun => &["--target", "--lun", "--image"],
        Method::ResizeLun => &["--target", "--lun", "--size"],
        Method::SetReadOnly => &["--target", "--lun", "--read-only"],
        Method::SetFault => &["--target", "--lun", "--fault"],
        Method::RemoveLun | Method::InsertMedia | Method::EjectMedia | Method::ClearFault => {
            &["--target", "--lun"]
        }
    }
}

fn given(a: &Args, flag: &str) -> bool {
    match flag {
        "--target" => a.target.is_some(),
        "--lun" => a.lun.is_some(),
        "--image" => a.image.is_some(),
        "--size" => a.size.is_some(),
        "--read-only" => a.read_only.is_some(),
        "--fault" => a.fault.is_some(),
        _ => true,
    }
}

/// A daemon message in the words of this command line: the request's
/// params (`read_only`, `force = true`...) become the flags that set them.
fn in_cli_words(message: &str) -> String {
    let mut m = message.to_string();
    // serde's "missing field `target`" / "unknown field `x`".
    while let Some(start) = m.find("field `") {
        let rest = &m[start + 7..];
        let Some(end) = rest.find('`') else { break };
        let flag = format!("flag --{}", rest[..end].replace('_', "-"));
        m.replace_range(start..start + 7 + end + 1, &flag);
    }
    for (param, flag) in [
        ("force = true", "--force"),
        ("read_only = true", "--read-only"),
        ("shared = true", "--shared"),
        ("block_size", "--block-size"),
        ("read_only", "--read-only"),
    ] {
        m = m.replace(param, flag);
    }
    m
}

/// Sends one request and returns the `result`, or the JSON-RPC error as an error.
pub fn call(control: &std::path::Path, method: &str, params: Value) -> anyhow::Result<Value> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(control) {
        Err(e) => anyhow::bail!("cannot use the control socket {}: {e}", control.display()),
        Ok(m) if !m.file_type().is_socket() => anyhow::bail!(
            "{} is not a unix socket; pass the path vscsi-backend was started with (--control)",
            control.display()
        ),
        Ok(_) => {}
    }
    let mut s = UnixStream::connect(control)
        .with_context(|| format!("connecting to the control socket {}", control.display()))?;
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let resp: Value = serde_json::from_str(&line).context("the daemon's answer is not JSON")?;
    if let Some(e) = resp.get("error") {
        anyhow::bail!(
            "{} (JSON-RPC error {})",
            in_cli_words(e.get("message").and_then(Value::as_str).unwrap_or("?")),
            e.get("code").and_then(Value::as_i64).unwrap_or(0)
        );
    }
    Ok(resp.get("result").cloned().unwrap_or(Value::Null))
}

/// Runs `vscsi ctl`.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let missing: Vec<&str> = required(a.method)
        .iter()
        .copied()
        .filter(|f| !given(&a, f))
        .collect();
    if !missing.is_empty() {
        crate::output::usage!(
            "{} needs {}",
            a.method.wire_name().replace('_', "-"),
            missing.join(", ")
        );
    }
    let p = params(&a)?;
    let result = call(&a.control, a.method.wire_name(), p)?;
    if a.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}
