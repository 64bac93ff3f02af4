//! Registry credentials and challenges: `WWW-Authenticate` parsing, docker's
//! `config.json` (`auths`, `credsStore`, `credHelpers`), and token scopes.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::RegistryError;
use super::reference::DOCKER_HUB;

/// A way to prove who we are to one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the token service.
    IdentityToken { token: String },
    /// A bearer token sent as is (docker's `registrytoken`).
    RegistryToken { token: String },
}

impl Credential {
    /// Who this credential speaks for, for messages (never the secret).
    pub fn who(&self) -> String {
        match self {
            Self::Basic { username, .. } => format!("user `{username}`"),
            Self::IdentityToken { .. } => "an identity token".to_owned(),
            Self::RegistryToken { .. } => "a registry token".to_owned(),
        }
    }

    pub(crate) fn basic_header(username: &str, password: &str) -> String {
        format!("Basic {}", BASE64.encode(format!("{username}:{password}")))
    }
}

// Secrets never reach logs or error messages through Debug.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, secret redacted)", self.who())
    }
}

/// `repository:<name>:<actions>`, as token services and challenges write scopes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub repository: String,
    /// `pull` or `pull,push`.
    pub actions: &'static str,
}

impl Scope {
    pub fn pull(repository: &str) -> Self {
        Self { repository: repository.to_owned(), actions: "pull" }
    }

    pub fn push(repository: &str) -> Self {
        Self { repository: repository.to_owned(), actions: "pull,push" }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "repository:{}:{}", self.repository, self.actions)
    }
}

/// What a registry asked for in `WWW-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String>, error: Option<String> },
}

impl Challenge {
    /// Parses one `WWW-Authenticate` value; None for schemes galley does not speak.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
        let params = parse_params(rest);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Self::Basic),
            "bearer" => Some(Self::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
                error: params.get("error").cloned(),
            }),
            _ => None,
        }
    }
}

/// `key="quoted, with \" escapes",key2=token` into a map with lowercase keys.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    params
}

/// docker's `config.json`, as far as credentials go.
#[derive(Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(skip)]
    path: PathBuf,
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(redacted)")
    }
}

/// What a credential helper prints for `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
    }

    /// Reads the config at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(RegistryError::Io { path: path.to_owned(), source }),
        };
        let mut config: Self = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::DockerConfig { path: path.to_owned(), why: format!("it is not valid JSON ({e})") })?;
        config.path = path.to_owned();
        Ok(config)
    }

    /// The credential for `registry` (as references name it): its credential helper
    /// (`credHelpers`, else `credsStore`) first, then `auths`.
    pub fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let helper = self.cred_helpers.iter().find(|(k, _)| normalize_key(k) == registry).map(|(_, v)| v).or(self.creds_store.as_ref());
        if let Some(helper) = helper.filter(|h| !h.is_empty())
            && let Some(credential) = run_helper(helper, registry)?
        {
            return Ok(Some(credential));
        }
        let Some(entry) = self.auths.iter().find(|(k, _)| normalize_key(k) == registry).map(|(_, v)| v) else {
            return Ok(None);
        };
        if let Some(token) = entry.registrytoken.clone().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::RegistryToken { token }));
        }
        if let Some(token) = entry.identitytoken.clone().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::IdentityToken { token }));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |why: &str| RegistryError::DockerConfig {
                path: self.path.clone(),
                why: format!("auths.\"{registry}\".auth {why}; run `docker login {registry}` again"),
            };
            let decoded = BASE64.decode(auth.trim()).map_err(|_| bad("is not base64"))?;
            let text = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8 text"))?;
            let (username, password) = text.split_once(':').ok_or_else(|| bad("is not `user:password` in base64"))?;
            return Ok(Some(Credential::Basic { username: username.to_owned(), password: password.to_owned() }));
        }
        Ok(match (&entry.username, &entry.password) {
            (Some(u), Some(p)) => Some(Credential::Basic { username: u.clone(), password: p.clone() }),
            _ => None,
        })
    }
}

/// Keys of `auths` are written many ways (`https://index.docker.io/v1/`, `ghcr.io`,
/// `http://host:5000`): reduce them to the registry as references name it.
fn normalize_key(key: &str) -> &str {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        h => h,
    }
}

/// Runs `docker-credential-<helper> get` with the server URL docker would send.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credential>, RegistryError> {
    let fail = |why: String| RegistryError::CredentialHelper { helper: helper.to_owned(), registry: registry.to_owned(), why };
    let server = if registry == DOCKER_HUB { "https://index.docker.io/v1/".to_owned() } else { registry.to_owned() };
    let program = format!("docker-credential-{helper}");
    let mut child = match Command::new(&program).arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!("{program} is not on PATH; install it or remove the helper from docker's config.json")));
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // The helpers' protocol answers a missing entry this way; anything else is a failure.
        let message = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        if message.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("it exited with {}: {}", output.status, message.trim())));
    }
    let answer: HelperAnswer =
        serde_json::from_str(stdout.trim()).map_err(|_| fail("its answer is not the JSON the helper protocol defines".to_owned()))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == "<token>" {
        Credential::IdentityToken { token: answer.secret }
    } else {
        Credential::Basic { username: answer.username, password: answer.secret }
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn challenges_are_parsed() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/python:pull".into()),
                error: None,
            })
        );
        let c = Challenge::parse(r#"Bearer realm="https://ghcr.io/token", service="ghcr.io", error="insufficient_scope",scope="a:b,c""#);
        let Some(Challenge::Bearer { error, scope, .. }) = c else { panic!("{c:?}") };
        assert_eq!((error.as_deref(), scope.as_deref()), (Some("insufficient_scope"), Some("a:b,c")));
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None, "a bearer challenge needs a realm");
    }

    fn config(json: &str) -> DockerConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        DockerConfig::load(&path).unwrap()
    }

    #[test]
    fn auths_entries_are_found_by_normalized_host() {
        let auth = BASE64.encode("alice:s3cret:with:colons");
        let c = config(&format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"http://localhost:5000":{{"identitytoken":"refresh"}},
                "ghcr.io":{{"username":"bob","password":"pw"}},"empty.io":{{}}}}}}"#
        ));
        assert_eq!(
            c.credential("docker.io").unwrap(),
            Some(Credential::Basic { username: "alice".into(), password: "s3cret:with:colons".into() })
        );
        assert_eq!(c.credential("localhost:5000").unwrap(), Some(Credential::IdentityToken { token: "refresh".into() }));
        assert_eq!(c.credential("ghcr.io").unwrap(), Some(Credential::Basic { username: "bob".into(), password: "pw".into() }));
        assert_eq!(c.credential("empty.io").unwrap(), None);
        assert_eq!(c.credential("quay.io").unwrap(), None);
        let debug = format!("{:?}", c.credential("docker.io").unwrap());
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn a_malformed_auth_names_the_file_and_registry() {
        let c = config(r#"{"auths":{"ghcr.io":{"auth":"%%%"}}}"#);
        let err = c.credential("ghcr.io").unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("ghcr.io") && err.contains("docker login"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let err = DockerConfig::load(&dir.path().join("config.json")).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        assert!(DockerConfig::load(&dir.path().join("missing.json")).is_ok());
    }

    /// A real helper program speaking the credential-helper protocol on stdin/stdout.
    #[test]
    fn credential_helpers_are_run_with_the_server_url() {
        let bin = tempfile::tempdir().unwrap();
        let log = bin.path().join("asked");
        let script = format!(
            "#!/bin/sh\nread server\necho \"$1 $server\" >> {}\ncase \"$server\" in\n  *index.docker.io*) echo '{{\"ServerURL\":\"x\",\"Username\":\"<token>\",\"Secret\":\"idtok\"}}' ;;\n  reg.example) echo '{{\"Username\":\"carol\",\"Secret\":\"pw2\"}}' ;;\n  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
            log.display()
        );
        let helper = bin.path().join("docker-credential-galleytest");
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
        let found = |c: &DockerConfig, registry: &str| {
            // The helper is looked up on PATH; run it with ours prepended.
            temp_env_path(&path, || c.credential(registry))
        };
        let c = config(r#"{"credsStore":"galleytest","auths":{"other.io":{"auth":"dTpwdw=="}}}"#);
        assert_eq!(found(&c, "docker.io").unwrap(), Some(Credential::IdentityToken { token: "idtok".into() }));
        assert_eq!(found(&c, "reg.example").unwrap(), Some(Credential::Basic { username: "carol".into(), password: "pw2".into() }));
        // Not in the helper: fall back to the auths entry.
        assert_eq!(found(&c, "other.io").unwrap(), Some(Credential::Basic { username: "u".into(), password: "pw".into() }));
        let asked = std::fs::read_to_string(&log).unwrap();
        assert_eq!(asked, "get https://index.docker.io/v1/\nget reg.example\nget other.io\n");

        let c = config(r#"{"credHelpers":{"ghcr.io":"missing-helper"}}"#);
        let err = found(&c, "ghcr.io").unwrap_err().to_string();
        assert!(err.contains("docker-credential-missing-helper is not on PATH"), "{err}");
    }

    /// Tests in this module that change PATH take this lock.
    fn temp_env_path<T>(path: &str, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = std::env::var_os("PATH");
        // SAFETY: std serializes its own environment reads and writes (spawning included),
        // the lock serializes these tests, and the new PATH only prepends a directory.
        unsafe { std::env::set_var("PATH", path) };
        let out = f();
        if let Some(old) = old {
            unsafe { std::env::set_var("PATH", old) };
        }
        out
    }

    #[test]
    fn scopes_print_as_token_services_expect() {
        assert_eq!(Scope::push("team/app").to_string(), "repository:team/app:pull,push");
        assert_eq!(Scope::pull("library/python").to_string(), "repository:library/python:pull");
    }
}
