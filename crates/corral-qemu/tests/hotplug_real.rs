//! Disk hot-plug against a real, confined QEMU 7.2 running a real Linux guest.
//!
//! QEMU is started the way Corral starts it — `-runas 65534:65534`, `-chroot`
//! into a private runtime directory, `-sandbox on,…` — and the images live in
//! another root-only directory it cannot reach, so only fd passing can make
//! the attach work. Needs root and `/usr/bin/qemu-system-x86_64`; skipped
//! otherwise. TCG only (KVM is unusable on the test hosts).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_api::DiskFormat;
use corral_qemu::hotplug::{
    attach_disk, detach_disk, detach_disk_with_timeout, list_block, resize_disk, BlockNode, HotBus,
    HotDisk, HotplugError,
};
use corral_qemu::qmp::{FdsetInfo, Qmp, QmpError, QmpOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const QEMU_IMG: &str = "/usr/bin/qemu-img";
const MIB: u64 = 1024 * 1024;
const BOOT_WAIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);

/// Kills and reaps QEMU however the test ends.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn skip_reason() -> Option<String> {
    if !Path::new(QEMU).exists() || !Path::new(QEMU_IMG).exists() {
        return Some(format!("{QEMU} or {QEMU_IMG} is not installed"));
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (QEMU runs with -runas and -chroot)".to_owned());
    }
    None
}

/// The test guest's kernel and initrd, built on first use.
fn guest() -> (PathBuf, PathBuf) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("CORRAL_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("build/guest"));
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    if !kernel.exists() || !initrd.exists() {
        let status = Command::new("bash")
            .arg(workspace.join("scripts/build-test-guest.sh"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "building the test guest failed: {status}");
    }
    (kernel, initrd)
}

/// A root-only temporary directory under /tmp.
fn private_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// The guest's serial console, driven over QEMU's chardev socket.
struct Console {
    writer: OwnedWriteHalf,
    output: Arc<Mutex<String>>,
    seq: u32,
}

impl Console {
    async fn connect(sock: &Path) -> Console {
        let stream = UnixStream::connect(sock).await.unwrap();
        let (mut reader, writer) = stream.into_split();
        let output = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&output);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Console {
            writer,
            output,
            seq: 0,
        }
    }

    /// Run `cmd` in the guest shell and return its output. The markers are
    /// typed with a quote in the middle, so the echoed input never matches.
    async fn run(&mut self, cmd: &str) -> String {
        self.seq += 1;
        let n = self.seq;
        let (begin, end) = (format!("@@{n}<"), format!("@@{n}>"));
        let line = format!("echo '@@{n}''<'; {cmd}; echo '@@{n}''>'\n");
        self.writer.write_all(line.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            {
                let out = self.output.lock().unwrap();
                if let Some(start) = out.find(&begin) {
                    let body = &out[start + begin.len()..];
                    if let Some(stop) = body.find(&end) {
                        return body[..stop].replace('\r', "").trim().to_owned();
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "guest did not run {cmd:?}; console so far:\n{}",
                self.output.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run `cmd` until its output satisfies `ok` (the guest reacts to hot-plug
    /// asynchronously), returning the last output.
    async fn run_until(&mut self, cmd: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let out = self.run(cmd).await;
            if ok(&out) || tokio::time::Instant::now() >= deadline {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A confined QEMU running the test guest, as Corral runs it.
struct Vm {
    dir: tempfile::TempDir,
    qmp: Qmp,
    console: Console,
    qemu: QemuGuard,
}

impl Vm {
    async fn boot() -> Vm {
        let (kernel, initrd) = guest();
        let dir = private_dir("corral-hotplug-vm-");
        let d = dir.path();
        let stderr = std::fs::File::create(d.join("qemu.stderr")).unwrap();
        let child = Command::new(QEMU)
            .args(["-accel", "tcg", "-M", "pc", "-m", "256"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                d.join("qmp.sock").display()
            ))
            .args([
                "-sandbox",
                "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
            ])
            .args(["-runas", "65534:65534"])
            .arg("-chroot")
            .arg(d)
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=s0,path={},server=on,wait=off,logfile={}",
                d.join("con.sock").display(),
                d.join("serial.log").display()
            ))
            .args(["-serial", "chardev:s0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut qemu = QemuGuard(child);

        let deadline = tokio::time::Instant::now() + BOOT_WAIT;
        let qmp = loop {
            if let Some(status) = qemu.0.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(d.join("qemu.stderr")).unwrap_or_default();
                panic!("QEMU exited early ({status}): {stderr}");
            }
            if d.join("qmp.sock").exists() {
                // The QMP traffic log, for when something here fails.
                let opts = QmpOptions {
                    log_path: Some(d.join("qmp.log")),
                    ..QmpOptions::default()
                };
                match Qmp::connect(&d.join("qmp.sock"), opts).await {
                    Ok(qmp) => break qmp,
                    Err(QmpError::Connect { .. }) => {}
                    Err(e) => panic!("QMP handshake failed: {e}"),
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no QMP socket");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            let log = std::fs::read_to_string(d.join("serial.log")).unwrap_or_default();
            if log.contains("CORRAL-GUEST-READY") {
                break;
            }
            if let Some(status) = qemu.0.try_wait().unwrap() {
                panic!("QEMU exited during boot ({status}): {log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "guest never became ready:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let console = Console::connect(&d.join("con.sock")).await;
        Vm {
            dir,
            qmp,
            console,
            qemu,
        }
    }

    /// Drop the QMP connection and make a new one, as a restarted daemon would.
    async fn reconnect(self) -> Vm {
        let Vm {
            dir,
            qmp,
            console,
            qemu,
        } = self;
        // QEMU serves one QMP client at a time: the new one is greeted once the old is gone.
        drop(qmp);
        let qmp = Qmp::connect(&dir.path().join("qmp.sock"), QmpOptions::default())
            .await
            .unwrap();
        Vm {
            dir,
            qmp,
            console,
            qemu,
        }
    }

    async fn node(&self, name: &str) -> Option<BlockNode> {
        list_block(&self.qmp)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.node_name == name)
    }

    /// How many descriptors QEMU holds on `image` (from /proc, as root).
    fn open_fds_on(&self, image: &Path) -> usize {
        let fds = format!("/proc/{}/fd", self.qemu.0.id());
        std::fs::read_dir(fds)
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == image)
            .count()
    }

    async fn fdsets(&self) -> Vec<FdsetInfo> {
        self.qmp.query_fdsets().await.unwrap()
    }

    async fn guest_disks(&mut self) -> Vec<String> {
        let out = self.console.run("ls /sys/block").await;
        let mut disks: Vec<String> = out
            .split_whitespace()
            .filter(|d| d.starts_with("vd"))
            .map(str::to_owned)
            .collect();
        disks.sort();
        disks
    }

    async fn wait_guest_disks(&mut self, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let disks = self.guest_disks().await;
            if disks == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "guest disks {disks:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new(QEMU_IMG).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn disk(node: &str, path: &Path, format: DiskFormat, read_only: bool) -> HotDisk {
    HotDisk {
        node: node.to_owned(),
        path: path.to_owned(),
        format,
        read_only,
        bus: HotBus::VirtioBlk,
        ports: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotplug_on_confined_qemu() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let mut vm = Vm::boot().await;
    let images = private_dir("corral-hotplug-img-");
    let qcow2 = images.path().join("data.qcow2");
    let raw = images.path().join("seed.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        qcow2.to_str().unwrap(),
        "64M",
    ]);
    let mut seed = b"corral-ro-seed".to_vec();
    seed.resize(usize::try_from(16 * MIB).unwrap(), 0);
    std::fs::write(&raw, &seed).unwrap();

    // QEMU really runs confined: unprivileged, chrooted into its runtime dir.
    let pid = vm.qemu.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>()[1..],
        ["65534"; 4]
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        vm.dir.path()
    );
    assert!(vm.fdsets().await.is_empty());
    assert_eq!(vm.guest_disks().await, Vec::<String>::new());

    // Proof that QEMU cannot reach the images by path: it is chrooted.
    let by_path = vm
        .qmp
        .execute_raw(
            "blockdev-add",
            Some(json!({"driver": "file", "node-name": "probe", "filename": qcow2, "read-only": true})),
        )
        .await
        .unwrap_err();
    println!("blockdev-add by path (expected to fail): {by_path}");
    assert!(by_path.is_class("GenericError"), "{by_path:?}");
    assert!(vm.node("probe").await.is_none());

    // --- read-write qcow2 --------------------------------------------------
    let rw = disk("hot1", &qcow2, DiskFormat::Qcow2, false);
    attach_disk(&vm.qmp, &rw).await.unwrap();
    let node = vm.node("hot1").await.unwrap();
    println!("attached: {node:?}");
    assert_eq!(node.driver, "qcow2");
    assert!(!node.read_only);
    assert_eq!(node.virtual_size, 64 * MIB);
    let fdset = node.fdset_id().unwrap();
    let sets = vm.fdsets().await;
    println!("fdsets: {sets:?}");
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].fdset_id, fdset);
    assert_eq!(sets[0].fds[0].opaque.as_deref(), Some("hot1"));
    // The set's two descriptors (read-write, and read-only for a later live snapshot)
    // plus the one dup QEMU opened for the node: no other open (reopen, lock fd).
    assert_eq!(vm.open_fds_on(&qcow2), 3);
    // The guest sees it, and it is writable.
    vm.wait_guest_disks(&["vda"]).await;
    assert_eq!(vm.console.run("cat /sys/block/vda/size").await, "131072");
    assert_eq!(vm.console.run("cat /sys/block/vda/ro").await, "0");
    let out = vm
        .console
        .run("echo hello-through-fdset > /dev/vda && sync && echo WROTE-OK")
        .await;
    assert!(out.contains("WROTE-OK"), "{out}");

    // --- resize --------------------------------------------------------------
    resize_disk(&vm.qmp, "hot1", 128 * MIB).await.unwrap();
    assert_eq!(vm.node("hot1").await.unwrap().virtual_size, 128 * MIB);
    let size = vm
        .console
        .run_until("cat /sys/block/vda/size", |s| s == "262144")
        .await;
    assert_eq!(size, "262144", "guest did not see the new capacity");

    // --- read-only raw, alongside ------------------------------------------
    let ro = disk("hot2", &raw, DiskFormat::Raw, true);
    attach_disk(&vm.qmp, &ro).await.unwrap();
    let node = vm.node("hot2").await.unwrap();
    assert_eq!(node.driver, "raw");
    assert!(node.read_only);
    assert_eq!(node.virtual_size, 16 * MIB);
    assert_eq!(vm.fdsets().await.len(), 2);
    assert_eq!(vm.open_fds_on(&raw), 2);
    vm.wait_guest_disks(&["vda", "vdb"]).await;
    assert_eq!(vm.console.run("cat /sys/block/vdb/ro").await, "1");
    assert_eq!(
        vm.console.run("head -c 14 /dev/vdb; echo").await,
        "corral-ro-seed"
    );

    // --- failures leave nothing behind -------------------------------------
    let before_sets = vm.fdsets().await;
    let before_nodes = list_block(&vm.qmp).await.unwrap();

    // A node name that exists: blockdev-add refuses, the new fd set is removed.
    let dup = disk("hot1", &raw, DiskFormat::Raw, true);
    let e = attach_disk(&vm.qmp, &dup).await.unwrap_err();
    println!("duplicate node: {e}: {:?}", e.qmp());
    assert!(
        matches!(
            e,
            HotplugError::Qmp {
                command: "blockdev-add",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(vm.fdsets().await, before_sets);
    assert_eq!(list_block(&vm.qmp).await.unwrap(), before_nodes);

    // Wrong format: qcow2 over a raw file.
    let e = attach_disk(&vm.qmp, &disk("hot3", &raw, DiskFormat::Qcow2, true))
        .await
        .unwrap_err();
    println!("wrong format: {e}: {:?}", e.qmp());
    assert!(matches!(
        e,
        HotplugError::Qmp {
            command: "blockdev-add",
            ..
        }
    ));
    assert_eq!(vm.fdsets().await, before_sets);

    // device_add fails (its id is taken by another device): the node is deleted too.
    vm.qmp
        .execute_raw(
            "device_add",
            Some(json!({"driver": "virtio-rng-pci", "id": "hot4-dev"})),
        )
        .await
        .unwrap();
    let e = attach_disk(&vm.qmp, &disk("hot4", &raw, DiskFormat::Raw, true))
        .await
        .unwrap_err();
    println!("device id taken: {e}: {:?}", e.qmp());
    assert!(matches!(
        e,
        HotplugError::Qmp {
            command: "device_add",
            ..
        }
    ));
    assert_eq!(vm.fdsets().await, before_sets);
    assert_eq!(list_block(&vm.qmp).await.unwrap(), before_nodes);
    let mut events = vm.qmp.events();
    vm.qmp
        .execute_raw("device_del", Some(json!({"id": "hot4-dev"})))
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.name == "DEVICE_DELETED" && ev.data["device"] == "hot4-dev" {
            break;
        }
    }

    // Missing image: nothing reaches QEMU.
    let e = attach_disk(
        &vm.qmp,
        &disk("hot5", &images.path().join("nope"), DiskFormat::Raw, true),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HotplugError::Open { .. }), "{e:?}");
    assert_eq!(vm.fdsets().await, before_sets);

    // QEMU 7.2 only dups an fd set member whose access mode matches: a
    // read-only descriptor cannot back a read-write node.
    let ro_file = std::fs::File::open(&raw).unwrap();
    let added = vm
        .qmp
        .add_fd(std::os::fd::AsFd::as_fd(&ro_file), None, "mode-probe")
        .await
        .unwrap();
    let mismatch = vm
        .qmp
        .execute_raw(
            "blockdev-add",
            Some(json!({"driver": "raw", "node-name": "probe", "read-only": false, "file": {
                "driver": "file", "filename": format!("/dev/fdset/{}", added.fdset_id), "read-only": false}})),
        )
        .await
        .unwrap_err();
    println!("O_RDONLY fd for a read-write node: {mismatch}");
    vm.qmp.remove_fd(added.fdset_id, None).await.unwrap();
    assert_eq!(vm.fdsets().await, before_sets);
    drop(ro_file);
    // Of the raw image, only hot2's two descriptors remain: every failed
    // attempt above closed what it had passed.
    assert_eq!(vm.open_fds_on(&raw), 2);

    // --- daemon restart: a new connection finds the sets by their tags -----
    let before_sets = vm.fdsets().await;
    let mut vm = vm.reconnect().await;
    assert_eq!(vm.fdsets().await, before_sets);
    assert_eq!(vm.open_fds_on(&qcow2), 3);

    // --- detach ------------------------------------------------------------
    detach_disk(&vm.qmp, "hot1").await.unwrap();
    assert!(vm.node("hot1").await.is_none());
    let sets = vm.fdsets().await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].fds[0].opaque.as_deref(), Some("hot2"));
    vm.wait_guest_disks(&["vdb"]).await;

    // A guest that does not answer (vCPUs paused): the detach times out and
    // leaves the disk fully attached; once the guest runs, a retry finishes.
    vm.qmp.stop().await.unwrap();
    let e = detach_disk_with_timeout(&vm.qmp, "hot2", Duration::from_secs(1))
        .await
        .unwrap_err();
    println!("paused guest: {e}");
    assert!(matches!(e, HotplugError::UnplugTimeout { .. }), "{e:?}");
    assert!(vm.node("hot2").await.is_some());
    assert_eq!(vm.fdsets().await.len(), 1);
    vm.qmp.cont().await.unwrap();
    detach_disk(&vm.qmp, "hot2").await.unwrap();
    assert!(vm.node("hot2").await.is_none());
    assert!(vm.fdsets().await.is_empty());
    assert_eq!(vm.open_fds_on(&qcow2), 0);
    assert_eq!(vm.open_fds_on(&raw), 0);
    vm.wait_guest_disks(&[]).await;
    // Nothing left of the file nodes either.
    let left: Vec<_> = list_block(&vm.qmp).await.unwrap();
    assert!(left.is_empty(), "{left:?}");

    // A second detach finds nothing.
    let e = detach_disk(&vm.qmp, "hot1").await.unwrap_err();
    assert!(matches!(e, HotplugError::NotAttached { .. }), "{e:?}");

    // QEMU let go of the image (no lock held), and the guest's write landed in it.
    let plain = images.path().join("data.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        qcow2.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]);
    let data = std::fs::read(&plain).unwrap();
    assert_eq!(data.len() as u64, 128 * MIB);
    assert!(data.starts_with(b"hello-through-fdset\n"));
    vm.qmp.quit().await.unwrap();
}

/// QEMU 7.2 frees fd-set descriptors only while the VM runs: a rollback on a
/// paused VM leaves the (marked-removed) set behind, and the next attach of the
/// same node, once the VM runs again, sweeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_paused_vm_is_finished_later() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let vm = Vm::boot().await;
    let images = private_dir("corral-hotplug-img-");
    let raw = images.path().join("plain.raw");
    std::fs::write(&raw, vec![0u8; usize::try_from(MIB).unwrap()]).unwrap();

    vm.qmp.stop().await.unwrap();
    // qcow2 over a raw file: blockdev-add fails, the rollback removes the set...
    let e = attach_disk(&vm.qmp, &disk("hot1", &raw, DiskFormat::Qcow2, true))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        HotplugError::Qmp {
            command: "blockdev-add",
            ..
        }
    ));
    // ...but the paused QEMU only marks it: still listed, image still open.
    let sets = vm.fdsets().await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].fds[0].opaque.as_deref(), Some("hot1"));
    assert_eq!(vm.open_fds_on(&raw), 1);

    // Running again frees nothing by itself.
    vm.qmp.cont().await.unwrap();
    assert_eq!(vm.fdsets().await.len(), 1);

    // The next attach of hot1 sweeps the leftover, then works.
    attach_disk(&vm.qmp, &disk("hot1", &raw, DiskFormat::Raw, true))
        .await
        .unwrap();
    let sets = vm.fdsets().await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(
        Some(sets[0].fdset_id),
        vm.node("hot1").await.unwrap().fdset_id()
    );
    assert_eq!(vm.open_fds_on(&raw), 2);

    detach_disk(&vm.qmp, "hot1").await.unwrap();
    assert!(vm.fdsets().await.is_empty());
    assert_eq!(vm.open_fds_on(&raw), 0);
    vm.qmp.quit().await.unwrap();
}
