//! A VM's cloud-init seed on disk: `<state>/cloud-init/<uuid>.iso`, an ISO 9660 volume
//! labelled `cidata` made with genisoimage, and `<uuid>.iso.sha256`, the digest of the
//! files it holds, so an unchanged config is not rebuilt.
//!
//! The ISO is built under a hidden temporary name and renamed over the old one, so a
//! starting QEMU sees the old seed or the new one, never half of one. The digest is
//! removed before the rename and written after it: a crash in between leaves no digest,
//! and the next start rebuilds.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use corral_api::VmSpec;
use tokio::process::Command;
use uuid::Uuid;

use super::cloud_init::{render, SeedFiles};
use super::Manager;
use crate::error::{ApiError, ApiResult};

/// Hidden names of seeds being built (a crash may leave one; the next build of the
/// same VM replaces it, and deleting the VM removes it).
const STAGING_PREFIX: &str = ".building-";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// genisoimage is not installed.
    #[error("genisoimage is not installed; it makes the cloud-init seed CD")]
    NoTool(#[source] std::io::Error),
    /// genisoimage ran and failed.
    #[error("genisoimage failed: {0}")]
    Tool(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<SeedError> for ApiError {
    fn from(e: SeedError) -> Self {
        match e {
            SeedError::NoTool(_) => ApiError::Conflict {
                message: e.to_string(),
                hint: Some("install Debian's genisoimage package (scripts/setup.sh does)".into()),
            },
            other => ApiError::Internal(crate::error::chain(&other)),
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SeedError {
    let path = path.to_path_buf();
    move |source| SeedError::Io {
        action,
        path,
        source,
    }
}

/// Where a VM's seed lives in `dir` (`<state>/cloud-init`).
pub fn seed_path(dir: &Path, uuid: Uuid) -> PathBuf {
    dir.join(format!("{uuid}.iso"))
}

fn digest_path(dir: &Path, uuid: Uuid) -> PathBuf {
    dir.join(format!("{uuid}.iso.sha256"))
}

/// Makes sure `dir` holds the seed of `files` for VM `uuid`; builds it only when what it
/// holds differs. Returns its path.
pub async fn ensure_seed(dir: &Path, uuid: Uuid, files: &SeedFiles) -> Result<PathBuf, SeedError> {
    let iso = seed_path(dir, uuid);
    let digest_file = digest_path(dir, uuid);
    let digest = files.digest();
    let recorded = std::fs::read_to_string(&digest_file).ok();
    if iso.is_file() && recorded.as_deref().map(str::trim) == Some(digest.as_str()) {
        return Ok(iso);
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    // Root only: user-data may hold secrets. QEMU opens the seed before it drops privileges.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("protect", dir))?;
    let work = dir.join(format!("{STAGING_PREFIX}{uuid}"));
    let _ = std::fs::remove_dir_all(&work);
    let result = build(&work, &iso, &digest_file, files).await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    write_atomically(&digest_file, digest.as_bytes())?;
    Ok(iso)
}

/// Writes the files into `work`, makes the ISO there and renames it to `iso`.
async fn build(
    work: &Path,
    iso: &Path,
    digest_file: &Path,
    files: &SeedFiles,
) -> Result<(), SeedError> {
    let content = work.join("content");
    std::fs::create_dir_all(&content).map_err(io("create", &content))?;
    let mut cmd = Command::new("genisoimage");
    let staged = work.join("seed.iso");
    // -joliet and -rock keep the names as they are (plain ISO 9660 would make them
    // USER_DAT.;1); cloud-init reads either, other NoCloud readers may not.
    cmd.args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(&staged);
    for (name, text) in files.files() {
        let path = content.join(name);
        std::fs::write(&path, text).map_err(io("write", &path))?;
        cmd.arg(&path);
    }
    let out = corral_storage::child::output(cmd)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SeedError::NoTool(e),
            _ => SeedError::Tool(e.to_string()),
        })?;
    if !out.status.success() {
        return Err(SeedError::Tool(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    sync_file(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .map_err(io("protect", &staged))?;
    match std::fs::remove_file(digest_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove", digest_file)(e))
        }
        _ => {}
    }
    std::fs::rename(&staged, iso).map_err(io("rename", iso))?;
    sync_parent(iso);
    Ok(())
}

fn sync_file(path: &Path) -> Result<(), SeedError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", path))
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
}

/// Writes `bytes` to a temporary name next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SeedError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    sync_parent(path);
    Ok(())
}

/// Removes VM `uuid`'s seed, its digest and any half-built one. Missing files are fine.
pub fn remove_seed(dir: &Path, uuid: Uuid) {
    let _ = std::fs::remove_file(digest_path(dir, uuid));
    let _ = std::fs::remove_file(seed_path(dir, uuid));
    let _ = std::fs::remove_dir_all(dir.join(format!("{STAGING_PREFIX}{uuid}")));
}

impl Manager {
    pub(super) fn seed_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("cloud-init")
    }

    /// Brings a VM's seed in line with its spec: built (or kept) when it asks for
    /// cloud-init, removed when it does not. Returns the seed to attach.
    pub(crate) async fn sync_seed(&self, spec: &VmSpec) -> ApiResult<Option<PathBuf>> {
        let Some(ci) = &spec.cloud_init else {
            self.remove_seed(spec.uuid);
            return Ok(None);
        };
        let files = render(&spec.name, spec.uuid, ci);
        Ok(Some(
            ensure_seed(&self.seed_dir(), spec.uuid, &files).await?,
        ))
    }

    pub(crate) fn remove_seed(&self, uuid: Uuid) {
        remove_seed(&self.seed_dir(), uuid);
    }

    /// At start-up: removes seeds no VM has (a daemon killed in a create after its seed
    /// was built, before the VM was recorded), and interrupted builds.
    pub(crate) fn sweep_seeds(&self) -> ApiResult<()> {
        let Ok(entries) = std::fs::read_dir(self.seed_dir()) else {
            return Ok(());
        };
        let vms: std::collections::HashSet<String> = self
            .store
            .list_vms()?
            .into_iter()
            .map(|r| r.spec.uuid.to_string())
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let building = name.starts_with(STAGING_PREFIX);
            let owner = name
                .trim_start_matches(STAGING_PREFIX)
                .get(..36)
                .unwrap_or("");
            if building || !vms.contains(owner) {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::CloudInit;

    fn files(hostname: &str) -> SeedFiles {
        let ci = CloudInit {
            hostname: Some(hostname.into()),
            network_config: Some("version: 2\n".into()),
            ..Default::default()
        };
        render("web", Uuid::nil(), &ci)
    }

    /// Reads a file of an ISO with isoinfo (genisoimage's companion, same package).
    fn iso_file(iso: &Path, name: &str) -> String {
        let out = std::process::Command::new("isoinfo")
            .args(["-R", "-x", &format!("/{name}"), "-i"])
            .arg(iso)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[tokio::test]
    async fn built_once_rebuilt_on_change_removed_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = dir.path().join("cloud-init");
        let first = files("a");
        let iso = ensure_seed(&seeds, Uuid::nil(), &first).await.unwrap();
        assert_eq!(iso, seeds.join(format!("{}.iso", Uuid::nil())));
        let label = std::process::Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(&iso)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&label.stdout).contains("Volume id: cidata"));
        assert_eq!(iso_file(&iso, "meta-data"), first.meta_data);
        assert_eq!(iso_file(&iso, "user-data"), first.user_data);
        assert_eq!(iso_file(&iso, "network-config"), "version: 2\n");
        let mode = std::fs::metadata(&iso).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Unchanged: the same file (same inode), not rebuilt.
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&iso).unwrap().ino();
        ensure_seed(&seeds, Uuid::nil(), &first).await.unwrap();
        assert_eq!(std::fs::metadata(&iso).unwrap().ino(), inode);

        // Changed: a new file renamed into place, holding the new content.
        let second = files("b");
        ensure_seed(&seeds, Uuid::nil(), &second).await.unwrap();
        assert_ne!(std::fs::metadata(&iso).unwrap().ino(), inode);
        assert_eq!(iso_file(&iso, "meta-data"), second.meta_data);

        // A digest lost in a crash means a rebuild, never trusting an unknown ISO.
        std::fs::remove_file(digest_path(&seeds, Uuid::nil())).unwrap();
        let inode = std::fs::metadata(&iso).unwrap().ino();
        ensure_seed(&seeds, Uuid::nil(), &second).await.unwrap();
        assert_ne!(std::fs::metadata(&iso).unwrap().ino(), inode);

        remove_seed(&seeds, Uuid::nil());
        assert_eq!(std::fs::read_dir(&seeds).unwrap().count(), 0);
    }
}
