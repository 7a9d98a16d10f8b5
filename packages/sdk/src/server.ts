// Entry point: one SandboxServer per mitosd, holding the REST client and the
// shared Connect transport that every Sandbox it hands out reuses.

import { type ClientOptions, type ResolvedConfig, resolveConfig } from "./config.js";
import { errorFromEnvelope, type MitosError, makeError, STATUS_BY_CODE } from "./errors.js";
import { LifecycleClient, postLines } from "./http.js";
import { RuntimeClient } from "./runtime.js";
import { type Clients, Sandbox } from "./sandbox.js";
import type {
  ApiKey,
  CheckpointInfo,
  CreateKeyOptions,
  E2bKey,
  Health,
  Limits,
  Metering,
  NetworkPolicy,
  PoolInfo,
  TemplateBuildEvent,
  TemplateInfo,
  TemplateSpec,
} from "./types.js";
import {
  array,
  type Json,
  keyBody,
  networkBody,
  templateBody,
  toApiKey,
  toBuildEvent,
  toCheckpointInfo,
  toE2bKey,
  toForkMany,
  toHealth,
  toLimits,
  toMetering,
  toPools,
  toSandboxInfo,
  toTemplateInfo,
} from "./wire.js";

export interface CreateSandboxOptions {
  /** Id for the new sandbox; default a generated `sb-<8 hex>`. */
  id?: string;
  /** Deadline in seconds from now; refused (TimeoutTooLargeError) above the server's ceiling. */
  timeoutSeconds?: number;
  /** Extra environment for commands in this sandbox. */
  env?: Record<string, string>;
  /** Its network policy (the template must have been built with network); default: the template's. */
  network?: NetworkPolicy;
}

export interface CreateTemplateOptions {
  /** Wait until the template is ready (default true). */
  wait?: boolean;
  /** How often to check readiness while waiting (default 1000 ms). */
  pollIntervalMs?: number;
  signal?: AbortSignal;
  /**
   * Follows the build as it happens: image, boot, each init step (cached or
   * run) with its output, the snapshot (docs/templates.md "Build log").
   */
  onEvent?: (e: TemplateBuildEvent) => void;
}

export class SandboxServer {
  readonly baseUrl: string;
  readonly #clients: Clients;

  constructor(opts: ClientOptions = {}) {
    const config: ResolvedConfig = resolveConfig(opts);
    this.baseUrl = config.baseUrl;
    this.#clients = { http: new LifecycleClient(config), runtime: new RuntimeClient(config), config };
  }

  /** A new sandbox restored from `template` (from its warm pool when one is warm). */
  async fork(template: string, idOrOpts?: string | CreateSandboxOptions): Promise<Sandbox> {
    const opts: CreateSandboxOptions = typeof idOrOpts === "string" ? { id: idOrOpts } : (idOrOpts ?? {});
    const res = await this.#clients.http.post("/v1/fork", createBody({ template }, opts), { create: true });
    return new Sandbox(this.#clients, toSandboxInfo(res));
  }

  /** A new sandbox restored from a checkpoint: its memory, processes and files as they were. */
  async fromCheckpoint(checkpoint: string, opts: CreateSandboxOptions = {}): Promise<Sandbox> {
    const res = await this.#clients.http.post("/v1/sandboxes", createBody({ checkpoint }, opts), { create: true });
    return new Sandbox(this.#clients, toSandboxInfo(res));
  }

  /** `count` new sandboxes from one checkpoint, sharing its pages copy-on-write. */
  async forkCheckpoint(
    checkpoint: string,
    count: number,
    opts: { timeoutSeconds?: number; env?: Record<string, string> } = {},
  ): Promise<Sandbox[]> {
    const res = await this.#clients.http.post(
      `/v1/checkpoints/${encodeURIComponent(checkpoint)}/fork`,
      createBody({ count }, opts),
      { create: true },
    );
    return toForkMany(res).sandboxes.map((info) => new Sandbox(this.#clients, info));
  }

  async listCheckpoints(): Promise<CheckpointInfo[]> {
    return array("checkpoint list", await this.#clients.http.get("/v1/checkpoints")).map(toCheckpointInfo);
  }

  /** Deletes a checkpoint; chunks other checkpoints share stay. */
  async deleteCheckpoint(id: string): Promise<void> {
    await this.#clients.http.delete(`/v1/checkpoints/${encodeURIComponent(id)}`);
  }

  /**
   * A new API key (docs/security.md "Keys"; admin only): an admin key, or a
   * tenant's, whose caps `limits` sets (they replace the tenant's when given).
   * Its value is in `key`, shown this once.
   */
  async createKey(opts: CreateKeyOptions): Promise<ApiKey> {
    return toApiKey(await this.#clients.http.post("/v1/keys", keyBody(opts)));
  }

  async listKeys(): Promise<ApiKey[]> {
    return array("key list", await this.#clients.http.get("/v1/keys")).map(toApiKey);
  }

  /** Revokes a key: calls with it get 401 from now on. */
  async revokeKey(id: string): Promise<void> {
    await this.#clients.http.delete(`/v1/keys/${encodeURIComponent(id)}`);
  }

  /** A new E2B API key (docs/e2b.md): its value is in `key`, shown this once. */
  async createE2bKey(name = ""): Promise<E2bKey> {
    return toE2bKey(await this.#clients.http.post("/v1/e2b/keys", { name }));
  }

  async listE2bKeys(): Promise<E2bKey[]> {
    return array("E2B key list", await this.#clients.http.get("/v1/e2b/keys")).map(toE2bKey);
  }

  async revokeE2bKey(id: string): Promise<void> {
    await this.#clients.http.delete(`/v1/e2b/keys/${encodeURIComponent(id)}`);
  }

  /** A handle on an existing sandbox (GET /v1/sandboxes/{id}). */
  async get(id: string): Promise<Sandbox> {
    const res = await this.#clients.http.get(`/v1/sandboxes/${encodeURIComponent(id)}`);
    return new Sandbox(this.#clients, toSandboxInfo(res));
  }

  async listSandboxes(): Promise<Sandbox[]> {
    const res = await this.#clients.http.get("/v1/sandboxes");
    return array("sandbox list", res).map((s) => new Sandbox(this.#clients, toSandboxInfo(s)));
  }

  /**
   * Creates a template (an existing id returns the existing one). By default
   * waits until it is ready, polling the template list.
   */
  async createTemplate(id: string, spec: TemplateSpec = {}, opts: CreateTemplateOptions = {}): Promise<TemplateInfo> {
    if (opts.onEvent) return this.#followBuild(id, spec, opts.onEvent, opts.signal);
    const res = await this.#clients.http.post("/v1/templates", templateBody(id, spec), {
      create: true,
      signal: opts.signal,
    });
    let t = toTemplateInfo(res);
    const interval = opts.pollIntervalMs ?? 1000;
    while (!t.ready && opts.wait !== false) {
      await delay(interval, opts.signal);
      const found = (await this.listTemplates()).find((x) => x.id === id);
      if (found) t = found;
    }
    return t;
  }

  async #followBuild(
    id: string,
    spec: TemplateSpec,
    onEvent: (e: TemplateBuildEvent) => void,
    signal?: AbortSignal,
  ): Promise<TemplateInfo> {
    let outcome: TemplateInfo | MitosError | undefined;
    await postLines(
      this.#clients.http,
      "/v1/templates",
      templateBody(id, spec),
      (line) => {
        const r = (typeof line === "object" && line !== null ? line : {}) as Record<string, unknown>;
        if (r.type === "template") outcome = toTemplateInfo(r.template);
        else if (r.type === "error") {
          const code = (r.error as { code?: string } | undefined)?.code ?? "internal";
          outcome = errorFromEnvelope(STATUS_BY_CODE[code as keyof typeof STATUS_BY_CODE] ?? 500, r);
        } else onEvent(toBuildEvent(line));
      },
      signal,
    );
    if (outcome === undefined) {
      throw makeError({
        code: "internal",
        message: `the build log of template ${id} ended without an outcome`,
        remediation: "The connection was cut or mitosd stopped; list templates to see whether it is ready, or retry.",
      });
    }
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }

  /**
   * Deletes a template and frees its RAM base. Refused (ConflictError) while
   * sandboxes or a warm pool use it, unless `force`, which terminates them.
   */
  async deleteTemplate(id: string, opts: { force?: boolean } = {}): Promise<void> {
    const q = opts.force ? "?force=true" : "";
    await this.#clients.http.delete(`/v1/templates/${encodeURIComponent(id)}${q}`);
  }

  async listTemplates(): Promise<TemplateInfo[]> {
    return array("template list", await this.#clients.http.get("/v1/templates")).map(toTemplateInfo);
  }

  async health(): Promise<Health> {
    return toHealth(await this.#clients.http.get("/v1/health"));
  }

  async pools(): Promise<PoolInfo[]> {
    return toPools(await this.#clients.http.get("/v1/pools"));
  }

  /** Keeps `target` warm VMs of a template, idle or not (0 stops its pool). */
  async setPoolTarget(template: string, target: number): Promise<PoolInfo> {
    const r = await this.#clients.http.put(`/v1/pools/${encodeURIComponent(template)}`, { target });
    const [pool] = toPools([r]);
    if (!pool) throw new Error("unreachable: toPools of one entry");
    return pool;
  }

  /** Spend caps in force on this mitosd and what is in use. */
  async limits(): Promise<Limits> {
    return toLimits(await this.#clients.http.get("/v1/limits"));
  }

  async metering(): Promise<Metering> {
    return toMetering(await this.#clients.http.get("/v1/metering"));
  }
}

function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

/** The body of a creating call: `base` plus the options that were given. */
function createBody(base: Record<string, Json>, opts: CreateSandboxOptions): Record<string, Json> {
  const body = { ...base };
  if (opts.id !== undefined) body.id = opts.id;
  if (opts.timeoutSeconds !== undefined) body.timeout_seconds = opts.timeoutSeconds;
  if (opts.env !== undefined) body.env = opts.env;
  if (opts.network !== undefined) body.network = networkBody(opts.network);
  return body;
}
