//! OCI image layout directories (image-spec `image-layout.md`): `oci-layout`,
//! `index.json` naming each image by tag, and `blobs/sha256/<hex>`, hard-linked from
//! the content store where possible. Blobs no image references any more are removed.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::{OutputError, index_of, io_err};
use crate::cache::{Cache, atomic_write, link_or_copy, remove_dead_temp_siblings, temp_sibling};
use crate::image::BuiltImage;
use crate::oci::{Digest, ImageIndex, OCI_LAYOUT_FILE, layout_blob_path, to_canonical_json};

/// Writes `images` as the whole content of the layout at `dir`.
pub fn write_layout(cache: &Cache, images: &[BuiltImage], dir: &Path) -> Result<(), OutputError> {
    if dir.exists() && !dir.join("oci-layout").is_file() && fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
        return Err(OutputError::NotALayout { path: dir.to_owned(), why: "it is a non-empty directory without oci-layout".into() });
    }
    let digests: Vec<&Digest> = images
        .iter()
        .flat_map(|image| image.layers.iter().map(|l| &l.digest).chain([&image.config_descriptor.digest, &image.descriptor.digest]))
        .collect();
    write_layout_files(cache, dir, digests.iter().copied(), &index_of(images))?;
    let wanted: HashSet<&str> = digests.iter().map(|d| d.hex()).collect();
    let blobs = dir.join("blobs/sha256");
    for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
        if !wanted.contains(entry.file_name().to_string_lossy().as_ref()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Puts the blobs of `digests` into the layout at `dir` (created if needed; hard links
/// into the store where possible), then writes its `oci-layout` and, last, `index`, so
/// the index never names a blob that is not there yet. Both files are replaced
/// atomically through temp files named by this process.
pub(crate) fn write_layout_files<'a>(
    cache: &Cache,
    dir: &Path,
    digests: impl IntoIterator<Item = &'a Digest>,
    index: &ImageIndex,
) -> Result<(), OutputError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    for digest in digests {
        let dest = dir.join(layout_blob_path(digest));
        if !dest.is_file() {
            link_or_copy(&cache.blob_path(digest), &dest).map_err(io_err(&dest))?;
        }
    }
    for (name, bytes) in [("oci-layout", OCI_LAYOUT_FILE.to_vec()), ("index.json", to_canonical_json(index))] {
        let path = dir.join(name);
        remove_dead_temp_siblings(&path);
        atomic_write(&temp_sibling(&path), &path, &bytes).map_err(io_err(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_empty_directory_that_is_no_layout_is_the_users_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("notes.txt"), b"mine").unwrap();
        let err = write_layout(&cache, &[], &out).unwrap_err();
        assert!(err.is_usage(), "{err}");
        assert!(err.to_string().contains("choose another --output"), "{err}");
        assert_eq!(fs::read(out.join("notes.txt")).unwrap(), b"mine");

        let empty = dir.path().join("empty");
        write_layout(&cache, &[], &empty).unwrap();
        assert_eq!(fs::read(empty.join("oci-layout")).unwrap(), OCI_LAYOUT_FILE);
        let index: ImageIndex = serde_json::from_slice(&fs::read(empty.join("index.json")).unwrap()).unwrap();
        assert!(index.manifests.is_empty());
        let names: Vec<_> = fs::read_dir(&empty).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "no temp files left: {names:?}");
    }
}
