// The cluster gateway: mitosd's API for a whole cluster on one URL. Creates
// and forks become Sandbox resources (so the controller places them, CoW
// aware); everything aimed at one sandbox — lifecycle calls, the Connect
// runtime service, the PTY WebSocket — is proxied to the node holding it,
// streams unbuffered; listings fan out to every live node.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import http from "node:http";
import net from "node:net";
import type { V1Lease } from "@kubernetes/client-node";
import { HTTP_STATUS_BY_CODE } from "@mitos/proto";
import type { NodeView } from "./capacity.js";
import { type Kube, statusOf, type WatchedCache } from "./kube.js";
import { indexSandboxes, nodeViews } from "./nodes.js";
import { API_VERSION, ID_PATTERN, ownerRef, type SandboxPool, type SandboxResource } from "./resources.js";

export const GATEWAY_VERSION = "0.1.0";

export interface GatewayOptions {
  kube: Kube;
  /** Bearer tokens clients may use. */
  tokens: string[];
  /** The credential node agents accept from the gateway (their --gateway-token-file). */
  nodeToken: string;
  host?: string;
  port?: number;
  /** How long a create or fork may wait for its resource to become Ready (ms). */
  readyTimeoutMs?: number;
  /** How long it may wait for a node to take it at all (ms): no node with room means a quick 503. */
  pendingTimeoutMs?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

type Json = Record<string, unknown>;

class HttpError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly remediation: string,
    readonly context: Json = {},
  ) {
    super(message);
  }
  get status(): number {
    return (HTTP_STATUS_BY_CODE as Record<string, number>)[this.code] ?? 500;
  }
}

const MAX_BODY = 1 << 20;
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "te",
  "trailer",
]);

export class Gateway {
  private sandboxes!: WatchedCache<SandboxResource>;
  private pools!: WatchedCache<SandboxPool>;
  private leases!: WatchedCache<V1Lease>;
  private server: http.Server | undefined;
  private readonly waiters = new Set<() => void>();
  private readonly log: NonNullable<GatewayOptions["log"]>;
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  url = "";

  constructor(private readonly o: GatewayOptions) {
    this.log = o.log ?? (() => {});
    if (o.tokens.length === 0 || o.tokens.some((t) => t.length < 16)) {
      throw new Error("the gateway needs at least one client token of 16 or more characters");
    }
  }

  async start(): Promise<string> {
    await this.o.kube.check();
    const k = this.o.kube;
    this.sandboxes = k.sandboxCache();
    this.pools = k.poolCache();
    this.leases = k.leaseCache();
    const wake = () => {
      for (const w of this.waiters) w();
    };
    const onError = (err: unknown) => this.log("watch failed; restarting it", { error: String(err) });
    await Promise.all([
      this.sandboxes.start(wake, onError),
      this.pools.start(wake, onError),
      this.leases.start(wake, onError),
    ]);
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => this.fail(res, err));
    });
    server.on("upgrade", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      this.upgrade(req, socket, head).catch((err) => {
        const e = asHttpError(err);
        socket.end(
          `HTTP/1.1 ${e.status} ${http.STATUS_CODES[e.status] ?? ""}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n${JSON.stringify(envelope(e))}`,
        );
      });
    });
    this.server = server;
    await new Promise<void>((resolve) => server.listen(this.o.port ?? 8080, this.o.host ?? "127.0.0.1", resolve));
    const a = server.address() as net.AddressInfo;
    const host = this.o.host ?? "127.0.0.1";
    this.url = `http://${host.includes(":") ? `[${host}]` : host}:${a.port}`;
    this.log("mitos-gateway listening", { url: this.url, namespace: k.namespace });
    return this.url;
  }

  async stop(): Promise<void> {
    const s = this.server;
    if (s) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
    this.agent.destroy();
    await Promise.all([this.sandboxes?.stop(), this.pools?.stop(), this.leases?.stop()]);
  }

  // --- routing ---

  private nodes(): NodeView[] {
    return nodeViews(this.leases.list());
  }

  /** The live node holding a sandbox, found from resources, leases, or (last) by asking every node. */
  private async nodeFor(id: string): Promise<NodeView> {
    const nodes = this.nodes();
    const name = indexSandboxes(this.sandboxes.list(), nodes).nodeOf(id);
    let node = nodes.find((n) => n.name === name);
    if (!node) {
      const found = await Promise.all(
        nodes
          .filter((n) => n.live)
          .map(async (n) =>
            (await this.nodeCall(n, "GET", `/v1/sandboxes/${encodeURIComponent(id)}`)).status === 200 ? n : undefined,
          ),
      );
      node = found.find((n) => n !== undefined);
    }
    if (!node) {
      throw new HttpError(
        "not_found",
        `sandbox ${id} does not exist on any node`,
        "List sandboxes with GET /v1/sandboxes.",
        {
          sandbox: id,
        },
      );
    }
    if (!node.live) {
      throw new HttpError(
        "unavailable",
        `sandbox ${id} is on node ${node.name}, which stopped renewing its lease`,
        "The node's mitosd is down or cut off; its sandboxes show phase Lost. Create a new sandbox (it lands on a live node).",
        { sandbox: id, node: node.name },
      );
    }
    return node;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://gateway");
    const p = url.pathname;
    const method = req.method ?? "GET";
    if (method === "GET" && p === "/v1/health") {
      const nodes = this.nodes();
      return send(res, 200, {
        status: "ok",
        version: GATEWAY_VERSION,
        gateway: true,
        nodes: nodes.filter((n) => n.live).length,
        accel: nodes.find((n) => n.live)?.capacity.accel ?? "unknown",
        templates: new Set(nodes.flatMap((n) => (n.live ? n.capacity.templates : []))).size,
        sandboxes: nodes.reduce((a, n) => a + (n.live ? n.capacity.sandboxes.length : 0), 0),
      });
    }
    const connect = p.startsWith("/sandbox.v1.Sandbox/");
    if (!this.authorized(req.headers.authorization)) {
      const e = new HttpError(
        "unauthorized",
        "missing or wrong bearer token",
        "Send Authorization: Bearer <token> (the gateway's token, MITOS_API_KEY).",
      );
      if (connect) return send(res, 401, { code: "unauthenticated", message: e.message });
      throw e;
    }
    if (connect) {
      const id = header(req, "x-sandbox-id");
      if (!id) return send(res, 400, { code: "invalid_argument", message: "the X-Sandbox-Id header is required" });
      let node: NodeView;
      try {
        node = await this.nodeFor(id);
      } catch (err) {
        const e = asHttpError(err);
        return send(res, e.status, { code: e.code === "not_found" ? "not_found" : "unavailable", message: e.message });
      }
      return this.pipe(req, res, node, `${p}${url.search}`);
    }

    const checkpointPath = /^\/v1\/checkpoints\/([^/]+)(\/.*)?$/.exec(p);
    const forkPath = /^\/v1\/sandboxes\/([^/]+)\/fork$/.exec(p);
    const sandboxPath = /^\/v1\/sandboxes\/([^/]+)(\/.*)?$/.exec(p);
    const idOf = (m: RegExpExecArray) => decodeURIComponent(m[1] as string);
    if (method === "POST" && (p === "/v1/sandboxes" || p === "/v1/fork")) return this.create(req, res);
    if (method === "GET" && p === "/v1/sandboxes") {
      const lists = await this.fanOut("/v1/sandboxes");
      return send(
        res,
        200,
        lists.flatMap((l) => (Array.isArray(l.body) ? l.body : [])).map((s) => this.rewrite(req, s)),
      );
    }
    if (method === "GET" && p === "/v1/templates") {
      const seen = new Map<string, unknown>();
      for (const l of await this.fanOut("/v1/templates"))
        for (const t of Array.isArray(l.body) ? l.body : []) seen.set(String((t as Json).id), t);
      return send(res, 200, [...seen.values()]);
    }
    if (method === "POST" && p === "/v1/templates") {
      // Every live node builds it, so a create may land anywhere.
      const body = await readBody(req);
      const answers = await Promise.all(
        this.nodes()
          .filter((n) => n.live)
          .map((n) => this.nodeCall(n, "POST", p, body)),
      );
      const bad = answers.find((a) => a.status !== 200);
      const ok = answers.find((a) => a.status === 200);
      return send(res, bad?.status ?? ok?.status ?? 503, bad?.body ?? ok?.body ?? envelope(noNodes()));
    }
    if (method === "GET" && p === "/v1/pools") {
      const out: unknown[] = [];
      for (const l of await this.fanOut("/v1/pools"))
        for (const x of Array.isArray(l.body) ? l.body : []) out.push({ ...(x as Json), node: l.node.name });
      return send(res, 200, out);
    }
    if (method === "GET" && p === "/v1/checkpoints") {
      const lists = await this.fanOut("/v1/checkpoints");
      return send(
        res,
        200,
        lists.flatMap((l) => (Array.isArray(l.body) ? l.body : [])),
      );
    }
    if (checkpointPath) {
      const cp = idOf(checkpointPath);
      const node = this.nodes().find((n) => n.live && n.capacity.checkpoints.includes(cp));
      if (!node)
        throw new HttpError(
          "not_found",
          `checkpoint ${cp} is on no live node`,
          "List checkpoints with GET /v1/checkpoints.",
        );
      return this.relay(req, res, node, `${p}${url.search}`);
    }
    if (method === "POST" && forkPath) {
      return this.fork(req, res, idOf(forkPath));
    }
    if (method === "DELETE" && sandboxPath && !sandboxPath[2]) {
      const id = idOf(sandboxPath);
      const node = await this.nodeFor(id);
      const r = await this.nodeCall(node, "DELETE", p);
      const own = this.sandboxes.list().find((s) => !s.spec.forkOf && s.status?.sandboxId === id);
      if (own && (r.status === 200 || r.status === 404 || r.status === 410))
        await this.o.kube.deleteSandbox(own.metadata.name);
      return send(res, r.status, r.body);
    }
    if (sandboxPath) {
      return this.relay(req, res, await this.nodeFor(idOf(sandboxPath)), `${p}${url.search}`);
    }
    if (method === "POST" && (p === "/v1/set_timeout" || p === "/v1/pause" || p === "/v1/resume")) {
      const body = await readBody(req);
      const id = (safeJson(body) as Json | undefined)?.sandbox;
      if (typeof id !== "string") {
        throw new HttpError("invalid_input", "sandbox is required", 'Send {"sandbox": "<id>", ...}.', {
          field: "sandbox",
        });
      }
      return this.relay(req, res, await this.nodeFor(id), p, body);
    }
    if (method === "GET" && p === "/v1/metering") {
      const parts = await this.fanOut("/v1/metering");
      const host = { private_bytes: 0, shared_bytes: 0, total_bytes: 0 };
      const sandboxes: unknown[] = [];
      for (const { body } of parts) {
        const b = body as { sandboxes?: unknown[]; host?: typeof host };
        sandboxes.push(...(b.sandboxes ?? []));
        for (const k of Object.keys(host) as Array<keyof typeof host>) host[k] += b.host?.[k] ?? 0;
      }
      return send(res, 200, { sandboxes, host });
    }
    throw new HttpError(
      "not_found",
      `no route ${method} ${p} on the cluster gateway`,
      "The gateway serves the lifecycle API under /v1/ and the runtime under /sandbox.v1.Sandbox/; per-host routes (limits, /metrics) are on each node's mitosd.",
    );
  }

  // --- create and fork through resources ---

  private async create(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const body = parseObject(await readBody(req));
    for (const k of Object.keys(body)) {
      if (!["template", "pool", "id", "timeout_seconds", "env", "checkpoint"].includes(k)) {
        throw new HttpError(
          "invalid_input",
          `unknown field ${k}`,
          "Send {template, id?, timeout_seconds?, env?} or {checkpoint}.",
          { field: k },
        );
      }
    }
    const template = (body.template ?? body.pool) as unknown;
    const checkpoint = body.checkpoint as unknown;
    if (
      (template === undefined) === (checkpoint === undefined) ||
      (template !== undefined && typeof template !== "string") ||
      (checkpoint !== undefined && typeof checkpoint !== "string")
    ) {
      throw new HttpError(
        "invalid_input",
        "pass exactly one of template (or pool) and checkpoint, as a string",
        'Send {"template": "python"}.',
      );
    }
    const name = this.nameFor(req, body.id);
    const pool = typeof template === "string" ? this.pools.get(template) : undefined;
    const spec: SandboxResource["spec"] =
      typeof checkpoint === "string" ? { checkpoint } : { pool: template as string };
    if (body.timeout_seconds !== undefined) spec.timeoutSeconds = intField(body, "timeout_seconds");
    if (body.env !== undefined) spec.env = envField(body.env);
    const sb = await this.ensureResource(req, name, spec, pool ? [ownerRef("SandboxPool", pool.metadata)] : []);
    const id = sb.status?.sandboxId ?? name;
    const node = await this.nodeFor(id);
    const got = await this.nodeCall(node, "GET", `/v1/sandboxes/${encodeURIComponent(id)}`);
    return send(res, got.status, this.rewrite(req, got.body));
  }

  private async fork(req: http.IncomingMessage, res: http.ServerResponse, parent: string): Promise<void> {
    const body = parseObject(await readBody(req));
    for (const k of Object.keys(body)) {
      if (!["count", "pause_source", "template"].includes(k)) {
        throw new HttpError(
          "invalid_input",
          `field ${k} is not accepted by the cluster gateway's fork`,
          k === "id" ? "Children get generated ids through the gateway; drop id." : "Send {count?, pause_source?}.",
          { field: k },
        );
      }
    }
    const count = body.count === undefined ? undefined : intField(body, "count");
    const node = await this.nodeFor(parent);
    const index = indexSandboxes(this.sandboxes.list(), this.nodes());
    const owner = index.resourceOf(parent);
    const name = this.nameFor(req, undefined, "fk");
    const sb = await this.ensureResource(
      req,
      name,
      { forkOf: { sandbox: parent, count: count ?? 1 } },
      owner ? [ownerRef("Sandbox", owner.metadata)] : [],
    );
    const ids = sb.status?.children ?? [];
    const all = await this.nodeCall(node, "GET", "/v1/sandboxes");
    const byId = new Map((Array.isArray(all.body) ? all.body : []).map((s) => [String((s as Json).id), s]));
    const children = ids.map((id) => this.rewrite(req, byId.get(id) ?? { id }));
    if (count === undefined) return send(res, 200, children[0]);
    return send(res, 200, { sandboxes: children, fork_time_ms: sb.status?.forkTimeMs ?? 0 });
  }

  /** Resource names: the caller's id, one derived from its Idempotency-Key (same key → same resource), or fresh. */
  private nameFor(req: http.IncomingMessage, id: unknown, prefix = "sb"): string {
    if (id !== undefined) {
      // It names a Kubernetes resource too: lowercase, no underscores.
      if (typeof id !== "string" || !ID_PATTERN.test(id) || !/^[a-z0-9]([a-z0-9-]{0,58}[a-z0-9])?$/.test(id)) {
        throw new HttpError(
          "invalid_input",
          "through the cluster gateway an id must be lowercase letters, digits and -, at most 60 (it names a Sandbox resource)",
          "Pick such an id, or omit id for a generated one.",
          { field: "id" },
        );
      }
      return id;
    }
    const key = header(req, "idempotency-key");
    if (key) return `${prefix}-${createHash("sha256").update(`${req.url} ${key}`).digest("hex").slice(0, 12)}`;
    return `${prefix}-${randomBytes(4).toString("hex")}`;
  }

  /** Creates the resource (or finds the one an earlier try with the same key made) and waits for Ready. */
  private async ensureResource(
    req: http.IncomingMessage,
    name: string,
    spec: SandboxResource["spec"],
    owners: SandboxResource["metadata"]["ownerReferences"],
  ): Promise<SandboxResource> {
    try {
      await this.o.kube.createSandbox({
        apiVersion: API_VERSION,
        kind: "Sandbox",
        metadata: {
          name,
          labels: { "mitos.run/created-by": "gateway" },
          ...(owners && owners.length > 0 ? { ownerReferences: owners } : {}),
        },
        spec,
      });
    } catch (e) {
      if (statusOf(e) !== 409 || !header(req, "idempotency-key")) {
        if (statusOf(e) === 409) {
          throw new HttpError(
            "conflict",
            `a sandbox named ${name} exists`,
            "Pick another id, or omit id for a generated one.",
            { id: name },
          );
        }
        if (statusOf(e) === 422)
          throw new HttpError(
            "invalid_input",
            `the Sandbox resource was refused: ${bodyMessage(e)}`,
            "Fix the named field.",
          );
        throw e;
      }
    }
    const sb = await this.waitReady(name);
    return sb;
  }

  private async waitReady(name: string): Promise<SandboxResource> {
    const started = Date.now();
    const deadline = started + (this.o.readyTimeoutMs ?? 300_000);
    for (;;) {
      const sb = this.sandboxes.get(name) ?? (await this.o.kube.getSandbox(name));
      const phase = sb?.status?.phase;
      if ((phase ?? "Pending") === "Pending" && Date.now() - started > (this.o.pendingTimeoutMs ?? 30_000)) {
        await this.o.kube.deleteSandbox(name).catch(() => {});
        throw new HttpError(
          "unavailable",
          `no node could take sandbox ${name}: ${sb?.status?.message ?? "the controller has not scheduled it"}`,
          "Free room (terminate sandboxes), add nodes, or check that mitos-controller runs; then retry.",
          { sandbox: name },
        );
      }
      if (sb && phase === "Ready") return sb;
      if (sb && (phase === "Failed" || phase === "Lost" || phase === "Terminated")) {
        await this.o.kube.deleteSandbox(name).catch(() => {});
        throw failure(sb);
      }
      if (Date.now() > deadline) {
        await this.o.kube.deleteSandbox(name).catch(() => {});
        throw new HttpError(
          "unavailable",
          `sandbox ${name} was not ready in time: ${sb?.status?.message ?? "not scheduled"}`,
          "Check that node agents are live (kubectl get leases -n <ns>) and have room; then retry.",
          { sandbox: name },
        );
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, 1000);
        function done() {
          clearTimeout(t);
          resolve();
        }
        const w = () => {
          this.waiters.delete(w);
          done();
        };
        this.waiters.add(w);
      });
    }
  }

  // --- proxying ---

  private authorized(h: string | undefined): boolean {
    if (!h?.startsWith("Bearer ")) return false;
    const a = createHash("sha256").update(h.slice(7).trim()).digest();
    return this.o.tokens.some((t) => timingSafeEqual(a, createHash("sha256").update(t).digest()));
  }

  private nodeHeaders(req: http.IncomingMessage, node: NodeView): http.OutgoingHttpHeaders {
    const out: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers))
      if (!HOP_BY_HOP.has(k) && k !== "host" && v !== undefined) out[k] = v;
    out.authorization = `Bearer ${this.o.nodeToken}`;
    out.host = new URL(node.capacity.endpoint).host;
    return out;
  }

  /** Streams a request to a node and its answer back, unbuffered (Connect streams, files). */
  private pipe(req: http.IncomingMessage, res: http.ServerResponse, node: NodeView, path: string): Promise<void> {
    return new Promise((resolve) => {
      const up = http.request(
        new URL(path, node.capacity.endpoint),
        { method: req.method, headers: this.nodeHeaders(req, node), agent: this.agent },
        (ur) => {
          const headers: http.OutgoingHttpHeaders = {};
          for (const [k, v] of Object.entries(ur.headers)) if (!HOP_BY_HOP.has(k) && v !== undefined) headers[k] = v;
          res.writeHead(ur.statusCode ?? 502, headers);
          res.flushHeaders();
          ur.pipe(res);
          ur.on("end", resolve);
          ur.on("error", () => {
            res.destroy();
            resolve();
          });
        },
      );
      up.setNoDelay(true);
      up.on("error", (err) => {
        if (!res.headersSent)
          send(res, 502, { code: "unavailable", message: `node ${node.name} did not answer: ${err.message}` });
        else res.destroy();
        resolve();
      });
      // The client went away: so does the call on the node (its stream ends, a guest process is killed).
      res.on("close", () => {
        if (!res.writableFinished) up.destroy();
      });
      req.pipe(up);
    });
  }

  /** A lifecycle call to a node, its JSON answer with endpoints pointing at the gateway. */
  private async relay(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    node: NodeView,
    path: string,
    body?: string,
  ): Promise<void> {
    const b = body ?? (req.method === "GET" || req.method === "DELETE" ? undefined : await readBody(req));
    const r = await this.nodeCall(node, req.method ?? "GET", path, b);
    send(res, r.status, this.rewrite(req, r.body));
  }

  private async nodeCall(
    node: NodeView,
    method: string,
    path: string,
    body?: string,
  ): Promise<{ status: number; body: unknown }> {
    let r: Response;
    try {
      r = await fetch(new URL(path, node.capacity.endpoint), {
        method,
        headers: {
          authorization: `Bearer ${this.o.nodeToken}`,
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
        },
        ...(body !== undefined ? { body } : {}),
      });
    } catch (err) {
      throw new HttpError(
        "unavailable",
        `node ${node.name} did not answer: ${(err as Error).message}`,
        "Retry; if it persists the node's mitosd is down.",
        {
          node: node.name,
        },
      );
    }
    const text = await r.text();
    return { status: r.status, body: safeJson(text) ?? { raw: text } };
  }

  private async fanOut(path: string): Promise<Array<{ node: NodeView; body: unknown }>> {
    const live = this.nodes().filter((n) => n.live);
    const out = await Promise.all(
      live.map(async (node) => {
        try {
          const r = await this.nodeCall(node, "GET", path);
          return r.status === 200 ? { node, body: r.body } : undefined;
        } catch (err) {
          this.log("node did not answer a fan-out", { node: node.name, path, error: String(err) });
          return undefined;
        }
      }),
    );
    return out.filter((x) => x !== undefined);
  }

  /** Sandbox objects name the gateway as their endpoint, so clients keep coming here. */
  private rewrite(req: http.IncomingMessage, body: unknown): unknown {
    const ep = `http://${req.headers.host ?? new URL(this.url).host}`;
    const fix = (o: unknown): unknown =>
      o && typeof o === "object" && !Array.isArray(o) && "endpoint" in (o as Json)
        ? { ...(o as Json), endpoint: ep }
        : o;
    if (Array.isArray(body)) return body.map(fix);
    const b = fix(body) as Json;
    if (b && Array.isArray(b.sandboxes)) return { ...b, sandboxes: b.sandboxes.map(fix) };
    return b;
  }

  private async upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
    if (!this.authorized(req.headers.authorization)) {
      throw new HttpError("unauthorized", "missing or wrong bearer token", "Send Authorization: Bearer <token>.");
    }
    const url = new URL(req.url ?? "/", "http://gateway");
    const id = url.searchParams.get("sandbox");
    if (!id)
      throw new HttpError(
        "invalid_input",
        "the sandbox query parameter is required",
        "Open /sandbox.v1.Sandbox/Exec?sandbox=<id>.",
      );
    const node = await this.nodeFor(id);
    const target = new URL(node.capacity.endpoint);
    const up = net.connect(Number(target.port || 80), target.hostname);
    const headers = {
      ...this.nodeHeaders(req, node),
      connection: "Upgrade",
      upgrade: req.headers.upgrade ?? "websocket",
    };
    up.once("connect", () => {
      up.setNoDelay(true);
      socket.setNoDelay(true);
      const lines = Object.entries(headers).flatMap(([k, v]) =>
        Array.isArray(v) ? v.map((x) => `${k}: ${x}`) : [`${k}: ${v}`],
      );
      up.write(`${req.method} ${req.url} HTTP/1.1\r\n${lines.join("\r\n")}\r\n\r\n`);
      if (head.length > 0) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const close = () => {
      up.destroy();
      socket.destroy();
    };
    up.on("error", close);
    socket.on("error", close);
    up.on("close", close);
    socket.on("close", close);
  }

  private fail(res: http.ServerResponse, err: unknown): void {
    const e = asHttpError(err);
    if (e.code === "internal") this.log("gateway error", { error: String(err) });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    send(res, e.status, envelope(e));
  }
}

function failure(sb: SandboxResource): HttpError {
  const msg = sb.status?.message ?? "";
  // Node agents write "<code>: <message> (<remediation>)" from mitosd's error.
  const m = /^([a-z_]+): (.*?)(?: \((.*)\))?$/s.exec(msg);
  const code =
    m && (HTTP_STATUS_BY_CODE as Record<string, number>)[m[1] as string]
      ? (m[1] as string)
      : sb.status?.phase === "Lost"
        ? "unavailable"
        : "fork_failed";
  return new HttpError(
    code,
    m ? (m[2] as string) : msg || `sandbox ${sb.metadata.name} is ${sb.status?.phase}`,
    m?.[3] ?? "See the Sandbox resource's status message.",
    {
      sandbox: sb.metadata.name,
      phase: sb.status?.phase,
    },
  );
}

function noNodes(): HttpError {
  return new HttpError(
    "unavailable",
    "no node agent is live",
    "Start mitosd with --node on at least one node (the DaemonSet).",
  );
}

function asHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  return new HttpError("internal", "internal error in the gateway", "Retry; the gateway log has the details.");
}

function envelope(e: HttpError): Json {
  return { error: { code: e.code, message: e.message, remediation: e.remediation, context: e.context } };
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_BODY)
      throw new HttpError(
        "body_too_large",
        "the request body is too large",
        `Keep JSON bodies under ${MAX_BODY} bytes.`,
      );
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function parseObject(text: string): Json {
  if (text.trim() === "") return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new HttpError(
      "invalid_json",
      `the request body is not valid JSON: ${(e as Error).message}`,
      "Send a JSON object with Content-Type: application/json.",
    );
  }
  if (!v || typeof v !== "object" || Array.isArray(v))
    throw new HttpError("invalid_input", "the body must be a JSON object", "Send a JSON object.");
  return v as Json;
}

function intField(b: Json, k: string): number {
  const v = b[k];
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
    throw new HttpError("invalid_input", `${k} must be a positive whole number`, `Send "${k}": n with n >= 1.`, {
      field: k,
    });
  }
  return v;
}

function envField(v: unknown): Record<string, string> {
  if (!v || typeof v !== "object" || Array.isArray(v) || Object.values(v).some((x) => typeof x !== "string")) {
    throw new HttpError("invalid_input", "env must be an object of strings", 'Send "env": {"KEY": "value"}.', {
      field: "env",
    });
  }
  return v as Record<string, string>;
}

function bodyMessage(e: unknown): string {
  const b = (e as { body?: unknown }).body;
  const parsed = typeof b === "string" ? safeJson(b) : b;
  return String((parsed as { message?: string } | undefined)?.message ?? e).slice(0, 300);
}
