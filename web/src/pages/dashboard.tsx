import { Vm } from "../api";
import { Err, EventList, fmtBytes, useEvents, usePoll } from "./common";

interface HostMetrics {
  samples: { time_ms: number; cpu_percent: number; memory_used_bytes: number; memory_total_bytes: number }[];
  pools: { name: string; used_bytes: number; capacity_bytes: number }[];
  vms_by_state: Record<string, number>;
}

export function Dashboard() {
  const [host, herr] = usePoll<HostMetrics>("/api/v1/host/metrics", 2000);
  // The VM list (0.5 MB with 1000 VMs) only when host metrics cannot count the states.
  const [vms, verr] = usePoll<Vm[]>(herr && !host ? "/api/v1/vms" : "", 5000);
  const events = useEvents();
  const last = host?.samples[host.samples.length - 1];
  const byState: Record<string, number> = host?.vms_by_state ?? {};
  if (!host && vms) for (const v of vms) byState[v.status.state] = (byState[v.status.state] ?? 0) + 1;
  return (
    <div>
      <h2>Dashboard</h2>
      <Err msg={herr && !vms ? herr : verr} />
      <div class="grid">
        <div class="card"><h3>Host CPU</h3><p data-testid="host-cpu">{last ? `${last.cpu_percent.toFixed(1)} %` : "–"}</p></div>
        <div class="card"><h3>Host memory</h3><p>{last ? `${fmtBytes(last.memory_used_bytes)} / ${fmtBytes(last.memory_total_bytes)}` : "–"}</p></div>
        <div class="card"><h3>Storage</h3>
          {host?.pools.map((p) => <p key={p.name}>{p.name}: {fmtBytes(p.used_bytes)} / {fmtBytes(p.capacity_bytes)}</p>)}
        </div>
        <div class="card"><h3>VMs by state</h3>
          {Object.entries(byState).map(([s, n]) => <p key={s}>{s}: {n}</p>)}
        </div>
      </div>
      <div class="card"><h3>Recent events (live)</h3><EventList events={events} /></div>
    </div>
  );
}
