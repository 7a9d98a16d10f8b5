// The web console (docs/console.md): mitosd serves packages/console's static
// build at /ui. The pages hold no secret and call only the public API, so they
// are served without a token; everything they show comes from authenticated calls.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import fastifyStatic from "@fastify/static";
import type { FastifyInstance } from "fastify";

/** packages/console/dist beside this package, from src (tsx) or dist alike. */
export const DEFAULT_CONSOLE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../console/dist");

/** Everything the pages load comes from mitosd itself: no CDN, no external font, no inline script. */
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  // xterm.js and the tree set element styles from script.
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join("; ");

export async function registerConsole(app: FastifyInstance, dir = DEFAULT_CONSOLE_DIR): Promise<void> {
  app.get("/", { schema: { hide: true } }, async (_req, reply) => reply.redirect("/ui/"));
  if (!fs.existsSync(path.join(dir, "index.html"))) {
    app.get("/ui/*", { schema: { hide: true } }, async (_req, reply) =>
      reply
        .code(404)
        .type("text/plain; charset=utf-8")
        .send(
          `The console is not built (no ${dir}/index.html). Build it: npm run build (or npm run -w @mitos/console build).\n`,
        ),
    );
    return;
  }
  await app.register(fastifyStatic, {
    root: dir,
    prefix: "/ui/",
    cacheControl: false,
    // Hashed asset names change with every build; the page itself must not be cached.
    setHeaders(res, file) {
      res.setHeader("content-security-policy", CSP);
      res.setHeader("x-content-type-options", "nosniff");
      res.setHeader("referrer-policy", "no-referrer");
      res.setHeader(
        "cache-control",
        file.includes(`${path.sep}assets${path.sep}`) ? "public, max-age=31536000, immutable" : "no-store",
      );
    },
  });
  app.get("/ui", { schema: { hide: true } }, async (_req, reply) => reply.redirect("/ui/"));
}
