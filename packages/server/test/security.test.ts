// Keys with scopes, per-sandbox tokens and the audit log on a real mitosd
// and real VMs (docs/security.md): a tenant sees and touches only its own
// sandboxes (404 for others', no existence oracle) under its own caps; a
// sandbox's token reaches its runtime API and nothing else; every act is
// audited without a secret in the log.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { NotFoundError, QuotaExceededError, type Sandbox, SandboxServer } from "@mitos/sdk";
import WebSocket from "ws";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, repoRoot, startMitosd } from "../../../test-support/mitosd.js";
import { runtimeClient } from "../../../test-support/runtime-client.js";

const run = promisify(execFile);
const dataDir = tempDataDir("test-security");
/** The daemon's own log: no key or token may be in it either. */
const daemonLog = path.join(os.tmpdir(), "mitos-test-security-mitosd.log");
let daemon: Daemon;
let admin: SandboxServer;
/** Every secret the test saw: none may reach the audit log. */
const secrets: string[] = [];

/** A raw call with a bearer value, for status codes and error bodies. */
async function call(
  token: string,
  method: string,
  route: string,
  body?: unknown,
): Promise<{ status: number; json: { error?: { code: string; message: string } } & Record<string, unknown> }> {
  const res = await fetch(`${daemon.url}${route}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : {} };
}

async function mitos(args: string[]): Promise<string> {
  const { stdout } = await run(
    process.execPath,
    ["--import", "tsx", path.join(repoRoot, "packages/cli/src/bin/mitos.ts"), ...args],
    { env: daemon.env },
  );
  return stdout;
}

before(async () => {
  fs.rmSync(daemonLog, { force: true });
  daemon = await startMitosd(dataDir, [], { logFile: daemonLog });
  admin = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
  secrets.push(daemon.token);
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
  fs.rmSync(daemonLog, { force: true });
});

describe("tenant keys", () => {
  let keyA: string;
  let keyB: string;
  let tenantA: SandboxServer;
  let tenantB: SandboxServer;
  let a1: Sandbox;
  let b1: Sandbox;

  it("are created by an admin (the CLI for one), listed without their values", async () => {
    const created = JSON.parse(
      await mitos(["key", "create", "--scope", "tenant", "--tenant", "acme", "--max-sandboxes", "2", "--json"]),
    ) as { key: string; id: string; tenant: string; limits: Record<string, number> };
    assert.equal(created.tenant, "acme");
    assert.deepEqual(created.limits, { maxSandboxes: 2 });
    keyA = created.key;
    const b = await admin.createKey({ scope: "tenant", tenant: "globex", name: "globex ci" });
    assert.ok(b.key);
    keyB = b.key as string;
    secrets.push(keyA, keyB);
    tenantA = new SandboxServer({ baseUrl: daemon.url, apiKey: keyA });
    tenantB = new SandboxServer({ baseUrl: daemon.url, apiKey: keyB });
    const listed = await admin.listKeys();
    assert.deepEqual(listed.map((k) => k.tenant).sort(), ["acme", "globex"]);
    assert.ok(listed.every((k) => k.key === undefined));
    const raw = JSON.stringify((await call(daemon.token, "GET", "/v1/keys")).json);
    assert.ok(!raw.includes(keyA) && !raw.includes(keyB), "a listing carries no key");
    assert.ok(!fs.readFileSync(path.join(dataDir, "keys.json"), "utf8").includes(keyA), "stored hashed");
    const table = await mitos(["key", "ls"]);
    assert.match(table, /acme/);
    assert.match(table, /max_sandboxes=2|maxSandboxes=2/);
  });

  it("see only their tenant's sandboxes", async () => {
    a1 = await tenantA.fork("python");
    b1 = await tenantB.fork("python");
    assert.equal(a1.tenant, "acme");
    assert.deepEqual(
      (await tenantA.listSandboxes()).map((s) => s.id),
      [a1.id],
    );
    assert.deepEqual(
      (await tenantB.listSandboxes()).map((s) => s.id),
      [b1.id],
    );
    const all = (await admin.listSandboxes()).map((s) => s.id);
    assert.ok(all.includes(a1.id) && all.includes(b1.id));
    assert.equal((await a1.exec("echo a")).stdout, "a\n");
  });

  it("answer 404 for another tenant's sandbox, exactly as for an unknown id", async () => {
    const other = b1.id;
    const unknown = await call(keyA, "GET", "/v1/sandboxes/sb-nosuch00");
    const cases: Array<[string, string, unknown?]> = [
      ["GET", `/v1/sandboxes/${other}`],
      ["DELETE", `/v1/sandboxes/${other}`],
      ["POST", `/v1/sandboxes/${other}/fork`, {}],
      ["POST", `/v1/sandboxes/${other}/checkpoints`, {}],
      ["POST", "/v1/set_timeout", { sandbox: other, timeout_seconds: 60 }],
      ["POST", "/v1/pause", { sandbox: other }],
      ["POST", "/v1/resume", { sandbox: other }],
    ];
    for (const [method, route, body] of cases) {
      const r = await call(keyA, method, route, body);
      assert.equal(r.status, 404, `${method} ${route}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.error?.code, "not_found");
      assert.equal(r.json.error?.message, `no sandbox "${other}"`);
    }
    assert.equal(unknown.json.error?.message, 'no sandbox "sb-nosuch00"');
    // The runtime API: the SDK's handle, the terminal WebSocket and a raw Connect exec, all as tenant A.
    await assert.rejects(tenantA.get(other), NotFoundError);
    assert.equal(await wsStatus(keyA, other), 404);
    const exec = await fetch(`${daemon.url}/sandbox.v1.Sandbox/ExecStream`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${keyA}`,
        "x-sandbox-id": other,
        "content-type": "application/connect+json",
      },
      body: envelope({ command: "echo leaked" }),
    });
    const text = await exec.text();
    assert.doesNotMatch(text, /leaked/);
    assert.match(text, /not_found|no sandbox/);
    // Files over the runtime service: stat, list, read and write are as for an unknown sandbox.
    const rt = runtimeClient({ url: daemon.url, token: keyA }, other);
    const calls: Array<() => Promise<unknown>> = [
      () => rt.stat({ path: "/" }),
      () => rt.list({ parent: "/root" }),
      async () => {
        for await (const _ of rt.readFile({ path: "/etc/hostname" })) {
          // nothing may come
        }
      },
      () => rt.mkdir({ path: "/root/from-a" }),
    ];
    for (const c of calls) {
      const e = await c().catch((x: unknown) => x);
      assert.ok(e instanceof ConnectError && e.code === Code.NotFound, String(e));
      assert.match((e as ConnectError).rawMessage, /no sandbox/);
    }
    assert.equal((await b1.exec("test -e /root/from-a || echo untouched")).stdout, "untouched\n");
    // And B's sandbox still answers B.
    assert.equal((await b1.exec("echo b")).stdout, "b\n");
  });

  it("refuse admin routes with 403", async () => {
    for (const route of ["/v1/keys", "/v1/pools", "/v1/metering"]) {
      const r = await call(keyA, "GET", route);
      assert.equal(r.status, 403, route);
      assert.equal(r.json.error?.code, "forbidden");
    }
  });

  it("hold a tenant to its own caps while another tenant still creates", async () => {
    const [a2] = await a1.fork(1);
    assert.equal(a2?.tenant, "acme", "a fork inherits its tenant");
    await assert.rejects(tenantA.fork("python"), (e: unknown) => {
      assert.ok(e instanceof QuotaExceededError, String(e));
      assert.equal((e as QuotaExceededError).context?.limit, "owner.max_sandboxes");
      return true;
    });
    assert.equal((await tenantA.listSandboxes()).length, 2, "nothing half-created");
    const b2 = await tenantB.fork("python");
    assert.equal(b2.tenant, "globex");
    const limits = (await call(keyA, "GET", "/v1/limits")).json as {
      tenant?: { usage: { sandboxes: number } };
      usage: { sandboxes: number };
    };
    assert.equal(limits.tenant?.usage.sandboxes, 2);
    assert.equal(limits.usage.sandboxes, 2, "a tenant's usage is its own, not the host's");
    await b2.terminate();
    await a2?.terminate();
  });

  it("keep templates apart: their own, the shared ones, and the built-in ids", async () => {
    const built = await call(keyA, "POST", "/v1/templates", { id: "acme-tpl", image: "base" });
    assert.equal(built.status, 200, JSON.stringify(built.json));
    assert.equal(built.json.tenant, "acme");
    const taken = await call(keyB, "POST", "/v1/templates", { id: "acme-tpl", image: "base" });
    assert.equal(taken.status, 409);
    const use = await call(keyB, "POST", "/v1/sandboxes", { template: "acme-tpl" });
    assert.equal(use.status, 404);
    const listed = (await call(keyB, "GET", "/v1/templates")).json as unknown as Array<{ id: string }>;
    assert.ok(!listed.some((t) => t.id === "acme-tpl"));
    assert.ok(
      listed.some((t) => t.id === "python"),
      "the shared templates are listed",
    );
    // A built-in id: alone it is the shared template; with a spec of its own it is refused.
    assert.equal((await call(keyB, "POST", "/v1/templates", { id: "python" })).status, 200);
    const squat = await call(keyB, "POST", "/v1/templates", { id: "node", image: "base", init: ["true"] });
    assert.equal(squat.status, 403);
    const oci = await call(keyB, "POST", "/v1/templates", { id: "b-oci", image: "registry.internal/team/app:1" });
    assert.equal(oci.status, 403, "no pulls with the host's registry credentials");
    assert.equal((await call(keyB, "DELETE", "/v1/templates/acme-tpl")).status, 404);
    assert.equal((await call(keyA, "DELETE", "/v1/templates/python")).status, 403, "a shared template is an admin's");
    assert.equal((await call(keyA, "DELETE", "/v1/templates/acme-tpl")).status, 200);
  });

  it("do not tell another tenant's expired sandbox from an unknown one", async () => {
    const short = await tenantB.fork("python", { timeoutSeconds: 1 });
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal((await call(keyB, "GET", `/v1/sandboxes/${short.id}`)).status, 410, "its owner learns it expired");
    const r = await call(keyA, "GET", `/v1/sandboxes/${short.id}`);
    assert.equal(r.status, 404);
    assert.equal(r.json.error?.message, `no sandbox "${short.id}"`);
  });

  it("stop working once revoked", async () => {
    const k = await admin.createKey({ scope: "tenant", tenant: "acme", name: "short-lived" });
    secrets.push(k.key as string);
    assert.equal((await call(k.key as string, "GET", "/v1/sandboxes")).status, 200);
    await mitos(["key", "rm", k.id]);
    const r = await call(k.key as string, "GET", "/v1/sandboxes");
    assert.equal(r.status, 401);
    assert.equal(r.json.error?.code, "unauthorized");
    // Revoking a tenant's last key locks out its sandboxes' tokens too.
    const token = b1.token as string;
    assert.equal((await call(token, "GET", `/v1/sandboxes/${b1.id}`)).status, 200);
    const bKey = (await admin.listKeys()).find((x) => x.tenant === "globex");
    await admin.revokeKey(bKey?.id as string);
    assert.equal((await call(token, "GET", `/v1/sandboxes/${b1.id}`)).status, 401);
  });

  after(async () => {
    await a1?.terminate().catch(() => {});
    await b1?.terminate().catch(() => {});
  });
});

describe("per-sandbox tokens", () => {
  let parent: Sandbox;
  let c1: Sandbox;
  let c2: Sandbox;

  before(async () => {
    parent = await admin.fork("python");
    [c1, c2] = (await parent.fork(2)) as [Sandbox, Sandbox];
    for (const s of [parent, c1, c2]) secrets.push(s.token as string, s.forkToken as string);
  });

  it("differ between a parent and each child", () => {
    const tokens = [parent, c1, c2].map((s) => s.token);
    assert.equal(new Set(tokens).size, 3);
    assert.ok(tokens.every((t) => t?.startsWith("msb_")));
  });

  it("reach their own sandbox's exec, files and PTY", async () => {
    const own = await new SandboxServer({ baseUrl: daemon.url, apiKey: c1.token as string }).get(c1.id);
    assert.equal(own.token, undefined, "a sandbox's own token does not read its tokens back");
    assert.equal((await own.exec("echo hi-$((6*7))")).stdout, "hi-42\n");
    await own.files.write("/tmp/t.txt", "by token");
    assert.equal(await own.files.readText("/tmp/t.txt"), "by token");
    let out = "";
    const pty = await own.createPty({
      onData: (d) => {
        out += d;
      },
    });
    pty.write("echo pty-$((40+2)); exit\n");
    await pty.wait();
    assert.match(out, /pty-42/);
  });

  it("answer 404 on a sibling, the parent and the lifecycle routes", async () => {
    const t = c1.token as string;
    const asToken = (id: string) =>
      fetch(`${daemon.url}/sandbox.v1.Sandbox/ExecStream`, {
        method: "POST",
        headers: { authorization: `Bearer ${t}`, "x-sandbox-id": id, "content-type": "application/connect+json" },
        body: envelope({ command: "echo leaked" }),
      });
    for (const id of [c2.id, parent.id]) {
      const text = await (await asToken(id)).text();
      assert.doesNotMatch(text, /leaked/, id);
      assert.match(text, /not_found/, id);
    }
    const routes: Array<[string, string, unknown?]> = [
      ["GET", "/v1/sandboxes"],
      ["GET", `/v1/sandboxes/${c2.id}`],
      ["GET", `/v1/sandboxes/${parent.id}`],
      ["POST", "/v1/sandboxes", { template: "python" }],
      ["DELETE", `/v1/sandboxes/${c1.id}`],
      ["POST", `/v1/sandboxes/${c1.id}/fork`, {}],
      ["POST", "/v1/set_timeout", { sandbox: c1.id, timeout_seconds: 60 }],
      ["GET", "/v1/templates"],
      ["GET", "/v1/keys"],
    ];
    for (const [method, route, body] of routes) {
      const r = await call(t, method, route, body);
      assert.equal(r.status, 404, `${method} ${route}: ${JSON.stringify(r.json)}`);
    }
    // A made-up token of the same shape is no credential at all.
    const forged = `${t.slice(0, -4)}AAAA`;
    assert.equal((await call(forged, "GET", `/v1/sandboxes/${c1.id}`)).status, 401);
  });

  it("a fork token forks its own sandbox only, and the children come with their own tokens", async () => {
    const ft = parent.forkToken as string;
    const r = await call(ft, "POST", `/v1/sandboxes/${parent.id}/fork`, {});
    assert.equal(r.status, 200, JSON.stringify(r.json));
    const child = r.json as { id: string; token: string; parent_id: string };
    assert.equal(child.parent_id, parent.id);
    secrets.push(child.token);
    const grandchild = await new SandboxServer({ baseUrl: daemon.url, apiKey: child.token }).get(child.id);
    assert.equal((await grandchild.exec("echo forked")).stdout, "forked\n");
    assert.equal((await call(ft, "POST", `/v1/sandboxes/${c1.id}/fork`, {})).status, 404, "not a sibling");
    const exec = await fetch(`${daemon.url}/sandbox.v1.Sandbox/ExecStream`, {
      method: "POST",
      headers: { authorization: `Bearer ${ft}`, "x-sandbox-id": parent.id, "content-type": "application/connect+json" },
      body: envelope({ command: "echo leaked" }),
    });
    assert.match(await exec.text(), /not_found/, "a fork token does not exec");
    await admin.get(child.id).then((s) => s.terminate());
  });

  it("die with their sandbox", async () => {
    const t = c2.token as string;
    await c2.terminate();
    assert.equal((await call(t, "GET", `/v1/sandboxes/${c2.id}`)).status, 401);
  });

  after(async () => {
    for (const s of [c1, parent]) await s?.terminate().catch(() => {});
  });
});

describe("hostile guests", () => {
  let sb: Sandbox;

  before(async () => {
    sb = await admin.fork("python");
  });

  /** The next exec after an attack: answers, and within 2 s. */
  async function answersSoon(): Promise<void> {
    const t0 = Date.now();
    const r = await sb.exec("echo alive");
    assert.equal(r.stdout, "alive\n");
    assert.ok(Date.now() - t0 < 2000, `the next exec took ${Date.now() - t0} ms`);
  }

  it("a memory bomb fails its command, not the VM", async () => {
    // The agent is init, which the kernel's OOM killer never picks; a command is on its list like any process.
    const who = await sb.exec("cat /proc/1/comm /proc/self/oom_score_adj");
    assert.equal(who.stdout, "mitos-agent\n0\n");
    const huge = await sb.exec("python3 -c 'x=bytearray(10**10)'", { timeoutSeconds: 60 });
    assert.notEqual(huge.exitCode, 0);
    assert.match(huge.stderr, /MemoryError/);
    await answersSoon();
    // Touching pages until something gives: the commands' memory limit (its cgroup's OOM kill), not the guest kernel.
    const oomKills = async () =>
      Number((await sb.exec("awk '/^oom_kill /{print $2}' /sys/fs/cgroup/mitos/memory.events")).stdout.trim());
    const killsBefore = await oomKills();
    const creep = await sb.exec("python3 -c 'b = []\nwhile True: b.append(b\"x\" * (8 << 20))'", {
      timeoutSeconds: 60,
    });
    assert.notEqual(creep.exitCode, 0, "killed or refused");
    assert.notEqual(creep.exitCode, 124, "ended before its timeout");
    assert.ok((await oomKills()) > killsBefore, "the commands' cgroup killed it");
    await answersSoon();
  });

  it("a fork bomb fails its command, and one left running does not starve the next", async () => {
    const bomb = await sb.exec("bash -c 'f(){ f | f; }; f'", { timeoutSeconds: 8 });
    assert.notEqual(bomb.exitCode, 0);
    await answersSoon();
    // The classic, which backgrounds itself: its command returns, its processes stay, capped.
    await sb.exec("bash -c ':(){ :|:& };:' >/dev/null 2>&1", { timeoutSeconds: 20 });
    // It runs into its own exec's pids limit (not the commands' total), and the next exec still answers.
    const capped = async () =>
      Number(
        (await sb.exec("cat /sys/fs/cgroup/mitos/exec-*/pids.events | awk '/^max /{s+=$2} END{print s+0}'")).stdout,
      );
    const until = Date.now() + 30_000;
    while ((await capped()) === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 1000));
    assert.ok((await capped()) > 0, "the bomb hit its exec's pids.max");
    await answersSoon();
  });

  it("a full writable layer is ENOSPC to the writer while exec keeps working", async () => {
    const fresh = await admin.fork("python");
    try {
      const dd = await fresh.exec("dd if=/dev/zero of=/root/fill bs=1M", { timeoutSeconds: 120 });
      assert.notEqual(dd.exitCode, 0);
      assert.match(dd.stderr, /No space left on device/);
      const t0 = Date.now();
      assert.equal((await fresh.exec("echo still")).stdout, "still\n");
      assert.ok(Date.now() - t0 < 2000);
      assert.equal((await fresh.exec("rm /root/fill && echo freed")).stdout, "freed\n");
    } finally {
      await fresh.terminate();
    }
  });

  it("per template: its own limits, and an output flood held to its rate", async () => {
    await admin.createTemplate("guarded", {
      image: "base",
      guest: { commandPids: 64, writableMib: 64, commandMemoryMib: 200, outputBytesPerSecond: 1 << 20 },
    });
    const g = await admin.fork("guarded");
    try {
      const r = await g.exec("cat /sys/fs/cgroup/mitos/pids.max /sys/fs/cgroup/mitos/memory.max; df -m / | tail -1");
      const [pidsMax, memMax, df] = r.stdout.trim().split("\n");
      assert.equal(pidsMax, "128", "twice the per-exec limit for all commands");
      assert.equal(Number(memMax), 200 * 1024 * 1024);
      assert.ok(Number(df?.split(/\s+/)[1]) <= 64, df);
      // 4 MiB of output at 1 MiB/s (a second's burst): at least ~3 s, while another sandbox answers at once.
      const t0 = Date.now();
      const flood = g.exec("head -c 4194304 /dev/zero");
      await new Promise((r) => setTimeout(r, 500));
      const t1 = Date.now();
      assert.equal((await sb.exec("echo other")).stdout, "other\n");
      assert.ok(Date.now() - t1 < 2000, "another sandbox is not held up");
      const out = await flood;
      assert.equal(out.stdout.length, 4194304);
      assert.ok(Date.now() - t0 >= 2500, `4 MiB took ${Date.now() - t0} ms at 1 MiB/s`);
    } finally {
      await g.terminate();
    }
  });

  after(async () => {
    await sb?.terminate().catch(() => {});
  });
});

describe("audit log", () => {
  it("records who did what to which sandbox, and never a secret", () => {
    const text = fs.readFileSync(path.join(dataDir, "audit.log"), "utf8");
    const lines = text
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { key: string; tenant?: string; action: string; sandbox?: string; status: number });
    assert.ok(lines.some((l) => l.tenant === "acme" && l.action === "POST /v1/fork" && l.status === 200));
    assert.ok(lines.some((l) => l.tenant === "acme" && l.status === 404 && l.action === "DELETE /v1/sandboxes/:id"));
    assert.ok(
      lines.some((l) => l.tenant === "acme" && l.status === 404 && l.action === "GET /v1/sandboxes/:id"),
      "a tenant's probe for another's id is on record",
    );
    assert.ok(lines.some((l) => l.key.startsWith("sandbox:") && l.action === "sandbox.v1.Sandbox/ExecStream"));
    assert.ok(lines.some((l) => l.status === 401));
    assert.ok(lines.some((l) => l.key === "admin-token" && l.action === "POST /v1/keys"));
    const daemonText = fs.readFileSync(daemonLog, "utf8");
    assert.match(daemonText, /mitosd listening/, "the daemon's log was captured");
    for (const s of secrets) {
      assert.ok(!text.includes(s), "no key or token in the audit log");
      assert.ok(!daemonText.includes(s), "no key or token in mitosd's log");
    }
    assert.equal(fs.statSync(path.join(dataDir, "audit.log")).mode & 0o777, 0o600);
  });
});

/** The HTTP status the terminal WebSocket of a sandbox answers with this bearer value (101: opened). */
function wsStatus(token: string, sandbox: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(
      `${daemon.url.replace(/^http/, "ws")}/sandbox.v1.Sandbox/Exec?sandbox=${sandbox}`,
      "connect.sandbox.v1",
      { headers: { authorization: `Bearer ${token}` } },
    );
    ws.on("open", () => {
      ws.close();
      resolve(101);
    });
    ws.on("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
    });
    ws.on("error", reject);
  });
}

/** One Connect streaming request message: flag 0, big-endian length, JSON. */
function envelope(msg: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(msg));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}
