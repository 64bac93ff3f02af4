//! What goes into a layer: normalized paths and entries with fixed metadata.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A path inside the image, relative to `/`, with no `.`, `..` or empty components.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerPath(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{path}` is not a usable path inside an image: {why}")]
pub struct PathError {
    pub path: String,
    pub why: &'static str,
}

impl LayerPath {
    /// Parses an image path; a leading `/` or `./` is accepted and dropped, as tar
    /// archives and manifests write them. `..` is rejected, never resolved.
    pub fn new(raw: &str) -> Result<Self, PathError> {
        let err = |why| PathError { path: raw.to_owned(), why };
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(err("it climbs out of the root with `..`")),
                p if p.contains('\0') => return Err(err("it contains a NUL byte")),
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Err(err("it names the root itself"));
        }
        Ok(Self(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        Self::new(&format!("{}/{name}", self.0))
    }

    pub fn parent(&self) -> Option<Self> {
        self.0.rsplit_once('/').map(|(p, _)| Self(p.to_owned()))
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(_, n)| n)
    }

    /// Every ancestor, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> Vec<Self> {
        let mut out = Vec::new();
        let mut current = self.parent();
        while let Some(p) = current {
            current = p.parent();
            out.push(p);
        }
        out.reverse();
        out
    }

    /// Resolves a symlink target found at this path, lexically, as the kernel would
    /// inside the image. Returns None when a relative target climbs above `/`.
    pub fn resolve_link(&self, target: &str) -> Option<String> {
        if target.starts_with('/') {
            return Some(target.to_owned());
        }
        let parent = self.parent();
        let mut stack: Vec<&str> = parent.as_ref().map_or_else(Vec::new, |p| p.0.split('/').collect());
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    stack.pop()?;
                }
                p => stack.push(p),
            }
        }
        Some(format!("/{}", stack.join("/")))
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl fmt::Debug for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for LayerPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LayerPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::new(&raw).map_err(serde::de::Error::custom)
    }
}

/// Where a regular file's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file on disk, read when the layer is packed.
    Path(PathBuf),
    /// Bytes galley made (config files, generated scripts).
    Bytes(Arc<[u8]>),
    /// A span of an uncompressed tar archive on disk.
    Span { file: Arc<PathBuf>, offset: u64 },
    /// A file on disk (`path`, read for the uncompressed bytes) whose exact bytes are also
    /// `stream`, a raw deflate stream inside `file` (a wheel's zip entry). A gzip layer
    /// copies that stream as a gzip member of its own instead of compressing the file again.
    Deflated { path: PathBuf, file: Arc<PathBuf>, stream: DeflateStream },
}

/// Where a complete raw deflate stream (RFC 1951) sits inside a file, and the CRC-32 of
/// what it inflates to: a zip entry stored with method deflate. Only streams that were
/// checked to end exactly at `offset + length` with their final block qualify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DeflateStream {
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
}

#[derive(Clone, Debug)]
pub enum EntryKind {
    Dir,
    File { source: Source, size: u64 },
    Symlink { target: String },
    /// A hard link to an earlier entry of the same layer.
    Hardlink { target: LayerPath },
}

/// One tar entry with the metadata galley writes: numeric owner, fixed mtime, no names.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: LayerPath,
    pub kind: EntryKind,
    /// Permission bits, including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

impl Entry {
    pub fn dir(path: LayerPath, mode: u32, uid: u32, gid: u32, mtime: u64) -> Self {
        Self { path, kind: EntryKind::Dir, mode, uid, gid, mtime }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    /// Uncompressed content bytes this entry carries.
    pub fn content_size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        }
    }
}

/// Whiteout file names (OCI image spec, "Representing Changes").
pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_never_climb() {
        assert_eq!(LayerPath::new("/app//src/./x.py").unwrap().as_str(), "app/src/x.py");
        assert_eq!(LayerPath::new("./etc/").unwrap().to_string(), "/etc");
        assert!(LayerPath::new("../etc/passwd").is_err());
        assert!(LayerPath::new("a/../../b").is_err());
        assert!(LayerPath::new("/").is_err());
        let p = LayerPath::new("a/b/c").unwrap();
        assert_eq!(p.ancestors(), vec![LayerPath::new("a").unwrap(), LayerPath::new("a/b").unwrap()]);
        assert_eq!(p.file_name(), "c");
    }

    #[test]
    fn symlink_targets_resolve_lexically() {
        let p = LayerPath::new("usr/lib/os-release").unwrap();
        assert_eq!(p.resolve_link("../share/x").as_deref(), Some("/usr/share/x"));
        assert_eq!(p.resolve_link("/etc/x").as_deref(), Some("/etc/x"));
        assert_eq!(p.resolve_link("../../../etc/passwd"), None);
        assert_eq!(LayerPath::new("bin").unwrap().resolve_link("usr/bin").as_deref(), Some("/usr/bin"));
    }
}
