// The SDK against a fake mitosd on 127.0.0.1:0: lifecycle routes as JSON and
// the runtime routes with hand-written Connect framing, which pins down the
// SDK's wire format (API.md) independently of the Connect server library.

import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { resolveConfig } from "../src/config.js";
import { LifecycleClient } from "../src/http.js";
import {
  CanceledError,
  ConflictError,
  NotFoundError,
  SandboxServer,
  TimeoutTooLargeError,
  UnavailableError,
} from "../src/index.js";
import { RuntimeClient } from "../src/runtime.js";
import { Sandbox } from "../src/sandbox.js";
import { toSandboxInfo } from "../src/wire.js";

const TOKEN = "test-token";

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

type JsonObject = Record<string, unknown>;

function sandbox(id: string, parent: string | null = null): JsonObject {
  return {
    id,
    template_id: "python",
    parent_id: parent,
    state: "ready",
    endpoint: "",
    created_at: "2025-01-01T00:00:00.000Z",
    deadline_unix: 1_900_000_000,
    fork_time_ms: parent ? 12 : 3,
    accel: "tcg",
    memory: { private_bytes: 1, shared_bytes: 2 },
  };
}

/** One Connect streaming envelope: flag byte, 4-byte big-endian length, JSON. */
function frame(flag: number, msg: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(msg));
  const head = Buffer.alloc(5);
  head.writeUInt8(flag, 0);
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

function unframe(body: Buffer): { flag: number; msg: JsonObject }[] {
  const out: { flag: number; msg: JsonObject }[] = [];
  for (let i = 0; i < body.length; ) {
    const len = body.readUInt32BE(i + 1);
    out.push({ flag: body.readUInt8(i), msg: JSON.parse(body.subarray(i + 5, i + 5 + len).toString()) as JsonObject });
    i += 5 + len;
  }
  return out;
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString("base64");

class FakeMitosd {
  readonly seen: Seen[] = [];
  readonly forkKeys: string[] = [];
  execClosed = false;
  private nextId = 0;
  private readonly server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      this.seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body });
      this.route(req, res, body);
    });
  });

  async start(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }

  private json(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  }

  private envelope(res: http.ServerResponse, status: number, code: string, message: string): void {
    this.json(res, status, { error: { code, message, remediation: `fix ${code}`, context: {} } });
  }

  private route(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) {
    const url = req.url ?? "";
    if (url === "/v1/health") return this.json(res, 200, { status: "ok", version: "0.1.0", accel: "tcg" });
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return this.envelope(res, 401, "unauthorized", "bad token");
    if (url.startsWith("/sandbox.v1.Sandbox/")) return this.runtime(url.slice(20), req, res, body);
    const input = body.length ? (JSON.parse(body.toString()) as JsonObject) : {};

    if (req.method === "POST" && url === "/v1/fork") {
      const key = String(req.headers["idempotency-key"]);
      this.forkKeys.push(key);
      // The first attempt dies before answering, as if the connection broke.
      if (input.id === "flaky" && this.forkKeys.filter((k) => k === key).length === 1) {
        res.socket?.destroy();
        return;
      }
      return this.json(res, 200, sandbox(typeof input.id === "string" ? input.id : `sb-${++this.nextId}`));
    }
    const fork = url.match(/^\/v1\/sandboxes\/([^/]+)\/fork$/);
    if (req.method === "POST" && fork?.[1]) {
      const n = Number(input.count);
      const kids = Array.from({ length: n }, (_, i) => sandbox(`${fork[1]}-k${i}`, fork[1] ?? null));
      return this.json(res, 200, { sandboxes: kids, fork_time_ms: 30 });
    }
    if (req.method === "GET" && url === "/v1/sandboxes/missing") return this.envelope(res, 404, "not_found", "no sb");
    if (req.method === "GET" && url.startsWith("/v1/sandboxes/")) return this.json(res, 200, sandbox(url.slice(14)));
    if (req.method === "DELETE") return this.json(res, 200, { status: "terminated", id: url.slice(14) });
    if (req.method === "POST" && url === "/v1/set_timeout") {
      if (Number(input.timeout_seconds) > 3600) return this.envelope(res, 400, "timeout_too_large", "max 3600");
      return this.json(res, 200, {
        status: "ok",
        deadline_unix: 1_950_000_000,
        timeout_seconds: input.timeout_seconds,
      });
    }
    if (req.method === "POST" && url === "/v1/pause") return this.json(res, 200, { status: "paused" });
    return this.envelope(res, 404, "not_found", `no route ${req.method} ${url}`);
  }

  private runtime(method: string, req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) {
    const stream = (frames: Buffer[], end: unknown = {}) => {
      res.writeHead(200, { "content-type": "application/connect+json" });
      for (const f of frames) res.write(f);
      res.end(frame(0x02, end));
    };
    if (method === "Stat") {
      const { path } = JSON.parse(body.toString()) as { path: string };
      if (path === "/nope") {
        res.writeHead(404, { "content-type": "application/json", "x-mitos-error-code": "not_found" });
        return void res.end(JSON.stringify({ code: "not_found", message: `${path} does not exist` }));
      }
      res.writeHead(200, { "content-type": "application/json" });
      // int64 fields are JSON strings in the protobuf JSON mapping.
      return void res.end(JSON.stringify({ name: "a.txt", path, size: "12", mode: 420, modifiedAtUnix: "1700000000" }));
    }
    const msgs = unframe(body);
    if (method === "ExecStream") {
      const reqMsg = msgs[0]?.msg ?? {};
      const cmd = String(reqMsg.command);
      if (cmd === "sleep") {
        res.writeHead(200, { "content-type": "application/connect+json" });
        res.write(frame(0, { stdout: b64("started\n") }));
        req.socket.on("close", () => {
          this.execClosed = true;
        });
        return;
      }
      if (cmd === "paused") {
        return stream([], {
          error: { code: "failed_precondition", message: "sandbox is paused" },
          metadata: { "x-mitos-error-code": ["conflict"] },
        });
      }
      if (cmd === "echo-args") {
        return stream([frame(0, { stdout: b64(JSON.stringify(reqMsg)) }), frame(0, { exit: { exitCode: 0 } })]);
      }
      const sq = cmd.match(/print\((\d+) \*\* 2\)/);
      if (sq) {
        const n = Number(sq[1]);
        return stream([frame(0, { stdout: b64(`${n * n}\n`) }), frame(0, { exit: { exitCode: 0, execTimeMs: 5 } })]);
      }
      // "é" is two bytes in UTF-8; split it across messages.
      const e = Buffer.from("é");
      return stream([
        frame(0, { stdout: b64(Buffer.concat([Buffer.from("caf"), e.subarray(0, 1)])) }),
        frame(0, { stdout: b64(Buffer.concat([e.subarray(1), Buffer.from("\n")])) }),
        frame(0, { stderr: b64("warn\n") }),
        frame(0, { exit: { exitCode: 3, execTimeMs: 17 } }),
      ]);
    }
    if (method === "ReadFile") {
      return stream([frame(0, { data: b64("hello ") }), frame(0, { data: b64("world"), eof: true })]);
    }
    if (method === "WriteFile") {
      const data = msgs.slice(1).map((m) => Buffer.from(String(m.msg.data), "base64"));
      this.written = { open: msgs[0]?.msg ?? {}, data: Buffer.concat(data).toString() };
      return stream([frame(0, { bytesWritten: String(Buffer.concat(data).length) })]);
    }
    stream([], { error: { code: "unimplemented", message: method } });
  }

  written: { open: JsonObject; data: string } | undefined;
}

describe("SDK against a fake mitosd", () => {
  const fake = new FakeMitosd();
  let server: SandboxServer;

  before(async () => {
    server = new SandboxServer({ baseUrl: await fake.start(), apiKey: TOKEN });
  });
  after(() => fake.stop());

  it("runs the README example verbatim (one fork request for 8 children)", async () => {
    const sb = await server.fork("python");
    const before = fake.seen.length;
    const swarm = await sb.fork(8);
    const runs = await Promise.all(swarm.map((a, i) => a.exec(`python3 -c 'print(${i} ** 2)'`)));
    assert.deepEqual(
      runs.map((r) => r.stdout),
      [0, 1, 4, 9, 16, 25, 36, 49].map((n) => `${n}\n`),
    );
    const forks = fake.seen.slice(before).filter((s) => s.url.endsWith("/fork"));
    assert.equal(forks.length, 1);
    assert.deepEqual(JSON.parse(forks[0]?.body.toString() ?? ""), { count: 8 });
    assert.equal(swarm[3]?.parentId, sb.id);
    assert.equal(swarm[3]?.templateId, "python");
  });

  it("sends bearer auth, JSON and an Idempotency-Key on creating POSTs", async () => {
    const sb = await server.fork("python", { id: "named", timeoutSeconds: 60, env: { A_B: "1" } });
    assert.equal(sb.id, "named");
    assert.equal(sb.accel, "tcg");
    assert.equal(sb.deadlineUnix, 1_900_000_000);
    assert.deepEqual(sb.memory, { privateBytes: 1, sharedBytes: 2 });
    const req = fake.seen.at(-1);
    assert.equal(req?.headers.authorization, `Bearer ${TOKEN}`);
    assert.equal(req?.headers["content-type"], "application/json");
    assert.match(String(req?.headers["idempotency-key"]), /^[0-9a-f-]{36}$/);
    assert.deepEqual(JSON.parse(req?.body.toString() ?? ""), {
      template: "python",
      id: "named",
      timeout_seconds: 60,
      env: { A_B: "1" },
    });
  });

  it("retries a broken creating call with the same Idempotency-Key", async () => {
    const sb = await server.fork("python", "flaky");
    assert.equal(sb.id, "flaky");
    const keys = fake.forkKeys.slice(-2);
    assert.equal(keys.length, 2);
    assert.equal(keys[0], keys[1]);
  });

  it("streams exec output to callbacks as text and collects it", async () => {
    const sb = await server.get("sb-x");
    const out: string[] = [];
    const err: string[] = [];
    const r = await sb.exec("cafe", { onStdout: (s) => out.push(s), onStderr: (s) => err.push(s), timeoutSeconds: 9 });
    assert.deepEqual(r, { exitCode: 3, stdout: "café\n", stderr: "warn\n", execTimeMs: 17 });
    assert.equal(out.join(""), "café\n");
    assert.deepEqual(err, ["warn\n"]);

    const req = fake.seen.at(-1);
    assert.equal(req?.url, "/sandbox.v1.Sandbox/ExecStream");
    assert.equal(req?.headers["content-type"], "application/connect+json");
    assert.equal(req?.headers["x-sandbox-id"], "sb-x");
    assert.equal(req?.headers.authorization, `Bearer ${TOKEN}`);
    const [msg] = unframe(req?.body ?? Buffer.alloc(0));
    assert.equal(msg?.flag, 0);
    assert.deepEqual(msg?.msg, { command: "cafe", timeoutSeconds: 9 });
  });

  it("sends args, env and cwd in the exec request", async () => {
    const sb = await server.get("sb-x");
    const r = await sb.exec("echo-args", { args: ["-n", "hi"], env: { K: "v" }, cwd: "/tmp" });
    assert.deepEqual(JSON.parse(r.stdout), {
      command: "echo-args",
      args: ["echo-args", "-n", "hi"],
      env: [{ key: "K", value: "v" }],
      cwd: "/tmp",
    });
  });

  it("maps an end-of-stream error with x-mitos-error-code to ConflictError", async () => {
    const sb = await server.get("sb-x");
    await assert.rejects(sb.exec("paused"), (e: unknown) => {
      assert.ok(e instanceof ConflictError);
      assert.equal(e.message, "sandbox is paused");
      assert.equal(e.status, 409);
      return true;
    });
  });

  it("kills a background exec by closing its stream", async () => {
    const sb = await server.get("sb-x");
    const chunks: string[] = [];
    const h = sb.execBackground("sleep", { onStdout: (s) => chunks.push(s) });
    while (chunks.length === 0) await new Promise((r) => setTimeout(r, 5));
    assert.equal(h.running, true);
    await h.kill();
    assert.equal(h.running, false);
    await assert.rejects(h.wait(), CanceledError);
    while (!fake.execClosed) await new Promise((r) => setTimeout(r, 5));
  });

  it("reads, writes and stats files", async () => {
    const sb = await server.get("sb-f");
    assert.equal(await sb.files.readText("/a.txt"), "hello world");
    assert.ok((await sb.files.read("/a.txt")) instanceof Uint8Array);

    assert.equal(await sb.files.write("/b.txt", "data!", { mode: 0o600 }), 5);
    assert.deepEqual(fake.written, { open: { open: { path: "/b.txt", mode: 0o600 } }, data: "data!" });

    const info = await sb.files.stat("/a.txt");
    assert.deepEqual(info, { name: "a.txt", path: "/a.txt", isDir: false, size: 12, mode: 420, modifiedAtUnix: 1.7e9 });
    const stat = fake.seen.at(-1);
    assert.equal(stat?.headers["content-type"], "application/json");
    assert.equal(stat?.headers["x-sandbox-id"], "sb-f");
    await assert.rejects(sb.files.stat("/nope"), NotFoundError);
  });

  it("maps REST error envelopes and updates fields from lifecycle calls", async () => {
    await assert.rejects(server.get("missing"), (e: unknown) => {
      assert.ok(e instanceof NotFoundError);
      assert.equal(e.remediation, "fix not_found");
      assert.equal(e.status, 404);
      return true;
    });
    const sb = await server.get("sb-t");
    await assert.rejects(sb.setTimeout(99_999), TimeoutTooLargeError);
    assert.deepEqual(await sb.setTimeout(120), { deadlineUnix: 1_950_000_000, timeoutSeconds: 120 });
    assert.equal(sb.deadlineUnix, 1_950_000_000);
    await sb.pause();
    assert.equal(sb.state, "paused");
    assert.deepEqual(JSON.parse(fake.seen.at(-1)?.body.toString() ?? ""), { sandbox: "sb-t" });
    await sb.terminate();
    assert.equal(fake.seen.at(-1)?.method, "DELETE");
    assert.equal(sb.state, "terminated");
  });

  it("rejects a wrong token with UnauthorizedError", async () => {
    const other = new SandboxServer({ baseUrl: server.baseUrl, apiKey: "wrong" });
    await assert.rejects(other.get("sb-x"), { name: "UnauthorizedError", code: "unauthorized" });
    await assert.rejects(handle(server.baseUrl, "wrong").exec("true"), { name: "UnauthorizedError" });
  });
});

describe("SDK with no mitosd", () => {
  it("fails with unavailable and says how to start it", async () => {
    const probe = http.createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const server = new SandboxServer({ baseUrl: `http://127.0.0.1:${port}`, apiKey: "t", maxRetries: 1 });
    const sb = handle(server.baseUrl, "t");
    for (const call of [() => server.listSandboxes(), () => sb.exec("true"), () => sb.info()]) {
      await assert.rejects(call(), (e: unknown) => {
        assert.ok(e instanceof UnavailableError, String(e));
        assert.match(e.remediation, /mitos up/);
        assert.match(e.cause ?? "", /ECONNREFUSED/);
        return true;
      });
    }
  });
});

// A handle on sandbox `id` at `baseUrl` without a lifecycle round trip.
function handle(baseUrl: string, apiKey: string, id = "sb-z"): Sandbox {
  const config = resolveConfig({ baseUrl, apiKey, maxRetries: 1 });
  return new Sandbox(
    { http: new LifecycleClient(config), runtime: new RuntimeClient(config), config },
    toSandboxInfo({ id }),
  );
}
