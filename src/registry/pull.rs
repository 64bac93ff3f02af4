//! Pulling: a reference resolves to an index or a manifest; the manifest for the
//! wanted platform, its config and its layers land in the content store, each checked
//! against its digest and size while it streams (a mismatch keeps nothing). Blobs
//! already in the store are not fetched, so a digest-pinned reference whose blobs are
//! all cached needs no network at all.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use super::client::{Body, Call, Host, header};
use super::reference::{ImageRef, Repository};
use super::{Client, RegistryError, mounts, run_parallel};
use crate::cache::{Cache, CacheError, TempGuard};
use crate::oci::{ANNOTATION_REF_NAME, Descriptor, Digest, ImageIndex, ImageManifest, MediaType, Platform};
use crate::output::write_layout_files;
use crate::progress::{Reporter, TaskKind};
use super::auth::Scope;

/// Every manifest type galley reads, for `Accept`.
const MANIFEST_TYPES: [MediaType; 4] =
    [MediaType::OciIndex, MediaType::OciManifest, MediaType::DockerManifestList, MediaType::DockerManifest];
/// Manifests larger than this are refused (the distribution spec suggests 4 MiB).
const MAX_MANIFEST: u64 = 4 << 20;
/// Parallel blob downloads.
const JOBS: usize = 4;

/// What a reference names on the registry right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// What `galley.lock` pins: the index's digest for multi-platform images.
    pub digest: Digest,
    pub media_type: MediaType,
    pub size: u64,
}

/// A pulled image: every blob is in the content store.
#[derive(Clone, Debug, Serialize)]
pub struct Pulled {
    pub reference: ImageRef,
    /// The digest the reference resolved to (an index or a manifest); pin this.
    pub digest: Digest,
    /// The image manifest for the chosen platform.
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Bytes fetched from the registry by this pull (0 when everything was cached).
    pub downloaded: u64,
}

fn accept() -> String {
    MANIFEST_TYPES.iter().map(MediaType::as_str).collect::<Vec<_>>().join(", ")
}

fn manifest_path(repository: &Repository, reference: &str) -> String {
    format!("/v2/{}/manifests/{reference}", repository.name())
}

impl Client {
    /// Asks the registry which digest `reference` names now, with a HEAD request
    /// (registries such as Docker Hub do not count those against pull limits).
    pub fn resolve(&self, reference: &ImageRef) -> Result<Resolved, RegistryError> {
        let repository = reference.repository();
        let host = self.host(repository.registry())?;
        let scopes = [Scope::pull(repository.name())];
        let call = Call::new("HEAD", host.url(&manifest_path(repository, &reference.api_reference())), &scopes).header("Accept", accept());
        let response = host.send_retrying(&call)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Err(RegistryError::ManifestUnknown { reference: reference.to_string(), detail: String::new() }),
            _ => return Err(host.refusal(&call, response)),
        }
        let digest = header(&response, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let media_type = header(&response, "content-type").map(|t| media_type_of(t, b""));
        let size = header(&response, "content-length").and_then(|s| s.parse::<u64>().ok());
        match (digest, media_type, size) {
            (Some(digest), Some(media_type), Some(size)) if reference.digest().is_none_or(|d| *d == digest) => {
                Ok(Resolved { digest, media_type, size })
            }
            // Without the headers (or with a digest that disagrees), fetch and hash the document.
            _ => {
                let (digest, media_type, bytes) = fetch_manifest(&host, repository, &reference.api_reference(), reference.digest())?;
                Ok(Resolved { digest, media_type, size: bytes.len() as u64 })
            }
        }
    }
}

/// Connects to the registry only when something must be fetched.
struct LazyHost<'a> {
    client: &'a Client,
    registry: &'a str,
    host: OnceLock<Arc<Host>>,
}

impl LazyHost<'_> {
    fn get(&self) -> Result<&Host, RegistryError> {
        if let Some(host) = self.host.get() {
            return Ok(host);
        }
        let host = self.client.host(self.registry)?;
        Ok(self.host.get_or_init(|| host))
    }
}

/// Pulls the image `reference` names for `platform` (else the host's) into the store.
pub fn pull(
    client: &Client,
    cache: &Cache,
    reference: &ImageRef,
    platform: Option<&Platform>,
    reporter: &dyn Reporter,
) -> Result<Pulled, RegistryError> {
    let repository = reference.repository();
    let lazy = LazyHost { client, registry: repository.registry(), host: OnceLock::new() };
    let digest = match reference.digest() {
        Some(d) => d.clone(),
        None => client.resolve(reference)?.digest,
    };
    let (media_type, bytes) = manifest_from_store_or(cache, &lazy, repository, &digest)?;
    let mut downloaded = 0;
    let manifest_descriptor = if media_type.is_index() {
        let index: ImageIndex = parse_document(&bytes, reference, &media_type)?;
        choose_platform(&index, platform, reference)?
    } else {
        Descriptor::new(media_type, digest.clone(), bytes.len() as u64)
    };
    let (media_type, bytes) = if manifest_descriptor.digest == digest {
        (manifest_descriptor.media_type.clone(), bytes)
    } else {
        manifest_from_store_or(cache, &lazy, repository, &manifest_descriptor.digest)?
    };
    if !media_type.is_manifest() {
        return Err(unsupported(reference, &media_type));
    }
    let manifest: ImageManifest = parse_document(&bytes, reference, &media_type)?;
    let blobs: Vec<Descriptor> = std::iter::once(manifest.config.clone()).chain(manifest.layers.iter().cloned()).collect();
    let fetched = run_parallel(JOBS, &blobs, |d| fetch_blob(&lazy, cache, repository, d, reporter))?;
    downloaded += fetched.iter().sum::<u64>();
    mounts::remember(cache, repository, blobs.iter().map(|d| &d.digest));
    Ok(Pulled {
        reference: reference.clone(),
        digest,
        manifest: Descriptor { media_type, ..manifest_descriptor },
        config: manifest.config,
        layers: manifest.layers,
        downloaded,
    })
}

fn unsupported(reference: &ImageRef, media_type: &MediaType) -> RegistryError {
    RegistryError::UnsupportedDocument {
        reference: reference.to_string(),
        media_type: media_type.to_string(),
        hint: "galley reads OCI and Docker v2 images and indexes; re-push the image with a current docker, podman or skopeo",
    }
}

fn parse_document<T: serde::de::DeserializeOwned>(bytes: &[u8], reference: &ImageRef, media_type: &MediaType) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Protocol {
        registry: reference.repository().registry().to_owned(),
        why: format!("{reference}: its {media_type} document is malformed ({e})"),
    })
}

/// The manifest with `digest`, from the store when it is there (then without network).
fn manifest_from_store_or(
    cache: &Cache,
    lazy: &LazyHost<'_>,
    repository: &Repository,
    digest: &Digest,
) -> Result<(MediaType, Vec<u8>), RegistryError> {
    let path = cache.blob_path(digest);
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok((media_type_of("", &bytes), bytes));
    }
    let (_, media_type, bytes) = fetch_manifest(lazy.get()?, repository, &digest.to_string(), Some(digest))?;
    cache.put_blob_bytes(&bytes)?;
    Ok((media_type, bytes))
}

/// GETs a manifest; when `expected` is given, its bytes must hash to it.
fn fetch_manifest(
    host: &Host,
    repository: &Repository,
    reference: &str,
    expected: Option<&Digest>,
) -> Result<(Digest, MediaType, Vec<u8>), RegistryError> {
    let scopes = [Scope::pull(repository.name())];
    let call = Call::new("GET", host.url(&manifest_path(repository, reference)), &scopes).header("Accept", accept());
    let mut response = host.send_retrying(&call)?;
    match response.status().as_u16() {
        200 => {}
        404 => {
            let detail = super::client::error_detail(&mut response);
            return Err(RegistryError::ManifestUnknown { reference: format!("{repository}:{reference}"), detail });
        }
        _ => return Err(host.refusal(&call, response)),
    }
    let content_type = header(&response, "content-type").unwrap_or("").to_owned();
    let bytes = response.body_mut().with_config().limit(MAX_MANIFEST).read_to_vec().map_err(|e| RegistryError::Protocol {
        registry: host.registry.clone(),
        why: format!("cannot read the manifest {repository}:{reference}: {e}"),
    })?;
    let actual = Digest::of(&bytes);
    if let Some(expected) = expected.filter(|e| **e != actual) {
        return Err(RegistryError::DigestMismatch {
            what: format!("{repository}@{expected} (manifest)"),
            expected: expected.clone(),
            actual,
        });
    }
    let media_type = media_type_of(&content_type, &bytes);
    Ok((actual, media_type, bytes))
}

/// A manifest's type: its own `mediaType` field, else the Content-Type, else its shape.
fn media_type_of(content_type: &str, bytes: &[u8]) -> MediaType {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<MediaType>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Option<Probe> = serde_json::from_slice(bytes).ok();
    if let Some(m) = probe.as_ref().and_then(|p| p.media_type.clone()) {
        return m;
    }
    let declared = content_type.split(';').next().unwrap_or("").trim();
    if !declared.is_empty() && declared != "application/json" {
        return declared.parse().unwrap_or_else(|never| match never {});
    }
    match probe {
        Some(p) if p.manifests.is_some() => MediaType::OciIndex,
        Some(p) if p.config.is_some() => MediaType::OciManifest,
        _ => MediaType::Other(declared.to_owned()),
    }
}

/// The index entry for `wanted` (else the host platform); a variant is only compared
/// when asked for, and attestation entries (`unknown/unknown`) never match.
fn choose_platform(index: &ImageIndex, wanted: Option<&Platform>, reference: &ImageRef) -> Result<Descriptor, RegistryError> {
    let want = wanted.cloned().unwrap_or_else(Platform::host);
    let matches = |p: &Platform| {
        p.os == want.os && p.architecture == want.architecture && want.variant.as_ref().is_none_or(|v| p.variant.as_ref() == Some(v))
    };
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(matches))
        .cloned()
        .ok_or_else(|| {
            let mut available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(ToString::to_string)
                .collect();
            available.dedup();
            RegistryError::UnknownPlatform {
                reference: reference.to_string(),
                wanted: want.to_string(),
                available: if available.is_empty() { "none".into() } else { available.join(", ") },
            }
        })
}

/// Streams one blob into the store unless it is there; returns the bytes fetched.
fn fetch_blob(
    lazy: &LazyHost<'_>,
    cache: &Cache,
    repository: &Repository,
    descriptor: &Descriptor,
    reporter: &dyn Reporter,
) -> Result<u64, RegistryError> {
    if cache.has_blob(&descriptor.digest) {
        return Ok(0);
    }
    let host = lazy.get()?;
    let task = reporter.on_task_start(TaskKind::Download, &format!("{repository}@{}", descriptor.digest.short()), Some(descriptor.size));
    let result = crate::http::retry(host.attempts(), |_| match download(host, cache, repository, descriptor, reporter, task) {
        Ok(()) => crate::http::Attempt::Done(descriptor.size),
        Err(e) if e.is_transient() => crate::http::Attempt::Retry(e),
        Err(e) => crate::http::Attempt::Fail(e),
    });
    reporter.on_task_done(task);
    result
}

fn download(
    host: &Host,
    cache: &Cache,
    repository: &Repository,
    descriptor: &Descriptor,
    reporter: &dyn Reporter,
    task: usize,
) -> Result<(), RegistryError> {
    let scopes = [Scope::pull(repository.name())];
    let url = host.url(&format!("/v2/{}/blobs/{}", repository.name(), descriptor.digest));
    // Identity: a transfer encoding the HTTP layer undid would change the digest.
    let call = Call::new("GET", url.clone(), &scopes).header("Accept-Encoding", "identity").body(Body::Empty);
    let mut response = host.send(&call)?;
    if response.status().as_u16() != 200 {
        return Err(host.refusal(&call, response));
    }
    let what = format!("{repository}@{}", descriptor.digest);
    let mut body = response.body_mut().as_reader().take(descriptor.size + 1);
    cache.put_blob_with(|out| {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body.read(&mut buf).map_err(|e| RegistryError::Connection {
                registry: host.registry.clone(),
                url: super::client::without_query(&url),
                detail: format!("the download broke off after {} bytes: {e}", out.written()),
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|source| CacheError::Io { path: cache.root().to_owned(), source })?;
            reporter.on_task_progress(task, n as u64);
        }
        if out.written() != descriptor.size {
            return Err(RegistryError::SizeMismatch { what: what.clone(), expected: descriptor.size, actual: out.written() });
        }
        let actual = out.digest();
        if actual != descriptor.digest {
            return Err(RegistryError::DigestMismatch { what: what.clone(), expected: descriptor.digest.clone(), actual });
        }
        Ok(())
    })?;
    Ok(())
}

impl Pulled {
    /// An OCI layout of this image inside the cache (blobs hard-linked), made once per
    /// manifest digest; the base importer reads it like any layout.
    pub fn cached_layout(&self, cache: &Cache) -> Result<PathBuf, RegistryError> {
        let dir = cache.bucket("registry-v1").join("layouts").join(self.manifest.digest.hex());
        if dir.join("index.json").is_file() {
            return Ok(dir);
        }
        let parent = cache.bucket("registry-v1").join("layouts");
        std::fs::create_dir_all(&parent).map_err(|source| CacheError::Io { path: parent.clone(), source })?;
        let tmp = cache.temp_path("layout");
        let guard = TempGuard(tmp.clone());
        write_layout(cache, self, &tmp)?;
        // A concurrent pull may have won the race; its layout is the same.
        if let Err(source) = std::fs::rename(&tmp, &dir)
            && !dir.join("index.json").is_file()
        {
            return Err(CacheError::Io { path: dir, source }.into());
        }
        drop(guard);
        Ok(dir)
    }
}

/// Writes `pulled` into the OCI layout `dir` (created if needed), hard-linking blobs
/// from the store. An image already in `dir` under the same tag is replaced; others stay.
pub fn write_layout(cache: &Cache, pulled: &Pulled, dir: &Path) -> Result<(), RegistryError> {
    let index_path = dir.join("index.json");
    let mut index: ImageIndex = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Layout { path: index_path.clone(), why: format!("its index.json is malformed ({e})") })?,
        Err(_) => ImageIndex::new(Vec::new()),
    };
    let mut descriptor = pulled.manifest.clone();
    if let Some(tag) = pulled.reference.tag() {
        descriptor.annotations.insert(ANNOTATION_REF_NAME.to_owned(), tag.to_string());
    }
    let name = descriptor.annotations.get(ANNOTATION_REF_NAME).cloned();
    index.manifests.retain(|d| d.digest != descriptor.digest && (name.is_none() || d.annotations.get(ANNOTATION_REF_NAME) != name.as_ref()));
    index.manifests.push(descriptor);
    let blobs = [&pulled.manifest.digest, &pulled.config.digest].into_iter().chain(pulled.layers.iter().map(|l| &l.digest));
    Ok(write_layout_files(cache, dir, blobs, &index)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(platform: &str) -> Descriptor {
        Descriptor { platform: Some(platform.parse().unwrap()), ..Descriptor::new(MediaType::OciManifest, Digest::of(platform.as_bytes()), 1) }
    }

    #[test]
    fn platforms_are_chosen_from_an_index() {
        let index = ImageIndex::new(vec![
            descriptor("linux/amd64"),
            descriptor("linux/arm/v7"),
            descriptor("linux/arm64/v8"),
            descriptor("unknown/unknown"),
        ]);
        let reference: ImageRef = "python:3.11".parse().unwrap();
        let pick = |p: &str| choose_platform(&index, Some(&p.parse().unwrap()), &reference).map(|d| d.digest);
        assert_eq!(pick("linux/arm64").unwrap(), Digest::of(b"linux/arm64/v8"));
        assert_eq!(pick("linux/arm/v7").unwrap(), Digest::of(b"linux/arm/v7"));
        let err = pick("linux/s390x").unwrap_err();
        assert!(err.is_usage());
        assert_eq!(
            err.to_string(),
            "docker.io/library/python:3.11: the index has no image for linux/s390x; platforms present: linux/amd64, linux/arm/v7, linux/arm64/v8"
        );
    }

    #[test]
    fn media_types_come_from_the_document_first() {
        assert_eq!(media_type_of("application/json", br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#), MediaType::OciIndex);
        assert_eq!(media_type_of(MediaType::DockerManifest.as_str(), b"{}"), MediaType::DockerManifest);
        assert_eq!(media_type_of("", br#"{"schemaVersion":2,"manifests":[]}"#), MediaType::OciIndex);
        assert_eq!(media_type_of("application/json", br#"{"schemaVersion":2,"config":{}}"#), MediaType::OciManifest);
    }
}
