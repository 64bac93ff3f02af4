//! Assembling an image: the base's layers and config, galley's layers on top, and the
//! runtime settings of the manifest, written as config and manifest blobs into the
//! content store. Pure apart from those two writes: same inputs, same digests.

use std::collections::BTreeMap;

use crate::base::{Base, rfc3339};
use crate::cache::{Cache, CacheError};
use crate::layer::PackedLayer;
use crate::manifest::Manifest;
use crate::oci::{Descriptor, Empty, History, ImageConfig, ImageManifest, MediaType, Platform, to_canonical_json};

/// Standard annotation and label keys (OCI image spec, "Pre-Defined Annotation Keys").
pub mod keys {
    pub const CREATED: &str = "org.opencontainers.image.created";
    pub const VERSION: &str = "org.opencontainers.image.version";
    pub const REVISION: &str = "org.opencontainers.image.revision";
    pub const SOURCE: &str = "org.opencontainers.image.source";
    pub const TITLE: &str = "org.opencontainers.image.title";
    pub const DESCRIPTION: &str = "org.opencontainers.image.description";
}

/// What an image is built from besides the manifest.
pub struct ImageInputs<'a> {
    pub manifest: &'a Manifest,
    pub base: &'a Base,
    /// galley's layers, bottom to top.
    pub layers: Vec<PackedLayer>,
    /// Seconds since the epoch for `created` (SOURCE_DATE_EPOCH, else 0).
    pub epoch: u64,
    /// The project's source revision (git commit), when known.
    pub revision: Option<String>,
    /// Variables galley sets before `[runtime] env` (the default env's `PATH`, `VIRTUAL_ENV`).
    pub env: Vec<(String, String)>,
}

/// A built image whose blobs are all in the content store.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Repository name and tag, as the manifest names them.
    pub name: String,
    pub tag: String,
    pub platform: Platform,
    pub config: ImageConfig,
    pub config_descriptor: Descriptor,
    pub manifest: ImageManifest,
    /// The manifest's descriptor (with platform), as an index lists it.
    pub descriptor: Descriptor,
    /// Every layer, base first, with what galley knows about it.
    pub layers: Vec<PackedLayer>,
}

impl BuiltImage {
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// Builds the config and manifest and stores both blobs.
pub fn assemble(cache: &Cache, inputs: ImageInputs<'_>) -> Result<BuiltImage, CacheError> {
    let manifest = inputs.manifest;
    let created = rfc3339(inputs.epoch);
    let annotations = annotations(&inputs, &created);
    let mut config = inputs.base.config.clone();
    config.created = Some(created.clone());
    apply_runtime(&mut config, &inputs, &annotations);
    for layer in &inputs.layers {
        config.rootfs.diff_ids.push(layer.diff_id.clone());
        config.history.push(History {
            created: Some(created.clone()),
            created_by: Some(format!("galley: {}", layer.description)),
            ..History::default()
        });
    }
    config.rootfs.kind = "layers".to_owned();
    let config_bytes = to_canonical_json(&config);
    let config_descriptor =
        Descriptor::new(MediaType::OciConfig, cache.put_blob_bytes(&config_bytes)?, config_bytes.len() as u64);

    let layers: Vec<PackedLayer> = inputs.base.layers.iter().cloned().chain(inputs.layers).collect();
    let image_manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(MediaType::OciManifest),
        config: config_descriptor.clone(),
        layers: layers.iter().map(PackedLayer::descriptor).collect(),
        annotations,
    };
    let manifest_bytes = to_canonical_json(&image_manifest);
    let platform = inputs.base.platform();
    let mut descriptor =
        Descriptor::new(MediaType::OciManifest, cache.put_blob_bytes(&manifest_bytes)?, manifest_bytes.len() as u64);
    descriptor.platform = Some(platform.clone());
    Ok(BuiltImage {
        name: manifest.image.name.clone(),
        tag: manifest.image.tag.clone(),
        platform,
        config,
        config_descriptor,
        manifest: image_manifest,
        descriptor,
        layers,
    })
}

/// The OCI annotations of the image, also written as config labels.
fn annotations(inputs: &ImageInputs<'_>, created: &str) -> BTreeMap<String, String> {
    let image = &inputs.manifest.image;
    let mut out = BTreeMap::new();
    out.insert(keys::CREATED.to_owned(), created.to_owned());
    out.insert(keys::TITLE.to_owned(), image.name.clone());
    let optional = [
        (keys::VERSION, image.version.as_ref()),
        (keys::REVISION, inputs.revision.as_ref()),
        (keys::SOURCE, image.source.as_ref()),
        (keys::DESCRIPTION, image.description.as_ref()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            out.insert(key.to_owned(), value.clone());
        }
    }
    out.extend(image.annotations.clone());
    out
}

/// Applies `[runtime]` over the base's config the way a Dockerfile's instructions would.
fn apply_runtime(config: &mut ImageConfig, inputs: &ImageInputs<'_>, annotations: &BTreeMap<String, String>) {
    let runtime = &inputs.manifest.runtime;
    let c = &mut config.config;
    let mut env = EnvList::new(c.env.take().unwrap_or_default());
    for (key, value) in &inputs.env {
        env.set(key, value.clone());
    }
    for (key, value) in &runtime.env {
        let expanded = env.expand(value);
        env.set(key, expanded);
    }
    c.env = Some(env.into_vec()).filter(|e| !e.is_empty());
    if let Some(entrypoint) = &runtime.entrypoint {
        c.entrypoint = Some(entrypoint.clone());
        // As in a Dockerfile, a new ENTRYPOINT drops the base's CMD.
        c.cmd = None;
    }
    if let Some(cmd) = &runtime.cmd {
        c.cmd = Some(cmd.clone());
    }
    if let Some(workdir) = &runtime.workdir {
        c.working_dir = Some(workdir.to_string());
    }
    if let Some(user) = &runtime.user {
        c.user = Some(user.clone());
    }
    if !runtime.ports.is_empty() {
        let ports = c.exposed_ports.get_or_insert_with(BTreeMap::new);
        ports.extend(runtime.ports.iter().map(|p| (p.clone(), Empty {})));
    }
    if !runtime.volumes.is_empty() {
        let volumes = c.volumes.get_or_insert_with(BTreeMap::new);
        volumes.extend(runtime.volumes.iter().map(|v| (v.clone(), Empty {})));
    }
    let labels = c.labels.get_or_insert_with(BTreeMap::new);
    labels.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.extend(runtime.labels.clone());
    if let Some(signal) = &runtime.stop_signal {
        c.stop_signal = Some(signal.clone());
    }
    if let Some(healthcheck) = &runtime.healthcheck {
        c.healthcheck = Some(healthcheck.clone());
    }
}

/// An ordered `KEY=value` list, as image configs hold the environment.
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn new(raw: Vec<String>) -> Self {
        Self(
            raw.into_iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv, String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn set(&mut self, key: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// Expands `$NAME` and `${NAME}` from the variables set so far (unknown ones become
    /// empty, as a shell would); `$$` is a literal `$`.
    fn expand(&self, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => (&braced[..end], end + 2),
                    None => ("", 0),
                }
            } else if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                continue;
            } else {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], end)
            };
            if name.is_empty() {
                out.push('$');
                rest = after;
            } else {
                out.push_str(self.get(name).unwrap_or(""));
                rest = &after[consumed..];
            }
        }
        out.push_str(rest);
        out
    }

    fn into_vec(self) -> Vec<String> {
        self.0.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_expand_earlier_variables() {
        let env = EnvList::new(vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()]);
        assert_eq!(env.expand("/opt/venv/bin:$PATH"), "/opt/venv/bin:/usr/bin:/bin");
        assert_eq!(env.expand("${HOME}/cache"), "/root/cache");
        assert_eq!(env.expand("cost: $$5 $UNSET."), "cost: $5 .");
        assert_eq!(env.expand("trailing $"), "trailing $");
    }

    #[test]
    fn setting_replaces_in_place_and_keeps_order() {
        let mut env = EnvList::new(vec!["A=1".into(), "PATH=/bin".into()]);
        env.set("PATH", "/x:/bin".into());
        env.set("B", "2".into());
        assert_eq!(env.into_vec(), ["A=1", "PATH=/x:/bin", "B=2"]);
    }
}
