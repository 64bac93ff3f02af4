//! App files: each `[[files]]` set becomes the entries of one layer, collected from
//! the project directory with excludes and `.galleyignore` / `.dockerignore`, modes
//! normalized (or set), owners numeric (or set by name from the base's /etc/passwd).
//!
//! Placement follows `COPY`: a directory's contents go into `dest`; a file goes to
//! `dest`, or into it when `dest` ends with `/`; each match of a glob goes below
//! `dest` at its path relative to the glob's literal leading directories.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

use crate::layer::{Entry, EntryKind, LayerPath, RootfsIndex, Source};
use crate::manifest::{FileSet, Manifest, ModeRule, OwnerRule};

/// The ignore files galley reads from the project directory, first found wins.
pub const IGNORE_FILES: &[&str] = &[".galleyignore", ".dockerignore"];

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{file}: {field}: {message}")]
    Invalid { file: PathBuf, field: String, message: String },
    #[error("{file}: {first} and {second} both put a file at {path}; exclude it from one of them")]
    Collision { file: PathBuf, first: String, second: String, path: LayerPath },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl FilesError {
    /// Whether the fault lies in the manifest or the project (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Invalid { .. } | Self::Collision { .. })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io { path: path.to_owned(), source }
}

/// The entries of one `[[files]]` set, ready to become a layer.
#[derive(Debug)]
pub struct CollectedFiles {
    pub set: FileSet,
    pub entries: Vec<Entry>,
}

/// Collects every `[[files]]` set of the manifest. `base` resolves owner names and
/// keeps existing directories' metadata; `mtime` stamps every entry.
pub fn collect(manifest: &Manifest, base: &RootfsIndex, mtime: u64) -> Result<Vec<CollectedFiles>, FilesError> {
    let ignore = IgnoreRules::from_project(&manifest.dir)?;
    let mut owners_of_paths: HashMap<LayerPath, String> = HashMap::new();
    let mut out = Vec::new();
    for set in &manifest.files {
        let collector = Collector::new(manifest, set, base, mtime, &ignore)?;
        let entries = collector.collect()?;
        for entry in entries.iter().filter(|e| !e.is_dir()) {
            if let Some(first) = owners_of_paths.insert(entry.path.clone(), set.field("src")) {
                return Err(FilesError::Collision {
                    file: manifest.path.clone(),
                    first,
                    second: set.field("src"),
                    path: entry.path.clone(),
                });
            }
        }
        out.push(CollectedFiles { set: set.clone(), entries });
    }
    Ok(out)
}

/// Ordered include/exclude patterns with `.dockerignore` semantics: patterns are
/// relative to a root, `*` stays within one path component and `**` spans several, a
/// pattern that matches a directory matches everything below it, `!` re-includes,
/// and the last matching pattern decides.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<(GlobMatcher, bool)>,
}

impl IgnoreRules {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, globset::Error> {
        let mut rules = Vec::new();
        for raw in patterns {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(pattern).literal_separator(true).backslash_escape(true).build()?;
            rules.push((glob.compile_matcher(), negate));
        }
        Ok(Self { rules })
    }

    /// Reads the first ignore file found in the project directory.
    fn from_project(dir: &Path) -> Result<Self, FilesError> {
        for name in IGNORE_FILES {
            let path = dir.join(name);
            if path.is_file() {
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                return Self::new(text.lines()).map_err(|e| FilesError::Invalid {
                    file: path.clone(),
                    field: "pattern".into(),
                    message: e.to_string(),
                });
            }
        }
        Ok(Self::default())
    }

    /// Whether `rel` (relative to the rules' root, `/`-separated) is excluded.
    pub fn excludes(&self, rel: &str) -> bool {
        let mut excluded = false;
        for (matcher, negate) in &self.rules {
            if matches_path_or_parent(matcher, rel) {
                excluded = !negate;
            }
        }
        excluded
    }
}

fn matches_path_or_parent(matcher: &GlobMatcher, rel: &str) -> bool {
    matcher.is_match(rel) || rel.match_indices('/').any(|(i, _)| matcher.is_match(&rel[..i]))
}

struct Collector<'a> {
    manifest: &'a Manifest,
    set: &'a FileSet,
    base: &'a RootfsIndex,
    mtime: u64,
    project_ignore: &'a IgnoreRules,
    set_excludes: IgnoreRules,
    /// Fixed owners, or None to keep each file's own (`owner = "preserve"`).
    owner: Option<(u32, u32)>,
}

impl<'a> Collector<'a> {
    fn new(
        manifest: &'a Manifest,
        set: &'a FileSet,
        base: &'a RootfsIndex,
        mtime: u64,
        project_ignore: &'a IgnoreRules,
    ) -> Result<Self, FilesError> {
        let invalid = |field: &str, message: String| FilesError::Invalid {
            file: manifest.path.clone(),
            field: set.field(field),
            message,
        };
        let set_excludes =
            IgnoreRules::new(set.exclude.iter().map(String::as_str)).map_err(|e| invalid("exclude", e.to_string()))?;
        let owner = match &set.owner {
            OwnerRule::Root => Some((0, 0)),
            OwnerRule::Preserve => None,
            OwnerRule::Named(spec) => Some(resolve_owner(spec, base).map_err(|message| invalid("owner", message))?),
        };
        Ok(Self { manifest, set, base, mtime, project_ignore, set_excludes, owner })
    }

    fn invalid(&self, field: &str, message: String) -> FilesError {
        FilesError::Invalid { file: self.manifest.path.clone(), field: self.set.field(field), message }
    }

    fn collect(&self) -> Result<Vec<Entry>, FilesError> {
        let dest = self.set.dest.as_str();
        let dest_dir = LayerPath::new(dest).ok();
        let mut entries: BTreeMap<LayerPath, Entry> = BTreeMap::new();
        if crate::manifest::src_is_glob(&self.set.src) {
            let (root, matches) = self.glob_matches()?;
            if matches.is_empty() {
                return Err(self.invalid("src", format!("`{}` matches no files", self.set.src)));
            }
            for rel in matches {
                let target = join(dest_dir.as_ref(), &rel).map_err(|e| self.invalid("src", e.to_string()))?;
                self.add(&root.join(&rel), &rel_of(&root.join(&rel), &root), target, &mut entries)?;
            }
        } else {
            let src = self.manifest.dir.join(&self.set.src);
            let meta = fs::symlink_metadata(&src).map_err(io_err(&src))?;
            let src_rel = self.set.src.trim_start_matches("./").trim_end_matches('/').to_owned();
            if meta.is_dir() {
                match &dest_dir {
                    Some(d) => self.add(&src, "", d.clone(), &mut entries)?,
                    None => self.add_children(&src, "", None, &mut entries)?,
                }
            } else {
                let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let target = if dest.ends_with('/') || dest_dir.is_none() {
                    join(dest_dir.as_ref(), &name)
                } else {
                    LayerPath::new(dest)
                }
                .map_err(|e| self.invalid("dest", e.to_string()))?;
                if self.project_ignore.excludes(&src_rel) {
                    return Err(self.invalid("src", format!("`{}` is excluded by the project's ignore file", self.set.src)));
                }
                self.add_one(&src, &meta, target, &mut entries)?;
            }
        }
        let mut entries: Vec<Entry> = entries.into_values().collect();
        self.add_missing_ancestors(&mut entries);
        Ok(entries)
    }

    /// Files and directories matching a glob `src`, relative to the glob's literal root.
    fn glob_matches(&self) -> Result<(PathBuf, Vec<String>), FilesError> {
        let pattern = self.set.src.trim_start_matches("./");
        let literal: Vec<&str> =
            pattern.split('/').take_while(|c| !crate::manifest::src_is_glob(c)).collect();
        let root_rel = literal.join("/");
        let root = self.manifest.dir.join(&root_rel);
        let rest = pattern[root_rel.len()..].trim_start_matches('/');
        let matcher = GlobBuilder::new(rest)
            .literal_separator(true)
            .build()
            .map_err(|e| self.invalid("src", e.to_string()))?
            .compile_matcher();
        let mut found = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(dir_rel) = stack.pop() {
            let dir = if dir_rel.is_empty() { root.clone() } else { root.join(&dir_rel) };
            let Ok(listing) = fs::read_dir(&dir) else { continue };
            for item in listing {
                let item = item.map_err(io_err(&dir))?;
                let name = item.file_name().to_string_lossy().into_owned();
                let rel = if dir_rel.is_empty() { name } else { format!("{dir_rel}/{name}") };
                let project_rel = if root_rel.is_empty() { rel.clone() } else { format!("{root_rel}/{rel}") };
                if self.project_excluded(&project_rel) {
                    continue;
                }
                if matcher.is_match(&rel) {
                    found.push(rel);
                } else if item.file_type().map_err(io_err(&dir))?.is_dir() {
                    stack.push(rel);
                }
            }
        }
        found.sort();
        Ok((root, found))
    }

    fn project_excluded(&self, project_rel: &str) -> bool {
        project_rel == ".galley" || project_rel.starts_with(".galley/") || self.project_ignore.excludes(project_rel)
    }

    /// Adds `path` (a file, symlink or directory with everything below it) at `target`.
    /// `rel` is its path relative to the set's source root, for excludes.
    fn add(&self, path: &Path, rel: &str, target: LayerPath, out: &mut BTreeMap<LayerPath, Entry>) -> Result<(), FilesError> {
        let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
        self.add_one(path, &meta, target.clone(), out)?;
        if meta.is_dir() {
            self.add_children(path, rel, Some(&target), out)?;
        }
        Ok(())
    }

    fn add_children(
        &self,
        dir: &Path,
        rel: &str,
        target: Option<&LayerPath>,
        out: &mut BTreeMap<LayerPath, Entry>,
    ) -> Result<(), FilesError> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .map(|item| item.map(|i| i.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io_err(dir))?;
        names.sort();
        for name in names {
            let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let child = dir.join(&name);
            let project_rel = rel_of(&child, &self.manifest.dir);
            if self.set_excludes.excludes(&child_rel) || self.project_excluded(&project_rel) {
                continue;
            }
            let child_target = join(target, &name).map_err(|e| self.invalid("src", e.to_string()))?;
            self.add(&child, &child_rel, child_target, out)?;
        }
        Ok(())
    }

    fn add_one(&self, path: &Path, meta: &fs::Metadata, target: LayerPath, out: &mut BTreeMap<LayerPath, Entry>) -> Result<(), FilesError> {
        let ft = meta.file_type();
        let mode_by = |rule: ModeRule, normalized: u32| match rule {
            ModeRule::Normalized => normalized,
            ModeRule::Preserve => meta.mode() & 0o7777,
            ModeRule::Fixed(mode) => mode,
        };
        let (kind, mode) = if ft.is_dir() {
            (EntryKind::Dir, mode_by(self.set.dir_mode, 0o755))
        } else if ft.is_symlink() {
            let link = fs::read_link(path).map_err(io_err(path))?;
            (EntryKind::Symlink { target: link.to_string_lossy().into_owned() }, 0o777)
        } else if ft.is_file() {
            let normalized = if meta.mode() & 0o100 != 0 { 0o755 } else { 0o644 };
            (EntryKind::File { source: Source::Path(path.to_owned()), size: meta.len() }, mode_by(self.set.mode, normalized))
        } else {
            return Err(self.invalid("src", format!("{} is not a regular file, directory or symlink", path.display())));
        };
        let (uid, gid) = self.owner.unwrap_or((meta.uid(), meta.gid()));
        out.insert(target.clone(), Entry { path: target, kind, mode, uid, gid, mtime: self.mtime });
        Ok(())
    }

    /// Parent directories the layer needs that neither it nor the base has: created
    /// 0755 and owned by root, as `COPY` does.
    fn add_missing_ancestors(&self, entries: &mut Vec<Entry>) {
        let mut have: std::collections::HashSet<LayerPath> = entries.iter().map(|e| e.path.clone()).collect();
        let mut missing = Vec::new();
        for entry in entries.iter() {
            for ancestor in entry.path.ancestors() {
                if !have.contains(&ancestor) && self.base.get(&ancestor).is_none() {
                    have.insert(ancestor.clone());
                    missing.push(Entry::dir(ancestor, 0o755, 0, 0, self.mtime));
                }
            }
        }
        entries.extend(missing);
        entries.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

fn join(dir: Option<&LayerPath>, rel: &str) -> Result<LayerPath, crate::layer::PathError> {
    match dir {
        Some(d) => d.join(rel),
        None => LayerPath::new(rel),
    }
}

fn rel_of(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).map_or_else(|_| path.to_string_lossy().into_owned(), |p| p.to_string_lossy().into_owned())
}

/// `uid[:gid]` or `user[:group]`, names looked up in the base's /etc/passwd and /etc/group.
pub fn resolve_owner(spec: &str, base: &RootfsIndex) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, lookup(base, "etc/passwd", user, 2, 3).and_then(|(_, g)| g).unwrap_or(uid)),
        Err(_) => {
            let (uid, gid) = lookup(base, "etc/passwd", user, 2, 3).ok_or_else(|| {
                format!("user `{user}` is not in the base image's /etc/passwd; use a numeric id such as `1000:1000`")
            })?;
            (uid, gid.unwrap_or(uid))
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(base, "etc/group", g, 2, 2).map(|(gid, _)| gid).ok_or_else(|| {
                format!("group `{g}` is not in the base image's /etc/group; use a numeric id such as `1000`")
            })?,
        },
    };
    Ok((uid, gid))
}

/// Finds `name` in a passwd-style file and returns the numeric fields at `id_field`
/// and `second_field`.
fn lookup(base: &RootfsIndex, file: &str, name: &str, id_field: usize, second_field: usize) -> Option<(u32, Option<u32>)> {
    base.kept_file(file)?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name)).then(|| {
            let id = fields.get(id_field)?.parse().ok()?;
            Some((id, fields.get(second_field).and_then(|s| s.parse().ok())))
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{IndexEntry, Node, NodeKind};

    fn manifest(dir: &Path, files: &str) -> Manifest {
        let text = format!("[image]\nname = \"t\"\n[base]\nrootfs = \"root\"\n{files}");
        fs::create_dir_all(dir.join("root")).unwrap();
        Manifest::parse(&text, &dir.join("galley.toml"), dir).unwrap()
    }

    fn base_with_users() -> RootfsIndex {
        let mut index = RootfsIndex::default();
        let file = |path: &str, content: &str| IndexEntry {
            path: path.into(),
            node: Node { kind: NodeKind::File, mode: 0o644, uid: 0, gid: 0 },
            content: Some(content.into()),
        };
        let dir = |path: &str| IndexEntry { path: path.into(), node: Node { kind: NodeKind::Dir, mode: 0o755, uid: 0, gid: 0 }, content: None };
        index.apply(vec![
            dir("etc"),
            file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"),
            file("etc/group", "root:x:0:\nstaff:x:50:\n"),
        ]);
        index
    }

    fn paths(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.path.to_string()).collect()
    }

    fn write(dir: &Path, rel: &str, body: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }

    #[test]
    fn directories_copy_their_contents_with_excludes_and_ignore_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "src/app.py", "print(1)");
        write(dir.path(), "src/pkg/__pycache__/x.pyc", "");
        write(dir.path(), "src/pkg/mod.py", "");
        write(dir.path(), "src/notes.tmp", "");
        write(dir.path(), "src/keep.tmp", "");
        write(dir.path(), ".dockerignore", "**/__pycache__\nsrc/*.tmp\n!src/keep.tmp\n");
        let m = manifest(dir.path(), "[[files]]\nsrc = \"src/\"\ndest = \"/app/src\"\nexclude = [\"pkg/mod.py\"]\n");
        let collected = collect(&m, &RootfsIndex::default(), 7).unwrap();
        assert_eq!(paths(&collected[0].entries), ["/app", "/app/src", "/app/src/app.py", "/app/src/keep.tmp", "/app/src/pkg"]);
        assert!(collected[0].entries.iter().all(|e| e.mtime == 7 && e.uid == 0));
    }

    #[test]
    fn files_and_globs_follow_copy_placement() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.sh", "#!/bin/sh");
        fs::set_permissions(dir.path().join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o775)).unwrap();
        write(dir.path(), "conf/a.yaml", "");
        write(dir.path(), "conf/sub/b.yaml", "");
        write(dir.path(), "conf/c.txt", "");
        let m = manifest(
            dir.path(),
            "[[files]]\nsrc = \"run.sh\"\ndest = \"/usr/local/bin/\"\n[[files]]\nsrc = \"run.sh\"\ndest = \"/entry\"\nmode = \"0700\"\n\
             [[files]]\nsrc = \"conf/**/*.yaml\"\ndest = \"/etc/app\"\n",
        );
        let collected = collect(&m, &base_with_users(), 0).unwrap();
        let run = &collected[0].entries;
        assert_eq!(paths(run), ["/usr", "/usr/local", "/usr/local/bin", "/usr/local/bin/run.sh"]);
        assert_eq!(run[3].mode, 0o755, "executable bit kept, group write normalized away");
        assert_eq!(collected[1].entries[0].mode, 0o700);
        assert_eq!(paths(&collected[2].entries), ["/etc/app", "/etc/app/a.yaml", "/etc/app/sub", "/etc/app/sub/b.yaml"]);
    }

    #[test]
    fn modes_and_owners_can_be_preserved() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bin/tool", "#!/bin/sh");
        fs::set_permissions(dir.path().join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
        let m = manifest(dir.path(), "[[files]]\nsrc = \"bin\"\ndest = \"/opt/bin\"\nmode = \"preserve\"\nowner = \"preserve\"\n");
        let collected = collect(&m, &RootfsIndex::default(), 0).unwrap();
        let tool = collected[0].entries.iter().find(|e| e.path.as_str() == "opt/bin/tool").unwrap();
        let meta = fs::metadata(dir.path().join("bin/tool")).unwrap();
        assert_eq!(tool.mode, 0o750);
        assert_eq!((tool.uid, tool.gid), (meta.uid(), meta.gid()));
        let bad = Manifest::parse(
            "[image]\nname = \"t\"\n[base]\nrootfs = \"root\"\n[[files]]\nsrc = \"bin\"\ndest = \"/x\"\nmode = \"rwx\"\n",
            &dir.path().join("galley.toml"),
            dir.path(),
        );
        assert!(bad.unwrap_err().to_string().contains("nor \"preserve\""));
    }

    #[test]
    fn owners_resolve_by_name_and_number() {
        let base = base_with_users();
        assert_eq!(resolve_owner("app", &base), Ok((1000, 1001)));
        assert_eq!(resolve_owner("app:staff", &base), Ok((1000, 50)));
        assert_eq!(resolve_owner("1234", &base), Ok((1234, 1234)));
        assert_eq!(resolve_owner("1234:5", &base), Ok((1234, 5)));
        assert!(resolve_owner("nobody-here", &base).unwrap_err().contains("/etc/passwd"));
        assert!(resolve_owner("app:nogroup", &base).unwrap_err().contains("/etc/group"));
    }

    #[test]
    fn two_sets_writing_one_path_collide() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/x.py", "");
        write(dir.path(), "b/x.py", "");
        let m = manifest(dir.path(), "[[files]]\nsrc = \"a\"\ndest = \"/app\"\n[[files]]\nsrc = \"b\"\ndest = \"/app\"\n");
        let err = collect(&m, &RootfsIndex::default(), 0).unwrap_err();
        assert!(err.is_usage());
        let text = err.to_string();
        assert!(text.contains("[[files]] #1 `src` and [[files]] #2 `src` both put a file at /app/x.py"), "{text}");
    }

    #[test]
    fn ignore_rules_follow_dockerignore() {
        let rules = IgnoreRules::new(["*.log", "build", "!build/keep", "docs/**/*.md"]).unwrap();
        assert!(rules.excludes("x.log"));
        assert!(!rules.excludes("sub/x.log"), "`*` does not cross directories");
        assert!(rules.excludes("build/out/a.o"), "a matched directory excludes its subtree");
        assert!(!rules.excludes("build/keep"));
        assert!(rules.excludes("docs/a/b/c.md"));
        assert!(!rules.excludes("src/main.py"));
    }
}
