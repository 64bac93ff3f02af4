//! Root filesystems, as a directory or a tar (plain, gzip or zstd), normalized into
//! one deterministic layer: sorted, numeric owners kept, device nodes and whiteouts
//! dropped, mtimes clamped to SOURCE_DATE_EPOCH when it is set.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::{Base, BaseError, ImportContext, io_error};
use crate::cache::TempGuard;
use crate::layer::{
    Entry, EntryKind, LayerPath, LayerSpec, RootfsIndex, Source, WHITEOUT_PREFIX, decompress, finalize_entries,
    entries_key, index_entries, pack_cached, sniff_compression,
};
use crate::memo::Memo;
use crate::oci::{Digest, Platform};

pub(super) fn import(path: &Path, ctx: &ImportContext<'_>) -> Result<Base, BaseError> {
    let what = format!("[base] rootfs {}", path.display());
    let platform = ctx.platform.cloned().unwrap_or_else(Platform::host);
    let meta = fs::metadata(path).map_err(io_error(&what))?;
    if meta.is_dir() {
        let mut memo = Memo::open(ctx.cache, &format!("rootfs {}", path.display()));
        let entries = dir_entries(path, &what, ctx.epoch)?;
        let key = entries_key("rootfs-dir-v1", &entries, &mut memo).map_err(io_error(&what))?;
        memo.save(ctx.cache);
        from_entries(entries, key, &what, "rootfs directory", platform, ctx)
    } else {
        let mut memo = Memo::open(ctx.cache, "archives");
        let digest = memo.digest(path, &meta).map_err(io_error(&what))?;
        memo.save(ctx.cache);
        let key = Digest::of(format!("rootfs-tar-v1 {digest} {:?} {platform}", ctx.epoch).as_bytes());
        if let Some(base) = ctx.cached(&key) {
            return Ok(base);
        }
        let base = import_tar(path, key.clone(), &what, &format!("rootfs {}", file_name(path)), platform, ctx)?;
        ctx.remember(&key, &base)?;
        Ok(base)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Imports a root filesystem tar (any compression) as a one-layer base.
pub(super) fn import_tar(
    path: &Path,
    key: Digest,
    what: &str,
    description: &str,
    platform: Platform,
    ctx: &ImportContext<'_>,
) -> Result<Base, BaseError> {
    let not_image = |why: String| BaseError::NotAnImage { what: what.to_owned(), why };
    let mut file = File::open(path).map_err(io_error(what))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(io_error(what))?;
    drop(file);
    let compressed = sniff_compression(&magic[..n]).is_some();
    // Entries are read back by offset, so a compressed tar is expanded once into the cache.
    let _guard;
    let plain = if compressed {
        let tmp = ctx.cache.temp_path("rootfs.tar");
        _guard = TempGuard(tmp.clone());
        let mut reader = decompress(File::open(path).map_err(io_error(what))?).map_err(io_error(what))?;
        let mut out = File::create(&tmp).map_err(io_error(what))?;
        io::copy(&mut reader, &mut out).map_err(|e| not_image(format!("it does not decompress ({e})")))?;
        tmp
    } else {
        path.to_owned()
    };
    let entries = tar_entries(&plain, what, ctx.epoch)?;
    if entries.is_empty() {
        return Err(not_image("the tar archive is empty".into()));
    }
    from_entries(entries, key, what, description, platform, ctx)
}

fn from_entries(
    mut entries: Vec<Entry>,
    key: Digest,
    what: &str,
    description: &str,
    platform: Platform,
    ctx: &ImportContext<'_>,
) -> Result<Base, BaseError> {
    finalize_entries(description, &mut entries)?;
    let mut index = RootfsIndex::default();
    index.apply(index_entries(&entries).map_err(io_error(what))?);
    let spec = LayerSpec { key, description: description.to_owned(), entries };
    let (layer, _) = pack_cached(ctx.cache, &spec, ctx.compression, ctx.on_bytes)?;
    let config = ctx.fresh_config(platform, &layer);
    Ok(Base { description: description.to_owned(), layers: vec![layer], config, index })
}

fn clamp(mtime: u64, epoch: Option<u64>) -> u64 {
    epoch.map_or(mtime, |e| mtime.min(e))
}

fn check_symlink(path: &LayerPath, target: &str, what: &str) -> Result<(), BaseError> {
    if path.resolve_link(target).is_none() {
        return Err(BaseError::EscapingSymlink { what: what.to_owned(), link: path.to_string(), target: target.to_owned() });
    }
    Ok(())
}

fn tar_entries(path: &Path, what: &str, epoch: Option<u64>) -> Result<Vec<Entry>, BaseError> {
    let not_image = |why: String| BaseError::NotAnImage { what: what.to_owned(), why };
    let file = File::open(path).map_err(io_error(what))?;
    let shared = Arc::new(path.to_owned());
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    let mut by_path: HashMap<LayerPath, usize> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    let bad_tar = |e: io::Error| not_image(format!("it is not a readable tar archive ({e})"));
    for entry in archive.entries().map_err(bad_tar)? {
        let entry = entry.map_err(bad_tar)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if matches!(raw.trim_end_matches('/'), "" | ".") {
            continue;
        }
        let path = LayerPath::new(&raw).map_err(|e| not_image(e.to_string()))?;
        if path.file_name().starts_with(WHITEOUT_PREFIX) {
            continue;
        }
        let header = entry.header();
        let link = || entry.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                EntryKind::File { source: Source::Span { file: shared.clone(), offset: entry.raw_file_position() }, size: entry.size() }
            }
            tar::EntryType::Symlink => {
                let target = link();
                check_symlink(&path, &target, what)?;
                EntryKind::Symlink { target }
            }
            tar::EntryType::Link => {
                let target = LayerPath::new(&link()).map_err(|e| not_image(e.to_string()))?;
                EntryKind::Hardlink { target }
            }
            // Device nodes, FIFOs: runtimes provide /dev; rootless engines cannot create them.
            _ => continue,
        };
        let new = Entry {
            path: path.clone(),
            kind,
            mode: header.mode().map_err(bad_tar)? & 0o7777,
            uid: u32::try_from(header.uid().map_err(bad_tar)?).unwrap_or(0),
            gid: u32::try_from(header.gid().map_err(bad_tar)?).unwrap_or(0),
            mtime: clamp(header.mtime().map_err(bad_tar)?, epoch),
        };
        // A later member of a tar replaces an earlier one with the same name.
        match by_path.get(&path) {
            Some(&i) => entries[i] = new,
            None => {
                by_path.insert(path, entries.len());
                entries.push(new);
            }
        }
    }
    Ok(entries)
}

/// Walks a directory without following symlinks.
fn dir_entries(root: &Path, what: &str, epoch: Option<u64>) -> Result<Vec<Entry>, BaseError> {
    let mut entries = Vec::new();
    let mut inodes: HashMap<(u64, u64), LayerPath> = HashMap::new();
    let mut stack = vec![(root.to_owned(), None::<LayerPath>)];
    while let Some((dir, rel)) = stack.pop() {
        let listing = fs::read_dir(&dir).map_err(io_error(format!("{what}: {}", dir.display())))?;
        for item in listing {
            let item = item.map_err(io_error(what))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = match &rel {
                Some(r) => r.join(&name),
                None => LayerPath::new(&name),
            }
            .map_err(|e| BaseError::NotAnImage { what: what.to_owned(), why: e.to_string() })?;
            let full = item.path();
            let meta = fs::symlink_metadata(&full).map_err(io_error(full.display().to_string()))?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push((full.clone(), Some(path.clone())));
                EntryKind::Dir
            } else if ft.is_symlink() {
                let target = fs::read_link(&full).map_err(io_error(full.display().to_string()))?.to_string_lossy().into_owned();
                check_symlink(&path, &target, what)?;
                EntryKind::Symlink { target }
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = inodes.get(&(meta.dev(), meta.ino())) {
                        entries.push(entry(path, EntryKind::Hardlink { target: first.clone() }, &meta, epoch));
                        continue;
                    }
                    inodes.insert((meta.dev(), meta.ino()), path.clone());
                }
                EntryKind::File { source: Source::Path(full.clone()), size: meta.len() }
            } else {
                // Sockets, FIFOs and device nodes: runtimes provide /dev.
                continue;
            };
            entries.push(entry(path, kind, &meta, epoch));
        }
    }
    Ok(entries)
}

fn entry(path: LayerPath, kind: EntryKind, meta: &fs::Metadata, epoch: Option<u64>) -> Entry {
    Entry {
        path,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: clamp(u64::try_from(meta.mtime()).unwrap_or(0), epoch),
    }
}
