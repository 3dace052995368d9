//! Helpers shared by the import tests: images made with qemu-img, a recording progress.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use corral_storage::import::Progress;

pub const MIB: u64 = 1 << 20;

pub fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 16 MiB raw image with distinct data in a few places (first and last sector among
/// them) and holes elsewhere, so conversions have both data and zeros to get right.
pub fn pattern_raw(dir: &Path) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("pattern.raw");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(16 * MIB).unwrap();
    for (i, off) in [0, 3 * MIB + 4096, 9 * MIB, 16 * MIB - 65536]
        .into_iter()
        .enumerate()
    {
        let block: Vec<u8> = (0..65536u32)
            .map(|n| (n.wrapping_mul(2654435761).wrapping_add(i as u32 * 7919) >> 13) as u8)
            .collect();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&block).unwrap();
    }
    path
}

/// `raw` converted to `format` (with `-o options` if given).
pub fn image_from(raw: &Path, format: &str, options: Option<&str>, out: &Path) {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", format];
    if let Some(o) = options {
        args.extend(["-o", o]);
    }
    args.extend([s(raw), s(out)]);
    qemu_img(&args);
}

/// `qemu-img compare`: same guest-visible contents.
pub fn same_contents(a: &Path, a_fmt: &str, b: &Path, b_fmt: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", a_fmt, "-F", b_fmt, s(a), s(b)])
        .status()
        .unwrap()
        .success()
}

pub fn qcow2_check_clean(path: &Path) -> bool {
    Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2", s(path)])
        .status()
        .unwrap()
        .success()
}

/// Names in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Records every report; cancels once progress reaches `cancel_at` (if set), or at once.
#[derive(Default)]
pub struct Recorder {
    pub reports: Mutex<Vec<f32>>,
    pub cancel: AtomicBool,
    pub cancel_at: Option<f32>,
    pub indeterminate: Mutex<Vec<u64>>,
}

impl Recorder {
    pub fn cancelling_at(p: f32) -> Self {
        Self {
            cancel_at: Some(p),
            ..Self::default()
        }
    }

    pub fn cancelled_already() -> Self {
        let r = Self::default();
        r.cancel.store(true, Ordering::SeqCst);
        r
    }

    pub fn reports(&self) -> Vec<f32> {
        self.reports.lock().unwrap().clone()
    }

    /// Reports rose monotonically from the start and ended at exactly 100.
    pub fn assert_complete(&self) {
        let r = self.reports();
        assert!(!r.is_empty(), "no progress reported");
        assert!(r.windows(2).all(|w| w[0] <= w[1]), "not monotonic: {r:?}");
        assert_eq!(*r.last().unwrap(), 100.0, "{r:?}");
        assert!(r.iter().all(|p| (0.0..=100.0).contains(p)), "{r:?}");
    }
}

impl Progress for Recorder {
    fn report(&self, percent: f32) {
        self.reports.lock().unwrap().push(percent);
        if self.cancel_at.is_some_and(|at| percent >= at) {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    fn indeterminate(&self, bytes_done: u64) {
        self.indeterminate.lock().unwrap().push(bytes_done);
    }
}

/// Whether any process on the host still has `needle` on its command line (a qemu-img
/// that should have been killed).
pub fn process_mentions(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}
