//! What a snapshot delete cut short by a crash leaves, made on purpose: some images
//! that sat on the snapshot's image already rebased one level down, the tree not yet
//! changed. `chain_repair::repair` must point them back without changing what they
//! read, so that later deletes (which go by the tree) never remove an image something
//! still reads through.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_api::{DiskFormat, SnapshotTree};
use corral_storage::snapshot::{self, ChainDisk};
use corral_storage::{chain_repair, qemu_img};

const MIB: u64 = 1 << 20;

fn qemu_io(image: &Path, read_only: bool, cmd: &str) {
    let mut c = Command::new("qemu-io");
    if read_only {
        c.args(["-r", "-U"]);
    }
    let out = c
        .args(["-f", "qcow2", "-c", cmd])
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "qemu-io '{cmd}' on {}: {text}{}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 3 MiB of which MiB i holds pattern `p[i]`.
fn expect(image: &Path, p: [u8; 3]) {
    for (i, v) in p.iter().enumerate() {
        qemu_io(
            image,
            true,
            &format!("read -P {v} {} {MIB}", i as u64 * MIB),
        );
    }
}

fn file_of(tree: &SnapshotTree, name: &str) -> PathBuf {
    let s = tree.snapshots.iter().find(|s| s.name == name).unwrap();
    PathBuf::from(&s.disks[0].file)
}

#[tokio::test]
async fn a_half_done_delete_is_pointed_back_and_later_deletes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.qcow2");
    qemu_img::create_qcow2(&vol, 3 * MIB).await.unwrap();
    let mut disks = vec![ChainDisk {
        id: "disk0".into(),
        active: vol.clone(),
        format: DiskFormat::Qcow2,
        prefix: "vol".into(),
    }];
    let mut tree = SnapshotTree {
        snapshots: vec![],
        current: None,
    };
    // s0: [1,1,1]; s1 (on s0): [1,2,1]; s2 (on s1): [1,2,3]; current: back on s1, [4,2,1].
    qemu_io(
        &disks[0].active,
        false,
        &format!("write -P 1 0 {}", 3 * MIB),
    );
    snapshot::create(&mut tree, &mut disks, "s0", None, 0)
        .await
        .unwrap();
    qemu_io(&disks[0].active, false, &format!("write -P 2 {MIB} {MIB}"));
    snapshot::create(&mut tree, &mut disks, "s1", None, 0)
        .await
        .unwrap();
    qemu_io(
        &disks[0].active,
        false,
        &format!("write -P 3 {} {MIB}", 2 * MIB),
    );
    snapshot::create(&mut tree, &mut disks, "s2", None, 0)
        .await
        .unwrap();
    let garbage = snapshot::revert(&mut tree, &mut disks, "s1").await.unwrap();
    snapshot::remove_garbage(&garbage);
    qemu_io(&disks[0].active, false, &format!("write -P 4 0 {MIB}"));

    // A delete of s1 that rebased s2's image onto s0's and was killed before the
    // current image's turn and before the tree was saved.
    let (s0, s1, s2) = (
        file_of(&tree, "s0"),
        file_of(&tree, "s1"),
        file_of(&tree, "s2"),
    );
    qemu_img::rebase(&s2, Some((&s0, DiskFormat::Qcow2)))
        .await
        .unwrap();
    expect(&s2, [1, 2, 3]);

    let found = chain_repair::repair(&tree, &disks).await.unwrap();
    assert!(found.unreclaimed.is_empty(), "{found:?}");
    assert_eq!(
        found.mismatches,
        vec![chain_repair::Mismatch {
            image: s2.clone(),
            found: Some(s0.clone()),
            expected: s1.clone(),
            repaired: true,
        }]
    );
    assert_eq!(qemu_img::backing_of(&s2).await.unwrap().unwrap().0, s1);
    expect(&s2, [1, 2, 3]);
    let again = chain_repair::repair(&tree, &disks).await.unwrap();
    assert!(again.mismatches.is_empty() && again.unreclaimed.is_empty());

    // Deleting s0, the node below: s0's image goes, and everything still reads whole
    // (without the repair, s2's image would have named the removed file).
    let garbage = snapshot::delete(&mut tree, &mut disks, "s0", &|_| {})
        .await
        .unwrap();
    assert_eq!(garbage, vec![s0.clone()]);
    assert!(snapshot::remove_garbage(&garbage).is_empty());
    expect(&s1, [1, 2, 1]);
    expect(&s2, [1, 2, 3]);
    expect(&disks[0].active, [4, 2, 1]);
    // And the interrupted delete of s1, done again, completes.
    let garbage = snapshot::delete(&mut tree, &mut disks, "s1", &|_| {})
        .await
        .unwrap();
    assert!(snapshot::remove_garbage(&garbage).is_empty());
    expect(&s2, [1, 2, 3]);
    expect(&disks[0].active, [4, 2, 1]);
    for image in [&s2, &disks[0].active] {
        qemu_img::check(image).await.unwrap();
    }
}

#[tokio::test]
async fn a_half_done_delete_of_the_root_is_pointed_back_too() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.qcow2");
    qemu_img::create_qcow2(&vol, 3 * MIB).await.unwrap();
    let mut disks = vec![ChainDisk {
        id: "disk0".into(),
        active: vol.clone(),
        format: DiskFormat::Qcow2,
        prefix: "vol".into(),
    }];
    let mut tree = SnapshotTree {
        snapshots: vec![],
        current: None,
    };
    qemu_io(
        &disks[0].active,
        false,
        &format!("write -P 5 0 {}", 3 * MIB),
    );
    snapshot::create(&mut tree, &mut disks, "root", None, 0)
        .await
        .unwrap();
    qemu_io(&disks[0].active, false, &format!("write -P 6 0 {MIB}"));
    // Deleting the root merges into the active image, which then has no backing.
    qemu_img::rebase(&disks[0].active, None).await.unwrap();
    let found = chain_repair::repair(&tree, &disks)
        .await
        .unwrap()
        .mismatches;
    assert_eq!(found.len(), 1);
    assert!(found[0].repaired && found[0].found.is_none(), "{found:?}");
    expect(&disks[0].active, [6, 5, 5]);
    let garbage = snapshot::delete(&mut tree, &mut disks, "root", &|_| {})
        .await
        .unwrap();
    assert!(snapshot::remove_garbage(&garbage).is_empty());
    expect(&disks[0].active, [6, 5, 5]);
    // Whether the top was streamed or committed into the root's image depends on which
    // of the two (about equal) files has more blocks allocated at that moment; either
    // way exactly one image is left, the active one.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        left,
        vec![disks[0].active.clone()],
        "vol was {}",
        vol.display()
    );
}
