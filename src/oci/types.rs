//! The JSON documents of the OCI image spec (plus Docker's health check), serialized
//! deterministically: struct fields in spec order, maps sorted, absent fields omitted.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Digest;

/// Media types galley reads and writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MediaType {
    OciIndex,
    OciManifest,
    OciConfig,
    OciLayer,
    OciLayerGzip,
    OciLayerZstd,
    DockerManifestList,
    DockerManifest,
    DockerConfig,
    DockerLayerGzip,
    Other(String),
}

impl MediaType {
    pub fn as_str(&self) -> &str {
        match self {
            Self::OciIndex => "application/vnd.oci.image.index.v1+json",
            Self::OciManifest => "application/vnd.oci.image.manifest.v1+json",
            Self::OciConfig => "application/vnd.oci.image.config.v1+json",
            Self::OciLayer => "application/vnd.oci.image.layer.v1.tar",
            Self::OciLayerGzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::OciLayerZstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Self::DockerManifestList => "application/vnd.docker.distribution.manifest.list.v2+json",
            Self::DockerManifest => "application/vnd.docker.distribution.manifest.v2+json",
            Self::DockerConfig => "application/vnd.docker.container.image.v1+json",
            Self::DockerLayerGzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Self::Other(s) => s,
        }
    }

    /// Whether this names an index (OCI index or Docker manifest list).
    pub fn is_index(&self) -> bool {
        matches!(self, Self::OciIndex | Self::DockerManifestList)
    }

    /// Whether this names a single-platform image manifest.
    pub fn is_manifest(&self) -> bool {
        matches!(self, Self::OciManifest | Self::DockerManifest)
    }
}

impl FromStr for MediaType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let known = [
            Self::OciIndex,
            Self::OciManifest,
            Self::OciConfig,
            Self::OciLayer,
            Self::OciLayerGzip,
            Self::OciLayerZstd,
            Self::DockerManifestList,
            Self::DockerManifest,
            Self::DockerConfig,
            Self::DockerLayerGzip,
        ];
        Ok(known.into_iter().find(|m| m.as_str() == s).unwrap_or_else(|| Self::Other(s.to_owned())))
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MediaType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MediaType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse().unwrap_or_else(|never| match never {}))
    }
}

/// `os/architecture[/variant]`, e.g. `linux/amd64` or `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine galley runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self { architecture: architecture.to_owned(), os: "linux".to_owned(), variant: None }
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if parts.iter().all(valid) => {
                Ok(Self { os: (*os).to_owned(), architecture: (*arch).to_owned(), variant: None })
            }
            [os, arch, variant] if parts.iter().all(valid) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!("`{s}` is not a platform; expected `os/arch` or `os/arch/variant`, e.g. `linux/amd64`")),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A pointer to content: what it is, its digest and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: MediaType,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: MediaType, digest: Digest, size: u64) -> Self {
        Self { media_type, digest, size, platform: None, annotations: BTreeMap::new() }
    }
}

/// An image manifest: one config and an ordered list of layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<MediaType>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index: a list of manifests, typically one per platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<MediaType>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    /// An OCI index (schema 2) listing `manifests`, without annotations.
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        Self { schema_version: 2, media_type: Some(MediaType::OciIndex), manifests, annotations: BTreeMap::new() }
    }
}

/// The image configuration blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RuntimeConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// The execution parameters of a container (`config` inside the image config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Docker's extension; OCI runtimes ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// `{}` in JSON, as used by `ExposedPorts` and `Volumes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Docker's health check, durations in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// Serializes a document the way galley stores it: compact, fields in declaration order.
pub fn to_canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_round_trips() {
        for s in ["linux/amd64", "linux/arm64/v8"] {
            assert_eq!(s.parse::<Platform>().unwrap().to_string(), s);
        }
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//amd64".parse::<Platform>().is_err());
    }

    #[test]
    fn media_types_round_trip_and_keep_unknown_values() {
        let m: MediaType = "application/vnd.oci.image.layer.v1.tar+zstd".parse().unwrap();
        assert_eq!(m, MediaType::OciLayerZstd);
        let other: MediaType = "application/x-custom".parse().unwrap();
        assert_eq!(other.to_string(), "application/x-custom");
    }

    #[test]
    fn config_reads_docker_nulls_and_writes_sorted_maps() {
        let raw = r#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],"Labels":{"b":"2","a":"1"}},
            "rootfs":{"type":"layers","diff_ids":[]},"container_config":{"Hostname":"x"}}"#;
        let config: ImageConfig = serde_json::from_str(raw).unwrap();
        assert_eq!(config.config.env, None);
        let out = String::from_utf8(to_canonical_json(&config)).unwrap();
        assert_eq!(
            out,
            r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Labels":{"a":"1","b":"2"}},"rootfs":{"type":"layers","diff_ids":[]}}"#
        );
    }
}
