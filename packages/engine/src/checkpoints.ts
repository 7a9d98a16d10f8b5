// Checkpoints as sandboxes meet them: take one of a running sandbox, start
// sandboxes from one any time later, hibernate (a hidden checkpoint, the VM
// stopped) and wake. The store itself is checkpoint-store.ts; a checkpoint's
// RAM is materialized in the shm dir once and shared by every restore.

import fs from "node:fs";
import path from "node:path";
import type { CheckpointManifest } from "./checkpoint-store.js";
import type { SharedGroup } from "./confine.js";
import { applyNetwork, type EngineContext, randomHex } from "./context.js";
import { MitosError, noCheckpoint, shmSpaceRemediation } from "./errors.js";
import { activateAll, captureRunning, compactLater, restoreAll } from "./fork.js";
import type { Sandbox, SandboxInfo, SandboxTable } from "./lifecycle.js";
import { DEFAULT_POLICY } from "./network/policy.js";
import type { Snapshot, Vm } from "./vm.js";

/** Checkpoint bases kept materialized in the shm dir at once. */
const CHECKPOINT_BASES = 4;

interface CheckpointBase {
  ramFile: string;
  stateFile: string;
  group: SharedGroup | undefined;
  /** Its workspace disk, materialized once as a frozen layer (held as cp:<id>). */
  disk: string[] | undefined;
}

/** Sandboxes from a checkpoint: how many, their ids, deadline, env, and whose they are (SandboxInfo.owner). */
export interface StartOptions {
  count?: number;
  ids?: string[];
  timeoutSeconds?: number;
  env?: Record<string, string>;
  owner?: string;
}

export class Checkpoints {
  /** Bases materialized in the shm dir, most recently used last. */
  private readonly bases = new Map<string, Promise<CheckpointBase>>();
  /** Background compactions of disk chains, awaited by close(). */
  private readonly background = new Set<Promise<void>>();

  constructor(
    private readonly ctx: EngineContext,
    private readonly table: SandboxTable,
    /** Checkpoints kept per sandbox: the oldest beyond it are deleted after each new one (undefined: all). */
    private readonly retention?: number,
  ) {
    if (retention !== undefined && (!Number.isInteger(retention) || retention < 1)) {
      throw new MitosError("invalid_input", `checkpoint_retention must be a positive whole number, got ${retention}`, {
        remediation: "Give how many checkpoints to keep per sandbox (e.g. 5), or leave it unset to keep all.",
      });
    }
  }

  /**
   * Saves a running sandbox to the on-disk store: one short pause for the
   * capture (as a fork's), then the RAM and device state are chunked,
   * compressed and written while the sandbox runs on.
   */
  async checkpoint(id: string, opts: { name?: string; hidden?: boolean } = {}): Promise<CheckpointManifest> {
    const { ctx } = this;
    const source = this.table.running(id);
    if (opts.name !== undefined && (opts.name.length > 128 || /[\0\n]/.test(opts.name))) {
      throw new MitosError("invalid_input", "a checkpoint name is at most 128 characters, on one line", {
        remediation: 'Pass a short label, e.g. "after-setup".',
      });
    }
    const key = randomHex(6);
    const ramFile = path.join(ctx.shmDir, `mitos-cp-${key}.ram`);
    const stateFile = path.join(ctx.dataDir, "bases", `cp-${key}.state`);
    const diskFile = path.join(ctx.dataDir, "bases", `cp-${key}.disk`);
    const vm = source.vm;
    ctx.journal.vmFiles(vm.id, [ramFile, stateFile, diskFile], true);
    const started = Date.now();
    try {
      const { tPaused, disk } = await captureRunning(ctx, source, ramFile, stateFile, "checkpoint");
      const tCaptured = Date.now();
      // The frozen disk layer is read while the sandbox runs on in its new one.
      const extents = disk ? await ctx.disks.flatten(disk, diskFile) : undefined;
      const m = await ctx.checkpoints.write(
        ramFile,
        stateFile,
        {
          name: opts.name ?? null,
          sandboxId: source.id,
          templateId: source.templateId,
          machine: vm.machine,
          env: source.env,
          ...(opts.hidden ? { hidden: true } : {}),
          ...(source.owner !== undefined ? { owner: source.owner } : {}),
        },
        extents ? { file: diskFile, extents } : undefined,
      );
      compactLater(ctx, vm, this.background);
      if (!opts.hidden) this.retain(source.id);
      ctx.log("checkpoint", {
        sandbox: id,
        checkpoint: m.id,
        chunks: m.ram.length,
        bytes: m.bytes,
        addedBytes: m.addedBytes,
        pausedMs: tCaptured - tPaused,
        writeMs: Date.now() - tCaptured,
        ms: Date.now() - started,
        store: ctx.checkpoints.dir,
      });
      return m;
    } finally {
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      fs.rmSync(diskFile, { force: true });
      ctx.journal.vmFiles(vm.id, [ramFile, stateFile, diskFile], false);
    }
  }

  /** New sandboxes restored from a checkpoint (any time later, after restarts): `count` of them share one base. */
  async start(checkpointId: string, opts: StartOptions = {}): Promise<{ children: SandboxInfo[]; forkTimeMs: number }> {
    const ctx = this.ctx;
    const table = this.table;
    const m = this.visible(checkpointId);
    const count = opts.count ?? opts.ids?.length ?? 1;
    table.checkCount(count);
    table.admit(count, m.machine.memMiB, m.templateId, false, opts.owner);
    const missing = Object.values(m.machine.images).filter((f) => typeof f === "string" && !fs.existsSync(f));
    if (missing.length > 0) {
      throw new MitosError("unavailable", `the guest images checkpoint ${m.id} was taken with are gone`, {
        remediation: "Rebuild the images it was taken with (same recipe), or take a new checkpoint.",
        context: { checkpoint: m.id, missing },
      });
    }
    const ids = table.newIds(count, opts.ids);
    const timeout = table.checkTimeout(opts.timeoutSeconds, opts.owner);
    const started = Date.now();
    const env = { ...m.env, ...(opts.env ?? {}) };
    // A networked checkpoint's sandboxes start with its template's policy (deny all when it has none).
    const network = m.machine.network
      ? (ctx.journal.templates[m.templateId]?.spec?.network ?? DEFAULT_POLICY)
      : undefined;
    const placeholders = ids.map((id) =>
      table.reserve(id, {
        templateId: m.templateId,
        parentId: null,
        timeoutSeconds: timeout,
        env,
        memMiB: m.machine.memMiB,
        network,
        owner: opts.owner,
      }),
    );
    try {
      const results = await this.restore(m, count);
      const { children, errors } = await activateAll(ctx, table, results, placeholders, started);
      if (children.length === 0) {
        throw new MitosError("fork_failed", `no sandbox could start from checkpoint ${m.id}: ${errors[0]?.message}`, {
          remediation: "Retry; if it repeats, check host memory and /dev/shm space.",
        });
      }
      const forkTimeMs = Date.now() - started;
      ctx.log("restored from checkpoint", { checkpoint: m.id, count, ok: children.length, ms: forkTimeMs });
      return { children, forkTimeMs };
    } catch (err) {
      for (const p of placeholders) table.unreserve(p);
      throw err;
    }
  }

  /** Frees a running sandbox's RAM: saved to a hidden checkpoint, its VM stopped. */
  async hibernate(s: Sandbox): Promise<void> {
    const m = await this.checkpoint(s.id, { name: `hibernation of ${s.id}`, hidden: true });
    const vm = s.vm;
    s.hibernation = m.id;
    s.state = "paused";
    s.vm = undefined;
    this.table.persist(s);
    if (vm) {
      await vm.destroy();
      this.ctx.journal.deleteVm(vm.id);
    }
    this.ctx.log("hibernated", { sandbox: s.id, checkpoint: m.id, bytes: m.bytes });
  }

  /** Restores a hibernated sandbox under its own id; its checkpoint goes once it runs. */
  async wake(s: Sandbox): Promise<void> {
    const cp = s.hibernation;
    if (cp === undefined) throw new Error(`sandbox ${s.id} is not hibernated`);
    const started = Date.now();
    const [r] = await this.restore(this.ctx.checkpoints.get(cp), 1);
    if (!r || r.status === "rejected") throw r?.reason ?? new Error("restore failed");
    try {
      await applyNetwork(this.ctx, r.value, s.network);
      await r.value.activate(s.id);
    } catch (err) {
      await r.value.destroy();
      throw err;
    }
    s.hibernation = undefined;
    this.table.adopt(s, r.value, s.forkTimeMs);
    this.delete(cp);
    this.ctx.log("resumed from hibernation", { sandbox: s.id, checkpoint: cp, ms: Date.now() - started });
  }

  /** Deletes a sandbox's oldest checkpoints beyond the retention count. */
  private retain(sandboxId: string): void {
    if (this.retention === undefined) return;
    const mine = this.list().filter((c) => c.sandboxId === sandboxId);
    for (const old of mine.slice(0, Math.max(0, mine.length - this.retention))) {
      this.delete(old.id);
      this.ctx.log("checkpoint deleted by retention", {
        checkpoint: old.id,
        sandbox: sandboxId,
        keep: this.retention,
      });
    }
  }

  /** The checkpoints users see: a hibernated sandbox's own is not one of them. */
  list(): CheckpointManifest[] {
    return this.ctx.checkpoints.list().filter((c) => !c.hidden);
  }

  /** A checkpoint users may name (not_found for a hibernated sandbox's). */
  visible(id: string): CheckpointManifest {
    const m = this.ctx.checkpoints.get(id);
    if (m.hidden) {
      throw noCheckpoint(id);
    }
    return m;
  }

  delete(id: string): void {
    this.ctx.checkpoints.delete(id);
    void this.dropBase(id);
  }

  /** Unlinks every cached base (close). */
  async close(): Promise<void> {
    await Promise.allSettled([...this.background]);
    await Promise.all([...this.bases.keys()].map((id) => this.dropBase(id)));
  }

  /** `count` paused VMs restored from a checkpoint's shared base. */
  private async restore(m: CheckpointManifest, count: number): Promise<PromiseSettledResult<Vm>[]> {
    const base = await this.base(m);
    const snapshot: Snapshot = {
      machine: m.machine,
      ramFile: base.ramFile,
      stateFile: base.stateFile,
      ignoreShared: false,
    };
    return restoreAll(this.ctx, snapshot, count, base.group, [], base.disk);
  }

  /** A checkpoint's base in the shm dir, materialized once and shared by every restore; the least recently used go first. */
  private base(m: CheckpointManifest): Promise<CheckpointBase> {
    const { ctx } = this;
    let base = this.bases.get(m.id);
    if (base) {
      // Most recently used last.
      this.bases.delete(m.id);
      this.bases.set(m.id, base);
      return base;
    }
    base = (async () => {
      const need = m.ram.length * m.chunkBytes;
      const shm = fs.statfsSync(ctx.shmDir);
      if (shm.bavail * shm.bsize < need) {
        throw new MitosError(
          "unavailable",
          `not enough space in ${ctx.shmDir} for checkpoint ${m.id}'s RAM (${need >> 20} MiB)`,
          { remediation: shmSpaceRemediation(ctx.shmDir), context: { shm_dir: ctx.shmDir, checkpoint: m.id } },
        );
      }
      const ramFile = path.join(ctx.shmDir, `mitos-cpbase-${m.id}.ram`);
      const stateFile = path.join(ctx.dataDir, "bases", `${m.id}.state`);
      await ctx.checkpoints.materialize(m, ramFile, stateFile);
      const group = ctx.confinement.group();
      ctx.confinement.share(ramFile, group);
      let disk: string[] | undefined;
      if (m.machine.diskMib !== undefined) {
        const file = path.join(ctx.disks.dir, `cp-${m.id}-${randomHex(3)}.raw`);
        ctx.disks.hold(`cp:${m.id}`, [file]);
        await ctx.checkpoints.materializeDisk(m, file, m.machine.diskMib * 1024 * 1024);
        ctx.disks.freeze(file, group);
        disk = [file];
      }
      return { ramFile, stateFile, group, disk };
    })();
    base.catch(() => {
      this.bases.delete(m.id);
      ctx.disks.release(`cp:${m.id}`);
    });
    this.bases.set(m.id, base);
    for (const id of [...this.bases.keys()].slice(0, -CHECKPOINT_BASES)) void this.dropBase(id);
    return base;
  }

  /** Unlinks a cached base: VMs restored from it keep its pages until they exit. */
  private async dropBase(id: string): Promise<void> {
    const base = this.bases.get(id);
    if (!base) return;
    this.bases.delete(id);
    const b = await base.catch(() => undefined);
    if (!b) return;
    fs.rmSync(b.ramFile, { force: true });
    fs.rmSync(b.stateFile, { force: true });
    // Its disk stays while VMs restored from it have it in their chain.
    this.ctx.disks.release(`cp:${id}`);
    b.group?.release();
  }
}
