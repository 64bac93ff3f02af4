//! Resolving requirements with uv (`uv pip compile --format pylock.toml`): the one place
//! galley runs uv.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::tags::{Target, TargetPlatform};
use super::{LockError, LockOptions};
use crate::base::Libc;
use crate::manifest::{EnvSpec, Requirement};

pub const UV_INSTALL_HINT: &str = "install it with `pip install uv` (or `pipx install uv`), or point GALLEY_UV at the uv binary";

/// Environment variables that would make uv resolve from something galley.toml does not say.
const UV_OVERRIDES: &[&str] = &[
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_CONSTRAINT",
    "UV_OVERRIDE",
    "UV_EXCLUDE_NEWER",
    "UV_PRERELEASE",
    "UV_RESOLUTION",
    "UV_INDEX_STRATEGY",
    "UV_NO_BINARY",
    "UV_ONLY_BINARY",
];

/// The uv binary: `options.uv`, else `$GALLEY_UV`, else `uv` on PATH.
pub(super) fn find(options: &LockOptions) -> Result<PathBuf, LockError> {
    let explicit = options.uv.clone().map(|p| (p, "the uv path given")).or_else(|| {
        std::env::var_os("GALLEY_UV").filter(|v| !v.is_empty()).map(|v| (PathBuf::from(v), "GALLEY_UV"))
    });
    if let Some((path, origin)) = explicit {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LockError::UvMissing { looked: format!("{origin} names {}, which does not exist", path.display()) })
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("uv"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LockError::UvMissing { looked: "it is not on PATH".into() })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// uv's `--python-platform` for a target. uv 0.13 knows manylinux 2.17, 2.28 and
/// 2.31–2.40 on x86_64 and aarch64, and musllinux 1.2 as `*-unknown-linux-musl`; an
/// image with a glibc in between resolves for the nearest older one, which still runs.
pub(super) fn uv_platform(platform: &TargetPlatform) -> Result<String, String> {
    let arch = platform.arch();
    if !matches!(arch, "x86_64" | "aarch64") {
        return Err(format!("uv resolves Linux wheels for x86_64 and aarch64 only, not {arch}; name the wheels in a pylock.toml instead"));
    }
    match platform.libc() {
        Libc::Glibc { major: 2, minor } => {
            let known = [40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 28, 17];
            let fit = known.iter().find(|k| **k <= minor).ok_or_else(|| format!("glibc 2.{minor} is older than manylinux2014 (glibc 2.17)"))?;
            Ok(format!("{arch}-manylinux_2_{fit}"))
        }
        Libc::Musl { major: 1, minor } if minor >= 2 => Ok(format!("{arch}-unknown-linux-musl")),
        libc => Err(format!("uv cannot resolve for {libc}")),
    }
}

/// Resolves `requirements` for `target` and returns uv's pylock.toml text. `seed` holds
/// earlier pins that uv keeps while they still fit.
pub(super) fn compile(
    uv: &Path,
    spec: &EnvSpec,
    requirements: &[Requirement],
    target: &Target,
    seed: Option<String>,
    options: &LockOptions,
) -> Result<String, LockError> {
    let platform = uv_platform(&target.platform).map_err(|why| LockError::UnsupportedPlatform {
        env: spec.name.clone(),
        platform: target.platform.to_string(),
        why,
    })?;
    let work = tempfile::Builder::new().prefix("galley-lock-").tempdir().map_err(|source| LockError::Write { path: std::env::temp_dir(), source })?;
    let input = work.path().join("requirements.in");
    let output = work.path().join("pylock.toml");
    let lines: String = requirements.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&input, lines).map_err(|source| LockError::Write { path: input.clone(), source })?;
    if let Some(seed) = seed {
        std::fs::write(&output, seed).map_err(|source| LockError::Write { path: output.clone(), source })?;
    }
    let mut command = Command::new(uv);
    command
        .current_dir(work.path())
        .args(["pip", "compile", "requirements.in", "--format", "pylock.toml", "--output-file", "pylock.toml"])
        .args(["--python-version", &target.python.to_string(), "--python-platform", &platform])
        // Images are built without compilers: only wheels count, so uv picks versions that have them.
        .args(["--only-binary", ":all:", "--no-header", "--no-annotate", "--no-config", "--quiet", "--color", "never"])
        .args(["--default-index", spec.index_url().as_str()]);
    for extra in &spec.extra_index {
        command.args(["--index", extra.as_str()]);
    }
    if let Some(constraints) = &spec.constraints {
        command.arg("--constraints").arg(constraints);
    }
    if let Some(dir) = &options.uv_cache_dir {
        command.arg("--cache-dir").arg(dir);
    }
    for var in UV_OVERRIDES {
        command.env_remove(var);
    }
    let result = command.stdin(Stdio::null()).output();
    let out = match result {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LockError::UvMissing { looked: format!("{} could not be run", uv.display()) });
        }
        Err(source) => return Err(LockError::UvRun { program: uv.to_owned(), source }),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(LockError::Uv { env: spec.name.clone(), status: out.status.to_string(), stderr });
    }
    std::fs::read_to_string(&output).map_err(|source| LockError::Read { path: output.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_platforms_round_down_to_what_uv_knows() {
        let uv = |s: &str| uv_platform(&s.parse().unwrap());
        assert_eq!(uv("x86_64-manylinux_2_36").unwrap(), "x86_64-manylinux_2_36");
        assert_eq!(uv("x86_64-manylinux_2_41").unwrap(), "x86_64-manylinux_2_40");
        assert_eq!(uv("aarch64-manylinux_2_30").unwrap(), "aarch64-manylinux_2_28");
        assert_eq!(uv("x86_64-manylinux_2_17").unwrap(), "x86_64-manylinux_2_17");
        assert_eq!(uv("x86_64-musllinux_1_2").unwrap(), "x86_64-unknown-linux-musl");
        assert!(uv("x86_64-manylinux_2_12").unwrap_err().contains("older than manylinux2014"));
        assert!(uv("ppc64le-manylinux_2_36").unwrap_err().contains("not ppc64le"));
        assert!(uv("x86_64-musllinux_1_1").is_err());
    }
}
