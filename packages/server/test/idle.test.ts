// Automatic hibernation and checkpoint retention on real VMs through mitosd
// (docs/checkpoints.md): a sandbox nobody touches is hibernated (its QEMU
// gone, no host memory), and the next runtime call through the SDK wakes it
// with its processes and files; with a retention of 2 a sandbox keeps only
// its two newest checkpoints.

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { SandboxServer } from "@mitos/sdk";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { running } from "../../../test-support/leaks.js";
import { createServer, type MitosServer } from "../src/index.js";

const dataDir = tempDataDir("test-idle");
const imagesDir = path.join(path.dirname(dataDir), "images");
let server: MitosServer;
let sdk: SandboxServer;

before(async () => {
  server = await createServer({
    port: 0,
    dataDir,
    imagesDir,
    poolTargets: {},
    spareVms: 0,
    logLevel: "warn",
    hibernateIdleSeconds: 3,
    checkpointRetention: 2,
  });
  sdk = new SandboxServer({ baseUrl: server.url, apiKey: server.token });
});

after(async () => {
  await server?.close({ killSandboxes: true });
  removeDataDir(dataDir);
});

const get = async (id: string) =>
  (await (
    await fetch(`${server.url}/v1/sandboxes/${id}`, { headers: { authorization: `Bearer ${server.token}` } })
  ).json()) as { state: string; hibernated: boolean; memory: { private_bytes: number } };

describe("idle hibernation and retention", () => {
  it("an untouched sandbox is hibernated; the next exec wakes it with its processes and files", async () => {
    const sb = await sdk.fork("python", { timeoutSeconds: 900 });
    await sb.exec(
      "echo kept > /workspace/f; (i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done) >/dev/null 2>&1 &",
    );
    const pid = server.engine.get(sb.id).pid;
    const until = Date.now() + 120_000;
    while (!(await get(sb.id)).hibernated) {
      assert.ok(Date.now() < until, "hibernated within two minutes of 3 s idle");
      await new Promise((r) => setTimeout(r, 500));
    }
    const asleep = await get(sb.id);
    assert.equal(asleep.state, "paused");
    assert.equal(asleep.memory.private_bytes, 0);
    // The sandbox shows hibernated as soon as its checkpoint is written; its QEMU stops right after.
    const gone = Date.now() + 15_000;
    while (running(pid)) {
      assert.ok(Date.now() < gone, "its QEMU is gone");
      await new Promise((r) => setTimeout(r, 100));
    }
    // No resume call: the runtime call itself wakes it.
    const r = await sb.exec(
      "cat /workspace/f; a=$(cat /tmp/n); sleep 1; b=$(cat /tmp/n); [ $b -gt $a ] && echo counting",
    );
    assert.equal(r.stdout, "kept\ncounting\n");
    const awake = await get(sb.id);
    assert.equal(awake.state, "ready");
    assert.equal(awake.hibernated, false);
    await sb.terminate();
  });

  it("with a retention of 2, a sandbox keeps its two newest checkpoints", async () => {
    const sb = await sdk.fork("python");
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      await sb.exec(`echo ${i} > /workspace/gen`);
      ids.push((await sb.checkpoint({ name: `gen-${i}` })).id);
    }
    const kept = (await sdk.listCheckpoints()).filter((c) => c.sandboxId === sb.id).map((c) => c.id);
    assert.deepEqual(kept.sort(), ids.slice(1).sort(), "the oldest went");
    const [restored] = await sdk.forkCheckpoint(ids[1] as string, 1);
    assert.equal((await restored?.exec("cat /workspace/gen"))?.stdout, "1\n");
    await restored?.terminate();
    await sb.terminate();
    for (const id of ids.slice(1)) await sdk.deleteCheckpoint(id);
  });
});
