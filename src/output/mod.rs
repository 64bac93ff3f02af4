//! Where built images go: an OCI image layout directory, a docker-archive tar (which
//! is also an OCI archive), or straight into a docker daemon's `images/load`.

mod archive;
mod daemon;
mod layout;

use std::io;
use std::path::PathBuf;

pub use archive::{write_archive, write_archive_file};
pub use daemon::{DaemonError, DockerHost, load_into_daemon};
pub use layout::{read_layout_index, write_layout};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not an OCI image layout written by galley ({why}); choose another --output or remove it", path.display())]
    NotALayout { path: PathBuf, why: String },
}

fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io { path: path.to_owned(), source }
}
