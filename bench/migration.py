#!/usr/bin/python3
"""Live migration between two hosts on one machine: Corral (`corral migrate VM --to
REMOTE`) vs raw QEMU driven by this script over QMP (the floor) vs libvirt (`virsh
migrate --live`, the peer), side by side, in one run. Driven by bench/run.sh
(`--only migration`).

The two hosts are network namespaces, each joined by a veth pair to a bridge in a
third ("switch") namespace, as crates/corral-tests/src/hosts.rs builds them:
10.88.0.1 (source) and 10.88.0.2 (destination). Each host runs, inside its namespace,
one corrald (`--listen ADDR:8443`, the other host added as a remote with an admin
token), one libvirtd of its own (private /run/libvirt, /var/lib/libvirt/qemu,
/var/cache/libvirt, /var/log/libvirt and /etc/libvirt by bind mounts in the daemon's
mount namespace, so the two do not see each other's state), and the raw QEMUs.

A fourth variant, raw QEMU with TLS (x509 on both ends, as Corral always uses), tells
the cost of TLS from the cost of Corral. Every system migrates the same guest (the test guest's kernel + initramfs, 1 vCPU,
TCG), with the same migration settings: downtime limit 300 ms (QEMU's default and
Corral's), unlimited bandwidth, auto-converge on (Corral's default; `virsh migrate
--auto-converge`). Scenarios, each run for every system in shuffled rounds:

- idle:   256 MiB, the guest prints a counter every 10 ms and does nothing else;
- dirty:  256 MiB, the counter plus a loop rewriting 4 MiB of a 32 MiB tmpfs file
          every 125 ms (non-zero data, so QEMU cannot send it as zero pages);
- big:    1 GiB, idle with the counter;
- disk:   256 MiB, idle with the counter, and a 1 GiB qcow2 disk on local storage with
          all of its 1 GiB written, copied to the destination while the guest runs:
          Corral mirrors it into the destination's NBD export (its local pool); libvirt
          `--copy-storage-all`; raw QEMU: `nbd-server-start` + `block-export-add` on the
          destination, `blockdev-add` (nbd) + `blockdev-mirror` on the source, then the
          memory, then `block-job-cancel` (as QEMU's iotest 194 does).

Guest-visible gap: the bench connects to the serial chardev socket of the source and
of the destination QEMU and timestamps each counter line as it arrives; the gap is the
longest interval between consecutive counter lines across the switch. QEMU's own
`downtime`, `total-time` and `ram.transferred` come from the source's final
`query-migrate` reply: read by this script (raw), from corrald's QMP traffic log
(Corral), from libvirtd's monitor log (libvirt; its daemons log the monitor traffic).

Needs Debian's /usr/bin/python3 (standard library only), iperf3, libvirt 9.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qmp_raw  # noqa: E402
from unixhttp import Client  # noqa: E402

ADDR = ("10.88.0.1", "10.88.0.2")
CMDLINE = "console=ttyS0 quiet no_timer_check"
DOWNTIME_LIMIT_MS = 300
UNLIMITED = 1 << 40
MIGRATION_PORT = 49152
NBD_PORT = 49153
# After the switch, how long the counter is followed at the destination.
AFTER_S = 2.0
# Before the migration, how long the counter runs (its own jitter, for scale).
BEFORE_S = 2.0
SETTLE_S = 1.0
BOOT_TIMEOUT_S = 120
MIGRATE_TIMEOUT_S = 300
DISK_BYTES = 1 << 30
SYSTEMS = ("corral", "libvirt", "raw", "raw_tls")
LABEL = {"corral": "Corral", "libvirt": "libvirt (`virsh migrate`)", "raw": "raw QEMU + QMP",
         "raw_tls": "raw QEMU + QMP, TLS"}
SCENARIOS = ("idle", "dirty", "big", "disk")
SCENARIO_LABEL = {
    "idle": "idle, 256 MiB",
    "dirty": "dirtying (4 MiB every 125 ms), 256 MiB",
    "big": "idle, 1 GiB",
    "disk": "256 MiB + 1 GiB local disk (all written)",
}
MEMORY_MIB = {"idle": 256, "dirty": 256, "big": 1024, "disk": 256}

COUNTER = ('(i=0; while :; do echo "<C$i>"; i=$((i+1)); usleep 10000; done) '
           '>/dev/ttyS0 2>&1 &')
# 32 MiB of non-zero data (1 MiB of random bytes, 32 times), then 4 MiB of it rewritten
# in place every 125 ms: the same guest pages, dirtied again and again; a mark on the
# console after each 32 MiB.
DIRTIER = ('dd if=/dev/urandom of=/tmp/r bs=1M count=1 2>/dev/null; '
           'k=0; while [ $k -lt 32 ]; do cat /tmp/r; k=$((k+1)); done >/tmp/src; '
           'cp /tmp/src /tmp/dst; echo DIRTY-$((6*7)); '
           '(j=0; n=0; while :; do dd if=/tmp/src of=/tmp/dst bs=1M count=4 skip=$j seek=$j '
           'conv=notrunc 2>/dev/null; j=$(( (j+4) % 32 )); '
           'if [ $j = 0 ]; then n=$((n+1)); echo "<D$n>" >/dev/ttyS0; fi; usleep 125000; '
           'done) >/dev/null 2>&1 &')
# The dirtier prints <Dn> after each 32 MiB: the host times them.
DIRTY_ROUND_BYTES = 32 << 20


def log(msg: str) -> None:
    print(f"bench/migration: {msg}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True, timeout: float = 120, env=None) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}…: exit {p.returncode}: "
                           f"{(p.stderr or p.stdout).strip()[-2000:]}")
    return p.stdout


def stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"n": len(s), "median": statistics.median(s), "min": s[0], "max": s[-1],
            "samples": samples}


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------- hosts


class Net:
    """Two hosts and a switch: network namespaces, veth pairs, one bridge."""

    def __init__(self, prefix: str):
        self.sw = f"{prefix}-sw"
        self.hosts = [f"{prefix}-h0", f"{prefix}-h1"]
        self.made: list[str] = []

    def up(self) -> None:
        for ns in [self.sw, *self.hosts]:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            self.run(ns, "ip", "link", "set", "lo", "up")
        self.run(self.sw, "ip", "link", "add", "br0", "type", "bridge")
        self.run(self.sw, "ip", "link", "set", "br0", "up")
        for i, ns in enumerate(self.hosts):
            port = f"sw{i}"
            self.run(self.sw, "ip", "link", "add", port, "type", "veth", "peer", "name",
                     "eth0", "netns", ns)
            self.run(self.sw, "ip", "link", "set", port, "master", "br0")
            self.run(self.sw, "ip", "link", "set", port, "up")
            self.run(ns, "ip", "addr", "add", f"{ADDR[i]}/24", "dev", "eth0")
            self.run(ns, "ip", "link", "set", "eth0", "up")
        # The bridge forwards only once the ports are up: wait for the first ping.
        deadline = time.monotonic() + 10
        while subprocess.run(self.argv(0, "ping", "-c1", "-W1", ADDR[1]),
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the two namespaces cannot reach each other")

    def argv(self, host: int, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host], *cmd]

    def run(self, ns: str, *cmd: str) -> str:
        return sh("ip", "netns", "exec", ns, *cmd)

    def link_facts(self) -> dict:
        out = sh(*self.argv(0, "ip", "-d", "link", "show", "eth0"))
        mtu = re.search(r"mtu (\d+)", out)
        return {"type": "veth pair to a Linux bridge in a third namespace",
                "mtu": int(mtu.group(1)) if mtu else None}

    def down(self) -> None:
        for ns in reversed(self.made):
            for _ in range(50):
                pids = sh("ip", "netns", "pids", ns, check=False).split()
                if not pids:
                    break
                for p in pids:
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                time.sleep(0.05)
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


def iperf(net: Net, secs: int, n: int) -> list[dict]:
    """TCP throughput of the link, source → destination, one stream (what a migration
    stream is), `n` runs of `secs` seconds."""
    out = []
    for i in range(n):
        server = subprocess.Popen(net.argv(1, "iperf3", "-s", "-1", "-B", ADDR[1]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                p = subprocess.run(net.argv(0, "iperf3", "-c", ADDR[1], "-t", str(secs),
                                            "-J"), capture_output=True, text=True,
                                   timeout=secs + 30)
                r = json.loads(p.stdout or "{}")
                if p.returncode == 0 and "error" not in r:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"iperf3: {r.get('error') or p.stderr}")
                time.sleep(0.2)
        finally:
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        end = r["end"]
        out.append({"bits_per_second": end["sum_received"]["bits_per_second"],
                    "retransmits": end["sum_sent"].get("retransmits"),
                    "cpu_sender": end.get("cpu_utilization_percent", {}).get("host_total"),
                    "cpu_receiver": end.get("cpu_utilization_percent", {}).get("remote_total")})
        log(f"  iperf3 run {i + 1}/{n}: {out[-1]['bits_per_second'] / 1e9:.2f} Gbit/s")
    return out


# ---------------------------------------------------------------------------- serial


TOKEN_RX = re.compile(rb"<[CD]\d+>")


class Serial(threading.Thread):
    """The guest's serial port as QEMU's chardev socket: every counter (and dirtier)
    mark received is kept with the time (perf_counter) its last byte arrived, whether
    or not its line's end came from the same QEMU (the end of a line printed just
    before the switch can come from the destination)."""

    def __init__(self, path: str, label: str, sink: list, connect_timeout: float = 60):
        super().__init__(daemon=True)
        self.path, self.label, self.sink = path, label, sink
        self.connect_timeout = connect_timeout
        self.sock: socket.socket | None = None
        self.text = b""
        self.connected = threading.Event()
        self.stop = False
        self.error: str | None = None
        # The end of the last whole mark seen, and when the first bytes came.
        self.cursor = 0
        self.first_t: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        while not self.stop:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                self.sock = s
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
            if time.monotonic() > deadline:
                self.error = f"no serial socket {self.path}"
                return
            time.sleep(0.002)
        if self.stop:
            return
        self.connected.set()
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            t = time.perf_counter()
            if not data:
                break
            if self.first_t is None:
                self.first_t = t
            self.text += data
            # A mark cut by a chunk boundary is found whole with the next chunk.
            for m in TOKEN_RX.finditer(self.text, self.cursor):
                self.sink.append((t, self.label, m.group(0)))
                self.cursor = m.end()

    def send(self, line: str) -> None:
        self.connected.wait(10)
        self.sock.sendall(line.encode() + b"\n")

    def wait(self, pattern: bytes, timeout: float, start: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pattern in self.text[start:]:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.stop = True
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass


def guest_shell_ready(ser: Serial, timeout: float = BOOT_TIMEOUT_S) -> None:
    """Until the guest's shell answers (a probe line every 2 s; the ready line may have
    gone by before the bench connected)."""
    deadline = time.monotonic() + timeout
    k = 0
    while time.monotonic() < deadline:
        if ser.error:
            raise RuntimeError(ser.error)
        if ser.connected.is_set():
            k += 1
            ser.send(f"echo PROBE-{k}-$((6*7))")
            if ser.wait(f"PROBE-{k}-42".encode(), 2.0):
                return
        else:
            time.sleep(0.1)
    raise TimeoutError(f"the guest's shell on {ser.path} did not answer")


def start_load(ser: Serial, scenario: str) -> None:
    if scenario == "dirty":
        mark = len(ser.text)
        ser.send(DIRTIER)
        if not ser.wait(b"DIRTY-42", 60, mark):
            raise RuntimeError("the guest's dirtying loop did not start")
    ser.send(COUNTER)
    mark = len(ser.text)
    if not ser.wait(b"<C5>", 30, mark):
        raise RuntimeError("the guest's counter did not start")


COUNTER_RX = re.compile(rb"<C(\d+)>")


def split_mark(src: Serial, dst: Serial) -> bytes | None:
    """A counter mark begun by the source and finished by the destination, if any."""
    tail = src.text[src.cursor:]
    first = TOKEN_RX.search(dst.text)
    head = dst.text[:first.start()] if first else dst.text
    m = TOKEN_RX.search(tail + head)
    if m and m.start() < len(tail) < m.end():
        return m.group(0)
    return None


def gap_of(lines: list, t_start: float) -> dict:
    """The counter lines from both ends, in arrival order: the longest interval between
    consecutive lines from the migration's start on (across the switch), the switch
    interval itself (last line from the source → first from the destination), and the
    jitter before the migration (the longest interval in BEFORE_S before it)."""
    seq = []
    for t, label, line in sorted(lines, key=lambda x: x[0]):
        m = COUNTER_RX.search(line)
        if m:
            seq.append((t, label, int(m.group(1))))
    src = [x for x in seq if x[1] == "src"]
    dst = [x for x in seq if x[1] == "dst"]
    if not src or not dst:
        raise RuntimeError(f"counter lines: {len(src)} from the source, {len(dst)} from the "
                           "destination")
    before = [b[0] - a[0] for a, b in zip(src, src[1:]) if a[0] >= t_start - BEFORE_S
              and b[0] <= t_start]
    during = [x for x in seq if x[0] >= t_start]
    intervals = [(b[0] - a[0], a, b) for a, b in zip(during, during[1:])]
    worst = max(intervals, key=lambda x: x[0])
    last_src, first_dst = src[-1], dst[0]
    return {
        "gap_s": worst[0],
        "gap_at": [worst[1][1], worst[1][2], worst[2][1], worst[2][2]],
        "switch_s": first_dst[0] - last_src[0],
        "last_src": last_src[2],
        "first_dst": first_dst[2],
        "lost_lines": first_dst[2] - last_src[2] - 1,
        "before_max_s": max(before) if before else None,
        "before_median_s": statistics.median(before) if before else None,
        "during_lines": len(during),
    }


DIRTY_RX = re.compile(rb"<D(\d+)>")


def dirty_rate_before(lines: list, t_start: float) -> float | None:
    """MiB/s the dirtier wrote in the guest before the migration: 32 MiB per interval
    between its consecutive marks (host arrival times), median."""
    marks = [t for t, label, line in lines if label == "src" and t < t_start
             and DIRTY_RX.search(line)]
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    if not gaps:
        return None
    return DIRTY_ROUND_BYTES / 2**20 / statistics.median(gaps)


# ---------------------------------------------------------------------------- QMP


class Qmp(qmp_raw.Qmp):
    """qmp_raw's client, keeping every event (with the time it arrived)."""

    def __init__(self, sock):
        super().__init__(sock)
        self.events: list[tuple[float, dict]] = []

    def _line(self) -> dict:
        msg = super()._line()
        if "event" in msg:
            self.events.append((time.perf_counter(), msg))
        return msg

    def call(self, name: str, args: dict) -> object:
        """cmd() with the arguments as a dict (some are named like cmd's own)."""
        return self.cmd(name, **args) if "name" not in args else self._call(name, args)

    def _call(self, name: str, args: dict) -> object:
        self.sock.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        while True:
            msg = self._line()
            if "event" in msg:
                continue
            if "error" in msg:
                raise RuntimeError(f"{name}: {msg['error']}")
            return msg.get("return")

    def wait_event(self, pred, timeout: float) -> dict:
        """Until an event (kept or new) for which pred(msg) holds."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for _, ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no such QMP event")
            self.sock.settimeout(left)
            try:
                self._line()
            finally:
                self.sock.settimeout(None)


def qmp_connect(path: str, proc: subprocess.Popen) -> Qmp:
    base = qmp_raw.connect_when_ready(path, proc)
    q = Qmp(base.sock)
    q.greeting()
    q.cmd("qmp_capabilities")
    return q


def qemu_ts(ev: dict) -> float:
    ts = ev["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


def mirror_times(events: list[dict], final: dict | None) -> dict:
    """The disk copy, from QEMU's own events on the source (their timestamps): the
    mirror job `running` → `ready` (everything copied once), and to the job's end."""
    out = {}
    for ev in events:
        if ev.get("event") == "JOB_STATUS_CHANGE":
            st = ev["data"]["status"]
            if st in ("running", "ready", "concluded") and st not in out:
                out[st] = qemu_ts(ev)
        if ev.get("event") == "BLOCK_JOB_READY" and "len" in ev.get("data", {}):
            out.setdefault("len", ev["data"]["len"])
    res = {}
    if "running" in out and "ready" in out:
        res["mirror_s"] = out["ready"] - out["running"]
        res["mirror_bytes"] = out.get("len", DISK_BYTES)
    if "running" in out and "concluded" in out:
        res["mirror_total_s"] = out["concluded"] - out["running"]
    return res


def switch_times(src_events: list[dict], dst_events: list[dict]) -> dict:
    """The switch as both QEMUs saw it, from their own event timestamps (one host clock):
    the source's vCPUs stopped (STOP) → its stream completed (MIGRATION completed) →
    the destination's vCPUs ran (RESUME)."""
    stop = [qemu_ts(e) for e in src_events if e.get("event") == "STOP"]
    done = [qemu_ts(e) for e in src_events if e.get("event") == "MIGRATION"
            and e["data"].get("status") == "completed"]
    if not stop:
        return {}
    t_stop = stop[-1]
    resume = [qemu_ts(e) for e in dst_events if e.get("event") == "RESUME"
              and qemu_ts(e) >= t_stop]
    out = {}
    if done:
        out["stop_to_completed_s"] = done[-1] - t_stop
    if resume:
        out["stop_to_resume_s"] = resume[0] - t_stop
        if done:
            out["completed_to_resume_s"] = resume[0] - done[-1]
    return out


def migration_figures(reply: dict | None) -> dict:
    """QEMU's own figures from the source's final query-migrate reply."""
    if not reply:
        return {}
    ram = reply.get("ram", {})
    if not reply.get("total-time"):
        # Read right as the state turned `completed`, before QEMU filled in its figures
        # (QEMU 7.2 does that a moment later): downtime and total-time say 0, not known.
        return {"qemu_figures_unset": True, "ram_transferred": ram.get("transferred"),
                "passes": ram.get("dirty-sync-count")}
    return {"qemu_downtime_ms": reply.get("downtime"), "qemu_total_ms": reply.get("total-time"),
            "qemu_setup_ms": reply.get("setup-time"), "ram_transferred": ram.get("transferred"),
            "ram_total": ram.get("total"), "passes": ram.get("dirty-sync-count"),
            "mbps": ram.get("mbps"), "downtime_bytes": ram.get("downtime-bytes"),
            "throttle_percent": reply.get("cpu-throttle-percentage")}


def dirty_rate_of(replies: list[dict]) -> float | None:
    """The guest's dirty rate as QEMU measured it (bytes/s): the largest in the replies."""
    best = None
    for r in replies:
        ram = r.get("ram") or {}
        rate = ram.get("dirty-pages-rate")
        if rate:
            v = rate * ram.get("page-size", 4096)
            best = v if best is None else max(best, v)
    return best


def qemu_io_fill(path: str, fmt: str = "qcow2") -> None:
    """All DISK_BYTES of the image written (a non-zero pattern), and flushed."""
    sh("qemu-io", "-f", fmt, "-c", f"write -P 0x5a 0 {DISK_BYTES}", "-c", "flush", path,
       timeout=300)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- Corral


class Corral:
    """One corrald per host, in its namespace, serving HTTPS on ADDR:8443; each host's
    CLI knows the other as remote `h<N>` (admin token, pinned certificate)."""

    key = "corral"

    def __init__(self, args, net: Net, work: Path):
        self.bin, self.daemon = args.corral, args.corrald
        self.kernel, self.initrd = args.kernel, args.initrd
        self.net = net
        self.dirs = [work / f"c{i}" for i in (0, 1)]
        self.procs: list[subprocess.Popen] = []
        self.apis: list[Client] = []
        self.argv_seen: dict[str, list[str]] = {}

    def state(self, i: int) -> Path:
        return self.dirs[i] / "state"

    def sock(self, i: int) -> str:
        return str(self.dirs[i] / "sock")

    def env(self, i: int) -> dict:
        return dict(os.environ, CORRAL_SOCKET=self.sock(i),
                    CORRAL_CONFIG_DIR=str(self.dirs[i] / "config"), NO_COLOR="1")

    def cli(self, i: int, *args: str) -> str:
        return sh(self.bin, "--socket", self.sock(i), *args, env=self.env(i), timeout=600)

    def setup(self) -> None:
        for i in (0, 1):
            self.dirs[i].mkdir(parents=True)
            logf = open(self.dirs[i] / "corrald.log", "ab")
            p = subprocess.Popen(self.net.argv(i, self.daemon, "--state-dir", str(self.state(i)),
                                               "--socket", self.sock(i), "--accel", "tcg",
                                               "--no-default-network", "--listen",
                                               f"{ADDR[i]}:8443"),
                                 stdout=logf, stderr=logf, start_new_session=True)
            self.procs.append(p)
        for i in (0, 1):
            deadline = time.monotonic() + 30
            while True:
                if self.procs[i].poll() is not None:
                    raise RuntimeError(f"corrald h{i} exited: "
                                       f"{(self.dirs[i] / 'corrald.log').read_text()[-2000:]}")
                try:
                    api = Client(self.sock(i))
                    api.call("GET", "/api/v1/vms")
                    self.apis.append(api)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        creds = []
        for i in (0, 1):
            token = json.loads(self.cli(i, "token", "create", "peers", "--role", "admin",
                                        "-o", "json"))["token"]
            fp = json.loads(self.cli(i, "host", "info", "-o", "json"))["tls_fingerprint"]
            creds.append((token, fp))
        for i, j in ((0, 1), (1, 0)):
            token, fp = creds[j]
            sh(*self.net.argv(i, self.bin, "remote", "add", f"h{j}", f"https://{ADDR[j]}:8443",
                              "--token", token, "--fingerprint", fp), env=self.env(i))

    def close(self) -> None:
        for api in self.apis:
            api.close()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def body(self, scenario: str, name: str) -> dict:
        b = {"name": name, "memory_mib": MEMORY_MIB[scenario], "vcpus": 1, "networks": [],
             "kernel": {"kernel": self.kernel, "initrd": self.initrd, "cmdline": CMDLINE}}
        if scenario == "disk":
            b["disks"] = [{"new": {"size_bytes": DISK_BYTES}}]
        return b

    def boot(self, scenario: str, name: str, sink: list) -> dict:
        api = self.apis[0]
        vm = api.call("POST", "/api/v1/vms", self.body(scenario, name), ok=(201,))
        if scenario == "disk":
            qemu_io_fill(vm["spec"]["disks"][0]["path"])
        api.call("POST", f"/api/v1/vms/{name}/start")
        vm = api.call("GET", f"/api/v1/vms/{name}")
        uuid = vm["spec"]["uuid"]
        self.argv_seen[scenario] = qemu_argv(vm["status"]["pid"])
        run0 = self.state(0) / "run" / uuid
        ser = Serial(str(run0 / "console.sock"), "src", sink)
        ser.start()
        return {"name": name, "uuid": uuid, "src": ser, "run0": run0}

    def preflight(self, vm: dict, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            rep = json.loads(self.cli(0, "migrate", vm["name"], "--to", "h1", "--dry-run",
                                      "-o", "json"))
            wall = time.perf_counter() - t0
            if not rep.get("ok"):
                raise RuntimeError(f"corral pre-flight refused: {rep}")
            out.append({"wall_s": wall, "took_ms": rep["took_ms"],
                        "disks": [d["transfer"] for d in rep.get("disks", [])]})
            time.sleep(0.2)
        return out

    def migrate(self, vm: dict, scenario: str, sink: list) -> dict:
        run1 = self.state(1) / "run" / vm["uuid"]
        dst = Serial(str(run1 / "console.sock"), "dst", sink, connect_timeout=MIGRATE_TIMEOUT_S)
        dst.start()
        vm["dst"] = dst
        # corrald removes the source's runtime dir (and so its QMP log) at the end: an
        # open descriptor still reads it.
        qlog = open(vm["run0"] / "qmp.log", "rb")
        qlog.seek(0, os.SEEK_END)
        t0 = time.perf_counter()
        op = json.loads(self.cli(0, "migrate", vm["name"], "--to", "h1", "-o", "json"))
        wall = time.perf_counter() - t0
        time.sleep(0.3)
        traffic = qlog.read().decode(errors="replace")
        qlog.close()
        if op.get("state") != "succeeded":
            raise RuntimeError(f"corral migrate: {op}")
        r = op.get("result") or {}
        replies, events = parse_corral_qmp(traffic)
        try:
            dst_text = (run1 / "qmp.log").read_text(errors="replace")
        except FileNotFoundError:
            dst_text = ""
        _, dst_events = parse_corral_qmp(dst_text)
        final = next((x for x in reversed(replies) if x.get("status") == "completed"), None)
        out = {"t0": t0, "wall_s": wall, "corral_downtime_ms": r.get("downtime_ms"),
               "corral_total_ms": r.get("total_ms"), "corral_ram_bytes": r.get("ram_bytes"),
               "corral_disk_bytes": r.get("disk_bytes"), "dirty_rate": dirty_rate_of(replies)}
        out.update(migration_figures(final))
        out.update(mirror_times(events, final))
        out.update(switch_times(events, dst_events))
        out.update(corral_handover(traffic, dst_text))
        return out

    def teardown(self, vm: dict) -> None:
        for k in ("src", "dst"):
            if vm.get(k):
                vm[k].close()
        for api in self.apis:
            st, _ = api.request("DELETE", f"/api/v1/vms/{vm['name']}?force=true")
        for api in self.apis:
            st, vols = api.request("GET", "/api/v1/volumes")
            if st == 200:
                for v in vols:
                    if v.get("name", "").startswith(vm["name"]):
                        api.request("DELETE", f"/api/v1/volumes/{v['name']}")


def corral_entries(text: str) -> list[tuple[float, str, dict]]:
    """corrald's QMP traffic log: (wall time corrald logged it, "<-" or "->", message)."""
    from datetime import datetime

    out = []
    for line in text.splitlines():
        ts, _, rest = line.partition(" ")
        arrow, _, body = rest.partition(" ")
        if arrow not in ("<-", "->"):
            continue
        try:
            t = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
            msg = json.loads(body)
        except (ValueError, json.JSONDecodeError):
            continue
        out.append((t, arrow, msg))
    return out


def parse_corral_qmp(text: str) -> tuple[list[dict], list[dict]]:
    """The query-migrate replies and the events corrald received."""
    replies, events = [], []
    for _, arrow, msg in corral_entries(text):
        if arrow != "<-":
            continue
        if "event" in msg:
            events.append(msg)
        elif isinstance(msg.get("return"), dict) and "status" in msg["return"]:
            replies.append(msg["return"])
    return replies, events


def corral_handover(src_text: str, dst_text: str) -> dict:
    """Where Corral's switch-over goes, from both corralds' QMP logs (wall clock, the
    same as QEMU's event timestamps): the source's stream completed (QEMU's event) →
    the source corrald read `completed` from its query-migrate poll → the destination
    corrald sent `cont`; and the status its last poll before that read."""
    src, dst = corral_entries(src_text), corral_entries(dst_text)
    done = [qemu_ts(m) for _, a, m in src if a == "<-" and m.get("event") == "MIGRATION"
            and m["data"].get("status") == "completed"]
    ids = {m.get("id") for _, a, m in src if a == "->" and m.get("execute") == "query-migrate"}
    sent = {m.get("id"): t for t, a, m in src if a == "->" and m.get("execute") == "query-migrate"}
    polls = [(t, m["return"].get("status"), t - sent[m["id"]]) for t, a, m in src if a == "<-"
             and "return" in m and m.get("id") in ids and isinstance(m["return"], dict)]
    seen = next((t for t, st, _ in polls if st == "completed"), None)
    cont = [t for t, a, m in dst if a == "->" and m.get("execute") == "cont"]
    out = {}
    if done and seen:
        out["corral_seen_after_s"] = seen - done[-1]
        before = [(st, w) for t, st, w in polls if t < seen]
        if before:
            out["corral_last_poll_status"] = before[-1][0]
            out["corral_last_poll_wait_s"] = before[-1][1]
    if seen and cont:
        out["corral_seen_to_cont_s"] = cont[-1] - seen
    return out


def qemu_argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


# ---------------------------------------------------------------------------- libvirt

LV_DOM = "cbm-lv"
LV_DST = "cbm-lv-dst"
# Bind-mounted per daemon (in its own mount namespace): what two system-mode libvirtds
# on one machine would otherwise share, and trip over (the QEMU driver's lock, domain
# status files, sockets, capability cache, logs, config).
LV_PRIVATE = {"run": "/run/libvirt", "lib": "/var/lib/libvirt/qemu",
              "cache": "/var/cache/libvirt", "log": "/var/log/libvirt", "etc": "/etc/libvirt"}


class Libvirt:
    """Two system-mode libvirtds (Debian's libvirt 9, its default qemu.conf), one per
    host namespace, each with virtlogd and private state; `virsh` in the root namespace
    talks to both over their Unix sockets and runs a client-managed (non-p2p) live
    migration whose stream goes between the namespaces over TCP (`tcp://10.88.0.2`)."""

    key = "libvirt"

    def __init__(self, args, net: Net, work: Path):
        self.net = net
        self.dirs = [work / f"lv{i}" for i in (0, 1)]
        self.images = Path(args.lv_images)
        self.kernel = str(self.images / "vmlinuz")
        self.initrd = str(self.images / "initrd.img")
        self.socks = self.images / "sock"
        self.procs: list[subprocess.Popen] = []
        self.made_dirs: list[str] = []

    def uri(self, i: int) -> str:
        return f"qemu:///system?socket={self.dirs[i]}/run/libvirt-sock"

    def virsh(self, i: int, *args: str, timeout: float = 600) -> str:
        return sh("virsh", "-q", "-c", self.uri(i), *args, timeout=timeout)

    def daemon_log(self, i: int) -> Path:
        return self.dirs[i] / "log" / "libvirtd.log"

    def setup(self) -> None:
        for target in LV_PRIVATE.values():
            if not os.path.isdir(target):
                os.makedirs(target)
                self.made_dirs.append(target)
        self.socks.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.socks, "libvirt-qemu", "libvirt-qemu")
        for i in (0, 1):
            d = self.dirs[i]
            for sub in LV_PRIVATE:
                (d / sub).mkdir(parents=True)
            shutil.copytree("/etc/libvirt", d / "etc", dirs_exist_ok=True, symlinks=True)
            for f in (d / "etc/qemu/networks/autostart").glob("*"):
                f.unlink()
            for f in (d / "etc/qemu").glob("*.xml"):
                f.unlink()
            # As Debian's package makes them.
            shutil.chown(d / "lib", "libvirt-qemu", "libvirt-qemu")
            os.chmod(d / "lib", 0o750)
            (d / "cache/qemu").mkdir()
            os.chmod(d / "cache/qemu", 0o711)
            (d / "log/qemu").mkdir()
            # libvirtd logs its QEMU monitor traffic: QEMU's own query-migrate figures
            # and events, as libvirtd read them. Everything else stays at warnings.
            with open(d / "etc/libvirtd.conf", "a") as f:
                f.write('\nlog_filters="1:qemu.qemu_monitor_json 1:qemu.qemu_monitor 3:*"\n'
                        'log_outputs="1:file:/var/log/libvirt/libvirtd.log"\n')
            mounts = "; ".join(f"mount --bind {d / sub} {target}"
                               for sub, target in LV_PRIVATE.items())
            script = (f"set -e; {mounts}; virtlogd -d -p /run/libvirt/virtlogd.pid; "
                      "exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid")
            logf = open(d / "libvirtd.out", "ab")
            self.procs.append(subprocess.Popen(self.net.argv(i, "sh", "-c", script),
                                               stdout=logf, stderr=logf,
                                               start_new_session=True))
        for i in (0, 1):
            deadline = time.monotonic() + 60
            while subprocess.run(["virsh", "-q", "-c", self.uri(i), "uri"],
                                 capture_output=True).returncode != 0:
                if self.procs[i].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"libvirtd h{i} did not come up: "
                                       f"{(self.dirs[i] / 'libvirtd.out').read_text()[-2000:]}")
                time.sleep(0.1)
            # The first call probes QEMU's capabilities (seconds): not part of anything.
            self.virsh(i, "domcapabilities", "--virttype", "qemu")

    def close(self) -> None:
        for i in (0, 1):
            for name in (LV_DOM, LV_DST):
                subprocess.run(["virsh", "-q", "-c", self.uri(i), "destroy", name],
                               capture_output=True)
        for i, p in enumerate(self.procs):
            pidfile = self.dirs[i] / "run" / "virtlogd.pid"
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        for target in reversed(self.made_dirs):
            try:
                os.rmdir(target)
            except OSError:
                pass

    def xml(self, scenario: str, serial: str, disk: str | None) -> str:
        """The libvirt twin of the Corral VM (as bench.py's): TCG, the same kernel, initrd
        and command line, memory, 1 vCPU, no NIC, a pvpanic device, a virtio balloon, a
        VGA with VNC on a Unix socket, the guest agent's virtio-serial channel; the serial
        port on a Unix socket."""
        disk_xml = ""
        if disk:
            disk_xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>")
        return f"""<domain type='qemu'>
  <name>{LV_DOM}</name>
  <memory unit='MiB'>{MEMORY_MIB[scenario]}</memory>
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
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    {disk_xml}
    <serial type='unix'>
      <source mode='bind' path='{serial}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
"""

    def boot(self, scenario: str, name: str, sink: list) -> dict:
        src_sock, dst_sock = str(self.socks / "src.sock"), str(self.socks / "dst.sock")
        unlink(src_sock)
        unlink(dst_sock)
        vm = {"name": LV_DOM, "src_sock": src_sock, "dst_sock": dst_sock}
        if scenario == "disk":
            vm["src_disk"] = str(self.images / "lv-src.qcow2")
            vm["dst_disk"] = str(self.images / "lv-dst.qcow2")
            for p in (vm["src_disk"], vm["dst_disk"]):
                unlink(p)
                sh("qemu-img", "create", "-q", "-f", "qcow2", p, str(DISK_BYTES))
                os.chmod(p, 0o644)
            qemu_io_fill(vm["src_disk"])
        xml = self.dirs[0] / "dom.xml"
        xml.write_text(self.xml(scenario, src_sock, vm.get("src_disk")))
        self.virsh(0, "create", str(xml))
        ser = Serial(src_sock, "src", sink)
        ser.start()
        vm["src"] = ser
        return vm

    def migrate(self, vm: dict, scenario: str, sink: list) -> dict:
        # The destination's definition: the same domain, its serial socket and disk at
        # paths of its own (both hosts see one file system here).
        mig = self.virsh(0, "dumpxml", "--migratable", LV_DOM)
        mig = mig.replace(vm["src_sock"], vm["dst_sock"])
        if "src_disk" in vm:
            mig = mig.replace(vm["src_disk"], vm["dst_disk"])
        dst_xml = self.dirs[0] / "dst.xml"
        dst_xml.write_text(mig)
        dst = Serial(vm["dst_sock"], "dst", sink, connect_timeout=MIGRATE_TIMEOUT_S)
        dst.start()
        vm["dst"] = dst
        logp, logd = self.daemon_log(0), self.daemon_log(1)
        offset, offset_d = logp.stat().st_size, logd.stat().st_size
        argv = ["virsh", "-q", "-c", self.uri(0), "migrate", "--live", "--auto-converge",
                "--dname", LV_DST, "--xml", str(dst_xml)]
        if scenario == "disk":
            argv.append("--copy-storage-all")
        argv += [LV_DOM, f"qemu+unix:///system?socket={self.dirs[1]}/run/libvirt-sock",
                 f"tcp://{ADDR[1]}"]
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=MIGRATE_TIMEOUT_S)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"virsh migrate: {p.stderr.strip()}")
        time.sleep(0.3)
        with open(logp, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        replies, events = parse_libvirt_log(text)
        with open(logd, "rb") as f:
            f.seek(offset_d)
            _, dst_events = parse_libvirt_log(f.read().decode(errors="replace"))
        final = next((x for x in reversed(replies) if x.get("status") == "completed"), None)
        out = {"t0": t0, "wall_s": wall, "dirty_rate": dirty_rate_of(replies)}
        out.update(migration_figures(final))
        out.update(mirror_times(events, final))
        out.update(switch_times(events, dst_events))
        job = self.virsh(1, "domjobinfo", "--completed", LV_DST)
        for key, field in (("Total downtime", "libvirt_downtime_ms"),
                           ("Downtime w/o network", "libvirt_downtime_net_ms")):
            m = re.search(rf"^{key}:\s+(\d+)", job, re.M)
            if m:
                out[field] = int(m.group(1))
        return out

    def teardown(self, vm: dict) -> None:
        for k in ("src", "dst"):
            if vm.get(k):
                vm[k].close()
        for i in (0, 1):
            for name in (LV_DOM, LV_DST):
                subprocess.run(["virsh", "-q", "-c", self.uri(i), "destroy", name],
                               capture_output=True)
        for k in ("src_disk", "dst_disk"):
            if k in vm:
                unlink(vm[k])


MON_RX = re.compile(r"QEMU_MONITOR_RECV_(REPLY|EVENT): mon=\S+ (?:reply|event)=(\{.*\})\s*$")


def parse_libvirt_log(text: str) -> tuple[list[dict], list[dict]]:
    """libvirtd's monitor log: the query-migrate replies and the events it received."""
    replies, events = [], []
    for line in text.splitlines():
        m = MON_RX.search(line)
        if not m:
            continue
        try:
            msg = json.loads(m.group(2))
        except json.JSONDecodeError:
            continue
        if m.group(1) == "EVENT":
            events.append(msg)
        elif isinstance(msg.get("return"), dict) and "status" in msg["return"]:
            replies.append(msg["return"])
    return replies, events


# ---------------------------------------------------------------------------- raw QEMU


def make_certs(d: Path) -> None:
    """A CA, a server certificate for the destination's address and a client one, in
    the layout of QEMU's tls-creds-x509 (`DIR/ca-cert.pem`, `server-*.pem`, ...)."""
    for end in ("server", "client"):
        (d / end).mkdir(parents=True)
    ca_key, ca = d / "ca-key.pem", d / "ca-cert.pem"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
       "-out", str(ca), "-days", "2", "-subj", "/CN=cbm-migration-ca")
    for end, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        key, csr, cert = (d / end / f"{end}-key.pem", d / f"{end}.csr",
                          d / end / f"{end}-cert.pem")
        ext = d / f"{end}.ext"
        ext.write_text(f"subjectAltName=IP:{ADDR[1]}\nextendedKeyUsage={usage}\n"
                       "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n")
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
           str(csr), "-subj", f"/CN={ADDR[1] if end == 'server' else 'cbm-source'}")
        sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
           "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
        shutil.copy(ca, d / end / "ca-cert.pem")


class Raw:
    """QEMU alone, in each host's namespace, with Corral's own command line (read from
    the QEMU that corrald started for the same scenario), its paths moved to a
    directory of the bench's, its disk opened by name, without Corral's confinement
    flags. The script drives both QEMUs over QMP, with the same settings as Corral's."""

    def __init__(self, args, net: Net, work: Path, corral: Corral, tls: bool = False):
        self.net = net
        self.corral = corral
        self.tls = tls
        self.key = "raw_tls" if tls else "raw"
        self.dirs = [work / f"{'t' if tls else 'r'}{i}" for i in (0, 1)]
        self.certs = work / "tls"
        self.procs: list[subprocess.Popen] = []

    def setup(self) -> None:
        for d in self.dirs:
            d.mkdir(parents=True)
        if self.tls:
            make_certs(self.certs)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def argv(self, scenario: str, host: int, disk: str | None, incoming: bool,
             autostart: bool) -> list[str]:
        base = self.corral.argv_seen[scenario]
        run = next(a for a in base if a.startswith("unix:") and a.endswith("/qmp.sock,"
                                                                            "server=on,wait=off"))
        run = run[len("unix:"):].rsplit("/", 1)[0]
        out = [base[0]]
        i = 1
        while i < len(base):
            flag = base[i]
            val = base[i + 1] if i + 1 < len(base) else None
            if flag in ("-sandbox", "-runas", "-chroot", "-add-fd", "-uuid"):
                i += 2
                continue
            if flag == "-name":
                out += [flag, "guest=cbm-raw,debug-threads=on"]
                i += 2
                continue
            if flag == "-S":
                if not autostart:
                    out.append(flag)
                i += 1
                continue
            if val is not None and flag.startswith("-"):
                v = val.replace(run, str(self.dirs[host]))
                if disk and flag == "-blockdev":
                    v = re.sub(r"/dev/fdset/\d+", disk, v)
                out += [flag, v]
                i += 2
                continue
            out.append(flag)
            i += 1
        if incoming:
            out += ["-incoming", "defer"]
        return out

    def spawn(self, scenario: str, host: int, disk: str | None, incoming: bool,
              autostart: bool) -> tuple[subprocess.Popen, Qmp]:
        d = self.dirs[host]
        for stale in ("qmp.sock", "console.sock", "qga.sock", "vnc.sock", "qemu.pid"):
            unlink(str(d / stale))
        argv = self.argv(scenario, host, disk, incoming, autostart)
        logf = open(d / "qemu.log", "ab")
        p = subprocess.Popen(self.net.argv(host, *argv), stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=logf, start_new_session=True)
        self.procs.append(p)
        return p, qmp_connect(str(d / "qmp.sock"), p)

    def boot(self, scenario: str, name: str, sink: list) -> dict:
        vm = {"name": name}
        if scenario == "disk":
            vm["src_disk"] = str(self.dirs[0] / "disk.qcow2")
            vm["dst_disk"] = str(self.dirs[1] / "disk.qcow2")
            for p in (vm["src_disk"], vm["dst_disk"]):
                unlink(p)
                sh("qemu-img", "create", "-q", "-f", "qcow2", p, str(DISK_BYTES))
            qemu_io_fill(vm["src_disk"])
        vm["src_proc"], vm["src_qmp"] = self.spawn(scenario, 0, vm.get("src_disk"), False, False)
        ser = Serial(str(self.dirs[0] / "console.sock"), "src", sink)
        ser.start()
        vm["src"] = ser
        vm["src_qmp"].cmd("cont")
        return vm

    def migrate(self, vm: dict, scenario: str, sink: list) -> dict:
        disk = scenario == "disk"
        src = vm["src_qmp"]
        src.events.clear()
        t0 = time.perf_counter()
        # The destination: the same command line, waiting for the stream; without a
        # disk it runs by itself once the stream completed (the floor), with one it
        # waits (-S) until the mirror has been ended, as Corral and libvirt do.
        vm["dst_proc"], dst = self.spawn(scenario, 1, vm.get("dst_disk"), True, not disk)
        vm["dst_qmp"] = dst
        ser = Serial(str(self.dirs[1] / "console.sock"), "dst", sink,
                     connect_timeout=MIGRATE_TIMEOUT_S)
        ser.start()
        vm["dst"] = ser
        caps = [{"capability": "events", "state": True},
                {"capability": "auto-converge", "state": True}]
        for q in (src, dst):
            q.cmd("migrate-set-capabilities", capabilities=caps)
        params = {"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": UNLIMITED}
        tls_nbd: dict = {}
        if self.tls:
            # As Corral does: x509 on both ends, each verifying the other's certificate.
            for q, end in ((src, "client"), (dst, "server")):
                q.call("object-add", {"qom-type": "tls-creds-x509", "id": "tls0",
                                      "dir": str(self.certs / end), "endpoint": end,
                                      "verify-peer": True})
            dst.call("migrate-set-parameters", {"tls-creds": "tls0"})
            params.update({"tls-creds": "tls0", "tls-hostname": ADDR[1]})
            tls_nbd = {"tls-creds": "tls0", "tls-hostname": ADDR[1]}
        src.call("migrate-set-parameters", params)
        if disk:
            dst.call("nbd-server-start", {"addr": {"type": "inet", "data": {
                "host": ADDR[1], "port": str(NBD_PORT)}}, **(
                    {"tls-creds": "tls0"} if self.tls else {})})
            dst.call("block-export-add", {"type": "nbd", "id": "disk0", "node-name": "disk0",
                                          "name": "disk0", "writable": True})
            src.cmd("blockdev-add", driver="raw", **{"node-name": "mirror0"}, file={
                "driver": "nbd", "server": {"type": "inet", "host": ADDR[1],
                                            "port": str(NBD_PORT)}, "export": "disk0",
                **tls_nbd})
            src.cmd("blockdev-mirror", **{"job-id": "mirror0"}, device="disk0",
                    target="mirror0", sync="full")
            src.wait_event(lambda e: e["event"] == "BLOCK_JOB_READY", MIGRATE_TIMEOUT_S)
        dst.cmd("migrate-incoming", uri=f"tcp:{ADDR[1]}:{MIGRATION_PORT}")
        src.cmd("migrate", uri=f"tcp:{ADDR[1]}:{MIGRATION_PORT}")
        replies = []
        # Progress as the others see it (Corral polls every 100 ms, libvirt every 50 ms):
        # the dirty rate for the table. Completion itself is taken from the event.
        while True:
            r = src.cmd("query-migrate")
            replies.append(r)
            if r.get("status") in ("completed", "failed", "cancelled"):
                break
            try:
                src.wait_event(lambda e: e["event"] == "MIGRATION" and e["data"]["status"]
                               in ("completed", "failed", "cancelled"), 0.1)
            except TimeoutError:
                pass
        if replies[-1]["status"] != "completed":
            raise RuntimeError(f"raw migration: {replies[-1]}")
        if disk:
            src.cmd("block-job-cancel", device="mirror0")
            src.wait_event(lambda e: e["event"] == "BLOCK_JOB_COMPLETED", 60)
            dst.wait_event(lambda e: e["event"] == "MIGRATION"
                           and e["data"]["status"] == "completed", 60)
            dst.cmd("nbd-server-stop")
            dst.cmd("cont")
        else:
            dst.wait_event(lambda e: e["event"] == "RESUME", 60)
        t_resumed = time.perf_counter()
        # Right at the `completed` event QEMU has not filled in its figures yet
        # (downtime and total-time read 0): ask again, off the guest's path.
        final = replies[-1]
        for _ in range(200):
            if final.get("total-time"):
                break
            time.sleep(0.005)
            final = src.cmd("query-migrate")
        replies[-1] = final
        qmp_raw.quit_qemu(vm.pop("src_proc"), vm.pop("src_qmp"))
        wall = time.perf_counter() - t0
        out = {"t0": t0, "wall_s": wall, "resumed_s": t_resumed - t0,
               "dirty_rate": dirty_rate_of(replies)}
        out.update(migration_figures(replies[-1]))
        out.update(mirror_times([e for _, e in src.events], replies[-1]))
        out.update(switch_times([e for _, e in src.events], [e for _, e in dst.events]))
        return out

    def teardown(self, vm: dict) -> None:
        for k in ("src", "dst"):
            if vm.get(k):
                vm[k].close()
        for p, q in (("src_proc", "src_qmp"), ("dst_proc", "dst_qmp")):
            if vm.get(p):
                qmp_raw.quit_qemu(vm[p], vm[q])
        for k in ("src_disk", "dst_disk"):
            if k in vm:
                unlink(vm[k])


# ---------------------------------------------------------------------------- rounds


def one_round(system, scenario: str, name: str, n_preflight: int) -> dict:
    sink: list = []
    vm = system.boot(scenario, name, sink)
    sample: dict = {"loadavg_1m": os.getloadavg()[0]}
    try:
        guest_shell_ready(vm["src"])
        start_load(vm["src"], scenario)
        if n_preflight:
            sample["preflight"] = system.preflight(vm, n_preflight)
        time.sleep(BEFORE_S)
        m = system.migrate(vm, scenario, sink)
        t0 = m.pop("t0")
        # The counter must go on at the destination.
        if not vm["dst"].wait(b"<C", 30):
            raise RuntimeError("no counter line from the destination")
        time.sleep(AFTER_S)
        split = split_mark(vm["src"], vm["dst"])
        if split:
            # The guest stopped in the middle of printing a mark: its first bytes came
            # from the source, the rest from the destination, where it was completed.
            sink.append((vm["dst"].first_t, "dst", split))
            m["split_mark"] = split.decode()
        m.update(gap_of(sink, t0))
        if scenario == "dirty":
            m["guest_dirty_mib_s"] = dirty_rate_before(sink, t0)
        # A line cut in two at the switch (its start sent by the source, its end by the
        # destination) is missing from both: the bytes around the cut show it.
        m["src_last_bytes"] = vm["src"].text[-24:].decode(errors="replace")
        dst_text = vm["dst"].text
        m["dst_first_bytes"] = dst_text[:24].decode(errors="replace")
        sample.update(m)
    finally:
        system.teardown(vm)
    return sample


def fmt_round(s: dict) -> str:
    parts = [f"gap {s['gap_s'] * 1000:.0f} ms", f"QEMU downtime {s.get('qemu_downtime_ms')} ms",
             f"wall {s['wall_s']:.2f} s"]
    if s.get("ram_transferred"):
        parts.append(f"RAM {s['ram_transferred'] / 2**20:.0f} MiB")
    if s.get("mirror_s"):
        parts.append(f"disk {s['mirror_bytes'] / 2**20 / s['mirror_s']:.0f} MiB/s")
    if s.get("lost_lines"):
        parts.append(f"{s['lost_lines']} counter lines missing")
    return ", ".join(parts)


def rounds(args, systems: dict, res: dict) -> None:
    rng = random.Random(args.seed)
    out = res.setdefault("rounds", {})
    failures: dict = {}
    log("warm-up: one untimed idle migration of each system")
    for k, s in systems.items():
        try:
            w = one_round(s, "idle", "cbm-warm", 0)
            log(f"  warm-up {k}: {fmt_round(w)}")
        except Exception as e:  # recorded; the measured rounds decide
            log(f"  warm-up {k}: FAILED: {e}")
            res.setdefault("errors", []).append(f"warm-up {k}: {e}")
    corral = systems.get("corral")
    for scenario in args.scenarios:
        n = args.rounds if scenario != "idle" else args.rounds_idle
        if corral and "raw" in systems and scenario not in corral.argv_seen:
            # raw QEMU runs Corral's command line for the scenario.
            vm = corral.boot(scenario, f"cbm-argv-{scenario}", [])
            corral.teardown(vm)
        log(f"{SCENARIO_LABEL[scenario]}: {n} rounds of {', '.join(systems)} (shuffled)")
        for i in range(n):
            order = list(systems)
            rng.shuffle(order)
            for k in order:
                if failures.get((k, scenario), 0) >= 2:
                    continue
                time.sleep(SETTLE_S)
                pre = args.n_preflight if k == "corral" else 0
                try:
                    s = one_round(systems[k], scenario, f"cbm-{scenario}", pre)
                except Exception as e:  # a failed round is recorded, the others go on
                    failures[(k, scenario)] = failures.get((k, scenario), 0) + 1
                    log(f"  {k} {scenario} round {i + 1}: FAILED: {e}")
                    res.setdefault("errors", []).append(f"{k} {scenario} round {i + 1}: {e}")
                    continue
                out.setdefault(scenario, {}).setdefault(k, []).append(s)
                log(f"  {k} {scenario} round {i + 1}/{n}: {fmt_round(s)}")


# ---------------------------------------------------------------------------- report


def summary(res: dict) -> dict:
    keys = ("gap_s", "switch_s", "qemu_downtime_ms", "qemu_total_ms", "wall_s",
            "ram_transferred", "mirror_s", "mirror_total_s", "dirty_rate", "before_max_s",
            "corral_downtime_ms", "corral_total_ms", "libvirt_downtime_ms",
            "libvirt_downtime_net_ms", "throttle_percent", "lost_lines", "passes",
            "resumed_s", "guest_dirty_mib_s", "stop_to_completed_s", "stop_to_resume_s",
            "completed_to_resume_s", "corral_seen_after_s", "corral_seen_to_cont_s",
            "corral_last_poll_wait_s")
    out = {}
    for scenario, per in res.get("rounds", {}).items():
        for k, samples in per.items():
            o = out.setdefault(scenario, {}).setdefault(k, {})
            for key in keys:
                v = [s[key] for s in samples if s.get(key) is not None]
                if v:
                    o[key] = stats(v)
            tput = [s["mirror_bytes"] / s["mirror_s"] for s in samples if s.get("mirror_s")]
            if tput:
                o["mirror_bps"] = stats(tput)
            pre = [p for s in samples for p in s.get("preflight", [])]
            if pre:
                o["preflight_wall_s"] = stats([p["wall_s"] for p in pre])
                o["preflight_took_ms"] = stats([p["took_ms"] for p in pre])
    links = res.get("link", [])
    if links:
        out["link_bps"] = stats([x["bits_per_second"] for x in links])
    return out


def cell(s: dict | None, unit: str) -> str:
    if not s:
        return "—"
    conv = {"ms": (1000, "ms", 0), "s": (1, "s", 2), "ms_raw": (1, "ms", 0),
            "MiB": (1 / 2**20, "MiB", 0), "MiB/s": (1 / 2**20, "MiB/s", 0)}[unit]
    f, u, d = conv
    med, lo, hi = (s[x] * f for x in ("median", "min", "max"))
    if s["n"] == 1:
        return f"{med:.{d}f} {u} (1 round)"
    return f"{med:.{d}f} {u} ({lo:.{d}f}–{hi:.{d}f})"


def ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or not b["median"]:
        return "—"
    return f"{a['median'] / b['median']:.2f}×"


def report(res: dict) -> str:
    sm = res["summary"]
    m = res["machine"]
    p = res["params"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Linux {m['kernel']}; Debian "
        f"{m['debian']}; {m['qemu']}; libvirt {m['libvirt']}; corral {m['corral_commit']}; "
        f"{m['iperf3']}. All on TCG. Rounds: {p['rounds_idle']} idle, {p['rounds']} "
        f"for each other scenario; medians (min–max). 1-minute load average during the "
        f"rounds {res['load_min']:.2f}–{res['load_max']:.2f}. Measured for "
        f"{res.get('total_s', 0):.0f} s.", ""]
    if "link_bps" in sm:
        lb = sm["link_bps"]
        lines.append(f"Link (veth → bridge → veth, iperf3, one TCP stream, source → "
                     f"destination, {len(res['link'])} × {p['iperf_secs']} s): "
                     f"{lb['median'] / 1e9:.2f} Gbit/s ({lb['min'] / 1e9:.2f}–"
                     f"{lb['max'] / 1e9:.2f}) = {lb['median'] / 8 / 2**20:.0f} MiB/s.")
        lines.append("")
    cols = [k for k in SYSTEMS if any(k in sm.get(sc, {}) for sc in SCENARIOS)]
    head = ("| | " + " | ".join(LABEL[k] for k in cols)
            + " | Corral ÷ raw | Corral ÷ raw TLS | Corral ÷ libvirt |\n"
            "|---|" + "---|" * (len(cols) + 3))
    lines.append(head)
    rows = [("gap_s", "guest-visible gap (counter lines, across the switch)", "ms"),
            ("qemu_downtime_ms", "QEMU's `downtime` (source, query-migrate)", "ms_raw"),
            ("stop_to_resume_s", "source vCPUs stopped → destination vCPUs run (QEMU events)",
             "ms"),
            ("completed_to_resume_s", "… of which: stream completed → destination runs", "ms"),
            ("wall_s", "whole migration, command → done (wall)", "s"),
            ("qemu_total_ms", "QEMU's `total-time`", "ms_raw"),
            ("ram_transferred", "RAM sent (`ram.transferred`)", "MiB"),
            ("mirror_s", "disk copy: mirror running → ready", "s"),
            ("mirror_bps", "disk copy throughput (1 GiB / mirror time)", "MiB/s"),
            ("before_max_s", "for scale: longest counter interval before the migration", "ms")]
    for scenario in SCENARIOS:
        if scenario not in sm:
            continue
        per = sm[scenario]
        for key, label, unit in rows:
            if not any(key in per.get(k, {}) for k in cols):
                continue
            cells = [cell(per.get(k, {}).get(key), unit) for k in cols]
            c, r, rt, lv = (per.get(k, {}).get(key)
                            for k in ("corral", "raw", "raw_tls", "libvirt"))
            lines.append(f"| {SCENARIO_LABEL[scenario]}: {label} | " + " | ".join(cells)
                         + f" | {ratio(c, r)} | {ratio(c, rt)} | {ratio(c, lv)} |")
    lines.append("")
    extra = []
    for scenario in SCENARIOS:
        c = sm.get(scenario, {}).get("corral", {})
        lvs = sm.get(scenario, {}).get("libvirt", {})
        if "corral_downtime_ms" in c:
            extra.append(f"- {SCENARIO_LABEL[scenario]}: Corral's operation result says "
                         f"downtime {cell(c['corral_downtime_ms'], 'ms_raw')}, total "
                         f"{cell(c.get('corral_total_ms'), 'ms_raw')}.")
        if "libvirt_downtime_ms" in lvs:
            extra.append(f"- {SCENARIO_LABEL[scenario]}: libvirt's own job statistics say "
                         f"\"Total downtime\" {cell(lvs['libvirt_downtime_ms'], 'ms_raw')}, "
                         f"\"Downtime w/o network\" "
                         f"{cell(lvs.get('libvirt_downtime_net_ms'), 'ms_raw')}.")
    for scenario in SCENARIOS:
        c = sm.get(scenario, {}).get("corral", {})
        if "corral_seen_after_s" in c:
            polls = [s.get("corral_last_poll_status") for s in
                     res["rounds"][scenario]["corral"] if s.get("corral_last_poll_status")]
            extra.append(f"- {SCENARIO_LABEL[scenario]}, Corral's switch-over: the source "
                         f"corrald read `completed` {cell(c['corral_seen_after_s'], 'ms')} after "
                         f"QEMU's event (its poll before that read: "
                         f"{', '.join(sorted(set(polls)))}, answered after "
                         f"{cell(c.get('corral_last_poll_wait_s'), 'ms')}); the destination "
                         f"corrald sent `cont` "
                         f"{cell(c.get('corral_seen_to_cont_s'), 'ms')} after that.")
    for scenario in SCENARIOS:
        c = sm.get(scenario, {}).get("corral", {})
        if "preflight_wall_s" in c:
            w, t = c["preflight_wall_s"], c["preflight_took_ms"]
            extra.append(f"- Pre-flight, {SCENARIO_LABEL[scenario]} ({w['n']} runs of `corral "
                         f"migrate VM --to h1 --dry-run`): wall {cell(w, 'ms')}, its `took_ms` "
                         f"{cell(t, 'ms_raw')}; goal ≤ 100 ms: "
                         f"**{'met' if w['median'] <= 0.1 else 'not met'}** (wall), "
                         f"**{'met' if t['median'] <= 100 else 'not met'}** (took_ms).")
    dirty = [s["guest_dirty_mib_s"] for per in res.get("rounds", {}).get("dirty", {}).values()
             for s in per if s.get("guest_dirty_mib_s") is not None]
    if dirty:
        extra.append(f"- The dirtying guest dirtied {statistics.median(dirty):.0f} MiB/s "
                     f"({min(dirty):.0f}–{max(dirty):.0f}, all systems' rounds; timed on the host "
                     f"from the loop's console mark after each 32 MiB, before the migration).")
    unset = [(sc, k) for sc, per in res.get("rounds", {}).items() for k, v in per.items()
             for s in v if s.get("qemu_figures_unset")]
    if unset:
        extra.append(f"- Rounds whose final `query-migrate` reply (the one the daemon read) "
                     f"came before QEMU had filled in `downtime` and `total-time` (both 0), "
                     f"left out of those rows: " + ", ".join(f"{k} {sc}" for sc, k in unset)
                     + ".")
    lost = [(sc, k, s["lost_lines"]) for sc, per in res.get("rounds", {}).items()
            for k, v in per.items() for s in v if s.get("lost_lines")]
    if lost:
        extra.append("- Counter lines missing across the switch (seen whole at neither end): "
                     + "; ".join(
            f"{k} {sc}: {n}" for sc, k, n in lost) + ".")
    for e in res.get("errors", []):
        extra.append(f"- error: {e}")
    return "\n".join(lines + extra) + "\n"


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", help="the corral CLI binary")
    ap.add_argument("--corrald", help="the corrald binary")
    ap.add_argument("--skip", action="append", default=[], choices=SYSTEMS)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--lv-images", required=True, help="a dir libvirt's QEMU can read")
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds-idle", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-preflight", type=int, default=5, help="dry runs per Corral round")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--iperf-runs", type=int, default=3)
    ap.add_argument("--iperf-secs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--corral-rev", default="")
    ap.add_argument("--netns-prefix", default=f"cbm{os.getpid() % 100000}",
                    help="names of the namespaces: PREFIX-sw, PREFIX-h0, PREFIX-h1")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.kernel, args.initrd = os.path.abspath(args.kernel), os.path.abspath(args.initrd)
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    if "corral" in args.skip and "raw" not in args.skip:
        ap.error("raw QEMU runs Corral's command line: --skip corral needs --skip raw")
    # run.sh stops a run with SIGTERM: unwind through the `finally`s below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from bench import machine_info  # python3-libvirt, as the other sections
    work = Path(args.work) / "mig"
    work.mkdir(parents=True, exist_ok=True)
    m = machine_info(argparse.Namespace(corral=args.corral, corral_rev=args.corral_rev))
    m["iperf3"] = sh("iperf3", "--version", check=False).splitlines()[0]
    res = {"machine": m, "params": {
        "rounds_idle": args.rounds_idle, "rounds": args.rounds, "seed": args.seed,
        "iperf_secs": args.iperf_secs, "downtime_limit_ms": DOWNTIME_LIMIT_MS,
        "max_bandwidth": "unlimited", "auto_converge": True, "vcpus": 1,
        "memory_mib": MEMORY_MIB, "disk_bytes": DISK_BYTES, "cmdline": CMDLINE,
        "counter": COUNTER, "dirtier": DIRTIER, "n_preflight": args.n_preflight}}
    net = Net(args.netns_prefix)
    systems: dict = {}
    t_all = time.perf_counter()
    try:
        log(f"namespaces {net.sw}, {', '.join(net.hosts)}")
        net.up()
        res["link_facts"] = net.link_facts()
        log(f"link: iperf3, {args.iperf_runs} × {args.iperf_secs} s")
        res["link"] = iperf(net, args.iperf_secs, args.iperf_runs)
        if "corral" not in args.skip:
            systems["corral"] = Corral(args, net, work)
        if "libvirt" not in args.skip:
            systems["libvirt"] = Libvirt(args, net, work)
        if "raw" not in args.skip:
            systems["raw"] = Raw(args, net, work, systems["corral"])
        if "raw_tls" not in args.skip and "raw" not in args.skip:
            systems["raw_tls"] = Raw(args, net, work, systems["corral"], tls=True)
        for k, s in systems.items():
            log(f"setting up {k}")
            s.setup()
        res["systems"] = list(systems)
        rounds(args, systems, res)
        if "corral" in systems and "raw" in systems:
            res["argv"] = {"corral": systems["corral"].argv_seen,
                           "raw_source_idle": systems["raw"].argv("idle", 0, None, False, False)}
    finally:
        for k, s in reversed(list(systems.items())):
            try:
                s.close()
            except Exception as e:  # cleanup goes on with the others
                log(f"cleanup: {k}: {e}")
        net.down()
        shutil.rmtree(work, ignore_errors=True)
    res["total_s"] = time.perf_counter() - t_all
    loads = [s["loadavg_1m"] for per in res.get("rounds", {}).values() for v in per.values()
             for s in v]
    res["load_min"], res["load_max"] = (min(loads), max(loads)) if loads else (0, 0)
    res["summary"] = summary(res)
    md = report(res)
    Path(args.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    Path(args.md).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
