//! Wheel file names (PEP 427, "File name convention"):
//! `{distribution}-{version}(-{build tag})?-{python tag}-{abi tag}-{platform tag}.whl`,
//! where each tag may be a `.`-separated set (`cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64`).

use std::fmt;
use std::str::FromStr;

use pep440_rs::Version;
use pep508_rs::PackageName;

/// A parsed wheel file name. The distribution name is normalized (PEP 503); `Display`
/// writes the canonical form (`nvidia_cublas_cu12-12.4.5.8-py3-none-manylinux2014_x86_64.whl`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WheelFilename {
    name: PackageName,
    version: Version,
    build: Option<String>,
    python: Vec<String>,
    abi: Vec<String>,
    platform: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{filename}` is not a wheel file name ({why}); expected `name-version-python-abi-platform.whl`")]
pub struct WheelFilenameError {
    pub filename: String,
    pub why: String,
}

impl WheelFilename {
    pub fn name(&self) -> &PackageName {
        &self.name
    }

    pub fn version(&self) -> &Version {
        &self.version
    }

    pub fn build(&self) -> Option<&str> {
        self.build.as_deref()
    }

    /// Python tags, e.g. `["cp311"]` or `["py2", "py3"]`.
    pub fn python_tags(&self) -> &[String] {
        &self.python
    }

    pub fn abi_tags(&self) -> &[String] {
        &self.abi
    }

    pub fn platform_tags(&self) -> &[String] {
        &self.platform
    }

    /// `name version`, for messages.
    pub fn package(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

impl FromStr for WheelFilename {
    type Err = WheelFilenameError;

    fn from_str(filename: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| WheelFilenameError { filename: filename.to_owned(), why: why.to_owned() };
        let stem = filename.strip_suffix(".whl").ok_or_else(|| err("it does not end in `.whl`"))?;
        let parts: Vec<&str> = stem.split('-').collect();
        let (name, version, build, tags) = match parts.as_slice() {
            [name, version, python, abi, platform] => (*name, *version, None, [*python, *abi, *platform]),
            [name, version, build, python, abi, platform] => (*name, *version, Some(*build), [*python, *abi, *platform]),
            _ => return Err(err("it needs 5 or 6 `-`-separated parts")),
        };
        if name.is_empty() {
            return Err(err("the distribution name is empty"));
        }
        let name = PackageName::from_str(name).map_err(|e| err(&e.to_string()))?;
        let version = Version::from_str(version).map_err(|e| err(&e.to_string()))?;
        if let Some(build) = build {
            // PEP 427: the build tag must start with a digit.
            if !build.starts_with(|c: char| c.is_ascii_digit()) || !build.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err("its build tag must start with a digit"));
            }
        }
        let tag_set = |tag: &str| -> Result<Vec<String>, WheelFilenameError> {
            let set: Vec<String> = tag.split('.').map(str::to_owned).collect();
            if set.iter().any(|t| t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
                return Err(err(&format!("tag `{tag}` is malformed")));
            }
            Ok(set)
        };
        Ok(Self {
            name,
            version,
            build: build.map(str::to_owned),
            python: tag_set(tags[0])?,
            abi: tag_set(tags[1])?,
            platform: tag_set(tags[2])?,
        })
    }
}

impl fmt::Display for WheelFilename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.name.as_dist_info_name(), self.version)?;
        if let Some(build) = &self.build {
            write!(f, "-{build}")?;
        }
        write!(f, "-{}-{}-{}.whl", self.python.join("."), self.abi.join("."), self.platform.join("."))
    }
}

impl serde::Serialize for WheelFilename {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for WheelFilename {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tag_sets_and_round_trips() {
        let raw = "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
        let w: WheelFilename = raw.parse().unwrap();
        assert_eq!(w.name().as_ref(), "numpy");
        assert_eq!(w.version().to_string(), "2.1.3");
        assert_eq!(w.platform_tags(), ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]);
        assert_eq!(w.to_string(), raw);
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<WheelFilename>(&json).unwrap(), w);

        let build: WheelFilename = "Foo.Bar-1.0-1_x-py2.py3-none-any.whl".parse().unwrap();
        assert_eq!(build.name().as_ref(), "foo-bar");
        assert_eq!(build.build(), Some("1_x"));
        assert_eq!(build.python_tags(), ["py2", "py3"]);
        assert_eq!(build.to_string(), "foo_bar-1.0-1_x-py2.py3-none-any.whl");
        assert_eq!(build.to_string().parse::<WheelFilename>().unwrap(), build);
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "numpy-2.1.3.tar.gz",
            "numpy-2.1.3-cp311-manylinux.whl",
            "numpy-2.1.3-x-cp311-cp311-any.whl",
            "numpy-not a version-py3-none-any.whl",
            "numpy-1.0-py3--any.whl",
            "-1.0-py3-none-any.whl",
        ] {
            let err = bad.parse::<WheelFilename>().unwrap_err();
            assert_eq!(err.filename, bad);
        }
    }
}
