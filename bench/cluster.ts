// Mitos on Kubernetes, measured through the API as users meet it:
// npm run bench:cluster [-- --quick]
// The cluster of packages/operator/test/cluster.test.ts: a real etcd,
// kube-apiserver and kube-controller-manager (scripts/build-kube.sh), two
// real mitosd node agents on this machine (node-a, node-b), the controller and
// the gateway in this process, and a SandboxPool "python" warm on both nodes.
// Each figure is taken through the gateway and, beside it, directly on a
// node's mitosd, so the gateway's cost shows (forks also on the other node,
// where no Sandbox resource is Ready: a control for the node agent's load);
// then the reconcile latency of a Sandbox resource made with the Kubernetes
// API. Profile rows come from the node agents' mitosd logs (their "fork" lines).
// N iterations after one warm-up (10; 3 with --quick). The record goes to
// bench/results/<date>-cluster.{json,md} (bench/results/quick/ with --quick).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { qemuPidsOf, qemuProcesses } from "../packages/engine/src/qemu/processes.js";
import {
  Controller,
  Gateway,
  Kube,
  loadKubeConfig,
  type SandboxPool,
  type SandboxResource,
} from "../packages/operator/src/index.js";
import { type Sandbox, SandboxServer } from "../packages/sdk/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import {
  type ControlPlane,
  keepNodeReady,
  kubeAvailable,
  startControlPlane,
  startNodeAgent,
} from "../test-support/kube.js";
import type { Daemon } from "../test-support/mitosd.js";
import { until } from "../test-support/until.js";
import { fmt, type RecordOptions, record, type Series, stats } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 3 : 10;
const FORK_COUNT = 8;
const NS = "mitos-system";
const LEASE_SECONDS = 10;
const POOL = "python";
const verbose = process.env.MITOS_BENCH_VERBOSE === "1";

if (!kubeAvailable()) {
  console.error("bench:cluster: the Kubernetes binaries are not built (bash scripts/build-kube.sh)");
  process.exit(2);
}

const t00 = performance.now();
const progress = (msg: string) => console.error(`[${((performance.now() - t00) / 1000).toFixed(1)} s] ${msg}`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Node {
  name: string;
  dataDir: string;
  daemon?: Daemon;
  /** Its start in flight (a teardown during setup waits for it, then stops it). */
  starting?: Promise<Daemon>;
  ready?: { stop(): void };
  /** The node's own mitosd API with its admin token. */
  local?: SandboxServer;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-bench-cluster-"));
const gatewayTokenFile = path.join(tmp, "gateway-token");
const gatewayToken = `gw_${"g".repeat(8)}${Date.now()}`;
const clientToken = `cl_${"c".repeat(8)}${Date.now()}`;
const nodes: Node[] = ["node-a", "node-b"].map((name) => ({ name, dataDir: "" }));
let cp: ControlPlane | undefined;
let cpStarting: Promise<ControlPlane> | undefined;
let controller: Controller | undefined;
let gateway: Gateway | undefined;
const log = (msg: string, f?: Record<string, unknown>) => {
  if (verbose) console.error(msg, f ?? "");
};

let tornDown: Promise<void> | undefined;
/** Stops everything this run started, step by step (a failing step does not skip the others). Idempotent. */
function teardown(): Promise<void> {
  tornDown ??= (async () => {
    const step = async (what: string, f: () => Promise<void> | void) => {
      try {
        await f();
      } catch (e) {
        console.error(`teardown: ${what} failed: ${String(e)}`);
      }
    };
    await step("stopping the gateway", () => gateway?.stop());
    await step("stopping the controller", () => controller?.stop());
    for (const n of nodes) {
      await step(`stopping ${n.name}`, async () => {
        n.ready?.stop();
        const d = n.daemon ?? (await n.starting?.catch(() => undefined));
        if (!d) return;
        // --shutdown terminate: mitosd ends its sandboxes and exits; SIGKILL if it hangs.
        const t = setTimeout(() => void d.kill(), 60_000);
        await d.stop();
        clearTimeout(t);
      });
      if (n.dataDir) await step(`removing ${n.dataDir}`, () => removeDataDir(n.dataDir));
    }
    await step("stopping the control plane", async () => (cp ?? (await cpStarting?.catch(() => undefined)))?.stop());
    fs.rmSync(tmp, { recursive: true, force: true });
  })();
  return tornDown;
}
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    progress(`${sig}: tearing down`);
    void teardown().finally(() => process.exit(130));
  });
}

const local = (name: string): SandboxServer => {
  const s = nodes.find((n) => n.name === name)?.local;
  if (!s) throw new Error(`no node ${name}`);
  return s;
};

/** Warm python VMs on each node, asked of each node's mitosd. */
async function warmCounts(): Promise<number[]> {
  return Promise.all(
    nodes.map(async (n) => (await (n.local as SandboxServer).pools()).find((p) => p.template === POOL)?.warm ?? 0),
  );
}

/** CPU time (utime + stime, clock ticks) of every QEMU of the two nodes, and how many there are. */
function qemuCpu(): { count: number; ticks: number } {
  let ticks = 0;
  let count = 0;
  for (const n of nodes) {
    for (const pid of qemuPidsOf(n.dataDir)) {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        ticks += Number(f[11]) + Number(f[12]);
        count++;
      } catch {
        // exited meanwhile
      }
    }
  }
  return { count, ticks };
}

const settleMs: number[] = [];
/** QEMUs on the host that are not this run's (another suite or bench sharing the cores), seen before iterations. */
let foreignSeen = 0;
let foreignMax = 0;
/**
 * Between iterations: the python pool warm again on both nodes (≥ 1 each, so
 * every create can claim a warm VM), and the nodes' QEMUs quiet — no QEMU
 * started or ended and under 0.25 core of QEMU CPU over the last second
 * (pool refills, spare VMs for the next fork) — at most 30 s for the quiet part.
 */
async function settle(): Promise<void> {
  const t = performance.now();
  await until("the python pool warm on both nodes", async () => (await warmCounts()).every((w) => w >= 1), 300_000);
  const deadline = Date.now() + 30_000;
  let prev = qemuCpu();
  for (;;) {
    await sleep(1000);
    const now = qemuCpu();
    const cores = (now.ticks - prev.ticks) / 100; // USER_HZ = 100: ticks over 1 s → cores
    const quiet = now.count === prev.count && cores < 0.25;
    prev = now;
    if (quiet || Date.now() > deadline) break;
  }
  const foreign = qemuProcesses().filter(
    (q) => !nodes.some((n) => q.args.some((a) => a.includes(`${n.dataDir}/`))),
  ).length;
  if (foreign > 0) foreignSeen++;
  foreignMax = Math.max(foreignMax, foreign);
  // The quiet wait may have let a refill start: the pools must still be warm.
  await until("the python pool warm on both nodes", async () => (await warmCounts()).every((w) => w >= 1), 300_000);
  settleMs.push(performance.now() - t);
}

/** Wall-clock windows of the phases (for the request rates read from the node logs). */
const phases: Record<"create" | "fork", { from: number; to: number }> = {
  create: { from: 0, to: 0 },
  fork: { from: 0, to: 0 },
};
// test-support/mitosd.ts writes each mitosd's JSON log there: the run's temp dir unless one is given.
if (!process.env.MITOS_TEST_LOG_DIR) {
  process.env.MITOS_TEST_LOG_DIR = path.join(tmp, "logs");
  fs.mkdirSync(process.env.MITOS_TEST_LOG_DIR, { recursive: true });
}
const logDir = process.env.MITOS_TEST_LOG_DIR;

/** The JSON lines of a node's mitosd log. */
function nodeLog(name: string): Array<Record<string, unknown> & { time?: number; msg?: string }> {
  const n = nodes.find((x) => x.name === name);
  if (!n) return [];
  let text = "";
  try {
    text = fs.readFileSync(path.join(logDir, `mitosd-${path.basename(n.dataDir)}.log`), "utf8");
  } catch {
    return [];
  }
  return text.split("\n").flatMap((l) => {
    if (!l.startsWith("{")) return [];
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

/** GET /v1/sandboxes requests a node's mitosd logged per second within a window. */
function listRate(name: string, w: { from: number; to: number }): number {
  const hits = nodeLog(name).filter((l) => {
    const req = l.req as { method?: string; url?: string } | undefined;
    const t = Number(l.time);
    return (
      l.msg === "incoming request" && req?.method === "GET" && req.url === "/v1/sandboxes" && t >= w.from && t <= w.to
    );
  }).length;
  return hits / Math.max(0.001, (w.to - w.from) / 1000);
}

function execOk(what: string, r: { exitCode: number; stderr: string }): void {
  if (r.exitCode !== 0) throw new Error(`${what}: exec true exited ${r.exitCode}: ${r.stderr}`);
}

const series: Series[] = [];
const notes: string[] = [];
const add = (name: string, unit: string, values: number[]) => {
  series.push({ name, unit, values });
  return values;
};
const p = (v: number[]) => stats(v);
/** "gateway p50 A ms vs direct B ms: +C ms (D×)", and the same at p90. */
function cost(what: string, gw: number[], direct: number[]): string {
  const g = p(gw);
  const d = p(direct);
  return `${what}: the gateway adds ${fmt(g.p50 - d.p50)} ms at p50 (${fmt(g.p50)} vs ${fmt(d.p50)} ms direct, ${(g.p50 / d.p50).toFixed(1)}×) and ${fmt(g.p90 - d.p90)} ms at p90 (${fmt(g.p90)} vs ${fmt(d.p90)} ms).`;
}
/** ISO timestamps with sub-second digits (new Date().toISOString() writes milliseconds). */
const fine = (s: string | undefined) => s !== undefined && /\.\d{3}Z$/.test(s);

let exitCode = 0;
try {
  // --- the cluster, as in packages/operator/test/cluster.test.ts ---
  progress("starting etcd, kube-apiserver and kube-controller-manager");
  cpStarting = startControlPlane();
  cp = await cpStarting;
  await cp.startControllers();
  cp.kubectl(["create", "namespace", NS]);
  fs.writeFileSync(gatewayTokenFile, gatewayToken, { mode: 0o600 });
  for (const n of nodes) {
    progress(`starting mitosd --node ${n.name}`);
    n.ready = await keepNodeReady(cp, n.name, { "mitos.run/sandbox-host": "true" });
    n.dataDir = tempDataDir(`bench-cluster-${n.name}`);
    n.starting = startNodeAgent(n.dataDir, {
      node: n.name,
      cp,
      namespace: NS,
      leaseSeconds: LEASE_SECONDS,
      gatewayTokenFile,
    });
    n.daemon = await n.starting;
    n.local = new SandboxServer({ baseUrl: n.daemon.url, apiKey: n.daemon.token, maxRetries: 0 });
  }
  const kube = new Kube(loadKubeConfig(cp.kubeconfigPath), NS);
  const ctl = new Controller({ kube, log });
  await ctl.start();
  controller = ctl;
  const gw = new Gateway({ kube, tokens: [clientToken], nodeToken: gatewayToken, port: 0, log });
  gateway = gw;
  const gatewayUrl = await gw.start();
  progress(`gateway at ${gatewayUrl}; applying SandboxPool ${POOL} {min: 1} and waiting for it warm on both nodes`);
  cp.kubectl(
    ["apply", "-n", NS, "-f", "-"],
    JSON.stringify({
      apiVersion: "mitos.run/v1",
      kind: "SandboxPool",
      metadata: { name: POOL },
      spec: { template: { image: "python" }, min: 1, nodeSelector: { "mitos.run/sandbox-host": "true" } },
    }),
  );
  const controlPlane = cp;
  await until(
    "the pool warm on both nodes",
    async () => {
      const pool = JSON.parse(
        controlPlane.kubectl(["get", "-n", NS, "sandboxpool", POOL, "-o", "json"]),
      ) as SandboxPool;
      return pool.status?.nodeCount === 2 && (pool.status.nodes ?? []).every((x) => (x.warm ?? 0) >= 1)
        ? true
        : undefined;
    },
    600_000,
    500,
  );
  await until("warm on both nodes (their own pools())", async () => (await warmCounts()).every((w) => w >= 1));
  const setupS = (performance.now() - t00) / 1000;
  progress(`cluster up in ${setupS.toFixed(0)} s`);
  const accel = String((await local("node-a").health()).accel);
  const rec: RecordOptions = {
    quick,
    accel,
    command: `npm run bench:cluster${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
  };

  const client = new SandboxServer({ baseUrl: gatewayUrl, apiKey: clientToken, maxRetries: 0 });
  const direct = local("node-a");

  // --- 1. create → first exec ---
  {
    const total = { gateway: [] as number[], direct: [] as number[] };
    const created = { gateway: [] as number[], direct: [] as number[] };
    const toScheduled: number[] = [];
    const scheduledToReady: number[] = [];
    const readyToAnswered: number[] = [];
    const landed: Record<string, number> = {};
    phases.create.from = Date.now();
    for (let i = 0; i <= N; i++) {
      for (const via of ["gateway", "direct"] as const) {
        await settle();
        const c = via === "gateway" ? client : direct;
        const w0 = Date.now();
        const t0 = performance.now();
        const sb = await c.fork(POOL);
        const t1 = performance.now();
        const w1 = Date.now();
        const r = await sb.exec("true");
        const t2 = performance.now();
        execOk(`${via} create ${i}`, r);
        if (via === "gateway") {
          const cr = await kube.getSandbox(sb.id);
          const node = cr?.status?.node ?? "?";
          const s = cr?.status;
          if (i > 0) {
            landed[node] = (landed[node] ?? 0) + 1;
            if (fine(s?.scheduledAt) && fine(s?.readyAt)) {
              const sAt = Date.parse(s?.scheduledAt as string);
              const rAt = Date.parse(s?.readyAt as string);
              toScheduled.push(sAt - w0);
              scheduledToReady.push(rAt - sAt);
              readyToAnswered.push(w1 - rAt);
            }
          }
        }
        if (i > 0) {
          total[via].push(t2 - t0);
          created[via].push(t1 - t0);
        }
        progress(
          `create ${i === 0 ? "warm-up" : `${i}/${N}`} ${via}: returned ${fmt(t1 - t0)} ms, first exec ${fmt(t2 - t0)} ms`,
        );
        await sb.terminate();
      }
    }
    phases.create.to = Date.now();
    add("create → first exec, through the gateway", "ms", total.gateway);
    add("create → first exec, directly on node-a", "ms", total.direct);
    add("create → sandbox returned, through the gateway", "ms", created.gateway);
    add("create → sandbox returned, directly on node-a", "ms", created.direct);
    if (toScheduled.length === N) {
      add("gateway create, profile: call → status.scheduledAt (controller)", "ms", toScheduled);
      add("gateway create, profile: scheduledAt → readyAt (node agent claims the warm VM)", "ms", scheduledToReady);
      add(
        "gateway create, profile: readyAt → create answered (gateway sees Ready, asks the node)",
        "ms",
        readyToAnswered,
      );
    }
    notes.push(
      `Create: \`new SandboxServer({baseUrl}).fork("python")\` then \`sb.exec("true")\`, timed from the call to the exec result; terminated after, outside the timing. Gateway and direct creates alternate; before each one the bench waits until the python pool is warm again on both nodes (≥ 1 warm VM each, asked of each node's \`pools()\`), so every create claims a warm VM. Direct creates go to node-a's mitosd with its own token; gateway creates landed on ${Object.entries(
        landed,
      )
        .map(([k, v]) => `${k} ×${v}`)
        .join(", ")}.`,
      cost("create → first exec", total.gateway, total.direct),
    );
  }

  // --- 2. fork(8) → every child answered ---
  {
    type Via = "gateway" | "direct" | "control";
    const vias: Via[] = ["gateway", "direct", "control"];
    const none = () => ({ gateway: [] as number[], direct: [] as number[], control: [] as number[] });
    const total = none();
    const answered = none();
    const engineFork = none();
    const gwParent = await client.fork(POOL, { timeoutSeconds: 1800 });
    execOk("gateway parent", await gwParent.exec("true"));
    const parentNode = (await kube.getSandbox(gwParent.id))?.status?.node;
    if (!parentNode) throw new Error(`the gateway's parent ${gwParent.id} has no node in its Sandbox resource`);
    const otherNode = nodes.find((n) => n.name !== parentNode)?.name as string;
    const directParent = await local(parentNode).fork(POOL, { timeoutSeconds: 1800 });
    execOk("direct parent", await directParent.exec("true"));
    // Control: the same direct fork on the other node, where no Sandbox resource is Ready (see the notes).
    const controlParent = await local(otherNode).fork(POOL, { timeoutSeconds: 1800 });
    execOk("control parent", await controlParent.exec("true"));
    const parents: Record<Via, Sandbox> = { gateway: gwParent, direct: directParent, control: controlParent };
    progress(
      `fork parents: ${gwParent.id} (gateway) and ${directParent.id} (direct) on ${parentNode}; ${controlParent.id} (control) on ${otherNode}`,
    );
    phases.fork = { from: Date.now(), to: 0 };
    for (let i = 0; i <= N; i++) {
      for (const via of vias) {
        await settle();
        const t0 = performance.now();
        const children: Sandbox[] = await parents[via].fork(FORK_COUNT);
        const t1 = performance.now();
        const results = await Promise.all(children.map((c) => c.exec("true")));
        const t2 = performance.now();
        if (children.length !== FORK_COUNT) throw new Error(`${via} fork: ${children.length} children`);
        for (const r of results) execOk(`${via} fork child`, r);
        if (i > 0) {
          total[via].push(t2 - t0);
          answered[via].push(t1 - t0);
          engineFork[via].push(children[0]?.forkTimeMs ?? Number.NaN);
        }
        progress(
          `fork(${FORK_COUNT}) ${i === 0 ? "warm-up" : `${i}/${N}`} ${via}: answered ${fmt(t1 - t0)} ms, all children answered ${fmt(t2 - t0)} ms`,
        );
        await Promise.all(children.map((c) => c.terminate()));
      }
    }
    phases.fork.to = Date.now();
    await Promise.all(Object.values(parents).map((x) => x.terminate()));
    const where: Record<Via, string> = {
      gateway: "through the gateway",
      direct: `directly on ${parentNode}`,
      control: `directly on ${otherNode} (control: no Sandbox resource Ready there)`,
    };
    for (const via of vias) add(`fork(${FORK_COUNT}) → all children answered, ${where[via]}`, "ms", total[via]);
    for (const via of vias)
      add(`fork(${FORK_COUNT}) → fork answered (children listed), ${where[via]}`, "ms", answered[via]);
    for (const via of vias) {
      add(`fork(${FORK_COUNT}), profile: engine fork time (fork_time_ms), ${where[via]}`, "ms", engineFork[via]);
    }
    // The engine's own split of each fork, from the node's log (its "fork" lines), warm-ups dropped.
    for (const via of vias) {
      const node = via === "control" ? otherNode : parentNode;
      const lines = nodeLog(node).filter((l) => l.msg === "fork" && l.source === parents[via].id);
      if (lines.length !== N + 1) continue;
      add(
        `fork(${FORK_COUNT}), profile: engine capture (pause → RAM and device state written), ${where[via]}`,
        "ms",
        lines.slice(1).map((l) => Number(l.captureMs)),
      );
    }
    notes.push(
      `Fork: one python parent made through the gateway (it landed on ${parentNode}), one made directly on ${parentNode}'s mitosd, and a control one directly on ${otherNode}'s; each ran \`true\` once; then \`parent.fork(${FORK_COUNT})\` and \`Promise.all(children.map(c => c.exec("true")))\`, timed as a whole; children terminated after, outside the timing. The three alternate; before each fork the bench waits for the pools warm and the QEMUs quiet (the spare VMs for the next fork started).`,
      cost(`fork(${FORK_COUNT}) → all children answered`, total.gateway, total.direct),
    );
    const rates = (n: string, w: { from: number; to: number }) => fmt(listRate(n, w));
    notes.push(
      `Node agent load: GET /v1/sandboxes answered by each mitosd (from its log), per second — during the fork phase, while the gateway parent's Sandbox resource was Ready on ${parentNode}: ${parentNode} ${rates(parentNode, phases.fork)}/s, ${otherNode} ${rates(otherNode, phases.fork)}/s; during the create phase: node-a ${rates("node-a", phases.create)}/s, node-b ${rates("node-b", phases.create)}/s. Each such list reads /proc/<pid>/smaps of every VM of the node in mitosd's event loop. The control row (${otherNode}) shows what a fork costs on a node without that load.`,
    );
  }

  // --- 3. reconcile latency of a Sandbox resource ---
  {
    const ready: number[] = [];
    const toScheduled: number[] = [];
    const scheduledToReady: number[] = [];
    const gone: number[] = [];
    const stamps: string[] = [];
    const tag = Date.now().toString(36);
    for (let i = 0; i <= N; i++) {
      await settle();
      const name = `bench-rc-${tag}-${i}`;
      const w0 = Date.now();
      const t0 = performance.now();
      await kube.createSandbox({
        apiVersion: "mitos.run/v1",
        kind: "Sandbox",
        metadata: { name },
        spec: { pool: POOL },
      });
      let sb: SandboxResource | undefined;
      for (;;) {
        sb = await kube.getSandbox(name);
        const phase = sb?.status?.phase;
        if (phase === "Ready") break;
        if (phase === "Failed" || phase === "Lost" || phase === "Terminated") {
          throw new Error(`Sandbox ${name} went ${phase}: ${sb?.status?.message}`);
        }
        if (performance.now() - t0 > 120_000)
          throw new Error(`Sandbox ${name} not Ready in 120 s: ${sb?.status?.message}`);
        await sleep(20);
      }
      const t1 = performance.now();
      const s = sb?.status ?? {};
      stamps.push(`${s.scheduledAt} / ${s.readyAt}`);
      const node = s.node as string;
      const id = s.sandboxId as string;
      const d0 = performance.now();
      await kube.deleteSandbox(name);
      await until(
        `${id} gone from ${node}`,
        async () =>
          !(await kube.getSandbox(name)) && !(await local(node).listSandboxes()).some((x) => x.id === id)
            ? true
            : undefined,
        60_000,
        20,
      );
      const d1 = performance.now();
      if (i > 0) {
        ready.push(t1 - t0);
        gone.push(d1 - d0);
        if (fine(s.scheduledAt) && fine(s.readyAt)) {
          toScheduled.push(Date.parse(s.scheduledAt as string) - w0);
          scheduledToReady.push(Date.parse(s.readyAt as string) - Date.parse(s.scheduledAt as string));
        }
      }
      progress(
        `reconcile ${i === 0 ? "warm-up" : `${i}/${N}`}: Ready after ${fmt(t1 - t0)} ms on ${node} (${s.scheduledAt} → ${s.readyAt}); gone ${fmt(d1 - d0)} ms after the delete`,
      );
    }
    add("reconcile: Sandbox {pool: python} created → phase Ready (polled every 20 ms)", "ms", ready);
    if (toScheduled.length === N) {
      add("reconcile: created → status.scheduledAt (controller)", "ms", toScheduled);
      add("reconcile: scheduledAt → status.readyAt (node agent)", "ms", scheduledToReady);
    } else {
      notes.push(
        `The status timestamps were too coarse to split the reconcile (e.g. ${stamps[0]}); only the total is reported.`,
      );
    }
    add("reconcile: Sandbox deleted → resource and VM gone", "ms", gone);
    notes.push(
      "Reconcile: a Sandbox resource {spec: {pool: python}} made with the Kubernetes API (`kube.createSandbox`), then `kube.getSandbox` every 20 ms until status.phase is Ready; the split uses status.scheduledAt (written by the controller) and status.readyAt (written by the node agent), ISO times with milliseconds from the same host clock as the bench, against the wall-clock time of the create call. Then the resource is deleted and the bench polls (20 ms) until it and its VM are gone.",
    );
  }

  const runS = (performance.now() - t00) / 1000;
  notes.push(
    `Setup (control plane, two mitosd node agents, the python template built on both, the pool warm) took ${setupS.toFixed(0)} s; the whole run ${(runS / 60).toFixed(1)} min. Waiting for warm pools and quiet QEMUs before each iteration: median ${fmt(stats(settleMs).p50 / 1000)} s.`,
    foreignSeen > 0
      ? `Other QEMUs (not this run's) were running on the host before ${foreignSeen} of ${settleMs.length} iterations (up to ${foreignMax} at once): those figures share the cores with other work.`
      : `No other QEMU ran on the host before any of the ${settleMs.length} iterations.`,
    `${N} iterations per row after one warm-up discarded. Both node agents, their VMs, the control plane and the bench share this machine's ${os.availableParallelism()} cores; VMs run under ${accel}.`,
  );
  record("cluster", rec, series, notes);
} catch (e) {
  exitCode = 1;
  console.error("bench:cluster failed:", e);
} finally {
  progress("tearing down");
  await teardown();
  const left = qemuProcesses().filter((q) => nodes.some((n) => n.dataDir && q.args.some((a) => a.includes(n.dataDir))));
  if (left.length > 0) {
    console.error(`bench:cluster: QEMU left running: ${left.map((q) => q.pid).join(" ")}`);
    exitCode = 1;
  }
  progress("done");
}
process.exit(exitCode);
