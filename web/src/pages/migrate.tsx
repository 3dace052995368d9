import { useEffect, useState } from "preact/hooks";
import {
  ApiError, del, enc, get, MigrateRequest, MigrationProgress, MigrationResult, Operation, post, Postcopy,
  PreflightReport, ProbedCertificate,
} from "../api";
import { Link } from "../main";
import { Err, FieldError, fmtBytes, followOp, opRunning, runOp, withHint } from "./common";

// Live migration from the VM page (docs/migration.md): the destination's certificate is
// probed and shown for the user to compare, a dry run lists every pre-flight check, and
// the migration is an operation whose `detail` is a MigrationProgress.

/** Phases past the commit point: the source no longer takes a cancel. */
const PAST_COMMIT = ["postcopy", "switch-over", "cleanup", "done"];
const PHASES: Record<string, string> = {
  starting: "asking the destination to get ready", preflight: "checking both hosts", preparing: "preparing the destination", "copying-chain": "copying backing images",
  mirroring: "copying disks while the guest runs", memory: "sending memory while the guest runs",
  postcopy: "post-copy: the guest runs there, the rest of its memory follows", "switch-over": "switching over",
  cleanup: "cleaning up here", done: "done",
};
/** Server fields the form has an input for (the probe names the URL `url`). */
const INPUTS: Record<string, string> = {
  url: "url", "destination.url": "url", "destination.fingerprint": "fingerprint", "destination.token": "token",
  max_downtime_ms: "downtime", bandwidth_bytes: "bandwidth", postcopy: "postcopy",
};
const MIB = 1048576;

export function MigrateDialog(p: { vm: string; onMoved: (r: MigrationResult) => void; onChange: () => void; onClose: () => void }) {
  const base = `/api/v1/vms/${enc(p.vm)}`;
  const [f, setF] = useState({ url: "", token: "", downtime: "300", bandwidth: "", postcopy: "off" });
  const [fp, setFp] = useState(""), [compared, setCompared] = useState(false);
  const [fieldErr, setFieldErr] = useState<{ field: string; msg: string }>();
  const [msg, setMsg] = useState(""), [busy, setBusy] = useState(false);
  const [report, setReport] = useState<PreflightReport>(), [op, setOp] = useState<Operation>();
  const set = (k: string) => (e: Event) => {
    setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
    setReport(undefined);
    // Another URL is another certificate: fetch and compare again.
    if (k === "url") { setFp(""); setCompared(false); }
  };
  const errFor = (input: string) => fieldErr && INPUTS[fieldErr.field] === input ? <FieldError {...fieldErr} /> : null;
  const run = async (what: () => Promise<unknown>) => {
    setMsg(""); setFieldErr(undefined); setBusy(true);
    try { await what(); } catch (x) {
      if (x instanceof ApiError && x.field) setFieldErr({ field: x.field, msg: withHint(x) });
      else setMsg(withHint(x));
    } finally { setBusy(false); }
  };
  const probe = () => run(async () => {
    setFp(""); setCompared(false);
    const r = await post<ProbedCertificate>("/api/v1/host/probe-certificate", { url: f.url.trim() });
    setFp(r.fingerprint);
  });
  const request = (dry_run: boolean): MigrateRequest => {
    const num = (v: string, field: string, what: string) => {
      const n = Number(v);
      if (v.trim() === "" || !Number.isFinite(n) || n < 0) throw new ApiError(400, `'${v}' is not ${what}`, field);
      return n;
    };
    return {
      destination: { url: f.url.trim(), fingerprint: fp, token: f.token },
      max_downtime_ms: Math.round(num(f.downtime, "max_downtime_ms", "a number of milliseconds")),
      bandwidth_bytes: f.bandwidth.trim() ? Math.round(num(f.bandwidth, "bandwidth_bytes", "a number of MiB/s") * MIB) : undefined,
      postcopy: f.postcopy as Postcopy, dry_run,
    };
  };
  const check = () => run(async () => {
    setReport(undefined);
    const r = await post<PreflightReport>(`${base}/migrate`, request(true));
    setReport(r);
    // A failed check about the form's own input also shows next to that input.
    const bad = r.checks.find((c) => !c.ok && c.field && INPUTS[c.field]);
    if (bad) setFieldErr({ field: bad.field!, msg: bad.message + (bad.hint ? ` (${bad.hint})` : "") });
  });
  const migrate = () => run(async () => {
    setReport(undefined); setOp(undefined);
    let started = false;
    try {
      const end = (await runOp("POST", `${base}/migrate`, request(false), (o) => {
        setOp(o);
        // The VM is `migrating` from now on: the page shows it at once.
        if (!started) { started = true; p.onChange(); }
      })) as Operation;
      if (end.state === "succeeded") { p.onMoved(end.result as MigrationResult); return; }
    } finally {
      // Cancelled or failed: the VM runs here as before.
      if (started) p.onChange();
    }
  });
  const moving = !!op && opRunning(op);
  const ready = !!fp && compared && !busy && !moving;
  return (
    <div class="card migrate" data-testid="migrate-dialog">
      <h3>Migrate {p.vm} to another host</h3>
      <div class="row">
        <label>Destination URL <input name="migrate-url" placeholder="https://host:8443" value={f.url} onInput={set("url")}
          disabled={moving} />{errFor("url")}</label>
        <button disabled={busy || moving || !f.url.trim()} onClick={probe}>Fetch fingerprint</button>
      </div>
      <label>Its certificate's SHA-256 fingerprint
        <input name="migrate-fingerprint" readOnly value={fp} placeholder="fetch it first" class="mono" />{errFor("fingerprint")}</label>
      <label class="row"><input type="checkbox" name="migrate-compared" checked={compared} disabled={!fp || moving}
        onChange={(e) => setCompared(e.currentTarget.checked)} />
        I compared it with <code>corral host info</code> on that host</label>
      <label>Admin token of the destination <input name="migrate-token" type="password" autoComplete="off" value={f.token}
        onInput={set("token")} disabled={moving} />{errFor("token")}</label>
      <div class="row">
        <label>Max downtime (ms) <input name="migrate-downtime" type="number" min="1" value={f.downtime} onInput={set("downtime")}
          disabled={moving} />{errFor("downtime")}</label>
        <label>Bandwidth (MiB/s, empty: no cap) <input name="migrate-bandwidth" type="number" min="0" value={f.bandwidth}
          onInput={set("bandwidth")} disabled={moving} />{errFor("bandwidth")}</label>
        <label>Post-copy <select name="migrate-postcopy" value={f.postcopy} onChange={set("postcopy")} disabled={moving}>
          <option value="off">off</option><option value="auto">auto (when pre-copy stops converging)</option>
          <option value="now">now (after the first pass)</option>
        </select>{errFor("postcopy")}</label>
      </div>
      <div class="row">
        <button disabled={!ready} onClick={check}>Check</button>
        <button disabled={!ready} onClick={migrate}>Migrate</button>
        <button disabled={moving} onClick={p.onClose}>Close</button>
        {busy && !op && <span>…</span>}
      </div>
      {fieldErr && !INPUTS[fieldErr.field] && <p class="error"><FieldError {...fieldErr} /> (<code>{fieldErr.field}</code>)</p>}
      <Err msg={msg} />
      {report && <Checks report={report} />}
      {op && <MigrationStatus op={op} />}
    </div>
  );
}

function Checks(p: { report: PreflightReport }) {
  const r = p.report;
  return (
    <div data-testid="preflight" data-ok={String(r.ok)}>
      <p class={r.ok ? "" : "error"}>{r.ok
        ? `Every check passed: ${r.destination} can take it (checked in ${r.took_ms} ms).`
        : `The migration to ${r.destination} would be refused:`}</p>
      <table>
        <thead><tr><th>Check</th><th></th><th>What was found</th><th>Field</th><th>Hint</th></tr></thead>
        <tbody>
          {r.checks.map((c, i) => (
            <tr key={i} class={c.ok ? "" : "check-failed"} data-check={c.check} data-ok={String(c.ok)}>
              <td>{c.check}</td><td>{c.ok ? "ok" : "failed"}</td><td>{c.message}</td>
              <td>{c.field && <code>{c.field}</code>}</td><td>{c.hint ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {r.disks.length > 0 && <p>Disks: {r.disks.map((d) =>
        `${d.disk} ${d.transfer === "shared" ? "shared (stays put)" : `copied (${fmtBytes(d.bytes)})`}`).join(", ")}</p>}
    </div>
  );
}

/** A running (or ended) migration: its phase and figures, Cancel while it can be. */
export function MigrationStatus(p: { op: Operation }) {
  const [msg, setMsg] = useState("");
  const d = p.op.detail as MigrationProgress | undefined;
  const running = opRunning(p.op);
  const phase = running ? d?.phase ?? "starting" : p.op.state ?? "";
  const cancellable = running && p.op.cancellable !== false && !PAST_COMMIT.includes(phase);
  const cancel = () => { setMsg(""); del(`/api/v1/operations/${p.op.id}`).catch((e) => setMsg(withHint(e))); };
  const ram = d && `${fmtBytes(d.ram_transferred)} sent, ${fmtBytes(d.ram_remaining)} left of ${fmtBytes(d.ram_total)}`;
  return (
    <div data-testid="migration-progress" data-phase={phase} data-state={p.op.state ?? ""}>
      <p><strong data-testid="migration-phase">{phase}</strong>{PHASES[phase] ? `: ${PHASES[phase]}` : ""}
        {running && p.op.progress != null ? ` (${Math.round(Number(p.op.progress))}%)` : ""}</p>
      {d && <table><tbody>
        {d.disk_total > 0 && <tr><td>Disks</td><td data-testid="migration-disk">{fmtBytes(d.disk_transferred)} copied
          {/* The total is what is allocated; the mirror also walks the unallocated rest. */}
          {d.disk_transferred <= d.disk_total ? ` of ${fmtBytes(d.disk_total)}` : ` (${fmtBytes(d.disk_total)} allocated)`}</td></tr>}
        {d.ram_total > 0 && <>
          <tr><td>Memory</td><td data-testid="migration-ram">{ram}</td></tr>
          <tr><td>Dirty rate</td><td>{fmtBytes(d.dirty_rate)}/s</td></tr>
          <tr><td>Pass over memory</td><td>{d.pass}</td></tr>
          <tr><td>Expected downtime</td><td>{d.expected_downtime_ms} ms</td></tr>
        </>}
        {d.postcopy && <tr><td>Post-copy</td><td>yes: the guest runs at the destination</td></tr>}
      </tbody></table>}
      {cancellable && <button onClick={cancel}>Cancel</button>}
      {p.op.state === "cancelled" && <p>Cancelled: the VM runs here as before.</p>}
      <Err msg={msg} />
    </div>
  );
}

function Summary(p: { r: MigrationResult }) {
  const r = p.r;
  return (
    <p data-testid="migration-result">
      Migrated to <strong data-testid="destination-host">{r.destination_host}</strong> ({r.destination})
      {r.total_ms != null && ` in ${r.total_ms} ms`}; the guest paused <span data-testid="downtime">{r.downtime_ms ?? "?"} ms</span>.
      {` Sent ${fmtBytes(r.ram_bytes)} of memory and ${fmtBytes(r.disk_bytes)} of disk${r.postcopy ? " (post-copy)" : ""}.`}
    </p>
  );
}

/** The VM page once the VM has left this host. */
export function Moved(p: { vm: string; result: MigrationResult }) {
  const r = p.result;
  return (
    <div class="card" data-testid="moved">
      <h2>{p.vm} <span class="badge moved">moved</span></h2>
      <p>{p.vm} has moved to <strong>{r.destination_host}</strong>: it no longer exists on this host.</p>
      <Summary r={r} />
      <p class="row"><Link href="/vms">Back to the VM list</Link>
        <a href={`${r.destination}/vms/${enc(p.vm)}`}>Open it in {r.destination_host}'s console</a></p>
    </div>
  );
}

/** The newest operation on this VM, followed while it runs. */
function useLastOp(vm: string, when: boolean): [Operation | undefined, boolean] {
  const [op, setOp] = useState<Operation>(), [loaded, setLoaded] = useState(false);
  useEffect(() => {
    if (!when) return;
    let gone = false;
    const show = (o: Operation) => { if (!gone) setOp(o); };
    get<Operation[]>("/api/v1/operations").then((ops) => {
      const last = ops.filter((o) => o.target === vm).pop();
      setLoaded(true);
      if (last) followOp(last, show).catch(() => { /* its error is in the operation */ });
    }, () => setLoaded(true));
    return () => { gone = true; };
  }, [vm, when]);
  return [op, loaded];
}

/** A migration of this VM that this page did not start (another tab, the CLI). */
export function MigrationWatch(p: { vm: string; onMoved: (r: MigrationResult) => void }) {
  const [op] = useLastOp(p.vm, true);
  useEffect(() => {
    if (op?.kind === "vm.migrate" && op.state === "succeeded") p.onMoved(op.result as MigrationResult);
  }, [op?.state]);
  if (op?.kind !== "vm.migrate" || !opRunning(op)) return null;
  return <div class="card"><h3>Migration to another host</h3><MigrationStatus op={op} /></div>;
}

/** The VM page of a VM this host does not have: moved away (its last operation says where,
 *  or is still finishing), or deleted. */
export function Gone(p: { vm: string }) {
  const [op, loaded] = useLastOp(p.vm, true);
  if (op?.kind === "vm.migrate" && op.state === "succeeded" && op.result) return <Moved vm={p.vm} result={op.result as MigrationResult} />;
  if (!loaded) return <p>Loading…</p>;
  return (
    <div class="card" data-testid="gone">
      <h2>{p.vm}</h2>
      {op?.kind === "vm.migrate" && opRunning(op)
        ? <><p>{p.vm} is leaving this host.</p><MigrationStatus op={op} /></>
        : <p>There is no VM {p.vm} on this host (deleted, or moved to another host).</p>}
      <p><Link href="/vms">Back to the VM list</Link></p>
    </div>
  );
}
