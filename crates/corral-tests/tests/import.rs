//! `volume import` and `create --from-ova` end to end: local files and URLs served on
//! loopback, every format, an OVA appliance, and bad sources that leave nothing behind.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_tests::Daemon;

/// `python3 -m http.server` on 127.0.0.1 (only), killed on drop.
struct Server(Child, u16);

impl Server {
    fn serve(dir: &Path) -> Server {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server(child, port)
    }
    fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_img(args: &[&str]) {
    let ok = Command::new("qemu-img").args(args).status().unwrap();
    assert!(ok.success(), "qemu-img {args:?}");
}

fn assert_nothing_left(d: &Daemon, volumes: usize) {
    assert_eq!(
        d.json(&["volume", "list"]).as_array().unwrap().len(),
        volumes
    );
    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");
    let hidden: Vec<_> = std::fs::read_dir(d.state_dir().join("pools/default"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".corral-"))
        .collect();
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
}

#[test]
fn imports_every_format_from_files_and_urls() {
    let d = Daemon::start();
    let src = d.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let raw = src.join("disk.raw");
    let mut data = vec![0u8; 4 << 20];
    data[..9].copy_from_slice(b"corral-ok");
    data[3 << 20] = 7;
    std::fs::write(&raw, &data).unwrap();
    let raw_s = raw.display().to_string();
    for fmt in ["qcow2", "vmdk", "vhdx", "vdi"] {
        let out = src.join(format!("disk.{fmt}"));
        qemu_img(&["convert", "-O", fmt, &raw_s, out.to_str().unwrap()]);
    }
    for (i, fmt) in ["raw", "qcow2", "vmdk", "vhdx", "vdi"].iter().enumerate() {
        let name = format!("from-{fmt}");
        let file = src.join(format!("disk.{fmt}"));
        d.ok(&["volume", "import", file.to_str().unwrap(), "--name", &name]);
        let v = d.json(&["volume", "show", &name]);
        assert_eq!(v["format"], "qcow2");
        qemu_img(&["compare", &raw_s, v["path"].as_str().unwrap()]);
        assert_eq!(d.json(&["volume", "list"]).as_array().unwrap().len(), i + 1);
    }

    let server = Server::serve(&src);
    d.ok(&[
        "volume",
        "import",
        &server.url("disk.vmdk"),
        "--name",
        "from-url",
        "--format",
        "raw",
    ]);
    let v = d.json(&["volume", "show", "from-url"]);
    assert_eq!(v["format"], "raw");
    qemu_img(&["compare", &raw_s, v["path"].as_str().unwrap()]);
    assert_nothing_left(&d, 6);

    // Bad sources: clear errors, nothing half-made.
    let err = d.fails(&[
        "volume",
        "import",
        &server.url("missing.qcow2"),
        "--name",
        "x1",
    ]);
    assert!(err.contains("404"), "{err}");
    std::fs::write(
        src.join("page.html"),
        b"<html><body>not a disk</body></html>\n",
    )
    .unwrap();
    let err = d.fails(&["volume", "import", &server.url("page.html"), "--name", "x2"]);
    assert!(
        err.to_lowercase().contains("html") || err.contains("not a disk"),
        "{err}"
    );
    let corrupt = src.join("corrupt.qcow2");
    let mut bytes = std::fs::read(src.join("disk.qcow2")).unwrap();
    bytes[4..8].copy_from_slice(&[0xff; 4]);
    std::fs::write(&corrupt, bytes).unwrap();
    let err = d.fails(&[
        "volume",
        "import",
        corrupt.to_str().unwrap(),
        "--name",
        "x3",
    ]);
    assert!(err.contains("corrupt") || err.contains("qcow2"), "{err}");
    let err = d.fails(&[
        "volume",
        "import",
        "/nonexistent/disk.qcow2",
        "--name",
        "x4",
    ]);
    assert!(err.contains("source"), "{err}");
    let err = d.fails(&[
        "volume",
        "import",
        raw.to_str().unwrap(),
        "--name",
        "from-raw",
    ]);
    assert!(err.contains("already exists"), "{err}");
    let (status, body) = d.http(
        "POST",
        "/api/v1/volumes/import",
        r#"{"name":"x5","source":"relative/disk.raw"}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(body["field"], "source");
    assert_nothing_left(&d, 6);
}

/// A minimal OVF 1.0 descriptor: 2 vCPUs, 192 MiB, one disk.
const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="appliance-disk1.vmdk"/></References>
  <DiskSection><Info>Disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="4194304" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="appliance"><Info>A VM</Info><Name>appliance</Name>
    <VirtualHardwareSection><Info>Hardware</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>192</rasd:VirtualQuantity></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

#[test]
fn create_from_ova() {
    let d = Daemon::start();
    let work = d.dir.path().join("ova");
    std::fs::create_dir(&work).unwrap();
    let raw = work.join("d.raw");
    let mut data = vec![0u8; 4 << 20];
    data[..7].copy_from_slice(b"ova-ok!");
    std::fs::write(&raw, &data).unwrap();
    let vmdk = work.join("appliance-disk1.vmdk");
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        raw.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    std::fs::write(work.join("appliance.ovf"), OVF).unwrap();
    let ova = work.join("appliance.ova");
    let ok = Command::new("tar")
        .args([
            "-cf",
            ova.to_str().unwrap(),
            "-C",
            work.to_str().unwrap(),
            "appliance.ovf",
            "appliance-disk1.vmdk",
        ])
        .status()
        .unwrap();
    assert!(ok.success());

    d.define(
        "app",
        &["--from-ova", ova.to_str().unwrap(), "--network", "none"],
    );
    let vm = d.vm("app");
    assert_eq!(vm["spec"]["vcpus"], 2);
    assert_eq!(vm["spec"]["memory_mib"], 192);
    let disk = &vm["spec"]["disks"][0];
    assert_eq!(disk["volume"], "app-ova");
    qemu_img(&[
        "compare",
        raw.to_str().unwrap(),
        disk["path"].as_str().unwrap(),
    ]);
    // The command line wins over the descriptor.
    d.define(
        "app2",
        &[
            "--from-ova",
            ova.to_str().unwrap(),
            "--vcpus",
            "1",
            "--memory",
            "128M",
        ],
    );
    assert_eq!(d.vm("app2")["spec"]["vcpus"], 1);
    assert_eq!(d.vm("app2")["spec"]["memory_mib"], 128);
    d.start_and_wait("app");
    d.ok(&["stop", "app", "--force"]);
}

#[test]
fn work_left_by_a_killed_daemon_is_swept_at_restart() {
    let mut d = Daemon::start();
    let pool = d.state_dir().join("pools/default");
    let part = pool.join(".corral-import-big-1-2-3.part");
    std::fs::write(&part, vec![1u8; 1 << 20]).unwrap();
    let ova_dir = pool.join(".corral-ova-abc");
    std::fs::create_dir(&ova_dir).unwrap();
    std::fs::write(ova_dir.join("disk.vmdk"), b"x").unwrap();
    d.restart();
    assert!(!part.exists() && !ova_dir.exists());
    let events = d.json(&["events"]);
    assert!(
        events.to_string().contains("interrupted operation"),
        "{events}"
    );
    assert_nothing_left(&d, 0);
}
