//! Model-based randomized test of the snapshot engine: random sequences of writes
//! (qemu-io), snapshot create, revert, delete and clone, with the expected contents of
//! the current disk, every snapshot and every clone checked after each step, and
//! `qemu-img check` clean at the end. A failure prints the seed and the steps so far;
//! `CORRAL_MODEL_SEED` replays one sequence, `CORRAL_MODEL_SEQUENCES` runs more.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use corral_api::{DiskFormat, SnapshotTree};
use corral_storage::qemu_img;
use corral_storage::snapshot::{self, ChainDisk};

const CLUSTER: usize = 64 << 10;
const CLUSTERS: usize = 8;
const STEPS: usize = 12;

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What each cluster should hold (its fill byte).
type Content = [u8; CLUSTERS];

struct Model {
    current: Content,
    snapshots: BTreeMap<String, Content>,
    clones: Vec<(PathBuf, Content)>,
}

fn read_image(path: &Path, scratch: &Path) -> Content {
    let raw = scratch.join("read.raw");
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(ok.success(), "cannot read {}", path.display());
    let bytes = std::fs::read(&raw).unwrap();
    let mut c = [0u8; CLUSTERS];
    for (i, chunk) in bytes.chunks(CLUSTER).enumerate().take(CLUSTERS) {
        assert!(
            chunk.iter().all(|b| *b == chunk[0]),
            "cluster {i} of {} is torn",
            path.display()
        );
        c[i] = chunk[0];
    }
    c
}

fn write(disk: &ChainDisk, cluster: usize, value: u8) {
    let cmd = format!("write -P {value} {} {CLUSTER}", cluster * CLUSTER);
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &cmd])
        .arg(&disk.active)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(model: &Model, tree: &SnapshotTree, disk: &ChainDisk, scratch: &Path, log: &[String]) {
    let ctx = || format!("after steps:\n  {}", log.join("\n  "));
    assert_eq!(
        read_image(&disk.active, scratch),
        model.current,
        "current state wrong {}",
        ctx()
    );
    for s in &tree.snapshots {
        let file = Path::new(&s.disks[0].file);
        assert_eq!(
            read_image(file, scratch),
            model.snapshots[&s.name],
            "snapshot {} wrong {}",
            s.name,
            ctx()
        );
    }
    assert_eq!(tree.snapshots.len(), model.snapshots.len(), "{}", ctx());
    for (path, content) in &model.clones {
        assert_eq!(
            &read_image(path, scratch),
            content,
            "clone {} changed {}",
            path.display(),
            ctx()
        );
    }
}

fn new_disk(dir: &Path) -> ChainDisk {
    ChainDisk {
        id: "disk0".into(),
        active: dir.join("vol.qcow2"),
        format: DiskFormat::Qcow2,
        prefix: "vol".into(),
    }
}

async fn run_sequence(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut disk = new_disk(dir.path());
    qemu_img::create_qcow2(&disk.active, (CLUSTER * CLUSTERS) as u64)
        .await
        .unwrap();
    let mut tree = SnapshotTree {
        snapshots: vec![],
        current: None,
    };
    let mut model = Model {
        current: [0; CLUSTERS],
        snapshots: BTreeMap::new(),
        clones: vec![],
    };
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut log = vec![format!("seed {seed}")];
    for step in 0..STEPS {
        let names: Vec<String> = model.snapshots.keys().cloned().collect();
        match rng.below(10) {
            0..=3 => {
                let (c, v) = (rng.below(CLUSTERS), 1 + rng.below(250) as u8);
                write(&disk, c, v);
                model.current[c] = v;
                log.push(format!("write cluster {c} = {v}"));
            }
            4 | 5 => {
                let name = format!("s{step}");
                snapshot::create(&mut tree, std::slice::from_mut(&mut disk), &name, None, 0)
                    .await
                    .unwrap();
                model.snapshots.insert(name.clone(), model.current);
                log.push(format!("snapshot {name}"));
            }
            6 if !names.is_empty() => {
                let name = &names[rng.below(names.len())];
                let garbage = snapshot::revert(&mut tree, std::slice::from_mut(&mut disk), name)
                    .await
                    .unwrap();
                snapshot::remove_garbage(&garbage);
                model.current = model.snapshots[name];
                log.push(format!("revert {name}"));
            }
            7 | 8 if !names.is_empty() => {
                let name = &names[rng.below(names.len())];
                let garbage =
                    snapshot::delete(&mut tree, std::slice::from_mut(&mut disk), name, &|_| {})
                        .await
                        .unwrap();
                snapshot::remove_garbage(&garbage);
                model.snapshots.remove(name);
                log.push(format!("delete {name}"));
            }
            _ => {
                let clone = dir.path().join(format!("clone{step}.qcow2"));
                let ok = Command::new("qemu-img")
                    .args(["convert", "-O", "qcow2"])
                    .arg(&disk.active)
                    .arg(&clone)
                    .status()
                    .unwrap();
                assert!(ok.success());
                model.clones.push((clone, model.current));
                log.push(format!("clone {step}"));
            }
        }
        check(&model, &tree, &disk, scratch.path(), &log);
    }
    let used = snapshot::files(&tree, std::slice::from_ref(&disk));
    for f in &used {
        qemu_img::check(f)
            .await
            .unwrap_or_else(|e| panic!("{} not clean: {e}\n{}", f.display(), log.join("\n")));
    }
    // Nothing is left but the files the tree and the disk use (and the clones).
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let p = entry.path();
        let is_clone = model.clones.iter().any(|(c, _)| *c == p);
        assert!(
            used.contains(&p) || is_clone,
            "leftover {} after:\n{}",
            p.display(),
            log.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_never_lose_data() {
    if let Ok(seed) = std::env::var("CORRAL_MODEL_SEED") {
        run_sequence(seed.parse().unwrap()).await;
        return;
    }
    let n: u64 = std::env::var("CORRAL_MODEL_SEQUENCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 1..=n {
        run_sequence(seed).await;
    }
}

#[tokio::test]
async fn deleting_the_current_node_and_the_root_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut disk = new_disk(dir.path());
    let base = disk.active.clone();
    qemu_img::create_qcow2(&base, (CLUSTER * CLUSTERS) as u64)
        .await
        .unwrap();
    let mut tree = SnapshotTree {
        snapshots: vec![],
        current: None,
    };
    write(&disk, 0, 1);
    snapshot::create(&mut tree, std::slice::from_mut(&mut disk), "a", None, 0)
        .await
        .unwrap();
    write(&disk, 1, 2);
    snapshot::create(&mut tree, std::slice::from_mut(&mut disk), "b", None, 0)
        .await
        .unwrap();
    write(&disk, 2, 3);
    // Branch from a.
    let g = snapshot::revert(&mut tree, std::slice::from_mut(&mut disk), "a")
        .await
        .unwrap();
    snapshot::remove_garbage(&g);
    write(&disk, 3, 4);
    snapshot::create(&mut tree, std::slice::from_mut(&mut disk), "c", None, 0)
        .await
        .unwrap();
    assert_eq!(tree.current.as_deref(), Some("c"));
    // Delete the root (a): its data moves into both branches; its file (the original
    // volume file) goes only after.
    let g = snapshot::delete(&mut tree, std::slice::from_mut(&mut disk), "a", &|_| {})
        .await
        .unwrap();
    assert!(
        base.exists(),
        "removed only once the caller has saved the tree"
    );
    snapshot::remove_garbage(&g);
    assert!(!base.exists());
    let b = tree.snapshots.iter().find(|s| s.name == "b").unwrap();
    assert_eq!(
        read_image(Path::new(&b.disks[0].file), scratch.path()),
        [1, 2, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(b.parent, None);
    // Delete the node the VM runs on (c): the current state keeps its data.
    let g = snapshot::delete(&mut tree, std::slice::from_mut(&mut disk), "c", &|_| {})
        .await
        .unwrap();
    snapshot::remove_garbage(&g);
    assert_eq!(tree.current, None);
    assert_eq!(
        read_image(&disk.active, scratch.path()),
        [1, 0, 0, 4, 0, 0, 0, 0]
    );
    let err = snapshot::delete(&mut tree, std::slice::from_mut(&mut disk), "nope", &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"));
}
