//! Pushing an OCI layout: every image and index its `index.json` lists (nested indexes
//! too) goes to one repository, in an order that never lets a tag point at something
//! incomplete: blobs first (in parallel; skipped when the registry has them, mounted
//! from another repository of the same registry when galley knows one that holds
//! them, else uploaded: one PUT for small blobs, PATCH chunks for large ones, resumed
//! from the registry's offset after a dropped connection), then image manifests by
//! digest, then indexes by digest, and tags last.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

use super::auth::Scope;
use super::client::{Body, Call, Host, error_detail, header};
use super::reference::{ImageRef, Repository, Tag};
use super::{Client, RegistryError, mounts, run_parallel};
use crate::cache::Cache;
use crate::http::{Attempt, retry};
use crate::oci::{ANNOTATION_REF_NAME, Descriptor, Digest, ImageIndex, ImageManifest, MediaType, layout_blob_path};
use crate::progress::{Reporter, TaskKind};

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Tags for the image instead of the layout's ref names (a layout with one image only).
    pub tags: Option<Vec<Tag>>,
    /// Blob uploads at once.
    pub jobs: usize,
    /// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of `chunk_size`.
    pub monolithic_limit: u64,
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self { tags: None, jobs: 4, monolithic_limit: 64 << 20, chunk_size: 64 << 20 }
    }
}

/// What a push did, for the CLI to print or emit as JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushReport {
    pub images: Vec<PushedImage>,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    /// Blobs the registry already had.
    pub blobs_skipped: usize,
    /// Blob bytes sent, counting any sent again after a failure.
    pub bytes_uploaded: u64,
    pub manifests_uploaded: usize,
    pub manifests_skipped: usize,
    /// Tags set or moved (tags already pointing at the right digest are left alone).
    pub tags_updated: usize,
    /// Uploads continued from the registry's offset after a dropped connection.
    pub uploads_resumed: usize,
    /// Uploads started over because the registry could not continue them.
    pub uploads_restarted: usize,
}

/// One image or index of the layout, as pushed.
#[derive(Clone, Debug, Serialize)]
pub struct PushedImage {
    /// `registry/repository@sha256:...`
    pub reference: ImageRef,
    pub digest: Digest,
    pub media_type: MediaType,
    /// `registry/repository:tag@sha256:...` for every tag set.
    pub tagged: Vec<ImageRef>,
}

/// The layout's contents, in push order.
#[derive(Default)]
struct Plan {
    /// Configs and layers, each once.
    blobs: Vec<Descriptor>,
    /// Manifests and indexes, each once, children before the indexes that list them.
    manifests: Vec<(Descriptor, Vec<u8>)>,
    /// The entries of `index.json` with their tags.
    images: Vec<(Descriptor, Vec<Tag>)>,
}

/// Pushes every image of the OCI layout at `layout` to `repository`.
pub fn push_layout(
    client: &Client,
    cache: &Cache,
    layout: &Path,
    repository: &Repository,
    options: &PushOptions,
    reporter: &dyn Reporter,
) -> Result<PushReport, RegistryError> {
    let plan = plan(layout, options)?;
    let host = client.host(repository.registry())?;
    let scopes = [Scope::push(repository.name())];
    let pusher = Pusher {
        host: &host,
        cache,
        layout,
        repository,
        options,
        reporter,
        scopes: &scopes,
        bytes: AtomicU64::new(0),
        resumed: AtomicUsize::new(0),
        restarted: AtomicUsize::new(0),
    };
    let outcomes = run_parallel(options.jobs, &plan.blobs, |d| pusher.blob(d))?;
    let mut report = PushReport {
        blobs_uploaded: outcomes.iter().filter(|o| **o == BlobOutcome::Uploaded).count(),
        blobs_mounted: outcomes.iter().filter(|o| **o == BlobOutcome::Mounted).count(),
        blobs_skipped: outcomes.iter().filter(|o| **o == BlobOutcome::Skipped).count(),
        ..PushReport::default()
    };
    for (descriptor, bytes) in &plan.manifests {
        if pusher.manifest(&descriptor.digest.to_string(), descriptor, bytes)? {
            report.manifests_uploaded += 1;
        } else {
            report.manifests_skipped += 1;
        }
    }
    // Every blob and manifest is in place: only now may tags point at them.
    for (descriptor, tags) in &plan.images {
        let bytes = plan.manifests.iter().find(|(d, _)| d.digest == descriptor.digest).map(|(_, b)| b.as_slice()).unwrap_or_default();
        let mut tagged = Vec::new();
        for tag in tags {
            if pusher.manifest(tag.as_str(), descriptor, bytes)? {
                report.tags_updated += 1;
            }
            tagged.push(ImageRef::new(repository.clone(), Some(tag.clone()), Some(descriptor.digest.clone())));
        }
        report.images.push(PushedImage {
            reference: ImageRef::new(repository.clone(), None, Some(descriptor.digest.clone())),
            digest: descriptor.digest.clone(),
            media_type: descriptor.media_type.clone(),
            tagged,
        });
    }
    report.bytes_uploaded = pusher.bytes.into_inner();
    report.uploads_resumed = pusher.resumed.into_inner();
    report.uploads_restarted = pusher.restarted.into_inner();
    Ok(report)
}

/// Reads the layout's index and walks every manifest, checking that each blob is there.
fn plan(layout: &Path, options: &PushOptions) -> Result<Plan, RegistryError> {
    let bad = |why: String| RegistryError::Layout { path: layout.to_owned(), why };
    let index_bytes = std::fs::read(layout.join("index.json"))
        .map_err(|e| bad(format!("it is not an OCI image layout: cannot read its index.json ({e})")))?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes).map_err(|e| bad(format!("its index.json is malformed ({e})")))?;
    if index.manifests.is_empty() {
        return Err(bad("its index.json lists no images; build one first".into()));
    }
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    let mut seen_blobs = HashSet::new();
    for descriptor in &index.manifests {
        visit(layout, descriptor, &mut plan, &mut seen, &mut seen_blobs, 0)?;
    }
    // One entry per digest, with the tags of every ref name that points at it.
    let mut images: Vec<(Descriptor, Vec<Tag>)> = Vec::new();
    for descriptor in &index.manifests {
        let tag = match descriptor.annotations.get(ANNOTATION_REF_NAME) {
            Some(name) => Some(tag_of(name).ok_or_else(|| {
                bad(format!("index.json names an image `{name}`, which is neither a tag nor a reference with a tag"))
            })?),
            None => None,
        };
        match images.iter_mut().find(|(d, _)| d.digest == descriptor.digest) {
            Some((_, tags)) => tags.extend(tag),
            None => images.push((descriptor.clone(), tag.into_iter().collect())),
        }
    }
    if let Some(tags) = &options.tags {
        let [(descriptor, _)] = images.as_slice() else {
            return Err(RegistryError::Usage {
                why: format!(
                    "{} holds {} images; tags given on the command line can only name one. Push without them to use each image's own tag",
                    layout.display(),
                    images.len()
                ),
            });
        };
        images = vec![(descriptor.clone(), tags.clone())];
    }
    for (_, tags) in &mut images {
        tags.sort();
        tags.dedup();
    }
    plan.images = images;
    Ok(plan)
}

/// A ref name as a tag: `1.0`, or the tag of a full reference (`ghcr.io/x/app:1.0`).
fn tag_of(name: &str) -> Option<Tag> {
    name.parse::<Tag>().ok().or_else(|| name.parse::<ImageRef>().ok().and_then(|r| r.tag().cloned()))
}

fn blob_file(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join(layout_blob_path(digest))
}

fn visit(
    layout: &Path,
    descriptor: &Descriptor,
    plan: &mut Plan,
    seen: &mut HashSet<Digest>,
    seen_blobs: &mut HashSet<Digest>,
    depth: usize,
) -> Result<(), RegistryError> {
    let bad = |why: String| RegistryError::Layout { path: layout.to_owned(), why };
    if depth > 8 {
        return Err(bad("its indexes nest more than 8 deep".into()));
    }
    if !seen.insert(descriptor.digest.clone()) {
        return Ok(());
    }
    let path = blob_file(layout, &descriptor.digest);
    let bytes = std::fs::read(&path).map_err(|e| bad(format!("manifest {} is missing from blobs/ ({e})", descriptor.digest)))?;
    let actual = Digest::of(&bytes);
    if actual != descriptor.digest {
        return Err(bad(format!("blob {} holds content with digest {actual}; the layout is corrupt", descriptor.digest)));
    }
    if descriptor.media_type.is_index() {
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("index {} is malformed ({e})", descriptor.digest)))?;
        for child in &index.manifests {
            visit(layout, child, plan, seen, seen_blobs, depth + 1)?;
        }
    } else if descriptor.media_type.is_manifest() {
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest {} is malformed ({e})", descriptor.digest)))?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let size = std::fs::metadata(blob_file(layout, &blob.digest)).map(|m| m.len()).map_err(|e| {
                bad(format!("blob {} of manifest {} is missing from blobs/ ({e})", blob.digest, descriptor.digest))
            })?;
            if size != blob.size {
                return Err(bad(format!("blob {} has {size} bytes, but its manifest says {}", blob.digest, blob.size)));
            }
            if seen_blobs.insert(blob.digest.clone()) {
                plan.blobs.push(blob.clone());
            }
        }
    } else {
        return Err(bad(format!("{} has media type {}, neither an image manifest nor an index", descriptor.digest, descriptor.media_type)));
    }
    plan.manifests.push((descriptor.clone(), bytes));
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum BlobOutcome {
    Skipped,
    Mounted,
    Uploaded,
}

struct Pusher<'a> {
    host: &'a Host,
    cache: &'a Cache,
    layout: &'a Path,
    repository: &'a Repository,
    options: &'a PushOptions,
    reporter: &'a dyn Reporter,
    scopes: &'a [Scope],
    bytes: AtomicU64,
    resumed: AtomicUsize,
    restarted: AtomicUsize,
}

impl Pusher<'_> {
    fn blob_url(&self, digest: &Digest) -> String {
        self.host.url(&format!("/v2/{}/blobs/{digest}", self.repository.name()))
    }

    fn blob(&self, descriptor: &Descriptor) -> Result<BlobOutcome, RegistryError> {
        let outcome = self.blob_unrecorded(descriptor)?;
        mounts::remember(self.cache, self.repository, [&descriptor.digest]);
        Ok(outcome)
    }

    fn blob_unrecorded(&self, descriptor: &Descriptor) -> Result<BlobOutcome, RegistryError> {
        let head = Call::new("HEAD", self.blob_url(&descriptor.digest), self.scopes);
        let response = self.host.send_retrying(&head)?;
        match response.status().as_u16() {
            200 => return Ok(BlobOutcome::Skipped),
            404 => {}
            _ => return Err(self.host.refusal(&head, response)),
        }
        let mut session = None;
        let candidates = mounts::known(self.cache, self.repository.registry(), &descriptor.digest);
        if let Some(from) = candidates.iter().find(|r| *r != self.repository.name()) {
            match self.mount(descriptor, from)? {
                Mount::Done => return Ok(BlobOutcome::Mounted),
                Mount::Session(location) => session = Some(location),
                Mount::Refused => {}
            }
        }
        self.upload(descriptor, session)?;
        Ok(BlobOutcome::Uploaded)
    }

    /// `POST ?mount=&from=`: 201 mounted it; 202 opened an upload session instead.
    fn mount(&self, descriptor: &Descriptor, from: &str) -> Result<Mount, RegistryError> {
        let scopes = [self.scopes[0].clone(), Scope::pull(from)];
        let url = self.host.url(&format!(
            "/v2/{}/blobs/uploads/?mount={}&from={}",
            self.repository.name(),
            super::client::encode(&descriptor.digest.to_string()),
            super::client::encode(from)
        ));
        let call = Call::new("POST", url, &scopes);
        let response = self.host.send_retrying(&call)?;
        Ok(match (response.status().as_u16(), header(&response, "location")) {
            (201, _) => Mount::Done,
            (202, Some(location)) => Mount::Session(self.host.location(location)),
            _ => Mount::Refused,
        })
    }

    /// `POST /blobs/uploads/`: a new upload session's URL.
    fn start_upload(&self) -> Result<String, RegistryError> {
        let call = Call::new("POST", self.host.url(&format!("/v2/{}/blobs/uploads/", self.repository.name())), self.scopes);
        let response = self.host.send_retrying(&call)?;
        match (response.status().as_u16(), header(&response, "location")) {
            (202, Some(location)) => Ok(self.host.location(location)),
            (202, None) => Err(RegistryError::Protocol {
                registry: self.host.registry.clone(),
                why: "it opened an upload without a Location header".into(),
            }),
            _ => Err(self.host.refusal(&call, response)),
        }
    }

    /// Uploads one blob, recovering from transient failures: a chunked upload goes on
    /// from the offset the registry reports; anything else starts over.
    fn upload(&self, descriptor: &Descriptor, session: Option<String>) -> Result<(), RegistryError> {
        let path = blob_file(self.layout, &descriptor.digest);
        let task = self.reporter.on_task_start(
            TaskKind::Upload,
            &format!("{} {}", self.repository, descriptor.digest.short()),
            Some(descriptor.size),
        );
        let on_bytes = |n: u64| {
            self.bytes.fetch_add(n, Ordering::Relaxed);
            self.reporter.on_task_progress(task, n);
        };
        let chunked = descriptor.size > self.options.monolithic_limit;
        let mut session = session;
        let mut offset = 0;
        let result = retry(self.host.attempts(), |attempt| {
            if attempt > 0 || session.is_none() {
                let recovered = match (&session, chunked) {
                    (Some(location), true) => self.upload_status(location).ok().filter(|(_, o)| *o <= descriptor.size),
                    _ => None,
                };
                match recovered {
                    Some((location, at)) => {
                        self.resumed.fetch_add(1, Ordering::Relaxed);
                        session = Some(location);
                        offset = at;
                    }
                    None => {
                        if attempt > 0 {
                            self.restarted.fetch_add(1, Ordering::Relaxed);
                        }
                        match self.start_upload() {
                            Ok(location) => session = Some(location),
                            Err(e) if e.is_transient() => return Attempt::Retry(e),
                            Err(e) => return Attempt::Fail(e),
                        }
                        offset = 0;
                    }
                }
            }
            let Some(location) = session.as_mut() else {
                return Attempt::Fail(RegistryError::Protocol { registry: self.host.registry.clone(), why: "no upload session".into() });
            };
            let sent = if chunked {
                self.send_chunks(location, &mut offset, descriptor, &path, &on_bytes)
                    .and_then(|()| self.finish(location, descriptor, &path, Body::Empty))
            } else {
                self.finish(location, descriptor, &path, Body::File { path: &path, offset: 0, len: descriptor.size, on_bytes: &on_bytes })
            };
            match sent {
                Ok(()) => Attempt::Done(()),
                Err(e) if e.is_transient() => Attempt::Retry(e),
                Err(e) => Attempt::Fail(e),
            }
        });
        self.reporter.on_task_done(task);
        result
    }

    /// PATCHes the rest of the blob from `offset`, one chunk per request, following
    /// the session URL the registry hands back each time.
    fn send_chunks(
        &self,
        location: &mut String,
        offset: &mut u64,
        descriptor: &Descriptor,
        path: &Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        while *offset < descriptor.size {
            let len = self.options.chunk_size.max(1).min(descriptor.size - *offset);
            let call = Call::new("PATCH", location.clone(), self.scopes)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{}-{}", *offset, *offset + len - 1))
                .body(Body::File { path, offset: *offset, len, on_bytes });
            let response = self.host.send(&call)?;
            if response.status().as_u16() != 202 {
                return Err(self.host.refusal(&call, response));
            }
            let next = header(&response, "range").and_then(range_end).map_or(*offset + len, |end| end + 1);
            if let Some(l) = header(&response, "location") {
                *location = self.host.location(l);
            }
            *offset = next;
        }
        Ok(())
    }

    /// The final `PUT ?digest=`, with the whole blob (monolithic) or nothing (chunked).
    fn finish(&self, location: &str, descriptor: &Descriptor, path: &Path, body: Body<'_>) -> Result<(), RegistryError> {
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={}", super::client::encode(&descriptor.digest.to_string()));
        let call = Call::new("PUT", url, self.scopes).header("Content-Type", "application/octet-stream").body(body);
        let mut response = self.host.send(&call)?;
        match response.status().as_u16() {
            201 | 204 => Ok(()),
            400 => {
                let detail = error_detail(&mut response);
                if detail.contains("DIGEST_INVALID") {
                    return Err(RegistryError::Layout {
                        path: path.to_owned(),
                        why: format!("the registry found that its content does not match digest {}{detail}", descriptor.digest),
                    });
                }
                Err(RegistryError::Status { registry: self.host.registry.clone(), method: "PUT", path: "blob upload".into(), status: 400, detail })
            }
            _ => Err(self.host.refusal(&call, response)),
        }
    }

    /// Asks the registry how much of an upload it holds: (session URL, next offset).
    fn upload_status(&self, location: &str) -> Result<(String, u64), RegistryError> {
        let call = Call::new("GET", location.to_owned(), self.scopes);
        let response = self.host.send(&call)?;
        if response.status().as_u16() != 204 {
            return Err(self.host.refusal(&call, response));
        }
        // `0-0` may mean nothing at all was received; resend from the start then.
        let next = header(&response, "range").and_then(range_end).map_or(0, |end| if end == 0 { 0 } else { end + 1 });
        let location = header(&response, "location").map_or_else(|| location.to_owned(), |l| self.host.location(l));
        Ok((location, next))
    }

    /// Puts a manifest under `reference` (its digest or a tag) unless the registry
    /// already has exactly it there. Returns whether it was sent.
    fn manifest(&self, reference: &str, descriptor: &Descriptor, bytes: &[u8]) -> Result<bool, RegistryError> {
        let url = self.host.url(&format!("/v2/{}/manifests/{reference}", self.repository.name()));
        let head = Call::new("HEAD", url.clone(), self.scopes).header("Accept", descriptor.media_type.as_str());
        let response = self.host.send_retrying(&head)?;
        match response.status().as_u16() {
            200 if header(&response, "docker-content-digest").is_some_and(|d| d == descriptor.digest.to_string()) => return Ok(false),
            200 | 404 => {}
            _ => return Err(self.host.refusal(&head, response)),
        }
        let put = Call::new("PUT", url, self.scopes).header("Content-Type", descriptor.media_type.as_str()).body(Body::Bytes(bytes));
        let response = self.host.send_retrying(&put)?;
        if !matches!(response.status().as_u16(), 200 | 201 | 202 | 204) {
            return Err(self.host.refusal(&put, response));
        }
        if let Some(got) = header(&response, "docker-content-digest").filter(|d| *d != descriptor.digest.to_string()) {
            return Err(RegistryError::Protocol {
                registry: self.host.registry.clone(),
                why: format!("it stored manifest {} as {got}; the registry rewrote it", descriptor.digest),
            });
        }
        Ok(true)
    }
}

enum Mount {
    Done,
    Session(String),
    Refused,
}

/// The end of a `Range: 0-<end>` header (some registries write `bytes=0-<end>`).
fn range_end(value: &str) -> Option<u64> {
    let value = value.trim().trim_start_matches("bytes=");
    value.split_once('-').and_then(|(_, end)| end.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_become_tags() {
        assert_eq!(tag_of("1.0").unwrap().as_str(), "1.0");
        assert_eq!(tag_of("ghcr.io/org/app:slim-cpu").unwrap().as_str(), "slim-cpu");
        assert_eq!(tag_of("localhost:5000/app:v2").unwrap().as_str(), "v2");
        assert!(tag_of("app@sha256:xyz").is_none());
        assert!(tag_of("-bad").is_none());
    }

    #[test]
    fn range_headers_are_read() {
        assert_eq!(range_end("0-1048575"), Some(1_048_575));
        assert_eq!(range_end("bytes=0-9"), Some(9));
        assert_eq!(range_end("nonsense"), None);
    }

    #[test]
    fn a_broken_layout_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = plan(dir.path(), &PushOptions::default()).err().unwrap();
        assert!(err.is_usage() && err.to_string().contains("not an OCI image layout"), "{err}");
        std::fs::write(dir.path().join("index.json"), r#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        assert!(plan(dir.path(), &PushOptions::default()).err().unwrap().to_string().contains("lists no images"));
        let missing = Digest::of(b"missing");
        std::fs::write(
            dir.path().join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{missing}","size":7}}]}}"#),
        )
        .unwrap();
        let err = plan(dir.path(), &PushOptions::default()).err().unwrap().to_string();
        assert!(err.contains(&format!("manifest {missing} is missing")), "{err}");
    }
}
