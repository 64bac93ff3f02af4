//! PEP 751 `pylock.toml`: the subset galley reads (packages with their wheels, URLs,
//! sizes and hashes, markers) and writes (a seed of earlier pins for uv).

use std::collections::BTreeMap;
use std::str::FromStr;

use pep508_rs::pep440_rs::{Version, VersionSpecifiers};
use pep508_rs::{MarkerTree, PackageName};
use serde::{Deserialize, Serialize};

use super::tags::Target;
use crate::install::WheelFilename;
use super::{LockedWheel, Package, WheelChoice};
use crate::oci::Digest;

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct PylockFile {
    lock_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    environments: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requires_python: Option<String>,
    #[serde(default)]
    packages: Vec<PylockPackage>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
struct PylockPackage {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    marker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requires_python: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wheels: Option<Vec<PylockWheel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sdist: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vcs: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    directory: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    archive: Option<toml::Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
struct PylockWheel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

/// Seeds uv with an env's earlier pins: uv keeps a pinned version while it still fits.
pub(super) fn seed(wheels: &[LockedWheel]) -> String {
    let file = PylockFile {
        lock_version: "1.0".into(),
        created_by: Some("galley".into()),
        environments: None,
        requires_python: None,
        packages: wheels
            .iter()
            .map(|w| PylockPackage {
                name: w.name.to_string(),
                version: Some(w.version.to_string()),
                marker: None,
                requires_python: None,
                wheels: Some(vec![PylockWheel {
                    name: Some(w.filename.to_string()),
                    url: Some(w.url.clone()),
                    path: None,
                    size: w.size,
                    hashes: BTreeMap::from([("sha256".to_owned(), w.sha256.hex().to_owned())]),
                }]),
                sdist: None,
                vcs: None,
                directory: None,
                archive: None,
            })
            .collect(),
    };
    toml::to_string(&file).unwrap_or_default()
}

/// Reads a pylock.toml into the packages that apply to `target`. `origin` names the
/// file in messages.
pub(super) fn packages(text: &str, origin: &str, target: &Target) -> Result<Vec<Package>, String> {
    let file: PylockFile = toml::from_str(text).map_err(|e| format!("{origin} is not a valid pylock.toml: {}", e.message().trim()))?;
    if !file.lock_version.starts_with("1.") {
        return Err(format!("{origin} has lock-version {}; galley reads version 1.x (PEP 751)", file.lock_version));
    }
    let env = target.marker_environment()?;
    let applies = |marker: &str| -> Result<bool, String> {
        let tree = MarkerTree::from_str(marker).map_err(|e| format!("{origin}: marker `{marker}`: {}", e.message))?;
        Ok(tree.evaluate(&env, &[]))
    };
    let python = Version::from_str(&target.python.to_string()).map_err(|e| e.to_string())?;
    let fits_python = |spec: &str| -> Result<bool, String> {
        let specifiers = VersionSpecifiers::from_str(spec).map_err(|e| format!("{origin}: requires-python `{spec}`: {e}"))?;
        Ok(specifiers.contains(&python))
    };
    if let Some(environments) = &file.environments {
        let mut any = false;
        for marker in environments {
            any |= applies(marker)?;
        }
        if !any {
            return Err(format!("{origin} is locked for environments {environments:?}, which exclude Python {} on {}", target.python, target.platform));
        }
    }
    if let Some(spec) = &file.requires_python
        && !fits_python(spec)?
    {
        return Err(format!("{origin} requires Python {spec}; the env is for Python {}", target.python));
    }
    let mut out: Vec<Package> = Vec::new();
    for package in file.packages {
        if let Some(marker) = &package.marker
            && !applies(marker)?
        {
            continue;
        }
        let name = PackageName::from_str(&package.name).map_err(|e| format!("{origin}: package `{}`: {e}", package.name))?;
        if let Some(spec) = &package.requires_python
            && !fits_python(spec)?
        {
            return Err(format!("{origin}: {name} requires Python {spec}; the env is for Python {}", target.python));
        }
        let Some(version) = &package.version else {
            let kind = if package.vcs.is_some() {
                "a version control checkout"
            } else if package.directory.is_some() {
                "a local directory"
            } else {
                "an archive without a version"
            };
            return Err(format!("{origin}: {name} comes from {kind}; galley installs wheels from an index or URL only"));
        };
        let version = Version::from_str(version).map_err(|e| format!("{origin}: {name} version `{version}`: {e}"))?;
        if out.iter().any(|p| p.name == name) {
            return Err(format!("{origin} lists {name} twice for Python {} on {}; its markers should tell them apart", target.python, target.platform));
        }
        let mut wheels = Vec::new();
        for wheel in package.wheels.unwrap_or_default() {
            wheels.push(wheel_choice(wheel, &name, origin)?);
        }
        let sdist_only = wheels.is_empty() && (package.sdist.is_some() || package.archive.is_some());
        out.push(Package { name, version, wheels, sdist_only });
    }
    Ok(out)
}

fn wheel_choice(wheel: PylockWheel, package: &PackageName, origin: &str) -> Result<WheelChoice, String> {
    let Some(url) = wheel.url else {
        let path = wheel.path.unwrap_or_default();
        return Err(format!("{origin}: {package} names a local wheel `{path}`; galley fetches wheels by URL only, publish it to an index"));
    };
    let file_name = wheel.name.unwrap_or_else(|| url.rsplit('/').next().unwrap_or_default().split(['#', '?']).next().unwrap_or_default().to_owned());
    let filename: WheelFilename = percent_decode(&file_name).parse().map_err(|e| format!("{origin}: {package}: {e}"))?;
    let sha256 = wheel
        .hashes
        .get("sha256")
        .ok_or_else(|| format!("{origin}: {package} wheel {filename} has no sha256 hash; galley verifies every download"))?;
    let sha256 = Digest::from_hex(&sha256.to_ascii_lowercase()).map_err(|_| format!("{origin}: {package} wheel {filename}: `{sha256}` is not a sha256 hex digest"))?;
    Ok(WheelChoice { filename, url, sha256, size: wheel.size })
}

/// `%2B` → `+` in a URL's file name (local versions such as `2.4.1+cpu`).
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten().and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target { python: "3.11.2".parse().unwrap(), platform: "x86_64-manylinux_2_36".parse().unwrap() }
    }

    const H: &str = "8ba81ae3a89fd5ab3bef8a8eb481fbbe794e806309675a89b4df48b8d31908a8";

    #[test]
    fn markers_pick_the_packages_that_apply() {
        let text = format!(
            r#"lock-version = "1.0"
requires-python = ">=3.9"
[[packages]]
name = "Typing_Extensions"
version = "4.16.0"
wheels = [{{ url = "https://x.org/typing_extensions-4.16.0-py3-none-any.whl", size = 45571, hashes = {{ sha256 = "{H}" }} }}]
[[packages]]
name = "pywin32"
version = "311"
marker = "sys_platform == 'win32'"
[[packages]]
name = "torch"
version = "2.4.1+cpu"
wheels = [{{ url = "https://x.org/whl/cpu/torch-2.4.1%2Bcpu-cp311-cp311-linux_x86_64.whl", hashes = {{ sha256 = "{H}" }} }}]
"#
        );
        let packages = packages(&text, "pylock.toml", &target()).unwrap();
        let names: Vec<String> = packages.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["typing-extensions", "torch"]);
        assert_eq!(packages[0].wheels[0].size, Some(45571));
        assert_eq!(packages[1].wheels[0].filename.version().to_string(), "2.4.1+cpu");
    }

    #[test]
    fn unusable_entries_are_explained() {
        let cases = [
            ("lock-version = \"2.0\"\n", "galley reads version 1.x"),
            ("lock-version = \"1.0\"\nrequires-python = \">=3.12\"\n", "requires Python >=3.12; the env is for Python 3.11.2"),
            ("lock-version = \"1.0\"\nenvironments = [\"sys_platform == 'darwin'\"]\n", "which exclude Python 3.11.2 on x86_64-manylinux_2_36"),
            ("lock-version = \"1.0\"\n[[packages]]\nname = \"x\"\nvcs = { type = \"git\", url = \"https://g/x\" }\n", "x comes from a version control checkout"),
            (
                "lock-version = \"1.0\"\n[[packages]]\nname = \"x\"\nversion = \"1\"\nwheels = [{ path = \"dist/x-1-py3-none-any.whl\", hashes = { sha256 = \"00\" } }]\n",
                "x names a local wheel `dist/x-1-py3-none-any.whl`",
            ),
            (
                "lock-version = \"1.0\"\n[[packages]]\nname = \"x\"\nversion = \"1\"\nwheels = [{ url = \"https://x.org/x-1-py3-none-any.whl\", hashes = { md5 = \"00\" } }]\n",
                "x wheel x-1-py3-none-any.whl has no sha256 hash",
            ),
            ("lock-version = 1\n", "is not a valid pylock.toml"),
        ];
        for (text, want) in cases {
            let err = packages(text, "pylock.toml", &target()).unwrap_err();
            assert!(err.contains(want), "{text}\n  got:  {err}\n  want: {want}");
        }
    }

    #[test]
    fn sdist_only_packages_are_marked() {
        let text = "lock-version = \"1.0\"\n[[packages]]\nname = \"x\"\nversion = \"1\"\nsdist = { url = \"https://x.org/x-1.tar.gz\", hashes = { sha256 = \"00\" } }\n";
        let packages = packages(text, "pylock.toml", &target()).unwrap();
        assert!(packages[0].sdist_only && packages[0].wheels.is_empty());
    }

    #[test]
    fn percent_decoding_keeps_plain_text() {
        assert_eq!(percent_decode("torch-2.4.1%2Bcpu-x.whl"), "torch-2.4.1+cpu-x.whl");
        assert_eq!(percent_decode("a%zz%2"), "a%zz%2");
    }
}
