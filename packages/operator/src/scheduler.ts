// Placement decisions, as pure functions of what the API holds: which nodes
// keep a pool warm, and which node takes a sandbox. Copy-on-write aware: a
// fork lands on its parent's node and costs what its children are expected
// to dirty (learnt per template by the node), not their nominal RAM.

import type { NodeView } from "./capacity.js";
import type { PoolNodeStatus, SandboxPool, SandboxResource } from "./resources.js";

const MiB = 1 << 20;
/** A fork child's cost before its node has measured any (bytes). */
export const DEFAULT_FORK_COST = 32 * MiB;
/** Share of host RAM sandboxes may use; the rest is the host's. */
export const HOST_SHARE = 0.9;

/** Memory still promised to sandboxes a node has not reported yet, per node (bytes). */
export function reservations(sandboxes: SandboxResource[], nodes: Map<string, NodeView>): Map<string, number> {
  const out = new Map<string, number>();
  for (const sb of sandboxes) {
    const node = sb.status?.node;
    const phase = sb.status?.phase;
    if (!node || (phase !== "Scheduled" && phase !== "Ready")) continue;
    const view = nodes.get(node);
    // Ready and listed by the node: its metering counts it already.
    if (phase === "Ready" && view) {
      const ids = sb.spec.forkOf ? (sb.status?.children ?? []) : [sb.status?.sandboxId ?? ""];
      if (ids.every((id) => view.capacity.sandboxes.includes(id))) continue;
    }
    out.set(node, (out.get(node) ?? 0) + (sb.status?.reservedBytes ?? 0));
  }
  return out;
}

/** Room under each node's spend caps already promised to sandboxes it has not reported yet. */
export interface PendingSlots {
  sandboxes: number;
  guestMib: number;
}

export function pendingSlots(sandboxes: SandboxResource[], nodes: Map<string, NodeView>): Map<string, PendingSlots> {
  const out = new Map<string, PendingSlots>();
  for (const sb of sandboxes) {
    const node = sb.status?.node;
    const phase = sb.status?.phase;
    if (!node || (phase !== "Scheduled" && phase !== "Ready")) continue;
    const ids = sb.spec.forkOf ? (sb.status?.children ?? []) : [sb.status?.sandboxId ?? ""];
    const reported = nodes.get(node)?.capacity.sandboxes ?? [];
    if (phase === "Ready" && ids.every((id) => reported.includes(id))) continue;
    const cur = out.get(node) ?? { sandboxes: 0, guestMib: 0 };
    cur.sandboxes += sb.spec.forkOf?.count ?? 1;
    cur.guestMib += sb.status?.reservedGuestMiB ?? 0;
    out.set(node, cur);
  }
  return out;
}

export function freeBytes(n: NodeView, reserved: number): number {
  const c = n.capacity;
  const byShare = c.memoryTotalBytes * HOST_SHARE - c.memoryUsedBytes;
  // The kernel's view wins when other tenants of the host use memory too.
  const byKernel =
    c.memoryAvailableBytes > 0 ? c.memoryAvailableBytes - c.memoryTotalBytes * (1 - HOST_SHARE) : byShare;
  return Math.min(byShare, byKernel) - reserved;
}

export function matchesSelector(labels: Record<string, string>, selector: Record<string, string> | undefined): boolean {
  return Object.entries(selector ?? {}).every(([k, v]) => labels[k] === v);
}

/**
 * Warm targets per node. PerNode: `min` on every live node that matches the
 * selector. Cluster: `min` spread over them, the remainder to the nodes with
 * the most free memory.
 */
export function placePool(pool: SandboxPool, nodes: NodeView[], reserved: Map<string, number>): PoolNodeStatus[] {
  const eligible = nodes
    .filter((n) => n.live && matchesSelector(n.capacity.labels, pool.spec.nodeSelector))
    .sort((a, b) => a.name.localeCompare(b.name));
  const min = pool.spec.min ?? 0;
  if (pool.spec.scope !== "Cluster") return eligible.map((n) => ({ name: n.name, target: min }));
  if (eligible.length === 0) return [];
  const base = Math.floor(min / eligible.length);
  const extra = min % eligible.length;
  const byRoom = [...eligible].sort(
    (a, b) =>
      freeBytes(b, reserved.get(b.name) ?? 0) - freeBytes(a, reserved.get(a.name) ?? 0) || a.name.localeCompare(b.name),
  );
  const plus = new Set(byRoom.slice(0, extra).map((n) => n.name));
  return eligible.map((n) => ({ name: n.name, target: base + (plus.has(n.name) ? 1 : 0) }));
}

/** A node and what it is promised: memory expected dirtied, and nominal guest RAM counted by its caps. */
export type Placement =
  | { node: string; reservedBytes: number; count: number; guestMib: number }
  | { wait: string }
  | { fail: string };

export interface PlaceInput {
  sandbox: SandboxResource;
  nodes: NodeView[];
  pools: SandboxPool[];
  /** Where each Mitos sandbox id lives (resources' statuses and node reports). */
  nodeOfSandbox: (id: string) => string | undefined;
  /** The template of a Mitos sandbox id, when known. */
  templateOfSandbox: (id: string) => string | undefined;
  reserved: Map<string, number>;
  /** Cap room promised to unreported sandboxes per node (pendingSlots); none when absent. */
  pending?: Map<string, PendingSlots>;
  /** Claims of warm VMs already handed out in this pass, per node and template. */
  claimed: Map<string, number>;
}

export function placeSandbox(p: PlaceInput): Placement {
  const sb = p.sandbox;
  const live = p.nodes.filter((n) => n.live);
  const room = (n: NodeView) => freeBytes(n, p.reserved.get(n.name) ?? 0);
  const capped = (n: NodeView, count: number, memBytes: number) => overCaps(n, p.pending?.get(n.name), count, memBytes);

  if (sb.spec.forkOf) {
    const { sandbox: parent, count } = sb.spec.forkOf;
    const node = p.nodeOfSandbox(parent);
    if (!node) return { wait: `parent sandbox ${parent} is not running on any node (yet)` };
    const view = p.nodes.find((n) => n.name === node);
    if (!view?.live) return { fail: `parent sandbox ${parent} is on node ${node}, which is not live` };
    const template = p.templateOfSandbox(parent);
    const perChild = (template && view.capacity.forkCostBytes[template]) || DEFAULT_FORK_COST;
    const cost = perChild * (count ?? 1);
    const childMem = (template && view.capacity.templateMemoryBytes[template]) || 0;
    const over = capped(view, count ?? 1, childMem);
    if (over) return { wait: `node ${node} (the parent's): ${over}` };
    if (room(view) < cost) {
      return {
        wait: `node ${node} (the parent's) has ${mib(room(view))} MiB free, the fork needs ~${mib(cost)} MiB (${count} × ${mib(perChild)} MiB expected dirty per child)`,
      };
    }
    return { node, reservedBytes: cost, count: count ?? 1, guestMib: Math.ceil(((count ?? 1) * childMem) / MiB) };
  }

  if (sb.spec.checkpoint) {
    const cp = sb.spec.checkpoint;
    const holders = p.nodes.filter((n) => n.capacity.checkpoints.includes(cp));
    const holder = holders.find((n) => n.live);
    if (!holder) {
      return holders.length === 0
        ? { wait: `no node reports checkpoint ${cp}` }
        : { fail: `checkpoint ${cp} is on node ${holders[0]?.name}, which is not live` };
    }
    // A restore maps the saved RAM copy-on-write, like a fork child.
    const cost = DEFAULT_FORK_COST;
    if (room(holder) < cost) return { wait: `node ${holder.name} (holding checkpoint ${cp}) has no room` };
    const over = capped(holder, 1, 0);
    if (over) return { wait: `node ${holder.name} (holding checkpoint ${cp}): ${over}` };
    return { node: holder.name, reservedBytes: cost, count: 1, guestMib: 0 };
  }

  const template = sb.spec.pool ?? "";
  const pool = p.pools.find((x) => x.metadata.name === template);
  const poolNodes = new Set((pool?.status?.nodes ?? []).map((n) => n.name));
  // A pool's nodes when it is a pool; otherwise any node that has the template.
  const candidates = live.filter((n) => (pool ? poolNodes.has(n.name) : n.capacity.templates.includes(template)));
  if (candidates.length === 0) {
    return { wait: pool ? `pool ${template} has no live node yet` : `no live node has template ${template}` };
  }
  const nominal =
    p.nodes.find((n) => n.capacity.templateMemoryBytes[template])?.capacity.templateMemoryBytes[template] ??
    (pool?.spec.template.resources?.memSizeMiB ?? 256) * MiB;
  // A restore from the template's base shares its pages copy-on-write: once the
  // node has measured what a child of this template dirties, that is the cost.
  const costOn = (n: NodeView) => n.capacity.forkCostBytes[template] || nominal;
  const warmLeft = (n: NodeView) => (n.capacity.warm[template] ?? 0) - (p.claimed.get(`${n.name}/${template}`) ?? 0);
  const fitting = candidates.filter((n) => room(n) >= costOn(n) && !capped(n, 1, nominal));
  if (fitting.length === 0) return { wait: `no node with template ${template} has ${mib(nominal)} MiB free` };
  // A warm VM first (a claim is milliseconds), then the most room.
  fitting.sort(
    (a, b) => Number(warmLeft(b) > 0) - Number(warmLeft(a) > 0) || room(b) - room(a) || a.name.localeCompare(b.name),
  );
  const chosen = fitting[0] as NodeView;
  return { node: chosen.name, reservedBytes: costOn(chosen), count: 1, guestMib: Math.ceil(nominal / MiB) };
}

/** Why the node's own spend caps would refuse `count` more sandboxes of `memBytes` each; undefined when they fit. */
function overCaps(n: NodeView, pending: PendingSlots | undefined, count: number, memBytes: number): string | undefined {
  const f = {
    sandboxes: n.capacity.free.sandboxes - (pending?.sandboxes ?? 0),
    guestMemoryMib: n.capacity.free.guestMemoryMib - (pending?.guestMib ?? 0),
  };
  if (f.sandboxes < count) return `its max_sandboxes leaves room for ${f.sandboxes} more, ${count} asked`;
  if (f.guestMemoryMib * MiB < count * memBytes) {
    return `its max_guest_memory_mib leaves ${f.guestMemoryMib} MiB, ${count} × ${mib(memBytes)} MiB asked`;
  }
  return undefined;
}

function mib(bytes: number): number {
  return Math.round(bytes / MiB);
}
