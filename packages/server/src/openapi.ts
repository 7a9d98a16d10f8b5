// OpenAPI description of the lifecycle routes (served at /openapi.json).
// The schemas document the wire format and validate request bodies; the
// handlers' own checks give the field-level error messages.

import swagger from "@fastify/swagger";
import type { FastifyInstance, FastifySchema } from "fastify";

const str = { type: "string" } as const;
const int = { type: "integer" } as const;
const id = { type: "string", pattern: "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$" } as const;
const env = { type: "object", additionalProperties: str } as const;

const errorEnvelope = {
  type: "object",
  properties: {
    error: {
      type: "object",
      required: ["code", "message", "remediation"],
      properties: {
        code: str,
        message: str,
        cause: { type: "string", description: "absent when there is none; never null" },
        remediation: str,
        context: { type: "object", additionalProperties: true },
      },
    },
  },
} as const;

const network = {
  type: "object",
  description:
    "network policy (docs/network.md); rules: IPv4 CIDR or address, name, *.suffix, each with optional :port",
  properties: {
    egress: { type: "string", enum: ["deny", "allow"] },
    allow_out: { type: "array", items: str },
    deny_out: { type: "array", items: str },
  },
} as const;

const sandbox = {
  type: "object",
  properties: {
    id: str,
    template_id: str,
    parent_id: { type: ["string", "null"] },
    state: { type: "string", enum: ["starting", "ready", "paused", "terminated", "failed"] },
    endpoint: str,
    created_at: str,
    deadline_unix: int,
    fork_time_ms: int,
    accel: { type: "string", enum: ["kvm", "tcg"] },
    memory: {
      type: "object",
      description:
        "As last read from its QEMU (at most 1 s old; a create answers with its warm VM's reading). GET /v1/metering reads now.",
      properties: { private_bytes: int, shared_bytes: int },
    },
    hibernated: { type: "boolean", description: "paused with its RAM freed (POST /v1/pause {hibernate: true})" },
    network: { ...network, type: ["object", "null"], description: "its network policy; null: no network device" },
    domain: { type: "string", description: "guest port N is served at host N-<id>.<domain> (docs/ports.md)" },
    tenant: { type: ["string", "null"], description: "the tenant it belongs to; null: an admin's" },
    token: {
      type: "string",
      description:
        "reaches this sandbox's runtime API only (exec, files, PTY, ports); absent when the caller is its own token",
    },
    fork_token: {
      type: "string",
      description:
        "may only fork this sandbox (POST /v1/sandboxes/{id}/fork); the answer carries the children's tokens",
    },
  },
} as const;

const guestLimits = {
  type: "object",
  description: "what its sandboxes' commands may take (docs/security.md 'Hostile guests'); absent ones: the defaults",
  properties: {
    command_memory_mib: { type: "integer", description: "all commands together (default: RAM less max(64 MiB, 1/8))" },
    command_pids: { type: "integer", description: "processes of all commands together (default 1024)" },
    writable_mib: { type: "integer", description: "the RAM-backed writable layer (default: half of RAM)" },
    output_bytes_per_second: { type: "integer", description: "exec output the host takes per second (default 32 MiB)" },
  },
} as const;
const template = {
  type: "object",
  properties: {
    id: str,
    ready: { type: "boolean" },
    created_at: str,
    creation_time_ms: int,
    resources: { type: "object", properties: { vcpu_count: int, mem_size_mib: int } },
    network: { ...network, type: ["object", "null"], description: "its sandboxes' default policy; null: no NIC" },
    image: {
      type: ["object", "null"],
      description: "the OCI image it was built from, pinned by digest; null: a built-in image",
      properties: { reference: str, digest: str },
    },
    version: {
      type: ["string", "null"],
      description: "a key of everything that shaped the template (images, packages, steps, env, machine)",
    },
    steps: { type: "integer", description: "its init steps" },
    tenant: { type: ["string", "null"], description: "the tenant that built it; null: shared by all" },
    guest: { ...guestLimits, type: ["object", "null"] },
  },
} as const;

const errors = { "4xx": errorEnvelope, "5xx": errorEnvelope };
const checkpoint = {
  type: "object",
  properties: {
    id: str,
    name: { type: ["string", "null"] },
    sandbox_id: str,
    template_id: str,
    created_at: str,
    bytes: { type: "integer", description: "compressed bytes of every chunk it names" },
    added_bytes: { type: "integer", description: "of those, the bytes it added (the rest are shared)" },
    tenant: { type: ["string", "null"], description: "the tenant whose sandbox it was taken of" },
  },
} as const;
const sandboxRef = { type: "object", required: ["sandbox"], properties: { sandbox: id } } as const;
/** Path ids are checked like body ids: a malformed one is invalid_input, not a lookup. */
const idParams = { type: "object", properties: { id } } as const;
const ownerLimits = {
  type: "object",
  description: "a tenant's own caps beside the host's; an absent one is not checked",
  properties: { max_sandboxes: int, max_guest_memory_mib: int, max_fork_count: int, max_lifetime_seconds: int },
} as const;
const apiKey = {
  type: "object",
  properties: {
    id: str,
    name: str,
    prefix: { type: "string", description: "the key's first characters, to tell keys apart" },
    scope: { type: "string", enum: ["admin", "tenant"] },
    tenant: { type: ["string", "null"] },
    limits: { ...ownerLimits, type: ["object", "null"] },
    created_at: str,
  },
} as const;
const limits = {
  type: "object",
  properties: {
    tenant: {
      type: "object",
      description: "a tenant key's own caps and what its tenant holds",
      properties: {
        name: str,
        limits: ownerLimits,
        usage: { type: "object", properties: { sandboxes: int, guest_memory_mib: int } },
      },
    },
    admission: { type: "string", enum: ["cow", "strict"] },
    memory_floor_mib: int,
    memory_overcommit: { type: "number" },
    max_sandboxes: int,
    max_guest_memory_mib: int,
    max_fork_count: int,
    max_lifetime_seconds: int,
    default_timeout_seconds: int,
    max_streams_per_sandbox: int,
    usage: {
      type: "object",
      properties: {
        sandboxes: int,
        guest_memory_mib: int,
        memory: {
          type: "object",
          properties: { total_mib: int, available_mib: int, committed_mib: int, pending_mib: int },
        },
      },
    },
  },
} as const;
const codeContext = {
  type: "object",
  properties: { id: str, language: str, cwd: str },
} as const;
const contextParams = {
  type: "object",
  properties: { id: str, context: str },
} as const;

const fileQuery = {
  type: "object",
  properties: {
    path: { type: "string", description: "absolute path in the guest" },
    mode: {
      type: "string",
      pattern: "^[0-7]{3,4}$",
      description: "octal permission bits of a written file (default 644)",
    },
  },
  required: ["path"],
} as const;

const createBody = {
  type: "object",
  properties: {
    template: str,
    pool: str,
    checkpoint: str,
    id,
    timeout_seconds: int,
    env,
    network: { ...network, type: ["object", "null"], description: "its network policy (null: the template's)" },
  },
} as const;

export const routeSchemas = {
  health: {
    summary: "Liveness, version, accelerator and counts (no auth)",
    security: [],
    response: {
      200: {
        type: "object",
        properties: {
          status: str,
          version: str,
          auth: { type: "string", enum: ["token", "none"] },
          accel: str,
          templates: int,
          sandboxes: int,
        },
      },
    },
  },
  createTemplate: {
    summary: "Build a template (an existing id returns it)",
    description:
      "With Accept: application/x-ndjson the answer streams the build log, one JSON event per line, the last line {type:'template'} or {type:'error', error} (docs/templates.md).",
    body: {
      type: "object",
      required: ["id"],
      properties: {
        id,
        image: { type: "string", description: "base, python, or an OCI image reference (docs/templates.md)" },
        packages: { type: "array", items: str },
        init: { type: "array", items: str },
        env,
        resources: { type: "object", properties: { vcpu_count: int, mem_size_mib: int } },
        init_wait_seconds: { type: "integer", description: "seconds the booted guest settles before init (0-600)" },
        init_timeout_seconds: { type: "integer", description: "limit on each init command (default 600, max 3600)" },
        disk_size_mib: {
          type: "integer",
          description:
            "a workspace disk of this size at /workspace, on the host (64 MiB to 1 TiB; default: /workspace in guest RAM)",
        },
        network: {
          ...network,
          type: ["object", "null"],
          description: "a network device, and its sandboxes' default policy (default or null: no NIC)",
        },
        guest: guestLimits,
      },
    },
    response: { 200: template, ...errors },
  },
  deleteTemplate: {
    summary: "Delete a template and free its RAM base (conflict while used, unless force=true)",
    params: idParams,
    querystring: { type: "object", properties: { force: str } },
    response: { 200: { type: "object", properties: { status: str, id: str } }, ...errors },
  },
  listTemplates: { summary: "List templates", response: { 200: { type: "array", items: template } } },
  createSandbox: {
    summary: "New sandbox restored from a template (from the warm pool when one is warm)",
    body: createBody,
    response: { 200: sandbox, ...errors },
  },
  listSandboxes: { summary: "List sandboxes", response: { 200: { type: "array", items: sandbox } } },
  getSandbox: { summary: "One sandbox", params: idParams, response: { 200: sandbox, ...errors } },
  fork: {
    summary: "Live fork: one child (no count) or {sandboxes, fork_time_ms} with count",
    params: idParams,
    body: {
      type: "object",
      properties: {
        id,
        count: int,
        template: str,
        pause_source: { type: "boolean", description: "accepted; the source is always resumed after the capture" },
      },
    },
    response: {
      200: {
        anyOf: [
          {
            type: "object",
            required: ["sandboxes"],
            properties: { sandboxes: { type: "array", items: sandbox }, fork_time_ms: int },
          },
          { ...sandbox, required: ["id"] },
        ],
      },
      ...errors,
    },
  },
  createCheckpoint: {
    summary: "Save a running sandbox to disk (one short pause); create or fork from it any time later",
    params: idParams,
    body: { type: "object", properties: { name: str } },
    response: { 200: checkpoint, ...errors },
  },
  listCheckpoints: { summary: "List checkpoints", response: { 200: { type: "array", items: checkpoint } } },
  getCheckpoint: { summary: "One checkpoint", params: idParams, response: { 200: checkpoint, ...errors } },
  deleteCheckpoint: {
    summary: "Delete a checkpoint (chunks other checkpoints share stay)",
    params: idParams,
    response: { 200: { type: "object", properties: { status: str, id: str } }, ...errors },
  },
  forkCheckpoint: {
    summary: "count new sandboxes from a checkpoint, sharing one base",
    params: idParams,
    body: { type: "object", properties: { count: int, timeout_seconds: int, env } },
    response: {
      200: {
        type: "object",
        properties: { sandboxes: { type: "array", items: sandbox }, fork_time_ms: int },
      },
      ...errors,
    },
  },
  terminate: {
    summary: "Terminate a sandbox",
    params: idParams,
    response: { 200: { type: "object", properties: { status: str, id: str } }, ...errors },
  },
  setTimeout: {
    summary: "Move a sandbox's deadline",
    body: {
      type: "object",
      required: ["sandbox", "timeout_seconds"],
      properties: { sandbox: id, timeout_seconds: int },
    },
    response: {
      200: { type: "object", properties: { status: str, deadline_unix: int, timeout_seconds: int } },
      ...errors,
    },
  },
  pause: {
    summary: "Pause a sandbox; with hibernate its RAM is freed (saved to disk) until resume",
    body: {
      type: "object",
      required: ["sandbox"],
      properties: { sandbox: id, hibernate: { type: "boolean" } },
    },
    response: { 200: { type: "object", properties: { status: str, hibernated: { type: "boolean" } } }, ...errors },
  },
  resume: {
    summary: "Resume a sandbox",
    body: sandboxRef,
    response: { 200: { type: "object", properties: { status: str } }, ...errors },
  },
  pools: {
    summary: "Warm pools",
    response: {
      200: {
        type: "array",
        items: { type: "object", properties: { template: str, warm: int, target: int, claimed: int } },
      },
    },
  },
  setPool: {
    summary: "Keep n warm VMs of a template, idle or not (0 stops the pool)",
    params: { type: "object", properties: { template: str } },
    body: { type: "object", required: ["target"], properties: { target: int } },
    response: {
      200: { type: "object", properties: { template: str, warm: int, target: int, claimed: int } },
      ...errors,
    },
  },
  setNetwork: {
    summary: "Replace a running sandbox's network policy (takes effect at once)",
    params: idParams,
    body: network,
    response: { 200: sandbox, ...errors },
  },
  listContexts: {
    summary: "The code interpreter's contexts (kernels) in a sandbox; 'default' always exists",
    params: idParams,
    response: { 200: { type: "array", items: codeContext }, ...errors },
  },
  createContext: {
    summary: "Start another kernel: variables and imports of its own (takes seconds: a fresh kernel)",
    params: idParams,
    body: {
      type: ["object", "null"],
      properties: {
        language: { type: "string", description: "python (the default) is the one served" },
        cwd: { type: "string", description: "its working directory (default /workspace)" },
      },
    },
    response: { 200: codeContext, ...errors },
  },
  restartContext: {
    summary: "A fresh kernel under the same context id: its variables are gone",
    params: contextParams,
    response: { 204: { type: "null" }, ...errors },
  },
  removeContext: {
    summary: "Stop a context's kernel (the default context cannot be removed)",
    params: contextParams,
    response: { 204: { type: "null" }, ...errors },
  },
  limits: {
    summary: "Spend caps in force (quota_exceeded names the one hit) and current usage",
    response: { 200: limits },
  },
  metering: { summary: "Memory per sandbox and host totals (shared pages counted once)" },
  createKey: {
    summary: "Create an API key (admin, or a tenant's with its caps); its value is shown in this answer only",
    body: {
      type: "object",
      required: ["scope"],
      properties: {
        name: str,
        scope: { type: "string", enum: ["admin", "tenant"] },
        tenant: id,
        limits: ownerLimits,
      },
    },
    response: {
      201: { ...apiKey, properties: { ...apiKey.properties, key: { type: "string", description: "shown once" } } },
      ...errors,
    },
  },
  listKeys: {
    summary: "API keys, without their values",
    response: { 200: { type: "array", items: apiKey }, ...errors },
  },
  revokeKey: {
    summary: "Revoke an API key (calls with it get 401 from now on)",
    params: { type: "object", properties: { id: str } },
    response: { 200: { type: "object", properties: { status: str, id: str } }, ...errors },
  },
  metrics: { summary: "Prometheus metrics", hide: true },
  events: {
    summary:
      "Live sandbox changes as server-sent events: snapshot, then sandbox (created or changed), removed, and memory every 3 s (docs/console.md)",
    produces: ["text/event-stream"],
  },
  downloadFile: {
    summary: "A file's bytes from the sandbox (application/octet-stream, streamed)",
    params: idParams,
    querystring: fileQuery,
  },
  uploadFile: {
    summary: "Write a file in the sandbox from the raw request body (any Content-Type, streamed)",
    params: idParams,
    querystring: fileQuery,
    response: { 200: { type: "object", properties: { path: str, bytes_written: int } }, ...errors },
  },
} satisfies Record<string, FastifySchema & { summary?: string; hide?: boolean; security?: unknown[] }>;

export async function registerOpenApi(app: FastifyInstance, version: string): Promise<void> {
  await app.register(swagger, {
    openapi: {
      info: {
        title: "mitosd lifecycle API",
        version,
        description:
          "Forkable microVM sandboxes. The runtime service is Connect RPC (sandbox.v1.Sandbox), see the proto.",
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
  });
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
}
