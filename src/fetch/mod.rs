//! Downloading locked wheels into the content store (`wheels-v1/<sha256>.whl`).
//!
//! A few wheels download at once. Each is streamed into `tmp/partial-<sha256>.whl`
//! while its sha256 is computed, and renamed into the store only once its size and
//! sha256 match the lock; a mismatching file is deleted. An interrupted download is
//! continued with a Range request, by this run's retries or by the next run. Two
//! processes that want the same wheel take turns through a cache lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::cache::{Cache, CacheError};
use crate::http::{self, Attempt, ClientOptions, HttpError};
use crate::install::WheelFile;
use crate::lock::LockedWheel;
use crate::oci::Digest;
use crate::progress::{Reporter, TaskKind};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("offline, and the cache lacks {} wheel(s):\n{}", missing.len(), bullets(missing))]
    Offline { missing: Vec<String> },
    #[error("{} wheel(s) could not be fetched:\n{}", failures.len(), bullets(failures))]
    Failed { failures: Vec<WheelFailure> },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl FetchError {
    /// Fetch failures are never the manifest's fault: the network, the index or the
    /// cache failed (exit code 1).
    pub fn is_usage(&self) -> bool {
        false
    }
}

fn bullets<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n")
}

/// One wheel that could not be fetched, and why.
#[derive(Debug)]
pub struct WheelFailure {
    /// `numpy 2.4.6 (numpy-2.4.6-cp311-....whl)`.
    pub wheel: String,
    pub reason: FailReason,
}

impl std::fmt::Display for WheelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.wheel, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FailReason {
    #[error("sha256 mismatch: galley.lock says {expected}, the download has {actual}; the file was not kept")]
    HashMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch: galley.lock says {expected} bytes, the download has {actual}; the file was not kept")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Use only what the store has; fail listing what it lacks.
    pub offline: bool,
    /// Downloads at once.
    pub jobs: usize,
    /// Tries per wheel before giving up (transient failures only).
    pub attempts: u32,
    pub client: ClientOptions,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self { offline: false, jobs: 4, attempts: 5, client: ClientOptions::default() }
    }
}

/// A wheel in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedWheel {
    pub wheel: LockedWheel,
    /// `wheels-v1/<sha256>.whl` in the cache.
    pub path: PathBuf,
}

impl FetchedWheel {
    /// What the installer takes: the stored file, its name and the sha256 to check.
    pub fn wheel_file(&self) -> WheelFile {
        WheelFile { path: self.path.clone(), filename: self.wheel.filename.clone(), sha256: self.wheel.sha256.clone() }
    }
}

/// Where the store keeps the wheel with this sha256.
pub fn wheel_path(cache: &Cache, sha256: &Digest) -> PathBuf {
    cache.bucket("wheels-v1").join(format!("{}.whl", sha256.hex()))
}

fn partial_path(cache: &Cache, sha256: &Digest) -> PathBuf {
    // Named without a pid, so the cleanup of dead builds' temp files keeps it for resuming.
    cache.bucket("tmp").join(format!("partial-{}.whl", sha256.hex()))
}

fn label(wheel: &LockedWheel) -> String {
    format!("{} {} ({})", wheel.name, wheel.version, wheel.filename)
}

/// Whether the store holds `wheel` (checked by size when the lock records it; the
/// sha256 was checked when it was stored).
fn stored(cache: &Cache, wheel: &LockedWheel) -> bool {
    fs::metadata(wheel_path(cache, &wheel.sha256)).is_ok_and(|m| m.is_file() && wheel.size.is_none_or(|s| s == m.len()))
}

/// Makes sure every wheel is in the store, downloading the missing ones, and returns
/// them in the order given (each sha256 once).
pub fn fetch(cache: &Cache, wheels: &[LockedWheel], options: &FetchOptions, reporter: &dyn Reporter) -> Result<Vec<FetchedWheel>, FetchError> {
    let mut unique: Vec<&LockedWheel> = Vec::new();
    for wheel in wheels {
        if !unique.iter().any(|w| w.sha256 == wheel.sha256) {
            unique.push(wheel);
        }
    }
    let missing: Vec<&LockedWheel> = unique.iter().copied().filter(|w| !stored(cache, w)).collect();
    if options.offline && !missing.is_empty() {
        return Err(FetchError::Offline { missing: missing.iter().map(|w| label(w)).collect() });
    }
    if !missing.is_empty() {
        let agent = http::agent(&options.client)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.jobs.max(1))
            .build()
            .map_err(|e| CacheError::Io { path: cache.root().to_owned(), source: io::Error::other(e) })?;
        let outcomes: Vec<Result<(), WheelFailure>> = pool.install(|| {
            missing
                .par_iter()
                .map(|w| fetch_one(cache, &agent, w, options, reporter).map_err(|reason| WheelFailure { wheel: label(w), reason }))
                .collect()
        });
        let mut failures: Vec<WheelFailure> = outcomes.into_iter().filter_map(Result::err).collect();
        if !failures.is_empty() {
            failures.sort_by(|a, b| a.wheel.cmp(&b.wheel));
            return Err(FetchError::Failed { failures });
        }
    }
    Ok(unique.into_iter().map(|w| FetchedWheel { wheel: w.clone(), path: wheel_path(cache, &w.sha256) }).collect())
}

fn fetch_one(cache: &Cache, agent: &ureq::Agent, wheel: &LockedWheel, options: &FetchOptions, reporter: &dyn Reporter) -> Result<(), FailReason> {
    let dest = wheel_path(cache, &wheel.sha256);
    let partial = partial_path(cache, &wheel.sha256);
    let io_fail = |path: &Path| {
        let path = path.to_owned();
        move |e: io::Error| FailReason::Io { path, message: e.to_string() }
    };
    // Another process may be fetching the same wheel: wait for it, then use its result.
    let _lock = cache.lock(&format!("wheel-{}", wheel.sha256.hex())).map_err(|e| FailReason::Io { path: partial.clone(), message: e.to_string() })?;
    if stored(cache, wheel) {
        return Ok(());
    }
    let id = reporter.on_task_start(TaskKind::Download, &label(wheel), wheel.size);
    let resumed = fs::metadata(&partial).map_or(0, |m| m.len());
    reporter.on_task_progress(id, resumed);
    let result = http::retry(options.attempts.max(1), |_| download(agent, wheel, &partial, reporter, id));
    reporter.on_task_done(id);
    result?;
    fs::rename(&partial, &dest).map_err(io_fail(&dest))
}

/// One attempt: continue (or start) the partial file, hashing as the bytes arrive,
/// then check size and sha256. A transient failure keeps the partial for the next
/// attempt; a bad file is removed.
fn download(agent: &ureq::Agent, wheel: &LockedWheel, partial: &Path, reporter: &dyn Reporter, id: usize) -> Attempt<(), FailReason> {
    let url = wheel.url.as_str();
    let io_fail = |e: io::Error| FailReason::Io { path: partial.to_owned(), message: e.to_string() };
    let mut hasher = Sha256::new();
    let mut have = fs::metadata(partial).map_or(0, |m| m.len());
    if wheel.size.is_some_and(|size| have > size) || (have > 0 && hash_file(partial, &mut hasher).is_err()) {
        hasher = Sha256::new();
        have = 0;
    }
    let resumed = have > 0;
    if wheel.size.is_none_or(|size| have < size) {
        let mut request = agent.get(url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = match request.call() {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(FailReason::Network { url: url.to_owned(), message: e.to_string() }),
        };
        match response.status().as_u16() {
            206 if have > 0 => {}
            200 => {
                hasher = Sha256::new();
                have = 0;
            }
            // The server cannot continue from there: start over on the next attempt.
            416 => {
                let _ = fs::remove_file(partial);
                return Attempt::Retry(FailReason::Status { url: url.to_owned(), status: 416 });
            }
            s if http::is_transient_status(s) => return Attempt::Retry(FailReason::Status { url: url.to_owned(), status: s }),
            s => return Attempt::Fail(FailReason::Status { url: url.to_owned(), status: s }),
        }
        let file = OpenOptions::new().create(true).write(true).truncate(have == 0).append(have > 0).open(partial);
        let mut file = match file {
            Ok(f) => f,
            Err(e) => return Attempt::Fail(io_fail(e)),
        };
        // One byte past the expected size is enough to know the file is wrong.
        let limit = wheel.size.map_or(u64::MAX, |s| s - have);
        let mut body = response.into_body().into_reader().take(limit.saturating_add(1));
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = file.sync_data();
                    return Attempt::Retry(FailReason::Network { url: url.to_owned(), message: e.to_string() });
                }
            };
            if let Err(e) = file.write_all(&buf[..n]) {
                return Attempt::Fail(io_fail(e));
            }
            hasher.update(&buf[..n]);
            have += n as u64;
            reporter.on_task_progress(id, n as u64);
        }
        if let Err(e) = file.sync_data() {
            return Attempt::Fail(io_fail(e));
        }
    }
    let actual = Digest::from_sha256(&hasher.finalize());
    let wrong = match wheel.size {
        Some(expected) if expected != have => Some(FailReason::SizeMismatch { expected, actual: have }),
        _ if actual != wheel.sha256 => Some(FailReason::HashMismatch { expected: wheel.sha256.clone(), actual }),
        _ => None,
    };
    match wrong {
        None => Attempt::Done(()),
        Some(reason) => {
            let _ = fs::remove_file(partial);
            // A continued download may have joined two different files: try once more from scratch.
            if resumed { Attempt::Retry(reason) } else { Attempt::Fail(reason) }
        }
    }
}

/// Feeds a file's bytes to `hasher`.
fn hash_file(path: &Path, hasher: &mut Sha256) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(()),
            n => hasher.update(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const SIX: &str = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274";
    const SF_LINUX: &str = "1e38bac1853412871318e82a1ba69a8be677619b56025bbfcccdb41b6cafe82d";

    fn wheel(name: &str, version: &str, filename: &str, url: &str, sha256: &str, size: u64) -> LockedWheel {
        LockedWheel {
            name: name.parse().unwrap(),
            version: version.parse().unwrap(),
            filename: filename.parse().unwrap(),
            url: url.to_owned(),
            sha256: Digest::from_hex(sha256).unwrap(),
            size: Some(size),
        }
    }

    fn six() -> LockedWheel {
        wheel(
            "six",
            "1.17.0",
            "six-1.17.0-py2.py3-none-any.whl",
            "https://files.pythonhosted.org/packages/b7/ce/149a00dd41f10bc29e5921b496af8b574d8413afcd5e30dfa0ed46c2cc5e/six-1.17.0-py2.py3-none-any.whl",
            SIX,
            11050,
        )
    }

    fn soundfile() -> LockedWheel {
        wheel(
            "soundfile",
            "0.14.0",
            "soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl",
            "https://files.pythonhosted.org/packages/7b/a2/70fd4432b924684c372df8b0a45708c36c057ef3596c9eb53e0a806b980b/soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl",
            SF_LINUX,
            1_315_963,
        )
    }

    fn shared_cache() -> Cache {
        Cache::open(crate::test_cache_dir().join("cache")).unwrap()
    }

    /// One download as the reporter saw it.
    struct Task {
        total: Option<u64>,
        bytes: u64,
        done: bool,
    }

    #[derive(Default)]
    struct Progress(Mutex<Vec<Task>>);

    impl Reporter for Progress {
        fn on_task_start(&self, kind: TaskKind, label: &str, total: Option<u64>) -> usize {
            assert_eq!(kind, TaskKind::Download);
            let mut tasks = self.0.lock().unwrap();
            assert!(label.contains(".whl"), "{label}");
            tasks.push(Task { total, bytes: 0, done: false });
            tasks.len() - 1
        }
        fn on_task_progress(&self, id: usize, bytes: u64) {
            self.0.lock().unwrap()[id].bytes += bytes;
        }
        fn on_task_done(&self, id: usize) {
            self.0.lock().unwrap()[id].done = true;
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn fetched_wheels_are_verified_stored_by_hash_and_found_offline() {
        let cache = shared_cache();
        let wheels = [soundfile(), six(), six()];
        let fetched = fetch(&cache, &wheels, &FetchOptions::default(), &()).unwrap();
        assert_eq!(fetched.len(), 2, "the same wheel twice is fetched once");
        for f in &fetched {
            assert_eq!(f.path, cache.root().join(format!("wheels-v1/{}.whl", f.wheel.sha256.hex())));
            let (digest, size) = Digest::of_reader(File::open(&f.path).unwrap()).unwrap();
            assert_eq!((digest, Some(size)), (f.wheel.sha256.clone(), f.wheel.size));
        }
        let offline = FetchOptions { offline: true, ..FetchOptions::default() };
        assert_eq!(fetch(&cache, &wheels, &offline, &()).unwrap(), fetched);
        let file = fetched[0].wheel_file();
        assert_eq!((file.path, file.filename.to_string()), (fetched[0].path.clone(), "soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl".to_owned()));
    }

    #[test]
    fn offline_lists_every_missing_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let offline = FetchOptions { offline: true, ..FetchOptions::default() };
        let err = fetch(&cache, &[six(), soundfile()], &offline, &()).unwrap_err().to_string();
        assert_eq!(
            err,
            "offline, and the cache lacks 2 wheel(s):\n  - six 1.17.0 (six-1.17.0-py2.py3-none-any.whl)\n  - soundfile 0.14.0 (soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl)"
        );
    }

    #[test]
    fn a_tampered_sha256_is_rejected_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut tampered = six();
        tampered.sha256 = Digest::from_hex(SF_LINUX).unwrap();
        let progress = Progress::default();
        let err = fetch(&cache, &[tampered], &FetchOptions::default(), &progress).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("1 wheel(s) could not be fetched:\n  - six 1.17.0 (six-1.17.0-py2.py3-none-any.whl): sha256 mismatch"), "{text}");
        assert!(text.contains(&format!("galley.lock says sha256:{SF_LINUX}, the download has sha256:{SIX}")), "{text}");
        assert!(files_in(&dir.path().join("wheels-v1")).is_empty());
        assert!(files_in(&dir.path().join("tmp")).is_empty());
        let tasks = progress.0.lock().unwrap();
        assert_eq!(tasks.len(), 1);
        assert!(tasks[0].done, "the task is reported done");
    }

    #[test]
    fn an_interrupted_download_continues_with_a_range_request() {
        // The first half of the real wheel stands for a download cut short.
        let shared = shared_cache();
        let full = fetch(&shared, &[soundfile()], &FetchOptions::default(), &()).unwrap();
        let bytes = fs::read(&full[0].path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let half = bytes.len() / 2;
        fs::write(partial_path(&cache, &soundfile().sha256), &bytes[..half]).unwrap();

        let progress = Progress::default();
        let fetched = fetch(&cache, &[soundfile()], &FetchOptions::default(), &progress).unwrap();
        assert_eq!(fs::read(&fetched[0].path).unwrap(), bytes);
        let tasks = progress.0.lock().unwrap();
        // Progress counts the kept half once plus the rest: had the server sent the whole
        // file again, the total would exceed the size.
        assert_eq!((tasks[0].total, tasks[0].bytes), (Some(bytes.len() as u64), bytes.len() as u64));
        assert!(files_in(&dir.path().join("tmp")).is_empty());

        // A corrupt partial (right length so far, wrong bytes) is thrown away and fetched again.
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        fs::write(partial_path(&cache, &soundfile().sha256), vec![0u8; half]).unwrap();
        let fetched = fetch(&cache, &[soundfile()], &FetchOptions::default(), &()).unwrap();
        assert_eq!(Digest::of(&fs::read(&fetched[0].path).unwrap()), soundfile().sha256);
    }

    #[test]
    fn wheels_that_cannot_be_fetched_are_all_listed_after_retries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut refused = six();
        refused.url = "http://127.0.0.1:9/six-1.17.0-py2.py3-none-any.whl".into();
        let mut gone = soundfile();
        gone.url = "https://files.pythonhosted.org/packages/00/00/nothing-here/soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl".into();
        let options = FetchOptions { attempts: 2, ..FetchOptions::default() };
        let err = fetch(&cache, &[refused, gone], &options, &()).unwrap_err().to_string();
        assert!(err.starts_with("2 wheel(s) could not be fetched:\n  - six 1.17.0"), "{err}");
        assert!(err.contains("six-1.17.0-py2.py3-none-any.whl): http://127.0.0.1:9/six-1.17.0-py2.py3-none-any.whl:"), "{err}");
        assert!(err.contains("soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl answered HTTP 404"), "{err}");
        assert!(files_in(&dir.path().join("wheels-v1")).is_empty());
    }

    #[test]
    fn two_fetches_of_one_wheel_into_one_cache_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| s.spawn(|| fetch(&Cache::open(&root).unwrap(), &[six()], &FetchOptions::default(), &())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            assert_eq!(Digest::of(&fs::read(&r.unwrap()[0].path).unwrap()), six().sha256);
        }
        assert_eq!(files_in(&root.join("wheels-v1")).len(), 1);
    }
}
