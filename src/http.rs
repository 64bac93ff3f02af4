//! The one HTTP client galley uses (PyPI, package indexes, registries): rustls over the
//! system's trusted roots (honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`), plus any extra
//! PEM roots a caller names, and a retry loop with exponential backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no trusted root certificates were found (system store, SSL_CERT_FILE, SSL_CERT_DIR){}", detail(.0))]
    NoRoots(String),
    #[error("cannot read the CA certificate {}: {source}", path.display())]
    ExtraRoot { path: PathBuf, source: std::io::Error },
}

fn detail(s: &str) -> String {
    if s.is_empty() { String::new() } else { format!(": {s}") }
}

/// Options for [`agent`].
#[derive(Debug, Default, Clone)]
pub struct ClientOptions {
    /// PEM files with extra trusted roots (a private registry's CA).
    pub extra_roots: Vec<PathBuf>,
}

/// Builds an agent that trusts the system roots plus `options.extra_roots`. Statuses are
/// returned, not turned into errors: callers decide what a 401 or a 404 means.
pub fn agent(options: &ClientOptions) -> Result<ureq::Agent, HttpError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots: Vec<Certificate<'static>> =
        loaded.certs.iter().map(|der| Certificate::from_der(der.as_ref()).to_owned()).collect();
    for path in &options.extra_roots {
        roots.extend(read_pem_roots(path)?);
    }
    if roots.is_empty() {
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        return Err(HttpError::NoRoots(errors.join("; ")));
    }
    let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(roots))).build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .timeout_per_write(Some(Duration::from_secs(120)))
        .user_agent(concat!("galley/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

fn read_pem_roots(path: &Path) -> Result<Vec<Certificate<'static>>, HttpError> {
    let pem = std::fs::read(path).map_err(|source| HttpError::ExtraRoot { path: path.to_owned(), source })?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(Result::ok)
        .filter_map(|item| match item {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(HttpError::ExtraRoot {
            path: path.to_owned(),
            source: std::io::Error::other("it holds no PEM certificate"),
        });
    }
    Ok(certs)
}

/// What one attempt of a retried operation concluded.
pub enum Attempt<T, E> {
    Done(T),
    /// A transient failure (connection reset, 5xx, 429): try again after a backoff.
    Retry(E),
    /// A permanent failure: stop now.
    Fail(E),
}

/// Runs `op` up to `attempts` times, sleeping 0.5 s, 1 s, 2 s, ... (at most 8 s)
/// between transient failures. `op` gets the attempt number, from 0.
pub fn retry<T, E>(attempts: u32, mut op: impl FnMut(u32) -> Attempt<T, E>) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        match op(attempt) {
            Attempt::Done(value) => return Ok(value),
            Attempt::Fail(err) => return Err(err),
            Attempt::Retry(err) if attempt + 1 >= attempts => return Err(err),
            Attempt::Retry(_) => {
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(4)))
}

/// Whether an HTTP status is worth retrying.
pub fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_stops_on_success_failure_or_exhaustion() {
        let mut calls = 0;
        let r: Result<u32, &str> = retry(5, |n| {
            calls += 1;
            if n < 1 { Attempt::Retry("flaky") } else { Attempt::Done(n) }
        });
        assert_eq!((r, calls), (Ok(1), 2));
        let r: Result<(), &str> = retry(5, |_| Attempt::Fail("denied"));
        assert_eq!(r, Err("denied"));
        let mut calls = 0;
        let r: Result<(), &str> = retry(2, |_| {
            calls += 1;
            Attempt::Retry("down")
        });
        assert_eq!((r, calls), (Err("down"), 2));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(10), Duration::from_secs(8));
        assert!(is_transient_status(503) && is_transient_status(429) && !is_transient_status(404));
    }

    #[test]
    fn reaches_pypi_through_the_system_roots() {
        let agent = agent(&ClientOptions::default()).unwrap();
        let response = agent.get("https://pypi.org/simple/pip/").header("Accept", "application/vnd.pypi.simple.v1+json").call().unwrap();
        assert_eq!(response.status(), 200);
    }

    #[test]
    fn a_missing_extra_root_is_named() {
        let options = ClientOptions { extra_roots: vec![PathBuf::from("/nonexistent/ca.pem")] };
        let err = agent(&options).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
