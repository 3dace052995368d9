#!/usr/bin/env python3
"""Web console bench: Corral's web console vs Cockpit Machines, in headless chromium.

Both sides get NVMS stopped VMs (Corral: POST /api/v1/vms; libvirt: defined domains),
then bench/web/bench.mjs times, ROUNDS times with a fresh browser context each:
dashboard first-contentful-paint and data on screen, VM list with all VMs represented,
and filtering the list down to one name. Everything made is removed again (the bench
user, the domains, corrald and its state, cockpit-ws and dbus if this run started them).

  python3 bench/web.py --corrald target/release/corrald --rounds 10 [--skip-cockpit]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from unixhttp import Client  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "bench-web-"
USER, PASSWORD = "corralbenchweb", "bench-web-Pw-0417"


def log(msg: str) -> None:
    print(f"bench/web: {msg}", file=sys.stderr, flush=True)


def stats(xs: list[float]) -> dict:
    s = sorted(xs)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {"median": statistics.median(s), "p95": p95, "samples": xs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what: str, secs: float = 60) -> None:
    end = time.time() + secs
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def browse(target: str, url: str, args) -> dict:
    env = dict(os.environ, TARGET=target, URL=url, USER_NAME=USER, PASSWORD=PASSWORD,
               ROUNDS=str(args.rounds), NVMS=str(args.nvms), PREFIX=PREFIX)
    out = subprocess.run(["node", os.path.join(HERE, "web", "bench.mjs")], env=env,
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    res = json.loads(out)
    failed = res.pop("failed", [])
    return {**{k: stats(v) for k, v in res.items()}, "failed_rounds": failed}


def run_corral(args) -> dict:
    state = tempfile.mkdtemp(prefix="corral-webbench-", dir="/var/tmp")
    sock = os.path.join(state, "corrald.sock")
    port = free_port()
    # No default NAT network: its bridge, dnsmasq and nftables tables would outlive the
    # run in the host's namespace (the VMs here have no NIC anyway).
    d = subprocess.Popen([args.corrald, "--state-dir", state, "--socket", sock,
                          "--listen", f"127.0.0.1:{port}", "--no-default-network"],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, "log"), "w"))
    try:
        wait_for(lambda: os.path.exists(sock), "corrald's socket")
        api = Client(sock)
        api.call("POST", "/api/v1/users", {"username": USER, "password": PASSWORD, "role": "admin"},
                 ok=(200, 201))
        log(f"corral: defining {args.nvms} VMs")
        for i in range(args.nvms):
            api.call("POST", "/api/v1/vms", {
                "name": f"{PREFIX}{i:04d}", "memory_mib": 64, "vcpus": 1, "networks": [],
                "kernel": {"kernel": args.kernel, "initrd": args.initrd, "cmdline": "console=ttyS0"}},
                ok=(201,))
        # Let the host metrics history get a sample or two.
        time.sleep(3)
        return browse("corral", f"https://127.0.0.1:{port}", args)
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(30)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
        shutil.rmtree(state, ignore_errors=True)


DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type>
<kernel>{kernel}</kernel><initrd>{initrd}</initrd><cmdline>console=ttyS0</cmdline></os>
<devices><serial type='pty'/></devices></domain>"""


def listening(path: str) -> bool:
    """Whether a Unix socket accepts connections (a stale socket file does not)."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def started(argv: list[str], check) -> subprocess.Popen | None:
    """Starts argv unless check() already holds; returns the process it started."""
    if check():
        return None
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(check, argv[0], 60)
    return p


def run_cockpit(args) -> dict:
    names = [f"{PREFIX}{i:04d}" for i in range(args.nvms)]
    mine: list[subprocess.Popen] = []
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    user_made = False
    try:
        bus = "/run/dbus/system_bus_socket"
        if not listening(bus):
            # Left by a system bus that is gone: dbus-daemon refuses to start over them.
            for stale in (bus, "/run/dbus/pid"):
                if os.path.exists(stale):
                    os.unlink(stale)
        # The system bus first: libvirtd connects to it at start-up (polkit checks of
        # non-root clients), and Cockpit Machines reaches libvirt through libvirt-dbus on it.
        dbus = started(["dbus-daemon", "--system", "--nofork"], lambda: listening(bus))
        mine += [p for p in [dbus] if p]
        lvd = started(["libvirtd"], lambda: subprocess.run(virsh + ["version"], capture_output=True).returncode == 0)
        mine += [p for p in [lvd] if p]
        subprocess.run(["useradd", "-M", "-s", "/bin/bash", USER], check=True)
        user_made = True
        subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
        # Cockpit Machines lists the system's domains only with administrative access,
        # which Cockpit's bridge gets by sudo with the login password: group sudo (the
        # user, and with it the membership, is removed after the run).
        subprocess.run(["usermod", "-aG", "libvirt,sudo", USER], check=False)
        log(f"libvirt: defining {args.nvms} domains")
        # One connection for all defines: a virsh process per domain costs seconds each
        # on a TCG host (libvirtd's per-connection work), hours for 1000.
        import libvirt  # Debian's python3-libvirt: run with /usr/bin/python3
        conn = libvirt.open("qemu:///system")
        try:
            for n in names:
                conn.defineXML(DOMAIN.format(name=n, kernel=args.kernel, initrd=args.initrd))
        finally:
            conn.close()
        port = free_port()
        ws = subprocess.Popen(["/usr/lib/cockpit/cockpit-ws", "--no-tls", "--address", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mine.append(ws)
        wait_for(lambda: subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/"],
                                        capture_output=True).returncode == 0, "cockpit-ws")
        return browse("cockpit", f"http://127.0.0.1:{port}", args)
    finally:
        for n in names:
            subprocess.run(virsh + ["undefine", n], capture_output=True)
        if user_made:
            # Cockpit's session (cockpit-bridge) may still be going: end it, then the user.
            subprocess.run(["pkill", "-u", USER], check=False)
            time.sleep(1)
            subprocess.run(["userdel", "-f", USER], check=False)
        for p in reversed(mine):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corrald", default="target/release/corrald")
    ap.add_argument("--kernel", default="/work/main/build/guest/vmlinuz")
    ap.add_argument("--initrd", default="/work/main/build/guest/initrd.img")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--nvms", type=int, default=1000)
    ap.add_argument("--skip-cockpit", action="store_true")
    ap.add_argument("--skip-corral", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "web.json"))
    args = ap.parse_args()
    res = {"rounds": args.rounds, "nvms": args.nvms}
    if not args.skip_corral:
        res["corral"] = run_corral(args)
    if not args.skip_cockpit:
        res["cockpit"] = run_cockpit(args)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    for side in ("corral", "cockpit"):
        for k, s in res.get(side, {}).items():
            if k == "failed_rounds":
                for f in s:
                    print(f"{side:8} failed: {f}")
                continue
            print(f"{side:8} {k:12} median {s['median']:8.0f} ms  p95 {s['p95']:8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
