use super::*;
use crate::test_peer::Peer;

impl Peer {
    /// The stale-fd-set sweep that starts an attach, with no node and no sets.
    async fn expect_clean_sweep(&mut self) {
        let (id, _) = self.expect("query-named-block-nodes").await;
        self.ok(id, json!([])).await;
        let (id, _) = self.expect("query-fdsets").await;
        self.ok(id, json!([])).await;
    }
}

fn spec(path: &std::path::Path, read_only: bool) -> HotDisk {
    HotDisk {
        node: "disk3".into(),
        path: path.to_owned(),
        format: DiskFormat::Qcow2,
        read_only,
        bus: HotBus::VirtioBlk,
        ports: Vec::new(),
    }
}

#[test]
fn node_names_follow_qemu_rules() {
    for good in ["disk3", "a", "d-1.x_y", &"n".repeat(31)] {
        assert!(validate_node(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "3disk",
        "#block1",
        "disk 3",
        "disk,3",
        "dísk",
        &"n".repeat(32),
    ] {
        assert!(
            matches!(validate_node(bad), Err(HotplugError::InvalidNode { .. })),
            "{bad}"
        );
    }
}

#[test]
fn blockdev_and_device_arguments() {
    let s = spec(std::path::Path::new("/img/x.qcow2"), true);
    assert_eq!(
        blockdev_args(&s, 4, false),
        json!({
            "node-name": "disk3", "driver": "qcow2", "read-only": true, "discard": "unmap",
            "file": {"driver": "file", "filename": "/dev/fdset/4", "read-only": true},
        })
    );
    // A thin LV (or any block device) behind the fd set.
    assert_eq!(blockdev_args(&s, 4, true)["file"]["driver"], "host_device");
    assert_eq!(
        device_args(&s),
        json!({"driver": "virtio-blk-pci", "drive": "disk3", "id": "disk3-dev"})
    );
    let node = BlockNode {
        node_name: "disk3".into(),
        driver: "qcow2".into(),
        file: "/dev/fdset/12".into(),
        read_only: false,
        virtual_size: 1,
    };
    assert_eq!(node.fdset_id(), Some(12));
    let node = BlockNode {
        file: "/var/lib/x.img".into(),
        ..node
    };
    assert_eq!(node.fdset_id(), None);
}

#[tokio::test]
async fn attach_steps_in_order() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let (qmp, mut peer) = Peer::start().await;
    let s = spec(image.path(), false);
    let call = tokio::spawn(async move { attach_disk(&qmp, &s).await });
    // A set left by a rollback on a paused VM is removed again first.
    let (id, _) = peer.expect("query-named-block-nodes").await;
    peer.ok(id, json!([])).await;
    let (id, _) = peer.expect("query-fdsets").await;
    peer.ok(
        id,
        json!([{"fdset-id": 0, "fds": [{"fd": 30, "opaque": "disk2"}]},
               {"fdset-id": 7, "fds": [{"fd": 31, "opaque": "disk3"}]}]),
    )
    .await;
    let (id, args) = peer.expect("remove-fd").await;
    assert_eq!(args, json!({"fdset-id": 7}));
    peer.ok(id, json!({})).await;
    let (id, args) = peer.expect("add-fd").await;
    assert_eq!(args, json!({"opaque": "disk3"}));
    peer.ok(id, json!({"fdset-id": 2, "fd": 31})).await;
    // A writable disk's set also gets a read-only descriptor (for live snapshots).
    let (id, args) = peer.expect("add-fd").await;
    assert_eq!(args, json!({"opaque": "disk3", "fdset-id": 2}));
    peer.ok(id, json!({"fdset-id": 2, "fd": 32})).await;
    let (id, args) = peer.expect("blockdev-add").await;
    assert_eq!(args["file"]["filename"], "/dev/fdset/2");
    assert_eq!(args["read-only"], false);
    peer.ok(id, json!({})).await;
    let (id, args) = peer.expect("device_add").await;
    assert_eq!(args["id"], "disk3-dev");
    peer.ok(id, json!({})).await;
    call.await.unwrap().unwrap();
    peer.expect_silence().await;
}

#[tokio::test]
async fn failed_blockdev_add_removes_the_fdset() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let (qmp, mut peer) = Peer::start().await;
    let s = spec(image.path(), true);
    let call = tokio::spawn(async move { attach_disk(&qmp, &s).await });
    // The node exists: its fd sets are in use and must not be swept.
    let (id, _) = peer.expect("query-named-block-nodes").await;
    let node = json!({"node-name": "disk3", "drv": "raw", "file": "/dev/fdset/0",
                      "ro": true, "image": {"virtual-size": 512}});
    peer.ok(id, json!([node])).await;
    let (id, _) = peer.expect("add-fd").await;
    peer.ok(id, json!({"fdset-id": 1, "fd": 31})).await;
    let (id, _) = peer.expect("blockdev-add").await;
    peer.err(id, "GenericError", "Duplicate nodes with node-name='disk3'")
        .await;
    let (id, args) = peer.expect("remove-fd").await;
    assert_eq!(args, json!({"fdset-id": 1}));
    peer.ok(id, json!({})).await;
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, HotplugError::Qmp { command: "blockdev-add", source, .. } if source.is_class("GenericError")),
        "{e:?}"
    );
    peer.expect_silence().await;
}

#[tokio::test]
async fn failed_device_add_deletes_node_then_fdset() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let (qmp, mut peer) = Peer::start().await;
    let s = spec(image.path(), false);
    let call = tokio::spawn(async move { attach_disk(&qmp, &s).await });
    peer.expect_clean_sweep().await;
    for fd in [31, 32] {
        let (id, _) = peer.expect("add-fd").await;
        peer.ok(id, json!({"fdset-id": 1, "fd": fd})).await;
    }
    let (id, _) = peer.expect("blockdev-add").await;
    peer.ok(id, json!({})).await;
    let (id, _) = peer.expect("device_add").await;
    peer.err(id, "GenericError", "Duplicate device ID 'disk3-dev'")
        .await;
    let (id, args) = peer.expect("blockdev-del").await;
    assert_eq!(args, json!({"node-name": "disk3"}));
    peer.ok(id, json!({})).await;
    let (id, args) = peer.expect("remove-fd").await;
    assert_eq!(args, json!({"fdset-id": 1}));
    peer.ok(id, json!({})).await;
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            HotplugError::Qmp {
                command: "device_add",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn abandoned_attach_still_rolls_back() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let (qmp, mut peer) = Peer::start().await;
    let s = spec(image.path(), false);
    let call = tokio::spawn(async move { attach_disk(&qmp, &s).await });
    peer.expect_clean_sweep().await;
    for fd in [31, 32] {
        let (id, _) = peer.expect("add-fd").await;
        peer.ok(id, json!({"fdset-id": 0, "fd": fd})).await;
    }
    let (id, _) = peer.expect("blockdev-add").await;
    // The caller gives up mid-way; the operation must still finish cleanly.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    peer.err(id, "GenericError", "nope").await;
    let (id, _) = peer.expect("remove-fd").await;
    peer.ok(id, json!({})).await;
}

#[tokio::test]
async fn unopenable_image_sends_nothing() {
    let (qmp, mut peer) = Peer::start().await;
    let s = spec(std::path::Path::new("/nonexistent/corral/x.qcow2"), false);
    let e = attach_disk(&qmp, &s).await.unwrap_err();
    assert!(
        matches!(&e, HotplugError::Open { mode: "read-write", source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{e:?}"
    );
    peer.expect_silence().await;
    let bad = HotDisk {
        node: "#block1".into(),
        ..s
    };
    assert!(matches!(
        attach_disk(&qmp, &bad).await,
        Err(HotplugError::InvalidNode { .. })
    ));
    peer.expect_silence().await;
}

#[tokio::test]
async fn detach_waits_for_the_guest_then_cleans_up() {
    let (qmp, mut peer) = Peer::start().await;
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { detach_disk(&qmp, "disk3").await }
    });
    let (id, args) = peer.expect("device_del").await;
    assert_eq!(args, json!({"id": "disk3-dev"}));
    peer.ok(id, json!({})).await;
    // QEMU 7.2 first reports the virtio backend, then the device itself.
    peer.event(
        "DEVICE_DELETED",
        json!({"path": "/machine/peripheral/disk3-dev/virtio-backend"}),
    )
    .await;
    peer.event(
        "DEVICE_DELETED",
        json!({"device": "other-dev", "path": "/x"}),
    )
    .await;
    peer.expect_silence().await;
    peer.event(
        "DEVICE_DELETED",
        json!({"device": "disk3-dev", "path": "/machine/peripheral/disk3-dev"}),
    )
    .await;
    let node = |name: &str, drv: &str| {
        json!({"node-name": name, "drv": drv, "file": "/dev/fdset/1", "ro": false,
               "image": {"virtual-size": 1024, "filename": "/dev/fdset/1", "format": drv}})
    };
    let both = json!([node("disk3", "qcow2"), node("#block123", "file")]);
    // Is the node there? Then delete the disk's nodes until none is left.
    for _ in 0..2 {
        let (id, args) = peer.expect("query-named-block-nodes").await;
        assert_eq!(args, json!({"flat": true}));
        peer.ok(id, both.clone()).await;
    }
    let (id, args) = peer.expect("blockdev-del").await;
    assert_eq!(args, json!({"node-name": "disk3"}));
    peer.ok(id, json!({})).await;
    let (id, _) = peer.expect("query-named-block-nodes").await;
    peer.ok(id, json!([])).await;
    // The deleted node's fd set goes too; other disks' sets stay.
    let (id, _) = peer.expect("query-fdsets").await;
    peer.ok(
        id,
        json!([{"fdset-id": 0, "fds": [{"fd": 30, "opaque": "disk2"}]},
               {"fdset-id": 1, "fds": [{"fd": 31, "opaque": "disk3"}]}]),
    )
    .await;
    let (id, args) = peer.expect("remove-fd").await;
    assert_eq!(args, json!({"fdset-id": 1}));
    peer.ok(id, json!({})).await;
    // Nothing of the disk is left.
    let (id, _) = peer.expect("query-named-block-nodes").await;
    peer.ok(id, json!([])).await;
    let (id, _) = peer.expect("query-fdsets").await;
    peer.ok(
        id,
        json!([{"fdset-id": 0, "fds": [{"fd": 30, "opaque": "disk2"}]}]),
    )
    .await;
    call.await.unwrap().unwrap();
    peer.expect_silence().await;
}

#[tokio::test]
async fn detach_times_out_when_the_guest_ignores_it() {
    let (qmp, mut peer) = Peer::start().await;
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { detach_disk_with_timeout(&qmp, "disk3", Duration::from_millis(100)).await }
    });
    let (id, _) = peer.expect("device_del").await;
    peer.ok(id, json!({})).await;
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, HotplugError::UnplugTimeout { device, .. } if device == "disk3-dev"),
        "{e:?}"
    );
    // The disk stays fully attached: nothing else was touched.
    peer.expect_silence().await;

    // A retry while the request is still pending keeps waiting for the guest.
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { detach_disk(&qmp, "disk3").await }
    });
    let (id, _) = peer.expect("device_del").await;
    peer.err(
        id,
        "GenericError",
        "Device disk3-dev is already in the process of unplug",
    )
    .await;
    peer.event(
        "DEVICE_DELETED",
        json!({"device": "disk3-dev", "path": "/p"}),
    )
    .await;
    let (id, _) = peer.expect("query-named-block-nodes").await;
    peer.ok(id, json!([])).await;
    let (id, _) = peer.expect("query-fdsets").await;
    peer.ok(
        id,
        json!([{"fdset-id": 0, "fds": [{"fd": 30, "opaque": "disk3"}]}]),
    )
    .await;
    let (id, _) = peer.expect("remove-fd").await;
    peer.ok(id, json!({})).await;
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn detaching_nothing_is_not_attached() {
    let (qmp, mut peer) = Peer::start().await;
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { detach_disk(&qmp, "disk9").await }
    });
    let (id, _) = peer.expect("device_del").await;
    peer.err(id, "DeviceNotFound", "Device 'disk9-dev' not found")
        .await;
    let (id, _) = peer.expect("query-named-block-nodes").await;
    peer.ok(id, json!([])).await;
    let (id, _) = peer.expect("query-fdsets").await;
    peer.ok(id, json!([])).await;
    let e = call.await.unwrap().unwrap_err();
    assert!(matches!(e, HotplugError::NotAttached { .. }), "{e:?}");
}

#[tokio::test]
async fn resize_by_node_name() {
    let (qmp, mut peer) = Peer::start().await;
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { resize_disk(&qmp, "disk3", 128 << 20).await }
    });
    // The disk's top node is found through its guest device (an overlay after a live
    // snapshot).
    let (id, _) = peer.expect("query-block").await;
    peer.ok(
        id,
        json!([{"qdev": "/machine/peripheral/disk2-dev/virtio-backend", "inserted": {"node-name": "disk2"}},
               {"qdev": "/machine/peripheral/disk3-dev/virtio-backend", "inserted": {"node-name": "disk3-0a1b2c3d"}}]),
    )
    .await;
    let (id, args) = peer.expect("block_resize").await;
    assert_eq!(
        args,
        json!({"node-name": "disk3-0a1b2c3d", "size": 134_217_728})
    );
    peer.err(id, "GenericError", "Cannot grow device files")
        .await;
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            HotplugError::Qmp {
                command: "block_resize",
                ..
            }
        ),
        "{e:?}"
    );
}
