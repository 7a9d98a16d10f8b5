// E2B's sandbox plane on mitosd's one port (E2B-COMPAT.md §1): a request
// naming a sandbox by `E2b-Sandbox-Id`/`E2b-Sandbox-Port`, by a Host
// `<port>-<e2b id>.<domain>`, or a signed `/files` URL, is served here before
// mitosd's own routes see it. Port 49983 is envd (Connect services, /files,
// /health), every other port (49999, the code interpreter, included) is
// carried to the guest port over the agent channel.

import type http from "node:http";
import type { Duplex } from "node:stream";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { type Engine, MitosError, type SandboxInfo } from "@mitos/engine";
import { type PortTarget, proxyRequest, proxyUpgrade } from "../port-proxy.js";
import { type EnvdDeps, SANDBOX_HEADER } from "./envd-context.js";
import { registerFilesystem } from "./envd-filesystem.js";
import { registerProcess } from "./envd-process.js";
import { serveFiles, signatureMatches } from "./files.js";
import { E2B_ID_RE, fromE2bId, toE2bId } from "./ids.js";
import type { E2bRegistry } from "./registry.js";

export const ENVD_PORT = 49983;

export interface PlaneOptions {
  engine: Engine;
  registry: E2bRegistry;
  /** Domain of Host-routed requests, without the port. */
  domain: string;
  /** Whether an Authorization header's mitosd key reaches this sandbox's runtime (guest ports accept it too). */
  allowed(header: string | undefined, sandbox: string): boolean;
  log(msg: string, fields?: Record<string, unknown>): void;
}

interface PlaneTarget {
  e2bId: string;
  port: number;
  /** Resolved by a file URL's signature (no id in the request). */
  sandbox?: SandboxInfo;
}

/** Which sandbox and port a request is for on the E2B sandbox plane, or undefined. */
export function planeTarget(req: http.IncomingMessage, domain: string, o?: PlaneOptions): PlaneTarget | undefined {
  const header = req.headers["e2b-sandbox-id"];
  if (typeof header === "string") {
    const p = Number(req.headers["e2b-sandbox-port"] ?? ENVD_PORT);
    return { e2bId: header.toLowerCase(), port: Number.isInteger(p) ? p : -1 };
  }
  const host = (req.headers.host ?? "").toLowerCase().replace(/:\d+$/, "");
  const suffix = `.${domain.toLowerCase()}`;
  if (host.endsWith(suffix)) {
    const h = /^(\d{1,5})-([a-z0-9]+)$/.exec(host.slice(0, -suffix.length));
    if (h && E2B_ID_RE.test(h[2] as string)) return { e2bId: h[2] as string, port: Number(h[1]) };
  }
  // A signed file URL built from E2B_SANDBOX_URL names no sandbox: its signature does.
  if (o && (req.url ?? "").startsWith("/files?") && (req.url ?? "").includes("signature=")) {
    const url = new URL(req.url ?? "/", "http://x");
    for (const s of o.engine.list()) {
      const e2bId = toE2bId(s.id);
      // Only sandboxes E2B clients have reached hold a token to sign with.
      const r = e2bId && s.state === "ready" ? o.registry.existing(s) : undefined;
      if (!e2bId || !r) continue;
      if (signatureMatches(url, req.method ?? "GET", r.envdAccessToken)) {
        return { e2bId, port: ENVD_PORT, sandbox: s };
      }
    }
  }
  return undefined;
}

/** Puts the sandbox plane in front of the server's request and upgrade handlers. */
export function installE2bPlane(server: http.Server, o: PlaneOptions): void {
  const deps: EnvdDeps = { engine: o.engine, registry: o.registry };
  const envd = connectNodeAdapter({
    routes: (router) => {
      registerProcess(router, deps);
      registerFilesystem(router, deps);
    },
    jsonOptions: { ignoreUnknownFields: true },
    // envd's own answer for a path it does not serve: a JSON error, as every envd error is.
    fallback: (req, res) => {
      req.resume();
      res.writeHead(404, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ code: 404, message: `envd has no route ${req.method} ${(req.url ?? "/").split("?")[0]}` }),
      );
    },
  });
  for (const event of ["request", "upgrade"] as const) {
    const others = server.listeners(event) as Array<(...args: unknown[]) => void>;
    server.removeAllListeners(event);
    server.on(event, (req: http.IncomingMessage, ...rest: unknown[]) => {
      const t = planeTarget(req, o.domain, o);
      if (!t) {
        for (const l of others) l.call(server, req, ...rest);
        return;
      }
      const done =
        event === "request"
          ? serve(o, deps, envd, t, req, rest[0] as http.ServerResponse)
          : serveUpgrade(o, t, req, rest[0] as Duplex, rest[1] as Buffer);
      done.catch((err: Error) =>
        o.log("e2b sandbox plane failed", { sandbox: t.e2bId, port: t.port, error: err.message }),
      );
    });
  }
}

/** The live sandbox a target names; undefined when E2B must see it as gone (502). */
async function live(o: PlaneOptions, t: PlaneTarget): Promise<SandboxInfo | undefined> {
  const s = t.sandbox ?? fromE2bId(o.engine, t.e2bId);
  if (!s) return undefined;
  // A sandbox the idle timer put to sleep answers as if awake; one paused by the client does not.
  await o.engine.awake(s.id);
  const now = o.engine.list().find((x) => x.id === s.id);
  return now?.state === "ready" ? now : undefined;
}

async function serve(
  o: PlaneOptions,
  deps: EnvdDeps,
  envd: (req: http.IncomingMessage, res: http.ServerResponse) => void,
  t: PlaneTarget,
  req: http.IncomingMessage,
  res: http.ServerResponse,
): Promise<void> {
  const s = await live(o, t);
  if (!s) return gone(res, t.e2bId, req);
  const path = (req.url ?? "/").split("?")[0];
  const envdToken = header(req, "x-access-token");
  const tokenOk = o.registry.checkEnvdToken(s, envdToken);
  if (t.port === ENVD_PORT) {
    if (path === "/health") {
      req.resume();
      res.writeHead(204).end();
      return;
    }
    if (path === "/files") return serveFiles(req, res, deps, s, tokenOk);
    if (!tokenOk) return unauthorized(res, req, envdToken === undefined);
    delete req.headers[SANDBOX_HEADER];
    req.headers[SANDBOX_HEADER] = s.id;
    envd(req, res);
    return;
  }
  const target: PortTarget = { sandbox: s.id, port: t.port, path: req.url ?? "/" };
  return proxyRequest(o.engine, target, req, res, () => checkTraffic(o, s, t, req));
}

async function serveUpgrade(
  o: PlaneOptions,
  t: PlaneTarget,
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
): Promise<void> {
  const s = await live(o, t);
  if (!s || t.port === ENVD_PORT) {
    const body = JSON.stringify({ code: 502, message: "The sandbox was not found", sandboxId: t.e2bId });
    socket.end(
      `HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
    return;
  }
  const target: PortTarget = { sandbox: s.id, port: t.port, path: req.url ?? "/" };
  return proxyUpgrade(o.engine, target, req, socket, head, () => checkTraffic(o, s, t, req));
}

/** A guest port takes the sandbox's traffic token (or its envd token), or mitosd's API token. */
function checkTraffic(o: PlaneOptions, s: SandboxInfo, t: PlaneTarget, req: http.IncomingMessage): void {
  const given = header(req, "e2b-traffic-access-token") ?? header(req, "x-access-token");
  if (o.registry.checkTrafficToken(s, given) || o.allowed(req.headers.authorization, s.id)) return;
  throw new MitosError("unauthorized", `no access to port ${t.port} of sandbox ${t.e2bId}`, {
    remediation: "Send the sandbox's trafficAccessToken (from create) in E2B-Traffic-Access-Token.",
  });
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === "string" && v !== "" ? v : undefined;
}

/** E2B's answer for an unknown or stopped sandbox, which the SDKs read as "not running" (§1). */
function gone(res: http.ServerResponse, e2bId: string, req: http.IncomingMessage): void {
  req.resume();
  res.writeHead(502, { "content-type": "application/json" });
  res.end(JSON.stringify({ code: 502, message: "The sandbox was not found", sandboxId: e2bId }));
}

/** envd's 401, as a Connect error body (the RPC clients parse `code` as a Connect code). */
function unauthorized(res: http.ServerResponse, req: http.IncomingMessage, missing: boolean): void {
  req.resume();
  res.writeHead(401, { "content-type": "application/json" });
  res.end(
    JSON.stringify({
      code: "unauthenticated",
      message: missing ? "missing X-Access-Token" : "wrong X-Access-Token for this sandbox",
    }),
  );
}
