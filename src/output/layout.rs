//! OCI image layout directories (image-spec `image-layout.md`): `oci-layout`,
//! `index.json` naming each image by tag, and `blobs/sha256/<hex>`, hard-linked from
//! the content store where possible. Blobs no image references any more are removed.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::{OutputError, index_of, io_err};
use crate::cache::{Cache, atomic_write, link_or_copy};
use crate::image::BuiltImage;
use crate::oci::{ImageIndex, to_canonical_json};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `images` as the whole content of the layout at `dir`.
pub fn write_layout(cache: &Cache, images: &[BuiltImage], dir: &Path) -> Result<(), OutputError> {
    if dir.exists() && !dir.join("oci-layout").is_file() && fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
        return Err(OutputError::NotALayout { path: dir.to_owned(), why: "it is a non-empty directory without oci-layout".into() });
    }
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let mut wanted = HashSet::new();
    for image in images {
        let digests = image
            .layers
            .iter()
            .map(|l| &l.digest)
            .chain([&image.config_descriptor.digest, &image.descriptor.digest]);
        for digest in digests {
            let dest = blobs.join(digest.hex());
            if !dest.is_file() {
                link_or_copy(&cache.blob_path(digest), &dest).map_err(io_err(&dest))?;
            }
            wanted.insert(digest.hex().to_owned());
        }
    }
    atomic_write(&dir.join(".oci-layout.tmp"), &dir.join("oci-layout"), OCI_LAYOUT).map_err(io_err(dir))?;
    let index = index_of(images);
    let index_path = dir.join("index.json");
    atomic_write(&dir.join(".index.json.tmp"), &index_path, &to_canonical_json(&index)).map_err(io_err(&index_path))?;
    for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
        if !wanted.contains(entry.file_name().to_string_lossy().as_ref()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Reads a layout's `index.json`.
pub fn read_layout_index(dir: &Path) -> Result<ImageIndex, OutputError> {
    let path = dir.join("index.json");
    let not_layout = |why: String| OutputError::NotALayout { path: dir.to_owned(), why };
    let bytes = fs::read(&path).map_err(|e| not_layout(format!("cannot read index.json: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| not_layout(format!("index.json is malformed: {e}")))
}
