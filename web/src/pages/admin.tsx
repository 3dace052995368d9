import { useState } from "preact/hooks";
import { api, del, enc, post } from "../api";
import { Err, fmtBytes, usePoll } from "./common";

/** A table of chosen columns; `cell` renders one value. */
function Table<T>(p: { rows?: T[]; cols: [string, (r: T) => preact.ComponentChildren][] }) {
  return (
    <table><thead><tr>{p.cols.map(([h]) => <th key={h}>{h}</th>)}</tr></thead>
      <tbody>{(p.rows ?? []).map((r, i) => <tr key={i}>{p.cols.map(([h, f]) => <td key={h}>{f(r)}</td>)}</tr>)}</tbody>
    </table>
  );
}

type Any = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export function Storage() {
  const [pools, perr] = usePoll<Any[]>("/api/v1/pools", 10000);
  const [vols, verr, reload] = usePoll<Any[]>("/api/v1/volumes", 10000);
  const [msg, setMsg] = useState("");
  const run = (p: Promise<unknown>) => p.then(reload, (e) => setMsg(e.message));
  return (
    <div>
      <h2>Storage pools</h2><Err msg={perr} />
      <div class="card"><Table rows={pools} cols={[["Name", (p) => p.name ?? p.spec?.name], ["Driver", (p) => p.driver ?? p.spec?.driver ?? ""],
        ["Path", (p) => p.path ?? p.spec?.path ?? ""]]} /></div>
      <h2>Volumes</h2><Err msg={verr || msg} />
      <div class="card"><Table rows={vols} cols={[["Name", (v) => v.name], ["Pool", (v) => v.pool], ["Format", (v) => v.format],
        ["Size", (v) => fmtBytes(v.size_bytes)], ["Attached to", (v) => v.attached_to ?? v.used_by ?? ""],
        ["", (v) => <>
          <button onClick={() => { const vm = prompt("Attach to VM"); if (vm) run(post(`/api/v1/volumes/${enc(v.name)}/attach`, { vm })); }}>Attach</button>
          <button onClick={() => { const vm = prompt("Detach from VM"); if (vm) run(post(`/api/v1/volumes/${enc(v.name)}/detach`, { vm })); }}>Detach</button>
        </>]]} /></div>
    </div>
  );
}

export function Networks() {
  const [nets, err, reload] = usePoll<Any[]>("/api/v1/networks", 10000);
  const [msg, setMsg] = useState("");
  const [fw, setFw] = useState({ network: "", protocol: "tcp", host_port: "", vm: "", guest_port: "" });
  const add = () => post(`/api/v1/networks/${enc(fw.network)}/forwards`,
    { protocol: fw.protocol, host_port: Number(fw.host_port), vm: fw.vm, guest_port: Number(fw.guest_port) }).then(reload, (e) => setMsg(e.message));
  const set = (k: string) => (e: Event) => setFw({ ...fw, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <div>
      <h2>Networks</h2><Err msg={err || msg} />
      <div class="card"><Table rows={nets} cols={[["Name", (n) => n.spec?.name], ["Mode", (n) => n.spec?.mode ?? ""],
        ["Subnet", (n) => n.spec?.subnet ?? ""], ["Used by", (n) => (n.used_by ?? []).join(", ")],
        ["Forwards", (n) => (n.spec?.forwards ?? []).map((f: Any) => (
          <div key={`${f.protocol}${f.host_port}`}>{f.protocol} {f.host_port} → {f.vm}:{f.guest_port}{" "}
            <button onClick={() => del(`/api/v1/networks/${enc(n.spec.name)}/forwards/${f.protocol}/${f.host_port}`).then(reload, (e) => setMsg(e.message))}>×</button></div>))]]} />
      </div>
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
