//! One environment: its layout in the image, its packages checked against each other,
//! the venv skeleton around them, `envs.json`, and the runtime variables that select it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{InstallError, InstalledTree, TreeFile};
use crate::base::{DEFAULT_PATH, Interpreter};
use crate::layer::{Entry, EntryKind, LayerPath, Source};
use crate::progress::Reporter;

/// Where an env lives in the image and which interpreter it runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLayout {
    /// The env's name in the manifest (`core`).
    pub name: String,
    /// The venv directory (`opt/galley/envs/core`).
    pub prefix: LayerPath,
    /// The base image's interpreter that `bin/python` links to.
    pub interpreter: Interpreter,
}

impl EnvLayout {
    pub fn new(name: impl Into<String>, prefix: LayerPath, interpreter: Interpreter) -> Self {
        Self { name: name.into(), prefix, interpreter }
    }

    /// `python3.11`
    pub fn python_dir(&self) -> String {
        let (major, minor) = self.interpreter.version;
        format!("python{major}.{minor}")
    }

    /// The env's `python` as scripts name it: `/opt/galley/envs/core/bin/python`.
    pub fn python(&self) -> String {
        format!("{}/bin/python", self.prefix)
    }

    /// `/opt/galley/envs/core/bin`
    pub fn bin(&self) -> String {
        format!("{}/bin", self.prefix)
    }

    /// A path inside the env, from a path relative to its prefix.
    pub fn path(&self, relative: &str) -> Result<LayerPath, crate::layer::PathError> {
        self.prefix.join(relative)
    }
}

/// The packages of one env, checked against each other, in install order.
#[derive(Clone, Debug)]
pub struct EnvInstall {
    pub layout: EnvLayout,
    pub packages: Vec<InstalledTree>,
    /// Per package, the files it ships that a later package overwrites (so it does not
    /// contribute them to the image).
    pub shadowed: Vec<BTreeSet<LayerPath>>,
}

impl EnvInstall {
    /// The files package `i` contributes to the env.
    pub fn files_of(&self, i: usize) -> impl Iterator<Item = &TreeFile> {
        let shadowed = &self.shadowed[i];
        self.packages[i].files.iter().filter(move |f| !shadowed.contains(&f.path))
    }
}

/// Checks the packages of one env against each other, in the order given (galley passes
/// the lock's order: sorted by name). Two packages that ship the same path with the same
/// bytes and mode are fine (every nvidia-* CUDA wheel ships `nvidia/__init__.py`). With
/// different content the package later in the order wins, as if installed after the
/// other, which is what pip and uv leave behind when they install in that order; the
/// collision is reported through `reporter`, or is an error when `strict`. A file where
/// another package has a directory is always an error.
pub fn resolve_env(
    layout: EnvLayout,
    packages: Vec<InstalledTree>,
    strict: bool,
    reporter: &dyn Reporter,
) -> Result<EnvInstall, InstallError> {
    let mut names = BTreeSet::new();
    for p in &packages {
        if !names.insert(p.name.clone()) {
            return Err(InstallError::DuplicatePackage { env: layout.name.clone(), package: p.name.to_string() });
        }
    }
    // path -> (package index, file) of the current winner
    let mut owner: BTreeMap<&str, (usize, &TreeFile)> = BTreeMap::new();
    let mut shadowed: Vec<BTreeSet<LayerPath>> = vec![BTreeSet::new(); packages.len()];
    for (i, package) in packages.iter().enumerate() {
        for file in &package.files {
            let Some((j, theirs)) = owner.insert(file.path.as_str(), (i, file)) else { continue };
            if theirs.sha256 == file.sha256 && theirs.mode == file.mode {
                // Identical: keep the first copy, so the earlier package's layer keeps it.
                owner.insert(file.path.as_str(), (j, theirs));
                shadowed[i].insert(file.path.clone());
                continue;
            }
            let (first, second) = (packages[j].package(), package.package());
            let path = format!("{}/{}", layout.prefix, file.path.as_str());
            if strict {
                return Err(InstallError::Conflict { env: layout.name.clone(), path, first, second, strict });
            }
            reporter.on_note(&format!(
                "env `{}`: {first} and {second} both install {path} with different content; {second}'s copy is used (installed later)",
                layout.name
            ));
            shadowed[j].insert(file.path.clone());
        }
    }
    // A file at a path where another package has files below it.
    for (path, (i, _)) in &owner {
        let prefix = format!("{path}/");
        let below = owner.range::<&str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded)).next();
        if let Some((below, (j, _))) = below.filter(|(p, _)| p.starts_with(&prefix)) {
            return Err(InstallError::FileDirConflict {
                env: layout.name.clone(),
                path: format!("{}/{path}", layout.prefix),
                first: packages[*i].package(),
                second: format!("{} ({}/{below})", packages[*j].package(), layout.prefix),
            });
        }
    }
    Ok(EnvInstall { layout, packages, shadowed })
}

/// The venv around the packages, as uv lays it out: `pyvenv.cfg`, `bin/python` linking to
/// the base interpreter with `python3` and `python3.X` linking to it, `lib64 -> lib`, the
/// empty site-packages, and activate scripts for POSIX shells, fish and csh. Entries carry
/// uid/gid 0 and mtime 0; the planner sets the mtime.
pub fn venv_skeleton(layout: &EnvLayout) -> Result<Vec<Entry>, crate::layer::PathError> {
    let (major, minor) = layout.interpreter.version;
    let interpreter = layout.interpreter.executable.to_string();
    let home = layout.interpreter.executable.parent().map_or_else(|| "/".to_owned(), |p| p.to_string());
    let pyvenv = format!(
        "home = {home}\nimplementation = CPython\nversion_info = {major}.{minor}\ninclude-system-site-packages = false\n"
    );
    let prefix = layout.prefix.to_string();
    let dir = |rel: &str| -> Result<Entry, crate::layer::PathError> { Ok(Entry::dir(layout.path(rel)?, 0o755, 0, 0, 0)) };
    let link = |rel: &str, target: &str| -> Result<Entry, crate::layer::PathError> {
        Ok(Entry { path: layout.path(rel)?, kind: EntryKind::Symlink { target: target.to_owned() }, mode: 0o777, uid: 0, gid: 0, mtime: 0 })
    };
    let file = |rel: &str, text: String| -> Result<Entry, crate::layer::PathError> {
        let bytes: Arc<[u8]> = Arc::from(text.into_bytes());
        let size = bytes.len() as u64;
        Ok(Entry { path: layout.path(rel)?, kind: EntryKind::File { source: Source::Bytes(bytes), size }, mode: 0o644, uid: 0, gid: 0, mtime: 0 })
    };
    let python_dir = layout.python_dir();
    Ok(vec![
        Entry::dir(layout.prefix.clone(), 0o755, 0, 0, 0),
        dir("bin")?,
        dir("lib")?,
        dir(&format!("lib/{python_dir}"))?,
        dir(&format!("lib/{python_dir}/site-packages"))?,
        link("lib64", "lib")?,
        file("pyvenv.cfg", pyvenv)?,
        link("bin/python", &interpreter)?,
        link("bin/python3", "python")?,
        link(&format!("bin/python{major}.{minor}"), "python")?,
        file("bin/activate", activate_sh(&prefix, &layout.name))?,
        file("bin/activate.fish", activate_fish(&prefix, &layout.name))?,
        file("bin/activate.csh", activate_csh(&prefix, &layout.name))?,
    ])
}

fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn activate_sh(prefix: &str, name: &str) -> String {
    format!(
        r#"# Source this file from a POSIX shell (sh, bash, zsh): . {prefix}/bin/activate
deactivate () {{
    if [ -n "${{_OLD_VIRTUAL_PATH+x}}" ]; then PATH="$_OLD_VIRTUAL_PATH"; export PATH; unset _OLD_VIRTUAL_PATH; fi
    if [ -n "${{_OLD_VIRTUAL_PYTHONHOME+x}}" ]; then PYTHONHOME="$_OLD_VIRTUAL_PYTHONHOME"; export PYTHONHOME; unset _OLD_VIRTUAL_PYTHONHOME; fi
    if [ -n "${{_OLD_VIRTUAL_PS1+x}}" ]; then PS1="$_OLD_VIRTUAL_PS1"; export PS1; unset _OLD_VIRTUAL_PS1; fi
    unset VIRTUAL_ENV VIRTUAL_ENV_PROMPT
    hash -r 2>/dev/null || true
    if [ "${{1:-}}" != "nondestructive" ]; then unset -f deactivate; fi
}}
deactivate nondestructive
VIRTUAL_ENV={venv}
VIRTUAL_ENV_PROMPT={prompt}
export VIRTUAL_ENV VIRTUAL_ENV_PROMPT
_OLD_VIRTUAL_PATH="$PATH"
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
if [ -n "${{PYTHONHOME+x}}" ]; then _OLD_VIRTUAL_PYTHONHOME="$PYTHONHOME"; unset PYTHONHOME; fi
if [ -z "${{VIRTUAL_ENV_DISABLE_PROMPT:-}}" ]; then _OLD_VIRTUAL_PS1="${{PS1:-}}"; PS1="($VIRTUAL_ENV_PROMPT) ${{PS1:-}}"; export PS1; fi
hash -r 2>/dev/null || true
"#,
        venv = single_quoted(prefix),
        prompt = single_quoted(name),
    )
}

fn activate_fish(prefix: &str, name: &str) -> String {
    format!(
        r#"# Source this file from fish: source {prefix}/bin/activate.fish
function deactivate -d "Leave the virtual environment"
    if set -q _OLD_VIRTUAL_PATH
        set -gx PATH $_OLD_VIRTUAL_PATH
        set -e _OLD_VIRTUAL_PATH
    end
    if set -q _OLD_VIRTUAL_PYTHONHOME
        set -gx PYTHONHOME $_OLD_VIRTUAL_PYTHONHOME
        set -e _OLD_VIRTUAL_PYTHONHOME
    end
    set -e VIRTUAL_ENV
    set -e VIRTUAL_ENV_PROMPT
    if test "$argv[1]" != "nondestructive"
        functions -e deactivate
    end
end
deactivate nondestructive
set -gx VIRTUAL_ENV {venv}
set -gx VIRTUAL_ENV_PROMPT {prompt}
set -gx _OLD_VIRTUAL_PATH $PATH
set -gx PATH "$VIRTUAL_ENV/bin" $PATH
if set -q PYTHONHOME
    set -gx _OLD_VIRTUAL_PYTHONHOME $PYTHONHOME
    set -e PYTHONHOME
end
"#,
        venv = single_quoted(prefix),
        prompt = single_quoted(name),
    )
}

fn activate_csh(prefix: &str, name: &str) -> String {
    format!(
        r#"# Source this file from csh or tcsh: source {prefix}/bin/activate.csh
alias deactivate 'test $?_OLD_VIRTUAL_PATH != 0 && setenv PATH "$_OLD_VIRTUAL_PATH" && unset _OLD_VIRTUAL_PATH; rehash; unsetenv VIRTUAL_ENV; unsetenv VIRTUAL_ENV_PROMPT; test "\!:*" != "nondestructive" && unalias deactivate'
deactivate nondestructive
setenv VIRTUAL_ENV {venv}
setenv VIRTUAL_ENV_PROMPT {prompt}
set _OLD_VIRTUAL_PATH="$PATH"
setenv PATH "$VIRTUAL_ENV/bin:$PATH"
rehash
"#,
        venv = single_quoted(prefix),
        prompt = single_quoted(name),
    )
}

/// `envs.json`: every env of the image, its interpreter and packages, and the default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvsJson {
    /// The env whose `bin` is first on PATH.
    pub default: String,
    pub envs: BTreeMap<String, EnvsJsonEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvsJsonEntry {
    /// The venv directory, `/opt/galley/envs/core`.
    pub prefix: String,
    /// The env's `python`, `/opt/galley/envs/core/bin/python`.
    pub python: String,
    /// The base interpreter it runs on, `/usr/bin/python3.11`.
    pub interpreter: String,
    /// `3.11`
    pub python_version: String,
    /// Normalized package name to version.
    pub packages: BTreeMap<String, String>,
}

impl EnvsJson {
    pub fn new(envs: &[EnvInstall], default: &str) -> Self {
        let envs = envs
            .iter()
            .map(|e| {
                let (major, minor) = e.layout.interpreter.version;
                let entry = EnvsJsonEntry {
                    prefix: e.layout.prefix.to_string(),
                    python: e.layout.python(),
                    interpreter: e.layout.interpreter.executable.to_string(),
                    python_version: format!("{major}.{minor}"),
                    packages: e.packages.iter().map(|p| (p.name.to_string(), p.version.to_string())).collect(),
                };
                (e.layout.name.clone(), entry)
            })
            .collect();
        Self { default: default.to_owned(), envs }
    }

    /// Stable, pretty JSON with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// The image config's environment for the default env: its `bin` first on `PATH` (ahead
/// of the base's `PATH`, else Debian's default) and `VIRTUAL_ENV`, so tools that look for
/// an active venv (pip, uv) use it.
pub fn runtime_env(default: &EnvLayout, base_path: Option<&str>) -> Vec<(String, String)> {
    let bin = default.bin();
    let rest: Vec<&str> = base_path.unwrap_or(DEFAULT_PATH).split(':').filter(|p| !p.is_empty() && *p != bin).collect();
    let path = std::iter::once(bin.as_str()).chain(rest).collect::<Vec<_>>().join(":");
    vec![("PATH".to_owned(), path), ("VIRTUAL_ENV".to_owned(), default.prefix.to_string())]
}
