//! `galley build [DIR]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use galley::build::{BuildOptions, BuildReport, build};
use galley::envs::LockMode;
use galley::layer::Compression;
use galley::output::DockerHost;

use super::registry::{PushTarget, RegistryArgs, print_push, push, push_json};
use super::{Global, UsageError, human_size, load_manifest};

#[derive(Args)]
pub struct BuildArgs {
    /// Project directory holding galley.toml (or the path of the manifest itself)
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// OCI image layout directory to write [default: DIR/.galley/out]
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Also write a tar that `docker load` and `podman load` accept
    #[arg(long, value_name = "FILE")]
    pub docker_archive: Option<PathBuf>,
    /// Also load the image into the docker daemon at DOCKER_HOST (or /var/run/docker.sock)
    #[arg(long)]
    pub load: bool,
    /// Layer compression
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    pub compression: Compression,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Relock envs whose inputs changed (as `galley lock` does) before building; without
    /// it a missing or stale galley.lock fails the build
    #[arg(long)]
    pub update_lock: bool,
    /// Download nothing: every locked wheel must already be in the cache
    #[arg(long)]
    pub offline: bool,
    /// Fail when two packages of one env ship one path with different content
    /// (by default the later package in the lock's order wins, with a note)
    #[arg(long)]
    pub strict: bool,
}

/// `galley build`: the build, and optionally a push of what it wrote.
#[derive(Args)]
pub struct BuildCommand {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Push the image after building it (to --registry, else `[image] registry`)
    #[arg(long)]
    pub push: bool,
    #[command(flatten)]
    pub target: PushTarget,
}

impl BuildArgs {
    /// Builds the project as these arguments say, printing nothing.
    pub fn build(&self, global: &Global) -> anyhow::Result<(BuildReport, BuildOptions)> {
        let manifest = load_manifest(&self.dir)?;
        let cache = global.cache()?;
        let options = BuildOptions {
            compression: self.compression,
            output: self.output.clone().unwrap_or_else(|| manifest.dir.join(".galley/out")),
            docker_archive: self.docker_archive.clone(),
            load: if self.load { Some(DockerHost::from_env()?) } else { None },
            show_tool_output: global.show_progress(),
            // Base images come from registries other than the push target: docker's credentials only.
            registry: self.registry.options(None)?,
            lock: if self.update_lock { LockMode::Update } else { LockMode::Locked },
            offline: self.offline,
            strict: self.strict,
        };
        let reporter = global.reporter();
        let report = build(&manifest, &cache, &options, reporter.as_ref())
            .with_context(|| format!("building {}", manifest.path.display()))?;
        Ok((report, options))
    }
}

pub fn run(global: &Global, command: BuildCommand) -> anyhow::Result<ExitCode> {
    if command.target.given() && !command.push {
        anyhow::bail!(UsageError("--registry and --tag choose where `build --push` pushes; add --push".into()));
    }
    // Find the push target before building, so a missing one fails fast.
    let target = if command.push { Some(command.target.repository(Some(&load_manifest(&command.build.dir)?))?) } else { None };
    let (report, options) = command.build.build(global)?;
    let Some(repository) = target else {
        print_report(global, &report, &options);
        return Ok(ExitCode::SUCCESS);
    };
    // The layout's blobs are hard links into the content store: nothing is written twice.
    let pushed = push(global, &options.output, &repository, &command.target, &command.build.registry)?;
    if global.json {
        let mut doc = build_json(&report, &options);
        doc["push"] = push_json(&repository, &pushed);
        println!("{doc}");
    } else if !global.quiet {
        print_report(global, &report, &options);
        print_push(&pushed);
    }
    Ok(ExitCode::SUCCESS)
}

fn build_json(report: &BuildReport, options: &BuildOptions) -> serde_json::Value {
    let image = &report.image;
    json!({
        "image": image.reference(),
        "digest": image.descriptor.digest,
        "platform": image.platform.to_string(),
        "output": options.output,
        "docker_archive": options.docker_archive,
        "loaded": report.loaded,
        "wheels": report.wheels.len(),
        "layers": report.layers,
        "seconds": report.seconds,
    })
}

pub fn print_report(global: &Global, report: &BuildReport, options: &BuildOptions) {
    let image = &report.image;
    let packed = report.layers.iter().filter(|l| l.packed).count();
    let compressed: u64 = report.layers.iter().map(|l| l.size).sum();
    if global.json {
        println!("{}", build_json(report, options));
    } else if !global.quiet {
        println!("built {} ({}) in {:.2}s", image.reference(), image.platform, report.seconds);
        println!("  digest  {}", image.descriptor.digest);
        println!(
            "  layers  {} ({packed} packed, {} reused), {} compressed",
            report.layers.len(),
            report.layers.len() - packed,
            human_size(compressed)
        );
        println!("  output  {} (skopeo: oci:{}:{})", options.output.display(), options.output.display(), image.tag);
        if !report.wheels.is_empty() {
            let bytes: u64 = report.wheels.iter().filter_map(|w| w.wheel.size).sum();
            println!("  wheels  {} locked wheels in the cache ({})", report.wheels.len(), human_size(bytes));
        }
        if let Some(archive) = &options.docker_archive {
            println!("  archive {}", archive.display());
        }
        for line in &report.loaded {
            println!("  docker  {line}");
        }
    }
}
