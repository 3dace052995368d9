import { useState } from "preact/hooks";
import { enc, post } from "../api";
import { Err, fmtBytes, usePoll, withHint } from "./common";

interface Disk { id: string; volume?: string; path: string; format: string; size_bytes: number; read_only?: boolean; owned?: boolean }
interface Volume { name: string; pool: string; size_bytes: number; used_by?: string[] }

/** A VM's disks, with attach (a free volume) and detach. A running VM gets the disk
 *  hot-plugged, and must let go of it on detach (the server waits for the guest). */
export function Disks(p: { vm: string; disks: Disk[]; onChange: () => void }) {
  const [vols, , reloadVols] = usePoll<Volume[]>("/api/v1/volumes");
  const [pick, setPick] = useState(""), [msg, setMsg] = useState(""), [busy, setBusy] = useState(false);
  const free = (vols ?? []).filter((v) => !v.used_by?.length);
  const run = async (path: string) => {
    setMsg(""); setBusy(true);
    try { await post(path, { vm: p.vm }); p.onChange(); reloadVols(); }
    catch (x) { setMsg(withHint(x)); }
    finally { setBusy(false); }
  };
  const chosen = pick || free[0]?.name || "";
  return (
    <div class="card" data-testid="disks-card"><h3>Disks</h3>
      <table data-testid="disks"><tbody>
        {p.disks.map((d) => (
          <tr key={d.id} data-disk={d.id}>
            <td>{d.id}</td><td>{d.volume ?? d.path}</td><td>{d.format}</td><td>{fmtBytes(d.size_bytes)}</td>
            <td>{d.read_only ? "read-only" : ""}</td>
            <td>{d.volume && <button disabled={busy} onClick={() => run(`/api/v1/volumes/${enc(d.volume!)}/detach`)}>Detach</button>}</td>
          </tr>
        ))}
        {!p.disks.length && <tr><td>No disks.</td></tr>}
      </tbody></table>
      <div class="row">
        <select name="attach-volume" value={chosen} onChange={(e) => setPick(e.currentTarget.value)}>
          {free.map((v) => <option key={v.name} value={v.name}>{v.name} ({v.pool}, {fmtBytes(v.size_bytes)})</option>)}
        </select>
        <button disabled={busy || !chosen} onClick={() => run(`/api/v1/volumes/${enc(chosen)}/attach`)}>Attach volume</button>
      </div>
      <Err msg={msg} />
    </div>
  );
}
