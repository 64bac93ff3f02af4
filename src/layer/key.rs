//! Cache keys for layers made from entries: a digest of everything that decides the
//! layer's bytes, with file contents hashed through the memo so an unchanged tree is
//! not read again.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::entry::{DeflateStream, Entry, EntryKind, Source};
use crate::memo::Memo;
use crate::oci::Digest;

/// The key of a layer holding `entries` (in their final order). `scope` names the
/// kind of layer and its format version, so different layer kinds never share keys.
pub fn entries_key(scope: &str, entries: &[Entry], memo: &mut Memo) -> io::Result<Digest> {
    let mut text = format!("{scope}\n");
    for e in entries {
        let content = match &e.kind {
            EntryKind::Dir => "dir".to_owned(),
            EntryKind::File { source: Source::Path(p), size } => format!("file {size} {}", file_digest(p, memo)?),
            EntryKind::File { source: Source::Deflated { path, file, stream }, size } => {
                let DeflateStream { offset, length, crc32 } = stream;
                format!("deflated {size} {} {} {offset} {length} {crc32:08x}", file_digest(path, memo)?, file.display())
            }
            EntryKind::File { source: Source::Bytes(b), .. } => format!("bytes {}", Digest::of(b)),
            EntryKind::File { source: Source::Span { file, offset }, size } => {
                format!("span {} {offset} {size}", file.display())
            }
            EntryKind::Symlink { target } => format!("symlink {target}"),
            EntryKind::Hardlink { target } => format!("hardlink {target}"),
        };
        let _ = writeln!(text, "{} {:o} {} {} {} {content}", e.path, e.mode, e.uid, e.gid, e.mtime);
    }
    Ok(Digest::of(text.as_bytes()))
}

fn file_digest(path: &Path, memo: &mut Memo) -> io::Result<Digest> {
    let meta = std::fs::metadata(path)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot read {}: {err}", path.display())))?;
    memo.digest(path, &meta)
}
