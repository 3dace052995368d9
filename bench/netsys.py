"""The three systems bench/network.py boots a Debian guest with: Corral (its CLI), libvirt
(virt-install) and raw QEMU. Each one's `start(i)` is the timed "create and start" and
returns a `Vm` whose address the bench polls; everything else here is set-up and
cleanup, untimed."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import libvirt

from bench import log

MEMORY_MIB = 1024
# libvirt's default network as Debian ships it, for a host that has none defined.
LV_DEFAULT_NET = "/usr/share/libvirt/networks/default.xml"
LV_POOL = "cb-net-pool"
# virt-install writes the cloud-init ISO here (and removes it once the domain runs).
LV_BOOT_DIR = "/var/lib/libvirt/boot"
LV_BOOT_POOL = "cb-net-boot"
# libvirt's network driver keeps each network's dnsmasq files here.
LV_DNSMASQ_DIR = "/var/lib/libvirt/dnsmasq"
RAW_BRIDGE = "cbnet0"
RAW_TAP = "cbnettap0"
# The raw floor's bridge subnet: the first of these no host interface is on.
RAW_SUBNETS = ("10.213.77.0/24", "10.213.78.0/24", "172.31.213.0/24")


def run(*argv: str, timeout: float = 120) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])}…: exit {p.returncode}: "
                           f"{(p.stderr or p.stdout).strip()}")
    return p.stdout


def user_data(pub_key: str) -> str:
    """What `corral create --ssh-key` asks cloud-init for: the key for the image's default
    user (`debian`), nothing else. libvirt and raw QEMU get exactly this."""
    with open(pub_key) as f:
        key = f.read().strip()
    return f"#cloud-config\nssh_authorized_keys:\n  - {key}\n"


def first_ipv4(addresses) -> str | None:
    for a in addresses:
        try:
            if ipaddress.ip_address(a).version == 4:
                return a
        except ValueError:
            pass
    return None


class Vm:
    """One booted guest: how to find its address, whether it still runs, how to remove it."""

    def __init__(self, name: str, console: str | None = None):
        self.name = name
        self.ip: str | None = None
        # The guest's serial output, kept by the bench for a look at where boots go.
        self.console = console

    def find_ip(self) -> str | None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError


class System:
    key = ""

    def setup(self) -> None:
        """Makes what the system's guests need on the host (untimed); `close` undoes it,
        also after a `setup` that failed half-way."""

    def bridges(self) -> list[str]:
        """The host bridges its guests sit on (for the guard)."""
        return []

    def start(self, i: int) -> Vm:
        raise NotImplementedError

    def details(self, vm: Vm) -> dict:
        return {}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- Corral


def find_key(obj, key: str):
    """The first value under `key` anywhere in a JSON document (the CLI's field layout is
    new: look for it rather than hard-code a path)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


class CorralVm(Vm):
    def __init__(self, name: str, sys_: "Corral"):
        super().__init__(name)
        self.sys = sys_
        if sys_.state_dir:
            uuid = find_key(json.loads(sys_.cli("show", name, "-o", "json")), "uuid")
            self.console = os.path.join(sys_.state_dir, "run", str(uuid), "console.log")

    def entry(self) -> dict | None:
        for vm in json.loads(self.sys.cli("list", "-o", "json")):
            if vm.get("name") == self.name or find_key(vm.get("spec", {}), "name") == self.name:
                return vm
        return None

    def find_ip(self) -> str | None:
        vm = self.entry()
        addrs = find_key(vm, "addresses") if vm else None
        return first_ipv4(a.get("address", "") for a in addrs or [])

    def alive(self) -> bool:
        vm = self.entry()
        state = find_key(vm, "state") if vm else None
        return vm is not None and state not in ("stopped", "crashed", "failed")

    def teardown(self) -> None:
        try:
            self.sys.cli("delete", self.name, "--force")
        except RuntimeError as e:
            log(f"  corral delete {self.name} --force: {e}; stop, then delete")
            self.sys.cli("stop", self.name, "--force")
            self.sys.cli("delete", self.name)


class Corral(System):
    """`corral create NAME --image IMG --memory 1G --network nat --ssh-key K --start` on the
    `default` NAT network corrald makes at its first start as root."""

    key = "corral"

    def __init__(self, args, pub_key: str, work: Path):
        self.base = [args.corral, "--socket", args.socket]
        self.state_dir = args.state_dir
        self.image = args.image
        self.pub_key = pub_key
        self.argv: list[str] = []
        self.bridge = ""

    def cli(self, *argv: str) -> str:
        return run(*self.base, *argv)

    def setup(self) -> None:
        try:
            bridge = find_key(json.loads(self.cli("network", "show", "default", "-o", "json")),
                              "bridge")
        except (RuntimeError, json.JSONDecodeError) as e:
            raise RuntimeError(f"Corral's default network: {e} (is corrald running as root "
                               "with networking? --skip-corral leaves Corral out)") from e
        if not bridge:
            raise RuntimeError("Corral's default network names no bridge")
        self.bridge = bridge

    def bridges(self) -> list[str]:
        return [self.bridge]

    def start(self, i: int) -> Vm:
        name = f"cb-net-corral-{i + 1}"
        self.argv = [*self.base, "create", name, "--image", self.image, "--memory", "1G",
                     "--network", "nat", "--ssh-key", self.pub_key, "--start"]
        run(*self.argv)
        return CorralVm(name, self)

    def details(self, vm: Vm) -> dict:
        return {"argv": self.argv, "vm": json.loads(self.cli("show", vm.name, "-o", "json"))}

    def close(self) -> None:
        # corrald (fresh state dir, this run's) made the network at its first start.
        self.cli("network", "delete", "default")


# ---------------------------------------------------------------------------- libvirt


class LibvirtVm(Vm):
    def __init__(self, name: str, sys_: "Libvirt"):
        super().__init__(name, sys_.console_log(name))
        self.sys = sys_
        self.dom = sys_.conn.lookupByName(name)

    def find_ip(self) -> str | None:
        """`virsh domifaddr NAME --source lease`: libvirt's dnsmasq lease for the NIC."""
        try:
            ifs = self.dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        except libvirt.libvirtError:
            return None
        return first_ipv4(a["addr"] for i in ifs.values() for a in i.get("addrs") or [])

    def alive(self) -> bool:
        return bool(self.dom.isActive())

    def teardown(self) -> None:
        if self.dom.isActive():
            self.dom.destroy()
        self.dom.undefine()
        pool = self.sys.pool
        pool.refresh(0)
        pool.storageVolLookupByName(f"{self.name}.qcow2").delete(0)
        Path(self.sys.console_log(self.name)).unlink(missing_ok=True)


class Libvirt(System):
    """`virt-install --import --cloud-init user-data=…` on libvirt's `default` network,
    which the run starts (and defines) if it has to, and stops (and undefines) again."""

    key = "libvirt"

    def __init__(self, args, conn, pub_key: str, work: Path):
        self.conn = conn
        self.images = args.lv_images
        self.image = args.image
        self.user_data = work / "lv-user-data"
        self.user_data.write_text(user_data(pub_key))
        info = json.loads(run("qemu-img", "info", "--output=json", "-U", args.image))
        self.size_gib = info["virtual-size"] / (1 << 30)
        self.argv: list[str] = []
        self.defined_net = self.started_net = False
        self.net = self.pool = None
        self.pools = []
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.ip_forward = f.read().strip()
        self.dnsmasq_files = set(os.listdir(LV_DNSMASQ_DIR)) if os.path.isdir(
            LV_DNSMASQ_DIR) else None

    def setup(self) -> None:
        conn = self.conn
        try:
            self.net = conn.networkLookupByName("default")
        except libvirt.libvirtError:
            self.net = conn.networkDefineXML(Path(LV_DEFAULT_NET).read_text())
            self.defined_net = True
            log("defined libvirt's default network (undefined again at the end)")
        if not self.net.isActive():
            self.net.create()
            self.started_net = True
            log("started libvirt's default network (stopped again at the end)")
        # Pools for the directories virt-install writes to, or it defines persistent,
        # autostarted ones of its own for them (named after the directory: `boot`).
        self.pool = self.transient_pool(LV_POOL, self.images)
        self.transient_pool(LV_BOOT_POOL, LV_BOOT_DIR)

    def transient_pool(self, name: str, path: str):
        """A dir pool until the end of the run, unless one for `path` exists."""
        for p in self.conn.listAllStoragePools(0):
            if f"<path>{path}</path>" in p.XMLDesc(0):
                if not p.isActive():
                    raise RuntimeError(f"libvirt pool {p.name()} for {path} is not active")
                return p
        pool = self.conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target>"
            "</pool>", 0)
        self.pools.append(pool)
        return pool

    def console_log(self, name: str) -> str:
        return os.path.join(self.images, f"{name}.console.log")

    def bridges(self) -> list[str]:
        return [self.net.bridgeName()]

    def start(self, i: int) -> Vm:
        name = f"cb-net-lv-{i + 1}"
        disk = (f"path={self.images}/{name}.qcow2,size={self.size_gib:g},format=qcow2,"
                f"backing_store={self.image},backing_format=qcow2,bus=virtio")
        self.argv = ["virt-install", "--connect", "qemu:///system", "--name", name,
                     "--memory", str(MEMORY_MIB), "--vcpus", "1", "--virt-type", "qemu",
                     "--machine", "pc", "--os-variant", "debian11", "--import",
                     "--disk", disk, "--network", "network=default,model=virtio",
                     "--cloud-init", f"user-data={self.user_data}", "--graphics", "none",
                     "--serial", f"file,path={self.console_log(name)}", "--noautoconsole"]
        run(*self.argv)
        return LibvirtVm(name, self)

    def details(self, vm: Vm) -> dict:
        return {"argv": self.argv, "xml": vm.dom.XMLDesc(0)}

    def close(self) -> None:
        for d in self.conn.listAllDomains(0):
            if d.name().startswith("cb-net-lv-"):
                log(f"cleanup: libvirt domain {d.name()} left over")
                if d.isActive():
                    d.destroy()
                d.undefine()
        for p in self.pools:
            p.destroy()
        if self.started_net:
            self.net.destroy()
            # The network's dnsmasq files (config, leases) stay behind: drop the new ones.
            for f in set(os.listdir(LV_DNSMASQ_DIR)) - (self.dnsmasq_files or set()):
                os.unlink(os.path.join(LV_DNSMASQ_DIR, f))
        if self.defined_net:
            self.net.undefine()
        # Starting a NAT network turns forwarding on for good; put it back.
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(self.ip_forward + "\n")


# ---------------------------------------------------------------------------- raw QEMU


class RawVm(Vm):
    def __init__(self, name: str, sys_: "Raw", proc: subprocess.Popen, mac: str, files):
        super().__init__(name, str(sys_.dir / f"{name}.console.log"))
        self.sys, self.proc, self.mac, self.files = sys_, proc, mac, files

    def find_ip(self) -> str | None:
        try:
            lines = self.sys.leases.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            f = line.split()
            if len(f) >= 3 and f[1] == self.mac:
                return f[2]
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def teardown(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["ip", "link", "del", RAW_TAP], capture_output=True)
        for f in self.files:
            Path(f).unlink(missing_ok=True)


class Raw(System):
    """The floor: what any manager has to do at least. An overlay (`qemu-img create -b`),
    a NoCloud seed ISO, a tap on a bridge whose dnsmasq hands out addresses, and QEMU
    with the same machine, memory, CPU count and virtio NIC and disk."""

    key = "raw"

    def __init__(self, args, pub_key: str, work: Path):
        self.dir = work / "raw"
        self.dir.mkdir(exist_ok=True)
        self.image = args.image
        self.user_data = self.dir / "user-data"
        self.user_data.write_text(user_data(pub_key))
        self.leases = self.dir / "dnsmasq.leases"
        self.argv: list[str] = []
        self.dnsmasq = None
        self.net = None

    def setup(self) -> None:
        used = json.loads(run("ip", "-j", "-4", "addr"))
        taken = [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
                 for i in used for a in i.get("addr_info", [])]
        self.net = next((ipaddress.ip_network(n) for n in RAW_SUBNETS
                         if not any(ipaddress.ip_network(n).overlaps(t) for t in taken)), None)
        if self.net is None:
            raise RuntimeError(f"no free subnet for the raw bridge among {RAW_SUBNETS}")
        hosts = list(self.net.hosts())
        gw, lo, hi = hosts[0], hosts[9], hosts[-5]
        run("ip", "link", "add", RAW_BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{gw}/{self.net.prefixlen}", "dev", RAW_BRIDGE)
        run("ip", "link", "set", RAW_BRIDGE, "up")
        # DHCP for the guest; DNS on the bridge address only, with no upstream servers
        # (--no-resolv): every query is refused at once and nothing leaves the host.
        self.dnsmasq = subprocess.Popen(
            ["dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--bind-interfaces",
             f"--interface={RAW_BRIDGE}", "--except-interface=lo", f"--listen-address={gw}",
             "--no-resolv", "--no-hosts", "--dhcp-authoritative",
             f"--dhcp-range={lo},{hi},{self.net.netmask},1h",
             f"--dhcp-leasefile={self.leases}", "--pid-file=",
             f"--log-facility={self.dir}/dnsmasq.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def bridges(self) -> list[str]:
        return [RAW_BRIDGE]

    def start(self, i: int) -> Vm:
        name = f"cb-net-raw-{i + 1}"
        overlay, seed, meta = (self.dir / f"{name}{ext}" for ext in (".qcow2", ".iso", ".meta"))
        mac = f"52:54:00:cb:{(i + 1) // 256:02x}:{(i + 1) % 256:02x}"
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.image,
            str(overlay))
        meta.write_text(f"instance-id: {name}\nlocal-hostname: {name}\n")
        run("genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata", "-joliet",
            "-rock", "-graft-points", f"user-data={self.user_data}", f"meta-data={meta}")
        run("ip", "tuntap", "add", "dev", RAW_TAP, "mode", "tap")
        run("ip", "link", "set", RAW_TAP, "master", RAW_BRIDGE, "up")
        self.argv = [
            "qemu-system-x86_64", "-name", name, "-machine", "pc", "-accel", "tcg",
            "-m", str(MEMORY_MIB), "-smp", "1", "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", f"file:{self.dir}/{name}.console.log",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={seed},format=raw,if=ide,media=cdrom,readonly=on",
            "-netdev", f"tap,id=n0,ifname={RAW_TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        files = [overlay, seed, meta, self.dir / f"{name}.console.log"]
        return RawVm(name, self, proc, mac, files)

    def details(self, vm: Vm) -> dict:
        return {"argv": self.argv, "subnet": str(self.net)}

    def close(self) -> None:
        if self.dnsmasq:
            self.dnsmasq.terminate()
            self.dnsmasq.wait(10)
        subprocess.run(["ip", "link", "del", RAW_TAP], capture_output=True)
        subprocess.run(["ip", "link", "del", RAW_BRIDGE], capture_output=True)
