//! Remembers file content digests by (size, mtime, ctime, inode), so an unchanged
//! tree is not read again. One memo file per scope (a project or a base), in the cache.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::oci::Digest;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Memo {
    file: PathBuf,
    entries: BTreeMap<String, (Stamp, Digest)>,
    dirty: bool,
}

impl Memo {
    /// Opens the memo for `scope` (any stable string, e.g. an absolute directory).
    pub fn open(cache: &Cache, scope: &str) -> Self {
        let file = cache.bucket("memo-v1").join(format!("{}.json", Digest::of(scope.as_bytes()).hex()));
        let entries = cache.read_record(&file).unwrap_or_default();
        Self { file, entries, dirty: false }
    }

    /// The sha256 of the file at `path`, read only when its stamp changed.
    pub fn digest(&mut self, path: &Path, meta: &Metadata) -> io::Result<Digest> {
        let key = path.to_string_lossy().into_owned();
        let stamp = Stamp::of(meta);
        if let Some((known, digest)) = self.entries.get(&key)
            && *known == stamp {
                return Ok(digest.clone());
            }
        let (digest, _) = Digest::of_reader(io::BufReader::with_capacity(1 << 20, File::open(path)?))?;
        // A file changed within the last two seconds may change again within the same
        // mtime tick; don't trust its stamp yet.
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        if now_ns.saturating_sub(stamp.mtime_ns.max(stamp.ctime_ns)) > 2_000_000_000 {
            self.entries.insert(key, (stamp, digest.clone()));
            self.dirty = true;
        }
        Ok(digest)
    }

    /// Writes the memo back if anything was learned. Failure only costs speed.
    pub fn save(&self, cache: &Cache) {
        if self.dirty {
            let _ = cache.write_record(&self.file, &self.entries);
        }
    }
}
