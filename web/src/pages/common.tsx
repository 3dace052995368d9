import { useEffect, useState } from "preact/hooks";
import { api, ApiError, del, get, Operation, VmEvent } from "../api";

/** Loads `path` and reloads it every `everyMs` (0: once); an empty path loads nothing
 *  (and stops reloading). The fourth value is the HTTP status of the last failure (0: none). */
export function usePoll<T>(path: string, everyMs = 0): [T | undefined, string, () => void, number] {
  const [data, setData] = useState<T>();
  const [err, setErr] = useState(""), [status, setStatus] = useState(0);
  const load = () => path
    ? get<T>(path).then((d) => { setData(d); setErr(""); setStatus(0); }, (e) => {
      setErr((e as Error).message);
      setStatus(e instanceof ApiError ? e.status : 0);
    })
    : Promise.resolve();
  useEffect(() => {
    if (!path) return;
    load();
    if (!everyMs) return;
    const t = setInterval(load, everyMs);
    return () => clearInterval(t);
  }, [path, everyMs]);
  return [data, err, load, status];
}

/** An error as the user should read it: the server's message and its hint. */
export const withHint = (x: unknown) => (x as Error).message + (x instanceof ApiError && x.hint ? ` (${x.hint})` : "");

/** The server's error about one input, shown next to it (`field` as the server named it). */
export function FieldError(p: { field: string; msg: string }) {
  return <span class="field-error" data-field={p.field}>{p.msg}</span>;
}

export function Err(p: { msg: string }) {
  return p.msg ? <p class="error" role="alert">{p.msg}</p> : null;
}

export function Badge(p: { state: string }) {
  return <span class={`badge ${p.state}`}>{p.state}</span>;
}

/** One event stream per tab, shared by every listener (pages, running operations):
 *  over HTTP/1.1 a browser opens at most six connections to a host, and a stream per
 *  listener would soon leave other requests waiting. Opened with the first listener,
 *  closed with the last. Returns the function that stops listening. */
const listeners = new Set<(ev: VmEvent) => void>();
let stream: EventSource | undefined;
export function onEvent(listener: (ev: VmEvent) => void): () => void {
  listeners.add(listener);
  if (!stream) {
    stream = new EventSource("/api/v1/events/stream");
    stream.onmessage = (m) => {
      let ev: VmEvent;
      try { ev = JSON.parse(m.data) as VmEvent; } catch { return; /* keep-alive comments */ }
      listeners.forEach((l) => l(ev));
    };
  }
  return () => {
    listeners.delete(listener);
    if (!listeners.size) { stream?.close(); stream = undefined; }
  };
}

/** Live events, newest first, optionally for one VM. Operations' `progress` (stream-only,
 *  several a second during a migration) is for their followers (runOp), not a list. */
export function useEvents(vm?: string, max = 50): VmEvent[] {
  const [events, setEvents] = useState<VmEvent[]>([]);
  useEffect(() => onEvent((ev) => {
    if (ev.kind === "progress") return;
    if (!vm || ev.vm === vm) setEvents((old) => [ev, ...old].slice(0, max));
  }), [vm]);
  return events;
}

export function EventList(p: { events: VmEvent[] }) {
  return (
    <table data-testid="events">
      <tbody>
        {p.events.map((e) => (
          <tr key={e.id}><td>{new Date(e.time_ms).toLocaleTimeString()}</td><td>{e.vm ?? ""}</td><td>{e.kind}</td><td>{e.message}</td></tr>
        ))}
      </tbody>
    </table>
  );
}

/** Whether an operation has yet to end. */
export const opRunning = (op: Operation) => !op.state || ["pending", "running", "queued"].includes(op.state);

/** Runs a request that may answer 202 + operation, and follows the operation (followOp). */
export async function runOp(method: string, path: string, body?: unknown, onOp?: (op: Operation) => void): Promise<unknown> {
  const r = await api<{ id?: string; operation?: Operation } & Record<string, unknown>>(method, path, body);
  const op = (r && (r.operation ?? (typeof r.id === "string" && "state" in r ? (r as unknown as Operation) : undefined))) as Operation | undefined;
  if (!op) return r;
  return followOp(op, onOp);
}

/** Follows an operation to its end: its progress from the event stream's `progress` events
 *  (at most two a second, not stored), its end by long-polling `/operations/{id}/wait` — no
 *  polling loop. A failed operation throws its error (an ApiError with its field and hint). */
export async function followOp(op: Operation, onOp?: (op: Operation) => void): Promise<Operation> {
  let cur = op;
  onOp?.(cur);
  const stop = opRunning(cur) ? onEvent((ev) => {
    if (ev.kind !== "progress") return;
    try {
      const p = JSON.parse(ev.message) as Operation;
      if (p.id === op.id && opRunning(cur)) { cur = { ...cur, ...p }; onOp?.(cur); }
    } catch { /* not an operation's progress */ }
  }) : undefined;
  try {
    while (opRunning(cur)) {
      cur = await get<Operation>(`/api/v1/operations/${cur.id}/wait?timeout_secs=20`);
      onOp?.(cur);
    }
  } finally { stop?.(); }
  const e = cur.error;
  if (e) throw typeof e === "string" ? new Error(e) : new ApiError(0, e.error, e.field, e.hint);
  return cur;
}

export function OpProgress(p: { op?: Operation }) {
  if (!p.op) return null;
  const running = opRunning(p.op);
  return (
    <div class="row" data-testid="operation">
      <span>Operation {p.op.kind ?? ""} {p.op.state}{p.op.progress != null ? ` ${Math.round(Number(p.op.progress))}%` : ""}</span>
      {running && <button onClick={() => del(`/api/v1/operations/${p.op!.id}`).catch(() => {})}>Cancel</button>}
    </div>
  );
}

export function fmtBytes(n?: number) {
  if (n == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
