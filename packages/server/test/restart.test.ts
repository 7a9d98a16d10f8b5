// Restarts keep sandboxes (docs/restarts.md), on real VMs through a real
// mitosd process: SIGKILL it while a command streams, start it again, and
// the sandboxes answer with their processes, files, interpreter state,
// deadline and id; a paused and a hibernated sandbox come back as they were;
// a graceful SIGTERM hands them over too; nothing leaks.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { shmDirFor } from "@mitos/engine";
import { MitosError, type Sandbox, SandboxServer } from "@mitos/sdk";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { assertNoLeaks, qemuPidsOf } from "../../../test-support/leaks.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";

const dataDir = tempDataDir("test-restart");
let daemon: Daemon;
let sdk: SandboxServer;

const start = async () => {
  daemon = await startMitosd(dataDir, ["--shutdown", "keep"]);
  sdk = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
};

async function sh(sb: Sandbox, command: string): Promise<string> {
  const r = await sb.exec(command);
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr}`);
  return r.stdout;
}

before(start);

after(async () => {
  if (daemon) {
    // Terminate what is left, then stop: nothing may stay behind.
    for (const s of await sdk.listSandboxes().catch(() => [])) await s.terminate().catch(() => {});
    await daemon.stop().catch(() => {});
  }
  for (const pid of qemuPidsOf(dataDir)) process.kill(pid, "SIGKILL");
  removeDataDir(dataDir);
});

describe("restarts keep sandboxes", () => {
  let a: Sandbox;
  let paused: Sandbox;
  let hibernated: Sandbox;
  let bootA = "";

  it("a SIGKILLed mitosd: the stream in flight fails clearly, the next mitosd re-adopts every sandbox", async () => {
    a = await sdk.fork("python", { timeoutSeconds: 900 });
    await a.files.write(
      "/workspace/state.py",
      "import time\nz = 6 * 7\nwhile True:\n    open('/tmp/z', 'w').write(str(z))\n    time.sleep(0.2)\n",
    );
    await sh(
      a,
      "echo kept > /workspace/f; (python3 /workspace/state.py &) >/dev/null 2>&1; while [ ! -s /tmp/z ]; do sleep 0.1; done",
    );
    paused = await sdk.fork("python");
    await sh(paused, "echo p > /workspace/p");
    await paused.pause();
    hibernated = await sdk.fork("python");
    await sh(hibernated, "echo h > /workspace/h");
    await hibernated.pause({ hibernate: true });
    bootA = await sh(a, "cat /proc/sys/kernel/random/boot_id");
    const deadline = (await sdk.get(a.id)).deadlineUnix;

    // A command streaming when mitosd dies.
    let seen = "";
    const streaming = a.exec("for i in $(seq 1 100); do echo tick-$i; sleep 0.1; done", {
      onStdout: (d) => {
        seen += d;
      },
    });
    const failed = streaming.then(
      () => assert.fail("the stream cannot finish without mitosd"),
      (e: unknown) => e,
    );
    while (!seen.includes("tick-3")) await new Promise((r) => setTimeout(r, 50));
    await daemon.kill();
    const err = await failed;
    assert.ok(err instanceof MitosError, String(err));
    assert.equal(err.code, "unavailable");
    assert.match(err.message, /connection to mitosd .* lost/);
    assert.match(err.remediation, /may still be running/);
    assert.ok(qemuPidsOf(dataDir).length >= 2, "the sandboxes' QEMUs outlive mitosd");

    await start();
    const listed = await sdk.listSandboxes();
    assert.deepEqual(listed.map((s) => s.id).sort(), [a.id, paused.id, hibernated.id].sort());
    const back = await sdk.get(a.id);
    assert.equal(back.state, "ready");
    assert.equal(back.deadlineUnix, deadline, "the deadline survives");
    assert.equal(await sh(back, "cat /proc/sys/kernel/random/boot_id"), bootA, "the same guest, not a new one");
    assert.equal(await sh(back, "cat /workspace/f"), "kept\n");
    await sh(back, "rm /tmp/z; while [ ! -s /tmp/z ]; do sleep 0.1; done");
    assert.equal(await sh(back, "cat /tmp/z"), "42", "the interpreter runs on with its variable");
    // The command that was streaming ran on in the guest (its output went nowhere).
    assert.equal(await sh(back, "hostname"), `${a.id}\n`);
  });

  it("the paused sandbox resumes, the hibernated one wakes, forks of a re-adopted sandbox work", async () => {
    assert.equal((await sdk.get(paused.id)).state, "paused");
    const h = (await (
      await fetch(`${daemon.url}/v1/sandboxes/${hibernated.id}`, {
        headers: { authorization: `Bearer ${daemon.token}` },
      })
    ).json()) as { state: string; hibernated: boolean };
    assert.equal(h.state, "paused");
    assert.equal(h.hibernated, true);
    // Handles from before the restart name the old port: fetch them anew.
    const p = await sdk.get(paused.id);
    await p.resume();
    assert.equal(await sh(p, "cat /workspace/p"), "p\n");
    const h2 = await sdk.get(hibernated.id);
    await h2.resume();
    assert.equal(await sh(h2, "cat /workspace/h"), "h\n");
    const [child] = await (await sdk.get(a.id)).fork(1);
    assert.equal(await sh(child as Sandbox, "cat /workspace/f"), "kept\n");
    await (child as Sandbox).terminate();
  });

  it("a graceful SIGTERM (shutdown keep) hands the sandboxes to the next mitosd too, streams open or not", async () => {
    // A command and a terminal still open must not hold the shutdown (it cuts them after a short grace).
    const back0 = await sdk.get(a.id);
    const streaming = back0.exec("sleep 600", { timeoutSeconds: 900 }).catch((e: unknown) => e);
    const pty = await back0.createPty();
    const ptyEnded = pty.wait().catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    await daemon.stop();
    assert.ok(Date.now() - t0 < 15_000, `mitosd took ${Date.now() - t0} ms to stop with streams open`);
    assert.ok((await streaming) instanceof MitosError, "the stream in flight fails clearly");
    assert.ok((await ptyEnded) instanceof MitosError, "the terminal ends");
    assert.ok(qemuPidsOf(dataDir).length >= 3, "a, paused and hibernated (woken) run on");
    await start();
    const back = await sdk.get(a.id);
    assert.equal(await sh(back, "cat /proc/sys/kernel/random/boot_id"), bootA);
    assert.equal(await sh(back, "cat /workspace/f"), "kept\n");
  });

  it("terminating them leaves nothing behind; a stop with no sandboxes leaves no QEMU", async () => {
    for (const s of await sdk.listSandboxes()) await s.terminate();
    // Only the warm pool's VMs and template bases remain, all journaled.
    await assertNoLeaks({ dataDir, shmDir: shmDirFor(dataDir) });
    await daemon.stop();
    assert.deepEqual(qemuPidsOf(dataDir), [], "the pool's VMs stop with mitosd; no sandbox was left to keep");
    assert.deepEqual(fs.readdirSync(path.join(dataDir, "vms")), []);
  });
});
