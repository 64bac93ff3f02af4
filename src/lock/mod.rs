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
use crate::install::WheelFilename;
use crate::manifest::{EnvName, EnvSource, EnvSpec, IndexUrl, Manifest, PythonVersion};
use crate::oci::Digest;
use crate::progress::Reporter;

pub use lockfile::{EnvInputs, LOCK_FILE, LockedBase, LockedEnv, LockedWheel, Lockfile};
pub use tags::{Target, TargetPlatform};
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
    #[error("{} does not exist; run `galley lock` to create it, or `galley build --update-lock`", path.display())]
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

/// `galley lock`: relocks what changed into `galley.lock` beside galley.toml. Returns
/// the lock and whether the file changed.
pub fn update_lock_file(
    manifest: &Manifest,
    probe: &Probe,
    options: &LockOptions,
    reporter: &dyn Reporter,
) -> Result<(Lockfile, bool), LockError> {
    let path = manifest.dir.join(LOCK_FILE);
    let previous = Lockfile::read_optional(&path)?;
    let lock = lock_project(manifest, probe, previous.as_ref(), options, reporter)?;
    let changed = lock.write(&path)?;
    Ok((lock, changed))
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
            let mut has: Vec<String> = package.wheels.iter().map(|w| tags::tag_string(&w.filename)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{Interpreter, Libc};
    use crate::layer::LayerPath;
    use crate::oci::Platform;
    use std::sync::Mutex;

    /// Keeps the notes a lock writes, to tell kept envs from relocked ones.
    #[derive(Default)]
    struct Notes(Mutex<Vec<String>>);

    impl Reporter for Notes {
        fn on_note(&self, message: &str) {
            self.0.lock().unwrap().push(message.to_owned());
        }
    }

    impl Notes {
        fn has(&self, text: &str) -> bool {
            self.0.lock().unwrap().iter().any(|n| n.contains(text))
        }
    }

    /// A project directory with galley.toml (Debian base, `envs` appended; lines before
    /// the first table go into `[image]`) and extra files.
    fn project(envs: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let (image, envs) = envs.split_at(envs.find('[').unwrap_or(envs.len()));
        let manifest = format!("[image]\nname = \"app\"\n{image}[base]\ndebian = {{ suite = \"bookworm\", packages = [\"python3\"] }}\n{envs}");
        std::fs::write(dir.path().join("galley.toml"), &manifest).unwrap();
        let m = Manifest::load(dir.path()).unwrap();
        (dir, m)
    }

    fn reload(dir: &tempfile::TempDir) -> Manifest {
        Manifest::load(dir.path()).unwrap()
    }

    /// What bookworm's probe says, without building the base (for tests that need no uv).
    fn bookworm_probe() -> Probe {
        Probe {
            identity: Digest::of(b"bookworm"),
            description: "debian bookworm".into(),
            platform: Platform { architecture: "amd64".into(), os: "linux".into(), variant: None },
            interpreter: Some(Interpreter { executable: LayerPath::new("usr/bin/python3.11").unwrap(), version: (3, 11), patch: Some(2) }),
            libc: Some(Libc::Glibc { major: 2, minor: 36 }),
        }
    }

    fn options() -> LockOptions {
        LockOptions { uv_cache_dir: Some(crate::test_cache_dir().join("uv")), ..LockOptions::default() }
    }

    fn env(name: &str) -> EnvName {
        name.parse().unwrap()
    }

    const SF_ANY: &str = "8ba81ae3a89fd5ab3bef8a8eb481fbbe794e806309675a89b4df48b8d31908a8";
    const SF_LINUX: &str = "1e38bac1853412871318e82a1ba69a8be677619b56025bbfcccdb41b6cafe82d";
    const SIX: &str = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274";

    fn soundfile_pylock(extra: &str) -> String {
        format!(
            r#"lock-version = "1.0"
created-by = "hand"
[[packages]]
name = "soundfile"
version = "0.14.0"
wheels = [
  {{ url = "https://files.pythonhosted.org/packages/b1/d1/5e338af9ca6ed0786cd5bb03f6d60de1c325728c1189014f3b59aae7403c/soundfile-0.14.0-py2.py3-none-any.whl", size = 26799, hashes = {{ sha256 = "{SF_ANY}" }} }},
  {{ url = "https://files.pythonhosted.org/packages/7b/a2/70fd4432b924684c372df8b0a45708c36c057ef3596c9eb53e0a806b980b/soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl", size = 1315963, hashes = {{ sha256 = "{SF_LINUX}" }} }},
  {{ url = "https://files.pythonhosted.org/packages/x/soundfile-0.14.0-py2.py3-none-macosx_11_0_arm64.whl", size = 1, hashes = {{ sha256 = "{SIX}" }} }},
]
{extra}"#
        )
    }

    #[test]
    fn locks_numpy_and_soundfile_for_the_bookworm_base() {
        let (cache, base) = crate::base::probe::bookworm_python_base();
        let probe = crate::base::probe(&base, &cache).unwrap();
        let (_dir, manifest) = project("[envs.core]\nrequirements = [\"numpy\", \"soundfile\"]\n", &[]);
        let lock = lock_project(&manifest, &probe, None, &options(), &()).unwrap();
        let core = &lock.envs[&env("core")];
        assert_eq!(core.python.minor_version(), (3, 11));
        assert!(core.python.patch.is_some());
        assert_eq!(core.platform.to_string(), "x86_64-manylinux_2_36");
        assert_eq!(lock.base.libc, Some(Libc::Glibc { major: 2, minor: 36 }));
        assert_eq!(lock.base.interpreter.as_ref().map(ToString::to_string).as_deref(), Some("/usr/bin/python3.11"));
        let names: Vec<&str> = core.wheels.iter().map(|w| w.name.as_ref()).collect();
        for wanted in ["cffi", "numpy", "pycparser", "soundfile"] {
            assert!(names.contains(&wanted), "{names:?}");
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let ranks = Target { python: core.python, platform: core.platform.clone() }.tag_ranks();
        for wheel in &core.wheels {
            assert!(ranks.rank(&wheel.filename).is_some(), "{} does not fit", wheel.filename);
            assert!(wheel.url.starts_with("https://") && wheel.url.ends_with(".whl"), "{}", wheel.url);
            assert!(wheel.size.is_some_and(|s| s > 0));
            assert_eq!(wheel.filename.name(), &wheel.name);
        }
        let wheel = |name: &str| core.wheels.iter().find(|w| w.name.as_ref() == name).unwrap();
        let tag_of = |name: &str| tags::tag_string(&wheel(name).filename);
        assert!(tag_of("numpy").starts_with("cp311-cp311-manylinux"), "{}", tag_of("numpy"));
        // soundfile also ships a pure wheel without libsndfile: the manylinux one must win.
        assert!(tag_of("soundfile").contains("manylinux") && tag_of("soundfile").contains("x86_64"), "{}", tag_of("soundfile"));

        // The lock reads back as written, and the base still fits it.
        let text = lock.to_toml();
        assert!(text.starts_with("# This file is written by `galley lock`"));
        assert!(text.contains("[envs.core.inputs]") && text.contains("[[envs.core.wheels]]"), "{text}");
        assert_eq!(Lockfile::parse(&text, Path::new("galley.lock")).unwrap(), lock);
        check_fresh(&manifest, &lock, &probe).unwrap();
    }

    #[test]
    fn relocking_keeps_unchanged_envs_byte_identical_and_earlier_pins() {
        let envs = "[envs.core]\nrequirements = [\"numpy<2\"]\n[envs.small]\nrequirements = [\"six\"]\n";
        let head = "[image]\nname = \"app\"\ndefault-env = \"core\"\n[base]\ndebian = { suite = \"bookworm\", packages = [\"python3\"] }\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("galley.toml"), format!("{head}{envs}")).unwrap();
        let probe = bookworm_probe();
        let first = lock_project(&reload(&dir), &probe, None, &options(), &()).unwrap();
        let path = dir.path().join(LOCK_FILE);
        assert!(first.write(&path).unwrap());
        let bytes = std::fs::read(&path).unwrap();

        // Nothing changed: nothing is resolved, the file keeps its bytes.
        let notes = Notes::default();
        let again = lock_project(&reload(&dir), &probe, Some(&Lockfile::read(&path).unwrap()), &options(), &notes).unwrap();
        assert!(notes.has("env core: unchanged") && notes.has("env small: unchanged"));
        assert!(!again.write(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        // One env changes: the other keeps its entry byte for byte.
        std::fs::write(dir.path().join("galley.toml"), format!("{head}{}", envs.replace("[\"six\"]", "[\"six\", \"idna\"]"))).unwrap();
        let notes = Notes::default();
        let third = lock_project(&reload(&dir), &probe, Some(&first), &options(), &notes).unwrap();
        assert!(notes.has("env core: unchanged") && notes.has("env small: resolving"));
        assert_eq!(third.envs[&env("core")], first.envs[&env("core")]);
        let section = |lock: &Lockfile| {
            let text = lock.to_toml();
            let start = text.find("[envs.core]").unwrap();
            text[start..text.find("[envs.small]").unwrap()].to_owned()
        };
        assert_eq!(section(&third), section(&first));
        let six = |lock: &Lockfile| lock.envs[&env("small")].wheels.iter().find(|w| w.name.as_ref() == "six").unwrap().version.clone();
        assert_eq!(six(&third), six(&first));
        assert!(third.envs[&env("small")].wheels.iter().any(|w| w.name.as_ref() == "idna"));
    }

    #[test]
    fn staleness_names_what_changed() {
        let pylock = soundfile_pylock("");
        let (dir, manifest) = project(
            "default-env = \"core\"\n[envs.core]\npylock = \"pylock.toml\"\n[envs.tools]\nrequirements = [\"six\"]\nconstraints = \"c.txt\"\n",
            &[("pylock.toml", &pylock), ("c.txt", "six<2\n")],
        );
        // Build a lock for both envs without uv: lock `core` for real, copy its inputs for `tools`.
        let probe = bookworm_probe();
        let only_core = Manifest { envs: manifest.envs.iter().filter(|(n, _)| n.as_str() == "core").map(|(n, s)| (n.clone(), s.clone())).collect(), ..manifest.clone() };
        let mut lock = lock_project(&only_core, &probe, None, &LockOptions::default(), &()).unwrap();
        let tools = &manifest.envs[&env("tools")];
        let core = lock.envs[&env("core")].clone();
        lock.envs.insert(env("tools"), LockedEnv { inputs: env_inputs(tools).unwrap(), wheels: vec![], ..core });
        let fresh = |m: &Manifest, p: &Probe| check_fresh(m, &lock, p).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(fresh(&manifest, &probe), "");
        let manifest_text = std::fs::read_to_string(dir.path().join("galley.toml")).unwrap();
        let edit = |from: &str, to: &str| {
            std::fs::write(dir.path().join("galley.toml"), manifest_text.replace(from, to)).unwrap();
            reload(&dir)
        };
        let cases = [
            (edit("[\"six\"]", "[\"six\", \"idna\"]"), "galley.lock is out of date for env tools: requirements changed; run `galley lock` or `galley build --update-lock`"),
            (edit("requirements = [\"six\"]", "requirements = [\"six\"]\nindex = \"https://example.org/simple\""), "env tools: index changed"),
            (edit("[envs.tools]", "[envs.extra]\nrequirements = [\"x\"]\n[envs.tools]"), "env extra: it is not locked yet"),
        ];
        for (m, want) in &cases {
            let got = fresh(m, &probe);
            assert!(got.contains(want), "got:  {got}\nwant: {want}");
        }
        std::fs::write(dir.path().join("c.txt"), "six<1.17\n").unwrap();
        assert!(fresh(&manifest, &probe).contains("env tools: constraints changed"));
        std::fs::write(dir.path().join("c.txt"), "six<2\n").unwrap();
        std::fs::write(dir.path().join("pylock.toml"), soundfile_pylock("# edited\n")).unwrap();
        assert!(fresh(&manifest, &probe).contains("env core: its pylock.toml changed"));
        std::fs::write(dir.path().join("pylock.toml"), &pylock).unwrap();

        // An env dropped from galley.toml, and bases that moved.
        let fewer = Manifest { envs: only_core.envs.clone(), ..manifest.clone() };
        assert!(fresh(&fewer, &probe).contains("env tools: it is no longer in galley.toml"));
        let mut py312 = probe.clone();
        py312.interpreter.as_mut().unwrap().version = (3, 12);
        assert!(fresh(&manifest, &py312).contains("it was locked for Python 3.11.2, the image has Python 3.12.2"));
        let mut old_glibc = probe.clone();
        old_glibc.libc = Some(Libc::Glibc { major: 2, minor: 31 });
        assert!(fresh(&manifest, &old_glibc).contains("locked for x86_64-manylinux_2_36, which does not run on the image's x86_64-manylinux_2_31"));
        // A newer base that still fits (patch release, newer glibc) keeps the lock fresh.
        let mut newer = probe.clone();
        newer.interpreter.as_mut().unwrap().patch = Some(9);
        newer.libc = Some(Libc::Glibc { major: 2, minor: 41 });
        newer.identity = Digest::of(b"trixie-ish");
        assert_eq!(fresh(&manifest, &newer), "");
    }

    #[test]
    fn a_pylock_env_chooses_the_platform_wheel_without_uv() {
        let (_dir, manifest) = project("[envs.audio]\npylock = \"pylock.toml\"\n", &[("pylock.toml", &soundfile_pylock(""))]);
        let options = LockOptions { uv: Some(PathBuf::from("/nonexistent/uv")), ..LockOptions::default() };
        let lock = lock_project(&manifest, &bookworm_probe(), None, &options, &()).unwrap();
        let wheels = &lock.envs[&env("audio")].wheels;
        assert_eq!(wheels.len(), 1);
        assert_eq!(wheels[0].filename.to_string(), "soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl");
        assert_eq!(wheels[0].sha256.hex(), SF_LINUX);
        assert_eq!(wheels[0].size, Some(1_315_963));
        assert!(lock.envs[&env("audio")].inputs.pylock.is_some());
    }

    #[test]
    fn packages_without_a_fitting_wheel_name_their_tags_and_the_needed_ones() {
        let extra = format!(
            "[[packages]]\nname = \"only-sdist\"\nversion = \"1.0\"\nsdist = {{ url = \"https://x.org/only_sdist-1.0.tar.gz\", hashes = {{ sha256 = \"{SIX}\" }} }}\n"
        );
        let (_dir, manifest) = project("[envs.core]\npylock = \"pylock.toml\"\n", &[("pylock.toml", &soundfile_pylock(&extra))]);
        let err = lock_project(&manifest, &bookworm_probe(), None, &LockOptions::default(), &()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("env core: only-sdist 1.0 has no wheel that fits the image: it has only a source distribution; the env needs cp311"), "{text}");
        assert!(text.contains("manylinux_2_36_x86_64"), "{text}");
        assert!(err.is_usage());

        // On an aarch64 image soundfile has no platform wheel but its pure one fits.
        let (_dir, manifest) = project("[envs.core]\npylock = \"pylock.toml\"\n", &[("pylock.toml", &soundfile_pylock(""))]);
        let arm = LockOptions { python_platform: Some("aarch64-manylinux_2_36".parse().unwrap()), ..LockOptions::default() };
        let lock = lock_project(&manifest, &bookworm_probe(), None, &arm, &()).unwrap();
        assert_eq!(tags::tag_string(&lock.envs[&env("core")].wheels[0].filename), "py2.py3-none-any");

        // Only wheels for another Python: named with their tags.
        let cp312 = format!(
            "lock-version = \"1.0\"\n[[packages]]\nname = \"fast\"\nversion = \"2.0\"\nwheels = [{{ url = \"https://x.org/fast-2.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl\", hashes = {{ sha256 = \"{SIX}\" }} }}]\n"
        );
        let (_dir, manifest) = project("[envs.core]\npylock = \"pylock.toml\"\n", &[("pylock.toml", &cp312)]);
        let text = lock_project(&manifest, &bookworm_probe(), None, &LockOptions::default(), &()).unwrap_err().to_string();
        assert!(text.contains("fast 2.0 has no wheel that fits the image: it has wheels for cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64"), "{text}");
    }

    #[test]
    fn a_hashed_requirements_env_finds_its_wheels_on_the_index() {
        let requirements = format!(
            "# pinned\nsix==1.17.0 --hash=sha256:{SIX}\nsoundfile==0.14.0 \\\n    --hash=sha256:{SF_ANY} \\\n    --hash=sha256:{SF_LINUX}\npywin32==306 ; sys_platform == 'win32' --hash=sha256:{SIX}\n"
        );
        let (_dir, manifest) = project("[envs.core]\nrequirements-file = \"requirements.txt\"\n", &[("requirements.txt", &requirements)]);
        let lock = lock_project(&manifest, &bookworm_probe(), None, &LockOptions::default(), &()).unwrap();
        let wheels = &lock.envs[&env("core")].wheels;
        let files: Vec<String> = wheels.iter().map(|w| w.filename.to_string()).collect();
        assert_eq!(files, ["six-1.17.0-py2.py3-none-any.whl", "soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl"]);
        assert_eq!(wheels[0].size, Some(11050));
        assert!(wheels[1].url.starts_with("https://files.pythonhosted.org/"), "{}", wheels[1].url);
        assert_eq!(wheels[1].sha256.hex(), SF_LINUX);

        // A hash no file has is named with its line.
        let bad = format!("six==1.17.0 --hash=sha256:{SF_ANY}\n");
        let (_dir, manifest) = project("[envs.core]\nrequirements-file = \"requirements.txt\"\n", &[("requirements.txt", &bad)]);
        let text = lock_project(&manifest, &bookworm_probe(), None, &LockOptions::default(), &()).unwrap_err().to_string();
        assert!(text.contains("requirements.txt line 1: no file of six 1.17.0 on https://pypi.org/simple has one of the listed sha256 hashes"), "{text}");
    }

    #[test]
    fn unsatisfiable_requirements_show_uvs_message() {
        let (_dir, manifest) = project("[envs.core]\nrequirements = [\"numpy<1\"]\n", &[]);
        let err = lock_project(&manifest, &bookworm_probe(), None, &options(), &()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("uv could not resolve env core"), "{text}");
        assert!(text.contains("No solution found") && text.contains("numpy<1"), "{text}");
        assert!(err.is_usage());
    }

    #[test]
    fn a_missing_uv_says_how_to_install_it() {
        let (_dir, manifest) = project("[envs.core]\nrequirements = [\"six\"]\n", &[]);
        let options = LockOptions { uv: Some(PathBuf::from("/nonexistent/uv")), ..LockOptions::default() };
        let err = lock_project(&manifest, &bookworm_probe(), None, &options, &()).unwrap_err();
        assert!(matches!(err, LockError::UvMissing { .. }));
        let text = err.to_string();
        assert!(text.contains("/nonexistent/uv") && text.contains("pip install uv") && text.contains("GALLEY_UV"), "{text}");
    }

    #[test]
    fn targets_come_from_the_base_the_env_or_the_options() {
        let (_dir, manifest) = project("[envs.core]\npylock = \"pylock.toml\"\npython = \"3.12\"\n", &[("pylock.toml", "lock-version = \"1.0\"\n")]);
        let spec = &manifest.envs[&env("core")];
        let err = target_for(spec, &bookworm_probe(), &LockOptions::default()).unwrap_err().to_string();
        assert_eq!(err, "[envs.core] `python` is 3.12, but the base image's interpreter /usr/bin/python3.11 is Python 3.11.2; change one of them");
        let mut bare = bookworm_probe();
        bare.interpreter = None;
        assert_eq!(target_for(spec, &bare, &LockOptions::default()).unwrap().python.to_string(), "3.12");
        let (_dir, plain) = project("[envs.core]\npylock = \"pylock.toml\"\n", &[("pylock.toml", "lock-version = \"1.0\"\n")]);
        let spec = &plain.envs[&env("core")];
        let err = target_for(spec, &bare, &LockOptions::default()).unwrap_err();
        assert!(err.to_string().contains("has no Python interpreter") && err.to_string().contains("set `python = \"3.11\"` in [envs.core]"), "{err}");
        let forced = LockOptions { python_version: Some("3.13".parse().unwrap()), python_platform: Some("aarch64-manylinux_2_28".parse().unwrap()), ..LockOptions::default() };
        let target = target_for(spec, &bare, &forced).unwrap();
        assert_eq!((target.python.to_string(), target.platform.to_string()), ("3.13".into(), "aarch64-manylinux_2_28".into()));
        bare.libc = None;
        assert!(target_for(spec, &bare, &LockOptions { python_version: forced.python_version, ..LockOptions::default() }).unwrap_err().to_string().contains("--python-platform"));
    }
}
