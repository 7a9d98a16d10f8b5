// mitosd: one fastify server for the lifecycle API and the Connect runtime.

import type { Socket } from "node:net";
import type { Interceptor } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Engine, type EngineOptions, MitosError, noSandbox } from "@mitos/engine";
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from "fastify";
import { Access } from "./access.js";
import { ApiKeys } from "./api-keys.js";
import { AuditLog, audited, auditNote, auditWho, bodySandbox } from "./audit.js";
import { authorizationOf, ensureToken } from "./auth.js";
import { isLoopback } from "./config.js";
import { unknownConnectMethod } from "./connect-fallback.js";
import { registerConsole } from "./console-routes.js";
import { registerContexts } from "./contexts.js";
import { e2bNotFound, isE2bControlPath, registerE2bControl } from "./e2b/control.js";
import { registerE2bKeys } from "./e2b/key-routes.js";
import { E2bKeys } from "./e2b/keys.js";
import { installE2bPlane } from "./e2b/plane.js";
import { E2bRegistry } from "./e2b/registry.js";
import { envelope, fieldOf, HTTP_STATUS, toConnectError, toMitosError } from "./errors.js";
import { registerEvents, SandboxWatch } from "./events.js";
import { registerExecSocket } from "./exec-socket.js";
import { registerFileRoutes } from "./file-routes.js";
import { serveH2c } from "./h2c.js";
import { IdempotencyCache } from "./idempotency.js";
import { registerKeys } from "./key-routes.js";
import { registerLifecycle } from "./lifecycle.js";
import { createMetrics } from "./metrics.js";
import { registerOpenApi } from "./openapi.js";
import { installPortProxy, PortTokens, registerExpose } from "./port-proxy.js";
import { authorizeRoute, routeSandbox } from "./route-policy.js";
import { registerRuntime } from "./runtime.js";
import { SandboxTokens } from "./sandbox-tokens.js";

/** A Connect or gRPC call: /package.Service/Method. */
const RPC_PATH = /^\/\w+(\.\w+)+\/\w+(\?|$)/;
export const VERSION = "0.1.0";
/** How long close() lets open streams finish before it cuts their connections. */
const CLOSE_GRACE_MS = 2000;
/** 4 MiB: a 256 KiB WriteFile chunk is ~350 KB as base64 JSON; nothing legitimate comes close. */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 << 20;

export interface ServerOptions extends EngineOptions {
  /** The console's static build served at /ui (default: packages/console/dist beside the server). */
  consoleDir?: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Override the token (tests); default: the token file in the data dir. */
  token?: string;
  /** Bearer tokens accepted besides the daemon's own (a cluster gateway's credential). */
  extraTokens?: string[];
  /** "token" (default) or "none": no token needed, for local development; refused unless host is loopback. */
  auth?: "token" | "none";
  maxExecTimeoutSeconds?: number;
  /** Request body limit for JSON routes (bytes). */
  bodyLimit?: number;
  /**
   * Largest single Connect message (a unary body, or one envelope of a stream;
   * bytes). Streams as a whole are unbounded: a WriteFile sends many messages.
   */
  maxMessageBytes?: number;
  logLevel?: string;
  /** Domain of Host-routed port URLs, `<port>-<id>.<domain>:<listen port>` (default localhost; docs/ports.md). */
  domain?: string;
}

export interface MitosServer {
  url: string;
  token: string;
  tokenFile: string;
  engine: Engine;
  app: FastifyInstance;
  close(opts?: { killSandboxes?: boolean }): Promise<void>;
}

export async function createServer(opts: ServerOptions = {}): Promise<MitosServer> {
  const authMode = opts.auth ?? "token";
  if (authMode === "none" && !isLoopback(opts.host ?? "127.0.0.1")) {
    throw new MitosError("invalid_input", `auth "none" is refused on ${opts.host}: it is for loopback addresses only`, {
      remediation: "Listen on 127.0.0.1 or ::1, or keep the bearer token.",
    });
  }
  const app = Fastify({
    logger: { level: opts.logLevel ?? "info" },
    // One line per request when it ends (below), not Fastify's two.
    disableRequestLogging: true,
    bodyLimit: opts.bodyLimit ?? 1 << 20,
    // Let the engine's own timeouts decide; a fork of many VMs may take a while.
    requestTimeout: 0,
    // Validate types as sent: "template": 7 is an error, not "7".
    ajv: { customOptions: { coerceTypes: false } },
    // Router-level refusals (a malformed URL, a path segment over 100 characters) in the API envelope too.
    frameworkErrors: (err, _req, reply) => {
      const m = new MitosError("invalid_input", `the URL is not acceptable: ${err.message.slice(0, 200)}`, {
        remediation: "Use a route from GET /openapi.json; ids are at most 64 characters.",
      });
      (reply as FastifyReply).code(400).send(envelope(m));
    },
  });
  // Remote procedure calls (/package.Service/Method: exec, files, E2B's envd) come by the thousand and
  // each is in the audit log: their lines are debug, one write to stdout fewer per call.
  app.addHook("onResponse", async (req, reply) => {
    const quiet = req.url === "/v1/health" || RPC_PATH.test(req.url);
    req.log[quiet ? "debug" : "info"](
      { method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) },
      "request",
    );
  });
  // Tenants' caps live in the key store, which needs the engine's data dir: looked up at each admission.
  let keys: ApiKeys | undefined;
  const engine = await Engine.open({
    prepareTemplates: ["python"],
    ...opts,
    ownerLimits: (owner) => keys?.limitsOf(owner),
    log: (msg, fields) => app.log.info(fields ?? {}, msg),
  });
  keys = new ApiKeys(engine.dataDir);
  const tokenInfo = opts.token ? { token: opts.token, path: "(given)", created: false } : ensureToken(engine.dataDir);
  const token = tokenInfo.token;
  const sandboxTokens = new SandboxTokens(engine.dataDir, (id) => {
    try {
      return engine.get(id).createdAt;
    } catch {
      return undefined;
    }
  });
  const access = new Access({
    engine,
    mode: authMode,
    adminToken: token,
    extraTokens: opts.extraTokens ?? [],
    keys,
    sandboxTokens,
  });
  const audit = new AuditLog(engine.dataDir);
  /**
   * Whether an Authorization header reaches the runtime of a sandbox (guest
   * ports): false without a valid credential; a valid one that may not reach
   * it answers as an unknown sandbox would (not_found).
   */
  const allowed = (header: string | undefined | null, sandbox: string) => {
    const p = access.resolve(header);
    if (!p) return false;
    if (!access.runtime(p, sandbox)) throw noSandbox(sandbox);
    return true;
  };
  const unauthorized = () =>
    new MitosError("unauthorized", "missing or wrong bearer token", {
      remediation: `Send Authorization: Bearer <token>: the daemon's token (in ${tokenInfo.path}, or set MITOS_API_KEY), an API key, or a sandbox's token.`,
    });
  const metrics = createMetrics(engine);
  const host = opts.host ?? "127.0.0.1";

  app.setErrorHandler((err: FastifyError, req, reply) => {
    let m: MitosError;
    if (err.code === "FST_ERR_CTP_INVALID_JSON_BODY" || (err instanceof SyntaxError && err.statusCode === 400)) {
      m = new MitosError("invalid_json", `the request body is not valid JSON: ${err.message}`, {
        remediation: "Send a JSON object with Content-Type: application/json.",
      });
    } else if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
      m = new MitosError("body_too_large", "the request body is too large", {
        remediation: `Keep JSON bodies under ${opts.bodyLimit ?? 1 << 20} bytes; send files with WriteFile.`,
      });
    } else if (err.code === "FST_ERR_CTP_EMPTY_JSON_BODY") {
      m = new MitosError("invalid_json", "the request body is empty", { remediation: "Send a JSON object, e.g. {}." });
    } else if (err.validation) {
      const problems = err.validation.map((v) => `${fieldOf(v) ?? "body"} ${v.message ?? ""}`.trim());
      m = new MitosError("invalid_input", `invalid request: ${problems.join("; ")}`, {
        remediation: "Fix the named field; GET /openapi.json describes every route's body.",
        context: { field: err.validation[0] ? fieldOf(err.validation[0]) : undefined, problems },
      });
    } else if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
      m = new MitosError("invalid_input", "unsupported Content-Type", {
        remediation: "Use Content-Type: application/json.",
      });
    } else {
      m = toMitosError(err);
      if (m.code === "internal") app.log.error(err, "unhandled error");
    }
    auditNote(req, { error: m.code });
    reply.code(HTTP_STATUS[m.code] ?? 500).send(envelope(m));
  });
  app.setNotFoundHandler((req, reply) => {
    // A Connect call to a method mitosd does not serve: Connect's own unimplemented error.
    if (unknownConnectMethod(req, reply)) return;
    if (isE2bControlPath(req.url)) return e2bNotFound(req, reply);
    const m = new MitosError("not_found", `no route ${req.method} ${req.url.split("?")[0]}`, {
      remediation: "See the API reference: lifecycle routes live under /v1/, runtime calls under /sandbox.v1.Sandbox/.",
    });
    reply.code(404).send(envelope(m));
  });

  // Lifecycle routes check the bearer token and the route here; runtime calls
  // in the Connect interceptor, so errors come back in the Connect format.
  app.decorateRequest("principal", undefined);
  app.addHook("onRequest", async (req, reply) => {
    const connectCall = req.method === "POST" && req.url.startsWith("/sandbox.v1.Sandbox/");
    // The E2B control plane checks its own keys (e2b/control.ts).
    if (req.url === "/v1/health" || connectCall || isE2bControlPath(req.url) || isConsolePage(req.url)) return;
    const p = access.resolve(authorizationOf(req.headers));
    if (!p) {
      auditNote(req, { error: "unauthorized" });
      return reply.code(401).send(envelope(unauthorized()));
    }
    req.principal = p;
    authorizeRoute(access, p, req);
  });
  // Every call that acts (any method but reads, and the WebSocket exec), every refusal, and what a
  // tenant or sandbox token looked for and did not find (probing for others' ids).
  app.addHook("onResponse", async (req, reply) => {
    const route = req.routeOptions.url;
    if (route === undefined || route === "/v1/health" || isE2bControlPath(req.url)) return;
    const acts = req.method !== "GET" && req.method !== "HEAD" && req.method !== "OPTIONS";
    const refused =
      reply.statusCode === 401 ||
      reply.statusCode === 403 ||
      (reply.statusCode === 404 && req.principal !== undefined && req.principal.kind !== "admin");
    if (!acts && route !== "/sandbox.v1.Sandbox/Exec" && !refused) return;
    if (req.method === "POST" && req.url.startsWith("/sandbox.v1.Sandbox/")) return; // the interceptor's
    const note = auditNote(req);
    const sandbox = routeSandbox(req) ?? bodySandbox(req.body);
    audit.write({
      ...auditWho(req.principal),
      action: `${req.method} ${route}`,
      ...(sandbox ? { sandbox } : {}),
      ...(note.created?.length ? { created: note.created } : {}),
      status: reply.statusCode,
      ...(note.error ? { error: note.error } : {}),
      ms: Math.round(reply.elapsedTime),
    });
  });
  // An upgrade answered with an error (401, 404) would otherwise leave its socket open: one leaked per attempt.
  app.addHook("onResponse", async (req, reply) => {
    if (req.headers.upgrade && reply.statusCode !== 101) req.raw.socket?.destroy();
  });
  // Runtime calls: the key must reach the sandbox named by X-Sandbox-Id; each call is audited when it ends.
  const auth: Interceptor = (next) => async (req) => {
    const p = access.resolve(req.header.get("authorization"));
    const sandbox = req.header.get("x-sandbox-id") ?? "";
    const started = Date.now();
    const action = `${req.service.typeName}/${req.method.name}`;
    const record = (err?: unknown) =>
      audit.write({
        ...auditWho(p),
        action,
        ...(sandbox ? { sandbox } : {}),
        status: err === undefined ? 200 : (HTTP_STATUS[toMitosError(err).code] ?? 500),
        ...(err === undefined ? {} : { error: toMitosError(err).code }),
        ms: Date.now() - started,
      });
    try {
      if (!p) throw unauthorized();
      if (!access.runtime(p, sandbox)) throw noSandbox(sandbox);
      const res = await next(req);
      if (!res.stream) {
        record();
        return res;
      }
      return { ...res, message: audited(res.message, record) };
    } catch (err) {
      record(err);
      throw err instanceof MitosError ? toConnectError(err) : err;
    }
  };

  let url = "";
  const maxExecTimeoutSeconds = opts.maxExecTimeoutSeconds ?? 3600;
  const readMaxBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  await app.register(fastifyConnectPlugin, {
    routes: (router) => registerRuntime(router, { engine, maxExecTimeoutSeconds, metrics }),
    interceptors: [auth],
    readMaxBytes,
    // Emit zero values too ({"exitCode":0}), so plain-JSON clients need no proto3 defaults.
    jsonOptions: { alwaysEmitImplicit: true },
  });
  // After the Connect plugin, which keeps its own parsers. JSON bodies: an empty body is no body (DELETE with a Content-Type header),
  // and malformed JSON is `invalid_json` with the parser's reason.
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (_req, text, done) => {
    const s = String(text);
    if (s.trim() === "") return done(null, undefined);
    try {
      done(null, JSON.parse(s));
    } catch (e) {
      done(
        new MitosError("invalid_json", `the request body is not valid JSON: ${(e as Error).message}`, {
          remediation: "Send a JSON object with Content-Type: application/json.",
        }),
        undefined,
      );
    }
  });

  await registerExecSocket(app, { engine, maxExecTimeoutSeconds, maxMessageBytes: readMaxBytes });
  await registerOpenApi(app, VERSION);
  registerKeys(app, keys);
  const { sandboxJson } = registerLifecycle(app, {
    engine,
    access,
    sandboxTokens,
    tenantLimits: (t) => keys?.limitsOf(t),
    version: VERSION,
    metrics,
    idempotency: new IdempotencyCache(),
    endpoint: () => url,
    domain: () => `${domain}:${listenPort}`,
    auth: authMode,
  });
  registerEvents(app, new SandboxWatch(engine, access, sandboxJson));
  registerFileRoutes(app, engine);
  await registerConsole(app, opts.consoleDir);

  // HTTP/2 cleartext (prior knowledge) on the same port: the runtime service
  // with the bidi Exec, for clients such as connect-node with httpVersion "2".
  const h2 = serveH2c(
    app.server,
    connectNodeAdapter({
      routes: (router) => registerRuntime(router, { engine, maxExecTimeoutSeconds, metrics }, true),
      interceptors: [auth],
      readMaxBytes,
      jsonOptions: { alwaysEmitImplicit: true },
    }),
  );

  const domain = opts.domain ?? "localhost";
  const portTokens = new PortTokens((id) => engine.list().find((s) => s.id === id)?.createdAt);
  let listenPort = opts.port ?? 8080;
  const portHost = (id: string, p: number) => `${p}-${id}.${domain}:${listenPort}`;
  registerExpose(app, { engine, tokens: portTokens, url: () => url, host: portHost });
  registerContexts(app, engine);
  const e2bKeys = new E2bKeys(engine.dataDir);
  const e2bRegistry = new E2bRegistry(engine.dataDir, engine);
  registerE2bKeys(app, e2bKeys);
  await registerE2bControl(app, {
    engine,
    keys: e2bKeys,
    registry: e2bRegistry,
    domain: () => `${domain}:${listenPort}`,
  });
  // In front of fastify's own request and upgrade handlers (which exist once it is ready).
  await app.ready();
  installPortProxy(
    app.server,
    { engine, allowed, domain, log: (msg, fields) => app.log.info(fields ?? {}, msg) },
    portTokens,
  );
  // In front of the port proxy: E2B's sandbox plane names sandboxes its own way.
  installE2bPlane(app.server, {
    engine,
    registry: e2bRegistry,
    domain,
    allowed,
    log: (msg, fields) => app.log.info(fields ?? {}, msg),
  });
  // Every connection, upgraded and h2c ones included, so close() can cut what is left.
  const sockets = new Set<Socket>();
  app.server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  await app.listen({ host, port: opts.port ?? 8080 });
  const addr = app.server.address();
  const port = typeof addr === "object" && addr ? addr.port : (opts.port ?? 8080);
  listenPort = port;
  url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  app.log.info(
    { url, auth: authMode, token_file: tokenInfo.path, data_dir: engine.dataDir, accel: engine.accel },
    "mitosd listening",
  );
  if (authMode === "none") {
    app.log.warn(
      { url },
      "AUTH IS OFF (--auth none): any local process can create, exec in and terminate every sandbox; for local development only",
    );
  }

  return {
    url,
    token,
    tokenFile: tokenInfo.path,
    engine,
    app,
    async close(o = {}) {
      h2.close();
      // Streams still open (an exec, a terminal, an h2c session) would hold the close
      // forever: they get a short grace, then their connections are cut.
      const cut = setTimeout(() => {
        for (const s of sockets) s.destroy();
      }, CLOSE_GRACE_MS);
      try {
        await app.close();
      } finally {
        clearTimeout(cut);
      }
      await engine.close({ killSandboxes: o.killSandboxes ?? true });
    },
  };
}

/** The console's pages (and / that leads to them): no secret in them, served without a token. */
function isConsolePage(url: string): boolean {
  return url === "/" || url === "/ui" || url.startsWith("/ui/") || url.startsWith("/ui?");
}
