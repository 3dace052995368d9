//! OVA appliances: a tar of an OVF descriptor, an optional manifest and the disk files.
//!
//! The archive comes from outside, so its entries are taken only as plain files under
//! the work directory (no `..`, no absolute names, no links or devices), in bounded
//! number and size, and every listed checksum is verified.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::manifest::{self, Algo, Hasher, ManifestError};
use super::ovf::parse_ovf;
use super::{check_cancel, ImportError, Monotonic, Progress};

/// More entries than any real appliance has (descriptor, manifest, certificate, disks,
/// maybe an ISO or NVRAM); beyond it the archive is suspect.
const MAX_ENTRIES: usize = 256;
/// Descriptors and manifests are read into memory.
const MAX_TEXT_BYTES: u64 = 16 << 20;

/// What an OVA holds, with its files unpacked into the work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaContents {
    pub name: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// In the descriptor's `DiskSection` order (the first is the boot disk, as a rule).
    pub disks: Vec<OvaDisk>,
    /// Every file unpacked, for the caller to remove once the disks are converted.
    pub extracted: Vec<PathBuf>,
}

/// A disk file of the appliance, unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaDisk {
    pub file: PathBuf,
    /// What the descriptor says; the image's own virtual size is authoritative.
    pub capacity_bytes: Option<u64>,
}

/// Why an OVA archive is unusable.
#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    /// The file is not a tar archive, or is cut short.
    #[error("{path} is not a readable OVA (tar) archive: {message}")]
    NotATar { path: PathBuf, message: String },
    /// An entry would land outside the work directory or is not a plain file.
    #[error("OVA entry '{name}' is refused: {why}")]
    UnsafeEntry { name: String, why: &'static str },
    /// Far more entries than an appliance has.
    #[error("the OVA has more than {max} entries")]
    TooManyEntries { max: usize },
    /// An entry claims more bytes than it can hold.
    #[error("OVA entry '{name}' claims {size} bytes, more than allowed here")]
    TooLarge { name: String, size: u64 },
    /// Two entries of one name.
    #[error("the OVA holds '{name}' twice")]
    Duplicate { name: String },
    /// No `.ovf` file, or more than one.
    #[error("the OVA must hold exactly one .ovf descriptor; it holds {count}")]
    Descriptors { count: usize },
    /// The descriptor is not UTF-8 text.
    #[error("the OVF descriptor '{name}' is not UTF-8 text")]
    NotText { name: String },
    /// A disk the descriptor names is not in the archive.
    #[error("the OVF names disk file '{href}', which the OVA does not contain")]
    MissingDisk { href: String },
}

impl OvaError {
    pub(crate) fn is_bad_source(&self) -> bool {
        true
    }

    pub(crate) fn hint(&self) -> Option<&'static str> {
        match self {
            OvaError::NotATar { .. } => Some("an OVA is a tar file; check it was fully downloaded"),
            OvaError::UnsafeEntry { .. }
            | OvaError::TooManyEntries { .. }
            | OvaError::TooLarge { .. } => {
                Some("the archive is malformed or hostile; get it from a trusted source")
            }
            _ => None,
        }
    }
}

/// Unpacks an OVA into `work_dir` on a blocking thread and reads its descriptor. On any
/// error, a cancel, or if this future is dropped, everything unpacked is removed.
pub async fn unpack_ova(
    ova_path: &Path,
    work_dir: &Path,
    progress: Arc<dyn Progress>,
) -> Result<OvaContents, ImportError> {
    // A dropped future cannot stop a blocking thread, so it raises a flag the thread's
    // cancel checks see.
    struct RaiseOnDrop(Arc<AtomicBool>);
    impl Drop for RaiseOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    struct Watched(Arc<dyn Progress>, Arc<AtomicBool>);
    impl Progress for Watched {
        fn report(&self, p: f32) {
            self.0.report(p)
        }
        fn cancelled(&self) -> bool {
            self.1.load(Ordering::Relaxed) || self.0.cancelled()
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let _raise = RaiseOnDrop(dropped.clone());
    let watched = Watched(progress, dropped);
    let (ova, dir) = (ova_path.to_path_buf(), work_dir.to_path_buf());
    match tokio::task::spawn_blocking(move || unpack_ova_blocking(&ova, &dir, &watched)).await {
        Ok(result) => result,
        // A panic is a bug: pass it on rather than dress it up as an import error.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down aborts the task.
        Err(_) => Err(ImportError::Cancelled),
    }
}

/// Removes what was unpacked unless the unpack succeeded.
#[derive(Default)]
struct Unpacked {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    committed: bool,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// [`unpack_ova`] for callers already on a blocking thread.
pub fn unpack_ova_blocking(
    ova_path: &Path,
    work_dir: &Path,
    progress: &dyn Progress,
) -> Result<OvaContents, ImportError> {
    let file = std::fs::File::open(ova_path).map_err(ImportError::io("open", ova_path))?;
    let total = file
        .metadata()
        .map_err(ImportError::io("stat", ova_path))?
        .len();
    let not_tar = |e: std::io::Error| OvaError::NotATar {
        path: ova_path.to_path_buf(),
        message: e.to_string(),
    };
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut out = Unpacked::default();
    let mut bar = Monotonic::new(progress);
    bar.report(0.0, 0.0);
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let mut digests: HashMap<(String, Algo), String> = HashMap::new();
    let mut listed: Option<Vec<manifest::Entry>> = None;
    let mut descriptors: Vec<(String, PathBuf)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];

    for (i, entry) in archive.entries().map_err(not_tar)?.enumerate() {
        check_cancel(progress)?;
        if i >= MAX_ENTRIES {
            return Err(OvaError::TooManyEntries { max: MAX_ENTRIES }.into());
        }
        let mut entry = entry.map_err(not_tar)?;
        let raw = entry.path().map_err(not_tar)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let unsafe_entry = |why| OvaError::UnsafeEntry {
            name: shown.clone(),
            why,
        };
        let kind = entry.header().entry_type();
        // Directories are made as files need them, so their entries are not followed.
        if kind.is_pax_global_extensions() || kind.is_dir() {
            continue;
        }
        let rel = clean_relative(&raw)
            .ok_or_else(|| unsafe_entry("its name leaves the archive (absolute or '..')"))?;
        if kind.is_gnu_sparse() {
            return Err(unsafe_entry("sparse tar entries are not accepted").into());
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(unsafe_entry("only plain files are accepted (no links or devices)").into());
        }
        let name = rel.to_string_lossy().into_owned();
        let size = entry.size();
        let is_text = has_ext(&rel, "ovf") || has_ext(&rel, "mf");
        if size > total || (is_text && size > MAX_TEXT_BYTES) {
            return Err(OvaError::TooLarge { name, size }.into());
        }
        if names.contains_key(&name) {
            return Err(OvaError::Duplicate { name }.into());
        }
        let dest = work_dir.join(&rel);
        make_parents(work_dir, &rel, &mut out)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => ImportError::Exists(dest.clone()),
                _ => ImportError::io("create", &dest)(e),
            })?;
        out.files.push(dest.clone());

        // Hash while copying when the manifest came first (as the OVF spec orders it);
        // otherwise the file is hashed from disk afterwards.
        let mut hashers: Vec<(Algo, Hasher)> = listed
            .iter()
            .flatten()
            .filter(|e| e.file == name)
            .map(|e| (e.algo, Hasher::new(e.algo)))
            .collect();
        let start = entry.raw_file_position();
        let mut copied = 0u64;
        loop {
            check_cancel(progress)?;
            let n = entry.read(&mut buf).map_err(not_tar)?;
            if n == 0 {
                break;
            }
            for (_, h) in hashers.iter_mut() {
                h.update(&buf[..n]);
            }
            f.write_all(&buf[..n])
                .map_err(ImportError::io("write", &dest))?;
            copied += n as u64;
            if total > 0 {
                bar.report(((start + copied) as f64 * 99.0 / total as f64) as f32, 0.5);
            }
        }
        f.sync_all().map_err(ImportError::io("write", &dest))?;
        for (algo, h) in hashers {
            digests.insert((name.clone(), algo), h.hex());
        }
        if has_ext(&rel, "mf") && listed.is_none() {
            listed = Some(manifest::parse(&read_text(&dest, &name)?)?);
        }
        if has_ext(&rel, "ovf") {
            descriptors.push((name.clone(), dest.clone()));
        }
        names.insert(name, dest);
    }

    for e in listed.iter().flatten() {
        let path = names.get(&e.file).ok_or_else(|| ManifestError::Missing {
            file: e.file.clone(),
        })?;
        let actual = match digests.remove(&(e.file.clone(), e.algo)) {
            Some(d) => d,
            None => manifest::hash_file(path, e.algo, progress)?,
        };
        if actual != e.digest {
            return Err(ManifestError::Mismatch {
                file: e.file.clone(),
                algo: e.algo.name(),
                expected: e.digest.clone(),
                actual,
            }
            .into());
        }
    }

    let [(descriptor, desc_path)] = descriptors.as_slice() else {
        return Err(OvaError::Descriptors {
            count: descriptors.len(),
        }
        .into());
    };
    let ovf = parse_ovf(&read_text(desc_path, descriptor)?)?;
    // Files are named relative to the descriptor's own place in the archive.
    let base = Path::new(descriptor).parent().unwrap_or(Path::new(""));
    let mut disks = Vec::new();
    for d in ovf.disks {
        let key = clean_relative(&base.join(&d.href)).map(|p| p.to_string_lossy().into_owned());
        let file =
            key.and_then(|k| names.get(&k).cloned())
                .ok_or_else(|| OvaError::MissingDisk {
                    href: d.href.clone(),
                })?;
        disks.push(OvaDisk {
            file,
            capacity_bytes: d.capacity_bytes,
        });
    }
    out.committed = true;
    progress.report(100.0);
    Ok(OvaContents {
        name: ovf.name,
        vcpus: ovf.vcpus,
        memory_mib: ovf.memory_mib,
        disks,
        extracted: std::mem::take(&mut out.files),
    })
}

/// The path with `.` parts dropped, or `None` if it is absolute, climbs with `..`, or
/// is empty.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Makes the directories above `rel` under `root`, recording the new ones for cleanup.
fn make_parents(root: &Path, rel: &Path, out: &mut Unpacked) -> Result<(), ImportError> {
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in parents {
        dir.push(c);
        match std::fs::create_dir(&dir) {
            Ok(()) => out.dirs.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(ImportError::io("create directory", &dir)(e)),
        }
    }
    Ok(())
}

fn read_text(path: &Path, name: &str) -> Result<String, ImportError> {
    let bytes = std::fs::read(path).map_err(ImportError::io("read", path))?;
    String::from_utf8(bytes).map_err(|_| {
        OvaError::NotText {
            name: name.to_string(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(
            clean_relative(Path::new("./a.ovf")),
            Some(PathBuf::from("a.ovf"))
        );
        assert_eq!(
            clean_relative(Path::new("d/a.vmdk")),
            Some(PathBuf::from("d/a.vmdk"))
        );
        assert_eq!(clean_relative(Path::new("../evil")), None);
        assert_eq!(clean_relative(Path::new("a/../../evil")), None);
        assert_eq!(clean_relative(Path::new("/etc/passwd")), None);
        assert_eq!(clean_relative(Path::new(".")), None);
    }
}
