//! galley builds reproducible OCI images for Python ML applications, without a
//! container daemon, from one `galley.toml`.
//!
//! Data flows one way through the stages, each a module with its own cache bucket:
//! `manifest` (parse, validate) → `base` (import the base image) → `files` (collect app
//! files) → `layer` (deterministic tar, compression, packing) → `image` (config,
//! manifest, index) → `output` (OCI layout, docker-archive, docker daemon).

/// Serde for a newtype with a grammar: serialized through `Display`, deserialized
/// through `FromStr` (whose error is shown), so an invalid value cannot be read.
macro_rules! serde_via_str {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_str;

pub mod base;
pub mod build;
pub mod cache;
pub mod envs;
pub mod fetch;
pub mod files;
pub mod http;
pub mod image;
pub mod install;
pub mod layer;
pub mod lock;
pub mod manifest;
pub mod memo;
pub mod oci;
pub mod output;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod runner;

/// Maps `items` in parallel, handing them to workers largest first (by `size`) so a big
/// one is not left running alone at the end; the results keep the input order.
pub(crate) fn par_map_largest_first<T: Sync, R: Send>(items: &[T], size: impl Fn(&T) -> u64, f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    use rayon::iter::{ParallelBridge, ParallelIterator};
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(&items[i])));
    // par_bridge gives out one item at a time, in this order, as workers become free.
    let mut done: Vec<(usize, R)> = order.into_iter().par_bridge().map(|i| (i, f(&items[i]))).collect();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Where tests keep downloads worth reusing between runs (wheels, Debian bases):
/// `$GALLEY_TEST_CACHE`, else `target/test-cache` in the repository.
#[cfg(test)]
pub(crate) fn test_cache_dir() -> std::path::PathBuf {
    std::env::var_os("GALLEY_TEST_CACHE")
        .map_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"), Into::into)
}
