//! Layers: entries, deterministic tar, compression, packing into the content store,
//! and the merged view of a layer stack with whiteouts applied.

mod compress;
mod entry;
mod index;
mod key;
mod members;
mod pack;
mod tar;

pub use compress::Compression;
pub use entry::{DeflateStream, Entry, EntryKind, LayerPath, OPAQUE_WHITEOUT, PathError, Source, WHITEOUT_PREFIX};
pub use index::{IndexEntry, Node, NodeKind, RootfsIndex, index_entries, read_layer_entries};
pub use key::entries_key;
pub(crate) use key::key_with;
pub use pack::{LayerError, LayerSpec, PackedLayer, finalize_entries, pack_cached};
pub use tar::{TeeReader, decompress, sniff_compression, write_tar};
