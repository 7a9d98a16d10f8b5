// Live fork: pause the source once, capture its RAM into a new base and its
// device state, resume it, and restore the children from the base in
// parallel; they share its pages copy-on-write. The capture and the parallel
// restore are also what checkpoints use (checkpoints.ts).

import fs from "node:fs";
import path from "node:path";
import { baseFileOf, digHoles } from "./base-file.js";
import { type CopiedBase, copyBase, finishCapture, type PrefilledBase, prefillBase } from "./capture-mapping.js";
import type { SharedGroup } from "./confine.js";
import { applyNetwork, type EngineContext, journalUntilExit, newVmId, randomHex, withResources } from "./context.js";
import { MAX_CHAIN } from "./disk.js";
import { MitosError } from "./errors.js";
import type { RunningSandbox, Sandbox, SandboxInfo, SandboxTable } from "./lifecycle.js";
import { readMemInfo } from "./memory-use.js";
import type { Pin } from "./network/ruleset.js";
import { captureLive, noShmSpace } from "./snapshot.js";
import { SpareVms } from "./spares.js";
import { type MachineSpec, type Snapshot, Vm } from "./vm.js";

/** What an idle spare QEMU holds, with a margin (measured: 15.9 MiB private, bench/results 2026-12-07-spares). */
const SPARE_MIB = 24;
/** Spares start at this niceness; only root can set a VM back (Vm.renice), so only root's spares are niced. */
const SPARE_NICE = process.getuid?.() === 0 ? 19 : 0;

export interface ForkOptions {
  count?: number;
  ids?: string[];
  timeoutSeconds?: number;
}

export class Forks {
  private readonly spares: SpareVms;
  /** Background work (giving base pages back) that close() waits for. */
  private readonly background = new Set<Promise<void>>();
  private readonly reclaimTimers = new Map<string, NodeJS.Timeout>();
  private closed = false;
  /** The source of the last fork: a fork of one of its children means forks go down a chain (best-of-N, tree search). */
  private lastSource: string | undefined;

  constructor(
    private readonly ctx: EngineContext,
    private readonly table: SandboxTable,
    spareVms: number,
    /** Copy the likely next source's base into the spares' file between forks (capture-mapping.ts prefillBase). */
    private readonly prefillSpares = true,
    /** The niceness spares start at (0: normal). */
    private readonly spareNice = SPARE_NICE,
  ) {
    this.spares = new SpareVms({
      size: spareVms,
      shmDir: ctx.shmDir,
      idleMs: ctx.poolIdleMs,
      // Spares never take the host below the memory floor admission keeps.
      room: () => Math.floor((readMemInfo().availableBytes / 2 ** 20 - ctx.caps.limits.memoryFloorMib) / SPARE_MIB),
      spawn: (machine, ramFile, group) => this.spawnSpare(machine, ramFile, group),
      group: () => ctx.confinement.group(),
      share: (file, group) => ctx.confinement.share(file, group),
      onError: (err) => ctx.log("spare VM failed to start", { error: err.message }),
    });
  }

  /** QEMU processes started and waiting for the next fork (spares.ts). */
  spareStatus(): { ready: number; pids: number[]; ramFile: string | undefined } {
    const pids = this.spares.pids;
    return { ready: pids.length, pids, ramFile: this.spares.ramFile };
  }

  private async spawnSpare(machine: MachineSpec, ramFile: string, group: SharedGroup | undefined): Promise<Vm> {
    const runAs = this.ctx.confinement.runAs(group, this.ctx.accel);
    const vm = await Vm.incoming({
      id: newVmId(),
      dataDir: this.ctx.dataDir,
      machine,
      ramFile,
      runAs,
      ...(this.spareNice === 0 ? {} : { nice: this.spareNice }),
      ...this.ctx.agentOpts,
    });
    // The generation's base file is journaled with it (a restart removes it).
    journalUntilExit(this.ctx, vm, [ramFile]);
    return vm;
  }

  /** Forks a running sandbox into `count` children; the whole fork fits the caps or nothing happens. */
  async fork(sourceId: string, opts: ForkOptions = {}): Promise<{ children: SandboxInfo[]; forkTimeMs: number }> {
    const ctx = this.ctx;
    const table = this.table;
    const source = table.running(sourceId);
    const count = opts.count ?? opts.ids?.length ?? 1;
    table.checkCount(count);
    // The whole fork fits, or nothing is paused, captured or reserved.
    table.admit(count, source.memMiB, source.templateId, false, source.owner);
    const ids = table.newIds(count, opts.ids);
    const timeout = table.checkTimeout(opts.timeoutSeconds, source.owner);
    const started = Date.now();
    const key = randomHex(6);
    // Spares already wait on a base file (empty, or holding a base copied ahead): capture into it and load them.
    // (Not with a workspace disk: a child's disk layer is known only after the capture.)
    const hasDisk = source.vm.disk !== undefined;
    // Nor with a NIC: a spare would need its network slot from before the fork.
    const noSpares = hasDisk || Boolean(source.vm.machine.network);
    const spare = noSpares ? undefined : this.spares.take(source.vm.machine, count);
    // Forking a child of the last fork's source: the next fork is likely of a child of this one.
    const chain = source.parentId !== undefined && source.parentId === this.lastSource;
    this.lastSource = source.id;
    const ramFile = spare?.ramFile ?? path.join(ctx.shmDir, `mitos-base-${key}.ram`);
    const stateFile = path.join(ctx.dataDir, "bases", `${key}.state`);
    // The base's own group: only this fork's children can open it (the spares' one when there are spares).
    const baseGroup = spare ? spare.group : ctx.confinement.group();
    // Journal the base under the source so a crash mid-fork still reaps it.
    const sourceVm = source.vm;
    ctx.journal.vmFiles(sourceVm.id, [ramFile, stateFile], true);
    const placeholders = ids.map((id) =>
      table.reserve(id, {
        templateId: source.templateId,
        parentId: source.id,
        timeoutSeconds: timeout,
        env: source.env,
        memMiB: source.memMiB,
        network: source.network,
        owner: source.owner,
      }),
    );
    // Children get the parent's policy and its resolver pins (apps keep the addresses they resolved).
    const pins = ctx.network.pinsOf(sourceVm.id);
    let captured = false;
    let captureVia: CaptureVia | undefined;
    let prefilled: PrefilledBase | undefined;
    let nextSource: Vm | undefined;
    try {
      // A base copy into the spares' file still running finishes first (it is most of the copy this fork needs).
      prefilled = await spare?.prefill;
      const { tPaused, disk, via } = await captureRunning(ctx, source, ramFile, stateFile, "fork", prefilled);
      captureVia = via;
      const tCaptured = Date.now();
      captured = true;
      const snapshot: Snapshot = { machine: sourceVm.machine, ramFile, stateFile, ignoreShared: false };
      ctx.confinement.share(ramFile, baseGroup);
      const spares = spare?.vms.splice(0) ?? [];
      const results = await restoreAll(ctx, snapshot, placeholders.length, baseGroup, spares, disk);
      // Every child has mapped the base (or failed): the name can go; the
      // pages live on while any child maps them.
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      const tRestored = Date.now();
      const { children, errors } = await activateAll(ctx, table, results, placeholders, started, pins);
      if (errors.length === count) {
        throw new MitosError("fork_failed", `all ${count} children failed to start: ${errors[0]?.message}`, {
          remediation: "The source sandbox is unchanged. Retry; if it repeats, check host memory and /dev/shm space.",
        });
      }
      nextSource = chain
        ? results.flatMap((r) => (r.status === "fulfilled" && r.value.running ? [r.value] : []))[0]
        : sourceVm;
      const forkTimeMs = Date.now() - started;
      // The source's chain grew by a layer; a child's is the source's plus its own, and is
      // compacted when it is forked in turn.
      compactLater(ctx, sourceVm, this.background);
      ctx.log("fork", {
        source: source.id,
        count,
        ok: children.length,
        ...(errors.length > 0 ? { failed: errors.length, error: errors[0]?.message } : {}),
        ms: forkTimeMs,
        captureVia,
        pauseMs: tPaused - started,
        captureMs: tCaptured - tPaused,
        restoreMs: tRestored - tCaptured,
        activateMs: Date.now() - tRestored,
      });
      return { children, forkTimeMs };
    } catch (err) {
      for (const p of placeholders) table.unreserve(p);
      throw err instanceof MitosError
        ? err
        : new MitosError("fork_failed", `fork of ${source.id} failed: ${(err as Error).message}`, {
            remediation: "The source sandbox was resumed and is unchanged. Retry the fork.",
          });
    } finally {
      for (const vm of spare?.vms ?? []) void vm.destroy(); // the fork failed before loading them
      if (prefilled) fs.closeSync(prefilled.fd); // this fork owned it (SpareVms.take handed it over)
      // Spares for the next fork start a moment later, not while the children run their first commands;
      // the base the next fork most likely copies goes into their file meanwhile.
      const machine = sourceVm.machine;
      const memBytes = machine.memMiB * 1024 * 1024;
      if (!noSpares)
        setTimeout(() => {
          const next = nextSource;
          const prefill =
            next?.running && this.prefillSpares && ctx.forkCapture === "mapping"
              ? { copy: (file: string) => prefillBase(next.pid, memBytes, file), until: next.exited }
              : undefined;
          this.spares.prime(machine, prefill);
        }, 1000).unref();
      // Only QEMU's migration faults the source's base in; a capture from the mapping reads what exists.
      if (captured && captureVia === "migration") this.reclaimBase(sourceVm);
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      baseGroup?.release();
      ctx.journal.vmFiles(sourceVm.id, [ramFile, stateFile], false);
    }
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
        .catch((err: Error) => this.ctx.log("could not give back base pages", { vm: vm.id, error: err.message }))
        .finally(() => this.background.delete(p));
      this.background.add(p);
    }, this.ctx.reclaimDelayMs);
    timer.unref();
    this.reclaimTimers.set(vm.id, timer);
  }

  /** Stops the spares and waits for background work. */
  async close(): Promise<void> {
    this.closed = true;
    await this.spares.close();
    for (const t of this.reclaimTimers.values()) clearTimeout(t);
    await Promise.allSettled([...this.background]);
  }
}

/**
 * Pauses a running sandbox only for a consistent capture of its RAM and
 * device state, then resumes it (with or without the public API's
 * pause_source: the source keeps running). With a workspace disk, its
 * writable layer is frozen at the same instant and the source goes on in a
 * new layer over it. Returns when it was paused, and the frozen chain.
 */
export async function captureRunning(
  ctx: EngineContext,
  source: RunningSandbox,
  ramFile: string,
  stateFile: string,
  kind: "fork" | "checkpoint",
  prefilled?: PrefilledBase,
): Promise<{ tPaused: number; disk: string[] | undefined; via: CaptureVia }> {
  const wasState = source.state;
  const vm = source.vm;
  // QEMU takes no live snapshot while a compaction streams: let it finish.
  await vm.diskJob;
  // Made before the pause (its content matters only from the switch on), to keep the pause short.
  const before = vm.disk;
  const memBytes = vm.machine.memMiB * 1024 * 1024;
  // From the mapping: the base is copied before the pause (it never changes), so the pause only covers
  // the pages the guest made its own and the device state.
  const prefix = ctx.forkCapture === "mapping" ? ctx.devicePrefixes.get(vm.machine) : undefined;
  const copied = prefix ? await copyBase(vm.pid, memBytes, ramFile, prefilled).catch((err: Error) => err) : undefined;
  const next = before ? await ctx.disks.overlay(before, vm.runAs) : undefined;
  if (before && next) ctx.disks.hold(vm.id, [next, ...before]);
  let switched = false;
  source.state = "paused";
  try {
    await vm.pause();
    const tPaused = Date.now();
    await ctx.fault(`${kind}:paused`, vm);
    if (before && next) {
      // QEMU's stop drained and flushed the disk: the frozen layer matches the RAM captured next.
      await vm.switchDisk(next);
      switched = true;
      const group = ctx.confinement.group();
      ctx.disks.freeze(before[0] as string, group);
      group?.release();
      ctx.journal.vmDisk(vm.id, vm.disk as string[]);
    }
    const files = { ramFile, stateFile, memBytes };
    const via = await capture(ctx, vm, files, prefix && copied ? { prefix, copied } : undefined);
    await ctx.fault(`${kind}:captured`, vm);
    return { tPaused, disk: before, via };
  } catch (err) {
    if (!vm.running) throw sourceDied(source.id, err as Error, kind);
    throw err;
  } finally {
    if (before && !switched) {
      ctx.disks.hold(vm.id, before);
      ctx.disks.gc(); // the unused layer goes
    }
    await vm.resume().catch(() => {});
    // Unless the VM died meanwhile (its exit handler marked it failed).
    if (source.state === "paused") source.state = wasState;
  }
}

export type CaptureVia = "mapping" | "migration";

/**
 * Captures a paused VM's RAM and device state: from its RAM mapping when this
 * machine shape's device-state prefix is known and its base was copied
 * (capture-mapping.ts), else, or if that fails, through QEMU's migration,
 * which also teaches the prefix.
 */
async function capture(
  ctx: EngineContext,
  vm: Vm,
  files: { ramFile: string; stateFile: string; memBytes: number },
  mapping: { prefix: Buffer; copied: CopiedBase | Error } | undefined,
): Promise<CaptureVia> {
  if (mapping) {
    try {
      if (mapping.copied instanceof Error) throw mapping.copied;
      const stats = await finishCapture(vm, mapping.prefix, mapping.copied, files);
      ctx.log("captured from the RAM mapping", { vm: vm.id, ...roundMs(stats) });
      return "mapping";
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOSPC") throw noShmSpace(files.ramFile, err as Error);
      ctx.log("capture from the RAM mapping failed; capturing through migration", {
        vm: vm.id,
        error: (err as Error).message,
      });
    }
  }
  const stats = await captureLive(vm.qmp, vm.paths.migrationSocket, files, 120_000, vm.runAs);
  ctx.devicePrefixes.learn(vm.machine, files.stateFile, stats.deviceOffset);
  return "migration";
}

function roundMs<T extends object>(stats: T): T {
  return Object.fromEntries(
    Object.entries(stats).map(([k, v]) => [k, k.endsWith("Ms") ? Math.round(v as number) : v]),
  ) as T;
}

/**
 * Shortens a VM's disk chain in the background once forks have made it
 * longer than MAX_CHAIN (each fork adds a layer to the source and its
 * children); the layers it no longer needs go when no other VM holds them.
 */
export function compactLater(ctx: EngineContext, vm: Vm, background: Set<Promise<void>>): void {
  if (!vm.disk || vm.disk.length <= MAX_CHAIN) return;
  const p: Promise<void> = vm
    .compactDisk(600_000)
    .then((chain) => {
      if (!vm.running) return;
      ctx.disks.hold(vm.id, chain);
      ctx.journal.vmDisk(vm.id, chain);
      ctx.disks.gc(); // the layers it streamed from go unless another VM still reads them
      ctx.log("disk chain compacted", { vm: vm.id, layers: chain.length });
    })
    .catch((err: Error) => ctx.log("could not compact a disk chain", { vm: vm.id, error: err.message }))
    .finally(() => background.delete(p));
  background.add(p);
}

/** `count` paused VMs restored from one base (spares loaded first), at most restoreConcurrency at a time. */
export function restoreAll(
  ctx: EngineContext,
  snapshot: Snapshot,
  count: number,
  group: SharedGroup | undefined,
  spares: Vm[] = [],
  disk: string[] | undefined = undefined,
): Promise<PromiseSettledResult<Vm>[]> {
  return limitAll(
    ctx.restoreConcurrency,
    Array.from({ length: count }, (_, i) => spares[i]),
    async (vm) => {
      if (vm) {
        await vm.load(snapshot, { paused: true });
        return vm;
      }
      // Each child writes a layer of its own over the frozen disk.
      const runAs = ctx.confinement.runAs(group, ctx.accel);
      return withResources(ctx, { chain: disk, runAs, network: snapshot.machine.network }, (id, runAs, d, netns) =>
        Vm.restore({
          id,
          dataDir: ctx.dataDir,
          snapshot,
          paused: true,
          ...(runAs ? { runAs } : {}),
          ...(d ? { disk: d } : {}),
          ...(netns ? { netns } : {}),
          ...ctx.agentOpts,
        }),
      );
    },
  );
}

/** Activates restored VMs as the placeholders' sandboxes; failed ones are dropped and reported. */
export async function activateAll(
  ctx: EngineContext,
  table: SandboxTable,
  results: PromiseSettledResult<Vm>[],
  placeholders: Sandbox[],
  started: number,
  pins: Pin[] = [],
): Promise<{ children: SandboxInfo[]; errors: Error[] }> {
  const children: SandboxInfo[] = [];
  const errors: Error[] = [];
  // As many at a time as restores: a child's first run after `cont` is CPU-bound (under TCG it
  // translates the guest's code again), and 64 at once on a busy host all missed the agent's timeout.
  await limitAll(
    ctx.restoreConcurrency,
    results.map((r, i) => [r, i] as const),
    async ([r, i]) => {
      const p = placeholders[i] as Sandbox;
      if (r.status === "rejected") {
        table.unreserve(p);
        errors.push(r.reason as Error);
        return;
      }
      try {
        await ctx.fault("fork:child-restored", r.value);
        await applyNetwork(ctx, r.value, p.network, pins);
        await r.value.activate(p.id);
        children[i] = table.adopt(p, r.value, Date.now() - started);
      } catch (err) {
        table.unreserve(p);
        await r.value.destroy();
        ctx.journal.deleteVm(r.value.id);
        errors.push(err as Error);
      }
    },
  );
  return { children: children.filter(Boolean), errors };
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
