// The node agent, run inside mitosd by `mitosd --node <name>`: renews this
// node's Lease with its capacity, and makes what the controller placed here
// real through mitosd's own HTTP API (the SDK) — warm pools for SandboxPools,
// sandboxes and forks for Sandboxes — writing the outcome to their status.

import fs from "node:fs";
import { CoreV1Api, V1MicroTime } from "@kubernetes/client-node";
import { MitosError, type Sandbox, type SandboxServer } from "@mitos/sdk";
import { CAPACITY_ANNOTATION, encodeCapacity, LEASE_PREFIX, type NodeCapacity } from "./capacity.js";
import { type Kube, statusOf, type WatchedCache } from "./kube.js";
import {
  type SandboxPool,
  type SandboxResource,
  type SandboxStatus,
  sandboxIds,
  type TemplateSpec,
} from "./resources.js";

/** Least time between two reconcile passes of a node agent (ms). */
const PASS_GAP_MS = 50;

export interface NodeAgentOptions {
  kube: Kube;
  node: string;
  /** mitosd's own API, as this agent's client. */
  server: SandboxServer;
  /** Where the gateway reaches this mitosd. */
  endpoint: string;
  leaseSeconds: number;
  /** Ids of sandboxes this agent made (to clean up ones whose resource went while it was down). */
  stateFile: string;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export class NodeAgent {
  private sandboxes!: WatchedCache<SandboxResource>;
  private pools!: WatchedCache<SandboxPool>;
  private timers: NodeJS.Timeout[] = [];
  private stopped = false;
  /**
   * Every watched cache has its first list. Before that a pass would see
   * some objects but not others (sandboxes without the leases that make
   * their nodes live) and act on a half-picture.
   */
  private synced = false;
  private queued: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  /** Resource name → work in flight for it. */
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly templatesInFlight = new Map<string, Promise<void>>();
  private readonly poolTargets = new Map<string, number>();
  private managed: Set<string>;
  /** Forks made for a resource (by uid) whose status is not written yet: kept on disk, so a restart does not fork again. */
  private readonly forks: Map<string, { ids: string[]; forkTimeMs: number }>;
  private readonly recent = new Map<string, number>();
  /** Resources made real whose Ready status the watch has not shown yet (name → uid). */
  private readonly realized = new Map<string, string | undefined>();
  private capacity: NodeCapacity | undefined;
  private labels: Record<string, string> = {};
  private readonly log: NonNullable<NodeAgentOptions["log"]>;
  private lastMemoryUpdate = 0;
  private renewing = false;
  private measuring: Promise<void> | undefined;

  constructor(private readonly o: NodeAgentOptions) {
    this.log = o.log ?? (() => {});
    const state = readState(o.stateFile);
    this.managed = new Set(state.ids);
    this.forks = new Map(Object.entries(state.forks));
  }

  get leaseName(): string {
    return `${LEASE_PREFIX}${this.o.node}`;
  }

  async start(): Promise<void> {
    await this.o.kube.check();
    await this.readLabels();
    await this.renew();
    this.sandboxes = this.o.kube.sandboxCache();
    this.pools = this.o.kube.poolCache();
    const onError = (err: unknown) => this.log("watch failed; restarting it", { error: String(err) });
    const onChange = (kind: "add" | "update" | "delete", obj: SandboxResource | SandboxPool) => {
      if (kind === "delete" && obj.kind === "Sandbox") void this.released(obj as SandboxResource);
      this.kick();
    };
    await Promise.all([this.sandboxes.start(onChange, onError), this.pools.start(onChange, onError)]);
    this.synced = true;
    const every = (ms: number, f: () => void) => {
      const t = setInterval(f, ms);
      t.unref();
      this.timers.push(t);
    };
    every(
      (this.o.leaseSeconds * 1000) / 3,
      () => void this.renew().catch((e) => this.log("lease renewal failed", { error: String(e) })),
    );
    every(2000, () => this.kick());
    every(60_000, () => void this.readLabels());
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.queued) clearTimeout(this.queued);
    for (const t of this.timers) clearInterval(t);
    await this.running;
    await Promise.all([...this.inflight.values()]);
    await Promise.all([this.sandboxes?.stop(), this.pools?.stop()]);
  }

  /**
   * Asks for a pass. Events of the whole namespace arrive here, so passes are
   * coalesced: at most one runs, one more is queued, and they start at least
   * PASS_GAP_MS apart (each lists this node's sandboxes through mitosd).
   */
  kick(): void {
    if (this.stopped || !this.synced) return;
    if (this.running || this.queued) {
      this.again = true;
      return;
    }
    this.queued = setTimeout(() => {
      this.queued = undefined;
      this.running = this.pass()
        .catch((err) => this.log("node reconcile failed", { error: String(err) }))
        .finally(() => {
          this.running = undefined;
          if (this.again) {
            this.again = false;
            this.kick();
          }
        });
    }, PASS_GAP_MS);
  }

  // --- lease and capacity ---

  private async readLabels(): Promise<void> {
    try {
      const node = await this.o.kube.kc.makeApiClient(CoreV1Api).readNode({ name: this.o.node });
      this.labels = node.metadata?.labels ?? {};
    } catch (e) {
      // No Node object (or no right to read it): pools with a node selector will not come here.
      if (statusOf(e) !== 404 && statusOf(e) !== 403) this.log("reading the Node failed", { error: String(e) });
    }
  }

  async measure(): Promise<NodeCapacity> {
    const s = this.o.server;
    const [health, templates, pools, metering, sandboxes, checkpoints, limits] = await Promise.all([
      s.health(),
      s.listTemplates(),
      s.pools(),
      s.metering(),
      s.listSandboxes(),
      s.listCheckpoints(),
      s.limits(),
    ]);
    const mem = memInfo();
    const privateOf = new Map(metering.sandboxes.map((m) => [m.id, m.privateBytes]));
    // What a fork child of each template dirties on average (its private pages).
    const costs = new Map<string, number[]>();
    for (const sb of sandboxes) {
      const p = privateOf.get(sb.id);
      if (sb.parentId === null || p === undefined) continue;
      costs.set(sb.templateId, [...(costs.get(sb.templateId) ?? []), p]);
    }
    return {
      endpoint: this.o.endpoint,
      memoryTotalBytes: mem.total,
      memoryAvailableBytes: mem.available,
      memoryUsedBytes: metering.host.privateBytes + metering.host.sharedBytes,
      templates: templates.filter((t) => t.ready).map((t) => t.id),
      warm: Object.fromEntries(pools.map((p) => [p.template, p.warm])),
      forkCostBytes: Object.fromEntries(
        [...costs].map(([t, xs]) => [t, Math.round(xs.reduce((a, b) => a + b, 0) / xs.length)]),
      ),
      templateMemoryBytes: Object.fromEntries(
        templates.flatMap((t) => (t.resources ? [[t.id, t.resources.memSizeMib * 2 ** 20]] : [])),
      ),
      free: {
        sandboxes: limits.maxSandboxes - limits.usage.sandboxes,
        guestMemoryMib: limits.maxGuestMemoryMib - limits.usage.guestMemoryMib,
      },
      sandboxes: sandboxes.map((x) => x.id),
      checkpoints: checkpoints.map((c) => c.id),
      accel: String(health.accel ?? "unknown"),
      labels: this.labels,
    };
  }

  /**
   * Renews the Lease with the latest measured capacity. Measuring asks mitosd
   * (and can be slow while it forks); renewal never waits for it, so a busy
   * node still renews in time.
   */
  private async renew(): Promise<void> {
    if (this.renewing) return;
    this.renewing = true;
    try {
      if (!this.measuring) {
        this.measuring = this.measure()
          .then((c) => {
            this.capacity = c;
          })
          .catch((e) => this.log("measuring capacity failed", { error: String(e) }))
          .finally(() => {
            this.measuring = undefined;
          });
      }
      if (!this.capacity) await this.measuring;
      if (!this.capacity) throw new Error("no capacity measured yet");
      await this.writeLease(this.capacity);
    } finally {
      this.renewing = false;
    }
  }

  private async writeLease(capacity: NodeCapacity): Promise<void> {
    const k = this.o.kube;
    const existing = await k.getLease(this.leaseName);
    const now = new V1MicroTime();
    const lease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        ...(existing?.metadata ?? {}),
        name: this.leaseName,
        namespace: k.namespace,
        labels: { ...(existing?.metadata?.labels ?? {}), "app.kubernetes.io/component": "mitos-node" },
        annotations: { ...(existing?.metadata?.annotations ?? {}), [CAPACITY_ANNOTATION]: encodeCapacity(capacity) },
      },
      spec: {
        holderIdentity: this.o.node,
        leaseDurationSeconds: this.o.leaseSeconds,
        renewTime: now,
        acquireTime: existing?.spec?.acquireTime ?? now,
      },
    };
    if (existing) await k.replaceLease(lease);
    else await k.createLease(lease);
  }

  // --- reconcile ---

  private async pass(): Promise<void> {
    await this.reconcilePools();
    const mine = this.sandboxes.list().filter((s) => s.status?.node === this.o.node && !s.metadata.deletionTimestamp);
    const local = new Map((await this.o.server.listSandboxes()).map((s) => [s.id, s]));
    for (const sb of mine) {
      const name = sb.metadata.name;
      if (this.inflight.has(name)) continue;
      // Done here, but the watch has not delivered our own status write yet: never make it twice.
      if (sb.status?.phase === "Scheduled" && this.realized.get(name) === sb.metadata.uid) continue;
      if (sb.status?.phase !== "Scheduled") this.realized.delete(name);
      if (sb.status?.phase === "Scheduled") this.track(name, this.realize(sb, local), true);
      else if (sb.status?.phase === "Ready") this.track(name, this.refresh(sb, local), false);
    }
    // Sandboxes this agent made whose resource is gone (deleted while the agent was down).
    const claimed = new Set(this.sandboxes.list().flatMap(sandboxIds));
    for (const id of [...this.managed]) {
      // Recent ones may be made but not yet visible in the watched status.
      if (claimed.has(id) || this.inflight.size > 0 || Date.now() - (this.recent.get(id) ?? 0) < 60_000) continue;
      if (local.has(id)) await this.terminate(id, "its Sandbox resource is gone");
      this.forget([id]);
    }
  }

  /**
   * Runs one resource's work, one at a time per resource. Only work that
   * changed something asks for another pass at once (`again`); a refresh that
   * found nothing new waits for the next event or tick, or passes would follow
   * each other back to back, each listing mitosd's sandboxes.
   */
  private track(name: string, work: Promise<void>, again: boolean): void {
    const p = work
      .catch((err) => {
        // Deleted while we worked on it: its delete event cleans up.
        if (statusOf(err) !== 404) this.log("sandbox work failed", { sandbox: name, error: String(err) });
      })
      .finally(() => {
        this.inflight.delete(name);
        if (again) this.kick();
      });
    this.inflight.set(name, p);
  }

  private async reconcilePools(): Promise<void> {
    const wanted = new Map<string, { target: number; spec: TemplateSpec }>();
    for (const p of this.pools.list()) {
      if (p.metadata.deletionTimestamp) continue;
      const mine = p.status?.nodes?.find((n) => n.name === this.o.node);
      if (mine) wanted.set(p.metadata.name, { target: mine.target, spec: p.spec.template });
    }
    for (const [name, w] of wanted) {
      const ready = this.capacity?.templates.includes(name);
      if (!ready) {
        this.ensureTemplate(name, w.spec);
        continue;
      }
      if (this.poolTargets.get(name) !== w.target) {
        await this.o.server.setPoolTarget(name, w.target);
        this.poolTargets.set(name, w.target);
        this.log("warm pool target set", { pool: name, target: w.target });
      }
    }
    // A pool deleted, or moved off this node: stop keeping its VMs warm.
    for (const [name, target] of this.poolTargets) {
      if (wanted.has(name) || target === 0) continue;
      await this.o.server.setPoolTarget(name, 0).catch((e) => {
        if (!(e instanceof MitosError && e.code === "not_found")) throw e;
      });
      this.poolTargets.set(name, 0);
      this.log("warm pool stopped", { pool: name });
    }
  }

  /** Builds a pool's template here once (in the background; template builds take a while). */
  private ensureTemplate(name: string, spec: TemplateSpec): void {
    if (this.templatesInFlight.has(name)) return;
    const p = this.o.server
      .createTemplate(name, {
        ...(spec.image ? { image: spec.image } : {}),
        ...(spec.packages ? { packages: spec.packages } : {}),
        ...(spec.init ? { init: spec.init } : {}),
        ...(spec.env ? { env: spec.env } : {}),
        ...(spec.resources?.diskSizeMiB ? { diskSizeMib: spec.resources.diskSizeMiB } : {}),
        resources: {
          ...(spec.resources?.vcpuCount ? { vcpuCount: spec.resources.vcpuCount } : {}),
          ...(spec.resources?.memSizeMiB ? { memSizeMib: spec.resources.memSizeMiB } : {}),
        },
      })
      .then(async () => {
        this.capacity = await this.measure();
        this.log("pool template ready", { pool: name });
      })
      .catch((e) => this.log("pool template build failed", { pool: name, error: String(e) }))
      .finally(() => {
        this.templatesInFlight.delete(name);
        this.kick();
      });
    this.templatesInFlight.set(name, p);
  }

  /** Makes a Scheduled resource real on this node and reports it Ready (or Failed, with mitosd's reason). */
  private async realize(sb: SandboxResource, local: Map<string, Sandbox>): Promise<void> {
    const name = sb.metadata.name;
    const s = this.o.server;
    const started = Date.now();
    try {
      let status: SandboxStatus;
      if (sb.spec.forkOf) {
        const parentId = this.resolve(sb.spec.forkOf.sandbox);
        // A fork this agent made before it could write the status (it stopped in between).
        const earlier = this.forks.get(sb.metadata.uid ?? name);
        if (earlier?.ids.every((id) => local.has(id))) {
          status = { children: earlier.ids, forkTimeMs: earlier.forkTimeMs };
        } else {
          const parent = local.get(parentId) ?? (await s.get(parentId));
          const children = await parent.fork(sb.spec.forkOf.count ?? 1);
          const ids = children.map((c) => c.id);
          const forkTimeMs = children[0]?.forkTimeMs ?? Date.now() - started;
          this.forks.set(sb.metadata.uid ?? name, { ids, forkTimeMs });
          this.remember(ids);
          status = { children: ids, forkTimeMs };
        }
      } else {
        const opts = {
          id: name,
          ...(sb.spec.timeoutSeconds ? { timeoutSeconds: sb.spec.timeoutSeconds } : {}),
          ...(sb.spec.env ? { env: sb.spec.env } : {}),
        };
        // Already made (the agent stopped between creating it and writing the status).
        let made = local.get(name);
        if (!made) {
          if (sb.spec.pool) await this.templatesInFlight.get(sb.spec.pool);
          this.remember([name]);
          made = sb.spec.checkpoint
            ? await s.fromCheckpoint(sb.spec.checkpoint, opts)
            : await s.fork(sb.spec.pool ?? "", opts);
        }
        status = { sandboxId: made.id, forkTimeMs: made.forkTimeMs };
      }
      await this.o.kube.patchSandboxStatus(name, {
        ...status,
        phase: "Ready",
        endpoint: this.o.endpoint,
        readyAt: new Date().toISOString(),
        message: `ready on ${this.o.node} in ${Date.now() - started} ms`,
      });
      this.realized.set(name, sb.metadata.uid);
      if (this.forks.delete(sb.metadata.uid ?? name)) this.save();
      this.log("sandbox ready", { sandbox: name, ms: Date.now() - started });
    } catch (e) {
      const msg =
        e instanceof MitosError ? `${e.code}: ${e.message}${e.remediation ? ` (${e.remediation})` : ""}` : String(e);
      await this.o.kube.patchSandboxStatus(name, { phase: "Failed", message: msg.slice(0, 1000) }).catch(() => {});
      this.realized.set(name, sb.metadata.uid);
      this.log("sandbox failed", { sandbox: name, error: msg });
    }
  }

  /** A resource's sandboxes still running? Keeps status.children and memory current. */
  private async refresh(sb: SandboxResource, local: Map<string, Sandbox>): Promise<void> {
    const ids = sandboxIds(sb);
    const alive = ids.filter((id) => local.has(id));
    if (alive.length === 0) {
      await this.o.kube.patchSandboxStatus(sb.metadata.name, {
        phase: "Terminated",
        message: "its sandboxes ended (terminated, or reaped at their deadline)",
      });
      this.forget(ids);
      return;
    }
    if (sb.spec.forkOf && alive.length !== ids.length) {
      await this.o.kube.patchSandboxStatus(sb.metadata.name, { children: alive });
      this.forget(ids.filter((id) => !alive.includes(id)));
    }
    if (!sb.spec.forkOf && Date.now() - this.lastMemoryUpdate > 10_000) {
      this.lastMemoryUpdate = Date.now();
      const m = local.get(alive[0] as string)?.memory;
      const old = sb.status?.memory;
      if (m && (!old || Math.abs((old.privateBytes ?? 0) - m.privateBytes) > 1 << 20)) {
        await this.o.kube.patchSandboxStatus(sb.metadata.name, {
          memory: { privateBytes: m.privateBytes, sharedBytes: m.sharedBytes },
        });
      }
    }
  }

  /** A resource deleted: its sandboxes go too. */
  private async released(sb: SandboxResource): Promise<void> {
    if (sb.status?.node !== this.o.node) return;
    await this.inflight.get(sb.metadata.name);
    const ids = sandboxIds((await this.o.kube.getSandbox(sb.metadata.name)) ?? sb);
    const known = ids.length > 0 ? ids : sb.spec.forkOf ? [] : [sb.metadata.name];
    for (const id of known) await this.terminate(id, "its Sandbox resource was deleted");
    this.forget(known);
  }

  private async terminate(id: string, why: string): Promise<void> {
    try {
      await (await this.o.server.get(id)).terminate();
      this.log("sandbox terminated", { sandbox: id, why });
    } catch (e) {
      if (!(e instanceof MitosError && (e.code === "not_found" || e.code === "idle_timeout"))) throw e;
    }
  }

  /** A fork's parent by resource name (its sandbox) or by a Mitos sandbox id. */
  private resolve(ref: string): string {
    const r = this.sandboxes.get(ref);
    return r?.status?.sandboxId ?? ref;
  }

  private remember(ids: string[]): void {
    for (const id of ids) {
      this.managed.add(id);
      this.recent.set(id, Date.now());
    }
    this.save();
  }

  private save(): void {
    writeState(this.o.stateFile, { ids: [...this.managed], forks: Object.fromEntries(this.forks) });
  }

  private forget(ids: string[]): void {
    for (const id of ids) {
      this.managed.delete(id);
      this.recent.delete(id);
    }
    this.save();
  }
}

function memInfo(): { total: number; available: number } {
  const text = fs.readFileSync("/proc/meminfo", "utf8");
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? 0) * 1024;
  return { total: kib("MemTotal"), available: kib("MemAvailable") };
}

interface AgentState {
  ids: string[];
  forks: Record<string, { ids: string[]; forkTimeMs: number }>;
}

function readState(file: string): AgentState {
  try {
    const v = JSON.parse(fs.readFileSync(file, "utf8")) as Partial<AgentState>;
    return {
      ids: Array.isArray(v.ids) ? v.ids.filter((x): x is string => typeof x === "string") : [],
      forks: v.forks && typeof v.forks === "object" ? v.forks : {},
    };
  } catch {
    return { ids: [], forks: {} };
  }
}

function writeState(file: string, state: AgentState): void {
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(state), { mode: 0o600 });
  fs.renameSync(`${file}.tmp`, file);
}
