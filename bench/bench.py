#!/usr/bin/python3
"""Corral vs raw QEMU vs libvirt, side by side, in one run. Driven by bench/run.sh.

Every measurement is taken from this one process with time.perf_counter(), and the
systems are measured in interleaved rounds (the order rotates each round), so load
from anything else on the host falls on all of them alike.

Needs Debian's /usr/bin/python3 with python3-libvirt (bench/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qmp_raw  # noqa: E402
from unixhttp import Client  # noqa: E402

READY = b"CORRAL-GUEST-READY"
READY_POLL_S = 0.005
# Pause before each timed start, so the previous stop's aftermath has settled.
SETTLE_S = 0.5
READY_TIMEOUT_S = 120
LV_URI = "qemu:///system"
START_VM = "cb-start"
CMDLINE = "console=ttyS0 quiet"
MEMORY_MIB = 256

# Silence libvirt's default error printer; errors still raise libvirtError.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def target_text(met, what):
    """The Target column: the target and whether this run met it."""
    return f"{what}: **{'met' if met else 'not met'}**"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- stats


def stats(samples: list[float]) -> dict:
    s = sorted(samples)
    n = len(s)
    return {
        "n": n,
        "min": s[0],
        "median": statistics.median(s),
        "p90": s[max(0, math.ceil(0.9 * n) - 1)],
        "max": s[-1],
        "mean": statistics.fmean(s),
        "samples": samples,
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_wall(argv: list[str], stdin=None) -> float:
    """Wall time of a command, from spawn to exit; fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}...: exit {p.returncode}: {p.stderr.decode()}")
    return elapsed


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def wait_ready(path: str, offset: int, t0: float) -> float:
    """Polls a serial log from `offset` until the guest's ready line; seconds since t0."""
    deadline = time.perf_counter() + READY_TIMEOUT_S
    tail = b""
    while True:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < offset:  # rotated or truncated: start over
                    offset = 0
                f.seek(offset)
                data = f.read()
                offset += len(data)
        except FileNotFoundError:
            data = b""
        buf = tail + data
        if READY in buf:
            return time.perf_counter() - t0
        tail = buf[-len(READY):]
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no {READY.decode()} in {path}")
        time.sleep(READY_POLL_S)


def other_qemus(mine: str) -> int:
    """QEMU processes on the host that are not this run's (other people's tests, say)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("qemu-system"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if mine.encode() not in cmdline and f"guest={START_VM},".encode() not in cmdline:
            n += 1
    return n


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# ---------------------------------------------------------------------------- systems


class Corral:
    def __init__(self, args):
        self.bin = args.corral
        self.sock = args.socket
        self.state_dir = args.state_dir
        self.kernel = args.kernel
        self.initrd = args.initrd
        self.api = Client(self.sock)
        self.env = dict(os.environ, CORRAL_SOCKET=self.sock)

    def create_body(self, name: str) -> dict:
        # No NIC (`"networks": []`), like `--network none`: as root corrald otherwise puts
        # the VM on its default NAT network, and raw QEMU cannot reuse a tap descriptor.
        return {"name": name, "memory_mib": MEMORY_MIB, "vcpus": 1, "networks": [],
                "kernel": {"kernel": self.kernel, "initrd": self.initrd, "cmdline": CMDLINE}}

    def create(self, name: str) -> dict:
        return self.api.call("POST", "/api/v1/vms", self.create_body(name), ok=(201,))

    def create_cli_argv(self, name: str) -> list[str]:
        return [self.bin, "--socket", self.sock, "create", name, "--memory", f"{MEMORY_MIB}M",
                "--vcpus", "1", "--kernel", self.kernel, "--initrd", self.initrd,
                "--cmdline", CMDLINE, "--network", "none"]

    def delete(self, name: str) -> None:
        self.api.call("DELETE", f"/api/v1/vms/{name}?force=true")

    def names(self) -> list[str]:
        return [v["spec"]["name"] for v in self.api.call("GET", "/api/v1/vms")]

    def vm(self, name: str) -> dict:
        return self.api.call("GET", f"/api/v1/vms/{name}")

    def console_log(self, name: str) -> str:
        uuid = self.vm(name)["spec"]["uuid"]
        return os.path.join(self.state_dir, "run", uuid, "console.log")

    def start(self, name: str) -> None:
        self.api.call("POST", f"/api/v1/vms/{name}/start")

    def stop(self, name: str) -> None:
        op = self.api.call("POST", f"/api/v1/vms/{name}/stop", {"force": True}, ok=(202,))
        op = self.api.call("GET", f"/api/v1/operations/{op['id']}/wait?timeout_secs=30")
        if op["state"] != "succeeded":
            raise RuntimeError(f"corral stop: {op}")


class Libvirt:
    def __init__(self, args):
        self.conn = libvirt.open(LV_URI)
        self.images = args.lv_images
        self.kernel = os.path.join(self.images, "vmlinuz")
        self.initrd = os.path.join(self.images, "initrd.img")
        self.virsh = ["virsh", "-q", "-c", LV_URI]

    def console_log(self, name: str) -> str:
        return os.path.join(self.images, f"{name}.console.log")

    def xml(self, name: str) -> str:
        """The libvirt twin of `corral create NAME --memory 256M --vcpus 1 --kernel ...
        --network none`: TCG, same kernel/initrd/cmdline, no disk, no NIC, serial to a
        file, and the devices Corral gives every VM: a pvpanic device, a virtio balloon,
        a VGA with VNC on a Unix socket; none that libvirt would otherwise add (USB)."""
        return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.kernel}</kernel>
    <initrd>{self.initrd}</initrd>
    <cmdline>{CMDLINE}</cmdline>
  </os>
  <features><acpi/><vmport state='off'/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='virtio'/>
    <video><model type='vga'/></video>
    <graphics type='vnc'><listen type='socket'/></graphics>
    <panic model='isa'/>
    <serial type='file'>
      <source path='{self.console_log(name)}' append='off'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
"""

    def define(self, name: str):
        return self.conn.defineXML(self.xml(name))

    def dom(self, name: str):
        return self.conn.lookupByName(name)

    def ours(self, prefix: str = "cb-") -> list:
        return [d for d in self.conn.listAllDomains(0) if d.name().startswith(prefix)]

    def undefine_all(self, prefix: str = "cb-") -> None:
        for d in self.ours(prefix):
            if d.isActive():
                d.destroy()
            d.undefine()


class Raw:
    """Plain QEMU with Corral's own argv (read from a QEMU that corrald started), paths
    moved to a directory of its own, and with or without Corral's confinement flags."""

    def __init__(self, corral_argv: list[str], corral_dir: str, raw_dir: str, confined: bool):
        os.makedirs(raw_dir, exist_ok=True)
        argv = [a.replace(corral_dir, raw_dir) for a in corral_argv]
        out = [argv[0]]
        i = 1
        while i < len(argv):
            flag = argv[i]
            if not confined and flag in ("-sandbox", "-runas", "-chroot"):
                i += 2
                continue
            if flag == "-name":
                out += [flag, "guest=cb-raw,debug-threads=on"]
                i += 2
                continue
            out.append(flag)
            i += 1
        self.argv = out
        self.dir = raw_dir
        self.qmp_path = os.path.join(raw_dir, "qmp.sock")
        self.console = os.path.join(raw_dir, "console.log")
        self.proc = None
        self.qmp = None

    def start(self) -> tuple[float, float, dict]:
        """Returns (t0, seconds to `cont` reply, marks of each step)."""
        for stale in ("console.sock", "qemu.pid"):
            try:
                os.unlink(os.path.join(self.dir, stale))
            except FileNotFoundError:
                pass
        t0 = time.perf_counter()
        elapsed, self.proc, self.qmp, marks = qmp_raw.start(
            self.argv, self.qmp_path, os.path.join(self.dir, "qemu.log"))
        return t0, elapsed, marks

    def stop(self) -> None:
        qmp_raw.quit_qemu(self.proc, self.qmp)
        self.proc = self.qmp = None


# ---------------------------------------------------------------------------- phases


def corral_qmp_marks(qmp_log: str, t0_wall: float) -> dict:
    """Where a Corral start went, from corrald's own QMP traffic log (timestamped when
    corrald read or wrote each line): seconds after the request was sent at t0_wall."""
    from datetime import datetime

    lines = []
    with open(qmp_log) as f:
        for line in f:
            ts, _, rest = line.partition(" ")
            try:
                t = datetime.fromisoformat(ts).timestamp()
            except ValueError:
                continue
            if t >= t0_wall - 0.001:
                lines.append((t - t0_wall, rest))
    marks = {}
    for t, rest in lines:
        incoming = rest.startswith("<-")
        if "greeting" not in marks:
            if incoming and '"QMP"' in rest:
                marks["greeting"] = t
        elif "capabilities" not in marks:
            if incoming and '"return"' in rest:
                marks["capabilities"] = t
        elif "cont_sent" not in marks:
            if not incoming and '"cont"' in rest:
                marks["cont_sent"] = t
        elif "cont" not in marks:
            if incoming and '"return"' in rest:
                marks["cont"] = t
                break
    return marks


def qemu_argv_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def phase_start(args, corral: Corral, lv: Libvirt, res: dict) -> None:
    n = args.n_start
    log(f"start latency and time to {READY.decode()}: {n} interleaved rounds")
    corral.create(START_VM)
    dom = lv.define(START_VM)
    c_log = corral.console_log(START_VM)
    l_log = lv.console_log(START_VM)

    # Warm-up, not timed: page cache, libvirt's capability cache, corral's first start.
    corral.start(START_VM)
    vm = corral.vm(START_VM)
    argv = qemu_argv_of(vm["status"]["pid"])
    run_dir = os.path.dirname(c_log)
    corral.stop(START_VM)
    raw = Raw(argv, run_dir, os.path.join(args.work, "raw"), confined=False)
    raw_conf = Raw(argv, run_dir, os.path.join(args.work, "rawc"), confined=True)
    raw.name, raw_conf.name = "raw", "raw_confined"
    profile = {"raw": [], "raw_confined": [], "corral_api": []}
    res["argv"] = {"corral": argv, "raw": raw.argv, "raw_confined": raw_conf.argv}
    dom.create()
    dom.destroy()
    for r in (raw, raw_conf):
        r.start()
        r.stop()
    run_wall([corral.bin, "--socket", corral.sock, "start", START_VM])
    corral.stop(START_VM)
    run_wall(lv.virsh + ["start", START_VM])
    dom.destroy()

    def raw_round(r: Raw, ready_key: str | None):
        off = file_size(r.console)
        t0, el, marks = r.start()
        profile[r.name].append(marks)
        rdy = wait_ready(r.console, off, t0) if ready_key else None
        r.stop()
        return el, rdy

    def corral_api():
        off = file_size(c_log)
        t0_wall = time.time()
        t0 = time.perf_counter()
        corral.start(START_VM)
        el = time.perf_counter() - t0
        rdy = wait_ready(c_log, off, t0)
        corral.stop(START_VM)
        marks = corral_qmp_marks(os.path.join(run_dir, "qmp.log"), t0_wall)
        marks["response"] = el
        profile["corral_api"].append(marks)
        return el, rdy

    def libvirt_api():
        with open(l_log, "wb"):
            pass  # libvirt truncates it too (append='off'); this is belt and braces
        t0 = time.perf_counter()
        dom.create()
        el = time.perf_counter() - t0
        rdy = wait_ready(l_log, 0, t0)
        dom.destroy()
        return el, rdy

    def corral_cli():
        el = run_wall([corral.bin, "--socket", corral.sock, "start", START_VM])
        corral.stop(START_VM)
        return el, None

    def virsh_cli():
        el = run_wall(lv.virsh + ["start", START_VM])
        dom.destroy()
        return el, None

    systems = {
        "raw": lambda: raw_round(raw, "ready"),
        "raw_confined": lambda: raw_round(raw_conf, None),
        "corral_api": corral_api,
        "libvirt_api": libvirt_api,
        "corral_cli": corral_cli,
        "virsh_cli": virsh_cli,
    }
    start = {k: [] for k in systems}
    ready = {k: [] for k in systems}
    keys = list(systems)
    background = []
    # A fresh random order every round (seeded, so runs are comparable): with a plain
    # rotation each system would always follow the same neighbour and inherit its
    # aftermath (libvirt still tearing a domain down, say).
    rng = random.Random(4242)
    for i in range(n):
        background.append({"loadavg_1m": os.getloadavg()[0],
                           "other_qemus": other_qemus(args.work)})
        order = keys[:]
        rng.shuffle(order)
        for k in order:
            time.sleep(SETTLE_S)
            el, rdy = systems[k]()
            start[k].append(el)
            if rdy is not None:
                ready[k].append(rdy)
        log(f"  round {i + 1}/{n}: " + ", ".join(
            f"{k} {start[k][-1] * 1000:.0f} ms" for k in keys))
    res["start_background"] = background
    res["start_s"] = {k: stats(v) for k, v in start.items()}
    res["ready_s"] = {k: stats(v) for k, v in ready.items() if v}
    log("diagnostic: cost of joining a cgroup between fork and exec")
    p = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "cgroup_join.py"),
                        "5"], capture_output=True, text=True)
    try:
        res["cgroup_join_s"] = json.loads(p.stdout)
    except ValueError:
        log(f"cgroup_join.py failed: {p.stderr.strip()}")
    res["start_profile_s"] = {
        k: {m: statistics.median(x[m] for x in v if m in x) for m in v[0]}
        for k, v in profile.items() if v}

    corral.delete(START_VM)
    dom.undefine()


def phase_many(args, corral: Corral, lv: Libvirt, res: dict) -> None:
    n = args.n_define
    names = [f"cb-{i:04d}" for i in range(n)]
    out = res.setdefault("many", {})
    out["n"] = n

    # ---- Corral
    log(f"corral: define {n} VMs through the API (one keep-alive connection)")
    per = []
    t0 = time.perf_counter()
    for name in names:
        per.append(timed(lambda: corral.create(name)))
    out["corral_define_api_s"] = time.perf_counter() - t0
    out["corral_define_api_per_request"] = {k: v for k, v in stats(per).items() if k != "samples"}
    assert len(corral.names()) == n

    log(f"corral: list with {n} VMs, {args.n_list} times")
    out["corral_list_cli_s"] = stats([run_wall([corral.bin, "--socket", corral.sock, "list"])
                                      for _ in range(args.n_list)])
    out["corral_list_json_cli_s"] = stats(
        [run_wall([corral.bin, "--socket", corral.sock, "list", "-o", "json"])
         for _ in range(args.n_list)])
    out["corral_list_api_s"] = stats([timed(lambda: corral.api.call("GET", "/api/v1/vms"))
                                      for _ in range(args.n_list)])
    out["corrald_rss_kib"] = vm_rss_kib(args.corrald_pid)

    log(f"corral: delete {n} VMs through the API")
    t0 = time.perf_counter()
    for name in names:
        corral.delete(name)
    out["corral_delete_api_s"] = time.perf_counter() - t0

    log(f"corral: define {n} VMs with the CLI, one `corral create` process each")
    t0 = time.perf_counter()
    for name in names:
        subprocess.run(corral.create_cli_argv(name), check=True, stdout=subprocess.DEVNULL)
    out["corral_define_cli_s"] = time.perf_counter() - t0
    assert len(corral.names()) == n

    # ---- libvirt
    xml_dir = os.path.join(args.work, "xml")
    os.makedirs(xml_dir, exist_ok=True)
    files = []
    for name in names:
        p = os.path.join(xml_dir, f"{name}.xml")
        with open(p, "w") as f:
            f.write(lv.xml(name))
        files.append(p)

    log(f"libvirt: define {n} domains, one `virsh define` process each")
    t0 = time.perf_counter()
    for p in files:
        subprocess.run(lv.virsh + ["define", p], check=True, stdout=subprocess.DEVNULL)
    out["virsh_define_cli_s"] = time.perf_counter() - t0
    assert len(lv.ours()) == n

    log(f"libvirt: list with {n} domains, {args.n_list} times")
    out["virsh_list_cli_s"] = stats([run_wall(lv.virsh + ["list", "--all"])
                                     for _ in range(args.n_list)])

    def lv_list():
        # What `virsh list --all` shows: every domain's name and state.
        return [(d.name(), d.state()) for d in lv.conn.listAllDomains(0)]

    out["libvirt_list_api_s"] = stats([timed(lv_list) for _ in range(args.n_list)])
    out["libvirtd_rss_kib"] = vm_rss_kib(args.libvirtd_pid)

    log(f"libvirt: undefine {n} domains through the API")
    out["libvirt_undefine_api_s"] = timed(lambda: lv.undefine_all())

    log(f"libvirt: define {n} domains in one virsh session (commands on stdin)")
    cmds = os.path.join(args.work, "define.virsh")
    with open(cmds, "w") as f:
        f.writelines(f"define {p}\n" for p in files)
    with open(cmds) as f:
        out["virsh_define_session_s"] = run_wall(lv.virsh, stdin=f)
    assert len(lv.ours()) == n
    lv.undefine_all()

    log(f"libvirt: define {n} domains through the API (virDomainDefineXML, one connection)")
    per = []
    t0 = time.perf_counter()
    for name in names:
        per.append(timed(lambda: lv.define(name)))
    out["libvirt_define_api_s"] = time.perf_counter() - t0
    out["libvirt_define_api_per_call"] = {k: v for k, v in stats(per).items() if k != "samples"}
    assert len(lv.ours()) == n
    out["libvirtd_rss_kib_after_api_define"] = vm_rss_kib(args.libvirtd_pid)
    lv.undefine_all()


# ---------------------------------------------------------------------------- report


def machine_info(args) -> dict:
    def first(path, key):
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return "?"

    def cmd(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    with open("/etc/debian_version") as f:
        debian = f.read().strip()
    mem_kib = int(first("/proc/meminfo", "MemTotal").split()[0])
    repo = str(Path(__file__).resolve().parent.parent)
    if args.corral_rev:
        git = args.corral_rev
    else:
        git = cmd("git", "-C", repo, "rev-parse", "--short", "HEAD")
        if cmd("git", "-C", repo, "status", "--porcelain", "--", "crates", "Cargo.lock"):
            git += " + uncommitted changes in crates/"
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "debian": debian,
        "qemu": cmd("qemu-system-x86_64", "--version").splitlines()[0],
        "libvirt": ".".join(str(x) for x in (lambda v: (v // 1000000, v // 1000 % 1000,
                                                         v % 1000))(libvirt.getVersion())),
        "corral_commit": git,
        "corrald_built": time.strftime("%Y-%m-%d %H:%M:%S",
                                       time.localtime(os.path.getmtime(args.corral))),
        "accel": "tcg (all three)",
    }


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 10 else f"{x:.2f} s"


def med(s: dict) -> str:
    return f"{ms(s['median'])} (min {ms(s['min'])}, p90 {ms(s['p90'])})"


def paired(a: dict, b: dict) -> tuple[float, str]:
    """Rounds are interleaved, so sample i of each system was taken side by side, under
    the same background load. Returns the median of the per-round ratios a/b (robust to
    load that drifts between rounds), and a cell that also gives the ratio of the plain
    medians and in how many rounds `a` was the faster."""
    pairs = list(zip(a["samples"], b["samples"]))
    q = statistics.median(x / y for x, y in pairs)
    plain = a["median"] / b["median"]
    wins = sum(x < y for x, y in pairs)
    return q, (f"{q:.2f}× paired (ratio of medians {plain:.2f}×; faster in "
               f"{wins}/{len(pairs)} rounds)")


def verdict(ratio: float, limit: float) -> str:
    return "**met**" if ratio <= limit else "**not met**"


def report(res: dict) -> str:
    st, rd, many = res.get("start_s"), res.get("ready_s"), res.get("many")
    rows = []

    def row(what, corral, peer_name, peer, ratio, target):
        rows.append(f"| {what} | {corral} | {peer_name}: {peer} | {ratio} | {target} |")

    if st:
        c, r, rc = st["corral_api"], st["raw"], st["raw_confined"]
        q, cell = paired(c, r)
        row("1. Start, request → vCPUs running (API)", med(c), "raw QEMU + QMP script",
            med(r), cell, f"≤ 1.25× raw: {verdict(q, 1.25)}")
        row("1. Start (API), vs raw with Corral's confinement flags", med(c),
            "raw QEMU + `-sandbox -runas -chroot`", med(rc),
            f"{c['median'] / rc['median']:.2f}×", "info")
        lva = st["libvirt_api"]
        row("1. Start (API), vs libvirt", med(c), "libvirt `virDomainCreate`", med(lva),
            f"{c['median'] / lva['median']:.2f}×", "info")
        cc, vc = st["corral_cli"], st["virsh_cli"]
        row("1. Start, CLI wall time", f"`corral start` {med(cc)}", "`virsh start`", med(vc),
            f"{cc['median'] / vc['median']:.2f}×", "info")
    if rd:
        c, r, lvr = rd["corral_api"], rd["raw"], rd["libvirt_api"]
        q, cell = paired(c, r)
        row("2. Start request → `CORRAL-GUEST-READY`", med(c), "raw QEMU (`-M pc`)", med(r),
            cell, f"no slower than raw (≤ 1.00×): {verdict(q, 1.0)}")
        row("2. Start request → `CORRAL-GUEST-READY`, vs libvirt", med(c), "libvirt", med(lvr),
            f"{c['median'] / lvr['median']:.2f}×", "info")
    if many:
        n = many["n"]
        ca, la = many["corral_define_api_s"], many["libvirt_define_api_s"]
        row(f"3. Define {n} VMs, API, sequential", f"{ms(ca)} (HTTP keep-alive)",
            "libvirt `virDomainDefineXML`", ms(la), f"{ca / la:.2f}×",
            f"≤ 0.5×: {verdict(ca / la, 0.5)}")
        vs = many["virsh_define_session_s"]
        row(f"3. Define {n} VMs, API vs one virsh session", ms(ca),
            f"one `virsh` reading {n} `define` lines", ms(vs), f"{ca / vs:.2f}×",
            f"≤ 0.5×: {verdict(ca / vs, 0.5)}")
        cc, vc = many["corral_define_cli_s"], many["virsh_define_cli_s"]
        row(f"3. Define {n} VMs, one CLI process each", f"`corral create` ×{n}: {ms(cc)}",
            f"`virsh define` ×{n}", ms(vc), f"{cc / vc:.2f}×", f"≤ 0.5×: {verdict(cc / vc, 0.5)}")
        cl, vl = many["corral_list_cli_s"], many["virsh_list_cli_s"]
        q = cl["median"] / vl["median"]
        row(f"4. List with {n} VMs, CLI wall time", f"`corral list` {med(cl)}",
            "`virsh list --all`", med(vl), f"{q:.2f}×", f"≤ 0.25×: {verdict(q, 0.25)}")
        cj = many["corral_list_json_cli_s"]
        row(f"4. List with {n} VMs, CLI, JSON", f"`corral list -o json` {med(cj)}",
            "`virsh list --all`", med(vl), f"{cj['median'] / vl['median']:.2f}×", "info")
        ga, la2 = many["corral_list_api_s"], many["libvirt_list_api_s"]
        row(f"4. List with {n} VMs, API", f"`GET /api/v1/vms` {med(ga)}",
            "`virConnectListAllDomains` + name, state", med(la2),
            f"{ga['median'] / la2['median']:.2f}×", "info")
        cr, lr = many["corrald_rss_kib"], many["libvirtd_rss_kib"]
        idle = res.get("idle_rss_kib", {})
        row(f"5. Daemon RSS with {n} VMs defined",
            f"corrald {cr / 1024:.1f} MiB (idle: {idle.get('corrald', 0) / 1024:.1f})",
            "libvirtd", f"{lr / 1024:.1f} MiB (idle: {idle.get('libvirtd', 0) / 1024:.1f})",
            f"{cr / lr:.2f}×", target_text(cr / lr <= 0.5, "≤ 0.5× libvirtd"))
    m = res["machine"]
    la = res.get("loadavg_before", (0, 0, 0))
    intro = (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Linux {m['kernel']}; "
             f"Debian {m['debian']}; {m['qemu']}; libvirt {m['libvirt']}; accel {m['accel']}; "
             f"corral {m['corral_commit']}; load average at start {la[0]:.2f}.")
    bg = res.get("start_background")
    if bg:
        loads = [b["loadavg_1m"] for b in bg]
        others = [b["other_qemus"] for b in bg]
        intro += (f" During the start rounds: 1-minute load average {min(loads):.2f}–"
                  f"{max(loads):.2f}, other QEMUs on the host {min(others)}–{max(others)}.")
    intro += "\n\n"
    head = ("| Measurement | Corral | Baseline | Corral ÷ baseline | Target |\n"
            "|---|---|---|---|---|")
    return intro + head + "\n" + "\n".join(rows) + "\n" + report_profile(res)


def report_profile(res: dict) -> str:
    """Median time at which each step of a start was reached: for raw QEMU, since the
    spawn; for Corral, since the HTTP request was sent (so its first step includes
    HTTP, the store, the runtime dir, cgroups and the spawn)."""
    prof = res.get("start_profile_s")
    if not prof:
        return ""
    cols = [k for k in ("raw", "raw_confined", "corral_api") if k in prof]
    names = {"raw": "raw QEMU", "raw_confined": "raw + confinement", "corral_api": "Corral API"}
    steps = [("greeting", "QMP greeting read"), ("capabilities", "`qmp_capabilities` answered"),
             ("cont_sent", "`cont` sent"), ("cont", "`cont` answered"),
             ("response", "HTTP response received")]
    out = ["", "Where a start goes (median ms since the request, or since the spawn for raw):",
           "", "| Step | " + " | ".join(names[c] for c in cols) + " |",
           "|---|" + "---|" * len(cols)]
    for key, label in steps:
        cells = []
        for c in cols:
            v = prof[c].get(key)
            cells.append("—" if v is None else f"{v * 1000:.1f}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    cg = res.get("cgroup_join_s")
    if cg and "fresh" in cg:
        out += ["", f"Moving a new process into its cgroup ({', '.join(cg['hierarchies'])}), as "
                f"Corral does for each QEMU: {cg['fresh']['median'] * 1000:.1f} ms into a new "
                f"cgroup after a quiet second, {cg['reused']['median'] * 1000:.1f} ms into an "
                f"existing one after a quiet second, {cg['hot']['median'] * 1000:.2f} ms right "
                "after another move (medians; bench/cgroup_join.py). Corral overlaps it with "
                "QEMU's own initialisation, so it is not on the start path."]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True, help="the corral CLI binary")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--corrald-pid", type=int, required=True)
    ap.add_argument("--libvirtd-pid", type=int, required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--lv-images", required=True, help="dir libvirt's QEMU can read")
    ap.add_argument("--work", required=True)
    ap.add_argument("--n-start", type=int, default=15)
    ap.add_argument("--n-define", type=int, default=1000)
    ap.add_argument("--n-list", type=int, default=10)
    ap.add_argument("--only", choices=["start", "many"], default=None)
    ap.add_argument("--corral-rev", default="", help="the commit the binaries were built from")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()

    corral = Corral(args)
    lv = Libvirt(args)
    res = {"machine": machine_info(args), "params": {
        "n_start": args.n_start, "n_define": args.n_define, "n_list": args.n_list}}
    res["idle_rss_kib"] = {"corrald": vm_rss_kib(args.corrald_pid),
                           "libvirtd": vm_rss_kib(args.libvirtd_pid)}
    res["loadavg_before"] = os.getloadavg()
    t_all = time.perf_counter()
    try:
        if args.only in (None, "start"):
            phase_start(args, corral, lv, res)
        if args.only in (None, "many"):
            phase_many(args, corral, lv, res)
    finally:
        try:
            lv.undefine_all()
        except libvirt.libvirtError as e:
            log(f"cleanup: {e}")
    res["loadavg_after"] = os.getloadavg()
    res["total_s"] = time.perf_counter() - t_all
    md = report(res)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    Path(args.md).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
