// The placement rules as pure functions (no I/O): pools' warm targets per node
// (PerNode vs Cluster, node selectors, dead nodes), where a sandbox goes (a
// fork to its parent's node at its learnt copy-on-write cost, a create to a
// warm VM first, then the most room), spend caps, and the memory still
// promised to sandboxes a node has not reported yet.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { NodeCapacity, NodeView } from "../src/capacity.js";
import type { SandboxPool, SandboxResource, SandboxStatus } from "../src/resources.js";
import {
  DEFAULT_FORK_COST,
  freeBytes,
  HOST_SHARE,
  matchesSelector,
  type PlaceInput,
  type Placement,
  placePool,
  placeSandbox,
  reservations,
} from "../src/scheduler.js";

const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** 10 GiB × HOST_SHARE is exactly 9 GiB in floating point, so "free" below is exact. */
const TOTAL = 10 * GiB;

// --- builders ---

interface NodeOpts extends Partial<NodeCapacity> {
  /** What freeBytes(node, 0) comes to (by setting memoryUsedBytes; the kernel's view left out). */
  freeMem?: number;
  live?: boolean;
}

function node(name: string, o: NodeOpts = {}): NodeView {
  const { freeMem = 4 * GiB, live = true, ...cap } = o;
  const capacity: NodeCapacity = {
    endpoint: `http://${name}:7070`,
    memoryTotalBytes: TOTAL,
    memoryUsedBytes: TOTAL * HOST_SHARE - freeMem,
    memoryAvailableBytes: 0,
    templates: ["python"],
    warm: {},
    forkCostBytes: {},
    templateMemoryBytes: { python: 512 * MiB },
    sandboxes: [],
    checkpoints: [],
    accel: "kvm",
    free: { sandboxes: 1000, guestMemoryMib: 1_000_000 },
    labels: {},
    ...cap,
  };
  return { name, capacity, live, renewedAt: Date.now(), leaseSeconds: 15 };
}

function sandbox(name: string, spec: SandboxResource["spec"], status?: SandboxStatus): SandboxResource {
  return {
    apiVersion: "mitos.run/v1",
    kind: "Sandbox",
    metadata: { name, namespace: "t", uid: `uid-${name}` },
    spec,
    ...(status ? { status } : {}),
  };
}

function pool(name: string, spec: Partial<SandboxPool["spec"]> = {}, nodes?: string[]): SandboxPool {
  return {
    apiVersion: "mitos.run/v1",
    kind: "SandboxPool",
    metadata: { name, uid: `uid-${name}` },
    spec: { template: { image: "python" }, min: 1, scope: "PerNode", ...spec },
    ...(nodes ? { status: { nodes: nodes.map((n) => ({ name: n, target: 1 })) } } : {}),
  };
}

const byName = (nodes: NodeView[]) => new Map(nodes.map((n) => [n.name, n]));

function place(sb: SandboxResource, nodes: NodeView[], o: Partial<PlaceInput> = {}): Placement {
  return placeSandbox({
    sandbox: sb,
    nodes,
    pools: [],
    nodeOfSandbox: () => undefined,
    templateOfSandbox: () => undefined,
    reserved: new Map(),
    claimed: new Map(),
    ...o,
  });
}

/** A fork of `parent` (running on `parentNode`, made from template `template`). */
function placeFork(
  count: number,
  nodes: NodeView[],
  parentNode: string | undefined,
  template: string | undefined,
  reserved = new Map<string, number>(),
): Placement {
  return place(sandbox("f", { forkOf: { sandbox: "parent", count } }), nodes, {
    nodeOfSandbox: (id) => (id === "parent" ? parentNode : undefined),
    templateOfSandbox: (id) => (id === "parent" ? template : undefined),
    reserved,
  });
}

/** A placement without its cap bookkeeping (count, guest MiB), for comparisons. */
function where(p: Placement): unknown {
  return "node" in p ? { node: p.node, reservedBytes: p.reservedBytes } : p;
}

function nodeOf(p: Placement): string {
  assert.ok("node" in p, `expected a placement, got ${JSON.stringify(p)}`);
  return p.node;
}

/**
 * What one controller pass does with a list of Pending creates: place each,
 * then count its reservation and its warm claim before placing the next.
 */
function pass(sandboxes: SandboxResource[], nodes: NodeView[], pools: SandboxPool[] = []): Placement[] {
  const reserved = new Map<string, number>();
  const claimed = new Map<string, number>();
  const pending = new Map<string, { sandboxes: number; guestMib: number }>();
  return sandboxes.map((sb) => {
    const p = place(sb, nodes, { pools, reserved, claimed, pending });
    if ("node" in p) {
      reserved.set(p.node, (reserved.get(p.node) ?? 0) + p.reservedBytes);
      const slots = pending.get(p.node) ?? { sandboxes: 0, guestMib: 0 };
      pending.set(p.node, { sandboxes: slots.sandboxes + p.count, guestMib: slots.guestMib + p.guestMib });
      const key = `${p.node}/${sb.spec.pool}`;
      claimed.set(key, (claimed.get(key) ?? 0) + 1);
    }
    return p;
  });
}

// --- tests ---

describe("freeBytes", () => {
  it("is the host share of RAM minus what sandboxes use minus reservations", () => {
    const n = node("a", { memoryUsedBytes: 2 * GiB });
    assert.equal(freeBytes(n, 0), 9 * GiB - 2 * GiB);
    assert.equal(freeBytes(n, 512 * MiB), 9 * GiB - 2 * GiB - 512 * MiB);
    assert.equal(freeBytes(node("b", { freeMem: GiB }), 0), GiB);
  });

  it("takes the kernel's MemAvailable (less the host's share) when that is lower", () => {
    const n = node("a", { memoryUsedBytes: 2 * GiB, memoryAvailableBytes: 3 * GiB });
    assert.ok(Math.abs(freeBytes(n, 0) - 2 * GiB) < 1, String(freeBytes(n, 0)));
    // Higher than the share: the share wins.
    const roomy = node("b", { memoryUsedBytes: 2 * GiB, memoryAvailableBytes: 9.5 * GiB });
    assert.equal(freeBytes(roomy, 0), 7 * GiB);
  });
});

describe("matchesSelector", () => {
  it("matches when every selector pair is among the labels", () => {
    const labels = { zone: "a", gpu: "true" };
    assert.equal(matchesSelector(labels, undefined), true);
    assert.equal(matchesSelector(labels, {}), true);
    assert.equal(matchesSelector({}, {}), true);
    assert.equal(matchesSelector(labels, { zone: "a" }), true);
    assert.equal(matchesSelector(labels, { zone: "a", gpu: "true" }), true);
    assert.equal(matchesSelector(labels, { zone: "b" }), false);
    assert.equal(matchesSelector(labels, { zone: "a", gpu: "false" }), false);
    assert.equal(matchesSelector(labels, { disk: "ssd" }), false);
    assert.equal(matchesSelector({}, { zone: "a" }), false);
  });
});

describe("reservations", () => {
  const nodes = byName([
    node("a", { sandboxes: ["ready-seen", "fork-seen-0", "fork-seen-1", "fork-half-0"] }),
    node("b"),
  ]);

  it("counts Scheduled sandboxes and Ready ones their node has not reported yet, not Ready ones it has", () => {
    const r = reservations(
      [
        sandbox("s1", { pool: "python" }, { phase: "Scheduled", node: "a", reservedBytes: 100 }),
        sandbox("s2", { pool: "python" }, { phase: "Scheduled", node: "a", reservedBytes: 20 }),
        sandbox("s3", { pool: "python" }, { phase: "Scheduled", node: "b", reservedBytes: 7 }),
        // Ready, and node a lists it: its metering counts it already.
        sandbox("r1", { pool: "python" }, { phase: "Ready", node: "a", sandboxId: "ready-seen", reservedBytes: 1000 }),
        // Ready, not listed by its node yet: still promised.
        sandbox("r2", { pool: "python" }, { phase: "Ready", node: "a", sandboxId: "ready-unseen", reservedBytes: 3 }),
        // A fork: all children listed, not counted; one child missing, counted.
        sandbox(
          "fork-seen",
          { forkOf: { sandbox: "r1", count: 2 } },
          { phase: "Ready", node: "a", children: ["fork-seen-0", "fork-seen-1"], reservedBytes: 5000 },
        ),
        sandbox(
          "fork-half",
          { forkOf: { sandbox: "r1", count: 2 } },
          { phase: "Ready", node: "a", children: ["fork-half-0", "fork-half-1"], reservedBytes: 400 },
        ),
        // No node, or a phase that holds nothing: not counted.
        sandbox("p", { pool: "python" }, { phase: "Pending", reservedBytes: 1 << 20 }),
        sandbox("x1", { pool: "python" }, { phase: "Failed", node: "a", reservedBytes: 1 << 20 }),
        sandbox("x2", { pool: "python" }, { phase: "Lost", node: "b", reservedBytes: 1 << 20 }),
        sandbox("x3", { pool: "python" }, { phase: "Terminated", node: "b", reservedBytes: 1 << 20 }),
        sandbox("x4", { pool: "python" }),
      ],
      nodes,
    );
    assert.deepEqual(Object.fromEntries(r), { a: 100 + 20 + 3 + 400, b: 7 });
  });

  it("counts a Ready sandbox on a node it has no view of (no lease)", () => {
    const r = reservations(
      [sandbox("r", { pool: "python" }, { phase: "Ready", node: "gone", sandboxId: "r", reservedBytes: 9 })],
      nodes,
    );
    assert.deepEqual(Object.fromEntries(r), { gone: 9 });
  });

  it("is empty without sandboxes", () => {
    assert.equal(reservations([], nodes).size, 0);
  });
});

describe("placePool", () => {
  it("PerNode: min on every live node that matches the selector, dead nodes excluded", () => {
    const nodes = [
      node("c", { labels: { gpu: "true" } }),
      node("a", { labels: { gpu: "true", zone: "x" } }),
      node("b", { labels: {} }),
      node("d", { labels: { gpu: "true" }, live: false }),
    ];
    assert.deepEqual(placePool(pool("python", { min: 2 }), nodes, new Map()), [
      { name: "a", target: 2 },
      { name: "b", target: 2 },
      { name: "c", target: 2 },
    ]);
    assert.deepEqual(placePool(pool("python", { min: 2, nodeSelector: { gpu: "true" } }), nodes, new Map()), [
      { name: "a", target: 2 },
      { name: "c", target: 2 },
    ]);
    assert.deepEqual(
      placePool(pool("python", { min: 1, nodeSelector: { gpu: "true", zone: "x" } }), nodes, new Map()),
      [{ name: "a", target: 1 }],
    );
    assert.deepEqual(placePool(pool("python", { min: 1, nodeSelector: { gpu: "false" } }), nodes, new Map()), []);
  });

  it("Cluster: min spread over the live nodes, the remainder to the ones with the most free memory", () => {
    const nodes = [
      node("a", { freeMem: 2 * GiB }),
      node("b", { freeMem: 6 * GiB }),
      node("c", { freeMem: 4 * GiB }),
      node("dead", { freeMem: 8 * GiB, live: false }),
    ];
    const cluster = (min: number) => placePool(pool("python", { min, scope: "Cluster" }), nodes, new Map());
    assert.deepEqual(cluster(3), [
      { name: "a", target: 1 },
      { name: "b", target: 1 },
      { name: "c", target: 1 },
    ]);
    assert.deepEqual(cluster(4), [
      { name: "a", target: 1 },
      { name: "b", target: 2 },
      { name: "c", target: 1 },
    ]);
    assert.deepEqual(cluster(5), [
      { name: "a", target: 1 },
      { name: "b", target: 2 },
      { name: "c", target: 2 },
    ]);
    assert.deepEqual(cluster(1), [
      { name: "a", target: 0 },
      { name: "b", target: 1 },
      { name: "c", target: 0 },
    ]);
    assert.deepEqual(cluster(0), [
      { name: "a", target: 0 },
      { name: "b", target: 0 },
      { name: "c", target: 0 },
    ]);
    for (const min of [0, 1, 2, 7, 100, 1000]) {
      const total = cluster(min).reduce((s, p) => s + p.target, 0);
      assert.equal(total, min, `Cluster min ${min} sums to ${total}`);
    }
  });

  it("Cluster: free memory is net of reservations; ties go by name", () => {
    const nodes = [node("a", { freeMem: 4 * GiB }), node("b", { freeMem: 4 * GiB })];
    const p = pool("python", { min: 3, scope: "Cluster" });
    assert.deepEqual(placePool(p, nodes, new Map()), [
      { name: "a", target: 2 },
      { name: "b", target: 1 },
    ]);
    assert.deepEqual(placePool(p, nodes, new Map([["a", 1]])), [
      { name: "a", target: 1 },
      { name: "b", target: 2 },
    ]);
  });

  it("Cluster: selector and liveness first; the whole min on the one node left; none left, no targets", () => {
    const nodes = [
      node("a", { labels: { pool: "yes" } }),
      node("b", { labels: { pool: "yes" }, live: false }),
      node("c", { labels: { pool: "no" }, freeMem: 8 * GiB }),
    ];
    assert.deepEqual(
      placePool(pool("python", { min: 3, scope: "Cluster", nodeSelector: { pool: "yes" } }), nodes, new Map()),
      [{ name: "a", target: 3 }],
    );
    assert.deepEqual(
      placePool(pool("python", { min: 3, scope: "Cluster", nodeSelector: { pool: "maybe" } }), nodes, new Map()),
      [],
    );
    assert.deepEqual(placePool(pool("python", { min: 3, scope: "Cluster" }), [], new Map()), []);
  });
});

describe("placeSandbox: forks", () => {
  // The brief's example: 1 GiB free, a 512 MiB template whose children dirty 40 MiB each.
  const parentNode = () =>
    node("a", {
      freeMem: GiB,
      forkCostBytes: { python: 40 * MiB },
      templateMemoryBytes: { python: 512 * MiB },
    });

  it("goes to the parent's node and costs count × the learnt per-child cost, not nominal RAM", () => {
    const nodes = [parentNode(), node("b", { freeMem: 8 * GiB })];
    // 16 × 512 MiB nominal would be 8 GiB; 16 × 40 MiB dirty is 640 MiB: fits in 1 GiB.
    assert.deepEqual(where(placeFork(16, nodes, "a", "python")), { node: "a", reservedBytes: 16 * 40 * MiB });
    // 64 × 40 MiB = 2.5 GiB does not fit, and it never goes to the roomier node b.
    const big = placeFork(64, nodes, "a", "python");
    assert.ok("wait" in big, JSON.stringify(big));
    assert.match(big.wait, /node a \(the parent's\) has 1024 MiB free, the fork needs ~2560 MiB/);
  });

  it("counts the parent node's reservations", () => {
    const nodes = [parentNode()];
    assert.ok("node" in placeFork(16, nodes, "a", "python", new Map([["a", 300 * MiB]])));
    assert.ok("wait" in placeFork(16, nodes, "a", "python", new Map([["a", 500 * MiB]])));
  });

  it("costs DEFAULT_FORK_COST per child when the template's cost is not learnt or the template unknown", () => {
    const nodes = [node("a", { freeMem: GiB, forkCostBytes: { other: MiB } })];
    assert.deepEqual(where(placeFork(4, nodes, "a", "python")), { node: "a", reservedBytes: 4 * DEFAULT_FORK_COST });
    assert.deepEqual(where(placeFork(3, nodes, "a", undefined)), { node: "a", reservedBytes: 3 * DEFAULT_FORK_COST });
    // 1 GiB / 32 MiB = 32 children fit, 33 do not.
    assert.ok("node" in placeFork(32, nodes, "a", "python"));
    assert.ok("wait" in placeFork(33, nodes, "a", "python"));
  });

  it("fails when the parent's node is not live, waits while the parent runs nowhere", () => {
    const nodes = [node("a", { live: false, forkCostBytes: { python: MiB } }), node("b")];
    const dead = placeFork(1, nodes, "a", "python");
    assert.ok("fail" in dead, JSON.stringify(dead));
    assert.match(dead.fail, /parent sandbox parent is on node a, which is not live/);
    const nowhere = placeFork(1, nodes, undefined, "python");
    assert.ok("wait" in nowhere, JSON.stringify(nowhere));
    // A node no lease tells of is not live either.
    assert.ok("fail" in placeFork(1, nodes, "unknown-node", "python"));
  });

  it("respects the parent node's spend caps (sandboxes, guest memory)", () => {
    const capped = (free: NodeCapacity["free"]) => [node("a", { freeMem: 8 * GiB, free })];
    assert.ok("node" in placeFork(4, capped({ sandboxes: 4, guestMemoryMib: 4 * 512 }), "a", "python"));
    const fewSlots = placeFork(4, capped({ sandboxes: 3, guestMemoryMib: 100_000 }), "a", "python");
    assert.ok("wait" in fewSlots && /max_sandboxes/.test(fewSlots.wait), JSON.stringify(fewSlots));
    const fewMib = placeFork(4, capped({ sandboxes: 100, guestMemoryMib: 4 * 512 - 1 }), "a", "python");
    assert.ok("wait" in fewMib && /max_guest_memory_mib/.test(fewMib.wait), JSON.stringify(fewMib));
  });
});

describe("placeSandbox: creates", () => {
  const create = (name = "s", tmpl = "python") => sandbox(name, { pool: tmpl });

  it("without a pool object: any live node that has the template, the most room first", () => {
    const nodes = [
      node("a", { freeMem: 2 * GiB }),
      node("b", { freeMem: 3 * GiB }),
      node("c", { freeMem: 8 * GiB, templates: ["base"] }),
      node("d", { freeMem: 8 * GiB, live: false }),
    ];
    assert.deepEqual(where(place(create(), nodes)), { node: "b", reservedBytes: 512 * MiB });
    // Reservations count against room.
    assert.equal(nodeOf(place(create(), nodes, { reserved: new Map([["b", 1.5 * GiB]]) })), "a");
    const none = place(create("s", "ruby"), nodes);
    assert.ok("wait" in none && /no live node has template ruby/.test(none.wait), JSON.stringify(none));
  });

  it("with a pool object: only the pool's nodes", () => {
    const nodes = [node("a", { freeMem: 2 * GiB }), node("b", { freeMem: 8 * GiB })];
    assert.equal(nodeOf(place(create(), nodes, { pools: [pool("python", {}, ["a"])] })), "a");
    const notYet = place(create(), nodes, { pools: [pool("python")] });
    assert.ok("wait" in notYet && /pool python has no live node yet/.test(notYet.wait), JSON.stringify(notYet));
  });

  it("prefers a node with a warm VM over more room; claims in a pass use up warm VMs", () => {
    const nodes = [node("a", { freeMem: 2 * GiB, warm: { python: 1 } }), node("b", { freeMem: 8 * GiB })];
    assert.equal(nodeOf(place(create(), nodes)), "a");
    // The one warm VM on a is claimed already: the next create goes to b.
    assert.equal(nodeOf(place(create(), nodes, { claimed: new Map([["a/python", 1]]) })), "b");
    // The same through a pass.
    assert.deepEqual(pass([create("s1"), create("s2"), create("s3")], nodes).map(nodeOf), ["a", "b", "b"]);
    // Two warm on each: a, a (warm, fewer room but warm), then b's warm ones.
    const both = [
      node("a", { freeMem: 4 * GiB, warm: { python: 2 } }),
      node("b", { freeMem: 8 * GiB, warm: { python: 1 } }),
    ];
    assert.deepEqual(
      pass(
        ["1", "2", "3", "4"].map((i) => create(`s${i}`)),
        both,
      ).map(nodeOf),
      ["b", "a", "a", "b"],
    );
  });

  it("a warm VM does not win on a node without room", () => {
    const nodes = [node("a", { freeMem: 100 * MiB, warm: { python: 5 } }), node("b", { freeMem: 8 * GiB })];
    assert.equal(nodeOf(place(create(), nodes)), "b");
  });

  it("waits when no node has room for the template", () => {
    const nodes = [node("a", { freeMem: 500 * MiB }), node("b", { freeMem: 511 * MiB })];
    const p = place(create(), nodes);
    assert.ok("wait" in p && /has 512 MiB free/.test(p.wait), JSON.stringify(p));
    assert.equal(nodeOf(place(create(), [node("a", { freeMem: 512 * MiB })])), "a");
  });

  it("respects each node's spend caps (capacity.free)", () => {
    const nodes = [
      node("a", { freeMem: 8 * GiB, warm: { python: 3 }, free: { sandboxes: 0, guestMemoryMib: 100_000 } }),
      node("b", { freeMem: 6 * GiB, warm: { python: 3 }, free: { sandboxes: 10, guestMemoryMib: 511 } }),
      node("c", { freeMem: 2 * GiB, free: { sandboxes: 1, guestMemoryMib: 512 } }),
    ];
    assert.equal(nodeOf(place(create(), nodes)), "c");
    const full = place(create(), nodes.slice(0, 2));
    assert.ok("wait" in full, JSON.stringify(full));
  });

  // Fails until scheduler.ts is fixed: capacity.free is the node's last
  // report, and neither a pass nor the next one (before the node reports)
  // subtracts what was just scheduled there, as reservations() does for
  // memory. Node a has room under its caps for one more sandbox, yet takes
  // all three (mitosd would refuse two with quota_exceeded).
  it("does not schedule more sandboxes to a node in one pass than its caps leave room for", () => {
    const nodes = [
      node("a", { freeMem: 8 * GiB, free: { sandboxes: 1, guestMemoryMib: 100_000 } }),
      node("b", { freeMem: 4 * GiB }),
    ];
    const placed = pass([create("s1"), create("s2"), create("s3")], nodes).map(nodeOf);
    assert.equal(placed.filter((n) => n === "a").length, 1, `placed on ${placed.join(", ")}`);
  });

  // A create restores from the template's base, whose pages it shares copy-on-write:
  // once the node has measured what a child of the template dirties, that is its cost.
  it("a create costs the learnt per-child cost once known, the template's RAM before", () => {
    const learnt = place(create(), [node("a", { freeMem: 100 * MiB, forkCostBytes: { python: 40 * MiB } })]);
    assert.deepEqual(where(learnt), { node: "a", reservedBytes: 40 * MiB });
    const unknown = place(create(), [node("a", { freeMem: 100 * MiB })]);
    assert.ok("wait" in unknown, `a 512 MiB create with no learnt cost placed in 100 MiB: ${JSON.stringify(unknown)}`);
  });
});

describe("placeSandbox: checkpoints", () => {
  const restore = () => sandbox("r", { checkpoint: "cp1" });

  it("goes to the node that holds the checkpoint; fails when that node is not live; waits when none has it", () => {
    const nodes = [node("a", { freeMem: 8 * GiB }), node("b", { checkpoints: ["cp1"] })];
    assert.deepEqual(where(place(restore(), nodes)), { node: "b", reservedBytes: DEFAULT_FORK_COST });
    const dead = place(restore(), [node("a"), node("b", { checkpoints: ["cp1"], live: false })]);
    assert.ok("fail" in dead && /checkpoint cp1 is on node b, which is not live/.test(dead.fail), JSON.stringify(dead));
    const none = place(restore(), [node("a")]);
    assert.ok("wait" in none && /no node reports checkpoint cp1/.test(none.wait), JSON.stringify(none));
  });

  it("respects the holder's spend caps and free memory", () => {
    const noSlots = place(restore(), [
      node("b", { checkpoints: ["cp1"], free: { sandboxes: 0, guestMemoryMib: 100_000 } }),
    ]);
    assert.ok("wait" in noSlots, `restored on a node whose caps allow 0 more sandboxes: ${JSON.stringify(noSlots)}`);
    const noRoom = place(restore(), [node("b", { checkpoints: ["cp1"], freeMem: 0 })]);
    assert.ok("wait" in noRoom, `restored on a node with 0 bytes free: ${JSON.stringify(noRoom)}`);
  });
});
