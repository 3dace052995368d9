import type { ComponentChildren } from "preact";

/** One NIC row of the wizard. `kind`: `default` (the host's default: the `default` NAT
 *  network, else user-mode), `user`, `bridge` (host bridge `bridge`), `none` (no NIC)
 *  or `net:NAME` (a managed network). */
export interface NicRow { id: number; kind: string; bridge: string }

let nextId = 0;
export const newNicRow = (kind = "default"): NicRow => ({ id: nextId++, kind, bridge: "" });

/** The create request's `networks` (undefined: leave the choice to the server) and, per
 *  row, its index in that array (-1 for `none` rows), so `networks[i]…` errors find it. */
export function nicRequests(rows: NicRow[], nets: string[]): { networks?: unknown[]; index: number[] } {
  if (rows.length === 1 && rows[0].kind === "default") return { index: [0] };
  const networks: unknown[] = [];
  const index = rows.map((r) => {
    if (r.kind === "none") return -1;
    if (r.kind === "user" || (r.kind === "default" && !nets.includes("default"))) networks.push({ kind: "user" });
    else if (r.kind === "bridge") networks.push({ kind: "bridge", source: r.bridge.trim() || undefined });
    else networks.push({ kind: "network", source: r.kind === "default" ? "default" : r.kind.slice(4) });
    return networks.length - 1;
  });
  return { networks, index };
}

/** The NIC rows: a kind select per row (with a bridge name for host bridges), remove
 *  buttons and "Add NIC". `errAt(i)` shows the server's error for request NIC `i`. */
export function NicRows(p: { rows: NicRow[]; nets: string[]; onChange: (rows: NicRow[]) => void;
  errAt: (i: number) => ComponentChildren }) {
  const { index } = nicRequests(p.rows, p.nets);
  const update = (id: number, patch: Partial<NicRow>) => p.onChange(p.rows.map((r) => (r.id === id ? { ...r, ...patch } : r)));
  return (
    <fieldset class="nic-rows" data-testid="nic-rows">
      <legend>Network interfaces</legend>
      {p.rows.map((r, i) => (
        <div key={r.id} class="row nic-row" data-testid="nic-row" data-row={i}>
          <label>NIC {i + 1}
            <select name={`nic-${i}`} value={r.kind} onChange={(e) => update(r.id, { kind: e.currentTarget.value })}>
              <option value="default">{p.nets.includes("default") ? "default NAT network" : "host default (user: no default network)"}</option>
              {p.nets.filter((n) => n !== "default").map((n) => <option key={n} value={`net:${n}`}>network {n}</option>)}
              <option value="user">user (passt)</option>
              <option value="bridge">host bridge</option>
              <option value="none">none (no NIC)</option>
            </select>
          </label>
          {r.kind === "bridge" && <label>Bridge
            <input name={`nic-${i}-bridge`} placeholder="br0" value={r.bridge}
              onInput={(e) => update(r.id, { bridge: e.currentTarget.value })} /></label>}
          <button type="button" onClick={() => p.onChange(p.rows.filter((x) => x.id !== r.id))}>Remove</button>
          {index[i] >= 0 && p.errAt(index[i])}
        </div>
      ))}
      {!p.rows.length && <p>No network interfaces.</p>}
      <button type="button" data-testid="nic-add-row" onClick={() => p.onChange([...p.rows, newNicRow()])}>Add NIC</button>
    </fieldset>
  );
}
