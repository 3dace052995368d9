#!/usr/bin/env python3
"""Diagnostic: what moving a new process into a cgroup costs on this kernel (one
`cgroup.procs` write per hierarchy: cpu, memory and pids on cgroup v1, the one tree on
v2, as Corral does for each QEMU). Corral used to do this in the child between fork and
exec, which put it on the start path; since 2ef5c25 it attaches QEMU while QEMU
initialises. This shows why that mattered, and whether it still would on a given host.

Three cases:
  fresh:  a new cgroup directory, after a second of quiet (what a Corral start does:
          vm-<uuid> is made at start and removed at stop, and starts are seconds apart)
  reused: an existing directory, after a second of quiet
  hot:    an existing directory, right after another join (no quiet before it)
If fresh ≈ reused ≫ hot, the cost is the kernel's cgroup migration lock leaving its
fast mode (an RCU grace period), not the new directory.

    cgroup_join.py [TRIALS]      # prints JSON: per-case samples in seconds

Run as root. Everything it creates is under <hierarchy>/corral-bench-diag/, removed again.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

ROOT = "/sys/fs/cgroup"
V1 = ("cpu", "memory", "pids")  # the controllers Corral uses on v1


def hierarchies() -> list[str]:
    if os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
        return [ROOT]
    return [os.path.join(ROOT, c) for c in V1
            if os.path.exists(os.path.join(ROOT, c, "cgroup.procs"))]


def join_in_child(dirs: list[str]) -> float:
    """Forks; the child writes "0" to each cgroup.procs and reports how long that took."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            t0 = time.perf_counter()
            for d in dirs:
                fd = os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            os.write(w, repr(time.perf_counter() - t0).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        elapsed = float(f.read())
    os.waitpid(pid, 0)
    return elapsed


def main() -> int:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    hs = hierarchies()
    if not hs:
        print(json.dumps({"error": "no writable cgroup hierarchy"}))
        return 0
    base = [os.path.join(h, "corral-bench-diag") for h in hs]
    out: dict[str, list[float]] = {"fresh": [], "reused": [], "hot": []}
    try:
        reused = [os.path.join(b, "reused") for b in base]
        for d in reused:
            os.makedirs(d, exist_ok=True)
        for i in range(trials):
            fresh = [os.path.join(b, f"t{i}") for b in base]
            for d in fresh:
                os.makedirs(d)
            time.sleep(1)
            out["fresh"].append(join_in_child(fresh))
            for d in fresh:
                os.rmdir(d)
            time.sleep(1)
            out["reused"].append(join_in_child(reused))
            out["hot"].append(join_in_child(reused))
    finally:
        for b in base:
            if os.path.isdir(b):
                for sub in os.listdir(b):
                    p = os.path.join(b, sub)
                    if os.path.isdir(p):
                        os.rmdir(p)
                os.rmdir(b)
    print(json.dumps({"hierarchies": hs, **{k: {"median": statistics.median(v), "samples": v}
                                             for k, v in out.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
