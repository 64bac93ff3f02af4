//! Where built images go: an OCI image layout directory, a docker-archive tar (which
//! is also an OCI archive), or straight into a docker daemon's `images/load`.

mod archive;
mod daemon;
mod layout;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use crate::image::{BuiltImage, keys};
use crate::oci::{ImageIndex, MediaType};

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

/// The `index.json` of a layout or archive holding `images`: each image's manifest,
/// named by its tag (what skopeo and umoci look up) and by its full reference (what
/// containerd's importer uses).
fn index_of(images: &[BuiltImage]) -> ImageIndex {
    ImageIndex {
        schema_version: 2,
        media_type: Some(MediaType::OciIndex),
        manifests: images
            .iter()
            .map(|image| {
                let mut d = image.descriptor.clone();
                d.annotations = BTreeMap::from([
                    (keys::REF_NAME.to_owned(), image.tag.clone()),
                    ("io.containerd.image.name".to_owned(), image.reference()),
                ]);
                d
            })
            .collect(),
        annotations: BTreeMap::new(),
    }
}

fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io { path: path.to_owned(), source }
}
