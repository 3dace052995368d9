import { useState } from "preact/hooks";
import { enc, post, Vm } from "../api";
import { Link } from "../main";
import { Badge, Err, usePoll } from "./common";

/** Every state a VM can be in (corral-api's VmState): `migrating` is leaving this host,
 *  `incoming` arriving from another one. */
const STATES = ["running", "stopped", "paused", "starting", "stopping", "crashed", "migrating", "incoming"];

export function VmList() {
  const [vms, err, reload] = usePoll<Vm[]>("/api/v1/vms", 5000);
  const [q, setQ] = useState(""), [state, setState] = useState("");
  const [sel, setSel] = useState<Set<string>>(new Set());
  const [msg, setMsg] = useState("");
  const rows = (vms ?? []).filter((v) => v.spec.name.includes(q) && (!state || v.status.state === state));
  const toggle = (n: string) => { const s = new Set(sel); s.has(n) ? s.delete(n) : s.add(n); setSel(s); };
  const bulk = async (action: string) => {
    const errs: string[] = [];
    await Promise.all([...sel].map((n) => post(`/api/v1/vms/${enc(n)}/${action}`).catch((e) => errs.push(`${n}: ${e.message}`))));
    setMsg(errs.join("; "));
    reload();
  };
  return (
    <div>
      <h2>Virtual machines</h2>
      <div class="row">
        <input placeholder="Search by name" value={q} onInput={(e) => setQ(e.currentTarget.value)} />
        <select value={state} onChange={(e) => setState(e.currentTarget.value)}>
          <option value="">any state</option>
          {STATES.map((s) => <option key={s}>{s}</option>)}
        </select>
        <button disabled={!sel.size} onClick={() => bulk("start")}>Start selected</button>
        <button disabled={!sel.size} onClick={() => bulk("stop")}>Stop selected</button>
        <Link href="/vms/new">Create VM</Link>
      </div>
      <Err msg={err || msg} />
      <table>
        <thead><tr><th></th><th>Name</th><th>State</th><th>vCPUs</th><th>Memory</th><th>IPs</th></tr></thead>
        <tbody>
          {rows.map((v) => (
            <tr key={v.spec.name}>
              <td><input type="checkbox" checked={sel.has(v.spec.name)} onChange={() => toggle(v.spec.name)} /></td>
              <td><Link href={`/vms/${enc(v.spec.name)}`}>{v.spec.name}</Link></td>
              <td><Badge state={v.status.state} /></td>
              <td>{v.spec.vcpus}</td><td>{v.spec.memory_mib} MiB</td>
              <td>{(v.addresses ?? []).map((a) => a.address).join(", ")}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
