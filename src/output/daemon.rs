//! Loading images into a docker daemon without the docker CLI: the docker-archive is
//! streamed as the chunked body of `POST /images/load` over the daemon's socket
//! (`DOCKER_HOST`: `unix:///path` or `tcp://host:port`; default `/var/run/docker.sock`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::write_archive;
use crate::cache::Cache;
use crate::image::BuiltImage;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("DOCKER_HOST `{0}` is not supported; use unix:///path/to/docker.sock or tcp://host:port")]
    BadHost(String),
    #[error("no docker daemon answers at {host}: {source}; start dockerd or set DOCKER_HOST")]
    Unreachable { host: String, source: io::Error },
    #[error("the docker daemon at {host} refused the image: {message}")]
    Refused { host: String, message: String },
    #[error("talking to the docker daemon at {host}: {source}")]
    Io { host: String, source: io::Error },
}

impl DaemonError {
    /// A bad DOCKER_HOST is the user's to fix (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::BadHost(_))
    }
}

/// Where the docker daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerHost {
    Unix(PathBuf),
    Tcp(String),
}

impl DockerHost {
    /// `DOCKER_HOST`, else the default socket.
    pub fn from_env() -> Result<Self, DaemonError> {
        match std::env::var("DOCKER_HOST") {
            Ok(value) if !value.is_empty() => Self::parse(&value),
            _ => Ok(Self::Unix(PathBuf::from("/var/run/docker.sock"))),
        }
    }

    pub fn parse(value: &str) -> Result<Self, DaemonError> {
        if let Some(path) = value.strip_prefix("unix://") {
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = value.strip_prefix("tcp://") {
            Ok(Self::Tcp(addr.trim_end_matches('/').to_owned()))
        } else {
            Err(DaemonError::BadHost(value.to_owned()))
        }
    }

    fn connect(&self) -> io::Result<Box<dyn ReadWrite>> {
        Ok(match self {
            Self::Unix(path) => Box::new(UnixStream::connect(path)?),
            Self::Tcp(addr) => Box::new(TcpStream::connect(addr)?),
        })
    }

    /// Whether a daemon answers `GET /_ping` within a second or two.
    pub fn ping(&self) -> bool {
        let ping = || -> io::Result<bool> {
            let mut stream = self.connect()?;
            stream.set_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")?;
            let mut reader = BufReader::new(stream);
            let (status, _) = read_head(&mut reader)?;
            Ok(status == 200)
        };
        ping().unwrap_or(false)
    }
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

trait ReadWrite: Read + Write + Send {
    fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl ReadWrite for UnixStream {
    fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

impl ReadWrite for TcpStream {
    fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

/// Streams `images` into the daemon and returns what it reported (`Loaded image: ...`).
pub fn load_into_daemon(cache: &Cache, images: &[BuiltImage], mtime: u64, host: &DockerHost) -> Result<Vec<String>, DaemonError> {
    let io_err = |source| DaemonError::Io { host: host.to_string(), source };
    let stream = host.connect().map_err(|source| DaemonError::Unreachable { host: host.to_string(), source })?;
    let mut body = ChunkedWriter { inner: io::BufWriter::with_capacity(1 << 20, stream) };
    body.inner
        .write_all(
            b"POST /images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .map_err(io_err)?;
    let mut body = write_archive(cache, images, mtime, body).map_err(io_err)?;
    body.inner.write_all(b"0\r\n\r\n").map_err(io_err)?;
    let stream = body.inner.into_inner().map_err(|e| io_err(e.into_error()))?;
    let mut reader = BufReader::new(stream);
    let (status, chunked) = read_head(&mut reader).map_err(io_err)?;
    let mut text = String::new();
    if chunked {
        read_chunked(&mut reader, &mut text).map_err(io_err)?;
    } else {
        reader.read_to_string(&mut text).map_err(io_err)?;
    }
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(event) => {
                if let Some(error) = event.get("error").and_then(|e| e.as_str()) {
                    errors.push(error.to_owned());
                } else if let Some(stream) = event.get("stream").and_then(|s| s.as_str()) {
                    loaded.extend(stream.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
                }
            }
            Err(_) => errors.push(line.to_owned()),
        }
    }
    if status != 200 || !errors.is_empty() {
        let message = if errors.is_empty() { format!("HTTP {status}: {}", text.trim()) } else { errors.join("; ") };
        return Err(DaemonError::Refused { host: host.to_string(), message });
    }
    Ok(loaded)
}

/// HTTP/1.1 chunked transfer encoding over a writer.
struct ChunkedWriter<W: Write> {
    inner: W,
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        write!(self.inner, "{:x}\r\n", buf.len())?;
        self.inner.write_all(buf)?;
        self.inner.write_all(b"\r\n")?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a response's status line and headers; returns the status and whether the
/// body is chunked.
fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {}", line.trim())))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, chunked))
}

fn read_chunked(reader: &mut impl BufRead, out: &mut String) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size `{}`", line.trim())))?;
        if size == 0 {
            return Ok(());
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        out.push_str(&String::from_utf8_lossy(&chunk[..size]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_parses_unix_and_tcp() {
        assert_eq!(DockerHost::parse("unix:///run/d.sock").unwrap(), DockerHost::Unix("/run/d.sock".into()));
        assert_eq!(DockerHost::parse("tcp://127.0.0.1:2375/").unwrap(), DockerHost::Tcp("127.0.0.1:2375".into()));
        assert!(DockerHost::parse("ssh://x").unwrap_err().is_usage());
    }

    #[test]
    fn chunked_bodies_round_trip() {
        let mut w = ChunkedWriter { inner: Vec::new() };
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        w.inner.extend_from_slice(b"0\r\n\r\n");
        let mut out = String::new();
        read_chunked(&mut io::Cursor::new(w.inner), &mut out).unwrap();
        assert_eq!(out, "hello world");
    }
}
