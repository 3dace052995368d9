//! Networks end to end: a real corrald in a network namespace made by the test, real
//! bridges, dnsmasq, nftables and passt, and test guests that get their addresses by
//! DHCP. An "outside" namespace joined by a veth pair stands in for the world beyond
//! the host's uplink; nothing leaves these namespaces.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_tests::{Daemon, NetNs, World};
use serde_json::Value;

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET url` from inside `ns`: the body, or `None` if it failed.
fn http_get(ns: &NetNs, url: &str) -> Option<String> {
    let code = format!(
        "import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode(), end='')"
    );
    let out = ns.command("python3").args(["-c", &code]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `ip` answers ping from `ns`. dnsmasq records a lease when it sends
/// the ACK, before the guest's DHCP client has put the address on its interface, so
/// a loaded host can see the lease a few seconds before the guest answers.
fn wait_ping(ns: &NetNs, ip: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("{ip} to answer ping"),
        || ns.exec(&["ping", "-c", "1", "-W", "2", ip]),
    );
}

fn nic(vm: &Value) -> &Value {
    &vm["spec"]["nics"][0]
}

/// The VM's address on its first NIC once the network's DHCP server has leased it.
fn wait_lease(d: &Daemon, network: &str, vm: &str) -> String {
    let mac = nic(&d.json(&["show", vm]))["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let mut address = String::new();
    wait_until(Duration::from_secs(60), "a DHCP lease", || {
        let net = d.json(&["network", "show", network]);
        let found = net["leases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["mac"] == mac.as_str());
        if let Some(l) = found {
            address = l["address"].as_str().unwrap().to_string();
        }
        found.is_some()
    });
    address
}

#[test]
fn nat_network_dhcp_masquerade_forwards_and_restarts() {
    let w = World::new("nat");
    let mut d = Daemon::start_in(&w.host, &["--accel", "tcg"]);

    // The default network, made on the first start as root.
    let nets = d.json(&["network", "list"]);
    let default = &nets.as_array().unwrap()[0];
    assert_eq!(default["name"], "default");
    assert_eq!(default["type"], "nat");
    assert_eq!(default["status"]["bridge_up"], true, "{default}");
    assert_eq!(default["status"]["dhcp_running"], true, "{default}");
    let subnet = default["subnet"].as_str().unwrap().to_string();
    let bridge = default["bridge"].as_str().unwrap().to_string();

    // Without --network a VM joins the default network, with a reserved address.
    d.boot("web", &[]);
    let vm = d.json(&["show", "web"]);
    assert_eq!(nic(&vm)["kind"], "network");
    assert_eq!(nic(&vm)["source"], "default");
    let reserved = nic(&vm)["ip"].as_str().unwrap().to_string();
    let leased = wait_lease(&d, "default", "web");
    assert_eq!(leased, reserved, "dnsmasq honours the reservation");
    let listed = d.json(&["list"]);
    let addresses = listed[0]["addresses"].to_string();
    assert!(
        addresses.contains(&format!("\"address\":\"{leased}\"")) && addresses.contains("dhcp"),
        "corral list shows the leased address: {addresses}"
    );
    assert!(d.ok(&["list"]).contains(&leased), "the IP column");
    wait_ping(&w.host, &leased);

    // Out through the masquerade: the outside sees the host's uplink address.
    d.guest_run(
        "web",
        "wget -q -O /tmp/got http://198.51.100.2:8080/ && cat /tmp/got",
    );
    assert!(d.console_log("web").contains("hello from outside"));
    let log = std::fs::read_to_string(&w.server_log).unwrap();
    assert!(log.contains("198.51.100.1"), "masqueraded source: {log}");

    // A port forward: the outside reaches the guest's web server on the host's port.
    d.guest_run(
        "web",
        "mkdir -p /www && echo corral-forward-ok > /www/index.html && httpd -p 80 -h /www",
    );
    d.ok(&["network", "forward", "add", "default", "8080", "web:80"]);
    let body = http_get(&w.outside, "http://198.51.100.1:8080/");
    assert_eq!(body.as_deref(), Some("corral-forward-ok\n"));
    // The host itself, on its own address, through the same forward.
    assert_eq!(
        http_get(&w.host, "http://198.51.100.1:8080/").as_deref(),
        Some("corral-forward-ok\n")
    );
    let err = d.fails(&["network", "forward", "add", "default", "8080", "web:81"]);
    assert!(err.contains("already forwarded to web:80"), "{err}");

    // In use: refused, nothing changed.
    let err = d.fails(&["network", "delete", "default"]);
    assert!(err.contains("in use by VM(s) web"), "{err}");

    // The daemon dies: the guest keeps its network.
    d.kill9();
    wait_ping(&w.host, &leased);
    assert_eq!(
        http_get(&w.outside, "http://198.51.100.1:8080/").as_deref(),
        Some("corral-forward-ok\n")
    );
    d.restart();
    assert_eq!(d.state("web"), "running");

    // A host reboot leaves nothing: no bridge, no tables, no dnsmasq. The next start
    // makes them all again, and the VM gets its address back.
    d.ok(&["stop", "web", "--force"]);
    d.kill9();
    for pid in w.host.pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    w.host.exec_ok(&["ip", "link", "del", &bridge]);
    w.host
        .exec_ok(&["nft", "delete", "table", "inet", "corral"]);
    d.restart();
    let net = d.json(&["network", "show", "default"]);
    assert_eq!(net["status"]["bridge_up"], true, "{net}");
    assert_eq!(net["status"]["dhcp_running"], true, "{net}");
    assert_eq!(net["subnet"], subnet.as_str());
    assert!(w
        .host
        .exec_ok(&["nft", "list", "tables"])
        .contains("inet corral"));
    d.ok(&["start", "web"]);
    d.wait_console("web", "CORRAL-GUEST-READY", Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "ping after the restart", || {
        w.host.exec(&["ping", "-c", "1", "-W", "2", &reserved])
    });
    d.ok(&["network", "forward", "remove", "default", "8080"]);
    d.ok(&["delete", "web", "--force"]);
    d.ok(&["network", "delete", "default"]);
    assert!(
        !w.host.exec(&["ip", "link", "show", &bridge]),
        "bridge removed"
    );
}

/// `corral create NAME --network SPEC` of a test guest, whatever its outcome.
fn create(d: &Daemon, name: &str, network: &str) -> std::process::Output {
    let mut args = vec![
        "create".to_string(),
        name.into(),
        "--network".into(),
        network.into(),
    ];
    args.extend(corral_tests::guest_args());
    d.corral(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Links in a namespace, to check a refused request made none.
fn links(ns: &NetNs) -> String {
    ns.exec_ok(&["ip", "-br", "link"])
}

#[test]
fn bad_network_requests_name_the_field_and_make_nothing() {
    let w = World::new("bad");
    let d = Daemon::start_in(&w.host, &["--accel", "tcg", "--no-default-network"]);
    d.ok(&["network", "create", "lab", "--subnet", "10.0.7.1/24"]);
    let before = (links(&w.host), d.json(&["network", "list"]));
    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "x", "--subnet", "10.0.7.129/25"],
            "overlaps network 'lab'",
        ),
        (
            &["network", "create", "x", "--subnet", "198.51.100.9/24"],
            "which this host already has",
        ),
        (
            &["network", "create", "x", "--subnet", "10.0.8.0/24"],
            "network's own or broadcast",
        ),
        (
            &["network", "create", "x", "--subnet", "10.0.8/24"],
            "not an IPv4 address",
        ),
        (
            &[
                "network", "create", "x", "--type", "bridge", "--bridge", "nosuchbr",
            ],
            "nosuchbr",
        ),
        (
            &["network", "create", "x", "--type", "bridge"],
            "which host bridge",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--bridge",
                "a-bridge-name-too-long",
            ],
            "not a usable interface name",
        ),
        (
            &["network", "create", "x", "--type", "isolated", "--dhcp"],
            "DHCP needs a subnet",
        ),
        (
            &["network", "create", "lab", "--subnet", "10.0.9.1/24"],
            "already exists",
        ),
    ];
    for (args, expected) in cases {
        let err = d.fails(args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(before, (links(&w.host), d.json(&["network", "list"])));

    // VM NICs: each mistake names its field; no VM is left.
    let nic_cases: &[(&str, &str)] = &[
        ("nosuch", "network 'nosuch' not found"),
        ("lab,ip=10.0.8.5", "not a free host address"),
        ("lab,ip=10.0.7.1", "not a free host address"),
        ("lab,vlan=10", "VLAN"),
        ("bridge=nosuchbr", "bridge nosuchbr does not exist"),
        ("bridge=lo", "lo is not a bridge"),
        ("bridge=../../x", "not a usable interface name"),
    ];
    for (spec, expected) in nic_cases {
        let out = create(&d, "v", spec);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{spec}: {err}"
        );
    }
    assert!(d.json(&["list"]).as_array().unwrap().is_empty());

    // A reserved address cannot be taken twice; a forward needs a VM on the network.
    d.define("a", &["--network", "lab,ip=10.0.7.50"]);
    let out = create(&d, "b", "lab,ip=10.0.7.50");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already reserved"));
    d.define("u", &["--network", "user"]);
    let err = d.fails(&["network", "forward", "add", "lab", "2222", "u:22"]);
    assert!(
        err.contains("no NIC with an address on network 'lab'"),
        "{err}"
    );
    let err = d.fails(&["network", "forward", "add", "lab", "2222", "ghost:22"]);
    assert!(err.contains("vm 'ghost' not found"), "{err}");
    let err = d.fails(&[
        "firewall",
        "add",
        "u",
        "deny",
        "--protocol",
        "tcp",
        "--port",
        "22",
    ]);
    assert!(err.contains("no bridged NIC"), "{err}");
    let err = d.fails(&["firewall", "add", "a", "deny", "--port", "22"]);
    assert!(err.contains("needs protocol tcp or udp"), "{err}");
    let err = d.fails(&["network", "delete", "lab"]);
    assert!(err.contains("in use by VM(s) a"), "{err}");

    // Another owner's firewall (Docker sets its FORWARD policy to drop): reported, never
    // changed, and Corral's own changes leave it alone.
    w.host.exec_ok(&["nft", "add", "table", "ip", "filter"]);
    w.host.exec_ok(&[
        "nft",
        "add",
        "chain",
        "ip",
        "filter",
        "FORWARD",
        "{ type filter hook forward priority 0; policy drop; }",
    ]);
    let theirs = w.host.exec_ok(&["nft", "list", "table", "ip", "filter"]);
    let lab = d.json(&["network", "show", "lab"]);
    let warnings = lab["status"]["warnings"].to_string();
    assert!(
        warnings.contains("policy drop") && warnings.contains("FORWARD"),
        "{warnings}"
    );
    assert!(d.ok(&["network", "show", "lab"]).contains("WARNING"));
    d.ok(&["network", "create", "lab2", "--subnet", "10.0.10.1/24"]);
    d.ok(&["network", "delete", "lab2"]);
    assert_eq!(
        w.host.exec_ok(&["nft", "list", "table", "ip", "filter"]),
        theirs
    );
}

#[test]
fn isolated_network_and_host_bridge() {
    let w = World::new("iso");
    let d = Daemon::start_in(&w.host, &["--accel", "tcg", "--no-default-network"]);
    d.ok(&[
        "network",
        "create",
        "back",
        "--type",
        "isolated",
        "--subnet",
        "10.0.9.1/24",
    ]);
    d.boot("a", &["--network", "back"]);
    d.boot("b", &["--network", "back"]);
    let ip_a = wait_lease(&d, "back", "a");
    let ip_b = wait_lease(&d, "back", "b");
    // VM to VM and host to VM work; nothing leaves for the outside.
    d.guest_run("a", &format!("ping -c 1 -W 3 {ip_b} && echo PING-B-OK"));
    assert!(d.console_log("a").contains("PING-B-OK"));
    wait_ping(&w.host, &ip_a);
    d.guest_run(
        "a",
        "ip route add default via 10.0.9.1; wget -q -T 3 -O - http://198.51.100.2:8080/ || echo NO-WAY-OUT",
    );
    assert!(d.console_log("a").contains("NO-WAY-OUT"));

    // An existing host bridge: NICs join it, Corral never removes it.
    w.host
        .exec_ok(&["ip", "link", "add", "hostbr0", "type", "bridge"]);
    w.host.exec_ok(&["ip", "link", "set", "hostbr0", "up"]);
    d.ok(&[
        "network", "create", "lan", "--type", "bridge", "--bridge", "hostbr0",
    ]);
    d.boot("c", &["--network", "lan", "--network", "bridge=hostbr0"]);
    let ports = w
        .host
        .exec_ok(&["ip", "-br", "link", "show", "master", "hostbr0"]);
    assert_eq!(ports.lines().count(), 2, "both taps on the bridge: {ports}");
    d.ok(&["delete", "c", "--force"]);
    wait_until(Duration::from_secs(10), "taps gone with QEMU", || {
        w.host
            .exec_ok(&["ip", "-br", "link", "show", "master", "hostbr0"])
            .trim()
            .is_empty()
    });
    d.ok(&["network", "delete", "lan"]);
    assert!(
        w.host.exec(&["ip", "link", "show", "hostbr0"]),
        "the host's bridge stays"
    );
}

#[test]
fn user_nics_get_an_address_from_passt() {
    let w = World::new("user");
    let d = Daemon::start_in(&w.host, &["--accel", "tcg", "--no-default-network"]);
    // No managed network: the default NIC is user-mode.
    d.boot("u", &[]);
    assert_eq!(nic(&d.json(&["show", "u"]))["kind"], "user");
    // passt hands the guest the host's own address and route, and carries its traffic
    // (to .3: passt maps the gateway's own address, .2, to the host itself).
    d.guest_run(
        "u",
        "sleep 3; ip -4 addr show eth0; wget -q -O - http://198.51.100.3:8080/",
    );
    let console = d.console_log("u");
    assert!(console.contains("inet 198.51.100.1/24"), "{console}");
    assert!(console.contains("hello from outside"), "{console}");
    d.ok(&["stop", "u", "--force"]);
    // passt ends with its QEMU.
    wait_until(Duration::from_secs(10), "passt to exit", || {
        !w.host.exec(&["pgrep", "-x", "passt"])
    });
}

#[test]
fn firewall_rules_filter_a_vms_traffic() {
    let w = World::new("fw");
    let mut d = Daemon::start_in(&w.host, &["--accel", "tcg"]);
    d.boot("web", &[]);
    let ip = wait_lease(&d, "default", "web");
    d.guest_run(
        "web",
        "mkdir -p /www && echo fw-ok > /www/index.html && httpd -p 80 -h /www && httpd -p 81 -h /www",
    );
    let url = |port: u16| format!("http://{ip}:{port}/");
    assert_eq!(http_get(&w.host, &url(80)).as_deref(), Some("fw-ok\n"));
    d.ok(&[
        "firewall",
        "add",
        "web",
        "deny",
        "--protocol",
        "tcp",
        "--port",
        "80",
    ]);
    assert_eq!(http_get(&w.host, &url(80)), None, "port 80 denied");
    assert_eq!(
        http_get(&w.host, &url(81)).as_deref(),
        Some("fw-ok\n"),
        "81 still open"
    );
    // Ordered, first match wins: an allow for the host's subnet before the deny.
    d.ok(&["firewall", "clear", "web"]);
    d.ok(&[
        "firewall",
        "add",
        "web",
        "allow",
        "--protocol",
        "tcp",
        "--port",
        "80",
        "--cidr",
        "198.51.100.0/24",
    ]);
    d.ok(&["firewall", "add", "web", "deny", "--protocol", "tcp"]);
    let rules = d.json(&["firewall", "list", "web"]);
    assert_eq!(rules.as_array().unwrap().len(), 2);
    assert_eq!(http_get(&w.host, &url(81)), None, "all other tcp denied");
    // The guest's own connections out still get their replies.
    d.guest_run(
        "web",
        "wget -q -O - http://198.51.100.2:8080/ && echo OUT-OK",
    );
    assert!(d.console_log("web").contains("OUT-OK"));
    // Outbound rules: the guest may not reach the outside's port 8080.
    d.ok(&[
        "firewall",
        "add",
        "web",
        "deny",
        "--direction",
        "out",
        "--protocol",
        "tcp",
        "--port",
        "8080",
    ]);
    d.guest_run(
        "web",
        "wget -q -T 3 -O - http://198.51.100.2:8080/ || echo OUT-DENIED",
    );
    assert!(d.console_log("web").contains("OUT-DENIED"));
    // Rules survive a daemon restart (they live in the store and the kernel).
    d.restart();
    assert_eq!(
        http_get(&w.host, &url(81)),
        None,
        "still denied after a restart"
    );
    d.ok(&["firewall", "clear", "web"]);
    assert_eq!(http_get(&w.host, &url(81)).as_deref(), Some("fw-ok\n"));
}

/// A client that hangs up while its change is under way (a script killed, a browser tab
/// closed) must not cut that change short halfway: each network is whole (listed, its
/// bridge up with its address, its dnsmasq running) — or, had it never started, absent
/// with nothing left behind.
#[test]
fn a_change_runs_to_completion_when_the_client_hangs_up() {
    use std::io::Write;
    let ns = corral_tests::NetNs::new("hangup");
    let d = Daemon::start_in(&ns, &["--accel", "tcg", "--no-default-network"]);
    for i in 0..6u64 {
        let body = format!(r#"{{"name":"hu{i}","type":"nat","subnet":"10.77.{i}.1/24"}}"#);
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        write!(
            s,
            "POST /api/v1/networks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // Hang up at different moments of the work.
        std::thread::sleep(Duration::from_millis(i * 15));
        drop(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let listed = d.json(&["network", "list"]);
    for i in 0..6 {
        let name = format!("hu{i}");
        let net = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name.as_str());
        let addr = format!("10.77.{i}.1/24");
        let on_host = ns.exec_ok(&["ip", "-o", "addr"]).contains(&addr);
        match net {
            Some(net) => {
                assert!(
                    on_host,
                    "{name} is listed but its bridge has no {addr}: {net}"
                );
                let bridge = net["bridge"].as_str().unwrap();
                let dnsmasq = ns.exec_ok(&["sh", "-c", "pgrep -a dnsmasq || true"]);
                assert!(
                    dnsmasq.contains(bridge) || dnsmasq.contains(&name),
                    "{name}: no dnsmasq: {dnsmasq}"
                );
            }
            None => assert!(!on_host, "{name} is not listed but {addr} is on a bridge"),
        }
    }
}
