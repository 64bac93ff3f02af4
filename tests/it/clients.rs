//! Independent clients accept what galley writes: umoci, skopeo, docker (a dockerd
//! started by hand) and podman; and `galley run` runs it.

use std::process::Command;

use crate::support::dockerd::Dockerd;
use crate::support::{Project, examples, galley, is_root, json_of, podman, run_ok, shared_galley_cache, stderr, stdout};

const GREETING: &str = "hello from galley";

/// Builds the real example, Debian base made by mmdebstrap through galley (cached in
/// the shared test cache), into `out`.
fn build_example(out: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let output = galley()
        .arg("--cache")
        .arg(shared_galley_cache())
        .args(["build", "--json", "--output"])
        .arg(out)
        .args(extra)
        .arg(examples().join("hello"))
        .output()
        .unwrap();
    json_of(&output)
}

#[test]
fn the_example_unpacks_with_umoci_and_runs_in_a_chroot() {
    if !is_root() {
        eprintln!("skipped: umoci unpack and chroot need root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("layout");
    let report = build_example(&out, &[]);

    let inspected: serde_json::Value =
        serde_json::from_str(&run_ok(Command::new("skopeo").arg("inspect").arg(format!("oci:{}:0.1.0", out.display())))).unwrap();
    assert_eq!(inspected["Digest"], report["digest"]);
    assert_eq!(inspected["Labels"]["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), report["layers"].as_array().unwrap().len());

    let bundle = work.path().join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:0.1.0", out.display())).arg(&bundle));
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["cwd"], "/workspace");
    assert_eq!(config["process"]["user"]["uid"], 1000);
    let text = run_ok(Command::new("chroot").arg(bundle.join("rootfs")).args(["python3", "/app/hello.py"]));
    assert!(text.contains(GREETING) || text.contains("hello"), "{text}");
    assert!(text.contains("app file says: built by galley from examples/hello"), "{text}");
}

#[test]
fn galley_run_uses_a_chroot_without_a_daemon() {
    if !is_root() {
        eprintln!("skipped: the chroot engine needs root");
        return;
    }
    let project = Project::hello();
    let output = project.galley().args(["run", "--engine", "chroot", "--", "one", "two"]).output().unwrap();
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(text.contains(GREETING), "{text}");
    assert!(text.contains("uid 1000, cwd /workspace"), "{text}");
    assert!(text.contains("args: one two"), "{text}");
}

#[test]
fn docker_loads_runs_and_reads_the_config() {
    if !is_root() {
        eprintln!("skipped: dockerd needs root");
        return;
    }
    let daemon = Dockerd::start();
    let project = Project::hello();
    let archive = project.dir.path().join("image.tar");
    let report = project.build(&["--docker-archive", archive.to_str().unwrap()]);

    let loaded = run_ok(daemon.docker().arg("load").arg("-i").arg(&archive));
    assert!(loaded.contains("galley-hello:0.1.0"), "{loaded}");
    let text = run_ok(daemon.docker().args(["run", "--rm", "--network", "host", "galley-hello:0.1.0", "x"]));
    assert!(text.contains(GREETING) && text.contains("uid 1000, cwd /workspace") && text.contains("args: x"), "{text}");

    let inspect: serde_json::Value =
        serde_json::from_str(&run_ok(daemon.docker().args(["image", "inspect", "galley-hello:0.1.0"]))).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(config["WorkingDir"], "/workspace");
    assert_eq!(config["Entrypoint"], serde_json::json!(["python3", "/app/hello.py"]));
    assert_eq!(config["StopSignal"], "SIGINT");
    assert!(config["ExposedPorts"]["8000/tcp"].is_object());
    assert_eq!(config["Healthcheck"]["Retries"], 3);
    let env: Vec<String> = config["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert!(env.contains(&"PATH=/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()), "{env:?}");
    assert!(env.contains(&format!("GREETING={GREETING}")), "{env:?}");
    let repo_digests = inspect[0]["RootFS"]["Layers"].as_array().unwrap().len();
    assert_eq!(repo_digests, report["layers"].as_array().unwrap().len());

    // --load streams straight into the daemon; `galley run` then uses it.
    project.write("app/message.txt", "loaded without a file");
    let output = project.galley().args(["build", "--load", "--json"]).env("DOCKER_HOST", daemon.host()).output().unwrap();
    let loaded = json_of(&output);
    assert!(loaded["loaded"][0].as_str().unwrap().contains("galley-hello:0.1.0"), "{loaded}");
    let output = project.galley().args(["run", "-q"]).env("DOCKER_HOST", daemon.host()).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("app file says: loaded without a file"), "{}", stdout(&output));
}

#[test]
fn podman_loads_and_runs_the_archive() {
    if !is_root() {
        eprintln!("skipped: podman with runc needs root here");
        return;
    }
    let project = Project::hello();
    let archive = project.dir.path().join("image.tar");
    project.build(&["--docker-archive", archive.to_str().unwrap(), "--compression", "zstd"]);
    let root = project.dir.path().join("podman");
    let podman = |args: &[&str]| podman(&root, args);
    let loaded = run_ok(&mut podman(&["load", "-i", archive.to_str().unwrap()]));
    assert!(loaded.contains("galley-hello:0.1.0"), "{loaded}");
    let text = run_ok(&mut podman(&["run", "--rm", "--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "galley-hello:0.1.0"]));
    assert!(text.contains(GREETING) && text.contains("uid 1000"), "{text}");
}
