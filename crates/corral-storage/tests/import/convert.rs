//! probe_format and convert against real images of every supported format.

use std::os::unix::fs::MetadataExt;

use corral_api::DiskFormat;
use corral_storage::import::{
    convert, probe, probe_format, ImportError, NoProgress, ProbeError, SourceFormat,
};

use super::util::*;

#[tokio::test]
async fn every_format_converts_to_qcow2_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern_raw(dir.path());
    let sources = [
        ("qcow2", None, SourceFormat::Qcow2),
        ("raw", None, SourceFormat::Raw),
        ("vmdk", None, SourceFormat::Vmdk),
        (
            "vmdk",
            Some("subformat=streamOptimized"),
            SourceFormat::Vmdk,
        ),
        ("vhdx", None, SourceFormat::Vhdx),
        ("vdi", None, SourceFormat::Vdi),
    ];
    for (i, (fmt, opts, expected)) in sources.into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}.{fmt}"));
        image_from(&raw, fmt, opts, &src);
        let info = probe(&src).await.unwrap();
        assert_eq!(info.format, expected, "{fmt} {opts:?}");
        assert_eq!(info.virtual_size, 16 * MIB);
        assert_eq!(probe_format(&src).await.unwrap(), expected);

        for dest_fmt in [DiskFormat::Qcow2, DiskFormat::Raw] {
            let out_dir = dir.path().join(format!("out{i}-{}", dest_fmt.as_str()));
            std::fs::create_dir(&out_dir).unwrap();
            let dest = out_dir.join(format!("vol.{}", dest_fmt.as_str()));
            let rec = Recorder::default();
            let size = convert(&src, expected, &dest, dest_fmt, &rec)
                .await
                .unwrap();
            assert_eq!(size, 16 * MIB);
            rec.assert_complete();
            assert!(
                same_contents(&raw, "raw", &dest, dest_fmt.as_str()),
                "{fmt} {opts:?} -> {dest_fmt:?} differs"
            );
            // Nothing but the volume itself: no temporary file left over.
            assert_eq!(
                listing(&out_dir),
                vec![format!("vol.{}", dest_fmt.as_str())]
            );
            let meta = std::fs::metadata(&dest).unwrap();
            match dest_fmt {
                DiskFormat::Qcow2 => {
                    assert!(qcow2_check_clean(&dest));
                    assert!(meta.len() < 4 * MIB, "qcow2 output is thin");
                }
                DiskFormat::Raw => {
                    assert_eq!(meta.len(), 16 * MIB);
                    assert!(meta.blocks() * 512 < 4 * MIB, "raw output is sparse");
                }
            }
        }
    }
}

#[tokio::test]
async fn convert_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern_raw(dir.path());
    let dest = dir.path().join("taken.qcow2");
    std::fs::write(&dest, b"precious").unwrap();
    let err = convert(
        &raw,
        SourceFormat::Raw,
        &dest,
        DiskFormat::Qcow2,
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImportError::Exists(_)), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"precious");
    assert_eq!(listing(dir.path()), vec!["pattern.raw", "taken.qcow2"]);
}

#[tokio::test]
async fn cancel_before_start_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern_raw(dir.path());
    let dest = dir.path().join("v.qcow2");
    let rec = Recorder::cancelled_already();
    let err = convert(&raw, SourceFormat::Raw, &dest, DiskFormat::Qcow2, &rec)
        .await
        .unwrap_err();
    assert!(matches!(err, ImportError::Cancelled));
    assert_eq!(listing(dir.path()), vec!["pattern.raw"]);
}

#[tokio::test]
async fn cancel_mid_convert_kills_qemu_img_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // 512 MiB of non-zero data: long enough to convert that a cancel lands mid-way.
    let big = dir.path().join("big.raw");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let block: Vec<u8> = (0..MIB as u32).map(|n| (n % 251) as u8 | 1).collect();
        for _ in 0..512 {
            f.write_all(&block).unwrap();
        }
    }
    for dest_fmt in [DiskFormat::Qcow2, DiskFormat::Raw] {
        let dest = dir.path().join(format!("v.{}", dest_fmt.as_str()));
        let rec = Recorder::cancelling_at(1.0);
        let started = std::time::Instant::now();
        let err = convert(&big, SourceFormat::Raw, &dest, dest_fmt, &rec)
            .await
            .unwrap_err();
        assert!(matches!(err, ImportError::Cancelled), "{err}");
        let r = rec.reports();
        assert!(
            r.iter().any(|&p| p > 0.0 && p < 100.0),
            "cancelled mid-way: {r:?}"
        );
        assert!(!r.contains(&100.0));
        assert!(started.elapsed().as_secs() < 30);
        assert_eq!(listing(dir.path()), vec!["big.raw"]);
        assert!(
            !process_mentions(dir.path().to_str().unwrap()),
            "qemu-img still running"
        );
    }
}

#[tokio::test]
async fn corrupt_qcow2_header_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = pattern_raw(dir.path());
    for (i, version) in [[0xffu8; 4], [0u8; 4]].into_iter().enumerate() {
        let q = dir.path().join(format!("bad{i}.qcow2"));
        image_from(&raw, "qcow2", None, &q);
        let mut bytes = std::fs::read(&q).unwrap();
        bytes[4..8].copy_from_slice(&version);
        std::fs::write(&q, bytes).unwrap();
        let err = probe_format(&q).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("bad{i}.qcow2")), "{msg}");
        assert!(msg.contains("qcow2"), "{msg}");
        assert!(err.is_bad_source());
        assert!(err.hint().is_some());
        match (i, &err) {
            // An unknown version: qemu-img's qcow2 driver refuses it.
            (0, ImportError::Probe(ProbeError::Unreadable { .. })) => {}
            // Version 0: qemu-img no longer sees qcow2 and would call it raw.
            (1, ImportError::Probe(ProbeError::NotADiskImage { .. })) => {}
            _ => panic!("unexpected: {err:?}"),
        }
    }

    // A header intact but the file cut short (a broken download): `info` alone passes it.
    let q = dir.path().join("cut.qcow2");
    image_from(&raw, "qcow2", None, &q);
    let len = std::fs::metadata(&q).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&q)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let err = probe_format(&q).await.unwrap_err();
    assert!(
        matches!(err, ImportError::Probe(ProbeError::Corrupt { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("cut.qcow2 is a damaged image: "),
        "{err}"
    );
}

#[tokio::test]
async fn unsafe_or_unsupported_sources_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let raw = pattern_raw(dir.path());

    image_from(&raw, "qcow2", None, &d("base.qcow2"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        s(&d("base.qcow2")),
        s(&d("top.qcow2")),
    ]);
    assert!(matches!(
        probe(&d("top.qcow2")).await,
        Err(ImportError::Probe(ProbeError::HasBacking { .. }))
    ));

    // A vmdk whose data is in other files (here its own extents; could be /dev/sda).
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        s(&d("split.vmdk")),
        "16M",
    ]);
    let err = probe(&d("split.vmdk")).await.unwrap_err();
    assert!(
        matches!(err, ImportError::Probe(ProbeError::ExternalFiles { .. })),
        "{err}"
    );

    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&d("data.raw"))),
        s(&d("ext.qcow2")),
        "16M",
    ]);
    let err = probe(&d("ext.qcow2")).await.unwrap_err();
    assert!(err.to_string().contains("data.raw"), "{err}");

    image_from(&raw, "vpc", None, &d("disk.vhd"));
    let err = probe(&d("disk.vhd")).await.unwrap_err();
    assert!(
        matches!(&err, ImportError::Probe(ProbeError::UnsupportedFormat { format }) if format == "vpc"),
        "{err}"
    );

    std::fs::write(d("page.img"), "<!DOCTYPE html><html>Not here</html>").unwrap();
    let err = probe(&d("page.img")).await.unwrap_err();
    assert!(err.to_string().contains("HTML"), "{err}");

    std::fs::write(d("odd.img"), vec![7u8; 1000]).unwrap();
    let err = probe(&d("odd.img")).await.unwrap_err();
    assert!(err.to_string().contains("512-byte sectors"), "{err}");

    let err = probe(&d("missing.img")).await.unwrap_err();
    assert!(err.to_string().contains("missing.img"), "{err}");
}
