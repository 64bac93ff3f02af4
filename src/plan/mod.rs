//! Layer planning: from the installed packages of one or more envs to an ordered list of
//! layers. Dependency families come first, each in its own layer(s), a very large family
//! split by size; then one layer for the remaining dependencies; then the venv skeletons
//! and `envs.json`, which are small and change with any package change.
//!
//! A layer's key is the hash of exactly what decides its bytes (paths, modes, owners,
//! mtimes, content digests, link targets), so `layer::pack_cached` packs a layer again
//! only when one of its packages changed.
//!
//! ```no_run
//! # use galley::{install::EnvInstall, plan::*};
//! # fn demo(envs: &[EnvInstall]) -> Result<(), PlanError> {
//! let families = Families::new(&[("audio".into(), vec!["soundfile".into(), "librosa".into()])])?;
//! let layers = plan_env_layers(envs, &families, &PlanOptions::default())?;
//! for layer in &layers {
//!     println!("{} ({} files)", layer.spec.description, layer.spec.entries.len());
//! }
//! # Ok(()) }
//! ```

mod families;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use pep440_rs::Version;
use pep508_rs::PackageName;
use serde::{Deserialize, Serialize};

pub use families::{DEFAULT_FAMILIES, Families};

use crate::install::{EnvInstall, EnvsJson, TreeFile, venv_skeleton};
use crate::layer::{Entry, EntryKind, LayerError, LayerPath, LayerSpec, PathError, Source, finalize_entries, key_with};
use crate::oci::Digest;

/// Bump when the planner's output for the same inputs changes.
const FORMAT: &str = "galley-plan-2";

pub const DEFAULT_ENVS_JSON: &str = "/opt/galley/envs.json";

/// How families spanning several envs are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnvSharing {
    /// A family's layers hold every env's packages; a file identical in several envs (same
    /// path inside the env, same bytes and mode: the same wheel installed twice) is stored
    /// once and hard-linked from the others. The smallest images.
    #[default]
    Hardlink,
    /// Each env gets its own layers, byte-identical in every image holding that env:
    /// more reuse between targets, but an image stores a wheel shared by two envs twice.
    PerEnv,
}

#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// mtime of every entry: SOURCE_DATE_EPOCH, else 0.
    pub mtime: u64,
    /// A group of packages bigger than this (uncompressed bytes) is split across layers.
    pub split_bytes: u64,
    /// Most layers the plan may have (the image's budget minus base and app layers).
    pub max_layers: usize,
    pub sharing: EnvSharing,
    /// Where `envs.json` goes; `/opt/galley/envs.json` when None.
    pub envs_json: Option<LayerPath>,
    /// The env listed as default in `envs.json`; the first env when None.
    pub default_env: Option<String>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            mtime: 0,
            split_bytes: 1 << 30,
            max_layers: 48,
            sharing: EnvSharing::default(),
            envs_json: None,
            default_env: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("[layers] family `{family}`: pattern `{pattern}` is not a valid glob: {why}")]
    BadPattern { family: String, pattern: String, why: String },
    #[error("the envs need {count} layers, over the budget of {max}; raise the split size or merge families in [layers]")]
    TooManyLayers { count: usize, max: usize },
    #[error("default env `{name}` is not among the envs being planned ({})", known.join(", "))]
    UnknownDefaultEnv { name: String, known: Vec<String> },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Layer(#[from] LayerError),
}

impl PlanError {
    /// Whether the fault lies in the user's configuration (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::BadPattern { .. } | Self::TooManyLayers { .. } | Self::UnknownDefaultEnv { .. })
    }
}

/// What a planned layer holds, for `galley inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LayerRole {
    /// Part `part` (from 1) of `parts` of a family's layers.
    Family { name: String, part: usize, parts: usize },
    /// The dependencies no family claims.
    Dependencies { part: usize, parts: usize },
    /// Venv skeletons (pyvenv.cfg, interpreter links, activate scripts) and envs.json.
    Venvs,
}

/// One package (in one env) with files in a layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPackage {
    pub env: String,
    pub name: PackageName,
    pub version: Version,
}

#[derive(Debug)]
pub struct PlannedLayer {
    pub spec: LayerSpec,
    pub role: LayerRole,
    /// Sorted by env (in the order given), then name.
    pub packages: Vec<LayerPackage>,
}

/// Plans the layers for `envs` (all envs of one image, default first or named in
/// `options`). Packages join the first family that matches; see [`EnvSharing`] for envs.
pub fn plan_env_layers(envs: &[EnvInstall], families: &Families, options: &PlanOptions) -> Result<Vec<PlannedLayer>, PlanError> {
    if envs.is_empty() {
        return Ok(Vec::new());
    }
    let default = match &options.default_env {
        Some(name) if envs.iter().any(|e| e.layout.name == *name) => name.clone(),
        Some(name) => {
            return Err(PlanError::UnknownDefaultEnv { name: name.clone(), known: envs.iter().map(|e| e.layout.name.clone()).collect() });
        }
        None => envs[0].layout.name.clone(),
    };

    // (family position or "remaining", env position when layers are per env) -> packages
    let mut groups: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
    for (e, env) in envs.iter().enumerate() {
        for (p, tree) in env.packages.iter().enumerate() {
            let family = families.family_of(&tree.name).unwrap_or(families.len());
            let env_slot = if options.sharing == EnvSharing::PerEnv { e } else { 0 };
            groups.entry((family, env_slot)).or_default().push((e, p));
        }
    }

    let mut layers = Vec::new();
    for ((family, _), members) in &groups {
        let chunks = split(envs, members, options.split_bytes);
        let parts = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let role = if *family < families.len() {
                LayerRole::Family { name: families.name(*family).to_owned(), part: i + 1, parts }
            } else {
                LayerRole::Dependencies { part: i + 1, parts }
            };
            layers.push(package_layer(envs, &chunk, role, options)?);
        }
    }
    layers.push(venvs_layer(envs, &default, options)?);
    if layers.len() > options.max_layers {
        return Err(PlanError::TooManyLayers { count: layers.len(), max: options.max_layers });
    }
    Ok(layers)
}

/// The files of one package going into one layer (all of them, or a slice of a big one).
#[derive(Default)]
struct Portion<'a> {
    files: Vec<&'a TreeFile>,
    /// Whether the package's explicit (possibly empty) directories come along.
    dirs: bool,
}

/// (env, package) -> portion, ordered by env then package.
type Chunk<'a> = BTreeMap<(usize, usize), Portion<'a>>;

/// Splits a group into chunks of at most `limit` bytes. A wheel installed in several
/// envs is one unit (its copies hard-link to each other, so they must share a layer);
/// units are taken by name, small ones packed together, a unit over the limit split by
/// path with every env's copy of a path kept together. Deterministic for the same input.
fn split<'a>(envs: &'a [EnvInstall], members: &[(usize, usize)], limit: u64) -> Vec<Chunk<'a>> {
    // One unit per wheel: (name, version, wheel sha256) -> its (env, package) copies.
    type Unit<'t> = (&'t PackageName, &'t Version, &'t Digest);
    let mut units: BTreeMap<Unit<'_>, Vec<(usize, usize)>> = BTreeMap::new();
    for &(e, p) in members {
        let tree = &envs[e].packages[p];
        units.entry((&tree.name, &tree.version, &tree.wheel_sha256)).or_default().push((e, p));
    }
    let mut chunks: Vec<Chunk<'a>> = Vec::new();
    let mut current: Chunk<'a> = BTreeMap::new();
    let mut current_size = 0u64;
    for copies in units.values() {
        // relative path -> every env's copy
        let mut by_path: BTreeMap<&LayerPath, Vec<(usize, usize, &TreeFile)>> = BTreeMap::new();
        for &(e, p) in copies {
            for f in envs[e].files_of(p) {
                by_path.entry(&f.path).or_default().push((e, p, f));
            }
        }
        let unit_size: u64 = by_path.values().map(|g| stored_size(g)).sum();
        let big = unit_size > limit;
        if (big || current_size + unit_size > limit) && !current.is_empty() {
            chunks.push(std::mem::take(&mut current));
            current_size = 0;
        }
        for &(e, p) in copies {
            current.entry((e, p)).or_default().dirs = true;
        }
        for group in by_path.values() {
            let size = stored_size(group);
            if big && current_size > 0 && current_size + size > limit {
                chunks.push(std::mem::take(&mut current));
                current_size = 0;
            }
            for &(e, p, f) in group {
                current.entry((e, p)).or_default().files.push(f);
            }
            current_size += size;
        }
        if big {
            chunks.push(std::mem::take(&mut current));
            current_size = 0;
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Bytes a path's copies take in a layer: identical copies are stored once.
fn stored_size(copies: &[(usize, usize, &TreeFile)]) -> u64 {
    let unique: BTreeMap<(&Digest, u32), u64> = copies.iter().map(|(_, _, f)| ((&f.sha256, f.mode), f.size)).collect();
    unique.values().sum()
}

fn package_layer(envs: &[EnvInstall], chunk: &Chunk<'_>, role: LayerRole, options: &PlanOptions) -> Result<PlannedLayer, PlanError> {
    let mut entries: BTreeMap<LayerPath, Entry> = BTreeMap::new();
    let mut digests: HashMap<LayerPath, Digest> = HashMap::new();
    // (path inside the env, content, mode) -> the first copy's image path
    let mut first_copy: HashMap<(&LayerPath, &Digest, u32), LayerPath> = HashMap::new();
    let mut packages = Vec::new();
    for (&(e, p), portion) in chunk {
        let env = &envs[e];
        let tree = &env.packages[p];
        packages.push(LayerPackage { env: env.layout.name.clone(), name: tree.name.clone(), version: tree.version.clone() });
        for f in &portion.files {
            let path = env.layout.path(f.path.as_str())?;
            let kind = match first_copy.get(&(&f.path, &f.sha256, f.mode)) {
                Some(target) if options.sharing == EnvSharing::Hardlink && f.size > 0 => EntryKind::Hardlink { target: target.clone() },
                _ => {
                    first_copy.insert((&f.path, &f.sha256, f.mode), path.clone());
                    EntryKind::File { source: tree.source(f), size: f.size }
                }
            };
            digests.insert(path.clone(), f.sha256.clone());
            entries.insert(path.clone(), Entry { path, kind, mode: f.mode, uid: 0, gid: 0, mtime: options.mtime });
        }
        if portion.dirs {
            for d in &tree.dirs {
                let path = env.layout.path(d.as_str())?;
                entries.entry(path.clone()).or_insert_with(|| Entry::dir(path, 0o755, 0, 0, options.mtime));
            }
        }
    }
    let description = describe(&role, &packages);
    finish(entries, &digests, role, packages, description, options)
}

fn venvs_layer(envs: &[EnvInstall], default: &str, options: &PlanOptions) -> Result<PlannedLayer, PlanError> {
    let mut entries: BTreeMap<LayerPath, Entry> = BTreeMap::new();
    for env in envs {
        for mut entry in venv_skeleton(&env.layout)? {
            entry.mtime = options.mtime;
            entries.insert(entry.path.clone(), entry);
        }
    }
    let json: Arc<[u8]> = Arc::from(EnvsJson::new(envs, default).to_bytes());
    let size = json.len() as u64;
    let path = match &options.envs_json {
        Some(path) => path.clone(),
        None => LayerPath::new(DEFAULT_ENVS_JSON)?,
    };
    let envs_json = path.to_string();
    entries.insert(
        path.clone(),
        Entry { path, kind: EntryKind::File { source: Source::Bytes(json), size }, mode: 0o644, uid: 0, gid: 0, mtime: options.mtime },
    );
    let names: Vec<&str> = envs.iter().map(|e| e.layout.name.as_str()).collect();
    let description = format!("venvs {} and {envs_json}", names.join(", "));
    finish(entries, &HashMap::new(), LayerRole::Venvs, Vec::new(), description, options)
}

/// Adds ancestor directories, sorts, validates and keys the layer.
fn finish(
    mut entries: BTreeMap<LayerPath, Entry>,
    digests: &HashMap<LayerPath, Digest>,
    role: LayerRole,
    packages: Vec<LayerPackage>,
    description: String,
    options: &PlanOptions,
) -> Result<PlannedLayer, PlanError> {
    let ancestors: BTreeSet<LayerPath> = entries.keys().flat_map(LayerPath::ancestors).collect();
    for dir in ancestors {
        entries.entry(dir.clone()).or_insert_with(|| Entry::dir(dir, 0o755, 0, 0, options.mtime));
    }
    let mut entries: Vec<Entry> = entries.into_values().collect();
    finalize_entries(&description, &mut entries)?;
    // Installed files are keyed by the sha256 their tree records, never read here.
    let key = key_with(FORMAT, &entries, |path, _| {
        digests.get(path).cloned().ok_or_else(|| std::io::Error::other(format!("{path} has no recorded sha256")))
    })
    .map_err(|source| LayerError::Pack { layer: description.clone(), source })?;
    Ok(PlannedLayer { spec: LayerSpec { key, description, entries }, role, packages })
}

fn describe(role: &LayerRole, packages: &[LayerPackage]) -> String {
    let head = match role {
        LayerRole::Family { name, part, parts } if *parts > 1 => format!("family {name} (part {part} of {parts})"),
        LayerRole::Family { name, .. } => format!("family {name}"),
        LayerRole::Dependencies { part, parts } if *parts > 1 => format!("dependencies (part {part} of {parts})"),
        LayerRole::Dependencies { .. } => "dependencies".to_owned(),
        LayerRole::Venvs => "venvs".to_owned(),
    };
    let unique: BTreeSet<String> = packages.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
    let mut env_names: Vec<&str> = Vec::new();
    for p in packages {
        if !env_names.contains(&p.env.as_str()) {
            env_names.push(&p.env);
        }
    }
    let label = if env_names.len() == 1 { "env" } else { "envs" };
    format!("{head}: {} [{label} {}]", unique.into_iter().collect::<Vec<_>>().join(", "), env_names.join(", "))
}
