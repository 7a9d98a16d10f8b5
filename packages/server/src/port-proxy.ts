// Inbound ports without a NIC (docs/ports.md): HTTP and WebSocket requests
// for a guest port, named by path `/v1/sandboxes/{id}/ports/{port}/…` or by
// Host `<port>-<id>.<domain>`, are carried to the guest over a port-forward
// stream of the agent channel. Node's HTTP client speaks HTTP over that
// stream (createConnection), so nothing here parses HTTP; bodies and
// upgraded connections are piped, never buffered.

import { randomBytes, timingSafeEqual } from "node:crypto";
import http from "node:http";
import type { Duplex } from "node:stream";
import { type Engine, MitosError } from "@mitos/engine";
import type { FastifyInstance } from "fastify";
import { envelope, HTTP_STATUS } from "./errors.js";

const PATH_RE = /^\/v1\/sandboxes\/([A-Za-z0-9][A-Za-z0-9_-]{0,63})\/ports\/(\d{1,5})(\/[^?]*)?(\?.*)?$/;
/** The header a per-port access token travels in (the API token goes in Authorization). */
export const PORT_TOKEN_HEADER = "x-mitos-port-token";

export interface PortTarget {
  sandbox: string;
  port: number;
  /** Path and query as the guest server sees them. */
  path: string;
}

export interface PortProxyOptions {
  engine: Engine;
  /** Whether an Authorization header's key reaches this sandbox's runtime; throws not_found for a key that may not (app.ts). */
  allowed(header: string | undefined, sandbox: string): boolean;
  /** Domain of Host-routed requests (`<port>-<id>.<domain>`), without the port. */
  domain: string;
  log(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * Per-port access tokens made by `POST /v1/sandboxes/{id}/expose/{port}`,
 * keyed by the sandbox's creation time too: a later sandbox reusing an id
 * never inherits a token.
 */
export class PortTokens {
  private readonly tokens = new Map<string, string>();

  constructor(private readonly createdAt: (sandbox: string) => string | undefined) {}

  issue(sandbox: string, port: number): string {
    const key = `${sandbox}:${this.createdAt(sandbox)}:${port}`;
    let t = this.tokens.get(key);
    if (!t) {
      t = `mpt_${randomBytes(24).toString("hex")}`;
      this.tokens.set(key, t);
    }
    return t;
  }

  check(sandbox: string, port: number, given: string | undefined): boolean {
    const t = this.tokens.get(`${sandbox}:${this.createdAt(sandbox)}:${port}`);
    if (!t || !given) return false;
    const a = Buffer.from(t);
    const b = Buffer.from(given);
    return a.length === b.length && timingSafeEqual(a, b);
  }
}

/** Which guest port a request is for, or undefined when it is an API request. */
export function portTarget(req: http.IncomingMessage, domain: string): PortTarget | undefined {
  const url = req.url ?? "/";
  const m = PATH_RE.exec(url);
  if (m) return { sandbox: m[1] as string, port: Number(m[2]), path: `${m[3] ?? "/"}${m[4] ?? ""}` };
  const host = (req.headers.host ?? "").toLowerCase().replace(/:\d+$/, "");
  const suffix = `.${domain.toLowerCase()}`;
  if (!host.endsWith(suffix)) return undefined;
  const h = /^(\d{1,5})-([a-z0-9][a-z0-9_-]{0,63})$/.exec(host.slice(0, -suffix.length));
  return h ? { sandbox: h[2] as string, port: Number(h[1]), path: url } : undefined;
}

/**
 * Puts the port proxy in front of the server's own request and upgrade
 * handlers: requests for a guest port are served here, all others go on.
 */
export function installPortProxy(server: http.Server, o: PortProxyOptions, tokens: PortTokens): void {
  for (const event of ["request", "upgrade"] as const) {
    const others = server.listeners(event) as Array<(...args: unknown[]) => void>;
    server.removeAllListeners(event);
    server.on(event, (req: http.IncomingMessage, ...rest: unknown[]) => {
      const target = portTarget(req, o.domain);
      if (!target) {
        for (const l of others) l.call(server, req, ...rest);
        return;
      }
      const done =
        event === "request"
          ? proxyRequest(o.engine, target, req, rest[0] as http.ServerResponse, () =>
              checkAccess(o, tokens, target, req),
            )
          : proxyUpgrade(o.engine, target, req, rest[0] as Duplex, rest[1] as Buffer, () =>
              checkAccess(o, tokens, target, req),
            );
      done.catch((err: Error) =>
        o.log("port proxy failed", { sandbox: target.sandbox, port: target.port, error: err.message }),
      );
    });
  }
}

/** Whether a request may reach a port: the API token, or the port's own token. Throws MitosError. */
function checkAccess(o: PortProxyOptions, tokens: PortTokens, t: PortTarget, req: http.IncomingMessage): void {
  const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
  const portToken = (req.headers[PORT_TOKEN_HEADER] as string | undefined) ?? bearer;
  // A port's own token first: an API key that may not reach the sandbox answers not_found (o.allowed throws).
  if (!tokens.check(t.sandbox, t.port, portToken) && !o.allowed(req.headers.authorization, t.sandbox)) {
    throw new MitosError("unauthorized", `no access to port ${t.port} of sandbox ${t.sandbox}`, {
      remediation: `Send Authorization: Bearer <API token>, or the port's token (POST /v1/sandboxes/${t.sandbox}/expose/${t.port}) in ${PORT_TOKEN_HEADER}.`,
    });
  }
}

/** The guest stream for a target whose access was checked; throws MitosError. */
async function open(engine: Engine, t: PortTarget): Promise<Duplex> {
  if (t.port < 1 || t.port > 65535) {
    throw new MitosError("invalid_input", `port ${t.port} is out of range`, {
      remediation: "Use a port from 1 to 65535.",
    });
  }
  await engine.awake(t.sandbox);
  return engine.agent(t.sandbox).openPort(t.port);
}

/** Request headers for the guest: ours (credentials) removed, the Host kept. */
function guestHeaders(req: http.IncomingMessage): http.OutgoingHttpHeaders {
  const h: http.OutgoingHttpHeaders = { ...req.headers };
  delete h.authorization;
  delete h[PORT_TOKEN_HEADER];
  // The E2B front door's sandbox credentials (e2b/plane.ts) stay with mitosd too.
  delete h["x-access-token"];
  delete h["e2b-traffic-access-token"];
  return h;
}

function fail(res: http.ServerResponse, err: Error, t: PortTarget): void {
  const m =
    err instanceof MitosError
      ? err
      : new MitosError("unavailable", `port ${t.port} of sandbox ${t.sandbox}: ${err.message}`, {
          remediation: "Check that a server listens on that port in the sandbox (e.g. python3 -m http.server 8000).",
        });
  if (res.headersSent) return void res.destroy();
  // Nothing listening is the upstream's failure: 502, as any proxy answers.
  const status = m.code === "unavailable" ? 502 : (HTTP_STATUS[m.code] ?? 500);
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(envelope(m)));
}

/** Carries an HTTP request to a guest port; `authorize` throws when the caller may not. */
export async function proxyRequest(
  engine: Engine,
  t: PortTarget,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  authorize: () => void,
): Promise<void> {
  let stream: Duplex;
  try {
    authorize();
    stream = await open(engine, t);
  } catch (err) {
    req.resume();
    return fail(res, err as Error, t);
  }
  const preq = http.request({
    method: req.method,
    path: t.path,
    headers: guestHeaders(req),
    createConnection: () => stream as never,
  });
  preq.on("response", (pres) => {
    res.writeHead(pres.statusCode ?? 502, pres.statusMessage, pres.rawHeaders);
    // Node holds a head back until the first body byte: a streamed answer
    // (a long cell's NDJSON, server-sent events) must reach the client now.
    res.flushHeaders();
    pres.pipe(res);
  });
  preq.on("error", (err) => fail(res, err, t));
  res.on("close", () => stream.destroy());
  req.pipe(preq);
}

/** Carries an upgrade (WebSocket) to a guest port; `authorize` throws when the caller may not. */
export async function proxyUpgrade(
  engine: Engine,
  t: PortTarget,
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
  authorize: () => void,
): Promise<void> {
  socket.on("error", () => {});
  let stream: Duplex;
  try {
    authorize();
    stream = await open(engine, t);
  } catch (err) {
    const m =
      err instanceof MitosError ? err : new MitosError("unavailable", (err as Error).message, { remediation: "" });
    const status = m.code === "unavailable" ? 502 : (HTTP_STATUS[m.code] ?? 500);
    const body = JSON.stringify(envelope(m));
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
    return;
  }
  const preq = http.request({
    method: req.method,
    path: t.path,
    headers: guestHeaders(req),
    createConnection: () => stream as never,
  });
  preq.on("upgrade", (pres, guest, guestHead) => {
    // Node hands an upgrade's answer to the caller unsent: pass it on as it came.
    socket.write(rawHead(pres));
    if (guestHead.length > 0) socket.write(guestHead);
    if (head.length > 0) guest.write(head);
    guest.pipe(socket);
    socket.pipe(guest);
    guest.on("error", () => socket.destroy());
    socket.on("close", () => guest.destroy());
    guest.on("close", () => socket.destroy());
  });
  preq.on("response", (pres) => {
    // The guest declined the upgrade: its answer goes back as it is.
    socket.write(rawHead(pres));
    pres.pipe(socket);
  });
  preq.on("error", () => socket.destroy());
  preq.end();
}

/** A response's status line and headers as they came from the guest. */
function rawHead(res: http.IncomingMessage): string {
  const lines = [`HTTP/1.1 ${res.statusCode} ${res.statusMessage}`];
  for (let i = 0; i < res.rawHeaders.length; i += 2) lines.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
  return `${lines.join("\r\n")}\r\n\r\n`;
}

/** `POST /v1/sandboxes/{id}/expose/{port}`: the port's URLs and an access token for it. */
export function registerExpose(
  app: FastifyInstance,
  o: { engine: Engine; tokens: PortTokens; url: () => string; host: (sandbox: string, port: number) => string },
): void {
  app.post<{ Params: { id: string; port: string } }>("/v1/sandboxes/:id/expose/:port", async (req) => {
    const port = Number(req.params.port);
    if (!/^\d{1,5}$/.test(req.params.port) || port < 1 || port > 65535) {
      throw new MitosError("invalid_input", `port ${req.params.port} is out of range`, {
        remediation: "Use a port from 1 to 65535.",
        context: { field: "port" },
      });
    }
    const s = o.engine.get(req.params.id);
    return {
      sandbox_id: s.id,
      port,
      url: `${o.url()}/v1/sandboxes/${s.id}/ports/${port}/`,
      host: o.host(s.id, port),
      token: o.tokens.issue(s.id, port),
      token_header: PORT_TOKEN_HEADER,
    };
  });
}
