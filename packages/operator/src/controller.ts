// The controller: places pools' warm VMs on nodes, schedules each Sandbox to
// a node, marks sandboxes on nodes that stopped renewing their Lease as Lost.
// It keeps no state of its own: everything is read back from the API (a
// restart rebuilds it), and every status write names the resourceVersion it
// was decided on, so two controllers (or one restarted mid-write) never
// schedule a sandbox twice.

import type { V1Lease } from "@kubernetes/client-node";
import type { NodeView } from "./capacity.js";
import { type Kube, statusOf, type WatchedCache } from "./kube.js";
import { indexSandboxes, nodeViews } from "./nodes.js";
import {
  ownerRef,
  poolProblem,
  type SandboxPool,
  type SandboxResource,
  type SandboxStatus,
  sandboxProblem,
} from "./resources.js";
import { pendingSlots, placePool, placeSandbox, reservations } from "./scheduler.js";

export interface ControllerOptions {
  kube: Kube;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** How often to re-check leases when nothing changes (ms). */
  resyncMs?: number;
  /** Terminated sandboxes the gateway created are deleted after this long (ms). */
  terminatedTtlMs?: number;
}

export class Controller {
  private sandboxes!: WatchedCache<SandboxResource>;
  private pools!: WatchedCache<SandboxPool>;
  private leases!: WatchedCache<V1Lease>;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /**
   * Every watched cache has its first list. Before that a pass would see
   * some objects but not others (sandboxes without the leases that make
   * their nodes live) and act on a half-picture.
   */
  private synced = false;
  private readonly log: NonNullable<ControllerOptions["log"]>;
  /** Passes run (tests and metrics read it). */
  passes = 0;

  constructor(private readonly o: ControllerOptions) {
    this.log = o.log ?? (() => {});
  }

  async start(): Promise<void> {
    await this.o.kube.check();
    const k = this.o.kube;
    this.sandboxes = k.sandboxCache();
    this.pools = k.poolCache();
    this.leases = k.leaseCache();
    const kick = () => this.kick();
    const onError = (err: unknown) => this.log("watch failed; restarting it", { error: String(err) });
    await Promise.all([
      this.sandboxes.start(kick, onError),
      this.pools.start(kick, onError),
      this.leases.start(kick, onError),
    ]);
    this.synced = true;
    this.timer = setInterval(kick, this.o.resyncMs ?? 1000);
    this.timer.unref();
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.running;
    await Promise.all([this.sandboxes.stop(), this.pools.stop(), this.leases.stop()]);
  }

  /** Runs a pass now, or right after the one in progress. */
  kick(): void {
    if (this.stopped || !this.synced) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.pass()
      .catch((err) => this.log("reconcile pass failed", { error: String(err) }))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  private async pass(): Promise<void> {
    this.passes++;
    const nodes = nodeViews(this.leases.list());
    const byName = new Map(nodes.map((n) => [n.name, n]));
    const sandboxes = this.sandboxes.list();
    const pools = this.pools.list();
    const reserved = reservations(sandboxes, byName);
    const pending = pendingSlots(sandboxes, byName);
    await this.reconcilePools(pools, nodes, reserved);
    const index = indexSandboxes(sandboxes, nodes);
    const claimed = new Map<string, number>();
    const now = Date.now();
    for (const found of sandboxes) {
      let sb = found;
      if (sb.metadata.deletionTimestamp) continue;
      const phase = sb.status?.phase ?? "Pending";
      if (phase === "Pending") {
        const problem = sandboxProblem(sb);
        if (problem) {
          await this.write(sb, { phase: "Failed", message: problem });
          continue;
        }
        const adopted = await this.adopt(sb, pools, index.resourceOf);
        if (!adopted) continue;
        sb = adopted;
        const placed = placeSandbox({
          sandbox: sb,
          nodes,
          pools: this.pools.list(),
          nodeOfSandbox: index.nodeOf,
          templateOfSandbox: index.templateOf,
          reserved,
          pending,
          claimed,
        });
        if ("node" in placed) {
          const ok = await this.write(sb, {
            phase: "Scheduled",
            node: placed.node,
            reservedBytes: placed.reservedBytes,
            reservedGuestMiB: placed.guestMib,
            scheduledAt: new Date().toISOString(),
            message: `scheduled to ${placed.node}`,
          });
          if (ok) {
            reserved.set(placed.node, (reserved.get(placed.node) ?? 0) + placed.reservedBytes);
            const slots = pending.get(placed.node) ?? { sandboxes: 0, guestMib: 0 };
            pending.set(placed.node, {
              sandboxes: slots.sandboxes + placed.count,
              guestMib: slots.guestMib + placed.guestMib,
            });
            if (sb.spec.pool) {
              const key = `${placed.node}/${sb.spec.pool}`;
              claimed.set(key, (claimed.get(key) ?? 0) + 1);
            }
            this.log("scheduled", {
              sandbox: sb.metadata.name,
              node: placed.node,
              reserved_bytes: placed.reservedBytes,
            });
          }
        } else if ("fail" in placed) {
          await this.write(sb, { phase: "Failed", message: placed.fail });
        } else if (sb.status?.message !== placed.wait) {
          await this.write(sb, { phase: "Pending", message: placed.wait });
        }
        continue;
      }
      const node = sb.status?.node ? byName.get(sb.status.node) : undefined;
      if ((phase === "Scheduled" || phase === "Ready") && sb.status?.node && !node?.live) {
        await this.write(sb, {
          phase: "Lost",
          message: `node ${sb.status.node} stopped renewing its lease${node ? ` (last at ${new Date(node.renewedAt).toISOString()})` : ""}`,
        });
        this.log("lost", { sandbox: sb.metadata.name, node: sb.status.node });
        continue;
      }
      // The node came back (mitosd restarted and re-adopted its VMs): Ready again.
      if (phase === "Lost" && node?.live) {
        const ids = sb.spec.forkOf ? (sb.status?.children ?? []) : [sb.status?.sandboxId ?? ""];
        if (ids.length > 0 && ids.every((id) => node.capacity.sandboxes.includes(id))) {
          await this.write(sb, { phase: "Ready", message: `node ${node.name} is back` });
        }
        continue;
      }
      if (
        phase === "Terminated" &&
        sb.metadata.labels?.["mitos.run/created-by"] === "gateway" &&
        now - Date.parse(sb.status?.readyAt ?? sb.metadata.creationTimestamp ?? "") > (this.o.terminatedTtlMs ?? 60_000)
      ) {
        await this.o.kube.deleteSandbox(sb.metadata.name).catch(() => {});
      }
    }
  }

  private async reconcilePools(pools: SandboxPool[], nodes: NodeView[], reserved: Map<string, number>): Promise<void> {
    const byName = new Map(nodes.map((n) => [n.name, n]));
    for (const pool of pools) {
      if (pool.metadata.deletionTimestamp) continue;
      const problem = poolProblem(pool);
      let status: SandboxPool["status"];
      if (problem) {
        status = { phase: "Invalid", message: problem, nodes: [], nodeCount: 0, warm: 0 };
      } else {
        const placed = placePool(pool, nodes, reserved).map((p) => {
          const n = byName.get(p.name);
          return {
            ...p,
            warm: n?.capacity.warm[pool.metadata.name] ?? 0,
            ready: n?.capacity.templates.includes(pool.metadata.name) ?? false,
          };
        });
        const warm = placed.reduce((a, p) => a + p.warm, 0);
        const wanted = placed.reduce((a, p) => a + p.target, 0);
        status = {
          phase:
            placed.length === 0 ? "Pending" : warm >= wanted && placed.every((p) => p.ready) ? "Ready" : "Degraded",
          message:
            placed.length === 0
              ? "no live node matches the pool's node selector"
              : `${warm}/${wanted} warm on ${placed.length} node(s)`,
          nodes: placed,
          nodeCount: placed.length,
          warm,
        };
      }
      status.observedGeneration = pool.metadata.generation ?? 0;
      if (canonical(pick(pool.status, status)) === canonical(status)) continue;
      try {
        await this.o.kube.patchPoolStatus(pool.metadata.name, status, pool.metadata.resourceVersion);
      } catch (e) {
        if (statusOf(e) !== 409 && statusOf(e) !== 404) throw e;
      }
    }
  }

  /**
   * Owner references, whoever created the resource: a pool owns the sandboxes
   * made from it, a sandbox the forks of it, so deleting either cleans up.
   * Undefined when someone else changed the resource meanwhile.
   */
  private async adopt(
    sb: SandboxResource,
    pools: SandboxPool[],
    resourceOf: (id: string) => SandboxResource | undefined,
  ): Promise<SandboxResource | undefined> {
    const pool = sb.spec.pool ? pools.find((p) => p.metadata.name === sb.spec.pool) : undefined;
    const parent = sb.spec.forkOf ? resourceOf(sb.spec.forkOf.sandbox) : undefined;
    const owner = pool
      ? ownerRef("SandboxPool", pool.metadata)
      : parent
        ? ownerRef("Sandbox", parent.metadata)
        : undefined;
    const refs = sb.metadata.ownerReferences ?? [];
    if (!owner?.uid || parent === sb || refs.some((r) => r.uid === owner.uid)) return sb;
    try {
      return await this.o.kube.setSandboxOwners(sb.metadata.name, [...refs, owner], sb.metadata.resourceVersion);
    } catch (e) {
      if (statusOf(e) === 409 || statusOf(e) === 404) return undefined;
      throw e;
    }
  }

  /** A status write decided on this exact version; false when someone else wrote first (re-decided next pass). */
  private async write(sb: SandboxResource, status: SandboxStatus): Promise<boolean> {
    try {
      await this.o.kube.patchSandboxStatus(sb.metadata.name, status, sb.metadata.resourceVersion);
      return true;
    } catch (e) {
      if (statusOf(e) === 409 || statusOf(e) === 404) return false;
      throw e;
    }
  }
}

/** The keys of `shape` taken from `o`, in the same order (for a change check). */
function pick<T extends object>(o: T | undefined, shape: T): Partial<T> {
  const out: Partial<T> = {};
  for (const k of Object.keys(shape) as Array<keyof T>) if (o && o[k] !== undefined) out[k] = o[k];
  return out;
}

/** JSON with sorted keys: the API server need not keep the order we wrote. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x) =>
    x && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
      : x,
  );
}
