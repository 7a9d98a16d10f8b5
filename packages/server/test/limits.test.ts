// Spend caps (docs/decisions/0005-spend-caps.md): the defaults and their
// formula, mitosd's config file and flags, and each cap triggering at its
// configured value on real VMs, refusing the whole request and creating nothing.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { defaultDataDir, defaultLimits, type Limits, resolveLimits } from "@mitos/engine";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { runtimeClient } from "../../../test-support/runtime-client.js";
import { loadDaemonConfig } from "../src/config.js";
import { createServer, type MitosServer } from "../src/index.js";

const root = defaultDataDir();
const dataDir = tempDataDir("test-limits");
const GiB = 1024 ** 3;

interface HostMemoryJson {
  total_mib: number;
  available_mib: number;
  committed_mib: number;
  pending_mib: number;
}

interface ErrorBody {
  error: { code: string; message: string; remediation: string; context: { limit?: string; value?: number } };
}

describe("default spend caps", () => {
  it("are sized from host RAM by the documented formula", () => {
    const common = { maxForkCount: 64, maxLifetimeSeconds: 3600, defaultTimeoutSeconds: 300, maxStreamsPerSandbox: 64 };
    // cow (decision 0021): 24576 MiB / 32 MiB per sandbox; 12 × host RAM nominal; 5 % kept free.
    assert.deepEqual(defaultLimits(24 * GiB), {
      admission: "cow",
      memoryFloorMib: 1228,
      memoryOvercommit: 12,
      maxSandboxes: 768,
      maxGuestMemoryMib: 294912,
      ...common,
    });
    // strict (decision 0005): 20 % of 24576 MiB / 64 MiB per VMM; 75 % of host RAM for guests.
    assert.deepEqual(defaultLimits(24 * GiB, "strict"), {
      admission: "strict",
      memoryFloorMib: 1228,
      memoryOvercommit: 12,
      maxSandboxes: 76,
      maxGuestMemoryMib: 18432,
      ...common,
    });
    assert.equal(defaultLimits(1 * GiB, "strict").maxSandboxes, 3);
    assert.equal(defaultLimits(1 * GiB).memoryFloorMib, 512, "the floor is at least 512 MiB");
    assert.equal(defaultLimits(64 * 1024 * 1024).maxSandboxes, 2);
    assert.equal(defaultLimits(64 * 1024 * 1024, "strict").maxSandboxes, 1, "a tiny host still gets one sandbox");
    // 500 python children of 512 MiB fit the cow defaults' nominal cap and count on 24 GiB.
    assert.ok(501 * 512 <= defaultLimits(24 * GiB).maxGuestMemoryMib);
    assert.ok(501 <= defaultLimits(24 * GiB).maxSandboxes);
    assert.deepEqual(resolveLimits({}), defaultLimits(os.totalmem()), "no configuration = the defaults, on");
  });

  it("refuses bad values with a message naming the limit", () => {
    assert.throws(() => resolveLimits({ maxSandboxes: 0 }), /max_sandboxes must be a positive whole number/);
    assert.throws(() => resolveLimits({ maxForkCount: 1.5 }), /max_fork_count/);
    assert.throws(
      () => resolveLimits({ defaultTimeoutSeconds: 100, maxLifetimeSeconds: 50 }),
      /default_timeout_seconds 100 is above max_lifetime_seconds 50/,
    );
    assert.throws(() => resolveLimits({ nope: 1 } as unknown as Partial<Limits>), /unknown limit "nope"/);
    assert.throws(
      () => resolveLimits({ admission: "loose" } as unknown as Partial<Limits>),
      /admission must be "cow" or "strict"/,
    );
    assert.throws(() => resolveLimits({ memoryOvercommit: 0.5 }), /memory_overcommit must be a number from 1/);
    assert.equal(resolveLimits({ admission: "strict" }, 24 * GiB).maxGuestMemoryMib, 18432);
    assert.equal(resolveLimits({ memoryOvercommit: 2 }, 24 * GiB).maxGuestMemoryMib, 49152);
  });
});

describe("mitosd config file and flags", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-config-"));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, body: unknown) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, typeof body === "string" ? body : JSON.stringify(body));
    return f;
  };

  it("reads the file, lets the environment and then flags override it", () => {
    const f = write("a.json", { port: 9000, host: "0.0.0.0", max_sandboxes: 5, max_fork_count: 4 });
    const c = loadDaemonConfig(["--config", f, "--max-sandboxes", "7", "--data-dir", dir], { MITOS_PORT: "9100" });
    assert.equal(c.configFile, f);
    assert.equal(c.options.port, 9100);
    assert.equal(c.options.host, "0.0.0.0");
    assert.equal(c.options.dataDir, dir);
    assert.deepEqual(c.options.limits, { maxSandboxes: 7, maxForkCount: 4 });
    const cp = loadDaemonConfig(["--max-checkpoint-bytes", "1048576", "--data-dir", dir], {});
    assert.equal(cp.options.maxCheckpointBytes, 1 << 20);
    assert.equal(cp.shutdown, "keep", "a restart keeps sandboxes unless told otherwise");
    const term = loadDaemonConfig(["--data-dir", dir], { MITOS_SHUTDOWN: "terminate" });
    assert.equal(term.shutdown, "terminate");
  });

  it("reads the Kubernetes node agent's flags, with defaults, only together with --node", () => {
    const plain = loadDaemonConfig(["--data-dir", dir], {});
    assert.equal(plain.cluster, undefined);
    const c = loadDaemonConfig(
      ["--data-dir", dir, "--node", "n1", "--kubeconfig", "/k", "--advertise-url", "http://10.0.0.5:8080"],
      {},
    );
    assert.deepEqual(c.cluster, {
      node: "n1",
      kubeconfig: "/k",
      namespace: "mitos-system",
      advertiseUrl: "http://10.0.0.5:8080",
      gatewayTokenFile: undefined,
      leaseSeconds: 15,
    });
    const f = write("node.json", { node: "n2", namespace: "mitos", lease_seconds: 30 });
    const fromFile = loadDaemonConfig(["--config", f, "--data-dir", dir], {});
    assert.equal(fromFile.cluster?.node, "n2");
    assert.equal(fromFile.cluster?.namespace, "mitos");
    assert.equal(fromFile.cluster?.leaseSeconds, 30);
  });

  it("reads how OCI images are pulled: auth file, insecure registries, credentials from the file only", () => {
    const f = write("reg.json", {
      registry_auth_file: "/etc/mitos/auth.json",
      insecure_registries: ["10.0.0.5:5000"],
      registry_credentials: { "registry.example.com": { username: "u", password: "p" } },
    });
    const c = loadDaemonConfig(["--config", f, "--data-dir", dir], {});
    assert.deepEqual(c.options.registries, {
      authFile: "/etc/mitos/auth.json",
      insecure: ["10.0.0.5:5000"],
      credentials: { "registry.example.com": { username: "u", password: "p" } },
    });
    const flags = loadDaemonConfig(["--insecure-registries", "a.example:5000, b.example", "--data-dir", dir], {});
    assert.deepEqual(flags.options.registries, { insecure: ["a.example:5000", "b.example"] });
    assert.throws(
      () =>
        loadDaemonConfig(["--registry-credentials", '{"r":{"username":"u","password":"p"}}', "--data-dir", dir], {}),
      /read from the config file only/,
    );
    const bad = write("reg-bad.json", { registry_credentials: { r: { username: "u" } } });
    assert.throws(() => loadDaemonConfig(["--config", bad, "--data-dir", dir], {}), /registry_credentials must be/);
  });

  it("finds <data-dir>/mitosd.json by itself", () => {
    write("mitosd.json", { max_streams_per_sandbox: 3 });
    const c = loadDaemonConfig(["--data-dir", dir], {});
    assert.equal(c.configFile, path.join(dir, "mitosd.json"));
    assert.deepEqual(c.options.limits, { maxStreamsPerSandbox: 3 });
    fs.rmSync(path.join(dir, "mitosd.json"));
  });

  it("refuses unknown keys, bad values, bad JSON and bad flags with a clear error", () => {
    const cases: Array<[string[], RegExp]> = [
      [["--config", write("b.json", { max_sandbox: 3 })], /unknown key "max_sandbox"; known keys: .*max_sandboxes/],
      [["--config", write("c.json", { max_sandboxes: -1 })], /max_sandboxes must be a whole number in 1\.\./],
      [["--config", write("d.json", { max_sandboxes: "many" })], /max_sandboxes must be a whole number/],
      [["--config", write("e.json", "{oops")], /is not valid JSON/],
      [["--config", write("f.json", "[]")], /must hold a JSON object/],
      [["--config", path.join(dir, "missing.json")], /cannot read config file/],
      [["--max-fork-count", "x"], /--max-fork-count: max_fork_count must be a whole number/],
      [["--port", "70000"], /port must be a whole number in 0\.\.65535/],
      [["--max-lifetime-seconds", "10"], /default_timeout_seconds 300 is above max_lifetime_seconds 10/],
      [["--no-such-flag"], /Unknown option '--no-such-flag'/],
      [["--shutdown", "kill"], /shutdown must be "keep" or "terminate"/],
      [["--kubeconfig", "/k"], /--kubeconfig only apply to a node agent: add --node/],
      [["--node", "n", "--lease-seconds", "2"], /lease_seconds must be at least 3/],
      [["--node", "n", "--advertise-url", "10.0.0.5:8080"], /advertise_url must look like http:\/\/host:port/],
      [["--node", ""], /node must be a non-empty string/],
    ];
    for (const [argv, re] of cases) {
      assert.throws(() => loadDaemonConfig([...argv, "--data-dir", dir], {}), re, argv.join(" "));
    }
  });
});

describe("spend caps on real VMs", () => {
  let server: MitosServer;
  const start = async (limits: Partial<Limits>) => {
    server = await createServer({
      port: 0,
      dataDir,
      imagesDir: path.join(root, "images"),
      poolTargets: { python: 0 },
      logLevel: "warn",
      limits,
    });
  };
  const api = async (method: string, route: string, body?: unknown): Promise<{ status: number; json: unknown }> => {
    const r = await fetch(`${server.url}${route}`, {
      method,
      headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: r.status, json: await r.json() };
  };
  /** Asserts a quota_exceeded naming `limit` and its `value`. */
  const refused = (r: { status: number; json: unknown }, limit: string, value: number) => {
    const e = (r.json as ErrorBody).error;
    assert.equal(r.status, 429, JSON.stringify(r.json));
    assert.equal(e.code, "quota_exceeded");
    assert.deepEqual({ limit: e.context.limit, value: e.context.value }, { limit, value });
    assert.match(e.message, new RegExp(`${limit} ${value}`));
    assert.ok(e.remediation.length > 0);
  };
  const ids = async () => ((await api("GET", "/v1/sandboxes")).json as Array<{ id: string }>).map((s) => s.id).sort();

  after(async () => {
    await server?.close({ killSandboxes: true });
    removeDataDir(dataDir);
  });

  describe("sandbox count, fork count, lifetime and streams", () => {
    let a: { id: string; deadline_unix: number; created_at: string };
    before(() =>
      start({
        maxSandboxes: 2,
        maxForkCount: 3,
        maxLifetimeSeconds: 60,
        defaultTimeoutSeconds: 40,
        maxStreamsPerSandbox: 2,
      }),
    );

    it("GET /v1/limits reports the caps in force and current usage", async () => {
      const r = await api("GET", "/v1/limits");
      assert.equal(r.status, 200);
      const j = r.json as { usage: { memory: HostMemoryJson } };
      const memory = j.usage.memory;
      assert.ok(memory.total_mib > 0 && memory.available_mib > 0 && memory.available_mib <= memory.total_mib);
      assert.equal(memory.pending_mib, 0);
      assert.deepEqual(r.json, {
        admission: "cow",
        memory_floor_mib: defaultLimits().memoryFloorMib,
        memory_overcommit: 12,
        max_sandboxes: 2,
        max_guest_memory_mib: defaultLimits().maxGuestMemoryMib,
        max_fork_count: 3,
        max_lifetime_seconds: 60,
        default_timeout_seconds: 40,
        max_streams_per_sandbox: 2,
        usage: { sandboxes: 0, guest_memory_mib: 0, memory },
      });
    });

    it("gives the default deadline and refuses a timeout above the lifetime", async () => {
      const r = await api("POST", "/v1/sandboxes", { template: "python" });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      a = r.json as typeof a;
      assert.ok(Math.abs(a.deadline_unix - (Date.now() / 1000 + 40)) < 5);
      const tooLong = await api("POST", "/v1/sandboxes", { template: "python", timeout_seconds: 61 });
      assert.equal(tooLong.status, 400);
      assert.equal((tooLong.json as ErrorBody).error.code, "timeout_too_large");
      assert.deepEqual(await ids(), [a.id]);
      const usage = (await api("GET", "/v1/limits")).json as { usage: { sandboxes: number; guest_memory_mib: number } };
      assert.deepEqual(
        { ...usage.usage, memory: undefined },
        { sandboxes: 1, guest_memory_mib: 512, memory: undefined },
      );
    });

    it("bounds set_timeout by created_at + max lifetime, never clamping", async () => {
      // Some seconds have passed since creation, so a full lifetime from now runs past it.
      await new Promise((r) => setTimeout(r, 1100));
      const r = await api("POST", "/v1/set_timeout", { sandbox: a.id, timeout_seconds: 60 });
      assert.equal(r.status, 400);
      const e = (r.json as ErrorBody).error;
      assert.equal(e.code, "timeout_too_large");
      assert.equal(e.context.limit, "max_lifetime_seconds");
      assert.equal(e.context.value, 60);
      const ok = await api("POST", "/v1/set_timeout", { sandbox: a.id, timeout_seconds: 30 });
      assert.equal(ok.status, 200);
      assert.equal((ok.json as { timeout_seconds: number }).timeout_seconds, 30);
    });

    it("refuses a fork above max_fork_count, and one that would exceed max_sandboxes, whole", async () => {
      refused(await api("POST", `/v1/sandboxes/${a.id}/fork`, { count: 4 }), "max_fork_count", 3);
      // 1 live + 2 children > 2: nothing is paused, captured or created.
      refused(await api("POST", `/v1/sandboxes/${a.id}/fork`, { count: 2 }), "max_sandboxes", 2);
      assert.deepEqual(await ids(), [a.id]);
      const src = (await api("GET", `/v1/sandboxes/${a.id}`)).json as { state: string };
      assert.equal(src.state, "ready");
      const bases = fs.readdirSync(server.engine.shmDir).filter((f) => f.startsWith("mitos-base-"));
      assert.deepEqual(bases, [], "no RAM capture was made");
      // Exactly at the cap is fine; one more is not.
      const child = await api("POST", `/v1/sandboxes/${a.id}/fork`, {});
      assert.equal(child.status, 200, JSON.stringify(child.json));
      refused(await api("POST", "/v1/sandboxes", { template: "python" }), "max_sandboxes", 2);
      await api("DELETE", `/v1/sandboxes/${(child.json as { id: string }).id}`);
      assert.deepEqual(await ids(), [a.id]);
    });

    it("refuses a stream above max_streams_per_sandbox with too_many_streams, and frees slots", async () => {
      const rt = runtimeClient(server, a.id);
      const running = [0, 1].map(() => rt.execStream({ command: "echo up; sleep 3" })[Symbol.asyncIterator]());
      for (const it of running) assert.equal((await it.next()).done, false);
      const third = await rt
        .readFile({ path: "/etc/hostname" })
        [Symbol.asyncIterator]()
        .next()
        .catch((e: unknown) => e);
      assert.ok(third instanceof ConnectError, String(third));
      assert.equal(third.code, Code.ResourceExhausted);
      assert.equal(third.metadata.get("x-mitos-error-code"), "too_many_streams");
      for (const it of running) while (!(await it.next()).done);
      let out = "";
      for await (const m of rt.execStream({ command: "echo again" })) {
        if (m.event.case === "stdout") out += Buffer.from(m.event.value).toString();
      }
      assert.equal(out, "again\n");
      assert.equal(server.engine.caps.openStreams(a.id), 0);
    });
  });

  describe("total guest memory", () => {
    before(async () => {
      await server.close({ killSandboxes: true });
      await start({ maxGuestMemoryMib: 1024 });
    });

    it("refuses creates and forks that would exceed max_guest_memory_mib", async () => {
      const a = (await api("POST", "/v1/sandboxes", { template: "python" })).json as { id: string };
      refused(await api("POST", `/v1/sandboxes/${a.id}/fork`, { count: 2 }), "max_guest_memory_mib", 1024);
      assert.deepEqual(await ids(), [a.id]);
      assert.equal((await api("POST", `/v1/sandboxes/${a.id}/fork`, { count: 1 })).status, 200);
      refused(await api("POST", "/v1/sandboxes", { template: "python" }), "max_guest_memory_mib", 1024);
      assert.equal((await ids()).length, 2);
    });
  });

  describe("CoW-aware admission (decision 0021)", () => {
    const echo = async (id: string): Promise<string> => {
      let out = "";
      for await (const m of runtimeClient(server, id).execStream({ command: "cat /run/mitos/sandbox-id" })) {
        if (m.event.case === "stdout") out += Buffer.from(m.event.value).toString();
      }
      return out.trim();
    };
    const bases = () => fs.readdirSync(server.engine.shmDir).filter((f) => f.startsWith("mitos-base-"));

    it("strict mode counts nominal RAM: fork(64) of a 512 MiB sandbox is refused on this host", async () => {
      await server.close({ killSandboxes: true });
      await start({ admission: "strict" });
      const a = (await api("POST", "/v1/sandboxes", { template: "python" })).json as { id: string };
      refused(
        await api("POST", `/v1/sandboxes/${a.id}/fork`, { count: 64 }),
        "max_guest_memory_mib",
        server.engine.caps.limits.maxGuestMemoryMib,
      );
      assert.deepEqual(await ids(), [a.id]);
    });

    it("the defaults admit fork(64) of a python sandbox; a fork that would cross memory_floor_mib is refused whole", async () => {
      await server.close({ killSandboxes: true });
      await start({});
      const a = (await api("POST", "/v1/sandboxes", { template: "python" })).json as { id: string };
      const r = await api("POST", `/v1/sandboxes/${a.id}/fork`, { count: 64 });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      const children = (r.json as { sandboxes: Array<{ id: string }> }).sandboxes;
      assert.equal(children.length, 64);
      for (const c of [children[0], children[31], children[63]]) assert.equal(await echo(c?.id ?? ""), c?.id);
      // What the children really hold is counted (their QEMUs' private pages, the base once).
      const limits = (await api("GET", "/v1/limits")).json as {
        usage: { sandboxes: number; memory: HostMemoryJson };
      };
      assert.equal(limits.usage.sandboxes, 65);
      assert.ok(limits.usage.memory.committed_mib + limits.usage.memory.pending_mib > 64 * 16, JSON.stringify(limits));
      // A host with less than a child's cost above the floor: the next fork is refused, nothing is made.
      const floor = Math.max(1, limits.usage.memory.available_mib - 8);
      server.engine.caps.limits.memoryFloorMib = floor;
      const before = await ids();
      const no = await api("POST", `/v1/sandboxes/${a.id}/fork`, { count: 8 });
      refused(no, "memory_floor_mib", floor);
      assert.match((no.json as ErrorBody).error.message, /8 sandboxes expected to take \d+ MiB each/);
      assert.deepEqual(await ids(), before);
      assert.deepEqual(bases().length <= 1, true, "no new RAM capture (one base: the fork(64)'s)");
      assert.equal(((await api("GET", `/v1/sandboxes/${a.id}`)).json as { state: string }).state, "ready");
      assert.equal(await echo(a.id), a.id, "the parent runs on");
    });
  });
});
