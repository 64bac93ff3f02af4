//! Installed trees in the content store:
//!
//! ```text
//! trees-v1/<key>/tree.json    what the tree holds: package, files with mode/size/sha256
//! trees-v1/<key>/root/...     the files, laid out relative to the env prefix
//! ```
//!
//! A tree is built in `tmp/` and renamed into place whole, so it is either complete or
//! absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pep440_rs::Version;
use pep508_rs::PackageName;
use serde::{Deserialize, Serialize};

use super::{EnvLayout, WheelFile, WheelFilename};
use crate::cache::Cache;
use crate::layer::{DeflateStream, LayerPath, Source};
use crate::oci::Digest;

/// Bump when the installer's output for the same wheel changes.
const FORMAT: &str = "galley-install-2";
pub(crate) const BUCKET: &str = "trees-v1";

/// One regular file of an installed tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFile {
    /// Relative to the env prefix (`lib/python3.11/site-packages/numpy/__init__.py`, `bin/f2py`).
    pub path: LayerPath,
    /// `0o755` or `0o644`.
    pub mode: u32,
    pub size: u64,
    pub sha256: Digest,
    /// Where these exact bytes sit deflated in the wheel, when the file is a zip entry
    /// stored with method deflate and installed unchanged: a gzip layer copies that stream
    /// instead of compressing the file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deflated: Option<DeflateStream>,
}

/// One wheel installed for one env prefix and Python version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledTree {
    pub name: PackageName,
    pub version: Version,
    pub wheel: WheelFilename,
    pub wheel_sha256: Digest,
    /// The cache key: wheel sha256, prefix, Python version and installer format.
    pub key: Digest,
    /// Files, sorted by path.
    pub files: Vec<TreeFile>,
    /// Directories the wheel names explicitly (kept even when empty), relative to the prefix.
    pub dirs: Vec<LayerPath>,
    /// Where the files are on disk; set when the tree is loaded.
    #[serde(skip)]
    pub root: PathBuf,
    /// The wheel the tree was installed from (for its deflate streams); set when loaded.
    #[serde(skip)]
    pub wheel_path: Arc<PathBuf>,
}

impl InstalledTree {
    /// The file on disk holding `file`'s bytes.
    pub fn path_of(&self, file: &TreeFile) -> PathBuf {
        self.root.join(file.path.as_str())
    }

    /// Where a layer reads `file` from: the file on disk, plus the wheel's deflate stream
    /// of the same bytes when there is one.
    pub fn source(&self, file: &TreeFile) -> Source {
        let path = self.path_of(file);
        match file.deflated {
            Some(stream) => Source::Deflated { path, file: self.wheel_path.clone(), stream },
            None => Source::Path(path),
        }
    }

    /// Bytes of all files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// `name version`, for messages.
    pub fn package(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

pub(crate) fn key(wheel: &WheelFile, layout: &EnvLayout) -> Digest {
    let (major, minor) = layout.interpreter.version;
    Digest::of(format!("{FORMAT}\n{}\n{}\n{}\n{major}.{minor}\n", wheel.sha256, wheel.filename, layout.prefix).as_bytes())
}

pub(crate) fn dir(cache: &Cache, key: &Digest) -> PathBuf {
    cache.bucket(BUCKET).join(key.hex())
}

pub(crate) const RECORD_FILE: &str = "tree.json";
pub(crate) const ROOT_DIR: &str = "root";

/// Loads the tree of `wheel` stored under `key`, if a complete one is there.
pub(crate) fn load(cache: &Cache, key: &Digest, wheel: &WheelFile) -> Option<InstalledTree> {
    let mut tree = load_from(cache, &dir(cache, key)).filter(|t| t.key == *key)?;
    tree.wheel_path = Arc::new(wheel.path.clone());
    Some(tree)
}

fn load_from(cache: &Cache, dir: &Path) -> Option<InstalledTree> {
    let mut tree: InstalledTree = cache.read_record(&dir.join(RECORD_FILE))?;
    tree.root = dir.join(ROOT_DIR);
    tree.root.is_dir().then_some(tree)
}
