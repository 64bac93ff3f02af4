//! Image references as the distribution spec and docker write them:
//! `[registry[:port]/]repository[:tag][@sha256:...]`, with Docker Hub as the default
//! registry and `library/` as the default namespace of one-word Docker Hub names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::oci::{Digest, DigestError};

/// The registry names use when they name none.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("`{input}` is not an image reference: {why}; expected e.g. `ghcr.io/org/app:1.0` or `localhost:5000/app@sha256:...`")]
    Invalid { input: String, why: &'static str },
    #[error("`{input}` is not an image reference: {source}")]
    Digest { input: String, source: DigestError },
    #[error("`{0}` is not a tag: up to 128 of letters, digits, `_`, `.`, `-`, not starting with `.` or `-`")]
    Tag(String),
    #[error("`{0}` names a repository, not a tag or digest; give it without `:tag` or `@digest`")]
    NotARepository(String),
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = s.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if first_ok && s.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ReferenceError::Tag(s.to_owned()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A repository on a registry: `ghcr.io/org/app`, `localhost:5000/app`,
/// `docker.io/library/python`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    registry: String,
    name: String,
}

impl Repository {
    /// The registry as written in references (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path on the registry (`library/python`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host (and port) that serves the registry API.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// Another repository on the same registry.
    pub fn sibling(&self, name: &str) -> Result<Self, ReferenceError> {
        format!("{}/{name}", self.registry).parse()
    }

    fn parse_name(input: &str, name: &str) -> Result<Self, ReferenceError> {
        let invalid = |why| ReferenceError::Invalid { input: input.to_owned(), why };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (registry, path) = match name.split_once('/') {
            // Like docker: the first component names a registry if it looks like a host.
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase()) => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        if !is_registry(&registry) {
            return Err(invalid("its registry is not a host name with an optional port"));
        }
        let path = if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path };
        if !path.split('/').all(is_path_component) {
            return Err(invalid(
                "its repository path must be lowercase letters and digits, separated by `/`, `.`, `_`, `__` or dashes",
            ));
        }
        if registry.len() + 1 + path.len() > 255 {
            return Err(invalid("its name is longer than 255 characters"));
        }
        Ok(Self { registry, name: path })
    }
}

impl FromStr for Repository {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let reference: ImageRef = s.parse()?;
        if reference.tag.is_some() || reference.digest.is_some() {
            return Err(ReferenceError::NotARepository(s.to_owned()));
        }
        Ok(reference.repository)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

/// A repository with a tag, a digest, both, or neither (meaning `latest`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    repository: Repository,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

impl ImageRef {
    pub fn new(repository: Repository, tag: Option<Tag>, digest: Option<Digest>) -> Self {
        Self { repository, tag, digest }
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same reference pinned to `digest` (the tag is kept for readers).
    pub fn pinned(&self, digest: Digest) -> Self {
        Self { digest: Some(digest), ..self.clone() }
    }

    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn api_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why| ReferenceError::Invalid { input: s.to_owned(), why };
        if s.len() > 4096 || s.trim() != s {
            return Err(invalid("it is too long or has surrounding spaces"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                (rest, Some(d.parse::<Digest>().map_err(|source| ReferenceError::Digest { input: s.to_owned(), source })?))
            }
            None => (s, None),
        };
        // A `:` after the last `/` starts the tag; one before it belongs to a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                (&rest[..last_slash + i], Some(tag.parse::<Tag>().map_err(|_| invalid("its tag is not valid"))?))
            }
            None => (rest, None),
        };
        Ok(Self { repository: Repository::parse_name(s, name)?, tag, digest })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_str!(Tag, Repository, ImageRef);

/// The API host of a registry as references name it.
pub(crate) fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB { DOCKER_HUB_API } else { registry }
}

/// `host[:port]`: DNS labels, an IPv4 address, or a bracketed IPv6 address.
fn is_registry(s: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, tail)) = rest.split_once(']') else { return false };
        let port = match tail {
            "" => None,
            t => match t.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
    } else {
        let (host, port) = s.split_once(':').map_or((s, None), |(h, p)| (h, Some(p)));
        let label_ok = |l: &str| {
            !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-')
        };
        (host.split('.').all(label_ok), port)
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn is_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        let valid = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalized() {
        assert_eq!(parse("python").to_string(), "docker.io/library/python");
        assert_eq!(parse("python:3.11-slim").to_string(), "docker.io/library/python:3.11-slim");
        assert_eq!(parse("index.docker.io/user/app").to_string(), "docker.io/user/app");
        assert_eq!(parse("user/app:1").repository().registry(), "docker.io");
        assert_eq!(parse("python").repository().api_host(), "registry-1.docker.io");
        assert_eq!(parse("python").api_reference(), "latest");
    }

    #[test]
    fn registries_with_ports_ips_and_digests() {
        let r = parse("localhost:5000/x");
        assert_eq!((r.repository().registry(), r.repository().name(), r.tag()), ("localhost:5000", "x", None));
        let r = parse("127.0.0.1:5000/team/app:v1.2");
        assert_eq!(r.repository().registry(), "127.0.0.1:5000");
        assert_eq!(r.tag().unwrap().as_str(), "v1.2");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("ghcr.io/org/app:1.0@{digest}"));
        assert_eq!(r.api_reference(), digest);
        assert_eq!(r.tag().unwrap().as_str(), "1.0");
        let r = parse("[::1]:5000/app");
        assert_eq!(r.repository().registry(), "[::1]:5000");
        assert_eq!(parse("localhost/app").repository().registry(), "localhost");
        assert_eq!(parse("Registry/app").repository().registry(), "Registry");
    }

    #[test]
    fn display_round_trips_through_parse_and_serde() {
        let digest = format!("sha256:{}", "0".repeat(64));
        for s in [
            "docker.io/library/python:3.11",
            "ghcr.io/org/sub/app",
            "localhost:5000/a.b_c__d---e/f:T_1",
            &format!("quay.io/x/y@{digest}"),
            &format!("reg.example.com:443/x:tag@{digest}"),
        ] {
            let r = parse(s);
            assert_eq!(r.to_string(), s);
            assert_eq!(parse(&r.to_string()), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ImageRef>(&json).unwrap(), r);
        }
        let repo: Repository = "localhost:5000/x".parse().unwrap();
        assert_eq!(repo.to_string().parse::<Repository>().unwrap(), repo);
        assert_eq!(repo.sibling("y").unwrap().to_string(), "localhost:5000/y");
        let tag: Tag = "v1".parse().unwrap();
        assert_eq!(serde_json::from_str::<Tag>(&serde_json::to_string(&tag).unwrap()).unwrap(), tag);
    }

    #[test]
    fn malformed_references_are_rejected_with_the_input() {
        for bad in [
            "",
            "UPPER",
            "app:",
            "app:-x",
            "a//b",
            "a/-b",
            "host:port/app",
            "x/app@sha256:00",
            "x/app@md5:00",
            "ghcr.io/org/app:with space",
            " app",
            "[zz]:5000/app",
            "app/x..y",
        ] {
            let err = bad.parse::<ImageRef>();
            assert!(err.is_err(), "{bad:?} parsed as {:?}", err.unwrap());
            let message = err.unwrap_err().to_string();
            assert!(message.contains(&format!("`{bad}`")), "{message}");
        }
        assert!(matches!("localhost:5000/x:1".parse::<Repository>(), Err(ReferenceError::NotARepository(_))));
        assert!("a".repeat(129).parse::<Tag>().is_err());
        assert!("_ok".parse::<Tag>().is_ok());
    }
}
