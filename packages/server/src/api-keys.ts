// API keys with scopes (docs/security.md "Keys"): besides the daemon's own
// admin token, keys made with `mitos key create` are either admin keys or a
// tenant's. A tenant's key sees and touches only its tenant's sandboxes,
// checkpoints and templates (and the shared templates an admin built), under
// the tenant's own spend caps. Keys are stored as hashes in <data>/keys.json;
// tenants and their caps in <data>/tenants.json.

import { randomBytes } from "node:crypto";
import path from "node:path";
import { ID_RE, MitosError, OWNER_LIMIT_NAMES, type OwnerLimits } from "@mitos/engine";
import { HashedKeys, type KeyInfo } from "./hashed-keys.js";
import { readJson, writeJson } from "./json-file.js";

export type Scope = "admin" | "tenant";

export interface ApiKeyScope {
  scope: Scope;
  /** The tenant a tenant key acts for. */
  tenant?: string;
}

export type ApiKey = KeyInfo & ApiKeyScope;

export interface Tenant {
  name: string;
  /** Its caps beside the host's; an unset one is not checked. */
  limits: OwnerLimits;
  createdAt: string;
}

export interface CreateKey {
  name?: string;
  scope: Scope;
  tenant?: string;
  /** A tenant's caps (checked: checkOwnerLimits): set when given, replacing the tenant's; kept when not. */
  limits?: OwnerLimits;
}

export class ApiKeys {
  private readonly keys: HashedKeys<ApiKeyScope>;
  private readonly tenantsFile: string;
  private tenants: Record<string, Tenant>;

  constructor(dataDir: string) {
    this.keys = new HashedKeys(path.join(dataDir, "keys.json"), () => `mk_${randomBytes(24).toString("hex")}`, "key");
    this.tenantsFile = path.join(dataDir, "tenants.json");
    this.tenants = readJson<Record<string, Tenant>>(this.tenantsFile) ?? {};
  }

  /** A new key (its value is shown this once); a tenant key creates its tenant or updates its caps. */
  create(c: CreateKey): ApiKey & { key: string } {
    if (c.scope !== "admin" && c.scope !== "tenant") {
      throw new MitosError("invalid_input", `scope must be "admin" or "tenant", got ${JSON.stringify(c.scope)}`, {
        remediation: 'Pass {"scope": "tenant", "tenant": "<name>"} for a tenant, or {"scope": "admin"}.',
        context: { field: "scope" },
      });
    }
    if (c.scope === "admin") {
      if (c.tenant !== undefined || c.limits !== undefined) {
        throw new MitosError("invalid_input", "an admin key has no tenant and no limits", {
          remediation: 'Drop tenant and limits, or create a tenant key ({"scope": "tenant", "tenant": ...}).',
          context: { field: c.tenant !== undefined ? "tenant" : "limits" },
        });
      }
      return this.keys.create(c.name ?? "", { scope: "admin" });
    }
    const tenant = c.tenant;
    if (tenant === undefined || !ID_RE.test(tenant)) {
      throw new MitosError("invalid_input", `a tenant key needs a tenant name, got ${JSON.stringify(tenant)}`, {
        remediation: "Name the tenant: 1-64 letters, digits, '_' or '-', starting with a letter or digit.",
        context: { field: "tenant" },
      });
    }
    const limits = c.limits;
    const known = this.tenants[tenant];
    if (!known || limits) {
      this.tenants[tenant] = {
        name: tenant,
        limits: limits ?? known?.limits ?? {},
        createdAt: known?.createdAt ?? new Date().toISOString(),
      };
      writeJson(this.tenantsFile, this.tenants);
    }
    return this.keys.create(c.name ?? "", { scope: "tenant", tenant });
  }

  list(): ApiKey[] {
    return this.keys.list();
  }

  revoke(id: string): ApiKey {
    return this.keys.revoke(id, "List keys with `mitos key ls` (GET /v1/keys).");
  }

  find(token: string | undefined): ApiKey | undefined {
    return this.keys.find(token);
  }

  /** Whether any key of the tenant is live (revoking every one locks the tenant out). */
  tenantHasKeys(tenant: string): boolean {
    return this.keys.list().some((k) => k.scope === "tenant" && k.tenant === tenant);
  }

  tenant(name: string): Tenant | undefined {
    return this.tenants[name];
  }

  /** A tenant's caps, for the engine's admission (OwnerLimits). */
  limitsOf(tenant: string): OwnerLimits | undefined {
    return this.tenants[tenant]?.limits;
  }
}

/** Caps as sent (snake_case or the engine's names), checked: known names, whole numbers ≥ 1. */
export function checkOwnerLimits(given: unknown): OwnerLimits {
  if (typeof given !== "object" || given === null || Array.isArray(given)) {
    throw new MitosError("invalid_input", "limits must be an object", {
      remediation: `Pass e.g. {"max_sandboxes": 10}; known limits: ${Object.values(OWNER_LIMIT_NAMES).join(", ")}.`,
      context: { field: "limits" },
    });
  }
  const out: OwnerLimits = {};
  const byWire = new Map(Object.entries(OWNER_LIMIT_NAMES).map(([k, wire]) => [wire, k as keyof OwnerLimits]));
  for (const [name, value] of Object.entries(given)) {
    const key = byWire.get(name as (typeof OWNER_LIMIT_NAMES)[keyof OwnerLimits]);
    if (!key) {
      throw new MitosError("invalid_input", `unknown limit ${JSON.stringify(name)}`, {
        remediation: `Known limits: ${Object.values(OWNER_LIMIT_NAMES).join(", ")}.`,
        context: { field: `limits.${name}` },
      });
    }
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
      throw new MitosError("invalid_input", `limits.${name} must be a whole number of at least 1`, {
        remediation: `Set ${name} to a positive whole number (or leave it out: no cap of the tenant's own).`,
        context: { field: `limits.${name}` },
      });
    }
    out[key] = value;
  }
  return out;
}

/** The wire form of a tenant's caps (snake_case). */
export function ownerLimitsJson(l: OwnerLimits): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, wire] of Object.entries(OWNER_LIMIT_NAMES)) {
    const v = l[k as keyof OwnerLimits];
    if (v !== undefined) out[wire] = v;
  }
  return out;
}
