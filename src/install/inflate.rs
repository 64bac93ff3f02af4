//! Inflating a zip entry's raw deflate stream ourselves, rather than through the zip
//! reader, to learn what a gzip layer needs before it may copy that stream as a member of
//! its own: that the stream ends with its final block exactly where the entry's
//! compressed bytes end (a zip reader ignores bytes after the end, a gzip reader would
//! take them for the trailer), and that it inflates to bytes with the CRC-32 the zip
//! directory records (checked as a zip reader checks it).

use std::io::{self, BufRead, BufReader, Read};

use flate2::{Crc, Decompress, FlushDecompress, Status};

use crate::layer::DeflateStream;

pub(crate) struct Inflater<R> {
    input: BufReader<R>,
    state: Decompress,
    crc: Crc,
    stream: DeflateStream,
    ended: bool,
}

impl<R: Read> Inflater<R> {
    /// `input` yields the entry's compressed bytes, which `stream` describes.
    pub fn new(input: R, stream: DeflateStream) -> Self {
        Self { input: BufReader::with_capacity(256 * 1024, input), state: Decompress::new(false), crc: Crc::new(), stream, ended: false }
    }

    /// After reading to the end: an error when the CRC-32 differs from the directory's;
    /// else the stream when it can be copied as it is, or None when it cannot (it stops
    /// short of the entry's end, or is cut off before its final block).
    pub fn finish(self) -> Result<Option<DeflateStream>, String> {
        if self.crc.sum() != self.stream.crc32 {
            return Err(format!("its CRC-32 is {:08x}, but the zip directory says {:08x}", self.crc.sum(), self.stream.crc32));
        }
        Ok((self.ended && self.state.total_in() == self.stream.length).then_some(self.stream))
    }
}

impl<R: Read> Read for Inflater<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.ended {
            return Ok(0);
        }
        loop {
            let input = self.input.fill_buf()?;
            let (before_in, before_out) = (self.state.total_in(), self.state.total_out());
            let status = self
                .state
                .decompress(input, buf, FlushDecompress::None)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let consumed = usize::try_from(self.state.total_in() - before_in).unwrap_or(usize::MAX);
            let produced = usize::try_from(self.state.total_out() - before_out).unwrap_or(usize::MAX);
            let at_end = input.is_empty();
            self.input.consume(consumed);
            self.crc.update(&buf[..produced]);
            self.ended = status == Status::StreamEnd;
            // A stream cut off before its final block reads as ended, as zip readers do;
            // `finish` then refuses to copy it.
            if produced > 0 || self.ended || at_end {
                return Ok(produced);
            }
            if consumed == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the deflate stream makes no progress"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn inflate(raw: &[u8], crc32: u32) -> (Vec<u8>, Result<Option<DeflateStream>, String>) {
        let stream = DeflateStream { offset: 7, length: raw.len() as u64, crc32 };
        let mut inflater = Inflater::new(raw, stream);
        let mut out = Vec::new();
        inflater.read_to_end(&mut out).unwrap();
        (out, inflater.finish())
    }

    fn crc(data: &[u8]) -> u32 {
        let mut c = Crc::new();
        c.update(data);
        c.sum()
    }

    #[test]
    fn an_exact_stream_can_be_copied() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let raw = deflate(&data);
        let (out, result) = inflate(&raw, crc(&data));
        assert_eq!(out, data);
        assert_eq!(result.unwrap(), Some(DeflateStream { offset: 7, length: raw.len() as u64, crc32: crc(&data) }));
    }

    #[test]
    fn trailing_bytes_or_a_cut_stream_are_not_copied() {
        let data = b"hello hello hello hello".repeat(1000);
        let mut trailing = deflate(&data);
        trailing.extend_from_slice(b"junk");
        let (out, result) = inflate(&trailing, crc(&data));
        assert_eq!(out, data, "the entry still inflates as a zip reader would inflate it");
        assert_eq!(result.unwrap(), None);

        let whole = deflate(&data);
        let cut = &whole[..whole.len() / 2];
        let stream = DeflateStream { offset: 0, length: cut.len() as u64, crc32: crc(&data) };
        let mut inflater = Inflater::new(cut, stream);
        let mut out = Vec::new();
        inflater.read_to_end(&mut out).unwrap();
        assert!(out.len() < data.len());
        assert!(inflater.finish().is_err(), "what it yields does not have the recorded CRC");

        // All the data, but no final block (a sync flush, then nothing).
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&data).unwrap();
        enc.flush().unwrap();
        let unfinished = enc.get_ref().clone();
        let (out, result) = inflate(&unfinished, crc(&data));
        assert_eq!(out, data);
        assert_eq!(result.unwrap(), None);
    }

    #[test]
    fn a_wrong_crc_is_an_error() {
        let data = b"payload".repeat(100);
        let (_, result) = inflate(&deflate(&data), crc(&data) ^ 1);
        assert!(result.unwrap_err().contains("CRC-32"));
    }
}
