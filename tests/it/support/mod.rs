//! Shared test harness: the galley binary, scratch projects, a Debian base made once by
//! mmdebstrap and cached in the test cache dir, and guards for services the tests
//! start (dockerd), each stopped by pid when the guard drops.

pub mod dockerd;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// `$GALLEY_TEST_CACHE`, else `target/test-cache`: downloads and bases reused across runs.
pub fn test_cache() -> PathBuf {
    let dir = std::env::var_os("GALLEY_TEST_CACHE")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"), PathBuf::from);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The galley cache shared by tests that build the Debian base through galley, so
/// mmdebstrap runs once per test cache.
pub fn shared_galley_cache() -> PathBuf {
    test_cache().join("galley-shared")
}

/// A Debian bookworm root filesystem with python3, made by mmdebstrap once (with
/// SOURCE_DATE_EPOCH=0, so it is reproducible) and kept in the test cache.
pub fn debian_base_tar() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = test_cache().join("debian-bookworm-python3.tar");
        let lock = fs::File::create(test_cache().join("debian-base.lock")).unwrap();
        lock.lock().unwrap();
        if !path.is_file() {
            let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
            let status = Command::new("mmdebstrap")
                .args(["--variant=minbase", "--include=python3", "--quiet", "--format=tar", "bookworm"])
                .arg(&tmp)
                .env("SOURCE_DATE_EPOCH", "0")
                .status()
                .expect("mmdebstrap must be installed (apt-get install -y mmdebstrap)");
            assert!(status.success(), "mmdebstrap failed");
            fs::rename(&tmp, &path).unwrap();
        }
        path
    })
    .clone()
}

/// A scratch project: a temp directory with its own galley cache.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
}

impl Project {
    /// An empty project with a fresh cache.
    pub fn empty() -> Self {
        let dir = tempfile::Builder::new().prefix("galley-test-").tempdir().unwrap();
        let cache = dir.path().join("cache");
        Self { dir, cache }
    }

    /// A copy of `examples/hello` whose base is the cached Debian tar (no mmdebstrap run).
    pub fn hello() -> Self {
        let project = Self::empty();
        copy_dir(&examples().join("hello"), &project.path());
        let manifest = fs::read_to_string(project.path().join("galley.toml")).unwrap();
        let base = format!("rootfs = \"{}\"", debian_base_tar().display());
        let manifest = manifest.replace("debian = { suite = \"bookworm\", packages = [\"python3\"] }", &base);
        assert!(manifest.contains(&base));
        project.write("galley.toml", &manifest);
        project
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    pub fn out(&self) -> PathBuf {
        self.path().join(".galley/out")
    }

    /// Replaces the manifest's `rootfs = ...` base line (as `hello` writes it) with `base_line`.
    pub fn use_base(&self, base_line: &str) {
        let text = fs::read_to_string(self.path().join("galley.toml")).unwrap();
        let start = text.find("rootfs = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        self.write("galley.toml", &format!("{}{base_line}{}", &text[..start], &text[end..]));
    }

    /// `galley --cache CACHE ARGS...` run in the project directory.
    pub fn galley(&self) -> Command {
        let mut command = galley();
        command.arg("--cache").arg(&self.cache).current_dir(self.path());
        command
    }

    /// Builds with `--json` and returns the parsed report; panics with galley's output on failure.
    pub fn build(&self, extra: &[&str]) -> serde_json::Value {
        let output = self.galley().args(["build", "--json"]).args(extra).output().unwrap();
        json_of(&output)
    }
}

pub fn galley() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_galley"));
    command.env_remove("SOURCE_DATE_EPOCH").env_remove("GALLEY_CACHE").stdin(Stdio::null());
    command
}

/// Parses a successful command's stdout as JSON, or panics showing what it printed.
pub fn json_of(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "command failed ({}):\n{}\n{}", output.status, stdout(output), stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command and returns its stdout, panicking with its output if it fails.
pub fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed ({}):\n{}\n{}", output.status, stdout(&output), stderr(&output));
    stdout(&output)
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".galley" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The digests of the layers a build reported, in order.
pub fn layer_digests(report: &serde_json::Value) -> Vec<String> {
    report["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
}

/// How many layers a build packed (rather than reused).
pub fn packed_count(report: &serde_json::Value) -> usize {
    report["layers"].as_array().unwrap().iter().filter(|l| l["packed"].as_bool().unwrap()).count()
}

/// Whether this process runs as root (chroot, dockerd and umoci unpack need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// podman with its own storage under `root`, runc, and no systemd or event log: what
/// works on this machine (run containers with `--ulimit nofile=1024:1024`).
pub fn podman(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("podman");
    command
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--runtime", "runc", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"])
        .args(args);
    command
}

/// How many gzip members (RFC 1952) the file holds, each decompressed to check it.
pub fn gzip_members(path: &Path) -> usize {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(fs::File::open(path).unwrap());
    let mut count = 0;
    while !reader.fill_buf().unwrap().is_empty() {
        // The bufread decoder reads one member and leaves the rest in `reader`.
        std::io::copy(&mut flate2::bufread::GzDecoder::new(&mut reader), &mut std::io::sink()).unwrap();
        count += 1;
    }
    count
}
