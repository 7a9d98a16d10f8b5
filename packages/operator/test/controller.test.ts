// The controller against a real kube-apiserver (etcd + kube-apiserver, and
// kube-controller-manager for garbage collection; no VMs, no mitosd). The
// test plays the node agents: it writes each node's Lease with a capacity
// annotation and renews it. Two controllers race over 30 sandboxes; a fork
// goes to its parent's node; pools spread over nodes and follow a node that
// stops renewing; invalid specs are reported; a restarted controller changes
// nothing; pools own their sandboxes.
// Skipped without the control-plane binaries (scripts/build-kube.sh), except
// under CI=true, where their absence is a failure.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { V1MicroTime, Watch } from "@kubernetes/client-node";
import { type ControlPlane, KUBE_BIN, kubeAvailable, startControlPlane } from "../../../test-support/kube.js";
import { until } from "../../../test-support/until.js";
import { CAPACITY_ANNOTATION, LEASE_PREFIX, type NodeCapacity, type NodeView } from "../src/capacity.js";
import { Controller } from "../src/controller.js";
import { Kube, loadKubeConfig } from "../src/kube.js";
import { nodeViews } from "../src/nodes.js";
import { GROUP, type SandboxPool, type SandboxResource, type SandboxStatus, VERSION } from "../src/resources.js";
import { freeBytes, HOST_SHARE } from "../src/scheduler.js";

const NS = "mitos-test";
const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** 20 GiB × HOST_SHARE is exactly 18 GiB in floating point. */
const TOTAL = 20 * GiB;
const TEMPLATE_BYTES = 512 * MiB;
const available = kubeAvailable();
const skip =
  !available && process.env.CI !== "true"
    ? `no kube-apiserver in ${KUBE_BIN} or no etcd: build them with scripts/build-kube.sh`
    : false;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function capacity(name: string, roomBytes: number, o: Partial<NodeCapacity>): NodeCapacity {
  return {
    endpoint: `http://${name}.invalid:7070`,
    memoryTotalBytes: TOTAL,
    // freeBytes() comes to roomBytes exactly (the kernel's view left out).
    memoryUsedBytes: TOTAL * HOST_SHARE - roomBytes,
    memoryAvailableBytes: 0,
    templates: ["python"],
    warm: {},
    forkCostBytes: {},
    templateMemoryBytes: { python: TEMPLATE_BYTES },
    sandboxes: [],
    checkpoints: [],
    accel: "kvm",
    free: { sandboxes: 1000, guestMemoryMib: 65536 },
    labels: {},
    ...o,
  };
}

/** Plays a node agent: keeps `mitos-node-<name>` renewed with a capacity annotation. */
class FakeNode {
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly kube: Kube,
    readonly name: string,
    public capacity: NodeCapacity,
    public leaseSeconds: number,
  ) {}

  /** One renewal (serialized: a read-modify-replace, as the real node agent does). */
  renew(): Promise<void> {
    this.chain = this.chain.then(async () => {
      const leaseName = `${LEASE_PREFIX}${this.name}`;
      const existing = await this.kube.getLease(leaseName);
      const lease = {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: {
          ...(existing?.metadata ?? {}),
          name: leaseName,
          namespace: NS,
          annotations: { [CAPACITY_ANNOTATION]: JSON.stringify(this.capacity) },
        },
        spec: { holderIdentity: this.name, leaseDurationSeconds: this.leaseSeconds, renewTime: new V1MicroTime() },
      };
      if (existing) await this.kube.replaceLease(lease);
      else await this.kube.createLease(lease);
    });
    return this.chain;
  }

  async start(everyMs: number): Promise<void> {
    await this.renew();
    this.timer = setInterval(() => void this.renew().catch(() => {}), everyMs);
  }

  /** Stops renewing (the lease then expires after leaseSeconds). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.chain.catch(() => {});
  }

  async update(c: Partial<NodeCapacity>): Promise<void> {
    this.capacity = { ...this.capacity, ...c };
    await this.renew();
  }
}

describe("controller (real kube-apiserver, node agents played by the test)", { skip, timeout: 120_000 }, () => {
  let cp: ControlPlane;
  let kube: Kube;
  let nodeA: FakeNode;
  let nodeB: FakeNode;
  let controllers: Controller[] = [];
  const logs: string[] = [];
  /** Successful Scheduled writes per controller instance. */
  const wins: number[] = [];
  let watchAbort: AbortController | undefined;
  /** An error of the recording watch (an ended watch is resumed; an error is a lost record). */
  let watchError: unknown;
  let watchResumed = 0;
  let watchStopped = false;
  /** Every status the watch saw, per sandbox name, in order. */
  const seen = new Map<string, Array<SandboxStatus | undefined>>();

  const startController = async (): Promise<Controller> => {
    const id = wins.length;
    wins.push(0);
    const c = new Controller({
      kube,
      resyncMs: 300,
      log: (msg, f) => {
        if (msg === "scheduled") wins[id]!++;
        logs.push(`[c${id}] ${msg} ${JSON.stringify(f ?? {})}`);
      },
    });
    controllers.push(c);
    await c.start();
    return c;
  };
  const stopControllers = async () => {
    const cs = controllers;
    controllers = [];
    await Promise.all(cs.map((c) => c.stop()));
  };

  const crd = (plural: "sandboxes" | "sandboxpools") => ({ group: GROUP, version: VERSION, namespace: NS, plural });
  const createSandbox = (name: string, spec: SandboxResource["spec"]) =>
    kube.createSandbox({ apiVersion: `${GROUP}/${VERSION}`, kind: "Sandbox", metadata: { name }, spec });
  const createPool = async (name: string, spec: Partial<SandboxPool["spec"]>): Promise<SandboxPool> =>
    (await kube.objects.createNamespacedCustomObject({
      ...crd("sandboxpools"),
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "SandboxPool",
        metadata: { name },
        spec: { template: { image: "python" }, ...spec },
      },
    })) as SandboxPool;
  const getPool = async (name: string) =>
    (await kube.objects.getNamespacedCustomObject({ ...crd("sandboxpools"), name })) as SandboxPool;
  const sandbox = async (name: string) => {
    const sb = await kube.getSandbox(name);
    assert.ok(sb, `sandbox ${name} is gone`);
    return sb;
  };
  /** What a node agent writes once it made the sandbox (no resourceVersion: it owns this step). */
  const markReady = async (name: string, node: string) => {
    await kube.patchSandboxStatus(name, { phase: "Ready", node, sandboxId: name, readyAt: new Date().toISOString() });
    return until(`${name} Ready`, async () => {
      const sb = await sandbox(name);
      return sb.status?.phase === "Ready" && sb.status.node === node && sb;
    });
  };
  const views = async (): Promise<Map<string, NodeView>> => {
    const leases = (await kube.coordination.listNamespacedLease({ namespace: NS })).items;
    return new Map(nodeViews(leases).map((n) => [n.name, n]));
  };
  const targets = (p: SandboxPool) => (p.status?.nodes ?? []).map((n) => ({ name: n.name, target: n.target }));

  before(async () => {
    assert.ok(available, `CI=true but the control plane is missing (${KUBE_BIN}/kube-apiserver, etcd)`);
    cp = await startControlPlane();
    // Garbage collection (owner references), started early so its informers are synced by the last test.
    await cp.startControllers();
    cp.kubectl(["create", "namespace", NS]);
    kube = new Kube(loadKubeConfig(cp.kubeconfigPath), NS);
    // a: 10.25 GiB free (20 creates of 512 MiB), caps allow 18 more sandboxes, 2 warm VMs.
    // b: 6.25 GiB free (12 creates), caps allow 14 more, 1 warm VM, the gpu label.
    // Together: room for exactly 18 + 12 = 30 creates within memory and caps.
    nodeA = new FakeNode(
      kube,
      "node-a",
      capacity("node-a", 10.25 * GiB, {
        warm: { python: 2 },
        free: { sandboxes: 18, guestMemoryMib: 65536 },
        labels: { zone: "a" },
      }),
      15,
    );
    nodeB = new FakeNode(
      kube,
      "node-b",
      capacity("node-b", 6.25 * GiB, {
        warm: { python: 1 },
        free: { sandboxes: 14, guestMemoryMib: 65536 },
        labels: { zone: "b", "mitos.run/gpu": "true" },
      }),
      15,
    );
    await Promise.all([nodeA.start(1000), nodeB.start(1000)]);
    // Record every Sandbox status as the API server hands it out. The API server may end a
    // watch whenever it likes (clients are expected to resume it): resumed from the last
    // resourceVersion seen, it misses nothing; a resume it refuses (410 Gone) is an error.
    const path = `/apis/${GROUP}/${VERSION}/namespaces/${NS}/sandboxes`;
    const start = (await kube.objects.listNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: NS,
      plural: "sandboxes",
    })) as {
      metadata: { resourceVersion: string };
    };
    let resourceVersion = start.metadata.resourceVersion;
    const record = async (): Promise<void> => {
      watchAbort = await new Watch(kube.kc).watch(
        path,
        { resourceVersion },
        (type: string, obj: SandboxResource) => {
          if (type === "ERROR") {
            watchError = obj;
            return;
          }
          if (obj.metadata.resourceVersion) resourceVersion = obj.metadata.resourceVersion;
          if (type !== "ADDED" && type !== "MODIFIED") return;
          const list = seen.get(obj.metadata.name) ?? [];
          list.push(obj.status ? structuredClone(obj.status) : undefined);
          seen.set(obj.metadata.name, list);
        },
        (err: unknown) => {
          if (watchStopped) return;
          if (err) {
            watchError = err;
            return;
          }
          watchResumed++;
          record().catch((e: unknown) => {
            watchError = e;
          });
        },
      );
    };
    await record();
  });

  after(async () => {
    watchStopped = true;
    watchAbort?.abort();
    await Promise.all([nodeA?.stop(), nodeB?.stop()]);
    await stopControllers();
    await cp?.stop();
    if (process.env.MITOS_TEST_VERBOSE) console.error(logs.join("\n"));
  });

  // --- a. two controllers, 30 sandboxes ---

  const N = 30;
  const names = Array.from({ length: N }, (_, i) => `race-${String(i).padStart(2, "0")}`);
  let final: SandboxResource[] = [];

  it("a. two controllers at once never schedule a sandbox twice", async () => {
    await Promise.all(names.map((n) => createSandbox(n, { pool: "python" })));
    const t0 = Date.now();
    await Promise.all([startController(), startController()]);
    final = await until(
      "all 30 Scheduled",
      async () => {
        const all = (await kube.listSandboxes()).filter((s) => names.includes(s.metadata.name));
        return all.length === N && all.every((s) => s.status?.phase === "Scheduled") && all;
      },
      20_000,
    );
    const took = Date.now() - t0;
    // Give a late second write (the double schedule this guards against) time to show in the watch.
    const passes = controllers.map((c) => c.passes);
    await until("three more passes of each controller", () => controllers.every((c, i) => c.passes >= passes[i]! + 3));
    assert.equal(watchError, undefined, `the recording watch failed (resumed ${watchResumed} times)`);
    for (const name of names) {
      const statuses = seen.get(name) ?? [];
      const sched = statuses.filter((s) => s?.node !== undefined || s?.scheduledAt !== undefined);
      assert.ok(sched.length > 0, `${name}: the watch never saw it scheduled`);
      const first = sched[0]!;
      assert.ok(first.node === "node-a" || first.node === "node-b", `${name}: scheduled to ${first.node}`);
      for (const s of sched) {
        assert.equal(s?.node, first.node, `${name}: node changed after first set: ${JSON.stringify(statuses)}`);
        assert.equal(s?.scheduledAt, first.scheduledAt, `${name}: scheduledAt changed: ${JSON.stringify(statuses)}`);
        assert.equal(s?.phase, "Scheduled", `${name}: ${JSON.stringify(statuses)}`);
      }
    }
    for (const sb of final) {
      assert.equal(sb.status?.reservedBytes, TEMPLATE_BYTES, `${sb.metadata.name}: ${JSON.stringify(sb.status)}`);
      assert.equal(seen.get(sb.metadata.name)?.at(-1)?.node, sb.status?.node);
    }
    const perNode = countBy(final);
    // Both raced: each won some of the writes (the other got 409 on those).
    console.error(
      `30 scheduled in ${took} ms by two controllers (${wins.join(" + ")} writes won): ${JSON.stringify(perNode)}`,
    );
    assert.equal((perNode["node-a"] ?? 0) + (perNode["node-b"] ?? 0), N);
  });

  // Capacity totals need one writer: the resourceVersion precondition guards one
  // sandbox, not a node's sum, so two racing controllers may each fill the
  // roomier node (which is why deploy/ runs one replica, strategy Recreate;
  // docs/kubernetes.md). With one controller, placements stay within each
  // node's free memory and spend caps, counting what it promised in earlier passes.
  it("a. one controller keeps each node within its free memory and its spend caps", async () => {
    await stopControllers();
    await Promise.all(names.map((n) => kube.deleteSandbox(n)));
    await until("the raced sandboxes gone", async () => {
      const left = (await kube.listSandboxes()).filter((s) => names.includes(s.metadata.name));
      return left.length === 0;
    });
    const solo = names.map((n) => `solo-${n.slice(5)}`);
    await Promise.all(solo.map((n) => createSandbox(n, { pool: "python" })));
    await startController();
    const placed = await until(
      "as many Scheduled as fit",
      async () => {
        const all = (await kube.listSandboxes()).filter((s) => solo.includes(s.metadata.name));
        const settled = all.length === N && all.every((s) => s.status?.phase === "Scheduled" || s.status?.message);
        return settled && all.filter((s) => s.status?.phase === "Scheduled");
      },
      20_000,
    );
    const v = await views();
    const problems: string[] = [];
    for (const [name, view] of v) {
      const mine = placed.filter((s) => s.status?.node === name);
      const reserved = mine.reduce((a, s) => a + (s.status?.reservedBytes ?? 0), 0);
      if (reserved > freeBytes(view, 0)) problems.push(`${name}: ${reserved / MiB} MiB reserved > free`);
      if (mine.length > view.capacity.free.sandboxes) {
        problems.push(`${name}: ${mine.length} scheduled, caps leave room for ${view.capacity.free.sandboxes}`);
      }
    }
    assert.deepEqual(problems, [], `${problems.join("; ")}; placed ${JSON.stringify(countBy(placed))}`);
    await Promise.all(solo.map((n) => kube.deleteSandbox(n)));
  });

  // --- b. forks ---

  it("b. a fork is scheduled to its parent's node at count × the learnt per-child cost", async () => {
    await Promise.all(names.map((n) => kube.deleteSandbox(n)));
    await until("the 30 gone", async () => (await kube.listSandboxes()).length === 0);
    // The parent runs on node-b, which has less room than node-a; fork children dirty 40 MiB each there.
    await nodeB.update({ forkCostBytes: { python: 40 * MiB }, sandboxes: ["parent"] });
    await createSandbox("parent", { pool: "python" });
    await markReady("parent", "node-b");
    const parent = await sandbox("parent");
    await createSandbox("kids", { forkOf: { sandbox: "parent", count: 4 } });
    const fork = await until("the fork Scheduled", async () => {
      const sb = await sandbox("kids");
      return sb.status?.phase === "Scheduled" && sb;
    });
    assert.equal(fork.status?.node, "node-b", JSON.stringify(fork.status));
    // 4 × 40 MiB, not 4 × the template's 512 MiB.
    assert.equal(fork.status?.reservedBytes, 4 * 40 * MiB);
    // The parent owns it (deleting the parent deletes its forks).
    assert.ok(
      fork.metadata.ownerReferences?.some((r) => r.kind === "Sandbox" && r.uid === parent.metadata.uid),
      JSON.stringify(fork.metadata.ownerReferences),
    );
    assert.equal((await sandbox("parent")).status?.phase, "Ready");
  });

  // --- c. pools, and a node that stops renewing ---

  it("c. a Cluster pool spreads min over the live nodes (remainder to the most free); a PerNode pool follows its selector", async () => {
    await createPool("py-cluster", { min: 3, scope: "Cluster" });
    await createPool("py-gpu", { min: 1, scope: "PerNode", nodeSelector: { "mitos.run/gpu": "true" } });
    // node-a: 10.25 GiB free; node-b: 6.25 GiB less the fork's 160 MiB.
    const cluster = await until("py-cluster placed", async () => {
      const p = await getPool("py-cluster");
      return (p.status?.nodes?.length ?? 0) > 0 && p;
    });
    assert.deepEqual(targets(cluster), [
      { name: "node-a", target: 2 },
      { name: "node-b", target: 1 },
    ]);
    assert.equal(cluster.status?.nodeCount, 2);
    const gpu = await until("py-gpu placed", async () => {
      const p = await getPool("py-gpu");
      return (p.status?.nodes?.length ?? 0) > 0 && p;
    });
    assert.deepEqual(targets(gpu), [{ name: "node-b", target: 1 }]);
  });

  it("c. when a node stops renewing its lease, its sandboxes become Lost and the Cluster pool moves to the other node", async () => {
    // On node-b already: the parent (Ready, reported) and its fork (Scheduled). Two more from the
    // gpu pool (node-b is its only node): one left Scheduled, one made Ready and reported.
    await createSandbox("on-b-sched", { pool: "py-gpu" });
    await createSandbox("on-b-ready", { pool: "py-gpu" });
    for (const n of ["on-b-sched", "on-b-ready"]) {
      const sb = await until(`${n} Scheduled`, async () => {
        const s = await sandbox(n);
        return s.status?.phase === "Scheduled" && s;
      });
      assert.equal(sb.status?.node, "node-b");
    }
    await nodeB.update({ sandboxes: [...nodeB.capacity.sandboxes, "on-b-ready"] });
    await markReady("on-b-ready", "node-b");
    // A last renewal with a 3 s lease, then silence.
    nodeB.leaseSeconds = 3;
    await nodeB.renew();
    await nodeB.stop();
    const stoppedAt = Date.now();
    for (const n of ["on-b-sched", "on-b-ready", "parent", "kids"]) {
      const sb = await until(`${n} Lost`, async () => {
        const s = await sandbox(n);
        return s.status?.phase === "Lost" && s;
      });
      assert.match(sb.status?.message ?? "", /node node-b stopped renewing its lease/);
      assert.equal(sb.status?.node, "node-b");
    }
    assert.ok(Date.now() - stoppedAt >= 2500, "Lost before the lease had expired");
    const cluster = await until("py-cluster all on node-a", async () => {
      const p = await getPool("py-cluster");
      return p.status?.nodes?.length === 1 && p;
    });
    assert.deepEqual(targets(cluster), [{ name: "node-a", target: 3 }]);
    const gpu = await until("py-gpu without nodes", async () => {
      const p = await getPool("py-gpu");
      return p.status?.nodes?.length === 0 && p;
    });
    assert.equal(gpu.status?.phase, "Pending");
  });

  // --- d. what the schema cannot check ---

  it("d. a Sandbox with two sources fails naming the rule; a pool with max < min is Invalid", async () => {
    await createSandbox("two-sources", { pool: "python", forkOf: { sandbox: "parent", count: 1 } });
    await createSandbox("has.dot", { pool: "python" });
    await createPool("bad-pool", { min: 3, max: 1 });
    const two = await until("two-sources Failed", async () => {
      const s = await sandbox("two-sources");
      return s.status?.phase === "Failed" && s;
    });
    assert.match(two.status?.message ?? "", /set exactly one of spec\.pool, spec\.checkpoint and spec\.forkOf/);
    assert.equal(two.status?.node, undefined);
    const dot = await until("has.dot Failed", async () => {
      const s = await sandbox("has.dot");
      return s.status?.phase === "Failed" && s;
    });
    assert.match(dot.status?.message ?? "", /name has\.dot is not a Mitos sandbox id/);
    const bad = await until("bad-pool Invalid", async () => {
      const p = await getPool("bad-pool");
      return p.status?.phase === "Invalid" && p;
    });
    assert.match(bad.status?.message ?? "", /spec\.max \(1\) is below spec\.min \(3\)/);
    assert.deepEqual(bad.status?.nodes, []);
  });

  // --- e. restart ---

  it("e. a restarted controller changes no status", async () => {
    const snapshot = async () => {
      const out: Record<string, string> = {};
      for (const s of await kube.listSandboxes()) out[`sandbox/${s.metadata.name}`] = s.metadata.resourceVersion ?? "";
      for (const p of await kube.listPools()) out[`pool/${p.metadata.name}`] = p.metadata.resourceVersion ?? "";
      return out;
    };
    // Settled: two passes of each controller with nothing written.
    let before = await snapshot();
    for (let i = 0; i < 20; i++) {
      const passes = controllers.map((c) => c.passes);
      await until("two passes", () => controllers.every((c, j) => c.passes >= passes[j]! + 2));
      const now = await snapshot();
      if (JSON.stringify(now) === JSON.stringify(before)) break;
      before = now;
    }
    await stopControllers();
    before = await snapshot();
    const fresh = await startController();
    await until("five passes of the fresh controller", () => fresh.passes >= 5);
    await sleep(500);
    assert.deepEqual(await snapshot(), before);
  });

  // --- f. owner references ---

  it("f. a sandbox from pool P is owned by P, and deleting P deletes it (garbage collection)", async () => {
    const pool = await createPool("gc-pool", { min: 1, scope: "PerNode" });
    await createSandbox("gc-sb", { pool: "gc-pool" });
    const sb = await until("gc-sb owned and Scheduled", async () => {
      const s = await sandbox("gc-sb");
      return s.status?.phase === "Scheduled" && (s.metadata.ownerReferences?.length ?? 0) > 0 && s;
    });
    assert.equal(sb.status?.node, "node-a");
    assert.deepEqual(
      sb.metadata.ownerReferences?.map((r) => ({ apiVersion: r.apiVersion, kind: r.kind, name: r.name, uid: r.uid })),
      [{ apiVersion: `${GROUP}/${VERSION}`, kind: "SandboxPool", name: "gc-pool", uid: pool.metadata.uid }],
    );
    const t0 = Date.now();
    await kube.objects.deleteNamespacedCustomObject({
      ...crd("sandboxpools"),
      name: "gc-pool",
      propagationPolicy: "Background",
    });
    await until("gc-sb garbage-collected", async () => (await kube.getSandbox("gc-sb")) === undefined, 20_000);
    console.error(`gc-sb collected ${Date.now() - t0} ms after its pool's deletion`);
    // Sandboxes not from that pool are untouched.
    assert.equal((await sandbox("parent")).status?.phase, "Lost");
    assert.equal((await sandbox("kids")).status?.phase, "Lost");
  });
});

function countBy(sandboxes: SandboxResource[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of sandboxes) if (s.status?.node) out[s.status.node] = (out[s.status.node] ?? 0) + 1;
  return out;
}
