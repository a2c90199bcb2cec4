//! The configuration file: its TOML model, [`load_file`] (every error names
//! the file, the line and the field) and the resolved form `--check-config`
//! prints ([`DaemonConfig::to_toml`]).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::access::{lookup_id, mode_of, IdKind, NumOrText, SocketAccess};
use super::error::ConfigError;
use super::lun_fields::LunFields;
use super::metrics_addr::check_metrics_addr;
use super::model::{ControllerConfig, DaemonConfig, LunConfig};
use crate::cpu_list::CpuList;
use crate::vhost::device::{
    check_max_queue_size, DEFAULT_MAX_QUEUE_SIZE, DEFAULT_REQUEST_QUEUES, FEATURE_NAMES,
    MAX_REQUEST_QUEUES, OPTIONAL_FEATURES,
};
use crate::vhost::device::{Poll, PollMode, DEFAULT_POLL};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    control: Option<Spanned<PathBuf>>,
    metrics: Option<Spanned<String>>,
    /// How request queues wait once they run dry: "adaptive" or "off".
    poll: Option<Spanned<String>>,
    /// Alone: a fixed spin of this many µs; with `poll = "adaptive"`: its cap.
    poll_us: Option<Spanned<u64>>,
    #[serde(default)]
    controller: Vec<Spanned<FileController>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileController {
    name: Option<Spanned<String>>,
    socket: Spanned<PathBuf>,
    owner: Option<Spanned<NumOrText>>,
    group: Option<Spanned<NumOrText>>,
    mode: Option<Spanned<NumOrText>>,
    queues: Option<Spanned<u16>>,
    queue_size: Option<Spanned<u32>>,
    max_sectors: Option<Spanned<u32>>,
    features: Option<Spanned<Vec<String>>>,
    cpus: Option<Spanned<String>>,
    #[serde(default)]
    lun: Vec<Spanned<LunFields>>,
}

#[derive(Serialize)]
struct ResolvedFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    control: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll: Option<&'static str>,
    poll_us: u64,
    controller: Vec<ResolvedController>,
}

#[derive(Serialize)]
struct ResolvedController {
    name: String,
    socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<u32>,
    mode: String,
    queues: u16,
    queue_size: u16,
    max_sectors: u32,
    features: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<String>,
    lun: Vec<LunFields>,
}

impl DaemonConfig {
    /// The resolved configuration as TOML (what `--check-config` prints):
    /// every default filled in, paths absolute where the file gave them
    /// relative.
    pub fn to_toml(&self) -> String {
        let (poll, poll_us) = self.poll.parts();
        let file = ResolvedFile {
            control: self.control.clone(),
            metrics: self.metrics.clone(),
            poll: poll.map(PollMode::name),
            poll_us,
            controller: self
                .controllers
                .iter()
                .map(|c| ResolvedController {
                    name: c.name.clone(),
                    socket: c.socket.clone(),
                    owner: c.access.uid,
                    group: c.access.gid,
                    mode: format!("{:04o}", c.access.mode),
                    queues: c.queues,
                    queue_size: c.queue_size,
                    max_sectors: c.max_sectors,
                    features: feature_names(c.features),
                    cpus: c.cpus.as_ref().map(|l| l.to_string()),
                    lun: c.luns.iter().map(LunFields::from_config).collect(),
                })
                .collect(),
        };
        toml::to_string(&file).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// 1-based line of byte `offset` in `src`.
fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads, checks and resolves a configuration file. Nothing is opened or
/// created: images are only checked to exist and hold a block.
pub fn load_file(file: &Path) -> Result<DaemonConfig, ConfigError> {
    let src = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse_file(file, &src)
}

/// One file being resolved: where errors point, and what relative paths
/// are relative to.
struct Reader<'a> {
    file: &'a Path,
    src: &'a str,
    base: Option<PathBuf>,
}

impl Reader<'_> {
    fn at(&self, span: Range<usize>, field: &str, message: String) -> ConfigError {
        ConfigError::File {
            file: self.file.to_owned(),
            line: line_of(self.src, span.start),
            field: field.to_string(),
            message,
        }
    }

    fn abs(&self, p: &Path) -> PathBuf {
        match &self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// A TOML syntax or type error, named by the key of the line it is on,
    /// else by the text at its span.
    fn syntax(&self, e: toml::de::Error) -> ConfigError {
        let src = self.src;
        let span = e.span().unwrap_or(0..0);
        let line_start = src
            .get(..span.start)
            .and_then(|b| b.rfind('\n'))
            .map_or(0, |i| i + 1);
        let key = src
            .get(line_start..)
            .and_then(|l| l.lines().next())
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        let field = key
            .or_else(|| {
                src.get(span.clone())
                    .map(|t| {
                        t.lines()
                            .next()
                            .unwrap_or("")
                            .trim()
                            .chars()
                            .take(40)
                            .collect::<String>()
                    })
                    .filter(|t| !t.is_empty())
            })
            .unwrap_or_else(|| "(syntax)".into());
        self.at(span, &field, e.message().trim().to_string())
    }

    /// The controller's name: given (1-64 of A-Z a-z 0-9 - _ .) or `ctrlN`.
    fn name(&self, i: usize, c: &FileController) -> Result<String, ConfigError> {
        let Some(n) = &c.name else {
            return Ok(format!("ctrl{i}"));
        };
        let name = n.get_ref();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        if !ok {
            return Err(self.at(
                n.span(),
                "name",
                format!("controller name {name:?} must be 1-64 of A-Z a-z 0-9 - _ ."),
            ));
        }
        Ok(name.clone())
    }

    fn access(&self, c: &FileController) -> Result<SocketAccess, ConfigError> {
        let mut access = SocketAccess::default();
        if let Some(m) = &c.mode {
            access.mode = mode_of(m.get_ref()).map_err(|msg| self.at(m.span(), "mode", msg))?;
        }
        if let Some(o) = &c.owner {
            access.uid = Some(
                lookup_id(IdKind::User, o.get_ref())
                    .map_err(|msg| self.at(o.span(), "owner", msg))?,
            );
        }
        if let Some(g) = &c.group {
            access.gid = Some(
                lookup_id(IdKind::Group, g.get_ref())
                    .map_err(|msg| self.at(g.span(), "group", msg))?,
            );
        }
        Ok(access)
    }

    /// Queues, queue size, max sectors and features, defaults filled in.
    fn limits(&self, c: &FileController) -> Result<(u16, u16, u32, u64), ConfigError> {
        let queues = match &c.queues {
            Some(q) if !(1..=MAX_REQUEST_QUEUES).contains(q.get_ref()) => {
                return Err(self.at(
                    q.span(),
                    "queues",
                    format!(
                        "{} request queues: use 1..={MAX_REQUEST_QUEUES}",
                        q.get_ref()
                    ),
                ))
            }
            Some(q) => *q.get_ref(),
            None => DEFAULT_REQUEST_QUEUES,
        };
        let queue_size = match &c.queue_size {
            Some(q) => check_max_queue_size(*q.get_ref())
                .map_err(|msg| self.at(q.span(), "queue_size", msg))?,
            None => DEFAULT_MAX_QUEUE_SIZE,
        };
        let max_sectors = match &c.max_sectors {
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.at(m.span(), "max_sectors", "must be at least 1".into()))
            }
            Some(m) => *m.get_ref(),
            None => 0xFFFF,
        };
        let features = match &c.features {
            None => OPTIONAL_FEATURES,
            Some(f) => {
                let mut mask = 0;
                for name in f.get_ref() {
                    let Some((_, bit)) = FEATURE_NAMES.iter().find(|(n, _)| n == name) else {
                        let known: Vec<_> = FEATURE_NAMES.iter().map(|(n, _)| *n).collect();
                        return Err(self.at(
                            f.span(),
                            "features",
                            format!("unknown feature '{name}' (known: {})", known.join(", ")),
                        ));
                    };
                    mask |= bit;
                }
                mask
            }
        };
        Ok((queues, queue_size, max_sectors, features))
    }

    /// The CPU list of the controller's request-queue workers, checked
    /// against the CPUs this process may run on.
    fn cpus(&self, c: &FileController) -> Result<Option<CpuList>, ConfigError> {
        let Some(s) = &c.cpus else { return Ok(None) };
        let list = s
            .get_ref()
            .parse::<CpuList>()
            .and_then(|l| l.check_allowed().map(|()| l))
            .map_err(|e| self.at(s.span(), "cpus", e.to_string()))?;
        Ok(Some(list))
    }

    /// The LUNs of controller `i`; `images` holds every image seen so far
    /// in the file.
    fn luns(
        &self,
        i: usize,
        c: &FileController,
        images: &mut Vec<SeenImage>,
    ) -> Result<Vec<LunConfig>, ConfigError> {
        let mut luns: Vec<(LunConfig, usize)> = Vec::new();
        for l in &c.lun {
            let span = l.span();
            let line = line_of(self.src, span.start);
            let fields = l.get_ref();
            let lc = fields
                .resolve(self.base.as_deref())
                .map_err(|(field, msg)| {
                    self.at(
                        span.clone(),
                        &format!(
                            "controller[{i}].lun (target {} lun {}).{field}",
                            fields.target, fields.lun
                        ),
                        msg,
                    )
                })?;
            let (t, n) = (lc.spec.target, lc.spec.lun);
            if let Some((_, first)) = luns
                .iter()
                .find(|(o, _)| (o.spec.target, o.spec.lun) == (t, n))
            {
                return Err(self.at(
                    span,
                    &format!("controller[{i}].lun"),
                    format!(
                        "target {t} LUN {n} is already defined at line {first}: give each LUN its own address"
                    ),
                ));
            }
            let canon =
                std::fs::canonicalize(&lc.spec.path).unwrap_or_else(|_| lc.spec.path.clone());
            for seen in images.iter().filter(|s| s.path == canon) {
                if let Err(msg) = seen.may_share_with(i, &lc) {
                    return Err(self.at(
                        span,
                        &format!("controller[{i}].lun (target {t} lun {n}).image"),
                        format!(
                            "image {} is also served at line {}: {msg}",
                            lc.spec.path.display(),
                            seen.line
                        ),
                    ));
                }
            }
            images.push(SeenImage {
                path: canon,
                line,
                controller: i,
                lun: lc.clone(),
            });
            luns.push((lc, line));
        }
        Ok(luns.into_iter().map(|(l, _)| l).collect())
    }
}

/// An image already served by a LUN of the file.
struct SeenImage {
    path: PathBuf,
    line: usize,
    controller: usize,
    lun: LunConfig,
}

impl SeenImage {
    /// Whether `other`, a LUN of controller `controller` on the same image,
    /// may serve it too. Both must say `shared = true`. Read-only LUNs may
    /// share an image freely (each is its own logical unit). A writable
    /// shared image is one logical unit reached through several
    /// controllers (multipath: one I_T nexus each): at most one LUN per
    /// controller, with the same options everywhere.
    fn may_share_with(&self, controller: usize, other: &LunConfig) -> Result<(), String> {
        if !(self.lun.shared && other.shared) {
            return Err("set shared = true on both (one logical unit on several controllers), or use another image".into());
        }
        let o = &other.spec.options;
        if self.lun.spec.options.read_only && o.read_only {
            return Ok(());
        }
        if controller == self.controller {
            return Err("a writable shared image is one logical unit: serve it once per controller (another controller may serve it too)".into());
        }
        if self.lun.spec.options != *o {
            return Err("a writable shared image is one logical unit: give it the same options on every controller".into());
        }
        Ok(())
    }
}

/// [`load_file`] on text already read; `file` names it in errors and
/// anchors relative paths.
pub fn parse_file(file: &Path, src: &str) -> Result<DaemonConfig, ConfigError> {
    let base = file.parent().map(|p| {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
    });
    let r = Reader { file, src, base };
    let raw: FileConfig = toml::from_str(src).map_err(|e| r.syntax(e))?;
    if raw.controller.is_empty() {
        return Err(r.at(
            0..0,
            "controller",
            "no [[controller]] table: add one with a socket path and its [[controller.lun]] tables"
                .into(),
        ));
    }
    let control = raw.control.as_ref().map(|c| r.abs(c.get_ref()));
    if let Some(m) = &raw.metrics {
        check_metrics_addr(m.get_ref()).map_err(|msg| r.at(m.span(), "metrics", msg))?;
    }
    let mode = match &raw.poll {
        Some(m) => Some(
            m.get_ref()
                .parse::<PollMode>()
                .map_err(|e| r.at(m.span(), "poll", e.to_string()))?,
        ),
        None => None,
    };
    let poll = Poll::resolve(
        mode,
        raw.poll_us.as_ref().map(|u| *u.get_ref()),
        DEFAULT_POLL,
    )
    .map_err(|e| {
        let span = raw
            .poll_us
            .as_ref()
            .map(Spanned::span)
            .or(raw.poll.as_ref().map(Spanned::span))
            .unwrap_or(0..0);
        r.at(span, "poll_us", e.to_string())
    })?;
    let mut out = DaemonConfig {
        control: control.clone(),
        metrics: raw.metrics.as_ref().map(|m| m.get_ref().clone()),
        poll,
        controllers: Vec::new(),
    };
    let mut images: Vec<SeenImage> = Vec::new();
    for (i, c) in raw.controller.iter().enumerate() {
        let cspan = c.span();
        let c = c.get_ref();
        let name = r.name(i, c)?;
        if out.controllers.iter().any(|o| o.name == name) {
            return Err(r.at(
                cspan,
                "name",
                format!(
                    "controller name {name:?} is used twice: give each controller its own name"
                ),
            ));
        }
        let socket = r.abs(c.socket.get_ref());
        if out.controllers.iter().any(|o| o.socket == socket) || control.as_ref() == Some(&socket) {
            return Err(r.at(
                c.socket.span(),
                "socket",
                format!("socket {} is used twice: give each controller (and the control socket) its own path", socket.display()),
            ));
        }
        let access = r.access(c)?;
        let (queues, queue_size, max_sectors, features) = r.limits(c)?;
        let luns = r.luns(i, c, &mut images)?;
        let cpus = r.cpus(c)?;
        out.controllers.push(ControllerConfig {
            name,
            socket,
            access,
            queues,
            queue_size,
            max_sectors,
            features,
            luns,
            cpus,
        });
    }
    Ok(out)
}

/// The configuration names of the optional features in `mask`.
pub(super) fn feature_names(mask: u64) -> Vec<String> {
    FEATURE_NAMES
        .iter()
        .filter(|(_, bit)| mask & bit != 0)
        .map(|(n, _)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_choose_the_features_they_offer() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let file = dir.path().join("vscsi.toml");
        let text = |features: &str| {
            format!(
                "[[controller]]\nsocket = \"{}\"\n{features}\n[[controller.lun]]\ntarget = 0\nlun = 0\nimage = \"{}\"\n",
                dir.path().join("s.sock").display(),
                img.display()
            )
        };
        let all = parse_file(&file, &text("")).unwrap();
        assert_eq!(all.controllers[0].features, OPTIONAL_FEATURES);
        let some = parse_file(&file, &text("features = [\"event_idx\", \"hotplug\"]")).unwrap();
        let mask = some.controllers[0].features;
        assert_eq!(feature_names(mask), vec!["event_idx", "hotplug"]);
        let err = parse_file(&file, &text("features = [\"packed\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vscsi.toml:3") && err.contains("unknown feature 'packed'"),
            "{err}"
        );
        assert!(some
            .to_toml()
            .contains("features = [\"event_idx\", \"hotplug\"]"));
    }

    #[test]
    fn a_writable_shared_image_is_one_lu_per_controller_with_the_same_options() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let file = dir.path().join("vscsi.toml");
        // Each (controller, lun, extra keys) is one LUN on image d.img.
        let text = |luns: &[(usize, u16, &str)]| {
            let mut t = String::new();
            for c in 0..2 {
                t.push_str(&format!(
                    "[[controller]]\nname = \"c{c}\"\nsocket = \"{}\"\n",
                    dir.path().join(format!("s{c}.sock")).display()
                ));
                for (_, lun, extra) in luns.iter().filter(|l| l.0 == c) {
                    t.push_str(&format!(
                        "[[controller.lun]]\ntarget = 0\nlun = {lun}\nimage = \"{}\"\n{extra}\n",
                        img.display()
                    ));
                }
            }
            parse_file(&file, &t).map_err(|e| e.to_string())
        };
        // Two controllers, writable, shared: one LU, two paths.
        let ok = text(&[(0, 0, "shared = true"), (1, 0, "shared = true")]).unwrap();
        assert!(ok.controllers.iter().all(|c| c.luns[0].shared));
        // Read-only ones may share freely, within one controller too.
        text(&[
            (0, 0, "shared = true\nread_only = true"),
            (0, 1, "shared = true\nread_only = true\nserial = \"X\""),
        ])
        .unwrap();
        for (luns, want) in [
            (
                vec![(0, 0, ""), (1, 0, "shared = true")],
                "set shared = true on both",
            ),
            (
                vec![(0, 0, "shared = true"), (0, 1, "shared = true")],
                "once per controller",
            ),
            (
                vec![
                    (0, 0, "shared = true"),
                    (1, 0, "shared = true\nserial = \"Y\""),
                ],
                "the same options on every controller",
            ),
        ] {
            let err = text(&luns).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
