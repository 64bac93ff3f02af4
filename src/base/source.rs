//! Reading blobs and JSON documents from an OCI layout directory or from inside an
//! uncompressed tar archive (docker-archive, OCI archive) without unpacking it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layer::LayerPath;

/// Where the files of an image live.
pub enum ImageFiles {
    Dir(PathBuf),
    Tar { file: Arc<PathBuf>, members: HashMap<String, (u64, u64)> },
}

impl ImageFiles {
    /// Indexes the members of a tar archive (offsets of their data) in one pass.
    pub fn open_tar(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let mut archive = tar::Archive::new(io::BufReader::new(file));
        let mut members = HashMap::new();
        for entry in archive.entries()? {
            let entry = entry?;
            if entry.header().entry_type().is_file() {
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                if let Ok(norm) = LayerPath::new(&name) {
                    members.insert(norm.as_str().to_owned(), (entry.raw_file_position(), entry.size()));
                }
            }
        }
        Ok(Self::Tar { file: Arc::new(path.to_owned()), members })
    }

    pub fn has(&self, name: &str) -> bool {
        match self {
            Self::Dir(dir) => dir.join(name).is_file(),
            Self::Tar { members, .. } => members.contains_key(name),
        }
    }

    pub fn open(&self, name: &str) -> io::Result<Box<dyn Read>> {
        match self {
            Self::Dir(dir) => Ok(Box::new(File::open(dir.join(name))?)),
            Self::Tar { file, members } => {
                let norm = LayerPath::new(name).map_err(io::Error::other)?;
                let (offset, size) = members
                    .get(norm.as_str())
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("the archive has no {name}")))?;
                let mut f = File::open(file.as_path())?;
                f.seek(SeekFrom::Start(*offset))?;
                Ok(Box::new(f.take(*size)))
            }
        }
    }

    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open(name)?.read_to_end(&mut out)?;
        Ok(out)
    }
}
