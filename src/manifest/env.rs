//! `[envs.NAME]`, `[image] env-root` / `default-env` and `[layers] families`: the Python
//! environments an image holds, validated into [`EnvSpec`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::{ManifestError, Validator};
use crate::layer::LayerPath;

/// Where envs live in the image unless `[image] env-root` says otherwise.
pub const DEFAULT_ENV_ROOT: &str = "/opt/galley/envs";

/// The package index used when an env names none.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// The name of an env: lowercase letters, digits, `-` and `_`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvName(String);

impl EnvName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EnvName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("`{s}` is not an env name: use up to 64 lowercase letters, digits, `-` and `_`, starting with a letter or digit"))
        }
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

crate::serde_via_str!(EnvName);

/// A Python version as `major.minor` or `major.minor.patch` (`3.11`, `3.11.2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PythonVersion {
    pub major: u8,
    pub minor: u8,
    pub patch: Option<u16>,
}

impl PythonVersion {
    /// `(major, minor)`: what decides wheel compatibility.
    pub fn minor_version(&self) -> (u8, u8) {
        (self.major, self.minor)
    }
}

impl FromStr for PythonVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a Python version like \"3.11\" or \"3.11.4\"");
        let mut parts = s.split('.');
        let major: u8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: u8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let patch = parts.next().map(|p| p.parse::<u16>().map_err(|_| bad())).transpose()?;
        if parts.next().is_some() || major < 3 {
            return Err(bad());
        }
        Ok(Self { major, minor, patch })
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(patch) = self.patch {
            write!(f, ".{patch}")?;
        }
        Ok(())
    }
}

crate::serde_via_str!(PythonVersion);

/// A PEP 508 dependency specifier, kept as written (trimmed) once it parses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement(String);

impl Requirement {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Requirement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(text)
            .map(|_| Self(text.to_owned()))
            .map_err(|e| format!("`{text}` is not a PEP 508 requirement: {}", e.message))
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

crate::serde_via_str!(Requirement);

/// The URL of a package index (PEP 503 / PEP 691 simple API), without a trailing `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexUrl(String);

impl IndexUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// PyPI's simple API, the default index.
    pub fn pypi() -> Self {
        Self(DEFAULT_INDEX.to_owned())
    }
}

impl FromStr for IndexUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = url::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!("`{s}` is not an http(s) index URL such as \"{DEFAULT_INDEX}\""));
        }
        Ok(Self(s.trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for IndexUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

crate::serde_via_str!(IndexUrl);

/// Where an env's packages come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvSource {
    /// PEP 508 requirements, resolved by uv (with the env's constraints and indexes).
    Requirements(Vec<Requirement>),
    /// An existing PEP 751 `pylock.toml` that already names every wheel.
    Pylock(PathBuf),
    /// A requirements file with `name==version --hash=sha256:...` lines.
    RequirementsFile(PathBuf),
}

/// One validated `[envs.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvSpec {
    pub name: EnvName,
    pub source: EnvSource,
    /// A constraints file (only with `requirements`).
    pub constraints: Option<PathBuf>,
    /// The main index; PyPI when absent.
    pub index: Option<IndexUrl>,
    pub extra_index: Vec<IndexUrl>,
    /// The Python version to resolve for; else the base image's interpreter decides.
    pub python: Option<PythonVersion>,
    /// `[envs.NAME.check] imports`: modules the doctor proves importable.
    pub check_imports: Vec<String>,
}

impl EnvSpec {
    /// The index to use: the env's, else PyPI.
    pub fn index_url(&self) -> IndexUrl {
        self.index.clone().unwrap_or_else(IndexUrl::pypi)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawEnv {
    requirements: Option<Vec<String>>,
    constraints: Option<String>,
    index: Option<String>,
    #[serde(default)]
    extra_index: Vec<String>,
    python: Option<String>,
    pylock: Option<String>,
    requirements_file: Option<String>,
    check: Option<RawCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCheck {
    #[serde(default)]
    imports: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLayers {
    #[serde(default, deserialize_with = "ordered_families")]
    families: Vec<(String, Vec<String>)>,
}

/// Families keep the order they are written in: the planner tries them in that order.
fn ordered_families<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, Vec<String>)>, D::Error> {
    struct Families;
    impl<'de> serde::de::Visitor<'de> for Families {
        type Value = Vec<(String, Vec<String>)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of family name = [\"glob\", ...]")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Families)
}

/// What `[image]` says about envs, before the envs are known.
pub(super) struct RawEnvImage {
    pub env_root: Option<String>,
    pub default_env: Option<String>,
}

/// The env-related parts of a validated manifest.
pub(super) struct Envs {
    pub envs: BTreeMap<EnvName, EnvSpec>,
    pub env_root: LayerPath,
    pub default_env: Option<EnvName>,
    pub families: Vec<(String, Vec<String>)>,
}

impl Validator<'_> {
    pub(super) fn envs(
        &self,
        raw: BTreeMap<String, RawEnv>,
        image: RawEnvImage,
        layers: RawLayers,
    ) -> Result<Envs, ManifestError> {
        let mut envs = BTreeMap::new();
        for (name, raw_env) in raw {
            let env_name: EnvName = name.parse().map_err(|e: String| self.invalid(format!("[envs.{name}]"), e))?;
            let spec = self.env(env_name.clone(), raw_env)?;
            envs.insert(env_name, spec);
        }
        let root_text = image.env_root.unwrap_or_else(|| DEFAULT_ENV_ROOT.to_owned());
        let env_root = LayerPath::new(&root_text)
            .ok()
            .filter(|_| root_text.starts_with('/'))
            .ok_or_else(|| self.invalid("[image] `env-root`", format!("`{root_text}` must be an absolute path without `..`, e.g. \"{DEFAULT_ENV_ROOT}\"")))?;
        let names = || envs.keys().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let default_env = match image.default_env {
            Some(text) => {
                let name: EnvName = text.parse().map_err(|e: String| self.invalid("[image] `default-env`", e))?;
                if !envs.contains_key(&name) {
                    let known = if envs.is_empty() { "no [envs.*] is declared".to_owned() } else { format!("the envs are {}", names()) };
                    return Err(self.invalid("[image] `default-env`", format!("`{name}` names no env; {known}")));
                }
                Some(name)
            }
            None if envs.len() > 1 => {
                return Err(self.invalid("[image] `default-env`", format!("several envs are declared ({}); say which one comes first on PATH", names())));
            }
            None => envs.keys().next().cloned(),
        };
        let families = self.families(layers.families)?;
        Ok(Envs { envs, env_root, default_env, families })
    }

    fn env(&self, name: EnvName, raw: RawEnv) -> Result<EnvSpec, ManifestError> {
        let field = |f: &str| format!("[envs.{name}] `{f}`");
        let given = [raw.requirements.is_some(), raw.pylock.is_some(), raw.requirements_file.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(self.invalid(
                format!("[envs.{name}]"),
                "set exactly one of `requirements = [\"numpy\", ...]`, `pylock = \"pylock.toml\"` or `requirements-file = \"requirements.txt\"`",
            ));
        }
        let source = if let Some(requirements) = raw.requirements {
            if requirements.is_empty() {
                return Err(self.invalid(field("requirements"), "the list is empty; name at least one package, e.g. [\"numpy\"]"));
            }
            let mut parsed: Vec<Requirement> =
                requirements.iter().map(|r| r.parse().map_err(|e: String| self.invalid(field("requirements"), e))).collect::<Result<_, _>>()?;
            parsed.sort();
            parsed.dedup();
            EnvSource::Requirements(parsed)
        } else if let Some(pylock) = raw.pylock {
            for (key, set) in [("constraints", raw.constraints.is_some()), ("index", raw.index.is_some()), ("extra-index", !raw.extra_index.is_empty())] {
                if set {
                    return Err(self.invalid(field(key), "does not apply with `pylock`: the pylock.toml already names every wheel"));
                }
            }
            EnvSource::Pylock(self.existing_file(&field("pylock"), &pylock)?)
        } else {
            let file = raw.requirements_file.unwrap_or_default();
            if raw.constraints.is_some() {
                return Err(self.invalid(field("constraints"), "does not apply with `requirements-file`: its lines are already pinned"));
            }
            EnvSource::RequirementsFile(self.existing_file(&field("requirements-file"), &file)?)
        };
        let constraints = raw.constraints.map(|c| self.existing_file(&field("constraints"), &c)).transpose()?;
        let index = raw.index.map(|i| i.parse().map_err(|e: String| self.invalid(field("index"), e))).transpose()?;
        let extra_index =
            raw.extra_index.iter().map(|i| i.parse().map_err(|e: String| self.invalid(field("extra-index"), e))).collect::<Result<_, _>>()?;
        let python = raw.python.map(|p| p.parse().map_err(|e: String| self.invalid(field("python"), e))).transpose()?;
        let check_imports = raw.check.map(|c| c.imports).unwrap_or_default();
        if let Some(bad) = check_imports.iter().find(|m| !is_module_path(m)) {
            return Err(self.invalid(format!("[envs.{name}.check] `imports`"), format!("`{bad}` is not a Python module path like \"numpy\" or \"torch.cuda\"")));
        }
        Ok(EnvSpec { name, source, constraints, index, extra_index, python, check_imports })
    }

    fn existing_file(&self, field: &str, rel: &str) -> Result<PathBuf, ManifestError> {
        let path = self.existing_path(field, rel)?;
        if !path.is_file() {
            return Err(self.invalid(field, format!("`{rel}` is not a file ({})", path.display())));
        }
        Ok(path)
    }

    fn families(&self, raw: Vec<(String, Vec<String>)>) -> Result<Vec<(String, Vec<String>)>, ManifestError> {
        for (name, globs) in &raw {
            let field = format!("[layers] `families.{name}`");
            let word = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !word {
                return Err(self.invalid("[layers] `families`", format!("`{name}` is not a family name: use letters, digits, `-` and `_`")));
            }
            if globs.is_empty() {
                return Err(self.invalid(field, "list at least one package glob, e.g. [\"torch\", \"torch*\"]"));
            }
            for glob in globs {
                globset::Glob::new(glob).map_err(|e| self.invalid(field.clone(), format!("`{glob}`: {e}")))?;
            }
        }
        Ok(raw)
    }
}

/// `numpy`, `torch.cuda`, `_private`: dotted Python identifiers (ASCII).
fn is_module_path(s: &str) -> bool {
    s.split('.').all(|part| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use std::path::Path;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rootfs.tar"), b"").unwrap();
        std::fs::write(dir.path().join("constraints.txt"), b"numpy<2\n").unwrap();
        std::fs::write(dir.path().join("pylock.toml"), b"lock-version = \"1.0\"\n").unwrap();
        Manifest::parse(text, Path::new("galley.toml"), dir.path())
    }

    const HEAD: &str = "[image]\nname = \"hello\"\n[base]\nrootfs = \"rootfs.tar\"\n";

    fn err(text: &str) -> String {
        parse(&format!("{HEAD}{text}")).unwrap_err().to_string()
    }

    #[test]
    fn manifests_without_envs_keep_working() {
        let m = parse(HEAD).unwrap();
        assert!(m.envs.is_empty());
        assert_eq!(m.image.default_env, None);
        assert_eq!(m.image.env_root.to_string(), DEFAULT_ENV_ROOT);
        assert!(m.families.is_empty());
    }

    #[test]
    fn a_full_env_is_validated_into_an_env_spec() {
        let m = parse(&format!(
            "{HEAD}[envs.core]\nrequirements = [\"soundfile\", \"numpy>=1.24,<2\", \"numpy>=1.24,<2\"]\nconstraints = \"constraints.txt\"\n\
             index = \"https://download.pytorch.org/whl/cpu/\"\nextra-index = [\"https://pypi.org/simple\"]\npython = \"3.11\"\n\
             [envs.core.check]\nimports = [\"numpy\", \"soundfile\"]\n"
        ))
        .unwrap();
        let core = &m.envs[&"core".parse::<EnvName>().unwrap()];
        let EnvSource::Requirements(reqs) = &core.source else { panic!("{:?}", core.source) };
        assert_eq!(reqs.iter().map(Requirement::as_str).collect::<Vec<_>>(), ["numpy>=1.24,<2", "soundfile"]);
        assert!(core.constraints.as_ref().unwrap().ends_with("constraints.txt"));
        assert_eq!(core.index_url().as_str(), "https://download.pytorch.org/whl/cpu");
        assert_eq!(core.extra_index, vec![IndexUrl::pypi()]);
        assert_eq!(core.python, Some(PythonVersion { major: 3, minor: 11, patch: None }));
        assert_eq!(core.check_imports, ["numpy", "soundfile"]);
        assert_eq!(m.image.default_env.as_ref().map(EnvName::as_str), Some("core"));
    }

    #[test]
    fn env_errors_name_the_field() {
        let cases = [
            ("[envs.core]\nrequirements = []\n", "[envs.core] `requirements`: the list is empty"),
            ("[envs.core]\nrequirements = [\"numpy>=>1\"]\n", "[envs.core] `requirements`: `numpy>=>1` is not a PEP 508 requirement"),
            ("[envs.core]\nrequirements = [\"x\"]\nconstraints = \"nope.txt\"\n", "[envs.core] `constraints`: `nope.txt` does not exist"),
            ("[envs.core]\nrequirements = [\"x\"]\nindex = \"ftp://x\"\n", "[envs.core] `index`: `ftp://x` is not an http(s) index URL"),
            ("[envs.core]\nrequirements = [\"x\"]\npython = \"three\"\n", "[envs.core] `python`: `three` is not a Python version"),
            ("[envs.core]\n", "[envs.core]: set exactly one of"),
            ("[envs.core]\nrequirements = [\"x\"]\npylock = \"pylock.toml\"\n", "[envs.core]: set exactly one of"),
            ("[envs.core]\npylock = \"pylock.toml\"\nindex = \"https://x.org\"\n", "[envs.core] `index`: does not apply with `pylock`"),
            ("[envs.Core]\nrequirements = [\"x\"]\n", "[envs.Core]: `Core` is not an env name"),
            ("[envs.core]\nrequirements = [\"x\"]\n[envs.core.check]\nimports = [\"1x\"]\n", "[envs.core.check] `imports`: `1x`"),
            ("[envs.a]\nrequirements = [\"x\"]\n[envs.b]\nrequirements = [\"y\"]\n", "[image] `default-env`: several envs are declared (`a`, `b`)"),
            ("[layers]\nfamilies = { torch = [] }\n", "[layers] `families.torch`: list at least one package glob"),
            ("[layers]\nfamilies = { torch = [\"torch[\"] }\n", "[layers] `families.torch`: `torch[`"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "{text}\n  got:  {got}\n  want: {want}");
        }
        let got = parse(&HEAD.replace("[base]", "default-env = \"gpu\"\n[base]")).unwrap_err().to_string();
        assert!(got.contains("[image] `default-env`: `gpu` names no env; no [envs.*] is declared"), "{got}");
        let got = parse(&HEAD.replace("[base]", "env-root = \"opt/envs\"\n[base]")).unwrap_err().to_string();
        assert!(got.contains("[image] `env-root`: `opt/envs` must be an absolute path"), "{got}");
    }

    #[test]
    fn unknown_env_keys_suggest_the_closest_key() {
        let got = err("[envs.core]\nrequirement = [\"x\"]\n");
        assert!(got.contains("unknown field `requirement`") && got.ends_with("did you mean `requirements`?"), "{got}");
        let got = err("[envs.core]\nrequirements = [\"x\"]\nextra-indexes = [\"https://x.org\"]\n");
        assert!(got.ends_with("did you mean `extra-index`?"), "{got}");
    }

    #[test]
    fn several_envs_with_a_default_and_families_in_written_order() {
        let m = parse(&format!(
            "{}[envs.core]\nrequirements = [\"x\"]\n[envs.asr]\npylock = \"pylock.toml\"\n[layers]\nfamilies = {{ zeta = [\"z*\"], alpha = [\"torch\", \"torch*\"] }}\n",
            HEAD.replace("[base]", "default-env = \"core\"\nenv-root = \"/opt/app/envs\"\n[base]")
        ))
        .unwrap();
        assert_eq!(m.envs.keys().map(EnvName::as_str).collect::<Vec<_>>(), ["asr", "core"]);
        assert_eq!(m.image.default_env.unwrap().as_str(), "core");
        assert_eq!(m.image.env_root.to_string(), "/opt/app/envs");
        let names: Vec<&str> = m.families.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert!(matches!(m.envs[&"asr".parse::<EnvName>().unwrap()].source, EnvSource::Pylock(_)));
    }

    #[test]
    fn newtypes_round_trip() {
        for s in ["3.11", "3.11.4", "3.12.0"] {
            assert_eq!(s.parse::<PythonVersion>().unwrap().to_string(), s);
        }
        for bad in ["3", "2.7", "3.x", "3.11.2.1", ""] {
            assert!(bad.parse::<PythonVersion>().is_err(), "{bad}");
        }
        for s in ["core", "asr-2", "a_b", "0x"] {
            assert_eq!(s.parse::<EnvName>().unwrap().to_string(), s);
        }
        for bad in ["", "Core", "-x", "a b", "a.b"] {
            assert!(bad.parse::<EnvName>().is_err(), "{bad}");
        }
        let r: Requirement = " numpy[extra]>=1.24 ; python_version < '3.12' ".parse().unwrap();
        assert_eq!(r.to_string(), "numpy[extra]>=1.24 ; python_version < '3.12'");
        assert_eq!("https://pypi.org/simple/".parse::<IndexUrl>().unwrap().to_string(), "https://pypi.org/simple");
        let json = serde_json::to_string(&"3.11.2".parse::<PythonVersion>().unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<PythonVersion>(&json).unwrap().to_string(), "3.11.2");
        assert!(serde_json::from_str::<EnvName>("\"Bad\"").is_err());
    }
}
