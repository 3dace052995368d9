//! Importing disk images from elsewhere: downloads over HTTP(S), conversion of foreign
//! formats (vmdk, vhdx, vdi, …) into qcow2 or raw, and OVA appliances.
//!
//! Every step is long, so each takes a [`Progress`] that it reports to and asks whether
//! the user gave up. Nothing half-made is ever left behind: output is written under a
//! hidden temporary name in its destination directory and renamed into place only on
//! success; every error and a cancel remove it (see [`TempFile`]).
//!
//! A typical import, as the daemon drives it:
//! 1. [`fetch_to_file`] when the source is a URL ([`is_remote`] tells);
//! 2. [`unpack_ova`] when it is an OVA, giving the VM's shape and its disk files;
//! 3. [`probe`] each disk, then [`convert`] it into a pool volume.

mod convert;
mod fetch;
mod manifest;
mod ova;
mod ovf;
mod probe;
mod temp;

pub use convert::{convert, ConvertError};
pub use fetch::{
    fetch_to_file, fetch_to_file_with, is_remote, FetchError, FetchOptions, TempDownload,
};
pub use manifest::ManifestError;
pub use ova::{unpack_ova, unpack_ova_blocking, OvaContents, OvaDisk, OvaError};
pub use ovf::{parse_ovf, OvfError};
pub use probe::{probe, probe_format, ProbeError, SourceFormat, SourceInfo};
pub use temp::{rename_no_replace, staging_path, TempFile};

/// Names of the hidden files an import or copy writes in a pool until they are whole; a
/// restart removes what a dead daemon left under them (and under [`OVA_WORK_PREFIX`]).
pub const STAGING_PREFIX: &str = ".corral-import-";
/// The directory an OVA is unpacked into, in the pool, while it is imported.
pub const OVA_WORK_PREFIX: &str = ".corral-ova-";

use std::path::PathBuf;

/// Where a long import step tells how far it is, and learns whether to stop.
///
/// The daemon implements this on its operation record; steps call it often (at least a
/// few times a second while working), so both methods must be cheap and non-blocking.
pub trait Progress: Send + Sync {
    /// How far the step is, from 0.0 to 100.0; never decreasing within one step.
    fn report(&self, percent: f32);

    /// `true` once the user asked to stop: the step then cleans up and returns
    /// [`ImportError::Cancelled`].
    fn cancelled(&self) -> bool;

    /// Bytes done when the total is unknown (a download without Content-Length), so a
    /// client can show something moving. Called sparingly; ignored by default.
    fn indeterminate(&self, _bytes_done: u64) {}
}

/// For callers that neither show progress nor cancel (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn report(&self, _percent: f32) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// Maps a step's 0–100 onto a slice `start..start+span` of an outer operation's bar, so
/// that fetch, unpack and convert together move one bar from 0 to 100.
pub struct Scaled<'a> {
    inner: &'a dyn Progress,
    start: f32,
    span: f32,
}

impl<'a> Scaled<'a> {
    pub fn new(inner: &'a dyn Progress, start: f32, span: f32) -> Self {
        Self { inner, start, span }
    }
}

impl Progress for Scaled<'_> {
    fn report(&self, percent: f32) {
        let p = percent.clamp(0.0, 100.0);
        self.inner.report(self.start + self.span * p / 100.0);
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
    fn indeterminate(&self, bytes_done: u64) {
        self.inner.indeterminate(bytes_done);
    }
}

/// Why an import step failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The user cancelled; everything the step had written was removed.
    #[error("import cancelled")]
    Cancelled,
    /// Downloading the source failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The source image is not one Corral can import.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// qemu-img could not convert the image.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// The OVA archive is unusable.
    #[error(transparent)]
    Ova(#[from] OvaError),
    /// The OVF descriptor inside an OVA is unusable.
    #[error(transparent)]
    Ovf(#[from] OvfError),
    /// The OVA's manifest does not vouch for its files.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The destination is already there; an import never overwrites anything.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// A file system operation on the host failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImportError {
    /// `true` when the source (URL, file, archive) is at fault rather than this host:
    /// the daemon answers those as bad input, with [`ImportError::hint`].
    pub fn is_bad_source(&self) -> bool {
        match self {
            ImportError::Fetch(e) => e.is_bad_source(),
            ImportError::Probe(e) => e.is_bad_source(),
            ImportError::Ova(e) => e.is_bad_source(),
            ImportError::Ovf(_) | ImportError::Manifest(_) => true,
            ImportError::Exists(_) => true,
            ImportError::Convert(_) | ImportError::Cancelled | ImportError::Io { .. } => false,
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ImportError::Fetch(e) => e.hint(),
            ImportError::Probe(e) => e.hint(),
            ImportError::Ova(e) => e.hint(),
            ImportError::Ovf(_) => Some("the OVF descriptor must follow DMTF OVF 1.x or 2.x"),
            ImportError::Manifest(_) => {
                Some("the OVA is damaged or was altered; download it again")
            }
            ImportError::Exists(_) => Some("choose another name or delete the existing volume"),
            _ => None,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImportError::Io {
            action,
            path,
            source,
        }
    }
}

/// Returns `Cancelled` once the user asked to stop; called between units of work.
pub(crate) fn check_cancel(progress: &dyn Progress) -> Result<(), ImportError> {
    if progress.cancelled() {
        Err(ImportError::Cancelled)
    } else {
        Ok(())
    }
}

/// Reports only increases, so a bar never moves backwards even if a tool's output does.
pub(crate) struct Monotonic<'a> {
    inner: &'a dyn Progress,
    last: f32,
}

impl<'a> Monotonic<'a> {
    pub(crate) fn new(inner: &'a dyn Progress) -> Self {
        Self { inner, last: -1.0 }
    }

    /// Reports `percent` if it moved at least `step` since the last report (100 always).
    pub(crate) fn report(&mut self, percent: f32, step: f32) {
        let p = percent.clamp(0.0, 100.0);
        if p > self.last && (p - self.last >= step || p >= 100.0) {
            self.last = p;
            self.inner.report(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<f32>>);

    impl Progress for Seen {
        fn report(&self, percent: f32) {
            self.0.lock().unwrap().push(percent);
        }
        fn cancelled(&self) -> bool {
            false
        }
    }

    #[test]
    fn scaled_and_monotonic() {
        let seen = Seen::default();
        let second_half = Scaled::new(&seen, 50.0, 50.0);
        let mut bar = Monotonic::new(&second_half);
        for p in [0.0, 0.2, 10.0, 5.0, 10.3, 60.0, 150.0, 100.0] {
            bar.report(p, 1.0);
        }
        assert_eq!(*seen.0.lock().unwrap(), vec![50.0, 55.0, 80.0, 100.0]);
        assert!(check_cancel(&seen).is_ok());
    }

    #[test]
    fn errors_say_whose_fault_and_what_to_do() {
        let e = ImportError::from(ProbeError::UnsupportedFormat {
            format: "vpc".into(),
        });
        assert!(e.is_bad_source());
        assert!(e.to_string().contains("vpc"));
        assert!(e.hint().is_some());
        assert!(!ImportError::Cancelled.is_bad_source());
    }
}
