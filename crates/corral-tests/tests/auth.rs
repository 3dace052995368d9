//! The remote API's gate, end to end over real HTTPS (curl checking the daemon's own
//! certificate): tokens and roles, browser sessions, throttled logins, and the audit log.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use corral_tests::{Daemon, Value};

fn token(d: &Daemon, name: &str, role: &str) -> String {
    let (status, body) = d.http(
        "POST",
        "/api/v1/tokens",
        &format!(r#"{{"name":"{name}","role":"{role}"}}"#),
    );
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

fn add_user(d: &Daemon, name: &str, password: &str, role: &str) {
    let body = format!(r#"{{"username":"{name}","password":"{password}","role":"{role}"}}"#);
    let (status, reply) = d.http("POST", "/api/v1/users", &body);
    assert_eq!(status, 201, "{reply}");
    assert!(reply.get("password_hash").is_none() && !reply.to_string().contains(password));
}

fn audit(d: &Daemon) -> Vec<Value> {
    let (status, body) = d.http("GET", "/api/v1/audit?limit=1000", "");
    assert_eq!(status, 200);
    body.as_array().unwrap().clone()
}

fn audited(entries: &[Value], method: &str, path: &str, status: u16) -> Value {
    entries
        .iter()
        .find(|e| e["method"] == method && e["path"] == path && e["status"] == status)
        .cloned()
        .unwrap_or_else(|| panic!("no audit entry {method} {path} {status} in {entries:#?}"))
}

#[test]
fn tokens_and_roles_gate_every_request_and_each_attempt_is_audited() {
    let (d, url) = Daemon::start_remote(&[]);
    d.define("web", &["--memory", "128M", "--network", "none"]);
    d.start_and_wait("web");
    let viewer = token(&d, "dash", "viewer");
    let operator = token(&d, "ops", "operator");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    let none = d.https(&url, "GET", "/api/v1/vms", &[], None, None);
    assert_eq!(none.status, 401, "{:?}", none);
    assert!(none
        .headers
        .to_lowercase()
        .contains("www-authenticate: bearer"));
    assert!(none.body["hint"].as_str().unwrap().contains("token"));

    let mut tampered = viewer.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'a' { 'b' } else { 'a' });
    let r = d.https(
        &url,
        "GET",
        "/api/v1/vms",
        &[&bearer(&tampered)],
        None,
        None,
    );
    assert_eq!(r.status, 401);

    let list = d.https(&url, "GET", "/api/v1/vms", &[&bearer(&viewer)], None, None);
    assert_eq!(list.status, 200);
    assert_eq!(list.body[0]["spec"]["name"], "web", "{:?}", list);

    let stop = d.https(
        &url,
        "POST",
        "/api/v1/vms/web/stop",
        &[&bearer(&viewer)],
        Some(r#"{"force":true}"#),
        None,
    );
    assert_eq!(stop.status, 403, "{:?}", stop);
    assert!(stop.body["error"].as_str().unwrap().contains("viewer"));
    assert_eq!(d.state("web"), "running", "a refused stop changes nothing");
    let tokens = d.https(
        &url,
        "GET",
        "/api/v1/tokens",
        &[&bearer(&operator)],
        None,
        None,
    );
    assert_eq!(tokens.status, 403, "tokens are an admin's");

    let stop = d.https(
        &url,
        "POST",
        "/api/v1/vms/web/stop",
        &[&bearer(&operator)],
        Some(r#"{"force":true}"#),
        None,
    );
    assert!(stop.status < 300, "{:?}", stop);
    d.wait_state("web", "stopped", Duration::from_secs(30));

    // Secrets never come back: not in the token list, not in the daemon's log.
    let (_, listed) = d.http("GET", "/api/v1/tokens", "");
    let secret = viewer.rsplit('_').next().unwrap();
    assert!(!listed.to_string().contains(secret), "{listed}");
    assert!(!d.log().contains(secret));

    let entries = audit(&d);
    assert_eq!(audited(&entries, "GET", "/api/v1/vms", 401)["actor"], "-");
    let refused = audited(&entries, "POST", "/api/v1/vms/web/stop", 403);
    assert_eq!(
        (refused["actor"].as_str(), refused["source"].as_str()),
        (Some("token:dash"), Some("127.0.0.1"))
    );
    assert_eq!(
        audited(&entries, "GET", "/api/v1/tokens", 403)["actor"],
        "token:ops"
    );
    let done = entries
        .iter()
        .find(|e| {
            e["path"] == "/api/v1/vms/web/stop"
                && e["actor"] == "token:ops"
                && e["status"].as_u64() < Some(300)
        })
        .unwrap_or_else(|| panic!("the operator's stop is not audited: {entries:#?}"));
    assert_eq!(done["role"], "operator");
    // The unix socket's own changes are audited too, by uid.
    assert!(entries
        .iter()
        .any(|e| e["actor"] == "uid:0" && e["path"] == "/api/v1/tokens"));
}

#[test]
fn browser_sessions_need_the_csrf_header_and_expire() {
    let (d, url) = Daemon::start_remote(&["--session-ttl", "3s"]);
    add_user(&d, "alice", "correct horse battery", "operator");
    let jar_dir = tempfile::tempdir().unwrap();
    let jar = jar_dir.path().join("cookies");
    let login = |password: &str| {
        let body = format!(r#"{{"username":"alice","password":"{password}"}}"#);
        d.https(
            &url,
            "POST",
            "/api/v1/auth/login",
            &[],
            Some(&body),
            Some(&jar),
        )
    };
    assert_eq!(login("wrong horse battery").status, 401);
    let ok = login("correct horse battery");
    assert_eq!(ok.status, 200, "{:?}", ok);
    assert_eq!(ok.body["role"], "operator");
    let cookie = ok
        .headers
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie"))
        .unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }

    let who = d.https(&url, "GET", "/api/v1/auth/whoami", &[], None, Some(&jar));
    assert_eq!(
        (who.body["name"].as_str(), who.body["kind"].as_str()),
        (Some("alice"), Some("session"))
    );
    let forged = d.https(
        &url,
        "POST",
        "/api/v1/vms/nope/stop",
        &[],
        Some("{}"),
        Some(&jar),
    );
    assert_eq!(
        forged.status, 403,
        "no CSRF header: refused before the handler"
    );
    let cross = d.https(
        &url,
        "POST",
        "/api/v1/vms/nope/stop",
        &["X-Corral-CSRF: 1", "Origin: https://evil.example"],
        Some("{}"),
        Some(&jar),
    );
    assert_eq!(cross.status, 403, "another site's origin");
    let real = d.https(
        &url,
        "POST",
        "/api/v1/vms/nope/stop",
        &["X-Corral-CSRF: 1"],
        Some("{}"),
        Some(&jar),
    );
    assert_eq!(
        real.status, 404,
        "past the gate, the VM is missing: {:?}",
        real
    );
    let users = d.https(&url, "GET", "/api/v1/users", &[], None, Some(&jar));
    assert_eq!(users.status, 403, "an operator cannot list users");

    // The daemon ends the session itself, whatever the browser keeps: send the old
    // cookie by hand (curl's jar would drop it at Max-Age).
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .trim();
    std::thread::sleep(Duration::from_millis(3500));
    let old_cookie = format!("Cookie: {value}");
    let expired = d.https(&url, "GET", "/api/v1/vms", &[&old_cookie], None, None);
    assert_eq!(expired.status, 401, "{:?}", expired);
    assert!(expired.body["hint"].as_str().unwrap().contains("log in"));

    let entries = audit(&d);
    let failed = audited(&entries, "POST", "/api/v1/auth/login", 401);
    assert_eq!(failed["actor"], "alice");
    assert_eq!(
        audited(&entries, "POST", "/api/v1/auth/login", 200)["actor"],
        "alice"
    );
    assert_eq!(
        audited(&entries, "GET", "/api/v1/vms", 401)["detail"],
        "the session has expired or was ended"
    );
    assert!(
        !d.log().contains("correct horse"),
        "passwords never reach the log"
    );
}

#[test]
fn failed_logins_are_throttled_even_for_the_right_password() {
    let (d, url) = Daemon::start_remote(&[]);
    add_user(&d, "bob", "bobs password", "viewer");
    let login = |password: &str| {
        let body = format!(r#"{{"username":"bob","password":"{password}"}}"#);
        d.https(&url, "POST", "/api/v1/auth/login", &[], Some(&body), None)
    };
    for _ in 0..5 {
        assert_eq!(login("guess guess").status, 401);
    }
    let blocked = login("bobs password");
    assert_eq!(blocked.status, 429, "{:?}", blocked);
    assert!(blocked.headers.to_lowercase().contains("retry-after:"));
    assert_eq!(
        audited(&audit(&d), "POST", "/api/v1/auth/login", 429)["actor"],
        "bob"
    );
}

#[test]
fn users_are_managed_by_admins_and_a_new_password_ends_sessions() {
    let (d, url) = Daemon::start_remote(&[]);
    add_user(&d, "carol", "carols password", "admin");
    let (status, body) = d.http(
        "POST",
        "/api/v1/users",
        r#"{"username":"dave","password":"short","role":"viewer"}"#,
    );
    assert_eq!((status, body["field"].as_str()), (400, Some("password")));
    let (status, _) = d.http(
        "POST",
        "/api/v1/users",
        r#"{"username":"carol","password":"another one","role":"viewer"}"#,
    );
    assert_eq!(status, 409);
    let (status, body) = d.http(
        "POST",
        "/api/v1/users",
        r#"{"username":"dave","password":"daves password","role":"root"}"#,
    );
    assert_eq!(status, 400, "{body}");

    let jar_dir = tempfile::tempdir().unwrap();
    let jar = jar_dir.path().join("cookies");
    let body = r#"{"username":"carol","password":"carols password"}"#;
    assert_eq!(
        d.https(
            &url,
            "POST",
            "/api/v1/auth/login",
            &[],
            Some(body),
            Some(&jar)
        )
        .status,
        200
    );
    let made = d.https(
        &url,
        "POST",
        "/api/v1/users",
        &["X-Corral-CSRF: 1"],
        Some(r#"{"username":"erin","password":"erins password","role":"viewer"}"#),
        Some(&jar),
    );
    assert_eq!(made.status, 201, "{:?}", made);
    let (status, _) = d.http(
        "PATCH",
        "/api/v1/users/carol",
        r#"{"password":"a new password"}"#,
    );
    assert_eq!(status, 200);
    let after = d.https(&url, "GET", "/api/v1/users", &[], None, Some(&jar));
    assert_eq!(
        after.status, 401,
        "the old session ended with the password change"
    );
    let (status, _) = d.http("DELETE", "/api/v1/users/erin", "");
    assert_eq!(status, 200);
    let (_, users) = d.http("GET", "/api/v1/users", "");
    assert_eq!(users.as_array().unwrap().len(), 1);
}

#[test]
fn the_cli_makes_tokens_and_users_and_reads_the_audit_log() {
    let (d, url) = Daemon::start_remote(&[]);
    let made = d.json(&[
        "token",
        "create",
        "dash",
        "--role",
        "viewer",
        "--expires",
        "1h",
    ]);
    let token = made["token"].as_str().unwrap();
    assert!(token.starts_with("corral_"), "{made}");
    assert_eq!(made["role"], "viewer");
    let listed = d.ok(&["token", "list"]);
    assert!(
        listed.contains("dash") && !listed.contains(token),
        "{listed}"
    );
    let r = d.https(
        &url,
        "GET",
        "/api/v1/auth/whoami",
        &[&format!("Authorization: Bearer {token}")],
        None,
        None,
    );
    assert_eq!(r.body["role"], "viewer");
    assert!(d
        .fails(&["token", "create", "x", "--role", "root"])
        .contains("viewer"));

    let added = std::process::Command::new(corral_tests::bin("corral"))
        .env("CORRAL_SOCKET", &d.socket)
        .args([
            "user",
            "add",
            "frank",
            "--role",
            "operator",
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(b"franks password\n");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let login = d.https(
        &url,
        "POST",
        "/api/v1/auth/login",
        &[],
        Some(r#"{"username":"frank","password":"franks password"}"#),
        None,
    );
    assert_eq!(login.status, 200);
    assert!(d.ok(&["user", "list"]).contains("operator"));
    let id = made["id"].as_str().unwrap();
    d.ok(&["token", "revoke", id]);
    let r = d.https(
        &url,
        "GET",
        "/api/v1/vms",
        &[&format!("Authorization: Bearer {token}")],
        None,
        None,
    );
    assert_eq!(r.status, 401, "a revoked token is refused");
    let audit = d.ok(&["audit", "--limit", "20"]);
    assert!(
        audit.contains("/api/v1/tokens") && audit.contains("401"),
        "{audit}"
    );
    assert!(d.ok(&["whoami"]).contains("admin"));
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}
