//! The files of a cloud-init NoCloud seed, as a pure function of the VM's name, UUID and
//! cloud-init config: `meta-data`, `user-data` and, when asked for, `network-config`.
//!
//! `user-data` is a `#cloud-config` Corral generates (host name, keys, the user). When
//! the user brings user-data of their own, both go into one MIME multipart message,
//! theirs first, ours second with a merge rule (`Merge-Type`) that only fills in what
//! theirs leaves unset and joins lists, so their settings win and no key or user is lost.
//!
//! `instance-id` carries a hash of everything else: cloud-init runs its per-instance
//! modules (users, keys, host name) again whenever the config changes.

use base64::Engine;
use corral_api::cloud_init::UserDataKind;
use corral_api::CloudInit;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// What goes on the seed CD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

impl SeedFiles {
    /// A hash of every file's name and content: equal hashes, equal seeds.
    pub fn digest(&self) -> String {
        let mut files = vec![
            ("meta-data", self.meta_data.as_str()),
            ("user-data", self.user_data.as_str()),
        ];
        files.extend(
            self.network_config
                .as_deref()
                .map(|n| ("network-config", n)),
        );
        hash_fields(&files)
    }

    /// `(file name, content)` in the order they go on the CD.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            ("meta-data", self.meta_data.as_str()),
            ("user-data", self.user_data.as_str()),
        ];
        out.extend(
            self.network_config
                .as_deref()
                .map(|n| ("network-config", n)),
        );
        out
    }
}

/// Lets cloud-init merge our part into the user's: keep their values, recurse into
/// mappings, append lists (so `users` and `ssh_authorized_keys` from both survive).
const MERGE_TYPE: &str = "dict(no_replace,recurse_list)+list(append)+str()";

/// The seed for VM `name` (`uuid`) with config `ci`.
pub fn render(name: &str, uuid: Uuid, ci: &CloudInit) -> SeedFiles {
    let hostname = ci.hostname.as_deref().unwrap_or(name);
    let generated = generated_config(ci, hostname);
    let user_data = match &ci.user_data {
        Some(own) => multipart(own, &generated),
        None => generated,
    };
    let network_config = ci.network_config.clone();
    let mut fields = vec![("hostname", hostname), ("user-data", user_data.as_str())];
    fields.extend(network_config.as_deref().map(|n| ("network-config", n)));
    let config_hash = hash_fields(&fields);
    let meta_data = format!(
        "instance-id: {uuid}-{}\nlocal-hostname: {hostname}\n",
        &config_hash[..8]
    );
    SeedFiles {
        meta_data,
        user_data,
        network_config,
    }
}

#[derive(Serialize)]
struct Generated<'a> {
    hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fqdn: Option<&'a str>,
    /// `localhost`: a `127.0.1.1` line for the name, so that it resolves (`hostname -f`,
    /// sudo's lookup) while the rest of `/etc/hosts` is left alone.
    manage_etc_hosts: &'static str,
    /// For the image's default user, when no user of our own is made.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh_authorized_keys: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    users: Vec<UserEntry<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum UserEntry<'a> {
    /// `default`: keep the image's default user too.
    Default(&'static str),
    User {
        name: &'a str,
        sudo: &'static str,
        shell: &'static str,
        lock_passwd: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        ssh_authorized_keys: Vec<&'a str>,
    },
}

/// Corral's own `#cloud-config`: host name, and the keys for the default user or for
/// a new user with passwordless sudo.
fn generated_config(ci: &CloudInit, hostname: &str) -> String {
    let keys: Vec<&str> = ci.ssh_authorized_keys.iter().map(|k| k.trim()).collect();
    // cloud-init sets `hostname` and, given `fqdn`, the full name from it.
    let (short, fqdn) = match hostname.split_once('.') {
        Some((label, _)) => (label, Some(hostname)),
        None => (hostname, None),
    };
    let mut config = Generated {
        hostname: short,
        fqdn,
        manage_etc_hosts: "localhost",
        ssh_authorized_keys: Vec::new(),
        users: Vec::new(),
    };
    match &ci.user {
        Some(name) => {
            config.users = vec![
                UserEntry::Default("default"),
                UserEntry::User {
                    name,
                    sudo: "ALL=(ALL) NOPASSWD:ALL",
                    shell: "/bin/bash",
                    lock_passwd: true,
                    ssh_authorized_keys: keys,
                },
            ]
        }
        None => config.ssh_authorized_keys = keys,
    }
    // Serialising plain strings, bools and lists cannot fail.
    let yaml = serde_yaml::to_string(&config).unwrap_or_default();
    format!("#cloud-config\n{yaml}")
}

/// The user's user-data and ours as one `multipart/mixed` message. The boundary comes
/// from the content, so the same config always renders the same bytes.
fn multipart(own: &str, generated: &str) -> String {
    let mut boundary = format!(
        "corral-{}",
        &hash_fields(&[("", own), ("", generated)])[..16]
    );
    while own.contains(&boundary) || generated.contains(&boundary) {
        boundary.push('x');
    }
    // cloud-init parses user-data as MIME only when it sees MIME-Version near the top.
    let mut out =
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    out.push_str(&format!("--{boundary}\n"));
    match UserDataKind::of(own) {
        // A MIME document is a valid part as it is: its headers, a blank line, its body.
        Some(UserDataKind::Mime) => {
            out.push_str(own);
            if !own.ends_with('\n') {
                out.push('\n');
            }
        }
        kind => {
            let content_type = kind.map_or("text/plain", UserDataKind::content_type);
            part(&mut out, content_type, "user-data", &[], own);
        }
    }
    out.push_str(&format!("--{boundary}\n"));
    part(
        &mut out,
        "text/cloud-config",
        "corral.cfg",
        &[("Merge-Type", MERGE_TYPE)],
        generated,
    );
    out.push_str(&format!("--{boundary}--\n"));
    out
}

/// One MIME part. ASCII bodies go as they are, others in base64: cloud-init's MIME
/// parser mangles 8-bit text it was given as a string.
fn part(out: &mut String, content_type: &str, filename: &str, extra: &[(&str, &str)], body: &str) {
    out.push_str(&format!(
        "Content-Type: {content_type}; charset=\"utf-8\"\nMIME-Version: 1.0\n"
    ));
    out.push_str(&format!(
        "Content-Disposition: attachment; filename=\"{filename}\"\n"
    ));
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\n"));
    }
    if body.is_ascii() {
        out.push_str("Content-Transfer-Encoding: 7bit\n\n");
        out.push_str(body);
        if !body.ends_with('\n') {
            out.push('\n');
        }
    } else {
        out.push_str("Content-Transfer-Encoding: base64\n\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(body);
        for line in encoded.as_bytes().chunks(76) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
    }
}

/// Hex SHA-256 over length-prefixed fields (so no two different field lists collide).
fn hash_fields(fields: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    for (name, value) in fields {
        for s in [name, value] {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
