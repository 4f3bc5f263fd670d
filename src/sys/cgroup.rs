//! cgroup v2 subtrees for ports, where the node may create them (root, or a
//! delegated subtree). A port enters a cgroup of its own before its program
//! runs (the zygote moves it there between fork and exec); `cgroup.kill` then
//! ends every process in it, even those that left the port's process group
//! with `setsid`. Without a writable cgroup v2
//! hierarchy, ports are held by their process groups only.
//!
//! Memory limits ([`Builder::memory_limit`](crate::Builder::memory_limit))
//! use a cgroup per limited process too: cgroup v2 `memory.max` where the
//! node's subtree has the memory controller, otherwise the cgroup v1 memory
//! controller where it is mounted (hosts in hybrid mode), otherwise none (the
//! process gets `RLIMIT_DATA`). The cgroup's OOM-kill counter tells a kill by
//! the limit apart from any other `SIGKILL`.
//!
//! See `Documentation/admin-guide/cgroup-v2.rst` (`cgroup.kill`, delegation,
//! `memory.max`, `memory.events`) and `cgroup-v1/memory.rst`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::pid::NodeId;

/// Where the calling process's cgroup of a hierarchy is: the hierarchy's
/// mount point (`/proc/self/mountinfo`: a `cgroup2` mount for v2, a `cgroup`
/// mount with `controller` among its options for v1) joined with the path in
/// `/proc/self/cgroup`, less the root of the mount (not `/` when a container
/// mounts a part of the host's hierarchy).
fn own_dir(controller: Option<&str>) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (root, mount) = info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        let fs_type = fields.next()?;
        let wanted = match controller {
            None => fs_type == "cgroup2",
            Some(c) => fs_type == "cgroup" && fields.nth(1)?.split(',').any(|o| o == c),
        };
        let mut left = left.split_whitespace();
        wanted.then(|| Some((left.nth(3)?.to_string(), PathBuf::from(left.next()?))))?
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match controller {
            None => l.starts_with("0::"),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        wanted.then_some(path)
    })?;
    let rel = path.strip_prefix(root.as_str()).unwrap_or(path).trim_start_matches('/');
    Some(if rel.is_empty() { mount } else { mount.join(rel) })
}

/// The node's own cgroup v2 directory.
fn own_v2() -> Option<PathBuf> {
    own_dir(None)
}

/// Creates `dir` unless it exists.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Checks `done` every 2 ms until it holds or 2 s have passed.
fn within_2s(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Creates the node's cgroup for ports (under the node's own cgroup), or
/// `None` when that is not possible here.
pub(crate) fn node_root(node: NodeId) -> Option<String> {
    let dir = own_v2()?.join(format!("converge-{node}"));
    ensure_dir(&dir).ok()?;
    if !dir.join("cgroup.kill").exists() {
        // Kernels before 5.14 cannot kill a cgroup at once.
        let _ = fs::remove_dir(&dir);
        return None;
    }
    Some(dir.to_string_lossy().into_owned())
}

/// Creates the cgroup of port `serial` under the node's.
pub(crate) fn create_port(root: &str, serial: u64) -> Option<PortCgroup> {
    let dir = Path::new(root).join(format!("port-{serial}"));
    fs::create_dir(&dir).ok()?;
    let opened = (|| {
        Ok::<_, std::io::Error>(PortCgroup {
            procs: fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?,
            events: fs::File::open(dir.join("cgroup.events"))?,
            path: dir.to_string_lossy().into_owned(),
        })
    })();
    if opened.is_err() {
        let _ = fs::remove_dir(&dir);
    }
    opened.ok()
}

/// A port's cgroup, with the files used for every port it holds kept open.
#[derive(Debug)]
pub(crate) struct PortCgroup {
    pub(crate) path: String,
    /// `cgroup.procs`, open for writing: a process that writes "0" to it
    /// moves into the cgroup.
    procs: fs::File,
    /// `cgroup.events`, read again from its start each time.
    events: fs::File,
}

impl PortCgroup {
    /// Its `cgroup.procs`, open for writing.
    pub(crate) fn procs(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.procs)
    }

    /// Whether it still has processes; `None` if that cannot be read (it
    /// was removed from outside): it cannot be used any more.
    pub(crate) fn populated(&self) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.events.read_at(&mut buf, 0).ok()?;
        let lines = || buf[..n].split(|&b| b == b'\n');
        if lines().any(|l| l == b"populated 1") {
            Some(true)
        } else {
            lines().any(|l| l == b"populated 0").then_some(false)
        }
    }

    /// Removes it (only if empty: the kernel refuses otherwise).
    pub(crate) fn remove(self) {
        let _ = fs::remove_dir(&self.path);
    }

    /// Kills every process in it.
    pub(crate) fn kill(&self) {
        kill(&self.path);
    }
}

/// Kills every process in the cgroup `cg` (and its descendants).
pub(crate) fn kill(cg: &str) {
    let _ = fs::write(Path::new(cg).join("cgroup.kill"), "1");
}

/// Whether the cgroup `cg` still has processes.
pub(crate) fn populated(cg: &str) -> bool {
    fs::read_to_string(Path::new(cg).join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Kills everything in `cg`, waits (up to 2 s) for it to empty, removes it.
pub(crate) fn kill_and_remove(cg: &str) {
    kill(cg);
    within_2s(|| !populated(cg));
    remove(cg);
}

/// Removes the cgroup `cg` and the empty cgroups under it (best effort: a
/// cgroup with processes left cannot be removed).
pub(crate) fn remove(cg: &str) {
    if let Ok(entries) = fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    let _ = fs::remove_dir(cg);
}

/// Removes the empty cgroups that nodes now gone left beside this one (a node
/// killed with `SIGKILL` cannot remove its own): every `converge-<id>`
/// directory in this process's cgroup (v2) or memory cgroup (v1) whose node
/// no longer listens (its abstract socket is not in `/proc/net/unix`). Only
/// empty cgroups are removed (`rmdir` refuses the others): nothing that runs
/// is touched.
pub(crate) fn remove_stale() -> usize {
    let Ok(listening) = fs::read_to_string("/proc/net/unix") else {
        return 0;
    };
    let mut removed = 0;
    for dir in [own_v2(), own_dir(Some("memory"))].into_iter().flatten() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_prefix("converge-")) else {
                continue;
            };
            let Some(node) = (hex.len() == 32).then(|| u128::from_str_radix(hex, 16).ok()).flatten() else {
                continue;
            };
            let node = NodeId::from_bytes(node.to_le_bytes());
            let address = format!("@{}", String::from_utf8_lossy(&node.node_address()));
            let gone = !listening
                .lines()
                .any(|l| l.split_whitespace().last() == Some(address.as_str()));
            if gone {
                let path = entry.path();
                remove(&path.to_string_lossy());
                removed += usize::from(!path.exists());
            }
        }
    }
    removed
}

/// How memory limits are enforced on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemoryCgroups {
    /// cgroup v2: `memory.max` in a cgroup per process under this directory.
    V2(String),
    /// cgroup v1 memory controller: `memory.limit_in_bytes` likewise.
    V1(String),
}

/// Whether `list` (space-separated, as in `cgroup.controllers`) has `memory`.
fn lists_memory(list: &str) -> bool {
    list.split_whitespace().any(|c| c == "memory")
}

/// Makes the node's cgroup for memory-limited processes: under the node's
/// cgroup v2 directory with the memory controller enabled for its children,
/// or else in the cgroup v1 memory hierarchy. `None` when neither is
/// possible here (not root and nothing delegated, or no memory controller).
pub(crate) fn memory_root(node: NodeId) -> Option<MemoryCgroups> {
    memory_root_v2(node).or_else(|| memory_root_v1(node))
}

fn memory_root_v2(node: NodeId) -> Option<MemoryCgroups> {
    let own = own_v2()?;
    if !lists_memory(&fs::read_to_string(own.join("cgroup.controllers")).ok()?) {
        return None;
    }
    // The node's own cgroup must hand the controller down to the cgroups made
    // under it, and a cgroup other than the root that does so cannot hold
    // processes itself. When the node is alone in its cgroup (a service with
    // a delegated cgroup, a container's only program), it moves into a leaf
    // of its own first, as delegation expects; otherwise the write fails
    // (EBUSY) and there are no v2 memory limits here.
    if !lists_memory(&fs::read_to_string(own.join("cgroup.subtree_control")).ok()?) {
        let procs = fs::read_to_string(own.join("cgroup.procs")).ok()?;
        let me = std::process::id().to_string();
        if procs.split_whitespace().eq([me.as_str()]) {
            let leaf = own.join("converge-node");
            ensure_dir(&leaf).ok()?;
            fs::write(leaf.join("cgroup.procs"), &me).ok()?;
        }
        fs::write(own.join("cgroup.subtree_control"), "+memory").ok()?;
    }
    let dir = own.join(format!("converge-{node}"));
    let made = fs::create_dir(&dir).is_ok();
    if !dir.is_dir()
        || !dir.join("cgroup.kill").exists()
        || fs::write(dir.join("cgroup.subtree_control"), "+memory").is_err()
    {
        if made {
            let _ = fs::remove_dir(&dir);
        }
        return None;
    }
    Some(MemoryCgroups::V2(dir.to_string_lossy().into_owned()))
}

fn memory_root_v1(node: NodeId) -> Option<MemoryCgroups> {
    let dir = own_dir(Some("memory"))?.join(format!("converge-{node}"));
    // Whether it can be made: made for real by the first limited process, so
    // that a node that is killed before it uses a limit leaves nothing here.
    fs::create_dir(&dir).ok()?;
    fs::remove_dir(&dir).ok()?;
    Some(MemoryCgroups::V1(dir.to_string_lossy().into_owned()))
}

impl MemoryCgroups {
    /// The cgroup of process `serial`.
    fn dir(&self, serial: u64) -> PathBuf {
        let (MemoryCgroups::V2(root) | MemoryCgroups::V1(root)) = self;
        Path::new(root).join(format!("mem-{serial}"))
    }

    /// In the new process `serial`: makes its cgroup, limited to `bytes`
    /// (swap included), and moves the calling process into it.
    pub(crate) fn enter(&self, serial: u64, bytes: u64) -> std::io::Result<()> {
        let dir = self.dir(serial);
        if let MemoryCgroups::V1(root) = self {
            ensure_dir(Path::new(root))?;
        }
        ensure_dir(&dir)?;
        match self {
            MemoryCgroups::V2(_) => {
                fs::write(dir.join("memory.max"), bytes.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    fs::write(dir.join("memory.swap.max"), "0")?;
                }
            }
            MemoryCgroups::V1(_) => {
                fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())?;
                // Memory plus swap: the same bound, so the process cannot
                // swap its way past the limit.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string())?;
                }
            }
        }
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
    }

    /// Whether the kernel's OOM killer ended a process in the cgroup of
    /// process `serial` because the cgroup reached its limit: `oom_kill` and
    /// `oom` in `memory.events` (v1: `oom_kill` in `memory.oom_control`, and
    /// the peak usage at the limit or a failure count above 0: kernels differ
    /// in which they keep). A kill by the OOM killer for the whole machine
    /// counts in `oom_kill` only.
    pub(crate) fn oom_killed(&self, serial: u64) -> bool {
        let dir = self.dir(serial);
        let counter = |file: &str, key: Option<&str>| -> u64 {
            let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
            match key {
                Some(key) => text
                    .lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
                    .unwrap_or(0),
                None => text.trim().parse().unwrap_or(0),
            }
        };
        match self {
            MemoryCgroups::V2(_) => {
                counter("memory.events", Some("oom_kill")) > 0 && counter("memory.events", Some("oom")) > 0
            }
            MemoryCgroups::V1(_) => {
                let reached = counter("memory.max_usage_in_bytes", None) >= counter("memory.limit_in_bytes", None)
                    || counter("memory.failcnt", None) + counter("memory.memsw.failcnt", None) > 0;
                counter("memory.oom_control", Some("oom_kill")) > 0 && reached
            }
        }
    }

    /// Removes the cgroup of process `serial`: `false` while processes it
    /// started still live in it.
    pub(crate) fn release(&self, serial: u64) -> bool {
        match fs::remove_dir(self.dir(serial)) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// At the node's end: removes every cgroup of the node, waiting up to 2 s
    /// for the processes still in them to go.
    pub(crate) fn remove_all(&self) {
        match self {
            MemoryCgroups::V2(root) => kill_and_remove(root),
            MemoryCgroups::V1(root) => {
                // v1 has no cgroup.kill: what processes of the node started
                // and left in their cgroups (programs of their own) are
                // killed one by one.
                for cg in fs::read_dir(root).into_iter().flatten().flatten() {
                    let procs = fs::read_to_string(cg.path().join("cgroup.procs")).unwrap_or_default();
                    for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                        let _ = crate::sys::process::kill_pid(pid, crate::sys::process::SIGKILL);
                    }
                }
                within_2s(|| {
                    remove(root);
                    !Path::new(root).exists()
                });
            }
        }
    }
}
