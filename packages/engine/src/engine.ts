// The engine: templates, sandboxes, warm pools and live fork, with a journal
// so a restarted engine reaps what a previous run left behind.

import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AgentClient, ExecRequest } from "./agent/client.js";
import { baseFileOf, digHoles, RAM_FILE_RE } from "./base-file.js";
import { type CheckpointManifest, CheckpointStore } from "./checkpoint-store.js";
import { defaultDataDir, shmDirFor } from "./config.js";
import { Confinement, type SharedGroup } from "./confine.js";
import { MitosError, shmSpaceRemediation } from "./errors.js";
import { BUILTIN_RECIPES, ensureImages } from "./image/build.js";
import { Journal, type TemplateRecord, type TemplateSpec } from "./journal.js";
import { type Limits, resolveLimits, SpendCaps, type Usage } from "./limits.js";
import { hostTotals, readVmMemory, type VmMemory } from "./metering.js";
import { WarmPool } from "./pool.js";
import { type Accel, chooseAccel } from "./qemu/accel.js";
import { qemuPidsOf } from "./qemu/processes.js";
import { captureLive, saveState } from "./snapshot.js";
import { SpareVms } from "./spares.js";
import { ID_RE, type MachineSpec, type Snapshot, Vm } from "./vm.js";

export type { TemplateSpec };

export type SandboxState = "starting" | "ready" | "paused" | "terminated" | "failed";

/** Bounds of TemplateSpec's waits (seconds). */
export const TEMPLATE_WAITS = { maxInitWaitSeconds: 600, defaultInitTimeoutSeconds: 600, maxInitTimeoutSeconds: 3600 };

export interface TemplateInfo {
  id: string;
  ready: boolean;
  createdAt: string;
  creationTimeMs: number;
}

export interface SandboxInfo {
  id: string;
  templateId: string;
  parentId: string | null;
  state: SandboxState;
  createdAt: string;
  deadlineUnix: number;
  /** Time to hand this sandbox out: claim/restore, or the fork that made it. */
  forkTimeMs: number;
  accel: Accel;
  pid: number;
  /** Paused with its RAM freed (saved to a checkpoint); resume restores it. */
  hibernated: boolean;
}

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
  /** Most spare QEMUs kept waiting for the next fork (default: 2 × cores; 0: none). */
  spareVms?: number;
  /** How long after its last fork a sandbox's base gets back the pages the capture faulted in (default 30 s). */
  reclaimDelayMs?: number;
  /** Disk cap of the checkpoint store (compressed chunks; default: a quarter of the data dir's filesystem). */
  maxCheckpointBytes?: number;
  /** Built-in templates to build in the background at open (mitosd: python), so the first create is warm. */
  prepareTemplates?: string[];
  /** How long the guest agent may take to answer a call or a liveness ping (ms, default 30 s). */
  agentTimeoutMs?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** Test hook for fault injection: awaited at each named step with the VM involved. */
  faults?: (step: FaultStep, vm: Vm) => void | Promise<void>;
}

/** Where `EngineOptions.faults` is called: in create, fork, checkpoint and terminate. */
export type FaultStep =
  | "create:restored"
  | "create:activated"
  | "fork:paused"
  | "fork:captured"
  | "fork:child-restored"
  | "checkpoint:paused"
  | "checkpoint:captured"
  | "terminate:before-kill";

interface Sandbox {
  id: string;
  templateId: string;
  parentId: string | null;
  state: SandboxState;
  vm: Vm;
  createdAt: Date;
  deadline: number;
  timer: NodeJS.Timeout | undefined;
  forkTimeMs: number;
  env: Record<string, string>;
  /** Nominal guest RAM, counted against max_guest_memory_mib. */
  memMiB: number;
  /** Hibernated: the checkpoint it was saved to; its VM is gone until resume. */
  hibernation?: string;
}

const TOMBSTONES = 10_000;

export class Engine {
  readonly dataDir: string;
  readonly shmDir: string;
  readonly accel: Accel;
  /** Whether each QEMU runs as a uid of its own (docs/security.md). */
  readonly confinement: Confinement;
  private readonly journal: Journal;
  /** The gid each template's RAM base is shared with (undefined: no uid switching). */
  private readonly templateGroups = new Map<string, SharedGroup | undefined>();
  private readonly sandboxes = new Map<string, Sandbox>();
  /** Ids reaped at their deadline, to answer 410 rather than 404. */
  private readonly expired = new Set<string>();
  private readonly templateBuilds = new Map<string, Promise<TemplateRecord>>();
  private readonly pools = new Map<string, WarmPool>();
  private readonly spares: SpareVms;
  /** Background work (giving base pages back) that close() waits for. */
  private readonly background = new Set<Promise<void>>();
  private readonly reclaimTimers = new Map<string, NodeJS.Timeout>();
  private readonly imagesDir: string;
  private readonly opts: Required<
    Omit<
      EngineOptions,
      | "dataDir"
      | "shmDir"
      | "imagesDir"
      | "accel"
      | "log"
      | "prepareTemplates"
      | "spareVms"
      | "faults"
      | "agentTimeoutMs"
      | "limits"
      | "maxCheckpointBytes"
    >
  >;
  /** On-disk checkpoints (checkpoint-store.ts), and their bases materialized in the shm dir, most recent last. */
  readonly checkpoints: CheckpointStore;
  private readonly checkpointBases = new Map<string, Promise<CheckpointBase>>();
  readonly caps: SpendCaps;
  private readonly log: NonNullable<EngineOptions["log"]>;
  private readonly fault: NonNullable<EngineOptions["faults"]>;
  private readonly agentTimeoutMs: number | undefined;
  private closed = false;

  private constructor(options: EngineOptions) {
    this.dataDir = options.dataDir ?? defaultDataDir();
    this.shmDir = options.shmDir ?? shmDirFor(this.dataDir);
    this.imagesDir =
      options.imagesDir ??
      (process.env.MITOS_IMAGES_DIR ? path.resolve(process.env.MITOS_IMAGES_DIR) : path.join(this.dataDir, "images"));
    this.accel = options.accel ?? chooseAccel().accel;
    this.log = options.log ?? (() => {});
    this.fault = options.faults ?? (() => {});
    this.agentTimeoutMs = options.agentTimeoutMs;
    this.caps = new SpendCaps(resolveLimits(options.limits));
    this.opts = {
      poolTargets: options.poolTargets ?? { python: 2 },
      poolIdleMs: options.poolIdleMs ?? 10 * 60_000,
      restoreConcurrency: options.restoreConcurrency ?? Math.max(2, 2 * os.availableParallelism()),
      reclaimDelayMs: options.reclaimDelayMs ?? 30_000,
    };
    fs.mkdirSync(this.shmDir, { recursive: true, mode: 0o700 });
    for (const d of ["vms", "templates", "bases"])
      fs.mkdirSync(path.join(this.dataDir, d), { recursive: true, mode: 0o700 });
    this.confinement = Confinement.open({
      dataDir: this.dataDir,
      shmDir: this.shmDir,
      imagesDir: this.imagesDir,
      log: this.log,
    });
    this.journal = new Journal(this.dataDir);
    const disk = fs.statfsSync(this.dataDir);
    this.checkpoints = new CheckpointStore(
      path.join(this.dataDir, "checkpoints"),
      options.maxCheckpointBytes ?? Math.floor((disk.blocks * disk.bsize) / 4),
    );
    this.spares = new SpareVms({
      size: options.spareVms ?? Math.max(2, 2 * os.availableParallelism()),
      shmDir: this.shmDir,
      idleMs: this.opts.poolIdleMs,
      spawn: (machine, ramFile, group) => this.spawnSpare(machine, ramFile, group),
      group: () => this.confinement.group(),
      share: (file, group) => this.confinement.share(file, group),
      onError: (err) => this.log("spare VM failed to start", { error: err.message }),
    });
  }

  private async spawnSpare(machine: MachineSpec, ramFile: string, group: SharedGroup | undefined): Promise<Vm> {
    const vmId = `vm-${hex(4)}`;
    const runAs = this.confinement.runAs(group, this.accel);
    const vm = await Vm.incoming({ id: vmId, dataDir: this.dataDir, machine, ramFile, runAs, ...this.agentOpts() });
    // The generation's base file is journaled with it (a restart removes it).
    this.journalUntilExit(vm, [ramFile]);
    return vm;
  }

  /** Opens the engine: reaps VMs a previous run left, drops broken templates, starts pools. */
  static async open(options: EngineOptions = {}): Promise<Engine> {
    const engine = new Engine(options);
    await engine.recover();
    for (const [template, target] of Object.entries(engine.opts.poolTargets)) {
      if (target > 0 && engine.journal.templates[template]) engine.poolFor(template);
    }
    for (const t of options.prepareTemplates ?? []) {
      engine
        .ensureTemplate(t, {})
        .catch((err: Error) => engine.log("template prepare failed", { template: t, error: err.message }));
    }
    return engine;
  }

  // --- templates ---

  /** Builds a template (or returns the existing one with that id). */
  async createTemplate(id: string, spec: TemplateSpec = {}): Promise<TemplateInfo> {
    return templateInfo(await this.ensureTemplate(id, spec));
  }

  listTemplates(): TemplateInfo[] {
    return Object.values(this.journal.templates).map(templateInfo);
  }

  templateRecord(id: string): TemplateRecord | undefined {
    return this.journal.templates[id];
  }

  /**
   * Deletes a template: its RAM base in the shm dir, its device state and its
   * journal entry. Refused (conflict) while sandboxes or a warm pool use it,
   * unless `force`, which terminates them first.
   */
  async deleteTemplate(id: string, opts: { force?: boolean } = {}): Promise<void> {
    this.assertOpen();
    checkId(id, "template");
    const t = this.journal.templates[id];
    if (!t && this.journal.recipes[id] && !this.templateBuilds.has(id)) {
      this.journal.deleteRecipe(id); // dropped at start, never rebuilt: only its spec was left
      return;
    }
    if (!t) {
      if (this.templateBuilds.has(id)) {
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
    const users = [...this.sandboxes.values()].filter((s) => s.templateId === id && s.state !== "terminated");
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
    this.journal.deleteTemplate(id);
    if (pool) {
      this.pools.delete(id);
      await pool.close();
    }
    await Promise.all(users.map((s) => this.kill(s, "terminated")));
    fs.rmSync(t.ramFile, { force: true });
    fs.rmSync(t.stateFile, { force: true });
    this.templateGroups.get(id)?.release();
    this.templateGroups.delete(id);
    this.log("template deleted", { template: id, ram_file: t.ramFile, force: opts.force === true });
  }

  private ensureTemplate(id: string, spec: TemplateSpec): Promise<TemplateRecord> {
    checkId(id, "template");
    const existing = this.journal.templates[id];
    if (existing) return Promise.resolve(existing);
    let build = this.templateBuilds.get(id);
    if (!build) {
      build = this.buildTemplate(id, spec).finally(() => this.templateBuilds.delete(id));
      this.templateBuilds.set(id, build);
    }
    return build;
  }

  private async buildTemplate(id: string, spec: TemplateSpec): Promise<TemplateRecord> {
    const started = Date.now();
    const imageName = spec.image ?? (id in BUILTIN_RECIPES ? id : "python");
    const baseRecipe = BUILTIN_RECIPES[imageName];
    if (!baseRecipe) {
      throw new MitosError("invalid_input", `unknown image ${JSON.stringify(imageName)}`, {
        remediation: `Use one of the built-in images: ${Object.keys(BUILTIN_RECIPES).join(", ")}; add packages with "packages".`,
      });
    }
    const packages = [...baseRecipe.packages, ...(spec.packages ?? [])];
    const init = spec.init ?? (imageName === "python" ? [PYTHON_WARMUP] : []);
    const env = spec.env ?? {};
    const memMiB = spec.resources?.memSizeMib ?? 512;
    const vcpus = spec.resources?.vcpuCount ?? 1;
    const initWait = spec.initWaitSeconds ?? 0;
    const initTimeout = spec.initTimeoutSeconds ?? TEMPLATE_WAITS.defaultInitTimeoutSeconds;
    if (!Number.isInteger(initWait) || initWait < 0 || initWait > TEMPLATE_WAITS.maxInitWaitSeconds) {
      throw new MitosError("invalid_input", `init_wait_seconds ${initWait} is out of range`, {
        remediation: `Use 0 to ${TEMPLATE_WAITS.maxInitWaitSeconds} seconds: how long the booted guest settles before init runs.`,
      });
    }
    if (!Number.isInteger(initTimeout) || initTimeout < 1 || initTimeout > TEMPLATE_WAITS.maxInitTimeoutSeconds) {
      throw new MitosError("invalid_input", `init_timeout_seconds ${initTimeout} is out of range`, {
        remediation: `Use 1 to ${TEMPLATE_WAITS.maxInitTimeoutSeconds} seconds per init command.`,
      });
    }
    if (!Number.isInteger(memMiB) || memMiB < 128 || memMiB > 16384) {
      throw new MitosError("invalid_input", `mem_size_mib ${memMiB} is out of range`, {
        remediation: "Use 128 to 16384 MiB.",
      });
    }
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 16) {
      throw new MitosError("invalid_input", `vcpu_count ${vcpus} is out of range`, {
        remediation: "Use 1 to 16 vCPUs.",
      });
    }
    // The template VM writes its RAM to a shared file: a full tmpfs would kill
    // it with SIGBUS half way, so check for room for all of it first.
    const shm = fs.statfsSync(this.shmDir);
    const free = shm.bavail * shm.bsize;
    if (free < memMiB * 1024 * 1024) {
      throw new MitosError(
        "unavailable",
        `not enough space in ${this.shmDir} for a ${memMiB} MiB template RAM file (${Math.floor(free / 2 ** 20)} MiB free)`,
        { remediation: shmSpaceRemediation(this.shmDir), context: { shm_dir: this.shmDir, template: id } },
      );
    }
    this.log("template build started", { template: id, packages, init: init.length });
    const images = await ensureImages({ packages }, { cacheDir: this.imagesDir });
    const vmId = `tpl-${id.slice(0, 40)}-${hex(4)}`;
    const group = this.confinement.group();
    const vm = await Vm.boot({
      id: vmId,
      images,
      dataDir: this.dataDir,
      shmDir: this.shmDir,
      memMiB,
      vcpus,
      accel: this.accel,
      keepRamFile: true,
      timeoutMs: 120_000,
      runAs: this.confinement.runAs(group, this.accel),
      ...this.agentOpts(),
    }).catch((err) => {
      group?.release();
      throw err;
    });
    this.journal.putVm({ vmId, pid: vm.pid, dir: vm.dir, files: [path.join(this.shmDir, `mitos-${vmId}.ram`)] });
    try {
      // The agent answering means the guest is up; the wait is for what else it starts.
      if (initWait > 0) await new Promise((r) => setTimeout(r, initWait * 1000));
      for (const [step, cmd] of init.entries()) {
        const r = await vm.agent.exec({ command: cmd, env, timeoutMs: initTimeout * 1000 }).result;
        if (r.exitCode !== 0) {
          const timedOut = r.timedOut ? ` (killed after init_timeout_seconds=${initTimeout})` : "";
          throw new MitosError(
            "invalid_input",
            `template init step ${step} failed with exit ${r.exitCode}${timedOut}: ${cmd}`,
            {
              remediation: r.timedOut
                ? "Raise init_timeout_seconds, or make the step faster."
                : "Fix the init command; its output is in cause.",
              cause: `${r.stdout.toString().slice(-2000)}${r.stderr.toString().slice(-2000)}`,
              context: { template: id },
            },
          );
        }
      }
      const info = await vm.agent.hello();
      await vm.pause();
      const stateFile = path.join(this.dataDir, "templates", `${id}.state`);
      await saveState(vm.qmp, vm.paths.migrationSocket, stateFile, 60_000, vm.runAs);
      const ramFile = vm.disownRamFile();
      await vm.destroy();
      const record: TemplateRecord = {
        id,
        spec,
        recipe: { packages, init, env },
        machine: vm.machine,
        ramFile,
        stateFile,
        createdAt: new Date().toISOString(),
        creationTimeMs: Date.now() - started,
        uptimeMs: info.uptimeMs,
        bootId: info.bootId,
      };
      this.journal.putTemplate(record);
      this.templateGroups.set(id, group);
      this.journal.deleteVm(vmId);
      this.log("template ready", { template: id, ms: record.creationTimeMs });
      const target = this.opts.poolTargets[id] ?? 0;
      if (target > 0) this.poolFor(id);
      return record;
    } catch (err) {
      await vm.destroy();
      fs.rmSync(path.join(this.shmDir, `mitos-${vmId}.ram`), { force: true });
      group?.release();
      this.journal.deleteVm(vmId);
      throw err;
    }
  }

  private snapshotOf(t: TemplateRecord): Snapshot {
    return { machine: t.machine, ramFile: t.ramFile, stateFile: t.stateFile, ignoreShared: true };
  }

  /** A paused VM restored from a template, running as a uid of its own in the template's group. */
  private restoreFromTemplate(vmId: string, t: TemplateRecord): Promise<Vm> {
    return Vm.restore({
      id: vmId,
      dataDir: this.dataDir,
      snapshot: this.snapshotOf(t),
      paused: true,
      runAs: this.confinement.runAs(this.templateGroup(t), this.accel),
      ...this.agentOpts(),
    });
  }

  /** The group a template's base is shared with, given to the base on first use. */
  private templateGroup(t: TemplateRecord): SharedGroup | undefined {
    if (!this.templateGroups.has(t.id)) {
      const group = this.confinement.group();
      this.confinement.share(t.ramFile, group);
      this.templateGroups.set(t.id, group);
    }
    return this.templateGroups.get(t.id);
  }

  // --- pools ---

  private poolFor(template: string): WarmPool {
    let pool = this.pools.get(template);
    if (!pool) {
      pool = new WarmPool({
        template,
        target: this.opts.poolTargets[template] ?? 0,
        idleMs: this.opts.poolIdleMs,
        restore: () => this.restoreWarm(template),
        onError: (err) => this.log("warm pool restore failed", { template, error: err.message }),
      });
      this.pools.set(template, pool);
      pool.fill();
    }
    return pool;
  }

  private async restoreWarm(template: string): Promise<Vm> {
    const t = this.journal.templates[template];
    if (!t) throw new MitosError("not_found", `template ${template} is gone`, { remediation: "Create it again." });
    const vmId = `vm-${hex(4)}`;
    const vm = await this.restoreFromTemplate(vmId, t);
    this.journalUntilExit(vm);
    try {
      await vm.warmUp();
    } catch (err) {
      await vm.destroy();
      throw err;
    }
    return vm;
  }

  /** QEMU processes started and waiting for the next fork (spares.ts). */
  spareStatus(): { ready: number; pids: number[]; ramFile: string | undefined } {
    const pids = this.spares.pids;
    return { ready: pids.length, pids, ramFile: this.spares.ramFile };
  }

  poolStatus(): Array<{ template: string; warm: number; target: number; claimed: number }> {
    return [...this.pools.values()].map((p) => p.status);
  }

  // --- sandboxes ---

  /** A new sandbox from a template: a warm VM when one is ready, else a fresh restore. */
  async create(
    templateId: string,
    opts: { id?: string; timeoutSeconds?: number; env?: Record<string, string> } = {},
  ): Promise<SandboxInfo> {
    this.assertOpen();
    const id = this.newSandboxId(opts.id);
    const timeout = this.checkTimeout(opts.timeoutSeconds);
    const started = Date.now();
    // The count first: a create that will be refused must not build a template.
    this.caps.admit(this.usage(), 1, 0);
    const template = this.journal.templates[templateId] ?? (await this.builtinTemplate(templateId));
    this.caps.admit(this.usage(), 1, template.machine.memMiB);
    const placeholder = this.reserve(id, templateId, null, timeout, opts.env ?? {}, template.machine.memMiB);
    try {
      const pool =
        this.pools.get(templateId) ?? (this.opts.poolTargets[templateId] ? this.poolFor(templateId) : undefined);
      const vm = pool?.take() ?? (await this.restoreFromTemplate(`vm-${hex(4)}`, template));
      try {
        await this.fault("create:restored", vm);
        // Identity is the sandbox id, not the VM's directory name.
        await vm.activate(id);
        await this.fault("create:activated", vm);
        return this.adopt(placeholder, vm, Date.now() - started);
      } catch (err) {
        await vm.destroy();
        this.journal.deleteVm(vm.id);
        throw err;
      }
    } catch (err) {
      this.sandboxes.delete(id);
      throw err;
    }
  }

  private async builtinTemplate(id: string): Promise<TemplateRecord> {
    const recipe = this.journal.recipes[id];
    if (recipe) {
      this.log("rebuilding template dropped at start", { template: id });
      return this.ensureTemplate(id, recipe);
    }
    if (!(id in BUILTIN_RECIPES)) {
      throw new MitosError("not_found", `no template ${JSON.stringify(id)}`, {
        remediation: `Create it first (POST /v1/templates), or use a built-in one: ${Object.keys(BUILTIN_RECIPES).join(", ")}.`,
        context: { template: id },
      });
    }
    return this.ensureTemplate(id, {});
  }

  /**
   * Live fork: pause the source once, capture its RAM into a new base and its
   * device state, resume it, and restore `count` children from the base in
   * parallel. Children share the base's pages copy-on-write.
   */
  async fork(
    sourceId: string,
    opts: { count?: number; ids?: string[]; timeoutSeconds?: number } = {},
  ): Promise<{ children: SandboxInfo[]; forkTimeMs: number }> {
    this.assertOpen();
    const source = this.running(sourceId);
    const count = opts.count ?? opts.ids?.length ?? 1;
    if (!Number.isInteger(count) || count < 1) {
      throw new MitosError("invalid_input", `fork count must be a positive integer, got ${count}`, {
        remediation: `Pass count between 1 and max_fork_count (${this.caps.limits.maxForkCount}).`,
      });
    }
    // The whole fork fits, or nothing is paused, captured or reserved.
    this.caps.admit(this.usage(), count, source.memMiB);
    const ids = Array.from({ length: count }, (_, i) => this.newSandboxId(opts.ids?.[i]));
    if (new Set(ids).size !== ids.length) {
      throw new MitosError("invalid_input", "child ids must be distinct", {
        remediation: "Give each child its own id.",
      });
    }
    const timeout = this.checkTimeout(opts.timeoutSeconds);
    const started = Date.now();
    const key = hex(6);
    // Spares already wait on an empty base file: capture into it and load them.
    const spare = this.spares.take(source.vm.machine, count);
    const ramFile = spare?.ramFile ?? path.join(this.shmDir, `mitos-base-${key}.ram`);
    const stateFile = path.join(this.dataDir, "bases", `${key}.state`);
    // The base's own group: only this fork's children can open it (the spares' one when there are spares).
    const baseGroup = spare ? spare.group : this.confinement.group();
    // Journal the base under the source so a crash mid-fork still reaps it.
    this.journalFiles(source.vm, [ramFile, stateFile], true);
    const placeholders = ids.map((id) =>
      this.reserve(id, source.templateId, source.id, timeout, source.env, source.memMiB),
    );
    let captured = false;
    try {
      const tPaused = await this.captureRunning(source, ramFile, stateFile, true);
      const tCaptured = Date.now();
      captured = true;
      const snapshot: Snapshot = { machine: source.vm.machine, ramFile, stateFile, ignoreShared: false };
      this.confinement.share(ramFile, baseGroup);
      const spares = spare?.vms.splice(0) ?? [];
      const results = await this.restoreAll(snapshot, placeholders.length, baseGroup, spares);
      // Every child has mapped the base (or failed): the name can go; the
      // pages live on while any child maps them.
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      const tRestored = Date.now();
      const { children, errors } = await this.activateAll(results, placeholders, started);
      if (errors.length === count) {
        throw new MitosError("fork_failed", `all ${count} children failed to start: ${errors[0]?.message}`, {
          remediation: "The source sandbox is unchanged. Retry; if it repeats, check host memory and /dev/shm space.",
        });
      }
      const forkTimeMs = Date.now() - started;
      this.log("fork", {
        source: source.id,
        count,
        ok: children.length,
        ...(errors.length > 0 ? { failed: errors.length, error: errors[0]?.message } : {}),
        ms: forkTimeMs,
        pauseMs: tPaused - started,
        captureMs: tCaptured - tPaused,
        restoreMs: tRestored - tCaptured,
        activateMs: Date.now() - tRestored,
      });
      return { children, forkTimeMs };
    } catch (err) {
      for (const p of placeholders) if (this.sandboxes.get(p.id) === p) this.sandboxes.delete(p.id);
      throw err instanceof MitosError
        ? err
        : new MitosError("fork_failed", `fork of ${source.id} failed: ${(err as Error).message}`, {
            remediation: "The source sandbox was resumed and is unchanged. Retry the fork.",
          });
    } finally {
      for (const vm of spare?.vms ?? []) void vm.destroy(); // the fork failed before loading them
      // Spares for the next fork start a moment later, not while the children run their first commands.
      const machine = source.vm.machine;
      setTimeout(() => this.spares.prime(machine), 1000).unref();
      if (captured) this.reclaimBase(source.vm);
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      baseGroup?.release();
      this.journalFiles(source.vm, [ramFile, stateFile], false);
    }
  }

  /** Adds files to (or takes them from) a VM's journal record: they go when it does, also after a crash. */
  private journalFiles(vm: Vm, files: string[], add: boolean): void {
    const rec = this.journal.vms[vm.id];
    if (!rec) return;
    const rest = rec.files.filter((f) => !files.includes(f));
    this.journal.putVm({ ...rec, files: add ? [...rest, ...files] : rest });
  }

  // --- checkpoints ---

  /**
   * Saves a running sandbox to the on-disk store: one short pause for the
   * capture (as a fork's), then the RAM and device state are chunked,
   * compressed and written while the sandbox runs on.
   */
  async checkpoint(id: string, opts: { name?: string; hidden?: boolean } = {}): Promise<CheckpointManifest> {
    this.assertOpen();
    const source = this.running(id);
    if (opts.name !== undefined && (opts.name.length > 128 || /[\0\n]/.test(opts.name))) {
      throw new MitosError("invalid_input", "a checkpoint name is at most 128 characters, on one line", {
        remediation: 'Pass a short label, e.g. "after-setup".',
      });
    }
    const key = hex(6);
    const ramFile = path.join(this.shmDir, `mitos-cp-${key}.ram`);
    const stateFile = path.join(this.dataDir, "bases", `cp-${key}.state`);
    this.journalFiles(source.vm, [ramFile, stateFile], true);
    const started = Date.now();
    try {
      const tPaused = await this.captureRunning(source, ramFile, stateFile, false);
      const tCaptured = Date.now();
      const m = await this.checkpoints.write(ramFile, stateFile, {
        name: opts.name ?? null,
        sandboxId: source.id,
        templateId: source.templateId,
        machine: source.vm.machine,
        env: source.env,
        ...(opts.hidden ? { hidden: true } : {}),
      });
      this.log("checkpoint", {
        sandbox: id,
        checkpoint: m.id,
        chunks: m.ram.length,
        bytes: m.bytes,
        addedBytes: m.addedBytes,
        pausedMs: tCaptured - tPaused,
        writeMs: Date.now() - tCaptured,
        ms: Date.now() - started,
        store: this.checkpoints.dir,
      });
      return m;
    } finally {
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      this.journalFiles(source.vm, [ramFile, stateFile], false);
    }
  }

  /** New sandboxes restored from a checkpoint (any time later, after restarts): `count` of them share one base. */
  async fromCheckpoint(
    checkpointId: string,
    opts: { count?: number; ids?: string[]; timeoutSeconds?: number; env?: Record<string, string> } = {},
  ): Promise<{ children: SandboxInfo[]; forkTimeMs: number }> {
    this.assertOpen();
    const m = this.visibleCheckpoint(checkpointId);
    const count = opts.count ?? opts.ids?.length ?? 1;
    if (!Number.isInteger(count) || count < 1) {
      throw new MitosError("invalid_input", `count must be a positive integer, got ${count}`, {
        remediation: `Pass count between 1 and max_fork_count (${this.caps.limits.maxForkCount}).`,
      });
    }
    this.caps.admit(this.usage(), count, m.machine.memMiB);
    const missing = Object.values(m.machine.images).filter((f) => typeof f === "string" && !fs.existsSync(f));
    if (missing.length > 0) {
      throw new MitosError("unavailable", `the guest images checkpoint ${m.id} was taken with are gone`, {
        remediation: "Rebuild the images it was taken with (same recipe), or take a new checkpoint.",
        context: { checkpoint: m.id, missing },
      });
    }
    const ids = Array.from({ length: count }, (_, i) => this.newSandboxId(opts.ids?.[i]));
    const timeout = this.checkTimeout(opts.timeoutSeconds);
    const started = Date.now();
    const env = { ...m.env, ...(opts.env ?? {}) };
    const placeholders = ids.map((id) => this.reserve(id, m.templateId, null, timeout, env, m.machine.memMiB));
    try {
      const results = await this.restoreFromCheckpoint(m, count);
      const { children, errors } = await this.activateAll(results, placeholders, started);
      if (children.length === 0) {
        throw new MitosError("fork_failed", `no sandbox could start from checkpoint ${m.id}: ${errors[0]?.message}`, {
          remediation: "Retry; if it repeats, check host memory and /dev/shm space.",
        });
      }
      const forkTimeMs = Date.now() - started;
      this.log("restored from checkpoint", { checkpoint: m.id, count, ok: children.length, ms: forkTimeMs });
      return { children, forkTimeMs };
    } catch (err) {
      for (const p of placeholders) if (this.sandboxes.get(p.id) === p) this.sandboxes.delete(p.id);
      throw err;
    }
  }

  /** The checkpoints users see: a hibernated sandbox's own is not one of them. */
  listCheckpoints(): CheckpointManifest[] {
    return this.checkpoints.list().filter((c) => !c.hidden);
  }

  /** A checkpoint users may name (not_found for a hibernated sandbox's). */
  visibleCheckpoint(id: string): CheckpointManifest {
    const m = this.checkpoints.get(id);
    if (m.hidden) {
      throw new MitosError("not_found", `no checkpoint ${JSON.stringify(id)}`, {
        remediation: "List checkpoints (GET /v1/checkpoints) for valid ids.",
        context: { checkpoint: id },
      });
    }
    return m;
  }

  deleteCheckpoint(id: string): void {
    this.checkpoints.delete(id);
    void this.dropCheckpointBase(id);
  }

  /** `count` paused VMs restored from a checkpoint's shared base. */
  private async restoreFromCheckpoint(m: CheckpointManifest, count: number): Promise<PromiseSettledResult<Vm>[]> {
    const base = await this.checkpointBase(m);
    const snapshot: Snapshot = {
      machine: m.machine,
      ramFile: base.ramFile,
      stateFile: base.stateFile,
      ignoreShared: false,
    };
    return this.restoreAll(snapshot, count, base.group);
  }

  /** A checkpoint's base in the shm dir, materialized once and shared by every restore; the least recently used go first. */
  private checkpointBase(m: CheckpointManifest): Promise<CheckpointBase> {
    let base = this.checkpointBases.get(m.id);
    if (base) {
      // Most recently used last.
      this.checkpointBases.delete(m.id);
      this.checkpointBases.set(m.id, base);
      return base;
    }
    base = (async () => {
      const need = m.ram.length * m.chunkBytes;
      const shm = fs.statfsSync(this.shmDir);
      if (shm.bavail * shm.bsize < need) {
        throw new MitosError(
          "unavailable",
          `not enough space in ${this.shmDir} for checkpoint ${m.id}'s RAM (${need >> 20} MiB)`,
          {
            remediation: shmSpaceRemediation(this.shmDir),
            context: { shm_dir: this.shmDir, checkpoint: m.id },
          },
        );
      }
      const ramFile = path.join(this.shmDir, `mitos-cpbase-${m.id}.ram`);
      const stateFile = path.join(this.dataDir, "bases", `${m.id}.state`);
      await this.checkpoints.materialize(m, ramFile, stateFile);
      const group = this.confinement.group();
      this.confinement.share(ramFile, group);
      return { ramFile, stateFile, group };
    })();
    base.catch(() => this.checkpointBases.delete(m.id));
    this.checkpointBases.set(m.id, base);
    for (const id of [...this.checkpointBases.keys()].slice(0, -CHECKPOINT_BASES)) void this.dropCheckpointBase(id);
    return base;
  }

  /** Unlinks a cached base: VMs restored from it keep its pages until they exit. */
  private async dropCheckpointBase(id: string): Promise<void> {
    const base = this.checkpointBases.get(id);
    if (!base) return;
    this.checkpointBases.delete(id);
    const b = await base.catch(() => undefined);
    if (!b) return;
    fs.rmSync(b.ramFile, { force: true });
    fs.rmSync(b.stateFile, { force: true });
    b.group?.release();
  }

  /**
   * Pauses a running sandbox only for a consistent capture of its RAM and
   * device state, then resumes it (with or without the public API's
   * pause_source: the source keeps running). Returns when it was paused.
   */
  private async captureRunning(source: Sandbox, ramFile: string, stateFile: string, fork: boolean): Promise<number> {
    const wasState = source.state;
    source.state = "paused";
    try {
      await source.vm.pause();
      const tPaused = Date.now();
      await this.fault(fork ? "fork:paused" : "checkpoint:paused", source.vm);
      const memBytes = source.vm.machine.memMiB * 1024 * 1024;
      await captureLive(
        source.vm.qmp,
        source.vm.paths.migrationSocket,
        { ramFile, stateFile, memBytes },
        120_000,
        source.vm.runAs,
      );
      await this.fault(fork ? "fork:captured" : "checkpoint:captured", source.vm);
      return tPaused;
    } catch (err) {
      if (!source.vm.running) throw sourceDied(source.id, err as Error, fork ? "fork" : "checkpoint");
      throw err;
    } finally {
      await source.vm.resume().catch(() => {});
      // Unless the VM died meanwhile (its exit handler marked it failed).
      if (source.state === "paused") source.state = wasState;
    }
  }

  /** `count` paused VMs restored from one base (spares loaded first), at most restoreConcurrency at a time. */
  private restoreAll(
    snapshot: Snapshot,
    count: number,
    group: SharedGroup | undefined,
    spares: Vm[] = [],
  ): Promise<PromiseSettledResult<Vm>[]> {
    return limitAll(
      this.opts.restoreConcurrency,
      Array.from({ length: count }, (_, i) => spares[i]),
      async (vm) => {
        if (vm) {
          await vm.load(snapshot, { paused: true });
          return vm;
        }
        return Vm.restore({
          id: `vm-${hex(4)}`,
          dataDir: this.dataDir,
          snapshot,
          paused: true,
          runAs: this.confinement.runAs(group, this.accel),
          ...this.agentOpts(),
        });
      },
    );
  }

  /** Activates restored VMs as the placeholders' sandboxes; failed ones are dropped and reported. */
  private async activateAll(
    results: PromiseSettledResult<Vm>[],
    placeholders: Sandbox[],
    started: number,
  ): Promise<{ children: SandboxInfo[]; errors: Error[] }> {
    const children: SandboxInfo[] = [];
    const errors: Error[] = [];
    await Promise.all(
      results.map(async (r, i) => {
        const p = placeholders[i] as Sandbox;
        if (r.status === "rejected") {
          this.sandboxes.delete(p.id);
          errors.push(r.reason as Error);
          return;
        }
        try {
          await this.fault("fork:child-restored", r.value);
          await r.value.activate(p.id);
          children[i] = this.adopt(p, r.value, Date.now() - started);
        } catch (err) {
          this.sandboxes.delete(p.id);
          await r.value.destroy();
          this.journal.deleteVm(r.value.id);
          errors.push(err as Error);
        }
      }),
    );
    return { children: children.filter(Boolean), errors };
  }

  /**
   * Gives back the pages of the source's base that a capture faulted in
   * (base-file.ts), once the source has not been forked for a while: the next
   * capture would fault them in again, and that costs more than the pages.
   */
  private reclaimBase(vm: Vm): void {
    clearTimeout(this.reclaimTimers.get(vm.id));
    const timer = setTimeout(() => {
      this.reclaimTimers.delete(vm.id);
      const file = vm.running ? baseFileOf(vm.pid) : undefined;
      if (!file || this.closed) return;
      const p: Promise<void> = digHoles(file)
        .catch((err: Error) => this.log("could not give back base pages", { vm: vm.id, error: err.message }))
        .finally(() => this.background.delete(p));
      this.background.add(p);
    }, this.opts.reclaimDelayMs);
    timer.unref();
    this.reclaimTimers.set(vm.id, timer);
  }

  list(): SandboxInfo[] {
    return [...this.sandboxes.values()].filter((s) => s.state !== "starting").map((s) => this.info(s));
  }

  get(id: string): SandboxInfo {
    return this.info(this.lookup(id));
  }

  /** The agent of a running sandbox (for exec and files). */
  agent(id: string): AgentClient {
    return this.running(id).vm.agent;
  }

  /** Exec with the sandbox's default env merged in. */
  exec(id: string, req: ExecRequest) {
    const s = this.running(id);
    return s.vm.agent.exec({ ...req, env: { ...s.env, ...(req.env ?? {}) } });
  }

  /**
   * Pauses a sandbox. With `hibernate` its RAM is freed too: it is saved to
   * a checkpoint (hidden from the list) and its VM stopped; resume restores
   * it under the same id, processes and files as they were, clock stepped.
   */
  async pause(id: string, opts: { hibernate?: boolean } = {}): Promise<void> {
    const s = this.running(id);
    if (!opts.hibernate) {
      await s.vm.pause();
      s.state = "paused";
      return;
    }
    const m = await this.checkpoint(id, { name: `hibernation of ${id}`, hidden: true });
    s.hibernation = m.id;
    s.state = "paused";
    const vm = s.vm;
    await vm.destroy();
    this.journal.deleteVm(vm.id);
    this.log("hibernated", { sandbox: id, checkpoint: m.id, bytes: m.bytes });
  }

  async resume(id: string): Promise<void> {
    const s = this.lookup(id);
    if (s.state !== "paused") {
      throw new MitosError("conflict", `sandbox ${id} is ${s.state}, not paused`, {
        remediation: "Only a paused sandbox can be resumed.",
      });
    }
    if (!s.hibernation) {
      await s.vm.resume();
      s.state = "ready";
      return;
    }
    // Its RAM comes back: it must fit again (it is counted as a sandbox already).
    const usage = this.usage();
    this.caps.admit({ ...usage, sandboxes: usage.sandboxes - 1 }, 1, s.memMiB);
    const cp = s.hibernation;
    const started = Date.now();
    const [r] = await this.restoreFromCheckpoint(this.checkpoints.get(cp), 1);
    if (!r || r.status === "rejected") throw r?.reason ?? new Error("restore failed");
    try {
      await r.value.activate(s.id);
    } catch (err) {
      await r.value.destroy();
      throw err;
    }
    s.hibernation = undefined;
    this.adopt(s, r.value, s.forkTimeMs);
    this.deleteCheckpoint(cp);
    this.log("resumed from hibernation", { sandbox: id, checkpoint: cp, ms: Date.now() - started });
  }

  setTimeout(id: string, seconds: number): { deadlineUnix: number; timeoutSeconds: number } {
    const s = this.lookup(id);
    const t = this.checkTimeout(seconds);
    this.caps.checkDeadline(s.createdAt.getTime(), t);
    this.arm(s, t);
    return { deadlineUnix: Math.floor(s.deadline / 1000), timeoutSeconds: t };
  }

  async terminate(id: string): Promise<void> {
    const s = this.lookup(id);
    if (s.vm) await this.fault("terminate:before-kill", s.vm);
    await this.kill(s, "terminated");
  }

  memory(id: string): VmMemory {
    const s = this.lookup(id);
    // Hibernated: no VM (its old pid may belong to another process by now).
    if (s.hibernation) {
      return {
        privateBytes: 0,
        guestPrivateBytes: 0,
        sharedBytes: 0,
        baseKey: undefined,
        baseResidentBytes: 0,
        baseAllocatedBytes: 0,
      };
    }
    return this.vmMemory(s.vm);
  }

  metering(): {
    sandboxes: Array<{ id: string } & VmMemory>;
    host: ReturnType<typeof hostTotals>;
  } {
    const rows: Array<{ id: string } & VmMemory> = [];
    for (const s of this.sandboxes.values()) {
      if (!s.vm.running || s.state === "starting") continue;
      try {
        rows.push({ id: s.id, ...this.vmMemory(s.vm) });
      } catch {
        // The VM exited between the check and the read.
      }
    }
    return { sandboxes: rows, host: hostTotals(rows) };
  }

  private vmMemory(vm: Vm): VmMemory {
    return readVmMemory(vm.pid, (p) => RAM_FILE_RE.test(p));
  }

  /** Stops pools and timers; `killSandboxes` also terminates every sandbox (tests, `--ephemeral`). */
  async close(opts: { killSandboxes?: boolean } = {}): Promise<void> {
    this.closed = true;
    // A template build in flight owns a VM: let it finish (or fail) first.
    await Promise.allSettled([...this.templateBuilds.values()]);
    await Promise.all([...this.pools.values()].map((p) => p.close()));
    await this.spares.close();
    for (const t of this.reclaimTimers.values()) clearTimeout(t);
    await Promise.all([...this.checkpointBases.keys()].map((id) => this.dropCheckpointBase(id)));
    await Promise.allSettled([...this.background]);
    for (const s of this.sandboxes.values()) if (s.timer) clearTimeout(s.timer);
    if (opts.killSandboxes) await Promise.all([...this.sandboxes.values()].map((s) => this.kill(s, "terminated")));
  }

  // --- internals ---

  private reserve(
    id: string,
    templateId: string,
    parentId: string | null,
    timeoutSeconds: number,
    env: Record<string, string>,
    memMiB: number,
  ): Sandbox {
    const s: Sandbox = {
      id,
      templateId,
      parentId,
      state: "starting",
      vm: undefined as unknown as Vm,
      createdAt: new Date(),
      deadline: Date.now() + timeoutSeconds * 1000,
      timer: undefined,
      forkTimeMs: 0,
      env,
      memMiB,
    };
    this.sandboxes.set(id, s);
    return s;
  }

  private adopt(s: Sandbox, vm: Vm, forkTimeMs: number): SandboxInfo {
    if (!vm.running) {
      throw new MitosError("unavailable", `the VM of sandbox ${s.id} exited while it was starting`, {
        remediation: `Retry; if it repeats, read the guest console log ${vm.paths.consoleLog} and check host memory.`,
        context: { sandbox: s.id },
      });
    }
    s.vm = vm;
    s.state = "ready";
    s.forkTimeMs = forkTimeMs;
    this.arm(s, Math.max(1, Math.round((s.deadline - Date.now()) / 1000)));
    this.journal.putVm({ vmId: vm.id, pid: vm.pid, dir: vm.dir, sandboxId: s.id, files: [] });
    vm.exited.then((x) => {
      // Terminated, hibernated (its VM stopped on purpose) or resumed in a new VM since.
      if (s.state === "terminated" || s.hibernation !== undefined || s.vm !== vm) return;
      s.state = "failed";
      // The deadline timer stays armed: a failed sandbox (and its logs) is
      // reaped at its deadline if nobody terminates it first.
      this.log("sandbox VM exited unexpectedly", { sandbox: s.id, code: x.code, signal: x.signal });
      void vm.stop().then(() => this.journal.deleteVm(vm.id));
    });
    return this.info(s);
  }

  private agentOpts(): { agentTimeoutMs?: number } {
    return this.agentTimeoutMs === undefined ? {} : { agentTimeoutMs: this.agentTimeoutMs };
  }

  /** Journals a VM until its QEMU exits, also after close (a clean shutdown leaves a journal naming no VM). */
  private journalUntilExit(vm: Vm, files: string[] = []): void {
    this.journal.putVm({ vmId: vm.id, pid: vm.pid, dir: vm.dir, files });
    vm.exited
      .then(() => this.journal.deleteVm(vm.id))
      .catch((err: Error) => this.log("journal update failed", { vm: vm.id, error: err.message }));
  }

  private arm(s: Sandbox, seconds: number): void {
    if (s.timer) clearTimeout(s.timer);
    s.deadline = Date.now() + seconds * 1000;
    s.timer = setTimeout(() => {
      this.expired.add(s.id);
      if (this.expired.size > TOMBSTONES) this.expired.delete(this.expired.values().next().value as string);
      void this.kill(s, "terminated").then(() => this.sandboxes.delete(s.id));
    }, seconds * 1000);
    s.timer.unref();
  }

  private async kill(s: Sandbox, state: SandboxState): Promise<void> {
    if (s.timer) clearTimeout(s.timer);
    s.state = state;
    if (s.hibernation) {
      const cp = s.hibernation;
      s.hibernation = undefined;
      try {
        this.deleteCheckpoint(cp);
      } catch (err) {
        this.log("could not delete a hibernation checkpoint", {
          sandbox: s.id,
          checkpoint: cp,
          error: (err as Error).message,
        });
      }
    }
    if (s.vm) {
      await s.vm.destroy();
      this.journal.deleteVm(s.vm.id);
    }
    this.sandboxes.delete(s.id);
  }

  /** Live sandboxes and their guest memory, placeholders of creates and forks in flight included. */
  usage(): Usage {
    let sandboxes = 0;
    let guestMemoryMib = 0;
    for (const s of this.sandboxes.values()) {
      if (s.state === "failed" || s.state === "terminated") continue; // their VM is gone
      sandboxes++;
      if (!s.hibernation) guestMemoryMib += s.memMiB; // hibernated: its RAM is on disk
    }
    return { sandboxes, guestMemoryMib };
  }

  /** Takes a stream slot of a running sandbox (exec, file transfer); release it when the stream ends. */
  openStream(id: string): () => void {
    this.running(id);
    return this.caps.openStream(id);
  }

  private lookup(id: string): Sandbox {
    const s = this.sandboxes.get(id);
    if (!s || s.state === "starting") {
      if (this.expired.has(id)) {
        throw new MitosError("idle_timeout", `sandbox ${id} reached its deadline and was terminated`, {
          remediation: "Create a new sandbox; extend deadlines with set_timeout before they pass.",
        });
      }
      throw new MitosError("not_found", `no sandbox ${JSON.stringify(id)}`, {
        remediation: "List sandboxes (GET /v1/sandboxes) for valid ids; terminated sandboxes are gone.",
        context: { sandbox: id },
      });
    }
    return s;
  }

  private running(id: string): Sandbox {
    const s = this.lookup(id);
    if (s.state !== "ready") {
      throw new MitosError("conflict", `sandbox ${id} is ${s.state}`, {
        remediation: s.state === "paused" ? "Resume it first (POST /v1/resume)." : "Create a new sandbox.",
        context: { sandbox: id, state: s.state },
      });
    }
    return s;
  }

  private info(s: Sandbox): SandboxInfo {
    return {
      id: s.id,
      templateId: s.templateId,
      parentId: s.parentId,
      state: s.state,
      createdAt: s.createdAt.toISOString(),
      deadlineUnix: Math.floor(s.deadline / 1000),
      forkTimeMs: s.forkTimeMs,
      accel: this.accel,
      pid: s.hibernation ? -1 : (s.vm?.pid ?? -1),
      hibernated: s.hibernation !== undefined,
    };
  }

  private newSandboxId(requested?: string): string {
    if (requested !== undefined) {
      checkId(requested, "sandbox");
      if (this.sandboxes.has(requested)) {
        throw new MitosError("conflict", `sandbox id ${requested} is taken`, {
          remediation: "Choose another id, or omit it to get a generated one.",
        });
      }
      return requested;
    }
    for (;;) {
      const id = `sb-${hex(4)}`;
      if (!this.sandboxes.has(id)) return id;
    }
  }

  private checkTimeout(seconds: number | undefined): number {
    const { defaultTimeoutSeconds, maxLifetimeSeconds } = this.caps.limits;
    const t = seconds ?? defaultTimeoutSeconds;
    if (!Number.isInteger(t) || t < 1) {
      throw new MitosError("invalid_input", `timeout_seconds must be a positive integer, got ${t}`, {
        remediation: "Pass a whole number of seconds.",
      });
    }
    if (t > maxLifetimeSeconds) {
      throw new MitosError("timeout_too_large", `timeout ${t}s is above the limit of ${maxLifetimeSeconds}s`, {
        remediation: `Ask for at most ${maxLifetimeSeconds} seconds and extend with set_timeout later.`,
        context: { limit: "max_lifetime_seconds", value: maxLifetimeSeconds },
      });
    }
    return t;
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new MitosError("unavailable", "the engine is shutting down", { remediation: "Retry once mitosd is back." });
    }
  }

  /** Reaps every VM a previous run left (journal), and templates whose files are gone. */
  private async recover(): Promise<void> {
    for (const v of Object.values(this.journal.vms)) {
      if (isOurQemu(v.pid, v.dir)) {
        try {
          process.kill(v.pid, "SIGKILL");
        } catch {
          // already gone
        }
        await waitGone(v.pid, 5000);
      }
      fs.rmSync(v.dir, { recursive: true, force: true });
      for (const f of v.files) fs.rmSync(f, { force: true });
      this.journal.deleteVm(v.vmId);
      this.log("reaped VM left by a previous run", { vm: v.vmId, pid: v.pid });
    }
    // QEMUs started but not yet journaled when the previous run died (a
    // restore in flight): found by their runtime paths under <dataDir>/vms/.
    for (const pid of qemuPidsOf(this.dataDir)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
      await waitGone(pid, 5000);
      this.log("reaped unjournaled QEMU left by a previous run", { pid });
    }
    for (const t of Object.values(this.journal.templates)) {
      let reason: string | undefined;
      if (!fs.existsSync(t.ramFile) || !fs.existsSync(t.stateFile)) reason = "its files are gone";
      else {
        // A template frozen with an older agent, kernel or root image is stale.
        const current = await ensureImages({ packages: t.recipe.packages }, { cacheDir: this.imagesDir });
        const was = t.machine.images;
        if (current.kernel !== was.kernel || current.initrd !== was.initrd || current.rootfs !== was.rootfs) {
          reason = "its guest images changed";
        }
      }
      if (reason) {
        fs.rmSync(t.ramFile, { force: true });
        fs.rmSync(t.stateFile, { force: true });
        if (t.spec) this.journal.putRecipe(t.id, t.spec);
        this.journal.deleteTemplate(t.id);
        this.log(`dropped template: ${reason}`, {
          template: t.id,
          ...(t.spec ? { rebuild: "at its next use, from its recorded spec" } : {}),
        });
      }
    }
    // Hibernated sandboxes do not outlive their mitosd (decision 0003): their checkpoints go.
    for (const c of this.checkpoints.list()) {
      if (c.hidden) {
        this.checkpoints.delete(c.id);
        this.log("dropped the checkpoint of a sandbox hibernated by a previous run", { checkpoint: c.id });
      }
    }
    // Template bases get a group of this run (ids are not kept across runs).
    for (const t of Object.values(this.journal.templates)) this.templateGroup(t);
    // Stray files of ours not named by the journal (a crash between creating and journaling).
    const known = new Set(Object.values(this.journal.templates).flatMap((t) => [t.ramFile, t.stateFile]));
    for (const f of fs.readdirSync(this.shmDir)) {
      const p = path.join(this.shmDir, f);
      if (/^mitos-.*\.ram$/.test(f) && !known.has(p)) fs.rmSync(p, { force: true });
    }
    for (const d of ["vms", "bases"]) {
      for (const f of fs.readdirSync(path.join(this.dataDir, d)))
        fs.rmSync(path.join(this.dataDir, d, f), { recursive: true, force: true });
    }
  }
}

/** Checkpoint bases kept materialized in the shm dir at once. */
const CHECKPOINT_BASES = 4;

interface CheckpointBase {
  ramFile: string;
  stateFile: string;
  group: SharedGroup | undefined;
}

const PYTHON_WARMUP = "python3 -c 'import json, os, sys, subprocess, re, math, random' && true";

function templateInfo(t: TemplateRecord): TemplateInfo {
  return { id: t.id, ready: true, createdAt: t.createdAt, creationTimeMs: t.creationTimeMs };
}

function checkId(id: string, what: string): void {
  if (!ID_RE.test(id)) {
    throw new MitosError("invalid_input", `invalid ${what} id ${JSON.stringify(id)}`, {
      remediation: "Ids are 1-64 characters: letters, digits, '_' and '-', starting with a letter or digit.",
    });
  }
}

/** A fork whose source VM exited mid-way: the source is failed, not "unchanged". */
function sourceDied(sourceId: string, err: Error, what: "fork" | "checkpoint"): MitosError {
  return new MitosError(
    "fork_failed",
    `the VM of source sandbox ${sourceId} exited during the ${what}: ${err.message}`,
    {
      remediation: "The source sandbox has failed and no child was made. Create a new sandbox and fork that.",
      context: { sandbox: sourceId },
    },
  );
}

function hex(bytes: number): string {
  return randomBytes(bytes).toString("hex");
}

function isOurQemu(pid: number, dir: string): boolean {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return cmd.includes("qemu-system") && cmd.includes(dir);
  } catch {
    return false;
  }
}

async function waitGone(pid: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until && fs.existsSync(`/proc/${pid}`)) await new Promise((r) => setTimeout(r, 20));
}

/** Runs fn over items with at most `limit` in flight; settles like Promise.allSettled. */
async function limitAll<T, R>(limit: number, items: T[], fn: (t: T) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const results: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      try {
        results[i] = { status: "fulfilled", value: await fn(items[i] as T) };
      } catch (reason) {
        results[i] = { status: "rejected", reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
