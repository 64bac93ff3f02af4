//! Pushing and pulling against a real registry (Debian's `docker-registry`, i.e.
//! distribution 2.8) started on a free loopback port, read back with skopeo, through
//! a counting / fault-injecting TCP proxy where the test needs to see or break traffic.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use galley::base::{self, ImportContext};
use galley::cache::Cache;
use galley::layer::{Compression, Entry, EntryKind, LayerPath, LayerSpec, PackedLayer, Source, finalize_entries, pack_cached};
use galley::manifest::BaseSpec;
use galley::oci::{
    ANNOTATION_REF_NAME, Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, MediaType, Platform, RootFs, to_canonical_json,
};
use galley::registry::{self, Client, Credential, ImageRef, PushOptions, PushReport, RegistryError, RegistryOptions, Repository};

// ---------------------------------------------------------------------------------
// A real registry, stopped by pid when dropped.

struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Something listening on a loopback port that speaks the registry API.
trait Endpoint {
    fn port(&self) -> u16;

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    fn repo(&self, name: &str) -> Repository {
        format!("{}/{name}", self.host()).parse().unwrap()
    }
}

impl Endpoint for Registry {
    fn port(&self) -> u16 {
        self.port
    }
}

impl Endpoint for Proxy {
    fn port(&self) -> u16 {
        self.port
    }
}

struct Tls {
    ca: PathBuf,
    user: &'static str,
    password: &'static str,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Registry {
    fn start() -> Self {
        Self::launch(tempfile::tempdir().unwrap(), "")
    }

    /// With `secure`: TLS from a CA made here, and htpasswd auth for `galley` / `s3cret-pw`.
    fn start_with(secure: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if !secure {
            return Self::launch(dir, "");
        }
        make_certificates(dir.path());
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", "galley", "s3cret-pw"]));
        std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
        let extra = format!(
            "  tls:\n    certificate: {0}/server.crt\n    key: {0}/server.key\nauth:\n  htpasswd:\n    realm: galley-test\n    path: {0}/htpasswd\n",
            dir.path().display()
        );
        Self::launch(dir, &extra)
    }

    /// Starts the registry with its storage in `dir`; `extra` continues the config's `http:` section.
    fn launch(dir: tempfile::TempDir, extra: &str) -> Self {
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: galley-test-secret\n{extra}",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let registry = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start: {}", registry.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn tls(&self) -> Tls {
        Tls { ca: self.dir.path().join("ca.crt"), user: "galley", password: "s3cret-pw" }
    }

    /// The data file of a blob in the registry's filesystem storage.
    fn blob_data(&self, digest: &Digest) -> PathBuf {
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{}/data", &digest.hex()[..2], digest.hex()))
    }
}

fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(Command::new("openssl").current_dir(dir).args(["req", "-x509"]).args(ec).args([
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=galley test CA",
    ]));
    run(Command::new("openssl").current_dir(dir).arg("req").args(ec).args([
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
    ]));
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days",
        "2", "-extfile", "ext.cnf",
    ]));
}

// ---------------------------------------------------------------------------------
// A TCP proxy in front of the registry: counts what clients send, and can break once.

#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// Cut the connection that carries byte number N (counted from now) of client traffic.
    CutAfter(u64),
    /// Cut the connection `bytes` bytes into the `nth` (from 1) request starting with `method`.
    CutInRequest { method: &'static str, nth: usize, bytes: usize },
    /// Answer the `nth` request starting with `method` with 503 instead of forwarding it.
    Fail503 { method: &'static str, nth: usize },
    /// Cut every connection once it has carried N bytes of client traffic.
    CutEveryAfter(u64),
}

struct Proxy {
    port: u16,
    sent: Arc<AtomicU64>,
    /// The armed fault and how many requests of its method it has seen.
    fault: Arc<Mutex<(Fault, usize)>>,
    faults_hit: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Proxy {
    fn new(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self {
            port,
            sent: Arc::default(),
            fault: Arc::new(Mutex::new((Fault::None, 0))),
            faults_hit: Arc::default(),
            stop: Arc::default(),
        };
        let (sent, fault, hit, stop) = (proxy.sent.clone(), proxy.fault.clone(), proxy.faults_hit.clone(), proxy.stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &s2, &mut &c2);
                    let _ = c2.shutdown(Shutdown::Both);
                });
                let (sent, fault, hit) = (sent.clone(), fault.clone(), hit.clone());
                std::thread::spawn(move || forward(&client, &server, &sent, &fault, &hit));
            }
        });
        proxy
    }

    /// Client bytes since the last call.
    fn take_sent(&self) -> u64 {
        self.sent.swap(0, Ordering::SeqCst)
    }

    fn arm(&self, fault: Fault) {
        self.take_sent();
        *self.fault.lock().unwrap() = (fault, 0);
    }

    fn hits(&self) -> usize {
        self.faults_hit.load(Ordering::SeqCst)
    }
}

fn forward(client: &TcpStream, server: &TcpStream, sent: &AtomicU64, fault: &Mutex<(Fault, usize)>, hit: &AtomicUsize) {
    let cut = || {
        hit.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    };
    let mut connection_bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match { client }.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let before = sent.fetch_add(n as u64, Ordering::SeqCst);
        connection_bytes += n as u64;
        let mut state = fault.lock().unwrap();
        let (armed, count) = &mut *state;
        // Bytes to forward before cutting, or a canned answer instead of forwarding.
        let mut action: Option<(usize, Option<&[u8]>)> = None;
        match *armed {
            Fault::CutAfter(limit) if before + n as u64 > limit => {
                action = Some((usize::try_from(limit.saturating_sub(before)).unwrap_or(0), None));
                *armed = Fault::None;
            }
            Fault::CutEveryAfter(limit) if connection_bytes > limit => action = Some((0, None)),
            Fault::CutInRequest { method, nth, bytes } => {
                if let Some(at) = request_start(chunk, method) {
                    *count += 1;
                    if *count == nth {
                        action = Some(((at + bytes).min(n), None));
                        *armed = Fault::None;
                    }
                }
            }
            Fault::Fail503 { method, nth } => {
                if let Some(at) = request_start(chunk, method) {
                    *count += 1;
                    if *count == nth {
                        action = Some((at, Some(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")));
                        *armed = Fault::None;
                    }
                }
            }
            _ => {}
        }
        drop(state);
        if let Some((keep, answer)) = action {
            let _ = { server }.write_all(&chunk[..keep]);
            if let Some(answer) = answer {
                let _ = { client }.write_all(answer);
            }
            return cut();
        }
        if { server }.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// Where a request line for `method` starts in `chunk`, if one does.
fn request_start(chunk: &[u8], method: &str) -> Option<usize> {
    let needle = format!("{method} /v2/");
    chunk.windows(needle.len()).position(|w| w == needle.as_bytes())
}

// ---------------------------------------------------------------------------------
// Test images, packed with galley's own layer code, written as OCI layouts.

/// Deterministic incompressible bytes.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn layer(cache: &Cache, name: &str, files: &[(&str, Vec<u8>)]) -> PackedLayer {
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(path, data)| Entry {
            path: LayerPath::new(path).unwrap(),
            kind: EntryKind::File { source: Source::Bytes(Arc::from(data.as_slice())), size: data.len() as u64 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        })
        .collect();
    finalize_entries(name, &mut entries).unwrap();
    let key_text: String = files.iter().map(|(p, d)| format!("{p} {}\n", Digest::of(d))).collect();
    let spec = LayerSpec { key: Digest::of(key_text.as_bytes()), description: name.into(), entries };
    pack_cached(cache, &spec, Compression::Gzip, &|_| {}).unwrap().0
}

struct Image {
    manifest: Descriptor,
    config: Descriptor,
    layers: Vec<PackedLayer>,
}

fn image(cache: &Cache, platform: &str, layers: Vec<PackedLayer>) -> Image {
    let platform: Platform = platform.parse().unwrap();
    let config = ImageConfig {
        created: Some("1970-01-01T00:00:00Z".into()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        rootfs: RootFs { kind: "layers".into(), diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect() },
        ..ImageConfig::default()
    };
    let config_bytes = to_canonical_json(&config);
    let config = Descriptor::new(MediaType::OciConfig, cache.put_blob_bytes(&config_bytes).unwrap(), config_bytes.len() as u64);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(MediaType::OciManifest),
        config: config.clone(),
        layers: layers.iter().map(PackedLayer::descriptor).collect(),
        annotations: BTreeMap::new(),
    };
    let bytes = to_canonical_json(&manifest);
    let descriptor = Descriptor {
        platform: Some(platform),
        ..Descriptor::new(MediaType::OciManifest, cache.put_blob_bytes(&bytes).unwrap(), bytes.len() as u64)
    };
    Image { manifest: descriptor, config, layers }
}

fn index_of(cache: &Cache, images: &[&Image]) -> Descriptor {
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MediaType::OciIndex),
        manifests: images.iter().map(|i| i.manifest.clone()).collect(),
        annotations: BTreeMap::new(),
    };
    let bytes = to_canonical_json(&index);
    Descriptor::new(MediaType::OciIndex, cache.put_blob_bytes(&bytes).unwrap(), bytes.len() as u64)
}

/// An OCI layout holding `entries` (tag, manifest or index) and every blob they reach.
fn write_layout(cache: &Cache, dir: &Path, entries: &[(Option<&str>, &Descriptor)]) {
    fn copy_tree(cache: &Cache, dir: &Path, d: &Descriptor) {
        let dest = dir.join("blobs/sha256").join(d.digest.hex());
        if !dest.exists() {
            std::fs::copy(cache.blob_path(&d.digest), &dest).unwrap();
        }
        let bytes = std::fs::read(cache.blob_path(&d.digest)).unwrap();
        if d.media_type.is_index() {
            let index: ImageIndex = serde_json::from_slice(&bytes).unwrap();
            index.manifests.iter().for_each(|c| copy_tree(cache, dir, c));
        } else if d.media_type.is_manifest() {
            let manifest: ImageManifest = serde_json::from_slice(&bytes).unwrap();
            std::iter::once(&manifest.config).chain(&manifest.layers).for_each(|b| copy_tree(cache, dir, b));
        }
    }
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (tag, descriptor) in entries {
        copy_tree(cache, dir, descriptor);
        let mut d = (*descriptor).clone();
        if let Some(tag) = tag {
            d.annotations.insert(ANNOTATION_REF_NAME.into(), (*tag).into());
        }
        manifests.push(d);
    }
    let index = ImageIndex { schema_version: 2, media_type: Some(MediaType::OciIndex), manifests, annotations: BTreeMap::new() };
    std::fs::write(dir.join("index.json"), to_canonical_json(&index)).unwrap();
}

/// The three-layer test image: small base files, a 24 MiB incompressible layer, and an app file.
struct Fixture {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    image: Image,
    big: PackedLayer,
}

const MIB: u64 = 1 << 20;

fn fixture(app_version: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let base = layer(&cache, "base", &[("etc/os-release", b"ID=galley-test\n".to_vec()), ("bin/tool", random_bytes(1, 3000))]);
    let big = layer(&cache, "big", &[("opt/weights.bin", random_bytes(2, 24 * MIB as usize))]);
    let app = layer(&cache, "app", &[("app/main.py", format!("print('{app_version}')\n").into_bytes())]);
    let image = image(&cache, &Platform::host().to_string(), vec![base, big.clone(), app]);
    let layout = dir.path().join("layout");
    write_layout(&cache, &layout, &[(Some("v1"), &image.manifest)]);
    Fixture { _dir: dir, layout, image, big }
}

fn options() -> RegistryOptions {
    RegistryOptions { docker_config: None, certs_dir: None, attempts: 3, ..RegistryOptions::default() }
}

/// Small chunks, so the 24 MiB layer goes up in six PATCH requests.
fn chunked() -> PushOptions {
    PushOptions { monolithic_limit: 4 * MIB, chunk_size: 4 * MIB, ..PushOptions::default() }
}

fn push(fixture: &Fixture, cache: &Cache, repo: &Repository, client: &Client) -> Result<PushReport, RegistryError> {
    registry::push_layout(client, cache, &fixture.layout, repo, &chunked(), &())
}

fn skopeo(args: &[&str]) -> String {
    run(Command::new("skopeo").args(args))
}

/// The manifest digest skopeo sees for a reference on an insecure registry.
fn skopeo_digest(reference: &str) -> Digest {
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")]);
    Digest::of(raw.as_bytes())
}

fn fresh_cache() -> (tempfile::TempDir, Cache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    (dir, cache)
}

// ---------------------------------------------------------------------------------

#[test]
fn push_reads_back_identically_and_a_repush_sends_only_what_changed() {
    let registry = Registry::start();
    let proxy = Proxy::new(registry.port);
    let fixture = fixture("v1");
    let client = Client::new(options());
    let repo = proxy.repo("galley/app");
    let (_d, cache) = fresh_cache();

    let report = push(&fixture, &cache, &repo, &client).unwrap();
    assert_eq!((report.blobs_uploaded, report.blobs_skipped, report.blobs_mounted), (4, 0, 0));
    assert_eq!((report.manifests_uploaded, report.tags_updated), (1, 1));
    let total: u64 = fixture.image.layers.iter().map(|l| l.size).sum::<u64>() + fixture.image.config.size;
    assert_eq!(report.bytes_uploaded, total);
    assert_eq!(report.images.len(), 1);
    assert_eq!(report.images[0].digest, fixture.image.manifest.digest);
    assert_eq!(report.images[0].tagged[0].to_string(), format!("{repo}:v1@{}", fixture.image.manifest.digest));

    // An independent client sees the same manifest, and copies every blob with verified digests.
    assert_eq!(skopeo_digest(&format!("{repo}:v1")), fixture.image.manifest.digest);
    let copy = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:v1", copy.path().display());
    skopeo(&["copy", "--src-tls-verify=false", "--preserve-digests", &format!("docker://{repo}:v1"), &dest]);
    let index: ImageIndex = serde_json::from_slice(&std::fs::read(copy.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index.manifests[0].digest, fixture.image.manifest.digest);
    for l in &fixture.image.layers {
        let bytes = std::fs::read(copy.path().join("blobs/sha256").join(l.digest.hex())).unwrap();
        assert_eq!(Digest::of(&bytes), l.digest);
    }

    // Unchanged: only HEAD requests go out.
    proxy.take_sent();
    let again = push(&fixture, &cache, &repo, &client).unwrap();
    assert_eq!((again.blobs_uploaded, again.blobs_skipped, again.bytes_uploaded), (0, 4, 0));
    assert_eq!((again.manifests_uploaded, again.manifests_skipped, again.tags_updated), (0, 1, 0));
    let sent = proxy.take_sent();
    assert!(sent < 32 * 1024, "a re-push sent {sent} bytes");

    // One small layer changed: only it, the config and the manifest go up; the tag moves.
    let changed = self::fixture("v2");
    let report = push(&changed, &cache, &repo, &client).unwrap();
    let app = &changed.image.layers[2];
    assert_eq!((report.blobs_uploaded, report.blobs_skipped), (2, 2));
    assert_eq!(report.bytes_uploaded, app.size + changed.image.config.size);
    assert_eq!((report.manifests_uploaded, report.tags_updated), (1, 1));
    let sent = proxy.take_sent();
    assert!(sent < 64 * 1024, "a one-file change sent {sent} bytes");
    assert_eq!(skopeo_digest(&format!("{repo}:v1")), changed.image.manifest.digest);
}

#[test]
fn dropped_connections_mid_layer_are_survived_and_the_image_is_intact() {
    let registry = Registry::start();
    let proxy = Proxy::new(registry.port);
    let fixture = fixture("v1");
    let client = Client::new(options());

    // Cut inside the body of a chunk: distribution 2.8 then refuses to continue that
    // upload (its upload state no longer matches what it stored), so galley starts over.
    let (_d, cache) = fresh_cache();
    let repo = proxy.repo("galley/cut-mid-chunk");
    proxy.arm(Fault::CutAfter(10 * MIB));
    let report = push(&fixture, &cache, &repo, &client).unwrap();
    assert_eq!(proxy.hits(), 1);
    assert_eq!((report.uploads_resumed, report.uploads_restarted), (0, 1), "{report:?}");
    assert_eq!(skopeo_digest(&format!("{repo}:v1")), fixture.image.manifest.digest);

    // Cut between chunks (the third PATCH's request line): the registry holds exactly
    // two chunks, reports them, and the upload goes on from there.
    let (_d, cache) = fresh_cache();
    let repo = proxy.repo("galley/cut-between-chunks");
    proxy.arm(Fault::CutInRequest { method: "PATCH", nth: 3, bytes: 10 });
    let report = push(&fixture, &cache, &repo, &client).unwrap();
    assert_eq!(proxy.hits(), 2);
    assert_eq!((report.uploads_resumed, report.uploads_restarted), (1, 0), "{report:?}");
    let total: u64 = fixture.image.layers.iter().map(|l| l.size).sum::<u64>() + fixture.image.config.size;
    // At most the chunk in flight when the connection broke is sent twice.
    assert!(report.bytes_uploaded <= total + 4 * MIB, "{} bytes for {total}", report.bytes_uploaded);

    // Read back with galley into an empty store: every blob verified against its digest.
    let (_d, fresh) = fresh_cache();
    for name in ["galley/cut-mid-chunk", "galley/cut-between-chunks"] {
        let reference: ImageRef = format!("{}:v1", registry.repo(name)).parse().unwrap();
        let pulled = registry::pull(&client, &fresh, &reference, None, &()).unwrap();
        assert_eq!(pulled.manifest.digest, fixture.image.manifest.digest);
        assert_eq!(pulled.layers, fixture.image.layers.iter().map(PackedLayer::descriptor).collect::<Vec<_>>());
    }
    assert!(fresh.has_blob(&fixture.big.digest));
}

#[test]
fn a_failed_push_leaves_no_tag_and_the_next_push_uploads_only_what_is_missing() {
    let registry = Registry::start();
    let proxy = Proxy::new(registry.port);
    let fixture = fixture("v1");
    let client = Client::new(RegistryOptions { attempts: 2, ..options() });
    let (_d, cache) = fresh_cache();
    let repo = proxy.repo("galley/partial");

    proxy.arm(Fault::CutEveryAfter(6 * MIB));
    let err = push(&fixture, &cache, &repo, &client).unwrap_err();
    assert!(matches!(err, RegistryError::Connection { .. }), "{err:?}");
    assert!(err.to_string().contains(&proxy.host()), "{err}");
    let reference: ImageRef = format!("{repo}:v1").parse().unwrap();
    let missing = client.resolve(&reference).unwrap_err();
    assert!(matches!(missing, RegistryError::ManifestUnknown { .. }), "the tag exists after a failed push: {missing:?}");

    proxy.arm(Fault::None);
    let report = push(&fixture, &cache, &repo, &client).unwrap();
    assert_eq!((report.blobs_uploaded, report.blobs_skipped), (1, 3), "only the big layer was missing: {report:?}");
    assert_eq!(report.bytes_uploaded, fixture.big.size);
    assert_eq!(client.resolve(&reference).unwrap().digest, fixture.image.manifest.digest);
}

#[test]
fn a_503_is_retried() {
    let registry = Registry::start();
    let proxy = Proxy::new(registry.port);
    let fixture = fixture("v1");
    let client = Client::new(options());
    let (_d, cache) = fresh_cache();
    proxy.arm(Fault::Fail503 { method: "HEAD", nth: 1 });
    let report = push(&fixture, &cache, &proxy.repo("galley/flaky"), &client).unwrap();
    assert_eq!(proxy.hits(), 1);
    assert_eq!(report.blobs_uploaded, 4);
}

#[test]
fn blobs_are_mounted_from_another_repository_of_the_same_registry() {
    let registry = Registry::start();
    let fixture = fixture("v1");
    let client = Client::new(options());
    let (_d, cache) = fresh_cache();
    push(&fixture, &cache, &registry.repo("team/first"), &client).unwrap();
    let report = push(&fixture, &cache, &registry.repo("team/second"), &client).unwrap();
    assert_eq!((report.blobs_mounted, report.blobs_uploaded, report.bytes_uploaded), (4, 0, 0), "{report:?}");
    assert_eq!(skopeo_digest(&format!("{}:v1", registry.repo("team/second"))), fixture.image.manifest.digest);
}

#[test]
fn an_index_is_pushed_after_its_manifests_with_every_tag() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let shared = layer(&cache, "shared", &[("etc/shared", b"both platforms".to_vec())]);
    let amd = image(&cache, "linux/amd64", vec![shared.clone(), layer(&cache, "amd", &[("bin/x", b"amd64".to_vec())])]);
    let arm = image(&cache, "linux/arm64/v8", vec![shared, layer(&cache, "arm", &[("bin/x", b"arm64".to_vec())])]);
    let index = index_of(&cache, &[&amd, &arm]);
    let layout = dir.path().join("layout");
    write_layout(&cache, &layout, &[(Some("multi"), &index), (Some("latest"), &index), (Some("amd64-only"), &amd.manifest)]);
    let client = Client::new(options());
    let repo = registry.repo("galley/multi");
    let report = registry::push_layout(&client, &cache, &layout, &repo, &PushOptions::default(), &()).unwrap();
    assert_eq!((report.blobs_uploaded, report.manifests_uploaded, report.tags_updated), (5, 3, 3), "{report:?}");
    assert_eq!(report.images.len(), 2);
    assert_eq!(report.images[0].media_type, MediaType::OciIndex);
    let tags: Vec<String> = report.images[0].tagged.iter().map(|r| r.tag().unwrap().to_string()).collect();
    assert_eq!(tags, ["latest", "multi"]);
    assert_eq!(skopeo_digest(&format!("{repo}:multi")), index.digest);
    assert_eq!(skopeo_digest(&format!("{repo}@{}", arm.manifest.digest)), arm.manifest.digest);

    // Tags from the caller replace the layout's, but only for a layout with one image.
    let err = registry::push_layout(&client, &cache, &layout, &repo, &PushOptions { tags: Some(vec!["x".parse().unwrap()]), ..PushOptions::default() }, &())
        .unwrap_err();
    assert!(err.is_usage() && err.to_string().contains("holds 2 images"), "{err}");
}

#[test]
fn tls_with_a_private_ca_and_htpasswd_auth() {
    let registry = Registry::start_with(true);
    let tls = registry.tls();
    let fixture = fixture("v1");
    let (_d, cache) = fresh_cache();
    let repo = registry.repo("secure/app");
    let host = registry.host();
    let basic = |password: &str| BTreeMap::from([(host.clone(), Credential::Basic { username: tls.user.into(), password: password.into() })]);

    // No CA: the certificate cannot be verified, and the message says what to do.
    let client = Client::new(RegistryOptions { credentials: basic(tls.password), ..options() });
    let err = push(&fixture, &cache, &repo, &client).unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }) && err.is_usage(), "{err:?}");
    assert!(err.to_string().contains("--registry-ca") && err.to_string().contains(&host), "{err}");

    // Wrong password: named registry, named user, no secret.
    let client = Client::new(RegistryOptions { ca_files: vec![tls.ca.clone()], credentials: basic("wrong-horse-battery"), ..options() });
    let err = push(&fixture, &cache, &repo, &client).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RegistryError::Unauthorized { .. }) && err.is_usage(), "{err:?}");
    assert!(message.contains(&host) && message.contains("user `galley`") && message.contains("docker login"), "{message}");
    assert!(!message.contains("wrong-horse-battery") && !format!("{err:?}").contains("wrong-horse-battery"), "{message}");

    // No credentials at all.
    let client = Client::new(RegistryOptions { ca_files: vec![tls.ca.clone()], ..options() });
    let err = push(&fixture, &cache, &repo, &client).unwrap_err().to_string();
    assert!(err.contains("requires credentials"), "{err}");

    // Right password, CA from docker's certs.d layout: the push lands.
    let certs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(certs.path().join(&host)).unwrap();
    std::fs::copy(&tls.ca, certs.path().join(&host).join("ca.crt")).unwrap();
    let client = Client::new(RegistryOptions { certs_dir: Some(certs.path().to_owned()), credentials: basic(tls.password), ..options() });
    let report = push(&fixture, &cache, &repo, &client).unwrap();
    assert_eq!(report.blobs_uploaded, 4);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        &certs.path().join(&host).display().to_string(),
        "--creds",
        &format!("{}:{}", tls.user, tls.password),
        &format!("docker://{repo}:v1"),
    ]);
    assert_eq!(Digest::of(raw.as_bytes()), fixture.image.manifest.digest);

    // Credentials from docker's config.json; pull back over TLS.
    let config_dir = tempfile::tempdir().unwrap();
    let auth = base64_encode(&format!("{}:{}", tls.user, tls.password));
    std::fs::write(config_dir.path().join("config.json"), format!(r#"{{"auths":{{"https://{host}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
    let client = Client::new(RegistryOptions {
        ca_files: vec![tls.ca.clone()],
        docker_config: Some(config_dir.path().join("config.json")),
        ..options()
    });
    let (_d, fresh) = fresh_cache();
    let pulled = registry::pull(&client, &fresh, &format!("{repo}:v1").parse().unwrap(), None, &()).unwrap();
    assert_eq!(pulled.manifest.digest, fixture.image.manifest.digest);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn import(cache: &Cache, reference: &str, platform: Option<&Platform>, client: &Client) -> Result<base::Base, base::BaseError> {
    let ctx = ImportContext { cache, compression: Compression::Gzip, platform, epoch: None, show_tool_output: false, on_bytes: &|_| {} };
    base::import_using(&BaseSpec::Registry { reference: reference.parse().unwrap() }, &ctx, client)
}

#[test]
fn bases_pushed_by_skopeo_are_pulled_imported_and_pinned() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let os = layer(&cache, "os", &[("etc/os-release", b"ID=debian\n".to_vec()), ("usr/bin/python3", random_bytes(3, 5000))]);
    let amd = image(&cache, "linux/amd64", vec![os.clone(), layer(&cache, "amd", &[("lib/x", b"amd".to_vec())])]);
    let arm = image(&cache, "linux/arm64", vec![os, layer(&cache, "arm", &[("lib/x", b"arm".to_vec())])]);
    let index = index_of(&cache, &[&amd, &arm]);
    let layout = dir.path().join("layout");
    write_layout(&cache, &layout, &[(Some("multi"), &index)]);
    let repo = registry.repo("bases/python");
    skopeo(&["copy", "--all", "--dest-tls-verify=false", &format!("oci:{}:multi", layout.display()), &format!("docker://{repo}:multi")]);

    let client = Client::new(options());
    let (_d, store) = fresh_cache();
    let arm64: Platform = "linux/arm64".parse().unwrap();
    let base = import(&store, &format!("{repo}:multi"), Some(&arm64), &client).unwrap();
    assert_eq!(base.config.architecture, "arm64");
    assert_eq!(base.layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(), arm.layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>());
    assert!(base.index.get(&LayerPath::new("usr/bin/python3").unwrap()).is_some());

    let amd64: Platform = "linux/amd64".parse().unwrap();
    let base = import(&store, &format!("{repo}:multi"), Some(&amd64), &client).unwrap();
    assert_eq!(base.config.architecture, "amd64");

    let s390x: Platform = "linux/s390x".parse().unwrap();
    let err = import(&store, &format!("{repo}:multi"), Some(&s390x), &client).unwrap_err();
    assert!(err.is_usage(), "{err:?}");
    assert!(err.to_string().ends_with("no image for linux/s390x; platforms present: linux/amd64, linux/arm64"), "{err}");

    let err = import(&store, &format!("{repo}:no-such-tag"), None, &client).unwrap_err();
    assert!(err.is_usage() && err.to_string().contains(&format!("{repo}:no-such-tag")), "{err}");

    // Pin the digest, as galley.lock does, then lose the registry: a pinned base whose
    // blobs are cached needs no network at all.
    let resolved = client.resolve(&format!("{repo}:multi").parse().unwrap()).unwrap();
    assert_eq!((resolved.digest.clone(), resolved.media_type.clone()), (index.digest.clone(), MediaType::OciIndex));
    drop(registry);
    let pinned = format!("{repo}:multi@{}", resolved.digest);
    let offline = Client::new(RegistryOptions { attempts: 1, ..options() });
    let base = import(&store, &pinned, Some(&arm64), &offline).unwrap();
    assert_eq!(base.config.architecture, "arm64");
    let pulled = registry::pull(&offline, &store, &pinned.parse().unwrap(), Some(&amd64), &()).unwrap();
    assert_eq!((pulled.downloaded, pulled.manifest.digest.clone()), (0, amd.manifest.digest.clone()));
}

#[test]
fn a_corrupted_blob_is_rejected_and_nothing_is_kept() {
    let registry = Registry::start();
    let fixture = fixture("v1");
    let client = Client::new(options());
    let (_d, cache) = fresh_cache();
    let repo = registry.repo("galley/corrupt");
    push(&fixture, &cache, &repo, &client).unwrap();
    let app = &fixture.image.layers[2];
    let data = registry.blob_data(&app.digest);
    let garbage = random_bytes(99, usize::try_from(app.size).unwrap());
    std::fs::write(&data, &garbage).unwrap();

    let (_d, fresh) = fresh_cache();
    let err = registry::pull(&client, &fresh, &format!("{repo}:v1").parse().unwrap(), None, &()).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&app.digest.to_string()) && err.to_string().contains("nothing was kept"), "{err}");
    assert!(!fresh.has_blob(&app.digest) && !fresh.has_blob(&Digest::of(&garbage)));
    assert_eq!(std::fs::read_dir(fresh.root().join("tmp")).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------
// The binary: build on a registry base and push, push again, pull, inspect, errors.

fn galley(cache: &Path, docker_config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_galley"));
    command.env("GALLEY_CACHE", cache).env("DOCKER_CONFIG", docker_config).env_remove("GALLEY_REGISTRY_USER").env_remove("GALLEY_REGISTRY_PASSWORD");
    command
}

fn json_ok(command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn the_cli_builds_on_a_registry_base_pushes_pulls_and_inspects() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (cache_dir, docker_config) = (work.path().join("cache"), work.path().join("docker"));
    std::fs::create_dir_all(&docker_config).unwrap();

    // A base image, pushed by skopeo.
    let store = Cache::open(work.path().join("fixtures")).unwrap();
    let os = layer(&store, "os", &[("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n".to_vec()), ("bin/sh", random_bytes(5, 4000))]);
    let base = image(&store, &Platform::host().to_string(), vec![os]);
    write_layout(&store, &work.path().join("base"), &[(Some("1"), &base.manifest)]);
    let host = registry.host();
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:1", work.path().join("base").display()), &format!("docker://{host}/bases/tiny:1")]);

    let project = work.path().join("project");
    std::fs::create_dir_all(project.join("app")).unwrap();
    std::fs::write(project.join("app/main.py"), "print('hi')\n").unwrap();
    std::fs::write(
        project.join("galley.toml"),
        format!(
            "[image]\nname = \"hello\"\nversion = \"0.1.0\"\nregistry = \"{host}/apps/hello\"\n[base]\nimage = \"{host}/bases/tiny:1\"\n[[files]]\nsrc = \"app/\"\ndest = \"/app\"\n[runtime]\ncmd = [\"/bin/sh\"]\n"
        ),
    )
    .unwrap();

    let built = json_ok(galley(&cache_dir, &docker_config).arg("build").arg(&project).args(["--push", "--json"]));
    let digest = built["digest"].as_str().unwrap().to_owned();
    assert_eq!(built["push"]["images"][0]["digest"], digest.as_str());
    assert_eq!(built["push"]["images"][0]["tagged"][0], format!("{host}/apps/hello:0.1.0@{digest}"));
    // The base layer came from bases/tiny on the same registry: mounted, not uploaded.
    assert_eq!((built["push"]["blobs_uploaded"].as_u64(), built["push"]["blobs_mounted"].as_u64()), (Some(2), Some(1)), "{built}");
    assert_eq!(skopeo_digest(&format!("{host}/apps/hello:0.1.0")).to_string(), digest);

    let again = json_ok(galley(&cache_dir, &docker_config).arg("push").arg(&project).arg("--json"));
    assert_eq!((again["bytes_uploaded"].as_u64(), again["blobs_skipped"].as_u64()), (Some(0), Some(3)), "{again}");
    assert_eq!(again["repository"], format!("{host}/apps/hello"));

    let out = work.path().join("pulled");
    let pulled = json_ok(galley(&cache_dir, &docker_config).args(["pull", &format!("{host}/apps/hello:0.1.0"), "--json", "--output"]).arg(&out));
    assert_eq!(pulled["manifest"]["digest"], digest.as_str());
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{}:0.1.0", out.display())]);
    assert_eq!(Digest::of(raw.as_bytes()).to_string(), digest);

    let inspected = json_ok(galley(&cache_dir, &docker_config).args(["inspect", "--json", &format!("docker://{host}/apps/hello:0.1.0")]));
    assert_eq!(inspected[0]["digest"], digest.as_str());
    assert_eq!(inspected[0]["config"]["Cmd"][0], "/bin/sh");

    // --tag without --push is a usage error, before anything is built.
    let out = galley(&cache_dir, &docker_config).arg("build").arg(&project).args(["--tag", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_cli_reports_wrong_credentials_without_the_secret() {
    let registry = Registry::start_with(true);
    let tls = registry.tls();
    let work = tempfile::tempdir().unwrap();
    let store = Cache::open(work.path().join("fixtures")).unwrap();
    let img = image(&store, "linux/amd64", vec![layer(&store, "x", &[("x", b"x".to_vec())])]);
    let layout = work.path().join("layout");
    write_layout(&store, &layout, &[(Some("v1"), &img.manifest)]);
    let out = galley(&work.path().join("cache"), work.path())
        .arg("push")
        .arg(&layout)
        .args(["--registry", &format!("{}/team/app", registry.host())])
        .arg("--registry-ca")
        .arg(&tls.ca)
        .env("GALLEY_REGISTRY_USER", tls.user)
        .env("GALLEY_REGISTRY_PASSWORD", "Tr0ub4dor&3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&registry.host()) && stderr.contains("rejected the credentials of user `galley`"), "{stderr}");
    assert!(!stderr.contains("Tr0ub4dor"), "{stderr}");
}

// ---------------------------------------------------------------------------------
// Token auth as Docker Hub and GHCR do it: the registry (real, `auth: token`) answers
// 401 with a Bearer challenge; galley fetches a JWT from the realm. The token service
// here is a small test server that signs RS256 JWTs with openssl, trusted by the
// registry through its rootcertbundle.

struct TokenService {
    port: u16,
    /// (method, scopes requested, authenticated as) per token request.
    requests: Arc<Mutex<Vec<(String, String, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() + 1 => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

impl TokenService {
    /// Grants what is asked to `galley` / `s3cret-pw` (Basic) and to the refresh token
    /// `refresh-me` (OAuth2 POST), only pulls to `reader` / `reader-pw`; anonymous
    /// callers get a token that grants nothing.
    fn start(dir: &Path) -> Self {
        run(Command::new("openssl").current_dir(dir).args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out", "token.crt", "-days", "2", "-subj",
            "/CN=galley-token-issuer",
        ]));
        let der = run(Command::new("openssl").current_dir(dir).args(["x509", "-in", "token.crt", "-outform", "DER", "-out", "token.der"]));
        drop(der);
        let cert = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("token.der")).unwrap())
        };
        let key = dir.join("token.key");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = Self { port, requests: Arc::default(), stop: Arc::default() };
        let (requests, stop) = (service.requests.clone(), service.stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let answer = token_answer(&mut stream, &cert, &key, &requests);
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        service
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn requests(&self) -> Vec<(String, String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

fn token_answer(stream: &mut TcpStream, cert: &str, key: &Path, requests: &Mutex<Vec<(String, String, String)>>) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return String::new();
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..header_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while raw.len() < header_end + length {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[header_end..]).into_owned();
    let request_line = head.lines().next().unwrap_or_default();
    let method = request_line.split(' ').next().unwrap_or_default().to_owned();
    let query = request_line.split(' ').nth(1).and_then(|p| p.split_once('?')).map_or("", |(_, q)| q).to_owned();
    let params: Vec<(String, String)> = if method == "POST" { body.clone() } else { query }
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), url_decode(v)))
        .collect();
    let scopes: Vec<String> = params.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' ').map(str::to_owned)).collect();
    let basic = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("authorization").then(|| value.trim().strip_prefix("Basic ").map(str::to_owned))?
    });
    let who = match (method.as_str(), basic) {
        ("POST", _) if params.iter().any(|(k, v)| k == "refresh_token" && v == "refresh-me") => "refresh-token",
        ("POST", _) => "bad-refresh-token",
        (_, Some(b)) if b.trim() == base64_encode("galley:s3cret-pw") => "galley",
        (_, Some(b)) if b.trim() == base64_encode("reader:reader-pw") => "reader",
        (_, Some(_)) => "bad-password",
        _ => "anonymous",
    };
    requests.lock().unwrap().push((method, scopes.join(" "), who.to_owned()));
    if who.starts_with("bad") {
        return "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into();
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter(|_| who != "anonymous")
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<&str> = actions.split(',').filter(|a| who != "reader" || *a == "pull").collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [cert]});
    let claims = serde_json::json!({
        "iss": "galley-token-issuer", "sub": who, "aud": "galley-test-registry",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", requests.lock().unwrap().len()), "access": access,
    });
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let mut openssl =
        Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(key).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    openssl.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
    let signature = openssl.wait_with_output().unwrap().stdout;
    let token = format!("{signing_input}.{}", b64url(&signature));
    let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

#[test]
fn bearer_tokens_are_fetched_per_scope_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenService::start(dir.path());
    let extra = format!(
        "auth:\n  token:\n    realm: {}\n    service: galley-test-registry\n    issuer: galley-token-issuer\n    rootcertbundle: {}\n",
        tokens.realm(),
        dir.path().join("token.crt").display()
    );
    let registry = Registry::launch(dir, &extra);
    let fixture = fixture("v1");
    let repo = registry.repo("tok/app");
    let host = registry.host();

    // Anonymous: the token grants nothing, and the message says to log in.
    let (_d, cache) = fresh_cache();
    let err = push(&fixture, &cache, &repo, &Client::new(options())).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }) && err.to_string().contains("requires credentials"), "{err}");

    // With a password: one token for the push scope serves every request of the push.
    tokens.requests.lock().unwrap().clear();
    let basic = BTreeMap::from([(host.clone(), Credential::Basic { username: "galley".into(), password: "s3cret-pw".into() })]);
    let client = Client::new(RegistryOptions { credentials: basic, ..options() });
    let report = push(&fixture, &cache, &repo, &client)
        .unwrap_or_else(|e| panic!("{e}\n{}", registry.log()));
    assert_eq!(report.blobs_uploaded, 4);
    assert_eq!(tokens.requests(), [("GET".into(), "repository:tok/app:pull,push".into(), "galley".into())]);
    let pulled = registry::pull(&client, &fresh_cache().1, &format!("{repo}:v1").parse().unwrap(), None, &()).unwrap();
    assert_eq!(pulled.manifest.digest, fixture.image.manifest.digest);
    assert_eq!(tokens.requests().len(), 2, "a pull needs its own (pull) scope: {:?}", tokens.requests());

    // A mount asks for both repositories in one token.
    let report = push(&fixture, &cache, &registry.repo("tok/other"), &client).unwrap();
    assert_eq!(report.blobs_mounted, 4);
    assert!(tokens.requests().iter().any(|(_, s, _)| s == "repository:tok/other:pull,push repository:tok/app:pull"), "{:?}", tokens.requests());

    // A wrong password is refused by the token service: named, without the secret.
    let wrong = BTreeMap::from([(host.clone(), Credential::Basic { username: "galley".into(), password: "not-the-pw-42".into() })]);
    let err = push(&fixture, &cache, &repo, &Client::new(RegistryOptions { credentials: wrong, ..options() })).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(message.contains(&host) && message.contains("token service") && !message.contains("not-the-pw-42"), "{message}");

    // Valid credentials without push rights: a permission error, not a login hint.
    let reader = BTreeMap::from([(host.clone(), Credential::Basic { username: "reader".into(), password: "reader-pw".into() })]);
    let err = push(&fixture, &cache, &registry.repo("tok/third"), &Client::new(RegistryOptions { credentials: reader, ..options() })).unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }) && err.is_usage(), "{err:?}");
    assert!(err.to_string().contains("no permission to push this repository") && err.to_string().contains("tok/third"), "{err}");

    // docker's identitytoken is exchanged with an OAuth2 POST.
    let config = registry.dir.path().join("config.json");
    std::fs::write(&config, format!(r#"{{"auths":{{"{host}":{{"identitytoken":"refresh-me"}}}}}}"#)).unwrap();
    let client = Client::new(RegistryOptions { docker_config: Some(config), ..options() });
    let resolved = client.resolve(&format!("{repo}:v1").parse().unwrap()).unwrap();
    assert_eq!(resolved.digest, fixture.image.manifest.digest);
    assert_eq!(tokens.requests().last().map(|r| (r.0.clone(), r.2.clone())), Some(("POST".into(), "refresh-token".into())));
}

#[path = "it/support/dockerd.rs"]
mod dockerd;

/// A real docker engine (dockerd started by hand, as the e2e tests do) pulls what
/// galley pushed, over plain HTTP as docker allows for 127.0.0.0/8, and sees the same
/// manifest digest.
#[test]
fn docker_pulls_what_galley_pushed() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: dockerd needs root");
        return;
    }
    let registry = Registry::start();
    let fixture = fixture("v1");
    let (_d, cache) = fresh_cache();
    let repo = registry.repo("galley/docker");
    push(&fixture, &cache, &repo, &Client::new(options())).unwrap();
    let daemon = dockerd::Dockerd::start();
    run(daemon.docker().args(["pull", &format!("{repo}:v1")]));
    let digests = run(daemon.docker().args(["image", "inspect", "--format", "{{json .RepoDigests}}", &format!("{repo}:v1")]));
    assert!(digests.contains(&format!("{repo}@{}", fixture.image.manifest.digest)), "{digests}");
    // docker unpacked every layer and checked it against the config's diff_ids.
    let layers = run(daemon.docker().args(["image", "inspect", "--format", "{{json .RootFS.Layers}}", &format!("{repo}:v1")]));
    for l in &fixture.image.layers {
        assert!(layers.contains(&l.diff_id.to_string()), "{layers}");
    }
}
