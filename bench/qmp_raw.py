#!/usr/bin/env python3
"""The minimal way to start a paused QEMU and let it run: the "raw QEMU" baseline.

Spawn QEMU (with `-S` and a QMP unix socket in its argv), connect to the socket as
soon as it accepts, send `qmp_capabilities`, then `cont`, and stop the clock at the
reply to `cont`. No daemon, no database, no confinement (unless the argv asks for it).

    qmp_raw.py QMP_SOCKET -- qemu-system-x86_64 ARGS...   # prints milliseconds, then quits QEMU

Used as a module by bench.py. Python 3.11 standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

# How often to retry connecting while QEMU has not opened its monitor yet.
POLL_S = 0.001


class Qmp:
    """A blocking QMP connection: greeting, then one command at a time."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def greeting(self) -> dict:
        msg = self._line()
        if "QMP" not in msg:
            raise RuntimeError(f"not a QMP greeting: {msg}")
        return msg

    def cmd(self, name: str, **args) -> object:
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._line()
            if "event" in msg:  # e.g. RESUME arrives before cont's reply
                continue
            if "error" in msg:
                raise RuntimeError(f"{name}: {msg['error']}")
            return msg.get("return")

    def close(self) -> None:
        self.sock.close()


def connect_when_ready(path: str, proc: subprocess.Popen, timeout: float = 20.0) -> Qmp:
    """Connects to QEMU's QMP socket as soon as QEMU listens on it."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return Qmp(s)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with {proc.returncode} before its monitor was up")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("QEMU did not open its QMP socket")
        time.sleep(POLL_S)


def start(argv: list[str], qmp_path: str, log_path: str = os.devnull):
    """Spawns QEMU paused and continues it. Returns (seconds spawn->cont reply, proc, qmp,
    marks), marks being seconds since the spawn at each step (for the start profile).

    The clock starts right before the spawn and stops when `cont` has been answered,
    i.e. when the vCPUs are running: the same end point as Corral's start request.
    """
    try:
        os.unlink(qmp_path)
    except FileNotFoundError:
        pass
    log = open(log_path, "ab")
    marks = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    marks["spawned"] = time.perf_counter() - t0
    qmp = connect_when_ready(qmp_path, proc)
    marks["connected"] = time.perf_counter() - t0
    qmp.greeting()
    marks["greeting"] = time.perf_counter() - t0
    qmp.cmd("qmp_capabilities")
    marks["capabilities"] = time.perf_counter() - t0
    qmp.cmd("cont")
    elapsed = time.perf_counter() - t0
    marks["cont"] = elapsed
    log.close()
    return elapsed, proc, qmp, marks


def quit_qemu(proc: subprocess.Popen, qmp: Qmp) -> None:
    """Asks QEMU to quit and waits for it (SIGKILL if it hangs)."""
    try:
        qmp.cmd("quit")
    except (ConnectionError, OSError, RuntimeError):
        pass
    qmp.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print("usage: qmp_raw.py QMP_SOCKET -- QEMU ARGS...", file=sys.stderr)
        return 2
    elapsed, proc, qmp, _ = start(sys.argv[3:], sys.argv[1])
    print(f"{elapsed * 1000:.1f}")
    quit_qemu(proc, qmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
