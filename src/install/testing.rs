//! Test helpers: real wheels from PyPI (downloaded once into the test cache), wheels the
//! tests build themselves, the host's Python and uv, and unpacking planned layers.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

use super::{EnvLayout, WheelFile};
use crate::base::Interpreter;
use crate::cache::Cache;
use crate::layer::{Compression, LayerPath, decompress, pack_cached};
use crate::oci::Digest;
use crate::plan::PlannedLayer;

/// Downloads `filename` of `project` `version` from PyPI into the test cache (once),
/// verifying the sha256 PyPI publishes.
pub(crate) fn pypi_wheel(project: &str, version: &str, filename: &str) -> WheelFile {
    let dir = crate::test_cache_dir().join("wheels");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(filename);
    let sha_path = dir.join(format!("{filename}.sha256"));
    if let (true, Ok(sha)) = (path.is_file(), std::fs::read_to_string(&sha_path)) {
        return WheelFile { path, filename: filename.parse().unwrap(), sha256: sha.trim().parse().unwrap() };
    }
    let agent = crate::http::agent(&crate::http::ClientOptions::default()).unwrap();
    let mut index = agent
        .get(&format!("https://pypi.org/simple/{project}/"))
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .unwrap();
    assert_eq!(index.status(), 200, "PyPI's index page for {project} {version}");
    let json: serde_json::Value = serde_json::from_reader(index.body_mut().with_config().reader()).unwrap();
    let file = json["files"].as_array().unwrap().iter().find(|u| u["filename"] == filename).unwrap_or_else(|| panic!("{filename} on PyPI"));
    let sha256: Digest = format!("sha256:{}", file["hashes"]["sha256"].as_str().unwrap()).parse().unwrap();
    let mut response = agent.get(file["url"].as_str().unwrap()).call().unwrap();
    assert_eq!(response.status(), 200);
    let mut bytes = Vec::new();
    response.body_mut().with_config().limit(2 << 30).reader().read_to_end(&mut bytes).unwrap();
    assert_eq!(Digest::of(&bytes), sha256, "{filename} as downloaded");
    // Tests running at once may fetch the same wheel: each writes its own temp file.
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).unwrap();
    tmp.write_all(&bytes).unwrap();
    tmp.persist(&path).unwrap();
    std::fs::write(&sha_path, sha256.to_string()).unwrap();
    WheelFile { path, filename: filename.parse().unwrap(), sha256 }
}

/// The real wheels the install tests use (Python 3.11, manylinux x86_64).
pub(crate) fn real_wheels() -> Vec<WheelFile> {
    [
        ("numpy", "2.1.3", "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
        ("soundfile", "0.12.1", "soundfile-0.12.1-py2.py3-none-manylinux_2_31_x86_64.whl"),
        ("cffi", "1.17.1", "cffi-1.17.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
        ("pycparser", "2.22", "pycparser-2.22-py3-none-any.whl"),
        // `.data/scripts` with `#!python` shebangs
        ("jsonpatch", "1.33", "jsonpatch-1.33-py2.py3-none-any.whl"),
        ("jsonpointer", "2.4", "jsonpointer-2.4-py2.py3-none-any.whl"),
        // many console scripts
        ("docutils", "0.21.2", "docutils-0.21.2-py3-none-any.whl"),
        // `.data/data/share/jupyter/...`
        ("ipykernel", "6.29.5", "ipykernel-6.29.5-py3-none-any.whl"),
    ]
    .into_iter()
    .map(|(p, v, f)| pypi_wheel(p, v, f))
    .collect()
}

/// A wheel built by a test: `files` are written as given; RECORD is computed unless
/// overridden; METADATA and WHEEL are added unless the test removes them.
pub(crate) struct TestWheel {
    pub dist: String,
    pub version: String,
    pub files: Vec<(String, Vec<u8>, u32)>,
    pub dirs: Vec<String>,
    pub record: Option<String>,
    pub tag: String,
}

impl TestWheel {
    pub fn new(dist: &str, version: &str) -> Self {
        let info = format!("{dist}-{version}.dist-info");
        let metadata = format!("Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n");
        let wheel = "Wheel-Version: 1.0\nGenerator: galley-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
        Self {
            dist: dist.into(),
            version: version.into(),
            files: vec![(format!("{info}/METADATA"), metadata.into_bytes(), 0o644), (format!("{info}/WHEEL"), wheel.into(), 0o644)],
            dirs: Vec::new(),
            record: None,
            tag: "py3-none-any".into(),
        }
    }

    pub fn info(&self) -> String {
        format!("{}-{}.dist-info", self.dist, self.version)
    }

    pub fn data(&self) -> String {
        format!("{}-{}.data", self.dist, self.version)
    }

    #[must_use]
    pub fn file(mut self, path: &str, bytes: impl AsRef<[u8]>) -> Self {
        self.files.retain(|(p, ..)| p != path);
        self.files.push((path.into(), bytes.as_ref().to_vec(), 0o644));
        self
    }

    #[must_use]
    pub fn exec(mut self, path: &str, bytes: impl AsRef<[u8]>) -> Self {
        self.files.push((path.into(), bytes.as_ref().to_vec(), 0o755));
        self
    }

    #[must_use]
    pub fn without(mut self, path: &str) -> Self {
        self.files.retain(|(p, ..)| p != path);
        self
    }

    pub fn filename(&self) -> String {
        format!("{}-{}-{}.whl", self.dist, self.version, self.tag)
    }

    /// The RECORD the builder would write.
    pub fn computed_record(&self) -> String {
        let mut out = String::new();
        for (path, bytes, _) in &self.files {
            let hash = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sha2::Sha256::digest(bytes));
            let path = if path.contains(',') { format!("\"{path}\"") } else { path.clone() };
            out.push_str(&format!("{path},sha256={hash},{}\n", bytes.len()));
        }
        out.push_str(&format!("{}/RECORD,,\n", self.info()));
        out
    }

    pub fn zip_bytes(&self) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for dir in &self.dirs {
            zip.add_directory(dir.as_str(), zip::write::SimpleFileOptions::default()).unwrap();
        }
        let record = self.record.clone().unwrap_or_else(|| self.computed_record());
        let record_path = format!("{}/RECORD", self.info());
        let mut files = self.files.clone();
        if self.record.as_deref() != Some("") {
            files.push((record_path, record.into_bytes(), 0o644));
        }
        for (path, bytes, mode) in &files {
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(*mode);
            zip.start_file(path.as_str(), options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    pub fn build(&self, dir: &Path) -> WheelFile {
        write_wheel(dir, &self.filename(), &self.zip_bytes())
    }
}

/// Writes wheel bytes under `dir` and describes them with their true sha256.
pub(crate) fn write_wheel(dir: &Path, filename: &str, bytes: &[u8]) -> WheelFile {
    let path = dir.join(filename);
    std::fs::write(&path, bytes).unwrap();
    WheelFile { path, filename: filename.parse().unwrap(), sha256: Digest::of(bytes) }
}

/// The host's Python 3.11 (the real binary, not a pyenv shim).
pub(crate) fn host_python() -> PathBuf {
    let out = Command::new("python3.11").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3.11 on PATH");
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub(crate) fn host_interpreter() -> Interpreter {
    Interpreter { executable: LayerPath::new(host_python().to_str().unwrap()).unwrap(), version: (3, 11), patch: None }
}

pub(crate) fn layout_at(name: &str, prefix: &Path) -> EnvLayout {
    EnvLayout::new(name, LayerPath::new(prefix.to_str().unwrap()).unwrap(), host_interpreter())
}

/// Packs the planned layers and applies them in order under `stage` (whose own path
/// does not matter), then moves the directory holding `prefix` to `prefix` itself:
/// the env ends up where its scripts and links expect it, without writing to `/`.
pub(crate) fn materialize(cache: &Cache, layers: &[PlannedLayer], stage: &Path, prefix: &Path) {
    for layer in layers {
        let (packed, _) = pack_cached(cache, &layer.spec, Compression::Gzip, &|_| {}).unwrap();
        let blob = std::fs::File::open(cache.blob_path(&packed.digest)).unwrap();
        let mut archive = tar::Archive::new(decompress(blob).unwrap());
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        archive.unpack(stage).unwrap();
    }
    let inside = stage.join(prefix.strip_prefix("/").unwrap());
    std::fs::create_dir_all(prefix.parent().unwrap()).unwrap();
    std::fs::rename(inside, prefix).unwrap();
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file's sha256, for comparisons in tests.
pub(crate) fn file_sha(path: &Path) -> String {
    let mut bytes = Vec::new();
    std::fs::File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
    Digest::of(&bytes).to_string()
}
