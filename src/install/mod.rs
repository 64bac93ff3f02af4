//! Installs wheels natively (PEP 427 / PEP 376 / PEP 491 / the entry points spec) into
//! virtual environments inside the image, with no Python or pip at build time.
//!
//! Each wheel becomes an *installed tree* in the content store (`trees-v1/<key>/`): the
//! files the wheel puts under an env prefix, keyed by the wheel's sha256, the prefix and
//! the Python version, so a second build, or another image with the same env prefix,
//! reuses it. [`resolve_env`] then checks the packages of one env against each other,
//! and [`venv_skeleton`] / [`EnvsJson`] describe the venv itself; `plan` turns all of
//! that into layers.
//!
//! ```no_run
//! # use galley::{cache::Cache, install::*, base::Interpreter, layer::LayerPath};
//! # fn demo(cache: &Cache, wheels: &[WheelFile], python: Interpreter) -> Result<(), InstallError> {
//! let layout = EnvLayout::new("core", LayerPath::new("/opt/galley/envs/core").unwrap(), python);
//! let trees = Installer::new(cache, &()).install_all(wheels, &layout)?;
//! let env = resolve_env(layout, trees, false, &())?;
//! # Ok(()) }
//! ```

mod env;
mod filename;
mod inflate;
mod metadata;
mod record;
mod tree;
mod unpack;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use env::{EnvInstall, EnvLayout, EnvsJson, EnvsJsonEntry, resolve_env, runtime_env, venv_skeleton};
pub use filename::{WheelFilename, WheelFilenameError};
pub use tree::{InstalledTree, TreeFile};
pub use unpack::{Installer, Limits};

use crate::cache::CacheError;
use crate::oci::Digest;

/// A wheel file on disk and what the lock says about it.
#[derive(Clone, Debug)]
pub struct WheelFile {
    pub path: PathBuf,
    pub filename: WheelFilename,
    /// The sha256 the lock records; the file is checked against it before use.
    pub sha256: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{wheel}: the file {} has sha256 {actual}, but the lock says {expected}; the download is corrupt or the mirror was tampered with. Delete it and fetch again", path.display())]
    HashMismatch { wheel: String, path: PathBuf, expected: Digest, actual: Digest },
    #[error("{wheel}: cannot read {}: {source}", path.display())]
    Read { wheel: String, path: PathBuf, source: io::Error },
    #[error("{wheel}: not a readable zip archive: {source}")]
    Zip { wheel: String, source: zip::result::ZipError },
    #[error("{wheel}: refusing to install entry `{entry}`: {why}. The wheel is malformed or malicious; nothing was installed")]
    UnsafeEntry { wheel: String, entry: String, why: String },
    #[error("{wheel}: looks like a zip bomb: {why}; nothing was installed")]
    ZipBomb { wheel: String, why: String },
    #[error("{wheel}: {file} is missing or malformed: {why}")]
    Malformed { wheel: String, file: String, why: String },
    #[error("{wheel}: `{entry}` does not match its RECORD line: {why}; nothing was installed")]
    RecordMismatch { wheel: String, entry: String, why: String },
    #[error("{wheel}: its {what} says `{found}`, but the file name says {expected}")]
    NameMismatch { wheel: String, what: &'static str, found: String, expected: String },
    #[error("{wheel}: it would install {path}, which the venv itself owns (its interpreter links, pyvenv.cfg or activate scripts)")]
    ReservedPath { wheel: String, path: String },
    #[error("env `{env}`: {first} and {second} both install {path} with different content{}", if *.strict { " (strict mode makes this an error)" } else { "" })]
    Conflict { env: String, path: String, first: String, second: String, strict: bool },
    #[error("env `{env}`: {first} installs {path} as a file, but {second} installs files inside it")]
    FileDirConflict { env: String, path: String, first: String, second: String },
    #[error("env `{env}`: {package} is listed twice")]
    DuplicatePackage { env: String, package: String },
    #[error("cannot write the installed tree of {wheel} at {}: {source}", path.display())]
    Write { wheel: String, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl InstallError {
    /// Whether the fault lies in what the user asked for (exit code 2): packages that
    /// cannot live in one env together. Broken or tampered wheels are build failures.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::FileDirConflict { .. } | Self::DuplicatePackage { .. })
    }
}
