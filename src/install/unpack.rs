//! Unpacking one wheel into an installed tree: validation first (names, sizes, dist-info,
//! WHEEL, RECORD), then extraction with every file checked against its RECORD hash,
//! `.data` subtrees moved to their scheme directories, `#!python` scripts rewritten,
//! entry point launchers generated, and RECORD and INSTALLER written for the result.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, Permissions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::str::FromStr;

use pep440_rs::Version;
use pep508_rs::PackageName;
use sha2::Digest as _;
use zip::{CompressionMethod, ZipArchive};

use super::inflate::Inflater;
use super::metadata::{EntryPoints, Script, parse_headers, shebang};
use super::record::{self, Algorithm, Hasher, RecordEntry};
use super::tree::{self, InstalledTree, TreeFile};
use super::{EnvLayout, InstallError, WheelFile, WheelFilename};
use crate::cache::{Cache, TempGuard};
use crate::layer::{DeflateStream, LayerPath};
use crate::oci::{Digest, HashingWriter};
use crate::progress::{Reporter, TaskKind};

/// Bounds that stop a zip bomb before it fills the disk. Every entry must also inflate
/// to exactly its declared size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes one wheel may unpack to.
    pub max_unpacked_bytes: u64,
    /// Most unpacked bytes per byte of wheel file, once past `ratio_floor_bytes`.
    pub max_ratio: u64,
    /// Unpacked size below which the ratio is not checked (small wheels of text compress well).
    pub ratio_floor_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // The largest real wheels (CUDA libraries) unpack to a few GiB at ratios under 5.
        Self { max_unpacked_bytes: 64 << 30, max_ratio: 100, ratio_floor_bytes: 256 << 20 }
    }
}

/// The text that `INSTALLER` files get.
const INSTALLER: &str = "galley";

/// Metadata files read whole into memory are capped at this size.
const MAX_METADATA_BYTES: u64 = 64 << 20;

/// Installs wheels into installed trees in the content store.
pub struct Installer<'a> {
    cache: &'a Cache,
    reporter: &'a dyn Reporter,
    limits: Limits,
}

impl<'a> Installer<'a> {
    pub fn new(cache: &'a Cache, reporter: &'a dyn Reporter) -> Self {
        Self { cache, reporter, limits: Limits::default() }
    }

    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Installs each wheel for `layout`, in parallel; the result keeps the input order.
    pub fn install_all(&self, wheels: &[WheelFile], layout: &EnvLayout) -> Result<Vec<InstalledTree>, InstallError> {
        let size = |w: &WheelFile| fs::metadata(&w.path).map_or(0, |m| m.len());
        crate::par_map_largest_first(wheels, size, |w| self.install(w, layout)).into_iter().collect()
    }

    /// Returns the installed tree of `wheel` for `layout`, unpacking it only when the
    /// store lacks it. The wheel's sha256 is checked first; on any error nothing is left.
    pub fn install(&self, wheel: &WheelFile, layout: &EnvLayout) -> Result<InstalledTree, InstallError> {
        let key = tree::key(wheel, layout);
        if let Some(tree) = tree::load(self.cache, &key, wheel) {
            return Ok(tree);
        }
        // Builds sharing the cache wait for each other instead of unpacking twice.
        let _lock = self.cache.lock(&format!("tree-{}", key.hex()))?;
        if let Some(tree) = tree::load(self.cache, &key, wheel) {
            return Ok(tree);
        }
        let read_err = |source| InstallError::Read { wheel: wheel.filename.to_string(), path: wheel.path.clone(), source };
        let file = File::open(&wheel.path).map_err(read_err)?;
        let (actual, _) = Digest::of_reader(BufReader::with_capacity(1 << 20, file)).map_err(read_err)?;
        if actual != wheel.sha256 {
            return Err(InstallError::HashMismatch {
                wheel: wheel.filename.to_string(),
                path: wheel.path.clone(),
                expected: wheel.sha256.clone(),
                actual,
            });
        }

        let staging = self.cache.temp_path("tree");
        let guard = TempGuard(staging.clone());
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| InstallError::Write { wheel: wheel.filename.to_string(), path, source }
        };
        let root = staging.join(tree::ROOT_DIR);
        fs::create_dir_all(&root).map_err(write_err(&root))?;
        let task = self.reporter.on_task_start(TaskKind::Install, &wheel.filename.package(), None);
        let unpacked = Unpack::open(wheel, layout, &self.limits, &root)
            .and_then(|u| u.run(&|bytes| self.reporter.on_task_progress(task, bytes)));
        self.reporter.on_task_done(task);
        let (name, version, files, dirs) = unpacked?;
        let tree = InstalledTree {
            name,
            version,
            wheel: wheel.filename.clone(),
            wheel_sha256: wheel.sha256.clone(),
            key: key.clone(),
            files,
            dirs,
            root: PathBuf::new(),
            wheel_path: Arc::default(),
        };
        let record = staging.join(tree::RECORD_FILE);
        let json = serde_json::to_vec(&tree).map_err(|e| write_err(&record)(e.into()))?;
        fs::write(&record, json).map_err(write_err(&record))?;
        let dest = tree::dir(self.cache, &key);
        if let Err(e) = fs::rename(&staging, &dest) {
            // Another process may have finished the same tree first (without our lock,
            // e.g. on a filesystem without locks); theirs is as good as ours.
            return tree::load(self.cache, &key, wheel).ok_or_else(|| write_err(&dest)(e));
        }
        std::mem::forget(guard);
        tree::load(self.cache, &key, wheel).ok_or_else(|| write_err(&dest)(io::Error::other("the tree vanished after it was written")))
    }
}

/// Where a `.data/<key>/` subtree goes, relative to the env prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    SitePackages,
    Scripts,
    Headers,
    Data,
}

/// What the zip directory says about one entry.
struct Named {
    name: String,
    is_dir: bool,
    size: u64,
    executable: bool,
    deflated: bool,
}

/// One zip entry and where it goes.
struct Planned {
    index: usize,
    name: String,
    dest: LayerPath,
    scheme: Scheme,
    size: u64,
    executable: bool,
    /// Stored with method deflate.
    deflated: bool,
    /// A `.data/scripts` file shadowed by an entry point of the same name: checked, not installed.
    skip: bool,
}

struct Unpack<'a> {
    wheel: &'a WheelFile,
    layout: &'a EnvLayout,
    root: &'a Path,
    archive: ZipArchive<BufReader<File>>,
    name: PackageName,
    version: Version,
    dist_info: String,
    record: Vec<RecordEntry>,
    entry_points: EntryPoints,
    files: Vec<Planned>,
    dirs: BTreeSet<LayerPath>,
}

type Unpacked = (PackageName, Version, Vec<TreeFile>, Vec<LayerPath>);

impl<'a> Unpack<'a> {
    fn wheel_name(&self) -> String {
        self.wheel.filename.to_string()
    }

    /// Reads the archive's directory and metadata and plans every entry, writing nothing.
    fn open(wheel: &'a WheelFile, layout: &'a EnvLayout, limits: &Limits, root: &'a Path) -> Result<Self, InstallError> {
        let w = || wheel.filename.to_string();
        let file = File::open(&wheel.path).map_err(|source| InstallError::Read { wheel: w(), path: wheel.path.clone(), source })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut archive =
            ZipArchive::new(BufReader::with_capacity(256 * 1024, file)).map_err(|source| InstallError::Zip { wheel: w(), source })?;
        if archive.has_duplicate_names() {
            return Err(InstallError::UnsafeEntry {
                wheel: w(),
                entry: "(several)".into(),
                why: "the archive lists the same name more than once, so what gets installed would depend on the reader".into(),
            });
        }
        let bomb = |why: String| InstallError::ZipBomb { wheel: w(), why };
        let mut total: u64 = 0;
        let mut names = Vec::with_capacity(archive.len());
        for i in 0..archive.len() {
            let entry = archive.by_index_data(i).map_err(|source| InstallError::Zip { wheel: w(), source })?;
            let name = entry.name().map_err(|source| InstallError::Zip { wheel: w(), source })?.into_owned();
            check_entry_name(&name).map_err(|why| InstallError::UnsafeEntry { wheel: w(), entry: name.clone(), why: why.into() })?;
            if entry.encrypted() {
                return Err(InstallError::UnsafeEntry { wheel: w(), entry: name, why: "it is encrypted".into() });
            }
            total = total.saturating_add(entry.size());
            let executable = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
            let deflated = entry.compression() == CompressionMethod::Deflated;
            names.push(Named { name, is_dir: entry.is_dir(), size: entry.size(), executable, deflated });
        }
        if total > limits.max_unpacked_bytes {
            return Err(bomb(format!("it would unpack to {total} bytes, over the limit of {}", limits.max_unpacked_bytes)));
        }
        if total > limits.ratio_floor_bytes && total / file_len.max(1) > limits.max_ratio {
            return Err(bomb(format!(
                "{file_len} bytes would unpack to {total} bytes, more than {} times the archive",
                limits.max_ratio
            )));
        }
        if archive.has_overlapping_entries().map_err(|source| InstallError::Zip { wheel: w(), source })? {
            return Err(bomb("several entries share the same compressed bytes".into()));
        }

        let dist_infos: BTreeSet<&str> = names
            .iter()
            .filter_map(|n| n.name.split('/').next())
            .filter(|top| top.ends_with(".dist-info"))
            .collect();
        let dist_info = match dist_infos.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => one.trim_end_matches(".dist-info").to_owned(),
            [] => return Err(malformed(w(), "*.dist-info", "the wheel has no .dist-info directory")),
            many => return Err(malformed(w(), "*.dist-info", &format!("the wheel has several: {}", many.join(", ")))),
        };
        let (dir_name, dir_version) =
            dist_info.rsplit_once('-').ok_or_else(|| malformed(w(), &format!("{dist_info}.dist-info"), "its name has no version"))?;
        let (name, version) = check_identity(&wheel.filename, "dist-info directory", dir_name, dir_version)?;

        let mut unpack = Self {
            wheel,
            layout,
            root,
            archive,
            name,
            version,
            dist_info,
            record: Vec::new(),
            entry_points: EntryPoints::default(),
            files: Vec::new(),
            dirs: BTreeSet::new(),
        };
        unpack.read_metadata()?;
        unpack.plan(names)?;
        Ok(unpack)
    }

    fn read_metadata(&mut self) -> Result<(), InstallError> {
        let metadata_name = format!("{}.dist-info/METADATA", self.dist_info);
        let metadata = parse_headers(&self.read_small(&metadata_name)?);
        let field = |key: &str| metadata.get(key).and_then(|v| v.first()).cloned();
        let (Some(name), Some(version)) = (field("Name"), field("Version")) else {
            return Err(malformed(self.wheel_name(), &metadata_name, "it lacks a Name or Version field"));
        };
        check_identity(&self.wheel.filename, "METADATA", &name, &version)?;

        let wheel_name = format!("{}.dist-info/WHEEL", self.dist_info);
        let wheel_meta = parse_headers(&self.read_small(&wheel_name)?);
        let wheel_version = wheel_meta.get("Wheel-Version").and_then(|v| v.first()).cloned().unwrap_or_default();
        if wheel_version.split('.').next() != Some("1") {
            return Err(malformed(
                self.wheel_name(),
                &wheel_name,
                &format!("Wheel-Version `{wheel_version}` is not 1.x, which is the only version galley installs"),
            ));
        }
        // Root-Is-Purelib picks purelib or platlib; in a venv both are site-packages.

        let record_name = format!("{}.dist-info/RECORD", self.dist_info);
        let record_text = self.read_small(&record_name)?;
        self.record = record::parse(&record_text).map_err(|why| malformed(self.wheel_name(), &record_name, &why))?;

        let entry_points_name = format!("{}.dist-info/entry_points.txt", self.dist_info);
        if self.archive.index_for_name(&entry_points_name).is_some() {
            let text = self.read_small(&entry_points_name)?;
            self.entry_points = EntryPoints::parse(&text).map_err(|why| malformed(self.wheel_name(), &entry_points_name, &why))?;
        }
        Ok(())
    }

    /// Reads a small text file of the archive whole.
    fn read_small(&mut self, name: &str) -> Result<String, InstallError> {
        let wheel = self.wheel_name();
        let mut entry = match self.archive.by_name(name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => return Err(malformed(wheel, name, "the wheel does not contain it")),
            Err(source) => return Err(InstallError::Zip { wheel, source }),
        };
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_METADATA_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| malformed(wheel.clone(), name, &e.to_string()))?;
        String::from_utf8(bytes).map_err(|_| malformed(wheel, name, "it is not UTF-8"))
    }

    /// Maps every entry to its place under the env prefix.
    fn plan(&mut self, names: Vec<Named>) -> Result<(), InstallError> {
        let data_dir = format!("{}.data", self.dist_info);
        let (major, minor) = self.layout.interpreter.version;
        let site = format!("lib/python{major}.{minor}/site-packages");
        let headers = format!("include/site/python{major}.{minor}/{}", self.name);
        let scripts: HashSet<&str> = self.entry_points.console.iter().chain(&self.entry_points.gui).map(|s| s.name.as_str()).collect();
        let mut seen: HashMap<LayerPath, String> = HashMap::new();
        for (index, Named { name, is_dir, size, executable, deflated }) in names.into_iter().enumerate() {
            let unsafe_entry = |why: String| InstallError::UnsafeEntry { wheel: self.wheel.filename.to_string(), entry: name.clone(), why };
            let (scheme, rest) = match name.split_once('/') {
                Some((top, rest)) if top == data_dir => match rest.split_once('/') {
                    Some(("purelib" | "platlib", r)) => (Scheme::SitePackages, r),
                    Some(("scripts", r)) => (Scheme::Scripts, r),
                    Some(("headers", r)) => (Scheme::Headers, r),
                    Some(("data", r)) => (Scheme::Data, r),
                    None if is_dir => continue,
                    _ => return Err(unsafe_entry(format!("`{data_dir}/` may only hold purelib, platlib, scripts, headers and data"))),
                },
                _ => (Scheme::SitePackages, name.as_str()),
            };
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() {
                continue;
            }
            if scheme == Scheme::Scripts && rest.contains('/') {
                return Err(unsafe_entry("scripts may not sit in subdirectories of `.data/scripts`".into()));
            }
            let base = match scheme {
                Scheme::SitePackages => site.as_str(),
                Scheme::Scripts => "bin",
                Scheme::Headers => headers.as_str(),
                Scheme::Data => "",
            };
            let dest = LayerPath::new(&format!("{base}/{rest}")).map_err(|e| unsafe_entry(e.why.into()))?;
            if is_dir {
                self.dirs.insert(dest);
                continue;
            }
            if is_reserved(dest.as_str(), minor) {
                return Err(InstallError::ReservedPath { wheel: self.wheel_name(), path: dest.as_str().to_owned() });
            }
            // pip and uv skip a `.data/scripts` file that an entry point of the same name replaces.
            let stem = rest.strip_suffix(".exe").or_else(|| rest.strip_suffix("-script.py")).or_else(|| rest.strip_suffix(".pya"));
            let skip = scheme == Scheme::Scripts && scripts.contains(stem.unwrap_or(rest));
            if !skip && let Some(other) = seen.insert(dest.clone(), name.clone()) {
                return Err(unsafe_entry(format!("`{other}` installs to the same place, {dest}")));
            }
            self.files.push(Planned { index, name, dest, scheme, size, executable, deflated, skip });
        }
        Ok(())
    }

    /// Extracts the planned entries and writes launchers, INSTALLER and RECORD.
    fn run(mut self, on_bytes: &dyn Fn(u64)) -> Result<Unpacked, InstallError> {
        let (major, minor) = self.layout.interpreter.version;
        let site = LayerPath::new(&format!("lib/python{major}.{minor}/site-packages")).map_err(|e| self.write_err(self.root, e))?;
        let python = format!("/{}/bin/python", self.layout.prefix.as_str());
        let record_rows: HashMap<String, usize> = self.record.iter().enumerate().map(|(i, e)| (e.path.clone(), i)).collect();
        let record_name = format!("{}.dist-info/RECORD", self.dist_info);
        let unrecorded = [record_name.clone(), format!("{record_name}.jws"), format!("{record_name}.p7s")];
        let mut out: BTreeMap<LayerPath, TreeFile> = BTreeMap::new();
        let mut made_dirs: HashSet<PathBuf> = HashSet::new();
        for dir in &self.dirs {
            let path = self.root.join(dir.as_str());
            fs::create_dir_all(&path).map_err(|e| self.write_err(&path, e))?;
        }
        let planned = std::mem::take(&mut self.files);
        for p in &planned {
            let row = if unrecorded.contains(&p.name) {
                None
            } else {
                let i = *record_rows.get(&p.name).ok_or_else(|| self.record_err(&p.name, "it is not listed in RECORD"))?;
                Some(i)
            };
            let expected = match row.map(|i| &self.record[i]) {
                Some(RecordEntry { hash: Some(hash), size, .. }) => {
                    let (algorithm, raw) = record::parse_hash(hash).map_err(|why| self.record_err(&p.name, &why))?;
                    Some((algorithm, raw, *size))
                }
                Some(_) => return Err(self.record_err(&p.name, "RECORD lists it without a hash")),
                None => None,
            };
            let rewrite = p.scheme == Scheme::Scripts && !p.skip;
            let mode = if p.executable || p.scheme == Scheme::Scripts { 0o755 } else { 0o644 };
            let disk = self.root.join(p.dest.as_str());
            if !p.skip
                && let Some(parent) = disk.parent()
                && made_dirs.insert(parent.to_owned())
            {
                fs::create_dir_all(parent).map_err(|e| self.write_err(parent, e))?;
            }
            let extracted = self.extract(p, expected.as_ref().map(|e| e.0), rewrite.then_some(python.as_str()), &disk)?;
            if let Some((_, raw, size)) = &expected {
                if extracted.original_hash != *raw {
                    return Err(self.record_err(&p.name, "its hash differs from the one RECORD lists"));
                }
                if size.is_some_and(|s| s != p.size) {
                    return Err(self.record_err(&p.name, &format!("it has {} bytes, RECORD says {}", p.size, size.unwrap_or(0))));
                }
            }
            on_bytes(p.size);
            if p.skip {
                continue;
            }
            fs::set_permissions(&disk, Permissions::from_mode(mode)).map_err(|e| self.write_err(&disk, e))?;
            if let Some(i) = row {
                let entry = &mut self.record[i];
                entry.path = relative(&site, &p.dest);
                if extracted.rewritten {
                    entry.hash = Some(record::sha256_field(&extracted.sha256));
                    entry.size = Some(extracted.size);
                }
            }
            let file = TreeFile { path: p.dest.clone(), mode, size: extracted.size, sha256: extracted.sha256, deflated: extracted.stream };
            out.insert(p.dest.clone(), file);
        }

        let launchers = self.entry_points.console.iter().chain(&self.entry_points.gui).cloned().collect::<Vec<Script>>();
        let shebang = shebang(&python);
        for script in launchers {
            let dest = self.script_path(&script.name, minor)?;
            let text = script.launcher(&shebang);
            if out.contains_key(&dest) {
                return Err(malformed(
                    self.wheel_name(),
                    &format!("{}.dist-info/entry_points.txt", self.dist_info),
                    &format!("script `{}` is declared twice or clashes with a file", script.name),
                ));
            }
            let file = self.write_generated(&dest, text.as_bytes(), 0o755, &site)?;
            out.insert(dest, file);
        }
        let installer = LayerPath::new(&format!("{}/{}.dist-info/INSTALLER", site.as_str(), self.dist_info)).map_err(|e| self.write_err(self.root, e))?;
        out.remove(&installer);
        let installer_rel = relative(&site, &installer);
        self.record.retain(|e| e.path != installer_rel);
        let file = self.write_generated(&installer, INSTALLER.as_bytes(), 0o644, &site)?;
        out.insert(installer, file);

        let record_dest = LayerPath::new(&format!("{}/{record_name}", site.as_str())).map_err(|e| self.write_err(self.root, e))?;
        let text = record::write(&mut self.record);
        let disk = self.root.join(record_dest.as_str());
        let (sha256, size) = write_file(&disk, text.as_bytes(), 0o644).map_err(|e| self.write_err(&disk, e))?;
        out.insert(record_dest.clone(), TreeFile { path: record_dest, mode: 0o644, size, sha256, deflated: None });

        let dirs = self.dirs.into_iter().filter(|d| !out.contains_key(d)).collect();
        Ok((self.name, self.version, out.into_values().collect(), dirs))
    }

    /// Streams one entry to disk (unless skipped), hashing the original bytes with the
    /// RECORD's algorithm and the written bytes with sha256 (once, when they are the same
    /// bytes and RECORD uses sha256). Scripts are read whole so a `#!python` first line can
    /// be replaced by the env's interpreter. A deflated entry installed unchanged is
    /// inflated by [`Inflater`], which tells whether gzip layers may copy its stream.
    fn extract(&mut self, p: &Planned, algorithm: Option<Algorithm>, rewrite_for: Option<&str>, disk: &Path) -> Result<Extracted, InstallError> {
        let wheel = self.wheel.filename.to_string();
        let write_err = |e: io::Error| InstallError::Write { wheel: wheel.clone(), path: disk.to_owned(), source: e };
        let zip_err = |source| InstallError::Zip { wheel: wheel.clone(), source };
        let mut entry = if p.deflated && !p.skip && rewrite_for.is_none() {
            let raw = self.archive.by_index_raw(p.index).map_err(zip_err)?;
            let offset = raw.data_start().ok_or_else(|| zip_err(zip::result::ZipError::InvalidArchive("no data offset".into())))?;
            let stream = DeflateStream { offset, length: raw.compressed_size(), crc32: raw.crc32() };
            EntryReader::Raw(Box::new(Inflater::new(raw, stream)))
        } else {
            EntryReader::Zip(self.archive.by_index(p.index).map_err(zip_err)?)
        };
        // Skipped entries are only checked; scripts are collected in `script` first.
        let mut out: Box<dyn Write> = if p.skip || rewrite_for.is_some() {
            Box::new(io::sink())
        } else {
            Box::new(BufWriter::with_capacity(256 * 1024, File::create(disk).map_err(write_err)?))
        };
        let mut script = Vec::new();
        let same_hash = rewrite_for.is_none() && algorithm == Some(Algorithm::Sha256);
        let mut original = algorithm.filter(|_| !same_hash).map(Hasher::new);
        let mut sha = sha2::Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n: u64 = 0;
        loop {
            // Read up to the declared size, then probe for one byte more: a lie about the
            // size shows up exactly at that boundary.
            let want = if n < p.size { usize::try_from(p.size - n).unwrap_or(usize::MAX).min(buf.len()) } else { 1 };
            let got = match entry.read(&mut buf[..want]) {
                Ok(got) => got,
                // The reader refuses to go past the declared size: the headers lie.
                Err(_) if n >= p.size => return Err(inflates_past(&wheel, p)),
                Err(e) => {
                    return Err(InstallError::UnsafeEntry { wheel, entry: p.name.clone(), why: format!("it cannot be inflated: {e}") });
                }
            };
            if got == 0 {
                break;
            }
            n += got as u64;
            if n > p.size {
                return Err(inflates_past(&wheel, p));
            }
            if let Some(h) = original.as_mut() {
                h.update(&buf[..got]);
            }
            if rewrite_for.is_some() {
                script.extend_from_slice(&buf[..got]);
            } else {
                sha.update(&buf[..got]);
                out.write_all(&buf[..got]).map_err(write_err)?;
            }
        }
        if n < p.size {
            return Err(InstallError::UnsafeEntry { wheel, entry: p.name.clone(), why: format!("it holds {n} bytes, not the declared {}", p.size) });
        }
        let stream = match entry {
            EntryReader::Raw(inflater) => inflater
                .finish()
                .map_err(|why| InstallError::UnsafeEntry { wheel: wheel.clone(), entry: p.name.clone(), why: format!("it cannot be inflated: {why}") })?,
            EntryReader::Zip(_) => None,
        };
        out.flush().map_err(write_err)?;
        if let Some(python) = rewrite_for {
            let original_hash = original.map(Hasher::finish).unwrap_or_default();
            let rewritten = script.starts_with(b"#!python");
            if rewritten {
                let rest = script.iter().position(|&b| b == b'\n').map_or(&[][..], |nl| &script[nl + 1..]);
                let mut new = format!("{}\n", shebang(python)).into_bytes();
                new.extend_from_slice(rest);
                script = new;
            }
            let (sha256, size) = write_file(disk, &script, 0o755).map_err(write_err)?;
            return Ok(Extracted { original_hash, sha256, size, rewritten, stream: None });
        }
        let sha = sha.finalize();
        let original_hash = if same_hash { sha.to_vec() } else { original.map(Hasher::finish).unwrap_or_default() };
        let sha256 = Digest::from_sha256(&sha);
        Ok(Extracted { original_hash, sha256, size: n, rewritten: false, stream })
    }

    fn script_path(&self, name: &str, minor: u8) -> Result<LayerPath, InstallError> {
        let bad = |why: &str| InstallError::UnsafeEntry { wheel: self.wheel_name(), entry: format!("entry point `{name}`"), why: why.into() };
        if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
            return Err(bad("a script name must be a plain file name"));
        }
        let path = format!("bin/{name}");
        if is_reserved(&path, minor) {
            return Err(InstallError::ReservedPath { wheel: self.wheel_name(), path });
        }
        LayerPath::new(&path).map_err(|e| bad(e.why))
    }

    /// Writes a file galley generates and records it in RECORD.
    fn write_generated(&mut self, dest: &LayerPath, bytes: &[u8], mode: u32, site: &LayerPath) -> Result<TreeFile, InstallError> {
        let disk = self.root.join(dest.as_str());
        if let Some(parent) = disk.parent() {
            fs::create_dir_all(parent).map_err(|e| self.write_err(parent, e))?;
        }
        let (sha256, size) = write_file(&disk, bytes, mode).map_err(|e| self.write_err(&disk, e))?;
        self.record.push(RecordEntry { path: relative(site, dest), hash: Some(record::sha256_field(&sha256)), size: Some(size) });
        Ok(TreeFile { path: dest.clone(), mode, size, sha256, deflated: None })
    }

    fn record_err(&self, entry: &str, why: &str) -> InstallError {
        InstallError::RecordMismatch { wheel: self.wheel_name(), entry: entry.to_owned(), why: why.to_owned() }
    }

    fn write_err(&self, path: &Path, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> InstallError {
        InstallError::Write { wheel: self.wheel_name(), path: path.to_owned(), source: io::Error::other(e) }
    }
}

struct Extracted {
    /// The entry's bytes as the wheel has them, hashed with RECORD's algorithm.
    original_hash: Vec<u8>,
    /// What was written.
    sha256: Digest,
    size: u64,
    rewritten: bool,
    /// The entry's deflate stream, when gzip layers may copy it (see [`Inflater`]).
    stream: Option<DeflateStream>,
}

/// An entry's bytes: from the zip reader, or inflated from its raw stream by [`Inflater`].
enum EntryReader<'z> {
    Zip(zip::read::ZipFile<'z, BufReader<File>>),
    Raw(Box<Inflater<zip::read::ZipFile<'z, BufReader<File>>>>),
}

impl Read for EntryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Zip(entry) => entry.read(buf),
            Self::Raw(inflater) => inflater.read(buf),
        }
    }
}

fn inflates_past(wheel: &str, p: &Planned) -> InstallError {
    InstallError::ZipBomb { wheel: wheel.to_owned(), why: format!("`{}` inflates past its declared {} bytes", p.name, p.size) }
}

fn malformed(wheel: String, file: &str, why: &str) -> InstallError {
    InstallError::Malformed { wheel, file: file.to_owned(), why: why.to_owned() }
}

/// Rejects names that are absolute, climb with `..`, use backslashes or NUL bytes.
fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.starts_with('/') {
        return Err("it is an absolute path");
    }
    if name.contains('\\') {
        return Err("it contains a backslash, which is not a path separator in wheels");
    }
    if name.contains('\0') {
        return Err("it contains a NUL byte");
    }
    if name.split('/').any(|c| c == "..") {
        return Err("it climbs out of the install directory with `..`");
    }
    if name.split('/').all(|c| c.is_empty() || c == ".") {
        return Err("it names no file");
    }
    Ok(())
}

/// Paths the venv skeleton owns; a wheel writing them would break the env.
fn is_reserved(path: &str, minor: u8) -> bool {
    let Some(name) = path.strip_prefix("bin/") else { return path == "pyvenv.cfg" };
    matches!(name, "python" | "python3" | "pythonw") || name == format!("python3.{minor}") || name.starts_with("activate")
}

/// Checks a name and version found inside the wheel against its file name; local
/// version labels may be dropped from the file name, as uv allows.
fn check_identity(filename: &WheelFilename, what: &'static str, name: &str, version: &str) -> Result<(PackageName, Version), InstallError> {
    let mismatch = |found: String| InstallError::NameMismatch { wheel: filename.to_string(), what, found, expected: filename.package() };
    let parsed_name = PackageName::from_str(name).map_err(|_| mismatch(format!("{name} {version}")))?;
    let parsed_version = Version::from_str(version).map_err(|_| mismatch(format!("{name} {version}")))?;
    let same_version = parsed_version == *filename.version() || parsed_version.clone().without_local() == *filename.version();
    if parsed_name != *filename.name() || !same_version {
        return Err(mismatch(format!("{name} {version}")));
    }
    Ok((parsed_name, parsed_version))
}

/// `to` relative to the directory `from`, with `..` steps (RECORD paths are relative to site-packages).
fn relative(from: &LayerPath, to: &LayerPath) -> String {
    let from: Vec<&str> = from.as_str().split('/').collect();
    let to: Vec<&str> = to.as_str().split('/').collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    parts.join("/")
}

/// Writes a whole file with `mode`, returning its sha256 and size.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<(Digest, u64)> {
    let mut writer = HashingWriter::new(File::create(path)?);
    writer.write_all(bytes)?;
    let (sha256, size, file) = writer.finish();
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok((sha256, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_escape_are_rejected() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\\b", "a\0b", "./"] {
            assert!(check_entry_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a/b.py", "pkg-1.0.data/scripts/x", "a/./b", "dir/"] {
            assert!(check_entry_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn relative_paths_climb_out_of_site_packages() {
        let site = LayerPath::new("lib/python3.11/site-packages").unwrap();
        assert_eq!(relative(&site, &LayerPath::new("bin/f2py").unwrap()), "../../../bin/f2py");
        assert_eq!(relative(&site, &LayerPath::new("lib/python3.11/site-packages/a/b.py").unwrap()), "a/b.py");
        assert_eq!(relative(&site, &LayerPath::new("include/site/python3.11/x/y.h").unwrap()), "../../../include/site/python3.11/x/y.h");
    }

    #[test]
    fn reserved_paths_belong_to_the_venv() {
        assert!(is_reserved("bin/python", 11) && is_reserved("bin/python3.11", 11) && is_reserved("bin/activate.fish", 11));
        assert!(is_reserved("pyvenv.cfg", 11));
        assert!(!is_reserved("bin/python3.12", 11) && !is_reserved("bin/pythonista", 11) && !is_reserved("lib/pyvenv.cfg", 11));
    }
}
