#!/usr/bin/env python3
"""What each of Corral's default devices costs a guest's boot.

Boots the test guest with the QEMU command line Corral makes for a kernel-boot VM
(crates/corral-qemu/tests/golden/kernel_boot.args, paths moved to a temp dir, no -S)
and with one device group left out at a time, in a shuffled order each round, and
prints the median time from exec to CORRAL-GUEST-READY in the serial log.

    python3 bench/boot_devices.py [--rounds 6] [--guest build/guest]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "crates/corral-qemu/tests/golden/kernel_boot.args")
RUN_DIR = "/var/lib/corral/run/6f1c2a3e-2d4b-4c1e-9a7f-0123456789ab"
CMDLINE = "console=ttyS0 quiet no_timer_check"

# What to leave out: any -device/-chardev/-vnc whose value contains one of these.
VARIANTS = {
    "Corral's command line": [],
    "without VGA + VNC": ["VGA", "vnc.sock"],
    "without the balloon": ["balloon"],
    "without the agent channel": ["qga", "vser0"],
    "without all four (and pvpanic)": ["VGA", "vnc.sock", "balloon", "qga", "vser0", "pvpanic"],
}


def argv(run_dir: str, guest: str, drop: list[str]) -> list[str]:
    with open(GOLDEN) as f:
        golden = [a for a in f.read().split("\n") if a]
    args = [a.replace(RUN_DIR, run_dir).replace("/guest/", guest + "/") for a in golden]
    out, i = [], 0
    while i < len(args):
        if args[i] == "-S":  # start at once, as raw QEMU would
            i += 1
        elif args[i] == "-append":
            out += ["-append", CMDLINE]
            i += 2
        elif args[i] in ("-device", "-chardev", "-vnc") and any(d in args[i + 1] for d in drop):
            i += 2
        else:
            out.append(args[i])
            i += 1
    return ["qemu-system-x86_64"] + out


def boot(guest: str, drop: list[str]) -> float:
    run_dir = tempfile.mkdtemp(prefix="corral-bootdev-")
    try:
        start = time.monotonic()
        qemu = subprocess.Popen(argv(run_dir, guest, drop),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = os.path.join(run_dir, "console.log")
        try:
            while time.monotonic() - start < 120:
                if os.path.exists(log):
                    with open(log, errors="replace") as f:
                        if "CORRAL-GUEST-READY" in f.read():
                            return time.monotonic() - start
                time.sleep(0.01)
            raise RuntimeError(f"no ready line within 120 s (dropped {drop})")
        finally:
            qemu.kill()
            qemu.wait()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--guest", default=os.path.join(ROOT, "build/guest"))
    a = p.parse_args()
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(a.rounds):
        order = list(VARIANTS)
        random.shuffle(order)
        for name in order:
            times[name].append(boot(a.guest, VARIANTS[name]))
    print(f"| exec → CORRAL-GUEST-READY, {a.rounds} rounds | median | min | max |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} s | {min(t):.2f} s | {max(t):.2f} s |")


if __name__ == "__main__":
    main()
