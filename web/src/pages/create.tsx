import { useState } from "preact/hooks";
import { ApiError, enc, Operation } from "../api";
import { navigate } from "../main";
import { Err, FieldError, fmtBytes, OpProgress, runOp, usePoll, withHint } from "./common";
import { newNicRow, NicRow, nicRequests, NicRows } from "./wizard_nics";

// The server names the bad input in `field` (e.g. `disks[0].size`, `memory_mib`); each
// input here declares which fields it owns so the message shows next to it.
const KNOWN = ["name", "vcpus", "memory_mib", "kernel", "image", "cdrom", "disks", "networks",
  "cloud_init.ssh_authorized_keys", "cloud_init.user_data"];

interface Vol { name: string; pool: string; path: string; format: string; size_bytes: number; used_by?: string[] }

/** Host files that hold ISOs: the API has no ISO format (volumes and images are qcow2 or
 *  raw), so those whose file is named `*.iso`. */
const isIso = (v: Vol) => /\.iso$/i.test(v.path) || /\.iso$/i.test(v.name);

export function CreateVm() {
  const [f, setF] = useState({ name: "", vcpus: "1", memory_mib: "256", boot: "kernel", image: "", cdrom: "",
    kernel: "", initrd: "", cmdline: "console=ttyS0", disk_size: "", volume: "", ssh_key: "", user_data: "", start: true });
  // Volumes no VM uses, to attach as an extra disk.
  const [vols] = usePoll<Vol[]>("/api/v1/volumes");
  const free = (vols ?? []).filter((v) => !v.used_by?.length);
  const [images] = usePoll<Vol[]>("/api/v1/images");
  const isos = [...(vols ?? []), ...(images ?? [])].filter(isIso);
  const [nets] = usePoll<{ name: string }[]>("/api/v1/networks");
  const netNames = (nets ?? []).map((n) => n.name);
  const [nics, setNics] = useState<NicRow[]>(() => [newNicRow()]);
  // What the selects show (default: the first listed); "" means "type a path" (both
  // fields take a host path too).
  const [pick, setPick] = useState<{ image?: string; cdrom?: string }>({});
  const pickImage = pick.image ?? images?.[0]?.name ?? "", pickCdrom = pick.cdrom ?? isos[0]?.path ?? "";
  const image = pickImage || f.image, cdrom = pickCdrom || f.cdrom;
  // The server names a disk by its index in the request: the new disk comes first.
  const volDisk = `disks[${f.disk_size ? 1 : 0}]`;
  const [fieldErr, setFieldErr] = useState<{ field: string; msg: string }>();
  const [msg, setMsg] = useState(""), [op, setOp] = useState<Operation>();
  const set = (k: string) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  const errFor = (...prefixes: string[]) =>
    fieldErr && prefixes.some((p) => fieldErr.field === p || fieldErr.field.startsWith(p + ".") || fieldErr.field.startsWith(p + "["))
      ? <FieldError {...fieldErr} /> : null;
  const submit = async (e: Event) => {
    e.preventDefault();
    setMsg(""); setFieldErr(undefined);
    const body: Record<string, unknown> = { name: f.name, vcpus: Number(f.vcpus), memory_mib: Number(f.memory_mib), start: f.start };
    if (f.boot === "kernel") body.kernel = { kernel: f.kernel, initrd: f.initrd || null, cmdline: f.cmdline || null };
    if (f.boot === "image") body.image = image;
    if (f.boot === "iso") body.cdrom = cdrom;
    const disks: unknown[] = [];
    if (f.disk_size) disks.push({ new: { size_bytes: Math.round(Number(f.disk_size) * 1048576) } });
    if (f.volume) disks.push({ volume: { name: f.volume } });
    if (disks.length) body.disks = disks;
    const { networks } = nicRequests(nics, netNames);
    if (networks) body.networks = networks;
    if (f.ssh_key || f.user_data) {
      body.cloud_init = { ssh_authorized_keys: f.ssh_key ? [f.ssh_key] : [], user_data: f.user_data || undefined };
    }
    try {
      await runOp("POST", "/api/v1/vms", body, setOp);
      navigate(`/vms/${enc(f.name)}`);
    } catch (x) {
      if (x instanceof ApiError && x.field) setFieldErr({ field: x.field, msg: withHint(x) });
      else setMsg((x as Error).message);
    }
  };
  return (
    <form class="card" onSubmit={submit} style="max-width:640px;display:flex;flex-direction:column;gap:.6rem">
      <h2>Create VM</h2>
      <label>Name <input name="name" value={f.name} onInput={set("name")} />{errFor("name")}</label>
      <div class="row">
        <label>vCPUs <input name="vcpus" type="number" value={f.vcpus} onInput={set("vcpus")} />{errFor("vcpus")}</label>
        <label>Memory (MiB) <input name="memory_mib" type="number" value={f.memory_mib} onInput={set("memory_mib")} />{errFor("memory_mib")}</label>
      </div>
      <label>Boot source
        <select name="boot" value={f.boot} onChange={set("boot")}>
          <option value="kernel">Kernel + initrd</option><option value="image">Image</option><option value="iso">ISO</option>
        </select>
      </label>
      {f.boot === "kernel" && <>
        <label>Kernel path <input name="kernel" value={f.kernel} onInput={set("kernel")} />{errFor("kernel.kernel", "kernel")}</label>
        <label>Initrd path <input name="initrd" value={f.initrd} onInput={set("initrd")} />{errFor("kernel.initrd")}</label>
        <label>Kernel command line <input name="cmdline" value={f.cmdline} onInput={set("cmdline")} />{errFor("kernel.cmdline")}</label>
      </>}
      {f.boot === "image" && <label>Image
        <select name="image" value={pickImage} onChange={(e) => setPick({ ...pick, image: e.currentTarget.value })}>
          {(images ?? []).map((i) => <option key={i.name} value={i.name}>{i.name} ({fmtBytes(i.size_bytes)}, {i.format}, {i.pool})</option>)}
          <option value="">a qcow2 or raw file on the host…</option>
        </select>
        {!pickImage && <input name="image_path" placeholder="/var/lib/images/base.qcow2" value={f.image} onInput={set("image")} />}
        {errFor("image")}</label>}
      {f.boot === "iso" && <label>ISO
        <select name="cdrom" value={pickCdrom} onChange={(e) => setPick({ ...pick, cdrom: e.currentTarget.value })}>
          {isos.map((v) => <option key={v.path} value={v.path}>{v.name} ({fmtBytes(v.size_bytes)}, {v.pool})</option>)}
          <option value="">an ISO file on the host…</option>
        </select>
        {!pickCdrom && <input name="cdrom_path" placeholder="/srv/iso/debian.iso" value={f.cdrom} onInput={set("cdrom")} />}
        {errFor("cdrom")}</label>}
      <label>New disk size in MiB (empty for none) <input name="disk_size" value={f.disk_size} onInput={set("disk_size")} />
        {f.volume && fieldErr?.field.startsWith(volDisk) ? null : errFor("disks")}</label>
      <label>Existing volume to attach
        <select name="volume" value={f.volume} onChange={set("volume")}>
          <option value="">none</option>
          {free.map((v) => <option key={v.name} value={v.name}>{v.name} ({v.pool})</option>)}
        </select>{f.volume && errFor(volDisk)}</label>
      <NicRows rows={nics} nets={netNames} onChange={setNics} errAt={(i) => errFor(`networks[${i}]`)} />
      {fieldErr?.field === "networks" && errFor("networks")}
      <label>SSH public key (cloud-init) <textarea name="ssh_key" value={f.ssh_key} onInput={set("ssh_key")} />{errFor("cloud_init.ssh_authorized_keys")}</label>
      <label>Cloud-init user-data (#cloud-config YAML or a #! script; merged with the above)
        <textarea name="user_data" rows={6} placeholder={"#cloud-config\npackages: [nginx]"} value={f.user_data} onInput={set("user_data")} />
        {errFor("cloud_init.user_data")}</label>
      <label class="row"><input type="checkbox" checked={f.start} onChange={(e) => setF({ ...f, start: e.currentTarget.checked })} /> Start after creating</label>
      {fieldErr && !KNOWN.some((k) => fieldErr.field.startsWith(k)) && <p class="error">{fieldErr.field}: {fieldErr.msg}</p>}
      <button type="submit">Create</button>
      <Err msg={msg} /><OpProgress op={op} />
    </form>
  );
}
