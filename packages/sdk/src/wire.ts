// Conversion between the lifecycle API's snake_case JSON and the SDK's
// camelCase objects, with just enough checking that a wrong server fails
// loudly instead of handing out undefined ids.

import { makeError } from "./errors.js";
import type {
  ApiKey,
  CheckpointInfo,
  CodeContext,
  CreateKeyOptions,
  E2bKey,
  ExposedPort,
  GuestLimits,
  Health,
  Limits,
  Metering,
  NetworkPolicy,
  PoolInfo,
  SandboxInfo,
  SandboxState,
  TemplateBuildEvent,
  TemplateInfo,
  TemplateSpec,
  TenantLimits,
  TimeoutInfo,
} from "./types.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export function snakeToCamel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** Renames every object key to camelCase, recursively. */
export function camelize(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(camelize);
  if (isRecord(value)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[snakeToCamel(k)] = camelize(v);
    return out;
  }
  return value;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function bad(what: string, value: unknown): never {
  throw makeError({
    code: "internal",
    message: `unexpected ${what} from mitosd`,
    cause: JSON.stringify(value)?.slice(0, 300),
    remediation:
      "The server's answer does not match the API this SDK speaks. Check that mitosd and @mitos/sdk versions match.",
  });
}

function record(what: string, v: unknown): Record<string, unknown> {
  const c = camelize(v);
  return isRecord(c) ? c : bad(what, v);
}

function str(what: string, o: Record<string, unknown>, key: string): string {
  const v = o[key];
  return typeof v === "string" ? v : bad(`${what}.${key}`, v);
}

function optStr(o: Record<string, unknown>, key: string): string | undefined {
  const v = o[key];
  return typeof v === "string" ? v : undefined;
}

function num(o: Record<string, unknown>, key: string): number {
  const v = o[key];
  return typeof v === "number" ? v : 0;
}

function optNum(o: Record<string, unknown>, key: string): number | undefined {
  const v = o[key];
  return typeof v === "number" ? v : undefined;
}

export function array(what: string, v: unknown): unknown[] {
  return Array.isArray(v) ? v : bad(what, v);
}

export function toSandboxInfo(v: unknown): SandboxInfo {
  const o = record("sandbox", v);
  const mem = isRecord(o.memory) ? o.memory : undefined;
  const accel = optStr(o, "accel");
  return {
    id: str("sandbox", o, "id"),
    templateId: optStr(o, "templateId") ?? "",
    parentId: optStr(o, "parentId") ?? null,
    state: (optStr(o, "state") ?? "ready") as SandboxState,
    endpoint: optStr(o, "endpoint"),
    createdAt: optStr(o, "createdAt") ?? "",
    deadlineUnix: optNum(o, "deadlineUnix"),
    forkTimeMs: num(o, "forkTimeMs"),
    accel: accel === "kvm" || accel === "tcg" ? accel : undefined,
    memory: mem ? { privateBytes: num(mem, "privateBytes"), sharedBytes: num(mem, "sharedBytes") } : undefined,
    hibernated: o.hibernated === true,
    network: toNetworkPolicy(o.network),
    domain: optStr(o, "domain"),
    tenant: optStr(o, "tenant") ?? null,
    token: optStr(o, "token"),
    forkToken: optStr(o, "forkToken"),
  };
}

export function toExposedPort(v: unknown): ExposedPort {
  const o = record("exposed port", v);
  return {
    port: num(o, "port"),
    url: str("exposed port", o, "url"),
    host: str("exposed port", o, "host"),
    token: str("exposed port", o, "token"),
    tokenHeader: str("exposed port", o, "tokenHeader"),
  };
}

export function toCodeContext(v: unknown): CodeContext {
  const o = record("code context", v);
  return {
    id: str("code context", o, "id"),
    language: str("code context", o, "language"),
    cwd: str("code context", o, "cwd"),
  };
}

function toNetworkPolicy(v: unknown): NetworkPolicy | undefined {
  if (!isRecord(v)) return undefined;
  const list = (x: unknown) => (Array.isArray(x) ? x.filter((r): r is string => typeof r === "string") : []);
  return { egress: v.egress === "allow" ? "allow" : "deny", allowOut: list(v.allowOut), denyOut: list(v.denyOut) };
}

/** A policy as the API spells it. */
export function networkBody(p: NetworkPolicy): Record<string, Json> {
  return { egress: p.egress, allow_out: p.allowOut ?? [], deny_out: p.denyOut ?? [] };
}

export function toTemplateInfo(v: unknown): TemplateInfo {
  const o = record("template", v);
  return {
    id: str("template", o, "id"),
    ready: o.ready === true,
    createdAt: optStr(o, "createdAt") ?? "",
    creationTimeMs: num(o, "creationTimeMs"),
    ...(isRecord(o.resources)
      ? { resources: { vcpuCount: num(o.resources, "vcpuCount"), memSizeMib: num(o.resources, "memSizeMib") } }
      : {}),
    ...(isRecord(o.image)
      ? {
          image: {
            reference: str("template image", o.image, "reference"),
            digest: str("template image", o.image, "digest"),
          },
        }
      : {}),
    ...(typeof o.version === "string" ? { version: o.version } : {}),
    ...(typeof o.steps === "number" ? { steps: o.steps } : {}),
    ...(isRecord(o.guest) ? { guest: o.guest as GuestLimits } : {}),
  };
}

/** One line of a streamed template build (docs/templates.md "Build log"). */
export function toBuildEvent(v: unknown): TemplateBuildEvent {
  const o = record("template build event", v);
  const step = optNum(o, "step") ?? 0;
  switch (o.type) {
    case "step":
      return { type: "step", step, of: num(o, "of"), command: optStr(o, "command") ?? "", cached: o.cached === true };
    case "output":
      return {
        type: "output",
        step,
        stream: o.stream === "stderr" ? "stderr" : "stdout",
        data: optStr(o, "data") ?? "",
      };
    case "step_done":
      return { type: "step_done", step, exitCode: num(o, "exitCode"), ms: num(o, "ms") };
    default:
      return { type: "phase", phase: optStr(o, "phase") ?? "", message: optStr(o, "message") ?? "" };
  }
}

export function toLimits(v: unknown): Limits {
  const o = record("limits", v);
  const u = isRecord(o.usage) ? o.usage : {};
  const m = isRecord(u.memory) ? u.memory : undefined;
  return {
    admission: o.admission === "strict" ? "strict" : "cow",
    memoryFloorMib: num(o, "memoryFloorMib"),
    memoryOvercommit: num(o, "memoryOvercommit"),
    maxSandboxes: num(o, "maxSandboxes"),
    maxGuestMemoryMib: num(o, "maxGuestMemoryMib"),
    maxForkCount: num(o, "maxForkCount"),
    maxLifetimeSeconds: num(o, "maxLifetimeSeconds"),
    defaultTimeoutSeconds: num(o, "defaultTimeoutSeconds"),
    maxStreamsPerSandbox: num(o, "maxStreamsPerSandbox"),
    usage: {
      sandboxes: num(u, "sandboxes"),
      guestMemoryMib: num(u, "guestMemoryMib"),
      ...(m
        ? {
            memory: {
              totalMib: num(m, "totalMib"),
              availableMib: num(m, "availableMib"),
              committedMib: num(m, "committedMib"),
              pendingMib: num(m, "pendingMib"),
            },
          }
        : {}),
    },
  };
}

export function toCheckpointInfo(v: unknown): CheckpointInfo {
  const o = record("checkpoint", v);
  return {
    id: str("checkpoint", o, "id"),
    name: optStr(o, "name") ?? null,
    sandboxId: optStr(o, "sandboxId") ?? "",
    templateId: optStr(o, "templateId") ?? "",
    createdAt: optStr(o, "createdAt") ?? "",
    bytes: num(o, "bytes"),
    addedBytes: num(o, "addedBytes"),
  };
}

export function toApiKey(v: unknown): ApiKey {
  const o = record("key", v);
  const key = optStr(o, "key");
  const l = isRecord(o.limits) ? o.limits : undefined;
  return {
    id: str("key", o, "id"),
    name: optStr(o, "name") ?? "",
    prefix: optStr(o, "prefix") ?? "",
    scope: o.scope === "admin" ? "admin" : "tenant",
    tenant: optStr(o, "tenant") ?? null,
    limits: l ? (Object.fromEntries(Object.entries(l).filter(([, x]) => typeof x === "number")) as TenantLimits) : null,
    createdAt: optStr(o, "createdAt") ?? "",
    ...(key ? { key } : {}),
  };
}

export function toE2bKey(v: unknown): E2bKey {
  const o = record("E2B key", v);
  const key = optStr(o, "key");
  return {
    id: str("E2B key", o, "id"),
    name: optStr(o, "name") ?? "",
    prefix: optStr(o, "prefix") ?? "",
    createdAt: optStr(o, "createdAt") ?? "",
    ...(key ? { key } : {}),
  };
}

/** The answer of POST /v1/sandboxes/{id}/fork with `count`. */
export function toForkMany(v: unknown): { sandboxes: SandboxInfo[]; forkTimeMs: number } {
  const o = isRecord(v) ? v : bad("fork answer", v);
  return {
    sandboxes: array("fork answer sandboxes", o.sandboxes).map(toSandboxInfo),
    forkTimeMs: typeof o.fork_time_ms === "number" ? o.fork_time_ms : 0,
  };
}

export function toTimeoutInfo(v: unknown): TimeoutInfo {
  const o = record("set_timeout answer", v);
  return { deadlineUnix: num(o, "deadlineUnix"), timeoutSeconds: num(o, "timeoutSeconds") };
}

export function toHealth(v: unknown): Health {
  return record("health", v) as unknown as Health;
}

export function toPools(v: unknown): PoolInfo[] {
  return array("pools", v).map((p) => record("pool", p) as unknown as PoolInfo);
}

export function toMetering(v: unknown): Metering {
  return record("metering", v) as unknown as Metering;
}

/** TemplateSpec → the POST /v1/templates body. `env` keys are user data and keep their case. */
export function keyBody(k: CreateKeyOptions): Record<string, Json> {
  const body: Record<string, Json> = { scope: k.scope };
  if (k.tenant !== undefined) body.tenant = k.tenant;
  if (k.name !== undefined) body.name = k.name;
  if (k.limits !== undefined) {
    const l: Record<string, Json> = {};
    if (k.limits.maxSandboxes !== undefined) l.max_sandboxes = k.limits.maxSandboxes;
    if (k.limits.maxGuestMemoryMib !== undefined) l.max_guest_memory_mib = k.limits.maxGuestMemoryMib;
    if (k.limits.maxForkCount !== undefined) l.max_fork_count = k.limits.maxForkCount;
    if (k.limits.maxLifetimeSeconds !== undefined) l.max_lifetime_seconds = k.limits.maxLifetimeSeconds;
    body.limits = l;
  }
  return body;
}

export function templateBody(id: string, spec: TemplateSpec): Record<string, Json> {
  const body: Record<string, Json> = { id };
  if (spec.image !== undefined) body.image = spec.image;
  if (spec.packages !== undefined) body.packages = spec.packages;
  if (spec.init !== undefined) body.init = spec.init;
  if (spec.env !== undefined) body.env = spec.env;
  if (spec.resources !== undefined) {
    const r: Record<string, Json> = {};
    if (spec.resources.vcpuCount !== undefined) r.vcpu_count = spec.resources.vcpuCount;
    if (spec.resources.memSizeMib !== undefined) r.mem_size_mib = spec.resources.memSizeMib;
    body.resources = r;
  }
  if (spec.initWaitSeconds !== undefined) body.init_wait_seconds = spec.initWaitSeconds;
  if (spec.initTimeoutSeconds !== undefined) body.init_timeout_seconds = spec.initTimeoutSeconds;
  if (spec.diskSizeMib !== undefined) body.disk_size_mib = spec.diskSizeMib;
  if (spec.network !== undefined) body.network = networkBody(spec.network);
  if (spec.guest !== undefined) {
    const g: Record<string, Json> = {};
    if (spec.guest.commandMemoryMib !== undefined) g.command_memory_mib = spec.guest.commandMemoryMib;
    if (spec.guest.commandPids !== undefined) g.command_pids = spec.guest.commandPids;
    if (spec.guest.writableMib !== undefined) g.writable_mib = spec.guest.writableMib;
    if (spec.guest.outputBytesPerSecond !== undefined) g.output_bytes_per_second = spec.guest.outputBytesPerSecond;
    body.guest = g;
  }
  return body;
}
