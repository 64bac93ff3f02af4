//! Python environments in a build: galley.lock (checked, or relocked on request) →
//! verified wheels in the store → installed trees per env → layers planned by family,
//! plus the config variables that put the default env first on PATH.

use std::path::PathBuf;

use crate::base::{self, Base, BaseError, Interpreter};
use crate::cache::Cache;
use crate::fetch::{self, FetchError, FetchOptions, FetchedWheel};
use crate::install::{self, EnvInstall, EnvLayout, InstallError, Installer};
use crate::lock::{self, LockError, LockOptions, Lockfile};
use crate::manifest::{EnvName, Manifest};
use crate::plan::{self, Families, PlanError, PlanOptions, PlannedLayer};
use crate::progress::{Reporter, TaskKind};

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{file}: [envs] need a Python interpreter, and the base image ({base}) has none; use a base with python3 (e.g. debian packages = [\"python3\"])")]
    NoInterpreter { file: PathBuf, base: String },
    #[error("{file}: [envs.{env}] is locked for Python {locked}, but the base image's interpreter is {found}; set `python` to match or use another base")]
    PythonMismatch { file: PathBuf, env: String, locked: String, found: String },
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Path(#[from] crate::layer::PathError),
}

impl EnvError {
    /// Whether the fault lies in the user's input (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::NoInterpreter { .. } | Self::PythonMismatch { .. } => true,
            Self::Base(e) => e.is_usage(),
            Self::Lock(e) => e.is_usage(),
            Self::Fetch(e) => e.is_usage(),
            Self::Install(e) => e.is_usage(),
            Self::Plan(e) => e.is_usage(),
            Self::Path(_) => false,
        }
    }
}

/// How a build treats galley.lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockMode {
    /// Use the lock as it is; fail when it is missing or stale (cargo's `--locked`).
    #[default]
    Locked,
    /// Relock envs whose inputs changed, write galley.lock, then build (`--update-lock`).
    Update,
}

/// What the envs add to an image.
#[derive(Debug, Default)]
pub struct EnvLayers {
    /// Family layers, then the remaining dependencies, then the venv skeletons.
    pub layers: Vec<PlannedLayer>,
    /// Config variables for the default env (`PATH`, `VIRTUAL_ENV`).
    pub env: Vec<(String, String)>,
    /// Every locked wheel, in the store.
    pub wheels: Vec<FetchedWheel>,
}

pub struct EnvOptions {
    pub lock: LockMode,
    pub offline: bool,
    /// Two packages of one env shipping one path with different content is an error.
    pub strict: bool,
    pub mtime: u64,
    /// Layers the envs may use at most (the image's budget less base and app layers).
    pub max_layers: usize,
}

/// Builds the layers of every env the manifest declares (none when it declares none).
pub fn env_layers(
    manifest: &Manifest,
    cache: &Cache,
    base: &Base,
    options: &EnvOptions,
    reporter: &dyn Reporter,
) -> Result<EnvLayers, EnvError> {
    let Some(first) = manifest.envs.keys().next() else { return Ok(EnvLayers::default()) };
    let default = manifest.image.default_env.clone().unwrap_or_else(|| first.clone());
    let probe = base::probe(base, cache)?;
    let lock = match options.lock {
        LockMode::Update => lock::update_lock_file(manifest, &probe, &LockOptions::default(), reporter)?.0,
        LockMode::Locked => Lockfile::read(&manifest.dir.join(lock::LOCK_FILE))?,
    };
    lock::check_fresh(manifest, &lock, &probe)?;
    let fetch_options = FetchOptions { offline: options.offline, ..FetchOptions::default() };
    let wheels = fetch::fetch(cache, &lock.wheels(&[]), &fetch_options, reporter)?;
    let interpreter = probe.interpreter.clone().ok_or_else(|| EnvError::NoInterpreter {
        file: manifest.path.clone(),
        base: probe.description.clone(),
    })?;

    // The default env first: the planner lists it first in envs.json and on PATH.
    let mut names: Vec<&EnvName> = manifest.envs.keys().collect();
    names.sort_by_key(|name| **name != default);

    let installer = Installer::new(cache, reporter);
    let mut installs: Vec<EnvInstall> = Vec::new();
    for name in names {
        let layout = env_layout(manifest, &lock, name, &interpreter)?;
        let files: Vec<_> = lock
            .wheels(std::slice::from_ref(name))
            .iter()
            .filter_map(|w| wheels.iter().find(|f| f.wheel.sha256 == w.sha256))
            .map(FetchedWheel::wheel_file)
            .collect();
        let task = reporter.on_task_start(TaskKind::Install, &format!("env {name} ({} wheels)", files.len()), None);
        let trees = installer.install_all(&files, &layout);
        reporter.on_task_done(task);
        installs.push(install::resolve_env(layout, trees?, options.strict, reporter)?);
    }

    let families = Families::new(&manifest.families)?;
    let plan_options = PlanOptions {
        mtime: options.mtime,
        max_layers: options.max_layers,
        envs_json: Some(envs_json_path(manifest)?),
        default_env: Some(default.to_string()),
        ..PlanOptions::default()
    };
    let layers = plan::plan_env_layers(&installs, &families, &plan_options)?;
    let base_path = base.config.config.env.iter().flatten().find_map(|kv| kv.strip_prefix("PATH="));
    let env = install::runtime_env(&installs[0].layout, base_path);
    Ok(EnvLayers { layers, env, wheels })
}

/// The env's prefix under the env root, after checking that the interpreter the base
/// has is the Python the env was locked for.
fn env_layout(manifest: &Manifest, lock: &Lockfile, name: &EnvName, interpreter: &Interpreter) -> Result<EnvLayout, EnvError> {
    if let Some(locked) = lock.envs.get(name) {
        let (major, minor) = interpreter.version;
        if (locked.python.major, locked.python.minor) != (major, minor) {
            return Err(EnvError::PythonMismatch {
                file: manifest.path.clone(),
                env: name.to_string(),
                locked: locked.python.to_string(),
                found: format!("{major}.{minor}"),
            });
        }
    }
    let prefix = manifest.image.env_root.join(name.as_str())?;
    Ok(EnvLayout::new(name.to_string(), prefix, interpreter.clone()))
}

/// `envs.json` beside the env root: `/opt/galley/envs.json` for the default root.
fn envs_json_path(manifest: &Manifest) -> Result<crate::layer::LayerPath, EnvError> {
    let root = &manifest.image.env_root;
    Ok(match root.parent() {
        Some(parent) => parent.join("envs.json")?,
        None => crate::layer::LayerPath::new("envs.json")?,
    })
}
