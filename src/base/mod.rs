//! Importing the base image into the content store: from an OCI layout, an OCI or
//! docker archive, a root filesystem (directory or tar), or a Debian root filesystem
//! made by mmdebstrap. Each import is cached by its inputs; the result is the base's
//! layers (blobs in the store), its config, and the merged view of its files.

mod debian;
mod oci;
pub(crate) mod probe;
mod rootfs;
mod source;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, CacheError};
use crate::layer::{Compression, LayerError, PackedLayer, RootfsIndex};
use crate::manifest::BaseSpec;
use crate::oci::{Digest, History, ImageConfig, Platform, RootFs, RuntimeConfig};
use crate::progress::Reporter;
use crate::registry::{self, Client, ImageRef, RegistryError, RegistryOptions};

pub use debian::MMDEBSTRAP_INSTALL_HINT;
pub use probe::{Interpreter, Libc, Probe, probe};
pub use source::ImageFiles;

/// PATH for bases that bring no config of their own (Debian's default for root).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The manifest points at something that is not a usable base (a usage error).
    #[error("{what} is not a usable base image: {why}")]
    NotAnImage { what: String, why: String },
    #[error("{what}: symlink {link} -> {target} climbs out of the root filesystem; make it relative to the root or absolute")]
    EscapingSymlink { what: String, link: String, target: String },
    #[error("mmdebstrap was not found on PATH; {MMDEBSTRAP_INSTALL_HINT}")]
    MmdebstrapMissing,
    #[error("mmdebstrap failed for `{suite}` ({status}); its last output:\n{log}")]
    Mmdebstrap { suite: String, status: String, log: String },
    #[error("{what}: blob {expected} has digest {actual}; the image is corrupt")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("cannot read {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("[base] image: {0}")]
    Registry(#[from] RegistryError),
}

impl BaseError {
    /// Whether the fault lies in what the user pointed at (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Registry(e) => e.is_usage(),
            _ => matches!(self, Self::NotAnImage { .. } | Self::EscapingSymlink { .. }),
        }
    }
}

pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> BaseError {
    let what = what.into();
    move |source| BaseError::Io { what, source }
}

/// The imported base image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Base {
    pub description: String,
    pub layers: Vec<PackedLayer>,
    pub config: ImageConfig,
    pub index: RootfsIndex,
}

impl Base {
    pub fn platform(&self) -> Platform {
        Platform { architecture: self.config.architecture.clone(), os: self.config.os.clone(), variant: self.config.variant.clone() }
    }
}

/// What an import needs besides the base spec.
pub struct ImportContext<'a> {
    pub cache: &'a Cache,
    pub compression: Compression,
    /// The platform asked for, if the manifest names one.
    pub platform: Option<&'a Platform>,
    /// SOURCE_DATE_EPOCH, if set: clamps rootfs mtimes, dates Debian bases.
    pub epoch: Option<u64>,
    /// Whether tools galley runs (mmdebstrap) may print to the terminal.
    pub show_tool_output: bool,
    pub on_bytes: &'a (dyn Fn(u64) + Sync),
}

impl ImportContext<'_> {
    fn record_path(&self, key: &Digest) -> PathBuf {
        self.cache.bucket("bases-v1").join(format!("{}-{}.json", key.hex(), self.compression.name()))
    }

    fn cached(&self, key: &Digest) -> Option<Base> {
        let base: Base = self.cache.read_record(&self.record_path(key))?;
        base.layers.iter().all(|l| self.cache.has_blob(&l.digest)).then_some(base)
    }

    fn remember(&self, key: &Digest, base: &Base) -> Result<(), BaseError> {
        Ok(self.cache.write_record(&self.record_path(key), base)?)
    }

    fn created(&self) -> String {
        rfc3339(self.epoch.unwrap_or(0))
    }

    /// A config for bases that bring none: platform, default PATH, one history entry.
    fn fresh_config(&self, platform: Platform, layer: &PackedLayer) -> ImageConfig {
        ImageConfig {
            created: Some(self.created()),
            architecture: platform.architecture,
            os: platform.os,
            variant: platform.variant,
            config: RuntimeConfig { env: Some(vec![format!("PATH={DEFAULT_PATH}")]), ..RuntimeConfig::default() },
            rootfs: RootFs { kind: "layers".into(), diff_ids: vec![layer.diff_id.clone()] },
            history: vec![History {
                created: Some(self.created()),
                created_by: Some(format!("galley: {}", layer.description)),
                ..History::default()
            }],
            ..ImageConfig::default()
        }
    }
}

/// Imports the base named by `spec`, reusing the cache when its inputs are unchanged.
/// Registry bases are pulled with docker's defaults (its config.json credentials,
/// `/etc/docker/certs.d`); [`import_using`] takes a configured client.
pub fn import(spec: &BaseSpec, ctx: &ImportContext<'_>) -> Result<Base, BaseError> {
    import_using(spec, ctx, &Client::new(RegistryOptions::default()))
}

/// [`import`], pulling registry bases with `registry`.
pub fn import_using(spec: &BaseSpec, ctx: &ImportContext<'_>, registry: &Client) -> Result<Base, BaseError> {
    match spec {
        BaseSpec::Registry { reference } => import_from_registry(reference, ctx, registry),
        BaseSpec::OciLayout { path, reference } => {
            let what = format!("[base] oci {}", path.display());
            oci::import(&source::ImageFiles::Dir(path.clone()), reference.as_deref(), &what, ctx)
        }
        BaseSpec::Archive { path } => oci::import_archive(path, ctx),
        BaseSpec::Rootfs { path } => rootfs::import(path, ctx),
        BaseSpec::Debian { suite, packages, variant, mirror } => {
            debian::import(suite, packages, variant, mirror.as_deref(), ctx)
        }
    }
}

/// Pulls the image for the wanted platform (verified, cached by digest: a pinned
/// reference with every blob in the store needs no network), then imports it from an
/// OCI layout of hard links in the cache.
fn import_from_registry(reference: &ImageRef, ctx: &ImportContext<'_>, client: &Client) -> Result<Base, BaseError> {
    let pulled = registry::pull(client, ctx.cache, reference, ctx.platform, &BytesReporter(ctx.on_bytes))?;
    let layout = pulled.cached_layout(ctx.cache)?;
    let what = format!("[base] image {reference}");
    let mut base = oci::import(&source::ImageFiles::Dir(layout), None, &what, ctx)?;
    base.description = format!("{}@{}", ImageRef::new(reference.repository().clone(), reference.tag().cloned(), None), pulled.digest);
    Ok(base)
}

/// Forwards download progress to the import's byte counter.
struct BytesReporter<'a>(&'a (dyn Fn(u64) + Sync));

impl Reporter for BytesReporter<'_> {
    fn on_task_progress(&self, _id: usize, bytes: u64) {
        (self.0)(bytes);
    }
}

/// `1970-01-01T00:00:00Z` style timestamps.
pub fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_epochs() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
