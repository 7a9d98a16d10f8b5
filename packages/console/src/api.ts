// The console's client of mitosd's public HTTP API (API.md): lifecycle routes
// as JSON over fetch, the runtime's unary calls through Connect-Web, files over
// the plain HTTP routes. The token lives in session storage, never in a URL.

import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { Sandbox as SandboxService } from "@mitos/proto";

const TOKEN_KEY = "mitos.token";

/** A sandbox object as API.md gives it (snake_case, as on the wire). */
export interface SandboxJson {
  id: string;
  template_id: string;
  parent_id: string | null;
  state: "starting" | "ready" | "paused" | "terminated" | "failed";
  created_at: string;
  deadline_unix: number;
  fork_time_ms: number;
  accel: string;
  memory: { private_bytes: number; shared_bytes: number };
  hibernated?: boolean;
  network?: { egress?: string; allow_out?: string[]; deny_out?: string[] } | null;
  tenant?: string | null;
}

export interface TemplateJson {
  id: string;
  ready: boolean;
  created_at: string;
  creation_time_ms: number;
  resources?: { vcpu_count: number; mem_size_mib: number };
  image?: string | null;
  tenant?: string | null;
}

export interface PoolJson {
  template: string;
  warm: number;
  target: number;
  claimed: number;
}

export interface HealthJson {
  status: string;
  version: string;
  auth?: "token" | "none";
  accel: string;
  templates: number;
  sandboxes: number;
}

/** An error in API.md's envelope, as the console shows it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly remediation: string,
  ) {
    super(message);
  }
}

async function errorOf(res: Response): Promise<ApiError> {
  const text = await res.text();
  try {
    const e = (JSON.parse(text) as { error?: { code?: string; message?: string; remediation?: string } }).error;
    if (e?.code) return new ApiError(res.status, e.code, e.message ?? e.code, e.remediation ?? "");
  } catch {
    // Not the envelope: a proxy's page, say.
  }
  return new ApiError(res.status, `http_${res.status}`, `HTTP ${res.status} ${res.statusText}`, text.slice(0, 200));
}

export class Api {
  readonly runtime: Client<typeof SandboxService>;

  constructor(readonly token: string | null) {
    const auth: Interceptor = (next) => (req) => {
      if (this.token) req.header.set("authorization", `Bearer ${this.token}`);
      return next(req);
    };
    this.runtime = createClient(
      SandboxService,
      createConnectTransport({ baseUrl: location.origin, useBinaryFormat: false, interceptors: [auth] }),
    );
  }

  /** The token kept for this tab (session storage: gone when the tab closes). */
  static saved(): string | null {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  static save(token: string | null): void {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...extra, ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) };
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await fetch(path, {
      method,
      headers: this.headers(
        body === undefined ? { accept: "application/json" } : { "content-type": "application/json" },
      ),
      body: body === undefined ? null : JSON.stringify(body),
    });
    if (!res.ok) throw await errorOf(res);
    return (await res.json()) as T;
  }

  health = () => this.request<HealthJson>("GET", "/v1/health");
  sandboxes = () => this.request<SandboxJson[]>("GET", "/v1/sandboxes");
  templates = () => this.request<TemplateJson[]>("GET", "/v1/templates");
  pools = () => this.request<PoolJson[]>("GET", "/v1/pools");
  create = (template: string) => this.request<SandboxJson>("POST", "/v1/sandboxes", { template });
  fork = (id: string, count: number) =>
    this.request<{ sandboxes: SandboxJson[]; fork_time_ms: number }>("POST", `/v1/sandboxes/${enc(id)}/fork`, {
      count,
    });
  pause = (id: string) => this.request("POST", "/v1/pause", { sandbox: id });
  resume = (id: string) => this.request("POST", "/v1/resume", { sandbox: id });
  terminate = (id: string) => this.request("DELETE", `/v1/sandboxes/${enc(id)}`);
  setTimeout = (id: string, seconds: number) =>
    this.request<{ deadline_unix: number }>("POST", "/v1/set_timeout", { sandbox: id, timeout_seconds: seconds });

  expose = (id: string, port: number) =>
    this.request<{ port: number; url: string; host: string; token: string; token_header: string }>(
      "POST",
      `/v1/sandboxes/${enc(id)}/expose/${port}`,
      {},
    );

  async metrics(): Promise<string> {
    const res = await fetch("/metrics", { headers: this.headers() });
    if (!res.ok) throw await errorOf(res);
    return res.text();
  }

  /** A file's bytes (GET /v1/sandboxes/{id}/files). */
  async download(id: string, path: string): Promise<Blob> {
    const res = await fetch(`/v1/sandboxes/${enc(id)}/files?path=${encodeURIComponent(path)}`, {
      headers: this.headers(),
    });
    if (!res.ok) throw await errorOf(res);
    return res.blob();
  }

  /** Writes a file (PUT /v1/sandboxes/{id}/files), the body streamed as the browser reads it. */
  async upload(id: string, path: string, data: Blob): Promise<number> {
    const res = await fetch(`/v1/sandboxes/${enc(id)}/files?path=${encodeURIComponent(path)}`, {
      method: "PUT",
      headers: this.headers({ "content-type": "application/octet-stream" }),
      body: data,
    });
    if (!res.ok) throw await errorOf(res);
    return ((await res.json()) as { bytes_written: number }).bytes_written;
  }

  /** Builds a template, calling `onLine` with each build event as it comes (docs/templates.md "Build log"). */
  async buildTemplate(spec: Record<string, unknown>, onLine: (event: Record<string, unknown>) => void): Promise<void> {
    const res = await fetch("/v1/templates", {
      method: "POST",
      headers: this.headers({ "content-type": "application/json", accept: "application/x-ndjson" }),
      body: JSON.stringify(spec),
    });
    if (!res.ok || !res.body) throw await errorOf(res);
    await readLines(res.body, (line) => onLine(JSON.parse(line) as Record<string, unknown>));
  }
}

/** Calls `onLine` with each non-empty line of a byte stream. */
export async function readLines(body: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    rest += decoder.decode(value, { stream: true });
    const lines = rest.split("\n");
    rest = lines.pop() ?? "";
    for (const l of lines) if (l.trim()) onLine(l);
  }
  if (rest.trim()) onLine(rest);
}

const enc = encodeURIComponent;

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}
