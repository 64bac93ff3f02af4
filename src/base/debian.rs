//! Debian bases made by mmdebstrap: a minimal root filesystem with the packages the
//! manifest lists, built once per (suite, packages, variant, mirror, architecture,
//! SOURCE_DATE_EPOCH) and kept in the cache as a tar.

use std::path::Path;
use std::process::{Command, Stdio};

use super::rootfs::import_tar;
use super::{Base, BaseError, ImportContext, io_error};
use crate::cache::TempGuard;
use crate::oci::{Digest, Platform};

pub const MMDEBSTRAP_INSTALL_HINT: &str = "install it with `apt-get install -y mmdebstrap` (Debian/Ubuntu)";

pub(super) fn import(
    suite: &str,
    packages: &[String],
    variant: &str,
    mirror: Option<&str>,
    outer: &ImportContext<'_>,
) -> Result<Base, BaseError> {
    // A Debian base is always made reproducibly: mmdebstrap gets SOURCE_DATE_EPOCH
    // (0 unless set) and every mtime is clamped to it.
    let ctx = &ImportContext { epoch: Some(outer.epoch.unwrap_or(0)), ..*outer };
    let platform = ctx.platform.cloned().unwrap_or_else(Platform::host);
    let inputs = format!(
        "debian-v1 suite={suite} packages={} variant={variant} mirror={} arch={} epoch={:?}",
        packages.join(","),
        mirror.unwrap_or(""),
        platform.architecture,
        ctx.epoch
    );
    let key = Digest::of(inputs.as_bytes());
    if let Some(base) = ctx.cached(&key) {
        return Ok(base);
    }
    let what = format!("[base] debian {suite}");
    let tar_path = ctx.cache.bucket("bases-v1").join(format!("{}.tar", key.hex()));
    {
        // One build runs mmdebstrap; a concurrent one waits and then reuses its tar.
        let _lock = ctx.cache.lock(&format!("debian-{}", key.short()))?;
        if !tar_path.is_file() {
            run_mmdebstrap(suite, packages, variant, mirror, &platform, &tar_path, ctx)?;
        }
    }
    let description = if packages.is_empty() {
        format!("debian {suite} ({variant})")
    } else {
        format!("debian {suite} ({variant}) + {}", packages.join(" "))
    };
    let base = import_tar(&tar_path, key.clone(), &what, &description, platform, ctx)?;
    ctx.remember(&key, &base)?;
    Ok(base)
}

fn run_mmdebstrap(
    suite: &str,
    packages: &[String],
    variant: &str,
    mirror: Option<&str>,
    platform: &Platform,
    dest: &Path,
    ctx: &ImportContext<'_>,
) -> Result<(), BaseError> {
    let tmp = ctx.cache.temp_path("debian.tar");
    let guard = TempGuard(tmp.clone());
    let mut command = Command::new("mmdebstrap");
    command
        .arg(format!("--variant={variant}"))
        .arg(format!("--architectures={}", debian_arch(platform)))
        .arg("--quiet")
        .arg("--format=tar");
    if !packages.is_empty() {
        command.arg(format!("--include={}", packages.join(",")));
    }
    command.arg(suite).arg(&tmp);
    if let Some(mirror) = mirror {
        command.arg(mirror);
    }
    command.env("SOURCE_DATE_EPOCH", ctx.epoch.unwrap_or(0).to_string());
    command.stdin(Stdio::null());
    let output = if ctx.show_tool_output {
        command.stdout(Stdio::inherit()).stderr(Stdio::inherit()).status().map(|status| (status, String::new()))
    } else {
        command.output().map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned()))
    };
    let (status, log) = match output {
        Ok(result) => result,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BaseError::MmdebstrapMissing),
        Err(e) => return Err(io_error("mmdebstrap")(e)),
    };
    if !status.success() {
        let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(BaseError::Mmdebstrap { suite: suite.to_owned(), status: status.to_string(), log: tail.join("\n") });
    }
    std::fs::rename(&tmp, dest).map_err(io_error(dest.display().to_string()))?;
    std::mem::forget(guard);
    Ok(())
}

/// Debian's architecture names for OCI platforms.
fn debian_arch(platform: &Platform) -> &str {
    match (platform.architecture.as_str(), platform.variant.as_deref()) {
        ("amd64", _) => "amd64",
        ("arm64", _) => "arm64",
        ("arm", Some("v7")) => "armhf",
        ("arm", _) => "armel",
        ("386", _) => "i386",
        ("ppc64le", _) => "ppc64el",
        (other, _) => other,
    }
}
