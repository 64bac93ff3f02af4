//! Reproducibility, incremental rebuilds, interruption and concurrency.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Project, galley, json_of, layer_digests, packed_count, stderr};

#[test]
fn separate_checkouts_and_caches_give_the_same_digest() {
    let first = Project::hello();
    let second = Project::hello();
    let a = first.build(&[]);
    let b = second.build(&[]);
    assert_eq!(a["digest"], b["digest"], "same inputs in two checkouts with two caches");
    assert_eq!(layer_digests(&a), layer_digests(&b));

    let za = first.build(&["--compression", "zstd", "--output", "zstd-out"]);
    let zb = second.build(&["--compression", "zstd", "--output", "zstd-out"]);
    assert_eq!(za["digest"], zb["digest"], "zstd output is reproducible too");
    assert_ne!(za["digest"], a["digest"]);
    assert!(za["layers"][1]["size"].as_u64().unwrap() > 0);
}

#[test]
fn source_date_epoch_sets_created_and_changes_only_what_it_stamps() {
    let project = Project::hello();
    let plain = project.build(&[]);
    let output = project.galley().args(["build", "--json"]).env("SOURCE_DATE_EPOCH", "1700000000").output().unwrap();
    let stamped = json_of(&output);
    assert_ne!(plain["digest"], stamped["digest"]);
    let inspect = json_of(&project.galley().args(["inspect", "--json", ".galley/out"]).output().unwrap());
    assert_eq!(inspect[0]["created"], "2023-11-14T22:13:20Z");
    let bad = project.galley().args(["build"]).env("SOURCE_DATE_EPOCH", "yesterday").output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("SOURCE_DATE_EPOCH"));
}

#[test]
fn a_rebuild_packs_nothing_and_one_file_change_repacks_one_layer() {
    let project = Project::hello();
    project.write("assets/model.txt", "weights v1");
    let manifest = fs::read_to_string(project.path().join("galley.toml")).unwrap()
        + "\n[[files]]\nsrc = \"assets\"\ndest = \"/opt/assets\"\n";
    project.write("galley.toml", &manifest);
    let first = project.build(&[]);
    assert!(packed_count(&first) >= 2, "{first}");

    let again = project.build(&[]);
    assert_eq!(packed_count(&again), 0, "nothing changed, nothing packed: {again}");
    assert_eq!(again["digest"], first["digest"]);

    project.write("app/hello.py", "print('changed')\n");
    let changed = project.build(&[]);
    assert_eq!(packed_count(&changed), 1, "{changed}");
    let (before, after) = (layer_digests(&first), layer_digests(&changed));
    let differing: Vec<usize> = (0..before.len()).filter(|&i| before[i] != after[i]).collect();
    let app_layer = changed["layers"].as_array().unwrap().iter().position(|l| l["description"].as_str().unwrap().contains("app/")).unwrap();
    assert_eq!(differing, vec![app_layer], "only the app layer changed");
}

#[test]
fn a_killed_build_leaves_nothing_half_written_and_the_next_build_matches() {
    let project = Project::hello();
    // 300 MB of incompressible data keeps the packer busy long enough to be killed mid-layer.
    let mut big = vec![0u8; 300 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::create_dir_all(project.path().join("data")).unwrap();
    fs::write(project.path().join("data/blob.bin"), &big).unwrap();
    let manifest = fs::read_to_string(project.path().join("galley.toml")).unwrap()
        + "\n[[files]]\nsrc = \"data\"\ndest = \"/data\"\n";
    project.write("galley.toml", &manifest);

    let mut child = project.galley().args(["build", "--json"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let tmp = project.cache.join("tmp");
    // Kill it once it is writing a blob.
    for _ in 0..600 {
        if fs::read_dir(&tmp).map(|d| d.count() > 0).unwrap_or(false) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(fs::read_dir(&tmp).unwrap().count() > 0, "the kill should land mid-write");

    let after_kill = project.build(&[]);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "the next build removes the dead build's temp files");
    let clean = Project::hello();
    fs::create_dir_all(clean.path().join("data")).unwrap();
    fs::write(clean.path().join("data/blob.bin"), &big).unwrap();
    clean.write("galley.toml", &manifest);
    assert_eq!(after_kill["digest"], clean.build(&[])["digest"]);
    for blob in fs::read_dir(project.cache.join("blobs/sha256")).unwrap() {
        let blob = blob.unwrap();
        let (digest, _) = sha256_file(&blob.path());
        assert_eq!(digest, blob.file_name().to_string_lossy(), "every blob in the store is whole");
    }
}

fn sha256_file(path: &std::path::Path) -> (String, u64) {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    (text.split_whitespace().next().unwrap().to_owned(), fs::metadata(path).unwrap().len())
}

#[test]
fn two_builds_sharing_one_cache_both_succeed() {
    let first = Project::hello();
    let second = Project::hello();
    let spawn = |p: &Project, cache: &std::path::Path| {
        galley().arg("--cache").arg(cache).args(["build", "--json"]).current_dir(p.path()).output()
    };
    let shared = first.dir.path().join("shared-cache");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(&first, &shared).unwrap());
        let b = s.spawn(|| spawn(&second, &shared).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(json_of(&a)["digest"], json_of(&b)["digest"]);
}

#[test]
fn inspect_shows_layers_and_config() {
    let project = Project::hello();
    let report = project.build(&[]);
    let text = crate::support::run_ok(project.galley().args(["inspect", "."]));
    assert!(text.contains(report["digest"].as_str().unwrap()), "{text}");
    assert!(text.contains("files app/ -> /app"), "{text}");
    assert!(text.contains("workdir  /workspace") && text.contains("user     1000:1000"), "{text}");
    let json = json_of(&project.galley().args(["inspect", "--json", ".galley/out:0.1.0"]).output().unwrap());
    assert_eq!(json[0]["digest"], report["digest"]);
    assert_eq!(json[0]["layers"].as_array().unwrap().len(), report["layers"].as_array().unwrap().len());
    assert_eq!(json[0]["config"]["Entrypoint"][0], "python3");
}

#[test]
fn galley_timings_prints_a_line_per_task() {
    let project = Project::hello();
    let output = project.galley().arg("build").env("GALLEY_TIMINGS", "1").output().unwrap();
    let text = stderr(&output);
    assert!(output.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("timing:")).collect();
    assert!(lines.iter().any(|l| l.contains("import base image")), "{text}");
    assert!(lines.iter().any(|l| l.ends_with("pack files app/ -> /app")), "{text}");
}
