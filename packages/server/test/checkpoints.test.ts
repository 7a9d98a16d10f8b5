// Checkpoints on real VMs through mitosd: save a running sandbox (a file, a
// background process, a live Python interpreter's variable), restart
// mitosd, create and fork from the checkpoint; consecutive checkpoints share
// chunks (bytes on disk measured); delete frees what nobody else names.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { SandboxServer } from "@mitos/sdk";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { createServer, type MitosServer } from "../src/index.js";

const dataDir = tempDataDir("test-checkpoints");
const imagesDir = path.join(path.dirname(dataDir), "images");
let server: MitosServer;

const start = () => createServer({ port: 0, dataDir, imagesDir, poolTargets: {}, spareVms: 0, logLevel: "warn" });

async function api(method: string, route: string, body?: unknown) {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: { "content-type": "application/json", authorization: `Bearer ${server.token}` },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, text, json: (text ? JSON.parse(text) : undefined) as Record<string, unknown> };
}

async function sh(id: string, command: string): Promise<string> {
  const r = await server.engine.exec(id, { command }).result;
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/** Bytes of the checkpoint store's chunks on disk. */
function storeBytes(): number {
  const chunks = path.join(dataDir, "checkpoints", "chunks");
  let n = 0;
  for (const d of fs.readdirSync(chunks))
    for (const f of fs.readdirSync(path.join(chunks, d))) n += fs.statSync(path.join(chunks, d, f)).size;
  return n;
}

before(async () => {
  server = await start();
});

after(async () => {
  await server?.close({ killSandboxes: true });
  removeDataDir(dataDir);
});

describe("checkpoints", () => {
  let cp1 = "";

  it("saves a running sandbox; a second checkpoint adds only what changed", async () => {
    const sb = await api("POST", "/v1/sandboxes", { template: "python" });
    assert.equal(sb.status, 200, sb.text);
    const id = sb.json.id as string;
    // A file, a background process, and a live interpreter holding a variable it keeps writing out.
    await server.engine.agent(id).writeFile("/workspace/notes.txt", "kept\n");
    await server.engine
      .agent(id)
      .writeFile(
        "/workspace/live.py",
        "import time\nx = sum(range(10)) * 7\nwhile True:\n    open('/tmp/x', 'w').write(str(x))\n    time.sleep(0.2)\n",
      );
    await sh(id, "(python3 live.py &) >/dev/null 2>&1; while [ ! -s /tmp/x ]; do sleep 0.1; done");
    const r1 = await api("POST", `/v1/sandboxes/${id}/checkpoints`, { name: "with-interpreter" });
    assert.equal(r1.status, 200, r1.text);
    cp1 = r1.json.id as string;
    assert.match(cp1, /^cp-[0-9a-f]{12}$/);
    assert.equal(r1.json.name, "with-interpreter");
    assert.equal(r1.json.sandbox_id, id);
    assert.equal(r1.json.added_bytes, r1.json.bytes, "the first checkpoint shares nothing");
    assert.ok((r1.json.bytes as number) > 1 << 20);
    assert.equal(storeBytes(), r1.json.bytes);
    // The sandbox ran on through the checkpoint.
    assert.equal(await sh(id, "cat /workspace/notes.txt"), "kept\n");
    await sh(id, "echo changed > /workspace/second.txt");
    const before2 = storeBytes();
    const r2 = await api("POST", `/v1/sandboxes/${id}/checkpoints`, {});
    assert.equal(r2.status, 200, r2.text);
    const added = storeBytes() - before2;
    assert.equal(added, r2.json.added_bytes);
    // What the second adds grows with the time between the two: the running interpreter rewrites
    // /tmp/x five times a second and the guest's allocator hands it fresh pages (1.4 MiB of 19 MiB on
    // a quiet host, 5 MiB under a loaded CI run).
    assert.ok(
      added < (r2.json.bytes as number) / 2,
      `the second checkpoint wrote ${added} of its ${r2.json.bytes} bytes: the rest is shared`,
    );
    assert.equal(r2.json.name, null);
    const list = (await api("GET", "/v1/checkpoints")).json as unknown as Array<{ id: string }>;
    assert.deepEqual(
      list.map((c) => c.id),
      [cp1, r2.json.id],
    );
    // Delete the second: only its own chunks go.
    assert.equal((await api("DELETE", `/v1/checkpoints/${r2.json.id as string}`)).status, 200);
    assert.equal(storeBytes(), before2);
    assert.equal((await api("DELETE", `/v1/sandboxes/${id}`)).status, 200);
  });

  it("after a mitosd restart: create from it has the file, the process and the interpreter's variable", async () => {
    await server.close({ killSandboxes: true });
    server = await start();
    const listed = (await api("GET", "/v1/checkpoints")).json as unknown as Array<{ id: string }>;
    assert.deepEqual(
      listed.map((c) => c.id),
      [cp1],
    );
    const r = await api("POST", "/v1/sandboxes", { checkpoint: cp1 });
    assert.equal(r.status, 200, r.text);
    const id = r.json.id as string;
    assert.equal(r.json.template_id, "python");
    assert.equal(await sh(id, "cat /workspace/notes.txt"), "kept\n");
    // The interpreter is alive with its variable: it writes the file again once removed.
    await sh(id, "rm /tmp/x; while [ ! -s /tmp/x ]; do sleep 0.1; done");
    assert.equal(await sh(id, "cat /tmp/x"), "315");
    assert.equal(
      await sh(id, "test -e /workspace/second.txt && echo yes || echo no"),
      "no\n",
      "the first checkpoint's state",
    );
    assert.equal((await api("DELETE", `/v1/sandboxes/${id}`)).status, 200);
  });

  it("fork(3) of the checkpoint: three sandboxes that see its state and diverge", async () => {
    const r = await api("POST", `/v1/checkpoints/${cp1}/fork`, { count: 3 });
    assert.equal(r.status, 200, r.text);
    const kids = (r.json.sandboxes as Array<{ id: string }>).map((s) => s.id);
    assert.equal(kids.length, 3);
    await Promise.all(kids.map((k, i) => sh(k, `echo child-${i} >> /workspace/notes.txt`)));
    const notes = await Promise.all(kids.map((k) => sh(k, "cat /workspace/notes.txt")));
    assert.deepEqual(
      notes,
      kids.map((_, i) => `kept\nchild-${i}\n`),
    );
    const boot = await Promise.all(kids.map((k) => sh(k, "cat /proc/sys/kernel/random/boot_id; hostname")));
    assert.equal(new Set(boot).size, 3, "each its own identity");
    for (const k of kids) assert.equal((await api("DELETE", `/v1/sandboxes/${k}`)).status, 200);
  });

  it("through the TypeScript SDK: checkpoint(), listCheckpoints(), fromCheckpoint(), forkCheckpoint(), deleteCheckpoint()", async () => {
    const sdk = new SandboxServer({ baseUrl: server.url, apiKey: server.token });
    const sb = await sdk.fork("python");
    await sb.exec("echo sdk > /workspace/s.txt");
    const cp = await sb.checkpoint({ name: "sdk" });
    assert.equal(cp.name, "sdk");
    assert.equal(cp.sandboxId, sb.id);
    assert.ok(cp.bytes > 0 && cp.addedBytes <= cp.bytes);
    assert.ok((await sdk.listCheckpoints()).some((c) => c.id === cp.id));
    await sb.terminate();
    const one = await sdk.fromCheckpoint(cp.id);
    assert.equal((await one.exec("cat /workspace/s.txt")).stdout, "sdk\n");
    const two = await sdk.forkCheckpoint(cp.id, 2);
    assert.equal(two.length, 2);
    for (const k of two) assert.equal((await k.exec("cat s.txt")).stdout, "sdk\n");
    await Promise.all([one, ...two].map((k) => k.terminate()));
    await sdk.deleteCheckpoint(cp.id);
    assert.ok(!(await sdk.listCheckpoints()).some((c) => c.id === cp.id));
    // Hibernate through the SDK.
    const h = await sdk.fork("python");
    await h.exec("echo h > /workspace/h2.txt");
    await h.pause({ hibernate: true });
    assert.equal((await sdk.get(h.id)).memory?.privateBytes, 0);
    await h.resume();
    assert.equal((await h.exec("cat /workspace/h2.txt")).stdout, "h\n");
    await h.terminate();
  });

  it("hibernate: pause frees the sandbox's host memory; resume brings it back with its processes, same id", async () => {
    const sb = await api("POST", "/v1/sandboxes", { template: "python" });
    const id = sb.json.id as string;
    await server.engine
      .agent(id)
      .writeFile(
        "/workspace/h.py",
        "import time\ny = 'still-here'\nwhile True:\n    open('/tmp/y', 'w').write(y)\n    time.sleep(0.2)\n",
      );
    await sh(
      id,
      "(python3 h.py &) >/dev/null 2>&1; while [ ! -s /tmp/y ]; do sleep 0.1; done; echo f > /workspace/h.txt",
    );
    const pid = server.engine.get(id).pid;
    const before = (await api("GET", `/v1/sandboxes/${id}`)).json.memory as { private_bytes: number };
    assert.ok(before.private_bytes > 16 << 20, `a running VM holds memory: ${before.private_bytes}`);
    const hib = await api("POST", "/v1/pause", { sandbox: id, hibernate: true });
    assert.equal(hib.status, 200, hib.text);
    assert.deepEqual(hib.json, { status: "paused", hibernated: true });
    assert.equal(fs.existsSync(`/proc/${pid}`), false, "its QEMU is gone");
    const paused = (await api("GET", `/v1/sandboxes/${id}`)).json;
    assert.equal(paused.state, "paused");
    assert.equal(paused.hibernated, true);
    assert.deepEqual(paused.memory, { private_bytes: 0, shared_bytes: 0 });
    const hostNow = server.engine.metering().sandboxes.find((r) => r.id === id);
    assert.equal(hostNow, undefined, "metering counts nothing for it");
    assert.equal((await api("GET", "/v1/checkpoints")).text.includes(id), false, "its checkpoint is not listed");
    assert.throws(() => server.engine.exec(id, { command: "true" }), /paused/);
    const res = await api("POST", "/v1/resume", { sandbox: id });
    assert.equal(res.status, 200, res.text);
    const back = (await api("GET", `/v1/sandboxes/${id}`)).json;
    assert.equal(back.state, "ready");
    assert.equal(back.hibernated, false);
    assert.equal(await sh(id, "cat /workspace/h.txt"), "f\n");
    await sh(id, "rm /tmp/y; while [ ! -s /tmp/y ]; do sleep 0.1; done");
    assert.equal(await sh(id, "cat /tmp/y"), "still-here", "the interpreter runs on with its variable");
    const guest = Number(await sh(id, "date +%s"));
    assert.ok(Math.abs(guest - Date.now() / 1000) < 3, `clock stepped: guest ${guest}`);
    assert.equal(await sh(id, "hostname"), `${id}\n`);
    assert.equal((await api("DELETE", `/v1/sandboxes/${id}`)).status, 200);
    assert.equal(
      server.engine.checkpoints.list().some((c) => c.hidden),
      false,
      "the hibernation checkpoint went at resume",
    );
  });

  it("refuses what makes no sense, and deleting frees the chunks", async () => {
    assert.equal((await api("POST", "/v1/sandboxes", { checkpoint: "cp-000000000000" })).status, 404);
    const both = await api("POST", "/v1/sandboxes", { checkpoint: cp1, template: "python" });
    assert.equal(both.status, 400);
    assert.equal((await api("POST", "/v1/sandboxes/sb-none/checkpoints", {})).status, 404);
    assert.equal((await api("GET", "/v1/checkpoints/../../etc")).status, 404);
    assert.equal((await api("DELETE", `/v1/checkpoints/${cp1}`)).status, 200);
    assert.equal(storeBytes(), 0);
    assert.equal((await api("GET", `/v1/checkpoints/${cp1}`)).status, 404);
  });
});
