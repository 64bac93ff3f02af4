//! `galley lock [DIR]`: resolve every `[envs.*]` for the base image and write galley.lock.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use galley::base;
use galley::build::import_base;
use galley::layer::Compression;
use galley::lock::{LOCK_FILE, LockOptions, TargetPlatform, update_lock_file};
use galley::manifest::PythonVersion;

use super::registry::RegistryArgs;
use super::{Global, UsageError, human_size, load_manifest};

#[derive(Args)]
pub struct LockArgs {
    /// Project directory holding galley.toml (or the path of the manifest itself)
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Relock every env, ignoring the versions galley.lock pins now
    #[arg(long)]
    pub upgrade: bool,
    /// Resolve for this Python instead of the base image's interpreter (e.g. 3.11)
    #[arg(long, value_name = "X.Y[.Z]")]
    pub python_version: Option<PythonVersion>,
    /// Resolve for this platform instead of the base image's (e.g. x86_64-manylinux_2_36)
    #[arg(long, value_name = "PLATFORM")]
    pub python_platform: Option<TargetPlatform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(global: &Global, args: LockArgs) -> anyhow::Result<ExitCode> {
    let manifest = load_manifest(&args.dir)?;
    if manifest.envs.is_empty() {
        return Err(UsageError(format!("{} declares no [envs.NAME]; there is nothing to lock", manifest.path.display())).into());
    }
    let cache = global.cache()?;
    let reporter = global.reporter();
    // The base is imported as `galley build` imports it by default, so both share it.
    let base = import_base(&manifest, &cache, Compression::Gzip, global.show_progress(), &args.registry.options(None)?, reporter.as_ref())?;
    let probe = base::probe(&base, &cache)?;
    let options = LockOptions {
        upgrade: args.upgrade,
        python_version: args.python_version,
        python_platform: args.python_platform,
        ..LockOptions::default()
    };
    let path = manifest.dir.join(LOCK_FILE);
    let (lock, changed) = update_lock_file(&manifest, &probe, &options, reporter.as_ref())
        .with_context(|| format!("locking {}", manifest.path.display()))?;
    if global.json {
        let envs: Vec<_> = lock
            .envs
            .iter()
            .map(|(name, env)| {
                json!({
                    "name": name,
                    "python": env.python,
                    "platform": env.platform,
                    "wheels": env.wheels.len(),
                    "size": env.wheels.iter().filter_map(|w| w.size).sum::<u64>(),
                })
            })
            .collect();
        println!("{}", json!({ "lock": path, "changed": changed, "base": lock.base.description, "envs": envs }));
    } else if !global.quiet {
        let state = if changed { "written" } else { "unchanged" };
        println!("{} {state}: {} env(s) for {}", path.display(), lock.envs.len(), lock.base.description);
        for (name, env) in &lock.envs {
            let size: u64 = env.wheels.iter().filter_map(|w| w.size).sum();
            let (python, platform) = (env.python.to_string(), env.platform.to_string());
            println!("  {:<12} Python {python:<8} {platform:<24} {} wheels, {}", name.as_str(), env.wheels.len(), human_size(size));
        }
    }
    Ok(ExitCode::SUCCESS)
}
