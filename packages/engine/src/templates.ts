// Templates: building one (boot, init steps, freeze RAM and device state),
// the record it leaves in the journal, the gid its RAM base is shared with,
// and restoring paused VMs from it.

import fs from "node:fs";
import path from "node:path";
import { type BuildListener, BuildLog } from "./build-log.js";
import { ownRamFile, type SharedGroup } from "./confine.js";
import { type EngineContext, randomHex, withResources } from "./context.js";
import { Disks } from "./disk.js";
import { MitosError, shmSpaceRemediation } from "./errors.js";
import { checkGuestLimits, type GuestLimits } from "./guest-limits.js";
import { BUILTIN_RECIPES, ensureImages } from "./image/build.js";
import { ensureOciRoot, isOciReference, type OciRoot, ociImageSet } from "./image/oci.js";
import { startInterpreter } from "./interpreter.js";
import type { TemplateDefaults, TemplateRecord, TemplateSpec } from "./journal.js";
import { checkId } from "./lifecycle.js";
import { checkPolicy, DEFAULT_POLICY, type NetworkPolicy } from "./network/policy.js";
import type { Slot } from "./network/slots.js";
import { withPackages } from "./package-layer.js";
import { saveState } from "./snapshot.js";
import { type BuildKeys, TemplateCache } from "./template-cache.js";
import { type Snapshot, Vm } from "./vm.js";

/** Bounds of TemplateSpec's waits (seconds). */
export const TEMPLATE_WAITS = { maxInitWaitSeconds: 600, defaultInitTimeoutSeconds: 600, maxInitTimeoutSeconds: 3600 };

export interface TemplateInfo {
  id: string;
  ready: boolean;
  createdAt: string;
  creationTimeMs: number;
  /** Guest RAM and vCPUs of every sandbox made from it. */
  memSizeMib: number;
  vcpuCount: number;
  /** Its sandboxes' default network policy; unset: no network device. */
  network?: NetworkPolicy;
  /** The OCI image it was built from, pinned by digest. */
  image?: { reference: string; digest: string };
  /** A key of everything that shaped it (images, packages, steps, env, machine): a changed input is a new version. */
  version?: string;
  /** Its init steps. */
  steps: number;
  /** Who built it (an opaque label); unset: everyone's. */
  owner?: string;
  /** Guest limits it was built with (unset ones: the guest's defaults). */
  guest?: GuestLimits;
}

const PYTHON_WARMUP = "python3 -c 'import json, os, sys, subprocess, re, math, random' && true";

export function templateInfo(t: TemplateRecord): TemplateInfo {
  return {
    id: t.id,
    ready: true,
    createdAt: t.createdAt,
    creationTimeMs: t.creationTimeMs,
    memSizeMib: t.machine.memMiB,
    vcpuCount: t.machine.vcpus,
    ...(t.machine.network ? { network: t.spec?.network ?? DEFAULT_POLICY } : {}),
    ...(t.image ? { image: t.image } : {}),
    ...(t.version ? { version: t.version } : {}),
    ...(t.owner !== undefined ? { owner: t.owner } : {}),
    ...(t.machine.guest ? { guest: t.machine.guest } : {}),
    steps: t.recipe.init.length,
  };
}

export class Templates {
  /** The gid each template's RAM base is shared with (undefined: no uid switching). */
  private readonly groups = new Map<string, SharedGroup | undefined>();
  private readonly builds = new Map<string, { done: Promise<TemplateRecord>; log: BuildLog; owner?: string }>();
  private readonly cache: TemplateCache;

  constructor(
    private readonly ctx: EngineContext,
    /** Called when a build is done (the engine starts its warm pool). */
    private readonly onReady: (id: string) => void,
  ) {
    this.cache = new TemplateCache(path.join(ctx.imagesDir, "templates"));
  }

  list(): TemplateInfo[] {
    return Object.values(this.ctx.journal.templates).map(templateInfo);
  }

  record(id: string): TemplateRecord | undefined {
    return this.ctx.journal.templates[id];
  }

  isBuilding(id: string): boolean {
    return this.builds.has(id);
  }

  /**
   * Whether an id is taken (built, building, or dropped and to be rebuilt)
   * and by whom: ownership must be known before a build joins or starts.
   */
  ownerOf(id: string): { taken: boolean; owner?: string } {
    const t = this.ctx.journal.templates[id] ?? this.builds.get(id) ?? this.ctx.journal.recipes[id];
    if (!t) return { taken: false };
    return t.owner !== undefined ? { taken: true, owner: t.owner } : { taken: true };
  }

  /**
   * The template with that id, built first if there is none (one build per
   * id at a time). `onEvent` follows the build's log (docs/templates.md),
   * from its start even when this call joins a build already running.
   */
  async ensure(id: string, spec: TemplateSpec, onEvent?: BuildListener, owner?: string): Promise<TemplateRecord> {
    checkId(id, "template");
    const existing = this.ctx.journal.templates[id];
    if (existing) return existing;
    let build = this.builds.get(id);
    if (!build) {
      const log = new BuildLog();
      const done = this.build(id, spec, log, owner).finally(() => this.builds.delete(id));
      build = { done, log, ...(owner !== undefined ? { owner } : {}) };
      this.builds.set(id, build);
    }
    const stop = onEvent ? build.log.follow(onEvent) : undefined;
    try {
      return await build.done;
    } finally {
      stop?.();
    }
  }

  /** A template create may name without building it first: a built-in one, or one dropped at start. */
  async builtin(id: string): Promise<TemplateRecord> {
    const recipe = this.ctx.journal.recipes[id];
    if (recipe) {
      this.ctx.log("rebuilding template dropped at start", { template: id });
      const { owner, ...spec } = recipe;
      return this.ensure(id, spec, undefined, owner);
    }
    if (!(id in BUILTIN_RECIPES)) {
      throw new MitosError("not_found", `no template ${JSON.stringify(id)}`, {
        remediation: `Create it first (POST /v1/templates), or use a built-in one: ${Object.keys(BUILTIN_RECIPES).join(", ")}.`,
        context: { template: id },
      });
    }
    return this.ensure(id, {});
  }

  snapshotOf(t: TemplateRecord): Snapshot {
    return { machine: t.machine, ramFile: t.ramFile, stateFile: t.stateFile, ignoreShared: true };
  }

  /** A paused VM restored from a template, running as a uid of its own in the template's group (with a disk layer of its own over the template's). */
  restore(t: TemplateRecord): Promise<Vm> {
    const runAs = this.ctx.confinement.runAs(this.group(t), this.ctx.accel);
    return withResources(this.ctx, { chain: t.disk, runAs, network: t.machine.network }, (id, runAs, disk, netns) =>
      Vm.restore({
        id,
        dataDir: this.ctx.dataDir,
        snapshot: this.snapshotOf(t),
        paused: true,
        ...(runAs ? { runAs } : {}),
        ...(disk ? { disk } : {}),
        ...(netns ? { netns } : {}),
        ...this.ctx.agentOpts,
      }),
    );
  }

  /** The group a template's base is shared with, given to the base on first use. */
  group(t: TemplateRecord): SharedGroup | undefined {
    if (!this.groups.has(t.id)) {
      const group = this.ctx.confinement.group();
      this.ctx.confinement.share(t.ramFile, group);
      for (const layer of t.disk ?? []) this.ctx.disks.freeze(layer, group);
      this.ctx.disks.hold(`tpl:${t.id}`, t.disk ?? []);
      this.groups.set(t.id, group);
    }
    return this.groups.get(t.id);
  }

  /** Forgets a template and removes its files (the engine has checked nothing uses it). */
  remove(t: TemplateRecord): void {
    this.ctx.journal.deleteTemplate(t.id);
    fs.rmSync(t.ramFile, { force: true });
    fs.rmSync(t.stateFile, { force: true });
    this.ctx.disks.release(`tpl:${t.id}`);
    this.groups.get(t.id)?.release();
    this.groups.delete(t.id);
  }

  /**
   * A template from the shared cache: its files copied, then one VM restored
   * from them and run to its agent before the template is recorded, so an
   * entry that does not restore is dropped and the build goes on as usual.
   */
  private async fromCache(
    id: string,
    spec: TemplateSpec,
    recipe: TemplateRecord["recipe"],
    vmId: string,
    key: string,
    started: number,
    version: string,
    owner: string | undefined,
  ): Promise<TemplateRecord | undefined> {
    const ramFile = path.join(this.ctx.shmDir, `mitos-${vmId}.ram`);
    const stateFile = path.join(this.ctx.dataDir, "templates", `${id}.state`);
    const meta = await this.cache.take(key, ramFile, stateFile);
    if (!meta) return undefined;
    const record: TemplateRecord = {
      id,
      spec,
      recipe,
      machine: meta.machine,
      ramFile,
      stateFile,
      createdAt: new Date().toISOString(),
      creationTimeMs: Date.now() - started,
      uptimeMs: meta.uptimeMs,
      bootId: meta.bootId,
      version,
      // The same digest may be named another way (a registry tag, an archive): keep this build's name.
      ...(meta.image ? { image: { ...meta.image, reference: spec.image ?? meta.image.reference } } : {}),
      ...(meta.defaults ? { defaults: meta.defaults } : {}),
      ...(owner !== undefined ? { owner } : {}),
    };
    try {
      const vm = await this.restore(record);
      try {
        await vm.activate(vm.id, 20_000);
      } finally {
        await vm.destroy();
      }
    } catch (err) {
      this.ctx.log("cached template did not restore; building it", {
        template: id,
        key,
        error: (err as Error).message,
      });
      this.cache.drop(key);
      this.groups.get(id)?.release();
      this.groups.delete(id);
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      return undefined;
    }
    record.creationTimeMs = Date.now() - started;
    this.ctx.journal.putTemplate(record);
    this.ctx.log("template ready (from the template cache)", {
      template: id,
      ms: record.creationTimeMs,
      built_in_ms: meta.buildMs,
      cache: path.join(this.ctx.imagesDir, "templates", key),
    });
    this.onReady(id);
    return record;
  }

  /** Waits for builds in flight (each owns a VM) to finish or fail. */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.builds.values()].map((b) => b.done));
  }

  private async build(id: string, spec: TemplateSpec, log: BuildLog, owner?: string): Promise<TemplateRecord> {
    const started = Date.now();
    const imageName = spec.image ?? (id in BUILTIN_RECIPES ? id : "python");
    const oci = isOciReference(imageName);
    const baseRecipe = oci ? undefined : BUILTIN_RECIPES[imageName];
    if (!oci && !baseRecipe) {
      throw new MitosError("invalid_input", `unknown image ${JSON.stringify(imageName)}`, {
        remediation: `Use a built-in image (${Object.keys(BUILTIN_RECIPES).join(", ")}) or an OCI image reference such as docker.io/library/python:3.12-slim.`,
      });
    }
    const packages = [...(baseRecipe?.packages ?? []), ...(spec.packages ?? [])];
    const init = spec.init ?? (imageName === "python" ? [PYTHON_WARMUP] : []);
    const env = spec.env ?? {};
    const memMiB = spec.resources?.memSizeMib ?? 512;
    const vcpus = spec.resources?.vcpuCount ?? 1;
    const diskMib = spec.diskSizeMib;
    if (diskMib !== undefined) Disks.checkSize(diskMib);
    const network = spec.network === undefined ? undefined : checkPolicy(spec.network);
    const guest = checkGuestLimits(spec.guest, memMiB);
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
    const shm = fs.statfsSync(this.ctx.shmDir);
    const free = shm.bavail * shm.bsize;
    if (free < memMiB * 1024 * 1024) {
      throw new MitosError(
        "unavailable",
        `not enough space in ${this.ctx.shmDir} for a ${memMiB} MiB template RAM file (${Math.floor(free / 2 ** 20)} MiB free)`,
        { remediation: shmSpaceRemediation(this.ctx.shmDir), context: { shm_dir: this.ctx.shmDir, template: id } },
      );
    }
    this.ctx.log("template build started", { template: id, packages, init: init.length });
    const interpreter = baseRecipe?.interpreter === true;
    log.emit({
      type: "phase",
      phase: "image",
      message: oci
        ? `pulling ${imageName}`
        : `root image ${imageName}${packages.length ? ` (${packages.join(" ")})` : ""}`,
    });
    const pulled = oci
      ? await ensureOciRoot(imageName, {
          cacheDir: this.ctx.imagesDir,
          insecureRegistries: this.ctx.pull.insecureRegistries,
          ...(this.ctx.pull.authFile ? { authFile: this.ctx.pull.authFile } : {}),
        })
      : undefined;
    // Packages on an OCI image: its own package manager, in a VM of its own (package-layer.ts).
    const root = pulled && packages.length > 0 ? await withPackages(this.ctx, pulled, packages, log) : pulled;
    const images = root
      ? await ociImageSet(root, this.ctx.imagesDir)
      : await ensureImages(
          { packages, ...(baseRecipe?.overlay ? { overlay: baseRecipe.overlay } : {}) },
          { cacheDir: this.ctx.imagesDir },
        );
    // The image's ENV under the template's own; init runs in its WORKDIR.
    const initEnv = { ...(root?.config.env ?? {}), ...env };
    const initCwd = root?.config.workdir || undefined;
    const vmId = `tpl-${id.slice(0, 40)}-${randomHex(4)}`;
    const recipe = { packages, init, env, ...(interpreter ? { interpreter } : {}) };
    // Templates with a disk or a NIC hold data-dir paths and slots: never shared.
    const cacheable = diskMib === undefined && !network;
    const keys = this.cache.keys(
      {
        images,
        packages,
        env,
        memMiB,
        vcpus,
        accel: this.ctx.accel,
        initWaitSeconds: initWait,
        ...(diskMib !== undefined ? { diskMib } : {}),
        ...(network ? { network } : {}),
        ...(guest ? { guest } : {}),
      },
      init,
      interpreter,
    );
    const version = keys.final.slice(0, 12);
    if (cacheable) {
      const cached = await this.fromCache(id, spec, recipe, vmId, keys.final, started, version, owner);
      if (cached) {
        log.emit({
          type: "phase",
          phase: "cache",
          message: `template ${id} version ${version} from the template cache`,
        });
        return cached;
      }
    }
    const group = this.ctx.confinement.group();
    const diskKey = `build:${vmId}`;
    let disk: string[] | undefined;
    let slot: Slot | undefined;
    // A build with steps goes on from the newest guest the step cache kept.
    const resumed = cacheable && init.length > 0 ? await this.fromStepCache(keys, vmId, group, log) : undefined;
    const done = resumed?.done ?? 0;
    if (!resumed)
      log.emit({ type: "phase", phase: "boot", message: `booting ${imageName} (${memMiB} MiB, ${vcpus} vCPU)` });
    const vm =
      resumed?.vm ??
      (await (async () => {
        const runAs = this.ctx.confinement.runAs(group, this.ctx.accel);
        // A networked template boots in a slot with its own policy (init may fetch what it allows).
        if (network) {
          try {
            slot = await this.ctx.network.attach(vmId, runAs, network);
          } catch (err) {
            runAs?.release();
            throw err;
          }
        }
        if (diskMib !== undefined) {
          // A fresh ext4 disk, and the layer the build writes (init may fill /workspace).
          const base = await this.ctx.disks.createBase(diskMib, group);
          this.ctx.disks.hold(diskKey, [base]);
          disk = [await this.ctx.disks.overlay([base], runAs), base];
          this.ctx.disks.hold(diskKey, disk);
        }
        return Vm.boot({
          id: vmId,
          images,
          dataDir: this.ctx.dataDir,
          shmDir: this.ctx.shmDir,
          memMiB,
          vcpus,
          accel: this.ctx.accel,
          keepRamFile: true,
          timeoutMs: 120_000,
          ...(runAs ? { runAs } : {}),
          ...(disk ? { disk, diskMib } : {}),
          ...(slot ? { network: true, netns: slot.netnsPath } : {}),
          ...(guest ? { guest } : {}),
          ...this.ctx.agentOpts,
        });
      })().catch(async (err) => {
        if (slot) await this.ctx.network.detach(vmId).catch(() => {});
        this.ctx.disks.release(diskKey);
        group?.release();
        throw err;
      }));
    if (slot) vm.exited.then(() => this.ctx.network.detach(vmId)).catch(() => {});
    this.ctx.journal.putVm({
      vmId,
      pid: vm.pid,
      dir: vm.dir,
      files: [path.join(this.ctx.shmDir, `mitos-${vmId}.ram`)],
    });
    try {
      if (!resumed) {
        // The agent answering means the guest is up; the wait is for what else it starts.
        if (initWait > 0) await new Promise((r) => setTimeout(r, initWait * 1000));
        if (cacheable && init.length > 0) await this.keepStep(vm, keys.boot, started, log);
      }
      for (const [k, command] of init.entries()) {
        const step = k + 1;
        log.emit({ type: "step", step, of: init.length, command, cached: k < done });
        if (k < done) continue;
        const t0 = Date.now();
        const r = await vm.agent.exec({
          command,
          env: initEnv,
          ...(initCwd ? { cwd: initCwd } : {}),
          timeoutMs: initTimeout * 1000,
          onStdout: (d) => log.emit({ type: "output", step, stream: "stdout", data: d.toString() }),
          onStderr: (d) => log.emit({ type: "output", step, stream: "stderr", data: d.toString() }),
        }).result;
        log.emit({ type: "step_done", step, exit_code: r.exitCode, ms: Date.now() - t0 });
        if (r.exitCode !== 0) throw stepFailed(id, step, init.length, command, r, initTimeout);
        if (cacheable) await this.keepStep(vm, keys.steps[k] as string, started, log);
      }
      // After init (which may install what the kernel imports): every sandbox of
      // this template then starts with a warm kernel (docs/code-interpreter.md).
      if (interpreter) {
        log.emit({ type: "phase", phase: "interpreter", message: "starting the code interpreter's kernel" });
        await startInterpreter(vm.agent, env, `template ${id}`);
      }
      const imageOwner = root?.config.user ? await imageUser(vm, root.config.user, imageName) : undefined;
      const info = await vm.agent.hello();
      log.emit({ type: "phase", phase: "snapshot", message: `freezing template ${id} version ${version}` });
      await vm.pause();
      const stateFile = path.join(this.ctx.dataDir, "templates", `${id}.state`);
      await saveState(vm.qmp, vm.paths.migrationSocket, stateFile, 60_000, vm.runAs);
      const ramFile = vm.disownRamFile();
      await vm.destroy();
      const record: TemplateRecord = {
        id,
        spec: network ? { ...spec, network } : spec,
        recipe,
        machine: vm.machine,
        ramFile,
        stateFile,
        createdAt: new Date().toISOString(),
        creationTimeMs: Date.now() - started,
        uptimeMs: info.uptimeMs,
        bootId: info.bootId,
        version,
        ...(disk ? { disk } : {}),
        ...(root ? ociFields(root, imageOwner) : {}),
        ...(owner !== undefined ? { owner } : {}),
      };
      // The build's layer is the template's now: frozen, readable by its sandboxes.
      for (const layer of disk ?? []) this.ctx.disks.freeze(layer, group);
      this.ctx.disks.hold(`tpl:${id}`, disk ?? []);
      this.ctx.disks.release(diskKey);
      this.ctx.journal.putTemplate(record);
      this.groups.set(id, group);
      this.ctx.journal.deleteVm(vmId);
      this.ctx.log("template ready", { template: id, version, ms: record.creationTimeMs, steps_cached: done });
      if (cacheable) {
        await this.cache.put(keys.final, ramFile, stateFile, {
          machine: record.machine,
          uptimeMs: record.uptimeMs,
          bootId: record.bootId,
          buildMs: record.creationTimeMs,
          ...(record.image ? { image: record.image } : {}),
          ...(record.defaults ? { defaults: record.defaults } : {}),
        });
      }
      this.onReady(id);
      return record;
    } catch (err) {
      await vm.destroy();
      this.ctx.disks.release(diskKey);
      fs.rmSync(path.join(this.ctx.shmDir, `mitos-${vmId}.ram`), { force: true });
      group?.release();
      this.ctx.journal.deleteVm(vmId);
      throw err;
    }
  }

  /**
   * The newest guest the step cache kept for this build (after its boot or
   * after step k), restored with its RAM file its own and running; undefined
   * when there is none or none restores (such an entry is dropped).
   */
  private async fromStepCache(
    keys: BuildKeys,
    vmId: string,
    group: SharedGroup | undefined,
    log: BuildLog,
  ): Promise<{ vm: Vm; done: number } | undefined> {
    const chain = [keys.boot, ...keys.steps];
    for (let done = keys.steps.length; done >= 0; done--) {
      const key = chain[done] as string;
      if (!this.cache.has(key)) continue;
      const ramFile = path.join(this.ctx.shmDir, `mitos-${vmId}.ram`);
      const stateFile = path.join(this.ctx.dataDir, "vms", `${vmId}.step-state`);
      const meta = await this.cache.take(key, ramFile, stateFile);
      if (!meta) continue;
      const runAs = this.ctx.confinement.runAs(group, this.ctx.accel);
      try {
        ownRamFile(ramFile, runAs);
        const vm = await Vm.continueBuild({
          id: vmId,
          dataDir: this.ctx.dataDir,
          snapshot: { machine: meta.machine, ramFile, stateFile, ignoreShared: true },
          ...(runAs ? { runAs } : {}),
          ...this.ctx.agentOpts,
        });
        try {
          await vm.activate(vmId, 30_000);
        } catch (err) {
          await vm.destroy();
          throw err;
        }
        log.emit({
          type: "phase",
          phase: "restore",
          message: done === 0 ? "booted guest from the step cache" : `continuing after step ${done} (step cache)`,
        });
        return { vm, done };
      } catch (err) {
        this.ctx.log("step cache entry did not restore; dropping it", { key, error: (err as Error).message });
        this.cache.drop(key);
        fs.rmSync(ramFile, { force: true });
      } finally {
        fs.rmSync(stateFile, { force: true });
      }
    }
    return undefined;
  }

  /** Keeps the build's guest as it is now under `key` (the step cache), then lets it run on. */
  private async keepStep(vm: Vm, key: string, started: number, log: BuildLog): Promise<void> {
    if (this.cache.has(key)) return;
    const info = await vm.agent.hello();
    const stateFile = path.join(this.ctx.dataDir, "vms", `${vm.id}.step-state`);
    await vm.pause();
    try {
      await saveState(vm.qmp, vm.paths.migrationSocket, stateFile, 60_000, vm.runAs);
      await this.cache.put(key, path.join(this.ctx.shmDir, `mitos-${vm.id}.ram`), stateFile, {
        machine: vm.machine,
        uptimeMs: info.uptimeMs,
        bootId: info.bootId,
        buildMs: Date.now() - started,
      });
    } finally {
      fs.rmSync(stateFile, { force: true });
      await vm.qmp.execute("cont");
    }
    log.emit({ type: "phase", phase: "cache", message: `kept step ${key.slice(0, 12)} in the step cache` });
  }
}

/** A failed init step: its 1-based index, exit code and the tail of its output, for the caller to act on. */
function stepFailed(
  template: string,
  step: number,
  of: number,
  command: string,
  r: { exitCode: number; timedOut?: boolean; stdout: Buffer; stderr: Buffer },
  timeoutSeconds: number,
): MitosError {
  const timedOut = r.timedOut ? ` (killed after init_timeout_seconds=${timeoutSeconds})` : "";
  const stderr = r.stderr.toString().slice(-2000);
  return new MitosError(
    "invalid_input",
    `template init step ${step} of ${of} failed with exit ${r.exitCode}${timedOut}: ${command}`,
    {
      remediation: r.timedOut
        ? "Raise init_timeout_seconds, or make the step faster."
        : "Fix the init command; its output is in cause (steps before it are kept in the step cache).",
      cause: `${r.stdout.toString().slice(-2000)}${stderr}`,
      context: { template, step, of, exit_code: r.exitCode, command, stderr },
    },
  );
}

/** What a template built from an OCI image records: the pinned reference and its sandboxes' defaults. */
function ociFields(root: OciRoot, owner: { uid: number; gid: number } | undefined): Partial<TemplateRecord> {
  const defaults: TemplateDefaults = {
    env: root.config.env,
    ...(root.config.workdir ? { cwd: root.config.workdir } : {}),
    ...(owner ?? {}),
  };
  return { image: { reference: root.reference, digest: root.digest }, defaults };
}

/** An image's USER (`name`, `uid`, `name:group`, `uid:gid`) as numbers, looked up in the booted image. */
async function imageUser(vm: Vm, user: string, image: string): Promise<{ uid: number; gid: number }> {
  const [u = "", g] = user.split(":");
  const lookup = async (args: string[]) => {
    const r = await vm.agent.exec({ args: ["id", ...args], timeoutMs: 10_000 }).result;
    const n = Number(r.stdout.toString().trim());
    if (r.exitCode !== 0 || !Number.isInteger(n)) {
      throw new MitosError("invalid_input", `${image}: USER ${user} is not a user of the image`, {
        remediation: "Use a USER the image's /etc/passwd names, or a numeric uid:gid.",
        cause: r.stderr.toString().slice(-500),
      });
    }
    return n;
  };
  const uid = /^\d+$/.test(u) ? Number(u) : await lookup(["-u", u]);
  const gid =
    g === undefined
      ? /^\d+$/.test(u)
        ? uid
        : await lookup(["-g", u])
      : /^\d+$/.test(g)
        ? Number(g)
        : await lookup(["-g", g]);
  return { uid, gid };
}
