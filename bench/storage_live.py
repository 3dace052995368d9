"""Storage, continued: snapshots of a running VM, and linked clones by `clone --linked`.
Imported by bench/storage.py (its phases 3b and 4, and their rows of the table).

3b. A running 256 MiB guest with a 1 GiB disk, in Corral and under libvirt: snapshot
    create, revert and delete, disk-only and with memory, Corral's API and CLI against
    libvirt's API and `virsh` (internal snapshots with memory, libvirt's default for a
    running domain) and libvirt's external `--disk-only` snapshots. Every memory revert
    is checked: the guest must carry on with the RAM it had, not boot again.
4.  `POST /api/v1/vms/SRC/clone` with `"linked": true` from a stopped VM with a 1 GiB
    disk and one with a 50 GiB disk, on an existing snapshot and with a new one, against
    `qemu-img create -b` on the same snapshot image (what the clone runs).
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import subprocess
import time

import libvirt

from bench import file_size, log, med, ms, paired, run_wall, stats, timed, wait_ready
from storage import (
    BIG_EXTENTS, GIB, IMG_1G, IMG_50G, LV_SNAP, SETTLE_FAST_S, SNAP_CREATE_DISK_ONLY, SRC_50G,
    SRC_VM, Corral, Lv, qemu_io_write, rm, rounds, tag, verdict)

CONSOLE_TIMEOUT_S = 30
CONSOLE_POLL_S = 0.01
# Marks written into the guest are unique within a run, so a match in a console log can
# only come from the command that was just sent (libvirt truncates its log when it
# restarts QEMU; Corral's keeps every boot).
_marks = itertools.count(1)


# ---------------------------------------------------------------------------- guests


def wait_text(path: str, pattern: str, timeout: float = CONSOLE_TIMEOUT_S) -> re.Match | None:
    """Polls a whole serial log until `pattern` (a regex) matches; None on timeout."""
    deadline = time.perf_counter() + timeout
    rx = re.compile(pattern.encode())
    while True:
        try:
            with open(path, "rb") as f:
                m = rx.search(f.read())
        except FileNotFoundError:
            m = None
        if m or time.perf_counter() > deadline:
            return m
        time.sleep(CONSOLE_POLL_S)


class Guest:
    """The test guest's shell on its serial port: a line in, its answer read from the
    console log. `send` is what differs between Corral and libvirt."""

    log_path = ""

    def send(self, line: str, until: str) -> re.Match | None:
        raise NotImplementedError

    def set_mark(self, value: str) -> None:
        k = next(_marks)
        # $((6*7)) is expanded by the guest: the echoed command line cannot match.
        if not self.send(f"echo {value} > /tmp/mark; echo SET-{k}-$((6*7))", f"SET-{k}-42"):
            raise RuntimeError(f"the guest did not answer on {self.log_path}")

    def mark(self) -> str | None:
        """What /tmp/mark (in the guest's RAM: the initramfs) holds now; a guest that
        booted again has none, one that does not answer gives None."""
        k = next(_marks)
        m = self.send(f"echo GET-{k}-$((6*7))-$(cat /tmp/mark 2>/dev/null)-END",
                      rf"GET-{k}-42-(\S*)-END")
        return m.group(1).decode() if m else None


class CorralGuest(Guest):
    def __init__(self, corral: Corral, vm: str):
        self.corral = corral
        self.vm = vm
        uuid = corral.vm(vm)["spec"]["uuid"]
        self.log_path = os.path.join(corral.state_dir, "run", uuid, "console.log")

    def send(self, line: str, until: str) -> re.Match | None:
        # `corral console` with piped input: sends it, prints the answer, detaches.
        subprocess.run(self.corral.cli("console", self.vm), input=(line + "\n").encode(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return wait_text(self.log_path, until)


class LvGuest(Guest):
    def __init__(self, lv: Lv, dom):
        self.conn = lv.conn
        self.dom = dom
        self.log_path = os.path.join(lv.images, f"{dom.name()}.console.log")

    def send(self, line: str, until: str) -> re.Match | None:
        # The domain's serial port is a pty (logged to a file). QEMU notices that
        # libvirtd opened it only on its next poll (up to 1 s later) and reads nothing
        # before: the stream stays open until the answer is in the log.
        st = self.conn.newStream(0)
        self.dom.openConsole(None, st, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        try:
            st.send((line + "\n").encode())
            return wait_text(self.log_path, until)
        finally:
            try:
                st.finish()
            except libvirt.libvirtError:
                st.abort()


def lv_qemu_pid(name: str) -> int:
    with open(f"/run/libvirt/qemu/{name}.pid") as f:
        return int(f.read())


# ---------------------------------------------------------------------------- QMP steps

# Where a Corral memory snapshot's time goes, from corrald's QMP traffic log: named
# points, matched in order: a command sent, a line received, or the reply to the last
# command sent (the first non-event line received after it).
SAVE_STEPS = [("`stop` sent", "sent", '"execute":"stop","id"'),
              ("paused", "reply", ""),
              ("overlays switched (`transaction` answered)", "sent+reply",
               '"execute":"transaction"'),
              ("`migrate` sent", "sent", '"execute":"migrate","id"'),
              ("RAM saved (`query-migrate`: completed)", "recv", '"status": "completed"'),
              ("`cont` sent (before the state file's fsync)", "sent", '"execute":"cont","id"'),
              ("running again (`cont` answered)", "reply", "")]
LOAD_STEPS = [("new QEMU's QMP greeting (old one killed, disks reverted)", "recv", '"QMP"'),
              ("`migrate-incoming` sent", "sent", '"execute":"migrate-incoming"'),
              ("RAM loaded (`query-migrate`: completed)", "recv", '"status": "completed"'),
              ("running (`cont` answered)", "sent+reply", '"execute":"cont","id"')]


def qmp_steps(path: str, t0: float, t1: float, steps) -> dict | None:
    """Seconds from t0 (wall clock) to each step, from the QMP log lines in [t0, t1];
    None if the log does not hold them all (it is truncated at 1 MiB)."""
    from datetime import datetime

    out = {}
    k = 0
    waiting_reply = False
    try:
        f = open(path)
    except FileNotFoundError:
        return None
    with f:
        for line in f:
            ts, _, rest = line.partition(" ")
            try:
                t = datetime.fromisoformat(ts).timestamp()
            except ValueError:
                continue
            if t < t0 - 0.001 or t > t1 + 0.001:
                continue
            name, kind, needle = steps[k]
            recv = rest.startswith("<-")
            if waiting_reply:
                hit = recv and '"event"' not in rest and ('"return"' in rest or '"error"' in rest)
            elif kind == "reply":
                hit = recv and '"event"' not in rest and ('"return"' in rest or '"error"' in rest)
            elif kind == "recv":
                hit = recv and needle in rest
            else:
                hit = not recv and needle in rest
                if hit and kind == "sent+reply":
                    waiting_reply, hit = True, False
                    continue
            if hit:
                out[name] = t - t0
                waiting_reply = False
                k += 1
                if k == len(steps):
                    return out
    return None


# ---------------------------------------------------------------------------- 3b


def phase_running(args, corral: Corral, lv: Lv, disk: str, out: dict) -> None:
    """Corral's SRC_VM (still holding snapshot `base`, which each round's snapshot sits
    on) and libvirt's LV_SNAP domain on its own copy of that disk, both running."""
    live = out.setdefault("running", {})
    n = args.n_live
    snaps = f"/api/v1/vms/{SRC_VM}/snapshots"
    # The same domain (defined anew: it has no snapshots left), with its serial port on a
    # pty plus the log file, so that the bench can type into the guest through libvirt.
    lv.remove(LV_SNAP)
    dom = lv.define(LV_SNAP, disk, console="pty")
    cg = CorralGuest(corral, SRC_VM)
    t0 = time.perf_counter()
    corral.api.call("POST", f"/api/v1/vms/{SRC_VM}/start")
    live["corral_boot_s"] = wait_ready(cg.log_path, file_size(cg.log_path), t0)
    lg = LvGuest(lv, dom)
    t0 = time.perf_counter()
    dom.create()
    live["libvirt_boot_s"] = wait_ready(lg.log_path, 0, t0)
    checks = live.setdefault("resumed", {})
    new_qemu = live.setdefault("new_qemu_on_revert", {})
    qmp_log = os.path.join(os.path.dirname(cg.log_path), "qmp.log")
    steps = live.setdefault("corral_api_steps", {"create": [], "revert": []})

    def corral_pid() -> int:
        return corral.vm(SRC_VM)["status"]["pid"]

    def corral_state() -> str:
        return corral.vm(SRC_VM)["status"]["state"]

    def lv_state() -> str:
        return "running" if dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING else "not running"

    def memory_round(key, guest, create, revert, delete, pid, state):
        """create → revert → delete of a snapshot with memory, each step timed; between
        create and revert the guest's mark changes, so only a guest that resumed from the
        snapshot's RAM reads the old one back."""
        def run(i):
            value = f"{key}-{tag(i)}-{next(_marks)}"
            guest.set_mark(value)
            time.sleep(SETTLE_FAST_S)
            w_create = time.time()
            t_create = timed(create(i))
            w_create = (w_create, time.time())
            guest.set_mark("changed")
            before = pid()
            time.sleep(SETTLE_FAST_S)
            w_revert = time.time()
            t_revert = timed(revert(i))
            w_revert = (w_revert, time.time())
            ok = state() == "running" and guest.mark() == value
            if i >= 0:
                checks.setdefault(key, []).append(ok)
                new_qemu.setdefault(key, []).append(pid() != before)
            if i >= 0 and key == "corral_api":
                for what, w, table in (("create", w_create, SAVE_STEPS),
                                       ("revert", w_revert, LOAD_STEPS)):
                    marks = qmp_steps(qmp_log, *w, table)
                    if marks:
                        steps[what].append(dict(marks, **{"HTTP response": w[1] - w[0]}))
            if not ok:
                log(f"  {key}: the guest did not resume from snapshot round {tag(i)}")
            time.sleep(SETTLE_FAST_S)
            return {"create": t_create, "revert": t_revert, "delete": timed(delete(i))}
        return run

    def api_snap(i, memory):
        return lambda: corral.op("POST", snaps, {"name": f"{'m' if memory else 'd'}{tag(i)}",
                                                 "memory": memory})

    corral_api_mem = memory_round(
        "corral_api", cg,
        lambda i: api_snap(i, True),
        lambda i: lambda: corral.op("POST", f"{snaps}/m{tag(i)}/revert"),
        lambda i: lambda: corral.op("DELETE", f"{snaps}/m{tag(i)}"),
        corral_pid, corral_state)
    corral_cli_mem = memory_round(
        "corral_cli", cg,
        lambda i: lambda: run_wall(corral.cli("snapshot", "create", SRC_VM, f"c{tag(i)}",
                                              "--memory")),
        lambda i: lambda: run_wall(corral.cli("snapshot", "revert", SRC_VM, f"c{tag(i)}")),
        lambda i: lambda: run_wall(corral.cli("snapshot", "delete", SRC_VM, f"c{tag(i)}")),
        corral_pid, corral_state)
    lv_snaps = {}
    libvirt_api_mem = memory_round(
        "libvirt_api", lg,
        lambda i: lambda: lv_snaps.__setitem__(i, dom.snapshotCreateXML(
            f"<domainsnapshot><name>r{tag(i)}</name></domainsnapshot>", 0)),
        lambda i: lambda: dom.revertToSnapshot(lv_snaps[i], 0),
        lambda i: lambda: lv_snaps.pop(i).delete(0),
        lambda: lv_qemu_pid(LV_SNAP), lv_state)
    virsh_cli_mem = memory_round(
        "virsh_cli", lg,
        lambda i: lambda: run_wall(lv.virsh + ["snapshot-create-as", LV_SNAP, f"c{tag(i)}"]),
        lambda i: lambda: run_wall(lv.virsh + ["snapshot-revert", LV_SNAP, f"c{tag(i)}"]),
        lambda i: lambda: run_wall(lv.virsh + ["snapshot-delete", LV_SNAP, f"c{tag(i)}"]),
        lambda: lv_qemu_pid(LV_SNAP), lv_state)

    def corral_api_disk(i):
        s = f"d{tag(i)}"
        t_create = timed(api_snap(i, False))
        time.sleep(SETTLE_FAST_S)
        # Revert powers the VM off and starts it on the reverted disks: the API answers
        # once QEMU runs; the guest then boots, up to its ready line.
        offset = file_size(cg.log_path)
        t0 = time.perf_counter()
        corral.op("POST", f"{snaps}/{s}/revert")
        t_revert = time.perf_counter() - t0
        t_ready = wait_ready(cg.log_path, offset, t0)
        time.sleep(SETTLE_FAST_S)
        return {"create": t_create, "revert": t_revert, "revert_ready": t_ready,
                "delete": timed(lambda: corral.op("DELETE", f"{snaps}/{s}"))}

    def libvirt_ext_disk(i):
        holder = {}
        t_create = timed(lambda: holder.setdefault("snap", dom.snapshotCreateXML(
            f"<domainsnapshot><name>e{tag(i)}</name></domainsnapshot>",
            SNAP_CREATE_DISK_ONLY)))
        if "libvirt_external_revert" not in live:
            try:
                dom.revertToSnapshot(holder["snap"], 0)
                live["libvirt_external_revert"] = "ok"
            except libvirt.libvirtError as e:
                live["libvirt_external_revert"] = str(e)
        time.sleep(SETTLE_FAST_S)
        t_delete = timed(lambda: holder["snap"].delete(0))
        now = dom.XMLDesc(0).split("<source file='", 1)[1].split("'", 1)[0]
        if now != disk:
            raise RuntimeError(f"libvirt's external snapshot delete left the domain on {now}")
        return {"create": t_create, "delete": t_delete}

    # Every variant that switches Corral's overlays live ends with a revert, which starts
    # a new QEMU: a memory snapshot in a QEMU that switched overlays before fails (see
    # memory_after_live_switch), so the linked clone of the running VM, which leaves the
    # QEMU as it is, is measured after these rounds.
    systems = {"corral_api_mem": corral_api_mem, "corral_cli_mem": corral_cli_mem,
               "libvirt_api_mem": libvirt_api_mem, "virsh_cli_mem": virsh_cli_mem,
               "corral_api_disk": corral_api_disk, "libvirt_ext_disk": libvirt_ext_disk}
    log(f"running VMs: warm-up, then {n} interleaved rounds of {len(systems)} variants "
        "(snapshot create, revert, delete)")
    for run in systems.values():
        time.sleep(SETTLE_FAST_S)
        run(-1)
    r = rounds(n, systems, SETTLE_FAST_S, 4246, "running")
    live["s"] = {k: {m: stats(x) for m, x in v.items()} for k, v in r.items()}
    live.update(memory_state_sizes(corral, lv, disk))
    assert dom.snapshotListNames(0) == []
    dom.destroy()

    def corral_linked_live(i):
        # `clone --linked` without `snapshot` of the running VM: a live snapshot
        # `linked-DST`, then the overlay. Untimed: deleting the clone, then the snapshot.
        name = f"cb-llive-{tag(i)}"
        t = timed(lambda: corral.op("POST", f"/api/v1/vms/{SRC_VM}/clone",
                                    {"name": name, "linked": True}))
        corral.delete_vm(name)
        corral.op("DELETE", f"{snaps}/linked-{name}")
        return {"clone": t}

    log(f"running VM: `clone --linked` without `snapshot`, warm-up and {n} rounds")
    corral_linked_live(-1)
    r = rounds(n, {"corral_linked_live": corral_linked_live}, SETTLE_FAST_S, 4247, "running")
    live["s"]["corral_linked_live"] = {"clone": stats(r["corral_linked_live"]["clone"])}
    live["memory_after_live_switch"] = memory_after_live_switch(corral)
    tree = corral.api.call("GET", snaps)
    assert [x["name"] for x in tree["snapshots"]] == ["base"], tree


def memory_after_live_switch(corral: Corral) -> str:
    """A memory snapshot of a QEMU that has switched disk overlays live before (here by
    the linked clones' snapshots). Corral's QEMU then fails to take its image locks
    again after saving the memory; the run records what the API answers. The VM is
    stopped afterwards either way, and the snapshot (kept as disk-only) deleted."""
    snaps = f"/api/v1/vms/{SRC_VM}/snapshots"
    status, body = corral.api.request("POST", snaps, {"name": "after-switch", "memory": True})
    corral.stop(SRC_VM)
    names = [x["name"] for x in corral.api.call("GET", snaps)["snapshots"]]
    if "after-switch" in names:
        corral.op("DELETE", f"{snaps}/after-switch")
    if status == 201:
        return "ok"
    msg = body.get("error") if isinstance(body, dict) else body
    return f"HTTP {status}: {msg}"


def memory_state_sizes(corral: Corral, lv: Lv, disk: str) -> dict:
    """One more snapshot of each, to record how much state a memory snapshot saved."""
    tree = corral.op("POST", f"/api/v1/vms/{SRC_VM}/snapshots", {"name": "size", "memory": True})
    size = next(s for s in tree["snapshots"] if s["name"] == "size")["memory"]["size_bytes"]
    corral.op("DELETE", f"/api/v1/vms/{SRC_VM}/snapshots/size")
    run_wall(lv.virsh + ["snapshot-create-as", LV_SNAP, "size"])
    # -U: QEMU holds the image; the listing only reads its snapshot table.
    table = subprocess.run(["qemu-img", "snapshot", "-U", "-l", disk], capture_output=True,
                           text=True).stdout
    run_wall(lv.virsh + ["snapshot-delete", LV_SNAP, "size"])
    return {"corral_memory_bytes": size, "libvirt_snapshot_table": table}


# ---------------------------------------------------------------------------- 4


def phase_linked_clone(args, corral: Corral, res: dict) -> None:
    """SRC_VM (stopped, 1 GiB written, no snapshots left) and a new VM with a 50 GiB
    disk (512 MiB written in 8 extents), each with a kept snapshot `lbase`; in the same
    rounds, `create --image` from phase 1's images (same sizes, same data), which this
    phase deletes at its end."""
    n = args.n_lclone
    vm = corral.create_vm(SRC_50G, disks=[{"new": {"size_bytes": 50 * GIB}}])
    log("linked clones by `clone --linked`: writing 512 MiB into a 50 GiB disk")
    qemu_io_write(vm["spec"]["disks"][0]["path"], BIG_EXTENTS)
    sources = {"1g": SRC_VM, "50g": SRC_50G}
    frozen = {}
    for which, src in sources.items():
        tree = corral.op("POST", f"/api/v1/vms/{src}/snapshots", {"name": "lbase"})
        lbase = next(s for s in tree["snapshots"] if s["name"] == "lbase")
        frozen[which] = lbase["disks"][0]["file"]
    scratch = os.path.join(args.work, "linked-overlays")
    os.makedirs(scratch, exist_ok=True)

    def on_snapshot(which):
        def run(i):
            name = f"cb-lcs-{which}-{tag(i)}"
            t = timed(lambda: corral.op("POST", f"/api/v1/vms/{sources[which]}/clone",
                                        {"name": name, "linked": True, "snapshot": "lbase"}))
            corral.delete_vm(name)
            return {"clone": t}
        return run

    def new_snapshot(which):
        def run(i):
            name = f"cb-lcn-{which}-{tag(i)}"
            src = sources[which]
            t = timed(lambda: corral.op("POST", f"/api/v1/vms/{src}/clone",
                                        {"name": name, "linked": True}))
            corral.delete_vm(name)
            corral.op("DELETE", f"/api/v1/vms/{src}/snapshots/linked-{name}")
            return {"clone": t}
        return run

    def from_image(which):
        image = {"1g": IMG_1G, "50g": IMG_50G}[which]

        def run(i):
            name = f"cb-lci-{which}-{tag(i)}"
            t = timed(lambda: corral.create_vm(name, image=image))
            corral.delete_vm(name)
            return {"clone": t}
        return run

    def qemu_img(which):
        def run(i):
            dst = os.path.join(scratch, f"q-{which}-{tag(i)}.qcow2")
            t = run_wall(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                          frozen[which], dst])
            rm(dst)
            return {"clone": t}
        return run

    systems = {}
    for which in sources:
        systems[f"corral_snapshot_{which}"] = on_snapshot(which)
        systems[f"corral_new_{which}"] = new_snapshot(which)
        systems[f"qemu_img_{which}"] = qemu_img(which)
        systems[f"corral_image_{which}"] = from_image(which)
    log(f"linked clones by `clone --linked`: {n} interleaved rounds of {len(systems)} variants")
    for run in systems.values():
        run(-1)
    r = rounds(n, systems, SETTLE_FAST_S, 4247, "clone --linked")
    res["linked_clone_s"] = {k: stats(v["clone"]) for k, v in r.items()}
    probe = corral.op("POST", f"/api/v1/vms/{SRC_50G}/clone",
                      {"name": "cb-lcs-probe", "linked": True, "snapshot": "lbase"})
    path = probe["spec"]["disks"][0]["path"]
    res["linked_clone_overlay_bytes"] = {"file": os.path.getsize(path),
                                         "allocated": os.stat(path).st_blocks * 512}
    corral.delete_vm("cb-lcs-probe")
    for src in sources.values():
        corral.op("DELETE", f"/api/v1/vms/{src}/snapshots/lbase")
    corral.delete_vm(SRC_50G)
    for img in (IMG_1G, IMG_50G):
        corral.op("DELETE", f"/api/v1/images/{img}")


# ---------------------------------------------------------------------------- report


def report_running(sn: dict, row) -> None:
    live = sn.get("running", {})
    s = live.get("s")
    if not s:
        return
    ok = live.get("resumed", {})
    pids = live.get("new_qemu_on_revert", {})

    def resumed(key: str) -> str:
        v = ok.get(key, [])
        return f"resumed where it was in {sum(v)}/{len(v)} rounds"

    for op in ("create", "revert", "delete"):
        ca, la = s["corral_api_mem"][op], s["libvirt_api_mem"][op]
        _, cell = paired(ca, la)
        what = {"create": "create", "revert": "revert (until the guest runs again)",
                "delete": "delete"}[op]
        extra_c = f"; {resumed('corral_api')}" if op == "revert" else ""
        extra_l = f"; {resumed('libvirt_api')}" if op == "revert" else ""
        row(f"3. Snapshot {what}, running VM, with memory, API", med(ca) + extra_c,
            f"libvirt, internal snapshot with memory: {med(la)}{extra_l}", cell, "info")
    for op in ("create", "revert", "delete"):
        cc, vc = s["corral_cli_mem"][op], s["virsh_cli_mem"][op]
        virsh = "snapshot-create-as" if op == "create" else f"snapshot-{op}"
        extra_c = f"; {resumed('corral_cli')}" if op == "revert" else ""
        extra_l = f"; {resumed('virsh_cli')}" if op == "revert" else ""
        row(f"3. Snapshot {op}, running VM, with memory, CLI wall time",
            f"`corral snapshot {op}{' --memory' if op == 'create' else ''}` {med(cc)}{extra_c}",
            f"`virsh {virsh}`: {med(vc)}{extra_l}", f"{cc['median'] / vc['median']:.2f}×",
            "info")
    cd, le = s["corral_api_disk"], s["libvirt_ext_disk"]
    _, cell = paired(cd["create"], le["create"])
    row("3. Snapshot create, running VM, disk only, API", med(cd["create"]),
        f"libvirt `--disk-only` (external): {med(le['create'])}", cell, "info")
    row("3. Snapshot revert, running VM, disk only, API (the VM is restarted; the API "
        "answers once QEMU runs)", med(cd["revert"]),
        f"libvirt `--disk-only`: *{live.get('libvirt_external_revert', '?')}*", "—", "info")
    row("3. Snapshot revert, running VM, disk only: request → the guest's ready line",
        med(cd["revert_ready"]),
        f"for scale: a cold boot to the ready line, {ms(live['corral_boot_s'])} (Corral), "
        f"{ms(live['libvirt_boot_s'])} (libvirt)", "—", "info")
    _, cell = paired(cd["delete"], le["delete"])
    row("3. Snapshot delete, running VM, disk only, API (a snapshot on top of another)",
        med(cd["delete"]), f"libvirt `--disk-only` (external; block-commit): "
        f"{med(le['delete'])}", cell, "info")
    probe = live.get("memory_after_live_switch")
    if probe:
        row("3. Snapshot with memory of a running VM whose QEMU switched overlays live "
            "before (a disk-only snapshot or `clone --linked` since it started)", probe,
            "", "—", "known bug" if probe != "ok" else "info")
    def restarted(*keys: str) -> str:
        label = {"corral_api": "API", "corral_cli": "CLI", "libvirt_api": "API",
                 "virsh_cli": "virsh"}
        return ", ".join(f"{label[k]} {sum(pids[k])}/{len(pids[k])}" for k in keys if k in pids)

    if pids:
        row("3. Memory revert of a running VM: rounds in which a new QEMU process ran the "
            "guest afterwards", restarted("corral_api", "corral_cli"),
            f"libvirt: {restarted('libvirt_api', 'virsh_cli')}", "—", "info")


def report_live_steps(res: dict) -> str:
    """Where Corral's memory snapshot create and revert go (API rounds, from QMP)."""
    steps = res.get("snapshots", {}).get("running", {}).get("corral_api_steps")
    if not steps or not (steps["create"] or steps["revert"]):
        return ""
    out = []
    for what, title in (("create", "Memory snapshot create"), ("revert", "Memory revert")):
        samples = steps[what]
        if not samples:
            continue
        out.append(f"\n| {title}, Corral API ({len(samples)} rounds) | median ms since the "
                   "request |\n|---|---|")
        for name in samples[0]:
            vals = sorted(x[name] for x in samples if name in x)
            out.append(f"| {name} | {statistics.median(vals) * 1000:.1f} |")
    return "\n".join(out) + "\n"


def report_linked_clone(res: dict, row) -> None:
    lc = res.get("linked_clone_s")
    if not lc:
        return
    size = {"1g": "1 GiB disk (1 GiB written)", "50g": "50 GiB disk (512 MiB written)"}
    for which in ("1g", "50g"):
        cs, cn, qi = lc[f"corral_snapshot_{which}"], lc[f"corral_new_{which}"], \
            lc[f"qemu_img_{which}"]
        row(f"4. Linked clone, {size[which]}: `POST /api/v1/vms/SRC/clone` with `linked` and "
            f"`snapshot` (the clone alone)", med(cs),
            f"`qemu-img create -b` on the snapshot's image (the floor): {med(qi)}",
            f"{cs['median'] / qi['median']:.2f}×", f"≤ 50 ms: {verdict(cs['median'] <= 0.050)}")
        row(f"4. Linked clone, {size[which]}: `clone` with `linked`, no `snapshot` "
            f"(snapshot `linked-DST` + clone)", med(cn), f"the clone alone: {med(cs)}",
            f"{cn['median'] / cs['median']:.2f}×", f"≤ 50 ms: {verdict(cn['median'] <= 0.050)}")
        img = lc.get(f"corral_image_{which}")
        if img:
            _, cell = paired(cs, img)
            row(f"4. Linked clone, {size[which]}, the clone alone vs `create --image` (an "
                f"image of the same size and data, same rounds)", med(cs),
                f"`POST /api/v1/vms` with `image`: {med(img)}", cell, "info")
    for variant, label in (("snapshot", "the clone alone"), ("new", "snapshot + clone")):
        big, small = lc[f"corral_{variant}_50g"], lc[f"corral_{variant}_1g"]
        q, cell = paired(big, small)
        row(f"4. Linked clone, 50 GiB disk vs 1 GiB disk, {label}", med(big),
            f"1 GiB disk: {med(small)}", cell,
            f"the same (0.90–1.10×): {verdict(0.9 <= q <= 1.1)}")
    live = res.get("snapshots", {}).get("running", {}).get("s", {}).get("corral_linked_live")
    if live:
        cn = lc["corral_new_1g"]
        row("4. Linked clone of the *running* 1 GiB VM, no `snapshot` (live snapshot + clone)",
            med(live["clone"]), f"the same of the stopped VM: {med(cn)}",
            f"{live['clone']['median'] / cn['median']:.2f}×",
            f"≤ 50 ms: {verdict(live['clone']['median'] <= 0.050)}")
