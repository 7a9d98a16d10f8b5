// envd's plain-HTTP /files (E2B-COMPAT.md §6): GET downloads a file, POST
// uploads multipart parts or an octet-stream body, optionally gzipped.
// Bodies stream between the client and the agent with backpressure both
// ways, so their size is bounded by the guest's disk only. A request
// without the sandbox's X-Access-Token needs a valid URL signature.

import { createHash, timingSafeEqual } from "node:crypto";
import type http from "node:http";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import zlib from "node:zlib";
import type { AgentClient, FileInfo, SandboxInfo } from "@mitos/engine";
import { GuestError, MitosError } from "@mitos/engine";
import busboy from "busboy";
import type { EnvdDeps } from "./envd-context.js";
import { type FsAgent, isMissing, ownerOf, statFollow } from "./envd-entries.js";
import { type GuestUser, guestUser, resolvePath } from "./users.js";

/** Downloads are read from the agent in ranges of this size: a client that leaves stops the read soon. */
const READ_RANGE = 8 << 20;
const ENOSPC = 28;
const EDQUOT = 122;

type Operation = "read" | "write";

/** An error with the HTTP status envd answers it with. */
class FilesError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

interface UploadedEntry {
  name: string;
  type: "file";
  path: string;
}

function operationOf(method: string | undefined): Operation | undefined {
  return method === "GET" ? "read" : method === "POST" ? "write" : undefined;
}

/**
 * envd's v1 file URL signature: "v1_" + unpadded base64 of
 * sha256("path:operation:username:token[:expiration]").
 */
export function fileSignature(
  filePath: string,
  operation: Operation,
  username: string,
  token: string,
  expiration?: number,
): string {
  const parts = [filePath, operation, username, token];
  if (expiration !== undefined) parts.push(String(expiration));
  return `v1_${createHash("sha256").update(parts.join(":")).digest("base64").replace(/=+$/, "")}`;
}

/** Whether a /files URL carries a valid, unexpired signature for `method` made with `token`. */
export function signatureMatches(url: URL, method: string, token: string): boolean {
  const op = operationOf(method);
  const given = url.searchParams.get("signature");
  if (!op || !given) return false;
  const exp = url.searchParams.get("signature_expiration");
  if (exp !== null && !/^\d{1,15}$/.test(exp)) return false;
  const expiration = exp === null ? undefined : Number(exp);
  const q = (k: string) => url.searchParams.get(k) ?? "";
  const want = fileSignature(q("path"), op, q("username"), token, expiration);
  return sameText(want, given) && (expiration === undefined || expiration >= Math.floor(Date.now() / 1000));
}

/** Serves GET and POST /files for a live sandbox; `tokenOk`: the request carried its X-Access-Token. */
export async function serveFiles(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  deps: EnvdDeps,
  sandbox: SandboxInfo,
  tokenOk: boolean,
): Promise<void> {
  try {
    const url = new URL(req.url ?? "/", "http://mitosd");
    const op = operationOf(req.method);
    if (!op) {
      res.setHeader("allow", "GET, POST");
      throw new FilesError(405, `method ${req.method} is not allowed on /files (GET or POST)`);
    }
    if (!tokenOk) authorize(req, url, deps.registry.record(sandbox).envdAccessToken);
    const agent = deps.engine.agent(sandbox.id);
    const user = await queryUser(agent, url.searchParams.get("username"));
    if (op === "read") await download(req, res, agent, resolvePath(url.searchParams.get("path") ?? "", user));
    else await upload(req, res, agent, user, url.searchParams.get("path"));
  } catch (err) {
    fail(req, res, err);
  }
}

/** envd's rules: a wrong X-Access-Token is refused even with a signature; without one, the signature decides. */
function authorize(req: http.IncomingMessage, url: URL, token: string): void {
  const given = req.headers["x-access-token"];
  if (typeof given === "string" && given !== "") {
    throw new FilesError(401, "access token present in header but does not match");
  }
  if (!url.searchParams.has("signature")) {
    throw new FilesError(401, "missing X-Access-Token header or signature query parameter");
  }
  if (!signatureMatches(url, req.method ?? "", token)) throw new FilesError(401, "invalid or expired signature");
}

/** The `username` query's guest user (the default user when absent); envd answers an unknown one 401. */
async function queryUser(agent: AgentClient, name: string | null): Promise<GuestUser> {
  // The same lookup as an RPC's Basic-auth user (a name with ":" cannot be one).
  const header = name ? `Basic ${Buffer.from(`${name}:`).toString("base64")}` : undefined;
  const user = name?.includes(":") ? undefined : await guestUser(agent, header);
  if (!user) throw new FilesError(401, "invalid username");
  return user;
}

// ---- download ----

async function download(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  agent: FsAgent,
  file: string,
): Promise<void> {
  req.resume();
  let info: FileInfo;
  try {
    info = await statFollow(agent, file);
  } catch (err) {
    if (isMissing(err)) throw new FilesError(404, `path '${file}' does not exist`);
    throw err;
  }
  if (info.type === "dir") throw new FilesError(400, `path '${file}' is a directory`);
  // A device or a pipe may never end: only regular files are served.
  if (info.type !== "file") throw new FilesError(400, `path '${file}' is not a regular file`);
  const encoding = acceptedEncoding(req.headers["accept-encoding"]);
  if (encoding === undefined) throw new FilesError(406, "no acceptable encoding (identity or gzip)");
  res.setHeader("content-type", "application/octet-stream");
  res.setHeader("content-disposition", contentDisposition(path.posix.basename(file)));
  res.setHeader("vary", "Accept-Encoding");
  let out: Writable = res;
  if (encoding === "gzip") {
    res.setHeader("content-encoding", "gzip");
    const gz = zlib.createGzip();
    gz.on("error", (err) => res.destroy(err));
    gz.pipe(res);
    out = gz;
  } else {
    res.setHeader("content-length", String(info.size));
  }
  res.writeHead(200);
  let gone = false;
  res.on("close", () => {
    gone = !res.writableFinished;
    // The client left: release a write waiting for the gzip stream to drain.
    if (gone && out !== res) out.destroy();
  });
  let sent = 0;
  while (sent < info.size && !gone) {
    const length = Math.min(READ_RANGE, info.size - sent);
    let got = 0;
    await agent.readFile(file, {
      offset: sent,
      length,
      onData: async (chunk) => {
        got += chunk.length;
        if (!gone) await write(out, chunk);
      },
    });
    sent += got;
    if (got < length) break; // the file shrank meanwhile
  }
  if (gone) return;
  if (encoding !== "gzip" && sent < info.size) {
    res.destroy(new Error(`${file} shrank while it was sent`)); // not a short 200 the client would trust
    return;
  }
  out.end();
}

/** Writes with backpressure: resolves once `out` takes more (or is closed). */
function write(out: Writable, chunk: Buffer): Promise<void> {
  if (out.write(chunk)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      out.off("drain", done);
      out.off("close", done);
      resolve();
    };
    out.on("drain", done);
    out.on("close", done);
  });
}

/**
 * The response encoding Accept-Encoding asks for: "gzip" when it is the best
 * acceptable, "identity" otherwise, undefined when identity is refused and
 * gzip is not acceptable (RFC 9110 §12.5.3, as envd parses it).
 */
export function acceptedEncoding(header: string | undefined): "gzip" | "identity" | undefined {
  if (!header) return "identity";
  const prefs = header.split(",").map((v) => {
    const [name = "", ...params] = v.split(";").map((s) => s.trim());
    const q = params.find((p) => /^q=/i.test(p));
    const quality = q === undefined ? 1 : Number(q.slice(2));
    return { name: name.toLowerCase(), q: Number.isFinite(quality) ? quality : 1 };
  });
  const identityRefused = prefs.some((p) => (p.name === "identity" || p.name === "*") && p.q === 0);
  const best = prefs.filter((p) => p.q > 0).sort((a, b) => b.q - a.q);
  for (const p of best) {
    if (p.name === "gzip") return "gzip";
    if (p.name === "identity") return "identity";
    if (p.name === "*") return identityRefused ? "gzip" : "identity";
  }
  return identityRefused ? undefined : "identity";
}

/** `inline` with the name in ASCII and, for other characters, RFC 8187's filename*. */
function contentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, "_");
  const encoded = encodeURIComponent(name).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return ascii === name ? `inline; filename="${name}"` : `inline; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

// ---- upload ----

async function upload(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  agent: FsAgent,
  user: GuestUser,
  queryPath: string | null,
): Promise<void> {
  const body = decoded(req);
  const mediaType = (req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  let entries: UploadedEntry[];
  if (mediaType === "application/octet-stream") {
    if (queryPath === null) throw new FilesError(400, "path query parameter is required for raw body upload");
    entries = [await writeOne(agent, resolvePath(queryPath, user), body, user)];
  } else if (mediaType.startsWith("multipart/")) {
    entries = await multipart(req, body, agent, user, queryPath);
  } else {
    throw new FilesError(
      400,
      `unsupported content type: ${mediaType || "(none)"}, expected multipart/form-data or application/octet-stream`,
    );
  }
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify(entries));
}

/** The request body with its Content-Encoding (gzip or identity) undone. */
function decoded(req: http.IncomingMessage): Readable {
  const enc = (req.headers["content-encoding"] ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  if (enc === "" || enc === "identity") return req;
  if (enc !== "gzip") throw new FilesError(400, `unsupported Content-Encoding: ${enc}, supported: gzip`);
  const gunzip = zlib.createGunzip();
  req.on("error", (err) => gunzip.destroy(err));
  return req.pipe(gunzip);
}

async function writeOne(agent: FsAgent, file: string, data: Readable, user: GuestUser): Promise<UploadedEntry> {
  // The agent creates missing parents; both they and the file become the user's, as in envd.
  await agent.writeFile(file, chunksOf(data), { owner: ownerOf(user) });
  return { name: path.posix.basename(file), type: "file", path: file };
}

/**
 * The stream's chunks. A write that stops early (the guest failed) leaves
 * the stream alive, unlike `for await` on it: destroying the request would
 * drop the error answer, and destroying a busboy part would stall the form.
 */
function chunksOf(stream: Readable): AsyncIterable<Buffer> {
  return { [Symbol.asyncIterator]: () => stream.iterator({ destroyOnReturn: false }) };
}

/**
 * Writes each part named `file` in turn, to the `path` query or else to the
 * part's filename with its directories (busboy's preservePath). The request
 * is read to its end even after a failure, so the error answer reaches the
 * client.
 */
function multipart(
  req: http.IncomingMessage,
  body: Readable,
  agent: FsAgent,
  user: GuestUser,
  queryPath: string | null,
): Promise<UploadedEntry[]> {
  return new Promise((resolve, reject) => {
    let bb: busboy.Busboy;
    try {
      bb = busboy({
        headers: req.headers,
        preservePath: true,
        limits: { files: 10_000, fields: 1_000, parts: 11_000 },
      });
    } catch (err) {
      reject(new FilesError(400, `bad multipart request: ${(err as Error).message}`));
      return;
    }
    const entries: UploadedEntry[] = [];
    let failed: unknown;
    let chain = Promise.resolve();
    let settled = false;
    const finish = (err?: unknown) => {
      if (settled) return;
      settled = true;
      failed ??= err;
      chain.then(() => (failed === undefined ? resolve(entries) : reject(failed)));
      if (failed !== undefined) body.resume(); // drain what busboy will no longer read
    };
    bb.on("file", (name, stream, info) => {
      if (name !== "file" || failed !== undefined) {
        stream.resume();
        return;
      }
      chain = chain.then(async () => {
        try {
          if (failed !== undefined) throw failed;
          const target = queryPath ?? info.filename;
          if (!target) throw new FilesError(400, "a file part has no filename and the request no path query parameter");
          const file = resolvePath(target, user);
          if (entries.some((e) => e.path === file)) {
            throw new FilesError(
              400,
              `you cannot upload multiple files to the same path '${file}' in one upload request`,
            );
          }
          entries.push(await writeOne(agent, file, stream, user));
        } catch (err) {
          failed ??= err;
          stream.resume();
        }
      });
    });
    const tooMany = () => {
      failed ??= new FilesError(400, "too many parts in one upload request");
    };
    bb.on("filesLimit", tooMany);
    bb.on("partsLimit", tooMany);
    bb.on("fieldsLimit", tooMany);
    bb.on("error", (err: Error) => finish(new FilesError(400, `bad multipart body: ${err.message}`)));
    bb.on("close", () => finish());
    body.on("error", (err) => {
      bb.destroy();
      finish(isZlibError(err) ? new FilesError(400, `error decompressing request body: ${err.message}`) : err);
    });
    body.pipe(bb);
  });
}

// ---- errors ----

/** Answers `err` as envd does ({code, message} JSON), or cuts the connection when the answer has begun. */
function fail(req: http.IncomingMessage, res: http.ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy(err instanceof Error ? err : undefined);
    return;
  }
  const [status, message] = httpError(err);
  if (!req.complete) req.resume();
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ code: status, message }));
}

function httpError(err: unknown): [number, string] {
  if (err instanceof FilesError) return [err.status, err.message];
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof GuestError && (err.errno === ENOSPC || err.errno === EDQUOT)) {
    return [507, `not enough disk space available: ${message}`];
  }
  if (err instanceof MitosError) {
    if (err.code === "not_found") return [404, message];
    if (err.code === "invalid_input") return [400, message];
    // The sandbox stopped or its agent went away: what E2B answers for a sandbox that is gone.
    if (err.code === "unavailable" || err.code === "conflict") return [502, message];
    return [500, message];
  }
  if (isZlibError(err)) return [400, `error decompressing request body: ${message}`];
  return [500, message];
}

function isZlibError(err: unknown): boolean {
  return typeof (err as { code?: unknown })?.code === "string" && (err as { code: string }).code.startsWith("Z_");
}

/** Constant-time equality of two strings of any length. */
function sameText(a: string, b: string): boolean {
  const x = createHash("sha256").update(a).digest();
  const y = createHash("sha256").update(b).digest();
  return timingSafeEqual(x, y);
}
