//! What an image from outside is, and whether it is safe to read as one.
//!
//! Images from outside are untrusted: a vmdk descriptor or a qcow2 header can name other
//! files on the host (extents, backing files, data files) that qemu-img would happily
//! read into the imported disk. Only self-contained images pass.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokio::process::Command;

use super::temp::absolute;
use super::ImportError;

/// Formats an image may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vhdx,
    Vdi,
}

impl From<corral_api::DiskFormat> for SourceFormat {
    /// A volume's format, as the source of a copy.
    fn from(format: corral_api::DiskFormat) -> Self {
        match format {
            corral_api::DiskFormat::Qcow2 => SourceFormat::Qcow2,
            corral_api::DiskFormat::Raw => SourceFormat::Raw,
        }
    }
}

impl SourceFormat {
    /// The name qemu-img knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Qcow2 => "qcow2",
            SourceFormat::Raw => "raw",
            SourceFormat::Vmdk => "vmdk",
            SourceFormat::Vhdx => "vhdx",
            SourceFormat::Vdi => "vdi",
        }
    }

    fn from_qemu(name: &str) -> Option<Self> {
        Some(match name {
            "qcow2" => SourceFormat::Qcow2,
            "raw" => SourceFormat::Raw,
            "vmdk" => SourceFormat::Vmdk,
            "vhdx" => SourceFormat::Vhdx,
            "vdi" => SourceFormat::Vdi,
            _ => return None,
        })
    }
}

/// What [`probe`] learned of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub format: SourceFormat,
    /// The size the guest sees.
    pub virtual_size: u64,
}

/// Why an image cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// qemu-img could not be run.
    #[error("cannot run qemu-img")]
    Spawn(#[source] std::io::Error),
    /// qemu-img cannot open the file as an image (a damaged header, for one).
    #[error("{path} is not a readable disk image: {message}")]
    Unreadable { path: PathBuf, message: String },
    /// The file is in a format Corral does not import.
    #[error(
        "images in {format} format cannot be imported (supported: qcow2, raw, vmdk, vhdx, vdi)"
    )]
    UnsupportedFormat { format: String },
    /// The file is not a disk image at all (an HTML page, an archive, …).
    #[error("{path} is not a disk image: {why}")]
    NotADiskImage { path: PathBuf, why: String },
    /// The image reads through a backing file.
    #[error("{path} has a backing file ({backing}); import a standalone image")]
    HasBacking { path: PathBuf, backing: String },
    /// The image keeps data in other files (vmdk extents, a qcow2 data file).
    #[error("{path} keeps its data in other files ({files}); import a single-file image")]
    ExternalFiles { path: PathBuf, files: String },
    /// The image's metadata is damaged (marked so, or found so by `qemu-img check`).
    #[error("{path} is a damaged image: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

impl ProbeError {
    pub(crate) fn is_bad_source(&self) -> bool {
        !matches!(self, ProbeError::Spawn(_))
    }

    pub(crate) fn hint(&self) -> Option<&'static str> {
        Some(match self {
            ProbeError::Spawn(_) => "install qemu-utils",
            ProbeError::Unreadable { .. } | ProbeError::Corrupt { .. } => {
                "the file is damaged or truncated; get a fresh copy (or try `qemu-img check -r all` on a copy)"
            }
            ProbeError::UnsupportedFormat { .. } => "convert it with qemu-img to qcow2 first",
            ProbeError::NotADiskImage { .. } => {
                "check that the URL or path points at the image itself, not a web page or an archive"
            }
            ProbeError::HasBacking { .. } => "flatten it first: qemu-img convert -O qcow2 in out",
            ProbeError::ExternalFiles { .. } => {
                "make a single-file copy first: qemu-img convert -O qcow2 in out"
            }
        })
    }
}

#[derive(Deserialize)]
struct Info {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    filename: String,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
    #[serde(rename = "format-specific")]
    format_specific: Option<FormatSpecific>,
}

#[derive(Deserialize)]
struct FormatSpecific {
    #[serde(default)]
    data: serde_json::Value,
}

/// The format of an image, refusing what Corral cannot import safely.
pub async fn probe_format(path: &Path) -> Result<SourceFormat, ImportError> {
    Ok(probe(path).await?.format)
}

/// Format and size of an image, refusing formats Corral does not import, images that
/// refer to other files, and files that are no image at all.
pub async fn probe(path: &Path) -> Result<SourceInfo, ImportError> {
    let abs = absolute(path)?;
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json", "-U"]).arg(&abs);
    let out = crate::child::output(cmd).await.map_err(ProbeError::Spawn)?;
    if !out.status.success() {
        return Err(ProbeError::Unreadable {
            path: path.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    let info: Info = serde_json::from_slice(&out.stdout).map_err(|e| ProbeError::Unreadable {
        path: path.to_path_buf(),
        message: format!("unreadable qemu-img output: {e}"),
    })?;
    let format =
        SourceFormat::from_qemu(&info.format).ok_or_else(|| ProbeError::UnsupportedFormat {
            format: info.format.clone(),
        })?;
    if let Some(backing) = info.backing_filename {
        return Err(ProbeError::HasBacking {
            path: path.to_path_buf(),
            backing,
        }
        .into());
    }
    let data = info.format_specific.map(|f| f.data).unwrap_or_default();
    let external = external_files(format, &info.filename, &data);
    if !external.is_empty() {
        return Err(ProbeError::ExternalFiles {
            path: path.to_path_buf(),
            files: external.join(", "),
        }
        .into());
    }
    if data["corrupt"].as_bool() == Some(true) {
        return Err(ProbeError::Corrupt {
            path: path.to_path_buf(),
            detail: "its header has the corrupt flag set".to_string(),
        }
        .into());
    }
    if format == SourceFormat::Qcow2 {
        // `info` reads only the header: a truncated download or broken tables pass it
        // and would convert into a disk full of zeros or fail half-way.
        check_qcow2(path, &abs).await?;
    }
    if format == SourceFormat::Raw {
        // Any file is a valid raw image, so an error page or an archive would pass as a
        // disk and surface only as a guest that does not boot.
        if let Some(why) = not_a_disk(&abs)? {
            return Err(ProbeError::NotADiskImage {
                path: path.to_path_buf(),
                why,
            }
            .into());
        }
    }
    Ok(SourceInfo {
        format,
        virtual_size: info.virtual_size,
    })
}

/// `qemu-img check` of a qcow2 source: corruption refuses it, leaked clusters (harmless
/// wasted space, exit code 3) do not.
async fn check_qcow2(path: &Path, abs: &Path) -> Result<(), ImportError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["check", "-U", "-f", "qcow2"]).arg(abs);
    let out = crate::child::output(cmd).await.map_err(ProbeError::Spawn)?;
    if matches!(out.status.code(), Some(0 | 3)) {
        return Ok(());
    }
    // stdout sums up ("3 errors were found on the image."), stderr tells the first one.
    let first = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    };
    let detail = [first(&out.stdout), first(&out.stderr)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Err(ProbeError::Corrupt {
        path: path.to_path_buf(),
        detail: if detail.is_empty() {
            "qemu-img check failed".to_string()
        } else {
            detail
        },
    }
    .into())
}

/// Files other than the image itself that it reads from.
fn external_files(format: SourceFormat, filename: &str, data: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    match format {
        SourceFormat::Vmdk => {
            for extent in data["extents"].as_array().into_iter().flatten() {
                match extent["filename"].as_str() {
                    Some(f) if f == filename => {}
                    Some(f) => out.push(f.to_string()),
                    None => out.push("an unnamed extent".to_string()),
                }
            }
        }
        SourceFormat::Qcow2 => {
            if let Some(f) = data["data-file"].as_str() {
                out.push(f.to_string());
            }
        }
        _ => {}
    }
    out
}

/// Why a file qemu-img takes for raw is not a disk image, judging by its size and its
/// first bytes; `None` when it may well be one.
fn not_a_disk(path: &Path) -> Result<Option<String>, ImportError> {
    let io = ImportError::io("read", path);
    let mut file = std::fs::File::open(path).map_err(ImportError::io("open", path))?;
    let len = file
        .metadata()
        .map_err(ImportError::io("stat", path))?
        .len();
    let mut head = Vec::with_capacity(512);
    file.by_ref().take(512).read_to_end(&mut head).map_err(io)?;
    if let Some(what) = known_non_disk(&head) {
        return Ok(Some(format!("it looks like {what}")));
    }
    if len == 0 {
        return Ok(Some("it is empty".to_string()));
    }
    if len % 512 != 0 {
        return Ok(Some(format!(
            "a raw disk is a whole number of 512-byte sectors, and this file is {len} bytes"
        )));
    }
    Ok(None)
}

fn known_non_disk(head: &[u8]) -> Option<&'static str> {
    let lower: Vec<u8> = head.iter().take(64).map(u8::to_ascii_lowercase).collect();
    let text = String::from_utf8_lossy(&lower);
    let text = text.trim_start();
    let signatures: &[(&[u8], &str)] = &[
        (
            b"QFI\xfb",
            "a damaged qcow2 image (qcow2 magic, but qemu-img does not accept its header)",
        ),
        (b"KDMV", "a damaged vmdk image"),
        (
            b"# Disk DescriptorFile",
            "a vmdk descriptor qemu-img cannot open",
        ),
        (b"vhdxfile", "a damaged vhdx image"),
        (
            b"conectix",
            "a VHD image (not supported; convert it with qemu-img first)",
        ),
        (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
        (
            b"\xfd7zXZ\x00",
            "an xz-compressed file (decompress it first)",
        ),
        (
            b"\x28\xb5\x2f\xfd",
            "a zstd-compressed file (decompress it first)",
        ),
        (b"BZh", "a bzip2-compressed file (decompress it first)"),
        (b"PK\x03\x04", "a zip archive (extract the image first)"),
    ];
    if let Some((_, what)) = signatures.iter().find(|(sig, _)| head.starts_with(sig)) {
        return Some(what);
    }
    if head.len() >= 512 && &head[257..262] == b"ustar" {
        return Some("a tar archive (an OVA? import it as one)");
    }
    if text.starts_with("<!doctype html") || text.starts_with("<html") || text.starts_with("<?xml")
    {
        return Some("an HTML or XML document, not an image");
    }
    if text.starts_with('{') || text.starts_with("<") {
        return Some("a text document, not an image");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert!(known_non_disk(b"  <!DOCTYPE html><html>")
            .unwrap()
            .contains("HTML"));
        assert!(known_non_disk(b"\x1f\x8b\x08").unwrap().contains("gzip"));
        assert!(known_non_disk(b"QFI\xfb\0\0\0\x07")
            .unwrap()
            .contains("qcow2"));
        assert!(known_non_disk(&[0u8; 512]).is_none());
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(known_non_disk(&tar).unwrap().contains("tar"));
    }

    #[test]
    fn vmdk_extents_must_be_the_file_itself() {
        let data = serde_json::json!({"extents": [{"filename": "/a/s.vmdk"}]});
        assert!(external_files(SourceFormat::Vmdk, "/a/s.vmdk", &data).is_empty());
        let data = serde_json::json!({"extents": [{"filename": "/etc/shadow"}]});
        assert_eq!(
            external_files(SourceFormat::Vmdk, "/a/s.vmdk", &data),
            vec!["/etc/shadow"]
        );
        let data = serde_json::json!({"data-file": "d.raw"});
        assert_eq!(
            external_files(SourceFormat::Qcow2, "q", &data),
            vec!["d.raw"]
        );
    }
}
