//! Installing real and hand-made wheels: the result against `uv pip install`, the env
//! running on the host's Python, and every kind of broken or malicious wheel refused.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use super::testing::*;
use super::*;
use crate::cache::Cache;
use crate::plan::{Families, PlanOptions, plan_env_layers};
use crate::progress::Reporter;

/// A wheel exercising what real wheels rarely combine: headers, gui scripts, `#!pythonw`,
/// a `#!python` line with arguments, a plain executable script, purelib/platlib data, a
/// path with a comma, an empty directory, an executable module, and attribute entry points.
fn demo_wheel() -> TestWheel {
    let w = TestWheel::new("demo_pkg", "1.0");
    let (info, data) = (w.info(), w.data());
    let mut w = w
        .file("demo_pkg/__init__.py", "def main():\n    print('hi')\n")
        .exec("demo_pkg/tool.sh", "#!/bin/sh\necho tool\n")
        .file(&format!("{data}/headers/demo.h"), "int x;\n")
        .file(&format!("{data}/scripts/demo-w"), "#!pythonw\nprint('w')\n")
        .file(&format!("{data}/scripts/demo-3"), "#!python3 -u\nprint('3')\n")
        .exec(&format!("{data}/scripts/plain.sh"), "#!/bin/sh\necho plain\n")
        .file(&format!("{data}/scripts/demo"), "#!python\nprint('replaced by the entry point')\n")
        .file(&format!("{data}/platlib/demo_plat.py"), "x = 1\n")
        .file(&format!("{data}/purelib/demo_pure.py"), "x = 2\n")
        .file(&format!("{data}/data/share/demo/a,b.txt"), "comma\n")
        .file(
            &format!("{info}/entry_points.txt"),
            "[console_scripts]\ndemo = demo_pkg:main\ndemo-attr = demo_pkg:main.__call__ [extra]\n[gui_scripts]\ndemo-gui = demo_pkg:main\n[other.group]\nx = y:z\n",
        );
    w.dirs = vec!["demo_pkg/".into(), "demo_pkg/empty/".into()];
    w
}

#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>, u32),
    Link(String),
}

fn walk(root: &Path) -> BTreeMap<String, Node> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                out.insert(rel, Node::Link(std::fs::read_link(&path).unwrap().to_string_lossy().into_owned()));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                go(root, &path, out);
            } else {
                out.insert(rel, Node::File(std::fs::read(&path).unwrap(), meta.permissions().mode() & 0o7777));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// Files uv writes that galley does not, by design (see notes/readme-install.md).
fn uv_only(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    matches!(rel, ".gitignore" | ".lock" | "CACHEDIR.TAG")
        || rel.starts_with("bin/activate")
        || (rel.starts_with("bin/") && name.ends_with(".bat"))
        || (rel.contains(".dist-info/") && matches!(name, "REQUESTED" | "direct_url.json" | "uv_cache.json"))
}

/// Drops the rows of files only uv writes (and INSTALLER, whose text differs) from a RECORD,
/// and the lines of pyvenv.cfg that name the tool or the patch version.
fn normalize(rel: &str, node: Node) -> Node {
    let Node::File(bytes, mode) = node else { return node };
    let text = String::from_utf8_lossy(&bytes);
    if rel.ends_with(".dist-info/RECORD") {
        let kept: String = text
            .lines()
            .filter(|l| !["/REQUESTED,", "/direct_url.json,", "/uv_cache.json,", "/INSTALLER,"].iter().any(|f| l.contains(f)))
            .map(|l| format!("{l}\n"))
            .collect();
        return Node::File(kept.into_bytes(), mode);
    }
    if rel.ends_with(".dist-info/INSTALLER") {
        return Node::File(Vec::new(), mode);
    }
    if rel == "pyvenv.cfg" {
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("uv = "))
            .map(|l| if l.starts_with("version_info = ") { "version_info = 3.11".to_owned() } else { l.to_owned() })
            .map(|l| format!("{l}\n"))
            .collect();
        return Node::File(kept.into_bytes(), mode);
    }
    Node::File(bytes, mode)
}

fn install_env(cache: &Cache, wheels: &[WheelFile], prefix: &Path, stage: &Path) {
    let layout = layout_at("core", prefix);
    let trees = Installer::new(cache, &()).install_all(wheels, &layout).unwrap();
    let env = resolve_env(layout, trees, true, &()).unwrap();
    let layers = plan_env_layers(&[env], &Families::default(), &PlanOptions::default()).unwrap();
    materialize(cache, &layers, stage, prefix);
}

#[test]
fn the_installed_env_matches_uv_pip_install() {
    let tmp = tempfile::tempdir().unwrap();
    let mut wheels = real_wheels();
    wheels.push(demo_wheel().build(tmp.path()));
    let prefix = tmp.path().join("env");
    let python = host_python();
    let mut script = format!(
        "umask 022 && uv venv -q --python {} {} && uv pip install -q --no-deps --no-index --python {}/bin/python",
        python.display(),
        prefix.display(),
        prefix.display()
    );
    for w in &wheels {
        script.push_str(&format!(" {}", w.path.display()));
    }
    run(Command::new("sh")
        .args(["-c", &script])
        .env("UV_CACHE_DIR", tmp.path().join("uv-cache"))
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never"));
    let uv_tree = tmp.path().join("uv");
    std::fs::rename(&prefix, &uv_tree).unwrap();

    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    install_env(&cache, &wheels, &prefix, &tmp.path().join("stage"));

    let theirs: BTreeMap<_, _> = walk(&uv_tree).into_iter().filter(|(r, _)| !uv_only(r)).map(|(r, n)| (r.clone(), normalize(&r, n))).collect();
    let ours: BTreeMap<_, _> = walk(&prefix).into_iter().filter(|(r, _)| !uv_only(r)).map(|(r, n)| (r.clone(), normalize(&r, n))).collect();
    let mut differences = Vec::new();
    for (rel, node) in &theirs {
        match ours.get(rel) {
            None => differences.push(format!("only uv has {rel}")),
            Some(mine) if mine != node => differences.push(format!("{rel} differs: uv {:?} vs galley {:?}", brief(node), brief(mine))),
            Some(_) => {}
        }
    }
    differences.extend(ours.keys().filter(|r| !theirs.contains_key(*r)).map(|r| format!("only galley has {r}")));
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    assert!(theirs.len() > 1400, "the comparison covered {} paths", theirs.len());
    // The documented differences, checked rather than assumed.
    let installer = prefix.join("lib/python3.11/site-packages/numpy-2.1.3.dist-info/INSTALLER");
    assert_eq!(std::fs::read_to_string(installer).unwrap(), "galley");
    assert!(prefix.join("bin/activate").is_file() && prefix.join("bin/activate.fish").is_file());
}

fn brief(node: &Node) -> String {
    match node {
        Node::File(bytes, mode) => format!("file {mode:o} {} bytes: {:?}", bytes.len(), String::from_utf8_lossy(&bytes[..bytes.len().min(80)])),
        other => format!("{other:?}"),
    }
}

#[test]
fn the_env_imports_numpy_and_soundfile_and_runs_scripts_on_the_host_python() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels: Vec<WheelFile> =
        real_wheels().into_iter().filter(|w| ["numpy", "soundfile", "cffi", "pycparser", "jsonpointer"].contains(&w.filename.name().as_ref())).collect();
    let prefix = tmp.path().join("env");
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    install_env(&cache, &wheels, &prefix, &tmp.path().join("stage"));
    let python = prefix.join("bin/python");

    let wav = tmp.path().join("tone.wav");
    let program = format!(
        "import sys, numpy, soundfile\n\
         assert sys.prefix == {prefix:?}, sys.prefix\n\
         t = numpy.linspace(0, 1, 8000, endpoint=False)\n\
         tone = (0.5 * numpy.sin(2 * numpy.pi * 440 * t)).astype('float32')\n\
         soundfile.write({wav:?}, tone, 8000, subtype='FLOAT')\n\
         back, rate = soundfile.read({wav:?}, dtype='float32')\n\
         assert rate == 8000 and numpy.array_equal(back, tone)\n\
         print(soundfile.__libsndfile_version__, numpy.__version__)\n",
        prefix = prefix.to_str().unwrap(),
        wav = wav.to_str().unwrap(),
    );
    let out = run(Command::new(&python).args(["-c", &program]));
    assert!(out.trim().ends_with("2.1.3"), "{out}");
    assert!(wav.metadata().unwrap().len() > 32_000);

    // A console script (entry point launcher) and a `.data/scripts` script with a rewritten `#!python`.
    assert_eq!(run(Command::new(prefix.join("bin/numpy-config")).arg("--version")).trim(), "2.1.3");
    let doc = tmp.path().join("doc.json");
    std::fs::write(&doc, r#"{"a": {"b": [1, 2]}}"#).unwrap();
    assert_eq!(run(Command::new(prefix.join("bin/jsonpointer")).arg("/a/b/1").arg(&doc)).trim(), "2");

    // The activate script puts the env first and deactivate restores PATH.
    let out = run(Command::new("sh").args([
        "-c",
        &format!(". {0}/bin/activate && echo \"$VIRTUAL_ENV\" && command -v python && deactivate && echo \"${{VIRTUAL_ENV:-unset}}\"", prefix.display()),
    ]));
    assert_eq!(out.lines().collect::<Vec<_>>(), [prefix.to_str().unwrap(), python.to_str().unwrap(), "unset"]);
}

fn empty_store(cache: &Cache) {
    let trees: Vec<_> = std::fs::read_dir(cache.bucket("trees-v1")).unwrap().collect();
    let tmp: Vec<_> = std::fs::read_dir(cache.root().join("tmp")).unwrap().collect();
    assert!(trees.is_empty() && tmp.is_empty(), "left behind: {trees:?} {tmp:?}");
}

fn refuse(wheel: &WheelFile) -> InstallError {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    let err = Installer::new(&cache, &()).install(wheel, &layout).unwrap_err();
    assert!(err.to_string().contains(&wheel.filename.to_string()), "the error names the wheel: {err}");
    empty_store(&cache);
    err
}

#[test]
fn traversal_and_absolute_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = TestWheel::new("evil", "1.0");
    let data = base.data();
    for entry in ["../../../etc/cron.d/x", "/etc/passwd", "pkg/../../x.py", &format!("{data}/data/../../../../x"), "pkg\\..\\x.py"] {
        let err = refuse(&TestWheel::new("evil", "1.0").file(entry, "boom").build(dir.path()));
        assert!(matches!(&err, InstallError::UnsafeEntry { entry: e, .. } if e == entry), "{entry}: {err}");
    }
    let err = refuse(&TestWheel::new("evil", "1.0").file(&format!("{data}/lib/x"), "x").build(dir.path()));
    assert!(matches!(err, InstallError::UnsafeEntry { .. }), "{err}");
    let err = refuse(&TestWheel::new("evil", "1.0").file(&format!("{data}/scripts/python"), "x").build(dir.path()));
    assert!(matches!(err, InstallError::ReservedPath { .. }), "{err}");
    let err = refuse(&TestWheel::new("evil", "1.0").file(&format!("{}/entry_points.txt", base.info()), "[console_scripts]\n../../x = a:b\n").build(dir.path()));
    assert!(matches!(err, InstallError::UnsafeEntry { .. }), "{err}");
}

#[test]
fn record_mismatches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = TestWheel::new("rec", "1.0").file("rec.py", "print(1)\n");
    let good = w.computed_record();

    let mut tampered = TestWheel::new("rec", "1.0").file("rec.py", "print(1)\n");
    tampered.record = Some(good.replace("rec.py,sha256=", "rec.py,sha256=AAAA"));
    let err = refuse(&tampered.build(dir.path()));
    assert!(matches!(&err, InstallError::RecordMismatch { entry, .. } if entry == "rec.py"), "{err}");

    let mut wrong_size = TestWheel::new("rec", "1.0").file("rec.py", "print(1)\n");
    wrong_size.record = Some(good.replace(",9\n", ",10\n"));
    assert!(matches!(refuse(&wrong_size.build(dir.path())), InstallError::RecordMismatch { .. }));

    let mut unlisted = TestWheel::new("rec", "1.0").file("rec.py", "print(1)\n");
    unlisted.record = Some(good.lines().filter(|l| !l.starts_with("rec.py")).map(|l| format!("{l}\n")).collect());
    let err = refuse(&unlisted.build(dir.path()));
    assert!(err.to_string().contains("not listed in RECORD"), "{err}");

    let mut missing = TestWheel::new("rec", "1.0").file("rec.py", "print(1)\n");
    missing.record = Some(String::new());
    assert!(matches!(refuse(&missing.build(dir.path())), InstallError::Malformed { file, .. } if file.ends_with("RECORD")));
}

#[test]
fn broken_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let info = TestWheel::new("meta", "1.0").info();
    let no_wheel = TestWheel::new("meta", "1.0").without(&format!("{info}/WHEEL"));
    assert!(matches!(refuse(&no_wheel.build(dir.path())), InstallError::Malformed { file, .. } if file.ends_with("WHEEL")));
    let v2 = TestWheel::new("meta", "1.0").file(&format!("{info}/WHEEL"), "Wheel-Version: 2.0\nRoot-Is-Purelib: true\n");
    assert!(matches!(refuse(&v2.build(dir.path())), InstallError::Malformed { .. }));
    let bad_entry_points = TestWheel::new("meta", "1.0").file(&format!("{info}/entry_points.txt"), "[console_scripts]\nx = nocolon\n");
    assert!(matches!(refuse(&bad_entry_points.build(dir.path())), InstallError::Malformed { .. }));

    // The dist-info directory, METADATA and the file name must agree on name and version.
    let other = TestWheel::new("other", "1.0");
    let bytes = other.zip_bytes();
    let err = refuse(&write_wheel(dir.path(), "meta-1.0-py3-none-any.whl", &bytes));
    assert!(matches!(&err, InstallError::NameMismatch { found, .. } if found == "other 1.0"), "{err}");
    let lying = TestWheel::new("meta", "1.0").file(&format!("{info}/METADATA"), "Metadata-Version: 2.1\nName: meta\nVersion: 2.0\n");
    assert!(matches!(refuse(&lying.build(dir.path())), InstallError::NameMismatch { what: "METADATA", .. }));
    let two = TestWheel::new("meta", "1.0").file("meta2-1.0.dist-info/METADATA", "x");
    assert!(matches!(refuse(&two.build(dir.path())), InstallError::Malformed { .. }));

    let err = refuse(&write_wheel(dir.path(), "junk-1.0-py3-none-any.whl", b"not a zip"));
    assert!(matches!(err, InstallError::Zip { .. }), "{err}");
}

#[test]
fn zip_bombs_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 4 << 20];
    let bomb = TestWheel::new("bomb", "1.0").file("bomb/zeros.bin", &zeros).build(dir.path());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    let tight = Limits { max_unpacked_bytes: 64 << 30, max_ratio: 100, ratio_floor_bytes: 1 << 20 };
    let err = Installer::new(&cache, &()).with_limits(tight).install(&bomb, &layout).unwrap_err();
    assert!(matches!(&err, InstallError::ZipBomb { why, .. } if why.contains("more than 100 times")), "{err}");
    let small = Limits { max_unpacked_bytes: 1 << 20, ..Limits::default() };
    let err = Installer::new(&cache, &()).with_limits(small).install(&bomb, &layout).unwrap_err();
    assert!(matches!(&err, InstallError::ZipBomb { why, .. } if why.contains("over the limit")), "{err}");
    empty_store(&cache);
    // With default limits the same (honest) wheel installs.
    Installer::new(&cache, &()).install(&bomb, &layout).unwrap();

    // An entry whose headers understate its size is caught while inflating.
    let mut bytes = TestWheel::new("liar", "1.0").file("liar/zeros.bin", &zeros).zip_bytes();
    let declared = u32::try_from(zeros.len()).unwrap().to_le_bytes();
    let claimed = 1000u32.to_le_bytes();
    let mut patched = 0;
    for i in 0..bytes.len() - 4 {
        if bytes[i..i + 4] == declared {
            bytes[i..i + 4].copy_from_slice(&claimed);
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "the local and central headers both declare the size");
    let err = refuse(&write_wheel(dir.path(), "liar-1.0-py3-none-any.whl", &bytes));
    assert!(matches!(&err, InstallError::ZipBomb { why, .. } if why.contains("inflates past")), "{err}");

    // Two entries named alike: which one lands would depend on the reader.
    let mut dup = TestWheel::new("dup", "1.0").file("dup/a.py", "1").file("dup/b.py", "2").zip_bytes();
    for i in 0..dup.len() - 8 {
        if &dup[i..i + 8] == b"dup/b.py" {
            dup[i..i + 8].copy_from_slice(b"dup/a.py");
        }
    }
    let err = refuse(&write_wheel(dir.path(), "dup-1.0-py3-none-any.whl", &dup));
    assert!(matches!(err, InstallError::UnsafeEntry { .. }), "{err}");
}

#[test]
fn a_wheel_that_does_not_match_the_lock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut wheel = TestWheel::new("locked", "1.0").file("locked.py", "x = 1\n").build(dir.path());
    let actual = wheel.sha256.clone();
    wheel.sha256 = crate::oci::Digest::of(b"what the lock says");
    let err = refuse(&wheel);
    assert!(matches!(&err, InstallError::HashMismatch { actual: a, .. } if *a == actual), "{err}");
    assert!(!err.is_usage());
}

#[derive(Default)]
struct Recorder {
    notes: Mutex<Vec<String>>,
    tasks: Mutex<usize>,
}

impl Reporter for Recorder {
    fn on_task_start(&self, _: crate::progress::TaskKind, _: &str, _: Option<u64>) -> usize {
        *self.tasks.lock().unwrap() += 1;
        0
    }
    fn on_note(&self, message: &str) {
        self.notes.lock().unwrap().push(message.to_owned());
    }
}

#[test]
fn trees_are_reused_and_concurrent_installs_share_one() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = demo_wheel().build(dir.path());
    let cache_dir = tempfile::tempdir().unwrap();
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    let trees: Vec<InstalledTree> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let cache = Cache::open(cache_dir.path()).unwrap();
                    Installer::new(&cache, &()).install(&wheel, &layout).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(trees.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(std::fs::read_dir(cache_dir.path().join("trees-v1")).unwrap().count(), 1);

    let cache = Cache::open(cache_dir.path()).unwrap();
    let recorder = Recorder::default();
    let again = Installer::new(&cache, &recorder).install(&wheel, &layout).unwrap();
    assert_eq!(again, trees[0]);
    assert_eq!(*recorder.tasks.lock().unwrap(), 0, "a cached tree is not unpacked again");

    // A build killed while unpacking leaves only its staging directory in tmp/, which
    // the next build removes (pid 2^22+1 is above the kernel's pid_max, so never alive).
    let stale = cache_dir.path().join("tmp/4194305-0-tree");
    std::fs::create_dir_all(stale.join("root/lib")).unwrap();
    std::fs::write(stale.join("root/lib/half.py"), "x = ").unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    assert!(!stale.exists());

    // Another prefix or Python version is another tree.
    let other = layout_at("asr", Path::new("/opt/galley/envs/asr"));
    let moved = Installer::new(&cache, &()).install(&wheel, &other).unwrap();
    assert_ne!(moved.key, again.key);
    let launcher = std::fs::read_to_string(moved.root.join("bin/demo")).unwrap();
    assert!(launcher.starts_with("#!/opt/galley/envs/asr/bin/python\n"), "{launcher}");
    let mut py312 = layout.clone();
    py312.interpreter.version = (3, 12);
    let newer = Installer::new(&cache, &()).install(&wheel, &py312).unwrap();
    assert_ne!(newer.key, again.key);
    assert!(newer.files.iter().any(|f| f.path.as_str() == "lib/python3.12/site-packages/demo_pkg/__init__.py"));
}

#[test]
fn the_tree_records_modes_sizes_and_digests() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let wheel = demo_wheel().build(dir.path());
    let tree = Installer::new(&cache, &()).install(&wheel, &layout_at("core", Path::new("/opt/galley/envs/core"))).unwrap();
    let mode = |p: &str| tree.files.iter().find(|f| f.path.as_str() == p).map(|f| f.mode);
    assert_eq!(mode("lib/python3.11/site-packages/demo_pkg/tool.sh"), Some(0o755));
    assert_eq!(mode("lib/python3.11/site-packages/demo_pkg/__init__.py"), Some(0o644));
    assert_eq!(mode("bin/demo-3"), Some(0o755), "scripts are executable whatever the zip says");
    assert_eq!(mode("include/site/python3.11/demo-pkg/demo.h"), Some(0o644));
    assert_eq!(mode("share/demo/a,b.txt"), Some(0o644));
    assert!(tree.dirs.iter().any(|d| d.as_str() == "lib/python3.11/site-packages/demo_pkg/empty"));
    for f in &tree.files {
        let disk = tree.path_of(f);
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), f.size, "{}", f.path);
        assert_eq!(file_sha(&disk), f.sha256.to_string(), "{}", f.path);
    }
    let script = std::fs::read_to_string(tree.root.join("bin/demo-3")).unwrap();
    assert_eq!(script, "#!/opt/galley/envs/core/bin/python\nprint('3')\n");
    let launcher = std::fs::read_to_string(tree.root.join("bin/demo")).unwrap();
    assert!(launcher.contains("from demo_pkg import main\n"), "the entry point replaces the .data script: {launcher}");
}

fn tree_with(cache: &Cache, dir: &Path, wheel: TestWheel) -> InstalledTree {
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    Installer::new(cache, &()).install(&wheel.build(dir), &layout).unwrap()
}

#[test]
fn packages_sharing_a_path_resolve_like_pip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let a = tree_with(&cache, dir.path(), TestWheel::new("nvidia_a", "1.0").file("nvidia/__init__.py", "").file("nvidia/a.py", "a").file("shared.txt", "from a"));
    let b = tree_with(&cache, dir.path(), TestWheel::new("nvidia_b", "1.0").file("nvidia/__init__.py", "").file("nvidia/b.py", "b").file("shared.txt", "from b"));
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));

    let recorder = Recorder::default();
    let env = resolve_env(layout.clone(), vec![a.clone(), b.clone()], false, &recorder).unwrap();
    let notes = recorder.notes.lock().unwrap().clone();
    assert_eq!(notes.len(), 1, "identical nvidia/__init__.py is silent: {notes:?}");
    assert!(notes[0].contains("nvidia-a 1.0") && notes[0].contains("nvidia-b 1.0") && notes[0].contains("shared.txt"), "{}", notes[0]);
    let shared = "lib/python3.11/site-packages/shared.txt";
    assert!(env.files_of(0).all(|f| f.path.as_str() != shared), "the earlier package loses the differing file");
    assert!(env.files_of(1).any(|f| f.path.as_str() == shared));
    let init = "lib/python3.11/site-packages/nvidia/__init__.py";
    assert_eq!(env.files_of(0).filter(|f| f.path.as_str() == init).count() + env.files_of(1).filter(|f| f.path.as_str() == init).count(), 1);

    let err = resolve_env(layout.clone(), vec![a.clone(), b.clone()], true, &()).unwrap_err();
    assert!(matches!(err, InstallError::Conflict { strict: true, .. }) && err.is_usage(), "{err}");
    let err = resolve_env(layout.clone(), vec![a.clone(), a.clone()], false, &()).unwrap_err();
    assert!(matches!(err, InstallError::DuplicatePackage { .. }), "{err}");

    let file = tree_with(&cache, dir.path(), TestWheel::new("flat", "1.0").file("nvidia", "a file"));
    let err = resolve_env(layout, vec![a, file], false, &()).unwrap_err();
    assert!(matches!(err, InstallError::FileDirConflict { .. }), "{err}");
}

#[test]
fn skeleton_envs_json_and_runtime_env() {
    let layout = EnvLayout::new(
        "core",
        crate::layer::LayerPath::new("/opt/galley/envs/core").unwrap(),
        crate::base::Interpreter { executable: crate::layer::LayerPath::new("/usr/bin/python3.11").unwrap(), version: (3, 11), patch: None },
    );
    let skeleton = venv_skeleton(&layout).unwrap();
    let find = |p: &str| skeleton.iter().find(|e| e.path.as_str() == p).unwrap_or_else(|| panic!("{p} in the skeleton"));
    let link = |p: &str| match &find(p).kind {
        crate::layer::EntryKind::Symlink { target } => target.clone(),
        other => panic!("{p} is {other:?}"),
    };
    assert_eq!(link("opt/galley/envs/core/bin/python"), "/usr/bin/python3.11");
    assert_eq!(link("opt/galley/envs/core/bin/python3"), "python");
    assert_eq!(link("opt/galley/envs/core/bin/python3.11"), "python");
    assert_eq!(link("opt/galley/envs/core/lib64"), "lib");
    match &find("opt/galley/envs/core/pyvenv.cfg").kind {
        crate::layer::EntryKind::File { source: crate::layer::Source::Bytes(b), .. } => assert_eq!(
            std::str::from_utf8(b).unwrap(),
            "home = /usr/bin\nimplementation = CPython\nversion_info = 3.11\ninclude-system-site-packages = false\n"
        ),
        other => panic!("{other:?}"),
    }
    assert!(find("opt/galley/envs/core/lib/python3.11/site-packages").is_dir());

    let env = EnvInstall { layout: layout.clone(), packages: Vec::new(), shadowed: Vec::new() };
    let json = String::from_utf8(EnvsJson::new(&[env], "core").to_bytes()).unwrap();
    assert_eq!(
        json,
        "{\n  \"default\": \"core\",\n  \"envs\": {\n    \"core\": {\n      \"prefix\": \"/opt/galley/envs/core\",\n      \"python\": \"/opt/galley/envs/core/bin/python\",\n      \"interpreter\": \"/usr/bin/python3.11\",\n      \"python_version\": \"3.11\",\n      \"packages\": {}\n    }\n  }\n}\n"
    );

    let vars = runtime_env(&layout, Some("/usr/local/bin:/opt/galley/envs/core/bin:/usr/bin"));
    assert_eq!(vars[0], ("PATH".into(), "/opt/galley/envs/core/bin:/usr/local/bin:/usr/bin".into()));
    assert_eq!(vars[1], ("VIRTUAL_ENV".into(), "/opt/galley/envs/core".into()));
    assert!(runtime_env(&layout, None)[0].1.ends_with(":/usr/sbin:/usr/bin:/sbin:/bin"));
}
