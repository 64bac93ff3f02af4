//! Dependency families: named groups of packages (name globs) that get their own layers.

use globset::{Glob, GlobSet, GlobSetBuilder};
use pep508_rs::PackageName;

use super::PlanError;

/// The built-in families, in layer order: the most stable and largest first.
pub const DEFAULT_FAMILIES: &[(&str, &[&str])] = &[
    ("nvidia", &["nvidia-*", "cuda-*"]),
    ("triton", &["triton", "pytorch-triton*"]),
    ("torch", &["torch", "torchvision", "torchaudio"]),
    ("xformers", &["xformers"]),
    ("flashinfer", &["flashinfer*"]),
    ("vllm", &["vllm"]),
    ("jax", &["jax", "jaxlib", "jax-cuda*"]),
    ("tensorflow", &["tensorflow*", "tf-keras"]),
];

/// An ordered list of families. A package joins the first family whose patterns match
/// its normalized name; families' layers come in list order.
#[derive(Clone, Debug)]
pub struct Families {
    list: Vec<(String, Vec<String>, GlobSet)>,
}

impl Families {
    /// The defaults, then the user's families (`[layers] families` in the manifest). A user
    /// family named like a default replaces it in place; others are added after the defaults.
    /// Patterns are matched against PEP 503 normalized names (`nvidia_*` means `nvidia-*`).
    pub fn new(user: &[(String, Vec<String>)]) -> Result<Self, PlanError> {
        let mut list: Vec<(String, Vec<String>)> = DEFAULT_FAMILIES
            .iter()
            .map(|(name, patterns)| ((*name).to_owned(), patterns.iter().map(|p| (*p).to_owned()).collect()))
            .collect();
        for (name, patterns) in user {
            match list.iter_mut().find(|(n, _)| n == name) {
                Some(existing) => existing.1.clone_from(patterns),
                None => list.push((name.clone(), patterns.clone())),
            }
        }
        let list = list
            .into_iter()
            .map(|(name, patterns)| {
                let mut set = GlobSetBuilder::new();
                for pattern in &patterns {
                    let normalized = normalize_pattern(pattern);
                    let glob = Glob::new(&normalized).map_err(|e| PlanError::BadPattern {
                        family: name.clone(),
                        pattern: pattern.clone(),
                        why: e.kind().to_string(),
                    })?;
                    set.add(glob);
                }
                let set = set.build().map_err(|e| PlanError::BadPattern { family: name.clone(), pattern: patterns.join(", "), why: e.to_string() })?;
                Ok((name, patterns, set))
            })
            .collect::<Result<_, PlanError>>()?;
        Ok(Self { list })
    }

    /// The position of the family `package` belongs to, if any.
    pub fn family_of(&self, package: &PackageName) -> Option<usize> {
        self.list.iter().position(|(_, _, set)| set.is_match(package.as_ref()))
    }

    pub fn name(&self, index: usize) -> &str {
        self.list.get(index).map_or("", |(name, ..)| name.as_str())
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Names and patterns, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.list.iter().map(|(name, patterns, _)| (name.as_str(), patterns.as_slice()))
    }
}

impl Default for Families {
    fn default() -> Self {
        // The defaults are valid globs; an empty list is the fallback only in theory.
        Self::new(&[]).unwrap_or(Self { list: Vec::new() })
    }
}

/// Lower-cases and maps `_` and `.` to `-`, as PEP 503 does for names.
fn normalize_pattern(pattern: &str) -> String {
    pattern.to_lowercase().replace(['_', '.'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PackageName {
        PackageName::new(s.to_owned()).unwrap()
    }

    #[test]
    fn defaults_cover_the_big_ml_packages() {
        let f = Families::default();
        let family = |n: &str| f.family_of(&name(n)).map(|i| f.name(i).to_owned());
        assert_eq!(family("nvidia_cublas_cu12").as_deref(), Some("nvidia"));
        assert_eq!(family("cuda-bindings").as_deref(), Some("nvidia"));
        assert_eq!(family("torch").as_deref(), Some("torch"));
        assert_eq!(family("TorchAudio").as_deref(), Some("torch"));
        assert_eq!(family("pytorch-triton-rocm").as_deref(), Some("triton"));
        assert_eq!(family("flashinfer-python").as_deref(), Some("flashinfer"));
        assert_eq!(family("jax-cuda12-plugin").as_deref(), Some("jax"));
        assert_eq!(family("tensorflow-cpu").as_deref(), Some("tensorflow"));
        assert_eq!(family("numpy"), None);
        assert_eq!(family("torchmetrics"), None);
    }

    #[test]
    fn user_families_replace_or_extend_the_defaults() {
        let f = Families::new(&[
            ("torch".into(), vec!["torch".into()]),
            ("audio".into(), vec!["torchaudio".into(), "Sound_File".into()]),
        ])
        .unwrap();
        assert_eq!(f.len(), DEFAULT_FAMILIES.len() + 1);
        assert_eq!(f.name(f.family_of(&name("torchaudio")).unwrap()), "audio");
        assert_eq!(f.name(f.family_of(&name("sound.file")).unwrap()), "audio", "patterns are normalized like names");
        assert_eq!(f.family_of(&name("soundfile")), None);
        assert_eq!(f.name(2), "torch", "a replaced family keeps its place");
        let err = Families::new(&[("bad".into(), vec!["[".into()])]).unwrap_err();
        assert!(err.to_string().contains("bad") && err.is_usage(), "{err}");
    }
}
