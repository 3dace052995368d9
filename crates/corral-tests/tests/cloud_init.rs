//! Provisioning with cloud-init: the seed CD the guest sees, its regeneration on change,
//! refusals of bad input, and `create --image PATH` on a user's image file.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_tests::{guest_args, Daemon, BOOT};

/// An ed25519 key pair made by ssh-keygen in `dir`: (private, public).
fn key_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tester@corral", "-f"])
        .arg(&private)
        .status()
        .unwrap();
    assert!(ok.success());
    (private.clone(), private.with_extension("pub"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A file of an ISO image, read on the host with isoinfo (from genisoimage).
fn iso_file(iso: &Path, name: &str) -> String {
    let out = Command::new("isoinfo")
        .args(["-R", "-x", &format!("/{name}"), "-i"])
        .arg(iso)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn sha256_of(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, text).unwrap();
    sha256(&f)
}

/// Mounts the seed CD in the test guest and has it print the SHA-256 of `meta-data`
/// and `user-data` (between markers it computes, so the echo of the typed command is
/// not mistaken for them). Hashes rather than content: under load the serial log now
/// and then shows a character twice, which a hash line reveals (it is then re-read).
fn guest_seed_hashes(d: &Daemon, vm: &str) -> (String, String) {
    static ROUND: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..3 {
        let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cmd = format!(
            "mkdir -p /mnt/seed && mount -t iso9660 -o ro /dev/sr0 /mnt/seed && \
             cd /mnt/seed && echo SEED{round}-$((40+2)) $(sha256sum meta-data user-data); \
             cd /; umount /mnt/seed"
        );
        d.guest_run(vm, &cmd);
        let log = d.console_log(vm).replace('\r', "");
        let marker = format!("SEED{round}-42 ");
        let line = log
            .lines()
            .find_map(|l| l.strip_prefix(&marker))
            .unwrap_or_else(|| panic!("no seed hashes:\n{log}"))
            .to_string();
        let words: Vec<&str> = line.split_whitespace().collect();
        let hash = |w: &str| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit());
        if let [m, "meta-data", u, "user-data"] = words[..] {
            if hash(m) && hash(u) {
                return (m.to_string(), u.to_string());
            }
        }
    }
    panic!(
        "the guest's seed hashes could not be read:\n{}",
        d.console_log(vm)
    );
}

/// The seed's files as the host has them, after checking the guest reads the same.
fn read_seed(d: &Daemon, vm: &str, iso: &Path) -> (String, String) {
    let meta = iso_file(iso, "meta-data");
    let user = iso_file(iso, "user-data");
    let (guest_meta, guest_user) = guest_seed_hashes(d, vm);
    assert_eq!(guest_meta, sha256_of(&meta), "meta-data in the guest");
    assert_eq!(guest_user, sha256_of(&user), "user-data in the guest");
    (meta, user)
}

fn instance_id(meta: &str) -> String {
    meta.lines()
        .find_map(|l| l.strip_prefix("instance-id: "))
        .unwrap()
        .to_string()
}

#[test]
fn seed_cd_carries_the_config_and_follows_updates() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let (_, public) = key_pair(dir);
    let key = std::fs::read_to_string(&public).unwrap();
    let user_data = write(
        dir,
        "ud.yaml",
        "#cloud-config\nruncmd:\n  - [echo, from-user-data]\n",
    );
    let key_arg = public.display().to_string();
    let ud_arg = format!("user-data={user_data}");
    d.boot(
        "ci1",
        &[
            "--network",
            "none",
            "--ssh-key",
            &key_arg,
            "--hostname",
            "guest-one",
            "--cloud-init",
            &ud_arg,
        ],
    );
    d.wait_console("ci1", "CORRAL-GUEST-READY", BOOT);
    let vm = d.vm("ci1");
    let uuid = vm["spec"]["uuid"].as_str().unwrap().to_string();
    assert_eq!(vm["spec"]["cloud_init"]["hostname"], "guest-one");
    let seed = d.state_dir().join(format!("cloud-init/{uuid}.iso"));
    assert!(seed.is_file());

    let (meta, user) = read_seed(&d, "ci1", &seed);
    let first_id = instance_id(&meta);
    assert!(first_id.starts_with(&format!("{uuid}-")), "{meta}");
    assert!(meta.contains("local-hostname: guest-one\n"), "{meta}");
    // The user's part and ours, merged by cloud-init: both travel in one MIME message.
    assert!(user.contains("MIME-Version: 1.0"), "{user}");
    assert!(user.contains("from-user-data"), "{user}");
    assert!(user.contains(key.trim()), "{user}");
    assert!(user.contains("hostname: guest-one"), "{user}");

    let shown = d.ok(&["show", "ci1"]);
    assert!(shown.contains("Cloud-init:"), "{shown}");
    assert!(shown.contains("tester@corral (ssh-ed25519)"), "{shown}");
    assert!(!shown.contains(key.split(' ').nth(1).unwrap()), "{shown}");

    // A new host name: a new seed with a new instance id at the next start.
    d.ok(&["stop", "ci1", "--force"]);
    let out = d.ok(&["update", "ci1", "--hostname", "guest-two"]);
    assert!(out.contains("cloud-init"), "{out}");
    d.start_and_wait("ci1");
    let (meta, user) = read_seed(&d, "ci1", &seed);
    assert_ne!(instance_id(&meta), first_id);
    assert!(meta.contains("local-hostname: guest-two\n"), "{meta}");
    assert!(user.contains(key.trim()), "the keys stay: {user}");
    assert!(user.contains("from-user-data"), "{user}");

    // Removing the config removes the seed; deleting the VM leaves nothing behind.
    d.ok(&["stop", "ci1", "--force"]);
    d.ok(&["update", "ci1", "--no-cloud-init"]);
    assert!(!seed.exists());
    assert!(d.vm("ci1")["spec"].get("cloud_init").is_none());
    d.ok(&["update", "ci1", "--user", "alice"]);
    d.ok(&["start", "ci1"]);
    assert!(seed.is_file(), "rebuilt at start");
    d.ok(&["delete", "ci1", "--force"]);
    assert_eq!(
        std::fs::read_dir(d.state_dir().join("cloud-init"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn bad_cloud_init_input_names_the_field_and_makes_nothing() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let (private, public) = key_pair(dir);
    let g = guest_args();
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "bad", "--network", "none", "--disk", "size=16M"];
        args.extend_from_slice(extra);
        args.extend(g.iter().map(String::as_str));
        d.fails(&args)
    };
    let err = create(&["--ssh-key", private.to_str().unwrap()]);
    assert!(
        err.contains("private key") && err.contains("--ssh-key"),
        "{err}"
    );
    assert!(err.contains(".pub"), "the hint names the public key: {err}");
    let err = create(&["--ssh-key", "/nonexistent.pub"]);
    assert!(err.contains("cannot read"), "{err}");
    let err = create(&["--hostname=-bad-"]);
    assert!(err.contains("cloud_init.hostname"), "{err}");
    let err = create(&["--user", "Root User"]);
    assert!(err.contains("cloud_init.user"), "{err}");
    let bad_yaml = write(dir, "net.yaml", "version: 2\nethernets: [\n");
    let err = create(&["--cloud-init", &format!("network-config={bad_yaml}")]);
    assert!(err.contains("cloud_init.network_config"), "{err}");
    assert!(err.contains("not valid YAML"), "{err}");
    let no_header = write(dir, "ud", "packages: [htop]\n");
    let err = create(&["--cloud-init", &format!("user-data={no_header}")]);
    assert!(
        err.contains("cloud_init.user_data") && err.contains("#cloud-config"),
        "{err}"
    );

    // The API says the same, with the key's index in the field.
    let body = serde_json::json!({
        "name": "bad", "memory_mib": 256, "vcpus": 1, "disks": [{"new": {"size_bytes": 16777216}}],
        "cloud_init": {"ssh_authorized_keys": [std::fs::read_to_string(&public).unwrap(), "ssh-rsa AAAA"]}
    });
    let (status, reply) = d.http("POST", "/api/v1/vms", &body.to_string());
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["field"], "cloud_init.ssh_authorized_keys[1]");

    // Nothing was made: no VM, no volume, no seed.
    assert_eq!(d.json(&["list"]), serde_json::json!([]));
    assert_eq!(d.json(&["volume", "list"]), serde_json::json!([]));
    assert!(
        !d.state_dir().join("cloud-init").exists()
            || std::fs::read_dir(d.state_dir().join("cloud-init"))
                .unwrap()
                .count()
                == 0
    );

    // An update with a bad value changes nothing either.
    d.define("good", &["--network", "none", "--hostname", "fine"]);
    let err = d.fails(&["update", "good", "--hostname", "not_valid"]);
    assert!(err.contains("cloud_init.hostname"), "{err}");
    assert_eq!(d.vm("good")["spec"]["cloud_init"]["hostname"], "fine");

    // A seed whose VM was never recorded (a daemon killed mid-create) goes at the next
    // start-up; the seeds of existing VMs stay.
    let seeds = d.state_dir().join("cloud-init");
    let uuid = d.vm("good")["spec"]["uuid"].as_str().unwrap().to_string();
    let stray = seeds.join("00000000-1111-2222-3333-444444444444.iso");
    std::fs::write(&stray, b"x").unwrap();
    std::fs::create_dir(seeds.join(format!(".building-{uuid}"))).unwrap();
    let mut d = d;
    d.restart();
    assert!(!stray.exists());
    assert!(!seeds.join(format!(".building-{uuid}")).exists());
    assert!(seeds.join(format!("{uuid}.iso")).is_file());
    assert!(seeds.join(format!("{uuid}.iso.sha256")).is_file());
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn image_file_as_base_is_never_touched() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let base = dir.join("base.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x61 0 64k"])
        .arg(&base)
        .status()
        .unwrap();
    assert!(ok.success());
    let before = sha256(&base);
    let base_arg = base.display().to_string();

    d.boot("img1", &["--network", "none", "--image", &base_arg]);
    d.wait_console("img1", "CORRAL-GUEST-READY", BOOT);
    let log = d.console_log("img1");
    assert!(log.contains("disk /dev/vda 131072 sectors"), "{log}");
    let vm = d.vm("img1");
    let disk = &vm["spec"]["disks"][0];
    assert_eq!(disk["owned"], true);
    assert_eq!(disk["volume"], "img1-disk0");
    let volume = d.json(&["volume", "show", "img1-disk0"]);
    assert_eq!(volume["base_file"], base_arg);
    // The guest reads the base and writes into its own overlay.
    d.guest_run(
        "img1",
        "head -c 4 /dev/vda; echo; dd if=/dev/zero of=/dev/vda bs=64k count=2 2>/dev/null; sync",
    );
    assert!(d.console_log("img1").contains("aaaa"));

    // Snapshots on a running VM, then the root's delete (rebases onto the base file).
    d.ok(&["snapshot", "create", "img1", "s1"]);
    d.ok(&["snapshot", "create", "img1", "s2"]);
    d.ok(&["stop", "img1", "--force"]);
    d.op_succeeds(&["snapshot", "delete", "img1", "s1"]);
    d.ok(&["clone", "img1", "full"]);
    d.ok(&["clone", "img1", "linked", "--linked"]);
    d.start_and_wait("linked");
    d.ok(&["delete", "linked", "--force"]);
    d.ok(&["delete", "full"]);
    d.ok(&["delete", "img1"]);
    assert_eq!(sha256(&base), before, "the base file was modified");
    assert!(base.is_file());
    d.assert_pool_clean("default");
    assert_eq!(d.json(&["volume", "list"]), serde_json::json!([]));

    // A raw file works too; a file that is no image, or one of Corral's own, does not.
    let raw = dir.join("base.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    d.define(
        "raw1",
        &["--network", "none", "--image", raw.to_str().unwrap()],
    );
    let err = d.fails(&[
        "create",
        "x",
        "--image",
        &write(dir, "notes.txt", "<html>hi</html>\n"),
    ]);
    assert!(
        err.contains("image") && err.contains("not a disk image"),
        "{err}"
    );
    let err = d.fails(&["create", "x", "--image", "/nonexistent/disk.qcow2"]);
    assert!(err.contains("cannot use"), "{err}");
    let own = d.vm("raw1")["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let err = d.fails(&["create", "x", "--image", &own]);
    assert!(err.contains("pool 'default'"), "{err}");
    assert_eq!(d.json(&["list"]).as_array().unwrap().len(), 1);
    d.ok(&["delete", "raw1"]);
    assert!(raw.is_file());
}
