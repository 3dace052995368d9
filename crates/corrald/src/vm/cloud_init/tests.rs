use super::*;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKBUasJSkMe8TtrH7UEKsS9dBdmwIEzYpnFf2N/Btl1s alice@example";

fn uuid() -> Uuid {
    Uuid::parse_str("6f1c2a3e-2d4b-4c1e-9a7f-0123456789ab").unwrap()
}

fn yaml(doc: &str) -> serde_yaml::Value {
    assert!(doc.starts_with("#cloud-config\n"), "{doc}");
    serde_yaml::from_str(doc).unwrap()
}

fn instance_id(seed: &SeedFiles) -> String {
    let meta: serde_yaml::Value = serde_yaml::from_str(&seed.meta_data).unwrap();
    meta["instance-id"].as_str().unwrap().to_string()
}

#[test]
fn keys_for_the_default_user_and_the_vm_name_as_host_name() {
    let ci = CloudInit {
        ssh_authorized_keys: vec![format!("  {KEY}\n")],
        ..Default::default()
    };
    let seed = render("web", uuid(), &ci);
    let id = instance_id(&seed);
    assert!(
        id.starts_with("6f1c2a3e-2d4b-4c1e-9a7f-0123456789ab-"),
        "{id}"
    );
    assert_eq!(id.len(), 36 + 1 + 8);
    assert!(seed.meta_data.ends_with("local-hostname: web\n"));
    let user_data = yaml(&seed.user_data);
    assert_eq!(user_data["hostname"], "web");
    assert_eq!(user_data["manage_etc_hosts"], "localhost");
    assert_eq!(user_data["ssh_authorized_keys"][0], KEY);
    assert!(user_data.get("users").is_none());
    assert!(user_data.get("fqdn").is_none());
    assert_eq!(seed.network_config, None);
    assert_eq!(
        seed.files().iter().map(|f| f.0).collect::<Vec<_>>(),
        ["meta-data", "user-data"]
    );
}

#[test]
fn a_user_of_our_own_gets_the_keys_and_sudo() {
    let ci = CloudInit {
        ssh_authorized_keys: vec![KEY.into()],
        user: Some("alice".into()),
        hostname: Some("db.example.com".into()),
        ..Default::default()
    };
    let seed = render("web", uuid(), &ci);
    let doc = yaml(&seed.user_data);
    assert_eq!(doc["hostname"], "db");
    assert_eq!(doc["fqdn"], "db.example.com");
    assert!(doc.get("ssh_authorized_keys").is_none());
    let users = doc["users"].as_sequence().unwrap();
    assert_eq!(users[0], "default");
    assert_eq!(users[1]["name"], "alice");
    assert_eq!(users[1]["sudo"], "ALL=(ALL) NOPASSWD:ALL");
    assert_eq!(users[1]["shell"], "/bin/bash");
    assert_eq!(users[1]["lock_passwd"], true);
    assert_eq!(users[1]["ssh_authorized_keys"][0], KEY);
    assert!(seed.meta_data.contains("local-hostname: db.example.com\n"));
}

#[test]
fn instance_id_follows_the_config_and_nothing_else() {
    let ci = CloudInit {
        hostname: Some("a".into()),
        ..Default::default()
    };
    let first = render("web", uuid(), &ci);
    assert_eq!(
        first,
        render("web", uuid(), &ci),
        "rendering is deterministic"
    );
    assert_eq!(first.digest(), render("web", uuid(), &ci).digest());
    let renamed = CloudInit {
        hostname: Some("b".into()),
        ..Default::default()
    };
    let second = render("web", uuid(), &renamed);
    assert_ne!(instance_id(&first), instance_id(&second));
    assert_ne!(first.digest(), second.digest());
    let networked = CloudInit {
        network_config: Some("version: 2\n".into()),
        ..ci.clone()
    };
    let third = render("web", uuid(), &networked);
    assert_ne!(instance_id(&first), instance_id(&third));
    assert_eq!(third.network_config.as_deref(), Some("version: 2\n"));
    assert_eq!(third.files()[2].0, "network-config");
}

/// Splits a rendered multipart message into (headers, body) per part.
fn parts(message: &str) -> Vec<(String, String)> {
    let (head, rest) = message.split_once("\n\n").unwrap();
    assert!(head.contains("MIME-Version: 1.0"), "{head}");
    let boundary = head
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(rest.ends_with(&format!("--{boundary}--\n")));
    rest.split(&format!("--{boundary}"))
        .skip(1)
        .filter(|p| !p.starts_with("--"))
        .map(|p| {
            let (h, b) = p.trim_start_matches('\n').split_once("\n\n").unwrap();
            (h.to_string(), b.to_string())
        })
        .collect()
}

#[test]
fn own_cloud_config_goes_first_and_ours_merges_into_it() {
    let own = "#cloud-config\npackages: [htop]\nssh_authorized_keys: [ssh-rsa AAAA x]\n";
    let ci = CloudInit {
        ssh_authorized_keys: vec![KEY.into()],
        user_data: Some(own.into()),
        ..Default::default()
    };
    let seed = render("web", uuid(), &ci);
    assert!(seed
        .user_data
        .starts_with("Content-Type: multipart/mixed; boundary=\"corral-"));
    let parts = parts(&seed.user_data);
    assert_eq!(parts.len(), 2);
    assert!(parts[0].0.contains("Content-Type: text/cloud-config"));
    assert!(parts[0].0.contains("filename=\"user-data\""));
    assert!(!parts[0].0.contains("Merge-Type"));
    assert_eq!(parts[0].1, own);
    assert!(parts[1].0.contains(&format!("Merge-Type: {MERGE_TYPE}")));
    let ours = yaml(parts[1].1.as_str());
    assert_eq!(ours["ssh_authorized_keys"][0], KEY);
}

#[test]
fn scripts_and_mime_keep_their_type() {
    let script = "#!/bin/sh\necho hello";
    let ci = CloudInit {
        user_data: Some(script.into()),
        ..Default::default()
    };
    let p = parts(&render("web", uuid(), &ci).user_data);
    assert!(p[0].0.contains("Content-Type: text/x-shellscript"));
    assert_eq!(p[0].1, "#!/bin/sh\necho hello\n");

    let mime = "Content-Type: multipart/mixed; boundary=\"inner\"\nMIME-Version: 1.0\n\n\
                --inner\nContent-Type: text/x-shellscript\n\n#!/bin/sh\ntrue\n--inner--\n";
    let ci = CloudInit {
        user_data: Some(mime.into()),
        ..Default::default()
    };
    let rendered = render("web", uuid(), &ci).user_data;
    assert!(rendered.contains(mime), "embedded verbatim:\n{rendered}");
}

#[test]
fn non_ascii_parts_are_base64() {
    let own = "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: \"héllo ✓\"\n";
    let ci = CloudInit {
        ssh_authorized_keys: vec![format!("{KEY} josé")],
        user_data: Some(own.into()),
        ..Default::default()
    };
    let seed = render("web", uuid(), &ci);
    assert!(seed.user_data.is_ascii());
    for (headers, body) in parts(&seed.user_data) {
        assert!(
            headers.contains("Content-Transfer-Encoding: base64"),
            "{headers}"
        );
        let text: String = body.lines().collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let decoded = String::from_utf8(decoded).unwrap();
        assert!(
            decoded.contains("héllo ✓") || decoded.contains("josé"),
            "{decoded}"
        );
    }
}
