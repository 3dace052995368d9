#!/usr/bin/python3
"""Storage: Corral vs qemu-img vs libvirt (and virt-clone), side by side, in one run.
Driven by bench/run.sh (`--only storage`, or after the other sections in a full run).

1. Linked clones: `POST /api/v1/vms` with `"image"`, from a 1 GiB image (1 GiB written)
   and from a 50 GiB image (512 MiB written, spread over the 50 GiB), against the floor
   (`qemu-img create -b`, what Corral runs) and libvirt's way (a volume with a
   `<backingStore>` in a pool, then `virDomainDefineXML`).
2. Full clone of a stopped VM whose disk holds 1 GiB of written data: Corral's clone
   operation against `qemu-img convert -O qcow2` of the same file, the same plus an
   fsync of the copy (Corral's durability), and `virt-clone` of a libvirt domain defined
   on the same file.
3. Snapshots of a stopped 256 MiB VM with that disk: create, revert, delete, Corral
   (external overlays) against libvirt (internal qcow2 snapshots: libvirt 9.0 cannot
   revert external ones, which the run checks and reports), API and CLI. Then the same
   VM running (bench/storage_live.py): disk-only and memory snapshots against libvirt's
   internal snapshots with memory and its external disk-only ones.
4. Linked clones by `POST /api/v1/vms/SRC/clone` with `"linked": true`, of a VM with a
   1 GiB disk and of one with a 50 GiB disk (bench/storage_live.py).

As in bench.py, everything is timed here with time.perf_counter(), and the variants of
each measurement run in rounds, in a freshly shuffled (seeded) order every round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    LV_URI, log, machine_info, med, ms, paired, run_wall, stats, timed)
from unixhttp import Client, HttpError  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
MEMORY_MIB = 256
CMDLINE = "console=ttyS0 quiet no_timer_check"
IMG_1G = "cb-img-1g"
IMG_50G = "cb-img-50g"
SRC_VM = "cb-src"          # Corral's VM with the 1 GiB disk (clone source, snapshots)
SRC_50G = "cb-src50"       # Corral's VM with the 50 GiB disk (`clone --linked` source)
LV_SRC = "cb-lvsrc"        # libvirt domain on the very same file (virt-clone source)
LV_SNAP = "cb-lvsnap"      # libvirt domain on its own copy of it (snapshots)
# The 50 GiB image: 8 extents of 64 MiB, one every 6400 MiB, all written.
BIG_EXTENTS = [(i * 6400 * MIB, 64 * MIB) for i in range(8)]
SETTLE_FAST_S = 0.2        # pause before each timed step of the quick measurements
SETTLE_COPY_S = 1.0        # ... and before each 1 GiB copy
SNAP_CREATE_DISK_ONLY = getattr(libvirt, "VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY", 16)

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def qemu_io_write(path: str, extents: list[tuple[int, int]]) -> None:
    """Writes pattern 7 over each (offset, length), then puts the file on disk, so that
    no writeback of it is still running while anything is timed."""
    argv = ["qemu-io", "-f", "qcow2"]
    for off, length in extents:
        argv += ["-c", f"write -P 7 {off} {length}"]
    subprocess.run(argv + [path], check=True, stdout=subprocess.DEVNULL)
    fsync_path(path)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def tag(i: int) -> str:
    """Round i's suffix for names; the untimed warm-up (i < 0) is "w"."""
    return str(i + 1) if i >= 0 else "w"


def rm(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Corral:
    def __init__(self, args):
        self.bin = args.corral
        self.sock = args.socket
        self.state_dir = args.state_dir
        self.api = Client(args.socket)
        self.kernel = {"kernel": args.kernel, "initrd": args.initrd, "cmdline": CMDLINE}

    def cli(self, *argv: str) -> list[str]:
        return [self.bin, "--socket", self.sock, *argv]

    def op(self, method: str, url: str, body=None) -> dict:
        """A request that may answer at once (200/201) or with an operation (202), which
        is then waited for: the time of this call is the time of the whole action."""
        status, o = self.api.request(method, url, body)
        if status == 202:
            o = self.api.call("GET", f"/api/v1/operations/{o['id']}/wait?timeout_secs=600")
            if o.get("state") != "succeeded":
                raise RuntimeError(f"corral {method} {url}: {o}")
        elif status not in (200, 201, 204):
            raise HttpError(status, o)
        return o

    def create_vm(self, name: str, **extra) -> dict:
        body = {"name": name, "memory_mib": MEMORY_MIB, "vcpus": 1, "kernel": self.kernel}
        body.update(extra)
        return self.api.call("POST", "/api/v1/vms", body, ok=(201,))

    def delete_vm(self, name: str) -> None:
        self.api.call("DELETE", f"/api/v1/vms/{name}?force=true")

    def vm(self, name: str) -> dict:
        return self.api.call("GET", f"/api/v1/vms/{name}")

    def stop(self, name: str) -> None:
        o = self.api.call("POST", f"/api/v1/vms/{name}/stop", {"force": True}, ok=(202,))
        o = self.api.call("GET", f"/api/v1/operations/{o['id']}/wait?timeout_secs=30")
        if o.get("state") != "succeeded":
            raise RuntimeError(f"corral stop {name}: {o}")

    def image_from_extents(self, image: str, size: int, extents) -> dict:
        """A scratch volume of `size`, written over `extents`, copied into `image`, then
        removed: only the image stays."""
        vol = f"{image}-src"
        v = self.api.call("POST", "/api/v1/volumes", {"name": vol, "size_bytes": size},
                          ok=(200, 201))
        qemu_io_write(v["path"], extents)
        self.op("POST", "/api/v1/images", {"name": image, "from_volume": vol})
        self.op("DELETE", f"/api/v1/volumes/{vol}")
        img = self.api.call("GET", f"/api/v1/images/{image}")
        fsync_path(img["path"])
        return img


def domain_xml(name: str, disk: str, lv_images: str, console: str = "file") -> str:
    """bench.py's libvirt twin of a Corral VM (TCG, machine pc, same kernel/initrd,
    256 MiB, 1 vCPU, no NIC, nothing libvirt would add), plus one virtio qcow2 disk.
    The serial port goes to a file, or with `console="pty"` to a pty that libvirt's
    console API can type into, logged to the same file."""
    log_file = f"{lv_images}/{name}.console.log"
    serial = (f"<serial type='file'>\n      <source path='{log_file}' append='off'/>"
              if console == "file" else
              f"<serial type='pty'>\n      <log file='{log_file}' append='off'/>")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{lv_images}/vmlinuz</kernel>
    <initrd>{lv_images}/initrd.img</initrd>
    <cmdline>{CMDLINE}</cmdline>
  </os>
  <features><acpi/><vmport state='off'/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    {serial}
      <target port='0'/>
    </serial>
  </devices>
</domain>
"""


class Lv:
    def __init__(self, args):
        self.conn = libvirt.open(LV_URI)
        self.images = args.lv_images
        self.virsh = ["virsh", "-q", "-c", LV_URI]
        self.pools = []

    def transient_pool(self, name: str, path: str):
        """A dir pool that exists only until destroyed. Pools for the directories the
        run uses also stop virt-clone from defining persistent, autostarted pools of
        its own for them (it does that for any directory no pool covers)."""
        pool = self.conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>",
            0)
        self.pools.append(pool)
        return pool

    def define(self, name: str, disk: str, console: str = "file"):
        return self.conn.defineXML(domain_xml(name, disk, self.images, console))

    def remove(self, name: str) -> None:
        try:
            d = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        if d.isActive():
            d.destroy()
        d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

    def close(self) -> None:
        for p in self.pools:
            try:
                p.destroy()
            except libvirt.libvirtError as e:
                log(f"cleanup: pool {p.name()}: {e}")


def rounds(n: int, systems: dict, settle: float, seed: int, label: str) -> dict:
    """Runs every system once per round in a fresh shuffled order; each returns a dict
    of named durations (seconds). Returns {system: {name: [samples]}}."""
    rng = random.Random(seed)
    out = {k: {} for k in systems}
    keys = list(systems)
    for i in range(n):
        order = keys[:]
        rng.shuffle(order)
        for k in order:
            time.sleep(settle)
            for m, v in systems[k](i).items():
                out[k].setdefault(m, []).append(v)
        log(f"  {label} round {i + 1}/{n}: " + ", ".join(
            f"{k} " + "/".join(f"{v[-1] * 1000:.0f}" for v in out[k].values()) + " ms"
            for k in keys))
    return out


# ---------------------------------------------------------------------------- phases


def phase_linked(args, corral: Corral, lv: Lv, res: dict) -> None:
    n = args.n_linked
    log("linked clones: making a 1 GiB image (1 GiB written) and a 50 GiB image "
        "(512 MiB written in 8 extents)")
    imgs = {"1g": corral.image_from_extents(IMG_1G, GIB, [(0, GIB)]),
            "50g": corral.image_from_extents(IMG_50G, 50 * GIB, BIG_EXTENTS)}
    res["images"] = {k: {"path": v["path"], "virtual_bytes": v["size_bytes"],
                         "allocated_bytes": allocated(v["path"])} for k, v in imgs.items()}
    scratch = os.path.join(args.work, "overlays")
    os.makedirs(scratch, exist_ok=True)
    pool = lv.transient_pool("cb-overlays", scratch)

    def corral_round(which):
        def run(i):
            name = f"cb-lc-{which}-{tag(i)}"
            t = timed(lambda: corral.create_vm(name, image=imgs[which]["name"]))
            corral.delete_vm(name)
            return {"create": t}
        return run

    def qemu_img_round(which):
        def run(i):
            dst = os.path.join(scratch, f"q-{which}-{tag(i)}.qcow2")
            t = run_wall(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                          imgs[which]["path"], dst])
            rm(dst)
            return {"create": t}
        return run

    def libvirt_round(which):
        img = imgs[which]

        def run(i):
            name = f"cb-lv-lc-{which}-{tag(i)}"
            vol_xml = f"""<volume><name>{name}.qcow2</name>
  <capacity unit='bytes'>{img['size_bytes']}</capacity>
  <target><format type='qcow2'/></target>
  <backingStore><path>{img['path']}</path><format type='qcow2'/></backingStore>
</volume>"""
            t0 = time.perf_counter()
            vol = pool.createXML(vol_xml, 0)
            dom = lv.define(name, vol.path())
            t = time.perf_counter() - t0
            dom.undefine()
            vol.delete(0)
            return {"create": t}
        return run

    systems = {}
    for which in ("1g", "50g"):
        systems[f"corral_api_{which}"] = corral_round(which)
        systems[f"qemu_img_{which}"] = qemu_img_round(which)
        systems[f"libvirt_api_{which}"] = libvirt_round(which)
    log(f"linked clones: {n} interleaved rounds of {len(systems)} variants")
    for run in systems.values():  # warm-up, untimed
        run(-1)
    r = rounds(n, systems, SETTLE_FAST_S, 4243, "linked")
    res["linked_s"] = {k: stats(v["create"]) for k, v in r.items()}
    # What a linked clone's disk is: an empty overlay, whatever the image's size.
    probe = corral.create_vm("cb-lc-probe", image=IMG_50G)
    path = probe["spec"]["disks"][0]["path"]
    res["linked_overlay_bytes"] = {"file": os.path.getsize(path), "allocated": allocated(path)}
    corral.delete_vm("cb-lc-probe")
    # The images stay for phase 4 (bench/storage_live.py), which deletes them.


def phase_clone(args, corral: Corral, lv: Lv, res: dict) -> None:
    n = args.n_clone
    vm = corral.create_vm(SRC_VM, disks=[{"new": {"size_bytes": GIB}}])
    src = vm["spec"]["disks"][0]["path"]
    log(f"full clone: writing 1 GiB into {SRC_VM}'s disk")
    qemu_io_write(src, [(0, GIB)])
    res["clone_source"] = {"path": src, "virtual_bytes": GIB, "allocated_bytes": allocated(src)}
    lv.define(LV_SRC, src)  # never started: only virt-clone's source
    copies = os.path.join(args.work, "copies")
    os.makedirs(copies, exist_ok=True)
    # libvirt pools for both directories (see Lv.transient_pool).
    lv.transient_pool("cb-corral-pool", os.path.dirname(src))
    lv.transient_pool("cb-copies", copies)
    have_virt_clone = shutil.which("virt-clone") is not None
    server_s = []
    split = {"convert": [], "fsync": []}

    def corral_api(i):
        name = f"cb-clone-{tag(i)}"
        t0 = time.perf_counter()
        o = corral.op("POST", f"/api/v1/vms/{SRC_VM}/clone", {"name": name})
        t = time.perf_counter() - t0
        if i >= 0:
            server_s.append((o["updated_ms"] - o["created_ms"]) / 1000)
        corral.delete_vm(name)
        return {"copy": t}

    def qemu_img(i):
        dst = os.path.join(copies, f"qi-{tag(i)}.qcow2")
        t = run_wall(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", src, dst])
        rm(dst)
        return {"copy": t}

    def qemu_img_fsync(i):
        # Corral's own command (`-p` included) and its fsync of the copy before the
        # rename; the rename and the directory fsync after it are too small to matter.
        dst = os.path.join(copies, f"qf-{tag(i)}.qcow2")
        t0 = time.perf_counter()
        run_wall(["qemu-img", "convert", "-p", "-f", "qcow2", "-O", "qcow2", src, dst])
        t1 = time.perf_counter()
        fsync_path(dst)
        t2 = time.perf_counter()
        if i >= 0:
            split["convert"].append(t1 - t0)
            split["fsync"].append(t2 - t1)
        rm(dst)
        return {"copy": t2 - t0}

    def virt_clone(i):
        name = f"cb-lvclone-{tag(i)}"
        dst = os.path.join(copies, f"{name}.qcow2")
        t = run_wall(["virt-clone", "--connect", LV_URI, "--original", LV_SRC, "--name", name,
                      "--file", dst, "--quiet"])
        try:
            lv.conn.storageVolLookupByPath(dst).delete(0)
        except libvirt.libvirtError:
            rm(dst)
        lv.remove(name)
        return {"copy": t}

    systems = {"corral_api": corral_api, "qemu_img": qemu_img, "qemu_img_fsync": qemu_img_fsync}
    if have_virt_clone:
        systems["virt_clone"] = virt_clone
    else:
        log("virt-clone is not installed (package virtinst): left out")
    log(f"full clone: warm-up, then {n} interleaved rounds of {len(systems)} variants, "
        "1 GiB each")
    for run in systems.values():
        time.sleep(SETTLE_COPY_S)
        run(-1)
    r = rounds(n, systems, SETTLE_COPY_S, 4244, "clone")
    res["clone_s"] = {k: stats(v["copy"]) for k, v in r.items()}
    res["clone_corral_server_s"] = stats(server_s)
    res["clone_qemu_img_fsync_split_s"] = {k: stats(v) for k, v in split.items()}
    res["clone_virt_clone"] = have_virt_clone
    lv.remove(LV_SRC)


def phase_snapshots(args, corral: Corral, lv: Lv, res: dict) -> None:
    n = args.n_snap
    src = corral.vm(SRC_VM)["spec"]["disks"][0]["path"]
    disk = os.path.join(lv.images, f"{LV_SNAP}.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", src, disk], check=True)
    fsync_path(disk)
    dom = lv.define(LV_SNAP, disk)
    out = res.setdefault("snapshots", {})

    # What libvirt 9.0 does with external (disk-only) snapshots of a stopped domain,
    # Corral's own layout: create works, revert does not.
    ext_create = []
    ext = {}
    for i in range(3):
        t0 = time.perf_counter()
        snap = dom.snapshotCreateXML(
            f"<domainsnapshot><name>ext{i}</name></domainsnapshot>", SNAP_CREATE_DISK_ONLY)
        ext_create.append(time.perf_counter() - t0)
        if i == 0:
            try:
                dom.revertToSnapshot(snap, 0)
                ext["revert"] = "ok"
            except libvirt.libvirtError as e:
                ext["revert"] = str(e)
        t0 = time.perf_counter()
        snap.delete(0)
        ext.setdefault("delete_s", []).append(time.perf_counter() - t0)
    ext["create_s"] = stats(ext_create)
    ext["delete_s"] = stats(ext["delete_s"])
    ext["disk_after"] = dom.XMLDesc(0).split("<source file='", 1)[1].split("'", 1)[0]
    out["libvirt_external"] = ext
    if ext["disk_after"] != disk:
        raise RuntimeError(f"libvirt external snapshot delete left {ext['disk_after']}")

    def corral_api(i):
        s = f"r{tag(i)}"
        return {
            "create": timed(lambda: corral.op("POST", f"/api/v1/vms/{SRC_VM}/snapshots",
                                              {"name": s})),
            "revert": timed(lambda: corral.op(
                "POST", f"/api/v1/vms/{SRC_VM}/snapshots/{s}/revert")),
            "delete": timed(lambda: corral.op("DELETE", f"/api/v1/vms/{SRC_VM}/snapshots/{s}")),
        }

    def corral_cli(i):
        s = f"c{tag(i)}"
        return {
            "create": run_wall(corral.cli("snapshot", "create", SRC_VM, s)),
            "revert": run_wall(corral.cli("snapshot", "revert", SRC_VM, s)),
            "delete": run_wall(corral.cli("snapshot", "delete", SRC_VM, s)),
        }

    def libvirt_api(i):
        s = f"r{tag(i)}"
        holder = {}
        return {
            "create": timed(lambda: holder.setdefault("snap", dom.snapshotCreateXML(
                f"<domainsnapshot><name>{s}</name></domainsnapshot>", 0))),
            "revert": timed(lambda: dom.revertToSnapshot(holder["snap"], 0)),
            "delete": timed(lambda: holder["snap"].delete(0)),
        }

    def virsh_cli(i):
        s = f"c{tag(i)}"
        return {
            "create": run_wall(lv.virsh + ["snapshot-create-as", LV_SNAP, s]),
            "revert": run_wall(lv.virsh + ["snapshot-revert", LV_SNAP, s]),
            "delete": run_wall(lv.virsh + ["snapshot-delete", LV_SNAP, s]),
        }

    systems = {"corral_api": corral_api, "corral_cli": corral_cli,
               "libvirt_api": libvirt_api, "virsh_cli": virsh_cli}
    # Each round's snapshot sits on a kept one, `base`: deleting a VM's only (root)
    # snapshot is a different operation for Corral (below), so it is measured apart.
    corral.op("POST", f"/api/v1/vms/{SRC_VM}/snapshots", {"name": "base"})
    dom.snapshotCreateXML("<domainsnapshot><name>base</name></domainsnapshot>", 0)
    log(f"snapshots of a stopped VM: warm-up, then {n} interleaved rounds of create, "
        "revert, delete")
    for run in systems.values():
        run(-1)
    r = rounds(n, systems, SETTLE_FAST_S, 4245, "snapshot")
    for k, v in r.items():
        out[k] = {m: stats(x) for m, x in v.items()}
    # Both must be back where they started: `base` only.
    tree = corral.api.call("GET", f"/api/v1/vms/{SRC_VM}/snapshots")
    assert [x["name"] for x in tree["snapshots"]] == ["base"], tree
    assert dom.snapshotListNames(0) == ["base"]
    out["libvirt_kind"] = "internal (qcow2 snapshots inside the image, qemu-img snapshot)"

    # Deleting the root snapshot, i.e. the VM's only one: API, `n_root` times each
    # (the first deletes `base`). libvirt first: its disk copy is then removed, so the
    # run never holds more than ~2 GiB of images.
    def root_deletes(create, delete) -> dict:
        samples = []
        for i in range(args.n_root):
            name = "base" if i == 0 else f"root{i}"
            if i:
                create(name)
            time.sleep(SETTLE_FAST_S)
            samples.append(timed(lambda: delete(name)))
        return stats(samples)

    log(f"snapshots: deleting the only (root) snapshot, {args.n_root}× each")
    out["libvirt_api"]["delete_root"] = root_deletes(
        lambda s: dom.snapshotCreateXML(f"<domainsnapshot><name>{s}</name></domainsnapshot>", 0),
        lambda s: dom.snapshotLookupByName(s, 0).delete(0))
    if args.n_live > 0:
        from storage_live import phase_running
        phase_running(args, corral, lv, disk, out)
    lv.remove(LV_SNAP)
    rm(disk)
    out["corral_api"]["delete_root"] = root_deletes(
        lambda s: corral.op("POST", f"/api/v1/vms/{SRC_VM}/snapshots", {"name": s}),
        lambda s: corral.op("DELETE", f"/api/v1/vms/{SRC_VM}/snapshots/{s}"))


# ---------------------------------------------------------------------------- report


def mibs(seconds: float, nbytes: int = GIB) -> str:
    return f"{nbytes / MIB / seconds:.0f} MiB/s"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def report(res: dict) -> str:
    from storage_live import report_linked_clone, report_live_steps, report_running
    rows = []

    def row(what, corral, peer, ratio, target):
        rows.append(f"| {what} | {corral} | {peer} | {ratio} | {target} |")

    lk = res.get("linked_s")
    if lk:
        c1, c50 = lk["corral_api_1g"], lk["corral_api_50g"]
        q, cell = paired(c50, c1)
        for which, label in (("1g", "1 GiB image (1 GiB written)"),
                             ("50g", "50 GiB image (512 MiB written)")):
            c, qi, la = lk[f"corral_api_{which}"], lk[f"qemu_img_{which}"], \
                lk[f"libvirt_api_{which}"]
            row(f"1. Linked clone, {label}: `POST /api/v1/vms` with `image`", med(c),
                f"`qemu-img create -b` (the floor: what Corral runs): {med(qi)}",
                f"{c['median'] / qi['median']:.2f}×",
                f"≤ 50 ms: {verdict(c['median'] <= 0.050)}")
            row(f"1. Linked clone, {label}, vs libvirt", med(c),
                f"libvirt: volume with `<backingStore>` in a pool + `virDomainDefineXML`: "
                f"{med(la)}", f"{c['median'] / la['median']:.2f}×", "info")
        row("1. Linked clone, 50 GiB image vs 1 GiB image", med(c50), f"1 GiB image: {med(c1)}",
            cell, f"the same (0.90–1.10×): {verdict(0.9 <= q <= 1.1)}")
    cl = res.get("clone_s")
    if cl:
        c, qi, qf = cl["corral_api"], cl["qemu_img"], cl["qemu_img_fsync"]
        # Throughput ratio corral / qemu-img, per round: qemu-img's time over Corral's.
        q = statistics.median(b / a for a, b in zip(c["samples"], qi["samples"]))
        corral_cell = f"{med(c)}: {mibs(c['median'])}"
        row("2. Full clone of a stopped VM, 1 GiB written, throughput", corral_cell,
            f"`qemu-img convert -O qcow2` of the same file: {med(qi)}: {mibs(qi['median'])}",
            f"{q:.2f}× the throughput (paired)",
            f"≥ 0.9× qemu-img's throughput: {verdict(q >= 0.9)}")
        q2 = statistics.median(b / a for a, b in zip(c["samples"], qf["samples"]))
        sp = res["clone_qemu_img_fsync_split_s"]
        row("2. Full clone, vs qemu-img with Corral's fsync", corral_cell,
            f"`qemu-img convert -p` + `fsync` of the copy: {med(qf)}: {mibs(qf['median'])} "
            f"(convert {ms(sp['convert']['median'])}, fsync {ms(sp['fsync']['median'])})",
            f"{q2:.2f}× the throughput (paired)", "info")
        if "virt_clone" in cl:
            v = cl["virt_clone"]
            q3 = statistics.median(b / a for a, b in zip(c["samples"], v["samples"]))
            row("2. Full clone, vs virt-clone", corral_cell,
                f"`virt-clone --original D --name N --file F` (wall time): {med(v)}: "
                f"{mibs(v['median'])}", f"{q3:.2f}× the throughput (paired)", "info")
        else:
            row("2. Full clone, vs virt-clone", corral_cell, "virt-clone not installed", "—",
                "—")
    sn = res.get("snapshots")
    if sn and "corral_api" in sn:
        for op in ("create", "revert", "delete"):
            ca, la = sn["corral_api"][op], sn["libvirt_api"][op]
            q, cell = paired(ca, la)
            row(f"3. Snapshot {op}, stopped VM, disk only, API"
                + (" (a snapshot on top of another)" if op == "delete" else ""), med(ca),
                f"libvirt, internal snapshot: {med(la)}", cell, "info")
        cr, lr = sn["corral_api"].get("delete_root"), sn["libvirt_api"].get("delete_root")
        if cr and lr:
            row("3. Snapshot delete of the VM's only (root) snapshot, API", med(cr),
                f"libvirt, internal snapshot: {med(lr)}", f"{cr['median'] / lr['median']:.2f}×",
                "info")
        for op in ("create", "revert", "delete"):
            cc, vc = sn["corral_cli"][op], sn["virsh_cli"][op]
            row(f"3. Snapshot {op}, stopped VM, CLI wall time", f"`corral snapshot {op}` "
                f"{med(cc)}", f"`virsh snapshot-{op if op != 'create' else 'create-as'}`: "
                f"{med(vc)}", f"{cc['median'] / vc['median']:.2f}×", "info")
        ext = sn["libvirt_external"]
        ca = sn["corral_api"]["create"]
        row("3. Snapshot create, external overlay (the same layout), API", med(ca),
            f"libvirt `--disk-only` (external) on the stopped domain: "
            f"{med(ext['create_s'])}; revert: *{ext['revert']}*; delete (libvirt runs a "
            f"paused QEMU to commit the overlay): {med(ext['delete_s'])}",
            f"{ca['median'] / ext['create_s']['median']:.2f}×", "info")
        report_running(sn, row)
    report_linked_clone(res, row)
    m = res["machine"]
    la = res.get("loadavg_before", (0, 0, 0))
    intro = (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Linux {m['kernel']}; "
             f"Debian {m['debian']}; {m['qemu']}; libvirt {m['libvirt']}; "
             f"{m.get('virtinst', '')}; disk: {m.get('disk', '?')}; corral {m['corral_commit']}; "
             f"load average at start {la[0]:.2f}, at the end "
             f"{res.get('loadavg_after', (0,))[0]:.2f}; measured for "
             f"{res.get('total_s', 0):.0f} s.\n\n")
    head = ("| Measurement | Corral | Baseline | Corral ÷ baseline | Target |\n"
            "|---|---|---|---|---|")
    return intro + head + "\n" + "\n".join(rows) + "\n" + report_live_steps(res)


def storage_machine(args) -> dict:
    m = machine_info(args)

    def out(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    m["qemu_img"] = out("qemu-img", "--version").splitlines()[0]
    v = out("virt-clone", "--version")
    m["virtinst"] = f"virtinst {v}" if v else "virtinst not installed"
    fs = out("findmnt", "-no", "FSTYPE,OPTIONS", "--target", args.work)
    dev = out("findmnt", "-no", "SOURCE", "--target", args.work)
    rot = "?"
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/queue/rotational") as f:
            rot = "rotational" if f.read().strip() == "1" else "non-rotational"
    except OSError:
        pass
    m["disk"] = f"{dev} ({fs.split()[0] if fs else '?'}, virtual disk reported {rot})"
    m["fs_options"] = fs
    with open("/proc/sys/vm/dirty_ratio") as f1, open("/proc/sys/vm/dirty_background_ratio") as f2:
        m["dirty_ratio"] = f"{f1.read().strip()} / background {f2.read().strip()}"
    return m


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True, help="the corral CLI binary")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--lv-images", required=True, help="dir libvirt's QEMU can read")
    ap.add_argument("--work", required=True)
    ap.add_argument("--n-linked", type=int, default=20)
    ap.add_argument("--n-clone", type=int, default=5)
    ap.add_argument("--n-snap", type=int, default=15)
    ap.add_argument("--n-root", type=int, default=3)
    ap.add_argument("--n-live", type=int, default=7)
    ap.add_argument("--n-lclone", type=int, default=15)
    ap.add_argument("--corral-rev", default="", help="the commit the binaries were built from")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()

    free = shutil.disk_usage(args.work).free
    if free < 6 * GIB:
        log(f"only {free / GIB:.1f} GiB free under {args.work}; the run needs ~4 GiB at most")
        return 1
    corral = Corral(args)
    lv = Lv(args)
    res = {"machine": storage_machine(args), "params": {
        "n_linked": args.n_linked, "n_clone": args.n_clone, "n_snap": args.n_snap,
        "n_root": args.n_root, "n_live": args.n_live, "n_lclone": args.n_lclone}}
    # In a full run bench.py's scale test leaves its 1000 VMs in this run's corrald:
    # storage starts from an empty daemon either way.
    left = [v["spec"]["name"] for v in corral.api.call("GET", "/api/v1/vms")]
    if left:
        log(f"deleting {len(left)} VMs left by the other sections of this run")
        for name in left:
            corral.delete_vm(name)
    res["loadavg_before"] = os.getloadavg()
    t_all = time.perf_counter()
    try:
        phase_linked(args, corral, lv, res)
        phase_clone(args, corral, lv, res)
        phase_snapshots(args, corral, lv, res)
        if args.n_lclone > 0:
            from storage_live import phase_linked_clone
            phase_linked_clone(args, corral, res)
        else:
            for img in (IMG_1G, IMG_50G):
                corral.op("DELETE", f"/api/v1/images/{img}")
    finally:
        for d in (LV_SRC, LV_SNAP):
            try:
                lv.remove(d)
            except libvirt.libvirtError as e:
                log(f"cleanup: {d}: {e}")
        lv.close()
        for vm in (SRC_VM, SRC_50G):
            try:
                corral.delete_vm(vm)
            except HttpError:
                pass
    res["loadavg_after"] = os.getloadavg()
    res["total_s"] = time.perf_counter() - t_all
    md = report(res)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    Path(args.md).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    # bench/storage_live.py imports this file's helpers as the module `storage`: run
    # main() from that module too, so there is one copy of every class and constant.
    import storage
    sys.exit(storage.main())
