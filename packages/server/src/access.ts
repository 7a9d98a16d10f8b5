// Who is calling and what they may reach (docs/security.md). Every request
// resolves its bearer token to a principal: an admin (the daemon's token, an
// admin key, the cluster gateway's credential, or anyone in --auth none), a
// tenant (a tenant key: its own sandboxes, checkpoints and templates plus the
// shared templates), or one sandbox (a per-sandbox token: that sandbox's
// runtime API, or forking it). What a principal may not see answers exactly
// as if it did not exist (404), so ids of others' sandboxes leak nothing.

import {
  type CheckpointManifest,
  type Engine,
  MitosError,
  noCheckpoint,
  noSandbox,
  type SandboxInfo,
  type TemplateInfo,
} from "@mitos/engine";
import type { ApiKeys } from "./api-keys.js";
import { authorized } from "./auth.js";
import { type SandboxTokenKind, SandboxTokens } from "./sandbox-tokens.js";

declare module "fastify" {
  interface FastifyRequest {
    /** Who is calling (set by the auth hook for every route but /v1/health and the E2B control plane). */
    principal: Principal | undefined;
  }
}

export type Principal =
  | { kind: "admin"; keyId: string }
  | { kind: "tenant"; keyId: string; tenant: string }
  | { kind: "sandbox"; keyId: string; sandbox: string; token: SandboxTokenKind };

export interface AccessOptions {
  engine: Engine;
  /** "none": every caller is an admin (loopback development mode). */
  mode: "token" | "none";
  /** The daemon's own token. */
  adminToken: string;
  /** Other admin credentials (a cluster gateway's). */
  extraTokens: string[];
  keys: ApiKeys;
  sandboxTokens: SandboxTokens;
}

export class Access {
  constructor(private readonly o: AccessOptions) {}

  /** The principal an Authorization header names, or undefined (401). */
  resolve(header: string | undefined | null): Principal | undefined {
    if (this.o.mode === "none") return { kind: "admin", keyId: "anonymous" };
    if (authorized(header, this.o.adminToken)) return { kind: "admin", keyId: "admin-token" };
    if (this.o.extraTokens.some((t) => authorized(header, t))) return { kind: "admin", keyId: "gateway" };
    if (!header?.startsWith("Bearer ")) return undefined;
    const token = header.slice(7).trim();
    if (SandboxTokens.looksLike(token)) {
      const claim = this.o.sandboxTokens.verify(token);
      return claim && { kind: "sandbox", keyId: `sandbox:${claim.sandbox}`, sandbox: claim.sandbox, token: claim.kind };
    }
    const key = this.o.keys.find(token);
    if (!key) return undefined;
    if (key.scope === "tenant" && key.tenant !== undefined) {
      return { kind: "tenant", keyId: key.id, tenant: key.tenant };
    }
    return { kind: "admin", keyId: key.id };
  }

  /** The owner label of what `p` creates (a tenant's name; undefined: an admin's, everyone's). */
  owner(p: Principal): string | undefined {
    if (p.kind === "tenant") return p.tenant;
    // A sandbox forking itself: its children are its own owner's (the engine's fork does that).
    return undefined;
  }

  /** Whether `p` sees this sandbox at all. */
  seesSandbox(p: Principal, s: SandboxInfo): boolean {
    if (p.kind === "admin") return true;
    if (p.kind === "tenant") return s.owner === p.tenant;
    return s.id === p.sandbox;
  }

  /** The sandbox, or the engine's own not_found when `p` may not see it. */
  sandbox(p: Principal, id: string): SandboxInfo {
    const s = this.o.engine.get(id);
    if (!this.seesSandbox(p, s)) throw noSandbox(id);
    return s;
  }

  /** Whether `p` may call the runtime API (exec, files, PTY, ports) of sandbox `id` (an admin: any id, known or not). */
  runtime(p: Principal, id: string): boolean {
    if (p.kind === "admin") return true;
    if (p.kind === "sandbox") return p.token === "runtime" && p.sandbox === id;
    try {
      this.sandbox(p, id);
      return true;
    } catch {
      return false;
    }
  }

  /** Templates `p` may use: an admin all, a tenant its own and the shared (owner-less) ones. */
  seesTemplate(p: Principal, t: Pick<TemplateInfo, "owner">): boolean {
    if (p.kind === "admin") return true;
    return t.owner === undefined || (p.kind === "tenant" && t.owner === p.tenant);
  }

  /** A template `p` may use by id (a built-in one not built yet counts as shared). */
  template(p: Principal, id: string): void {
    const t = this.o.engine.listTemplates().find((x) => x.id === id);
    if (t && !this.seesTemplate(p, t)) throw noTemplate(id);
  }

  /** A template `p` may change or delete: an admin any, a tenant its own. */
  ownTemplate(p: Principal, id: string): void {
    if (p.kind === "admin") return;
    const t = this.o.engine.listTemplates().find((x) => x.id === id);
    if (!t || !this.seesTemplate(p, t)) throw noTemplate(id);
    if (t.owner === undefined) {
      throw new MitosError("forbidden", `template ${id} is shared by all tenants; only an admin deletes it`, {
        remediation: "Ask an admin, or delete a template your tenant built.",
        context: { template: id },
      });
    }
  }

  seesCheckpoint(p: Principal, c: Pick<CheckpointManifest, "owner">): boolean {
    if (p.kind === "admin") return true;
    return p.kind === "tenant" && c.owner === p.tenant;
  }

  /** A checkpoint `p` may use, or not_found as for an unknown id. */
  checkpoint(p: Principal, id: string): CheckpointManifest {
    const c = this.o.engine.visibleCheckpoint(id);
    if (!this.seesCheckpoint(p, c)) throw noCheckpoint(id);
    return c;
  }

  /** Refuses a non-admin (403: the route exists, the key's scope does not reach it). */
  admin(p: Principal, what: string): void {
    if (p.kind === "admin") return;
    throw new MitosError("forbidden", `${what} needs an admin key`, {
      remediation: "Call it with the daemon's token or a key created with `mitos key create --scope admin`.",
    });
  }
}

function noTemplate(id: string): MitosError {
  return new MitosError("not_found", `no template ${JSON.stringify(id)}`, {
    remediation: "List templates (GET /v1/templates) for the ones you can use.",
    context: { template: id },
  });
}
