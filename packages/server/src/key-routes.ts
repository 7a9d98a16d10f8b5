// API key routes (admin only; docs/security.md "Keys"): `mitos key create|ls|rm`.

import type { FastifyInstance } from "fastify";
import { type ApiKey, type ApiKeys, checkOwnerLimits, ownerLimitsJson, type Scope } from "./api-keys.js";
import { readBody, str } from "./body.js";
import { routeSchemas } from "./openapi.js";

export function registerKeys(app: FastifyInstance, keys: ApiKeys): void {
  const keyJson = (k: ApiKey) => {
    const limits = k.tenant === undefined ? undefined : keys.tenant(k.tenant)?.limits;
    return {
      id: k.id,
      name: k.name,
      prefix: k.prefix,
      scope: k.scope,
      tenant: k.tenant ?? null,
      limits: limits ? ownerLimitsJson(limits) : null,
      created_at: k.createdAt,
    };
  };
  app.post("/v1/keys", { schema: routeSchemas.createKey }, async (req, reply) => {
    const b = readBody(req, ["name", "scope", "tenant", "limits"]);
    // ApiKeys.create checks the scope's value.
    const scope = str(b, "scope", true) as Scope;
    const name = str(b, "name");
    const tenant = str(b, "tenant");
    const k = keys.create({
      scope,
      ...(name !== undefined ? { name } : {}),
      ...(tenant !== undefined ? { tenant } : {}),
      ...(b.limits !== undefined ? { limits: checkOwnerLimits(b.limits) } : {}),
    });
    return reply.code(201).send({ ...keyJson(k), key: k.key });
  });
  app.get("/v1/keys", { schema: routeSchemas.listKeys }, async () => keys.list().map(keyJson));
  app.delete<{ Params: { id: string } }>("/v1/keys/:id", { schema: routeSchemas.revokeKey }, async (req) => {
    keys.revoke(req.params.id);
    return { status: "revoked", id: req.params.id };
  });
}
