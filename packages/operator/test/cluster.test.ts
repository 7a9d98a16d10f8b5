// Mitos on a real Kubernetes control plane (etcd, kube-apiserver and
// kube-controller-manager for garbage collection, built by
// scripts/build-kube.sh), with two real mitosd node agents on this machine
// (separate data dirs and ports, each a Node object kept Ready), real VMs,
// the controller and the gateway. Clients reach the cluster by URL alone.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { SandboxServer } from "@mitos/sdk";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import {
  type ControlPlane,
  keepNodeReady,
  kubeAvailable,
  startControlPlane,
  startNodeAgent,
} from "../../../test-support/kube.js";
import { type Daemon, repoRoot } from "../../../test-support/mitosd.js";
import { until } from "../../../test-support/until.js";
import { Controller, Gateway, Kube, loadKubeConfig, type SandboxPool, type SandboxResource } from "../src/index.js";

const run = promisify(execFile);
const NS = "mitos-system";
const LEASE_SECONDS = 10;
const skip =
  !kubeAvailable() && process.env.CI !== "true" ? "kube binaries not built (bash scripts/build-kube.sh)" : false;

describe("Mitos on Kubernetes (real apiserver, two node agents, real VMs)", { skip, timeout: 1_200_000 }, () => {
  let cp: ControlPlane;
  let kube: Kube;
  let controller: Controller;
  let gateway: Gateway;
  const nodes: Record<string, { daemon: Daemon; dataDir: string; ready: { stop(): void } }> = {};
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-cluster-"));
  const gatewayToken = `gw_${"g".repeat(8)}${Date.now()}`;
  const clientToken = `cl_${"c".repeat(8)}${Date.now()}`;
  let env: NodeJS.ProcessEnv;
  const log = (msg: string, f?: Record<string, unknown>) => {
    if (process.env.MITOS_TEST_VERBOSE) console.error(msg, f ?? "");
  };

  const startNode = async (name: string, dataDir: string) => {
    return startNodeAgent(dataDir, {
      node: name,
      cp,
      namespace: NS,
      leaseSeconds: LEASE_SECONDS,
      gatewayTokenFile: path.join(tmp, "gateway-token"),
    });
  };
  const sandbox = (name: string) => kube.getSandbox(name);
  const apply = (o: object) => cp.kubectl(["apply", "-n", NS, "-f", "-"], JSON.stringify(o));
  const local = (node: string) => {
    const n = nodes[node];
    if (!n) throw new Error(`no node ${node}`);
    return new SandboxServer({ baseUrl: n.daemon.url, apiKey: n.daemon.token });
  };

  before(async () => {
    cp = await startControlPlane();
    await cp.startControllers();
    cp.kubectl(["create", "namespace", NS]);
    fs.writeFileSync(path.join(tmp, "gateway-token"), gatewayToken, { mode: 0o600 });
    for (const name of ["node-a", "node-b"]) {
      const ready = await keepNodeReady(cp, name, { "mitos.run/sandbox-host": "true" });
      const dataDir = tempDataDir(`cluster-${name}`);
      nodes[name] = { daemon: await startNode(name, dataDir), dataDir, ready };
    }
    kube = new Kube(loadKubeConfig(cp.kubeconfigPath), NS);
    controller = new Controller({ kube, log });
    await controller.start();
    gateway = new Gateway({ kube, tokens: [clientToken], nodeToken: gatewayToken, port: 0, log });
    const url = await gateway.start();
    env = { ...process.env, MITOS_BASE_URL: url, MITOS_API_KEY: clientToken };
  });

  after(async () => {
    await gateway?.stop();
    await controller?.stop();
    for (const n of Object.values(nodes)) {
      n.ready.stop();
      await n.daemon.stop();
      removeDataDir(n.dataDir);
    }
    await cp?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it("a SandboxPool with min 1 per node gets a warm VM on each node", async () => {
    apply({
      apiVersion: "mitos.run/v1",
      kind: "SandboxPool",
      metadata: { name: "python" },
      spec: { template: { image: "python" }, min: 1, nodeSelector: { "mitos.run/sandbox-host": "true" } },
    });
    const pool = await until(
      "the pool warm on both nodes",
      async () => {
        const p = JSON.parse(cp.kubectl(["get", "-n", NS, "sandboxpool", "python", "-o", "json"])) as SandboxPool;
        return p.status?.nodeCount === 2 && (p.status.nodes ?? []).every((n) => (n.warm ?? 0) >= 1) ? p : undefined;
      },
      300_000,
    );
    assert.deepEqual(
      pool.status?.nodes?.map((n) => n.name),
      ["node-a", "node-b"],
    );
    for (const name of ["node-a", "node-b"]) {
      const warm = (await local(name).pools()).find((p) => p.template === "python");
      assert.ok((warm?.warm ?? 0) >= 1, `${name} has a warm python VM`);
    }
  });

  it("a Sandbox from the pool becomes Ready with an endpoint, and forkOf {count: 4} lands on its node", async () => {
    apply({
      apiVersion: "mitos.run/v1",
      kind: "Sandbox",
      metadata: { name: "s1" },
      spec: { pool: "python", timeoutSeconds: 1800 },
    });
    const s1 = await until("s1 Ready", async () =>
      (await sandbox("s1"))?.status?.phase === "Ready" ? sandbox("s1") : undefined,
    );
    assert.ok(s1?.status?.endpoint?.startsWith("http://127.0.0.1:"));
    assert.equal(s1?.status?.sandboxId, "s1");
    const node = s1?.status?.node as string;
    const direct = await local(node).get("s1");
    assert.equal((await direct.exec("echo ready-$((6*7))")).stdout.trim(), "ready-42");

    const uid = s1?.metadata.uid as string;
    apply({
      apiVersion: "mitos.run/v1",
      kind: "Sandbox",
      metadata: { name: "f1", ownerReferences: [{ apiVersion: "mitos.run/v1", kind: "Sandbox", name: "s1", uid }] },
      spec: { forkOf: { sandbox: "s1", count: 4 } },
    });
    const f1 = (await until("f1 Ready", async () =>
      (await sandbox("f1"))?.status?.phase === "Ready" ? sandbox("f1") : undefined,
    )) as SandboxResource;
    assert.equal(f1.status?.node, node, "the fork runs on its parent's node");
    assert.equal(f1.status?.children?.length, 4);
    assert.ok((f1.status?.forkTimeMs ?? 0) > 0);
    const onNode = new Set((await local(node).listSandboxes()).map((s) => s.id));
    for (const c of f1.status?.children ?? []) assert.ok(onNode.has(c), `child ${c} runs on ${node}`);
    // Children share the parent's state: the same hostname-independent file.
    const child = await local(node).get(f1.status?.children?.[0] as string);
    assert.equal(child.parentId, "s1");
  });

  it("a pool of a new template is built on every node, and its sandboxes run it", async () => {
    apply({
      apiVersion: "mitos.run/v1",
      kind: "SandboxPool",
      metadata: { name: "tools" },
      spec: { template: { image: "base", init: ["echo built-by-pool > /etc/mitos-pool"] }, min: 0 },
    });
    await until(
      "the tools template on both nodes",
      async () => {
        const p = JSON.parse(cp.kubectl(["get", "-n", NS, "sandboxpool", "tools", "-o", "json"])) as SandboxPool;
        return p.status?.nodes?.length === 2 && p.status.nodes.every((n) => n.ready) ? true : undefined;
      },
      300_000,
    );
    const client = new SandboxServer({ baseUrl: env.MITOS_BASE_URL, apiKey: clientToken });
    const sb = await client.fork("tools");
    assert.equal((await sb.exec("cat /etc/mitos-pool")).stdout.trim(), "built-by-pool");
    await sb.terminate();
    cp.kubectl(["delete", "-n", NS, "sandboxpool", "tools"]);
  });

  it("a Sandbox from a checkpoint lands on the node that holds the checkpoint", async () => {
    const s1 = (await sandbox("s1")) as SandboxResource;
    const node = s1.status?.node as string;
    const source = await local(node).get("s1");
    await source.exec("echo saved > /root/mark");
    const saved = await source.checkpoint({ name: "k8s" });
    apply({
      apiVersion: "mitos.run/v1",
      kind: "Sandbox",
      metadata: { name: "c1" },
      spec: { checkpoint: saved.id },
    });
    const c1 = (await until("c1 Ready", async () =>
      (await sandbox("c1"))?.status?.phase === "Ready" ? sandbox("c1") : undefined,
    )) as SandboxResource;
    assert.equal(c1.status?.node, node);
    const restored = await local(node).get("c1");
    assert.equal((await restored.exec("cat /root/mark")).stdout.trim(), "saved");
    cp.kubectl(["delete", "-n", NS, "sandbox", "c1"]);
    await until("c1's VM gone", async () =>
      (await local(node).listSandboxes()).some((x) => x.id === "c1") ? undefined : true,
    );
  });

  it("the gateway streams exec output unbuffered, proxies files and the PTY WebSocket, and terminates", async () => {
    const client = new SandboxServer({ baseUrl: env.MITOS_BASE_URL, apiKey: clientToken });
    const sb = await client.fork("python");
    assert.equal(sb.endpoint, env.MITOS_BASE_URL, "sandbox objects name the gateway");
    const chunks: Array<{ at: number; text: string }> = [];
    const t0 = Date.now();
    const r = await sb.exec("echo first; sleep 2; echo second", {
      onStdout: (text) => chunks.push({ at: Date.now() - t0, text }),
    });
    assert.equal(r.stdout, "first\nsecond\n");
    const first = chunks.find((c) => c.text.includes("first"));
    assert.ok(first && first.at < r.execTimeMs - 1000, `first chunk at ${first?.at} ms of ${r.execTimeMs}`);
    await sb.files.write("/tmp/through-gateway.txt", "hello cluster");
    assert.equal(await sb.files.readText("/tmp/through-gateway.txt"), "hello cluster");

    let screen = "";
    const pty = await sb.createPty({
      cols: 80,
      rows: 24,
      onData: (d) => {
        screen += d;
      },
    });
    pty.write("echo hi-$((40+2))\r");
    await until("PTY echo", () => (screen.includes("hi-42") ? true : undefined), 20_000);
    pty.resize(120, 40);
    pty.write("stty size\r");
    await until("PTY resize", () => (screen.includes("40 120") ? true : undefined), 20_000);
    pty.write("exit 3\r");
    assert.equal((await pty.wait()).exitCode, 3);

    await sb.terminate();
    await until("its resource gone", async () => ((await sandbox(sb.id)) ? undefined : true), 30_000);
    await assert.rejects(client.get(sb.id), (e: { code?: string }) => e.code === "not_found");
  });

  it("runs the seed's TypeScript and Python examples unchanged against the gateway", async (t) => {
    const client = new SandboxServer({ baseUrl: env.MITOS_BASE_URL, apiKey: clientToken });
    const before = new Set((await client.listSandboxes()).map((s) => s.id));
    // The examples leave their sandboxes running: clean up after them.
    t.after(async () => {
      for (const s of await client.listSandboxes()) if (!before.has(s.id)) await s.terminate().catch(() => {});
    });
    const ts = await run(process.execPath, ["--import", "tsx", path.join(repoRoot, "examples/fork-swarm.ts")], {
      env,
      cwd: repoRoot,
    });
    const squares = ["0", "1", "4", "9", "16", "25", "36", "49"];
    assert.deepEqual(
      ts.stdout.split("\n").filter((l) => l.trim() !== ""),
      squares,
    );
    const py = await run("python3", [path.join(repoRoot, "sdk/python/examples/fork_swarm.py")], {
      env: { ...env, PYTHONPATH: path.join(repoRoot, "sdk/python") },
      cwd: repoRoot,
    });
    assert.deepEqual(
      py.stdout.split("\n").filter((l) => l.trim() !== ""),
      squares,
    );
  });

  it("mitos-mcp, pointed at the gateway by its environment alone, creates, forks and runs", async () => {
    const mcp = new Client({ name: "cluster-test", version: "0.0.1" });
    await mcp.connect(
      new StdioClientTransport({
        command: process.execPath,
        args: [path.join(repoRoot, "packages/mcp/dist/bin/mitos-mcp.js")],
        env: env as Record<string, string>,
        cwd: repoRoot,
      }),
    );
    try {
      const call = async <T>(name: string, args: Record<string, unknown>): Promise<T> => {
        const r = (await mcp.callTool({ name, arguments: args })) as {
          isError?: boolean;
          content: Array<{ text?: string }>;
        };
        assert.ok(!r.isError, `${name}: ${r.content[0]?.text}`);
        return JSON.parse(r.content[0]?.text ?? "null") as T;
      };
      const sb = await call<{ id: string }>("sandbox_create", { template: "python" });
      const { children } = await call<{ children: string[] }>("sandbox_fork", { sandbox_id: sb.id, count: 2 });
      assert.equal(children.length, 2);
      const out = await call<{ stdout: string }>("sandbox_exec", { sandbox_id: children[1], command: "echo via-mcp" });
      assert.equal(out.stdout.trim(), "via-mcp");
      for (const id of [...children, sb.id]) await call("sandbox_terminate", { sandbox_id: id });
    } finally {
      await mcp.close();
    }
  });

  it("mitos sandbox ls through the gateway lists the sandboxes of both nodes", async () => {
    // The node's local API keeps working: one sandbox made directly on each node.
    const direct = await Promise.all(["node-a", "node-b"].map((n) => local(n).fork("python", { id: `direct-${n}` })));
    const { stdout } = await run(
      process.execPath,
      ["--import", "tsx", path.join(repoRoot, "packages/cli/src/bin/mitos.ts"), "sandbox", "ls", "--json"],
      { env, cwd: repoRoot },
    );
    const ids = new Set((JSON.parse(stdout) as Array<{ id: string }>).map((s) => s.id));
    for (const d of direct) assert.ok(ids.has(d.id), `${d.id} listed through the gateway`);
    assert.ok(ids.has("s1"));
    await Promise.all(direct.map((d) => d.terminate()));
  });

  it("a dead node's sandboxes go Lost within the lease; creates land on the other node, whose pool refills", async () => {
    const s1 = (await sandbox("s1")) as SandboxResource;
    const dead = s1.status?.node as string;
    const alive = dead === "node-a" ? "node-b" : "node-a";
    const killedAt = Date.now();
    await nodes[dead]?.daemon.kill();
    // One controller pass writes each sandbox in turn, so s1 and f1 may turn Lost a moment apart.
    const phases = async () => Promise.all(["s1", "f1"].map(async (n) => (await sandbox(n))?.status?.phase));
    await until("s1 and f1 Lost", async () => ((await phases()).every((p) => p === "Lost") ? true : undefined), 60_000);
    const lostAfter = Date.now() - killedAt;
    assert.ok(lostAfter < (LEASE_SECONDS + 6) * 1000, `Lost after ${lostAfter} ms (lease ${LEASE_SECONDS} s)`);
    await until("the pool placed on the live node only", async () => {
      const p = JSON.parse(cp.kubectl(["get", "-n", NS, "sandboxpool", "python", "-o", "json"])) as SandboxPool;
      return p.status?.nodes?.length === 1 && p.status.nodes[0]?.name === alive ? true : undefined;
    });

    const client = new SandboxServer({ baseUrl: env.MITOS_BASE_URL, apiKey: clientToken });
    const sb = await client.fork("python");
    const cr = await sandbox(sb.id);
    assert.equal(cr?.status?.node, alive);
    assert.equal((await sb.exec("echo on-$((1+1))")).stdout.trim(), "on-2");
    await until("the pool refilled on the live node", async () => {
      const warm = (await local(alive).pools()).find((p) => p.template === "python");
      return (warm?.warm ?? 0) >= 1 ? true : undefined;
    });

    // A restarted controller rebuilds from the API and changes nothing that was right.
    const snapshot = async () =>
      (await kube.listSandboxes())
        .map((s) => `${s.metadata.name}:${s.status?.phase}:${s.status?.node}:${s.status?.scheduledAt}`)
        .sort();
    const beforeRestart = await snapshot();
    await controller.stop();
    controller = new Controller({ kube, log });
    await controller.start();
    await until("a few passes of the new controller", () => (controller.passes >= 3 ? true : undefined));
    await new Promise((r) => setTimeout(r, 2000));
    assert.deepEqual(await snapshot(), beforeRestart);

    // The node's mitosd comes back, re-adopts its VMs and renews again: Ready once more.
    const n = nodes[dead];
    if (n) n.daemon = await startNode(dead, n.dataDir);
    await until(
      "s1 Ready again",
      async () => ((await sandbox("s1"))?.status?.phase === "Ready" ? true : undefined),
      60_000,
    );
    const back = await local(dead).get("s1");
    assert.equal((await back.exec("echo back")).stdout.trim(), "back");
  });

  it("deleting the pool removes its sandboxes", async () => {
    const mine = (await kube.listSandboxes()).filter((s) => s.spec.pool === "python" && s.status?.phase === "Ready");
    assert.ok(mine.length > 0);
    cp.kubectl(["delete", "-n", NS, "sandboxpool", "python"]);
    await until(
      "the pool's Sandbox resources garbage-collected",
      async () => ((await kube.listSandboxes()).some((s) => s.spec.pool === "python") ? undefined : true),
      60_000,
    );
    for (const s of mine) {
      const node = s.status?.node as string;
      await until(`sandbox ${s.status?.sandboxId} gone from ${node}`, async () =>
        (await local(node).listSandboxes()).some((x) => x.id === s.status?.sandboxId) ? undefined : true,
      );
    }
  });
});
