//! Layer compression: gzip (zlib-rs, level 6, no name, mtime 0) or zstd (level 3,
//! multithreaded mode with one worker, whose output is the same for any worker count).

use std::io::{self, Write};

use crate::oci::MediaType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> MediaType {
        match self {
            Self::Gzip => MediaType::OciLayerGzip,
            Self::Zstd => MediaType::OciLayerZstd,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }

    pub fn encoder<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Self::Gzip => Encoder::Gzip(gzip_encoder(out)),
            Self::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
                enc.multithread(1)?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
        })
    }
}

/// The gzip stream of a layer, or one member of it: level 6, no name, mtime 0.
pub(crate) fn gzip_encoder<W: Write>(out: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new().mtime(0).write(out, flate2::Compression::new(6))
}

pub enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Self::Gzip(e) => e.finish(),
            Self::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(e) => e.write(buf),
            Self::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(e) => e.flush(),
            Self::Zstd(e) => e.flush(),
        }
    }
}
