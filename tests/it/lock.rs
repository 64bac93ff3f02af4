//! `galley lock` and how `galley build` uses galley.lock: missing and stale locks,
//! `--update-lock`, `--offline`, and uv's failures with their exit codes.

use std::fs;

use crate::support::{Project, galley, json_of, stderr, test_cache};

/// The hello example with one env appended.
fn project_with_env(env: &str) -> Project {
    let project = Project::hello();
    let manifest = fs::read_to_string(project.path().join("galley.toml")).unwrap();
    project.write("galley.toml", &format!("{manifest}\n{env}"));
    project
}

/// `galley ARGS...` in the project, with uv's cache in the test cache.
fn run(project: &Project, args: &[&str]) -> std::process::Output {
    project.galley().args(args).env("UV_CACHE_DIR", test_cache().join("uv")).output().unwrap()
}

fn fails(output: &std::process::Output, code: i32, expected: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{err}");
    for needle in expected {
        assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    }
}

#[test]
fn lock_then_build_fetches_and_a_stale_lock_fails_the_build() {
    let project = project_with_env("[envs.app]\nrequirements = [\"six\"]\n");
    fails(&run(&project, &["build"]), 2, &["galley.lock does not exist; run `galley lock`"]);

    let locked = json_of(&run(&project, &["lock", "--json"]));
    assert_eq!(locked["changed"], true);
    let env = &locked["envs"][0];
    assert_eq!(env["name"], "app");
    assert!(env["python"].as_str().unwrap().starts_with("3.11"), "{env}");
    assert_eq!(env["platform"], "x86_64-manylinux_2_36");
    assert_eq!(env["wheels"], 1);
    let lock_text = fs::read_to_string(project.path().join("galley.lock")).unwrap();
    assert!(lock_text.contains("filename = \"six-"), "{lock_text}");

    // Locking again changes nothing; the build fetches the wheel, then works offline.
    assert_eq!(json_of(&run(&project, &["lock", "--json"]))["changed"], false);
    assert_eq!(fs::read_to_string(project.path().join("galley.lock")).unwrap(), lock_text);
    assert_eq!(json_of(&run(&project, &["build", "--json"]))["wheels"], 1);
    assert_eq!(json_of(&run(&project, &["build", "--json", "--offline"]))["wheels"], 1);

    // An edit to the env makes the lock stale until it is relocked.
    let manifest = fs::read_to_string(project.path().join("galley.toml")).unwrap();
    project.write("galley.toml", &manifest.replace("[\"six\"]", "[\"six\", \"idna\"]"));
    fails(&run(&project, &["build"]), 2, &["galley.lock is out of date for env app: requirements changed", "galley build --update-lock"]);
    assert_eq!(json_of(&run(&project, &["build", "--json", "--update-lock"]))["wheels"], 2);
    assert!(fs::read_to_string(project.path().join("galley.lock")).unwrap().contains("name = \"idna\""));

    // Another cache, offline: the build names what it lacks.
    let other = project.dir.path().join("other-cache");
    let output = galley().arg("--cache").arg(&other).args(["build", "--offline"]).current_dir(project.path()).output().unwrap();
    fails(&output, 1, &["offline, and the cache lacks 2 wheel(s)", "six ", "idna "]);
}

#[test]
fn lock_failures_name_the_cause_with_the_right_exit_code() {
    let project = project_with_env("[envs.app]\nrequirements = [\"numpy<1\"]\n");
    fails(&run(&project, &["lock"]), 2, &["uv could not resolve env app", "No solution found", "numpy<1"]);

    let output = project.galley().args(["lock"]).env("GALLEY_UV", "/nonexistent/uv").output().unwrap();
    fails(&output, 1, &["uv was not found (GALLEY_UV names /nonexistent/uv", "pip install uv"]);

    let plain = Project::hello();
    fails(&run(&plain, &["lock"]), 2, &["declares no [envs.NAME]"]);

    let bad = project_with_env("[envs.app]\nrequirements = [\"six\"]\n");
    fails(&run(&bad, &["lock", "--python-platform", "x86_64-linux"]), 2, &["is not a platform like x86_64-manylinux_2_36"]);
}
