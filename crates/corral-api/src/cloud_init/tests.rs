use super::*;

const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKBUasJSkMe8TtrH7UEKsS9dBdmwIEzYpnFf2N/Btl1s alice@example";
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCsjtTaZq9HIAsBeqBrJGi6bGo5MWJqBLEeKi4OkPOFJMuOjfwXsNScrSklbGzqRLQvpAOSJsXaEFxOHEqz0QCP7anv9AU74aDRy4z+Sn5pWB39znARNZxfd4RFWW9kvV0csmtrGZRJPgqbpoDjGhnFuMX0Wm71GvhMInGOGp8VCQ== bob";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGXLt5a82nKmvk8a6wHwAunTM2IaMDKpPXPw70Pb96sAUKxMkSmUfznoaptC8dlKhcz1tsHNe1nGVI8zC+YNOeU=";

fn field_of(ci: &CloudInit) -> String {
    ci.validate("cloud_init").unwrap_err().field
}

#[test]
fn keys_parse_and_fingerprint_like_ssh_keygen() {
    // Fingerprints as `ssh-keygen -lf` printed them for these keys.
    let k = SshPublicKey::parse(ED25519).unwrap();
    assert_eq!(k.kind, "ssh-ed25519");
    assert_eq!(k.comment.as_deref(), Some("alice@example"));
    assert_eq!(
        k.fingerprint(),
        "SHA256:ihu1a+HA77+NGmD+2ilzh1fojGMuSfriuFeZcTGj7Yo"
    );
    let k = SshPublicKey::parse(RSA).unwrap();
    assert_eq!(
        k.fingerprint(),
        "SHA256:E+XQlV9LmZkEwvTPpwTbQcsw0qLYX+3zacbBUKbJlVA"
    );
    let k = SshPublicKey::parse(&format!("  {ECDSA}\n")).unwrap();
    assert_eq!(k.comment, None);
    assert_eq!(
        k.fingerprint(),
        "SHA256:2yo8b1kp8Fw4l5HLyukgfahZb3lA5IKW//e4muGF1zg"
    );
}

#[test]
fn bad_keys_say_why() {
    let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    let e = SshPublicKey::parse(private).unwrap_err();
    assert!(e.message.contains("private key"), "{e}");
    assert!(e.hint.contains(".pub"));
    let e = SshPublicKey::parse("---- BEGIN SSH2 PUBLIC KEY ----").unwrap_err();
    assert!(e.hint.contains("ssh-keygen -i"));
    assert!(SshPublicKey::parse("")
        .unwrap_err()
        .message
        .contains("empty"));
    assert!(SshPublicKey::parse("ssh-foo AAAA")
        .unwrap_err()
        .message
        .contains("not an SSH public key type"));
    assert!(SshPublicKey::parse("ssh-ed25519 !!!notbase64")
        .unwrap_err()
        .message
        .contains("base64"));
    // Valid base64, but a truncated blob / another type's blob.
    let truncated = &ED25519[..60];
    assert!(SshPublicKey::parse(truncated).is_err());
    let rsa_data = RSA.split(' ').nth(1).unwrap();
    let e = SshPublicKey::parse(&format!("ssh-ed25519 {rsa_data}")).unwrap_err();
    assert!(e.message.contains("not a ssh-ed25519 key"), "{e}");
    let two = format!("{ED25519}\n{RSA}");
    assert!(SshPublicKey::parse(&two)
        .unwrap_err()
        .message
        .contains("one line"));
}

#[test]
fn certificate_types_are_known() {
    assert!(known_key_type("ssh-ed25519-cert-v01@openssh.com"));
    assert!(known_key_type("sk-ssh-ed25519-cert-v01@openssh.com"));
    assert!(known_key_type("ecdsa-sha2-nistp384-cert-v01@openssh.com"));
    assert!(!known_key_type("ssh-foo-cert-v01@openssh.com"));
}

#[test]
fn fields_are_named_in_errors() {
    let ok = CloudInit {
        ssh_authorized_keys: vec![ED25519.into(), RSA.into()],
        user: Some("alice".into()),
        hostname: Some("web-1.example.com".into()),
        user_data: Some("#cloud-config\npackages: [htop]\n".into()),
        network_config: Some("version: 2\nethernets: {}\n".into()),
    };
    ok.validate("cloud_init").unwrap();
    let mut ci = ok.clone();
    ci.ssh_authorized_keys.push("nonsense".into());
    assert_eq!(field_of(&ci), "cloud_init.ssh_authorized_keys[2]");
    for bad in ["Alice", "1abc", "a b", "root", "", &"a".repeat(33)] {
        let ci = CloudInit {
            user: Some(bad.into()),
            ..ok.clone()
        };
        assert_eq!(field_of(&ci), "cloud_init.user", "{bad}");
    }
    for good in ["_svc", "deploy-2", "a"] {
        CloudInit {
            user: Some(good.into()),
            ..ok.clone()
        }
        .validate("x")
        .unwrap();
    }
    for bad in [
        "-web",
        "web-",
        "a..b",
        "we_b",
        "",
        ".",
        &"a".repeat(64),
        "web!",
    ] {
        let ci = CloudInit {
            hostname: Some(bad.into()),
            ..ok.clone()
        };
        assert_eq!(field_of(&ci), "cloud_init.hostname", "{bad}");
    }
    CloudInit {
        hostname: Some("A1".into()),
        ..ok.clone()
    }
    .validate("x")
    .unwrap();
}

#[test]
fn user_data_kinds() {
    assert_eq!(
        UserDataKind::of("#cloud-config\r\na: 1"),
        Some(UserDataKind::CloudConfig)
    );
    assert_eq!(
        UserDataKind::of("#cloud-config-archive\n- x"),
        Some(UserDataKind::OtherCloudConfig("text/cloud-config-archive"))
    );
    assert_eq!(
        UserDataKind::of("#!/bin/sh\necho hi"),
        Some(UserDataKind::Script)
    );
    assert_eq!(
        UserDataKind::of("content-type: multipart/mixed; boundary=x\n\n--x--"),
        Some(UserDataKind::Mime)
    );
    assert_eq!(UserDataKind::of("packages: [a]"), None);
    assert_eq!(UserDataKind::of(" #cloud-config"), None);
}

#[test]
fn user_data_checks() {
    let check = |data: &str| {
        CloudInit {
            user_data: Some(data.into()),
            ..Default::default()
        }
        .validate("cloud_init")
    };
    check("#cloud-config\n").unwrap();
    check("#cloud-config\nruncmd:\n  - [touch, /x]\n").unwrap();
    check("#!/bin/sh\necho hi\n").unwrap();
    check("Content-Type: multipart/mixed; boundary=\"b\"\nMIME-Version: 1.0\n\n--b--\n").unwrap();
    let e = check("packages: [a]").unwrap_err();
    assert_eq!(e.field, "cloud_init.user_data");
    assert!(e.message.contains("#cloud-config"));
    let e = check("#cloud-config\npackages: [a\n").unwrap_err();
    assert!(e.message.contains("not valid cloud-config"), "{e}");
    let e = check("#cloud-config\n- a\n- b\n").unwrap_err();
    assert!(e.message.contains("mapping"), "{e}");
    let e = check("Content-Type: text/plain").unwrap_err();
    assert!(e.message.contains("no body"), "{e}");
    let big = format!("#!/bin/sh\n{}", "#".repeat(MAX_USER_DATA));
    assert!(check(&big).unwrap_err().message.contains("KiB"));
}

#[test]
fn network_config_checks() {
    let check = |config: &str| {
        CloudInit {
            network_config: Some(config.into()),
            ..Default::default()
        }
        .validate("cloud_init")
    };
    check("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n").unwrap();
    check("network:\n  version: 1\n  config: []\n").unwrap();
    let e = check("version: 2\nethernets: [\n").unwrap_err();
    assert_eq!(e.field, "cloud_init.network_config");
    assert!(e.message.contains("not valid YAML"), "{e}");
    assert!(check("ethernets: {}\n")
        .unwrap_err()
        .message
        .contains("no 'version'"));
    assert!(check("version: 3\n")
        .unwrap_err()
        .message
        .contains("version 3"));
    assert!(check("- a\n").unwrap_err().message.contains("mapping"));
}

#[test]
fn unknown_fields_are_refused_and_defaults_apply() {
    let ci: CloudInit = serde_json::from_str(r#"{"hostname":"h"}"#).unwrap();
    assert!(ci.ssh_authorized_keys.is_empty() && ci.user.is_none());
    let e = serde_json::from_str::<CloudInit>(r#"{"hostnme":"h"}"#).unwrap_err();
    assert!(e.to_string().contains("hostnme"));
}
