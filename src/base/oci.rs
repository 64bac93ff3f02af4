//! Bases that are already images: OCI layouts, OCI archives and docker archives.

use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;

use super::source::ImageFiles;
use super::{Base, BaseError, ImportContext, io_error};
use crate::layer::{IndexEntry, PackedLayer, RootfsIndex, TeeReader, decompress, read_layer_entries, sniff_compression};
use crate::memo::Memo;
use crate::oci::{
    ANNOTATION_REF_NAME, Descriptor, Digest, HashingWriter, ImageConfig, ImageIndex, ImageManifest, layout_blob_path,
};

/// An entry of a docker-archive `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub(super) fn import_archive(path: &Path, ctx: &ImportContext<'_>) -> Result<Base, BaseError> {
    let what = format!("[base] archive {}", path.display());
    let not_image = |why: String| BaseError::NotAnImage { what: what.clone(), why };
    let meta = std::fs::metadata(path).map_err(io_error(&what))?;
    if !meta.is_file() {
        return Err(not_image("it is not a file".into()));
    }
    let mut memo = Memo::open(ctx.cache, "archives");
    let archive_digest = memo.digest(path, &meta).map_err(io_error(&what))?;
    memo.save(ctx.cache);
    let key = Digest::of(format!("archive-v1 {archive_digest} {:?}", ctx.platform).as_bytes());
    if let Some(base) = ctx.cached(&key) {
        return Ok(base);
    }
    let files = ImageFiles::open_tar(path).map_err(|e| not_image(format!("it is not a tar archive ({e})")))?;
    let base = if files.has("index.json") && files.has("oci-layout") {
        import(&files, None, &what, ctx)?
    } else if files.has("manifest.json") {
        import_docker_archive(&files, &what, ctx)?
    } else {
        return Err(not_image("it has neither index.json (OCI archive) nor manifest.json (docker save)".into()));
    };
    ctx.remember(&key, &base)?;
    Ok(base)
}

fn import_docker_archive(files: &ImageFiles, what: &str, ctx: &ImportContext<'_>) -> Result<Base, BaseError> {
    let not_image = |why: String| BaseError::NotAnImage { what: what.to_owned(), why };
    let raw = files.read("manifest.json").map_err(io_error(what))?;
    let manifests: Vec<ArchiveManifest> =
        serde_json::from_slice(&raw).map_err(|e| not_image(format!("its manifest.json is malformed: {e}")))?;
    let [manifest] = manifests.as_slice() else {
        return Err(not_image(format!("it holds {} images; galley needs exactly one", manifests.len())));
    };
    let config_bytes = files.read(&manifest.config).map_err(io_error(what))?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| not_image(format!("its config is malformed: {e}")))?;
    check_platform(&config, what, ctx)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(not_image("its config lists a different number of layers than manifest.json".into()));
    }
    let mut layers = Vec::new();
    let mut index = RootfsIndex::default();
    for (layer_path, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let source = files.open(layer_path).map_err(io_error(what))?;
        let (layer, entries) = import_layer(ctx, source, None, diff_id, what)?;
        index.apply(entries);
        layers.push(layer);
    }
    let tags = manifest.repo_tags.clone().unwrap_or_default().join(", ");
    Ok(Base { description: format!("docker archive {tags}"), layers, config, index })
}

/// Imports the image a layout's index names (by tag, or its only image).
pub(super) fn import(
    files: &ImageFiles,
    reference: Option<&str>,
    what: &str,
    ctx: &ImportContext<'_>,
) -> Result<Base, BaseError> {
    let not_image = |why: String| BaseError::NotAnImage { what: what.to_owned(), why };
    let raw = files.read("index.json").map_err(|e| not_image(format!("cannot read its index.json ({e})")))?;
    let index: ImageIndex =
        serde_json::from_slice(&raw).map_err(|e| not_image(format!("its index.json is malformed: {e}")))?;
    let tag_of = |d: &Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
    let chosen = match reference {
        Some(r) => index.manifests.iter().find(|d| tag_of(d).is_some_and(|t| t == r || t.ends_with(&format!(":{r}")))),
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => None,
    };
    let Some(descriptor) = chosen else {
        let tags: Vec<String> = index.manifests.iter().filter_map(tag_of).collect();
        return Err(not_image(match reference {
            Some(r) => format!("it has no image tagged `{r}`; tags present: {}", list_or_none(&tags)),
            None => format!("it holds {} images; name one as `path:tag` (tags present: {})", index.manifests.len(), list_or_none(&tags)),
        }));
    };
    let manifest_descriptor = resolve_platform(files, descriptor, what, ctx)?;
    let key = Digest::of(format!("oci-v1 {}", manifest_descriptor.digest).as_bytes());
    if let Some(base) = ctx.cached(&key) {
        return Ok(base);
    }
    let manifest_bytes = read_blob(files, &manifest_descriptor.digest, what)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| not_image(format!("its manifest is malformed: {e}")))?;
    let config_bytes = read_blob(files, &manifest.config.digest, what)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| not_image(format!("its config is malformed: {e}")))?;
    check_platform(&config, what, ctx)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(not_image("its config lists a different number of layers than its manifest".into()));
    }
    let mut layers = Vec::new();
    let mut rootfs = RootfsIndex::default();
    for (descriptor, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let source = files.open(&layout_blob_path(&descriptor.digest)).map_err(io_error(what))?;
        let (layer, entries) = import_layer(ctx, source, Some(descriptor), diff_id, what)?;
        rootfs.apply(entries);
        layers.push(layer);
    }
    let description = reference.map_or_else(|| what.to_owned(), |r| format!("{what}:{r}"));
    let base = Base { description, layers, config, index: rootfs };
    ctx.remember(&key, &base)?;
    Ok(base)
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

fn read_blob(files: &ImageFiles, digest: &Digest, what: &str) -> Result<Vec<u8>, BaseError> {
    let bytes = files.read(&layout_blob_path(digest)).map_err(io_error(what))?;
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(BaseError::DigestMismatch { what: what.to_owned(), expected: digest.clone(), actual });
    }
    Ok(bytes)
}

/// Follows an index to the manifest for the wanted platform (or the host's).
fn resolve_platform(
    files: &ImageFiles,
    descriptor: &Descriptor,
    what: &str,
    ctx: &ImportContext<'_>,
) -> Result<Descriptor, BaseError> {
    if !descriptor.media_type.is_index() {
        return Ok(descriptor.clone());
    }
    let bytes = read_blob(files, &descriptor.digest, what)?;
    let nested: ImageIndex = serde_json::from_slice(&bytes)
        .map_err(|e| BaseError::NotAnImage { what: what.to_owned(), why: format!("its nested index is malformed: {e}") })?;
    let want = ctx.platform.cloned().unwrap_or_else(crate::oci::Platform::host);
    nested
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == want.os && p.architecture == want.architecture))
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = nested.manifests.iter().filter_map(|d| d.platform.as_ref().map(ToString::to_string)).collect();
            BaseError::NotAnImage { what: what.to_owned(), why: format!("it has no image for {want}; platforms present: {}", list_or_none(&have)) }
        })
}

fn check_platform(config: &ImageConfig, what: &str, ctx: &ImportContext<'_>) -> Result<(), BaseError> {
    match ctx.platform {
        Some(p) if p.architecture != config.architecture || p.os != config.os => Err(BaseError::NotAnImage {
            what: what.to_owned(),
            why: format!("it is for {}/{} but [image] platforms asks for {p}", config.os, config.architecture),
        }),
        _ => Ok(()),
    }
}

/// Brings one layer into the store in a single pass, verifying its digest and diff_id
/// and reading its file list. Compressed layers keep their bytes; uncompressed ones
/// (docker save writes those) are compressed as the build asks.
fn import_layer(
    ctx: &ImportContext<'_>,
    source: Box<dyn Read>,
    descriptor: Option<&Descriptor>,
    diff_id: &Digest,
    what: &str,
) -> Result<(PackedLayer, Vec<IndexEntry>), BaseError> {
    let layer_err = |e: io::Error| BaseError::Io { what: format!("{what}: layer {diff_id}"), source: e };
    let mut sniff = [0u8; 4];
    let mut source = io::BufReader::with_capacity(1 << 20, source);
    let peeked = {
        use std::io::BufRead;
        let buf = source.fill_buf().map_err(layer_err)?;
        let n = buf.len().min(4);
        sniff[..n].copy_from_slice(&buf[..n]);
        n
    };
    let sniffed = sniff_compression(&sniff[..peeked]);
    let compressed = sniffed.is_some();
    let mut entries = Vec::new();
    let mut actual_diff = None;
    let mut uncompressed_size = 0;
    let (digest, size) = ctx.cache.put_blob_with(|out: &mut HashingWriter<_>| {
        if compressed {
            let tee = TeeReader::new(source, out);
            let mut tar_stream = TeeReader::new(decompress(tee).map_err(layer_err)?, io::sink());
            entries = read_layer_entries(&mut tar_stream).map_err(layer_err)?;
            let (d, n, _) = tar_stream.finish().map_err(layer_err)?;
            (actual_diff, uncompressed_size) = (Some(d), n);
        } else {
            let encoder = ctx.compression.encoder(out).map_err(layer_err)?;
            let mut tar_stream = TeeReader::new(source, encoder);
            entries = read_layer_entries(&mut tar_stream).map_err(layer_err)?;
            let (d, n, encoder) = tar_stream.finish().map_err(layer_err)?;
            encoder.finish().map_err(layer_err)?;
            (actual_diff, uncompressed_size) = (Some(d), n);
        }
        (ctx.on_bytes)(uncompressed_size);
        Ok::<_, BaseError>(())
    })?;
    let actual_diff = actual_diff.unwrap_or_else(|| Digest::of(b""));
    if &actual_diff != diff_id {
        return Err(BaseError::DigestMismatch { what: format!("{what}: uncompressed layer"), expected: diff_id.clone(), actual: actual_diff });
    }
    if let Some(d) = descriptor.filter(|_| compressed)
        && d.digest != digest {
            return Err(BaseError::DigestMismatch { what: what.to_owned(), expected: d.digest.clone(), actual: digest });
        }
    // Compressed layers keep their compression; uncompressed ones got the build's.
    let media_type = sniffed.unwrap_or(ctx.compression).media_type();
    let layer = PackedLayer {
        digest,
        diff_id: actual_diff,
        size,
        media_type,
        uncompressed_size,
        entries: entries.len() as u64,
        description: format!("base layer from {what}"),
    };
    Ok((layer, entries))
}
