//! Envs from a hashed requirements file (`name==version --hash=sha256:...`, as written
//! by `pip-compile --generate-hashes` or `uv pip compile --generate-hashes`): each pin's
//! wheels are found on the env's indexes through the PEP 691 JSON simple API, by hash.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use pep508_rs::pep440_rs::{Operator, Version};
use pep508_rs::{PackageName, VersionOrUrl};
use rayon::prelude::*;
use serde::Deserialize;

use super::tags::Target;
use crate::install::WheelFilename;
use super::{LockError, Package, WheelChoice};
use crate::http::{self, Attempt};
use crate::manifest::{EnvSpec, IndexUrl};
use crate::oci::Digest;

/// One pinned line of the file.
#[derive(Debug, PartialEq, Eq)]
struct Pin {
    line: usize,
    name: PackageName,
    version: Version,
    sha256: BTreeSet<String>,
}

/// A project page of the PEP 691 JSON simple API.
#[derive(Deserialize)]
struct ProjectPage {
    files: Vec<ProjectFile>,
}

#[derive(Deserialize)]
struct ProjectFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    #[serde(default)]
    size: Option<u64>,
}

const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";

/// The packages a hashed requirements file pins for `target`, with the wheels of each
/// pin found on the env's indexes.
pub(super) fn packages(path: &Path, spec: &EnvSpec, target: &Target, agent: &ureq::Agent) -> Result<Vec<Package>, LockError> {
    let source = |message: String| LockError::Source { env: spec.name.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| LockError::Read { path: path.to_owned(), source: e })?;
    let pins = parse(&text, &path.display().to_string(), target).map_err(source)?;
    let indexes: Vec<IndexUrl> = std::iter::once(spec.index_url()).chain(spec.extra_index.iter().cloned()).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(8).build().map_err(|e| source(format!("cannot start lookups: {e}")))?;
    pool.install(|| pins.par_iter().map(|pin| lookup(pin, &indexes, spec, path, agent)).collect())
}

/// Parses the file's lines, keeping the pins whose markers hold for `target`.
fn parse(text: &str, origin: &str, target: &Target) -> Result<Vec<Pin>, String> {
    let env = target.marker_environment()?;
    let mut pins = Vec::new();
    let mut logical = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start = i + 1;
        }
        let line = strip_comment(raw);
        if let Some(continued) = line.strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let whole = std::mem::take(&mut logical);
        if let Some(pin) = parse_line(whole.trim(), start, origin, &env)? {
            pins.push(pin);
        }
    }
    Ok(pins)
}

/// A `#` starts a comment at the start of a line or after whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let cut = (0..bytes.len()).find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()));
    cut.map_or(line, |i| &line[..i])
}

fn parse_line(line: &str, number: usize, origin: &str, env: &pep508_rs::MarkerEnvironment) -> Result<Option<Pin>, String> {
    if line.is_empty() {
        return Ok(None);
    }
    let at = |message: String| format!("{origin} line {number}: {message}");
    if line.starts_with('-') {
        let option = line.split_whitespace().next().unwrap_or(line);
        return Err(at(format!("option `{option}` is not supported here; set `index` / `extra-index` in galley.toml and list pinned, hashed requirements")));
    }
    let mut requirement = Vec::new();
    let mut hashes = BTreeSet::new();
    let mut tokens = line.split_whitespace();
    while let Some(token) = tokens.next() {
        let hash = match token.strip_prefix("--hash") {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
            Some("") => tokens.next().map(str::to_owned),
            _ => None,
        };
        match hash {
            Some(h) => {
                if let Some(hex) = h.strip_prefix("sha256:") {
                    hashes.insert(hex.to_ascii_lowercase());
                }
            }
            None => requirement.push(token),
        }
    }
    let text = requirement.join(" ");
    let parsed = pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(&text).map_err(|e| at(format!("`{text}`: {}", e.message)))?;
    if !parsed.marker.evaluate(env, &[]) {
        return Ok(None);
    }
    let name = parsed.name.clone();
    let pinned = match &parsed.version_or_url {
        Some(VersionOrUrl::VersionSpecifier(specifiers)) if specifiers.len() == 1 => {
            let spec = specifiers.iter().next().filter(|s| matches!(s.operator(), Operator::Equal | Operator::ExactEqual));
            spec.map(|s| s.version().clone())
        }
        _ => None,
    };
    let version = pinned.ok_or_else(|| at(format!("`{text}` is not pinned; write `{name}==VERSION --hash=sha256:...`")))?;
    if hashes.is_empty() {
        return Err(at(format!("{name}=={version} has no --hash=sha256:...; galley finds and verifies wheels by their hashes")));
    }
    Ok(Some(Pin { line: number, name, version, sha256: hashes }))
}

/// Finds the files of `pin` on the indexes, first index first, keeping those whose
/// sha256 the file lists.
fn lookup(pin: &Pin, indexes: &[IndexUrl], spec: &EnvSpec, origin: &Path, agent: &ureq::Agent) -> Result<Package, LockError> {
    let mut matched = Vec::new();
    let mut sdist = false;
    for index in indexes {
        let page_url = format!("{}/{}/", index.as_str(), pin.name);
        let Some(page) = fetch_page(&page_url, agent).map_err(|message| LockError::Index {
            env: spec.name.clone(),
            package: pin.name.to_string(),
            index: index.clone(),
            message,
        })?
        else {
            continue;
        };
        for file in page.files {
            let Some(hex) = file.hashes.get("sha256").map(|h| h.to_ascii_lowercase()).filter(|h| pin.sha256.contains(h)) else {
                continue;
            };
            let Ok(filename) = WheelFilename::from_str(&file.filename) else {
                sdist = true;
                continue;
            };
            let url = url::Url::parse(&page_url).and_then(|base| base.join(&file.url)).map(String::from).unwrap_or(file.url);
            if let Ok(sha256) = Digest::from_hex(&hex) {
                matched.push(WheelChoice { filename, url, sha256, size: file.size });
            }
        }
        if !matched.is_empty() || sdist {
            break;
        }
    }
    if matched.is_empty() && !sdist {
        let names = indexes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        return Err(LockError::Source {
            env: spec.name.clone(),
            message: format!(
                "{} line {}: no file of {} {} on {names} has one of the listed sha256 hashes",
                origin.display(),
                pin.line,
                pin.name,
                pin.version
            ),
        });
    }
    Ok(Package { name: pin.name.clone(), version: pin.version.clone(), sdist_only: matched.is_empty(), wheels: matched })
}

/// GETs a project page; `None` when the index does not have the project.
fn fetch_page(url: &str, agent: &ureq::Agent) -> Result<Option<ProjectPage>, String> {
    http::retry(4, |_| {
        let response = match agent.get(url).header("Accept", SIMPLE_JSON).call() {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("{url}: {e}")),
        };
        let status = response.status().as_u16();
        if status == 404 {
            return Attempt::Done(None);
        }
        if status != 200 {
            let message = format!("{url} answered HTTP {status}");
            return if http::is_transient_status(status) { Attempt::Retry(message) } else { Attempt::Fail(message) };
        }
        let json = response.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
        if !json {
            return Attempt::Fail(format!("{url} does not serve the PEP 691 JSON simple API ({SIMPLE_JSON})"));
        }
        let mut body = String::new();
        if let Err(e) = response.into_body().into_reader().take(256 << 20).read_to_string(&mut body) {
            return Attempt::Retry(format!("{url}: {e}"));
        }
        match serde_json::from_str::<ProjectPage>(&body) {
            Ok(page) => Attempt::Done(Some(page)),
            Err(e) => Attempt::Fail(format!("{url} sent a project page galley cannot read: {e}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target { python: "3.11.2".parse().unwrap(), platform: "x86_64-manylinux_2_36".parse().unwrap() }
    }

    #[test]
    fn pins_hashes_markers_and_continuations() {
        let text = "# generated\n\
            numpy==1.26.4 \\\n    --hash=sha256:AAAA \\\n    --hash=sha256:bbbb\n\
            pywin32==306 ; sys_platform == 'win32' --hash=sha256:cccc\n\
            Typing_Extensions==4.16.0 --hash sha256:dddd  # via x\n";
        let pins = parse(text, "req.txt", &target()).unwrap();
        assert_eq!(pins.len(), 2);
        assert_eq!((pins[0].line, pins[0].name.as_ref(), pins[0].version.to_string()), (2, "numpy", "1.26.4".to_owned()));
        assert_eq!(pins[0].sha256, BTreeSet::from(["aaaa".to_owned(), "bbbb".to_owned()]));
        assert_eq!(pins[1].name.as_ref(), "typing-extensions");
        assert_eq!(pins[1].sha256, BTreeSet::from(["dddd".to_owned()]));
    }

    #[test]
    fn unpinned_unhashed_and_options_are_rejected_with_the_line() {
        let cases = [
            ("numpy>=1 --hash=sha256:aa\n", "req.txt line 1: `numpy>=1` is not pinned"),
            ("\nnumpy==1.26.4\n", "req.txt line 2: numpy==1.26.4 has no --hash=sha256"),
            ("-i https://x.org/simple\n", "req.txt line 1: option `-i` is not supported"),
            ("numpy===>1 --hash=sha256:aa\n", "req.txt line 1: `numpy===>1`"),
        ];
        for (text, want) in cases {
            let err = parse(text, "req.txt", &target()).unwrap_err();
            assert!(err.contains(want), "{text}\n  got:  {err}\n  want: {want}");
        }
    }
}
