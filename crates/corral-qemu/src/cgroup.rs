//! One cgroup per VM, so its CPU, memory and pids are accounted (and later limited) apart
//! from the daemon's. Works on cgroup v2 (unified) and on v1 hierarchies.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// v1 controllers a VM is placed under when the host has no unified cgroup2 with them.
const V1_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// A VM's cgroup: one directory per hierarchy it was created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    dirs: Vec<PathBuf>,
}

impl VmCgroup {
    /// Creates `corral-<name>` at the top of each usable hierarchy under `root`
    /// (normally `/sys/fs/cgroup`). Top level, not under a shared `corral/` parent: CPU
    /// weight is shared among siblings, so a parent would give all VMs together the
    /// weight of one host process. Returns `None` when none is writable (not root, or no cgroupfs):
    /// the VM then runs in the daemon's cgroup and `host info` says so.
    pub fn create(root: &Path, name: &str) -> Option<VmCgroup> {
        let dirs: Vec<PathBuf> = hierarchies(root)
            .into_iter()
            .map(|h| h.join(format!("corral-{name}")))
            .filter(|dir| fs::create_dir_all(dir).is_ok())
            .collect();
        (!dirs.is_empty()).then_some(VmCgroup { dirs })
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn attach(&self, pid: u32) -> io::Result<()> {
        for dir in &self.dirs {
            fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the cgroup dirs once the VM's processes are gone. The kernel refuses
    /// (EBUSY) while an exited QEMU is not yet reaped, so this retries for a moment.
    pub fn remove(&self) -> io::Result<()> {
        for dir in &self.dirs {
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Describes the cgroup layout under `root` for `host info`.
pub fn describe(root: &Path) -> String {
    let h = hierarchies(root);
    if h.is_empty() {
        return "no writable cgroup hierarchy".to_string();
    }
    if h.len() == 1 && h[0] == root {
        "cgroup v2".to_string()
    } else {
        format!("cgroup v1 ({})", V1_CONTROLLERS.join(", "))
    }
}

fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    V1_CONTROLLERS
        .iter()
        .map(|c| root.join(c))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_layout() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let cg = VmCgroup::create(root.path(), "vm-x").unwrap();
        assert_eq!(cg.dirs(), &[root.path().join("corral-vm-x")]);
        assert_eq!(describe(root.path()), "cgroup v2");
        cg.attach(4242).unwrap();
        let procs = root.path().join("corral-vm-x/cgroup.procs");
        assert_eq!(fs::read_to_string(&procs).unwrap(), "4242");
        fs::remove_file(procs).unwrap();
        cg.remove().unwrap();
        assert!(!root.path().join("corral-vm-x").exists());
    }

    #[test]
    fn v1_layout_uses_present_controllers() {
        let root = tempfile::tempdir().unwrap();
        for c in ["cpu", "pids"] {
            fs::create_dir_all(root.path().join(c)).unwrap();
            fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let cg = VmCgroup::create(root.path(), "vm-x").unwrap();
        assert_eq!(cg.dirs().len(), 2);
        assert!(describe(root.path()).starts_with("cgroup v1"));
    }

    #[test]
    fn nothing_writable() {
        let root = tempfile::tempdir().unwrap();
        assert!(VmCgroup::create(root.path(), "vm-x").is_none());
    }
}
