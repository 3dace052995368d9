import { useState } from "preact/hooks";
import { ApiError, del, enc, post } from "../api";
import { Err, FieldError, usePoll, withHint } from "./common";

interface Nic { kind: string; source?: string; mac: string; ip?: string; vlan?: number }

/** A VM's NICs, with add and remove. A running VM gets them hot-plugged; a paused one can
 *  take a NIC but must be resumed to let one go (the server says so, with a hint). */
export function Nics(p: { vm: string; nics: Nic[]; onChange: () => void }) {
  const base = `/api/v1/vms/${enc(p.vm)}/nics`;
  const [nets] = usePoll<{ name: string }[]>("/api/v1/networks");
  const [f, setF] = useState({ kind: "network", source: "", mac: "", ip: "" });
  const [fieldErr, setFieldErr] = useState<{ field: string; msg: string }>();
  const [msg, setMsg] = useState(""), [busy, setBusy] = useState(false);
  const set = (k: string) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  const fail = (x: unknown) => {
    if (x instanceof ApiError && x.field) setFieldErr({ field: x.field, msg: withHint(x) });
    else setMsg(withHint(x));
  };
  const errFor = (name: string) =>
    fieldErr && (fieldErr.field === `nic.${name}` || (name === "source" && fieldErr.field === "networks"))
      ? <FieldError {...fieldErr} /> : null;
  const run = async (what: () => Promise<unknown>) => {
    setMsg(""); setFieldErr(undefined); setBusy(true);
    try { await what(); p.onChange(); } catch (x) { fail(x); } finally { setBusy(false); }
  };
  const add = (e: Event) => {
    e.preventDefault();
    const body: Record<string, unknown> = { kind: f.kind };
    if (f.kind !== "user") body.source = f.source || (f.kind === "network" ? nets?.[0]?.name : "");
    if (f.mac) body.mac = f.mac;
    if (f.ip) body.ip = f.ip;
    return run(() => post(base, body));
  };
  return (
    <div class="card" data-testid="nics-card"><h3>NICs</h3>
      <table data-testid="nics"><tbody>
        {p.nics.map((n) => (
          <tr key={n.mac} data-mac={n.mac}>
            <td>{n.kind}</td><td>{n.source ?? ""}</td><td>{n.mac}</td><td>{n.ip ?? ""}</td>
            <td><button disabled={busy} onClick={() => run(() => del(`${base}/${enc(n.mac)}`))}>Remove</button></td>
          </tr>
        ))}
        {!p.nics.length && <tr><td>No NICs.</td></tr>}
      </tbody></table>
      <form class="row" onSubmit={add} data-testid="nic-add">
        <label>Kind <select name="nic-kind" value={f.kind} onChange={set("kind")}>
          <option value="network">network</option><option value="bridge">host bridge</option><option value="user">user (passt)</option>
        </select></label>
        {f.kind === "network" && <label>Network <select name="nic-source" value={f.source} onChange={set("source")}>
          {(nets ?? []).map((n) => <option key={n.name} value={n.name}>{n.name}</option>)}
        </select>{errFor("source")}</label>}
        {f.kind === "bridge" && <label>Bridge <input name="nic-source" value={f.source} onInput={set("source")} />{errFor("source")}</label>}
        <label>MAC <input name="nic-mac" placeholder="automatic" value={f.mac} onInput={set("mac")} />{errFor("mac")}</label>
        {f.kind === "network" && <label>IP <input name="nic-ip" placeholder="reserved for you" value={f.ip} onInput={set("ip")} />{errFor("ip")}</label>}
        <button type="submit" disabled={busy}>Add NIC</button>
      </form>
      <Err msg={msg} />
    </div>
  );
}
