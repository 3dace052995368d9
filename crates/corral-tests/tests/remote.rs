//! `corral remote`: another host's corrald over HTTPS, its certificate pinned by
//! fingerprint, a token per remote, roles enforced on what the CLI sends.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use corral_tests::Daemon;

fn token(d: &Daemon, name: &str, role: &str) -> String {
    d.json(&["token", "create", name, "--role", role])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn remotes_pin_the_certificate_and_carry_a_token() {
    let (d, url) = Daemon::start_remote(&[]);
    d.define("web", &["--memory", "128M", "--network", "none"]);
    d.start_and_wait("web");
    let ops = token(&d, "ops", "operator");
    let viewer = token(&d, "dash", "viewer");
    let fingerprint = d.json(&["host", "info"])["tls_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();

    let wrong = "00".repeat(32);
    let err = d.fails(&[
        "remote",
        "add",
        "lab",
        &url,
        "--token",
        &ops,
        "--fingerprint",
        &wrong,
    ]);
    assert!(err.contains("different certificate"), "{err}");
    let err = d.fails(&["remote", "add", "lab", &url, "--token", &ops]);
    assert!(err.contains("without a terminal"), "{err}");
    let err = d.fails(&[
        "remote",
        "add",
        "lab",
        &url,
        "--token",
        "corral_000000000000_nope",
        "--accept-certificate",
    ]);
    assert!(err.contains("token was refused"), "{err}");
    assert!(
        d.ok(&["remote", "list"]).lines().count() <= 3,
        "nothing saved on failure"
    );

    let added = d.ok(&[
        "remote",
        "add",
        "lab",
        &url,
        "--token",
        &ops,
        "--accept-certificate",
    ]);
    assert!(added.contains("token:ops (operator)"), "{added}");
    let file = d.dir.path().join("config/remotes.yaml");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listed = d.ok(&["remote", "list"]);
    assert!(
        listed.contains("lab") && !listed.contains(&ops),
        "no token in the list: {listed}"
    );
    d.ok(&[
        "remote",
        "add",
        "view",
        &url,
        "--token",
        &viewer,
        "--fingerprint",
        &fingerprint,
    ]);

    // Through the remote: reads for both, power only for the operator.
    let vms = d.json(&["--remote", "view", "list"]);
    assert_eq!(vms[0]["spec"]["name"], "web");
    let out = d.corral(&["--remote", "view", "stop", "web", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("viewer role cannot"));
    assert_eq!(d.state("web"), "running");

    // The serial console over the remote's websocket.
    d.ok(&["remote", "switch", "lab"]);
    let text = d.console_session("web", b"echo remote-$((40+2))\n", Duration::from_secs(3));
    assert!(text.contains("remote-42"), "{text}");
    d.ok(&["stop", "web", "--force"]);
    d.ok(&["remote", "switch", "local"]);
    d.wait_state("web", "stopped", Duration::from_secs(30));
    let audit = d.json(&["audit", "--limit", "50"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "token:ops"
                && e["path"] == "/api/v1/vms/web/console"
                && e["status"] == 101),
        "console sessions are audited: {audit}"
    );
    d.ok(&["remote", "remove", "lab"]);
    assert!(!d.ok(&["remote", "list"]).contains("lab"));
}
