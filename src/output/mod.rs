//! Where built images go: an OCI image layout directory, a docker-archive tar (which
//! is also an OCI archive), or straight into a docker daemon's `images/load`.

mod archive;
mod daemon;
mod layout;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use crate::image::BuiltImage;
use crate::oci::{ANNOTATION_REF_NAME, ImageIndex};

pub use archive::{write_archive, write_archive_file};
pub use daemon::{DaemonError, DockerHost, load_into_daemon};
pub(crate) use layout::write_layout_files;
pub use layout::write_layout;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not an OCI image layout written by galley ({why}); choose another --output or remove it", path.display())]
    NotALayout { path: PathBuf, why: String },
}

impl OutputError {
    /// Whether the fault lies in the user's input (exit code 2): an `--output` that is
    /// not a layout galley may write, rather than a failed write.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::NotALayout { .. })
    }
}

/// The `index.json` of a layout or archive holding `images`: each image's manifest,
/// named by its tag (what skopeo and umoci look up) and by its full reference (what
/// containerd's importer uses).
fn index_of(images: &[BuiltImage]) -> ImageIndex {
    ImageIndex::new(
        images
            .iter()
            .map(|image| {
                let mut d = image.descriptor.clone();
                d.annotations = BTreeMap::from([
                    (ANNOTATION_REF_NAME.to_owned(), image.tag.clone()),
                    ("io.containerd.image.name".to_owned(), image.reference()),
                ]);
                d
            })
            .collect(),
    )
}

fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io { path: path.to_owned(), source }
}
