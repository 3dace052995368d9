import { useState } from "preact/hooks";
import { api, ApiError, del, enc, post, Vm } from "../api";
import { Err, FieldError, fmtBytes, usePoll, withHint } from "./common";

/** A table of chosen columns; `cell` renders one value. `id` keys the rows (and names
 *  them in `data-row`), so a long list re-renders only what changed. */
function Table<T>(p: { rows?: T[]; id?: (r: T) => string; cols: [string, (r: T) => preact.ComponentChildren][] }) {
  return (
    <table><thead><tr>{p.cols.map(([h]) => <th key={h}>{h}</th>)}</tr></thead>
      <tbody>{(p.rows ?? []).map((r, i) => <tr key={p.id?.(r) ?? i} data-row={p.id?.(r)}>{p.cols.map(([h, f]) => <td key={h}>{f(r)}</td>)}</tr>)}</tbody>
    </table>
  );
}

type Any = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** A form posting to the API: an error naming one of `fields` shows next to it
 *  (`errFor`), any other error above the form. */
function useForm<T extends Record<string, string | boolean>>(init: T, fields: string[]) {
  const [f, setF] = useState(init);
  const [fieldErr, setFieldErr] = useState<{ field: string; msg: string }>();
  const [msg, setMsg] = useState(""), [busy, setBusy] = useState(false);
  const set = (k: keyof T) => (e: Event) => {
    const el = e.currentTarget as HTMLInputElement;
    setF((old) => ({ ...old, [k]: el.type === "checkbox" ? el.checked : el.value }));
  };
  const errFor = (field: string) => fieldErr?.field === field ? <FieldError {...fieldErr} /> : null;
  const submit = (send: () => Promise<unknown>) => async (e: Event) => {
    e.preventDefault();
    setFieldErr(undefined); setMsg(""); setBusy(true);
    try { await send(); setF(init); } catch (x) {
      if (x instanceof ApiError && x.field && fields.includes(x.field)) setFieldErr({ field: x.field, msg: withHint(x) });
      else setMsg(withHint(x));
    } finally { setBusy(false); }
  };
  return { f, set, errFor, submit, msg, busy };
}

/** A page's row actions (delete, attach, …): their refusals, e.g. a 409 "in use", above the table. */
function useAction(reload: () => void): [string, (p: Promise<unknown>) => void] {
  const [msg, setMsg] = useState("");
  return [msg, (p) => { setMsg(""); p.then(reload, (x) => setMsg(withHint(x))); }];
}

interface Pool {
  spec: { name: string; driver: string; path?: string; volume_group?: string; thin_pool?: string };
  capabilities: { formats: string[] }; capacity_bytes: number; allocation_bytes: number; volumes: number; error?: string;
}
interface Volume { name: string; pool: string; format: string; size_bytes: number; allocation_bytes?: number; owner?: string; used_by: string[] }

function Usage(p: { used: number; total: number }) {
  const pct = p.total ? Math.round((100 * p.used) / p.total) : 0;
  return <span class="usage" title={`${pct}% used`}><span class="bar"><span style={{ width: `${pct}%` }} class={pct > 90 ? "full" : ""} /></span>
    {fmtBytes(p.used)} / {fmtBytes(p.total)} ({pct}%)</span>;
}

export function Storage() {
  const [pools, perr, reloadPools] = usePoll<Pool[]>("/api/v1/pools", 10000);
  const [vols, verr, reloadVols] = usePoll<Volume[]>("/api/v1/volumes", 10000);
  const reload = () => { reloadVols(); reloadPools(); };
  const [msg, act] = useAction(reload);
  // One row at a time shows a VM list to attach to, loaded when it opens.
  const [filter, setFilter] = useState(""), [attaching, setAttaching] = useState(""), [vm, setVm] = useState("");
  const [vms] = usePoll<Vm[]>(attaching ? "/api/v1/vms" : "");
  const form = useForm({ name: "", pool: "", size: "1024", format: "" }, ["name", "pool", "size_bytes", "format"]);
  const pool = form.f.pool || pools?.[0]?.spec.name || "";
  const formats = pools?.find((p) => p.spec.name === pool)?.capabilities.formats ?? ["qcow2", "raw"];
  const create = form.submit(() => post("/api/v1/volumes", {
    name: form.f.name, pool: pool || null, size_bytes: Math.round(Number(form.f.size) * 1048576), format: form.f.format || formats[0] || null,
  }).then(reload));
  const shown = filter ? (vols ?? []).filter((v) => v.name.includes(filter) || v.used_by.some((u) => u.includes(filter))) : vols;
  const attachCell = (v: Volume) => {
    if (attaching !== v.name) return <button onClick={() => { setAttaching(v.name); setVm(""); }}>Attach…</button>;
    const free = (vms ?? []).map((m) => m.spec.name).filter((n) => !v.used_by.includes(n));
    const to = vm || free[0] || "";
    return <span class="row"><select name="attach-vm" value={to} onChange={(e) => setVm(e.currentTarget.value)}>
      {free.map((n) => <option key={n}>{n}</option>)}</select>
      <button disabled={!to} onClick={() => { setAttaching(""); act(post(`/api/v1/volumes/${enc(v.name)}/attach`, { vm: to })); }}>Attach</button>
      <button onClick={() => setAttaching("")}>Cancel</button></span>;
  };
  return (
    <div>
      <h2>Storage pools</h2><Err msg={perr} />
      <div class="card"><Table rows={pools} id={(p) => p.spec.name} cols={[["Name", (p) => p.spec.name], ["Driver", (p) => p.spec.driver],
        ["Location", (p) => p.spec.path ?? `${p.spec.volume_group}/${p.spec.thin_pool}`], ["Volumes", (p) => p.volumes],
        ["Usage", (p) => p.error ? <span class="error">{p.error}</span> : <Usage used={p.allocation_bytes} total={p.capacity_bytes} />]]} /></div>
      <h2>Volumes</h2><Err msg={verr || msg} />
      <form class="card row" data-testid="volume-create" onSubmit={create}><strong>New volume</strong>
        <label>Name <input name="vol-name" value={form.f.name} onInput={form.set("name")} />{form.errFor("name")}</label>
        <label>Pool <select name="vol-pool" value={pool} onChange={form.set("pool")}>
          {(pools ?? []).map((p) => <option key={p.spec.name}>{p.spec.name}</option>)}</select>{form.errFor("pool")}</label>
        <label>Size (MiB) <input name="vol-size" type="number" value={form.f.size} onInput={form.set("size")} />{form.errFor("size_bytes")}</label>
        <label>Format <select name="vol-format" value={form.f.format || formats[0]} onChange={form.set("format")}>
          {formats.map((x) => <option key={x}>{x}</option>)}</select>{form.errFor("format")}</label>
        <button type="submit" disabled={form.busy}>Create volume</button><Err msg={form.msg} />
      </form>
      <div class="card scroll" data-testid="volumes">
        <input placeholder="filter by name or VM" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} />
        <Table rows={shown} id={(v) => v.name} cols={[["Name", (v) => v.name], ["Pool", (v) => v.pool], ["Format", (v) => v.format],
          ["Size", (v) => fmtBytes(v.size_bytes)], ["Allocated", (v) => fmtBytes(v.allocation_bytes)],
          ["Attached to", (v) => v.used_by.map((u) => <span key={u} class="row">{u}
            <button onClick={() => act(post(`/api/v1/volumes/${enc(v.name)}/detach`, { vm: u }))}>Detach</button></span>)],
          ["", attachCell],
          ["", (v) => <button onClick={() => confirm(`Delete volume ${v.name}? Its data is lost.`) && act(del(`/api/v1/volumes/${enc(v.name)}`))}>Delete</button>]]} />
      </div>
    </div>
  );
}

export function Networks() {
  const [nets, err, reload] = usePoll<Any[]>("/api/v1/networks", 10000);
  const [msg, act] = useAction(reload);
  const net = useForm({ name: "", type: "nat", subnet: "", bridge: "", dhcp: true }, ["name", "type", "subnet", "bridge", "dhcp"]);
  const create = net.submit(() => {
    const { name, type, subnet, bridge, dhcp } = net.f;
    const body: Record<string, unknown> = { name, type };
    if (subnet && type !== "bridge") body.subnet = subnet;
    if (bridge) body.bridge = bridge;
    if (!dhcp && type !== "bridge") body.dhcp = false;
    return post("/api/v1/networks", body).then(reload);
  });
  const [fw, setFw] = useState({ network: "", protocol: "tcp", host_port: "", vm: "", guest_port: "" });
  const add = () => act(post(`/api/v1/networks/${enc(fw.network)}/forwards`,
    { protocol: fw.protocol, host_port: Number(fw.host_port), vm: fw.vm, guest_port: Number(fw.guest_port) }));
  const set = (k: string) => (e: Event) => setFw({ ...fw, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <div>
      <h2>Networks</h2><Err msg={err || msg} />
      <div class="card" data-testid="networks"><Table rows={nets} id={(n) => n.name} cols={[["Name", (n) => n.name], ["Type", (n) => n.type],
        ["Bridge", (n) => `${n.bridge}${n.status?.bridge_up ? "" : " (down)"}`], ["Subnet", (n) => n.subnet ?? ""], ["DHCP", (n) => (n.dhcp ? "yes" : "no")],
        ["Used by", (n) => (n.used_by ?? []).join(", ")],
        ["Forwards", (n) => (n.forwards ?? []).map((f: Any) => (
          <div key={`${f.protocol}${f.host_port}`}>{f.protocol} {f.host_port} → {f.vm}:{f.guest_port}{" "}
            <button onClick={() => act(del(`/api/v1/networks/${enc(n.name)}/forwards/${f.protocol}/${f.host_port}`))}>×</button></div>))],
        ["", (n) => <button onClick={() => confirm(`Delete network ${n.name}?`) && act(del(`/api/v1/networks/${enc(n.name)}`))}>Delete</button>]]} />
      </div>
      <form class="card row" data-testid="network-create" onSubmit={create}><strong>New network</strong>
        <label>Name <input name="net-name" value={net.f.name} onInput={net.set("name")} />{net.errFor("name")}</label>
        <label>Type <select name="net-type" value={net.f.type} onChange={net.set("type")}>
          <option value="nat">NAT</option><option value="isolated">isolated</option><option value="bridge">existing host bridge</option>
        </select>{net.errFor("type")}</label>
        {net.f.type !== "bridge" && <label>Host address/prefix <input name="net-subnet" placeholder={net.f.type === "nat" ? "automatic, e.g. 10.0.7.1/24" : "none"}
          value={net.f.subnet} onInput={net.set("subnet")} />{net.errFor("subnet")}</label>}
        <label>Bridge <input name="net-bridge" placeholder={net.f.type === "bridge" ? "e.g. br0" : "automatic"} value={net.f.bridge} onInput={net.set("bridge")} />{net.errFor("bridge")}</label>
        {net.f.type !== "bridge" && <label class="row"><input type="checkbox" name="net-dhcp" checked={net.f.dhcp} onChange={net.set("dhcp")} /> DHCP/DNS{net.errFor("dhcp")}</label>}
        <button type="submit" disabled={net.busy}>Create network</button><Err msg={net.msg} />
      </form>
      <div class="card row"><strong>Add forward</strong>
        <input placeholder="network" value={fw.network} onInput={set("network")} />
        <select value={fw.protocol} onChange={set("protocol")}><option>tcp</option><option>udp</option></select>
        <input placeholder="host port" value={fw.host_port} onInput={set("host_port")} />
        <input placeholder="vm" value={fw.vm} onInput={set("vm")} />
        <input placeholder="guest port" value={fw.guest_port} onInput={set("guest_port")} />
        <button onClick={add}>Add</button>
      </div>
    </div>
  );
}

export function Users() {
  const [users, uerr, reloadU] = usePoll<Any[]>("/api/v1/users");
  const [tokens, terr, reloadT] = usePoll<Any[]>("/api/v1/tokens");
  const [msg, setMsg] = useState(""), [shown, setShown] = useState("");
  const [nu, setNu] = useState({ username: "", password: "", role: "viewer" });
  const [nt, setNt] = useState({ name: "", role: "viewer" });
  const fail = (e: Error) => setMsg(e.message);
  return (
    <div>
      <h2>Users</h2><Err msg={uerr || msg} />
      <div class="card"><Table rows={users} cols={[["User", (u) => u.username], ["Role", (u) => u.role],
        ["", (u) => <button onClick={() => del(`/api/v1/users/${enc(u.username)}`).then(reloadU, fail)}>Delete</button>]]} />
        <div class="row">
          <input placeholder="username" value={nu.username} onInput={(e) => setNu({ ...nu, username: e.currentTarget.value })} />
          <input placeholder="password" type="password" value={nu.password} onInput={(e) => setNu({ ...nu, password: e.currentTarget.value })} />
          <RoleSelect value={nu.role} onChange={(role) => setNu({ ...nu, role })} />
          <button onClick={() => post("/api/v1/users", nu).then(reloadU, fail)}>Add user</button>
        </div>
      </div>
      <h2>API tokens</h2><Err msg={terr} />
      {shown && <p class="card" data-testid="new-token">New token (shown once): <code>{shown}</code></p>}
      <div class="card"><Table rows={tokens} cols={[["Name", (t) => t.name], ["Role", (t) => t.role], ["Expires", (t) => t.expires_at_ms ? new Date(t.expires_at_ms).toLocaleString() : "never"],
        ["", (t) => <button onClick={() => del(`/api/v1/tokens/${enc(t.id)}`).then(reloadT, fail)}>Revoke</button>]]} />
        <div class="row">
          <input placeholder="token name" value={nt.name} onInput={(e) => setNt({ ...nt, name: e.currentTarget.value })} />
          <RoleSelect value={nt.role} onChange={(role) => setNt({ ...nt, role })} />
          <button onClick={() => api<Any>("POST", "/api/v1/tokens", nt).then((t) => { setShown(t.token); reloadT(); }, fail)}>Create token</button>
        </div>
      </div>
    </div>
  );
}

function RoleSelect(p: { value: string; onChange: (r: string) => void }) {
  return <select value={p.value} onChange={(e) => p.onChange(e.currentTarget.value)}>
    {["viewer", "operator", "admin"].map((r) => <option key={r}>{r}</option>)}</select>;
}

export function Audit() {
  const [rows, err] = usePoll<Any[]>("/api/v1/audit?limit=200", 10000);
  return (
    <div><h2>Audit log</h2><Err msg={err} />
      <div class="card scroll"><Table rows={rows} cols={[["Time", (a) => new Date(a.time_ms).toLocaleString()], ["Actor", (a) => `${a.actor} (${a.actor_kind})`],
        ["Role", (a) => a.role], ["Source", (a) => a.source], ["Request", (a) => `${a.method} ${a.path}`], ["Status", (a) => a.status], ["Detail", (a) => a.detail ?? ""]]} /></div>
    </div>
  );
}
