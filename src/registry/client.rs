//! A blocking client for the OCI distribution API. Each registry gets its own agent
//! (system roots, `--registry-ca` files and docker's `certs.d/<host>/*.crt`), a scheme
//! found by pinging `/v2/` (plain HTTP only for insecure registries, after HTTPS
//! failed), and its authentication: Basic, or Bearer tokens fetched from the
//! challenge's realm and cached per scope. Authorization is attached before a request
//! is sent, so upload bodies stream once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use ureq::SendBody;
use ureq::http::{self as h, Response};

use super::RegistryError;
use super::auth::{Challenge, Credential, DockerConfig, Scope};
use super::reference::api_host;
use crate::http::{self, Attempt, ClientOptions};

/// How galley talks to registries; the CLI fills it from flags and the environment.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// PEM files with CAs trusted for every registry (`--registry-ca`).
    pub ca_files: Vec<PathBuf>,
    /// docker's per-registry CA directory: `<dir>/<host[:port]>/*.crt` are trusted for that registry.
    pub certs_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) that may be spoken to over plain HTTP when HTTPS fails.
    /// `localhost` and 127.0.0.0/8 always may, as with docker.
    pub insecure: Vec<String>,
    /// Credentials given explicitly (flags, environment), by registry; they win over docker's config.
    pub credentials: BTreeMap<String, Credential>,
    /// docker's `config.json`; None reads no file.
    pub docker_config: Option<PathBuf>,
    /// Tries per request when the network or the registry fails transiently.
    pub attempts: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            ca_files: Vec::new(),
            certs_dir: Some(PathBuf::from("/etc/docker/certs.d")),
            insecure: Vec::new(),
            credentials: BTreeMap::new(),
            docker_config: DockerConfig::default_path(),
            attempts: 5,
        }
    }
}

impl RegistryOptions {
    /// Whether plain HTTP is allowed for `registry`: listed by the user, or on loopback
    /// (docker treats 127.0.0.0/8 as insecure by default).
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = match registry.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => registry.split(':').next().unwrap_or(registry),
        };
        let loopback = host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
        loopback || self.insecure.iter().any(|i| i == registry)
    }
}

/// The registry client. Cheap to create; registries are contacted on first use.
pub struct Client {
    options: RegistryOptions,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

/// One registry: where it answers, how to authenticate to it.
pub(crate) struct Host {
    pub(crate) registry: String,
    base: String,
    agent: ureq::Agent,
    credential: Option<Credential>,
    /// Why no credential could be read (a failing helper), for the 401 message.
    credential_problem: Option<String>,
    auth: Mutex<AuthState>,
    attempts: u32,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by their sorted scopes.
    tokens: HashMap<String, (String, Instant)>,
}

/// A request body that can be produced again for a retry.
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`, reporting bytes as they are sent.
    File { path: &'a Path, offset: u64, len: u64, on_bytes: &'a (dyn Fn(u64) + Sync) },
}

pub(crate) struct Call<'a> {
    pub method: &'static str,
    pub url: String,
    pub scopes: &'a [Scope],
    pub headers: Vec<(&'static str, String)>,
    pub body: Body<'a>,
}

impl<'a> Call<'a> {
    pub fn new(method: &'static str, url: String, scopes: &'a [Scope]) -> Self {
        Self { method, url, scopes, headers: Vec::new(), body: Body::Empty }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Body<'a>) -> Self {
        self.body = body;
        self
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorsDocument {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Client {
    pub fn new(options: RegistryOptions) -> Self {
        Self { options, hosts: Mutex::new(HashMap::new()) }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The connection to `registry`, pinging it on first use.
    pub(crate) fn host(&self, registry: &str) -> Result<Arc<Host>, RegistryError> {
        // Held while connecting, so parallel workers ping and authenticate once.
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(host) = hosts.get(registry) {
            return Ok(host.clone());
        }
        let host = Arc::new(self.connect(registry)?);
        hosts.insert(registry.to_owned(), host.clone());
        Ok(host)
    }

    fn connect(&self, registry: &str) -> Result<Host, RegistryError> {
        let mut extra_roots = self.options.ca_files.clone();
        if let Some(dir) = &self.options.certs_dir
            && let Ok(entries) = std::fs::read_dir(dir.join(registry))
        {
            let mut found: Vec<PathBuf> =
                entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "crt")).collect();
            found.sort();
            extra_roots.extend(found);
        }
        let agent = http::agent(&ClientOptions { extra_roots })?;
        let api = api_host(registry);
        let mut host = Host {
            registry: registry.to_owned(),
            base: format!("https://{api}"),
            agent,
            credential: None,
            credential_problem: None,
            auth: Mutex::new(AuthState::default()),
            attempts: self.options.attempts.max(1),
        };
        let insecure = self.options.is_insecure(registry);
        let challenge = http::retry(host.attempts, |_| {
            let https = host.ping(&format!("https://{api}"));
            match https {
                Ok(challenge) => Attempt::Done((format!("https://{api}"), challenge)),
                Err(e) if insecure => match host.ping(&format!("http://{api}")) {
                    Ok(challenge) => Attempt::Done((format!("http://{api}"), challenge)),
                    // Report the HTTPS failure: plain HTTP was only a fallback.
                    Err(_) if e.is_transient() => Attempt::Retry(e),
                    Err(_) => Attempt::Fail(e),
                },
                Err(e) if e.is_transient() => Attempt::Retry(e),
                Err(e) => Attempt::Fail(e),
            }
        });
        let (base, challenge) = challenge?;
        host.base = base;
        if challenge.is_some() {
            match self.credential(registry) {
                Ok(credential) => host.credential = credential,
                Err(problem) => host.credential_problem = Some(problem.to_string()),
            }
        }
        host.auth.get_mut().unwrap_or_else(PoisonError::into_inner).challenge = challenge;
        Ok(host)
    }

    fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(c) = self.options.credentials.get(registry) {
            return Ok(Some(c.clone()));
        }
        match &self.options.docker_config {
            Some(path) => DockerConfig::load(path)?.credential(registry),
            None => Ok(None),
        }
    }
}

impl Host {
    /// Tries per request (at least 1).
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A `Location` header made absolute.
    pub(crate) fn location(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            self.url(location)
        } else {
            self.url(&format!("/{location}"))
        }
    }

    /// `GET /v2/`: Ok(None) when open, Ok(Some(challenge)) when it asks for auth.
    fn ping(&self, base: &str) -> Result<Option<Challenge>, RegistryError> {
        let url = format!("{base}/v2/");
        let request = h::Request::get(&url).body(SendBody::none()).map_err(|e| self.protocol(e.to_string()))?;
        let mut response = self.agent.run(request).map_err(|e| self.transport_error(&url, e))?;
        let status = response.status().as_u16();
        let _ = response.body_mut().with_config().limit(1 << 16).read_to_vec();
        match status {
            200..=299 => Ok(None),
            401 => Ok(www_authenticate(&response)),
            s if http::is_transient_status(s) => {
                Err(RegistryError::Status { registry: self.registry.clone(), method: "GET", path: "/v2/".into(), status, detail: String::new() })
            }
            s => Err(self.protocol(format!("{url} answered HTTP {s}; it does not look like a registry (OCI distribution API)"))),
        }
    }

    fn protocol(&self, why: String) -> RegistryError {
        RegistryError::Protocol { registry: self.registry.clone(), why }
    }

    fn transport_error(&self, url: &str, e: ureq::Error) -> RegistryError {
        let registry = self.registry.clone();
        let detail = e.to_string();
        match e {
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
                RegistryError::Tls { registry, detail }
            }
            // rustls failures reach ureq as invalid-data I/O errors ("invalid peer certificate: ...").
            ureq::Error::Io(ref io) if io.kind() == io::ErrorKind::InvalidData => RegistryError::Tls { registry, detail },
            ureq::Error::HostNotFound => RegistryError::UnknownHost { registry, detail },
            _ => RegistryError::Connection { registry, url: without_query(url), detail },
        }
    }

    /// Sends `call`, authenticating first; a 401 teaches the challenge and the call
    /// is made once more with fresh credentials. Statuses are the caller's to judge.
    pub(crate) fn send(&self, call: &Call<'_>) -> Result<Response<ureq::Body>, RegistryError> {
        let mut retried = false;
        loop {
            let authorization = self.authorization(call.scopes)?;
            let response = self.send_once(call, authorization.as_deref())?;
            if response.status().as_u16() != 401 || retried {
                return Ok(response);
            }
            retried = true;
            let mut state = self.auth.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(challenge) = www_authenticate(&response) {
                state.challenge = Some(challenge);
            }
            state.tokens.remove(&scope_key(call.scopes));
        }
    }

    /// [`Host::send`] with retries and backoff for dropped connections, 5xx and 429.
    pub(crate) fn send_retrying(&self, call: &Call<'_>) -> Result<Response<ureq::Body>, RegistryError> {
        http::retry(self.attempts, |_| match self.send(call) {
            Ok(response) if http::is_transient_status(response.status().as_u16()) => Attempt::Retry(self.refusal(call, response)),
            Ok(response) => Attempt::Done(response),
            Err(e) if e.is_transient() => Attempt::Retry(e),
            Err(e) => Attempt::Fail(e),
        })
    }

    fn send_once(&self, call: &Call<'_>, authorization: Option<&str>) -> Result<Response<ureq::Body>, RegistryError> {
        let mut builder = h::Request::builder().method(call.method).uri(&call.url);
        for (name, value) in &call.headers {
            builder = builder.header(*name, value);
        }
        if let Some(a) = authorization {
            builder = builder.header("Authorization", a);
        }
        let bad = |e: h::Error| self.protocol(format!("cannot build {} {}: {e}", call.method, without_query(&call.url)));
        let result = match &call.body {
            Body::Empty => {
                if matches!(call.method, "PUT" | "POST" | "PATCH") {
                    builder = builder.header("Content-Length", "0");
                }
                self.agent.run(builder.body(SendBody::none()).map_err(bad)?)
            }
            Body::Bytes(bytes) => self.agent.run(builder.body(*bytes).map_err(bad)?),
            Body::File { path, offset, len, on_bytes } => {
                let io_err = |source| RegistryError::Io { path: path.to_path_buf(), source };
                let mut file = File::open(path).map_err(io_err)?;
                file.seek(SeekFrom::Start(*offset)).map_err(io_err)?;
                let mut reader = Counting { inner: io::BufReader::with_capacity(1 << 20, file).take(*len), on_bytes: *on_bytes };
                let request = builder.header("Content-Length", len.to_string()).body(SendBody::from_reader(&mut reader)).map_err(bad)?;
                self.agent.run(request)
            }
        };
        result.map_err(|e| self.transport_error(&call.url, e))
    }

    /// The Authorization header for `scopes`, fetching a token when the cached one is
    /// missing or expired. Holding the lock makes parallel workers share one fetch.
    fn authorization(&self, scopes: &[Scope]) -> Result<Option<String>, RegistryError> {
        let mut state = self.auth.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(challenge) = state.challenge.clone() else { return Ok(None) };
        match (challenge, &self.credential) {
            (Challenge::Basic, Some(Credential::Basic { username, password })) => Ok(Some(Credential::basic_header(username, password))),
            (Challenge::Basic, _) => Ok(None),
            (Challenge::Bearer { .. }, Some(Credential::RegistryToken { token })) => Ok(Some(format!("Bearer {token}"))),
            (Challenge::Bearer { realm, service, .. }, _) => {
                let key = scope_key(scopes);
                if let Some((token, expires)) = state.tokens.get(&key)
                    && *expires > Instant::now()
                {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let (token, lifetime) = self.fetch_token(&realm, service.as_deref(), scopes)?;
                // Renew a little early: a token that expires mid-request fails the request.
                let expires = Instant::now() + lifetime.saturating_sub(Duration::from_secs(10)).max(Duration::from_secs(5));
                state.tokens.insert(key, (token.clone(), expires));
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[Scope]) -> Result<(String, Duration), RegistryError> {
        let scope_list: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        let repository = scopes.first().map(|s| s.repository.clone()).unwrap_or_default();
        let mut response = http::retry(self.attempts, |_| {
            let result = match &self.credential {
                // docker's identity token is an OAuth2 refresh token (distribution's token spec).
                Some(Credential::IdentityToken { token }) => {
                    let mut form = vec![("grant_type", "refresh_token"), ("client_id", "galley"), ("refresh_token", token.as_str())];
                    form.extend(service.map(|s| ("service", s)));
                    let joined = scope_list.join(" ");
                    if !joined.is_empty() {
                        form.push(("scope", &joined));
                    }
                    let body = form.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&");
                    h::Request::post(realm)
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .body(body)
                        .map_err(|e| self.protocol(format!("bad token realm `{realm}`: {e}")))
                        .and_then(|r| self.agent.run(r).map_err(|e| self.transport_error(realm, e)))
                }
                credential => {
                    let mut query: Vec<String> = service.iter().map(|s| format!("service={}", encode(s))).collect();
                    query.extend(scope_list.iter().map(|s| format!("scope={}", encode(s))));
                    let separator = if realm.contains('?') { '&' } else { '?' };
                    let url = if query.is_empty() { realm.to_owned() } else { format!("{realm}{separator}{}", query.join("&")) };
                    let mut builder = h::Request::get(&url);
                    if let Some(Credential::Basic { username, password }) = credential {
                        builder = builder.header("Authorization", Credential::basic_header(username, password));
                    }
                    builder
                        .body(SendBody::none())
                        .map_err(|e| self.protocol(format!("bad token realm `{realm}`: {e}")))
                        .and_then(|r| self.agent.run(r).map_err(|e| self.transport_error(realm, e)))
                }
            };
            match result {
                Ok(r) if http::is_transient_status(r.status().as_u16()) => Attempt::Retry(RegistryError::Status {
                    registry: self.registry.clone(),
                    method: "GET",
                    path: without_query(realm),
                    status: r.status().as_u16(),
                    detail: " (token service)".into(),
                }),
                Ok(r) => Attempt::Done(r),
                Err(e) if e.is_transient() => Attempt::Retry(e),
                Err(e) => Attempt::Fail(e),
            }
        })?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            let why = match &self.credential {
                Some(c) => format!("the token service {} rejected the credentials of {}", without_query(realm), c.who()),
                None => format!("the token service {} refused an anonymous token{}", without_query(realm), self.problem_note()),
            };
            return Err(RegistryError::Unauthorized { registry: self.registry.clone(), repository, why });
        }
        let body = response.body_mut().with_config().limit(1 << 20).read_to_vec().map_err(|e| self.transport_error(realm, e))?;
        if status != 200 {
            return Err(RegistryError::Status {
                registry: self.registry.clone(),
                method: "GET",
                path: without_query(realm),
                status,
                detail: " (token service)".into(),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| self.protocol(format!("the token service {realm} sent malformed JSON ({e})")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.protocol(format!("the token service {realm} sent no token")))?;
        // The token spec's default lifetime is 60 seconds.
        Ok((token, Duration::from_secs(answer.expires_in.unwrap_or(60).max(1))))
    }

    fn problem_note(&self) -> String {
        self.credential_problem.as_ref().map_or_else(String::new, |p| format!(" (no credentials could be read: {p})"))
    }

    /// The error for a response the caller did not expect: 401 and 403 name the
    /// registry and repository; others carry the registry's own message.
    pub(crate) fn refusal(&self, call: &Call<'_>, mut response: Response<ureq::Body>) -> RegistryError {
        let status = response.status().as_u16();
        let challenge = www_authenticate(&response);
        let detail = error_detail(&mut response);
        let (repository, action) =
            call.scopes.first().map_or((String::new(), "pull"), |s| (s.repository.clone(), if s.actions == "pull" { "pull" } else { "push" }));
        let insufficient = matches!(&challenge, Some(Challenge::Bearer { error: Some(e), .. }) if e == "insufficient_scope");
        match status {
            401 if insufficient && self.credential.is_some() => {
                RegistryError::Denied { registry: self.registry.clone(), repository, action, detail }
            }
            401 => {
                let why = match &self.credential {
                    Some(c) => format!("it rejected the credentials of {}{detail}", c.who()),
                    None => format!("it requires credentials and none were found for {}{}{detail}", self.registry, self.problem_note()),
                };
                RegistryError::Unauthorized { registry: self.registry.clone(), repository, why }
            }
            403 => RegistryError::Denied { registry: self.registry.clone(), repository, action, detail },
            _ => RegistryError::Status {
                registry: self.registry.clone(),
                method: call.method,
                path: without_query(&call.url).trim_start_matches(&self.base).to_owned(),
                status,
                detail,
            },
        }
    }
}

/// `: CODE: message; CODE2: message2` from a registry's error document, if any.
pub(crate) fn error_detail(response: &mut Response<ureq::Body>) -> String {
    let Ok(body) = response.body_mut().with_config().limit(1 << 16).read_to_vec() else { return String::new() };
    let entries = serde_json::from_slice::<ErrorsDocument>(&body).map(|d| d.errors).unwrap_or_default();
    let parts: Vec<String> = entries
        .iter()
        .map(|e| if e.message.is_empty() { e.code.clone() } else { format!("{}: {}", e.code, e.message) })
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join("; ")) }
}

/// The first challenge galley can answer, preferring Bearer.
fn www_authenticate(response: &Response<ureq::Body>) -> Option<Challenge> {
    let mut challenges: Vec<Challenge> =
        response.headers().get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok()).filter_map(Challenge::parse).collect();
    challenges.sort_by_key(|c| matches!(c, Challenge::Basic));
    challenges.into_iter().next()
}

fn scope_key(scopes: &[Scope]) -> String {
    let mut names: Vec<String> = scopes.iter().map(ToString::to_string).collect();
    names.sort();
    names.join(" ")
}

/// A URL without its query, which may carry upload state.
pub(crate) fn without_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// Percent-encodes a query component (RFC 3986 unreserved characters pass).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Counts bytes as they are read, for progress.
struct Counting<'a, R> {
    inner: R,
    on_bytes: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}

/// A response header as text.
pub(crate) fn header<'r>(response: &'r Response<ureq::Body>, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_insecure_like_docker() {
        let options = RegistryOptions { insecure: vec!["reg.lan:5000".into(), "other.lan".into()], ..RegistryOptions::default() };
        for yes in ["localhost:5000", "localhost", "127.0.0.1:5000", "127.1.2.3", "reg.lan:5000", "other.lan"] {
            assert!(options.is_insecure(yes), "{yes}");
        }
        for no in ["ghcr.io", "docker.io", "reg.lan:5001", "other.lan:8443", "10.0.0.1:5000", "[::1]:5000", "localhost.example.com"] {
            assert!(!options.is_insecure(no), "{no}");
        }
    }

    #[test]
    fn query_components_are_encoded() {
        assert_eq!(encode("repository:library/python:pull,push"), "repository%3Alibrary%2Fpython%3Apull%2Cpush");
        assert_eq!(without_query("http://x/v2/a/blobs/uploads/1?_state=abc"), "http://x/v2/a/blobs/uploads/1");
    }

    #[test]
    fn an_unreachable_registry_is_a_clear_transient_error() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = Client::new(RegistryOptions { attempts: 1, docker_config: None, ..RegistryOptions::default() });
        let registry = format!("127.0.0.1:{port}");
        let err = client.host(&registry).err().unwrap();
        assert!(matches!(err, RegistryError::Connection { .. }), "{err:?}");
        assert!(err.to_string().contains(&registry), "{err}");
        assert!(!err.is_usage());
    }
}
