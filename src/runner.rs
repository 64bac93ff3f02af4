//! Running a built image on this machine, with whatever runtime there is: a docker
//! daemon (loaded through its API, run through the docker CLI), or, as root, the
//! image unpacked into a directory and run in a chroot inside a private mount
//! namespace with /dev and /proc bound in.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::cache::{Cache, TempGuard};
use crate::files::resolve_owner;
use crate::image::BuiltImage;
use crate::layer::{LayerPath, OPAQUE_WHITEOUT, RootfsIndex, WHITEOUT_PREFIX, decompress};
use crate::output::{DaemonError, DockerHost, load_into_daemon};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no container runtime here: no docker daemon answers ({host}) and galley is not root, which the chroot fallback needs")]
    NoRuntime { host: String },
    #[error("the docker CLI was not found on PATH; install docker.io (or docker-ce-cli)")]
    NoDockerCli,
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("cannot unpack the image into {}: {source}", path.display())]
    Unpack { path: PathBuf, source: io::Error },
    #[error("the image has nothing to run: set [runtime] entrypoint or cmd, or pass a command")]
    NothingToRun,
    #[error("`{program}` is not in the image (looked in {path})")]
    ProgramMissing { program: String, path: String },
    #[error("[runtime] user `{user}`: {message}")]
    User { user: String, message: String },
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: io::Error },
}

/// How to run an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Docker(DockerHost),
    Chroot,
}

impl Engine {
    /// A docker daemon when one answers, else the chroot fallback when root.
    pub fn detect() -> Result<Self, RunError> {
        let host = DockerHost::from_env()?;
        if host.ping() {
            return Ok(Self::Docker(host));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(Self::Chroot);
        }
        Err(RunError::NoRuntime { host: host.to_string() })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Docker(_) => "docker",
            Self::Chroot => "chroot",
        }
    }
}

/// Runs the image with `args` replacing its CMD (when non-empty), and waits.
pub fn run(cache: &Cache, image: &BuiltImage, engine: &Engine, args: &[String], mtime: u64) -> Result<ExitStatus, RunError> {
    match engine {
        Engine::Docker(host) => {
            load_into_daemon(cache, std::slice::from_ref(image), mtime, host)?;
            let mut command = Command::new("docker");
            command.env("DOCKER_HOST", host.to_string()).args(["run", "--rm", "--network", "host"]);
            command.arg(image.reference()).args(args);
            match command.status() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RunError::NoDockerCli),
                other => other.map_err(|source| RunError::Spawn { what: "docker run".into(), source }),
            }
        }
        Engine::Chroot => {
            let dir = cache.temp_path("rootfs");
            let _cleanup = TempGuard(dir.clone());
            unpack(cache, image, &dir).map_err(|source| RunError::Unpack { path: dir.clone(), source })?;
            run_chroot(image, &dir, args)
        }
    }
}

/// Applies the image's layers in order into `dest`, honouring whiteouts.
pub fn unpack(cache: &Cache, image: &BuiltImage, dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    for layer in &image.layers {
        let blob = fs::File::open(cache.blob_path(&layer.digest))?;
        let mut archive = tar::Archive::new(decompress(io::BufReader::with_capacity(1 << 20, blob))?);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        // Paths this layer wrote: an opaque whiteout hides lower layers only.
        let mut written = std::collections::HashSet::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Ok(path) = LayerPath::new(&raw) else { continue };
            let name = path.file_name();
            let parent = path.parent().map_or_else(|| dest.to_owned(), |p| dest.join(p.as_str()));
            if name == OPAQUE_WHITEOUT {
                for child in fs::read_dir(&parent).into_iter().flatten().flatten() {
                    let rel = child.path().strip_prefix(dest).map(Path::to_path_buf).unwrap_or_default();
                    if !written.contains(&rel) {
                        remove_any(&child.path())?;
                    }
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                remove_any(&parent.join(hidden))?;
                continue;
            }
            let target = dest.join(path.as_str());
            let is_dir = entry.header().entry_type().is_dir();
            if let Ok(meta) = fs::symlink_metadata(&target)
                && (meta.is_dir() != is_dir || meta.file_type().is_symlink()) {
                    remove_any(&target)?;
                }
            entry.unpack_in(dest)?;
            written.insert(PathBuf::from(path.as_str()));
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The merged view of an image's files, for resolving users and programs.
fn image_index(root: &Path) -> RootfsIndex {
    let mut index = RootfsIndex::default();
    let mut entries = Vec::new();
    for file in ["etc/passwd", "etc/group"] {
        if let Ok(content) = fs::read_to_string(root.join(file)) {
            entries.push(crate::layer::IndexEntry {
                path: file.to_owned(),
                node: crate::layer::Node { kind: crate::layer::NodeKind::File, mode: 0o644, uid: 0, gid: 0 },
                content: Some(content),
            });
        }
    }
    index.apply(entries);
    index
}

fn run_chroot(image: &BuiltImage, root: &Path, args: &[String]) -> Result<ExitStatus, RunError> {
    let config = &image.config.config;
    let mut argv: Vec<String> = config.entrypoint.clone().unwrap_or_default();
    if args.is_empty() {
        argv.extend(config.cmd.clone().unwrap_or_default());
    } else {
        argv.extend(args.iter().cloned());
    }
    let Some(program) = argv.first().cloned() else { return Err(RunError::NothingToRun) };
    let env: Vec<(String, String)> = config
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let path_var = env.iter().find(|(k, _)| k == "PATH").map_or(crate::base::DEFAULT_PATH, |(_, v)| v.as_str());
    let resolved = resolve_program(root, &program, path_var)
        .ok_or_else(|| RunError::ProgramMissing { program: program.clone(), path: path_var.to_owned() })?;
    let (uid, gid) = match &config.user {
        Some(user) => resolve_owner(user, &image_index(root)).map_err(|message| RunError::User { user: user.clone(), message })?,
        None => (0, 0),
    };
    let workdir = config.working_dir.clone().unwrap_or_else(|| "/".to_owned());
    let spawn_err = |source| RunError::Spawn { what: format!("{program} in a chroot"), source };
    fs::create_dir_all(root.join(workdir.trim_start_matches('/'))).map_err(spawn_err)?;
    for dir in ["dev", "proc"] {
        fs::create_dir_all(root.join(dir)).map_err(spawn_err)?;
    }
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| spawn_err(io::Error::other(e)));
    let root_c = c(root)?;
    let dev_src = c(Path::new("/dev"))?;
    let dev_dst = c(&root.join("dev"))?;
    let proc_dst = c(&root.join("proc"))?;
    let workdir_c = c(Path::new(&workdir))?;
    let mut command = Command::new(&resolved);
    command.arg0(&program).args(&argv[1..]).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(dev_src.as_ptr(), dev_dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
            check(libc::mount(c"proc".as_ptr(), proc_dst.as_ptr(), c"proc".as_ptr(), 0, std::ptr::null()))?;
            check(libc::chroot(root_c.as_ptr()))?;
            check(libc::chdir(workdir_c.as_ptr()))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    command.status().map_err(spawn_err)
}

/// Finds `program` in the unpacked image: as given when it has a `/`, else in each
/// PATH directory. Returns the path to exec once inside the chroot.
fn resolve_program(root: &Path, program: &str, path_var: &str) -> Option<PathBuf> {
    let exists = |inside: &str| root.join(inside.trim_start_matches('/')).exists();
    if program.contains('/') {
        return exists(program).then(|| PathBuf::from(program));
    }
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|candidate| exists(candidate))
        .map(PathBuf::from)
}
