//! Cache keys for layers made from entries: a digest of everything that decides the
//! layer's bytes, with file contents hashed through the memo so an unchanged tree is
//! not read again.

use std::io::{self, Write as _};
use std::path::Path;

use super::entry::{DeflateStream, Entry, EntryKind, LayerPath, Source};
use crate::memo::Memo;
use crate::oci::{Digest, HashingWriter};

/// The key of a layer holding `entries` (in their final order). `scope` names the
/// kind of layer and its format version, so different layer kinds never share keys.
pub fn entries_key(scope: &str, entries: &[Entry], memo: &mut Memo) -> io::Result<Digest> {
    key_with(scope, entries, |_, disk| file_digest(disk, memo))
}

/// [`entries_key`], with `content` giving the digest of each file read from disk (by
/// its path in the layer and on disk) from what the caller already knows.
pub(crate) fn key_with(
    scope: &str,
    entries: &[Entry],
    mut content: impl FnMut(&LayerPath, &Path) -> io::Result<Digest>,
) -> io::Result<Digest> {
    let mut h = HashingWriter::new(io::sink());
    writeln!(h, "{scope}")?;
    for e in entries {
        let what = match &e.kind {
            EntryKind::Dir => "dir".to_owned(),
            EntryKind::File { source: Source::Path(p), size } => format!("file {size} {}", content(&e.path, p)?),
            // Gzip layers copy this stream: its bytes are part of the layer's.
            EntryKind::File { source: Source::Deflated { path, file, stream }, size } => {
                let DeflateStream { offset, length, crc32 } = stream;
                format!("deflated {size} {} {} {offset} {length} {crc32:08x}", content(&e.path, path)?, file.display())
            }
            EntryKind::File { source: Source::Bytes(b), .. } => format!("bytes {}", Digest::of(b)),
            EntryKind::File { source: Source::Span { file, offset }, size } => {
                format!("span {} {offset} {size}", file.display())
            }
            EntryKind::Symlink { target } => format!("symlink {target}"),
            EntryKind::Hardlink { target } => format!("hardlink {target}"),
        };
        // NUL cannot occur in a path, so no path can pass for another entry's fields.
        writeln!(h, "{}\0{:o} {} {} {}\0{what}", e.path, e.mode, e.uid, e.gid, e.mtime)?;
    }
    Ok(h.finish().0)
}

fn file_digest(path: &Path, memo: &mut Memo) -> io::Result<Digest> {
    let meta = std::fs::metadata(path)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot read {}: {err}", path.display())))?;
    memo.digest(path, &meta)
}
