//! `galley lock`: resolve every `[envs.NAME]` to exact wheels for the base image's
//! Python and platform, and record them in `galley.lock`.
//!
//! Requirements are resolved by uv (`uv pip compile --format pylock.toml`); an env may
//! instead name a PEP 751 `pylock.toml` or a hashed requirements file. Either way galley
//! chooses each package's wheel itself, by the tag order pip and uv use, so the lock
//! holds exactly one wheel per package. `galley build` reads only the lock, after
//! [`check_fresh`] has confirmed it still matches galley.toml and the base.
//!
//! ```no_run
//! # fn demo(manifest: &galley::manifest::Manifest, probe: &galley::base::Probe) -> Result<(), galley::lock::LockError> {
//! use galley::lock::{LOCK_FILE, LockOptions, Lockfile, lock_project};
//! let path = manifest.dir.join(LOCK_FILE);
//! let previous = Lockfile::read_optional(&path)?;
//! let lock = lock_project(manifest, probe, previous.as_ref(), &LockOptions::default(), &())?;
//! lock.write(&path)?;
//! # Ok(()) }
//! ```

mod hashed;
mod lockfile;
mod pylock;
mod tags;
mod uv;

use std::path::{Path, PathBuf};

use pep508_rs::PackageName;
use pep508_rs::pep440_rs::Version;

use crate::base::Probe;
use crate::http::{ClientOptions, HttpError};
use crate::manifest::{EnvName, EnvSource, EnvSpec, IndexUrl, Manifest, PythonVersion};
use crate::oci::Digest;
use crate::progress::Reporter;

pub use lockfile::{EnvInputs, LOCK_FILE, LockedBase, LockedEnv, LockedWheel, Lockfile};
pub use tags::{Target, TargetPlatform, WheelFilename};
pub use uv::UV_INSTALL_HINT;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("uv was not found ({looked}); {UV_INSTALL_HINT}")]
    UvMissing { looked: String },
    #[error("cannot run {}: {source}", program.display())]
    UvRun { program: PathBuf, source: std::io::Error },
    #[error("uv could not resolve env {env} ({status}):\n{stderr}{}", uv_hint(.stderr))]
    Uv { env: EnvName, status: String, stderr: String },
    #[error("env {env}: {package} {version} has no wheel that fits the image: it has {has}; the env needs {needs}")]
    NoCompatibleWheel { env: EnvName, package: PackageName, version: Version, has: String, needs: String },
    #[error("env {env}: {message}")]
    Source { env: EnvName, message: String },
    #[error("env {env}: cannot look up {package} on {index}: {message}")]
    Index { env: EnvName, package: String, index: IndexUrl, message: String },
    #[error(
        "the base image ({base}) has no Python interpreter (looked for python3 in /usr/local/bin and /usr/bin) and [envs.{env}] sets no `python`; \
         add Python to the base (e.g. `debian = {{ suite = \"bookworm\", packages = [\"python3\"] }}`) or set `python = \"3.11\"` in [envs.{env}]"
    )]
    NoPython { env: EnvName, base: String },
    #[error("[envs.{env}] `python` is {wanted}, but the base image's interpreter {executable} is Python {found}; change one of them")]
    PythonMismatch { env: EnvName, wanted: PythonVersion, executable: String, found: PythonVersion },
    #[error("cannot tell which C library the base image ({base}) has (no libc.so.6 or ld-musl found); pass --python-platform, e.g. x86_64-manylinux_2_36")]
    NoLibc { base: String },
    #[error("env {env}: cannot resolve for {platform}: {why}")]
    UnsupportedPlatform { env: EnvName, platform: String, why: String },
    #[error("galley.lock is out of date for env {env}: {reason}; run `galley lock` or `galley build --update-lock`")]
    Stale { env: String, reason: String },
    #[error("{} does not exist; run `galley lock` to create it", path.display())]
    Missing { path: PathBuf },
    #[error("{} cannot be read: {message}", path.display())]
    InvalidLock { path: PathBuf, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Http(#[from] HttpError),
}

fn uv_hint(stderr: &str) -> &'static str {
    if stderr.contains("No interpreter found") {
        "\nhint: uv needs some Python interpreter on this machine to run (any version); install python3, or let uv download one"
    } else {
        ""
    }
}

impl LockError {
    /// Whether the fault lies in the user's input (galley.toml, the files it names, the
    /// lock being stale) rather than in the machine or the network (exit code 2 vs 1).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Uv { stderr, .. } => stderr.contains("No solution found"),
            Self::NoCompatibleWheel { .. }
            | Self::Source { .. }
            | Self::NoPython { .. }
            | Self::PythonMismatch { .. }
            | Self::NoLibc { .. }
            | Self::UnsupportedPlatform { .. }
            | Self::Stale { .. }
            | Self::Missing { .. }
            | Self::InvalidLock { .. } => true,
            Self::UvMissing { .. } | Self::UvRun { .. } | Self::Index { .. } | Self::Read { .. } | Self::Write { .. } | Self::Http(_) => false,
        }
    }
}

/// How to lock.
#[derive(Clone, Debug, Default)]
pub struct LockOptions {
    /// Relock every env, ignoring earlier pins.
    pub upgrade: bool,
    /// Resolve for this Python instead of the base's (`--python-version`).
    pub python_version: Option<PythonVersion>,
    /// Resolve for this platform instead of the base's (`--python-platform`).
    pub python_platform: Option<TargetPlatform>,
    /// The uv binary; else `$GALLEY_UV`, else `uv` on PATH.
    pub uv: Option<PathBuf>,
    /// uv's cache directory (`--cache-dir`); uv's default when absent.
    pub uv_cache_dir: Option<PathBuf>,
    pub client: ClientOptions,
}

/// One package of a resolution, with the wheels it offers.
#[derive(Debug)]
struct Package {
    name: PackageName,
    version: Version,
    wheels: Vec<WheelChoice>,
    /// It has a source distribution and no wheel at all.
    sdist_only: bool,
}

#[derive(Debug)]
struct WheelChoice {
    filename: WheelFilename,
    url: String,
    sha256: Digest,
    size: Option<u64>,
}

/// Resolves every env of `manifest` for the base described by `probe`. Envs whose
/// inputs and target are unchanged since `previous` keep their entries as they are
/// (unless `options.upgrade`); a relocked env keeps its earlier pins where they fit.
pub fn lock_project(
    manifest: &Manifest,
    probe: &Probe,
    previous: Option<&Lockfile>,
    options: &LockOptions,
    reporter: &dyn Reporter,
) -> Result<Lockfile, LockError> {
    let mut lock = Lockfile { version: Lockfile::VERSION, base: LockedBase::of(probe), envs: Default::default() };
    let mut uv_binary: Option<PathBuf> = None;
    let mut agent: Option<ureq::Agent> = None;
    for (name, spec) in &manifest.envs {
        let inputs = env_inputs(spec)?;
        let target = target_for(spec, probe, options)?;
        let earlier = previous.and_then(|p| p.envs.get(name));
        if let Some(earlier) = earlier.filter(|e| !options.upgrade && e.inputs == inputs && target_holds(e, &target, options)) {
            reporter.on_note(&format!("env {name}: unchanged"));
            lock.envs.insert(name.clone(), earlier.clone());
            continue;
        }
        reporter.on_note(&format!("env {name}: resolving for Python {} on {}", target.python, target.platform));
        let packages = match &spec.source {
            EnvSource::Requirements(requirements) => {
                let uv = match &uv_binary {
                    Some(path) => path.clone(),
                    None => uv_binary.insert(uv::find(options)?).clone(),
                };
                let seed = earlier.filter(|_| !options.upgrade).map(|e| pylock::seed(&e.wheels));
                let text = uv::compile(&uv, spec, requirements, &target, seed, options)?;
                pylock::packages(&text, "uv's pylock.toml", &target).map_err(|message| LockError::Source { env: name.clone(), message })?
            }
            EnvSource::Pylock(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| LockError::Read { path: path.clone(), source })?;
                pylock::packages(&text, &path.display().to_string(), &target).map_err(|message| LockError::Source { env: name.clone(), message })?
            }
            EnvSource::RequirementsFile(path) => {
                let agent = match &agent {
                    Some(a) => a.clone(),
                    None => agent.insert(crate::http::agent(&options.client)?).clone(),
                };
                hashed::packages(path, spec, &target, &agent)?
            }
        };
        let wheels = choose_wheels(name, packages, &target)?;
        reporter.on_note(&format!("env {name}: {} wheels", wheels.len()));
        lock.envs.insert(name.clone(), LockedEnv { python: target.python, platform: target.platform, inputs, wheels });
    }
    Ok(lock)
}

/// Fails with [`LockError::Stale`] when `lock` no longer fits galley.toml or the base:
/// an env was added, removed or changed, or the base's Python or C library moved
/// away from what an env was locked for.
pub fn check_fresh(manifest: &Manifest, lock: &Lockfile, probe: &Probe) -> Result<(), LockError> {
    let stale = |env: &dyn std::fmt::Display, reason: String| LockError::Stale { env: env.to_string(), reason };
    if let Some(gone) = lock.envs.keys().find(|name| !manifest.envs.contains_key(*name)) {
        return Err(stale(gone, "it is no longer in galley.toml".into()));
    }
    for (name, spec) in &manifest.envs {
        let Some(locked) = lock.envs.get(name) else {
            return Err(stale(name, "it is not locked yet".into()));
        };
        if let Some(change) = locked.inputs.change(&env_inputs(spec)?) {
            return Err(stale(name, change.into()));
        }
        let target = target_for(spec, probe, &LockOptions::default())?;
        if let Some(reason) = target_mismatch(locked, &target) {
            return Err(stale(name, reason));
        }
    }
    Ok(())
}

/// The env's inputs as galley.toml and the files it names say now.
fn env_inputs(spec: &EnvSpec) -> Result<EnvInputs, LockError> {
    let digest = |path: &Path| -> Result<Digest, LockError> {
        std::fs::read(path).map(|bytes| Digest::of(&bytes)).map_err(|source| LockError::Read { path: path.to_owned(), source })
    };
    let mut inputs = EnvInputs {
        constraints: spec.constraints.as_deref().map(digest).transpose()?,
        extra_index: spec.extra_index.clone(),
        python: spec.python,
        ..EnvInputs::default()
    };
    match &spec.source {
        EnvSource::Requirements(requirements) => {
            inputs.requirements = requirements.clone();
            inputs.index = Some(spec.index_url());
        }
        EnvSource::Pylock(path) => inputs.pylock = Some(digest(path)?),
        EnvSource::RequirementsFile(path) => {
            inputs.requirements_file = Some(digest(path)?);
            inputs.index = Some(spec.index_url());
        }
    }
    Ok(inputs)
}

/// The Python and platform to lock `spec` for: the options' overrides, else the env's
/// `python`, else the base's interpreter; the base's architecture and C library.
fn target_for(spec: &EnvSpec, probe: &Probe, options: &LockOptions) -> Result<Target, LockError> {
    let found = probe.interpreter.as_ref();
    let python = match (options.python_version, spec.python, found) {
        (Some(forced), _, _) => forced,
        (None, Some(wanted), Some(interp)) if wanted.minor_version() != interp.version => {
            return Err(LockError::PythonMismatch {
                env: spec.name.clone(),
                wanted,
                executable: interp.executable.to_string(),
                found: interp.python_version(),
            });
        }
        // The base's patch level is more precise than "3.11".
        (None, Some(wanted), Some(interp)) => wanted.patch.map_or_else(|| interp.python_version(), |_| wanted),
        (None, Some(wanted), None) => wanted,
        (None, None, Some(interp)) => interp.python_version(),
        (None, None, None) => return Err(LockError::NoPython { env: spec.name.clone(), base: probe.description.clone() }),
    };
    let platform = match &options.python_platform {
        Some(forced) => forced.clone(),
        None => {
            let libc = probe.libc.ok_or_else(|| LockError::NoLibc { base: probe.description.clone() })?;
            TargetPlatform::for_image(&probe.platform, libc).map_err(|why| LockError::UnsupportedPlatform {
                env: spec.name.clone(),
                platform: probe.platform.to_string(),
                why,
            })?
        }
    };
    Ok(Target { python, platform })
}

/// Why an env locked as `locked` does not fit `target` (the base as it is now).
fn target_mismatch(locked: &LockedEnv, target: &Target) -> Option<String> {
    if locked.python.minor_version() != target.python.minor_version() {
        return Some(format!("it was locked for Python {}, the image has Python {}", locked.python, target.python));
    }
    if !locked.platform.runs_on(&target.platform) {
        return Some(format!("it was locked for {}, which does not run on the image's {}", locked.platform, target.platform));
    }
    None
}

/// Whether an earlier entry can stay: with an override it must match it exactly,
/// otherwise it must still run on the base.
fn target_holds(locked: &LockedEnv, target: &Target, options: &LockOptions) -> bool {
    let python_ok = if options.python_version.is_some() { locked.python == target.python } else { true };
    let platform_ok = if options.python_platform.is_some() { locked.platform == target.platform } else { true };
    python_ok && platform_ok && target_mismatch(locked, target).is_none()
}

/// One wheel per package, the best fit for the target; sorted by package name.
fn choose_wheels(env: &EnvName, packages: Vec<Package>, target: &Target) -> Result<Vec<LockedWheel>, LockError> {
    let ranks = target.tag_ranks();
    let mut wheels = Vec::with_capacity(packages.len());
    for package in packages {
        let Some(best) = tags::best_wheel(&ranks, &package.wheels, |w| &w.filename) else {
            let mut has: Vec<String> = package.wheels.iter().map(|w| w.filename.tag_string()).collect();
            has.sort();
            has.dedup();
            let has = match (has.is_empty(), package.sdist_only) {
                (true, true) => "only a source distribution".to_owned(),
                (true, false) => "no files".to_owned(),
                (false, sdist) => format!("wheels for {}{}", has.join(", "), if sdist { " and a source distribution" } else { "" }),
            };
            return Err(LockError::NoCompatibleWheel {
                env: env.clone(),
                package: package.name,
                version: package.version,
                has,
                needs: target.describe_tags(),
            });
        };
        wheels.push(LockedWheel {
            name: package.name,
            version: package.version,
            filename: best.filename.clone(),
            url: best.url.clone(),
            sha256: best.sha256.clone(),
            size: best.size,
        });
    }
    wheels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(wheels)
}
