//! A docker daemon started by hand for one test: its own data-root, exec-root, pidfile
//! and socket, no iptables and no bridge (containers use --network host), stopped by
//! pid when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dockerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Dockerd {
    pub fn start() -> Self {
        // Short paths: unix socket names are limited to about 100 bytes.
        let dir = tempfile::Builder::new().prefix("gd").tempdir_in("/tmp").unwrap();
        let socket = dir.path().join("d.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("x"))
            .arg("--pidfile")
            .arg(dir.path().join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("dockerd must be installed (apt-get install -y docker.io)");
        let daemon = Self { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !daemon.docker().arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success() {
            assert!(Instant::now() < deadline, "dockerd did not start:\n{}", daemon.log());
            std::thread::sleep(Duration::from_millis(250));
        }
        daemon
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The docker CLI pointed at this daemon.
    pub fn docker(&self) -> Command {
        let mut command = Command::new("docker");
        command.env("DOCKER_HOST", self.host());
        command
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Dockerd {
    /// Detaches what dockerd left mounted under its directories (the default network
    /// namespace under exec-root), so the temp dir can be removed.
    fn unmount_leftovers(&self) {
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|p| p.starts_with(&root)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let Ok(c) = std::ffi::CString::new(point) else { continue };
            // SAFETY: a plain umount2 syscall on a path we own.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.unmount_leftovers();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.unmount_leftovers();
    }
}
