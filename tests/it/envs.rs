//! Python environments in real images: locked by uv, fetched from PyPI, installed by
//! galley, laid out by family, and run on the Debian base.

use std::fs;
use std::process::Command;

use crate::support::dockerd::Dockerd;
use crate::support::{
    Project, debian_base_tar, gzip_members, is_root, json_of, layer_digests, packed_count, podman, run_ok, stderr, stdout, test_cache,
};

/// A project on the cached Debian base with `envs` and an app that checks them.
fn env_project(envs: &str) -> Project {
    let project = Project::empty();
    project.write(
        "galley.toml",
        &format!(
            "[image]\nname = \"envs-test\"\n\n[base]\nrootfs = \"{}\"\n\n{envs}\n\n[[files]]\nsrc = \"app/\"\ndest = \"/app\"\n\n\
             [runtime]\ncmd = [\"python\", \"/app/check.py\"]\nuser = \"1000:1000\"\nworkdir = \"/workspace\"\n",
            debian_base_tar().display()
        ),
    );
    project.write(
        "app/check.py",
        r#"import os, sys
import numpy as np
import soundfile as sf
tone = (np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)) * 0.5).astype("float32")
sf.write("/workspace/tone.wav", tone, 16000)
back, rate = sf.read("/workspace/tone.wav", dtype="float32")
assert rate == 16000 and np.allclose(back, tone, atol=1e-4), "WAV round trip differs"
print("wav round trip ok")
print("numpy", np.__version__, "soundfile", sf.__version__, "libsndfile", sf.__libsndfile_version__)
print("prefix", sys.prefix)
"#,
    );
    project
}

fn galley(project: &Project, args: &[&str]) -> std::process::Output {
    project.galley().args(args).env("UV_CACHE_DIR", test_cache().join("uv")).output().unwrap()
}

#[test]
fn numpy_and_soundfile_run_in_the_image_with_their_console_script() {
    let project = env_project("[envs.audio]\nrequirements = [\"numpy>=1.26,<2\", \"soundfile==0.12.1\"]\n[envs.audio.check]\nimports = [\"numpy\", \"soundfile\"]");
    json_of(&galley(&project, &["lock", "--json"]));
    let report = json_of(&galley(&project, &["build", "--json"]));
    let descriptions: Vec<&str> = report["layers"].as_array().unwrap().iter().map(|l| l["description"].as_str().unwrap()).collect();
    assert!(descriptions.iter().any(|d| d.contains("numpy")), "{descriptions:?}");
    assert!(descriptions.iter().any(|d| d.contains("venvs audio")), "{descriptions:?}");

    let inspect = json_of(&galley(&project, &["inspect", "--json", "."]));
    let env: Vec<&str> = inspect[0]["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.iter().any(|e| e.starts_with("PATH=/opt/galley/envs/audio/bin:")), "{env:?}");
    assert!(env.contains(&"VIRTUAL_ENV=/opt/galley/envs/audio"), "{env:?}");

    if !is_root() {
        eprintln!("skipped running the image: the chroot engine needs root");
        return;
    }
    let output = galley(&project, &["run", "-q", "--engine", "chroot"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(text.contains("wav round trip ok"), "{text}");
    assert!(text.contains("numpy 1.26"), "{text}");
    assert!(text.contains("prefix /opt/galley/envs/audio"), "{text}");

    // numpy's console script, with the env's interpreter in its shebang.
    let output = galley(&project, &["run", "-q", "--engine", "chroot", "--", "f2py", "-v"]);
    assert!(output.status.success(), "{}\n{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).trim().starts_with("1.26"), "{}", stdout(&output));
    let output = galley(&project, &["run", "-q", "--engine", "chroot", "--", "cat", "/opt/galley/envs.json"]);
    let envs: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(envs["default"], "audio", "{envs}");
}

#[test]
fn bumping_one_package_repacks_only_its_layer() {
    let envs = |six: &str| {
        format!("[envs.app]\nrequirements = [\"idna==3.7\", \"six=={six}\"]\n\n[layers]\nfamilies = {{ stack = [\"idna\"] }}")
    };
    let project = env_project(&envs("1.16.0"));
    project.write("app/check.py", "import idna, six\nprint(six.__version__)\n");
    json_of(&galley(&project, &["lock", "--json"]));
    let first = json_of(&galley(&project, &["build", "--json"]));
    let layers = first["layers"].as_array().unwrap();
    let family = layers.iter().position(|l| l["description"].as_str().unwrap().contains("stack")).unwrap();
    let deps = layers.iter().position(|l| l["description"].as_str().unwrap().contains("six")).unwrap();
    assert_ne!(family, deps, "{first}");

    let manifest = fs::read_to_string(project.path().join("galley.toml")).unwrap();
    project.write("galley.toml", &manifest.replace(&envs("1.16.0"), &envs("1.17.0")));
    let second = json_of(&galley(&project, &["build", "--json", "--update-lock"]));
    let (a, b) = (layer_digests(&first), layer_digests(&second));
    assert_eq!(a[family], b[family], "the family layer is byte-identical");
    assert_ne!(a[deps], b[deps], "the layer holding six changed");
    assert_eq!(packed_count(&second), 2, "six's layer and the venv layer (envs.json lists versions): {second}");
}

#[test]
fn a_wheel_that_does_not_match_the_lock_is_rejected_and_not_kept() {
    let project = env_project("[envs.app]\nrequirements = [\"six==1.16.0\"]");
    json_of(&galley(&project, &["lock", "--json"]));
    let lock = fs::read_to_string(project.path().join("galley.lock")).unwrap();
    let start = lock.find("sha256 = \"").unwrap() + "sha256 = \"".len();
    let tampered = format!("{}{}{}", &lock[..start], "0".repeat(64), &lock[start + 64..]);
    project.write("galley.lock", &tampered);
    let output = galley(&project, &["build"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("six"), "{}", stderr(&output));
    let wheels = project.cache.join("wheels-v1");
    let kept: Vec<_> = fs::read_dir(&wheels).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(kept.is_empty(), "nothing is kept: {kept:?}");
    assert!(!project.out().join("index.json").exists(), "no image was written");
}

/// In gzip layers, large installed files are the wheels' own deflate streams, copied as
/// gzip members of their own. The readers that matter load, unpack and run such images.
#[test]
fn layers_with_copied_wheel_streams_run_in_docker_podman_umoci_and_skopeo() {
    if !is_root() {
        eprintln!("skipped: dockerd, podman and umoci unpack need root");
        return;
    }
    let project = env_project("[envs.audio]\nrequirements = [\"numpy>=1.26,<2\", \"soundfile==0.12.1\"]");
    json_of(&galley(&project, &["lock", "--json"]));
    let archive = project.dir.path().join("image.tar");
    let report = json_of(&galley(&project, &["build", "--json", "--docker-archive", archive.to_str().unwrap()]));
    let layers = report["layers"].as_array().unwrap();
    let numpy = layers.iter().find(|l| l["description"].as_str().unwrap().contains("numpy")).unwrap();
    let blob = project.out().join("blobs/sha256").join(numpy["digest"].as_str().unwrap().trim_start_matches("sha256:"));
    let members = gzip_members(&blob);
    assert!(members > 100, "the numpy layer is {members} gzip members");

    let daemon = Dockerd::start();
    let loaded = run_ok(daemon.docker().arg("load").arg("-i").arg(&archive));
    assert!(loaded.contains("envs-test:latest"), "{loaded}");
    let text = run_ok(daemon.docker().args(["run", "--rm", "--network", "host", "envs-test:latest"]));
    assert!(text.contains("wav round trip ok") && text.contains("numpy 1.26"), "docker: {text}");
    drop(daemon);

    let root = project.dir.path().join("podman");
    run_ok(&mut podman(&root, &["load", "-i", archive.to_str().unwrap()]));
    let limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
    let text = run_ok(podman(&root, &["run", "--rm", "--network", "host"]).args(limits).arg("envs-test:latest"));
    assert!(text.contains("wav round trip ok"), "podman: {text}");

    let bundle = project.dir.path().join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:latest", project.out().display())).arg(&bundle));
    let text = run_ok(Command::new("chroot").arg(bundle.join("rootfs")).args(["/opt/galley/envs/audio/bin/python", "/app/check.py"]));
    assert!(text.contains("wav round trip ok"), "umoci: {text}");

    // skopeo decompresses every layer; each must hash to its diff_id in the config.
    let copy = project.dir.path().join("skopeo-dir");
    run_ok(Command::new("skopeo").args(["copy", "--quiet", "--dest-decompress"]).arg(format!("oci:{}:latest", project.out().display())).arg(format!("dir:{}", copy.display())));
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(copy.join("manifest.json")).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let config: serde_json::Value = serde_json::from_slice(&fs::read(copy.join(config_digest)).unwrap()).unwrap();
    for diff_id in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let hex = diff_id.as_str().unwrap().trim_start_matches("sha256:");
        let sum = run_ok(Command::new("sha256sum").arg(copy.join(hex)));
        assert!(sum.starts_with(hex), "skopeo's decompressed layer {hex}: {sum}");
    }
}

#[test]
fn the_audio_example_builds_from_its_committed_lock_and_runs() {
    let work = tempfile::tempdir().unwrap();
    let output = crate::support::galley()
        .arg("--cache")
        .arg(crate::support::shared_galley_cache())
        .args(["build", "--json", "--output"])
        .arg(work.path().join("out"))
        .arg(crate::support::examples().join("audio"))
        .output()
        .unwrap();
    let report = json_of(&output);
    assert_eq!(report["wheels"], 4, "{report}");
    if !is_root() {
        eprintln!("skipped running the image: the chroot engine needs root");
        return;
    }
    let output = crate::support::galley()
        .arg("--cache")
        .arg(crate::support::shared_galley_cache())
        .args(["run", "-q", "--engine", "chroot", "--output"])
        .arg(work.path().join("out"))
        .arg(crate::support::examples().join("audio"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}\n{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("wrote and read back tone.wav with numpy 1.26.4"), "{}", stdout(&output));
}
