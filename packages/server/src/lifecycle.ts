// Lifecycle routes (API.md "Lifecycle"): JSON in and out, snake_case.

import type { CheckpointManifest, Engine, GuestLimits, SandboxInfo, TemplateInfo, TemplateSpec } from "@mitos/engine";
import { checkPolicy, LIMIT_NAMES, type Limits, MitosError, type OwnerLimits } from "@mitos/engine";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Access, Principal } from "./access.js";
import { ownerLimitsJson } from "./api-keys.js";
import { auditNote } from "./audit.js";
import { type Body, bool, int, obj, optional, readBody, refuseUnknown, str, strList, strMap } from "./body.js";
import { envelope, invalid, toMitosError } from "./errors.js";
import type { IdempotencyCache } from "./idempotency.js";
import type { Metrics } from "./metrics.js";
import { routeSchemas } from "./openapi.js";
import type { SandboxTokens } from "./sandbox-tokens.js";

export interface LifecycleOptions {
  engine: Engine;
  /** Who may see and touch what (access.ts). */
  access: Access;
  sandboxTokens: SandboxTokens;
  /** A tenant's own caps (api-keys.ts). */
  tenantLimits: (tenant: string) => OwnerLimits | undefined;
  version: string;
  metrics: Metrics;
  idempotency: IdempotencyCache;
  /** Runtime endpoint advertised in sandbox objects. */
  endpoint: () => string;
  /** `<domain>:<port>` of Host-routed port URLs (`<port>-<id>.<domain>:<port>`). */
  domain: () => string;
  /** "token" (bearer token required) or "none" (the loopback-only no-auth mode). */
  auth: "token" | "none";
}

export function registerLifecycle(
  app: FastifyInstance,
  o: LifecycleOptions,
): { sandboxJson: (p: Principal, s: SandboxInfo) => unknown } {
  const { engine, access } = o;
  /** A sandbox as `p` sees it: with its tokens, unless `p` is that sandbox's own token. */
  const sandboxJson = (p: Principal, s: SandboxInfo) => {
    let memory = { private_bytes: 0, shared_bytes: 0 };
    if (s.state === "ready" || s.state === "paused") {
      try {
        const m = engine.memory(s.id);
        memory = { private_bytes: m.privateBytes, shared_bytes: m.sharedBytes };
      } catch {
        // The VM went away between listing and reading its memory.
      }
    }
    return {
      id: s.id,
      template_id: s.templateId,
      parent_id: s.parentId,
      state: s.state,
      endpoint: o.endpoint(),
      created_at: s.createdAt,
      deadline_unix: s.deadlineUnix,
      fork_time_ms: s.forkTimeMs,
      accel: s.accel,
      memory,
      hibernated: s.hibernated,
      network: s.network ?? null,
      domain: o.domain(),
      tenant: s.owner ?? null,
      ...(p.kind === "sandbox" && p.sandbox === s.id
        ? {}
        : {
            token: o.sandboxTokens.issue(s.id, s.createdAt, "runtime"),
            fork_token: o.sandboxTokens.issue(s.id, s.createdAt, "fork"),
          }),
    };
  };
  /** A tenant's caps and what it holds (GET /v1/limits with a tenant key). */
  const tenantJson = (name: string) => {
    const u = engine.ownerUsage(name);
    return {
      name,
      limits: ownerLimitsJson(o.tenantLimits(name) ?? {}),
      usage: { sandboxes: u.sandboxes, guest_memory_mib: u.guestMemoryMib },
    };
  };
  /** What a call made: its sandboxes, noted for the audit log. */
  const made = (req: FastifyRequest, list: SandboxInfo[]) => {
    auditNote(req, { created: list.map((s) => s.id) });
    return list.map((s) => sandboxJson(who(req), s));
  };
  const templateJson = (t: TemplateInfo) => ({
    id: t.id,
    ready: t.ready,
    created_at: t.createdAt,
    creation_time_ms: t.creationTimeMs,
    resources: { vcpu_count: t.vcpuCount, mem_size_mib: t.memSizeMib },
    network: t.network ?? null,
    image: t.image ?? null,
    version: t.version ?? null,
    steps: t.steps,
    tenant: t.owner ?? null,
    guest: t.guest
      ? Object.fromEntries(
          Object.entries(GUEST_KEYS).flatMap(([wire, key]) =>
            t.guest?.[key] === undefined ? [] : [[wire, t.guest[key]]],
          ),
        )
      : null,
  });
  const checkpointJson = (c: CheckpointManifest) => ({
    id: c.id,
    name: c.name,
    sandbox_id: c.sandboxId,
    template_id: c.templateId,
    created_at: c.createdAt,
    bytes: c.bytes,
    added_bytes: c.addedBytes,
    tenant: c.owner ?? null,
  });
  const idempotent =
    (handler: (req: FastifyRequest) => Promise<unknown>) => (req: FastifyRequest, reply: FastifyReply) =>
      o.idempotency.run(req, reply, () => handler(req));

  app.get("/v1/health", { schema: routeSchemas.health }, async () => ({
    status: "ok",
    version: o.version,
    auth: o.auth,
    accel: engine.accel,
    templates: engine.listTemplates().length,
    sandboxes: engine.list().length,
  }));

  const templateRequest = (req: FastifyRequest): { id: string; spec: TemplateSpec; owner: string | undefined } => {
    const b = body(req, TEMPLATE_KEYS);
    const id = str(b, "id", true);
    const owner = access.templateBuild(
      who(req),
      id,
      Object.keys(b).some((k) => k !== "id" && b[k] !== null),
      str(b, "image"),
    );
    const resources = obj(b, "resources");
    if (resources) refuseUnknown(resources, ["vcpu_count", "mem_size_mib"], "resources.");
    const g = obj(b, "guest");
    if (g) refuseUnknown(g, Object.keys(GUEST_KEYS), "guest.");
    // The engine checks the values (guest-limits.ts) against the template's RAM.
    const guest = g
      ? Object.fromEntries(
          Object.entries(GUEST_KEYS)
            .filter(([wire]) => g[wire] !== undefined && g[wire] !== null)
            .map(([wire, key]) => [key, g[wire]]),
        )
      : undefined;
    return {
      id,
      owner,
      spec: {
        ...optional("image", str(b, "image")),
        ...optional("packages", strList(b, "packages")),
        ...optional("init", strList(b, "init")),
        ...optional("env", strMap(b, "env")),
        ...optional("initWaitSeconds", int(b, "init_wait_seconds")),
        ...optional("initTimeoutSeconds", int(b, "init_timeout_seconds")),
        ...optional("diskSizeMib", int(b, "disk_size_mib")),
        ...optional("network", b.network === undefined || b.network === null ? undefined : checkPolicy(b.network)),
        ...optional("guest", guest as GuestLimits | undefined),
        resources: {
          ...optional("vcpuCount", resources ? int(resources, "vcpu_count") : undefined),
          ...optional("memSizeMib", resources ? int(resources, "mem_size_mib") : undefined),
        },
      },
    };
  };
  const buildTemplate = idempotent(async (req) => {
    const { id, spec, owner } = templateRequest(req);
    return templateJson(await engine.createTemplate(id, spec, { ...optional("owner", owner) }));
  });
  app.post("/v1/templates", { schema: routeSchemas.createTemplate }, async (req, reply) => {
    if (!wantsNdjson(req)) return buildTemplate(req, reply);
    // The build log as it happens (docs/templates.md "Build log"): one JSON
    // event per line, then the template, or the error envelope, as the last line.
    const { id, spec, owner } = templateRequest(req);
    reply.hijack();
    const out = reply.raw;
    out.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
    const line = (v: unknown) => {
      if (!out.destroyed) out.write(`${JSON.stringify(v)}\n`);
    };
    try {
      const t = await engine.createTemplate(id, spec, { onEvent: line, ...optional("owner", owner) });
      line({ type: "template", template: templateJson(t) });
    } catch (err) {
      line({ type: "error", ...envelope(toMitosError(err)) });
    }
    out.end();
  });

  app.get("/v1/templates", { schema: routeSchemas.listTemplates }, async (req) =>
    engine
      .listTemplates()
      .filter((t) => access.seesTemplate(who(req), t))
      .map(templateJson),
  );

  const createSandbox = idempotent(async (req) => {
    const b = body(req, ["template", "pool", "id", "timeout_seconds", "env", "checkpoint", "network"]);
    const network = b.network === undefined || b.network === null ? undefined : checkPolicy(b.network);
    const given = [str(b, "template"), str(b, "pool")].filter((x) => x !== undefined);
    if (given.length === 2 && given[0] !== given[1]) {
      throw invalid("template and pool name different templates", 'Pass one of "template" or "pool" (synonyms).');
    }
    const checkpoint = str(b, "checkpoint");
    if (checkpoint !== undefined) {
      if (network) {
        throw invalid(
          "network cannot be given with checkpoint",
          "A checkpoint's sandboxes start with its template's policy: create from the checkpoint, then PUT /v1/sandboxes/{id}/network.",
          { field: "network" },
        );
      }
      if (given.length > 0) {
        throw invalid(
          "checkpoint and template both given",
          "A sandbox starts from a checkpoint or a template: pass one.",
          {
            field: "checkpoint",
          },
        );
      }
      access.checkpoint(who(req), checkpoint);
      const r = await engine.fromCheckpoint(checkpoint, {
        ...(str(b, "id") ? { ids: [str(b, "id") as string] } : {}),
        ...optional("timeoutSeconds", int(b, "timeout_seconds")),
        ...optional("env", strMap(b, "env")),
        ...optional("owner", access.owner(who(req))),
      });
      return made(req, r.children)[0];
    }
    const template = str(b, "template") ?? str(b, "pool");
    if (!template) throw invalid("template is required", 'Pass {"template": "python"} (or "pool").');
    access.template(who(req), template);
    const started = Date.now();
    const s = await engine.create(template, {
      ...optional("id", str(b, "id")),
      ...optional("timeoutSeconds", int(b, "timeout_seconds")),
      ...optional("env", strMap(b, "env")),
      ...optional("network", network),
      ...optional("owner", access.owner(who(req))),
    });
    o.metrics.claimSeconds.observe((Date.now() - started) / 1000);
    return made(req, [s])[0];
  });
  app.post("/v1/fork", { schema: routeSchemas.createSandbox }, createSandbox);
  app.post("/v1/sandboxes", { schema: routeSchemas.createSandbox }, createSandbox);

  app.get("/v1/sandboxes", { schema: routeSchemas.listSandboxes }, async (req) => {
    const p = who(req);
    return engine
      .list()
      .filter((s) => access.seesSandbox(p, s))
      .map((s) => sandboxJson(p, s));
  });
  app.get<{ Params: { id: string } }>("/v1/sandboxes/:id", { schema: routeSchemas.getSandbox }, async (req) =>
    sandboxJson(who(req), access.sandbox(who(req), req.params.id)),
  );
  app.put<{ Params: { id: string } }>("/v1/sandboxes/:id/network", { schema: routeSchemas.setNetwork }, async (req) =>
    sandboxJson(who(req), await engine.setNetwork(req.params.id, req.body ?? {})),
  );

  app.post<{ Params: { id: string } }>(
    "/v1/sandboxes/:id/fork",
    { schema: routeSchemas.fork },
    idempotent(async (req) => {
      const b = body(req, ["id", "count", "pause_source", "template"]);
      const id = (req.params as { id: string }).id;
      // Upstream clients name the source's template; a different one cannot be honoured.
      const template = str(b, "template");
      if (template !== undefined && template !== engine.get(id).templateId) {
        throw invalid(
          `template ${JSON.stringify(template)} is not the template of sandbox ${id}`,
          "A fork always has its source's template: omit template, or pass the source's.",
          { field: "template" },
        );
      }
      // 1 ≤ count ≤ max_fork_count is the engine's check (limits.ts).
      const count = int(b, "count");
      const childId = str(b, "id");
      const r = await engine.fork(id, {
        count: count ?? 1,
        ...(childId && count === undefined ? { ids: [childId] } : {}),
      });
      // pause_source is accepted, and means what it always does here: paused for the capture, then resumed.
      bool(b, "pause_source");
      o.metrics.forkSeconds.observe(r.forkTimeMs / 1000);
      const children = made(req, r.children);
      if (count === undefined) return children[0];
      return { sandboxes: children, fork_time_ms: r.forkTimeMs };
    }),
  );

  app.delete<{ Params: { id: string } }>("/v1/sandboxes/:id", { schema: routeSchemas.terminate }, async (req) => {
    await engine.terminate(req.params.id);
    return { status: "terminated", id: req.params.id };
  });

  app.post<{ Params: { id: string } }>(
    "/v1/sandboxes/:id/checkpoints",
    { schema: routeSchemas.createCheckpoint },
    idempotent(async (req) => {
      const b = body(req, ["name"]);
      return checkpointJson(
        await engine.checkpoint((req.params as { id: string }).id, { ...optional("name", str(b, "name")) }),
      );
    }),
  );
  app.get("/v1/checkpoints", { schema: routeSchemas.listCheckpoints }, async (req) =>
    engine
      .listCheckpoints()
      .filter((c) => access.seesCheckpoint(who(req), c))
      .map(checkpointJson),
  );
  app.get<{ Params: { id: string } }>("/v1/checkpoints/:id", { schema: routeSchemas.getCheckpoint }, async (req) =>
    checkpointJson(engine.visibleCheckpoint(req.params.id)),
  );
  app.delete<{ Params: { id: string } }>(
    "/v1/checkpoints/:id",
    { schema: routeSchemas.deleteCheckpoint },
    async (req) => {
      engine.deleteCheckpoint(engine.visibleCheckpoint(req.params.id).id);
      return { status: "deleted", id: req.params.id };
    },
  );
  app.post<{ Params: { id: string } }>(
    "/v1/checkpoints/:id/fork",
    { schema: routeSchemas.forkCheckpoint },
    idempotent(async (req) => {
      const b = body(req, ["count", "timeout_seconds", "env"]);
      const r = await engine.fromCheckpoint((req.params as { id: string }).id, {
        count: int(b, "count") ?? 1,
        ...optional("timeoutSeconds", int(b, "timeout_seconds")),
        ...optional("env", strMap(b, "env")),
        ...optional("owner", access.owner(who(req))),
      });
      return { sandboxes: made(req, r.children), fork_time_ms: r.forkTimeMs };
    }),
  );

  app.delete<{ Params: { id: string }; Querystring: { force?: string } }>(
    "/v1/templates/:id",
    { schema: routeSchemas.deleteTemplate },
    async (req) => {
      const force = req.query.force;
      if (force !== undefined && force !== "true" && force !== "false" && force !== "1" && force !== "0") {
        throw invalid(`force must be true or false, got ${JSON.stringify(force)}`, "Pass ?force=true or leave it out.");
      }
      await engine.deleteTemplate(req.params.id, { force: force === "true" || force === "1" });
      return { status: "deleted", id: req.params.id };
    },
  );

  app.post("/v1/set_timeout", { schema: routeSchemas.setTimeout }, async (req) => {
    const b = body(req, ["sandbox", "timeout_seconds"]);
    const id = access.sandbox(who(req), str(b, "sandbox", true)).id;
    const r = engine.setTimeout(id, int(b, "timeout_seconds", true));
    return { status: "ok", deadline_unix: r.deadlineUnix, timeout_seconds: r.timeoutSeconds };
  });

  app.post("/v1/pause", { schema: routeSchemas.pause }, async (req) => {
    const b = body(req, ["sandbox", "hibernate"]);
    const hibernate = bool(b, "hibernate") === true;
    await engine.pause(access.sandbox(who(req), str(b, "sandbox", true)).id, { hibernate });
    // The public API's answer, unchanged unless hibernation was asked for.
    return hibernate ? { status: "paused", hibernated: true } : { status: "paused" };
  });

  app.post("/v1/resume", { schema: routeSchemas.resume }, async (req) => {
    await engine.resume(access.sandbox(who(req), str(body(req, ["sandbox"]), "sandbox", true)).id);
    return { status: "running" };
  });

  app.get("/v1/limits", { schema: routeSchemas.limits }, async (req) => {
    const l = engine.caps.limits;
    const p = who(req);
    // A tenant's usage is its own: host-wide figures would tell it what other tenants hold.
    const u = p.kind === "tenant" ? engine.ownerUsage(p.tenant) : engine.usage();
    return {
      ...(p.kind === "tenant" ? { tenant: tenantJson(p.tenant) } : {}),
      ...Object.fromEntries(Object.entries(LIMIT_NAMES).map(([k, name]) => [name, l[k as keyof Limits]])),
      usage: {
        sandboxes: u.sandboxes,
        guest_memory_mib: u.guestMemoryMib,
        ...(u.memory
          ? {
              memory: {
                total_mib: Math.round(u.memory.totalMib),
                available_mib: Math.round(u.memory.availableMib),
                committed_mib: Math.round(u.memory.committedMib),
                pending_mib: Math.round(u.memory.pendingMib),
              },
            }
          : {}),
      },
    };
  });

  app.get("/v1/pools", { schema: routeSchemas.pools }, async () => engine.poolStatus());
  app.put<{ Params: { template: string } }>("/v1/pools/:template", { schema: routeSchemas.setPool }, async (req) =>
    engine.setPoolTarget(req.params.template, int(body(req, ["target"]), "target", true)),
  );

  app.get("/v1/metering", { schema: routeSchemas.metering }, async () => {
    const m = engine.metering();
    return {
      sandboxes: m.sandboxes.map((s) => ({
        id: s.id,
        private_bytes: s.privateBytes,
        shared_bytes: s.sharedBytes,
        guest_private_bytes: s.guestPrivateBytes,
      })),
      host: { private_bytes: m.host.privateBytes, shared_bytes: m.host.sharedBytes, total_bytes: m.host.totalBytes },
    };
  });

  app.get("/metrics", { schema: routeSchemas.metrics }, async (_req, reply) => {
    reply.header("content-type", o.metrics.registry.contentType);
    return o.metrics.registry.metrics();
  });
  return { sandboxJson };
}

/** The caller (the auth hook sets it on every route here but /v1/health). */
function who(req: FastifyRequest): Principal {
  if (!req.principal) throw new MitosError("unauthorized", "no credential", { remediation: "Send a bearer token." });
  return req.principal;
}

// --- body field readers: each names the field it rejects ---

const TEMPLATE_KEYS = [
  "id",
  "image",
  "packages",
  "init",
  "env",
  "resources",
  "init_wait_seconds",
  "init_timeout_seconds",
  "disk_size_mib",
  "network",
  "guest",
];

/** Wire names of a template's guest limits (engine GuestLimits). */
const GUEST_KEYS = {
  command_memory_mib: "commandMemoryMib",
  command_pids: "commandPids",
  writable_mib: "writableMib",
  output_bytes_per_second: "outputBytesPerSecond",
} as const satisfies Record<string, keyof GuestLimits>;

/** Keys other servers accept that mitosd cannot honour yet: refused with the reason, never dropped. */
const NOT_YET: Record<string, string> = {
  workload: "mitosd has no workload classes; size a template with resources.{vcpu_count, mem_size_mib}",
};

function body(req: FastifyRequest, known: string[]): Body {
  return readBody(req, known, NOT_YET);
}

/** Whether the caller asked for a streamed answer (`Accept: application/x-ndjson`). */
function wantsNdjson(req: FastifyRequest): boolean {
  return (req.headers.accept ?? "").includes("application/x-ndjson");
}
