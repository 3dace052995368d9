import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, get, Whoami } from "./api";
import { Dashboard } from "./pages/dashboard";
import { VmList } from "./pages/vmlist";
import { VmPage } from "./pages/vm";
import { CreateVm } from "./pages/create";
import { Storage, Networks, Users, Audit } from "./pages/admin";
import "./style.css";

// A tiny history router: the server answers index.html for every non-API path.
export function navigate(to: string) {
  history.pushState(null, "", to);
  dispatchEvent(new PopStateEvent("popstate"));
}
export function Link(p: { href: string; children: preact.ComponentChildren; class?: string }) {
  return <a href={p.href} class={p.class} onClick={(e) => { e.preventDefault(); navigate(p.href); }}>{p.children}</a>;
}

function usePath() {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const f = () => setPath(location.pathname);
    addEventListener("popstate", f);
    return () => removeEventListener("popstate", f);
  }, []);
  return path;
}

function Login(p: { onLogin: () => void }) {
  const [u, setU] = useState(""), [pw, setPw] = useState(""), [err, setErr] = useState("");
  // Seconds left of a throttled login (429 + Retry-After): counted down, submit disabled.
  const [wait, setWait] = useState(0);
  useEffect(() => {
    if (wait <= 0) return;
    const t = setTimeout(() => setWait(wait - 1), 1000);
    return () => clearTimeout(t);
  }, [wait]);
  const submit = async (e: Event) => {
    e.preventDefault();
    setErr("");
    try { await api("POST", "/api/v1/auth/login", { username: u, password: pw }); p.onLogin(); }
    catch (x) {
      if (x instanceof ApiError && x.status === 429) setWait(x.retryAfter ?? 60);
      else setErr((x as Error).message);
    }
  };
  return (
    <form class="login card" onSubmit={submit}>
      <h1>Corral</h1>
      <label>Username <input name="username" value={u} onInput={(e) => setU(e.currentTarget.value)} autoFocus /></label>
      <label>Password <input name="password" type="password" value={pw} onInput={(e) => setPw(e.currentTarget.value)} /></label>
      <button type="submit" disabled={wait > 0}>Log in</button>
      {wait > 0 && <p class="error" role="alert" data-testid="throttled">Too many failed attempts; try again in {wait} s</p>}
      {err && <p class="error" role="alert">{err}</p>}
    </form>
  );
}

function route(path: string) {
  const m = path.match(/^\/vms\/([^/]+)$/);
  if (path === "/vms/new") return <CreateVm />;
  // Keyed: another VM's page starts afresh (not with this one's dialog or "moved" state).
  if (m) return <VmPage key={m[1]} name={decodeURIComponent(m[1])} />;
  if (path === "/vms") return <VmList />;
  if (path === "/storage") return <Storage />;
  if (path === "/networks") return <Networks />;
  if (path === "/users") return <Users />;
  if (path === "/audit") return <Audit />;
  return <Dashboard />;
}

function App() {
  const path = usePath();
  const [me, setMe] = useState<Whoami | null | undefined>(undefined);
  const check = () => get<Whoami>("/api/v1/auth/whoami").then(setMe, (e) => {
    if (e instanceof ApiError && e.status === 401) setMe(null); else setMe(null);
  });
  useEffect(() => { check(); }, []);
  if (me === undefined) return <p>Loading…</p>;
  if (me === null) return <Login onLogin={check} />;
  const logout = async () => { await api("POST", "/api/v1/auth/logout").catch(() => {}); setMe(null); };
  return (
    <div class="layout">
      <nav>
        <strong>Corral</strong>
        <Link href="/">Dashboard</Link>
        <Link href="/vms">VMs</Link>
        <Link href="/vms/new">Create VM</Link>
        <Link href="/storage">Storage</Link>
        <Link href="/networks">Networks</Link>
        {me.role === "admin" && <Link href="/users">Users &amp; tokens</Link>}
        {me.role === "admin" && <Link href="/audit">Audit log</Link>}
        <span class="me" data-testid="whoami">{me.name} ({me.role})</span>
        <button onClick={logout}>Log out</button>
      </nav>
      <main>{route(path)}</main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
