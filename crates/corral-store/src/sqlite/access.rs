//! [`AccessStore`] on SQLite: users, tokens, sessions and the audit log.

use corral_api::{ApiToken, AuditEntry, Role, User};
use rusqlite::{params, OptionalExtension, Row};

use super::{found, SqliteStore};
use crate::{AccessStore, Result, SessionRecord, StoreError, AUDIT_KEPT};

fn role_of(text: &str) -> rusqlite::Result<Role> {
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn user_of(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        username: r.get(0)?,
        role: role_of(&r.get::<_, String>(1)?)?,
        created_ms: r.get::<_, i64>(2)? as u64,
    })
}

impl AccessStore for SqliteStore {
    fn insert_user(&self, user: &User, password_hash: &str) -> Result<()> {
        self.insert_new(
            "INSERT INTO users (username, password_hash, role, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (username) DO NOTHING",
            params![
                user.username,
                password_hash,
                user.role.as_str(),
                user.created_ms as i64
            ],
            "user",
            &user.username,
        )
    }

    fn user_credentials(&self, username: &str) -> Result<Option<(User, String)>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT username, role, created_ms, password_hash FROM users WHERE username = ?1",
                [username],
                |r| Ok((user_of(r)?, r.get(3)?)),
            )
            .optional()?)
        })
    }

    fn list_users(&self) -> Result<Vec<User>> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT username, role, created_ms FROM users ORDER BY username")?;
            let users = stmt
                .query_map([], user_of)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(users)
        })
    }

    fn update_user(
        &self,
        username: &str,
        password_hash: Option<&str>,
        role: Option<Role>,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE users SET password_hash = COALESCE(?2, password_hash),
                                  role = COALESCE(?3, role)
                 WHERE username = ?1",
                params![username, password_hash, role.map(Role::as_str)],
            )?;
            found(n, "user", username)?;
            if password_hash.is_some() {
                tx.execute("DELETE FROM sessions WHERE username = ?1", [username])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn delete_user(&self, username: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM sessions WHERE username = ?1", [username])?;
            let n = tx.execute("DELETE FROM users WHERE username = ?1", [username])?;
            found(n, "user", username)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn insert_token(&self, token: &ApiToken, secret_hash: &str) -> Result<()> {
        let body = serde_json::to_string(token)?;
        self.insert_new(
            "INSERT INTO tokens (id, secret_hash, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
            params![token.id, secret_hash, body],
            "token",
            &token.id,
        )
    }

    fn token_credentials(&self, id: &str) -> Result<Option<(ApiToken, String)>> {
        let row: Option<(String, String)> = self.with(|c| {
            Ok(c.query_row(
                "SELECT body, secret_hash FROM tokens WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })?;
        row.map(|(body, hash)| Ok((serde_json::from_str(&body)?, hash)))
            .transpose()
    }

    fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let mut tokens: Vec<ApiToken> = self.bodies("SELECT body FROM tokens", [])?;
        tokens.sort_by_key(|t| t.created_ms);
        Ok(tokens)
    }

    fn delete_token(&self, id: &str) -> Result<()> {
        self.with(|c| {
            found(
                c.execute("DELETE FROM tokens WHERE id = ?1", [id])?,
                "token",
                id,
            )
        })
    }

    fn touch_token(&self, id: &str, time_ms: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE tokens SET body = json_set(body, '$.last_used_ms', ?2) WHERE id = ?1",
                params![id, time_ms as i64],
            )?;
            Ok(())
        })
    }

    fn insert_session(&self, key_hash: &str, username: &str, expires_at_ms: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (key_hash, username, expires_ms) VALUES (?1, ?2, ?3)",
                params![key_hash, username, expires_at_ms as i64],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::NotFound {
                        kind: "user",
                        name: username.to_string(),
                    }
                }
                e => e.into(),
            })?;
            Ok(())
        })
    }

    fn session(&self, key_hash: &str, now_ms: u64) -> Result<Option<SessionRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT u.username, u.role, u.created_ms, s.expires_ms
                 FROM sessions s JOIN users u ON u.username = s.username
                 WHERE s.key_hash = ?1 AND s.expires_ms > ?2",
                params![key_hash, now_ms as i64],
                |r| {
                    Ok(SessionRecord {
                        user: user_of(r)?,
                        expires_at_ms: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()?)
        })
    }

    fn delete_session(&self, key_hash: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE key_hash = ?1", [key_hash])?;
            Ok(())
        })
    }

    fn purge_sessions(&self, now_ms: u64) -> Result<usize> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM sessions WHERE expires_ms <= ?1",
                [now_ms as i64],
            )?)
        })
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO audit (body) VALUES (?1)",
                [serde_json::to_string(entry)?],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute("DELETE FROM audit WHERE id <= ?1", [id - AUDIT_KEPT])?;
            tx.commit()?;
            Ok(id as u64)
        })
    }

    fn audit(&self, before_id: Option<u64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows: Vec<(i64, String)> = self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, body FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(
                    params![before_id.map_or(i64::MAX, |b| b as i64), limit],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(id, body)| {
                let mut entry: AuditEntry = serde_json::from_str(&body)?;
                entry.id = id as u64;
                Ok(entry)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn alice() -> User {
        User {
            username: "alice".into(),
            role: Role::Operator,
            created_ms: 1,
        }
    }

    #[test]
    fn a_new_password_ends_the_users_sessions() {
        let s = SqliteStore::in_memory().unwrap();
        s.insert_user(&alice(), "h1").unwrap();
        assert!(matches!(
            s.insert_user(&alice(), "h2"),
            Err(StoreError::AlreadyExists { .. })
        ));
        s.insert_session("k", "alice", 100).unwrap();
        assert_eq!(
            s.session("k", 50).unwrap().unwrap().user.role,
            Role::Operator
        );
        assert!(s.session("k", 100).unwrap().is_none(), "expired at 100");
        s.update_user("alice", None, Some(Role::Admin)).unwrap();
        assert_eq!(s.session("k", 50).unwrap().unwrap().user.role, Role::Admin);
        s.update_user("alice", Some("h3"), None).unwrap();
        assert!(s.session("k", 50).unwrap().is_none());
        assert_eq!(s.user_credentials("alice").unwrap().unwrap().1, "h3");
        assert!(s.insert_session("k2", "bob", 100).is_err());
    }

    #[test]
    fn tokens_round_trip_and_record_use() {
        let s = SqliteStore::in_memory().unwrap();
        let t = ApiToken {
            id: "abc".into(),
            name: "ci".into(),
            role: Role::Viewer,
            created_ms: 5,
            expires_at_ms: None,
            last_used_ms: None,
        };
        s.insert_token(&t, "hash").unwrap();
        s.touch_token("abc", 9).unwrap();
        let (got, hash) = s.token_credentials("abc").unwrap().unwrap();
        assert_eq!((got.last_used_ms, hash.as_str()), (Some(9), "hash"));
        s.delete_token("abc").unwrap();
        assert!(s.list_tokens().unwrap().is_empty());
        assert!(matches!(
            s.delete_token("abc"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn audit_pages_newest_first() {
        let s = SqliteStore::in_memory().unwrap();
        for status in [200, 401, 403] {
            s.append_audit(&AuditEntry {
                id: 0,
                time_ms: 1,
                actor: "-".into(),
                actor_kind: "none".into(),
                role: None,
                source: "127.0.0.1".into(),
                method: "POST".into(),
                path: "/api/v1/vms/a/stop".into(),
                action: "/api/v1/vms/{name}/stop".into(),
                status,
                detail: None,
            })
            .unwrap();
        }
        let page = s.audit(None, 2).unwrap();
        assert_eq!(
            page.iter().map(|e| e.status).collect::<Vec<_>>(),
            [403, 401]
        );
        let rest = s.audit(Some(page[1].id), 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].status, 200);
    }
}
