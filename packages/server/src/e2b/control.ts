// E2B's control plane (E2B-COMPAT.md §3, §8) on the engine: create, connect,
// kill, timeout, info, list, pause, fork, snapshots, metrics and network, in
// E2B's shapes and status codes. Keys are E2B API keys (X-API-KEY), never the
// admin token; errors are `{code: <HTTP status>, message}` as the SDKs parse.

import type { CheckpointManifest, Engine, NetworkPolicy, SandboxInfo } from "@mitos/engine";
import { MitosError } from "@mitos/engine";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { type Body, int, obj, str, strList, strMap } from "../body.js";
import { HTTP_STATUS, toMitosError } from "../errors.js";
import { guestMetrics } from "./guest-metrics.js";
import { fromE2bId, toE2bId } from "./ids.js";
import type { E2bKeys } from "./keys.js";
import type { E2bRegistry } from "./registry.js";

/** The envd version reported: the lowest whose SDK gates cover what the front door serves (E2B-COMPAT.md §9). */
export const ENVD_VERSION = "0.5.7";
const CLIENT_ID = "mitos";
/** E2B's default TTL when a create names none. */
const DEFAULT_TIMEOUT_SECONDS = 300;
/** E2B template names and the Mitos templates they mean. */
const TEMPLATE_ALIASES: Record<string, string> = { "code-interpreter-v1": "python", "code-interpreter": "python" };

const CONTROL_RE = /^\/(v2\/)?(sandboxes|snapshots|templates)(\/|\?|$)/;

/** Whether a URL is an E2B control-plane route (authenticated with X-API-KEY, not the bearer token). */
export function isE2bControlPath(url: string): boolean {
  return CONTROL_RE.test(url);
}

/** E2B's 404 for a path under its prefixes that no route serves (the root not-found handler calls it). */
export function e2bNotFound(req: FastifyRequest, reply: FastifyReply): void {
  reply.code(404).send({ code: 404, message: `no E2B route ${req.method} ${req.url.split("?")[0]}` });
}

export interface ControlOptions {
  engine: Engine;
  keys: E2bKeys;
  registry: E2bRegistry;
  /** `host:port` the SDK builds `<port>-<id>.<domain>` hosts from. */
  domain: () => string;
}

export async function registerE2bControl(app: FastifyInstance, o: ControlOptions): Promise<void> {
  await app.register(async (e2b) => {
    e2b.addHook("onRequest", async (req, reply) => {
      if (!o.keys.check(req.headers["x-api-key"] as string | undefined)) {
        return reply.code(401).send({ code: 401, message: "missing or unknown API key (X-API-KEY)" });
      }
    });
    e2b.setErrorHandler((err: Error, _req, reply) => {
      const m = err instanceof MitosError ? err : toMitosError(err);
      const status = (err as { statusCode?: number }).statusCode ?? HTTP_STATUS[m.code] ?? 500;
      reply.code(status).send({ code: status, message: m.remediation ? `${m.message}. ${m.remediation}` : m.message });
    });
    registerRoutes(e2b, o);
  });
}

function registerRoutes(app: FastifyInstance, o: ControlOptions): void {
  const { engine, registry } = o;

  /** The sandbox an E2B id names; E2B's 404 otherwise. */
  const lookup = (e2bId: string): SandboxInfo => {
    const s = fromE2bId(engine, e2bId);
    if (!s || s.state === "terminated" || s.state === "failed") throw notFound(`sandbox ${e2bId} not found`);
    return s;
  };

  /** The create/connect/fork answer: what the SDK builds its envd client from. */
  const created = (s: SandboxInfo) => {
    const r = registry.record(s);
    return {
      sandboxID: toE2bId(s.id) as string,
      templateID: r.templateId,
      clientID: CLIENT_ID,
      envdVersion: ENVD_VERSION,
      envdAccessToken: r.envdAccessToken,
      trafficAccessToken: r.trafficAccessToken,
      domain: o.domain(),
      alias: r.templateId,
    };
  };

  /** getInfo and list items. */
  const detail = (s: SandboxInfo) => {
    const r = registry.record(s);
    const machine = engine.templateRecord(s.templateId)?.machine;
    return {
      ...created(s),
      startedAt: s.createdAt,
      endAt: new Date(s.deadlineUnix * 1000).toISOString(),
      state: s.state === "paused" ? "paused" : "running",
      cpuCount: machine?.vcpus ?? 1,
      memoryMB: machine?.memMiB ?? 0,
      diskSizeMB: machine?.diskMib ?? 0,
      metadata: r.metadata,
    };
  };

  const create = async (req: FastifyRequest, reply: FastifyReply) => {
    const b = bodyOf(req);
    const asked = str(b, "templateID", true);
    const timeoutSeconds = int(b, "timeout") ?? DEFAULT_TIMEOUT_SECONDS;
    const env = strMap(b, "envVars") ?? {};
    const metadata = strMap(b, "metadata") ?? {};
    const cp = findCheckpoint(engine, asked);
    const s = cp
      ? ((await engine.fromCheckpoint(cp.id, { timeoutSeconds, env })).children[0] as SandboxInfo)
      : await engine.create(TEMPLATE_ALIASES[asked] ?? asked, { timeoutSeconds, env, ...networkOf(b) });
    registry.record(s, { metadata, templateId: asked });
    return reply.code(201).send(created(s));
  };
  app.post("/sandboxes", create);
  app.post("/v2/sandboxes", create);

  const connect = async (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
    const b = bodyOf(req);
    let s = lookup(req.params.id);
    await engine.awake(s.id);
    s = engine.get(s.id);
    let resumed = false;
    if (s.state === "paused") {
      await engine.resume(s.id);
      resumed = true;
    }
    // The TTL may only grow on connect.
    const t = int(b, "timeout");
    if (t !== undefined && Date.now() / 1000 + t > s.deadlineUnix) engine.setTimeout(s.id, t);
    return reply.code(resumed ? 201 : 200).send(created(engine.get(s.id)));
  };
  app.post("/sandboxes/:id/connect", connect);
  app.post("/v2/sandboxes/:id/connect", connect);
  app.post("/sandboxes/:id/resume", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const s = lookup(req.params.id);
    if (s.state !== "paused") throw conflict(`sandbox ${req.params.id} is not paused`);
    await engine.resume(s.id);
    const t = int(bodyOf(req), "timeout");
    if (t !== undefined) engine.setTimeout(s.id, t);
    return reply.code(201).send(created(engine.get(s.id)));
  });

  app.delete("/sandboxes/:id", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    await engine.terminate(lookup(req.params.id).id);
    return reply.code(204).send();
  });

  app.post("/sandboxes/:id/timeout", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    engine.setTimeout(lookup(req.params.id).id, int(bodyOf(req), "timeout", true));
    return reply.code(204).send();
  });

  app.get("/sandboxes/:id", async (req: FastifyRequest<{ Params: { id: string } }>) => detail(lookup(req.params.id)));

  const list = async (req: FastifyRequest, reply: FastifyReply) => {
    const q = req.query as Record<string, string | undefined>;
    const states = (q.state ?? "running,paused").split(",").filter(Boolean);
    const wanted = metadataFilter(q.metadata);
    const limit = q.limit === undefined ? 100 : Number(q.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
      throw new MitosError("invalid_input", "limit must be a whole number from 1 to 1000", { remediation: "" });
    }
    let items = engine
      .list()
      .filter((s) => toE2bId(s.id) !== undefined && (s.state === "ready" || s.state === "paused"))
      .map(detail)
      .filter((d) => states.includes(d.state))
      .filter((d) => Object.entries(wanted).every(([k, v]) => d.metadata[k] === v))
      .filter((d) => !q.template || d.templateID === q.template);
    const desc = q.order === "desc";
    items.sort((a, b) => (a.startedAt === b.startedAt ? cmp(a.sandboxID, b.sandboxID) : cmp(a.startedAt, b.startedAt)));
    if (desc) items.reverse();
    if (q.startedAfter) items = items.filter((d) => d.startedAt > (q.startedAfter as string));
    if (q.nextToken) {
      const at = items.findIndex((d) => d.sandboxID === q.nextToken);
      items = at < 0 ? [] : items.slice(at + 1);
    }
    const page = items.slice(0, limit);
    if (items.length > limit) reply.header("x-next-token", page[page.length - 1]?.sandboxID ?? "");
    return page;
  };
  app.get("/v2/sandboxes", list);
  app.get("/sandboxes", list);

  app.post("/sandboxes/:id/pause", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const s = lookup(req.params.id);
    if (s.state === "paused") throw conflict(`sandbox ${req.params.id} is already paused`);
    // E2B's pause frees the sandbox's resources until connect: hibernate (RAM to a checkpoint).
    await engine.pause(s.id, { hibernate: true });
    return reply.code(204).send();
  });

  app.post("/sandboxes/:id/fork", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const b = bodyOf(req);
    const s = lookup(req.params.id);
    const count = int(b, "count") ?? 1;
    const timeoutSeconds = int(b, "timeout") ?? DEFAULT_TIMEOUT_SECONDS;
    const parent = registry.record(s);
    try {
      const r = await engine.fork(s.id, { count, timeoutSeconds });
      const items = r.children.map((c) => {
        registry.record(c, { metadata: { ...parent.metadata }, templateId: parent.templateId });
        return { sandbox: created(c) };
      });
      return reply.code(201).send(items);
    } catch (err) {
      // The request as a whole was fine; each requested child reports the failure (E2B's per-item errors).
      const m = toMitosError(err);
      if (m.code === "not_found") throw err;
      const code = HTTP_STATUS[m.code] ?? 500;
      return reply.code(201).send(Array.from({ length: count }, () => ({ error: { code, message: m.message } })));
    }
  });

  app.post("/sandboxes/:id/snapshots", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const name = str(bodyOf(req), "name");
    const cp = await engine.checkpoint(lookup(req.params.id).id, name ? { name } : {});
    return reply.code(201).send(snapshotJson(cp));
  });

  app.get("/snapshots", async (req: FastifyRequest, reply) => {
    const q = req.query as Record<string, string | undefined>;
    const bySandbox = q.sandboxID ? fromE2bId(engine, q.sandboxID)?.id : undefined;
    let cps = engine
      .listCheckpoints()
      .filter((c) => !q.sandboxID || c.sandboxId === bySandbox || c.sandboxId === q.sandboxID)
      .filter((c) => !q.name || c.name === q.name || c.id === q.name)
      .sort((a, b) => cmp(a.createdAt, b.createdAt) || cmp(a.id, b.id));
    if (q.nextToken) {
      const at = cps.findIndex((c) => c.id === q.nextToken);
      cps = at < 0 ? [] : cps.slice(at + 1);
    }
    const limit = q.limit ? Math.max(1, Math.min(1000, Number(q.limit) || 100)) : 100;
    const page = cps.slice(0, limit);
    if (cps.length > limit) reply.header("x-next-token", page[page.length - 1]?.id ?? "");
    return page.map(snapshotJson);
  });

  // Snapshot ids may hold `/` and `:` (URL-encoded); the wildcard takes them whole.
  app.delete("/templates/*", async (req: FastifyRequest, reply) => {
    const id = decodeURIComponent((req.params as { "*": string })["*"]);
    const cp = findCheckpoint(engine, id);
    if (!cp) throw notFound(`snapshot ${id} not found`);
    engine.deleteCheckpoint(cp.id);
    return reply.code(204).send();
  });

  app.get("/sandboxes/:id/metrics", async (req: FastifyRequest<{ Params: { id: string } }>) => {
    const s = lookup(req.params.id);
    if (s.state !== "ready") return [];
    return [await guestMetrics(engine, s.id, engine.templateRecord(s.templateId)?.machine.vcpus ?? 1)];
  });

  app.put("/sandboxes/:id/network", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const s = lookup(req.params.id);
    const policy = networkOf(bodyOf(req)).network;
    if (policy) await engine.setNetwork(s.id, policy);
    return reply.code(204).send();
  });
}

/** E2B bodies carry keys mitosd does not use (secure, autoPause, mcp…): read what is used, ignore the rest. */
function bodyOf(req: FastifyRequest): Body {
  const b = req.body ?? {};
  if (typeof b !== "object" || Array.isArray(b)) {
    throw new MitosError("invalid_input", "the body must be a JSON object", { remediation: "Send a JSON object." });
  }
  return b as Body;
}

/**
 * E2B's egress keys as a Mitos policy: `allow_internet_access: false` denies
 * all egress, `network.allowOut`/`denyOut` list what is allowed or denied.
 * Without them the template's own policy applies (none for the built-in
 * templates: no network device).
 */
function networkOf(b: Body): { network?: NetworkPolicy } {
  const n = obj(b, "network");
  const allowOut = n ? strList(n, "allowOut") : undefined;
  const denyOut = n ? strList(n, "denyOut") : undefined;
  const internet = b.allow_internet_access;
  if (internet !== false && !allowOut && !denyOut) return {};
  return {
    network: {
      egress: internet === false || allowOut ? "deny" : "allow",
      allow_out: allowOut ?? [],
      deny_out: denyOut ?? [],
    },
  };
}

function findCheckpoint(engine: Engine, idOrName: string): CheckpointManifest | undefined {
  return engine.listCheckpoints().find((c) => c.id === idOrName || c.name === idOrName);
}

function snapshotJson(c: CheckpointManifest) {
  return { snapshotID: c.id, names: [c.name ?? c.id] };
}

/** `metadata=k%3Dv%26k2%3Dv2`: form-encoded pairs of URI-encoded keys and values. */
function metadataFilter(raw: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const [k, v] of new URLSearchParams(raw)) out[decodeURIComponent(k)] = decodeURIComponent(v);
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function notFound(message: string): MitosError {
  return new MitosError("not_found", message, { remediation: "List sandboxes with Sandbox.list()." });
}

function conflict(message: string): MitosError {
  return new MitosError("conflict", message, { remediation: "Connect to resume it first." });
}
