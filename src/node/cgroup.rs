//! cgroup v2 subtrees for ports, where the node may create them (root, or a
//! delegated subtree). A port enters a cgroup of its own before its program
//! runs (the zygote moves it there between fork and exec); `cgroup.kill` then
//! ends every process in it, even those that left the port's process group
//! with `setsid`. Without a writable cgroup v2
//! hierarchy, ports are held by their process groups only.
//!
//! See `Documentation/admin-guide/cgroup-v2.rst` (`cgroup.kill`, delegation).

use std::fs;
use std::path::{Path, PathBuf};

use crate::process::NodeId;

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
fn mount_point() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Creates the node's cgroup for ports (under the node's own cgroup), or
/// `None` when that is not possible here.
pub(crate) fn node_root(node: NodeId) -> Option<String> {
    let mount = mount_point()?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/');
    let dir = mount.join(rel).join(format!("converge-{node}"));
    fs::create_dir(&dir).ok()?;
    if !dir.join("cgroup.kill").exists() {
        // Kernels before 5.14 cannot kill a cgroup at once.
        let _ = fs::remove_dir(&dir);
        return None;
    }
    Some(dir.to_string_lossy().into_owned())
}

/// Creates the cgroup of port `serial` under the node's.
pub(crate) fn create_port(root: &str, serial: u64) -> Option<String> {
    let dir = Path::new(root).join(format!("port-{serial}"));
    fs::create_dir(&dir).ok()?;
    Some(dir.to_string_lossy().into_owned())
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while populated(cg) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
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
