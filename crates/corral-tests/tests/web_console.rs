//! The web console in a real browser: Debian's headless chromium, driven by
//! playwright-core scripts in web/e2e, against a real corrald serving the embedded app
//! over HTTPS. Screenshots of each step go to target/web-artifacts (or $CORRAL_ARTIFACTS).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use corral_tests::remote::free_port;
use corral_tests::{guest, workspace, Daemon, NetNs, GUEST_CMDLINE};

const PASSWORD: &str = "correct horse battery";

fn admin(d: &Daemon) {
    let body = format!(r#"{{"username":"webadmin","password":"{PASSWORD}","role":"admin"}}"#);
    let (status, reply) = d.http("POST", "/api/v1/users", &body);
    assert_eq!(status, 201, "{reply}");
}

fn run_script(url: &str, script: &str) {
    run_node(Command::new("node"), url, script);
}

/// Runs `script` with `node`, a command that may run it elsewhere (in a namespace).
fn run_node(mut node: Command, url: &str, script: &str) {
    let (kernel, _) = guest();
    let artifacts = std::env::var("CORRAL_ARTIFACTS").unwrap_or_else(|_| {
        workspace()
            .join("target/web-artifacts")
            .display()
            .to_string()
    });
    let out = node
        .arg(workspace().join("web/e2e").join(script))
        .current_dir(workspace())
        .env("CORRAL_URL", url)
        .env("CORRAL_USER", "webadmin")
        .env("CORRAL_PASSWORD", PASSWORD)
        .env("CORRAL_TEST_GUEST", kernel.parent().unwrap())
        .env("CORRAL_GUEST_CMDLINE", GUEST_CMDLINE)
        .env("CORRAL_ARTIFACTS", artifacts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn browser_journey_create_console_snapshot_stop_delete() {
    let (d, url) = Daemon::start_remote(&[]);
    admin(&d);
    run_script(&url, "journey.mjs");
    let (status, _) = d.http("GET", "/api/v1/vms/web1", "");
    assert_eq!(status, 404, "the journey deletes its VM");
}

#[test]
fn server_validation_error_shows_next_to_its_field() {
    let (d, url) = Daemon::start_remote(&[]);
    admin(&d);
    run_script(&url, "field_error.mjs");
}

#[test]
fn admin_pages_make_users_and_tokens_and_show_the_audit_log() {
    let (d, url) = Daemon::start_remote(&[]);
    admin(&d);
    run_script(&url, "admin.mjs");
    let (_, users) = d.http("GET", "/api/v1/users", "");
    assert!(users.to_string().contains("\"ops1\""), "{users}");
}

#[test]
fn nics_and_disks_are_added_and_removed_on_the_vm_page() {
    let (d, url) = Daemon::start_remote(&[]);
    admin(&d);
    d.define("nicvm", &["--network", "none"]);
    d.ok(&["volume", "create", "webvol", "--size", "16M"]);
    run_script(&url, "nics.mjs");
    let (_, vm) = d.http("GET", "/api/v1/vms/nicvm", "");
    assert_eq!(vm["spec"]["nics"], serde_json::json!([]), "{vm}");
    assert!(!vm["spec"]["disks"].to_string().contains("webvol"), "{vm}");
}

#[test]
fn a_throttled_login_counts_down() {
    let (d, url) = Daemon::start_remote(&[]);
    admin(&d);
    run_script(&url, "throttle.mjs");
}

#[test]
fn unknown_paths_serve_the_app_but_api_paths_stay_json() {
    let (d, url) = Daemon::start_remote(&[]);
    let page = d.https(&url, "GET", "/vms/some/route", &[], None, None);
    assert_eq!(page.status, 200);
    assert!(page
        .headers
        .to_lowercase()
        .contains("content-type: text/html"));
    // Unknown API paths are refused without credentials and a JSON 404 with them.
    let anon = d.https(&url, "GET", "/api/v1/nope", &[], None, None);
    assert_eq!(anon.status, 401, "{anon:?}");
    let (status, body) = d.http("GET", "/api/v1/nope", "");
    assert_eq!(status, 404);
    assert!(body.get("error").is_some(), "{body}");
}

#[test]
fn storage_and_network_pages_make_and_delete_volumes_and_networks() {
    // Networks are made for real: the daemon, and so the browser, live in a namespace.
    let ns = NetNs::new("webstor");
    let listen = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_in(&ns, &["--accel", "tcg", "--listen", &listen]);
    admin(&d);
    d.define("storvm", &["--network", "none"]);
    d.ok(&["volume", "create", "civol", "--size", "16M"]);
    run_node(
        ns.command("node"),
        &format!("https://{listen}"),
        "storage.mjs",
    );
    let (status, _) = d.http("GET", "/api/v1/volumes/webvol2", "");
    assert_eq!(status, 404, "the page deletes its volume");
    let (status, _) = d.http("GET", "/api/v1/networks/webnet", "");
    assert_eq!(status, 404, "the page deletes its network");
    let (_, net) = d.http("GET", "/api/v1/networks/default", "");
    assert_eq!(net["used_by"], serde_json::json!(["civm"]), "{net}");
    let vm = d.vm("civm");
    assert!(vm["spec"]["disks"].to_string().contains("civol"), "{vm}");
    assert!(
        vm["spec"]["cloud_init"]["user_data"]
            .as_str()
            .is_some_and(|u| u.contains("echo hi")),
        "{vm}"
    );
}

#[test]
fn wizard_picks_images_and_nic_rows_and_names_a_bad_nic_row() {
    let (d, url) = Daemon::start_remote(&[]);
    admin(&d);
    d.ok(&["volume", "create", "webimgvol", "--size", "16M"]);
    d.ok(&["image", "create", "webimg", "--from-volume", "webimgvol"]);
    run_script(&url, "wizard.mjs");
    let vm = d.vm("wizvm");
    assert_eq!(vm["status"]["state"], "stopped", "{vm}");
    let nics = vm["spec"]["nics"].as_array().unwrap();
    assert_eq!(nics.len(), 2, "{vm}");
    assert!(nics.iter().all(|n| n["kind"] == "user"), "{vm}");
}

#[test]
fn a_long_operation_shows_on_the_vm_page_and_can_be_cancelled() {
    let (d, url) = Daemon::start_remote(&[]);
    admin(&d);
    // A guest that ignores the power button and has no agent: a graceful stop waits.
    let (kernel, initrd) = guest();
    let cmdline = format!("{GUEST_CMDLINE} corral.noacpi corral.noagent");
    d.ok(&[
        "create",
        "deaf",
        "--memory",
        "128M",
        "--network",
        "none",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--start",
    ]);
    d.wait_console("deaf", "CORRAL-GUEST-READY", corral_tests::BOOT);
    run_script(&url, "cancel.mjs");
    assert_eq!(d.state("deaf"), "running");
    let ops = d.json(&["operation", "list"]);
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "vm.stop" && o["state"] == "cancelled"),
        "{ops}"
    );
    d.ok(&["delete", "deaf", "--force"]);
}

/// The corrald under test carries the console that scripts/build-web.sh built (test.sh
/// builds it first, as install.sh and demo.sh do), and says so in `--version`; a
/// binary built without it would say "not built" and fail here.
#[test]
fn the_built_corrald_embeds_the_console_and_says_so() {
    let dist = corral_tests::workspace().join("web/dist/index.html");
    assert!(
        dist.is_file(),
        "web/dist is not built: run scripts/build-web.sh (scripts/test.sh does)"
    );
    let out = Command::new(corral_tests::bin("corrald"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains("web console embedded"), "{version}");
    let (d, url) = Daemon::start_remote(&[]);
    let page = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(d.tls_cert())
        .arg(format!("{url}/"))
        .output()
        .unwrap();
    let html = String::from_utf8_lossy(&page.stdout);
    assert!(html.contains("/assets/"), "the app's page:\n{html}");
    assert!(!html.contains("not built"), "{html}");
}

/// Migrate from the VM page of host 0 to host 1: the browser (in host 0's namespace,
/// where both hosts are reachable) fetches host 1's fingerprint, sees a wrong token
/// refused next to its input with nothing moved, passes Check, cancels a slow migration
/// (the VM stays), follows the real one to the VM page saying where the VM went
/// (web/e2e/migrate.mjs).
#[test]
fn the_vm_page_migrates_a_vm_to_another_host() {
    let hosts = corral_tests::hosts::Hosts::new("wmig", 2);
    let (src, dst) = (hosts.host(0), hosts.host(1));
    admin(&src.daemon);
    let (kernel, initrd) = guest();
    src.daemon.ok(&[
        "create",
        "migvm",
        "--memory",
        "256M",
        "--disk",
        "size=32M",
        "--network",
        "none",
        "--start",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        GUEST_CMDLINE,
    ]);
    src.daemon
        .wait_console("migvm", "CORRAL-GUEST-READY", corral_tests::BOOT);
    let target = hosts.target(1);
    let dest_host = dst.daemon.json(&["host", "info"])["hostname"]
        .as_str()
        .unwrap()
        .to_string();
    let mut node = src.ns.command("node");
    node.env("CORRAL_VM", "migvm")
        .env("CORRAL_DEST_URL", target["url"].as_str().unwrap())
        .env("CORRAL_DEST_TOKEN", target["token"].as_str().unwrap())
        .env(
            "CORRAL_DEST_FINGERPRINT",
            target["fingerprint"].as_str().unwrap(),
        )
        .env("CORRAL_DEST_HOST", &dest_host);
    run_node(node, &format!("https://{}:8443", src.addr), "migrate.mjs");
    assert_eq!(src.vm_names(), Vec::<String>::new(), "host 0 lists no VM");
    assert_eq!(dst.vm_names(), vec!["migvm".to_string()], "host 1 has it");
    assert_eq!(dst.daemon.state("migvm"), "running");
}
