//! Running the LVM tools: argv built by pure functions (unit-tested below), run
//! through `lvm <command>` with tokio, failures carrying LVM's own words.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::report::{CORRAL_TAG, LV_FIELDS, VG_FIELDS};

#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    /// The `lvm` binary could not be started.
    #[error("cannot run {lvm}")]
    Spawn {
        lvm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An LVM command ran and refused; `stderr` is what it said.
    #[error("`lvm {command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    /// A report was not the JSON asked for.
    #[error("unreadable report from `lvm {command}`: {reason}")]
    BadReport { command: String, reason: String },
    /// An LV Corral did not make (no `corral` tag, another pool, another group).
    #[error("{lv} is not a thin LV Corral made in this pool; Corral leaves it alone")]
    Foreign { lv: String },
    /// A volume's LV is gone (removed by hand, or its group is missing).
    #[error("LV {lv} does not exist")]
    Missing { lv: String },
    /// The thin pool exists but cannot take or report volumes now.
    #[error("thin pool {vg}/{pool} is not active")]
    Inactive { vg: String, pool: String },
}

/// Why a driver cannot be used on this host, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: String,
    pub hint: String,
}

/// Where the kernel's device-mapper is reached.
const DM_CONTROL: &str = "/dev/mapper/control";

/// Whether this host can run thin LVs: device-mapper in the kernel and the `lvm` tool.
/// Returns the tool's path.
pub fn check_host() -> Result<PathBuf, Unavailable> {
    availability(device_mapper_present(), find_lvm())
}

/// Whether the kernel has device-mapper. The control node alone proves nothing:
/// libdevmapper creates `/dev/mapper/control` itself when it finds none, so a host
/// whose kernel lacks device-mapper keeps a node that fails with ENODEV once any LVM
/// tool has run. The kernel's own list of misc devices says it; opening the node
/// covers a `dm_mod` not loaded yet (opening it loads the module).
pub fn device_mapper_present() -> bool {
    let listed = |misc: String| {
        misc.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
    };
    if std::fs::read_to_string("/proc/misc").is_ok_and(listed) {
        return true;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DM_CONTROL)
        .is_ok()
}

/// The decision of [`check_host`], from what was found.
pub fn availability(device_mapper: bool, lvm: Option<PathBuf>) -> Result<PathBuf, Unavailable> {
    if !device_mapper {
        return Err(Unavailable {
            reason: "lvm-thin needs the kernel's device-mapper (dm-thin-pool); this host has none"
                .into(),
            hint: "use a dir pool here (`corral pool create NAME --path DIR`), or a host whose \
                   kernel has CONFIG_BLK_DEV_DM and CONFIG_DM_THIN_PROVISIONING"
                .into(),
        });
    }
    lvm.ok_or_else(|| Unavailable {
        reason: "lvm-thin needs the LVM tools; `lvm` is not installed".into(),
        hint: "install them (Debian: apt-get install lvm2 thin-provisioning-tools)".into(),
    })
}

/// `lvm` on `$PATH`, or in the sbin directories a daemon's `$PATH` may lack.
fn find_lvm() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("lvm"))
        .find(|p| p.is_file())
}

/// Options every report gets: JSON, sizes in bytes without a unit suffix.
fn report_args(command: &str, fields: &str) -> Vec<String> {
    [
        command,
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
    ]
    .map(str::to_string)
    .to_vec()
}

/// `lvs` of every LV of a volume group.
pub fn lvs_vg(vg: &str) -> Vec<String> {
    let mut a = report_args("lvs", LV_FIELDS);
    a.push(vg.to_string());
    a
}

/// `lvs` of one LV.
pub fn lvs_lv(vg: &str, lv: &str) -> Vec<String> {
    let mut a = report_args("lvs", LV_FIELDS);
    a.push(format!("{vg}/{lv}"));
    a
}

pub fn vgs(vg: &str) -> Vec<String> {
    let mut a = report_args("vgs", VG_FIELDS);
    a.push(vg.to_string());
    a
}

/// A thin LV of `size` bytes in thin pool `pool` of `vg`, tagged as Corral's, in the
/// form `man lvcreate` gives (`-V Size --thinpool LV VG`). `--yes` answers LVM's
/// questions (wiping an old signature) instead of hanging on them.
pub fn lvcreate_thin(vg: &str, pool: &str, name: &str, size: u64) -> Vec<String> {
    [
        "lvcreate",
        "--yes",
        "--addtag",
        CORRAL_TAG,
        "--virtualsize",
        &format!("{size}b"),
        "--thinpool",
        pool,
        "--name",
        name,
        vg,
    ]
    .map(str::to_string)
    .to_vec()
}

/// Grows an LV to `size` bytes (for a thin LV: its virtual size).
pub fn lvextend(vg: &str, name: &str, size: u64) -> Vec<String> {
    [
        "lvextend",
        "--size",
        &format!("{size}b"),
        &format!("{vg}/{name}"),
    ]
    .map(str::to_string)
    .to_vec()
}

/// Removes an LV without asking (the caller has checked it is Corral's and unused).
pub fn lvremove(vg: &str, name: &str) -> Vec<String> {
    ["lvremove", "--yes", &format!("{vg}/{name}")]
        .map(str::to_string)
        .to_vec()
}

/// Runs `lvm ARGS…` and returns its stdout.
pub async fn run(lvm: &Path, args: &[String]) -> Result<Vec<u8>, LvmError> {
    let out = Command::new(lvm)
        .args(args)
        // English messages (they are shown to users and matched by nobody), and no
        // warnings about descriptors a parent left open: they would bury the real error.
        .env("LC_ALL", "C")
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| LvmError::Spawn {
            lvm: lvm.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(LvmError::Failed {
        command: args.first().cloned().unwrap_or_default(),
        status: out.status.to_string(),
        stderr: one_line(&out.stderr),
    })
}

/// LVM's indented, multi-line stderr as one line.
fn one_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_argv() {
        assert_eq!(
            lvs_lv("vg0", "pool0").join(" "),
            "lvs --reportformat json --units b --nosuffix \
             -o lv_name,lv_path,lv_size,data_percent,lv_attr,pool_lv,segtype,lv_tags vg0/pool0"
        );
        assert_eq!(lvs_vg("vg0").last().map(String::as_str), Some("vg0"));
        assert_eq!(
            vgs("vg0").join(" "),
            "vgs --reportformat json --units b --nosuffix \
             -o vg_name,vg_extent_size,vg_size,vg_free vg0"
        );
    }

    #[test]
    fn change_argv() {
        assert_eq!(
            lvcreate_thin("vg0", "pool0", "data", 10 << 30).join(" "),
            "lvcreate --yes --addtag corral --virtualsize 10737418240b \
             --thinpool pool0 --name data vg0"
        );
        assert_eq!(
            lvextend("vg0", "data", 12 << 30).join(" "),
            "lvextend --size 12884901888b vg0/data"
        );
        assert_eq!(lvremove("vg0", "data").join(" "), "lvremove --yes vg0/data");
    }

    #[test]
    fn device_mapper_comes_first() {
        let lvm = Some(PathBuf::from("/usr/sbin/lvm"));
        let e = availability(false, lvm.clone()).unwrap_err();
        assert_eq!(
            e.reason,
            "lvm-thin needs the kernel's device-mapper (dm-thin-pool); this host has none"
        );
        assert!(e.hint.contains("dir pool"), "{}", e.hint);
        assert!(availability(false, None)
            .unwrap_err()
            .reason
            .contains("device-mapper"));
        let e = availability(true, None).unwrap_err();
        assert!(e.reason.contains("`lvm` is not installed"), "{}", e.reason);
        assert!(e.hint.contains("lvm2"));
        assert_eq!(
            availability(true, lvm.clone()),
            Ok(PathBuf::from("/usr/sbin/lvm"))
        );
    }

    /// Without device-mapper in the kernel's misc devices, a `/dev/mapper/control`
    /// left by libdevmapper (as on these test hosts once lvm2 has run) does not count.
    #[test]
    fn a_stale_control_node_is_not_device_mapper() {
        let misc = std::fs::read_to_string("/proc/misc").unwrap();
        if misc.contains(" device-mapper\n") {
            assert!(device_mapper_present());
            return;
        }
        assert!(
            !device_mapper_present(),
            "node exists: {}",
            Path::new(DM_CONTROL).exists()
        );
        assert!(check_host().is_err());
    }

    #[tokio::test]
    async fn a_failing_command_carries_its_stderr() {
        let sh = PathBuf::from("/bin/sh");
        let args = ["-c", "echo '  Volume group \"vg9\" not found' >&2; echo '  Cannot process volume group vg9' >&2; exit 5"]
            .map(str::to_string);
        match run(&sh, &args).await {
            Err(LvmError::Failed {
                command,
                status,
                stderr,
            }) => {
                assert_eq!(command, "-c");
                assert!(status.contains('5'), "{status}");
                assert_eq!(
                    stderr,
                    "Volume group \"vg9\" not found; Cannot process volume group vg9"
                );
            }
            other => panic!("{other:?}"),
        }
        let missing = run(Path::new("/nonexistent/lvm"), &[]).await;
        assert!(matches!(missing, Err(LvmError::Spawn { .. })));
    }
}
