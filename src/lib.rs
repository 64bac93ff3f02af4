//! galley builds reproducible OCI images for Python ML applications, without a
//! container daemon, from one `galley.toml`.
//!
//! Data flows one way through the stages, each a module with its own cache bucket:
//! `manifest` (parse, validate) → `base` (import the base image) → `files` (collect app
//! files) → `layer` (deterministic tar, compression, packing) → `image` (config,
//! manifest, index) → `output` (OCI layout, docker-archive, docker daemon).

pub mod base;
pub mod build;
pub mod cache;
pub mod fetch;
pub mod files;
pub mod http;
pub mod image;
pub mod layer;
pub mod lock;
pub mod manifest;
pub mod memo;
pub mod oci;
pub mod output;
pub mod progress;
pub mod runner;

/// Where tests keep downloads worth reusing between runs (wheels, Debian bases):
/// `$GALLEY_TEST_CACHE`, else `target/test-cache` in the repository.
#[cfg(test)]
pub(crate) fn test_cache_dir() -> std::path::PathBuf {
    std::env::var_os("GALLEY_TEST_CACHE")
        .map_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"), Into::into)
}
