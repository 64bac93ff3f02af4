//! The content store under `$GALLEY_CACHE` (default `~/.cache/galley`).
//!
//! ```text
//! blobs/sha256/<hex>          compressed layers, configs, manifests (content-addressed)
//! layers-v2/<key>.json        packed layer records, keyed by the hash of the layer's inputs
//! bases-v1/<key>/             imported base images (debian rootfs tars, index records)
//! memo-v1/<key>.json          file content digests remembered by (path, size, mtime, inode)
//! probes-v1/<config>.json     what a base image holds: Python interpreter, C library
//! wheels-v1/<sha256>.whl      downloaded wheels, verified against the lock's sha256
//! trees-v1/<key>/             installed wheel trees (tree.json + root/), keyed by wheel, prefix, python
//! registry-v1/                pulled-image layouts, and where blobs were pushed (for mounts)
//! locks/<name>.lock           advisory locks for work that only one build should do
//! tmp/<pid>-<n>-<name>        files being written; renamed into place when complete
//! tmp/partial-<sha256>.whl    an interrupted wheel download, continued with a Range request
//!                             (no pid in its name, so it outlives the process that began it)
//! ```
//!
//! Every entry appears by an atomic rename, so a killed build leaves only `tmp/` files,
//! which the next build removes once their process is gone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::oci::{Digest, HashingWriter};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use the cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob {expected} in the cache has digest {actual}; it was removed, run the build again")]
    Corrupt { expected: Digest, actual: Digest },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_owned(), source }
}

/// The cache root and its buckets.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// Opens (creating if needed) the cache at `root`, and clears temp files of dead builds.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let cache = Self { root: root.into() };
        for dir in [
            "blobs/sha256", "layers-v2", "bases-v1", "memo-v1", "probes-v1", "trees-v1", "wheels-v1", "registry-v1", "locks", "tmp",
        ] {
            let path = cache.root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        cache.remove_stale_temp_files();
        Ok(cache)
    }

    /// `$GALLEY_CACHE`, else `$XDG_CACHE_HOME/galley`, else `~/.cache/galley`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("GALLEY_CACHE").filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(dir).join("galley");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".cache").join("galley")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn bucket(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A fresh temp path inside the cache, on the same filesystem as every bucket.
    pub fn temp_path(&self, label: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}-{label}", std::process::id()))
    }

    /// Writes a blob from bytes, returning its digest. Skips the write if it exists.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, CacheError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.is_file() {
            atomic_write(&self.temp_path("blob"), &path, bytes).map_err(io_err(&path))?;
        }
        Ok(digest)
    }

    /// Streams a blob into the store: `write` fills a hashing writer; the result is
    /// renamed to its digest when `write` returns Ok, and discarded otherwise.
    pub fn put_blob_with<E: From<CacheError>>(
        &self,
        write: impl FnOnce(&mut HashingWriter<io::BufWriter<File>>) -> Result<(), E>,
    ) -> Result<(Digest, u64), E> {
        let tmp = self.temp_path("blob");
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let guard = TempGuard(tmp.clone());
        let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        write(&mut writer)?;
        let (digest, size, buffered) = writer.finish();
        let file = buffered.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_data().map_err(io_err(&tmp))?;
        let path = self.blob_path(&digest);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        std::mem::forget(guard);
        Ok((digest, size))
    }

    /// Reads a JSON record, treating a missing or unreadable one as absent.
    pub fn read_record<T: DeserializeOwned>(&self, path: &Path) -> Option<T> {
        let bytes = fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes a JSON record atomically.
    pub fn write_record<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        atomic_write(&self.temp_path("record"), path, &bytes).map_err(io_err(path))
    }

    /// Takes an exclusive lock named `name`, waiting for whoever holds it.
    pub fn lock(&self, name: &str) -> Result<File, CacheError> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let file = File::create(&path).map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(file)
    }

    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.split('-').next()).and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|pid| !process_alive(pid)) {
                let path = entry.path();
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
        }
    }
}

/// A temp file name beside `dest` that names this process, so a later run can tell it
/// from a live writer's: `.NAME.galley-tmp-PID`.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    dest.with_file_name(format!(".{}{TEMP_SIBLING}{}", file_name(dest), std::process::id()))
}

const TEMP_SIBLING: &str = ".galley-tmp-";

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Removes the temp siblings of `dest` ([`temp_sibling`]) left by processes that died
/// (killed mid-write), leaving those of live ones alone.
pub fn remove_dead_temp_siblings(dest: &Path) {
    let prefix = format!(".{}{TEMP_SIBLING}", file_name(dest));
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes a temp file when dropped unless forgotten: an error mid-write leaves nothing.
pub struct TempGuard(pub PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0).or_else(|_| fs::remove_dir_all(&self.0));
    }
}

/// Writes `bytes` to `tmp`, syncs, then renames it over `dest`.
pub fn atomic_write(tmp: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let guard = TempGuard(tmp.to_owned());
    let mut file = File::create(tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    fs::rename(tmp, dest)?;
    std::mem::forget(guard);
    Ok(())
}

/// Puts a copy of `src` at `dest` atomically: a hard link when both are on one
/// filesystem, else a copy through a temp file beside `dest`.
pub fn link_or_copy(src: &Path, dest: &Path) -> io::Result<()> {
    let tmp = dest.with_file_name(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let guard = TempGuard(tmp.clone());
    if fs::hard_link(src, &tmp).is_err() {
        fs::copy(src, &tmp)?;
        File::open(&tmp)?.sync_data()?;
    }
    fs::rename(&tmp, dest)?;
    std::mem::forget(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed_and_failed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put_blob_bytes(b"abc").unwrap();
        assert_eq!(fs::read(cache.blob_path(&d)).unwrap(), b"abc");

        let failed: Result<_, CacheError> = cache.put_blob_with(|w| {
            w.write_all(b"partial").unwrap();
            Err(CacheError::Io { path: "x".into(), source: io::Error::other("interrupted") })
        });
        assert!(failed.is_err());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(!cache.has_blob(&Digest::of(b"partial")));
    }

    #[test]
    fn dead_writers_temp_siblings_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("image.tar");
        let dead = dir.path().join(".image.tar.galley-tmp-4194305");
        fs::write(&dead, b"half").unwrap();
        let live = temp_sibling(&dest);
        fs::write(&live, b"mine").unwrap();
        let other = dir.path().join(".other.tar.galley-tmp-4194305");
        fs::write(&other, b"not ours to judge").unwrap();
        remove_dead_temp_siblings(&dest);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn temp_files_of_dead_processes_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        Cache::open(dir.path()).unwrap();
        // pid 2^22+1 is above the kernel's pid_max, so never alive.
        let stale = dir.path().join("tmp/4194305-0-blob");
        fs::write(&stale, b"half").unwrap();
        let mine = dir.path().join(format!("tmp/{}-99-blob", std::process::id()));
        fs::write(&mine, b"in progress").unwrap();
        Cache::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(mine.exists());
    }
}
