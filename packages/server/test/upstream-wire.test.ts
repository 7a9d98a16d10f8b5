// UPSTREAM-WIRE.md row by row, over the wire on real VMs: what clients of the
// public Mitos sandbox-server send, sent the way they send it (raw HTTP,
// Connect JSON, Connect binary encoded field by field from the table, a
// WebSocket PTY, and a Python client that forks the way the public Python SDK
// does). Each test names the row it holds to.

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeToHttpStatus } from "@connectrpc/connect/protocol-connect";
import { defaultDataDir } from "@mitos/engine";
import { ErrorDetailSchema } from "@mitos/proto";
import WebSocket from "ws";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { repoRoot, startMitosd } from "../../../test-support/mitosd.js";
import { runtimeClient } from "../../../test-support/runtime-client.js";
import { createServer, type MitosServer } from "../src/index.js";

const root = defaultDataDir();
const dataDir = tempDataDir("test-upstream");
const run = promisify(execFile);
let server: MitosServer;
let serverClosed = false;
let parent: string;

interface Envelope {
  error: { code: string; message: string; cause?: string; remediation: string; context: Record<string, unknown> };
}

async function api(method: string, route: string, body?: unknown, token: string | null = server.token) {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return {
    status: res.status,
    text,
    json: (text ? JSON.parse(text) : undefined) as Record<string, unknown> & Envelope,
  };
}

/** One Connect envelope: flag byte, big-endian length, message. */
function envelope(flag: number, msg: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head[0] = flag;
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}

function envelopes(buf: Buffer): Array<{ flag: number; data: Buffer }> {
  const out: Array<{ flag: number; data: Buffer }> = [];
  for (let i = 0; i < buf.length; ) {
    const n = buf.readUInt32BE(i + 1);
    out.push({ flag: buf[i] as number, data: buf.subarray(i + 5, i + 5 + n) });
    i += 5 + n;
  }
  return out;
}

/** Decodes a binary message into {field number: [{wireType, value}]} (nested messages stay bytes). */
function decode(data: Uint8Array): Map<number, Array<{ wt: WireType; v: bigint | number | Uint8Array }>> {
  const r = new BinaryReader(data);
  const m = new Map<number, Array<{ wt: WireType; v: bigint | number | Uint8Array }>>();
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    let v: bigint | number | Uint8Array;
    if (wt === WireType.Varint) v = BigInt(r.uint64());
    else if (wt === WireType.Bit64) v = r.double();
    else if (wt === WireType.LengthDelimited) v = r.bytes();
    else if (wt === WireType.Bit32) v = r.fixed32();
    else throw new Error(`unexpected wire type ${wt} for field ${no}`);
    m.set(no, [...(m.get(no) ?? []), { wt, v }]);
  }
  return m;
}

const text = (b: unknown) => Buffer.from(b as Uint8Array).toString("utf8");

async function connect(method: string, sandbox: string, body: Buffer, contentType: string, token = server.token) {
  const res = await fetch(`${server.url}/sandbox.v1.Sandbox/${method}`, {
    method: "POST",
    headers: {
      "content-type": contentType,
      "connect-protocol-version": "1",
      "x-sandbox-id": sandbox,
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body,
  });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

async function execJson(sandbox: string, command: string): Promise<{ code: number; stdout: string }> {
  const r = await connect(
    "ExecStream",
    sandbox,
    envelope(0, Buffer.from(JSON.stringify({ command }))),
    "application/connect+json",
  );
  let stdout = "";
  let code = -1;
  for (const e of envelopes(r.body)) {
    const m = JSON.parse(e.data.toString()) as { stdout?: string; exit?: { exitCode?: number }; error?: unknown };
    if (e.flag & 2) assert.equal(m.error, undefined, JSON.stringify(m));
    if (m.stdout) stdout += Buffer.from(m.stdout, "base64").toString();
    if (m.exit) code = m.exit.exitCode ?? 0;
  }
  return { code, stdout };
}

before(async () => {
  server = await createServer({
    port: 0,
    dataDir,
    imagesDir: path.join(root, "images"),
    poolTargets: { python: 1 },
    logLevel: "warn",
  });
  const r = await api("POST", "/v1/sandboxes", { template: "python" });
  assert.equal(r.status, 200, r.text);
  parent = r.json.id as string;
});

after(async () => {
  if (!serverClosed) await server?.close({ killSandboxes: true });
  removeDataDir(dataDir);
});

describe("UPSTREAM-WIRE lifecycle rows", () => {
  it("row 1 + seed example: n sequential forks with pause_source leave the parent running (Python client)", async () => {
    // A client that does what the public Python SDK does: create the template
    // with init_wait_seconds, then sb.fork(8) as 8 single-child forks with
    // pause_source: true, redacting every error's cause with str.replace.
    const script = path.join(os.tmpdir(), `mitos-upstream-client-${process.pid}.py`);
    fs.writeFileSync(
      script,
      String.raw`import base64, json, struct, sys, urllib.error, urllib.request
base, token = sys.argv[1], sys.argv[2]
H = {"content-type": "application/json", "authorization": "Bearer " + token}
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, headers=H,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        err = json.loads(e.read())["error"]
        if "cause" in err:
            err["cause"] = err["cause"].replace(token, "***")  # AttributeError on null
        raise RuntimeError("%d %s" % (e.code, err["code"]))
def exec_(sid, cmd):
    body = json.dumps({"command": cmd}).encode()
    req = urllib.request.Request(base + "/sandbox.v1.Sandbox/ExecStream", method="POST",
        data=b"\0" + struct.pack(">I", len(body)) + body,
        headers={"content-type": "application/connect+json", "authorization": "Bearer " + token, "x-sandbox-id": sid})
    data, out, i = urllib.request.urlopen(req).read(), b"", 0
    while i < len(data):
        n = struct.unpack(">I", data[i + 1:i + 5])[0]
        msg = json.loads(data[i + 5:i + 5 + n])
        if data[i] & 2 and "error" in msg:
            raise RuntimeError(msg["error"])
        out += base64.b64decode(msg.get("stdout", ""))
        i += 5 + n
    return out.decode()
call("POST", "/v1/templates", {"id": "python", "init_wait_seconds": 5})
sb = call("POST", "/v1/fork", {"template": "python"})
kids = []
for i in range(8):
    kids.append(call("POST", "/v1/sandboxes/%s/fork" % sb["id"], {"template": "python", "pause_source": True}))
    assert exec_(sb["id"], "echo alive") == "alive\n"
print(" ".join(exec_(k["id"], "python3 -c 'print(%d ** 2)'" % i).strip() for i, k in enumerate(kids)))
try:
    call("GET", "/v1/sandboxes/sb-nope")
except RuntimeError as e:
    print("error", e)
print("parent", call("GET", "/v1/sandboxes/" + sb["id"])["state"], exec_(sb["id"], "echo still-here").strip())
print("ids", " ".join([sb["id"]] + [k["id"] for k in kids]))
for k in kids:
    call("DELETE", "/v1/sandboxes/" + k["id"])
call("DELETE", "/v1/sandboxes/" + sb["id"])
`,
    );
    try {
      const { stdout } = await run("python3", [script, server.url, server.token], { timeout: 600_000 });
      const lines = stdout.trim().split("\n");
      assert.equal(lines[0], "0 1 4 9 16 25 36 49");
      assert.equal(lines[1], "error 404 not_found");
      assert.equal(lines[2], "parent ready still-here");
      const ids = (lines[3] ?? "").split(" ").slice(1);
      assert.equal(ids.length, 9);
      const live = ((await api("GET", "/v1/sandboxes")).json as unknown as Array<{ id: string }>).map((s) => s.id);
      assert.deepEqual(
        ids.filter((id) => live.includes(id)),
        [],
        "no child (and not the parent) is left",
      );
    } finally {
      fs.rmSync(script, { force: true });
    }
  });

  it("row 1: fork after fork of one parent through the API, the parent answering exec in between", async () => {
    const kids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await api("POST", `/v1/sandboxes/${parent}/fork`, { pause_source: true });
      assert.equal(r.status, 200, r.text);
      kids.push(r.json.id as string);
      assert.equal((await api("GET", `/v1/sandboxes/${parent}`)).json.state, "ready");
      assert.deepEqual(await execJson(parent, "echo p"), { code: 0, stdout: "p\n" });
    }
    for (const k of kids) assert.equal((await api("DELETE", `/v1/sandboxes/${k}`)).status, 200);
  });

  it("row 2: cause is a string or absent, never null, on lifecycle routes and in Connect errors", async () => {
    const answers = [
      await api("GET", "/v1/sandboxes/sb-none"),
      await api("POST", "/v1/sandboxes", { template: 7 }),
      await api("POST", "/v1/sandboxes", "nope"),
      await api("POST", "/v1/set_timeout", { sandbox: parent, timeout_seconds: 10 ** 9 }),
      await api("GET", "/v1/nowhere"),
      await api("GET", "/v1/sandboxes", undefined, "wrong"),
    ];
    for (const a of answers) {
      assert.ok(a.status >= 400, a.text);
      assert.equal(a.text.includes("null"), false, a.text);
      assert.ok(a.json.error.cause === undefined || typeof a.json.error.cause === "string", a.text);
      assert.ok(a.json.error.remediation.length > 0);
    }
    // Connect, JSON: the envelope rides in the error's details as sandbox.v1.ErrorDetail.
    const stat = await connect("Stat", parent, Buffer.from(JSON.stringify({ path: "/nope" })), "application/json");
    assert.equal(stat.status, 404);
    const body = JSON.parse(stat.body.toString()) as { code: string; details: Array<{ type: string }> };
    assert.equal(body.code, "not_found");
    assert.equal(stat.body.toString().includes("null"), false);
    assert.equal(body.details[0]?.type, "sandbox.v1.ErrorDetail");
    // The same through a Connect client, JSON and binary.
    for (const useBinaryFormat of [false, true]) {
      const rt = runtimeClient(server, parent, { useBinaryFormat });
      const err = await rt.stat({ path: "/nope" }).catch((e: unknown) => e);
      assert.ok(err instanceof ConnectError && err.code === Code.NotFound);
      const [d] = err.findDetails(ErrorDetailSchema);
      assert.equal(d?.code, "not_found");
      assert.equal(d?.cause, "ENOENT in the guest");
      assert.ok((d?.remediation.length ?? 0) > 0);
      const unauth = await runtimeClient({ url: server.url, token: "wrong" }, parent, { useBinaryFormat })
        .stat({ path: "/" })
        .catch((e: unknown) => e);
      assert.ok(unauth instanceof ConnectError && unauth.code === Code.Unauthenticated);
      assert.equal(unauth.findDetails(ErrorDetailSchema)[0]?.code, "unauthorized");
      assert.equal(unauth.findDetails(ErrorDetailSchema)[0]?.cause, undefined, "absent, not empty or null");
    }
  });

  it("row 3: init_wait_seconds is a settle time, not a step limit; init_timeout_seconds limits each step; an existing id is 200", async () => {
    // A step that takes longer than init_wait_seconds succeeds.
    const t0 = Date.now();
    const r = await api("POST", "/v1/templates", {
      id: "up-tiny",
      image: "base",
      resources: { mem_size_mib: 256 },
      init_wait_seconds: 1,
      init: ["sleep 3", "pwd > /workspace/where.txt"],
      // A spec of this run alone: a template cache hit would skip the waits this measures.
      env: { UPSTREAM_RUN: `${process.pid}-${Date.now()}` },
    });
    assert.equal(r.status, 200, r.text);
    assert.ok(Date.now() - t0 > 4000, "the settle time and the 3 s step both ran");
    const again = await api("POST", "/v1/templates", { id: "up-tiny", init_wait_seconds: 1 });
    assert.equal(again.status, 200);
    assert.deepEqual(again.json, r.json, "the existing template, unchanged");
    // A step over init_timeout_seconds fails, saying which limit killed it.
    const slow = await api("POST", "/v1/templates", {
      id: "up-slow",
      image: "base",
      resources: { mem_size_mib: 256 },
      init: ["sleep 60"],
      init_timeout_seconds: 2,
    });
    assert.equal(slow.status, 400, slow.text);
    assert.equal(slow.json.error.code, "invalid_input");
    assert.match(slow.json.error.message, /step 1 of 1 failed with exit 124 \(killed after init_timeout_seconds=2\)/);
    const bad = await api("POST", "/v1/templates", { id: "up-x", init_wait_seconds: 100_000 });
    assert.equal(bad.status, 400);
    assert.match(bad.json.error.message, /init_wait_seconds/);
    const listed = (await api("GET", "/v1/templates")).json as unknown as Array<{ id: string }>;
    assert.ok(!listed.some((t) => t.id === "up-slow" || t.id === "up-x"));
  });

  it("row 9: unknown or unsupported keys are refused with invalid_input naming the key", async () => {
    const cases: Array<[string, string, Record<string, unknown>, string]> = [
      ["POST", "/v1/templates", { id: "up-net", network: { egress: "sometimes" } }, "network.egress"],
      ["POST", "/v1/templates", { id: "up-net", workload: "gpu" }, "workload"],
      ["POST", "/v1/templates", { id: "up-net", resources: { vcpu_count: 1, gpus: 1 } }, "resources.gpus"],
      ["POST", "/v1/sandboxes", { template: "python", timeout_secs: 60 }, "timeout_secs"],
      [
        "POST",
        "/v1/fork",
        { template: "python", network: { egress: "deny", allow_out: ["no such rule!"] } },
        "network",
      ],
      ["POST", `/v1/sandboxes/${parent}/fork`, { count: 1, replicas: 2 }, "replicas"],
      ["POST", `/v1/sandboxes/${parent}/fork`, { template: "base" }, "template"],
      ["POST", "/v1/set_timeout", { sandbox: parent, timeout_seconds: 60, extra: 1 }, "extra"],
    ];
    for (const [method, route, body, field] of cases) {
      const r = await api(method, route, body);
      assert.equal(r.status, 400, `${route} ${r.text}`);
      assert.equal(r.json.error.code, "invalid_input");
      assert.equal(r.json.error.context.field, field, r.text);
      assert.ok(r.json.error.message.includes(field), r.text);
    }
    // null means "not set": accepted, as clients that send every optional key do.
    const ok = await api("POST", "/v1/sandboxes", { template: "python", network: null });
    assert.equal(ok.status, 200, ok.text);
    await api("DELETE", `/v1/sandboxes/${ok.json.id as string}`);
    // A policy for a template built without a NIC: refused, naming the remedy.
    const noNic = await api("POST", "/v1/sandboxes", { template: "python", network: { egress: "allow" } });
    assert.equal(noNic.status, 400, noNic.text);
    assert.match(noNic.json.error.message, /has no network device/);
  });

  it("row 10 (DELETE /v1/templates): conflict while used, force terminates; the RAM base is freed; then not_found", async () => {
    const rec = server.engine.templateRecord("up-tiny");
    assert.ok(rec, "up-tiny was built by the row 3 test");
    const bytes = fs.statSync(rec.ramFile).blocks * 512;
    assert.ok(bytes > 16 * 2 ** 20, `the template's base holds RAM (${bytes} bytes)`);
    // RAM held by the files of this engine's shm dir (tmpfs: allocated blocks are RAM).
    const shmBytes = () =>
      fs
        .readdirSync(server.engine.shmDir)
        .reduce((n, f) => n + fs.statSync(path.join(server.engine.shmDir, f)).blocks * 512, 0);
    const shmBefore = shmBytes();
    const sb = await api("POST", "/v1/sandboxes", { template: "up-tiny" });
    assert.equal(sb.status, 200, sb.text);
    const id = sb.json.id as string;
    assert.deepEqual(await execJson(id, "cat /workspace/where.txt"), { code: 0, stdout: "/workspace\n" });
    const busy = await api("DELETE", "/v1/templates/up-tiny");
    assert.equal(busy.status, 409, busy.text);
    assert.equal(busy.json.error.code, "conflict");
    assert.deepEqual(busy.json.error.context.sandboxes, [id]);
    const gone = await api("DELETE", "/v1/templates/up-tiny?force=true");
    assert.equal(gone.status, 200, gone.text);
    assert.deepEqual(gone.json, { status: "deleted", id: "up-tiny" });
    assert.equal((await api("GET", `/v1/sandboxes/${id}`)).status, 404, "force terminated its sandbox");
    // The base's bytes are gone: no file, and no process maps it any more.
    assert.equal(fs.existsSync(rec.ramFile), false);
    assert.equal(fs.existsSync(rec.stateFile), false);
    const freed = shmBefore - shmBytes();
    assert.ok(freed >= bytes, `the shm dir gave back ${freed} of ${bytes} bytes`);
    const mappers = (await run("sh", ["-c", `grep -l ${JSON.stringify(rec.ramFile)} /proc/[0-9]*/maps || true`]))
      .stdout;
    assert.equal(mappers.trim(), "", "no process maps the deleted base");
    const created = await api("POST", "/v1/sandboxes", { template: "up-tiny" });
    assert.equal(created.status, 404);
    assert.equal(created.json.error.code, "not_found");
    assert.equal((await api("DELETE", "/v1/templates/up-tiny")).status, 404);
  });
});

describe("UPSTREAM-WIRE runtime rows", () => {
  it("row 4: /workspace is the default cwd, writable; WriteFile makes parents; Mkdir makes parents", async () => {
    assert.deepEqual(await execJson(parent, "pwd && touch x && ls -d /workspace"), {
      code: 0,
      stdout: "/workspace\n/workspace\n",
    });
    const rt = runtimeClient(server, parent);
    async function* chunks() {
      yield { msg: { case: "open" as const, value: { path: "/workspace/new/dir/plan.txt", mode: 0 } } };
      yield { msg: { case: "data" as const, value: Buffer.from("the plan") } };
    }
    const w = await rt.writeFile(chunks());
    assert.equal(w.bytesWritten, 8n);
    assert.deepEqual(await execJson(parent, "cat new/dir/plan.txt"), { code: 0, stdout: "the plan" });
    await rt.mkdir({ path: "/workspace/m/n/o" });
    await rt.mkdir({ path: "/workspace/m/n/o" });
    assert.equal((await rt.stat({ path: "/workspace/m/n/o" })).isDir, true);
  });

  it("row 5: Remove {path} is recursive, a missing path is a no-op; strict and recursive:false keep the old answers", async () => {
    await execJson(parent, "mkdir -p /workspace/rm/a/b && echo x > /workspace/rm/a/b/f");
    const rm = (body: Record<string, unknown>) =>
      connect("Remove", parent, Buffer.from(JSON.stringify(body)), "application/json");
    const keep = await rm({ path: "/workspace/rm", recursive: false });
    assert.equal(keep.status, codeToHttpStatus(Code.FailedPrecondition), keep.body.toString());
    assert.match(keep.body.toString(), /not empty/i);
    const r = await rm({ path: "/workspace/rm" });
    assert.equal(r.status, 200, r.body.toString());
    assert.equal((await execJson(parent, "test -e /workspace/rm; echo $?")).stdout, "1\n");
    assert.equal((await rm({ path: "/workspace/rm" })).status, 200, "missing: nothing to do");
    const strict = await rm({ path: "/workspace/rm", strict: true });
    assert.equal(strict.status, 404);
    assert.equal((await rm({ path: "/" })).status, 400, "never the whole root");
  });

  it("row 6: a PTY opened without a command is the login shell (bash), in /workspace, sized as asked", async () => {
    const ws = new WebSocket(
      `${server.url.replace("http", "ws")}/sandbox.v1.Sandbox/Exec?sandbox=${parent}`,
      "connect.sandbox.v1",
      {
        headers: { authorization: `Bearer ${server.token}` },
      },
    );
    let screen = "";
    let end = "";
    ws.on("message", (data: Buffer) => {
      for (const e of envelopes(data)) {
        const m = JSON.parse(e.data.toString()) as { stdout?: string };
        if (e.flag & 2) end = e.data.toString();
        else if (m.stdout) screen += Buffer.from(m.stdout, "base64").toString();
      }
    });
    await new Promise((r, j) => ws.once("open", r).once("error", j));
    const send = (m: unknown) => ws.send(envelope(0, Buffer.from(JSON.stringify(m))));
    send({ open: { pty: { size: { cols: 100, rows: 30 } } } });
    send({
      stdin: Buffer.from('echo "sh=$0 login=$(shopt -q login_shell && echo y) cwd=$PWD size=$(stty size)"\r').toString(
        "base64",
      ),
    });
    const until = Date.now() + 30_000;
    while (!/sh=\S*bash login=y cwd=\/workspace size=30 100/.test(screen) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(screen, /sh=\S*bash login=y cwd=\/workspace size=30 100/);
    send({ stdin: Buffer.from("exit 5\r").toString("base64") });
    await new Promise((r) => ws.once("close", r));
    assert.equal(end, "{}");
    assert.match(screen, /exit 5/);
  });

  it("row 8: unknown and declared-but-unserved Connect methods answer unimplemented in Connect's format", async () => {
    // Declared upstream (Watch): a server stream, the error in the end-of-stream message.
    const stream = await connect(
      "Watch",
      parent,
      envelope(0, Buffer.from(JSON.stringify({ path: "/workspace" }))),
      "application/connect+json",
    );
    assert.equal(stream.status, 200);
    const [end] = envelopes(stream.body);
    assert.equal(end?.flag, 2);
    const err = JSON.parse(end?.data.toString() ?? "{}") as { error: { code: string; message: string } };
    assert.equal(err.error.code, "unimplemented");
    assert.match(err.error.message, /not implemented by mitosd yet: filesystem watches/);
    // Not declared at all: unary and streaming both.
    const unary = await connect("NoSuchMethod", parent, Buffer.from("{}"), "application/json");
    assert.equal(unary.status, codeToHttpStatus(Code.Unimplemented));
    assert.equal((JSON.parse(unary.body.toString()) as { code: string }).code, "unimplemented");
    const s2 = await connect("NoSuchStream", parent, envelope(0, Buffer.from("{}")), "application/connect+json");
    assert.equal(s2.status, 200);
    assert.equal(
      (JSON.parse(envelopes(s2.body)[0]?.data.toString() ?? "") as { error: { code: string } }).error.code,
      "unimplemented",
    );
    // Through a generated client, JSON and binary.
    for (const useBinaryFormat of [false, true]) {
      const rt = runtimeClient(server, parent, { useBinaryFormat });
      const e = await (async () => {
        for await (const _ of rt.watch({ path: "/workspace" })) void _;
      })().catch((x: unknown) => x);
      assert.ok(e instanceof ConnectError && e.code === Code.Unimplemented, String(e));
      const b = await rt.budget({}).catch((x: unknown) => x);
      assert.ok(b instanceof ConnectError && b.code === Code.Unimplemented);
    }
  });

  it("binary codec, ExecStream: fields as UPSTREAM-WIRE.md numbers them (exec_time_ms a double)", async () => {
    const req = new BinaryWriter()
      .tag(1, WireType.LengthDelimited)
      .string("echo out; echo err >&2; exit 3")
      .tag(5, WireType.Varint)
      .int32(30)
      .finish();
    const r = await connect("ExecStream", parent, envelope(0, req), "application/connect+proto");
    assert.equal(r.status, 200);
    let stdout = "";
    let stderr = "";
    let exit: ReturnType<typeof decode> | undefined;
    for (const e of envelopes(r.body)) {
      if (e.flag & 2) {
        assert.equal(e.data.toString(), "{}");
        continue;
      }
      const m = decode(e.data);
      if (m.has(1)) stdout += text(m.get(1)?.[0]?.v);
      if (m.has(2)) stderr += text(m.get(2)?.[0]?.v);
      if (m.has(3)) exit = decode(m.get(3)?.[0]?.v as Uint8Array);
    }
    assert.equal(stdout, "out\n");
    assert.equal(stderr, "err\n");
    assert.ok(exit);
    assert.equal(exit.get(1)?.[0]?.v, 3n, "exit_code = 1, varint");
    assert.equal(exit.get(2)?.[0]?.wt, WireType.Bit64, "exec_time_ms = 2 is a double");
    assert.ok((exit.get(2)?.[0]?.v as number) > 0);
  });

  it("binary codec, List: page_size = 2, page_token = 3, filter = 4; next_page_token = 2", async () => {
    await execJson(
      parent,
      "mkdir -p /workspace/ls/d1 /workspace/ls/d2 && touch /workspace/ls/a /workspace/ls/b /workspace/ls/c",
    );
    const list = async (pageSize: number, token: string, filter: string) => {
      const w = new BinaryWriter().tag(1, WireType.LengthDelimited).string("/workspace/ls");
      if (pageSize) w.tag(2, WireType.Varint).int32(pageSize);
      if (token) w.tag(3, WireType.LengthDelimited).string(token);
      if (filter) w.tag(4, WireType.LengthDelimited).string(filter);
      const r = await connect("List", parent, Buffer.from(w.finish()), "application/proto");
      assert.equal(r.status, 200, r.body.toString());
      const m = decode(r.body);
      const entries = (m.get(1) ?? []).map((e) => decode(e.v as Uint8Array));
      return {
        names: entries.map((e) => text(e.get(1)?.[0]?.v)),
        dirs: entries.map((e) => e.get(3)?.[0]?.v === 1n),
        paths: entries.map((e) => text(e.get(2)?.[0]?.v)),
        next: m.has(2) ? text(m.get(2)?.[0]?.v) : "",
      };
    };
    const p1 = await list(2, "", "");
    assert.deepEqual(p1.names, ["a", "b"]);
    assert.deepEqual(p1.paths, ["/workspace/ls/a", "/workspace/ls/b"]);
    assert.notEqual(p1.next, "");
    const p2 = await list(2, p1.next, "");
    assert.deepEqual(p2.names, ["c", "d1"]);
    const p3 = await list(2, p2.next, "");
    assert.deepEqual(p3.names, ["d2"]);
    assert.equal(p3.next, "");
    const dirs = await list(0, "", "is_dir=true");
    assert.deepEqual(
      [dirs.names, dirs.dirs],
      [
        ["d1", "d2"],
        [true, true],
      ],
    );
  });

  it("binary codec, Processes: cpu_percent = 5 (double), rss_bytes = 6 (int64)", async () => {
    const r = await connect("Processes", parent, Buffer.alloc(0), "application/proto");
    assert.equal(r.status, 200);
    const procs = (decode(r.body).get(1) ?? []).map((p) => decode(p.v as Uint8Array));
    assert.ok(procs.length > 2);
    const init = procs.find((p) => p.get(1)?.[0]?.v === 1n);
    assert.ok(init, "pid 1 (the agent) is listed");
    assert.equal(text(init.get(4)?.[0]?.v).length, 1, "state = 4, one letter");
    assert.equal(init.get(6)?.[0]?.wt, WireType.Varint);
    assert.ok((init.get(6)?.[0]?.v as bigint) > 0n, "rss_bytes = 6");
    for (const p of procs) {
      const cpu = p.get(5)?.[0];
      if (cpu) assert.equal(cpu.wt, WireType.Bit64, "cpu_percent = 5 is a double");
    }
  });

  it("binary codec, Exec over h2c: stdin_close = 4 is a bool", async () => {
    const rt = runtimeClient(server, parent, { httpVersion: "2", useBinaryFormat: true });
    async function* inputs() {
      yield { input: { case: "open" as const, value: { command: "wc -c" } } };
      yield { input: { case: "stdin" as const, value: Buffer.from("12345") } };
      yield { input: { case: "stdinClose" as const, value: true } };
    }
    let out = "";
    let code = -1;
    for await (const m of rt.exec(inputs())) {
      if (m.event.case === "stdout") out += Buffer.from(m.event.value).toString();
      if (m.event.case === "exit") code = m.event.value.exitCode;
    }
    assert.equal(out.trim(), "5");
    assert.equal(code, 0);
  });
});

describe("UPSTREAM-WIRE row 7: --auth none", () => {
  it("exits non-zero with a clear message on a non-loopback address", async () => {
    const p = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        path.join(repoRoot, "packages/server/src/bin/mitosd.ts"),
        "--auth",
        "none",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--data-dir",
        path.join(root, "test-upstream-noauth-refused"),
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let err = "";
    p.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    const code = await new Promise<number | null>((r) => p.once("exit", r));
    assert.equal(code, 2);
    assert.match(err, /auth "none" is refused on 0\.0\.0\.0/);
    assert.match(err, /loopback/);
    removeDataDir(path.join(root, "test-upstream-noauth-refused"));
  });

  it("on loopback, calls without a token work and /v1/health says auth: none", async () => {
    // The same data dir (its python template) in a real mitosd process.
    await server.close({ killSandboxes: true });
    serverClosed = true;
    const d = await startMitosd(dataDir, ["--auth", "none"]);
    try {
      const health = (await (await fetch(`${d.url}/v1/health`)).json()) as { auth: string };
      assert.equal(health.auth, "none");
      const created = await fetch(`${d.url}/v1/sandboxes`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ template: "python" }),
      });
      assert.equal(created.status, 200);
      const sb = (await created.json()) as { id: string };
      const rt = runtimeClient({ url: d.url, token: "" }, sb.id);
      let out = "";
      for await (const m of rt.execStream({ command: "echo tokenless" })) {
        if (m.event.case === "stdout") out += Buffer.from(m.event.value).toString();
      }
      assert.equal(out, "tokenless\n");
      assert.equal((await fetch(`${d.url}/v1/sandboxes/${sb.id}`, { method: "DELETE" })).status, 200);
    } finally {
      await d.stop();
    }
  });
});
