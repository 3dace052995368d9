//! Provisioning with cloud-init (NoCloud): what a user may ask for, and the checks that
//! need nothing but the request. The daemon renders it into a `cidata` seed CD.

use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ValidationError;

/// Largest `user_data` accepted (cloud-init has no limit of its own; a seed is not the
/// place for payloads, which belong in images or on the network).
pub const MAX_USER_DATA: usize = 256 << 10;
/// Largest `network_config` accepted.
pub const MAX_NETWORK_CONFIG: usize = 64 << 10;
/// Most SSH keys one VM's config may carry.
pub const MAX_SSH_KEYS: usize = 100;
/// Longest SSH public key line accepted (a 16384-bit RSA key is about 2.8 KiB).
const MAX_SSH_KEY_LEN: usize = 16 << 10;

/// Guest provisioning through cloud-init's NoCloud data source, like
/// `virt-install --cloud-init` or Incus's `cloud-init.*` keys. The daemon writes it to a
/// read-only CD labelled `cidata` that the guest's cloud-init reads at boot; a change
/// gives the guest a new instance id, so cloud-init applies it again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// OpenSSH public keys (`TYPE BASE64 [COMMENT]`, one per entry). Installed for
    /// `user` when given, otherwise for the image's default user (`debian` on Debian).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// A login to create, with passwordless sudo and the keys above; its password is
    /// locked. Without it the keys go to the image's default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The guest's host name (an RFC 1123 name, e.g. `web` or `web.example.com`);
    /// defaults to the VM's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The user's own user-data: a `#cloud-config` YAML document, a script (`#!`), or a
    /// MIME multipart message (`Content-Type: …`). Merged with what Corral generates;
    /// where both set the same key, this wins, and lists (keys, users) are joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// A cloud-init network configuration (version 1 or 2, YAML). Without it the image's
    /// default applies (DHCP on the first NIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

impl CloudInit {
    /// Checks every field; errors name it under `prefix` (`cloud_init.hostname`, …).
    pub fn validate(&self, prefix: &str) -> Result<(), ValidationError> {
        if self.ssh_authorized_keys.len() > MAX_SSH_KEYS {
            return Err(ValidationError::new(
                format!("{prefix}.ssh_authorized_keys"),
                format!(
                    "{} keys is more than the {MAX_SSH_KEYS} allowed",
                    self.ssh_authorized_keys.len()
                ),
            ));
        }
        for (i, key) in self.ssh_authorized_keys.iter().enumerate() {
            let field = format!("{prefix}.ssh_authorized_keys[{i}]");
            SshPublicKey::parse(key).map_err(|e| e.into_validation(field))?;
        }
        if let Some(user) = &self.user {
            validate_user(&format!("{prefix}.user"), user)?;
        }
        if let Some(hostname) = &self.hostname {
            validate_hostname(&format!("{prefix}.hostname"), hostname)?;
        }
        if let Some(data) = &self.user_data {
            validate_user_data(&format!("{prefix}.user_data"), data)?;
        }
        if let Some(config) = &self.network_config {
            validate_network_config(&format!("{prefix}.network_config"), config)?;
        }
        Ok(())
    }
}

/// An OpenSSH public key line, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    /// `ssh-ed25519`, `ssh-rsa`, …
    pub kind: String,
    /// The decoded key blob.
    pub blob: Vec<u8>,
    /// What follows the key, often `user@host`.
    pub comment: Option<String>,
}

/// Why a line is not an OpenSSH public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub message: String,
    pub hint: &'static str,
}

impl KeyError {
    fn new(message: impl Into<String>, hint: &'static str) -> Self {
        KeyError {
            message: message.into(),
            hint,
        }
    }

    fn into_validation(self, field: String) -> ValidationError {
        ValidationError::new(field, self.message).hint(self.hint)
    }
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.hint)
    }
}

/// Key types OpenSSH puts in `.pub` files; each may also come as a certificate
/// (`<type>-cert-v01@openssh.com`).
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

const PUB_HINT: &str =
    "give an OpenSSH public key as in a .pub file: TYPE BASE64 [COMMENT], e.g. ssh-ed25519 AAAA… me@host";

impl SshPublicKey {
    /// Parses `TYPE BASE64 [COMMENT]`, checking that the blob decodes and names the
    /// same type (so a truncated or mangled key is caught here, not at first login).
    pub fn parse(line: &str) -> Result<SshPublicKey, KeyError> {
        let text = line.trim();
        if text.contains("PRIVATE KEY") || text.starts_with("PuTTY-User-Key-File") {
            return Err(KeyError::new(
                "this is a private key",
                "give the public key (the .pub file next to it); never hand out the private one",
            ));
        }
        if text.starts_with("---- BEGIN SSH2 PUBLIC KEY") {
            return Err(KeyError::new(
                "this is an RFC 4716 (SSH2) public key, not OpenSSH's format",
                "convert it with: ssh-keygen -i -f KEY.pub",
            ));
        }
        if text.is_empty() {
            return Err(KeyError::new("the key is empty", PUB_HINT));
        }
        if text.len() > MAX_SSH_KEY_LEN {
            return Err(KeyError::new(
                format!("the key is {} bytes long, too long for one", text.len()),
                PUB_HINT,
            ));
        }
        if text.contains(['\n', '\r']) {
            return Err(KeyError::new(
                "a key must be one line",
                "give each key as its own entry",
            ));
        }
        let mut parts = text.splitn(3, [' ', '\t']);
        let kind = parts.next().unwrap_or_default();
        let data = parts.next().unwrap_or_default().trim();
        let comment = parts
            .next()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if !known_key_type(kind) {
            let shown: String = kind.chars().take(40).collect();
            return Err(KeyError::new(
                format!("'{shown}' is not an SSH public key type"),
                PUB_HINT,
            ));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| KeyError::new("the key's base64 data is damaged", PUB_HINT))?;
        if blob_type(&blob) != Some(kind.as_bytes()) || !complete(kind, &blob) {
            return Err(KeyError::new(
                format!("the key's data is not a {kind} key (truncated or mangled?)"),
                PUB_HINT,
            ));
        }
        Ok(SshPublicKey {
            kind: kind.to_string(),
            blob,
            comment,
        })
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&self.blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }
}

fn known_key_type(kind: &str) -> bool {
    let cert_of = kind.strip_suffix("-cert-v01@openssh.com");
    KEY_TYPES
        .iter()
        .any(|t| kind == *t || cert_of == Some(t.trim_end_matches("@openssh.com")))
}

/// The type string every key blob starts with (a u32 length, then the name).
fn blob_type(blob: &[u8]) -> Option<&[u8]> {
    strings(blob).first().copied()
}

/// A plain key's blob is its type and then exactly as many length-prefixed strings as
/// its type has parts (RFC 4253 §6.6, RFC 5656, RFC 8709, PROTOCOL.u2f), with nothing
/// after them; a cut-off key fails this. Certificates have other fields, unchecked.
fn complete(kind: &str, blob: &[u8]) -> bool {
    let parts = match kind {
        "ssh-ed25519" => 1,
        "ssh-rsa" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => 2,
        "sk-ssh-ed25519@openssh.com" => 2,
        "sk-ecdsa-sha2-nistp256@openssh.com" => 3,
        "ssh-dss" => 4,
        _ => return true,
    };
    let mut consumed = 0;
    let fields = strings(blob);
    for f in &fields {
        consumed += 4 + f.len();
    }
    let ed25519_ok = kind != "ssh-ed25519" || fields.get(1).is_some_and(|k| k.len() == 32);
    fields.len() == 1 + parts && consumed == blob.len() && ed25519_ok
}

/// The blob's leading length-prefixed strings, as far as they are whole.
fn strings(blob: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = blob;
    while let Some(len) = rest.get(..4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(field) = rest.get(4..4 + len) else {
            break;
        };
        out.push(field);
        rest = &rest[4 + len..];
    }
    out
}

/// A POSIX login name as `useradd` takes it: `[a-z_][a-z0-9_-]*`, at most 32 characters.
fn validate_user(field: &str, user: &str) -> Result<(), ValidationError> {
    let hint = "use 1-32 lowercase letters, digits, '_' and '-', starting with a letter or '_'";
    let b = user.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || *c == b'_');
    let rest_ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
    if b.is_empty() || b.len() > 32 || !first_ok || !rest_ok {
        return Err(
            ValidationError::new(field, format!("'{user}' is not a valid login name")).hint(hint),
        );
    }
    if user == "root" {
        return Err(ValidationError::new(field, "the user cannot be root")
            .hint("name a new login; without --user the keys go to the image's default user"));
    }
    Ok(())
}

/// An RFC 1123 host name: dot-separated labels of letters, digits and '-' (not at either
/// end), 1-63 characters each, 253 in all.
fn validate_hostname(field: &str, name: &str) -> Result<(), ValidationError> {
    let hint =
        "use labels of letters, digits and '-' separated by dots, e.g. web or web.example.com";
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(
            ValidationError::new(field, format!("'{name}' is not a valid host name")).hint(hint),
        );
    }
    Ok(())
}

/// How user-data begins decides how cloud-init reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDataKind {
    /// `#cloud-config`: a YAML mapping.
    CloudConfig,
    /// `#cloud-config-archive`, `#cloud-config-jsonp`: other cloud-config flavours.
    OtherCloudConfig(&'static str),
    /// `#!`: a script run once per instance.
    Script,
    /// `Content-Type:`: a MIME message with its own headers.
    Mime,
}

impl UserDataKind {
    /// Recognises user-data by its first line; `None` when cloud-init would ignore it.
    pub fn of(data: &str) -> Option<UserDataKind> {
        let first = data.lines().next().unwrap_or_default().trim_end();
        Some(match first {
            "#cloud-config" => UserDataKind::CloudConfig,
            "#cloud-config-archive" => UserDataKind::OtherCloudConfig("text/cloud-config-archive"),
            "#cloud-config-jsonp" => UserDataKind::OtherCloudConfig("text/cloud-config-jsonp"),
            _ if first.starts_with("#!") => UserDataKind::Script,
            _ if first.len() >= 13 && first[..13].eq_ignore_ascii_case("content-type:") => {
                UserDataKind::Mime
            }
            _ => return None,
        })
    }

    /// The MIME type cloud-init knows this part by.
    pub fn content_type(self) -> &'static str {
        match self {
            UserDataKind::CloudConfig => "text/cloud-config",
            UserDataKind::OtherCloudConfig(t) => t,
            UserDataKind::Script => "text/x-shellscript",
            UserDataKind::Mime => "multipart/mixed",
        }
    }
}

fn validate_user_data(field: &str, data: &str) -> Result<(), ValidationError> {
    if data.len() > MAX_USER_DATA {
        return Err(ValidationError::new(
            field,
            format!(
                "user-data is {} bytes, more than the {} KiB allowed",
                data.len(),
                MAX_USER_DATA >> 10
            ),
        )
        .hint("install large payloads from the network or bake them into the image"));
    }
    match UserDataKind::of(data) {
        None => Err(ValidationError::new(
            field,
            "user-data must start with #cloud-config, #! (a script) or Content-Type: (MIME)",
        )
        .hint("cloud-init ignores anything else; put #cloud-config on the first line")),
        Some(UserDataKind::CloudConfig) => {
            yaml_mapping(data).map_err(|e| {
                ValidationError::new(field, format!("user-data is not valid cloud-config: {e}"))
                    .hint("check the YAML, e.g. with: cloud-init schema -c FILE")
            })?;
            Ok(())
        }
        Some(UserDataKind::Mime) if !data.contains("\n\n") && !data.contains("\r\n\r\n") => Err(
            ValidationError::new(field, "the MIME user-data has headers but no body")
                .hint("make it with: cloud-init devel make-mime"),
        ),
        Some(_) => Ok(()),
    }
}

fn validate_network_config(field: &str, config: &str) -> Result<(), ValidationError> {
    let hint = "give a cloud-init network config, e.g. 'version: 2' with 'ethernets:'";
    if config.len() > MAX_NETWORK_CONFIG {
        return Err(ValidationError::new(
            field,
            format!(
                "network-config is {} bytes, more than the {} KiB allowed",
                config.len(),
                MAX_NETWORK_CONFIG >> 10
            ),
        ));
    }
    let map = yaml_mapping(config).map_err(|e| {
        ValidationError::new(field, format!("network-config is not valid YAML: {e}")).hint(hint)
    })?;
    // Either `version: N` at the top or under `network:` (both are accepted by NoCloud).
    let inner = match map.get("network") {
        Some(serde_yaml::Value::Mapping(m)) => m.clone(),
        _ => map,
    };
    match inner.get("version").and_then(serde_yaml::Value::as_u64) {
        Some(1 | 2) => Ok(()),
        Some(v) => Err(ValidationError::new(
            field,
            format!("network-config version {v} is not supported (1 or 2)"),
        )
        .hint(hint)),
        None => Err(ValidationError::new(field, "network-config has no 'version'").hint(hint)),
    }
}

/// Parses a YAML document that must be a mapping (or empty).
fn yaml_mapping(text: &str) -> Result<serde_yaml::Mapping, String> {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Mapping(m)) => Ok(m),
        Ok(serde_yaml::Value::Null) => Ok(serde_yaml::Mapping::new()),
        Ok(_) => Err("the top level must be a mapping (key: value)".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
