//! Temporary files that vanish unless committed, and a rename that never overwrites.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::ImportError;

/// A file under a hidden, unique name in the directory of its final destination, deleted
/// when dropped unless [`TempFile::persist`]ed or [`TempFile::keep`]t.
///
/// Being in the destination directory makes the final rename atomic (same file system);
/// the leading dot keeps pool listings from mistaking a half-written file for a volume.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates an empty file in `dir`; `label` is part of its name for whoever finds it
    /// after a crash.
    pub fn create_in(dir: &Path, label: &str) -> Result<(Self, std::fs::File), ImportError> {
        loop {
            let path = hidden_name(dir, label, "part");
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((Self { path, armed: true }, file)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImportError::io("create a temporary file in", dir)(e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the file to stable storage and renames it to `dest`, refusing to replace
    /// anything there. On error the temporary file is still removed.
    pub fn persist(mut self, dest: &Path) -> Result<(), ImportError> {
        sync_file(&self.path)?;
        rename_no_replace(&self.path, dest)?;
        self.armed = false;
        if let Some(dir) = dest.parent() {
            // The rename is durable only once the directory is; failure here is not
            // worth failing an import that already succeeded.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Disarms the guard and hands the file over to the caller, who must remove it.
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A fresh hidden name next to `dest` under which work that needs several files to be
/// complete before any is real (a clone's disks) stages each of them, for
/// [`rename_no_replace`] once all are done. Like a [`TempFile`]'s, the name marks it as
/// unfinished work that the daemon's start-up sweep removes.
pub fn staging_path(dest: &Path) -> PathBuf {
    let dir = dest.parent().unwrap_or(Path::new("/"));
    let label = dest.file_name().and_then(|n| n.to_str()).unwrap_or("image");
    let mut path = hidden_name(dir, label, "staged");
    while path.exists() {
        path = hidden_name(dir, label, "staged");
    }
    path
}

/// `.corral-import-<label>-<pid>-<nanos>-<n>.<ext>` in `dir`: unique within the process
/// by the counter, across processes by the pid.
fn hidden_name(dir: &Path, label: &str, ext: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{}{label}-{}-{nanos:x}-{n}.{ext}",
        super::STAGING_PREFIX,
        std::process::id()
    ))
}

fn sync_file(path: &Path) -> Result<(), ImportError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(ImportError::io("flush", path))
}

/// Renames `from` to `to` unless `to` exists. `renameat2(RENAME_NOREPLACE)` makes the
/// check and the rename one atomic step; file systems without it get check-then-rename.
pub fn rename_no_replace(from: &Path, to: &Path) -> Result<(), ImportError> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => Err(ImportError::Exists(to.to_path_buf())),
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            if to.exists() {
                return Err(ImportError::Exists(to.to_path_buf()));
            }
            std::fs::rename(from, to).map_err(ImportError::io("rename into", to))
        }
        Err(e) => Err(ImportError::io("rename into", to)(e.into())),
    }
}

/// An absolute form of `path`: qemu-img reads `proto:…` and `json:{…}` in a relative
/// name as a protocol, which a file name from outside must never be taken for.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, ImportError> {
    std::path::absolute(path).map_err(ImportError::io("resolve", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_temp_files_vanish_and_persist_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = TempFile::create_in(dir.path(), "a/b c").unwrap();
        let p = t.path().to_path_buf();
        assert!(p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(".corral-import-a_b_c-"));
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());

        let (t, _) = TempFile::create_in(dir.path(), "x").unwrap();
        let dest = dir.path().join("dest");
        t.persist(&dest).unwrap();
        assert!(dest.exists());

        let (t, _) = TempFile::create_in(dir.path(), "x").unwrap();
        let p = t.path().to_path_buf();
        assert!(matches!(t.persist(&dest), Err(ImportError::Exists(_))));
        assert!(!p.exists(), "a failed persist still cleans up");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let (t, _) = TempFile::create_in(dir.path(), "x").unwrap();
        let kept = t.keep();
        assert!(kept.exists());
    }
}
