//! Command-line interface: clap arguments, one function per command, and the mapping
//! from errors to exit codes (0 ok, 1 build failure, 2 usage or manifest error,
//! 3 doctor failure, once the doctor exists).

mod build;
mod inspect;
mod registry;
mod lock;
mod reporters;
mod run;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use galley::cache::Cache;
use galley::manifest::{Manifest, ManifestError};

/// Exit codes, distinct per kind of failure.
pub mod exit {
    pub const BUILD_FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
}

#[derive(Parser)]
#[command(name = "galley", version, about = "Build reproducible OCI images for Python ML applications, without a container daemon")]
struct Cli {
    /// Content store directory [default: $GALLEY_CACHE, else ~/.cache/galley]
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text, and no progress
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but errors
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the image described by galley.toml
    Build(build::BuildCommand),
    /// Show an image's layers and config (an OCI layout, a docker archive, a project, or a registry image)
    Inspect(inspect::InspectArgs),
    /// Push the built images (an OCI layout or a project's build output) to a registry
    Push(registry::PushArgs),
    /// Pull an image from a registry into an OCI layout
    Pull(registry::PullArgs),
    /// Resolve every [envs.*] with uv and write galley.lock
    Lock(lock::LockArgs),
    /// Build, then run the image: with docker when a daemon answers, else in a chroot (root)
    Run(run::RunArgs),
}

/// Settings every command shares, resolved from the global flags.
pub struct Global {
    pub cache_dir: PathBuf,
    pub json: bool,
    pub quiet: bool,
}

impl Global {
    pub fn cache(&self) -> anyhow::Result<Cache> {
        Ok(Cache::open(&self.cache_dir)?)
    }

    /// Whether to draw progress bars: a terminal on stderr, and neither --json nor --quiet.
    pub fn show_progress(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }

    pub fn reporter(&self) -> Box<dyn galley::progress::Reporter> {
        if let Some(timings) = reporters::Timings::from_env() {
            Box::new(timings)
        } else if self.quiet {
            Box::new(())
        } else if self.show_progress() {
            Box::new(reporters::Bars::new())
        } else {
            Box::new(reporters::NotesOnly)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(exit::USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let global = Global {
        cache_dir: cli.cache.clone().unwrap_or_else(Cache::default_root),
        json: cli.json,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Build(args) => build::run(&global, args),
        Command::Inspect(args) => inspect::run(&global, args),
        Command::Push(args) => registry::run_push(&global, args),
        Command::Pull(args) => registry::run_pull(&global, args),
        Command::Lock(args) => lock::run(&global, args),
        Command::Run(args) => run::run(&global, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            report_error(&err);
            ExitCode::from(exit_code(&err))
        }
    }
}

fn report_error(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// Usage and manifest errors exit 2; everything else that fails a build exits 1. The
/// first error in the chain that knows whose fault it is decides.
fn exit_code(err: &anyhow::Error) -> u8 {
    match err.chain().find_map(user_at_fault) {
        Some(true) => exit::USAGE,
        _ => exit::BUILD_FAILED,
    }
}

/// Whether this error blames the user's input, for the error types that can tell.
fn user_at_fault(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    if cause.is::<ManifestError>() || cause.is::<UsageError>() {
        return Some(true);
    }
    cause
        .downcast_ref::<galley::build::BuildError>()
        .map(galley::build::BuildError::is_usage)
        .or_else(|| cause.downcast_ref::<galley::envs::EnvError>().map(galley::envs::EnvError::is_usage))
        .or_else(|| cause.downcast_ref::<galley::lock::LockError>().map(galley::lock::LockError::is_usage))
        .or_else(|| cause.downcast_ref::<galley::base::BaseError>().map(galley::base::BaseError::is_usage))
        .or_else(|| cause.downcast_ref::<galley::registry::RegistryError>().map(galley::registry::RegistryError::is_usage))
}

/// A usage error found by the CLI itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Loads the manifest of a project directory (or a galley.toml path).
pub fn load_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    Ok(Manifest::load(dir)?)
}

/// Human sizes: 1.2 GB, 35.0 MB, 812 B.
pub fn human_size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
