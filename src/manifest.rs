//! `galley.toml`: parsing with line/column errors, unknown keys with suggestions, and
//! validation into a [`Manifest`] whose fields are ready to use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::layer::LayerPath;
use crate::oci::{HealthCheck, Platform};
use crate::registry::{ImageRef, ReferenceError, Repository};

mod env;

pub use env::{DEFAULT_ENV_ROOT, DEFAULT_INDEX, EnvName, EnvSource, EnvSpec, IndexUrl, PythonVersion, Requirement};

pub const MANIFEST_FILE: &str = "galley.toml";

/// A problem with `galley.toml` or with what it points at. Always a usage error.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {field}: {message}", path.display())]
    Invalid { path: PathBuf, field: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    image: RawImage,
    base: RawBase,
    #[serde(default)]
    files: Vec<RawFiles>,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    envs: BTreeMap<String, env::RawEnv>,
    #[serde(default)]
    layers: env::RawLayers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawImage {
    name: String,
    version: Option<String>,
    tag: Option<String>,
    platforms: Option<Vec<String>>,
    source: Option<String>,
    description: Option<String>,
    registry: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    env_root: Option<String>,
    default_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBase {
    image: Option<String>,
    oci: Option<String>,
    archive: Option<String>,
    rootfs: Option<String>,
    debian: Option<RawDebian>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDebian {
    suite: String,
    #[serde(default)]
    packages: Vec<String>,
    variant: Option<String>,
    mirror: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFiles {
    src: String,
    dest: String,
    #[serde(default)]
    exclude: Vec<String>,
    mode: Option<String>,
    dir_mode: Option<String>,
    owner: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRuntime {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    volumes: Vec<String>,
    stop_signal: Option<String>,
    healthcheck: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealthCheck {
    cmd: RawCommand,
    interval: Option<String>,
    timeout: Option<String>,
    start_period: Option<String>,
    retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Exec(Vec<String>),
    Shell(String),
}

/// The validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The project directory: relative paths in the manifest start here.
    pub dir: PathBuf,
    /// The manifest file itself.
    pub path: PathBuf,
    pub image: Image,
    pub base: BaseSpec,
    pub files: Vec<FileSet>,
    pub runtime: Runtime,
    /// `[envs.NAME]`, by name.
    pub envs: BTreeMap<EnvName, EnvSpec>,
    /// `[layers] families`: family name → package globs, in the order written.
    pub families: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub version: Option<String>,
    /// The tag written to outputs: `tag`, else `version`, else `latest`.
    pub tag: String,
    pub platform: Platform,
    pub source: Option<String>,
    pub description: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// Where `galley push` and `build --push` send the image unless told otherwise.
    pub registry: Option<Repository>,
    /// Where envs live in the image (`[image] env-root`).
    pub env_root: LayerPath,
    /// The env whose `bin` comes first on PATH: `[image] default-env`, or the only env.
    pub default_env: Option<EnvName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSpec {
    /// An OCI image layout directory, optionally with a tag (`path:tag`).
    OciLayout { path: PathBuf, reference: Option<String> },
    /// A docker-archive (`docker save`) or OCI archive tar.
    Archive { path: PathBuf },
    /// A root filesystem as a directory or a (possibly compressed) tar.
    Rootfs { path: PathBuf },
    /// A Debian root filesystem made by mmdebstrap.
    Debian { suite: String, packages: Vec<String>, variant: String, mirror: Option<String> },
    /// An image in a registry, by tag and/or digest (`python:3.11-slim`, `ghcr.io/org/base@sha256:...`).
    Registry { reference: ImageRef },
}

#[derive(Debug, Clone)]
pub struct FileSet {
    /// Position in the manifest, from 1, for messages (`[[files]] #2`).
    pub number: usize,
    pub src: String,
    pub dest: String,
    pub exclude: Vec<String>,
    pub mode: ModeRule,
    pub dir_mode: ModeRule,
    pub owner: OwnerRule,
}

/// How a `[[files]]` set decides permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRule {
    /// 0755 for directories and executables, 0644 for other files: checkouts with
    /// different umasks give the same image.
    Normalized,
    /// The bits as they are in the project directory (`"preserve"`).
    Preserve,
    /// These bits (`"0640"`).
    Fixed(u32),
}

/// How a `[[files]]` set decides owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerRule {
    /// 0:0, as `COPY` does.
    Root,
    /// The numeric owners the files have in the project directory (`"preserve"`).
    Preserve,
    /// `uid[:gid]` or `user[:group]`, names from the base's /etc/passwd and /etc/group.
    Named(String),
}

impl FileSet {
    pub fn field(&self, name: &str) -> String {
        format!("[[files]] #{} `{name}`", self.number)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Runtime {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<LayerPathOrRoot>,
    pub user: Option<String>,
    /// `8000/tcp` form.
    pub ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<HealthCheck>,
}

/// An absolute directory in the image; `/` itself is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerPathOrRoot {
    Root,
    Path(LayerPath),
}

impl std::fmt::Display for LayerPathOrRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Root => f.write_str("/"),
            Self::Path(p) => p.fmt(f),
        }
    }
}

impl Manifest {
    /// Reads `galley.toml` from `dir` (or `dir` itself when it names a file).
    pub fn load(dir_or_file: &Path) -> Result<Self, ManifestError> {
        let path = if dir_or_file.is_dir() { dir_or_file.join(MANIFEST_FILE) } else { dir_or_file.to_owned() };
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path: path.clone(), source })?;
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Self::parse(&text, &path, &dir)
    }

    /// Parses and validates manifest text; `dir` resolves relative paths.
    pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
        Validator { path, dir }.validate(raw)
    }
}

fn syntax_error(text: &str, path: &Path, err: &toml::de::Error) -> ManifestError {
    let offset = err.span().map_or(0, |s| s.start);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let mut message = err.message().trim().to_owned();
    if let Some(hint) = unknown_field_hint(&message) {
        message.push_str(&hint);
    }
    ManifestError::Syntax { path: path.to_owned(), line, column, message }
}

/// serde says "unknown field `x`, expected one of `a`, `b`": add the closest key.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(unknown, c), *c))
        .min()
        .filter(|(distance, c)| *distance <= 3.max(c.len() / 3))?;
    Some(format!("; did you mean `{}`?", best.1))
}

struct Validator<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid { path: self.path.to_owned(), field: field.into(), message: message.into() }
    }

    fn validate(&self, mut raw: RawManifest) -> Result<Manifest, ManifestError> {
        let env_image = env::RawEnvImage { env_root: raw.image.env_root.take(), default_env: raw.image.default_env.take() };
        let envs = self.envs(raw.envs, env_image, raw.layers)?;
        let image = self.image(raw.image, envs.env_root, envs.default_env)?;
        let base = self.base(raw.base)?;
        let files = raw.files.into_iter().enumerate().map(|(i, f)| self.files(i + 1, f)).collect::<Result<_, _>>()?;
        let runtime = self.runtime(raw.runtime)?;
        Ok(Manifest {
            dir: self.dir.to_owned(),
            path: self.path.to_owned(),
            image,
            base,
            files,
            runtime,
            envs: envs.envs,
            families: envs.families,
        })
    }

    fn image(&self, raw: RawImage, env_root: LayerPath, default_env: Option<EnvName>) -> Result<Image, ManifestError> {
        if !is_repository_name(&raw.name) {
            return Err(self.invalid(
                "[image] `name`",
                format!("`{}` is not a valid image name; use lowercase letters, digits and `.`, `_`, `-`, `/` separators", raw.name),
            ));
        }
        for (field, value) in [("tag", &raw.tag), ("version", &raw.version)] {
            if let Some(v) = value.as_ref().filter(|v| !is_tag(v)) {
                return Err(self.invalid(
                    format!("[image] `{field}`"),
                    format!("`{v}` cannot be a tag: up to 128 of letters, digits, `_`, `.`, `-`, not starting with `.` or `-`"),
                ));
            }
        }
        let platforms = raw.platforms.unwrap_or_default();
        let platform = match platforms.as_slice() {
            [] => Platform::host(),
            [one] => one.parse().map_err(|e: String| self.invalid("[image] `platforms`", e))?,
            _ => {
                return Err(self.invalid(
                    "[image] `platforms`",
                    "galley builds one platform per image for now; list a single platform such as `linux/amd64`",
                ));
            }
        };
        let tag = raw.tag.or_else(|| raw.version.clone()).unwrap_or_else(|| "latest".to_owned());
        let registry = raw
            .registry
            .map(|r| r.parse().map_err(|e: ReferenceError| self.invalid("[image] `registry`", format!("{e}; write the repository to push to, e.g. \"ghcr.io/org/app\""))))
            .transpose()?;
        Ok(Image {
            name: raw.name,
            version: raw.version,
            tag,
            platform,
            source: raw.source,
            description: raw.description,
            annotations: raw.annotations,
            registry,
            env_root,
            default_env,
        })
    }

    fn existing_path(&self, field: &str, rel: &str) -> Result<PathBuf, ManifestError> {
        let path = self.dir.join(rel);
        if path.symlink_metadata().is_err() {
            return Err(self.invalid(field, format!("`{rel}` does not exist (looked for {})", path.display())));
        }
        Ok(path)
    }

    fn base(&self, raw: RawBase) -> Result<BaseSpec, ManifestError> {
        let given = [raw.image.is_some(), raw.oci.is_some(), raw.archive.is_some(), raw.rootfs.is_some(), raw.debian.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(self.invalid(
                "[base]",
                "set exactly one of `image = \"registry/repo:tag\"`, `oci = \"dir:tag\"`, `archive = \"image.tar\"`, `rootfs = \"dir-or-tar\"` or `debian = { suite = \"bookworm\", packages = [...] }`",
            ));
        }
        if let Some(image) = raw.image {
            let reference = image.parse().map_err(|e: ReferenceError| self.invalid("[base] `image`", e.to_string()))?;
            return Ok(BaseSpec::Registry { reference });
        }
        if let Some(oci) = raw.oci {
            let (rel, reference) = match oci.rsplit_once(':') {
                Some((p, r)) if !r.contains('/') && !p.is_empty() => (p.to_owned(), Some(r.to_owned())),
                _ => (oci.clone(), None),
            };
            let path = self.existing_path("[base] `oci`", &rel)?;
            if !path.join("index.json").is_file() {
                return Err(self.invalid("[base] `oci`", format!("{} is not an OCI image layout: it has no index.json", path.display())));
            }
            return Ok(BaseSpec::OciLayout { path, reference });
        }
        if let Some(archive) = raw.archive {
            let path = self.existing_path("[base] `archive`", &archive)?;
            return Ok(BaseSpec::Archive { path });
        }
        if let Some(rootfs) = raw.rootfs {
            let path = self.existing_path("[base] `rootfs`", &rootfs)?;
            return Ok(BaseSpec::Rootfs { path });
        }
        let debian = raw.debian.ok_or_else(|| self.invalid("[base]", "no base given"))?;
        let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.+_:=~".contains(&b));
        if !word(&debian.suite) {
            return Err(self.invalid("[base.debian] `suite`", format!("`{}` is not a Debian suite name", debian.suite)));
        }
        if let Some(bad) = debian.packages.iter().find(|p| !word(p)) {
            return Err(self.invalid("[base.debian] `packages`", format!("`{bad}` is not a Debian package name")));
        }
        let variant = debian.variant.unwrap_or_else(|| "minbase".to_owned());
        if !["extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "debootstrap", "standard"]
            .contains(&variant.as_str())
        {
            return Err(self.invalid("[base.debian] `variant`", format!("`{variant}` is not an mmdebstrap variant; use `minbase` or `apt`")));
        }
        let mut packages = debian.packages;
        packages.sort();
        packages.dedup();
        Ok(BaseSpec::Debian { suite: debian.suite, packages, variant, mirror: debian.mirror })
    }

    fn files(&self, number: usize, raw: RawFiles) -> Result<FileSet, ManifestError> {
        let field = |name: &str| format!("[[files]] #{number} `{name}`");
        if !raw.dest.starts_with('/') {
            return Err(self.invalid(field("dest"), format!("`{}` must be an absolute path in the image, e.g. `/app`", raw.dest)));
        }
        if raw.dest != "/" && LayerPath::new(&raw.dest).is_err() {
            return Err(self.invalid(field("dest"), format!("`{}` must not contain `..`", raw.dest)));
        }
        if raw.src.split('/').any(|c| c == "..") || raw.src.starts_with('/') {
            return Err(self.invalid(field("src"), format!("`{}` must be a path inside the project directory, without `..`", raw.src)));
        }
        if !is_glob(&raw.src) {
            self.existing_path(&field("src"), &raw.src)?;
        }
        for pattern in raw.exclude.iter().map(|p| p.trim_start_matches('!')) {
            globset::Glob::new(pattern).map_err(|e| self.invalid(field("exclude"), format!("`{pattern}`: {e}")))?;
        }
        let mode = |name: &str, v: Option<String>| match v.as_deref() {
            None => Ok(ModeRule::Normalized),
            Some("preserve") => Ok(ModeRule::Preserve),
            Some(m) => parse_mode(m).map(ModeRule::Fixed).ok_or_else(|| {
                self.invalid(field(name), format!("`{m}` is not an octal mode like \"0644\", nor \"preserve\""))
            }),
        };
        let owner = match raw.owner {
            None => OwnerRule::Root,
            Some(o) if o == "preserve" => OwnerRule::Preserve,
            Some(o) => OwnerRule::Named(o),
        };
        Ok(FileSet {
            number,
            mode: mode("mode", raw.mode)?,
            dir_mode: mode("dir-mode", raw.dir_mode)?,
            src: raw.src,
            dest: raw.dest,
            exclude: raw.exclude,
            owner,
        })
    }

    fn runtime(&self, raw: RawRuntime) -> Result<Runtime, ManifestError> {
        let workdir = match raw.workdir {
            None => None,
            Some(w) if w == "/" => Some(LayerPathOrRoot::Root),
            Some(w) => {
                let path = LayerPath::new(&w).ok().filter(|_| w.starts_with('/'));
                Some(LayerPathOrRoot::Path(path.ok_or_else(|| {
                    self.invalid("[runtime] `workdir`", format!("`{w}` must be an absolute path without `..`"))
                })?))
            }
        };
        if let Some(user) = &raw.user {
            let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            let valid = match user.split_once(':') {
                Some((u, g)) => ok(u) && ok(g),
                None => ok(user),
            };
            if !valid {
                return Err(self.invalid("[runtime] `user`", format!("`{user}` is not `user`, `uid`, `user:group` or `uid:gid`")));
            }
        }
        let ports = raw.ports.iter().map(|p| self.port(p)).collect::<Result<_, _>>()?;
        for key in raw.env.keys() {
            if key.is_empty() || key.contains('=') {
                return Err(self.invalid("[runtime] `env`", format!("`{key}` is not an environment variable name")));
            }
        }
        for v in &raw.volumes {
            if !v.starts_with('/') {
                return Err(self.invalid("[runtime] `volumes`", format!("`{v}` must be an absolute path")));
            }
        }
        let stop_signal = raw.stop_signal.map(|s| self.signal(&s)).transpose()?;
        let healthcheck = raw.healthcheck.map(|h| self.healthcheck(h)).transpose()?;
        for (field, list) in [("entrypoint", &raw.entrypoint), ("cmd", &raw.cmd)] {
            if list.as_ref().is_some_and(|l| l.first().is_some_and(String::is_empty)) {
                return Err(self.invalid(format!("[runtime] `{field}`"), "the program name must not be empty"));
            }
        }
        Ok(Runtime {
            entrypoint: raw.entrypoint,
            cmd: raw.cmd,
            env: raw.env,
            workdir,
            user: raw.user,
            ports,
            labels: raw.labels,
            volumes: raw.volumes,
            stop_signal,
            healthcheck,
        })
    }

    fn port(&self, raw: &RawPort) -> Result<String, ManifestError> {
        let text = match raw {
            RawPort::Number(n) => n.to_string(),
            RawPort::Text(s) => s.clone(),
        };
        let (number, proto) = text.split_once('/').unwrap_or((&text, "tcp"));
        match (number.parse::<u16>(), proto) {
            (Ok(n), "tcp" | "udp" | "sctp") if n > 0 => Ok(format!("{n}/{proto}")),
            _ => Err(self.invalid("[runtime] `ports`", format!("`{text}` is not a port like 8000 or \"53/udp\""))),
        }
    }

    fn signal(&self, raw: &str) -> Result<String, ManifestError> {
        const NAMES: &[&str] = &[
            "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM",
            "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO",
            "PWR", "SYS",
        ];
        let upper = raw.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if NAMES.contains(&name) {
            return Ok(format!("SIG{name}"));
        }
        if raw.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n)) {
            return Ok(raw.to_owned());
        }
        Err(self.invalid("[runtime] `stop-signal`", format!("`{raw}` is not a signal such as \"SIGTERM\" or \"SIGINT\"")))
    }

    fn healthcheck(&self, raw: RawHealthCheck) -> Result<HealthCheck, ManifestError> {
        let test = match raw.cmd {
            RawCommand::Exec(args) if !args.is_empty() => std::iter::once("CMD".to_owned()).chain(args).collect(),
            RawCommand::Shell(line) if !line.trim().is_empty() => vec!["CMD-SHELL".to_owned(), line],
            _ => return Err(self.invalid("[runtime.healthcheck] `cmd`", "give a command: [\"curl\", \"-f\", \"http://localhost/\"] or a shell line")),
        };
        let duration = |field: &str, value: Option<String>| {
            value
                .map(|v| {
                    parse_duration(&v).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).ok_or_else(|| {
                        self.invalid(format!("[runtime.healthcheck] `{field}`"), format!("`{v}` is not a duration like \"30s\", \"1m30s\" or \"500ms\""))
                    })
                })
                .transpose()
        };
        Ok(HealthCheck {
            test,
            interval: duration("interval", raw.interval)?,
            timeout: duration("timeout", raw.timeout)?,
            start_period: duration("start-period", raw.start_period)?,
            retries: raw.retries,
        })
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Whether `src` is a glob pattern rather than a path.
pub fn src_is_glob(src: &str) -> bool {
    is_glob(src)
}

fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// `30s`, `1m30s`, `500ms`, `2h`: Go-style durations as docker accepts them.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(value * scale).ok()?;
        rest = tail;
    }
    Some(total)
}

fn is_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|component| {
            !component.is_empty()
                && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && component.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && component.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !tag.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("rootfs.tar"), b"").unwrap();
        Manifest::parse(text, Path::new("galley.toml"), dir.path())
    }

    const MINIMAL: &str = "[image]\nname = \"hello\"\n[base]\nrootfs = \"rootfs.tar\"\n";

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse(MINIMAL).unwrap();
        assert_eq!(m.image.tag, "latest");
        assert_eq!(m.image.platform, Platform::host());
        assert!(matches!(m.base, BaseSpec::Rootfs { .. }));
    }

    #[test]
    fn malformed_toml_reports_line_and_column() {
        let err = parse("[image]\nname = \"x\"\nversion = 0.1.2\n").unwrap_err().to_string();
        assert!(err.starts_with("galley.toml:3:14: invalid float"), "{err}");
    }

    #[test]
    fn unknown_keys_suggest_the_closest_key() {
        let err = parse(&format!("{MINIMAL}[runtime]\nentrypiont = [\"x\"]\n")).unwrap_err().to_string();
        assert!(err.contains("galley.toml:6:1:"), "{err}");
        assert!(err.contains("unknown field `entrypiont`"), "{err}");
        assert!(err.ends_with("did you mean `entrypoint`?"), "{err}");
    }

    #[test]
    fn missing_paths_name_the_field() {
        let err = parse(&format!("{MINIMAL}[[files]]\nsrc = \"srcc\"\ndest = \"/app\"\n")).unwrap_err().to_string();
        assert!(err.contains("[[files]] #1 `src`: `srcc` does not exist"), "{err}");
        let err = parse("[image]\nname = \"x\"\n[base]\nrootfs = \"nope.tar\"\n").unwrap_err().to_string();
        assert!(err.contains("[base] `rootfs`: `nope.tar` does not exist"), "{err}");
    }

    #[test]
    fn registry_bases_are_references() {
        let m = parse("[image]\nname = \"x\"\n[base]\nimage = \"python:3.11-slim\"\n").unwrap();
        let BaseSpec::Registry { reference } = m.base else { panic!("{:?}", m.base) };
        assert_eq!(reference.to_string(), "docker.io/library/python:3.11-slim");
        let err = parse("[image]\nname = \"x\"\n[base]\nimage = \"Python:3\"\n").unwrap_err().to_string();
        assert!(err.contains("[base] `image`: `Python:3` is not an image reference"), "{err}");
        let err = parse("[image]\nname = \"x\"\n[base]\nimage = \"a\"\nrootfs = \"rootfs.tar\"\n").unwrap_err().to_string();
        assert!(err.contains("set exactly one of `image"), "{err}");
        let m = parse(&MINIMAL.replace("[base]", "registry = \"localhost:5000/team/app\"\n[base]")).unwrap();
        assert_eq!(m.image.registry.unwrap().to_string(), "localhost:5000/team/app");
        let err = parse(&MINIMAL.replace("[base]", "registry = \"ghcr.io/x:1\"\n[base]")).unwrap_err().to_string();
        assert!(err.contains("[image] `registry`") && err.contains("names a repository, not a tag"), "{err}");
    }

    #[test]
    fn base_needs_exactly_one_source() {
        let err = parse("[image]\nname = \"x\"\n[base]\n").unwrap_err().to_string();
        assert!(err.contains("set exactly one of"), "{err}");
    }

    #[test]
    fn runtime_fields_are_validated() {
        let bad = [
            ("workdir = \"relative\"", "`workdir`"),
            ("user = \"a b\"", "`user`"),
            ("ports = [70000]", "`ports`"),
            ("stop-signal = \"SIGNOPE\"", "`stop-signal`"),
            ("healthcheck = { cmd = [\"x\"], interval = \"soon\" }", "`interval`"),
        ];
        for (line, field) in bad {
            let err = parse(&format!("{MINIMAL}[runtime]\n{line}\n")).unwrap_err().to_string();
            assert!(err.contains(field), "{line}: {err}");
        }
        let m = parse(&format!(
            "{MINIMAL}[runtime]\nports = [8000, \"53/udp\"]\nstop-signal = \"term\"\nhealthcheck = {{ cmd = [\"curl\"], interval = \"1m30s\", retries = 3 }}\n"
        ))
        .unwrap();
        assert_eq!(m.runtime.ports, ["8000/tcp", "53/udp"]);
        assert_eq!(m.runtime.stop_signal.as_deref(), Some("SIGTERM"));
        let hc = m.runtime.healthcheck.unwrap();
        assert_eq!(hc.test, ["CMD", "curl"]);
        assert_eq!(hc.interval, Some(90_000_000_000));
    }

    #[test]
    fn names_tags_and_durations() {
        assert!(is_repository_name("team/app-1"));
        assert!(!is_repository_name("App"));
        assert!(!is_repository_name("a//b"));
        assert!(is_tag("0.4.2"));
        assert!(!is_tag("-x"));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h2m"), Some(Duration::from_secs(3720)));
        assert_eq!(parse_duration("5"), None);
        let err = parse("[image]\nname = \"Bad\"\n[base]\nrootfs = \"rootfs.tar\"\n").unwrap_err().to_string();
        assert!(err.contains("[image] `name`"), "{err}");
    }
}
