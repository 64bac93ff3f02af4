//! `galley run [DIR] [-- ARGS...]`: build (a no-op when nothing changed), then run.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use galley::build::source_date_epoch;
use galley::output::DockerHost;
use galley::runner::{self, Engine};

use super::build::{BuildArgs, print_report};
use super::Global;

#[derive(Clone, Copy, ValueEnum)]
pub enum EngineChoice {
    /// docker when a daemon answers, else chroot
    Auto,
    Docker,
    Chroot,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Which runtime runs the image
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    pub engine: EngineChoice,
    /// Arguments that replace the image's CMD
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(global: &Global, args: RunArgs) -> anyhow::Result<ExitCode> {
    let (report, options) = args.build.build(global)?;
    if !global.quiet && !global.json {
        print_report(global, &report, &options);
    }
    let engine = match args.engine {
        EngineChoice::Auto => Engine::detect()?,
        EngineChoice::Docker => Engine::Docker(DockerHost::from_env()?),
        EngineChoice::Chroot => Engine::Chroot,
    };
    if !global.quiet && !global.json {
        eprintln!("running {} with {}", report.image.reference(), engine.name());
    }
    let cache = global.cache()?;
    let mtime = source_date_epoch()?.unwrap_or(0);
    let status = runner::run(&cache, &report.image, &engine, &args.args, mtime)
        .with_context(|| format!("running {}", report.image.reference()))?;
    Ok(ExitCode::from(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1))))
}
