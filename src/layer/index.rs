//! The merged view of a stack of layers, with whiteouts applied: which paths exist,
//! what they are, and the contents of a few small files galley needs (`/etc/passwd`).

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::entry::{LayerPath, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    Dir,
    File,
    Symlink(String),
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Small files whose contents the index keeps.
const KEPT_FILES: &[&str] = &["etc/passwd", "etc/group", "etc/os-release", "usr/lib/os-release"];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootfsIndex {
    nodes: BTreeMap<String, Node>,
    kept: BTreeMap<String, String>,
}

/// One entry of a layer, as the index sees it.
pub struct IndexEntry {
    pub path: String,
    pub node: Node,
    pub content: Option<String>,
}

impl RootfsIndex {
    /// Applies one layer on top: its whiteouts delete from the layers below, then its
    /// entries are added. A non-directory replaces a lower directory's whole subtree.
    pub fn apply(&mut self, layer: Vec<IndexEntry>) {
        for entry in &layer {
            let (parent, name) = entry.path.rsplit_once('/').map_or(("", entry.path.as_str()), |(p, n)| (p, n));
            if name == OPAQUE_WHITEOUT {
                self.remove_children(parent);
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let target = if parent.is_empty() { hidden.to_owned() } else { format!("{parent}/{hidden}") };
                self.nodes.remove(&target);
                self.kept.remove(&target);
                self.remove_children(&target);
            }
        }
        for entry in layer {
            let name = entry.path.rsplit('/').next().unwrap_or_default();
            if name.starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            if entry.node.kind != NodeKind::Dir {
                self.remove_children(&entry.path);
            }
            match entry.content {
                Some(content) => self.kept.insert(entry.path.clone(), content),
                None => self.kept.remove(&entry.path),
            };
            self.nodes.insert(entry.path, entry.node);
        }
    }

    fn remove_children(&mut self, dir: &str) {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let doomed: Vec<String> = self.nodes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(k, _)| k.clone()).collect();
        for key in doomed {
            self.nodes.remove(&key);
            self.kept.remove(&key);
        }
    }

    pub fn get(&self, path: &LayerPath) -> Option<&Node> {
        self.nodes.get(path.as_str())
    }

    /// The contents of one of the few small files the index keeps (`etc/passwd`, ...).
    pub fn kept_file(&self, path: &str) -> Option<&str> {
        self.kept.get(path).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Paths in order, for tests and listings.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }
}

/// Index entries for entries galley is about to pack.
pub fn index_entries(entries: &[super::Entry]) -> io::Result<Vec<IndexEntry>> {
    use super::EntryKind;
    entries
        .iter()
        .map(|e| {
            let kind = match &e.kind {
                EntryKind::Dir => NodeKind::Dir,
                EntryKind::File { .. } | EntryKind::Hardlink { .. } => NodeKind::File,
                EntryKind::Symlink { target } => NodeKind::Symlink(target.clone()),
            };
            let content = match &e.kind {
                EntryKind::File { source, size } if KEPT_FILES.contains(&e.path.as_str()) && *size < (1 << 20) => {
                    let mut s = String::new();
                    super::tar::open_source(source, *size)?.read_to_string(&mut s)?;
                    Some(s)
                }
                _ => None,
            };
            Ok(IndexEntry {
                path: e.path.as_str().to_owned(),
                node: Node { kind, mode: e.mode, uid: e.uid, gid: e.gid },
                content,
            })
        })
        .collect()
}

/// Reads the entries of an uncompressed tar stream for the index.
pub fn read_layer_entries(tar_stream: &mut impl Read) -> io::Result<Vec<IndexEntry>> {
    let mut archive = tar::Archive::new(tar_stream);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes();
        let Ok(path) = LayerPath::new(&String::from_utf8_lossy(&raw)) else { continue };
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => NodeKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => NodeKind::File,
            tar::EntryType::Symlink => NodeKind::Symlink(
                entry.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default(),
            ),
            _ => NodeKind::Other,
        };
        let node = Node {
            kind,
            mode: header.mode()? & 0o7777,
            uid: u32::try_from(header.uid()?).unwrap_or(u32::MAX),
            gid: u32::try_from(header.gid()?).unwrap_or(u32::MAX),
        };
        let content = if KEPT_FILES.contains(&path.as_str()) && node.kind == NodeKind::File && entry.size() < (1 << 20) {
            let mut s = String::new();
            entry.read_to_string(&mut s).ok().map(|_| s)
        } else {
            None
        };
        out.push(IndexEntry { path: path.as_str().to_owned(), node, content });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: NodeKind) -> IndexEntry {
        IndexEntry { path: path.into(), node: Node { kind, mode: 0o755, uid: 0, gid: 0 }, content: None }
    }

    fn paths(index: &RootfsIndex) -> Vec<&str> {
        index.paths().collect()
    }

    #[test]
    fn whiteouts_remove_lower_paths_and_subtrees() {
        let mut index = RootfsIndex::default();
        index.apply(vec![
            e("etc", NodeKind::Dir),
            e("etc/a", NodeKind::File),
            e("etc/b", NodeKind::File),
            e("opt", NodeKind::Dir),
            e("opt/x", NodeKind::Dir),
            e("opt/x/y", NodeKind::File),
        ]);
        index.apply(vec![e("etc/.wh.a", NodeKind::File), e(".wh.opt", NodeKind::File)]);
        assert_eq!(paths(&index), ["etc", "etc/b"]);
    }

    #[test]
    fn opaque_whiteout_hides_lower_children_but_keeps_its_own_layer() {
        let mut index = RootfsIndex::default();
        index.apply(vec![e("d", NodeKind::Dir), e("d/old", NodeKind::File), e("d/sub", NodeKind::Dir), e("d/sub/f", NodeKind::File)]);
        index.apply(vec![e("d", NodeKind::Dir), e("d/.wh..wh..opq", NodeKind::File), e("d/new", NodeKind::File)]);
        assert_eq!(paths(&index), ["d", "d/new"]);
    }

    #[test]
    fn a_file_replacing_a_directory_drops_its_subtree() {
        let mut index = RootfsIndex::default();
        index.apply(vec![e("x", NodeKind::Dir), e("x/y", NodeKind::File)]);
        index.apply(vec![e("x", NodeKind::Symlink("/elsewhere".into()))]);
        assert_eq!(paths(&index), ["x"]);
        assert_eq!(index.get(&LayerPath::new("x").unwrap()).unwrap().kind, NodeKind::Symlink("/elsewhere".into()));
    }

    #[test]
    fn kept_files_follow_whiteouts() {
        let mut index = RootfsIndex::default();
        let mut passwd = e("etc/passwd", NodeKind::File);
        passwd.content = Some("root:x:0:0::/root:/bin/sh\n".into());
        index.apply(vec![passwd]);
        assert!(index.kept_file("etc/passwd").unwrap().starts_with("root"));
        index.apply(vec![e("etc/.wh.passwd", NodeKind::File)]);
        assert_eq!(index.kept_file("etc/passwd"), None);
    }
}
