//! Gzip layers as a concatenation of gzip members (RFC 1952 §2.2; docker, containerd,
//! podman and every gzip reader accept them). A large file whose bytes are exactly a
//! wheel's deflated zip entry becomes a member of its own: a fixed gzip header, the
//! entry's raw deflate stream copied as it is, then its CRC-32 and size. Everything else
//! (tar headers, padding, small files) is compressed fresh, each run of it one member.
//! A layer with no such file is one ordinary gzip stream, byte for byte.
//!
//! The tar writer and this writer meet through a [`Passthrough`] slot: the data reader of
//! a passed-through file fills it on its first read, when the tar builder has written the
//! entry's header and is about to copy the data. The writer then ends the current member,
//! writes the raw one, and drops the next `size` bytes it is given (the same bytes, still
//! hashed upstream for the diff_id), so the tar stream itself never changes.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use flate2::write::GzEncoder;

use super::compress::gzip_encoder;
use super::entry::DeflateStream;

/// Files at least this large are passed through; below it the two extra gzip members
/// (about 40 bytes) would outweigh what the copy saves.
pub(crate) const PASSTHROUGH_MIN_BYTES: u64 = 64 << 10;

/// Header of every passed-through member: deflate, no flags, mtime 0, no extra flags,
/// OS 255 (unknown), as flate2 writes the compressed ones at level 6.
const RAW_MEMBER_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A file's raw deflate stream, due to become the next member.
pub(crate) struct RawMember {
    pub file: Arc<PathBuf>,
    pub stream: DeflateStream,
    /// Uncompressed size: the bytes the tar writer copies next.
    pub size: u64,
}

/// The slot the tar writer's data readers fill (see the module docs). One per layer, in
/// one thread.
#[derive(Clone, Default)]
pub(crate) struct Passthrough(Rc<RefCell<Option<RawMember>>>);

impl Passthrough {
    pub fn announce(&self, member: RawMember) {
        *self.0.borrow_mut() = Some(member);
    }

    fn take(&self) -> Option<RawMember> {
        self.0.borrow_mut().take()
    }
}

enum State<W: Write> {
    Between(W),
    Member(Box<GzEncoder<W>>),
    /// An I/O error left the writer mid-change.
    Broken,
}

/// The gzip writer of a layer; see the module docs.
pub(crate) struct GzipMembers<W: Write> {
    state: State<W>,
    passthrough: Passthrough,
    /// Uncompressed bytes still to drop: the data of the member just passed through.
    skip: u64,
}

impl<W: Write> GzipMembers<W> {
    pub fn new(out: W, passthrough: Passthrough) -> Self {
        Self { state: State::Between(out), passthrough, skip: 0 }
    }

    /// Ends the last member and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if self.skip > 0 || self.passthrough.take().is_some() {
            return Err(io::Error::other("a passed-through file's data was not written in full"));
        }
        self.end_member()
    }

    fn end_member(&mut self) -> io::Result<W> {
        match std::mem::replace(&mut self.state, State::Broken) {
            State::Between(out) => Ok(out),
            State::Member(encoder) => encoder.finish(),
            State::Broken => Err(io::Error::other("the layer writer failed earlier")),
        }
    }

    fn write_raw(&mut self, member: &RawMember) -> io::Result<()> {
        let mut out = self.end_member()?;
        let mut file = File::open(member.file.as_path())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", member.file.display())))?;
        file.seek(SeekFrom::Start(member.stream.offset))?;
        out.write_all(&RAW_MEMBER_HEADER)?;
        let copied = io::copy(&mut BufReader::with_capacity(1 << 20, file.take(member.stream.length)), &mut out)?;
        if copied != member.stream.length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends inside the deflate stream at {}", member.file.display(), member.stream.offset),
            ));
        }
        out.write_all(&member.stream.crc32.to_le_bytes())?;
        // ISIZE is the size modulo 2^32 (RFC 1952 §2.3.1).
        out.write_all(&(member.size as u32).to_le_bytes())?;
        self.state = State::Between(out);
        self.skip = member.size;
        Ok(())
    }
}

impl<W: Write> Write for GzipMembers<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(member) = self.passthrough.take() {
            self.write_raw(&member)?;
        }
        if self.skip > 0 {
            let n = buf.len().min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            self.skip -= n as u64;
            return Ok(n);
        }
        if let State::Between(_) = self.state
            && let State::Between(out) = std::mem::replace(&mut self.state, State::Broken)
        {
            self.state = State::Member(Box::new(gzip_encoder(out)));
        }
        match &mut self.state {
            State::Member(encoder) => encoder.write(buf),
            _ => Err(io::Error::other("the layer writer failed earlier")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            State::Between(out) => out.flush(),
            State::Member(encoder) => encoder.flush(),
            State::Broken => Ok(()),
        }
    }
}

/// The data reader of a passed-through file: announces the raw member on its first read,
/// then yields the file's bytes from disk for the tar stream's hash, and at the end checks
/// them against the stream's CRC-32, so a tree changed on disk cannot give a layer whose
/// diff_id does not match its compressed bytes.
pub(crate) struct Announcing<'a, R> {
    inner: R,
    disk: &'a Path,
    passthrough: Passthrough,
    member: Option<RawMember>,
    crc: flate2::Crc,
    expected: DeflateStream,
}

impl<'a, R: Read> Announcing<'a, R> {
    pub fn new(inner: R, passthrough: Passthrough, member: RawMember, disk: &'a Path) -> Self {
        let expected = member.stream;
        Self { inner, disk, passthrough, member: Some(member), crc: flate2::Crc::new(), expected }
    }
}

impl<R: Read> Read for Announcing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(member) = self.member.take() {
            self.passthrough.announce(member);
        }
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        if n == 0 && !buf.is_empty() && self.crc.sum() != self.expected.crc32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} no longer matches the wheel entry it was installed from; remove it from the cache and build again",
                    self.disk.display()
                ),
            ));
        }
        Ok(n)
    }
}
