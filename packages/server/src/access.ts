// Who is calling and what they may reach (docs/security.md). Every request
// resolves its bearer token to a principal: an admin (the daemon's token, an
// admin key, the cluster gateway's credential, or anyone in --auth none), a
// tenant (a tenant key: its own sandboxes, checkpoints and templates plus the
// shared templates), or one sandbox (a per-sandbox token: that sandbox's
// runtime API, or forking it). What a principal may not see answers exactly
// as if it did not exist (404), so ids of others' sandboxes leak nothing.

import {
  BUILTIN_RECIPES,
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
      if (!claim) return undefined;
      // A tenant whose every key was revoked is locked out, its sandboxes' tokens too.
      const owner = this.ownerOf(claim.sandbox);
      if (owner !== undefined && !this.o.keys.tenantHasKeys(owner)) return undefined;
      return { kind: "sandbox", keyId: `sandbox:${claim.sandbox}`, sandbox: claim.sandbox, token: claim.kind };
    }
    const key = this.o.keys.find(token);
    if (!key) return undefined;
    if (key.scope === "tenant") {
      // Fail closed: a tenant key without its tenant is no credential.
      return key.tenant === undefined ? undefined : { kind: "tenant", keyId: key.id, tenant: key.tenant };
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
    if (p.kind === "admin") return this.o.engine.get(id);
    let s: SandboxInfo;
    try {
      s = this.o.engine.get(id);
    } catch (err) {
      // One reaped at its deadline is 410 to its owner only: to others it would tell that the id existed.
      const gone = this.o.engine.expiredOwner(id);
      if (gone && p.kind === "tenant" && gone.owner === p.tenant) throw err;
      throw noSandbox(id);
    }
    if (!this.seesSandbox(p, s)) throw noSandbox(id);
    return s;
  }

  private ownerOf(sandbox: string): string | undefined {
    try {
      return this.o.engine.get(sandbox).owner;
    } catch {
      return undefined;
    }
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

  /** A template `p` may use by id: built, building or to be rebuilt, its owner decides; a built-in one not built yet is shared. */
  template(p: Principal, id: string): void {
    const t = this.o.engine.templateOwner(id);
    if (t.taken && !this.seesTemplate(p, t)) throw noTemplate(id);
  }

  /**
   * What a template build by `p` may do with an id: refused when another
   * owner holds it (built, building or to be rebuilt), and a tenant may not
   * give a built-in id a spec of its own; the owner the build gets.
   */
  templateBuild(p: Principal, id: string, hasSpec: boolean, image: string | undefined): string | undefined {
    const t = this.o.engine.templateOwner(id);
    if (t.taken && !this.seesTemplate(p, t)) {
      throw new MitosError("conflict", `template id ${id} is taken`, {
        remediation: "Template ids are one namespace on this host: choose another id.",
        context: { field: "id" },
      });
    }
    if (p.kind === "admin") return undefined;
    if (id in BUILTIN_RECIPES) {
      // Posting a built-in id with nothing else (as upstream clients do before a create) builds the shared one.
      if (!hasSpec) return undefined;
      throw new MitosError("forbidden", `template id ${id} is a built-in one; a tenant's template needs another id`, {
        remediation: `Choose another id, or post {"id": "${id}"} alone to use the built-in template.`,
        context: { field: "id" },
      });
    }
    if (image !== undefined && !(image in BUILTIN_RECIPES)) {
      // An admin's registry credentials and plain-HTTP registries are the host's, not a tenant's.
      throw new MitosError("forbidden", "a tenant key may not build templates from OCI images", {
        remediation: `Build from a built-in image (${Object.keys(BUILTIN_RECIPES).join(", ")}) with packages and init, or ask an admin to build the OCI template.`,
        context: { field: "image" },
      });
    }
    return t.taken ? t.owner : this.owner(p);
  }

  /** A template `p` may change or delete: an admin any, a tenant its own (and none another owner's sandboxes use). */
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
    if (this.o.engine.list().some((s) => s.templateId === id && s.owner !== t.owner)) {
      throw new MitosError("conflict", `template ${id} is in use by sandboxes outside your tenant`, {
        remediation: "Ask an admin to delete it; force would terminate sandboxes that are not yours.",
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
