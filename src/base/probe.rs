//! What galley learns about a base image by reading it: its Python interpreter and its
//! C library, which decide which wheels fit and how venvs point at the interpreter.
//!
//! Paths come from the base's [`RootfsIndex`] (symlinks followed as the kernel would);
//! the few file contents needed (`libc.so.6`, the dpkg or apk database) are read from
//! the base's layer blobs, topmost layer first. The result is remembered per base in
//! `probes-v1/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Base, BaseError, io_error};
use crate::cache::Cache;
use crate::layer::{LayerPath, NodeKind, RootfsIndex, decompress};
use crate::manifest::PythonVersion;
use crate::oci::{Digest, Platform, to_canonical_json};

/// A Python interpreter inside the base image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// The interpreter's path in the image, e.g. `/usr/bin/python3.11`.
    pub executable: LayerPath,
    /// `(major, minor)`, e.g. `(3, 11)`.
    pub version: (u8, u8),
    /// The patch level when the image says (`PYTHON_VERSION`, dpkg or apk database).
    pub patch: Option<u16>,
}

impl Interpreter {
    pub fn python_version(&self) -> PythonVersion {
        PythonVersion { major: self.version.0, minor: self.version.1, patch: self.patch }
    }
}

/// The C library of an image, which decides its manylinux / musllinux wheel tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Libc {
    Glibc { major: u16, minor: u16 },
    Musl { major: u16, minor: u16 },
}

impl fmt::Display for Libc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Glibc { major, minor } => write!(f, "glibc {major}.{minor}"),
            Self::Musl { major, minor } => write!(f, "musl {major}.{minor}"),
        }
    }
}

impl FromStr for Libc {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a C library like \"glibc 2.36\" or \"musl 1.2\"");
        let (family, version) = s.split_once(' ').ok_or_else(bad)?;
        let (major, minor) = version.split_once('.').ok_or_else(bad)?;
        let (major, minor) = (major.parse().map_err(|_| bad())?, minor.parse().map_err(|_| bad())?);
        match family {
            "glibc" => Ok(Self::Glibc { major, minor }),
            "musl" => Ok(Self::Musl { major, minor }),
            _ => Err(bad()),
        }
    }
}

crate::serde_via_str!(Libc);

/// What galley learned about a base image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The digest of the base's image config: it names every layer by its diff_id.
    pub identity: Digest,
    pub description: String,
    pub platform: Platform,
    pub interpreter: Option<Interpreter>,
    pub libc: Option<Libc>,
}

/// Finds the base's Python interpreter and C library, reusing an earlier probe of the same base.
pub fn probe(base: &Base, cache: &Cache) -> Result<Probe, BaseError> {
    let identity = Digest::of(&to_canonical_json(&base.config));
    let record = cache.bucket("probes-v1").join(format!("{}.json", identity.hex()));
    if let Some(probe) = cache.read_record::<Probe>(&record) {
        return Ok(probe);
    }
    let index = &base.index;
    let mut interpreter = find_interpreter(index);
    let libc_file = find_libc(index);
    let musl = index.paths().any(|p| p.strip_prefix("lib/ld-musl-").is_some_and(|rest| !rest.contains('/')));
    let mut wanted: BTreeSet<String> = ["var/lib/dpkg/status", "lib/apk/db/installed"]
        .into_iter()
        .filter(|p| resolve(index, p).is_some_and(|(_, kind)| kind == NodeKind::File))
        .map(str::to_owned)
        .collect();
    let libc_version_from_name = libc_file.as_deref().and_then(glibc_from_file_name);
    if let (Some(file), None) = (&libc_file, libc_version_from_name) {
        wanted.insert(file.clone());
    }
    let contents = read_files(base, cache, &wanted)?;
    let text = |path: &str| contents.get(path).map(|b| String::from_utf8_lossy(b).into_owned());
    let dpkg = text("var/lib/dpkg/status");
    let apk = text("lib/apk/db/installed");

    if let Some(interp) = &mut interpreter {
        let (major, minor) = interp.version;
        interp.patch = config_python_patch(base, (major, minor))
            .or_else(|| dpkg.as_deref().and_then(|d| dpkg_python_patch(d, (major, minor))))
            .or_else(|| apk.as_deref().and_then(|a| apk_version(a, "python3")).and_then(|v| patch_of(&v, (major, minor))));
    }
    let libc = if musl {
        apk.as_deref().and_then(|a| apk_version(a, "musl")).and_then(|v| two_numbers(&v)).map(|(major, minor)| Libc::Musl { major, minor })
    } else {
        libc_version_from_name
            .or_else(|| libc_file.as_deref().and_then(|f| contents.get(f)).and_then(|bytes| glibc_from_contents(bytes)))
            .map(|(major, minor)| Libc::Glibc { major, minor })
    };
    let probe = Probe { identity, description: base.description.clone(), platform: base.platform(), interpreter, libc };
    cache.write_record(&record, &probe)?;
    Ok(probe)
}

/// Follows `path` through the index as the kernel would (symlinks in any component,
/// at most 40 of them). Returns the final path and what sits there.
fn resolve(index: &RootfsIndex, path: &str) -> Option<(String, NodeKind)> {
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(str::to_owned).collect();
    let mut current: Vec<String> = Vec::new();
    let mut hops = 0;
    let mut kind = NodeKind::Dir;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                current.pop();
                continue;
            }
            _ => {}
        }
        current.push(component);
        let here = LayerPath::new(&current.join("/")).ok()?;
        kind = index.get(&here)?.kind.clone();
        if let NodeKind::Symlink(target) = &kind {
            hops += 1;
            if hops > 40 {
                return None;
            }
            current.pop();
            if target.starts_with('/') {
                current.clear();
            }
            pending.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(str::to_owned));
        }
    }
    Some((current.join("/"), kind))
}

/// `python3.11` → `(3, 11)`.
fn python_name_version(name: &str) -> Option<(u8, u8)> {
    let (major, minor) = name.strip_prefix("python")?.split_once('.')?;
    Some((major.parse().ok().filter(|m| *m == 3)?, minor.parse().ok()?))
}

/// `usr/local/bin/python3` (official python images), then `usr/bin/python3` (distributions),
/// then the highest `python3.N` in either directory.
fn find_interpreter(index: &RootfsIndex) -> Option<Interpreter> {
    let found = |path: &str| -> Option<Interpreter> {
        let (real, _) = resolve(index, path).filter(|(_, kind)| *kind == NodeKind::File)?;
        let version = python_name_version(real.rsplit('/').next()?)?;
        Some(Interpreter { executable: LayerPath::new(&real).ok()?, version, patch: None })
    };
    for dir in ["usr/local/bin", "usr/bin"] {
        if let Some(interpreter) = found(&format!("{dir}/python3")) {
            return Some(interpreter);
        }
    }
    ["usr/local/bin/", "usr/bin/"]
        .iter()
        .flat_map(|dir| {
            index
                .paths()
                .filter_map(move |p| p.strip_prefix(dir).filter(|n| !n.contains('/')).map(|n| (n.to_owned(), format!("{dir}{n}"))))
        })
        .filter_map(|(name, path)| python_name_version(&name).and_then(|_| found(&path)))
        .max_by_key(|i| i.version)
}

/// The glibc shared object (`libc.so.6`) under the usual library directories.
fn find_libc(index: &RootfsIndex) -> Option<String> {
    let candidates: Vec<String> = index
        .paths()
        .filter(|p| p.ends_with("/libc.so.6"))
        .filter(|p| {
            let dir = &p[..p.len() - "/libc.so.6".len()];
            matches!(dir, "lib" | "lib64" | "usr/lib" | "usr/lib64")
                || dir.strip_prefix("lib/").or_else(|| dir.strip_prefix("usr/lib/")).is_some_and(|t| !t.contains('/') && t.contains("-linux-"))
        })
        .map(str::to_owned)
        .collect();
    candidates.iter().find_map(|p| resolve(index, p).filter(|(_, kind)| *kind == NodeKind::File).map(|(real, _)| real))
}

/// Before glibc 2.34, `libc.so.6` links to `libc-2.31.so`.
fn glibc_from_file_name(path: &str) -> Option<(u16, u16)> {
    two_numbers(path.rsplit('/').next()?.strip_prefix("libc-")?.strip_suffix(".so")?)
}

/// `GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.`, else the highest
/// `GLIBC_2.N` symbol version the library defines.
fn glibc_from_contents(bytes: &[u8]) -> Option<(u16, u16)> {
    let after = |needle: &[u8]| -> Vec<&[u8]> {
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| &bytes[i + needle.len()..]).collect()
    };
    let number = |rest: &[u8]| -> Option<(u16, u16)> {
        let text: String = rest.iter().take(12).take_while(|b| b.is_ascii_digit() || **b == b'.').map(|b| char::from(*b)).collect();
        two_numbers(text.trim_end_matches('.'))
    };
    after(b"release version ")
        .into_iter()
        .find_map(number)
        .or_else(|| after(b"GLIBC_").into_iter().filter_map(number).max())
}

/// `2.36`, `1.2.4`, `2.36-9+deb12u7` → the first two numbers.
fn two_numbers(version: &str) -> Option<(u16, u16)> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `3.11.2-6+deb12u6` → `2` when it starts with `3.11.`.
fn patch_of(version: &str, (major, minor): (u8, u8)) -> Option<u16> {
    let rest = version.strip_prefix(&format!("{major}.{minor}."))?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Official python images say `PYTHON_VERSION=3.11.9` in their config.
fn config_python_patch(base: &Base, version: (u8, u8)) -> Option<u16> {
    base.config.config.env.as_ref()?.iter().find_map(|e| e.strip_prefix("PYTHON_VERSION=")).and_then(|v| patch_of(v, version))
}

/// The version of `python3.X-minimal` (or `python3.X`) in a dpkg status file.
fn dpkg_python_patch(status: &str, (major, minor): (u8, u8)) -> Option<u16> {
    let versions: BTreeMap<&str, &str> = status
        .split("\n\n")
        .filter_map(|para| {
            let field = |name: &str| para.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
            Some((field("Package:")?, field("Version:")?))
        })
        .collect();
    [format!("python{major}.{minor}-minimal"), format!("libpython{major}.{minor}-minimal"), format!("python{major}.{minor}")]
        .iter()
        .find_map(|p| versions.get(p.as_str()))
        .and_then(|v| patch_of(v, (major, minor)))
}

/// The version of `package` in an apk database (`P:name` / `V:version` lines).
fn apk_version(installed: &str, package: &str) -> Option<String> {
    installed.split("\n\n").find_map(|para| {
        let mut lines = para.lines();
        lines.clone().any(|l| l.strip_prefix("P:") == Some(package)).then(|| lines.find_map(|l| l.strip_prefix("V:")).map(str::to_owned))?
    })
}

/// Reads the contents of `wanted` files from the layer blobs, topmost layer first.
fn read_files(base: &Base, cache: &Cache, wanted: &BTreeSet<String>) -> Result<BTreeMap<String, Vec<u8>>, BaseError> {
    let mut found = BTreeMap::new();
    let mut remaining = wanted.clone();
    for layer in base.layers.iter().rev() {
        if remaining.is_empty() {
            break;
        }
        let (files, links) = scan_layer(cache, &layer.digest, &remaining)?;
        // A hard link's data sits under its target's name, earlier in the same layer.
        let targets: BTreeSet<String> = links.values().cloned().collect();
        let (linked, _) = if targets.is_empty() { Default::default() } else { scan_layer(cache, &layer.digest, &targets)? };
        for (path, target) in links {
            if let Some(bytes) = linked.get(&target) {
                found.insert(path, bytes.clone());
            }
        }
        found.extend(files);
        // The index says each wanted path is a file: the topmost layer holding it has its contents.
        remaining.retain(|p| !found.contains_key(p));
    }
    Ok(found)
}

/// One pass over a layer: the regular files among `wanted` (at most 64 MiB each), and
/// the hard links among `wanted` with their targets.
type Scan = (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>);

fn scan_layer(cache: &Cache, digest: &Digest, wanted: &BTreeSet<String>) -> Result<Scan, BaseError> {
    const LIMIT: u64 = 64 << 20;
    let what = format!("base layer {digest}");
    let blob = File::open(cache.blob_path(digest)).map_err(io_error(&what))?;
    let mut archive = tar::Archive::new(decompress(std::io::BufReader::new(blob)).map_err(io_error(&what))?);
    let (mut files, mut links) = (BTreeMap::new(), BTreeMap::new());
    for entry in archive.entries().map_err(io_error(&what))? {
        let mut entry = entry.map_err(io_error(&what))?;
        let Ok(path) = LayerPath::new(&String::from_utf8_lossy(&entry.path_bytes())) else { continue };
        if !wanted.contains(path.as_str()) {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_file() && entry.size() <= LIMIT {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(io_error(&what))?;
            files.insert(path.as_str().to_owned(), bytes);
        } else if kind == tar::EntryType::Link
            && let Some(target) = entry.link_name_bytes().and_then(|l| LayerPath::new(&String::from_utf8_lossy(&l)).ok())
        {
            links.insert(path.as_str().to_owned(), target.as_str().to_owned());
        }
        if files.len() + links.len() == wanted.len() {
            break;
        }
    }
    Ok((files, links))
}

/// A Debian bookworm base with `python3`, made by mmdebstrap once and kept in the test
/// cache (about a minute the first time).
#[cfg(test)]
pub(crate) fn bookworm_python_base() -> (Cache, Base) {
    let cache = Cache::open(crate::test_cache_dir().join("cache")).unwrap();
    let spec = crate::manifest::BaseSpec::Debian {
        suite: "bookworm".into(),
        packages: vec!["python3".into()],
        variant: "minbase".into(),
        mirror: None,
    };
    let platform = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
    let ctx = super::ImportContext {
        cache: &cache,
        compression: crate::layer::Compression::Zstd,
        platform: Some(&platform),
        epoch: None,
        show_tool_output: false,
        on_bytes: &|_| {},
    };
    let base = super::import(&spec, &ctx).unwrap();
    (cache, base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{IndexEntry, Node};

    fn index(entries: &[(&str, NodeKind)]) -> RootfsIndex {
        let mut index = RootfsIndex::default();
        index.apply(
            entries
                .iter()
                .map(|(p, k)| IndexEntry { path: (*p).into(), node: Node { kind: k.clone(), mode: 0o755, uid: 0, gid: 0 }, content: None })
                .collect(),
        );
        index
    }

    #[test]
    fn symlinks_are_followed_through_every_component() {
        let link = |t: &str| NodeKind::Symlink(t.into());
        let idx = index(&[
            ("bin", link("usr/bin")),
            ("usr", NodeKind::Dir),
            ("usr/bin", NodeKind::Dir),
            ("usr/bin/python3", link("python3.11")),
            ("usr/bin/python3.11", NodeKind::File),
            ("usr/local", NodeKind::Dir),
            ("usr/local/bin", NodeKind::Dir),
            ("usr/local/bin/py", link("../../bin/python3")),
            ("usr/local/bin/loop", link("loop")),
        ]);
        assert_eq!(resolve(&idx, "bin/python3"), Some(("usr/bin/python3.11".into(), NodeKind::File)));
        assert_eq!(resolve(&idx, "/usr/local/bin/py"), Some(("usr/bin/python3.11".into(), NodeKind::File)));
        assert_eq!(resolve(&idx, "usr/local/bin/loop"), None);
        assert_eq!(resolve(&idx, "usr/bin/python2"), None);
        let interp = find_interpreter(&idx).unwrap();
        assert_eq!(interp.executable.to_string(), "/usr/bin/python3.11");
        assert_eq!(interp.version, (3, 11));
    }

    #[test]
    fn without_a_python3_link_the_highest_python3_n_wins() {
        let idx = index(&[
            ("usr", NodeKind::Dir),
            ("usr/local", NodeKind::Dir),
            ("usr/local/bin", NodeKind::Dir),
            ("usr/local/bin/python3.9", NodeKind::File),
            ("usr/local/bin/python3.12", NodeKind::File),
            ("usr/local/bin/python3.12-config", NodeKind::File),
        ]);
        assert_eq!(find_interpreter(&idx).unwrap().executable.to_string(), "/usr/local/bin/python3.12");
        assert_eq!(find_interpreter(&index(&[("usr", NodeKind::Dir)])), None);
    }

    #[test]
    fn versions_come_from_names_banners_and_package_databases() {
        assert_eq!(glibc_from_file_name("lib/x86_64-linux-gnu/libc-2.31.so"), Some((2, 31)));
        assert_eq!(glibc_from_file_name("lib/x86_64-linux-gnu/libc.so.6"), None);
        assert_eq!(glibc_from_contents(b"\0GLIBC_2.2.5\0GNU C Library (Debian GLIBC 2.36-9+deb12u7) stable release version 2.36.\n"), Some((2, 36)));
        assert_eq!(glibc_from_contents(b"GLIBC_2.17\0GLIBC_2.28\0GLIBC_PRIVATE\0GLIBC_2.3.4\0"), Some((2, 28)));
        let status = "Package: libc6\nVersion: 2.36-9\n\nPackage: python3.11-minimal\nStatus: install ok installed\nVersion: 3.11.2-6+deb12u6\n";
        assert_eq!(dpkg_python_patch(status, (3, 11)), Some(2));
        assert_eq!(dpkg_python_patch(status, (3, 12)), None);
        let apk = "C:Q1\nP:musl\nV:1.2.4-r2\n\nP:python3\nV:3.11.9-r0\n";
        assert_eq!(apk_version(apk, "musl").as_deref(), Some("1.2.4-r2"));
        assert_eq!(apk_version(apk, "python3").and_then(|v| patch_of(&v, (3, 11))), Some(9));
        assert_eq!(two_numbers("1.2.4-r2"), Some((1, 2)));
    }

    #[test]
    fn libc_round_trips() {
        for s in ["glibc 2.36", "musl 1.2"] {
            assert_eq!(s.parse::<Libc>().unwrap().to_string(), s);
        }
        assert!("glibc2.36".parse::<Libc>().is_err());
        assert!("bionic 1.0".parse::<Libc>().is_err());
    }

    #[test]
    fn a_debian_bookworm_base_has_python_3_11_and_glibc_2_36() {
        let (cache, base) = bookworm_python_base();
        let probe = probe(&base, &cache).unwrap();
        let interp = probe.interpreter.as_ref().unwrap();
        assert_eq!(interp.executable.to_string(), "/usr/bin/python3.11");
        assert_eq!(interp.version, (3, 11));
        assert!(interp.patch.is_some(), "bookworm's dpkg database names python3.11's patch level");
        assert_eq!(probe.libc, Some(Libc::Glibc { major: 2, minor: 36 }));
        assert_eq!(probe.platform.architecture, "amd64");
        // The second probe comes from the record and agrees.
        assert_eq!(super::probe(&base, &cache).unwrap(), probe);
    }
}
