//! `galley build`: the pipeline from a validated manifest to written images.
//! base → app files → layers (packed in parallel, cached by their inputs) → image →
//! outputs. Every stage is a function of its inputs plus the content store, so a
//! rebuild with nothing changed packs nothing.

use std::path::PathBuf;
use std::time::Instant;

use crate::base::{self, Base, BaseError, ImportContext};
use crate::cache::{Cache, CacheError};
use crate::envs::{self, EnvError, EnvLayers, EnvOptions, LockMode};
use crate::fetch::FetchedWheel;
use crate::files::{self, FilesError};
use crate::image::{self, BuiltImage, ImageInputs};
use crate::layer::{Compression, Entry, LayerError, LayerSpec, PackedLayer, entries_key, finalize_entries, pack_cached};
use crate::manifest::{LayerPathOrRoot, Manifest};
use crate::memo::Memo;
use crate::output::{self, DaemonError, DockerHost, OutputError};
use crate::progress::{Reporter, TaskKind};
use crate::registry::{Client, RegistryOptions};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{file}: {field}: {message}")]
    Invalid { file: PathBuf, field: String, message: String },
    #[error("SOURCE_DATE_EPOCH=`{0}` is not a number of seconds since 1970; unset it or set e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)")]
    BadEpoch(String),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Envs(#[from] EnvError),
}

impl BuildError {
    /// Whether the fault lies in the user's input rather than the build (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Invalid { .. } | Self::BadEpoch(_) => true,
            Self::Base(e) => e.is_usage(),
            Self::Files(e) => e.is_usage(),
            Self::Daemon(e) => e.is_usage(),
            Self::Envs(e) => e.is_usage(),
            Self::Output(e) => e.is_usage(),
            Self::Layer(_) | Self::Cache(_) => false,
        }
    }
}

/// Where a build writes and how it compresses.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub compression: Compression,
    /// The OCI layout directory to write.
    pub output: PathBuf,
    pub docker_archive: Option<PathBuf>,
    /// Load the image into the docker daemon at this host.
    pub load: Option<DockerHost>,
    /// Let tools galley runs (mmdebstrap) print to the terminal.
    pub show_tool_output: bool,
    /// How to reach registries for `[base] image` (CAs, insecure hosts, credentials).
    pub registry: RegistryOptions,
    /// What to do when galley.lock is missing or stale.
    pub lock: LockMode,
    /// Fetch nothing: every locked wheel must already be in the store.
    pub offline: bool,
    /// Fail when two packages of one env ship one path with different content.
    pub strict: bool,
}


/// One layer of the built image, and whether this build packed it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    pub description: String,
    pub digest: crate::oci::Digest,
    pub size: u64,
    pub uncompressed_size: u64,
    pub packed: bool,
}

#[derive(Debug)]
pub struct BuildReport {
    pub image: BuiltImage,
    pub layers: Vec<LayerReport>,
    pub loaded: Vec<String>,
    /// The locked wheels of every env, in the store.
    pub wheels: Vec<FetchedWheel>,
    pub seconds: f64,
}

/// `SOURCE_DATE_EPOCH` if set (validated), for timestamps that must not depend on when
/// the build ran.
pub fn source_date_epoch() -> Result<Option<u64>, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| BuildError::BadEpoch(v)),
        Err(_) => Ok(None),
    }
}

pub fn build(manifest: &Manifest, cache: &Cache, options: &BuildOptions, reporter: &dyn Reporter) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let epoch = source_date_epoch()?;
    let mtime = epoch.unwrap_or(0);
    let base = import_base(manifest, cache, options.compression, options.show_tool_output, &options.registry, reporter)?;
    validate_against_base(manifest, &base)?;
    let env_options = EnvOptions {
        lock: options.lock,
        offline: options.offline,
        strict: options.strict,
        mtime,
        max_layers: env_layer_budget(&base, manifest),
    };
    let EnvLayers { layers: env_layers, env, wheels } = envs::env_layers(manifest, cache, &base, &env_options, reporter)?;

    let mut specs: Vec<LayerSpec> = env_layers.into_iter().map(|planned| planned.spec).collect();
    let mut memo = Memo::open(cache, "project-files");
    for set in files::collect(manifest, &base.index, mtime)? {
        let what = format!("files {} -> {}", set.set.src, set.set.dest);
        specs.push(layer_spec(&mut memo, "files-v1", what, set.entries)?);
    }
    if let Some(spec) = workdir_layer(manifest, &base, &specs, mtime)? {
        specs.push(layer_spec(&mut memo, "workdir-v1", spec.0, spec.1)?);
    }
    memo.save(cache);
    let packed = pack_all(cache, &specs, options.compression, reporter)?;

    let layers: Vec<PackedLayer> = packed.iter().map(|(l, _)| l.clone()).collect();
    let image = image::assemble(
        cache,
        ImageInputs { manifest, base: &base, layers, epoch: mtime, revision: git_revision(manifest), env },
    )?;
    write_outputs(cache, &image, options, mtime)?;
    let loaded = match &options.load {
        Some(host) => output::load_into_daemon(cache, std::slice::from_ref(&image), mtime, host)?,
        None => Vec::new(),
    };
    let mut reports: Vec<LayerReport> =
        base.layers.iter().map(|l| layer_report(l, false)).collect();
    reports.extend(packed.iter().map(|(l, fresh)| layer_report(l, *fresh)));
    Ok(BuildReport { image, layers: reports, loaded, wheels, seconds: started.elapsed().as_secs_f64() })
}

fn layer_report(layer: &PackedLayer, packed: bool) -> LayerReport {
    LayerReport {
        description: layer.description.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        uncompressed_size: layer.uncompressed_size,
        packed,
    }
}

/// Imports the manifest's base image into the store (or finds it there).
pub fn import_base(
    manifest: &Manifest,
    cache: &Cache,
    compression: Compression,
    show_tool_output: bool,
    registry: &RegistryOptions,
    reporter: &dyn Reporter,
) -> Result<Base, BuildError> {
    let epoch = source_date_epoch()?;
    let task = reporter.on_task_start(TaskKind::Import, "base image", None);
    let on_bytes = |n: u64| reporter.on_task_progress(task, n);
    let ctx = ImportContext {
        cache,
        compression,
        platform: Some(&manifest.image.platform),
        epoch,
        show_tool_output,
        on_bytes: &on_bytes,
    };
    let base = base::import_using(&manifest.base, &ctx, &Client::new(registry.clone()));
    reporter.on_task_done(task);
    Ok(base?)
}

/// Layers the envs may use: the image budget (well under the 125/127-layer limits of
/// moby and containerd) less the base's layers and the app's.
fn env_layer_budget(base: &Base, manifest: &Manifest) -> usize {
    const IMAGE_LAYER_BUDGET: usize = 60;
    IMAGE_LAYER_BUDGET.saturating_sub(base.layers.len() + manifest.files.len() + 1)
}

/// Checks the parts of `[runtime]` that need the base to judge.
fn validate_against_base(manifest: &Manifest, base: &Base) -> Result<(), BuildError> {
    if let Some(user) = &manifest.runtime.user {
        files::resolve_owner(user, &base.index).map_err(|message| BuildError::Invalid {
            file: manifest.path.clone(),
            field: "[runtime] `user`".into(),
            message,
        })?;
    }
    Ok(())
}

fn layer_spec(memo: &mut Memo, scope: &str, description: String, mut entries: Vec<Entry>) -> Result<LayerSpec, BuildError> {
    finalize_entries(&description, &mut entries)?;
    let key = entries_key(scope, &entries, memo).map_err(|source| LayerError::Pack { layer: description.clone(), source })?;
    Ok(LayerSpec { key, description, entries })
}

/// The working directory, when neither the base nor the files create it: made 0755
/// and owned by the runtime user, so a non-root app can write where it starts.
fn workdir_layer(manifest: &Manifest, base: &Base, specs: &[LayerSpec], mtime: u64) -> Result<Option<(String, Vec<Entry>)>, BuildError> {
    let Some(LayerPathOrRoot::Path(workdir)) = &manifest.runtime.workdir else { return Ok(None) };
    let exists = base.index.get(workdir).is_some() || specs.iter().flat_map(|s| &s.entries).any(|e| &e.path == workdir);
    if exists {
        return Ok(None);
    }
    let (uid, gid) = match &manifest.runtime.user {
        Some(user) => files::resolve_owner(user, &base.index).unwrap_or((0, 0)),
        None => (0, 0),
    };
    let mut entries: Vec<Entry> = workdir
        .ancestors()
        .into_iter()
        .filter(|a| base.index.get(a).is_none())
        .map(|a| Entry::dir(a, 0o755, 0, 0, mtime))
        .collect();
    entries.push(Entry::dir(workdir.clone(), 0o755, uid, gid, mtime));
    Ok(Some((format!("workdir {workdir}"), entries)))
}

/// Packs every layer the store lacks, several at once.
fn pack_all(
    cache: &Cache,
    specs: &[LayerSpec],
    compression: Compression,
    reporter: &dyn Reporter,
) -> Result<Vec<(PackedLayer, bool)>, BuildError> {
    let size = |spec: &LayerSpec| spec.entries.iter().map(Entry::content_size).sum();
    crate::par_map_largest_first(specs, size, |spec| {
        let task = reporter.on_task_start(TaskKind::Pack, &spec.description, Some(size(spec)));
        let result = pack_cached(cache, spec, compression, &|n| reporter.on_task_progress(task, n));
        reporter.on_task_done(task);
        Ok(result?)
    })
    .into_iter()
    .collect()
}

fn write_outputs(cache: &Cache, image: &BuiltImage, options: &BuildOptions, mtime: u64) -> Result<(), BuildError> {
    let images = std::slice::from_ref(image);
    output::write_layout(cache, images, &options.output)?;
    if let Some(path) = &options.docker_archive {
        output::write_archive_file(cache, images, mtime, path)?;
    }
    Ok(())
}

/// The project's git commit, when it is a git checkout and git is installed.
fn git_revision(manifest: &Manifest) -> Option<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(&manifest.dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let rev = text.trim();
    (output.status.success() && rev.len() >= 7).then(|| rev.to_owned())
}
