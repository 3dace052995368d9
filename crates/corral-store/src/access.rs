//! Who may use the remote API: local users, API tokens, browser sessions, and the audit
//! log of what was done with them. Secrets are stored only as hashes, made by the daemon.

use corral_api::{ApiToken, AuditEntry, Role, User};

use crate::Result;

/// A browser session as stored: whose it is and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: User,
    pub expires_at_ms: u64,
}

/// The access half of the [`crate::Store`]. Every call is atomic.
pub trait AccessStore: Send + Sync {
    /// Adds a user; fails with `AlreadyExists` if the name is taken.
    fn insert_user(&self, user: &User, password_hash: &str) -> Result<()>;
    /// A user and their password hash, for a login.
    fn user_credentials(&self, username: &str) -> Result<Option<(User, String)>>;
    fn list_users(&self) -> Result<Vec<User>>;
    /// Changes a user's password hash and/or role. A new password ends every session the
    /// user has (in the same transaction).
    fn update_user(
        &self,
        username: &str,
        password_hash: Option<&str>,
        role: Option<Role>,
    ) -> Result<()>;
    /// Removes a user and their sessions.
    fn delete_user(&self, username: &str) -> Result<()>;

    /// Adds a token; `secret_hash` is the SHA-256 of its secret part.
    fn insert_token(&self, token: &ApiToken, secret_hash: &str) -> Result<()>;
    fn token_credentials(&self, id: &str) -> Result<Option<(ApiToken, String)>>;
    fn list_tokens(&self) -> Result<Vec<ApiToken>>;
    fn delete_token(&self, id: &str) -> Result<()>;
    /// Records a use of a token.
    fn touch_token(&self, id: &str, time_ms: u64) -> Result<()>;

    /// Adds a session, keyed by the SHA-256 of its cookie.
    fn insert_session(&self, key_hash: &str, username: &str, expires_at_ms: u64) -> Result<()>;
    /// A live session with its user's current role; none once expired or gone.
    fn session(&self, key_hash: &str, now_ms: u64) -> Result<Option<SessionRecord>>;
    fn delete_session(&self, key_hash: &str) -> Result<()>;
    /// Drops every expired session.
    fn purge_sessions(&self, now_ms: u64) -> Result<usize>;

    /// Appends an audit entry (its `id` is ignored) and returns its id. The log is
    /// bounded: the oldest entries past [`AUDIT_KEPT`] go.
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64>;
    /// The newest `limit` entries with an id below `before_id`, newest first.
    fn audit(&self, before_id: Option<u64>, limit: u32) -> Result<Vec<AuditEntry>>;
}

/// Audit entries kept.
pub const AUDIT_KEPT: i64 = 100_000;
