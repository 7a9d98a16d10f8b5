// Which lifecycle routes each kind of principal reaches (docs/security.md),
// checked once per request before the handler runs; the handlers filter
// lists and check sandboxes named in bodies (access.ts). Runtime (Connect)
// calls are checked in their interceptor instead.

import { MitosError, noSandbox } from "@mitos/engine";
import type { FastifyRequest } from "fastify";
import type { Access, Principal } from "./access.js";
import type { SandboxTokenKind } from "./sandbox-tokens.js";

/** Routes a per-sandbox token reaches, on its own sandbox only, and which kind of token. */
const SANDBOX_TOKEN_ROUTES: Record<string, SandboxTokenKind[]> = {
  "GET /v1/sandboxes/:id": ["runtime", "fork"],
  "POST /v1/sandboxes/:id/fork": ["fork"],
  "GET /v1/sandboxes/:id/contexts": ["runtime"],
  "POST /v1/sandboxes/:id/contexts": ["runtime"],
  "POST /v1/sandboxes/:id/contexts/:context/restart": ["runtime"],
  "DELETE /v1/sandboxes/:id/contexts/:context": ["runtime"],
  "POST /v1/sandboxes/:id/expose/:port": ["runtime"],
  "GET /sandbox.v1.Sandbox/Exec": ["runtime"],
  "GET /v1/sandboxes/:id/files": ["runtime"],
  "PUT /v1/sandboxes/:id/files": ["runtime"],
};

/** Route prefixes only an admin reaches: keys, host-wide pools and figures. */
const ADMIN_ONLY = ["/v1/keys", "/v1/e2b/keys", "/v1/pools", "/v1/metering", "/metrics"];

/** The sandbox a route acts on: its :id under /v1/sandboxes, or the WebSocket exec's ?sandbox=. */
export function routeSandbox(req: FastifyRequest): string | undefined {
  const route = req.routeOptions.url ?? "";
  if (route.startsWith("/v1/sandboxes/:id")) return (req.params as { id?: string }).id;
  if (route === "/sandbox.v1.Sandbox/Exec") {
    const q = (req.query as { sandbox?: string }).sandbox;
    return q ?? (req.headers["x-sandbox-id"] as string | undefined) ?? "";
  }
  return undefined;
}

/** Throws the error a principal gets for a route it may not use (404 for what it may not see). */
export function authorizeRoute(access: Access, p: Principal, req: FastifyRequest): void {
  if (p.kind === "admin") return;
  const route = req.routeOptions.url;
  // An unknown route: the not-found handler answers alike for everyone.
  if (route === undefined) return;
  const sandbox = routeSandbox(req);
  if (p.kind === "sandbox") {
    const kinds = SANDBOX_TOKEN_ROUTES[`${req.method} ${route}`];
    if (!kinds || sandbox === undefined || !kinds.includes(p.token)) {
      throw new MitosError("not_found", `${req.method} ${req.url.split("?")[0]} is not reachable with this token`, {
        remediation:
          "A sandbox's token reaches its runtime API (exec, files, PTY, ports) and its fork token forks it; use an API key for the rest.",
      });
    }
    // Another sandbox answers as an unknown one.
    if (sandbox !== p.sandbox) throw noSandbox(sandbox);
    return;
  }
  if (ADMIN_ONLY.some((r) => route === r || route.startsWith(`${r}/`))) access.admin(p, `${req.method} ${route}`);
  if (sandbox !== undefined) access.sandbox(p, sandbox);
  if (route.startsWith("/v1/checkpoints/:id")) access.checkpoint(p, (req.params as { id: string }).id);
  if (req.method === "DELETE" && route === "/v1/templates/:id")
    access.ownTemplate(p, (req.params as { id: string }).id);
}
