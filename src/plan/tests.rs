//! Planning layers from installed envs: family layers that survive unrelated bumps,
//! size splitting, sharing across envs, and the budget.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::cache::Cache;
use crate::install::testing::{TestWheel, layout_at, materialize, pypi_wheel, run};
use crate::install::{EnvInstall, EnvLayout, InstalledTree, Installer, resolve_env};
use crate::layer::{Compression, PackedLayer, pack_cached};

/// A small stand-in package: one module of `size` bytes whose content depends on the version.
fn stand_in(cache: &Cache, dir: &Path, layout: &EnvLayout, name: &str, version: &str, size: usize) -> InstalledTree {
    let body: Vec<u8> = format!("# {name} {version}\n").bytes().cycle().take(size).collect();
    let wheel = TestWheel::new(name, version).file(&format!("{name}/__init__.py"), &body).file(&format!("{name}/const.py"), "X = 1\n");
    Installer::new(cache, &()).install(&wheel.build(dir), layout).unwrap()
}

fn env_of(layout: &EnvLayout, trees: Vec<InstalledTree>) -> EnvInstall {
    resolve_env(layout.clone(), trees, true, &()).unwrap()
}

fn pack_all(cache: &Cache, layers: &[PlannedLayer]) -> Vec<(PackedLayer, bool)> {
    layers.iter().map(|l| pack_cached(cache, &l.spec, Compression::Gzip, &|_| {}).unwrap()).collect()
}

fn names(layer: &PlannedLayer) -> Vec<String> {
    layer.packages.iter().map(|p| format!("{} {}", p.name, p.version)).collect()
}

#[test]
fn a_dependency_bump_repacks_only_the_layer_holding_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    let families = Families::new(&[("big".into(), vec!["alpha-*".into(), "beta".into()])]).unwrap();
    let options = PlanOptions { mtime: 1_700_000_000, ..PlanOptions::default() };
    let tree = |name: &str, version: &str| stand_in(&cache, tmp.path(), &layout, name, version, 20_000);
    let plan = |trees: Vec<InstalledTree>| plan_env_layers(&[env_of(&layout, trees)], &families, &options).unwrap();

    let v1 = plan(vec![tree("alpha_one", "1.0"), tree("alpha_two", "1.0"), tree("beta", "1.0"), tree("delta", "1.0"), tree("gamma", "1.0")]);
    assert_eq!(v1.len(), 3);
    assert_eq!(v1[0].role, LayerRole::Family { name: "big".into(), part: 1, parts: 1 });
    assert_eq!(names(&v1[0]), ["alpha-one 1.0", "alpha-two 1.0", "beta 1.0"]);
    assert_eq!(v1[1].role, LayerRole::Dependencies { part: 1, parts: 1 });
    assert_eq!(names(&v1[1]), ["delta 1.0", "gamma 1.0"]);
    assert_eq!(v1[2].role, LayerRole::Venvs);
    assert_eq!(v1[0].spec.description, "family big: alpha-one 1.0, alpha-two 1.0, beta 1.0 [env core]");
    let packed1 = pack_all(&cache, &v1);

    // gamma 1.0 -> 1.1: the family layer is the same layer, and is not packed again.
    let v2 = plan(vec![tree("alpha_one", "1.0"), tree("alpha_two", "1.0"), tree("beta", "1.0"), tree("delta", "1.0"), tree("gamma", "1.1")]);
    let packed2 = pack_all(&cache, &v2);
    assert_eq!(v2[0].spec.key, v1[0].spec.key);
    assert_eq!(packed2[0].0.digest, packed1[0].0.digest);
    assert!(!packed2[0].1, "the family layer is reused from the store");
    assert_ne!(packed2[1].0.digest, packed1[1].0.digest, "the layer holding gamma changes");
    assert_ne!(packed2[2].0.digest, packed1[2].0.digest, "envs.json lists the new version");

    // beta 1.0 -> 1.1: now the family changes and the other dependencies stay.
    let v3 = plan(vec![tree("alpha_one", "1.0"), tree("alpha_two", "1.0"), tree("beta", "1.1"), tree("delta", "1.0"), tree("gamma", "1.0")]);
    let packed3 = pack_all(&cache, &v3);
    assert_ne!(packed3[0].0.digest, packed1[0].0.digest);
    assert_eq!(packed3[1].0.digest, packed1[1].0.digest);
    assert!(!packed3[1].1);

    // The same plan in another store packs to the same bytes.
    let other = Cache::open(tmp.path().join("other")).unwrap();
    let again = pack_all(&other, &v1);
    assert_eq!(again.iter().map(|p| &p.0.digest).collect::<Vec<_>>(), packed1.iter().map(|p| &p.0.digest).collect::<Vec<_>>());
}

#[test]
fn entries_carry_fixed_metadata_and_their_ancestors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    let env = env_of(&layout, vec![stand_in(&cache, tmp.path(), &layout, "gamma", "1.0", 100)]);
    let options = PlanOptions { mtime: 1_234, ..PlanOptions::default() };
    let layers = plan_env_layers(&[env], &Families::default(), &options).unwrap();
    for layer in &layers {
        let paths: BTreeSet<&str> = layer.spec.entries.iter().map(|e| e.path.as_str()).collect();
        for e in &layer.spec.entries {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_234), "{}", e.path);
            for a in e.path.ancestors() {
                assert!(paths.contains(a.as_str()), "{} lacks its ancestor {a}", e.path);
            }
        }
        assert!(paths.contains("opt") && paths.contains("opt/galley/envs/core"));
    }
    let venvs = &layers[1].spec.entries;
    assert!(venvs.iter().any(|e| e.path.as_str() == "opt/galley/envs.json"));
    assert!(venvs.iter().any(|e| e.path.as_str() == "opt/galley/envs/core/pyvenv.cfg"));
}

#[test]
fn large_groups_split_by_size_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    // A package over the limit on its own, and small ones packed together.
    let huge = {
        let mut w = TestWheel::new("torch", "2.4.1");
        for i in 0..6 {
            w = w.file(&format!("torch/lib/part{i}.so"), vec![i as u8; 40_000]);
        }
        Installer::new(&cache, &()).install(&w.build(tmp.path()), &layout).unwrap()
    };
    let small: Vec<InstalledTree> = ["torchaudio", "torchvision"].iter().map(|n| stand_in(&cache, tmp.path(), &layout, n, "1.0", 30_000)).collect();
    let mut trees = vec![huge];
    trees.extend(small);
    let env = env_of(&layout, trees);
    let options = PlanOptions { split_bytes: 100_000, ..PlanOptions::default() };
    let layers = plan_env_layers(std::slice::from_ref(&env), &Families::default(), &options).unwrap();
    let torch: Vec<&PlannedLayer> = layers.iter().filter(|l| matches!(&l.role, LayerRole::Family { name, .. } if name == "torch")).collect();
    assert_eq!(torch.len(), 4, "{:?}", torch.iter().map(|l| &l.spec.description).collect::<Vec<_>>());
    for (i, layer) in torch.iter().enumerate() {
        assert_eq!(layer.role, LayerRole::Family { name: "torch".into(), part: i + 1, parts: 4 });
        let bytes: u64 = layer.spec.entries.iter().map(crate::layer::Entry::content_size).sum();
        assert!(bytes <= 100_000, "part {} holds {bytes} bytes", i + 1);
    }
    assert_eq!(names(torch[0]), ["torch 2.4.1"]);
    assert!(torch[0].spec.description.starts_with("family torch (part 1 of 4): torch 2.4.1"));
    assert_eq!(names(torch[3]), ["torchaudio 1.0", "torchvision 1.0"]);
    // Every file lands exactly once.
    let planned: Vec<String> = torch.iter().flat_map(|l| l.spec.entries.iter().filter(|e| !e.is_dir()).map(|e| e.path.to_string())).collect();
    let unique: BTreeSet<&String> = planned.iter().collect();
    let expected: usize = env.packages.iter().map(|p| p.files.len()).sum();
    assert_eq!((planned.len(), unique.len()), (expected, expected));
    // Planning again gives the same layers.
    let again = plan_env_layers(std::slice::from_ref(&env), &Families::default(), &options).unwrap();
    assert_eq!(layers.iter().map(|l| &l.spec.key).collect::<Vec<_>>(), again.iter().map(|l| &l.spec.key).collect::<Vec<_>>());
}

#[test]
fn the_budget_and_the_default_env_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    let trees: Vec<InstalledTree> = (0..5).map(|i| stand_in(&cache, tmp.path(), &layout, &format!("p{i}"), "1.0", 10_000)).collect();
    let env = env_of(&layout, trees);
    let options = PlanOptions { split_bytes: 10_000, max_layers: 4, ..PlanOptions::default() };
    let err = plan_env_layers(std::slice::from_ref(&env), &Families::default(), &options).unwrap_err();
    assert!(matches!(err, PlanError::TooManyLayers { count, max: 4 } if count > 4) && err.is_usage(), "{err}");
    let options = PlanOptions { default_env: Some("asr".into()), ..PlanOptions::default() };
    let err = plan_env_layers(&[env], &Families::default(), &options).unwrap_err();
    assert!(err.to_string().contains("`asr`") && err.to_string().contains("core"), "{err}");
}

/// numpy installed in two envs: measures hard links within one layer against a layer per
/// env, and runs numpy from the second env, whose files are hard links.
#[test]
fn identical_files_in_two_envs_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    let numpy = pypi_wheel("numpy", "2.1.3", "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl");
    let root = tmp.path().join("envs");
    let envs: Vec<EnvInstall> = ["core", "asr"]
        .iter()
        .map(|name| {
            let layout = layout_at(name, &root.join(name));
            let trees = Installer::new(&cache, &()).install_all(std::slice::from_ref(&numpy), &layout).unwrap();
            env_of(&layout, trees)
        })
        .collect();

    let shared = plan_env_layers(&envs, &Families::default(), &PlanOptions::default()).unwrap();
    let per_env = plan_env_layers(&envs, &Families::default(), &PlanOptions { sharing: EnvSharing::PerEnv, ..PlanOptions::default() }).unwrap();
    assert_eq!((shared.len(), per_env.len()), (2, 3));
    assert_eq!(names(&shared[0]), ["numpy 2.1.3", "numpy 2.1.3"]);
    assert!(shared[0].spec.description.ends_with("[envs core, asr]"));
    let links = shared[0].spec.entries.iter().filter(|e| matches!(e.kind, crate::layer::EntryKind::Hardlink { .. })).count();
    let files = shared[0].spec.entries.iter().filter(|e| matches!(e.kind, crate::layer::EntryKind::File { .. })).count();
    assert!(links > 900 && files > links, "{files} files, {links} links");

    let packed_shared = pack_all(&cache, &shared[..1]);
    let packed_per_env = pack_all(&cache, &per_env[..2]);
    let shared_bytes = packed_shared[0].0.size;
    let per_env_bytes: u64 = packed_per_env.iter().map(|p| p.0.size).sum();
    eprintln!(
        "numpy in two envs: one layer with hard links {shared_bytes} bytes gzip ({} uncompressed); a layer per env {per_env_bytes} bytes gzip ({} uncompressed)",
        packed_shared[0].0.uncompressed_size,
        packed_per_env.iter().map(|p| p.0.uncompressed_size).sum::<u64>()
    );
    assert!(shared_bytes * 10 < per_env_bytes * 6, "hard links save most of the second copy");

    // The env whose files are hard links works.
    materialize(&cache, &shared, &tmp.path().join("stage"), &root);
    let out = run(Command::new(root.join("asr/bin/python")).args(["-c", "import numpy, sys; print(sys.prefix, numpy.arange(4).sum())"]));
    assert_eq!(out.trim(), format!("{} 6", root.join("asr").display()));
}

/// numpy's layer in gzip copies the deflate streams of its large files from the wheel,
/// and still holds exactly the tar that zstd (or a plain gzip stream) holds.
#[test]
fn gzip_layers_copy_wheel_streams_and_hold_the_same_tar() {
    use std::io::{Read, Seek, SeekFrom};
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("cache")).unwrap();
    let numpy = pypi_wheel("numpy", "2.1.3", "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl");
    let layout = layout_at("core", Path::new("/opt/galley/envs/core"));
    let tree = Installer::new(&cache, &()).install(&numpy, &layout).unwrap();

    // Each recorded stream inflates to the installed file.
    let streams: Vec<_> = tree.files.iter().filter_map(|f| f.deflated.map(|s| (f, s))).collect();
    assert!(streams.len() > 500, "{} of {} files", streams.len(), tree.files.len());
    assert!(tree.files.iter().filter(|f| f.path.as_str().ends_with("RECORD") || f.path.as_str().starts_with("bin/")).all(|f| f.deflated.is_none()), "rewritten files have none");
    let mut wheel = std::fs::File::open(&numpy.path).unwrap();
    for (file, stream) in streams.iter().filter(|(f, _)| f.size > 1 << 20) {
        let mut raw = vec![0; usize::try_from(stream.length).unwrap()];
        wheel.seek(SeekFrom::Start(stream.offset)).unwrap();
        wheel.read_exact(&mut raw).unwrap();
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&raw[..]).read_to_end(&mut inflated).unwrap();
        assert!(inflated == std::fs::read(tree.path_of(file)).unwrap(), "{}", file.path);
    }

    let layers = plan_env_layers(&[env_of(&layout, vec![tree])], &Families::default(), &PlanOptions::default()).unwrap();
    let spec = &layers[0].spec;
    let (gz, _) = pack_cached(&cache, spec, Compression::Gzip, &|_| {}).unwrap();
    let (zstd, _) = pack_cached(&cache, spec, Compression::Zstd, &|_| {}).unwrap();
    let plain = crate::layer::write_tar(&spec.entries, Vec::new(), |_| {}).unwrap();
    let mut members = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(cache.blob_path(&gz.digest)).unwrap()).read_to_end(&mut members).unwrap();
    assert!(members == plain, "the gzip members decompress to the tar itself");
    assert_eq!(gz.diff_id, crate::oci::Digest::of(&plain));
    assert_eq!(zstd.diff_id, gz.diff_id);

    // What one fresh gzip-6 stream of the same tar weighs, for comparison.
    let fresh = crate::layer::write_tar(&spec.entries, Compression::Gzip.encoder(Vec::new()).unwrap(), |_| {}).unwrap().finish().unwrap();
    eprintln!("numpy 2.1.3 layer: {} bytes tar, {} gzip with wheel streams, {} gzip-6 fresh, {} zstd-3", plain.len(), gz.size, fresh.len(), zstd.size);
    assert!(gz.size * 100 < fresh.len() as u64 * 103, "copying the wheel's streams costs at most 3% in size");

    // The same wheel elsewhere, in another store: the same layer, byte for byte.
    let other = Cache::open(tmp.path().join("other")).unwrap();
    let copy = crate::install::WheelFile { path: tmp.path().join(numpy.path.file_name().unwrap()), ..numpy.clone() };
    std::fs::copy(&numpy.path, &copy.path).unwrap();
    let tree = Installer::new(&other, &()).install(&copy, &layout).unwrap();
    let layers = plan_env_layers(&[env_of(&layout, vec![tree])], &Families::default(), &PlanOptions::default()).unwrap();
    assert_eq!(pack_cached(&other, &layers[0].spec, Compression::Gzip, &|_| {}).unwrap().0.digest, gz.digest);
}
