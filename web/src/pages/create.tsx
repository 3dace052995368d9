import { useState } from "preact/hooks";
import { ApiError, enc, Operation } from "../api";
import { navigate } from "../main";
import { Err, OpProgress, runOp, usePoll } from "./common";

// The server names the bad input in `field` (e.g. `disks[0].size`, `memory_mib`); each
// input here declares which fields it owns so the message shows next to it.
const KNOWN = ["name", "vcpus", "memory_mib", "kernel", "image", "cdrom", "disks", "networks",
  "cloud_init.ssh_authorized_keys", "cloud_init.user_data"];

/** The wizard's network box, as `corral create --network` reads it: `user`, `none`,
 *  `bridge=BR`, `nat` (the default network) or a network's name. */
function nicRequests(spec: string): unknown[] {
  if (spec === "none") return [];
  if (spec === "user") return [{ kind: "user" }];
  if (spec.startsWith("bridge=")) return [{ kind: "bridge", source: spec.slice(7) }];
  return [{ kind: "network", source: spec === "nat" ? "default" : spec.replace(/^network=/, "") }];
}

export function CreateVm() {
  const [f, setF] = useState({ name: "", vcpus: "1", memory_mib: "256", boot: "kernel", image: "", cdrom: "",
    kernel: "", initrd: "", cmdline: "console=ttyS0", disk_size: "", volume: "", network: "", ssh_key: "", user_data: "", start: true });
  // Volumes no VM uses, to attach as an extra disk.
  const [vols] = usePoll<{ name: string; pool: string; used_by: string[] }[]>("/api/v1/volumes");
  const free = (vols ?? []).filter((v) => !v.used_by.length);
  // The server names a disk by its index in the request: the new disk comes first.
  const volDisk = `disks[${f.disk_size ? 1 : 0}]`;
  const [fieldErr, setFieldErr] = useState<{ field: string; msg: string }>();
  const [msg, setMsg] = useState(""), [op, setOp] = useState<Operation>();
  const set = (k: string) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  const errFor = (...prefixes: string[]) =>
    fieldErr && prefixes.some((p) => fieldErr.field === p || fieldErr.field.startsWith(p + ".") || fieldErr.field.startsWith(p + "["))
      ? <span class="field-error" data-field={fieldErr.field}>{fieldErr.msg}</span> : null;
  const submit = async (e: Event) => {
    e.preventDefault();
    setMsg(""); setFieldErr(undefined);
    const body: Record<string, unknown> = { name: f.name, vcpus: Number(f.vcpus), memory_mib: Number(f.memory_mib), start: f.start };
    if (f.boot === "kernel") body.kernel = { kernel: f.kernel, initrd: f.initrd || null, cmdline: f.cmdline || null };
    if (f.boot === "image") body.image = f.image;
    if (f.boot === "iso") body.cdrom = f.cdrom;
    const disks: unknown[] = [];
    if (f.disk_size) disks.push({ new: { size_bytes: Math.round(Number(f.disk_size) * 1048576) } });
    if (f.volume) disks.push({ volume: { name: f.volume } });
    if (disks.length) body.disks = disks;
    if (f.network) body.networks = nicRequests(f.network.trim());
    if (f.ssh_key || f.user_data) {
      body.cloud_init = { ssh_authorized_keys: f.ssh_key ? [f.ssh_key] : [], user_data: f.user_data || undefined };
    }
    try {
      await runOp("POST", "/api/v1/vms", body, setOp);
      navigate(`/vms/${enc(f.name)}`);
    } catch (x) {
      if (x instanceof ApiError && x.field) setFieldErr({ field: x.field, msg: x.message + (x.hint ? ` (${x.hint})` : "") });
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
      {f.boot === "image" && <label>Image <input name="image" value={f.image} onInput={set("image")} />{errFor("image")}</label>}
      {f.boot === "iso" && <label>ISO volume or path <input name="cdrom" value={f.cdrom} onInput={set("cdrom")} />{errFor("cdrom")}</label>}
      <label>New disk size in MiB (empty for none) <input name="disk_size" value={f.disk_size} onInput={set("disk_size")} />
        {f.volume && fieldErr?.field.startsWith(volDisk) ? null : errFor("disks")}</label>
      <label>Existing volume to attach
        <select name="volume" value={f.volume} onChange={set("volume")}>
          <option value="">none</option>
          {free.map((v) => <option key={v.name} value={v.name}>{v.name} ({v.pool})</option>)}
        </select>{f.volume && errFor(volDisk)}</label>
      <label>Network (empty for default; user, none, bridge=BR or a network's name) <input name="network" value={f.network} onInput={set("network")} />{errFor("networks")}</label>
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
