//! [`MigrationStore`] on SQLite.

use corral_api::{Image, SnapshotTree, Volume};
use rusqlite::{params, OptionalExtension, Row, Transaction};
use uuid::Uuid;

use super::SqliteStore;
use crate::{MigrationRecord, MigrationRole, MigrationStore, Result, StoreError, VmRecord};

fn record_of(r: &Row<'_>) -> rusqlite::Result<(String, String, String, String, String, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn decode(row: (String, String, String, String, String, i64)) -> Result<MigrationRecord> {
    let (id, vm, role, phase, body, updated) = row;
    let bad = |what: &str| {
        StoreError::Decode(serde_json::Error::io(std::io::Error::other(format!(
            "migration {id}: {what}"
        ))))
    };
    let role = match role.as_str() {
        "outgoing" => MigrationRole::Outgoing,
        "incoming" => MigrationRole::Incoming,
        _ => return Err(bad("unknown role")),
    };
    Ok(MigrationRecord {
        id: Uuid::parse_str(&id).map_err(|_| bad("bad id"))?,
        vm,
        role,
        phase,
        body: serde_json::from_str(&body)?,
        updated_ms: updated as u64,
    })
}

fn put(tx: &Transaction<'_>, m: &MigrationRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO vm_migrations (id, vm, role, phase, body, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET vm = excluded.vm, role = excluded.role,
             phase = excluded.phase, body = excluded.body, updated_ms = excluded.updated_ms",
        params![
            m.id.to_string(),
            m.vm,
            m.role.as_str(),
            m.phase,
            serde_json::to_string(&m.body)?,
            m.updated_ms as i64
        ],
    )?;
    Ok(())
}

const SELECT: &str = "SELECT id, vm, role, phase, body, updated_ms FROM vm_migrations";

impl MigrationStore for SqliteStore {
    fn put_migration(&self, m: &MigrationRecord) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            put(&tx, m)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn get_migration(&self, id: Uuid) -> Result<Option<MigrationRecord>> {
        let row = self.with(|c| {
            Ok(c.query_row(
                &format!("{SELECT} WHERE id = ?1"),
                [id.to_string()],
                record_of,
            )
            .optional()?)
        })?;
        row.map(decode).transpose()
    }

    fn list_migrations(&self) -> Result<Vec<MigrationRecord>> {
        let rows = self.with(|c| {
            let mut stmt = c.prepare_cached(&format!("{SELECT} ORDER BY updated_ms"))?;
            let rows = stmt
                .query_map([], record_of)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        rows.into_iter().map(decode).collect()
    }

    fn delete_migration(&self, id: Uuid) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM vm_migrations WHERE id = ?1", [id.to_string()])?;
            Ok(())
        })
    }

    fn insert_incoming_vm(
        &self,
        record: &VmRecord,
        volumes: &[Volume],
        images: &[Image],
        tree: &SnapshotTree,
        migration: &MigrationRecord,
    ) -> Result<()> {
        let tree_body = serde_json::to_string(tree)?;
        self.with(|c| {
            let tx = c.transaction()?;
            super::insert_vm_row(&tx, record)?;
            for image in images {
                tx.execute(
                    "INSERT INTO images (name, pool, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO NOTHING",
                    params![image.name, image.pool, serde_json::to_string(image)?],
                )?;
            }
            if !tree.snapshots.is_empty() {
                tx.execute(
                    "INSERT INTO snapshot_trees (vm, body) VALUES (?1, ?2)
                     ON CONFLICT (vm) DO UPDATE SET body = excluded.body",
                    params![record.spec.name, tree_body],
                )?;
            }
            for v in volumes {
                let n = tx.execute(
                    "INSERT INTO volumes (name, pool, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO NOTHING",
                    params![v.name, v.pool, serde_json::to_string(v)?],
                )?;
                if n == 0 {
                    return Err(StoreError::AlreadyExists {
                        kind: "volume",
                        name: v.name.clone(),
                    });
                }
            }
            put(&tx, migration)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn remove_migrated_vm(
        &self,
        vm: &str,
        volumes: &[String],
        migration: &MigrationRecord,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM vms WHERE name = ?1", [vm])?;
            tx.execute("DELETE FROM events WHERE vm = ?1", [vm])?;
            tx.execute("DELETE FROM snapshot_trees WHERE vm = ?1", [vm])?;
            for v in volumes {
                tx.execute("DELETE FROM volumes WHERE name = ?1", [v])?;
            }
            put(&tx, migration)?;
            tx.commit()?;
            Ok(())
        })
    }
}
