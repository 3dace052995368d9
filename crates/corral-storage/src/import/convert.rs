//! Conversion of an image into a volume format with `qemu-img convert`, with progress,
//! cancel, and nothing left behind on failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use corral_api::DiskFormat;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::temp::absolute;
use super::{check_cancel, ImportError, Monotonic, Progress, SourceFormat, TempFile};

/// How often a quiet conversion wakes to look for a cancel.
const TICK: Duration = Duration::from_millis(100);

/// Why qemu-img could not convert an image.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// qemu-img could not be run.
    #[error("cannot run qemu-img")]
    Spawn(#[source] std::io::Error),
    /// qemu-img ran and failed.
    #[error("qemu-img {action} of {path} failed: {message}")]
    QemuImg {
        action: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The destination has no parent directory to stage the conversion in.
    #[error("{0} is not a file path in a directory")]
    BadDestination(PathBuf),
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

/// Converts `src` (in `src_format`, as [`super::probe`] found it) into a new image at
/// `dest` in `dest_format`, returning its virtual size. qcow2 output is thin; raw output
/// is sparse (runs of 4 KiB zeros become holes). `dest` must not exist; it appears only
/// once the conversion is complete and on stable storage.
pub async fn convert(
    src: &Path,
    src_format: SourceFormat,
    dest: &Path,
    dest_format: DiskFormat,
    progress: &dyn Progress,
) -> Result<u64, ImportError> {
    check_cancel(progress)?;
    let src_abs = absolute(src)?;
    let dest = absolute(dest)?;
    if dest.exists() {
        return Err(ImportError::Exists(dest));
    }
    let dir = dest
        .parent()
        .ok_or_else(|| ConvertError::BadDestination(dest.clone()))?;
    let label = dest.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let (temp, file) = TempFile::create_in(dir, label)?;
    drop(file);

    let mut cmd = Command::new("qemu-img");
    // The source format is given, never guessed: guessing is how a raw image that starts
    // with a qcow2 header could be made to read host files through a backing file.
    cmd.args([
        "convert",
        "-p",
        "-f",
        src_format.as_str(),
        "-O",
        dest_format.as_str(),
    ]);
    if dest_format == DiskFormat::Raw {
        cmd.args(["-S", "4k"]);
    }
    cmd.arg(&src_abs)
        .arg(temp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = crate::child::spawn(cmd)
        .await
        .map_err(ConvertError::Spawn)?;
    let stderr = child.stderr.take().map(|mut e| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf).await;
            buf
        })
    });

    let status = follow(&mut child, progress).await?;
    let message = match stderr {
        Some(task) => String::from_utf8_lossy(&task.await.unwrap_or_default())
            .trim()
            .to_string(),
        None => String::new(),
    };
    if !status.success() {
        return Err(ConvertError::QemuImg {
            action: "convert",
            path: src.to_path_buf(),
            message: if message.is_empty() {
                status.to_string()
            } else {
                message
            },
        }
        .into());
    }
    check_cancel(progress)?;
    let size = virtual_size(temp.path(), dest_format).await?;
    temp.persist(&dest)?;
    progress.report(100.0);
    Ok(size)
}

/// Relays qemu-img's progress until it exits; on cancel kills it and says so.
async fn follow(
    child: &mut Child,
    progress: &dyn Progress,
) -> Result<std::process::ExitStatus, ImportError> {
    let mut bar = Monotonic::new(progress);
    bar.report(0.0, 0.0);
    let mut stdout = child.stdout.take();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if progress.cancelled() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(ImportError::Cancelled);
        }
        let Some(out) = stdout.as_mut() else {
            // Output closed: only the exit is left to wait for, still watching for cancel.
            match tokio::time::timeout(TICK, child.wait()).await {
                Ok(status) => return status.map_err(|e| ConvertError::Spawn(e).into()),
                Err(_) => continue,
            }
        };
        match tokio::time::timeout(TICK, out.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => stdout = None,
            Ok(Ok(n)) => {
                pending.extend_from_slice(&buf[..n]);
                // Progress lines end in '\r' (a terminal's way to redraw one line).
                while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Some(p) = parse_progress(&String::from_utf8_lossy(&line)) {
                        // 100 is said only once the image is in place.
                        bar.report(p.min(99.9), 0.5);
                    }
                }
            }
        }
    }
}

/// Reads `    (12.34/100%)` as 12.34.
fn parse_progress(line: &str) -> Option<f32> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.trim().parse().ok()
}

async fn virtual_size(path: &Path, format: DiskFormat) -> Result<u64, ImportError> {
    let fail = |message: String| ConvertError::QemuImg {
        action: "info",
        path: path.to_path_buf(),
        message,
    };
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json", "-f", format.as_str()])
        .arg(path);
    let out = crate::child::output(cmd)
        .await
        .map_err(ConvertError::Spawn)?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()).into());
    }
    let info: Info = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    Ok(info.virtual_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (12.34/100%)\r"), Some(12.34));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100.0));
        assert_eq!(parse_progress("qemu-img: error"), None);
        assert_eq!(parse_progress(""), None);
    }
}
