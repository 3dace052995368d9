//! Images through `qemu-img`, the tool that knows every format.

use std::path::{Path, PathBuf};

use corral_api::DiskFormat;
use serde::Deserialize;
use tokio::process::Command;

use crate::{child, StorageError};

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: DiskFormat,
    pub virtual_size: u64,
}

#[derive(Deserialize)]
struct QemuImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
}

/// Creates a thin qcow2 volume of `size` bytes at `path`; refuses to overwrite.
pub async fn create_qcow2(path: &Path, size: u64) -> Result<(), StorageError> {
    if path.exists() {
        return Err(StorageError::Exists(path.to_path_buf()));
    }
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on"])
        .arg(path)
        .arg(size.to_string());
    let out = child::output(cmd).await.map_err(StorageError::Spawn)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(path);
        return Err(StorageError::QemuImg {
            action: "create",
            path: path.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Inspects an image file. With `expected`, the format is checked rather than guessed.
pub async fn inspect(path: &Path, expected: Option<DiskFormat>) -> Result<ImageInfo, StorageError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json", "-U"]);
    if let Some(f) = expected {
        cmd.args(["-f", f.as_str()]);
    }
    cmd.arg(path);
    let out = child::output(cmd).await.map_err(StorageError::Spawn)?;
    if !out.status.success() {
        return Err(StorageError::QemuImg {
            action: "info",
            path: path.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let info: QemuImgInfo =
        serde_json::from_slice(&out.stdout).map_err(|e| StorageError::QemuImg {
            action: "info",
            path: path.to_path_buf(),
            message: format!("unreadable output: {e}"),
        })?;
    if let Some(backing) = info.backing_filename {
        return Err(StorageError::HasBacking {
            path: path.to_path_buf(),
            backing,
        });
    }
    let format = match info.format.as_str() {
        "qcow2" => DiskFormat::Qcow2,
        "raw" => DiskFormat::Raw,
        other => {
            return Err(StorageError::UnsupportedFormat {
                path: path.to_path_buf(),
                format: other.to_string(),
            })
        }
    };
    Ok(ImageInfo {
        format,
        virtual_size: info.virtual_size,
    })
}

/// Removes a volume the VM owns. A missing file is not an error (the goal is reached).
pub fn remove_volume(path: &Path) -> Result<(), StorageError> {
    // Only image files: a block device node or a link to one (an LV's /dev/VG/NAME)
    // is removed by its pool driver, never unlinked here.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file; only image files are removed this way",
                ),
            })
        }
        _ => {}
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Grows an image to `size` bytes (offline: no process may have it open for writing).
pub async fn grow(path: &Path, format: DiskFormat, size: u64) -> Result<(), StorageError> {
    run_qemu_img("resize", path, |c| {
        c.args(["resize", "-q", "-f", format.as_str()])
            .arg(path)
            .arg(size.to_string());
    })
    .await
}

/// Creates a sparse raw image of `size` bytes; refuses to overwrite.
pub async fn create_raw(path: &Path, size: u64) -> Result<(), StorageError> {
    if path.exists() {
        return Err(StorageError::Exists(path.to_path_buf()));
    }
    run_qemu_img("create", path, |c| {
        c.args(["create", "-q", "-f", "raw"])
            .arg(path)
            .arg(size.to_string());
    })
    .await
    .inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Creates a qcow2 overlay at `path` whose backing file is `backing`; refuses to overwrite.
pub async fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: DiskFormat,
) -> Result<(), StorageError> {
    overlay(path, backing, backing_format, None).await
}

/// Creates an empty qcow2 overlay of `size` bytes on `backing` without opening the
/// backing file (`-u`), so it works while a running VM holds that image locked.
pub async fn create_overlay_sized(
    path: &Path,
    backing: &Path,
    backing_format: DiskFormat,
    size: u64,
) -> Result<(), StorageError> {
    overlay(path, backing, backing_format, Some(size)).await
}

async fn overlay(
    path: &Path,
    backing: &Path,
    backing_format: DiskFormat,
    unsafe_size: Option<u64>,
) -> Result<(), StorageError> {
    if path.exists() {
        return Err(StorageError::Exists(path.to_path_buf()));
    }
    run_qemu_img("create", path, |c| {
        c.args(["create", "-q", "-f", "qcow2", "-F", backing_format.as_str()]);
        if unsafe_size.is_some() {
            c.arg("-u");
        }
        c.arg("-b").arg(backing).arg(path);
        if let Some(size) = unsafe_size {
            c.arg(size.to_string());
        }
    })
    .await
    .inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Moves a qcow2 image onto a new backing file (or none) without changing what it
/// reads: qemu-img's safe mode copies into `path` every cluster where the old and the
/// new backing differ. This is how a snapshot's data is merged into its children.
pub async fn rebase(path: &Path, backing: Option<(&Path, DiskFormat)>) -> Result<(), StorageError> {
    run_qemu_img("rebase", path, |c| {
        c.args(["rebase", "-q", "-f", "qcow2"]);
        match backing {
            Some((b, fmt)) => c.args(["-F", fmt.as_str(), "-b"]).arg(b),
            None => c.args(["-b", ""]),
        };
        c.arg(path);
    })
    .await
}

/// Writes the data of qcow2 image `path` into its backing file (`qemu-img commit`),
/// leaving `path` as it was (`-d`). What `path` reads does not change.
pub async fn commit(path: &Path) -> Result<(), StorageError> {
    run_qemu_img("commit", path, |c| {
        c.args(["commit", "-q", "-d", "-f", "qcow2"]).arg(path);
    })
    .await
}

/// Points a qcow2 image at another backing file without looking at data (`rebase -u`):
/// only for when both backings are known to read the same wherever the image has no
/// data of its own.
pub async fn repoint(path: &Path, backing: &Path, format: DiskFormat) -> Result<(), StorageError> {
    run_qemu_img("rebase", path, |c| {
        c.args([
            "rebase",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-F",
            format.as_str(),
            "-b",
        ])
        .arg(backing)
        .arg(path);
    })
    .await
}

/// `qemu-img check -r leaks`: gives back the clusters a writer killed mid-way left
/// allocated but unused (they waste space, never data). Offline only.
pub async fn reclaim_leaks(path: &Path) -> Result<(), StorageError> {
    run_qemu_img("check", path, |c| {
        c.args(["check", "-q", "-r", "leaks", "-f", "qcow2"])
            .arg(path);
    })
    .await
}

/// `qemu-img check`: consistency of a qcow2 image's metadata.
pub async fn check(path: &Path) -> Result<(), StorageError> {
    run_qemu_img("check", path, |c| {
        c.args(["check", "-q", "-f", "qcow2"]).arg(path);
    })
    .await
}

/// `qemu-img info` of any image, with force-share: it may be open in a running VM.
async fn info_json(path: &Path, chain: bool) -> Result<serde_json::Value, StorageError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json", "-U"]);
    if chain {
        cmd.arg("--backing-chain");
    }
    cmd.arg(path);
    let out = child::output(cmd).await.map_err(StorageError::Spawn)?;
    let fail = |message: String| StorageError::QemuImg {
        action: "info",
        path: path.to_path_buf(),
        message,
    };
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))
}

/// The size the guest sees of any image, backing file or not.
pub async fn virtual_size(path: &Path) -> Result<u64, StorageError> {
    let info = info_json(path, false).await?;
    info["virtual-size"]
        .as_u64()
        .ok_or_else(|| StorageError::QemuImg {
            action: "info",
            path: path.to_path_buf(),
            message: "no virtual-size in qemu-img's answer".into(),
        })
}

/// Every file of an image's chain, the image itself first, then down its backing files.
pub async fn chain(path: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let infos = info_json(path, true).await?;
    Ok(infos
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["filename"].as_str().map(PathBuf::from))
        .collect())
}

/// The backing file an image names and its format, if any.
pub async fn backing_of(path: &Path) -> Result<Option<(PathBuf, DiskFormat)>, StorageError> {
    let fail = |message: String| StorageError::QemuImg {
        action: "info",
        path: path.to_path_buf(),
        message,
    };
    let info = info_json(path, false).await?;
    let Some(file) = info["full-backing-filename"]
        .as_str()
        .or(info["backing-filename"].as_str())
    else {
        return Ok(None);
    };
    let format = match info["backing-filename-format"].as_str() {
        Some("raw") => DiskFormat::Raw,
        Some("qcow2") => DiskFormat::Qcow2,
        other => return Err(fail(format!("backing file {file} has format {other:?}"))),
    };
    Ok(Some((PathBuf::from(file), format)))
}

/// The virtual size of a qcow2 image (what a guest sees through it and its backing
/// chain), read from its header: no `qemu-img` process, so a linked clone stays instant.
pub fn qcow2_virtual_size(path: &Path) -> Result<u64, StorageError> {
    use std::io::Read;
    let fail = |message: &str| StorageError::QemuImg {
        action: "read header",
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let mut header = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    // QCOW2 header: magic "QFI\xfb" at 0, big-endian virtual size at 24.
    if header[..4] != *b"QFI\xfb" {
        return Err(fail("not a qcow2 image"));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[24..32]);
    Ok(u64::from_be_bytes(size))
}

/// The backing file an image names: a qcow2 header's (relative names resolved against
/// the image's directory); `None` for an image that is not qcow2 (raw has no backing).
/// Read directly: the snapshot engine and the orphan scan ask this for many images,
/// and a `qemu-img` process per question is what made them slow.
pub fn qcow2_backing(path: &Path) -> Result<Option<PathBuf>, StorageError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut header = [0u8; 20];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        // Shorter than a qcow2 header: not one.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    if header[..4] != *b"QFI\xfb" {
        return Ok(None);
    }
    // Big-endian: backing file name offset at 8 (u64), its length at 16 (u32).
    let offset = u64::from_be_bytes(header[8..16].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(header[16..20].try_into().unwrap_or_default());
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    let mut name = vec![0u8; len.min(4096) as usize];
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    file.read_exact(&mut name).map_err(io)?;
    let name = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
    Ok(Some(match path.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name,
    }))
}

/// The files below `top` in its backing chain, nearest first, read from the headers.
/// Stops at a file that is not qcow2, at one that cannot be read, and at a loop.
pub fn backing_chain(top: &Path) -> Vec<PathBuf> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut next = qcow2_backing(top).ok().flatten();
    while let Some(file) = next {
        if file == top || chain.contains(&file) {
            break;
        }
        next = qcow2_backing(&file).ok().flatten();
        chain.push(file);
    }
    chain
}

async fn run_qemu_img(
    action: &'static str,
    path: &Path,
    build: impl FnOnce(&mut Command),
) -> Result<(), StorageError> {
    let mut cmd = Command::new("qemu-img");
    build(&mut cmd);
    let out = child::output(cmd).await.map_err(StorageError::Spawn)?;
    if !out.status.success() {
        return Err(StorageError::QemuImg {
            action,
            path: path.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_inspect_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.qcow2");
        create_qcow2(&path, 2 << 30).await.unwrap();
        // Thin: a 2 GiB volume takes well under a MiB.
        assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
        let info = inspect(&path, None).await.unwrap();
        assert_eq!(
            info,
            ImageInfo {
                format: DiskFormat::Qcow2,
                virtual_size: 2 << 30
            }
        );
        assert!(matches!(
            create_qcow2(&path, 1 << 20).await,
            Err(StorageError::Exists(_))
        ));
        remove_volume(&path).unwrap();
        remove_volume(&path).unwrap();
    }

    #[tokio::test]
    async fn raw_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("r.img");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let info = inspect(&raw, None).await.unwrap();
        assert_eq!(info.format, DiskFormat::Raw);
        assert!(qcow2_virtual_size(&raw).is_err());
        // A qcow2 claimed as qcow2 that is not one is an error naming the file.
        let err = inspect(&raw, Some(DiskFormat::Qcow2)).await.unwrap_err();
        assert!(err.to_string().contains("r.img"));
    }

    #[tokio::test]
    async fn backing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create_qcow2(&base, 1 << 20).await.unwrap();
        let top = dir.path().join("top.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&top)
            .status()
            .unwrap();
        assert!(ok.success());
        assert!(matches!(
            inspect(&top, None).await,
            Err(StorageError::HasBacking { .. })
        ));
        // An overlay is as big as what it is backed by.
        assert_eq!(qcow2_virtual_size(&top).unwrap(), 1 << 20);
        assert!(qcow2_virtual_size(&dir.path().join("none")).is_err());
    }

    #[test]
    fn links_and_devices_are_not_removed_as_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("lv");
        std::fs::write(&target, b"data").unwrap();
        // Like /dev/VG/NAME: a link to the LV's device node.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(remove_volume(&link).is_err());
        assert!(link.exists() && target.exists());
        assert!(remove_volume(Path::new("/dev/null")).is_err());
    }
}
