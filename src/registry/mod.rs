//! Registries over the OCI distribution API: pulling images into the content store
//! (bases, `galley pull`) and pushing OCI layouts (`galley push`).
//!
//! - [`reference`]: `ImageRef`, `Repository`, `Tag` newtypes (docker's grammar and defaults).
//! - [`auth`]: credentials (docker's `config.json`, credential helpers) and challenges.
//! - [`client`]: one blocking client; per-registry CA roots, scheme, and tokens per scope.
//! - [`pull`]: reference → manifest for a platform → verified blobs → an OCI layout.
//! - [`push`]: layout → blobs (HEAD, mount, monolithic or chunked with resume) → manifests → tags.

pub mod auth;
pub mod client;
mod mounts;
pub mod pull;
pub mod push;
pub mod reference;

use std::path::PathBuf;

use crate::cache::CacheError;
use crate::http::HttpError;
use crate::oci::Digest;
use crate::output::OutputError;

pub use auth::{Credential, DockerConfig};
pub use client::{Client, RegistryOptions};
pub use pull::{Pulled, Resolved, pull, write_layout};
pub use push::{PushOptions, PushReport, PushedImage, push_layout};
pub use reference::{ImageRef, ReferenceError, Repository, Tag};

const LOGIN_HINT: &str = "log in with `docker login` (galley reads docker's config.json and credential helpers) or set GALLEY_REGISTRY_USER and GALLEY_REGISTRY_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("registry {registry} refused access to `{repository}`: {why}; {LOGIN_HINT}")]
    Unauthorized { registry: String, repository: String, why: String },
    #[error("registry {registry} denied {action} access to `{repository}`{detail}; the account has no permission to {action} this repository")]
    Denied { registry: String, repository: String, action: &'static str, detail: String },
    #[error("{reference}: the registry has no such image (manifest unknown){detail}")]
    ManifestUnknown { reference: String, detail: String },
    #[error("{reference}: the index has no image for {wanted}; platforms present: {available}")]
    UnknownPlatform { reference: String, wanted: String, available: String },
    #[error("{reference}: the registry answered with a {media_type} document, which galley cannot use; {hint}")]
    UnsupportedDocument { reference: String, media_type: String, hint: &'static str },
    #[error("{what}: the registry sent content with digest {actual}, expected {expected}; nothing was kept")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{what}: expected {expected} bytes, the registry sent {actual}; nothing was kept")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("cannot reach registry {registry} at {url}: {detail}")]
    Connection { registry: String, url: String, detail: String },
    #[error("cannot resolve the registry host {registry}: {detail}")]
    UnknownHost { registry: String, detail: String },
    #[error(
        "TLS with registry {registry} failed: {detail}; if it uses a private CA, pass --registry-ca FILE or put the CA at /etc/docker/certs.d/{registry}/ca.crt"
    )]
    Tls { registry: String, detail: String },
    #[error("registry {registry} answered {method} {path} with HTTP {status}{detail}")]
    Status { registry: String, method: &'static str, path: String, status: u16, detail: String },
    #[error("registry {registry}: {why}")]
    Protocol { registry: String, why: String },
    #[error("{}: {why}", path.display())]
    Layout { path: PathBuf, why: String },
    #[error("{}: {why}", path.display())]
    DockerConfig { path: PathBuf, why: String },
    #[error("credential helper docker-credential-{helper} failed for {registry}: {why}")]
    CredentialHelper { helper: String, registry: String, why: String },
    #[error("{why}")]
    Usage { why: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl RegistryError {
    /// Whether the fault lies in the user's input or setup (exit code 2) rather than in
    /// the registry or the network (exit code 1).
    pub fn is_usage(&self) -> bool {
        if let Self::Output(e) = self {
            return e.is_usage();
        }
        matches!(
            self,
            Self::Reference(_)
                | Self::Unauthorized { .. }
                | Self::Denied { .. }
                | Self::ManifestUnknown { .. }
                | Self::UnknownPlatform { .. }
                | Self::UnsupportedDocument { .. }
                | Self::UnknownHost { .. }
                | Self::Tls { .. }
                | Self::Layout { .. }
                | Self::DockerConfig { .. }
                | Self::CredentialHelper { .. }
                | Self::Usage { .. }
                | Self::Http(_)
        )
    }

    /// Whether trying again may help: dropped connections, timeouts, 5xx and 429.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Connection { .. } => true,
            Self::Status { status, .. } => crate::http::is_transient_status(*status),
            _ => false,
        }
    }
}

/// Runs `work` on every item with at most `jobs` threads; the first error stops the
/// others from taking new items and is returned. Results keep the items' order.
pub(crate) fn run_parallel<T: Sync, R: Send, E: Send>(
    jobs: usize,
    items: &[T],
    work: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    match work(item) {
                        Ok(r) => results.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(r),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_parallel_keeps_order_and_stops_on_error() {
        let items: Vec<u32> = (0..50).collect();
        let out: Result<Vec<u32>, String> = super::run_parallel(4, &items, |i| Ok(i * 2));
        assert_eq!(out.unwrap(), items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let out: Result<Vec<u32>, String> = super::run_parallel(3, &items, |i| if *i == 7 { Err(format!("bad {i}")) } else { Ok(*i) });
        assert_eq!(out.unwrap_err(), "bad 7");
        let none: Result<Vec<u32>, String> = super::run_parallel(4, &[], |i: &u32| Ok(*i));
        assert!(none.unwrap().is_empty());
    }
}
