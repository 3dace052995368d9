#!/usr/bin/python3
"""Metrics scrape with 100 running (paused) VMs: Corral vs libvirt vs raw QEMU, in one run.
Driven by bench/run.sh (`--only metrics`).

- Corral: 100 VMs made and started through the API (kernel boot of the test guest,
  256 MiB, the `default` NAT network, so each has a tap), then paused. After two
  collector intervals: `GET /metrics` (Prometheus text of every VM), `GET
  /api/v1/host/metrics` and one VM's `GET /api/v1/vms/NAME/metrics`, timed over the
  Unix socket on one keep-alive connection. Also corrald's own CPU use while it
  collects from 100 VMs every 2 s, idle otherwise (its utime+stime over 20 s).
- libvirt, the peer: the same 100 guests as domains (one python3-libvirt connection,
  a virtio balloon with a 2 s stats period like Corral's), started and suspended; then
  `virConnectGetAllDomainStats` (every stats group: what a libvirt exporter calls per
  scrape) and `virsh domstats` (a process per call, like `corral`'s CLI would be).
- raw QEMU, the floor: 100 QEMUs started paused with the same guest, and what any
  collector minimally does per VM over already open QMP sockets, in this one Python
  process: read /proc/PID/stat and /proc/PID/status, `query-blockstats`, and `qom-get`
  of the balloon's guest-stats.

The sides run one after another (each tears its 100 VMs down before the next starts),
so memory stays bounded; rounds within a side are back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import LV_URI, log, machine_info, ms, run_wall, stats, timed  # noqa: E402
import qmp_raw  # noqa: E402
from unixhttp import Client  # noqa: E402

MEMORY_MIB = 256
CMDLINE = "console=ttyS0 quiet"
PREFIX = "cb-m-"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


# ---------------------------------------------------------------------------- Corral


def corral_side(args, out: dict) -> None:
    api = Client(args.socket)
    names = [f"{PREFIX}{i:03d}" for i in range(args.n_vms)]
    log(f"corral: make, start and pause {args.n_vms} VMs")
    t0 = time.perf_counter()
    for name in names:
        api.call("POST", "/api/v1/vms", {
            "name": name, "memory_mib": MEMORY_MIB, "vcpus": 1,
            "kernel": {"kernel": args.kernel, "initrd": args.initrd, "cmdline": CMDLINE}},
            ok=(201,))
        api.call("POST", f"/api/v1/vms/{name}/start")
        api.call("POST", f"/api/v1/vms/{name}/pause")
    out["corral_setup_s"] = time.perf_counter() - t0
    try:
        # Two collector rounds, so every VM has a sample (rates need two readings).
        time.sleep(5)
        states = {v["status"]["state"] for v in api.call("GET", "/api/v1/vms")}
        out["corral_states"] = sorted(states)
        body = []

        def scrape():
            status, text = api.request("GET", "/metrics")
            assert status == 200, status
            body.append(text)

        out["corral_metrics_s"] = stats([timed(scrape) for _ in range(args.rounds)])
        text = body[-1] if isinstance(body[-1], str) else str(body[-1])
        out["corral_metrics_bytes"] = len(text.encode())
        out["corral_metrics_series"] = sum(
            1 for line in text.splitlines() if line and not line.startswith("#"))
        out["corral_metrics_vms"] = len({line.split('vm="', 1)[1].split('"', 1)[0]
                                         for line in text.splitlines() if 'vm="' in line})
        out["corral_host_metrics_s"] = stats(
            [timed(lambda: api.call("GET", "/api/v1/host/metrics")) for _ in range(args.rounds)])
        out["corral_vm_metrics_s"] = stats(
            [timed(lambda: api.call("GET", f"/api/v1/vms/{names[0]}/metrics"))
             for _ in range(args.rounds)])
        # The collector's cost: corrald's CPU over 20 s with nothing else asking.
        before = cpu_seconds(args.corrald_pid)
        time.sleep(20)
        out["corrald_cpu_percent_idle_collecting"] = (cpu_seconds(args.corrald_pid) - before) / 20 * 100
    finally:
        log("corral: delete the VMs")
        for name in names:
            try:
                api.call("DELETE", f"/api/v1/vms/{name}?force=true")
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"corral: delete {name}: {e}")


# ---------------------------------------------------------------------------- libvirt


def lv_xml(args, name: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{args.lv_images}/vmlinuz</kernel>
    <initrd>{args.lv_images}/initrd.img</initrd>
    <cmdline>{CMDLINE}</cmdline>
  </os>
  <features><acpi/><vmport state='off'/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='virtio'><stats period='2'/></memballoon>
    <panic model='isa'/>
  </devices>
</domain>
"""


def libvirt_side(args, out: dict) -> None:
    conn = libvirt.open(LV_URI)
    names = [f"{PREFIX}{i:03d}" for i in range(args.n_vms)]
    log(f"libvirt: define, start and suspend {args.n_vms} domains (one connection)")
    t0 = time.perf_counter()
    doms = []
    try:
        for name in names:
            d = conn.defineXML(lv_xml(args, name))
            doms.append(d)
            d.create()
            d.suspend()
        out["libvirt_setup_s"] = time.perf_counter() - t0
        time.sleep(5)
        got = []
        out["libvirt_all_stats_s"] = stats(
            [timed(lambda: got.append(conn.getAllDomainStats())) for _ in range(args.rounds)])
        out["libvirt_all_stats_domains"] = len(got[-1])
        virsh = ["virsh", "-q", "-c", LV_URI, "domstats"]
        out["virsh_domstats_s"] = stats([run_wall(virsh) for _ in range(args.rounds)])
        text = subprocess.run(virsh, capture_output=True, text=True, check=True).stdout
        out["virsh_domstats_bytes"] = len(text.encode())
    finally:
        log("libvirt: destroy and undefine the domains")
        for d in conn.listAllDomains(0):
            if d.name().startswith(PREFIX):
                if d.isActive():
                    d.destroy()
                d.undefine()
        conn.close()


# ---------------------------------------------------------------------------- raw QEMU


def raw_side(args, out: dict) -> None:
    vms = []
    log(f"raw QEMU: start {args.n_vms} QEMUs paused")
    try:
        for i in range(args.n_vms):
            d = os.path.join(args.work, f"raw{i}")
            os.makedirs(d, exist_ok=True)
            qmp_path = os.path.join(d, "qmp.sock")
            argv = ["/usr/bin/qemu-system-x86_64", "-machine", "pc", "-accel", "tcg",
                    "-m", f"{MEMORY_MIB}M", "-smp", "1", "-nodefaults", "-display", "none",
                    "-S", "-qmp", f"unix:{qmp_path},server=on,wait=off",
                    "-kernel", args.kernel, "-initrd", args.initrd, "-append", CMDLINE,
                    "-device", "virtio-balloon-pci,id=balloon0"]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            qmp = qmp_raw.connect_when_ready(qmp_path, proc)
            qmp.greeting()
            qmp.cmd("qmp_capabilities")
            vms.append((proc, qmp))

        def collect_all():
            for proc, qmp in vms:
                with open(f"/proc/{proc.pid}/stat") as f:
                    f.read()
                with open(f"/proc/{proc.pid}/status") as f:
                    f.read()
                qmp.cmd("query-blockstats")
                qmp.cmd("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")

        out["raw_collect_s"] = stats([timed(collect_all) for _ in range(args.rounds)])
    finally:
        log("raw QEMU: quit")
        for proc, qmp in vms:
            qmp_raw.quit_qemu(proc, qmp)


# ---------------------------------------------------------------------------- report


def report(res: dict) -> str:
    m = res["metrics"]
    n = m["n"]
    lines = [
        f"### Metrics scrape with {n} running (paused) VMs",
        "",
        "| what | median | p90 | notes |",
        "|---|---:|---:|---|",
    ]

    def row(what, s, note=""):
        lines.append(f"| {what} | {ms(s['median'])} | {ms(s['p90'])} | {note} |")

    row("Corral `GET /metrics` (Unix socket)", m["corral_metrics_s"],
        f"{m['corral_metrics_series']} series, {m['corral_metrics_bytes'] // 1024} KiB, "
        f"{m['corral_metrics_vms']} VMs")
    row("Corral `GET /api/v1/host/metrics`", m["corral_host_metrics_s"])
    row("Corral `GET /api/v1/vms/NAME/metrics`", m["corral_vm_metrics_s"], "one VM's history")
    row("libvirt `virConnectGetAllDomainStats` (python3-libvirt)", m["libvirt_all_stats_s"],
        f"{m['libvirt_all_stats_domains']} domains, every stats group")
    row("libvirt `virsh domstats` (a process per call)", m["virsh_domstats_s"],
        f"{m['virsh_domstats_bytes'] // 1024} KiB of text")
    row("raw QEMU floor: /proc + QMP blockstats + balloon stats, 100 open sockets",
        m["raw_collect_s"], "one Python process, sequential")
    lines += [
        "",
        f"corrald's CPU while collecting from {n} VMs every 2 s, nothing else asked of it: "
        f"{m['corrald_cpu_percent_idle_collecting']:.1f} % of one core.",
        f"Set-up (not timed against each other): Corral make+start+pause {m['corral_setup_s']:.1f} s, "
        f"libvirt define+start+suspend {m['libvirt_setup_s']:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True, help="the corral CLI binary")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--corrald-pid", type=int, required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--lv-images", required=True, help="dir libvirt's QEMU can read")
    ap.add_argument("--work", required=True)
    ap.add_argument("--n-vms", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--corral-rev", default="", help="the commit the binaries were built from")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()
    res = {"machine": machine_info(args), "metrics": {"n": args.n_vms, "rounds": args.rounds}}
    out = res["metrics"]
    corral_side(args, out)
    libvirt_side(args, out)
    raw_side(args, out)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    md = report(res)
    with open(args.md, "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
