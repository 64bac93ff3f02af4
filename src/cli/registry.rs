//! `galley push` and `galley pull`, and the registry flags shared by every command
//! that talks to registries (push, pull, inspect, build).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use galley::cache::Cache;
use galley::manifest::{MANIFEST_FILE, Manifest};
use galley::oci::Platform;
use galley::registry::{self, Client, Credential, ImageRef, PushOptions, PushReport, RegistryOptions, Repository, Tag};

use super::{Global, UsageError, human_size, load_manifest};

/// How to reach registries.
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Allow plain HTTP for this registry (HOST[:PORT]) when HTTPS fails; localhost and 127.0.0.0/8 always may
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure: Vec<String>,
    /// Trust this PEM CA certificate for registries; /etc/docker/certs.d/HOST/*.crt are trusted too
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub ca: Vec<PathBuf>,
}

impl RegistryArgs {
    /// Options for a command aimed at `target`: GALLEY_REGISTRY_USER and
    /// GALLEY_REGISTRY_PASSWORD are credentials for that registry only (other
    /// registries, such as a base's, use docker's config.json).
    pub fn options(&self, target: Option<&str>) -> anyhow::Result<RegistryOptions> {
        let mut options = RegistryOptions { ca_files: self.ca.clone(), insecure: self.insecure.clone(), ..RegistryOptions::default() };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("GALLEY_REGISTRY_USER"), var("GALLEY_REGISTRY_PASSWORD"), target) {
            (Some(username), Some(password), Some(target)) => {
                options.credentials.insert(target.to_owned(), Credential::Basic { username, password });
            }
            (Some(_), None, _) | (None, Some(_), _) => {
                bail!(UsageError("set both GALLEY_REGISTRY_USER and GALLEY_REGISTRY_PASSWORD, or neither".into()))
            }
            _ => {}
        }
        Ok(options)
    }
}

/// Where and how to push.
#[derive(Args, Clone, Debug)]
pub struct PushTarget {
    /// Repository to push to, e.g. ghcr.io/org/app [default: `[image] registry` in galley.toml]
    #[arg(long, value_name = "REPOSITORY")]
    pub registry: Option<Repository>,
    /// Tag to push the image as, instead of its own tag (repeatable; one image only)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<Tag>,
    /// Blob uploads at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
}

impl PushTarget {
    pub fn given(&self) -> bool {
        self.registry.is_some() || !self.tags.is_empty()
    }

    /// `--registry`, else the manifest's `[image] registry`.
    pub fn repository(&self, manifest: Option<&Manifest>) -> anyhow::Result<Repository> {
        if let Some(r) = self.registry.clone().or_else(|| manifest.and_then(|m| m.image.registry.clone())) {
            return Ok(r);
        }
        bail!(UsageError(
            "no repository to push to: pass --registry REPOSITORY (e.g. ghcr.io/org/app) or set `registry` under [image] in galley.toml".into()
        ))
    }
}

#[derive(Args)]
pub struct PushArgs {
    /// An OCI image layout, or a project directory whose build output (.galley/out) to push
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub target: PushTarget,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run_push(global: &Global, args: PushArgs) -> anyhow::Result<ExitCode> {
    let (layout, manifest) = locate(&args.dir)?;
    let repository = args.target.repository(manifest.as_ref())?;
    let report = push(global, &layout, &repository, &args.target, &args.registry)?;
    if global.json {
        println!("{}", push_json(&repository, &report));
    } else if !global.quiet {
        print_push(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The layout to push: `dir` itself, or the build output of the project at `dir`.
fn locate(dir: &Path) -> anyhow::Result<(PathBuf, Option<Manifest>)> {
    if dir.join("index.json").is_file() {
        return Ok((dir.to_owned(), None));
    }
    if dir.join(MANIFEST_FILE).is_file() || dir.is_file() {
        let manifest = load_manifest(dir)?;
        let out = manifest.dir.join(".galley/out");
        if !out.join("index.json").is_file() {
            bail!(UsageError(format!("{} has not been built yet (no {}); run `galley build` first", manifest.path.display(), out.display())));
        }
        return Ok((out, Some(manifest)));
    }
    bail!(UsageError(format!("{} is neither an OCI image layout nor a project with {MANIFEST_FILE}", dir.display())))
}

/// Pushes the layout and returns what happened; shared with `build --push`.
pub fn push(
    global: &Global,
    layout: &Path,
    repository: &Repository,
    target: &PushTarget,
    registry_args: &RegistryArgs,
) -> anyhow::Result<PushReport> {
    let client = Client::new(registry_args.options(Some(repository.registry()))?);
    let cache = global.cache()?;
    let options =
        PushOptions { tags: (!target.tags.is_empty()).then(|| target.tags.clone()), jobs: target.jobs.max(1), ..PushOptions::default() };
    let reporter = global.reporter();
    registry::push_layout(&client, &cache, layout, repository, &options, reporter.as_ref())
        .with_context(|| format!("pushing {} to {repository}", layout.display()))
}

pub fn push_json(repository: &Repository, report: &PushReport) -> serde_json::Value {
    let mut doc = serde_json::to_value(report).unwrap_or_default();
    if let Some(map) = doc.as_object_mut() {
        map.insert("repository".into(), json!(repository.to_string()));
    }
    doc
}

pub fn print_push(report: &PushReport) {
    for image in &report.images {
        if image.tagged.is_empty() {
            println!("pushed {}", image.reference);
        }
        for tagged in &image.tagged {
            println!("pushed {tagged}");
        }
    }
    println!(
        "  blobs      {} uploaded ({}), {} already there, {} mounted",
        report.blobs_uploaded,
        human_size(report.bytes_uploaded),
        report.blobs_skipped,
        report.blobs_mounted
    );
    println!("  manifests  {} uploaded, {} already there; {} tags set", report.manifests_uploaded, report.manifests_skipped, report.tags_updated);
    if report.uploads_resumed + report.uploads_restarted > 0 {
        println!("  recovered  {} uploads resumed, {} restarted after dropped connections", report.uploads_resumed, report.uploads_restarted);
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// Image reference, e.g. python:3.11-slim or ghcr.io/org/app@sha256:...
    pub reference: ImageRef,
    /// OCI image layout directory to write (created if needed; other images in it stay)
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Platform to take from a multi-platform image [default: the host's]
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Pulls `reference` into the content store; shared with `inspect REF`.
pub fn pull(
    global: &Global,
    cache: &Cache,
    reference: &ImageRef,
    platform: Option<&Platform>,
    registry_args: &RegistryArgs,
) -> anyhow::Result<registry::Pulled> {
    let client = Client::new(registry_args.options(Some(reference.repository().registry()))?);
    let reporter = global.reporter();
    registry::pull(&client, cache, reference, platform, reporter.as_ref()).with_context(|| format!("pulling {reference}"))
}

pub fn run_pull(global: &Global, args: PullArgs) -> anyhow::Result<ExitCode> {
    let cache = global.cache()?;
    let pulled = pull(global, &cache, &args.reference, args.platform.as_ref(), &args.registry)?;
    registry::write_layout(&cache, &pulled, &args.output).with_context(|| format!("writing {}", args.output.display()))?;
    let platform = pulled.manifest.platform.as_ref().map_or_else(|| "single platform".to_owned(), ToString::to_string);
    if global.json {
        let mut doc = serde_json::to_value(&pulled).unwrap_or_default();
        if let Some(map) = doc.as_object_mut() {
            map.insert("output".into(), json!(args.output));
        }
        println!("{doc}");
    } else if !global.quiet {
        let size: u64 = pulled.layers.iter().map(|l| l.size).sum();
        println!("pulled {}@{} ({platform})", args.reference, pulled.digest);
        println!("  manifest {}", pulled.manifest.digest);
        println!("  layers   {} ({}), {} downloaded", pulled.layers.len(), human_size(size), human_size(pulled.downloaded));
        let tag = args.reference.tag().map_or_else(String::new, |t| format!(":{t}"));
        println!("  output   {} (skopeo: oci:{}{tag})", args.output.display(), args.output.display());
    }
    Ok(ExitCode::SUCCESS)
}
