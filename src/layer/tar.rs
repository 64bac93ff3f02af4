//! Deterministic tar writing and tolerant reading of compressed layers.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use super::entry::{Entry, EntryKind, Source};
use super::members::{Announcing, PASSTHROUGH_MIN_BYTES, Passthrough, RawMember};
use crate::oci::{Digest, HashingWriter};

/// Writes `entries` (already sorted) as a tar stream with GNU headers, numeric
/// owners, empty user/group names and the entries' own mtimes; nothing else
/// (no atime, no PAX timestamps, no xattrs) reaches the archive.
pub fn write_tar<W: Write>(entries: &[Entry], out: W, on_entry: impl FnMut(u64)) -> io::Result<W> {
    write_tar_with(entries, out, on_entry, None)
}

/// [`write_tar`], announcing the deflate streams of large [`Source::Deflated`] files to
/// `passthrough` as their data begins (see `members`). The tar bytes are the same.
pub(crate) fn write_tar_with<W: Write>(
    entries: &[Entry],
    out: W,
    mut on_entry: impl FnMut(u64),
    passthrough: Option<&Passthrough>,
) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode & 0o7777);
        header.set_uid(entry.uid.into());
        header.set_gid(entry.gid.into());
        header.set_mtime(entry.mtime);
        header.set_size(0);
        let path = entry.path.as_str();
        match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, path, io::empty())?;
            }
            EntryKind::File { source, size } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                let mut reader = open_source(source, *size)?;
                if let (Some(passthrough), Source::Deflated { path: disk, file, stream }) = (passthrough, source)
                    && *size >= PASSTHROUGH_MIN_BYTES
                {
                    let member = RawMember { file: file.clone(), stream: *stream, size: *size };
                    reader = Box::new(Announcing::new(reader, passthrough.clone(), member, disk));
                }
                builder.append_data(&mut header, path, ExactReader::new(reader, *size, path))?;
            }
            EntryKind::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, path, target)?;
            }
            EntryKind::Hardlink { target } => {
                header.set_entry_type(tar::EntryType::Link);
                builder.append_link(&mut header, path, target.as_str())?;
            }
        }
        on_entry(entry.content_size());
    }
    builder.into_inner()
}

pub(crate) fn open_source(source: &Source, size: u64) -> io::Result<Box<dyn Read + '_>> {
    Ok(match source {
        Source::Path(path) | Source::Deflated { path, .. } => Box::new(BufReader::with_capacity(
            256 * 1024,
            File::open(path).map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?,
        )),
        Source::Bytes(bytes) => Box::new(&bytes[..]),
        Source::Span { file, offset } => {
            let mut f = File::open(file.as_path())?;
            f.seek(SeekFrom::Start(*offset))?;
            Box::new(BufReader::with_capacity(256 * 1024, f.take(size)))
        }
    })
}

/// Yields exactly `size` bytes or fails: a file that changed size while a layer was
/// being packed must fail the build, not corrupt the archive.
struct ExactReader<'a, R> {
    inner: R,
    left: u64,
    path: &'a str,
}

impl<'a, R: Read> ExactReader<'a, R> {
    fn new(inner: R, size: u64, path: &'a str) -> Self {
        Self { inner, left: size, path }
    }
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!("/{} grew while it was being packed", self.path))),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("/{} shrank while it was being packed", self.path),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Recognizes a stream's compression by its first bytes (gzip or zstd magic), rather
/// than trusting a media type or a file name.
pub fn sniff_compression(first: &[u8]) -> Option<super::Compression> {
    if first.starts_with(&[0x1f, 0x8b]) {
        Some(super::Compression::Gzip)
    } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(super::Compression::Zstd)
    } else {
        None
    }
}

/// Opens a possibly compressed tar stream (see [`sniff_compression`]).
pub fn decompress<'a>(mut reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut magic[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let chained = io::Cursor::new(magic[..got].to_vec()).chain(reader);
    Ok(match sniff_compression(&magic[..got]) {
        Some(super::Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(chained)),
        Some(super::Compression::Zstd) => Box::new(zstd::stream::read::Decoder::new(chained)?),
        None => Box::new(chained),
    })
}

/// A reader that hashes what it yields and copies it to `copy`.
pub struct TeeReader<R, W> {
    inner: R,
    copy: HashingWriter<W>,
}

impl<R: Read, W: Write> TeeReader<R, W> {
    pub fn new(inner: R, copy: W) -> Self {
        Self { inner, copy: HashingWriter::new(copy) }
    }

    /// Reads to the end (tar readers stop before the archive's zero blocks), then
    /// returns the digest and size of everything read, and the copy's writer.
    pub fn finish(mut self) -> io::Result<(Digest, u64, W)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.copy.finish())
    }
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
