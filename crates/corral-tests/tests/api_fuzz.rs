//! The HTTP API fuzzed from its own OpenAPI document by schemathesis (PyPI, installed by
//! scripts/setup.sh into build/venv), over real HTTPS with an admin token, against a daemon
//! in its own network namespace (fuzzed networks make bridges there, nowhere else).
//!
//! Bounded: a first pass with generated names, then two with every name fixed to existing
//! objects (`fz`: a running VM with a disk and a snapshot, a volume, a network, a user),
//! so requests reach the real work instead of 404s. Then: no 5xx anywhere, the daemon
//! still up, and nothing half-made (no orphan or missing files in the pools, no QEMU
//! without a VM that says it runs).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use corral_tests::{pid_alive, workspace, Daemon, NetNs};

/// Operations left out, and why: they take host paths and make files or directories
/// there as root (a pool's directory, an import's source), which a fuzzer must not
/// choose; `tests/bad_input.rs` covers their refusals. The event stream never ends. A
/// migration (and a certificate probe) dials the host its body names, which a fuzzer must not pick either
/// (`tests/migration.rs` covers its refusals).
const EXCLUDED_OPERATIONS: [&str; 5] = [
    "create_pool",
    "import_volume",
    "stream_events",
    "migrate",
    "probe_certificate",
];

fn schemathesis() -> PathBuf {
    std::env::var_os("CORRAL_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("build/venv/bin/st"))
}

fn run_schemathesis(
    ns: &NetNs,
    d: &Daemon,
    token: &str,
    config: Option<&str>,
    examples: &str,
    filters: &[&str],
) {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: run scripts/setup.sh (it installs schemathesis into build/venv)",
        st.display()
    );
    let report = d
        .dir
        .path()
        .join(format!("schemathesis-{}", filters.join("")));
    let mut c = ns.command(st.to_str().unwrap());
    if let Some(cfg) = config {
        c.arg("--config-file").arg(cfg);
    }
    c.args([
        "run",
        "https://127.0.0.1:8443/api/openapi.json",
        "--tls-verify",
    ])
    .arg(d.tls_cert())
    .args(["-H", &format!("Authorization: Bearer {token}")])
    .args(["--checks", "not_a_server_error", "--max-examples", examples])
    .args(["--request-timeout", "60", "--workers", "1", "--no-color"])
    .args(["--report", "junit", "--report-dir"])
    .arg(&report);
    for op in EXCLUDED_OPERATIONS {
        c.args(["--exclude-operation-id", op]);
    }
    c.args(filters);
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}\n--- corrald log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&d.log(), 80)
    );
    assert!(text.contains("passed"), "{text}");
    // The summary, for the test's log (how much was generated, what was skipped).
    eprintln!("{}", tail(&text, 25));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Objects the second pass finds by name, all called `fz`.
fn make_fixtures(d: &Daemon) {
    d.define(
        "fz",
        &["--memory", "128M", "--disk", "size=32M", "--network", "nat"],
    );
    d.start_and_wait("fz");
    d.ok(&["snapshot", "create", "fz", "fz"]);
    d.ok(&["volume", "create", "fz", "--size", "16M"]);
    d.ok(&["network", "create", "fz", "--type", "isolated"]);
    let (status, body) = d.http(
        "POST",
        "/api/v1/users",
        r#"{"username":"fz","password":"fuzzing fuzzing","role":"viewer"}"#,
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn fuzzing_the_api_finds_no_server_errors_and_leaves_nothing_half_made() {
    let ns = NetNs::new("fuzz");
    let d = Daemon::start_in(&ns, &["--accel", "tcg", "--listen", "127.0.0.1:8443"]);
    let (status, body) = d.http(
        "POST",
        "/api/v1/tokens",
        r#"{"name":"fuzz","role":"admin"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    make_fixtures(&d);

    run_schemathesis(&ns, &d, &token, None, "10", &[]);
    let config = d.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[parameters]\nname = \"fz\"\nusername = \"fz\"\nsnapshot = \"fz\"\n",
    )
    .unwrap();
    // Everything but deletes first, so the fixtures live through it; then the deletes,
    // on real objects (a running VM, a snapshot, a network, …).
    let config = config.to_str().unwrap();
    run_schemathesis(
        &ns,
        &d,
        &token,
        Some(config),
        "6",
        &["--exclude-method", "DELETE"],
    );
    run_schemathesis(
        &ns,
        &d,
        &token,
        Some(config),
        "3",
        &["--include-method", "DELETE"],
    );

    // Still up, and consistent.
    let (status, _) = d.http("GET", "/api/v1/host", "");
    assert_eq!(status, 200, "the daemon must survive the fuzzing");
    for pool in d.json(&["pool", "list"]).as_array().unwrap() {
        d.assert_pool_clean(pool["spec"]["name"].as_str().unwrap());
    }
    let vms = d.json(&["list"]);
    let live: Vec<u64> = vms
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["status"]["pid"].as_u64())
        .collect();
    for pid in d.qemu_pids().into_iter().filter(|p| pid_alive(*p)) {
        assert!(
            live.contains(&u64::from(pid)),
            "QEMU {pid} runs for no VM that says so: {vms}"
        );
    }
}
