//! docker-archive tars as `docker save` writes them since Docker 25: an OCI layout
//! (`oci-layout`, `index.json`, `blobs/sha256/...`) plus the `manifest.json` that
//! `docker load` and `podman load` read. Layers keep their compression; both engines
//! decompress gzip and zstd layers on load. Written deterministically.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::{OutputError, index_of, io_err};
use crate::cache::{Cache, TempGuard, remove_dead_temp_siblings, temp_sibling};
use crate::image::BuiltImage;
use crate::layer::{Entry, EntryKind, LayerPath, Source, write_tar};
use crate::oci::{OCI_LAYOUT_FILE, layout_blob_path, to_canonical_json};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Streams the archive of `images` into `out`; `mtime` stamps every entry.
pub fn write_archive<W: Write>(cache: &Cache, images: &[BuiltImage], mtime: u64, out: W) -> io::Result<W> {
    let manifests: Vec<ArchiveManifest> = images
        .iter()
        .map(|image| ArchiveManifest {
            config: layout_blob_path(&image.config_descriptor.digest),
            repo_tags: vec![image.reference()],
            layers: image.layers.iter().map(|l| layout_blob_path(&l.digest)).collect(),
        })
        .collect();
    let index = index_of(images);
    let path = |p: &str| LayerPath::new(p).map_err(io::Error::other);
    let bytes = |p: &str, data: Vec<u8>| -> io::Result<Entry> {
        let size = data.len() as u64;
        Ok(file(path(p)?, Source::Bytes(Arc::from(data)), size, mtime))
    };
    let mut entries = vec![
        Entry::dir(path("blobs")?, 0o755, 0, 0, mtime),
        Entry::dir(path("blobs/sha256")?, 0o755, 0, 0, mtime),
        bytes("oci-layout", OCI_LAYOUT_FILE.to_vec())?,
        bytes("index.json", to_canonical_json(&index))?,
        bytes("manifest.json", to_canonical_json(&manifests))?,
    ];
    let mut seen = std::collections::HashSet::new();
    for image in images {
        let blobs = image
            .layers
            .iter()
            .map(|l| (&l.digest, l.size))
            .chain([
                (&image.config_descriptor.digest, image.config_descriptor.size),
                (&image.descriptor.digest, image.descriptor.size),
            ]);
        for (digest, size) in blobs {
            if seen.insert(digest.clone()) {
                entries.push(file(path(&layout_blob_path(digest))?, Source::Path(cache.blob_path(digest)), size, mtime));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    write_tar(&entries, out, |_| {})
}

fn file(path: LayerPath, source: Source, size: u64, mtime: u64) -> Entry {
    Entry { path, kind: EntryKind::File { source, size }, mode: 0o644, uid: 0, gid: 0, mtime }
}

/// Writes the archive to `dest` atomically (a temp file beside it, then a rename);
/// temp files of earlier writers that were killed are removed first.
pub fn write_archive_file(cache: &Cache, images: &[BuiltImage], mtime: u64, dest: &Path) -> Result<(), OutputError> {
    remove_dead_temp_siblings(dest);
    let tmp = temp_sibling(dest);
    let guard = TempGuard(tmp.clone());
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let writer = write_archive(cache, images, mtime, io::BufWriter::with_capacity(1 << 20, file)).map_err(io_err(dest))?;
    let file = writer.into_inner().map_err(|e| io_err(dest)(e.into_error()))?;
    file.sync_data().map_err(io_err(dest))?;
    std::fs::rename(&tmp, dest).map_err(io_err(dest))?;
    std::mem::forget(guard);
    Ok(())
}
