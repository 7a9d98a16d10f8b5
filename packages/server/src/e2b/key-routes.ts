// Admin routes for E2B API keys (admin bearer token): `mitos e2b key create|ls|rm`.

import type { FastifyInstance } from "fastify";
import { readBody, str } from "../body.js";
import type { E2bKeyInfo, E2bKeys } from "./keys.js";

const keyJson = (k: E2bKeyInfo) => ({ id: k.id, name: k.name, prefix: k.prefix, created_at: k.createdAt });

export function registerE2bKeys(app: FastifyInstance, keys: E2bKeys): void {
  app.post("/v1/e2b/keys", async (req, reply) => {
    const b = readBody(req, ["name"]);
    const k = keys.create(str(b, "name") ?? "");
    return reply.code(201).send({ ...keyJson(k), key: k.key });
  });
  app.get("/v1/e2b/keys", async () => keys.list().map(keyJson));
  app.delete<{ Params: { id: string } }>("/v1/e2b/keys/:id", async (req, reply) => {
    keys.revoke(req.params.id);
    return reply.code(204).send();
  });
}
