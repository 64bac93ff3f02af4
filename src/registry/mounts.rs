//! Where blobs are known to exist on a registry (pulled from or pushed to a
//! repository), so a push to another repository of the same registry can mount them
//! instead of uploading. One small record per (registry, digest); losing an update to
//! a concurrent build only costs a mount.

use std::path::PathBuf;

use super::reference::Repository;
use crate::cache::Cache;
use crate::oci::Digest;

/// At most this many repositories are remembered per blob; the newest win.
const KEEP: usize = 8;

fn record_path(cache: &Cache, registry: &str, digest: &Digest) -> PathBuf {
    let dir: String = registry.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    cache.bucket("registry-v1").join("blobs").join(dir).join(format!("{}.json", digest.hex()))
}

/// Repositories of `registry` known to hold `digest`.
pub(crate) fn known(cache: &Cache, registry: &str, digest: &Digest) -> Vec<String> {
    cache.read_record(&record_path(cache, registry, digest)).unwrap_or_default()
}

/// Notes that `repository` holds `digests`. Failures only cost future mounts.
pub(crate) fn remember<'a>(cache: &Cache, repository: &Repository, digests: impl IntoIterator<Item = &'a Digest>) {
    for digest in digests {
        let path = record_path(cache, repository.registry(), digest);
        let mut repos = known(cache, repository.registry(), digest);
        if repos.first().is_some_and(|r| r == repository.name()) {
            continue;
        }
        repos.retain(|r| r != repository.name());
        repos.insert(0, repository.name().to_owned());
        repos.truncate(KEEP);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = cache.write_record(&path, &repos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_repository_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let digest = Digest::of(b"layer");
        assert!(known(&cache, "localhost:5000", &digest).is_empty());
        for i in 0..10 {
            let repo: Repository = format!("localhost:5000/r{i}").parse().unwrap();
            remember(&cache, &repo, [&digest]);
        }
        let again: Repository = "localhost:5000/r3".parse().unwrap();
        remember(&cache, &again, [&digest]);
        let repos = known(&cache, "localhost:5000", &digest);
        assert_eq!(repos.len(), KEEP);
        assert_eq!(repos[..3], ["r3", "r9", "r8"]);
        assert!(known(&cache, "ghcr.io", &digest).is_empty(), "records are per registry");
    }
}
