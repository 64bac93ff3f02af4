//! Bad input gets one clear error naming the file and field, and the right exit code:
//! 2 for usage and manifest errors, 1 for build failures.

use std::fs;

use crate::support::{Project, stderr};

fn fails(project: &Project, args: &[&str], code: i32, expected: &[&str]) {
    let output = project.galley().args(args).output().unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(code), "{err}");
    for needle in expected {
        assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    }
}

fn manifest_with(project: &Project, from: &str, to: &str) {
    let text = fs::read_to_string(project.path().join("galley.toml")).unwrap();
    assert!(text.contains(from), "{from} not in manifest");
    project.write("galley.toml", &text.replacen(from, to, 1));
}

#[test]
fn malformed_toml_names_line_and_column() {
    let project = Project::hello();
    manifest_with(&project, "version = \"0.1.0\"", "version = 0.1.0");
    fails(&project, &["build"], 2, &["galley.toml:6:14:", "invalid float"]);
}

#[test]
fn unknown_keys_suggest_the_closest() {
    let project = Project::hello();
    manifest_with(&project, "entrypoint =", "entrypiont =");
    fails(&project, &["build"], 2, &["unknown field `entrypiont`", "did you mean `entrypoint`?"]);
}

#[test]
fn missing_paths_and_projects_are_named() {
    let project = Project::hello();
    manifest_with(&project, "src = \"app/\"", "src = \"ap/\"");
    fails(&project, &["build"], 2, &["[[files]] #1 `src`", "`ap/` does not exist"]);
    let empty = Project::empty();
    fs::create_dir_all(empty.path()).unwrap();
    fails(&empty, &["build"], 2, &["galley.toml"]);
}

#[test]
fn a_base_that_is_not_an_image_is_refused() {
    let project = Project::hello();
    project.write("not-an-image.tar", "this is not a tar archive at all, just text that goes on and on");
    project.use_base("archive = \"not-an-image.tar\"");
    fails(&project, &["build"], 2, &["not-an-image.tar", "is not a usable base image"]);
}

#[test]
fn a_rootfs_symlink_escaping_the_root_is_refused() {
    let project = Project::hello();
    let root = project.path().join("myroot");
    fs::create_dir_all(root.join("etc")).unwrap();
    std::os::unix::fs::symlink("../../../../etc/shadow", root.join("etc/leak")).unwrap();
    project.use_base("rootfs = \"myroot\"");
    fails(&project, &["build"], 2, &["/etc/leak", "climbs out of the root filesystem"]);
}

#[test]
fn colliding_files_name_both_sets() {
    let project = Project::hello();
    project.write("other/hello.py", "print('other')");
    let text = fs::read_to_string(project.path().join("galley.toml")).unwrap()
        + "\n[[files]]\nsrc = \"other\"\ndest = \"/app\"\n";
    project.write("galley.toml", &text);
    fails(&project, &["build"], 2, &["[[files]] #1 `src` and [[files]] #2 `src` both put a file at /app/hello.py"]);
}

#[test]
fn a_user_missing_from_the_base_is_refused() {
    let project = Project::hello();
    manifest_with(&project, "user = \"1000:1000\"", "user = \"appuser\"");
    fails(&project, &["build"], 2, &["[runtime] `user`", "appuser", "/etc/passwd"]);
}

#[test]
fn a_failing_base_build_exits_1_with_the_tools_message() {
    let project = Project::hello();
    project.use_base("debian = { suite = \"no-such-suite\", packages = [\"python3\"] }");
    fails(&project, &["build"], 1, &["mmdebstrap failed for `no-such-suite`"]);
    // No mmdebstrap on PATH: the error says how to install it.
    let output = project.galley().args(["build"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("apt-get install -y mmdebstrap"), "{}", stderr(&output));
}

#[test]
fn an_output_directory_that_is_not_a_layout_is_refused() {
    let project = Project::hello();
    project.write("notes/todo.txt", "mine");
    let notes = project.path().join("notes");
    fails(&project, &["build", "--output", notes.to_str().unwrap()], 2, &["is not an OCI image layout", "choose another --output"]);
    assert_eq!(fs::read_to_string(notes.join("todo.txt")).unwrap(), "mine");
}

#[test]
fn bad_flags_are_usage_errors() {
    let project = Project::hello();
    fails(&project, &["build", "--compression", "lz4"], 2, &["lz4"]);
    fails(&project, &["frobnicate"], 2, &["frobnicate"]);
}
