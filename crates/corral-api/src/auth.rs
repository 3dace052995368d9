//! Who may do what over the remote API: roles, local users (browser logins), API tokens
//! (scripts and the CLI), sessions, and the audit log of what they did.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ValidationError;
use crate::vm::validate_name;

/// What a caller may do. Ordered: each role can do everything the ones before it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but users, tokens and the audit log.
    Viewer,
    /// A viewer who also runs VMs: power actions, consoles, snapshots, cancelling work.
    Operator,
    /// Everything: defines and deletes VMs, storage, networks, users and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}' (use viewer, operator or admin)"))
    }
}

/// `POST /api/v1/auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// The reply to a login; the session itself travels in the `corral_session` cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub username: String,
    pub role: Role,
    /// Unix milliseconds when the session ends.
    pub expires_at_ms: u64,
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// A browser session (cookie) of a local user.
    Session,
    /// An API token (`Authorization: Bearer`).
    Token,
    /// The local Unix socket (root or the `corral` group).
    Unix,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Session => "session",
            CredentialKind::Token => "token",
            CredentialKind::Unix => "unix",
        }
    }
}

/// `GET /api/v1/auth/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The user, the token's name, or `uid:N` on the Unix socket.
    pub name: String,
    pub kind: CredentialKind,
    pub role: Role,
    /// When the session or token ends; none for the socket and tokens without expiry.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// A local user, who logs in to the web console. The password hash never leaves the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub created_ms: u64,
}

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_LEN: usize = 8;

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: String,
    pub role: Role,
}

impl CreateUserRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("username", &self.username)?;
        validate_password("password", &self.password)
    }
}

/// `PATCH /api/v1/users/{username}`: a new password, a new role, or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
}

impl UpdateUserRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.password.is_none() && self.role.is_none() {
            return Err(ValidationError::new("password", "nothing to change")
                .hint("give a new password, a new role, or both"));
        }
        match &self.password {
            Some(p) => validate_password("password", p),
            None => Ok(()),
        }
    }
}

pub fn validate_password(field: &str, password: &str) -> Result<(), ValidationError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ValidationError::new(
            field,
            format!("the password is shorter than {MIN_PASSWORD_LEN} characters"),
        )
        .hint("choose a longer password; a passphrase of a few words is easy to type"));
    }
    if password.len() > 1024 {
        return Err(ValidationError::new(
            field,
            "the password is longer than 1024 bytes",
        ));
    }
    Ok(())
}

/// An API token as listed: never the secret, which is shown once at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    /// Public id, the first part of the token (`corral_<id>_<secret>`).
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// When it was last used, if ever.
    #[serde(default)]
    pub last_used_ms: Option<u64>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token is for (`ci`, `prometheus`, …).
    pub name: String,
    pub role: Role,
    /// Seconds until it stops working; none for a token that lasts until revoked.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

impl CreateTokenRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if self.expires_in_secs == Some(0) {
            return Err(ValidationError::new(
                "expires_in_secs",
                "a token that expires at once is useless",
            )
            .hint("leave it out for a token that lasts until revoked"));
        }
        Ok(())
    }
}

/// The reply to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: ApiToken,
    /// The bearer token. Store it now: it cannot be shown again.
    pub token: String,
}

/// One audited request: every mutating request, every console session, every refused one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: u64,
    pub time_ms: u64,
    /// Who: a user, a token's name (`token:<name>`), `uid:N` on the socket, or `-` when
    /// no credentials were given.
    pub actor: String,
    /// `session`, `token`, `unix` or `none`.
    pub actor_kind: String,
    /// The caller's role, when known.
    #[serde(default)]
    pub role: Option<Role>,
    /// Where from: the client's address, or `unix`.
    pub source: String,
    pub method: String,
    pub path: String,
    /// The route (`/api/v1/vms/{name}/stop`) or `console`/`vnc` for console sessions.
    pub action: String,
    /// The HTTP status the request got (101 for an opened console).
    pub status: u16,
    /// Why it was refused, when it was.
    #[serde(default)]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert!("root".parse::<Role>().unwrap_err().contains("viewer"));
    }

    #[test]
    fn short_passwords_name_the_field() {
        let req = CreateUserRequest {
            username: "alice".into(),
            password: "short".into(),
            role: Role::Viewer,
        };
        assert_eq!(req.validate().unwrap_err().field, "password");
    }

    #[test]
    fn created_token_flattens_its_info() {
        let t = CreatedToken {
            info: ApiToken {
                id: "abc".into(),
                name: "ci".into(),
                role: Role::Viewer,
                created_ms: 1,
                expires_at_ms: None,
                last_used_ms: None,
            },
            token: "corral_abc_x".into(),
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["token"], "corral_abc_x");
        assert_eq!(v["role"], "viewer");
    }
}
