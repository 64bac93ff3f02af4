//! Packing entries into a compressed layer blob in the content store, in one pass:
//! tar → sha256 (diff_id) → compressor → sha256 (digest) → temp file → rename.

use std::collections::HashMap;
use std::io;

use serde::{Deserialize, Serialize};

use super::compress::Compression;
use super::entry::{Entry, EntryKind, LayerPath};
use super::members::{GzipMembers, Passthrough};
use super::tar::{write_tar, write_tar_with};
use crate::cache::{Cache, CacheError};
use crate::oci::{Descriptor, Digest, HashingWriter, MediaType};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot pack layer `{layer}`: {source}")]
    Pack { layer: String, source: io::Error },
    #[error("layer `{layer}` would hold {path} twice")]
    DuplicatePath { layer: String, path: LayerPath },
    #[error("layer `{layer}`: hard link {path} points at {target}, which the layer does not hold")]
    DanglingHardlink { layer: String, path: LayerPath, target: LayerPath },
}

/// The inputs of one layer: its entries, a digest of everything that determines its
/// bytes (the cache key), and a human description for `inspect`.
#[derive(Debug)]
pub struct LayerSpec {
    pub key: Digest,
    pub description: String,
    pub entries: Vec<Entry>,
}

/// A layer blob in the content store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: MediaType,
    pub uncompressed_size: u64,
    pub entries: u64,
    pub description: String,
}

impl PackedLayer {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type.clone(), self.digest.clone(), self.size)
    }
}

/// Sorts entries bytewise by path, rejects duplicates, and makes the first member (in
/// that order) of every hard-link group the one that carries the data.
pub fn finalize_entries(layer: &str, entries: &mut [Entry]) -> Result<(), LayerError> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(LayerError::DuplicatePath { layer: layer.to_owned(), path: w[0].path.clone() });
    }
    let position: HashMap<LayerPath, usize> =
        entries.iter().enumerate().map(|(i, e)| (e.path.clone(), i)).collect();
    let dangling = |path: &LayerPath, target: &LayerPath| LayerError::DanglingHardlink {
        layer: layer.to_owned(),
        path: path.clone(),
        target: target.clone(),
    };
    // Each link's group is named by the data-carrying entry it finally points at.
    let mut links: Vec<(usize, usize)> = Vec::new();
    let mut group_first: HashMap<usize, usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let EntryKind::Hardlink { target } = &entry.kind else { continue };
        let mut data = *position.get(target).ok_or_else(|| dangling(&entry.path, target))?;
        let mut hops = 0;
        while let EntryKind::Hardlink { target } = &entries[data].kind {
            hops += 1;
            data = position.get(target).copied().filter(|_| hops < 64).ok_or_else(|| dangling(&entry.path, target))?;
        }
        links.push((i, data));
        let first = group_first.entry(data).or_insert(data);
        *first = (*first).min(i);
    }
    for (&data, &first) in &group_first {
        let first_path = entries[first].path.clone();
        if first != data {
            entries[first].kind = entries[data].kind.clone();
            entries[data].kind = EntryKind::Hardlink { target: first_path.clone() };
        }
        for &(i, _) in links.iter().filter(|(i, d)| *d == data && *i != first) {
            entries[i].kind = EntryKind::Hardlink { target: first_path.clone() };
        }
    }
    Ok(())
}

/// Packed-layer records. v2: gzip layers pass large wheel deflate streams through as
/// members of their own (`members`); bump when the bytes written for a spec change.
const BUCKET: &str = "layers-v2";

/// Returns the packed layer for `spec`, packing it only if the store lacks it.
/// The second value says whether it was packed now.
pub fn pack_cached(
    cache: &Cache,
    spec: &LayerSpec,
    compression: Compression,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(PackedLayer, bool), LayerError> {
    let record_path = cache.bucket(BUCKET).join(format!("{}-{}.json", spec.key.hex(), compression.name()));
    if let Some(record) = cache.read_record::<PackedLayer>(&record_path)
        && cache.has_blob(&record.digest) {
            return Ok((record, false));
        }
    let packed = pack(cache, spec, compression, on_bytes)?;
    cache.write_record(&record_path, &packed)?;
    Ok((packed, true))
}

fn pack(
    cache: &Cache,
    spec: &LayerSpec,
    compression: Compression,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<PackedLayer, LayerError> {
    let pack_err = |source| LayerError::Pack { layer: spec.description.clone(), source };
    let mut diff = None;
    let (digest, size) = cache.put_blob_with(|out| {
        let (diff_id, uncompressed) = match compression {
            Compression::Gzip => {
                let passthrough = Passthrough::default();
                let tar_out = HashingWriter::new(GzipMembers::new(out, passthrough.clone()));
                let tar_out = write_tar_with(&spec.entries, tar_out, on_bytes, Some(&passthrough)).map_err(pack_err)?;
                let (diff_id, uncompressed, members) = tar_out.finish();
                members.finish().map_err(pack_err)?;
                (diff_id, uncompressed)
            }
            Compression::Zstd => {
                let tar_out = HashingWriter::new(compression.encoder(out).map_err(pack_err)?);
                let (diff_id, uncompressed, encoder) = write_tar(&spec.entries, tar_out, on_bytes).map_err(pack_err)?.finish();
                encoder.finish().map_err(pack_err)?;
                (diff_id, uncompressed)
            }
        };
        diff = Some((diff_id, uncompressed));
        Ok::<_, LayerError>(())
    })?;
    let (diff_id, uncompressed_size) = diff.ok_or_else(|| pack_err(io::Error::other("layer was not written")))?;
    Ok(PackedLayer {
        digest,
        diff_id,
        size,
        media_type: compression.media_type(),
        uncompressed_size,
        entries: spec.entries.len() as u64,
        description: spec.description.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use super::*;
    use crate::layer::entry::{DeflateStream, Source};
    use crate::layer::tar::decompress;

    fn file(path: &str, data: &[u8]) -> Entry {
        Entry {
            path: LayerPath::new(path).unwrap(),
            kind: EntryKind::File { source: Source::Bytes(Arc::from(data)), size: data.len() as u64 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            kind: EntryKind::Hardlink { target: LayerPath::new(target).unwrap() },
            ..file(path, b"")
        }
    }

    fn spec(entries: Vec<Entry>) -> LayerSpec {
        LayerSpec { key: Digest::of(b"k"), description: "test".into(), entries }
    }

    fn list(cache: &Cache, layer: &PackedLayer) -> Vec<(String, tar::EntryType, String)> {
        let blob = std::fs::File::open(cache.blob_path(&layer.digest)).unwrap();
        let mut archive = tar::Archive::new(decompress(blob).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let kind = e.header().entry_type();
                let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
                let mut body = String::new();
                e.read_to_string(&mut body).unwrap();
                (path, kind, if link.is_empty() { body } else { link })
            })
            .collect()
    }

    #[test]
    fn packing_is_deterministic_and_digests_are_correct() {
        for compression in [Compression::Gzip, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::open(dir.path()).unwrap();
            let mut entries = vec![file("b/x", b"2"), file("a", b"1"), Entry::dir(LayerPath::new("b").unwrap(), 0o755, 0, 0, 0)];
            finalize_entries("t", &mut entries).unwrap();
            let s = spec(entries);
            let (one, packed) = pack_cached(&cache, &s, compression, &|_| {}).unwrap();
            assert!(packed);
            let (again, packed_again) = pack_cached(&cache, &s, compression, &|_| {}).unwrap();
            assert!(!packed_again, "a second pack with the same key reuses the blob");
            assert_eq!(one, again);

            let other = Cache::open(tempfile::tempdir().unwrap().keep()).unwrap();
            let (fresh, _) = pack_cached(&other, &s, compression, &|_| {}).unwrap();
            assert_eq!(fresh.digest, one.digest, "same entries, same bytes in another store");

            let bytes = std::fs::read(cache.blob_path(&one.digest)).unwrap();
            assert_eq!(Digest::of(&bytes), one.digest);
            assert_eq!(bytes.len() as u64, one.size);
            let (diff_id, n) = Digest::of_reader(decompress(std::io::Cursor::new(bytes)).unwrap()).unwrap();
            assert_eq!(diff_id, one.diff_id);
            assert_eq!(n, one.uncompressed_size);
            let names: Vec<_> = list(&cache, &one).into_iter().map(|e| e.0).collect();
            assert_eq!(names, ["a", "b", "b/x"]);
        }
    }

    #[test]
    fn tar_headers_carry_fixed_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut e = file("app/x", b"hi");
        e.uid = 1000;
        e.gid = 1001;
        e.mtime = 1_700_000_000;
        let (layer, _) = pack_cached(&cache, &spec(vec![e]), Compression::Gzip, &|_| {}).unwrap();
        let blob = std::fs::File::open(cache.blob_path(&layer.digest)).unwrap();
        let mut archive = tar::Archive::new(decompress(blob).unwrap());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        let h = entry.header();
        assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (1000, 1001, 1_700_000_000));
        assert_eq!(h.username().unwrap(), Some(""));
        assert_eq!(h.groupname().unwrap(), Some(""));
        let gz = std::fs::read(cache.blob_path(&layer.digest)).unwrap();
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip header mtime is zero");
        assert_eq!(gz[3] & 0x08, 0, "gzip header has no file name");
    }

    #[test]
    fn long_paths_and_link_targets_survive() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let long = format!("{}/f", "d".repeat(200));
        let mut sym = file("s", b"");
        sym.kind = EntryKind::Symlink { target: "t".repeat(150) };
        let mut entries = vec![file(&long, b"x"), sym];
        finalize_entries("t", &mut entries).unwrap();
        let (layer, _) = pack_cached(&cache, &spec(entries), Compression::Gzip, &|_| {}).unwrap();
        let listed = list(&cache, &layer);
        assert_eq!(listed[0].0, long);
        assert_eq!(listed[1].2, "t".repeat(150));
    }

    #[test]
    fn hardlink_groups_put_the_data_on_the_first_path() {
        let mut entries =
            vec![file("z/data", b"payload"), link("a/link", "z/data"), link("m/link", "n/link"), link("n/link", "z/data")];
        finalize_entries("t", &mut entries).unwrap();
        let kinds: Vec<_> = entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { .. } => format!("{} file", e.path),
                EntryKind::Hardlink { target } => format!("{} -> {target}", e.path),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(kinds, ["/a/link file", "/m/link -> /a/link", "/n/link -> /a/link", "/z/data -> /a/link"]);

        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let (layer, _) = pack_cached(&cache, &spec(entries), Compression::Gzip, &|_| {}).unwrap();
        let out = tempfile::tempdir().unwrap();
        let blob = std::fs::File::open(cache.blob_path(&layer.digest)).unwrap();
        tar::Archive::new(decompress(blob).unwrap()).unpack(out.path()).unwrap();
        assert_eq!(std::fs::read(out.path().join("z/data")).unwrap(), b"payload");
    }

    #[test]
    fn duplicates_and_dangling_links_are_rejected() {
        let mut dup = vec![file("a", b"1"), file("a", b"2")];
        assert!(matches!(finalize_entries("t", &mut dup), Err(LayerError::DuplicatePath { .. })));
        let mut dangling = vec![link("a", "missing")];
        assert!(matches!(finalize_entries("t", &mut dangling), Err(LayerError::DanglingHardlink { .. })));
    }

    /// Writes `data` to `dir/name` and, like a wheel, as a raw deflate stream (level 1, so
    /// it differs from what the layer writer would make) inside `dir/name.zip`. Returns
    /// the source and the raw stream.
    fn deflated(dir: &std::path::Path, name: &str, data: &[u8]) -> (Source, Vec<u8>) {
        use std::io::Write as _;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(1));
        enc.write_all(data).unwrap();
        let raw = enc.finish().unwrap();
        let prefix = b"PK\x03\x04 a local header";
        let container = dir.join(format!("{name}.zip"));
        std::fs::write(&container, [&prefix[..], &raw, b"central directory"].concat()).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let stream = DeflateStream { offset: prefix.len() as u64, length: raw.len() as u64, crc32: crc.sum() };
        (Source::Deflated { path: dir.join(name), file: Arc::new(container), stream }, raw)
    }

    fn with_source(path: &str, source: Source, size: usize) -> Entry {
        Entry { kind: EntryKind::File { source, size: size as u64 }, ..file(path, b"") }
    }

    /// Compressible but not trivially: a few hundred KB that deflate to about a third.
    fn payload(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 < 4 { b"import torch\n"[i % 13] } else { (x % 64) as u8 + b' ' }
            })
            .collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn passthrough_gzip_layers_hold_exactly_the_tar_the_normal_path_writes() {
        let files = tempfile::tempdir().unwrap();
        let big = payload(300_000, 1);
        let small = payload(10_000, 2);
        let long = payload(100_000, 3);
        let (big_source, big_raw) = deflated(files.path(), "big.so", &big);
        let (small_source, small_raw) = deflated(files.path(), "small.so", &small);
        let (long_source, long_raw) = deflated(files.path(), "long.so", &long);
        let long_path = format!("opt/{}/libtorch_cuda.so", "deep".repeat(40));
        let mut entries = vec![
            Entry::dir(LayerPath::new("opt").unwrap(), 0o755, 0, 0, 0),
            file("opt/a.py", b"print('fresh')\n"),
            with_source("opt/big.so", big_source, big.len()),
            with_source("opt/small.so", small_source, small.len()),
            with_source(&long_path, long_source, long.len()),
            link("opt/z-link.so", "opt/big.so"),
            file("opt/zz.txt", b"after the last stream"),
        ];
        finalize_entries("t", &mut entries).unwrap();
        let plain = write_tar(&entries, Vec::new(), |_| {}).unwrap();
        let s = spec(entries);

        let cache = Cache::open(tempfile::tempdir().unwrap().keep()).unwrap();
        let (gz, _) = pack_cached(&cache, &s, Compression::Gzip, &|_| {}).unwrap();
        let blob = std::fs::read(cache.blob_path(&gz.digest)).unwrap();
        assert!(contains(&blob, &big_raw) && contains(&blob, &long_raw), "large deflate streams are copied as they are");
        assert!(!contains(&blob, &small_raw), "files under the threshold are compressed afresh");

        let mut inflated = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut inflated).unwrap();
        assert!(inflated == plain, "the members decompress to the very tar the plain path writes");
        assert_eq!(gz.diff_id, Digest::of(&plain));
        assert_eq!(gz.uncompressed_size, plain.len() as u64);
        let mut first_member = Vec::new();
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut first_member).unwrap();
        assert!(first_member.len() < plain.len(), "the blob is several gzip members");

        let (zstd, _) = pack_cached(&cache, &s, Compression::Zstd, &|_| {}).unwrap();
        assert_eq!(zstd.diff_id, gz.diff_id, "zstd layers hold the same tar, compressed the usual way");
        assert!(!contains(&std::fs::read(cache.blob_path(&zstd.digest)).unwrap(), &big_raw));

        let other = Cache::open(tempfile::tempdir().unwrap().keep()).unwrap();
        assert_eq!(pack_cached(&other, &s, Compression::Gzip, &|_| {}).unwrap().0.digest, gz.digest, "same inputs, same bytes");
    }

    #[test]
    fn layers_without_passthrough_are_the_single_gzip_stream_they_always_were() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut entries = vec![file("a", &payload(200_000, 4)), file("b", b"small")];
        finalize_entries("t", &mut entries).unwrap();
        // What galley wrote before passthrough: the tar straight into one gzip encoder
        // (the same writes, since deflate's output depends on how its input is chunked).
        let single = write_tar(&entries, Compression::Gzip.encoder(Vec::new()).unwrap(), |_| {}).unwrap().finish().unwrap();
        let (layer, _) = pack_cached(&cache, &spec(entries), Compression::Gzip, &|_| {}).unwrap();
        assert!(std::fs::read(cache.blob_path(&layer.digest)).unwrap() == single);
    }

    #[test]
    fn a_passthrough_file_changed_on_disk_fails_the_pack() {
        let files = tempfile::tempdir().unwrap();
        let data = payload(100_000, 5);
        let (source, _) = deflated(files.path(), "lib.so", &data);
        let mut changed = data.clone();
        changed[50_000] ^= 1;
        std::fs::write(files.path().join("lib.so"), &changed).unwrap();
        let cache = Cache::open(tempfile::tempdir().unwrap().keep()).unwrap();
        let err = pack_cached(&cache, &spec(vec![with_source("lib.so", source, data.len())]), Compression::Gzip, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("no longer matches the wheel entry"), "{err}");
        assert_eq!(std::fs::read_dir(cache.bucket("tmp")).unwrap().count(), 0, "nothing is left behind");
    }
}
