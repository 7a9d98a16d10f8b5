// Hostile input against a real mitosd: a property test (fast-check, fixed
// seed) throws random methods, paths, ids, headers and bodies at every route,
// then fixed cases cover body and message bounds, ids and guest paths. mitosd
// must never crash, every refusal must be the documented error (API.md's
// envelope on /v1 routes, a Connect error carrying an API code on the runtime
// service), and a sandbox created before the run must still work after it.
//
// The server allows one sandbox (held by the keeper), so creates and forks
// drawn by the fuzzer hit quota_exceeded instead of booting VMs. E2B's routes
// (docs/e2b.md) are fuzzed too: their errors are E2B's `{code, message}`, and
// the keeper's id is not E2B-shaped, so the sandbox plane never reaches it.

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeFromString, codeToHttpStatus } from "@connectrpc/connect/protocol-connect";
import { defaultDataDir } from "@mitos/engine";
import { HTTP_STATUS_BY_CODE, isErrorCode, WriteFileRequestSchema } from "@mitos/proto";
import fc from "fast-check";
import WebSocket from "ws";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { runtimeClient } from "../../../test-support/runtime-client.js";
import { createServer, type MitosServer } from "../src/index.js";

const SEED = Number(process.env.MITOS_FUZZ_SEED ?? 20261201);
const RUNS = Number(process.env.MITOS_FUZZ_RUNS ?? 500);
const KEEPER = "fuzz-keeper";
const dataDir = tempDataDir("test-fuzz");
let server: MitosServer;
let e2bKey = "";
const uncaught: unknown[] = [];

before(async () => {
  process.on("uncaughtException", (e) => uncaught.push(e));
  server = await createServer({
    port: 0,
    dataDir,
    imagesDir: path.join(defaultDataDir(), "images"),
    poolTargets: { python: 0 },
    logLevel: "silent",
    limits: { maxSandboxes: 1 },
  });
  const r = await fetch(`${server.url}/v1/sandboxes`, {
    method: "POST",
    headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
    body: JSON.stringify({ template: "python", id: KEEPER, timeout_seconds: 1800 }),
  });
  assert.equal(r.status, 200, await r.text());
  const k = await fetch(`${server.url}/v1/e2b/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
    body: "{}",
  });
  e2bKey = ((await k.json()) as { key: string }).key;
});

after(async () => {
  await server?.close({ killSandboxes: true });
  removeDataDir(dataDir);
});

function runtime(sandboxId: string) {
  return runtimeClient(server, sandboxId);
}

async function keeperEcho(): Promise<string> {
  let out = "";
  for await (const m of runtime(KEEPER).execStream({ command: "echo alive" })) {
    if (m.event.case === "stdout") out += Buffer.from(m.event.value).toString();
  }
  return out;
}

// --- generators ---

const junkIds = [
  "../etc",
  "..",
  "a/b",
  "%00",
  "x".repeat(65),
  "x".repeat(300),
  "-lead",
  "_lead",
  "ünïcode",
  "sp ace",
  "no-such-box",
  "sb-00000000",
  "",
];
const anyId = fc.oneof(
  fc.constantFrom(...junkIds),
  fc.string({ maxLength: 70 }),
  fc.stringMatching(/^[a-z0-9-]{1,8}$/),
);
const runtimeMethods = [
  "ExecStream",
  "ReadFile",
  "WriteFile",
  "List",
  "Stat",
  "Mkdir",
  "Remove",
  "Processes",
  "Signal",
];
const streamingMethods = new Set(["ExecStream", "ReadFile", "WriteFile"]);
/** Runtime calls the fuzzer may aim at the keeper: they cannot change or break it. */
const keeperSafe = new Set(["ExecStream", "ReadFile", "List", "Stat", "Processes"]);
const fieldNames = [
  "template",
  "pool",
  "id",
  "timeout_seconds",
  "env",
  "count",
  "pause_source",
  "sandbox",
  "image",
  "packages",
  "init",
  "resources",
  "path",
  "parent",
  "command",
  "args",
  "cwd",
  "timeoutSeconds",
  "pid",
  "signal",
  "recursive",
  "open",
  "data",
];
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom("python", "/", "/etc", "/root/x", "a\u0000b", "/\u0000", `/${"p".repeat(5000)}`, "../../etc/passwd"),
  fc.integer(),
  fc.constantFrom(0, -1, 1, 64, 65, 3600, 3601, 2 ** 31, Number.MAX_SAFE_INTEGER),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string({ maxLength: 10 }), { maxLength: 4 }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), fc.integer()), { maxKeys: 3 }),
);
const jsonBody = fc.dictionary(fc.constantFrom(...fieldNames), anyValue, { maxKeys: 5 });
const bodyKind = fc.oneof(
  { weight: 5, arbitrary: jsonBody.map((b) => ({ kind: "json" as const, value: b })) },
  { weight: 1, arbitrary: fc.jsonValue().map((v) => ({ kind: "json" as const, value: v })) },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }).map((s) => ({ kind: "raw" as const, value: s })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 300 }).map((b) => ({ kind: "bytes" as const, value: b })) },
  { weight: 1, arbitrary: fc.constant({ kind: "huge" as const, value: null }) },
  { weight: 1, arbitrary: fc.constant({ kind: "none" as const, value: null }) },
);
const header = (values: string[]) =>
  fc.oneof(fc.constant(undefined), fc.constantFrom(...values), fc.stringMatching(/^[ -~]{0,40}$/));

const request = fc.record({
  method: fc.constantFrom("GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"),
  route: fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom("lifecycle" as const) },
    { weight: 4, arbitrary: fc.constantFrom("runtime" as const) },
    { weight: 1, arbitrary: fc.constantFrom("junk" as const) },
    { weight: 3, arbitrary: fc.constantFrom("e2b" as const) },
  ),
  e2bPath: fc.constantFrom(
    "/sandboxes",
    "/v2/sandboxes",
    "/sandboxes/{id}",
    "/sandboxes/{id}/connect",
    "/v2/sandboxes/{id}/connect",
    "/sandboxes/{id}/timeout",
    "/sandboxes/{id}/pause",
    "/sandboxes/{id}/resume",
    "/sandboxes/{id}/fork",
    "/sandboxes/{id}/snapshots",
    "/sandboxes/{id}/metrics",
    "/sandboxes/{id}/network",
    "/snapshots",
    "/templates/{id}",
    "/process.Process/Start",
    "/process.Process/List",
    "/filesystem.Filesystem/Stat",
    "/filesystem.Filesystem/WatchDir",
    "/files",
    "/health",
    "/execute",
  ),
  e2bSandbox: fc.option(fc.oneof(anyId, fc.constantFrom("sbdeadbeef", "fuzzkeeper")), { nil: undefined }),
  e2bPort: fc.constantFrom("49983", "49999", "8000", "0", "99999", "x"),
  e2bAuth: fc.constantFrom("good", "none", "e2b_00", "Bearer"),
  lifecyclePath: fc.constantFrom(
    "/v1/health",
    "/v1/templates",
    "/v1/fork",
    "/v1/sandboxes",
    "/v1/sandboxes/{id}",
    "/v1/sandboxes/{id}/fork",
    "/v1/set_timeout",
    "/v1/pause",
    "/v1/resume",
    "/v1/pools",
    "/v1/metering",
    "/v1/limits",
    "/metrics",
    "/openapi.json",
  ),
  rpc: fc.constantFrom(...runtimeMethods, "Exec", "Nope"),
  junkPath: fc.webPath(),
  id: anyId,
  query: fc.option(fc.webQueryParameters(), { nil: undefined }),
  auth: fc.oneof(
    { weight: 6, arbitrary: fc.constant("good") },
    { weight: 1, arbitrary: fc.constantFrom("none", "Bearer ", "Bearer nope", "Basic Zm9vOmJhcg==", "bearer") },
  ),
  contentType: header([
    "application/json",
    "application/json",
    "application/connect+json",
    "application/proto",
    "application/connect+proto",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
  ]),
  idempotencyKey: fc.oneof(fc.constant(undefined), fc.stringMatching(/^[ -~]{0,300}$/)),
  sandboxHeader: fc.oneof(
    fc.constant(KEEPER),
    anyId.filter((s) => /^[ -~]*$/.test(s)),
  ),
  connectProtocolVersion: fc.option(fc.constantFrom("1", "2", "x"), { nil: undefined }),
  body: bodyKind,
});
type Req = typeof request extends fc.Arbitrary<infer T> ? T : never;

// --- building and checking one request ---

function target(r: Req): { url: string; runtimeCall: boolean } {
  let p: string;
  if (r.route === "lifecycle") p = r.lifecyclePath.replace("{id}", encodeURIComponent(r.id));
  else if (r.route === "runtime") p = `/sandbox.v1.Sandbox/${r.rpc}`;
  else if (r.route === "e2b") p = r.e2bPath.replace("{id}", encodeURIComponent(r.id));
  else p = r.junkPath || "/";
  return { url: `${server.url}${p}${r.query ?? ""}`, runtimeCall: r.route === "runtime" };
}

function envelopeOf(json: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(json));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/** Rewrites the few draws that would legitimately do heavy or destructive work. */
function tame(r: Req): Req {
  const body = r.body.kind === "json" && r.body.value && typeof r.body.value === "object" ? r.body.value : undefined;
  if (body && !Array.isArray(body)) {
    const b = body as Record<string, unknown>;
    // A new template id would build a VM image: only the existing one, or invalid ones.
    if (r.route === "lifecycle" && r.lifecyclePath === "/v1/templates" && typeof b.id === "string") {
      b.id = b.id === "python" ? "python" : `!${b.id}`;
    }
    // Commands run in the keeper are bounded, so none can hang the run.
    if (r.route === "runtime" && r.sandboxHeader === KEEPER) b.timeoutSeconds = 2;
  }
  const keeperBodyOk = body !== undefined && !Array.isArray(body);
  if (r.route === "runtime" && r.sandboxHeader === KEEPER && (!keeperSafe.has(r.rpc) || !keeperBodyOk)) {
    return { ...r, sandboxHeader: "no-such-box" };
  }
  return r;
}

function requestInit(r: Req, runtimeCall: boolean): RequestInit {
  const headers: Record<string, string> = {};
  if (r.auth === "good") headers.authorization = `Bearer ${server.token}`;
  else if (r.auth !== "none") headers.authorization = r.auth;
  if (r.contentType !== undefined) headers["content-type"] = r.contentType;
  if (r.idempotencyKey !== undefined) headers["idempotency-key"] = r.idempotencyKey;
  if (runtimeCall) headers["x-sandbox-id"] = r.sandboxHeader;
  if (r.route === "e2b") {
    delete headers.authorization;
    if (r.e2bAuth === "good") headers["x-api-key"] = e2bKey;
    else if (r.e2bAuth !== "none") headers["x-api-key"] = r.e2bAuth;
    if (r.e2bSandbox !== undefined) {
      headers["e2b-sandbox-id"] = r.e2bSandbox;
      headers["e2b-sandbox-port"] = r.e2bPort;
    }
  }
  if (r.connectProtocolVersion !== undefined) headers["connect-protocol-version"] = r.connectProtocolVersion;
  let body: string | Uint8Array | undefined;
  const streaming = runtimeCall && streamingMethods.has(r.rpc) && r.contentType?.startsWith("application/connect+");
  switch (r.body.kind) {
    case "json":
      body = streaming ? envelopeOf(r.body.value) : JSON.stringify(r.body.value);
      break;
    case "raw":
      body = r.body.value;
      break;
    case "bytes":
      body = r.body.value;
      break;
    case "huge":
      body = Buffer.alloc(6 << 20, 0x7b);
      break;
    case "none":
      break;
  }
  const method = r.method;
  return {
    method,
    headers,
    ...(body !== undefined && method !== "GET" && method !== "HEAD" ? { body } : {}),
    signal: AbortSignal.timeout(30_000),
  };
}

const CONNECT_CODES = new Set([
  "canceled",
  "unknown",
  "invalid_argument",
  "deadline_exceeded",
  "not_found",
  "already_exists",
  "permission_denied",
  "resource_exhausted",
  "failed_precondition",
  "aborted",
  "out_of_range",
  "unimplemented",
  "internal",
  "unavailable",
  "data_loss",
  "unauthenticated",
]);

/** The API.md envelope, exactly: the five keys, a code from the table, the status that goes with it. */
function checkEnvelope(status: number, text: string, where: string): void {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    assert.fail(`${where}: error body is not JSON: ${text.slice(0, 200)}`);
  }
  const e = (json as { error?: Record<string, unknown> }).error;
  assert.ok(e && typeof e === "object", `${where}: no error object in ${text.slice(0, 200)}`);
  assert.deepEqual(Object.keys(json as object), ["error"], where);
  const keys = Object.keys(e).filter((k) => k !== "cause");
  assert.deepEqual(keys.sort(), ["code", "context", "message", "remediation"], where);
  assert.ok(isErrorCode(e.code), `${where}: code ${String(e.code)} is not in API.md's table`);
  assert.equal(status, HTTP_STATUS_BY_CODE[e.code], `${where}: ${e.code} with HTTP ${status}`);
  assert.ok(typeof e.message === "string" && e.message.length > 0, where);
  assert.ok(typeof e.remediation === "string" && e.remediation.length > 0, where);
  // cause is a string or absent, never null (upstream clients call string methods on it).
  assert.ok(!("cause" in e) || (typeof e.cause === "string" && e.cause !== ""), where);
  assert.ok(e.context && typeof e.context === "object" && !Array.isArray(e.context), where);
  assert.notEqual(e.code, "internal", `${where}: an internal error is a bug: ${text.slice(0, 300)}`);
}

/** A Connect error: {code, message} with a Connect code, its HTTP status, and the API code when mitosd made it. */
function checkConnectError(
  status: number,
  json: { code?: unknown; message?: unknown },
  apiCode: string | null,
  where: string,
): void {
  assert.ok(typeof json.code === "string" && CONNECT_CODES.has(json.code), `${where}: ${JSON.stringify(json)}`);
  if (status !== 200) assert.equal(status, codeToHttpStatus(codeFromString(json.code) as Code), where);
  assert.notEqual(json.code, "unknown", `${where}: ${JSON.stringify(json)}`);
  // connect-es itself answers an undecodable *binary* request with internal ("parse binary: …"); known, not ours.
  const connectDecodeError = typeof json.message === "string" && json.message.startsWith("parse binary:");
  if (!connectDecodeError) {
    assert.notEqual(json.code, "internal", `${where}: an internal error is a bug: ${JSON.stringify(json)}`);
  }
  if (apiCode !== null) {
    assert.ok(isErrorCode(apiCode), `${where}: x-mitos-error-code ${apiCode} is not in API.md's table`);
    assert.notEqual(apiCode, "internal", `${where}: an internal error is a bug: ${JSON.stringify(json)}`);
  }
}

/** An E2B answer: its own error shape, `{code: <the HTTP status>, message}`, or a Connect error on envd's RPCs. */
function checkE2b(r: Req, status: number, text: string, where: string): void {
  if (r.method === "HEAD" || (status >= 200 && status < 300)) return;
  assert.notEqual(status, 500, `${where}: ${text.slice(0, 300)}`);
  let json: { code?: unknown; message?: unknown; error?: unknown };
  try {
    json = JSON.parse(text);
  } catch {
    assert.fail(`${where}: error body is not JSON: ${text.slice(0, 200)}`);
  }
  if (typeof json.code === "string") checkConnectError(status, json, null, where);
  else if ("error" in json) checkEnvelope(status, text, where);
  else assert.equal(json.code, status, `${where}: ${text.slice(0, 200)}`);
  if (!("error" in json)) assert.ok(typeof json.message === "string" && json.message.length > 0, where);
}

async function checkResponse(r: Req, res: Response, runtimeCall: boolean): Promise<void> {
  const where = `${r.method} ${new URL(res.url).pathname} -> ${res.status}`;
  const text = Buffer.from(await res.arrayBuffer());
  if (r.route === "e2b") {
    checkE2b(r, res.status, text.toString(), where);
    return;
  }
  if (r.method === "HEAD") return;
  const ct = res.headers.get("content-type") ?? "";
  // The Connect protocol's own refusals of a wrong method or content type carry no body to check.
  if (runtimeCall && (res.status === 415 || res.status === 405) && text.length === 0) return;
  const connectAnswer = runtimeCall && r.method === "POST";
  if (!connectAnswer) {
    if (res.status >= 200 && res.status < 300) return;
    checkEnvelope(res.status, text.toString(), where);
    return;
  }
  const apiCode = res.headers.get("x-mitos-error-code");
  if (ct.startsWith("application/connect+")) {
    // A stream: envelopes, the last one the end-of-stream with {} or {error, metadata}.
    let last: { flag: number; json: Record<string, unknown> } | undefined;
    for (let o = 0; o + 5 <= text.length; ) {
      const n = text.readUInt32BE(o + 1);
      const flag = text[o] as number;
      if (flag & 2) last = { flag, json: JSON.parse(text.subarray(o + 5, o + 5 + n).toString()) };
      o += 5 + n;
    }
    assert.ok(last, `${where}: stream without an end-of-stream envelope`);
    const err = last.json.error as { code?: unknown; message?: unknown } | undefined;
    if (err) {
      const meta = last.json.metadata as Record<string, string[]> | undefined;
      checkConnectError(200, err, meta?.["x-mitos-error-code"]?.[0] ?? null, where);
    }
    return;
  }
  if (res.status >= 200 && res.status < 300) return;
  let json: { code?: unknown; message?: unknown; error?: unknown };
  try {
    json = JSON.parse(text.toString());
  } catch {
    assert.fail(`${where}: Connect error body is not JSON: ${text.toString().slice(0, 200)}`);
  }
  // A request the Connect handler never saw (e.g. a content type it does not serve) gets the API envelope.
  if ("error" in json) checkEnvelope(res.status, text.toString(), where);
  else checkConnectError(res.status, json, apiCode, where);
}

describe("fuzzing the HTTP API", () => {
  it(`never crashes and refuses with documented errors (seed ${SEED}, ${RUNS} runs)`, async (t) => {
    t.diagnostic(`seed ${SEED}; rerun with MITOS_FUZZ_SEED=${SEED} MITOS_FUZZ_RUNS=${RUNS}`);
    const started = Date.now();
    const seen = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(request, async (raw) => {
        const r = tame(raw);
        const { url, runtimeCall } = target(r);
        let res: Response;
        try {
          res = await fetch(url, requestInit(r, runtimeCall));
        } catch (err) {
          // Requests that fetch itself refuses to send (bad header bytes) say nothing about mitosd.
          if (err instanceof TypeError && !/fetch failed/.test(err.message)) return;
          throw err;
        }
        const key =
          `${runtimeCall ? "rpc" : "rest"} ${res.status} ${res.headers.get("x-mitos-error-code") ?? ""}`.trim();
        seen.set(key, (seen.get(key) ?? 0) + 1);
        await checkResponse(r, res, runtimeCall);
        assert.deepEqual(uncaught, []);
      }),
      { numRuns: RUNS, seed: SEED, endOnFailure: true, includeErrorInReport: true },
    );
    t.diagnostic(`${RUNS} requests in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    t.diagnostic(`answers: ${[...seen].map(([k, n]) => `${k} ×${n}`).join(", ")}`);
    const h = await fetch(`${server.url}/v1/health`);
    assert.equal(h.status, 200);
    assert.equal(await keeperEcho(), "alive\n");
    assert.deepEqual(
      server.engine.list().map((s) => s.id),
      [KEEPER],
      "the fuzzer created or removed no sandbox",
    );
  });
});

describe("hostile input, case by case", () => {
  const lifecycle = (route: string, init: RequestInit = {}) =>
    fetch(`${server.url}${route}`, {
      ...init,
      headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json", ...init.headers },
    });

  it("refuses ids that do not match the API's pattern, in paths, bodies and X-Sandbox-Id", async () => {
    for (const route of ["/v1/sandboxes/..%2Fetc", "/v1/sandboxes/-x", `/v1/sandboxes/${"a".repeat(65)}`]) {
      const r = await lifecycle(route);
      assert.equal(r.status, 400, route);
      checkEnvelope(r.status, await r.text(), route);
    }
    const st = await lifecycle("/v1/set_timeout", {
      method: "POST",
      body: JSON.stringify({ sandbox: "../x", timeout_seconds: 5 }),
    });
    assert.equal(st.status, 400);
    for (const id of ["../etc", "a b", "x".repeat(65)]) {
      const e = await runtime(id)
        .stat({ path: "/" })
        .catch((x: unknown) => x);
      assert.ok(e instanceof ConnectError, id);
      assert.equal(e.code, Code.InvalidArgument);
      assert.equal(e.metadata.get("x-mitos-error-code"), "invalid_input");
    }
  });

  it("refuses guest paths with NUL bytes, relative or absurdly long, before they reach the agent", async () => {
    const rt = runtime(KEEPER);
    for (const p of ["/etc\u0000/passwd", "etc/passwd", "", `/${"a".repeat(5000)}`]) {
      const e = await rt.stat({ path: p }).catch((x: unknown) => x);
      assert.ok(e instanceof ConnectError, JSON.stringify(p.slice(0, 20)));
      assert.equal(e.metadata.get("x-mitos-error-code"), "invalid_input");
    }
    const nul = await (async () => {
      for await (const _ of rt.execStream({ command: "echo a\u0000b" })) {
        // drain
      }
    })().catch((x: unknown) => x);
    assert.ok(nul instanceof ConnectError);
    assert.equal(nul.metadata.get("x-mitos-error-code"), "invalid_input");
    // Host paths mean nothing in the guest: mitosd's own token file is not found there.
    const host = await rt.stat({ path: server.tokenFile }).catch((x: unknown) => x);
    assert.ok(host instanceof ConnectError && host.code === Code.NotFound, String(host));
  });

  it("bounds JSON bodies and single Connect messages, while a large WriteFile streams through", async () => {
    const big = await lifecycle("/v1/sandboxes", { method: "POST", body: `{"template":"${"x".repeat(2 << 20)}"}` });
    assert.equal(big.status, 413);
    checkEnvelope(big.status, await big.text(), "big JSON body");
    // A unary Connect call above the 4 MiB message bound.
    const unary = await fetch(`${server.url}/sandbox.v1.Sandbox/Stat`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${server.token}`,
        "content-type": "application/json",
        "x-sandbox-id": KEEPER,
      },
      body: JSON.stringify({ path: `/${"a".repeat(5 << 20)}` }),
    });
    assert.equal(unary.status, 429);
    assert.equal(((await unary.json()) as { code: string }).code, "resource_exhausted");
    // One 5 MiB WriteFile message is refused; 24 MiB in 256 KiB messages is written.
    const rt = runtime(KEEPER);
    async function* oneBig() {
      yield create(WriteFileRequestSchema, { msg: { case: "open", value: { path: "/tmp/big", mode: 0o600 } } });
      yield create(WriteFileRequestSchema, { msg: { case: "data", value: Buffer.alloc(5 << 20, 1) } });
    }
    const refused = await rt.writeFile(oneBig()).catch((x: unknown) => x);
    assert.ok(refused instanceof ConnectError);
    assert.equal(refused.code, Code.ResourceExhausted);
    const total = 24 << 20;
    async function* streamed() {
      yield create(WriteFileRequestSchema, { msg: { case: "open", value: { path: "/tmp/big", mode: 0o600 } } });
      for (let o = 0; o < total; o += 256 * 1024) {
        yield create(WriteFileRequestSchema, { msg: { case: "data", value: Buffer.alloc(256 * 1024, 2) } });
      }
    }
    assert.equal((await rt.writeFile(streamed())).bytesWritten, BigInt(total));
    assert.equal((await rt.stat({ path: "/tmp/big" })).size, BigInt(total));
    await rt.remove({ path: "/tmp/big" });
  });

  it("answers a WebSocket exec with a bad sandbox id by an end-of-stream error, and stays up", async () => {
    const ws = new WebSocket(`${server.url.replace("http", "ws")}/sandbox.v1.Sandbox/Exec?sandbox=..%2Fetc`, [
      "connect.sandbox.v1",
    ]);
    ws.on("open", () => ws.send(envelopeOf({ open: { command: "true" } })));
    const msgs: Buffer[] = [];
    // No token: the upgrade itself is refused (and its socket closed, or close() would hang). With one, the bad id is.
    const closed = await new Promise<number>((resolve) => {
      ws.on("message", (d: Buffer) => msgs.push(d));
      ws.on("close", (code) => resolve(code));
      ws.on("error", () => resolve(-1));
    });
    assert.equal(closed, -1, "unauthenticated upgrade refused");
    const authed = new WebSocket(
      `${server.url.replace("http", "ws")}/sandbox.v1.Sandbox/Exec?sandbox=..%2Fetc`,
      ["connect.sandbox.v1"],
      { headers: { authorization: `Bearer ${server.token}` } },
    );
    authed.on("open", () => authed.send(envelopeOf({ open: { command: "true" } })));
    const end = await new Promise<Record<string, unknown>>((resolve, reject) => {
      authed.on("message", (d: Buffer) => {
        if ((d[0] as number) & 2) resolve(JSON.parse(d.subarray(5).toString()) as Record<string, unknown>);
      });
      authed.on("error", reject);
    });
    assert.equal((end.error as { code: string }).code, "invalid_input");
    assert.equal(await keeperEcho(), "alive\n");
  });
});
