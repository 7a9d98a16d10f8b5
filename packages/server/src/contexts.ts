// The code interpreter's contexts (docs/code-interpreter.md): independent
// kernels in one sandbox, as E2B exposes them. Cells run in them over the
// runtime's RunCodeStream with context_id.

import type { Engine } from "@mitos/engine";
import type { FastifyInstance } from "fastify";
import { optional, readBody, str } from "./body.js";
import { routeSchemas } from "./openapi.js";

interface Ctx {
  Params: { id: string; context: string };
}

export function registerContexts(app: FastifyInstance, engine: Engine): void {
  const interpreter = async (id: string) => {
    await engine.awake(id);
    return engine.interpreter(id);
  };
  app.get<{ Params: { id: string } }>(
    "/v1/sandboxes/:id/contexts",
    { schema: routeSchemas.listContexts },
    async (req) => (await interpreter(req.params.id)).listContexts(),
  );
  app.post<{ Params: { id: string } }>(
    "/v1/sandboxes/:id/contexts",
    { schema: routeSchemas.createContext },
    async (req) => {
      const b = readBody(req, ["language", "cwd"]);
      return (await interpreter(req.params.id)).createContext({
        ...optional("language", str(b, "language")),
        ...optional("cwd", str(b, "cwd")),
      });
    },
  );
  app.post<Ctx>(
    "/v1/sandboxes/:id/contexts/:context/restart",
    { schema: routeSchemas.restartContext },
    async (req, reply) => {
      await (await interpreter(req.params.id)).restartContext(req.params.context);
      reply.code(204).send();
    },
  );
  app.delete<Ctx>("/v1/sandboxes/:id/contexts/:context", { schema: routeSchemas.removeContext }, async (req, reply) => {
    await (await interpreter(req.params.id)).removeContext(req.params.context);
    reply.code(204).send();
  });
}
