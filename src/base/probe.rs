//! What galley learns about a base image by reading it: its Python interpreter and its
//! C library, which decide which wheels fit and how venvs point at the interpreter.

use crate::layer::LayerPath;

/// A Python interpreter inside the base image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Interpreter {
    /// The interpreter's path in the image, e.g. `/usr/bin/python3.11`.
    pub executable: LayerPath,
    /// `(major, minor)`, e.g. `(3, 11)`.
    pub version: (u8, u8),
}
