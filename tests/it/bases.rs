//! Bases other than a plain root filesystem: a previous build's OCI layout, a docker
//! archive, and a layout whose layers delete files (whiteouts made by umoci).

use std::fs;
use std::process::Command;

use crate::support::{Project, is_root, run_ok};

/// Unpacks the image in `layout` tagged `tag` with umoci and returns the rootfs path.
fn umoci_unpack(layout: &std::path::Path, tag: &str, into: &std::path::Path) -> std::path::PathBuf {
    let bundle = into.join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:{tag}", layout.display())).arg(&bundle));
    bundle.join("rootfs")
}

#[test]
fn builds_on_an_oci_layout_and_on_a_docker_archive() {
    let first = Project::hello();
    let archive = first.dir.path().join("hello.tar");
    first.build(&["--docker-archive", archive.to_str().unwrap()]);

    let on_layout = Project::hello();
    on_layout.use_base(&format!("oci = \"{}:0.1.0\"", first.out().display()));
    on_layout.write("app/hello.py", "print('layered')\n");
    let report = on_layout.build(&[]);
    let base_layers = first.build(&[])["layers"].as_array().unwrap().len();
    assert_eq!(report["layers"].as_array().unwrap().len(), base_layers + 1, "the base's layers, then the new app layer");

    let on_archive = Project::hello();
    on_archive.use_base(&format!("archive = \"{}\"", archive.display()));
    on_archive.write("app/hello.py", "print('layered')\n");
    let from_archive = on_archive.build(&[]);
    assert_eq!(from_archive["digest"], report["digest"], "same base content, same image");
}

#[test]
fn whiteouts_in_the_base_are_honoured() {
    if !is_root() {
        eprintln!("skipped: umoci unpack needs root");
        return;
    }
    let first = Project::hello();
    first.build(&[]);
    // umoci repack turns a deleted file into a whiteout entry in a new layer.
    let work = first.dir.path().join("umoci");
    let rootfs = umoci_unpack(&first.out(), "0.1.0", &work);
    fs::remove_file(rootfs.join("app/message.txt")).unwrap();
    fs::remove_dir_all(rootfs.join("usr/share/doc")).unwrap();
    run_ok(Command::new("umoci").args(["repack", "--image"]).arg(format!("{}:trimmed", first.out().display())).arg(work.join("bundle")));

    let on_top = Project::hello();
    on_top.use_base(&format!("oci = \"{}:trimmed\"", first.out().display()));
    on_top.write("app/hello.py", "print('on a trimmed base')\n");
    fs::remove_file(on_top.path().join("app/message.txt")).unwrap();
    on_top.build(&[]);
    let result = umoci_unpack(&on_top.out(), "0.1.0", &on_top.dir.path().join("check"));
    assert!(!result.join("app/message.txt").exists(), "the whiteout removed the file");
    assert!(!result.join("usr/share/doc").exists(), "and the directory");
    assert!(result.join("usr/bin/python3").exists());
    assert_eq!(fs::read_to_string(result.join("app/hello.py")).unwrap(), "print('on a trimmed base')\n");
}
