//! `galley inspect PATH[:TAG]`: an image's layers (size, digest, what they hold) and
//! config, from an OCI layout, a docker/OCI archive, a project's build output, or a
//! registry (`docker://REF`, or a reference that is not a local path).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use galley::base::ImageFiles;
use galley::oci::{ANNOTATION_REF_NAME, Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform, layout_blob_path};
use galley::registry::ImageRef;

use super::registry::{RegistryArgs, pull};
use super::{Global, UsageError, human_size};

#[derive(Args)]
pub struct InspectArgs {
    /// OCI layout directory, archive tar, or project directory, optionally `:TAG`; or a
    /// registry image as `docker://REF` (or just REF when no such path exists)
    pub path: String,
    /// Platform to inspect in a multi-platform registry image [default: the host's]
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

struct Inspected {
    tag: Option<String>,
    descriptor: Descriptor,
    manifest: ImageManifest,
    config: ImageConfig,
}

pub fn run(global: &Global, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let (path, tag) = split_tag(&args.path);
    let (files, tag) = match registry_reference(&args.path, &path)? {
        Some(reference) => {
            let cache = global.cache()?;
            let pulled = pull(global, &cache, &reference, args.platform.as_ref(), &args.registry)?;
            (ImageFiles::Dir(pulled.cached_layout(&cache)?), None)
        }
        None => (open(&path)?, tag),
    };
    let images = read_images(&files, tag.as_deref()).with_context(|| format!("reading {}", args.path))?;
    if global.json {
        let docs: Vec<_> = images.iter().map(to_json).collect();
        println!("{}", serde_json::Value::Array(docs));
    } else if !global.quiet {
        for image in &images {
            print_image(image);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dir:tag` when `dir` exists, else the whole string is the path.
fn split_tag(raw: &str) -> (PathBuf, Option<String>) {
    if let Some((path, tag)) = raw.rsplit_once(':')
        && !tag.contains('/') && Path::new(path).exists() {
            return (PathBuf::from(path), Some(tag.to_owned()));
        }
    (PathBuf::from(raw), None)
}

/// `docker://REF`, or a reference with a tag, digest or registry that names no local
/// path (a bare word stays a path, so a typo does not go to Docker Hub).
fn registry_reference(raw: &str, path: &Path) -> anyhow::Result<Option<ImageRef>> {
    if let Some(reference) = raw.strip_prefix("docker://") {
        return Ok(Some(reference.parse().map_err(|e: galley::registry::ReferenceError| UsageError(e.to_string()))?));
    }
    if path.exists() || Path::new(raw).exists() || !raw.contains([':', '/', '@']) {
        return Ok(None);
    }
    Ok(raw.parse().ok())
}

fn open(path: &Path) -> anyhow::Result<ImageFiles> {
    if path.is_dir() {
        if path.join("index.json").is_file() {
            return Ok(ImageFiles::Dir(path.to_owned()));
        }
        let out = path.join(".galley/out");
        if out.join("index.json").is_file() {
            return Ok(ImageFiles::Dir(out));
        }
        bail!(UsageError(format!(
            "{} is neither an OCI image layout nor a built project (no index.json, no .galley/out); run `galley build` first",
            path.display()
        )));
    }
    if path.is_file() {
        return ImageFiles::open_tar(path).with_context(|| format!("{} is not a tar archive", path.display()));
    }
    bail!(UsageError(format!("{} does not exist", path.display())))
}

fn read_json<T: serde::de::DeserializeOwned>(files: &ImageFiles, name: &str) -> anyhow::Result<T> {
    let bytes = files.read(name).with_context(|| format!("reading {name}"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{name} is malformed"))
}

fn read_images(files: &ImageFiles, tag: Option<&str>) -> anyhow::Result<Vec<Inspected>> {
    let index: ImageIndex = read_json(files, "index.json")?;
    let mut out = Vec::new();
    for descriptor in index.manifests {
        let image_tag = descriptor.annotations.get(ANNOTATION_REF_NAME).cloned();
        if tag.is_some() && image_tag.as_deref() != tag {
            continue;
        }
        let manifests = if descriptor.media_type.is_index() {
            let nested: ImageIndex = read_json(files, &layout_blob_path(&descriptor.digest))?;
            nested.manifests
        } else {
            vec![descriptor.clone()]
        };
        for d in manifests {
            let manifest: ImageManifest = read_json(files, &layout_blob_path(&d.digest))?;
            let config: ImageConfig = read_json(files, &layout_blob_path(&manifest.config.digest))?;
            out.push(Inspected { tag: image_tag.clone(), descriptor: d, manifest, config });
        }
    }
    if out.is_empty() {
        bail!(UsageError(match tag {
            Some(t) => format!("no image tagged `{t}`"),
            None => "the layout holds no images".to_owned(),
        }));
    }
    Ok(out)
}

/// What built each layer, from the config history (empty layers skipped).
fn layer_origins(config: &ImageConfig) -> Vec<String> {
    config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.clone().or_else(|| h.comment.clone()).unwrap_or_default())
        .collect()
}

fn print_image(image: &Inspected) {
    let c = &image.config.config;
    println!("image    {}", image.tag.as_deref().unwrap_or("(untagged)"));
    println!("digest   {}", image.descriptor.digest);
    println!("platform {}/{}", image.config.os, image.config.architecture);
    if let Some(created) = &image.config.created {
        println!("created  {created}");
    }
    let show = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            println!("{name:<8} {v}");
        }
    };
    show("entry", c.entrypoint.as_ref().map(|v| format!("{v:?}")));
    show("cmd", c.cmd.as_ref().map(|v| format!("{v:?}")));
    show("workdir", c.working_dir.clone());
    show("user", c.user.clone());
    show("ports", c.exposed_ports.as_ref().map(|p| p.keys().cloned().collect::<Vec<_>>().join(" ")));
    for env in c.env.iter().flatten() {
        println!("env      {env}");
    }
    if let Some(h) = &c.healthcheck {
        println!("health   {:?}", h.test);
    }
    let origins = layer_origins(&image.config);
    let total: u64 = image.manifest.layers.iter().map(|l| l.size).sum();
    println!("layers   {} ({} compressed)", image.manifest.layers.len(), human_size(total));
    for (i, layer) in image.manifest.layers.iter().enumerate() {
        let origin = origins.get(i).map_or("", String::as_str);
        let origin = origin.strip_prefix("galley: ").unwrap_or(origin);
        println!("  {:>2}  {:>10}  {}  {}", i + 1, human_size(layer.size), layer.digest.short(), origin);
    }
}

fn to_json(image: &Inspected) -> serde_json::Value {
    let origins = layer_origins(&image.config);
    let layers: Vec<_> = image
        .manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({
                "digest": l.digest,
                "size": l.size,
                "media_type": l.media_type,
                "diff_id": image.config.rootfs.diff_ids.get(i),
                "created_by": origins.get(i),
            })
        })
        .collect();
    json!({
        "tag": image.tag,
        "digest": image.descriptor.digest,
        "platform": format!("{}/{}", image.config.os, image.config.architecture),
        "created": image.config.created,
        "config": image.config.config,
        "annotations": image.manifest.annotations,
        "layers": layers,
    })
}
