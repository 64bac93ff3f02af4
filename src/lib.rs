//! galley builds reproducible OCI images for Python ML applications, without a
//! container daemon, from one `galley.toml`.
//!
//! Data flows one way through the stages, each a module with its own cache bucket:
//! `manifest` (parse, validate) → `base` (import the base image) → `files` (collect app
//! files) → `layer` (deterministic tar, compression, packing) → `image` (config,
//! manifest, index) → `output` (OCI layout, docker-archive, docker daemon).

pub mod base;
pub mod cache;
pub mod http;
pub mod layer;
pub mod manifest;
pub mod memo;
pub mod oci;
