// mitosd end to end on real VMs: every lifecycle route, the runtime service
// through a raw Connect client (generated service) and through plain curl
// with Connect JSON framing, auth, idempotency and the error envelope.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { defaultDataDir } from "@mitos/engine";
import { ExecRequestSchema, Sandbox as SandboxService, WriteFileRequestSchema } from "@mitos/proto";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { runtimeClient } from "../../../test-support/runtime-client.js";
import { createServer, type MitosServer } from "../src/index.js";

const root = defaultDataDir();
const dataDir = tempDataDir("test-server");
const run = promisify(execFile);
let server: MitosServer;
let api: (method: string, route: string, body?: unknown, headers?: Record<string, string>) => Promise<Response>;

before(async () => {
  server = await createServer({
    port: 0,
    dataDir,
    imagesDir: path.join(root, "images"),
    poolTargets: { python: 1 },
    logLevel: "warn",
  });
  api = (method, route, body, headers = {}) =>
    fetch(`${server.url}${route}`, {
      method,
      headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json", ...headers },
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
    });
});

after(async () => {
  await server?.close({ killSandboxes: true });
  removeDataDir(dataDir);
});

function runtime(sandboxId: string) {
  return runtimeClient(server, sandboxId);
}

describe("lifecycle API", () => {
  let sb: { id: string; state: string; template_id: string; parent_id: string | null };

  it("answers health without a token, everything else only with it", async () => {
    const h = await fetch(`${server.url}/v1/health`);
    assert.equal(h.status, 200);
    const health = (await h.json()) as { status: string; accel: string };
    assert.equal(health.status, "ok");
    const bad = await fetch(`${server.url}/v1/sandboxes`, { headers: { authorization: "Bearer nope" } });
    assert.equal(bad.status, 401);
    const env = (await bad.json()) as { error: { code: string; remediation: string } };
    assert.equal(env.error.code, "unauthorized");
    assert.ok(env.error.remediation.length > 0);
    // The token file is root's alone (docs/security.md).
    const tok = fs.statSync(server.tokenFile);
    assert.equal(tok.mode & 0o777, 0o600);
    assert.equal(tok.uid, process.getuid?.());
  });

  it("creates a template (idempotent by id) and lists it", async () => {
    const r = await api("POST", "/v1/templates", { id: "python" });
    assert.equal(r.status, 200);
    const t = (await r.json()) as { id: string; ready: boolean; creation_time_ms: number };
    assert.equal(t.id, "python");
    assert.equal(t.ready, true);
    const again = (await (await api("POST", "/v1/templates", { id: "python" })).json()) as { created_at: string };
    const list = (await (await api("GET", "/v1/templates")).json()) as Array<{ id: string; created_at: string }>;
    assert.deepEqual(
      list.map((x) => x.id),
      ["python"],
    );
    assert.equal(again.created_at, list[0]?.created_at);
  });

  it("creates a sandbox with POST /v1/fork and POST /v1/sandboxes (pool synonym)", async () => {
    const r = await api("POST", "/v1/fork", { template: "python", timeout_seconds: 600 });
    assert.equal(r.status, 200);
    sb = (await r.json()) as typeof sb;
    assert.equal(sb.state, "ready");
    assert.equal(sb.template_id, "python");
    assert.equal(sb.parent_id, null);
    const r2 = await api("POST", "/v1/sandboxes", { pool: "python", id: "named-box" });
    const named = (await r2.json()) as { id: string; deadline_unix: number; memory: { private_bytes: number } };
    assert.equal(named.id, "named-box");
    assert.ok(named.memory.private_bytes > 0);
    const got = (await (await api("GET", "/v1/sandboxes/named-box")).json()) as { id: string };
    assert.equal(got.id, "named-box");
    const all = (await (await api("GET", "/v1/sandboxes")).json()) as Array<{ id: string }>;
    assert.ok(all.some((s) => s.id === sb.id) && all.some((s) => s.id === "named-box"));
    const del = await api("DELETE", "/v1/sandboxes/named-box");
    assert.deepEqual(await del.json(), { status: "terminated", id: "named-box" });
    assert.equal((await api("GET", "/v1/sandboxes/named-box")).status, 404);
  });

  it("pauses, resumes and sets timeouts (refusing ones above the ceiling)", async () => {
    assert.deepEqual(await (await api("POST", "/v1/pause", { sandbox: sb.id })).json(), { status: "paused" });
    const busy = await runtime(sb.id)
      .stat({ path: "/" })
      .catch((e: unknown) => e);
    assert.ok(busy instanceof ConnectError && busy.code === Code.FailedPrecondition);
    assert.deepEqual(await (await api("POST", "/v1/resume", { sandbox: sb.id })).json(), { status: "running" });
    const t = (await (await api("POST", "/v1/set_timeout", { sandbox: sb.id, timeout_seconds: 900 })).json()) as {
      status: string;
      timeout_seconds: number;
      deadline_unix: number;
    };
    assert.equal(t.timeout_seconds, 900);
    assert.ok(Math.abs(t.deadline_unix - (Date.now() / 1000 + 900)) < 5);
    const tooLong = await api("POST", "/v1/set_timeout", { sandbox: sb.id, timeout_seconds: 10 ** 7 });
    assert.equal(tooLong.status, 400);
    assert.equal(((await tooLong.json()) as { error: { code: string } }).error.code, "timeout_too_large");
  });

  it("forks with count in one request; an idempotent retry returns the same children", async () => {
    const key = randomBytes(8).toString("hex");
    const r = await api("POST", `/v1/sandboxes/${sb.id}/fork`, { count: 2 }, { "idempotency-key": key });
    assert.equal(r.status, 200);
    const first = (await r.json()) as { sandboxes: Array<{ id: string; parent_id: string }>; fork_time_ms: number };
    assert.equal(first.sandboxes.length, 2);
    assert.ok(first.fork_time_ms > 0);
    for (const c of first.sandboxes) assert.equal(c.parent_id, sb.id);
    const before = ((await (await api("GET", "/v1/sandboxes")).json()) as unknown[]).length;
    const retry = await api("POST", `/v1/sandboxes/${sb.id}/fork`, { count: 2 }, { "idempotency-key": key });
    const second = (await retry.json()) as typeof first;
    assert.deepEqual(
      second.sandboxes.map((s) => s.id),
      first.sandboxes.map((s) => s.id),
    );
    assert.equal(((await (await api("GET", "/v1/sandboxes")).json()) as unknown[]).length, before, "no extra VM");
    const single = (await (await api("POST", `/v1/sandboxes/${sb.id}/fork`, {})).json()) as {
      id: string;
      parent_id: string;
    };
    assert.equal(single.parent_id, sb.id);
    for (const c of [...first.sandboxes, single]) await api("DELETE", `/v1/sandboxes/${c.id}`);
  });

  it("describes the lifecycle routes in OpenAPI", async () => {
    const doc = (await (await api("GET", "/openapi.json")).json()) as {
      openapi: string;
      paths: Record<string, unknown>;
    };
    assert.match(doc.openapi, /^3\./);
    for (const p of ["/v1/health", "/v1/templates", "/v1/sandboxes", "/v1/sandboxes/{id}/fork", "/v1/set_timeout"]) {
      assert.ok(p in doc.paths, `${p} missing from OpenAPI`);
    }
  });

  it("reports pools, metering and Prometheus metrics", async () => {
    const pools = (await (await api("GET", "/v1/pools")).json()) as Array<{ template: string; target: number }>;
    assert.ok(pools.some((p) => p.template === "python" && p.target === 1));
    // A target set through the API: kept warm (even idle), then back to 1; unknown templates and bad targets refused.
    const set = await api("PUT", "/v1/pools/python", { target: 2 });
    assert.equal(set.status, 200);
    assert.equal(((await set.json()) as { target: number }).target, 2);
    assert.equal((await api("PUT", "/v1/pools/python", { target: 1 })).status, 200);
    const unknown = await api("PUT", "/v1/pools/no-such-template", { target: 1 });
    assert.equal(unknown.status, 404);
    assert.equal(((await unknown.json()) as { error: { code: string } }).error.code, "not_found");
    for (const bad of [{ target: -1 }, { target: "2" }, {}, { target: 1, extra: true }]) {
      const r = await api("PUT", "/v1/pools/python", bad);
      assert.equal(r.status, 400, JSON.stringify(bad));
    }
    const m = (await (await api("GET", "/v1/metering")).json()) as {
      sandboxes: Array<{ id: string; private_bytes: number }>;
      host: { total_bytes: number };
    };
    assert.ok(m.sandboxes.some((s) => s.id === sb.id && s.private_bytes > 0));
    assert.ok(m.host.total_bytes > 0);
    const text = await (await api("GET", "/metrics")).text();
    assert.match(text, /mitos_sandboxes\{state="ready"\} \d+/);
    assert.match(text, /mitos_fork_seconds_count \d+/);
  });

  it("answers bad input with the documented envelope", async () => {
    const cases: Array<[Promise<Response>, number, string]> = [
      [api("POST", "/v1/sandboxes", "{not json"), 400, "invalid_json"],
      [api("POST", "/v1/sandboxes", { template: 7 }), 400, "invalid_input"],
      [api("POST", "/v1/sandboxes", { template: "python", id: "../etc" }), 400, "invalid_input"],
      [api("GET", "/v1/sandboxes/no-such-box"), 404, "not_found"],
      [api("POST", "/v1/sandboxes", { template: "no-such-template" }), 404, "not_found"],
      [api("POST", "/v1/sandboxes", JSON.stringify({ template: "x".repeat(2 << 20) })), 413, "body_too_large"],
      [api("GET", "/v1/nowhere"), 404, "not_found"],
    ];
    for (const [p, status, code] of cases) {
      const r = await p;
      const body = (await r.json()) as { error: { code: string; message: string; remediation: string } };
      assert.equal(r.status, status, JSON.stringify(body));
      assert.equal(body.error.code, code);
      assert.ok(body.error.message && body.error.remediation);
    }
  });

  describe("runtime service", () => {
    it("works with a raw Connect client: streams, files, processes", async () => {
      const rt = runtime(sb.id);
      const events: string[] = [];
      for await (const m of rt.execStream({ command: "echo one; sleep 0.5; echo two >&2; exit 4" })) {
        if (m.event.case === "stdout") events.push(`out:${Buffer.from(m.event.value).toString()}`);
        if (m.event.case === "stderr") events.push(`err:${Buffer.from(m.event.value).toString()}`);
        if (m.event.case === "exit") events.push(`exit:${m.event.value.exitCode}`);
      }
      assert.deepEqual(events, ["out:one\n", "err:two\n", "exit:4"]);

      const data = randomBytes(3 * 1024 * 1024 + 17);
      async function* chunks() {
        yield create(WriteFileRequestSchema, { msg: { case: "open", value: { path: "/root/data.bin", mode: 0o600 } } });
        for (let o = 0; o < data.length; o += 256 * 1024) {
          yield create(WriteFileRequestSchema, { msg: { case: "data", value: data.subarray(o, o + 256 * 1024) } });
        }
      }
      const w = await rt.writeFile(chunks());
      assert.equal(w.bytesWritten, BigInt(data.length));
      const parts: Uint8Array[] = [];
      let eof = false;
      for await (const m of rt.readFile({ path: "/root/data.bin" })) {
        parts.push(m.data);
        eof ||= m.eof;
      }
      assert.ok(eof);
      assert.ok(Buffer.concat(parts).equals(data));

      await rt.mkdir({ path: "/root/d/e" });
      const st = await rt.stat({ path: "/root/d" });
      assert.equal(st.isDir, true);
      const ls = await rt.list({ parent: "/root" });
      assert.ok(ls.entries.some((e) => e.name === "data.bin" && e.size === BigInt(data.length)));
      await rt.remove({ path: "/root/d", recursive: true });
      const gone = await rt.stat({ path: "/root/d" }).catch((e: unknown) => e);
      assert.ok(gone instanceof ConnectError && gone.code === Code.NotFound);
      assert.equal(gone.metadata.get("x-mitos-error-code"), "not_found");

      const bg = rt.execStream({ command: "sleep 30 & echo $!" });
      let pid = 0;
      for await (const m of bg) if (m.event.case === "stdout") pid = Number(Buffer.from(m.event.value).toString());
      const procs = await rt.processes({});
      assert.ok(procs.processes.some((p) => p.pid === pid && /sleep/.test(p.command)));
      await rt.signal({ pid, signal: 9 });
      const after = await rt.processes({});
      assert.ok(!after.processes.some((p) => p.pid === pid && p.state !== "Z"));
    });

    it("kills commands at their deadline with exit 124 and refuses timeouts above the ceiling", async () => {
      const rt = runtime(sb.id);
      let exit = -1;
      for await (const m of rt.execStream({ command: "sleep 30", timeoutSeconds: 1 })) {
        if (m.event.case === "exit") exit = m.event.value.exitCode;
      }
      assert.equal(exit, 124);
      const err = await (async () => {
        for await (const _ of rt.execStream({ command: "true", timeoutSeconds: 10 ** 6 })) {
          // drain
        }
      })().catch((e: unknown) => e);
      assert.ok(err instanceof ConnectError);
      assert.equal(err.metadata.get("x-mitos-error-code"), "timeout_too_large");
      const unknown = await runtime("no-such-box")
        .stat({ path: "/" })
        .catch((e: unknown) => e);
      assert.ok(unknown instanceof ConnectError && unknown.code === Code.NotFound);
      const unauth = createClient(SandboxService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
      const denied = await unauth.stat({ path: "/" }).catch((e: unknown) => e);
      assert.ok(denied instanceof ConnectError && denied.code === Code.Unauthenticated);
    });

    it("serves the bidi Exec over h2c on the same port (PTY, stdin, resize)", async () => {
      const h2 = runtimeClient(server, sb.id, { httpVersion: "2" });
      let screen = "";
      let exitCode = -1;
      let sawHi: () => void = () => {};
      const hi = new Promise<void>((r) => {
        sawHi = r;
      });
      async function* inputs() {
        yield create(ExecRequestSchema, {
          input: { case: "open", value: { command: "sh", pty: { term: "xterm", size: { cols: 80, rows: 24 } } } },
        });
        yield create(ExecRequestSchema, { input: { case: "stdin", value: Buffer.from("echo hi-$((40+2))\r") } });
        await hi;
        yield create(ExecRequestSchema, { input: { case: "resize", value: { cols: 132, rows: 50 } } });
        yield create(ExecRequestSchema, { input: { case: "stdin", value: Buffer.from("stty size; exit 3\r") } });
      }
      for await (const m of h2.exec(inputs())) {
        if (m.event.case === "stdout") {
          screen += Buffer.from(m.event.value).toString();
          if (screen.includes("hi-42")) sawHi();
        }
        if (m.event.case === "exit") exitCode = m.event.value.exitCode;
      }
      assert.match(screen, /hi-42/);
      assert.match(screen, /50 132/);
      assert.equal(exitCode, 3);
      // The unary calls work over h2c too.
      assert.equal((await h2.stat({ path: "/etc" })).isDir, true);
    });

    it("works with plain curl and Connect JSON framing", async () => {
      const payload = Buffer.from(JSON.stringify({ command: "python3 -c 'print(6*7)'" }));
      const frame = Buffer.concat([Buffer.from([0]), Buffer.alloc(4), payload]);
      frame.writeUInt32BE(payload.length, 1);
      const reqFile = path.join(os.tmpdir(), `mitos-curl-${process.pid}.bin`);
      fs.writeFileSync(reqFile, frame);
      const { stdout } = await run(
        "curl",
        [
          "-sS",
          "-X",
          "POST",
          `${server.url}/sandbox.v1.Sandbox/ExecStream`,
          "-H",
          `Authorization: Bearer ${server.token}`,
          "-H",
          `X-Sandbox-Id: ${sb.id}`,
          "-H",
          "Content-Type: application/connect+json",
          "--data-binary",
          `@${reqFile}`,
        ],
        { encoding: "buffer" },
      );
      fs.rmSync(reqFile, { force: true });
      const messages: Array<{ flag: number; json: Record<string, unknown> }> = [];
      for (let o = 0; o < stdout.length; ) {
        const n = stdout.readUInt32BE(o + 1);
        messages.push({ flag: stdout[o] as number, json: JSON.parse(stdout.subarray(o + 5, o + 5 + n).toString()) });
        o += 5 + n;
      }
      const out = messages.find((m) => "stdout" in m.json);
      assert.equal(Buffer.from(out?.json.stdout as string, "base64").toString(), "42\n");
      const exit = messages.find((m) => "exit" in m.json)?.json.exit as { exitCode?: number; execTimeMs: number };
      assert.equal(exit.exitCode, 0);
      assert.ok(exit.execTimeMs > 0);
      assert.equal(messages.at(-1)?.flag, 2);
      const unary = await run("curl", [
        "-sS",
        "-X",
        "POST",
        `${server.url}/sandbox.v1.Sandbox/Stat`,
        "-H",
        `Authorization: Bearer ${server.token}`,
        "-H",
        `X-Sandbox-Id: ${sb.id}`,
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"path":"/etc"}',
      ]);
      assert.equal((JSON.parse(unary.stdout) as { isDir: boolean }).isDir, true);
    });
  });
});
