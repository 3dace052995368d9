use std::sync::Arc;

use corral_api::{Machine, OperationState, VmState};

use super::*;

fn record(name: &str) -> VmRecord {
    VmRecord {
        spec: VmSpec {
            name: name.to_string(),
            uuid: Uuid::new_v4(),
            memory_mib: 256,
            vcpus: 1,
            machine: Machine::Pc,
            firmware: Default::default(),
            nvram: None,
            disks: vec![],
            cdrom: None,
            kernel: None,
            nics: vec![],
            firewall: vec![],
            cloud_init: None,
        },
        status: VmStatus::stopped(None),
        created_at: 1,
    }
}

#[test]
fn vm_round_trip() {
    let s = SqliteStore::in_memory().unwrap();
    let r = record("a");
    s.insert_vm(&r).unwrap();
    assert_eq!(s.get_vm("a").unwrap(), Some(r.clone()));
    assert!(s.get_vm("b").unwrap().is_none());

    let mut status = r.status.clone();
    status.state = VmState::Running;
    status.pid = Some(42);
    s.update_vm_status("a", &status).unwrap();
    assert_eq!(s.get_vm("a").unwrap().unwrap().status, status);

    let mut spec = r.spec.clone();
    spec.memory_mib = 512;
    s.update_vm_spec(&spec).unwrap();
    assert_eq!(s.get_vm("a").unwrap().unwrap().spec.memory_mib, 512);

    s.delete_vm("a").unwrap();
    assert!(matches!(s.delete_vm("a"), Err(StoreError::NotFound { .. })));
    assert!(matches!(
        s.update_vm_status("a", &status),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn duplicate_name_is_refused() {
    let s = SqliteStore::in_memory().unwrap();
    s.insert_vm(&record("a")).unwrap();
    assert!(matches!(
        s.insert_vm(&record("a")),
        Err(StoreError::AlreadyExists { .. })
    ));
}

#[test]
fn concurrent_creates_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.insert_vm(&record("same")).is_ok())
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
}

#[test]
fn reopen_keeps_state_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_vm(&record("kept")).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.list_vms().unwrap().len(), 1);
}

#[test]
fn migrations_are_valid() {
    migrations().validate().unwrap();
}

#[test]
fn events_by_vm_and_cursor() {
    let s = SqliteStore::in_memory().unwrap();
    s.insert_vm(&record("a")).unwrap();
    let e1 = s.append_event(Some("a"), "state", "one", 10).unwrap();
    s.append_event(Some("b"), "state", "other", 11).unwrap();
    let e3 = s.append_event(Some("a"), "state", "two", 12).unwrap();
    s.append_event(None, "host", "host", 13).unwrap();
    assert_eq!(s.events(None, 0, 100).unwrap().len(), 4);
    let after = s.events(Some("a"), e1.id, 100).unwrap();
    assert_eq!(after, vec![e3.clone()]);
    let recent = s.recent_events("a", 1).unwrap();
    assert_eq!(recent, vec![e3]);
    s.delete_vm("a").unwrap();
    assert!(s.recent_events("a", 10).unwrap().is_empty());
}

#[test]
fn operations_upsert() {
    let s = SqliteStore::in_memory().unwrap();
    let mut op = Operation {
        id: Uuid::new_v4(),
        kind: "vm.stop".into(),
        target: "a".into(),
        state: OperationState::Running,
        progress: 0.0,
        created_ms: 1,
        updated_ms: 1,
        cancellable: false,
        error: None,
        result: None,
        detail: None,
    };
    s.put_operation(&op).unwrap();
    op.state = OperationState::Succeeded;
    op.progress = 100.0;
    s.put_operation(&op).unwrap();
    assert_eq!(s.get_operation(op.id).unwrap(), Some(op.clone()));
    assert_eq!(s.list_operations().unwrap(), vec![op]);
}

#[test]
fn mac_lookup() {
    let s = SqliteStore::in_memory().unwrap();
    let mut r = record("n");
    r.spec.nics.push(corral_api::Nic {
        kind: corral_api::NetworkKind::User,
        source: None,
        mac: "52:54:00:aa:bb:cc".into(),
        ip: None,
        vlan: None,
    });
    s.insert_vm(&r).unwrap();
    assert!(s.mac_in_use("52:54:00:aa:bb:cc").unwrap());
    assert!(!s.mac_in_use("52:54:00:aa:bb:cd").unwrap());
}

fn network(name: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.to_string(),
        kind: corral_api::NetworkType::Nat,
        bridge: format!("br-{name}"),
        subnet: Some("10.0.9.1/24".into()),
        dhcp: true,
        forwards: vec![],
    }
}

fn nic_on(net: &str, mac: &str) -> corral_api::Nic {
    corral_api::Nic {
        kind: corral_api::NetworkKind::Network,
        source: Some(net.to_string()),
        mac: mac.into(),
        ip: Some("10.0.9.2".parse().unwrap()),
        vlan: None,
    }
}

#[test]
fn networks_in_use_cannot_be_deleted() {
    let s = SqliteStore::in_memory().unwrap();
    s.insert_network(&network("lab")).unwrap();
    assert!(matches!(
        s.insert_network(&network("lab")),
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut r = record("web");
    r.spec.nics.push(nic_on("lab", "52:54:00:00:00:01"));
    s.insert_vm(&r).unwrap();
    assert_eq!(s.vms_on_network("lab").unwrap(), vec!["web".to_string()]);
    assert!(matches!(
        s.delete_network("lab"),
        Err(StoreError::InUse { .. })
    ));
    s.delete_vm("web").unwrap();
    s.delete_network("lab").unwrap();
    assert!(s.get_network("lab").unwrap().is_none());
}

#[test]
fn a_vm_cannot_be_recorded_on_a_missing_network() {
    let s = SqliteStore::in_memory().unwrap();
    let mut r = record("web");
    r.spec.nics.push(nic_on("gone", "52:54:00:00:00:02"));
    assert!(matches!(
        s.insert_vm(&r),
        Err(StoreError::NotFound {
            kind: "network",
            ..
        })
    ));
    assert!(s.get_vm("web").unwrap().is_none());
    assert!(matches!(
        s.insert_vm_with_volumes(&r, &[]),
        Err(StoreError::NotFound {
            kind: "network",
            ..
        })
    ));
}

#[test]
fn event_history_is_bounded() {
    let s = SqliteStore::in_memory().unwrap();
    for i in 0..(EVENTS_KEPT + 10) {
        s.append_event(Some("a"), "state", &format!("e{i}"), i as u64)
            .unwrap();
    }
    s.append_event(Some("b"), "state", "other", 0).unwrap();
    let all = s.events(Some("a"), 0, 10_000).unwrap();
    assert_eq!(all.len() as i64, EVENTS_KEPT);
    assert_eq!(all.last().unwrap().message, format!("e{}", EVENTS_KEPT + 9));
    assert_eq!(s.events(Some("b"), 0, 10).unwrap().len(), 1);
}

fn volume(name: &str, base: Option<(&str, &str)>) -> Volume {
    Volume {
        name: name.to_string(),
        pool: corral_api::DEFAULT_POOL.to_string(),
        format: corral_api::DiskFormat::Qcow2,
        size_bytes: 1 << 20,
        path: format!("/pool/{name}.qcow2"),
        owner: None,
        created_at: 1,
        used_by: vec![],
        allocation_bytes: None,
        base_image: None,
        base_snapshot: base.map(|(vm, snapshot)| corral_api::SnapshotRef {
            vm: vm.to_string(),
            snapshot: snapshot.to_string(),
        }),
        base_file: None,
    }
}

fn tree(names: &[&str]) -> SnapshotTree {
    SnapshotTree {
        snapshots: names
            .iter()
            .map(|n| corral_api::Snapshot {
                name: n.to_string(),
                parent: None,
                created_at: 1,
                description: None,
                disks: vec![],
                nvram: None,
                memory: None,
                quiesced: false,
            })
            .collect(),
        current: None,
    }
}

/// A store with pool `default`, VM `src` with snapshots s1 and s2.
fn store_with_snapshots() -> (SqliteStore, VmRecord) {
    let s = SqliteStore::in_memory().unwrap();
    s.insert_pool(&PoolSpec {
        name: corral_api::DEFAULT_POOL.into(),
        driver: "dir".into(),
        path: Some("/pool".into()),
        volume_group: None,
        thin_pool: None,
        shared: false,
    })
    .unwrap();
    let src = record("src");
    s.insert_vm(&src).unwrap();
    s.save_vm_and_snapshots(&src.spec, &tree(&["s1", "s2"]), &[])
        .unwrap();
    (s, src)
}

#[test]
fn volumes_stored_before_base_snapshot_existed_still_decode() {
    let s = SqliteStore::in_memory().unwrap();
    s.insert_pool(&PoolSpec {
        name: "default".into(),
        driver: "dir".into(),
        path: Some("/pool".into()),
        volume_group: None,
        thin_pool: None,
        shared: false,
    })
    .unwrap();
    let old = r#"{"name":"old","pool":"default","format":"qcow2","size_bytes":1048576,
                  "path":"/pool/old.qcow2","owner":null,"created_at":1}"#;
    s.with(|c| {
        c.execute(
            "INSERT INTO volumes (name, pool, body) VALUES ('old', 'default', ?1)",
            [old],
        )?;
        Ok(())
    })
    .unwrap();
    let v = s.get_volume("old").unwrap().unwrap();
    assert_eq!(v.base_snapshot, None);
    assert!(s.volumes_based_on_snapshot("src", None).unwrap().is_empty());
}

#[test]
fn linked_clone_is_recorded_whole_and_only_on_an_existing_snapshot() {
    let (s, _) = store_with_snapshots();
    let dst = record("dst");
    let missing = volume("dst-disk0", Some(("src", "gone")));
    assert!(matches!(
        s.insert_vm_with_volumes(&dst, &[missing]),
        Err(StoreError::NotFound {
            kind: "snapshot",
            ..
        })
    ));
    // Nothing of it was recorded.
    assert!(s.get_vm("dst").unwrap().is_none());
    assert!(s.get_volume("dst-disk0").unwrap().is_none());

    let v = volume("dst-disk0", Some(("src", "s1")));
    s.insert_vm_with_volumes(&dst, std::slice::from_ref(&v))
        .unwrap();
    assert_eq!(s.get_volume("dst-disk0").unwrap(), Some(v.clone()));
    assert_eq!(
        s.volumes_based_on_snapshot("src", None).unwrap(),
        vec![v.clone()]
    );
    assert_eq!(
        s.volumes_based_on_snapshot("src", Some("s1")).unwrap(),
        vec![v]
    );
    assert!(s
        .volumes_based_on_snapshot("src", Some("s2"))
        .unwrap()
        .is_empty());
    assert!(matches!(
        s.insert_vm_with_volumes(&record("other"), &[volume("dst-disk0", None)]),
        Err(StoreError::AlreadyExists { kind: "volume", .. })
    ));
    assert!(s.get_vm("other").unwrap().is_none());
}

#[test]
fn snapshot_and_vm_a_clone_reads_through_cannot_go() {
    let (s, src) = store_with_snapshots();
    s.insert_vm_with_volumes(&record("dst"), &[volume("dst-disk0", Some(("src", "s1")))])
        .unwrap();
    // Dropping s1 from the tree is refused; dropping s2 is fine.
    let err = s
        .save_vm_and_snapshots(&src.spec, &tree(&["s2"]), &[])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::InUse { kind: "snapshot", name, by } if name == "s1" && by == "dst-disk0"),
        "{err:?}"
    );
    assert_eq!(s.snapshot_tree("src").unwrap().snapshots.len(), 2);
    s.save_vm_and_snapshots(&src.spec, &tree(&["s1"]), &[])
        .unwrap();
    assert!(matches!(
        s.delete_vm("src"),
        Err(StoreError::InUse { kind: "vm", .. })
    ));
    assert!(s.get_vm("src").unwrap().is_some());
    // Once the clone's volume is gone, both are allowed.
    s.delete_volume("dst-disk0").unwrap();
    s.save_vm_and_snapshots(&src.spec, &tree(&[]), &[]).unwrap();
    s.delete_vm("src").unwrap();
}

fn migration(vm: &str, role: crate::MigrationRole, phase: &str) -> crate::MigrationRecord {
    crate::MigrationRecord {
        id: Uuid::new_v4(),
        vm: vm.to_string(),
        role,
        phase: phase.to_string(),
        body: serde_json::json!({"peer": "https://h:8443"}),
        updated_ms: 7,
    }
}

#[test]
fn an_arriving_vm_is_recorded_whole_or_not_at_all() {
    use crate::{MigrationRole, MigrationStore};
    let (s, _) = store_with_snapshots();
    let mut vm = record("moving");
    vm.status.state = VmState::Running;
    let m = migration("moving", MigrationRole::Incoming, "receiving");
    let vol = volume("moving-disk0", None);
    s.insert_incoming_vm(&vm, std::slice::from_ref(&vol), &[], &tree(&["a"]), &m)
        .unwrap();
    assert_eq!(s.get_vm("moving").unwrap().unwrap().spec, vm.spec);
    assert!(s.get_volume("moving-disk0").unwrap().is_some());
    assert_eq!(s.snapshot_tree("moving").unwrap().snapshots.len(), 1);
    assert_eq!(s.get_migration(m.id).unwrap(), Some(m.clone()));

    // A second arrival whose volume name is taken records nothing at all.
    let other = record("other");
    let m2 = migration("other", MigrationRole::Incoming, "receiving");
    let err = s
        .insert_incoming_vm(&other, &[vol], &[], &tree(&[]), &m2)
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::AlreadyExists { kind: "volume", .. }
    ));
    assert!(s.get_vm("other").unwrap().is_none());
    assert!(s.get_migration(m2.id).unwrap().is_none());
}

#[test]
fn a_departed_vm_goes_with_its_volumes_in_the_phase_change() {
    use crate::{MigrationRole, MigrationStore};
    let (s, _) = store_with_snapshots();
    let vm = record("gone");
    s.insert_vm(&vm).unwrap();
    s.insert_volume(&volume("gone-disk0", None)).unwrap();
    s.append_event(Some("gone"), "state", "running", 1).unwrap();
    let mut m = migration("gone", MigrationRole::Outgoing, "switching");
    s.put_migration(&m).unwrap();
    m.phase = "cleanup".into();
    s.remove_migrated_vm("gone", &["gone-disk0".to_string()], &m)
        .unwrap();
    assert!(s.get_vm("gone").unwrap().is_none());
    assert!(s.get_volume("gone-disk0").unwrap().is_none());
    assert!(s.events(Some("gone"), 0, 10).unwrap().is_empty());
    assert_eq!(s.get_migration(m.id).unwrap().unwrap().phase, "cleanup");
    assert_eq!(s.list_migrations().unwrap().len(), 1);
    s.delete_migration(m.id).unwrap();
    assert!(s.list_migrations().unwrap().is_empty());
}
