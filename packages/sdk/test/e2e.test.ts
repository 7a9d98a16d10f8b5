// The SDK against a real mitosd process and real VMs.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, repoRoot as repo, startMitosd } from "../../../test-support/mitosd.js";
import {
  InvalidInputError,
  NotFoundError,
  type Sandbox,
  SandboxServer,
  type TemplateBuildEvent,
  TimeoutTooLargeError,
  UnauthorizedError,
} from "../src/index.js";

const dataDir = tempDataDir("test-sdk");
let daemon: Daemon;
let baseUrl = "";
let apiKey = "";

before(async () => {
  daemon = await startMitosd(dataDir);
  baseUrl = daemon.url;
  apiKey = daemon.token;
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
});

describe("@mitos/sdk against mitosd", () => {
  let sb: Sandbox;

  it("runs the API.md example verbatim: eight squares, each from its own VM", async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", path.join(repo, "examples/fork-swarm.ts")],
      {
        env: { ...process.env, MITOS_BASE_URL: baseUrl, MITOS_API_KEY: apiKey },
        cwd: repo,
      },
    );
    const lines = stdout.split("\n").filter((l) => l.trim() !== "");
    assert.deepEqual(lines, ["0", "1", "4", "9", "16", "25", "36", "49"]);
  });

  it("forks with one request into children that are separate VMs", async () => {
    const server = new SandboxServer({ baseUrl, apiKey });
    sb = await server.fork("python");
    const swarm = await sb.fork(4);
    assert.equal(swarm.length, 4);
    const hosts = await Promise.all(swarm.map(async (c) => (await c.exec("hostname")).stdout.trim()));
    assert.deepEqual(
      hosts,
      swarm.map((c) => c.id),
    );
    assert.equal(new Set(swarm.map((c) => c.id)).size, 4);
    for (const c of swarm) assert.equal(c.parentId, sb.id);
    await Promise.all(swarm.map((c) => c.terminate()));
  });

  it("streams output through callbacks before the command ends", async () => {
    const chunks: Array<{ at: number; text: string }> = [];
    const t0 = Date.now();
    const r = await sb.exec("echo first; sleep 1.5; echo second", {
      onStdout: (text) => chunks.push({ at: Date.now() - t0, text }),
    });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "first\nsecond\n");
    assert.ok(chunks.length >= 2 && chunks[0]?.text === "first\n");
    assert.ok((chunks[1]?.at ?? 0) - (chunks[0]?.at ?? 0) >= 1000, JSON.stringify(chunks));
  });

  it("reads, writes, lists, stats, makes and removes files", async () => {
    await sb.files.mkdir("/root/sdk/dir");
    await sb.files.write("/root/sdk/hello.txt", "hello sdk");
    assert.equal(await sb.files.readText("/root/sdk/hello.txt"), "hello sdk");
    const names = (await sb.files.list("/root/sdk")).map((f) => f.name).sort();
    assert.deepEqual(names, ["dir", "hello.txt"]);
    assert.equal((await sb.files.stat("/root/sdk/hello.txt")).size, 9);
    await sb.files.remove("/root/sdk", { recursive: true });
    await assert.rejects(sb.files.stat("/root/sdk"), NotFoundError);
  });

  it("maps errors: unknown sandbox, bad token, timeout ceiling, deadline exit 124", async () => {
    const server = new SandboxServer({ baseUrl, apiKey });
    await assert.rejects(server.get("no-such-sandbox"), NotFoundError);
    await assert.rejects(new SandboxServer({ baseUrl, apiKey: "wrong" }).listSandboxes(), UnauthorizedError);
    await assert.rejects(sb.exec("true", { timeoutSeconds: 10 ** 6 }), TimeoutTooLargeError);
    await assert.rejects(sb.setTimeout(10 ** 7), TimeoutTooLargeError);
    const r = await sb.exec("sleep 20", { timeoutSeconds: 1 });
    assert.equal(r.exitCode, 124);
  });

  it("covers health, templates, pools, metering, processes and signals", async () => {
    const server = new SandboxServer({ baseUrl, apiKey });
    const h = await server.health();
    assert.equal(h.status, "ok");
    const tpl = await server.createTemplate("python");
    assert.equal(tpl.id, "python");
    assert.ok((await server.pools()).some((p) => p.template === "python"));
    const m = await server.metering();
    assert.ok(m.sandboxes.some((r) => r.id === sb.id));
    assert.ok((m.host.totalBytes ?? 0) > 0);
    const bg = await sb.exec("sleep 300 >/dev/null 2>&1 & echo $!");
    const pid = Number(bg.stdout.trim());
    assert.ok((await sb.processes()).some((p) => p.pid === pid && p.command.includes("sleep")));
    await sb.signal(pid, 9);
    await until(
      async () => !(await sb.processes()).some((p) => p.pid === pid && p.state !== "Z"),
      5000,
      () => "still alive",
    );
  });

  it("pauses, resumes, extends and terminates", async () => {
    await sb.pause();
    assert.equal((await sb.info()).state, "paused");
    await sb.resume();
    assert.equal((await sb.exec("echo back")).stdout, "back\n");
    const t = await sb.setTimeout(600);
    assert.ok(t.deadlineUnix > Date.now() / 1000 + 500);
    const server = new SandboxServer({ baseUrl, apiKey });
    assert.ok((await server.listSandboxes()).some((s) => s.id === sb.id));
    assert.ok((await server.listTemplates()).some((tpl) => tpl.id === "python"));
    await sb.terminate();
    await assert.rejects(server.get(sb.id), NotFoundError);
  });

  it("follows a template build: onEvent gets each step and its output; the template carries a version", async () => {
    const server = new SandboxServer({ baseUrl, apiKey });
    const events: TemplateBuildEvent[] = [];
    const marker = `sdk-${Date.now().toString(36)}`;
    const t = await server.createTemplate(
      "sdk-follow",
      { image: "base", resources: { memSizeMib: 256 }, init: [`echo ${marker}`] },
      { onEvent: (e) => events.push(e) },
    );
    assert.equal(t.id, "sdk-follow");
    assert.match(t.version ?? "", /^[0-9a-f]{12}$/);
    assert.equal(t.steps, 1);
    assert.ok(events.some((e) => e.type === "step" && e.step === 1 && e.of === 1 && e.command === `echo ${marker}`));
    assert.ok(events.some((e) => e.type === "output" && e.data.includes(marker)));
    assert.ok(events.some((e) => e.type === "step_done" && e.exitCode === 0));
    assert.ok(events.some((e) => e.type === "phase" && e.phase === "snapshot"));
    await assert.rejects(
      server.createTemplate("sdk-follow-bad", { image: "base", init: ["exit 4"] }, { onEvent: () => {} }),
      (e: unknown) => e instanceof InvalidInputError && /step 1 of 1 failed with exit 4/.test(e.message),
    );
    await server.deleteTemplate("sdk-follow");
  });

  it("builds a template with a workspace disk: /workspace is a disk its fork children share copy-on-write", async () => {
    const server = new SandboxServer({ baseUrl, apiKey });
    await assert.rejects(
      server.createTemplate("disk-too-small", { diskSizeMib: 10 }),
      (e: unknown) => e instanceof InvalidInputError && /disk_size_mib 10/.test(e.message) && /64/.test(e.remediation),
    );
    await server.createTemplate("sdk-disk", { image: "base", diskSizeMib: 256 });
    const d = await server.fork("sdk-disk");
    try {
      const df = (await d.exec("df -k /workspace | tail -1")).stdout.split(/\s+/);
      assert.match(df[0] ?? "", /^\/dev\/vd[a-z]$/, "a block device, not the RAM overlay");
      assert.ok(Number(df[1]) > 200_000 && Number(df[1]) < 270_000, `about 256 MiB: ${df[1]} KiB`);
      await d.exec("echo on-disk > /workspace/f");
      const [child] = await d.fork(1);
      assert.equal((await (child as Sandbox).exec("cat /workspace/f")).stdout, "on-disk\n");
      await (child as Sandbox).exec("echo child > /workspace/f");
      assert.equal((await d.exec("cat /workspace/f")).stdout, "on-disk\n");
      await (child as Sandbox).terminate();
    } finally {
      await d.terminate();
    }
    await server.deleteTemplate("sdk-disk");
  });
});

describe("terminal sessions", () => {
  it("types into a PTY, reads the echo, resizes and exits", async () => {
    const server = new SandboxServer({ baseUrl, apiKey });
    const box = await server.fork("python");
    let screen = "";
    const pty = await box.createPty({
      cols: 80,
      rows: 24,
      onData: (d) => {
        screen += d;
      },
    });
    pty.write("echo hi-$((40+2))\r");
    await until(
      () => screen.includes("hi-42"),
      15_000,
      () => screen,
    );
    pty.resize(120, 40);
    pty.write("stty size\r");
    await until(
      () => screen.includes("40 120"),
      15_000,
      () => screen,
    );
    pty.write("exit 5\r");
    assert.deepEqual(await pty.wait(), { exitCode: 5 });
    await box.terminate();
  });

  it("kills the terminal's processes when the socket closes", async () => {
    const server = new SandboxServer({ baseUrl, apiKey });
    const box = await server.fork("python");
    let screen = "";
    const pty = await box.createPty({
      onData: (d) => {
        screen += d;
      },
    });
    pty.write("sleep 1234 & echo started\r");
    await until(
      () => screen.includes("started"),
      15_000,
      () => screen,
    );
    pty.kill();
    await until(
      async () => !(await box.exec("ps -eo args")).stdout.includes("sleep 1234"),
      10_000,
      () => "sleep still running",
    );
    await box.terminate();
  });
});

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out; last state: ${what().slice(-500)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
