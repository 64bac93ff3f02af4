//! OCI image types: digests, media types, descriptors, manifests, indexes and configs.

mod digest;
mod types;

pub use digest::{Digest, DigestError, HashingWriter};
pub use types::{
    Descriptor, Empty, HealthCheck, History, ImageConfig, ImageIndex, ImageManifest, MediaType, Platform,
    RootFs, RuntimeConfig, to_canonical_json,
};

/// Annotation naming the tag of a manifest in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The `oci-layout` file of an OCI image layout (directory or archive).
pub const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Where a blob sits inside an OCI image layout (directory or archive).
pub fn layout_blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}
