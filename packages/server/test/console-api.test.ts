// What the web console needs of mitosd, through the public API on real VMs
// (docs/console.md): the /ui pages without a token, live events (SSE) with
// each caller seeing only its own sandboxes, files over plain HTTP, and the
// WebSocket exec authenticated by a subprotocol.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import WebSocket from "ws";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { BEARER_SUBPROTOCOL } from "../src/auth.js";
import { createServer, type MitosServer } from "../src/index.js";

const dataDir = tempDataDir("test-console-api");
const imagesDir = path.join(path.dirname(dataDir), "images");
let server: MitosServer;
let admin: string;
let tenantKey: string;

async function call(method: string, route: string, token: string | null, body?: unknown, raw?: Buffer) {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body !== undefined ? { "content-type": "application/json" } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : raw ? { body: raw } : {}),
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(bytes.toString()) as Record<string, unknown>;
  } catch {
    // a file's bytes
  }
  return { status: res.status, headers: res.headers, bytes, json };
}

/** Reads server-sent events from GET /v1/events until `stop` says enough. */
async function events(
  token: string,
  stop: (seen: Array<{ event: string; data: Record<string, unknown> }>) => boolean,
  during?: () => Promise<void>,
) {
  const ac = new AbortController();
  const res = await fetch(`${server.url}/v1/events`, {
    headers: { authorization: `Bearer ${token}` },
    signal: ac.signal,
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
  const seen: Array<{ event: string; data: Record<string, unknown> }> = [];
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let rest = "";
  let started = false;
  const timer = setTimeout(() => ac.abort(), 60_000);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += decoder.decode(value, { stream: true });
      const blocks = rest.split("\n\n");
      rest = blocks.pop() ?? "";
      for (const b of blocks) {
        const event = /^event: (.*)$/m.exec(b)?.[1];
        const data = /^data: (.*)$/m.exec(b)?.[1];
        if (event && data) seen.push({ event, data: JSON.parse(data) as Record<string, unknown> });
      }
      if (!started && seen.length > 0) {
        started = true;
        if (during) await during();
      }
      if (stop(seen)) break;
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return seen;
}

describe("the console's API (real VMs)", { timeout: 600_000 }, () => {
  let mine: string;
  let mineToken: string;
  let other: string;

  before(async () => {
    const quiet = { poolTargets: {}, spareVms: 0, logLevel: "warn" } as const;
    server = await createServer({ port: 0, dataDir, imagesDir, ...quiet });
    admin = server.token;
    const k = await call("POST", "/v1/keys", admin, { scope: "tenant", tenant: "acme" });
    tenantKey = k.json.key as string;
    const a = await call("POST", "/v1/sandboxes", tenantKey, { template: "python" });
    assert.equal(a.status, 200, a.bytes.toString());
    mine = a.json.id as string;
    mineToken = a.json.token as string;
    const b = await call("POST", "/v1/sandboxes", admin, { template: "python" });
    other = b.json.id as string;
  });

  after(async () => {
    await server?.close({ killSandboxes: true });
    removeDataDir(dataDir);
  });

  it("serves the console's pages without a token, with a strict CSP; / leads there", async () => {
    const page = await call("GET", "/ui/", null);
    assert.equal(page.status, 200);
    assert.match(page.bytes.toString(), /<div id="app">/);
    assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'self'/);
    assert.equal(page.headers.get("cache-control"), "no-store");
    const root = await fetch(`${server.url}/`, { redirect: "manual" });
    assert.equal(root.status, 302);
    assert.equal(root.headers.get("location"), "/ui/");
    // The API behind it still wants the token.
    assert.equal((await call("GET", "/v1/events", null)).status, 401);
  });

  it("events: a snapshot, then a created sandbox and its removal; a tenant sees only its own", async () => {
    let made = "";
    const seen = await events(
      tenantKey,
      (s) => made !== "" && s.some((e) => e.event === "removed" && e.data.id === made),
      async () => {
        const c = await call("POST", `/v1/sandboxes/${mine}/fork`, tenantKey, {});
        assert.equal(c.status, 200, c.bytes.toString());
        made = c.json.id as string;
        // A change no route of this caller made: the admin's sandbox, terminated.
        await call("DELETE", `/v1/sandboxes/${other}`, admin);
        await call("DELETE", `/v1/sandboxes/${made}`, tenantKey);
      },
    );
    const snapshot = seen[0];
    assert.equal(snapshot?.event, "snapshot");
    const ids = (snapshot?.data.sandboxes as Array<{ id: string }>).map((s) => s.id);
    assert.deepEqual(ids, [mine]);
    const created = seen.find((e) => e.event === "sandbox" && e.data.id === made);
    assert.ok(created, JSON.stringify(seen));
    assert.equal(created.data.parent_id, mine);
    // Nothing about the other tenant's sandbox reached this one.
    assert.ok(!JSON.stringify(seen).includes(other));
  });

  it("events carry memory every few seconds, the host's totals to the admin only", async () => {
    const seen = await events(admin, (s) => s.some((e) => e.event === "memory"));
    const m = seen.find((e) => e.event === "memory")?.data as {
      sandboxes: Array<{ id: string; private_bytes: number }>;
      host?: { total_bytes: number };
    };
    assert.ok(m.host && m.host.total_bytes > 0);
    assert.ok(m.sandboxes.some((s) => s.id === mine && s.private_bytes > 0));
    const t = await events(tenantKey, (s) => s.some((e) => e.event === "memory"));
    assert.equal((t.find((e) => e.event === "memory")?.data as { host?: unknown }).host, undefined);
  });

  it("files: PUT then GET gives the same bytes; errors are the API's envelope", async () => {
    const data = randomBytes(3 << 20);
    const put = await call("PUT", `/v1/sandboxes/${mine}/files?path=/root/f.bin`, mineToken, undefined, data);
    assert.equal(put.status, 200, put.bytes.toString());
    assert.equal(put.json.bytes_written, data.length);
    const got = await call("GET", `/v1/sandboxes/${mine}/files?path=/root/f.bin`, tenantKey);
    assert.equal(got.status, 200);
    assert.match(got.headers.get("content-disposition") ?? "", /filename="f.bin"/);
    assert.ok(got.bytes.equals(data));

    const dir = await call("GET", `/v1/sandboxes/${mine}/files?path=/root`, admin);
    assert.equal(dir.status, 400);
    assert.equal((dir.json.error as { code: string }).code, "invalid_input");
    const missing = await call("GET", `/v1/sandboxes/${mine}/files?path=/no/such`, admin);
    assert.equal(missing.status, 404);
    const relative = await call("GET", `/v1/sandboxes/${mine}/files?path=etc/passwd`, admin);
    assert.equal(relative.status, 400);
    assert.equal((await call("GET", `/v1/sandboxes/${mine}/files?path=/root/f.bin`, null)).status, 401);
    // Another sandbox's token, or another tenant's key, finds nothing there.
    const c = await call("POST", "/v1/sandboxes", admin, { template: "python" });
    const theirs = c.json.id as string;
    assert.equal((await call("GET", `/v1/sandboxes/${theirs}/files?path=/etc/hostname`, mineToken)).status, 404);
    assert.equal((await call("PUT", `/v1/sandboxes/${theirs}/files?path=/x`, tenantKey, undefined, data)).status, 404);
    await call("DELETE", `/v1/sandboxes/${theirs}`, admin);
  });

  it("HEAD is not served on the file route (it would read the whole file to throw it away)", async () => {
    const head = await fetch(`${server.url}/v1/sandboxes/${mine}/files?path=/root/f.bin`, {
      method: "HEAD",
      headers: { authorization: `Bearer ${admin}` },
    });
    assert.equal(head.status, 404);
  });

  it("a revoked key's event stream ends within a few seconds", async () => {
    const k = await call("POST", "/v1/keys", admin, { scope: "tenant", tenant: "acme" });
    const started = Date.now();
    let revokedAt = 0;
    const seen = await events(
      k.json.key as string,
      () => false,
      async () => {
        assert.equal((await call("DELETE", `/v1/keys/${k.json.id as string}`, admin)).status, 200);
        revokedAt = Date.now();
      },
    );
    assert.equal(seen[0]?.event, "snapshot");
    assert.ok(revokedAt > 0 && Date.now() - revokedAt < 5000, `the stream ran ${Date.now() - started} ms`);
  });

  it("the WebSocket exec takes the token in a subprotocol; a wrong one is refused", async () => {
    const open = (token: string | null) =>
      new Promise<{ status: number; output: string }>((resolve) => {
        const protocols = [
          "connect.sandbox.v1",
          ...(token ? [BEARER_SUBPROTOCOL + Buffer.from(token).toString("base64url")] : []),
        ];
        const ws = new WebSocket(
          `${server.url.replace("http", "ws")}/sandbox.v1.Sandbox/Exec?sandbox=${mine}`,
          protocols,
        );
        let output = "";
        ws.on("unexpected-response", (_req, res) => resolve({ status: res.statusCode ?? 0, output }));
        ws.on("open", () => {
          assert.equal(ws.protocol, "connect.sandbox.v1");
          const body = Buffer.from(JSON.stringify({ open: { command: "echo ws-$((6*7))" } }));
          const head = Buffer.alloc(5);
          head.writeUInt32BE(body.length, 1);
          ws.send(Buffer.concat([head, body]));
        });
        ws.on("message", (d: Buffer) => {
          const m = JSON.parse(d.subarray(5).toString()) as { stdout?: string };
          if (m.stdout) output += Buffer.from(m.stdout, "base64").toString();
        });
        ws.on("close", () => resolve({ status: 101, output }));
      });
    assert.deepEqual(await open(tenantKey), { status: 101, output: "ws-42\n" });
    assert.deepEqual(await open(mineToken), { status: 101, output: "ws-42\n" });
    assert.equal((await open("wrong")).status, 401);
    assert.equal((await open(null)).status, 401);
  });
});
