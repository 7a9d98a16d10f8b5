// Faults at the daemon level, on a real mitosd process: killed (SIGKILL) in
// the middle of a fork and restarted on the same data dir (decision 0012: the
// new run re-adopts the source and reaps the half-made children), and a guest
// kernel panic seen through the runtime API while the daemon stays up.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, it } from "node:test";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { shmDirFor } from "@mitos/engine";
import { Sandbox as SandboxService } from "@mitos/proto";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { assertNoLeaks, qemuPidsOf, running } from "../../../test-support/leaks.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";

const dataDir = tempDataDir("test-server-faults");
const owned = { dataDir, shmDir: shmDirFor(dataDir) };
let daemon: Daemon;

const api = async (method: string, route: string, body?: unknown) => {
  const res = await fetch(`${daemon.url}${route}`, {
    method,
    headers: { authorization: `Bearer ${daemon.token}`, "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
};

/** Runs a command through the Connect runtime service; resolves with stdout and the exit code. */
async function exec(sandboxId: string, command: string): Promise<{ stdout: string; exitCode: number }> {
  const transport = createConnectTransport({
    baseUrl: daemon.url,
    httpVersion: "1.1",
    interceptors: [
      (next) => async (req) => {
        req.header.set("authorization", `Bearer ${daemon.token}`);
        req.header.set("x-sandbox-id", sandboxId);
        return next(req);
      },
    ],
  });
  let stdout = "";
  let exitCode = -1;
  for await (const m of createClient(SandboxService, transport).execStream({ command })) {
    if (m.event.case === "stdout") stdout += Buffer.from(m.event.value).toString();
    if (m.event.case === "exit") exitCode = m.event.value.exitCode ?? 0;
  }
  return { stdout, exitCode };
}

async function newSandbox(): Promise<string> {
  const r = await api("POST", "/v1/sandboxes", { template: "python" });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.id as string;
}

before(async () => {
  daemon = await startMitosd(dataDir);
  const t = await api("POST", "/v1/templates", { id: "python" });
  assert.equal(t.status, 200, JSON.stringify(t.json));
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
});

it("a guest kernel panic: the exec ends with unavailable, the sandbox is failed, the daemon serves on", async () => {
  const [victim, bystander] = [await newSandbox(), await newSandbox()];
  const err = await exec(victim, "echo c > /proc/sysrq-trigger; sleep 60").catch((e: unknown) => e);
  assert.ok(err instanceof ConnectError, `expected a Connect error, got ${JSON.stringify(err)}`);
  assert.equal(err.metadata.get("x-mitos-error-code"), "unavailable");
  assert.ok((err.metadata.get("x-mitos-remediation") ?? "").length > 10);
  const until = Date.now() + 10_000;
  while ((await api("GET", `/v1/sandboxes/${victim}`)).json.state !== "failed") {
    assert.ok(Date.now() < until, "the panicked sandbox is reported failed");
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal((await exec(bystander, "echo alive")).stdout, "alive\n");
  for (const id of [victim, bystander]) assert.equal((await api("DELETE", `/v1/sandboxes/${id}`)).status, 200);
  await assertNoLeaks(owned);
});

it("mitosd killed mid-fork and restarted: the source is re-adopted, the half-made children are reaped, no file leaks, a new sandbox works", async () => {
  const source = await newSandbox();
  assert.equal((await exec(source, "echo before > /root/mark")).exitCode, 0);
  const before = new Set(qemuPidsOf(dataDir));
  const fork = api("POST", `/v1/sandboxes/${source}/fork`, { count: 4 }).catch((e: Error) => e);
  // Kill it once the first child's QEMU exists: restores in flight, none yet adopted.
  const until = Date.now() + 60_000;
  while (!qemuPidsOf(dataDir).some((p) => !before.has(p))) {
    assert.ok(Date.now() < until, "a child QEMU appeared");
    await new Promise((r) => setTimeout(r, 10));
  }
  await daemon.kill();
  assert.ok((await fork) instanceof Error, "the fork request died with the daemon");
  const orphans = qemuPidsOf(dataDir);
  assert.ok(
    orphans.some((p) => !before.has(p)),
    "the dead daemon left child QEMUs behind (test premise)",
  );

  daemon = await startMitosd(dataDir);
  // The source is re-adopted (restarts keep sandboxes); the half-made children are reaped.
  const list = (await api("GET", "/v1/sandboxes")).json as unknown as Array<{ id: string }>;
  assert.deepEqual(
    list.map((s) => s.id),
    [source],
    "only the source survives the crash",
  );
  // QEMUs started for the fork (not there before it) are gone.
  for (const pid of orphans) {
    if (!before.has(pid)) assert.ok(!running(pid), `child QEMU ${pid} of the dead run was reaped`);
  }
  await assertNoLeaks(owned);
  assert.equal((await exec(source, "cat /root/mark")).stdout, "before\n", "the source keeps its state");
  assert.equal((await api("DELETE", `/v1/sandboxes/${source}`)).status, 200);

  const fresh = await newSandbox();
  assert.equal((await exec(fresh, "cat /root/mark 2>/dev/null; echo ok")).stdout, "ok\n");
  assert.equal((await api("DELETE", `/v1/sandboxes/${fresh}`)).status, 200);
  await daemon.stop();
  assert.deepEqual(qemuPidsOf(dataDir), [], "a clean stop leaves no QEMU");
  await assertNoLeaks(owned);
});

it("mitosd killed mid-checkpoint and restarted: no half-written checkpoint is listed, its chunks and files are gone", async () => {
  daemon = await startMitosd(dataDir); // the test before stops its daemon
  const source = await newSandbox();
  const store = path.join(dataDir, "checkpoints");
  const staging = () => (fs.existsSync(store) ? fs.readdirSync(store).filter((f) => f.startsWith("tmp-")) : []);
  const cp = api("POST", `/v1/sandboxes/${source}/checkpoints`, {}).catch((e: Error) => e);
  // Kill it while the chunks are being written (its staging dir exists).
  const until = Date.now() + 60_000;
  while (staging().length === 0) {
    assert.ok(Date.now() < until, "the checkpoint's staging dir appeared");
    await new Promise((r) => setTimeout(r, 5));
  }
  await daemon.kill();
  assert.ok((await cp) instanceof Error, "the checkpoint request died with the daemon");

  daemon = await startMitosd(dataDir);
  assert.deepEqual((await api("GET", "/v1/checkpoints")).json, [], "nothing half-written is listed");
  assert.deepEqual(staging(), [], "the staging dir is gone");
  const chunks = path.join(store, "chunks");
  const left = fs.readdirSync(chunks).flatMap((d) => fs.readdirSync(path.join(chunks, d)));
  assert.deepEqual(left, [], "chunks no manifest names were collected");
  await assertNoLeaks(owned);
  // And checkpoints work again.
  const fresh = await newSandbox();
  const ok = await api("POST", `/v1/sandboxes/${fresh}/checkpoints`, {});
  assert.equal(ok.status, 200, JSON.stringify(ok.json));
  assert.equal((await api("DELETE", `/v1/checkpoints/${ok.json.id as string}`)).status, 200);
  assert.equal((await api("DELETE", `/v1/sandboxes/${fresh}`)).status, 200);
});
