//! unpack_ova against real OVAs built here: an OVF, a streamOptimized vmdk, a manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_api::DiskFormat;
use corral_storage::import::{
    convert, probe, unpack_ova, ImportError, ManifestError, NoProgress, OvaError, Progress,
    SourceFormat,
};
use sha2::{Digest, Sha256};

use super::util::*;

const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:href="appliance-disk1.vmdk" ovf:id="file1"/></References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>
  </DiskSection>
  <VirtualSystem ovf:id="appliance">
    <Info>A virtual machine</Info>
    <Name>appliance</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>3072</rasd:VirtualQuantity></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

struct Parts {
    raw: PathBuf,
    vmdk: Vec<u8>,
}

fn parts(dir: &Path) -> Parts {
    let raw = pattern_raw(dir);
    let vmdk = dir.join("disk.vmdk");
    image_from(&raw, "vmdk", Some("subformat=streamOptimized"), &vmdk);
    Parts {
        raw,
        vmdk: std::fs::read(vmdk).unwrap(),
    }
}

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A tar of `(name, bytes)` in order.
fn tar_of(path: &Path, entries: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.finish().unwrap();
}

/// A tar entry whose name is written raw, as a hostile archive would (the builder
/// itself refuses such names).
fn tar_with_raw_name(path: &Path, name: &str, kind: tar::EntryType, data: &[u8]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.finish().unwrap();
}

fn progress(r: &Arc<Recorder>) -> Arc<dyn Progress> {
    r.clone()
}

#[tokio::test]
async fn a_real_ova_unpacks_parses_and_converts() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let mf = format!(
        "SHA256(appliance.ovf)= {}\nSHA256(appliance-disk1.vmdk)= {}\n",
        sha256(OVF.as_bytes()),
        sha256(&p.vmdk)
    );
    // Manifest before the disk (as the spec orders it), and after it (as some tools do).
    let orders: [&[(&str, &[u8])]; 2] = [
        &[
            ("appliance.ovf", OVF.as_bytes()),
            ("appliance.mf", mf.as_bytes()),
            ("appliance-disk1.vmdk", &p.vmdk),
        ],
        &[
            ("./appliance.ovf", OVF.as_bytes()),
            ("./appliance-disk1.vmdk", &p.vmdk),
            ("./appliance.mf", mf.as_bytes()),
        ],
    ];
    for (i, entries) in orders.into_iter().enumerate() {
        let ova = dir.path().join(format!("a{i}.ova"));
        tar_of(&ova, entries);
        let work = dir.path().join(format!("work{i}"));
        std::fs::create_dir(&work).unwrap();
        let rec = Arc::new(Recorder::default());
        let c = unpack_ova(&ova, &work, progress(&rec)).await.unwrap();
        rec.assert_complete();
        assert_eq!(c.name.as_deref(), Some("appliance"));
        assert_eq!(c.vcpus, Some(4));
        assert_eq!(c.memory_mib, Some(3072));
        assert_eq!(c.disks.len(), 1);
        assert_eq!(c.disks[0].file, work.join("appliance-disk1.vmdk"));
        assert_eq!(c.disks[0].capacity_bytes, Some(16 * MIB));
        assert_eq!(c.extracted.len(), 3);

        let info = probe(&c.disks[0].file).await.unwrap();
        assert_eq!(info.format, SourceFormat::Vmdk);
        assert_eq!(Some(info.virtual_size), c.disks[0].capacity_bytes);
        let dest = dir.path().join(format!("vol{i}.qcow2"));
        convert(
            &c.disks[0].file,
            info.format,
            &dest,
            DiskFormat::Qcow2,
            &NoProgress,
        )
        .await
        .unwrap();
        assert!(same_contents(&p.raw, "raw", &dest, "qcow2"));
        assert!(qcow2_check_clean(&dest));
    }
}

#[tokio::test]
async fn manifest_mismatch_fails_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let wrong = "0".repeat(64);
    let mf = format!(
        "SHA256(appliance.ovf)= {}\nSHA256(appliance-disk1.vmdk)= {wrong}\n",
        sha256(OVF.as_bytes())
    );
    for (i, before) in [true, false].into_iter().enumerate() {
        let ova = dir.path().join(format!("bad{i}.ova"));
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("appliance.ovf", OVF.as_bytes()),
            ("appliance-disk1.vmdk", &p.vmdk),
        ];
        entries.insert(if before { 1 } else { 2 }, ("appliance.mf", mf.as_bytes()));
        tar_of(&ova, &entries);
        let work = dir.path().join(format!("work{i}"));
        std::fs::create_dir(&work).unwrap();
        let err = unpack_ova(&ova, &work, Arc::new(NoProgress))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImportError::Manifest(ManifestError::Mismatch { .. })),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("appliance-disk1.vmdk") && msg.contains("SHA256") && msg.contains(&wrong),
            "{msg}"
        );
        assert!(listing(&work).is_empty(), "{:?}", listing(&work));
    }

    // A manifest naming a file the archive lacks.
    let mf = format!("SHA256(other.vmdk)= {}\n", sha256(b"x"));
    let ova = dir.path().join("missing.ova");
    tar_of(
        &ova,
        &[
            ("appliance.ovf", OVF.as_bytes()),
            ("appliance.mf", mf.as_bytes()),
            ("appliance-disk1.vmdk", &p.vmdk),
        ],
    );
    let work = dir.path().join("work-missing");
    std::fs::create_dir(&work).unwrap();
    let err = unpack_ova(&ova, &work, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("other.vmdk"), "{err}");
    assert!(listing(&work).is_empty());
}

#[tokio::test]
async fn hostile_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("evil");
    let cases = [
        ("../evil", tar::EntryType::Regular),
        ("a/../../evil", tar::EntryType::Regular),
        ("/tmp/evil-corral-test", tar::EntryType::Regular),
        ("link.vmdk", tar::EntryType::Symlink),
        ("dev.vmdk", tar::EntryType::Block),
    ];
    for (i, (name, kind)) in cases.into_iter().enumerate() {
        let ova = dir.path().join(format!("h{i}.ova"));
        tar_with_raw_name(&ova, name, kind, b"pwned");
        let work = dir.path().join(format!("work{i}"));
        std::fs::create_dir(&work).unwrap();
        let err = unpack_ova(&ova, &work, Arc::new(NoProgress))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImportError::Ova(OvaError::UnsafeEntry { .. })),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        assert!(listing(&work).is_empty());
    }
    assert!(!outside.exists());
    assert!(!Path::new("/tmp/evil-corral-test").exists());

    // Not a tar at all.
    let raw = pattern_raw(dir.path());
    let work = dir.path().join("work-raw");
    std::fs::create_dir(&work).unwrap();
    let err = unpack_ova(&raw, &work, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::Ova(OvaError::NotATar { .. })),
        "{err}"
    );

    // No descriptor; a disk the descriptor names but the archive lacks.
    let ova = dir.path().join("nodesc.ova");
    tar_of(&ova, &[("disk.vmdk", b"x")]);
    let err = unpack_ova(&ova, &work, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::Ova(OvaError::Descriptors { count: 0 })),
        "{err}"
    );
    let ova = dir.path().join("nodisk.ova");
    tar_of(&ova, &[("appliance.ovf", OVF.as_bytes())]);
    let err = unpack_ova(&ova, &work, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::Ova(OvaError::MissingDisk { .. })),
        "{err}"
    );
    assert!(listing(&work).is_empty());
}

#[tokio::test]
async fn cancel_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let ova = dir.path().join("a.ova");
    tar_of(
        &ova,
        &[
            ("appliance.ovf", OVF.as_bytes()),
            ("appliance-disk1.vmdk", &p.vmdk),
        ],
    );
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let err = unpack_ova(&ova, &work, Arc::new(Recorder::cancelled_already()))
        .await
        .unwrap_err();
    assert!(matches!(err, ImportError::Cancelled));
    assert!(listing(&work).is_empty());

    // Mid-way, inside a large entry.
    let big: Vec<u8> = (0..64 * MIB as u32).map(|n| (n % 253) as u8).collect();
    tar_of(
        &ova_big(dir.path()),
        &[
            ("appliance.ovf", OVF.as_bytes()),
            ("extra.iso", &big),
            ("appliance-disk1.vmdk", &p.vmdk),
        ],
    );
    let rec = Arc::new(Recorder::cancelling_at(10.0));
    let err = unpack_ova(&ova_big(dir.path()), &work, progress(&rec))
        .await
        .unwrap_err();
    assert!(matches!(err, ImportError::Cancelled), "{err}");
    assert!(rec.reports().iter().any(|&r| (10.0..100.0).contains(&r)));
    assert!(listing(&work).is_empty(), "{:?}", listing(&work));
}

fn ova_big(dir: &Path) -> PathBuf {
    dir.join("big.ova")
}
