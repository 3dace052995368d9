#!/usr/bin/python3
"""Networking: Corral vs libvirt (virt-install) vs raw QEMU, side by side, one Debian 12
cloud image (scripts/build-debian-image.sh), 1 GiB, 1 vCPU, TCG. Driven by bench/run.sh
(`--only network`).

1. Create and start → the guest's sshd lets the injected key in (`ssh -o BatchMode=yes
   debian@IP true` succeeds), with the steps on the way: the create command returned,
   the guest's address is known (from the DHCP lease), sshd sent its banner.
   - Corral: `corral create NAME --image IMG --memory 1G --network nat --ssh-key K.pub
     --start`, address from `corral list -o json`.
   - libvirt: `virt-install --import --cloud-init user-data=…` on libvirt's `default` NAT
     network, address from the lease (`virsh domifaddr --source lease`'s call).
   - raw QEMU (the floor): `qemu-img create -b`, a NoCloud seed ISO (genisoimage), a tap
     on a bridge of this run's with a DHCP-only-ish dnsmasq (DNS answers nothing), and
     QEMU itself; address from dnsmasq's lease file.
2. host ↔ guest TCP throughput with iperf3 (host → guest and guest → host, N s each)
   on the VM each system just booted; the bench starts `iperf3 -s -D` in the guest
   over ssh (the image has iperf3 installed, not enabled as a service).

One VM exists at a time. Each round runs every system once, in a freshly shuffled
(seeded) order. Guests talk only to the host: every forwarded packet from or to the
guests' bridges is dropped (nft table `inet cb_netbench`), and the DNS queries the
guests send to the host are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import LV_URI, log, machine_info, stats  # noqa: E402
import netsys  # noqa: E402

BOOT_TIMEOUT_S = 600
IP_POLL_S = 0.5
TCP_POLL_S = 0.2
SSH_POLL_S = 0.5
# Pause before each boot, so the previous teardown has settled.
SETTLE_S = 2.0
IPERF_PORT = 5201
GUARD_TABLE = "cb_netbench"
SYSTEMS = ("corral", "libvirt", "raw")
LABEL = {"corral": "Corral", "libvirt": "libvirt (virt-install)", "raw": "raw QEMU"}


def sh(*argv: str, check: bool = True, timeout: float = 120) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}…: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


# ---------------------------------------------------------------------------- guest


class Ssh:
    def __init__(self, key: str):
        self.key = key

    def argv(self, ip: str, *cmd: str, connect_timeout: int = 5) -> list[str]:
        return ["ssh", "-i", self.key, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
                f"debian@{ip}", *cmd]

    def ok(self, ip: str, *cmd: str) -> bool:
        p = subprocess.run(self.argv(ip, *cmd), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        return p.returncode == 0

    def out(self, ip: str, script: str) -> str:
        p = subprocess.run(self.argv(ip, script), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"ssh {ip} {script!r}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout


def banner(ip: str, port: int = 22) -> bool:
    """True once something listens on ip:port and, for sshd, sent its banner."""
    try:
        with socket.create_connection((ip, port), timeout=1.0) as s:
            if port != 22:
                return True
            s.settimeout(2.0)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_sshd(vm: netsys.Vm, ssh: Ssh, t0: float) -> dict:
    """Seconds since t0 at which the guest's address was known, sshd's banner read, and
    `ssh … true` with the injected key first succeeded."""
    deadline = t0 + BOOT_TIMEOUT_S
    steps = {}

    def check(what: str) -> None:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{vm.name}: no {what} after {BOOT_TIMEOUT_S} s")
        if not vm.alive():
            raise RuntimeError(f"{vm.name}: the VM is gone while waiting for {what}")

    while not (ip := vm.find_ip()):
        check("address")
        time.sleep(IP_POLL_S)
    steps["ip_s"] = time.perf_counter() - t0
    vm.ip = ip
    while not banner(ip):
        check("sshd banner")
        time.sleep(TCP_POLL_S)
    steps["banner_s"] = time.perf_counter() - t0
    while not ssh.ok(ip, "true"):
        check("ssh login")
        time.sleep(SSH_POLL_S)
    steps["ssh_s"] = time.perf_counter() - t0
    return steps


GUEST_FACTS = r"""
read up _ < /proc/uptime; echo "uptime=$up"
for d in /sys/class/net/e*; do
  echo "nic=${d##*/} driver=$(basename "$(readlink "$d/device/driver")") mtu=$(cat "$d/mtu")"
done
echo "kernel=$(uname -r)"
# No sudo (and no systemctl, which wants D-Bus): sudo would look the hostname up in DNS.
w=/etc/systemd/system/multi-user.target.wants/iperf3.service
echo "iperf3_unit=$([ -e $w ] && echo enabled || echo disabled)"
echo "iperf3_running=$(pgrep -x iperf3 >/dev/null && echo yes || echo no)"
"""


def guest_facts(ssh: Ssh, ip: str) -> dict:
    out = {}
    for line in ssh.out(ip, GUEST_FACTS).splitlines():
        if line.startswith("nic="):
            out.setdefault("nics", []).append(line)
        elif "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def iperf(ssh: Ssh, ip: str, secs: int) -> dict:
    """Starts iperf3's server in the guest, then one run each way from the host."""
    ssh.out(ip, "pgrep -x iperf3 >/dev/null || iperf3 -s -D")
    deadline = time.monotonic() + 30
    while not banner(ip, IPERF_PORT):
        if time.monotonic() > deadline:
            raise TimeoutError(f"iperf3 server in {ip} does not answer")
        time.sleep(TCP_POLL_S)
    out = {}
    for key, extra in (("host_to_guest", []), ("guest_to_host", ["-R"])):
        argv = ["iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t", str(secs), "-J", *extra]
        for attempt in range(3):
            # iperf3 3.12's server sometimes resets the next test's control connection
            # when it comes right after the previous one: pause, and retry.
            time.sleep(2)
            p = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
            try:
                r = json.loads(p.stdout)
            except json.JSONDecodeError:
                r = {"error": p.stderr.strip() or "no JSON"}
            if "error" not in r and p.returncode == 0:
                break
            log(f"  iperf3 {key} attempt {attempt + 1}: {r.get('error')}")
        else:
            raise RuntimeError(f"iperf3 {key} to {ip}: {r.get('error')}")
        end = r["end"]
        out[key] = {"bits_per_second": end["sum_received"]["bits_per_second"],
                    "retransmits": end["sum_sent"].get("retransmits"),
                    "seconds": end["sum_received"]["seconds"]}
    return out


# ---------------------------------------------------------------------------- guard


class Guard:
    """Keeps the guests on this machine: drops every forwarded packet from or to their
    bridges (a drop in any base chain is final, whatever libvirt's or Corral's own
    rules accept), and counts the DNS queries guests send to the host's resolvers."""

    def __init__(self):
        self.bridges: list[str] = []

    def setup(self) -> None:
        sh("nft", "add", "table", "inet", GUARD_TABLE)
        sh("nft", "add", "chain", "inet", GUARD_TABLE, "guests_out",
           "{ type filter hook forward priority -10; policy accept; }")
        sh("nft", "add", "chain", "inet", GUARD_TABLE, "guests_dns",
           "{ type filter hook input priority -10; policy accept; }")

    def add(self, bridge: str) -> None:
        if bridge in self.bridges:
            return
        q = f'"{bridge}"'
        rule = ("nft", "add", "rule", "inet", GUARD_TABLE)
        sh(*rule, "guests_out", "iifname", q, "counter", "drop")
        sh(*rule, "guests_out", "oifname", q, "counter", "drop")
        sh(*rule, "guests_dns", "iifname", q, "udp", "dport", "53", "counter")
        self.bridges.append(bridge)

    def counters(self) -> dict:
        """{bridge: {"forward_dropped": packets, "dns_queries": packets}}."""
        data = json.loads(sh("nft", "-j", "list", "table", "inet", GUARD_TABLE))
        out = {b: {"forward_dropped": 0, "dns_queries": 0} for b in self.bridges}
        for item in data.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            bridge, packets = None, 0
            for e in rule.get("expr", []):
                m = e.get("match")
                if m and m["left"].get("meta", {}).get("key") in ("iifname", "oifname"):
                    bridge = m["right"]
                if "counter" in e:
                    packets = e["counter"]["packets"]
            if bridge in out:
                key = "forward_dropped" if rule["chain"] == "guests_out" else "dns_queries"
                out[bridge][key] += packets
        return out

    def close(self) -> None:
        sh("nft", "delete", "table", "inet", GUARD_TABLE, check=False)


# ---------------------------------------------------------------------------- rounds


def count_qemus() -> int:
    n = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                n += f.read().startswith("qemu-system")
        except OSError:
            pass
    return n


def one_boot(system: netsys.System, i: int, ssh: Ssh, iperf_secs: int | None,
             res: dict, consoles: str | None) -> dict:
    """One create-and-start of `system` until ssh works, then (maybe) iperf3, then the
    teardown (untimed). Returns the round's sample."""
    sample = {"loadavg_1m": os.getloadavg()[0], "other_qemus": count_qemus()}
    t0 = time.perf_counter()
    vm = system.start(i)
    try:
        sample["command_s"] = time.perf_counter() - t0
        sample.update(wait_sshd(vm, ssh, t0))
        sample["ip"] = vm.ip
        sample["guest"] = guest_facts(ssh, vm.ip)
        if iperf_secs:
            sample["iperf"] = iperf(ssh, vm.ip, iperf_secs)
        if system.key not in res["details"]:
            res["details"][system.key] = system.details(vm)
    finally:
        if consoles and vm.console:
            try:
                shutil.copyfile(vm.console, os.path.join(consoles, f"{vm.name}.log"))
            except OSError as e:
                log(f"  {vm.name}: console log not kept: {e}")
        vm.teardown()
    return sample


def rounds(args, systems: dict, ssh: Ssh, res: dict) -> None:
    rng = random.Random(args.seed)
    out = res.setdefault("boots", {k: [] for k in systems})
    failures = {k: 0 for k in systems}
    for i in range(args.n_boot):
        order = list(systems)
        rng.shuffle(order)
        for k in order:
            if failures[k] >= 2:
                continue
            time.sleep(SETTLE_S)
            secs = args.iperf_secs if i < args.n_iperf else None
            try:
                s = one_boot(systems[k], i, ssh, secs, res, args.consoles)
            except Exception as e:  # a failed round is recorded, the others go on
                failures[k] += 1
                log(f"  {k} round {i + 1}: FAILED: {e}")
                res.setdefault("errors", []).append(f"{k} round {i + 1}: {e}")
                continue
            out[k].append(s)
            thr = ""
            if "iperf" in s:
                thr = ", iperf3 " + " / ".join(
                    f"{s['iperf'][d]['bits_per_second'] / 1e9:.2f}"
                    for d in ("host_to_guest", "guest_to_host")) + " Gbit/s"
            log(f"  {k} round {i + 1}/{args.n_boot}: ssh after {s['ssh_s']:.1f} s "
                f"(address {s['ip_s']:.1f} s, banner {s['banner_s']:.1f} s, command "
                f"{s['command_s']:.2f} s){thr}; load {s['loadavg_1m']:.2f}")


# ---------------------------------------------------------------------------- report


def summary(res: dict) -> dict:
    out = {}
    for k, samples in res.get("boots", {}).items():
        if not samples:
            continue
        o = out[k] = {}
        for step in ("command_s", "ip_s", "banner_s", "ssh_s"):
            o[step] = stats([s[step] for s in samples])
        for d in ("host_to_guest", "guest_to_host"):
            v = [s["iperf"][d]["bits_per_second"] for s in samples if "iperf" in s]
            if v:
                o[d] = stats(v)
    return out


def secs(s: dict) -> str:
    if s["n"] == 1:
        return f"{s['median']:.1f} s (1 round)"
    return f"{s['median']:.1f} s ({s['min']:.1f}–{s['max']:.1f})"


def short(s: dict) -> str:
    v = s["median"]
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def gbits(s: dict) -> str:
    g = [x / 1e9 for x in (s["median"], s["min"], s["max"])]
    if s["n"] == 1:
        return f"{g[0]:.2f} Gbit/s (1 run)"
    return f"{g[0]:.2f} Gbit/s ({g[1]:.2f}–{g[2]:.2f})"


def report(res: dict) -> str:
    sm = res["summary"]
    cols = list(SYSTEMS)

    def cell(k, step, fmt):
        if k not in sm:
            return "pending" if k in res.get("skipped", ()) else "failed"
        return fmt(sm[k][step]) if step in sm[k] else "—"

    def ratio(step, a, b):
        if a in sm and b in sm and step in sm[a] and step in sm[b]:
            return f"{sm[a][step]['median'] / sm[b][step]['median']:.2f}×"
        return "—"

    head = ("| | " + " | ".join(LABEL[k] for k in cols)
            + " | Corral ÷ libvirt | libvirt ÷ raw |\n|---|" + "---|" * (len(cols) + 2))
    rows = []
    for step, label, fmt in (
            ("ssh_s", "Create and start → `ssh … true` works (key from cloud-init)", secs),
            ("banner_s", "… → sshd's banner read", secs),
            ("ip_s", "… → address known (DHCP lease)", secs),
            ("command_s", "… → the create command returned", short)):
        rows.append(f"| {label} | " + " | ".join(cell(k, step, fmt) for k in cols)
                    + f" | {ratio(step, 'corral', 'libvirt')} | {ratio(step, 'libvirt', 'raw')} |")
    for d, label in (("host_to_guest", "iperf3 host → guest"),
                     ("guest_to_host", "iperf3 guest → host")):
        rows.append(f"| {label} | " + " | ".join(cell(k, d, gbits) for k in cols)
                    + f" | {ratio(d, 'corral', 'libvirt')} | {ratio(d, 'libvirt', 'raw')} |")
    m = res["machine"]
    p = res["params"]
    loads = [s["loadavg_1m"] for v in res["boots"].values() for s in v]
    others = [s["other_qemus"] for v in res["boots"].values() for s in v]
    intro = (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Linux {m['kernel']}; "
             f"Debian {m['debian']}; {m['qemu']}; libvirt {m['libvirt']}; "
             f"{m['virt_install']}; {m['iperf3']}; corral {m['corral_commit']}. "
             f"{p['n_boot']} boot rounds, iperf3 in the first {p['n_iperf']} "
             f"({p['iperf_secs']} s each way); medians (min–max). ")
    if loads:
        intro += (f"1-minute load average at the boots {min(loads):.2f}–{max(loads):.2f}, "
                  f"other QEMUs on the host {min(others)}–{max(others)}. ")
    intro += f"Measured for {res.get('total_s', 0):.0f} s.\n\n"
    guard = res.get("guard", {})
    tail = ["", "Guests' traffic beyond the host (nft counters over the whole run): " + "; ".join(
        f"{b}: {c['forward_dropped']} forwarded packets dropped, {c['dns_queries']} DNS "
        f"queries to the host" for b, c in guard.items()) + "."]
    for e in res.get("errors", []):
        tail.append(f"- error: {e}")
    return intro + head + "\n" + "\n".join(rows) + "\n" + "\n".join(tail) + "\n"


# ---------------------------------------------------------------------------- main


def versions(args) -> dict:
    def first(*argv):
        try:
            return sh(*argv, check=False).splitlines()[0]
        except (OSError, IndexError):
            return "?"

    corral = args.corral if args.corral and os.path.exists(args.corral) else __file__
    m = machine_info(argparse.Namespace(corral=corral, corral_rev=args.corral_rev))
    if args.skip_corral:
        m["corral_commit"] += " (Corral side skipped)"
    m["virt_install"] = "virt-install " + first("virt-install", "--version")
    m["iperf3"] = first("iperf3", "--version")
    m["dnsmasq"] = first("dnsmasq", "--version")
    m["accel"] = "tcg (all three)"
    return m


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", help="the corral CLI binary")
    ap.add_argument("--socket")
    ap.add_argument("--state-dir", help="corrald's (to keep its guests' serial output)")
    ap.add_argument("--skip-corral", action="store_true")
    ap.add_argument("--image", required=True, help="the Debian qcow2 (libvirt can read it)")
    ap.add_argument("--lv-images", required=True, help="dir libvirt's QEMU can read")
    ap.add_argument("--work", required=True)
    ap.add_argument("--n-boot", type=int, default=3)
    ap.add_argument("--n-iperf", type=int, default=2)
    ap.add_argument("--iperf-secs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--consoles", help="a directory to keep every guest's serial output in")
    ap.add_argument("--corral-rev", default="", help="the commit the binaries were built from")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()
    if not args.skip_corral and not (args.corral and args.socket):
        ap.error("--corral and --socket are needed unless --skip-corral")
    # run.sh stops a run with SIGTERM: unwind through the `finally`s below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.consoles:
        shutil.rmtree(args.consoles, ignore_errors=True)
        os.makedirs(args.consoles)
    work = Path(args.work) / "net"
    work.mkdir(parents=True, exist_ok=True)
    key = work / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "corral-netbench", "-f", str(key))
    ssh = Ssh(str(key))
    # The image is read from the page cache by every system alike.
    with open(args.image, "rb") as f:
        while f.read(1 << 24):
            pass
    res = {"machine": versions(args), "image": args.image,
           "params": {"n_boot": args.n_boot, "n_iperf": args.n_iperf,
                      "iperf_secs": args.iperf_secs, "seed": args.seed,
                      "memory_mib": netsys.MEMORY_MIB, "vcpus": 1},
           "systems": [], "skipped": [], "details": {}}
    res["loadavg_before"] = os.getloadavg()
    conn = libvirt.open(LV_URI)
    guard = Guard()
    systems = {}
    t_all = time.perf_counter()
    try:
        guard.setup()
        if args.skip_corral:
            res["skipped"].append("corral")
        else:
            systems["corral"] = netsys.Corral(args, str(key) + ".pub", work)
        systems["libvirt"] = netsys.Libvirt(args, conn, str(key) + ".pub", work)
        systems["raw"] = netsys.Raw(args, str(key) + ".pub", work)
        for k, s in list(systems.items()):
            try:
                s.setup()
                for b in s.bridges():
                    guard.add(b)
            except Exception as e:
                if k != "corral":
                    raise
                # Corral's networking is new: without it the other two still run.
                log(f"Corral left out: {e}")
                res.setdefault("errors", []).append(f"corral set-up: {e}")
        res["systems"] = [k for k in systems if k != "corral" or systems[k].bridge]
        rounds(args, {k: systems[k] for k in res["systems"]}, ssh, res)
    finally:
        if guard.bridges:
            try:
                res["guard"] = guard.counters()
            except (RuntimeError, json.JSONDecodeError) as e:
                log(f"cleanup: nft counters: {e}")
        for s in reversed(list(systems.values())):
            try:
                s.close()
            except Exception as e:  # cleanup goes on with the others
                log(f"cleanup: {s.key}: {e}")
        guard.close()
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    res["loadavg_after"] = os.getloadavg()
    res["total_s"] = time.perf_counter() - t_all
    res["summary"] = summary(res)
    md = report(res)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    Path(args.md).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
