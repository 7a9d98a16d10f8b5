// The engine: the facade mitosd calls. It wires the parts together
// (templates.ts, lifecycle.ts, fork.ts, checkpoints.ts, recovery.ts) and
// keeps what is its own: warm pools, create, exec, pause/resume, metering
// and shutdown. A journal lets a restarted engine re-adopt running
// sandboxes and reap the rest.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AgentClient, ExecRequest } from "./agent/client.js";
import { RAM_FILE_RE } from "./base-file.js";
import type { BuildEvent } from "./build-log.js";
import { DeviceStatePrefixes } from "./capture-mapping.js";
import { type CheckpointManifest, CheckpointStore } from "./checkpoint-store.js";
import { Checkpoints, type StartOptions } from "./checkpoints.js";
import { defaultDataDir, shmDirFor } from "./config.js";
import { Confinement } from "./confine.js";
import { applyNetwork, type EngineContext, type FaultStep, journalUntilExit, type Log } from "./context.js";
import { DataDirLock } from "./dir-lock.js";
import { Disks } from "./disk.js";
import { MitosError } from "./errors.js";
import { type ForkOptions, Forks } from "./fork.js";
import { IdleHibernation } from "./idle.js";
import { pullAuth, type RegistryOptions } from "./image/registries.js";
import { Interpreter, startInterpreter } from "./interpreter.js";
import { Journal, type TemplateRecord, type TemplateSpec } from "./journal.js";
import { checkId, type SandboxInfo, SandboxTable } from "./lifecycle.js";
import { type Limits, type OwnerLimits, resolveLimits, SpendCaps, type Usage } from "./limits.js";
import { hostTotals, MemoryReadings, readVmMemory, type VmMemory } from "./metering.js";
import { Network } from "./network/network.js";
import { checkPolicy, DEFAULT_POLICY, type NetworkPolicy } from "./network/policy.js";
import { WarmPool } from "./pool.js";
import { type Accel, chooseAccel } from "./qemu/accel.js";
import { thpLogLine } from "./qemu/huge-pages.js";
import { recover } from "./recovery.js";
import { DEFAULT_SPARE_VMS } from "./spares.js";
import { type TemplateInfo, Templates, templateInfo } from "./templates.js";
import type { Vm } from "./vm.js";

export type { FaultStep } from "./context.js";
export type { SandboxInfo, SandboxState } from "./lifecycle.js";
export { TEMPLATE_WAITS, type TemplateInfo } from "./templates.js";
export type { TemplateSpec };

export interface EngineOptions {
  dataDir?: string;
  /** RAM files (a tmpfs dir used by this engine alone; default /dev/shm/mitos-<hash of dataDir>). */
  shmDir?: string;
  /** Image cache (default $MITOS_IMAGES_DIR or <dataDir>/images); tests share one across data dirs. */
  imagesDir?: string;
  accel?: Accel;
  /** Warm VMs kept per template (default: python 2). */
  poolTargets?: Record<string, number>;
  poolIdleMs?: number;
  /** Spend caps; unset ones take the host-sized defaults (limits.ts). */
  limits?: Partial<Limits>;
  /** Parallel restores during a fork (default: 2 × cores). */
  restoreConcurrency?: number;
  /** Most spare QEMUs kept waiting for the next fork, as many as the last fork's children (default: 16; 0: none). */
  spareVms?: number;
  /** Niceness spares start at, set back when a fork takes them (default 19 when mitosd is root, else 0: only root can set it back). */
  spareNice?: number;
  /** How long after its last fork a sandbox's base gets back the pages the capture faulted in (default 30 s). */
  reclaimDelayMs?: number;
  /** Copy the base the next fork most likely needs into the spare VMs' file between forks (default true; false: the fork copies it). */
  prefillSpareBase?: boolean;
  /** How a fork captures its source (decision 0022): "mapping" (default; migration for the first capture of a machine shape and as the fallback) or "migration" always. */
  forkCapture?: "mapping" | "migration";
  /** Disk cap of the checkpoint store (compressed chunks; default: a quarter of the data dir's filesystem). */
  maxCheckpointBytes?: number;
  /** Built-in templates to build in the background at open (mitosd: python), so the first create is warm. */
  prepareTemplates?: string[];
  /** How long the guest agent may take to answer a call or a liveness ping (ms, default 30 s). */
  agentTimeoutMs?: number;
  log?: Log;
  /** Hibernate a sandbox no API call has touched for this long (seconds; default: never). */
  hibernateIdleSeconds?: number;
  /** Keep at most this many checkpoints per sandbox, dropping the oldest (default: all, up to the disk cap). */
  checkpointRetention?: number;
  /** Networked sandboxes: the slot range, the claim registry and the resolver's upstream servers (docs/network.md). */
  network?: { range?: string; registry?: string; upstream?: string[] };
  /** Pulling OCI images: credentials and plain-HTTP registries (docs/templates.md). */
  registries?: RegistryOptions;
  /** Caps of an owner (a tenant) beside the host's, looked up at each admission (limits.ts OwnerLimits). */
  ownerLimits?: (owner: string) => OwnerLimits | undefined;
  /** Test hook for fault injection: awaited at each named step with the VM involved. */
  faults?: (step: FaultStep, vm: Vm) => void | Promise<void>;
}

export class Engine {
  readonly dataDir: string;
  readonly shmDir: string;
  readonly accel: Accel;
  /** Whether each QEMU runs as a uid of its own (docs/security.md). */
  readonly confinement: Confinement;
  /** On-disk checkpoints (checkpoint-store.ts). */
  readonly checkpoints: CheckpointStore;
  readonly caps: SpendCaps;
  private readonly ctx: EngineContext;
  private readonly templates: Templates;
  private readonly table: SandboxTable;
  private readonly forks: Forks;
  private readonly saved: Checkpoints;
  private readonly pools = new Map<string, WarmPool>();
  /** Sandbox objects' memory (memory()): each VM's smaps read at most once a second. */
  private readonly readings = new MemoryReadings<Vm>(vmMemory);
  private readonly lock: DataDirLock;
  private readonly idle: IdleHibernation | undefined;
  private closed = false;

  private constructor(options: EngineOptions) {
    this.dataDir = options.dataDir ?? defaultDataDir();
    this.shmDir = options.shmDir ?? shmDirFor(this.dataDir);
    const imagesDir =
      options.imagesDir ??
      (process.env.MITOS_IMAGES_DIR ? path.resolve(process.env.MITOS_IMAGES_DIR) : path.join(this.dataDir, "images"));
    this.accel = options.accel ?? chooseAccel().accel;
    const log = options.log ?? (() => {});
    fs.mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
    this.lock = DataDirLock.take(this.dataDir);
    try {
      this.caps = new SpendCaps(resolveLimits(options.limits), options.ownerLimits);
      fs.mkdirSync(this.shmDir, { recursive: true, mode: 0o700 });
      for (const d of ["vms", "templates", "bases"])
        fs.mkdirSync(path.join(this.dataDir, d), { recursive: true, mode: 0o700 });
      this.confinement = Confinement.open({ dataDir: this.dataDir, shmDir: this.shmDir, imagesDir, log });
      const disk = fs.statfsSync(this.dataDir);
      this.checkpoints = new CheckpointStore(
        path.join(this.dataDir, "checkpoints"),
        options.maxCheckpointBytes ?? Math.floor((disk.blocks * disk.bsize) / 4),
      );
      const poolIdleMs = options.poolIdleMs ?? 10 * 60_000;
      this.ctx = {
        dataDir: this.dataDir,
        shmDir: this.shmDir,
        imagesDir,
        accel: this.accel,
        confinement: this.confinement,
        journal: new Journal(this.dataDir),
        caps: this.caps,
        checkpoints: this.checkpoints,
        disks: new Disks(this.dataDir, this.confinement.uids),
        pull: pullAuth(options.registries, this.dataDir),
        network: new Network({
          dataDir: this.dataDir,
          log,
          ...(options.network?.range ? { range: options.network.range } : {}),
          ...(options.network?.registry ? { registry: options.network.registry } : {}),
          ...(options.network?.upstream ? { upstream: options.network.upstream } : {}),
        }),
        log,
        fault: options.faults ?? (() => {}),
        agentOpts: options.agentTimeoutMs === undefined ? {} : { agentTimeoutMs: options.agentTimeoutMs },
        poolTargets: options.poolTargets ?? { python: 2 },
        poolIdleMs,
        restoreConcurrency: options.restoreConcurrency ?? Math.max(2, 2 * os.availableParallelism()),
        reclaimDelayMs: options.reclaimDelayMs ?? 30_000,
        forkCapture: options.forkCapture ?? "mapping",
        devicePrefixes: new DeviceStatePrefixes(),
      };
      this.templates = new Templates(this.ctx, (id) => {
        if ((this.ctx.poolTargets[id] ?? 0) > 0) this.poolFor(id);
      });
      this.table = new SandboxTable(this.ctx, (cp) => this.saved.delete(cp));
      this.forks = new Forks(
        this.ctx,
        this.table,
        options.spareVms ?? DEFAULT_SPARE_VMS,
        options.prefillSpareBase ?? true,
        options.spareNice,
      );
      this.saved = new Checkpoints(this.ctx, this.table, options.checkpointRetention);
      const idleSeconds = options.hibernateIdleSeconds;
      if (idleSeconds !== undefined) {
        if (!Number.isInteger(idleSeconds) || idleSeconds < 1) {
          throw new MitosError(
            "invalid_input",
            `hibernate_idle_seconds must be a positive whole number, got ${idleSeconds}`,
            {
              remediation: "Give the idle time in seconds (e.g. 300), or leave it unset to never hibernate on idle.",
            },
          );
        }
        this.idle = new IdleHibernation(this.table, idleSeconds * 1000, (s) => this.saved.hibernate(s), log);
      }
    } catch (err) {
      this.lock.release();
      throw err;
    }
  }

  /** Opens the engine: re-adopts running sandboxes a previous run left, reaps the rest, starts pools. */
  static async open(options: EngineOptions = {}): Promise<Engine> {
    const engine = new Engine(options);
    try {
      await recover(engine.ctx, engine.templates, engine.table);
    } catch (err) {
      engine.lock.release();
      throw err;
    }
    engine.ctx.log(...thpLogLine());
    for (const [template, target] of Object.entries(engine.ctx.poolTargets)) {
      if (target > 0 && engine.ctx.journal.templates[template]) engine.poolFor(template);
    }
    for (const t of options.prepareTemplates ?? []) {
      engine.templates
        .ensure(t, {})
        .catch((err: Error) => engine.ctx.log("template prepare failed", { template: t, error: err.message }));
    }
    return engine;
  }

  // --- templates ---

  /** Builds a template (or returns the existing one with that id); `onEvent` follows the build's log. */
  async createTemplate(
    id: string,
    spec: TemplateSpec = {},
    opts: { onEvent?: (e: BuildEvent) => void; owner?: string } = {},
  ): Promise<TemplateInfo> {
    return templateInfo(await this.templates.ensure(id, spec, opts.onEvent, opts.owner));
  }

  listTemplates(): TemplateInfo[] {
    return this.templates.list();
  }

  /** Whether a template id is taken (built, building, or to be rebuilt) and by which owner. */
  templateOwner(id: string): { taken: boolean; owner?: string } {
    return this.templates.ownerOf(id);
  }

  templateRecord(id: string): TemplateRecord | undefined {
    return this.templates.record(id);
  }

  /**
   * Deletes a template: its RAM base in the shm dir, its device state and its
   * journal entry. Refused (conflict) while sandboxes or a warm pool use it,
   * unless `force`, which terminates them first.
   */
  async deleteTemplate(id: string, opts: { force?: boolean } = {}): Promise<void> {
    this.assertOpen();
    checkId(id, "template");
    const { journal } = this.ctx;
    const t = journal.templates[id];
    const building = this.templates.isBuilding(id);
    if (!t && journal.recipes[id] && !building) {
      journal.deleteRecipe(id); // dropped at start, never rebuilt: only its spec was left
      return;
    }
    if (!t) {
      if (building) {
        throw new MitosError("conflict", `template ${id} is still being built`, {
          remediation: "Wait for the build to finish (POST /v1/templates returns then), then delete it.",
          context: { template: id },
        });
      }
      throw new MitosError("not_found", `no template ${JSON.stringify(id)}`, {
        remediation: "List templates (GET /v1/templates) for valid ids.",
        context: { template: id },
      });
    }
    const users = [...this.table.values()].filter((s) => s.templateId === id && s.state !== "terminated");
    if (users.some((s) => s.state === "starting")) {
      throw new MitosError("conflict", `a sandbox of template ${id} is being created or forked right now`, {
        remediation: "Retry the delete in a moment.",
        context: { template: id },
      });
    }
    const pool = this.pools.get(id);
    const pooled = pool !== undefined && pool.status.target > 0;
    if ((users.length > 0 || pooled) && !opts.force) {
      const what = [
        ...(users.length > 0 ? [`${users.length} sandbox${users.length > 1 ? "es" : ""}`] : []),
        ...(pooled ? [`a warm pool of ${pool.status.target}`] : []),
      ].join(" and ");
      throw new MitosError("conflict", `template ${id} is in use by ${what}`, {
        remediation: "Terminate its sandboxes first, or delete with ?force=true to terminate them and its pool too.",
        context: {
          template: id,
          sandboxes: users.map((s) => s.id).slice(0, 20),
          pool_target: pool?.status.target ?? 0,
        },
      });
    }
    journal.deleteTemplate(id);
    if (pool) {
      this.pools.delete(id);
      await pool.close();
    }
    await Promise.all(users.map((s) => this.table.kill(s, "terminated")));
    this.templates.remove(t);
    this.ctx.log("template deleted", { template: id, ram_file: t.ramFile, force: opts.force === true });
  }

  // --- pools ---

  private poolFor(template: string): WarmPool {
    let pool = this.pools.get(template);
    if (!pool) {
      pool = new WarmPool({
        template,
        target: this.ctx.poolTargets[template] ?? 0,
        idleMs: this.ctx.poolIdleMs,
        restore: () => this.restoreWarm(template),
        onError: (err) => this.ctx.log("warm pool restore failed", { template, error: err.message }),
      });
      this.pools.set(template, pool);
      pool.fill();
    }
    return pool;
  }

  private async restoreWarm(template: string): Promise<Vm> {
    const t = this.ctx.journal.templates[template];
    if (!t) throw new MitosError("not_found", `template ${template} is gone`, { remediation: "Create it again." });
    const vm = await this.templates.restore(t);
    journalUntilExit(this.ctx, vm);
    try {
      await vm.warmUp();
      // Read while it waits paused (off any caller's path): its claim answers with this reading.
      this.readings.take(vm);
    } catch (err) {
      await vm.destroy();
      throw err;
    }
    return vm;
  }

  /** QEMU processes started and waiting for the next fork (spares.ts). */
  spareStatus(): { ready: number; pids: number[]; ramFile: string | undefined } {
    return this.forks.spareStatus();
  }

  /**
   * Keeps `target` warm VMs of a template (0 stops its pool), idle or not:
   * for callers that manage capacity themselves, such as a cluster's node agent.
   */
  setPoolTarget(
    templateId: string,
    target: number,
  ): { template: string; warm: number; target: number; claimed: number } {
    this.assertOpen();
    if (!this.ctx.journal.templates[templateId]) {
      throw new MitosError("not_found", `template ${templateId} does not exist`, {
        remediation: "Create it with POST /v1/templates first; GET /v1/templates lists them.",
        context: { template: templateId },
      });
    }
    const max = this.caps.limits.maxSandboxes;
    if (!Number.isInteger(target) || target < 0 || target > max) {
      throw new MitosError("invalid_input", `target must be a whole number from 0 to ${max}, got ${target}`, {
        remediation: `Pass {"target": n} with 0 <= n <= ${max} (max_sandboxes).`,
        context: { field: "target" },
      });
    }
    this.ctx.poolTargets[templateId] = target;
    const pool = this.poolFor(templateId);
    pool.setTarget(target, { keepWarm: target > 0 });
    return pool.status;
  }

  poolStatus(): Array<{ template: string; warm: number; target: number; claimed: number }> {
    return [...this.pools.values()].map((p) => p.status);
  }

  // --- sandboxes ---

  /** A new sandbox from a template: a warm VM when one is ready, else a fresh restore. */
  async create(
    templateId: string,
    opts: {
      id?: string;
      timeoutSeconds?: number;
      env?: Record<string, string>;
      network?: NetworkPolicy;
      /** Who it belongs to (SandboxInfo.owner); its own caps apply. */
      owner?: string;
    } = {},
  ): Promise<SandboxInfo> {
    this.assertOpen();
    const asked = opts.network === undefined ? undefined : checkPolicy(opts.network);
    const id = this.table.newId(opts.id);
    const timeout = this.table.checkTimeout(opts.timeoutSeconds, opts.owner);
    const started = Date.now();
    // The count first: a create that will be refused must not build a template.
    this.caps.admit(this.table.usage(), 1, 0);
    const template = this.ctx.journal.templates[templateId] ?? (await this.templates.builtin(templateId));
    this.table.admit(1, template.machine.memMiB, templateId, false, opts.owner);
    if (asked && !template.machine.network) throw noNic(templateId);
    const network = template.machine.network ? (asked ?? template.spec?.network ?? DEFAULT_POLICY) : undefined;
    const placeholder = this.table.reserve(id, {
      templateId,
      parentId: null,
      timeoutSeconds: timeout,
      env: { ...(template.defaults?.env ?? {}), ...(opts.env ?? {}) },
      memMiB: template.machine.memMiB,
      network,
      owner: opts.owner,
    });
    try {
      const pool =
        this.pools.get(templateId) ?? (this.ctx.poolTargets[templateId] ? this.poolFor(templateId) : undefined);
      const vm = pool?.take() ?? (await this.templates.restore(template));
      try {
        await this.ctx.fault("create:restored", vm);
        await applyNetwork(this.ctx, vm, network);
        // Identity is the sandbox id, not the VM's directory name.
        await vm.activate(id);
        // A warm VM's reading from its pause stands for now: activation only reseeds and renames the guest.
        this.readings.carryOver(vm);
        await this.ctx.fault("create:activated", vm);
        return this.table.adopt(placeholder, vm, Date.now() - started);
      } catch (err) {
        await vm.destroy();
        this.ctx.journal.deleteVm(vm.id);
        throw err;
      }
    } catch (err) {
      this.table.unreserve(placeholder);
      throw err;
    }
  }

  /**
   * Live fork: pause the source once, capture its RAM into a new base and its
   * device state, resume it, and restore `count` children from the base in
   * parallel. Children share the base's pages copy-on-write.
   */
  fork(sourceId: string, opts: ForkOptions = {}): Promise<{ children: SandboxInfo[]; forkTimeMs: number }> {
    this.assertOpen();
    return this.forks.fork(sourceId, opts);
  }

  /** Replaces a running sandbox's network policy; it takes effect at once (connections already open stay). */
  async setNetwork(id: string, policy: unknown): Promise<SandboxInfo> {
    this.assertOpen();
    const checked = checkPolicy(policy);
    const s = this.table.running(id);
    if (!s.vm.machine.network) throw noNic(s.templateId);
    await this.ctx.network.setPolicy(s.vm.id, checked);
    s.network = checked;
    this.table.persist(s);
    this.ctx.log("network policy changed", {
      sandbox: id,
      egress: checked.egress,
      allow: checked.allow_out.length,
      deny: checked.deny_out.length,
    });
    return this.table.info(s);
  }

  // --- checkpoints ---

  /**
   * Saves a running sandbox to the on-disk store: one short pause for the
   * capture (as a fork's), then the RAM and device state are chunked,
   * compressed and written while the sandbox runs on.
   */
  checkpoint(id: string, opts: { name?: string } = {}): Promise<CheckpointManifest> {
    this.assertOpen();
    return this.saved.checkpoint(id, opts);
  }

  /** New sandboxes restored from a checkpoint (any time later, after restarts): `count` of them share one base. */
  fromCheckpoint(
    checkpointId: string,
    opts: StartOptions = {},
  ): Promise<{ children: SandboxInfo[]; forkTimeMs: number }> {
    this.assertOpen();
    return this.saved.start(checkpointId, opts);
  }

  /** The checkpoints users see: a hibernated sandbox's own is not one of them. */
  listCheckpoints(): CheckpointManifest[] {
    return this.saved.list();
  }

  /** A checkpoint users may name (not_found for a hibernated sandbox's). */
  visibleCheckpoint(id: string): CheckpointManifest {
    return this.saved.visible(id);
  }

  deleteCheckpoint(id: string): void {
    this.saved.delete(id);
  }

  // --- running sandboxes ---

  list(): SandboxInfo[] {
    return this.table.list();
  }

  /** Whose a sandbox reaped at its deadline was (undefined: no such tombstone). */
  expiredOwner(id: string): { owner: string | undefined } | undefined {
    return this.table.expiredOwner(id);
  }

  get(id: string): SandboxInfo {
    return this.table.info(this.table.lookup(id));
  }

  /** The agent of a running sandbox (for exec and files). */
  agent(id: string): AgentClient {
    return this.table.running(id).vm.agent;
  }

  /** The code interpreter of a running sandbox (docs/code-interpreter.md). */
  interpreter(id: string): Interpreter {
    const s = this.table.running(id);
    const agent = s.vm.agent;
    const served = this.templateRecord(s.templateId)?.recipe.interpreter === true;
    return new Interpreter(
      agent,
      id,
      s.env,
      served ? () => startInterpreter(agent, s.env, `sandbox ${id}`) : undefined,
    );
  }

  /** Exec with the sandbox's default env merged in. */
  exec(id: string, req: ExecRequest) {
    const s = this.table.running(id);
    // An OCI image's WORKDIR and USER, unless the call names its own.
    const d = this.ctx.journal.templates[s.templateId]?.defaults;
    return s.vm.agent.exec({
      ...req,
      env: { ...s.env, ...(req.env ?? {}) },
      ...(req.cwd === undefined && d?.cwd ? { cwd: d.cwd } : {}),
      ...(req.uid === undefined && d?.uid !== undefined ? { uid: d.uid, gid: d.gid ?? d.uid } : {}),
    });
  }

  /**
   * Wakes a sandbox the idle timer hibernated (runtime calls do this first,
   * so a sleeping sandbox answers as if it had not slept). Unknown ids and
   * other states are left to the call itself to report.
   */
  async awake(id: string): Promise<void> {
    await this.idle?.settle(id);
    const s = this.table.find(id);
    if (s?.idleHibernated && s.hibernation !== undefined && s.state === "paused") {
      this.ctx.log("waking a sandbox hibernated while idle", { sandbox: id });
      await this.resume(id);
    }
  }

  /**
   * Pauses a sandbox. With `hibernate` its RAM is freed too: it is saved to
   * a checkpoint (hidden from the list) and its VM stopped; resume restores
   * it under the same id, processes and files as they were, clock stepped.
   */
  async pause(id: string, opts: { hibernate?: boolean } = {}): Promise<void> {
    const s = this.table.running(id);
    if (opts.hibernate) return this.saved.hibernate(s);
    await s.vm.pause();
    s.state = "paused";
    this.table.persist(s);
  }

  async resume(id: string): Promise<void> {
    const s = this.table.lookup(id);
    if (s.state !== "paused") {
      throw new MitosError("conflict", `sandbox ${id} is ${s.state}, not paused`, {
        remediation: "Only a paused sandbox can be resumed.",
      });
    }
    s.lastActive = Date.now();
    if (s.hibernation === undefined) {
      await s.vm?.resume();
      s.state = "ready";
      this.table.persist(s);
      return;
    }
    if (s.waking) {
      throw new MitosError("conflict", `sandbox ${id} is being resumed already`, {
        remediation: "Wait for the first resume to answer.",
        context: { sandbox: id },
      });
    }
    // Its RAM comes back: it must fit again (it is counted as a sandbox already),
    // and counts from now on, so resumes running side by side cannot all fit the same room.
    this.table.admit(1, s.memMiB, s.templateId, true, s.owner);
    s.waking = true;
    s.idleHibernated = undefined;
    try {
      await this.saved.wake(s);
    } finally {
      s.waking = undefined;
    }
  }

  setTimeout(id: string, seconds: number): { deadlineUnix: number; timeoutSeconds: number } {
    const s = this.table.lookup(id);
    const t = this.table.checkTimeout(seconds, s.owner);
    this.caps.checkDeadline(s.createdAt.getTime(), t, Date.now(), s.owner);
    this.table.arm(s, t);
    this.table.persist(s);
    return { deadlineUnix: Math.floor(s.deadline / 1000), timeoutSeconds: t };
  }

  async terminate(id: string): Promise<void> {
    const s = this.table.lookup(id);
    if (s.vm) await this.ctx.fault("terminate:before-kill", s.vm);
    await this.table.kill(s, "terminated");
  }

  /** As last read: at most a second old (MemoryReadings); metering() reads now. */
  memory(id: string): VmMemory {
    const s = this.table.lookup(id);
    // Hibernated: no VM (its old pid may belong to another process by now).
    if (!s.vm) {
      return {
        privateBytes: 0,
        guestPrivateBytes: 0,
        sharedBytes: 0,
        baseKey: undefined,
        baseResidentBytes: 0,
        baseAllocatedBytes: 0,
      };
    }
    return this.readings.get(s.vm);
  }

  metering(): {
    sandboxes: Array<{ id: string } & VmMemory>;
    host: ReturnType<typeof hostTotals>;
  } {
    const rows: Array<{ id: string } & VmMemory> = [];
    for (const s of this.table.values()) {
      if (!s.vm?.running || s.state === "starting") continue;
      try {
        rows.push({ id: s.id, ...vmMemory(s.vm) });
      } catch {
        // The VM exited between the check and the read.
      }
    }
    return { sandboxes: rows, host: hostTotals(rows) };
  }

  /** Live sandboxes and their guest memory, placeholders of creates and forks in flight included; with cow admission, the host's real memory too. */
  usage(): Usage {
    return this.table.usage(true);
  }

  /** What one owner's sandboxes hold (the figures its OwnerLimits are checked against). */
  ownerUsage(owner: string): Usage {
    return this.table.ownerUsage(owner);
  }

  /** Takes a stream slot of a running sandbox (exec, file transfer); release it when the stream ends. */
  openStream(id: string): () => void {
    const s = this.table.running(id);
    const release = this.caps.openStream(id);
    // An open stream is use: the idle timer leaves the sandbox alone until it closes.
    s.streams++;
    s.lastActive = Date.now();
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      s.streams--;
      s.lastActive = Date.now();
      release();
    };
  }

  /**
   * Stops pools, spares and timers. Sandboxes keep running (a restarted
   * engine re-adopts them, decision 0012) unless `killSandboxes` (tests,
   * `--ephemeral`, shutdown = "terminate"), which terminates every one.
   */
  async close(opts: { killSandboxes?: boolean } = {}): Promise<void> {
    this.closed = true;
    await this.idle?.stop();
    // A template build in flight owns a VM: let it finish (or fail) first.
    await this.templates.settle();
    await Promise.all([...this.pools.values()].map((p) => p.close()));
    await this.forks.close();
    await this.saved.close();
    this.table.disarmAll();
    if (opts.killSandboxes) await Promise.all([...this.table.values()].map((s) => this.table.kill(s, "terminated")));
    else this.table.detachAll();
    // Layers and network slots of sandboxes left running stay for the next run.
    this.ctx.disks.close();
    await this.ctx.network.close();
    this.ctx.journal.close();
    this.lock.release();
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new MitosError("unavailable", "the engine is shutting down", { remediation: "Retry once mitosd is back." });
    }
  }
}

/** A network policy for a sandbox of a template built without a NIC. */
function noNic(templateId: string): MitosError {
  return new MitosError("invalid_input", `template ${templateId} has no network device`, {
    remediation: `Network is chosen when a template is built: create a template with "network" (e.g. {"id": "${templateId}-net", "image": "${templateId}", "network": {"egress": "deny"}}) and create sandboxes from it; their policy can then be set per sandbox.`,
    context: { template: templateId },
  });
}

function vmMemory(vm: Vm): VmMemory {
  return readVmMemory(vm.pid, (p) => RAM_FILE_RE.test(p));
}
