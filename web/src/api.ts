// Every call goes through here: JSON in and out, `X-Corral-CSRF: 1` on every non-GET
// (the server refuses cookie-authenticated changes without it), errors as ApiError.
export class ApiError extends Error {
  constructor(public status: number, message: string, public field?: string, public hint?: string,
    /** Seconds to wait before trying again (a 429's `Retry-After`). */
    public retryAfter?: number) {
    super(message);
  }
}

export async function api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET") headers["X-Corral-CSRF"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  const data = text ? safeJson(text) : undefined;
  if (!r.ok) {
    const d = (data ?? {}) as { error?: string; field?: string; hint?: string };
    const retry = Number(r.headers.get("Retry-After") ?? NaN);
    throw new ApiError(r.status, d.error ?? `${r.status} ${r.statusText}`, d.field, d.hint,
      Number.isFinite(retry) ? retry : undefined);
  }
  return data as T;
}

function safeJson(t: string): unknown {
  try { return JSON.parse(t); } catch { return t; }
}

export const get = <T,>(p: string) => api<T>("GET", p);
export const post = <T,>(p: string, b?: unknown) => api<T>("POST", p, b ?? {});
export const del = <T,>(p: string) => api<T>("DELETE", p);
export const enc = encodeURIComponent;

export interface Whoami { name: string; kind: string; role: string; expires_at_ms?: number }
export interface VmEvent { id: number; time_ms: number; vm?: string; kind: string; message: string }
export interface Vm {
  spec: { name: string; memory_mib: number; vcpus: number; [k: string]: unknown };
  status: { state: string; reason?: string; accel?: string };
  uptime_secs?: number;
  addresses?: { address: string; [k: string]: unknown }[];
  events?: VmEvent[];
}
export interface Snapshot { name: string; parent?: string; created_at: number; description?: string }
export interface ErrorBody { error: string; field?: string; hint?: string }
export interface Operation {
  id: string; kind?: string; target?: string; state?: string; progress?: number; cancellable?: boolean;
  /** Set when it failed (older servers sent a bare string). */
  error?: ErrorBody | string;
  /** What the operation made, once it succeeded. */
  result?: unknown;
  /** What is happening now, when the work says more than a percentage. */
  detail?: unknown;
  [k: string]: unknown;
}

// Live migration (docs/migration.md).
/** `POST /api/v1/host/probe-certificate`: the certificate another corrald shows (not trusted by this). */
export interface ProbedCertificate { url: string; fingerprint: string }
export type Postcopy = "off" | "auto" | "now";
export interface MigrationTarget { url: string; fingerprint: string; token: string; name?: string }
/** `POST /api/v1/vms/{name}/migrate`. */
export interface MigrateRequest {
  destination: MigrationTarget;
  max_downtime_ms?: number;
  bandwidth_bytes?: number;
  postcopy: Postcopy;
  auto_converge?: boolean;
  dry_run: boolean;
}
export interface PreflightCheck { check: string; ok: boolean; message: string; field?: string; hint?: string }
export interface DiskPlan { disk: string; transfer: "shared" | "copy"; bytes: number }
/** The answer to a dry run: every check, and how each disk would move. */
export interface PreflightReport { destination: string; ok: boolean; checks: PreflightCheck[]; disks: DiskPlan[]; took_ms: number }
/** A migration operation's `detail`. */
export interface MigrationProgress {
  phase: string;
  ram_transferred: number; ram_remaining: number; ram_total: number;
  /** Bytes per second the guest dirties. */
  dirty_rate: number;
  expected_downtime_ms: number;
  pass: number;
  disk_transferred: number; disk_total: number;
  downtime_ms?: number; total_ms?: number;
  postcopy: boolean;
}
/** A migration operation's `result`, once it succeeded: the VM is no longer on this host. */
export interface MigrationResult {
  destination: string; destination_host: string;
  downtime_ms?: number; total_ms?: number; ram_bytes: number; disk_bytes: number; postcopy: boolean;
}
