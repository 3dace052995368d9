//! The embedded SQLite store. Records are JSON in typed columns' neighbours: the columns
//! we query on are real columns, the rest is the serde form of the wire type.

use std::path::Path;
use std::sync::Mutex;

use corral_api::{
    Event, Image, NetworkKind, NetworkSpec, Operation, PoolSpec, SnapshotTree, VmSpec, VmStatus,
    Volume,
};
use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{Result, Store, StoreError, VmRecord};

mod access;
mod migration;

/// Schema history. Append only: a released migration is never edited.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE vms (
             name TEXT PRIMARY KEY,
             spec TEXT NOT NULL,
             status TEXT NOT NULL,
             created_at INTEGER NOT NULL
         );
         CREATE TABLE events (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             time_ms INTEGER NOT NULL,
             vm TEXT,
             kind TEXT NOT NULL,
             message TEXT NOT NULL
         );
         CREATE INDEX events_by_vm ON events (vm, id);
         CREATE TABLE operations (
             id TEXT PRIMARY KEY,
             created_ms INTEGER NOT NULL,
             body TEXT NOT NULL
         );",
        ),
        M::up(
            "CREATE TABLE pools (
             name TEXT PRIMARY KEY,
             spec TEXT NOT NULL
         );
         CREATE TABLE volumes (
             name TEXT PRIMARY KEY,
             pool TEXT NOT NULL REFERENCES pools (name),
             body TEXT NOT NULL
         );
         CREATE INDEX volumes_by_pool ON volumes (pool);",
        ),
        M::up(
            "CREATE TABLE snapshot_trees (
                 vm TEXT PRIMARY KEY,
                 body TEXT NOT NULL
             );",
        ),
        M::up(
            "CREATE TABLE images (
                 name TEXT PRIMARY KEY,
                 pool TEXT NOT NULL REFERENCES pools (name),
                 body TEXT NOT NULL
             );",
        ),
        M::up(
            "CREATE TABLE networks (
                 name TEXT PRIMARY KEY,
                 spec TEXT NOT NULL
             );",
        ),
        M::up(
            "CREATE TABLE users (
                 username TEXT PRIMARY KEY,
                 password_hash TEXT NOT NULL,
                 role TEXT NOT NULL,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE tokens (
                 id TEXT PRIMARY KEY,
                 secret_hash TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE TABLE sessions (
                 key_hash TEXT PRIMARY KEY,
                 username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
                 expires_ms INTEGER NOT NULL
             );
             CREATE TABLE audit (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 body TEXT NOT NULL
             );",
        ),
        M::up(
            "CREATE TABLE vm_migrations (
                 id TEXT PRIMARY KEY,
                 vm TEXT NOT NULL,
                 role TEXT NOT NULL,
                 phase TEXT NOT NULL,
                 body TEXT NOT NULL,
                 updated_ms INTEGER NOT NULL
             );",
        ),
    ])
}

/// Events kept per VM (and for the host), newest first.
pub const EVENTS_KEPT: i64 = 1000;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::setup(conn)
    }

    /// A private in-memory store, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        // WAL: readers never block the writer; NORMAL sync is durable across crashes of
        // the daemon (only an OS crash can lose the last commits).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations().to_latest(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// One stored JSON body by key, decoded.
    fn body<T: DeserializeOwned>(&self, sql: &str, key: &str) -> Result<Option<T>> {
        let body: Option<String> =
            self.with(|c| Ok(c.query_row(sql, [key], |r| r.get(0)).optional()?))?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    /// Every stored JSON body a query returns, decoded.
    fn bodies<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<T>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt
                .query_map(params, |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(StoreError::from))
            .collect()
    }

    /// Runs an `INSERT … ON CONFLICT DO NOTHING`; no row inserted means the name is taken.
    fn insert_new(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        kind: &'static str,
        name: &str,
    ) -> Result<()> {
        self.with(|c| match c.execute(sql, params)? {
            0 => Err(StoreError::AlreadyExists {
                kind,
                name: name.to_string(),
            }),
            _ => Ok(()),
        })
    }

    /// Deletes `name` (`delete_sql` takes it as `?1`) in one transaction with the check
    /// `users`, which names what still uses it: then nothing is deleted (`InUse`).
    fn delete_unused(
        &self,
        kind: &'static str,
        name: &str,
        delete_sql: &str,
        users: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<Option<String>>,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            if let Some(by) = users(&tx)? {
                return Err(StoreError::InUse {
                    kind,
                    name: name.to_string(),
                    by,
                });
            }
            let n = tx.execute(delete_sql, [name])?;
            tx.commit()?;
            found(n, kind, name)
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        // A poisoned lock only means another thread panicked mid-call; SQLite rolled its
        // transaction back, so the connection is still consistent.
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// Adds a VM's row in a transaction; `AlreadyExists` when the name is taken.
fn insert_vm_row(tx: &rusqlite::Transaction<'_>, record: &VmRecord) -> Result<()> {
    let spec = serde_json::to_string(&record.spec)?;
    let status = serde_json::to_string(&record.status)?;
    let inserted = tx.execute(
        "INSERT INTO vms (name, spec, status, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO NOTHING",
        params![record.spec.name, spec, status, record.created_at as i64],
    )?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists {
            kind: "vm",
            name: record.spec.name.clone(),
        });
    }
    Ok(())
}

fn vms_on_network(c: &Connection, name: &str) -> Result<Vec<String>> {
    let mut stmt = c.prepare(
        "SELECT DISTINCT vms.name FROM vms, json_each(vms.spec, '$.nics') AS nic
         WHERE nic.value ->> 'kind' = 'network' AND nic.value ->> 'source' = ?1
         ORDER BY vms.name",
    )?;
    let names = stmt
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

/// A VM may only be recorded with NICs on networks that exist, checked in the insert's
/// transaction so a network deleted meanwhile cannot end up with a user.
fn check_networks_exist(tx: &rusqlite::Transaction<'_>, spec: &VmSpec) -> Result<()> {
    for nic in &spec.nics {
        let (NetworkKind::Network, Some(net)) = (nic.kind, &nic.source) else {
            continue;
        };
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM networks WHERE name = ?1)",
            [net],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(StoreError::NotFound {
                kind: "network",
                name: net.clone(),
            });
        }
    }
    Ok(())
}

fn decode_vm(spec: String, status: String, created_at: i64) -> Result<VmRecord> {
    Ok(VmRecord {
        spec: serde_json::from_str(&spec)?,
        status: serde_json::from_str(&status)?,
        created_at: created_at as u64,
    })
}

impl Store for SqliteStore {
    fn insert_vm(&self, record: &VmRecord) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            check_networks_exist(&tx, &record.spec)?;
            insert_vm_row(&tx, record)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn get_vm(&self, name: &str) -> Result<Option<VmRecord>> {
        let row = self.with(|c| {
            Ok(c.query_row(
                "SELECT spec, status, created_at FROM vms WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
        })?;
        row.map(|(s, st, t)| decode_vm(s, st, t)).transpose()
    }

    fn list_vms(&self) -> Result<Vec<VmRecord>> {
        let rows: Vec<(String, String, i64)> = self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT spec, status, created_at FROM vms ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(s, st, t)| decode_vm(s, st, t))
            .collect()
    }

    fn update_vm_spec(&self, spec: &VmSpec) -> Result<()> {
        let body = serde_json::to_string(spec)?;
        self.with(|c| {
            let n = c.execute(
                "UPDATE vms SET spec = ?2 WHERE name = ?1",
                params![spec.name, body],
            )?;
            found(n, "vm", &spec.name)
        })
    }

    fn update_vm_status(&self, name: &str, status: &VmStatus) -> Result<()> {
        let body = serde_json::to_string(status)?;
        self.with(|c| {
            let n = c.execute(
                "UPDATE vms SET status = ?2 WHERE name = ?1",
                params![name, body],
            )?;
            found(n, "vm", name)
        })
    }

    fn mac_in_use(&self, mac: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM vms, json_each(vms.spec, '$.nics') AS nic
                                WHERE nic.value ->> 'mac' = ?1)",
                [mac],
                |r| r.get(0),
            )?)
        })
    }

    fn insert_vm_with_volumes(&self, record: &VmRecord, volumes: &[Volume]) -> Result<()> {
        let bodies: Vec<String> = volumes
            .iter()
            .map(serde_json::to_string)
            .collect::<std::result::Result<_, _>>()?;
        self.with(|c| {
            let tx = c.transaction()?;
            check_networks_exist(&tx, &record.spec)?;
            insert_vm_row(&tx, record)?;
            for (v, body) in volumes.iter().zip(&bodies) {
                if let Some(base) = &v.base_snapshot {
                    if !tree_of(&tx, &base.vm)?
                        .is_some_and(|t| t.snapshots.iter().any(|s| s.name == base.snapshot))
                    {
                        return Err(StoreError::NotFound {
                            kind: "snapshot",
                            name: format!("{}@{}", base.vm, base.snapshot),
                        });
                    }
                }
                let n = tx.execute(
                    "INSERT INTO volumes (name, pool, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO NOTHING",
                    params![v.name, v.pool, body],
                )?;
                if n == 0 {
                    return Err(StoreError::AlreadyExists {
                        kind: "volume",
                        name: v.name.clone(),
                    });
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn delete_vm(&self, name: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let clones = based_on_snapshots(&tx, name)?;
            if !clones.is_empty() {
                return Err(StoreError::InUse {
                    kind: "vm",
                    name: name.to_string(),
                    by: clones
                        .iter()
                        .map(|(v, _)| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let n = tx.execute("DELETE FROM vms WHERE name = ?1", [name])?;
            tx.execute("DELETE FROM events WHERE vm = ?1", [name])?;
            tx.execute("DELETE FROM snapshot_trees WHERE vm = ?1", [name])?;
            tx.commit()?;
            found(n, "vm", name)
        })
    }

    fn append_event(
        &self,
        vm: Option<&str>,
        kind: &str,
        message: &str,
        time_ms: u64,
    ) -> Result<Event> {
        self.with(|c| {
            c.execute(
                "INSERT INTO events (time_ms, vm, kind, message) VALUES (?1, ?2, ?3, ?4)",
                params![time_ms as i64, vm, kind, message],
            )?;
            let id = c.last_insert_rowid();
            // History is bounded per VM (and for host events): drop what falls out.
            c.execute(
                "DELETE FROM events WHERE vm IS ?1 AND id <= (
                     SELECT id FROM events WHERE vm IS ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![vm, EVENTS_KEPT],
            )?;
            Ok(Event {
                id: id as u64,
                time_ms,
                vm: vm.map(str::to_string),
                kind: kind.to_string(),
                message: message.to_string(),
            })
        })
    }

    fn events(&self, vm: Option<&str>, since: u64, limit: u32) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, time_ms, vm, kind, message FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR vm = ?2) ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![since as i64, vm, limit], event_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    fn recent_events(&self, vm: &str, limit: u32) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, time_ms, vm, kind, message FROM events
                 WHERE vm = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![vm, limit], event_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })?;
        events.reverse();
        Ok(events)
    }

    fn put_operation(&self, op: &Operation) -> Result<()> {
        let body = serde_json::to_string(op)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO operations (id, created_ms, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                params![op.id.to_string(), op.created_ms as i64, body],
            )?;
            Ok(())
        })
    }

    fn get_operation(&self, id: Uuid) -> Result<Option<Operation>> {
        self.body("SELECT body FROM operations WHERE id = ?1", &id.to_string())
    }

    fn list_operations(&self) -> Result<Vec<Operation>> {
        self.bodies("SELECT body FROM operations ORDER BY created_ms", [])
    }

    fn insert_network(&self, spec: &NetworkSpec) -> Result<()> {
        let body = serde_json::to_string(spec)?;
        self.insert_new(
            "INSERT INTO networks (name, spec) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![spec.name, body],
            "network",
            &spec.name,
        )
    }

    fn update_network(&self, spec: &NetworkSpec) -> Result<()> {
        let body = serde_json::to_string(spec)?;
        self.with(|c| {
            let n = c.execute(
                "UPDATE networks SET spec = ?2 WHERE name = ?1",
                params![spec.name, body],
            )?;
            found(n, "network", &spec.name)
        })
    }

    fn get_network(&self, name: &str) -> Result<Option<NetworkSpec>> {
        self.body("SELECT spec FROM networks WHERE name = ?1", name)
    }

    fn list_networks(&self) -> Result<Vec<NetworkSpec>> {
        self.bodies("SELECT spec FROM networks ORDER BY name", [])
    }

    fn delete_network(&self, name: &str) -> Result<()> {
        self.delete_unused(
            "network",
            name,
            "DELETE FROM networks WHERE name = ?1",
            |tx| {
                let users = vms_on_network(tx, name)?;
                Ok((!users.is_empty()).then(|| format!("VM(s) {}", users.join(", "))))
            },
        )
    }

    fn vms_on_network(&self, name: &str) -> Result<Vec<String>> {
        self.with(|c| vms_on_network(c, name))
    }

    fn insert_pool(&self, spec: &PoolSpec) -> Result<()> {
        let body = serde_json::to_string(spec)?;
        self.insert_new(
            "INSERT INTO pools (name, spec) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![spec.name, body],
            "pool",
            &spec.name,
        )
    }

    fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>> {
        self.body("SELECT spec FROM pools WHERE name = ?1", name)
    }

    fn list_pools(&self) -> Result<Vec<PoolSpec>> {
        self.bodies("SELECT spec FROM pools ORDER BY name", [])
    }

    fn delete_pool(&self, name: &str) -> Result<()> {
        self.delete_unused("pool", name, "DELETE FROM pools WHERE name = ?1", |tx| {
            let volumes: i64 = tx.query_row(
                "SELECT COUNT(*) FROM volumes WHERE pool = ?1",
                [name],
                |r| r.get(0),
            )?;
            Ok((volumes > 0).then(|| format!("{volumes} volume(s)")))
        })
    }

    fn insert_volume(&self, volume: &Volume) -> Result<()> {
        let body = serde_json::to_string(volume)?;
        self.insert_new(
            "INSERT INTO volumes (name, pool, body) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![volume.name, volume.pool, body],
            "volume",
            &volume.name,
        )
    }

    fn update_volume(&self, volume: &Volume) -> Result<()> {
        let body = serde_json::to_string(volume)?;
        self.with(|c| {
            let n = c.execute(
                "UPDATE volumes SET body = ?2 WHERE name = ?1",
                params![volume.name, body],
            )?;
            found(n, "volume", &volume.name)
        })
    }

    fn get_volume(&self, name: &str) -> Result<Option<Volume>> {
        self.body("SELECT body FROM volumes WHERE name = ?1", name)
    }

    fn list_volumes(&self, pool: Option<&str>) -> Result<Vec<Volume>> {
        self.bodies(
            "SELECT body FROM volumes WHERE (?1 IS NULL OR pool = ?1) ORDER BY name",
            [pool],
        )
    }

    fn delete_volume(&self, name: &str) -> Result<()> {
        self.with(|c| {
            let n = c.execute("DELETE FROM volumes WHERE name = ?1", [name])?;
            found(n, "volume", name)
        })
    }

    fn insert_image(&self, image: &Image) -> Result<()> {
        let body = serde_json::to_string(image)?;
        self.insert_new(
            "INSERT INTO images (name, pool, body) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![image.name, image.pool, body],
            "image",
            &image.name,
        )
    }

    fn get_image(&self, name: &str) -> Result<Option<Image>> {
        self.body("SELECT body FROM images WHERE name = ?1", name)
    }

    fn list_images(&self) -> Result<Vec<Image>> {
        self.bodies("SELECT body FROM images ORDER BY name", [])
    }

    fn delete_image(&self, name: &str) -> Result<()> {
        self.delete_unused("image", name, "DELETE FROM images WHERE name = ?1", |tx| {
            let users = column(tx, VOLUMES_BASED_ON, name)?;
            Ok((!users.is_empty()).then(|| users.join(", ")))
        })
    }

    fn volumes_based_on(&self, image: &str) -> Result<Vec<String>> {
        self.with(|c| column(c, VOLUMES_BASED_ON, image))
    }

    fn snapshot_tree(&self, vm: &str) -> Result<SnapshotTree> {
        Ok(self.with(|c| tree_of(c, vm))?.unwrap_or(SnapshotTree {
            snapshots: vec![],
            current: None,
        }))
    }

    fn save_vm_and_snapshots(
        &self,
        spec: &VmSpec,
        tree: &SnapshotTree,
        volumes: &[Volume],
    ) -> Result<()> {
        let spec_body = serde_json::to_string(spec)?;
        let tree_body = serde_json::to_string(tree)?;
        let volume_bodies: Vec<(String, String)> = volumes
            .iter()
            .map(|v| Ok((v.name.clone(), serde_json::to_string(v)?)))
            .collect::<Result<_>>()?;
        self.with(|c| {
            let tx = c.transaction()?;
            if tx.execute(
                "UPDATE vms SET spec = ?2 WHERE name = ?1",
                params![spec.name, spec_body],
            )? == 0
            {
                return Err(StoreError::NotFound {
                    kind: "vm",
                    name: spec.name.clone(),
                });
            }
            // A snapshot a linked clone reads through must stay in the tree.
            for (volume, snapshot) in based_on_snapshots(&tx, &spec.name)? {
                if !tree.snapshots.iter().any(|s| s.name == snapshot) {
                    return Err(StoreError::InUse {
                        kind: "snapshot",
                        name: snapshot,
                        by: volume,
                    });
                }
            }
            tx.execute(
                "INSERT INTO snapshot_trees (vm, body) VALUES (?1, ?2)
                 ON CONFLICT (vm) DO UPDATE SET body = excluded.body",
                params![spec.name, tree_body],
            )?;
            for (name, body) in &volume_bodies {
                tx.execute(
                    "UPDATE volumes SET body = ?2 WHERE name = ?1",
                    params![name, body],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn volumes_based_on_snapshot(&self, vm: &str, snapshot: Option<&str>) -> Result<Vec<Volume>> {
        self.bodies(
            "SELECT body FROM volumes WHERE body ->> '$.base_snapshot.vm' = ?1
             AND (?2 IS NULL OR body ->> '$.base_snapshot.snapshot' = ?2) ORDER BY name",
            params![vm, snapshot],
        )
    }

    fn vms_using_volume(&self, name: &str) -> Result<Vec<String>> {
        self.with(|c| {
            column(
                c,
                "SELECT DISTINCT vms.name FROM vms, json_each(vms.spec, '$.disks') AS d
                 WHERE d.value ->> 'volume' = ?1 ORDER BY vms.name",
                name,
            )
        })
    }
}

const VOLUMES_BASED_ON: &str =
    "SELECT name FROM volumes WHERE body ->> 'base_image' = ?1 ORDER BY name";

/// (volume, snapshot) for every volume that is a linked clone of one of `vm`'s snapshots.
fn based_on_snapshots(c: &Connection, vm: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, body ->> '$.base_snapshot.snapshot' FROM volumes
         WHERE body ->> '$.base_snapshot.vm' = ?1 ORDER BY name",
    )?;
    let rows = stmt
        .query_map([vm], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// A VM's stored snapshot tree, if it has one.
fn tree_of(c: &Connection, vm: &str) -> Result<Option<SnapshotTree>> {
    let body: Option<String> = c
        .query_row("SELECT body FROM snapshot_trees WHERE vm = ?1", [vm], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
}

/// A statement that must have touched one row: none means the object is not there.
fn found(changed: usize, kind: &'static str, name: &str) -> Result<()> {
    match changed {
        0 => Err(StoreError::NotFound {
            kind,
            name: name.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The first column of every row, as strings.
fn column(c: &Connection, sql: &str, key: &str) -> Result<Vec<String>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt
        .query_map([key], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get::<_, i64>(0)? as u64,
        time_ms: r.get::<_, i64>(1)? as u64,
        vm: r.get(2)?,
        kind: r.get(3)?,
        message: r.get(4)?,
    })
}

#[cfg(test)]
mod tests;
