//! End-to-end tests of the galley binary against real tools: mmdebstrap, umoci,
//! skopeo, dockerd, podman. One module per area.

mod support;

mod bases;
mod build;
mod clients;
mod envs;
mod errors;
mod lock;
