import { useEffect, useRef, useState } from "preact/hooks";
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { del, enc, get, MigrationResult, Operation, post, Snapshot, Vm, VmEvent } from "../api";
import { navigate } from "../main";
import { Badge, Err, EventList, OpProgress, runOp, useEvents, usePoll } from "./common";
import { Nics } from "./nics";
import { Disks } from "./disks";
import { Gone, MigrateDialog, MigrationWatch, Moved } from "./migrate";

interface VmSample { time_ms: number; cpu_percent: number; memory_used_bytes: number; disk_read_bytes_per_sec: number;
  disk_write_bytes_per_sec: number; net_rx_bytes_per_sec: number; net_tx_bytes_per_sec: number }

export function VmPage(p: { name: string }) {
  const base = `/api/v1/vms/${enc(p.name)}`;
  // Once the VM has left this host (migrated) or is not here (404), nothing is reloaded.
  const [moved, setMoved] = useState<MigrationResult>(), [gone, setGone] = useState(false);
  const [vm, err, reload, status] = usePoll<Vm>(moved || gone ? "" : base, 3000);
  useEffect(() => { if (status === 404) setGone(true); }, [status]);
  const events = useEvents(p.name);
  const [msg, setMsg] = useState(""), [op, setOp] = useState<Operation>();
  const [migrating, setMigrating] = useState(false);
  const act = async (action: string) => {
    setMsg("");
    try {
      if (action === "delete") {
        if (!confirm(`Delete ${p.name}?`)) return;
        await runOp("DELETE", base, undefined, setOp);
        navigate("/vms");
        return;
      }
      await runOp("POST", `${base}/${action}`, {}, setOp);
      reload();
    } catch (e) { setMsg((e as Error).message); }
  };
  if (moved) return <Moved vm={p.name} result={moved} />;
  // A 404 while this page migrates it: the VM left, its operation is finishing.
  if (gone && !migrating) return <Gone vm={p.name} />;
  if (!vm) return <Err msg={err || "Loading…"} />;
  const state = vm.status.state;
  // A migrating VM still runs here (until the switch-over); an incoming one not yet.
  const running = state === "running" || state === "migrating";
  return (
    <div>
      <h2>{p.name} <Badge state={state} /></h2>
      <div class="row">
        {["start", "stop", "pause", "resume", "restart", "delete"].map((a) => <button key={a} onClick={() => act(a)}>{a}</button>)}
        <button disabled={migrating || !["running", "paused"].includes(state)} onClick={() => setMigrating(true)}>Migrate…</button>
      </div>
      <Err msg={msg} /><OpProgress op={op} />
      {migrating && <MigrateDialog vm={p.name} onMoved={setMoved} onChange={reload} onClose={() => setMigrating(false)} />}
      {state === "migrating" && !migrating && <MigrationWatch vm={p.name} onMoved={setMoved} />}
      {state === "incoming" && <p class="card" data-testid="incoming">Arriving from another host: the guest runs here once
        the migration switches over (the source host follows it).</p>}
      <div class="grid">
        <div class="card"><h3>Overview</h3>
          <p>{vm.spec.vcpus} vCPUs, {vm.spec.memory_mib} MiB{vm.uptime_secs != null && `, up ${vm.uptime_secs}s`}</p>
          <p>IPs: {(vm.addresses ?? []).map((a) => a.address).join(", ") || "–"}</p>
          {vm.status.reason && <p>Reason: {vm.status.reason}</p>}
          <details><summary>Spec (disks and all settings)</summary><pre>{JSON.stringify(vm.spec, null, 2)}</pre></details>
        </div>
        <Charts base={base} />
      </div>
      <div class="card"><h3>Serial console</h3>{running ? <SerialConsole base={base} /> : <p>VM is not running.</p>}</div>
      <div class="card"><h3>Graphical console</h3>{running ? <VncConsole base={base} /> : <p>VM is not running.</p>}</div>
      <Disks vm={p.name} disks={(vm.spec.disks ?? []) as Parameters<typeof Disks>[0]["disks"]} onChange={reload} />
      <Nics vm={p.name} nics={(vm.spec.nics ?? []) as Parameters<typeof Nics>[0]["nics"]} onChange={reload} />
      <Snapshots base={base} onChange={reload} />
      <div class="card"><h3>Events</h3><EventList events={merged(events, vm.events ?? [])} /></div>
    </div>
  );
}

/** Live events (newest first) and the record's (oldest first), each once: a reload brings
 *  back those the stream already showed. */
function merged(live: VmEvent[], stored: VmEvent[]): VmEvent[] {
  const seen = new Set(live.map((e) => e.id));
  return [...live, ...stored.slice().reverse().filter((e) => !seen.has(e.id))];
}

function SerialConsole(p: { base: string }) {
  const el = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const term = new Terminal({ convertEol: false, fontSize: 13 });
    term.open(el.current!);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}${p.base}/console`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (m) => term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
    ws.onclose = () => term.write("\r\n[console closed]\r\n");
    const enc = new TextEncoder();
    const sub = term.onData((d) => ws.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
    // Keep the whole transcript readable by tests and screen readers.
    (el.current as unknown as { corralTerm: Terminal }).corralTerm = term;
    return () => { sub.dispose(); ws.close(); term.dispose(); };
  }, [p.base]);
  return <div class="term" ref={el} data-testid="serial" />;
}

/** noVNC over corrald's websocket to QEMU's VNC server (a Unix socket on the host, never a
 *  TCP port); the browser's session cookie authorises the upgrade like any request. */
function VncConsole(p: { base: string }) {
  const el = useRef<HTMLDivElement>(null);
  const [state, setState] = useState("connecting…");
  useEffect(() => {
    let rfb: { disconnect(): void } | undefined, gone = false;
    // Loaded on demand: noVNC is as big as the rest of the console together.
    import("@novnc/novnc").then(({ default: RFB }) => {
      if (gone) return;
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const r = new RFB(el.current!, `${proto}//${location.host}${p.base}/vnc`, { shared: true });
      r.scaleViewport = true;
      r.addEventListener("connect", () => setState("connected"));
      r.addEventListener("disconnect", () => setState("disconnected"));
      rfb = r;
    }, (e) => setState(`cannot load the VNC client: ${e}`));
    return () => { gone = true; rfb?.disconnect(); };
  }, [p.base]);
  return (
    <div>
      <small data-testid="vnc-state">{state}</small>
      <div class="vnc" ref={el} data-testid="vnc" />
    </div>
  );
}

function Spark(p: { label: string; values: number[]; fmt: (n: number) => string }) {
  const w = 240, h = 50, max = Math.max(1, ...p.values);
  const pts = p.values.map((v, i) => `${(i / Math.max(1, p.values.length - 1)) * w},${h - (v / max) * h}`).join(" ");
  return (
    <div>
      <small>{p.label}: {p.values.length ? p.fmt(p.values[p.values.length - 1]) : "–"}</small>
      <svg width={w} height={h} style="display:block;background:#f8fafc"><polyline fill="none" stroke="#2b6cb0" points={pts} /></svg>
    </div>
  );
}

function Charts(p: { base: string }) {
  const [samples, setSamples] = useState<VmSample[]>([]);
  const [err, setErr] = useState("");
  useEffect(() => {
    let since = 0, stop = false;
    const tick = async () => {
      try {
        const m = await get<{ interval_ms: number; samples: VmSample[] }>(`${p.base}/metrics?since_ms=${since}`);
        if (m.samples.length) since = m.samples[m.samples.length - 1].time_ms;
        setSamples((old) => [...old, ...m.samples].slice(-300));
        setErr("");
        if (!stop) setTimeout(tick, m.interval_ms || 2000);
      } catch (e) { setErr((e as Error).message); if (!stop) setTimeout(tick, 5000); }
    };
    tick();
    return () => { stop = true; };
  }, [p.base]);
  const kb = (n: number) => `${(n / 1024).toFixed(1)} KiB/s`;
  return (
    <div class="card"><h3>Live metrics</h3><Err msg={err} />
      <Spark label="CPU %" values={samples.map((s) => s.cpu_percent)} fmt={(n) => n.toFixed(1)} />
      <Spark label="Memory MiB" values={samples.map((s) => s.memory_used_bytes / 1048576)} fmt={(n) => n.toFixed(0)} />
      <Spark label="Disk r+w" values={samples.map((s) => s.disk_read_bytes_per_sec + s.disk_write_bytes_per_sec)} fmt={kb} />
      <Spark label="Net rx+tx" values={samples.map((s) => s.net_rx_bytes_per_sec + s.net_tx_bytes_per_sec)} fmt={kb} />
    </div>
  );
}

function Snapshots(p: { base: string; onChange: () => void }) {
  const [tree, err, reload] = usePoll<{ snapshots: Snapshot[]; current?: string }>(`${p.base}/snapshots`);
  const [name, setName] = useState(""), [msg, setMsg] = useState(""), [op, setOp] = useState<Operation>();
  const run = async (method: string, path: string, body?: unknown) => {
    setMsg("");
    try { await runOp(method, path, body, setOp); reload(); p.onChange(); } catch (e) { setMsg((e as Error).message); }
  };
  // Tree: children listed under their parent, indented by depth.
  const list = tree?.snapshots ?? [];
  const rows: [Snapshot, number][] = [];
  const walk = (parent: string | undefined, depth: number) =>
    list.filter((s) => (s.parent ?? undefined) === parent || (!parent && s.parent && !list.some((x) => x.name === s.parent)))
      .forEach((s) => { if (!rows.some(([r]) => r.name === s.name)) { rows.push([s, depth]); walk(s.name, depth + 1); } });
  walk(undefined, 0);
  return (
    <div class="card" data-testid="snapshots-card"><h3>Snapshots</h3>
      <div class="row">
        <input placeholder="snapshot name" name="snapshot" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        <button onClick={() => run("POST", `${p.base}/snapshots`, { name })}>Take snapshot</button>
      </div>
      <Err msg={err || msg} /><OpProgress op={op} />
      <table data-testid="snapshots"><tbody>
        {rows.map(([s, d]) => (
          <tr key={s.name}>
            <td style={`padding-left:${d * 1.2 + 0.5}rem`}>{d ? "└ " : ""}{s.name}{tree?.current === s.name ? " (current)" : ""}</td>
            <td>{new Date(s.created_at * (s.created_at < 1e12 ? 1000 : 1)).toLocaleString()}</td>
            <td><button onClick={() => run("POST", `${p.base}/snapshots/${enc(s.name)}/revert`)}>Revert</button>
              <button onClick={() => run("DELETE", `${p.base}/snapshots/${enc(s.name)}`)}>Delete</button></td>
          </tr>
        ))}
      </tbody></table>
    </div>
  );
}

export { del, post };
