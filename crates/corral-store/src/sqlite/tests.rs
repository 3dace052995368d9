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
        mac: "52:54:00:aa:bb:cc".into(),
    });
    s.insert_vm(&r).unwrap();
    assert!(s.mac_in_use("52:54:00:aa:bb:cc").unwrap());
    assert!(!s.mac_in_use("52:54:00:aa:bb:cd").unwrap());
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
