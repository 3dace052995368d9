//! The cloud-init flags of `create` and `update`: `--ssh-key FILE`, `--user`,
//! `--hostname`, `--cloud-init user-data=FILE|network-config=FILE`. Files are read here,
//! on the client's side, and their content is sent.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use corral_api::{CloudInit, SshPublicKey};

use crate::error::CliError;

/// Which file `--cloud-init KEY=FILE` provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudInitPart {
    UserData,
    NetworkConfig,
}

impl CloudInitPart {
    fn name(self) -> &'static str {
        match self {
            CloudInitPart::UserData => "user-data",
            CloudInitPart::NetworkConfig => "network-config",
        }
    }
}

/// `--cloud-init KEY=FILE`: a usage error (exit 2) for an unknown key.
pub fn parse_cloud_init_file(text: &str) -> Result<(CloudInitPart, PathBuf), String> {
    let (key, file) = text.split_once('=').ok_or_else(|| {
        format!("'{text}' is not KEY=FILE (user-data=FILE or network-config=FILE)")
    })?;
    let part = match key {
        "user-data" => CloudInitPart::UserData,
        "network-config" => CloudInitPart::NetworkConfig,
        other => {
            return Err(format!(
                "unknown cloud-init file '{other}' (use user-data or network-config)"
            ))
        }
    };
    Ok((part, PathBuf::from(file)))
}

/// The provisioning flags, shared by `create` and `update`.
#[derive(Debug, Clone, Default, Args)]
pub struct CloudInitArgs {
    /// An SSH public key file (e.g. ~/.ssh/id_ed25519.pub) whose keys may log in;
    /// repeatable. Installed for --user, or for the image's default user (`debian` on
    /// Debian images). On update the keys given replace the VM's keys.
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,

    /// Create this login with the keys and passwordless sudo (password locked). On
    /// update, '' removes it.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// The guest's host name [default: the VM's name]. On update, '' goes back to the
    /// default.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Your own cloud-init file, merged with the generated one; repeatable:
    /// user-data=FILE (#cloud-config, a #! script or MIME) or network-config=FILE
    /// (version 1 or 2; without it the image's DHCP default applies). On update an
    /// empty FILE removes that file.
    #[arg(long = "cloud-init", value_name = "KEY=FILE", value_parser = parse_cloud_init_file)]
    pub files: Vec<(CloudInitPart, PathBuf)>,
}

impl CloudInitArgs {
    /// Whether any cloud-init flag was given.
    pub fn any(&self) -> bool {
        !self.ssh_keys.is_empty()
            || self.user.is_some()
            || self.hostname.is_some()
            || !self.files.is_empty()
    }

    /// `base` with the flags applied: keys replace keys, each file replaces its file,
    /// and an empty value (`--user ''`, `--cloud-init user-data=`) removes it.
    pub fn apply(&self, mut base: CloudInit, cwd: &Path) -> Result<CloudInit> {
        if !self.ssh_keys.is_empty() {
            base.ssh_authorized_keys.clear();
            for file in &self.ssh_keys {
                base.ssh_authorized_keys
                    .extend(read_keys(&super::absolute(cwd, file))?);
            }
        }
        let set = |value: &Option<String>, field: &mut Option<String>| {
            if let Some(v) = value {
                *field = (!v.is_empty()).then(|| v.clone());
            }
        };
        set(&self.user, &mut base.user);
        set(&self.hostname, &mut base.hostname);
        for (part, file) in &self.files {
            let content = if file.as_os_str().is_empty() {
                None
            } else {
                Some(read_file(*part, &super::absolute(cwd, file))?)
            };
            match part {
                CloudInitPart::UserData => base.user_data = content,
                CloudInitPart::NetworkConfig => base.network_config = content,
            }
        }
        Ok(base)
    }
}

fn flag_error(field: &str, error: String, hint: &str) -> anyhow::Error {
    CliError {
        error,
        field: Some(field.to_string()),
        hint: Some(hint.to_string()),
    }
    .into()
}

/// The keys of a public key file: one per non-empty line that is not a `#` comment (so
/// an authorized_keys file works too).
fn read_keys(path: &Path) -> Result<Vec<String>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        flag_error(
            "--ssh-key",
            format!("cannot read {shown}: {e}"),
            "give a public key file, e.g. ~/.ssh/id_ed25519.pub (ssh-keygen makes one)",
        )
    })?;
    // A private key's first line already says what it is, so line by line is enough.
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        SshPublicKey::parse(line).map_err(|e| {
            flag_error(
                "--ssh-key",
                format!("{shown}, line {}: {}", n + 1, e.message),
                e.hint,
            )
        })?;
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err(flag_error(
            "--ssh-key",
            format!("{shown} holds no key"),
            "give a public key file, e.g. ~/.ssh/id_ed25519.pub",
        ));
    }
    Ok(keys)
}

fn read_file(part: CloudInitPart, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        flag_error(
            "--cloud-init",
            format!("cannot read {} file {}: {e}", part.name(), path.display()),
            "check the path; the file must be UTF-8 text",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKBUasJSkMe8TtrH7UEKsS9dBdmwIEzYpnFf2N/Btl1s alice@example";

    fn field_and_message(err: &anyhow::Error) -> (String, String) {
        let e = err.downcast_ref::<CliError>().unwrap();
        (e.field.clone().unwrap(), e.error.clone())
    }

    #[test]
    fn file_keys() {
        assert_eq!(
            parse_cloud_init_file("user-data=a/b.yaml").unwrap(),
            (CloudInitPart::UserData, PathBuf::from("a/b.yaml"))
        );
        assert_eq!(
            parse_cloud_init_file("network-config=").unwrap(),
            (CloudInitPart::NetworkConfig, PathBuf::new())
        );
        assert!(parse_cloud_init_file("meta-data=x")
            .unwrap_err()
            .contains("unknown cloud-init file 'meta-data'"));
        assert!(parse_cloud_init_file("x").unwrap_err().contains("KEY=FILE"));
    }

    #[test]
    fn keys_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let pubkey = dir.path().join("id.pub");
        std::fs::write(&pubkey, format!("# mine\n{KEY}\n\n{KEY} again\n")).unwrap();
        let args = CloudInitArgs {
            ssh_keys: vec![PathBuf::from("id.pub")],
            ..Default::default()
        };
        let ci = args.apply(CloudInit::default(), dir.path()).unwrap();
        assert_eq!(ci.ssh_authorized_keys.len(), 2);
        assert_eq!(ci.ssh_authorized_keys[0], KEY);

        let private = dir.path().join("id");
        std::fs::write(
            &private,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let args = CloudInitArgs {
            ssh_keys: vec![private],
            ..Default::default()
        };
        let err = args.apply(CloudInit::default(), dir.path()).unwrap_err();
        let (field, message) = field_and_message(&err);
        assert_eq!(field, "--ssh-key");
        assert!(message.contains("private key"), "{message}");

        let args = CloudInitArgs {
            ssh_keys: vec![dir.path().join("missing.pub")],
            ..Default::default()
        };
        let err = args.apply(CloudInit::default(), dir.path()).unwrap_err();
        assert!(field_and_message(&err).1.contains("cannot read"));

        let junk = dir.path().join("junk.pub");
        std::fs::write(&junk, "hello\n").unwrap();
        let args = CloudInitArgs {
            ssh_keys: vec![junk],
            ..Default::default()
        };
        let err = args.apply(CloudInit::default(), dir.path()).unwrap_err();
        assert!(field_and_message(&err).1.contains("line 1"));
    }

    #[test]
    fn updates_replace_and_empty_removes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ud"), "#cloud-config\n").unwrap();
        let current = CloudInit {
            ssh_authorized_keys: vec![KEY.into()],
            user: Some("alice".into()),
            hostname: Some("old".into()),
            user_data: Some("#!/bin/sh\n".into()),
            network_config: Some("version: 2\n".into()),
        };
        let args = CloudInitArgs {
            user: Some(String::new()),
            hostname: Some("new".into()),
            files: vec![
                (CloudInitPart::UserData, PathBuf::from("ud")),
                (CloudInitPart::NetworkConfig, PathBuf::new()),
            ],
            ..Default::default()
        };
        assert!(args.any());
        let ci = args.apply(current, dir.path()).unwrap();
        assert_eq!(ci.ssh_authorized_keys, vec![KEY.to_string()], "kept");
        assert_eq!(ci.user, None);
        assert_eq!(ci.hostname.as_deref(), Some("new"));
        assert_eq!(ci.user_data.as_deref(), Some("#cloud-config\n"));
        assert_eq!(ci.network_config, None);
        assert!(!CloudInitArgs::default().any());
    }
}
