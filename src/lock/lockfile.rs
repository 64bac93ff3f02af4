//! `galley.lock`: TOML, `version = 1`, sorted and diff-friendly. Per env: the target it
//! was locked for, the inputs it was locked from (to tell when it is stale), and the
//! exact wheels; plus the base image it was locked against.

use std::collections::BTreeMap;
use std::path::Path;

use pep508_rs::PackageName;
use pep508_rs::pep440_rs::Version;
use serde::{Deserialize, Serialize};

use super::LockError;
use super::tags::TargetPlatform;
use crate::install::WheelFilename;
use crate::base::{Libc, Probe};
use crate::layer::LayerPath;
use crate::manifest::{EnvName, IndexUrl, PythonVersion, Requirement};
use crate::oci::Digest;

/// The lock file's name, next to `galley.toml`.
pub const LOCK_FILE: &str = "galley.lock";

const HEADER: &str = "# This file is written by `galley lock`; edit galley.toml instead.\n";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    pub base: LockedBase,
    #[serde(default)]
    pub envs: BTreeMap<EnvName, LockedEnv>,
}

/// The base image the envs were locked against (for the record: a new base whose
/// Python and C library still fit keeps the lock fresh).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBase {
    pub description: String,
    /// The digest of the base's image config.
    pub config: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<LayerPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libc: Option<Libc>,
}

impl LockedBase {
    pub fn of(probe: &Probe) -> Self {
        Self {
            description: probe.description.clone(),
            config: probe.identity.clone(),
            interpreter: probe.interpreter.as_ref().map(|i| i.executable.clone()),
            python: probe.interpreter.as_ref().map(crate::base::Interpreter::python_version),
            libc: probe.libc,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedEnv {
    /// The Python version the env was resolved for.
    pub python: PythonVersion,
    /// The platform the env was resolved for (`x86_64-manylinux_2_36`).
    pub platform: TargetPlatform,
    pub inputs: EnvInputs,
    /// Sorted by package name.
    #[serde(default)]
    pub wheels: Vec<LockedWheel>,
}

/// What an env was locked from: when any of it changes, the env is relocked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EnvInputs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<Requirement>,
    /// sha256 of the files the env names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pylock: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements_file: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexUrl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_index: Vec<IndexUrl>,
    /// The env's `python`, when galley.toml sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonVersion>,
}

impl EnvInputs {
    /// What differs between the inputs an env was locked from (`self`) and `now`.
    pub fn change(&self, now: &Self) -> Option<&'static str> {
        if self.requirements != now.requirements {
            Some("requirements changed")
        } else if self.pylock != now.pylock {
            Some("its pylock.toml changed")
        } else if self.requirements_file != now.requirements_file {
            Some("its requirements file changed")
        } else if self.constraints != now.constraints {
            Some("constraints changed")
        } else if self.index != now.index {
            Some("index changed")
        } else if self.extra_index != now.extra_index {
            Some("extra-index changed")
        } else if self.python != now.python {
            Some("python changed")
        } else {
            None
        }
    }
}

/// One wheel to install: where to get it and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedWheel {
    pub name: PackageName,
    pub version: Version,
    pub filename: WheelFilename,
    pub url: String,
    #[serde(with = "sha256_hex")]
    pub sha256: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `sha256 = "<64 hex>"`, as pylock.toml writes hashes.
mod sha256_hex {
    use crate::oci::Digest;

    pub fn serialize<S: serde::Serializer>(digest: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(digest.hex())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let hex = <String as serde::Deserialize>::deserialize(d)?;
        Digest::from_hex(&hex).map_err(serde::de::Error::custom)
    }
}

impl Lockfile {
    pub const VERSION: u32 = 1;

    /// Reads `galley.lock`; a missing file is [`LockError::Missing`].
    pub fn read(path: &Path) -> Result<Self, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LockError::Missing { path: path.to_owned() }),
            Err(source) => return Err(LockError::Read { path: path.to_owned(), source }),
        };
        Self::parse(&text, path)
    }

    /// Reads `galley.lock` if there is one.
    pub fn read_optional(path: &Path) -> Result<Option<Self>, LockError> {
        match Self::read(path) {
            Ok(lock) => Ok(Some(lock)),
            Err(LockError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, LockError> {
        let invalid = |message: String| LockError::InvalidLock { path: path.to_owned(), message };
        let version = toml::from_str::<toml::Table>(text)
            .map_err(|e| invalid(e.message().trim().to_owned()))?
            .get("version")
            .and_then(toml::Value::as_integer);
        if version != Some(i64::from(Self::VERSION)) {
            return Err(invalid(format!(
                "it has version {}, this galley reads version {}; run `galley lock` to rewrite it",
                version.map_or_else(|| "(none)".to_owned(), |v| v.to_string()),
                Self::VERSION
            )));
        }
        toml::from_str(text).map_err(|e| invalid(e.message().trim().to_owned()))
    }

    /// The TOML text: the same lock always gives the same bytes.
    pub fn to_toml(&self) -> String {
        // Plain structs, string-keyed maps: serializing cannot fail.
        format!("{HEADER}{}", toml::to_string(self).unwrap_or_default())
    }

    /// Writes atomically (temp file beside it, then rename); skips the write when the
    /// file already holds these bytes. Returns whether the file changed.
    pub fn write(&self, path: &Path) -> Result<bool, LockError> {
        let text = self.to_toml();
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        let tmp = path.with_file_name(format!(".{LOCK_FILE}.{}.tmp", std::process::id()));
        crate::cache::atomic_write(&tmp, path, text.as_bytes()).map_err(|source| LockError::Write { path: path.to_owned(), source })?;
        Ok(true)
    }

    /// Every wheel of the given envs (all envs when `envs` is empty), once each, by sha256.
    pub fn wheels(&self, envs: &[EnvName]) -> Vec<LockedWheel> {
        let mut by_digest: BTreeMap<&Digest, &LockedWheel> = BTreeMap::new();
        for (name, env) in &self.envs {
            if envs.is_empty() || envs.contains(name) {
                for wheel in &env.wheels {
                    by_digest.entry(&wheel.sha256).or_insert(wheel);
                }
            }
        }
        by_digest.into_values().cloned().collect()
    }
}
