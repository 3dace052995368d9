//! A migration's own TLS material: a CA made for this one migration by the destination,
//! a server certificate for the destination's QEMU (migration stream and NBD server) and
//! a client certificate for the source's QEMU, both signed by it. The destination's QEMU
//! accepts only clients with a certificate from that CA, and the client half reaches the
//! source inside the pinned, authenticated HTTPS connection between the two corralds, so
//! only that source can connect, and it knows it talks to that destination.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use corral_api::MigrationTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{ApiError, ApiResult};

/// The directory (in the VM's runtime dir, so inside QEMU's chroot) holding the files.
const DIR: &str = "migration-tls";

/// Everything one migration needs: the destination keeps the server half, the source
/// gets [`MigrationTls`].
pub struct Material {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub client: MigrationTls,
}

fn tls_err(e: rcgen::Error) -> ApiError {
    ApiError::Internal(format!("making the migration's certificates: {e}"))
}

/// Makes a fresh CA and the two certificates. `server_names` are the names and
/// addresses the source reaches the destination by (its certificate's SANs).
pub fn make(server_names: &[String]) -> ApiResult<Material> {
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Corral migration CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_err)?;
    // GnuTLS (QEMU) insists on both usages on a leaf when its key usage is critical.
    let leaf = |names: Vec<String>, cn: &str, purpose| -> ApiResult<(String, String)> {
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut p = CertificateParams::new(names).map_err(tls_err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![purpose];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(tls_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        server_names.to_vec(),
        "corral migration destination",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        Vec::new(),
        "corral migration source",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let ca_pem = ca_cert.pem();
    Ok(Material {
        ca_cert: ca_pem.clone(),
        server_cert,
        server_key,
        client: MigrationTls {
            ca_cert: ca_pem,
            client_cert,
            client_key,
        },
    })
}

/// Writes one end's files into `run_dir/migration-tls/` for QEMU (readable by the user
/// QEMU runs as, nobody else) and returns the directory as QEMU must name it: inside
/// its chroot when it is confined to one.
pub fn install(
    run_dir: &Path,
    files: &[(&str, &str)],
    qemu_user: Option<(u32, u32)>,
    chrooted: bool,
) -> ApiResult<String> {
    let dir = run_dir.join(DIR);
    let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", dir.display()));
    remove(run_dir);
    // QEMU reads them after it dropped to its own user inside its chroot, whose root
    // (the runtime dir) is root's alone: it may pass through, by its group, until
    // `remove` closes the dir again.
    if let Some((_, gid)) = qemu_user {
        std::os::unix::fs::chown(run_dir, None, Some(gid)).map_err(io)?;
        std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o710)).map_err(io)?;
    }
    std::fs::create_dir(&dir).map_err(io)?;
    for (name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).map_err(io)?;
        chown(&path, qemu_user).map_err(io)?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).map_err(io)?;
    chown(&dir, qemu_user).map_err(io)?;
    Ok(if chrooted {
        format!("/{DIR}")
    } else {
        dir.display().to_string()
    })
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> std::io::Result<()> {
    match user {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// Removes a migration's files (once QEMU has loaded them, or when it is over) and
/// makes the runtime dir root's alone again.
pub fn remove(run_dir: &Path) {
    let dir: PathBuf = run_dir.join(DIR);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700));
}

/// The destination's files.
pub fn server_files(m: &Material) -> [(&'static str, &str); 3] {
    [
        ("ca-cert.pem", &m.ca_cert),
        ("server-cert.pem", &m.server_cert),
        ("server-key.pem", &m.server_key),
    ]
}

/// The source's files.
pub fn client_files(t: &MigrationTls) -> [(&'static str, &str); 3] {
    [
        ("ca-cert.pem", &t.ca_cert),
        ("client-cert.pem", &t.client_cert),
        ("client-key.pem", &t.client_key),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn material_is_a_ca_and_two_leaves_it_signed() {
        let m = make(&["10.0.0.2".into()]).unwrap();
        assert!(m.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(m.client.ca_cert, m.ca_cert);
        assert!(m.server_key.contains("PRIVATE KEY"));
        assert!(m.client.client_key.contains("PRIVATE KEY"));
        assert_ne!(m.server_cert, m.client.client_cert);
    }

    #[test]
    fn installed_files_are_for_qemu_alone() {
        let dir = tempfile::tempdir().unwrap();
        let m = make(&["127.0.0.1".into()]).unwrap();
        let named = install(dir.path(), &server_files(&m), None, true).unwrap();
        assert_eq!(named, "/migration-tls");
        let key = dir.path().join("migration-tls/server-key.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
        let named = install(dir.path(), &client_files(&m.client), None, false).unwrap();
        assert!(named.ends_with("/migration-tls"), "{named}");
        assert!(dir.path().join("migration-tls/client-cert.pem").exists());
        assert!(!dir.path().join("migration-tls/server-key.pem").exists());
        remove(dir.path());
        assert!(!dir.path().join("migration-tls").exists());
    }
}
