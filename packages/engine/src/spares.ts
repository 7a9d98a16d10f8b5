// Spare VMs for the next live fork: QEMU processes already started and
// waiting for a device state, their guest RAM mapped privately from one
// still-empty file. A fork captures its source straight into that file and
// loads the spares, so the children skip QEMU's start-up; the next
// generation (new file, new spares) is started in the background.
//
// Why this is sound: until `migrate-incoming`, QEMU does not touch guest RAM
// (it skips loading ROMs and the kernel while it waits for an incoming
// migration), and pages of a private file mapping that were never touched
// read the file as it is when they are first touched. Each spare is checked
// for an untouched mapping before use; one that fails the check is dropped.
//
// A generation has as many spares as the last fork had children (up to
// `size`), while the host's memory allows (an idle spare holds ~16 MiB, no
// guest pages). Spares start at a low priority: the children of the fork
// before are still running their first commands then; a fork that takes
// them sets them back to normal.

import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { punchHoles } from "./base-file.js";
import type { PrefilledBase } from "./capture-mapping.js";
import type { SharedGroup } from "./confine.js";
import type { MachineSpec, Vm } from "./vm.js";

/**
 * Spares at most, by default: after a fork of n ≤ this many children, the
 * next fork of up to n loads every child into a spare that is up, instead of
 * starting QEMUs (bench/results 2026-12-07-spares: fork(8) with 8 spares
 * against 4).
 */
export const DEFAULT_SPARE_VMS = 16;

export interface SpareOptions {
  /** Spares kept ready (0 turns them off). */
  size: number;
  shmDir: string;
  /** Drop the spares after this long without a fork (ms). */
  idleMs: number;
  /** How many more spares the host's memory allows now (unset: no bound). */
  room?: () => number;
  /** Starts one spare VM mapping `ramFile`, in the base's group (at a low priority, if it can be set back). */
  spawn: (machine: MachineSpec, ramFile: string, group: SharedGroup | undefined) => Promise<Vm>;
  /** A new group for a base, and giving a file to it (confine.ts). */
  group: () => SharedGroup | undefined;
  share: (file: string, group: SharedGroup | undefined) => void;
  onError?: (err: Error) => void;
}

interface Generation {
  machine: MachineSpec;
  ramFile: string;
  /** The base's group; its first hold passes to the fork that takes the generation. */
  group: SharedGroup | undefined;
  ready: Vm[];
  starting: number;
  /** Taken by a fork: late spares are dropped. */
  taken: boolean;
  /** A base being copied into ramFile ahead of the next fork (undefined when it failed). */
  prefill: Promise<PrefilledBase | undefined> | undefined;
}

/** A base to copy into a new generation's file, and when to let it go. */
export interface Prefill {
  copy: (ramFile: string) => Promise<PrefilledBase>;
  until: Promise<unknown>;
}

/** What a fork gets from take(). */
export interface TakenSpares {
  ramFile: string;
  vms: Vm[];
  group: SharedGroup | undefined;
  /** The base ramFile holds (or will when this settles), if one was copied ahead; the taker closes its fd. */
  prefill: Promise<PrefilledBase | undefined> | undefined;
}

export class SpareVms {
  private gen: Generation | undefined;
  private readonly inflight = new Set<Promise<void>>();
  private idleTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Spares per generation: the last fork's count (a fork(1) workload keeps one), at most `size`. */
  private want = 1;

  constructor(private readonly opts: SpareOptions) {}

  /** The empty RAM file the current spares map (nothing in it until a fork captures into it). */
  get ramFile(): string | undefined {
    return this.gen?.ramFile;
  }

  /** QEMU pids of the spares ready now. */
  get pids(): number[] {
    return (this.gen?.ready ?? []).map((v) => v.pid);
  }

  /**
   * Up to `n` spares started for `machine` and the empty RAM file they map, which the
   * caller must fill (capture) before loading them; or undefined when none are ready.
   * The caller primes the next generation once its fork is done (spares starting
   * during a fork would take the CPU it needs).
   */
  take(machine: MachineSpec, n: number): TakenSpares | undefined {
    this.want = Math.max(1, Math.min(this.opts.size, n));
    const g = this.gen;
    let out: TakenSpares | undefined;
    if (g && sameMachine(g.machine, machine)) {
      const vms = g.ready.filter((v) => v.running && !v.ramTouched());
      for (const v of g.ready) if (!vms.includes(v)) void v.destroy();
      if (vms.length > 0) {
        g.taken = true;
        g.ready.splice(0); // the fork owns them now (and their exits)
        // Back to normal priority; one that cannot be set back would be a slow child: dropped.
        const use: Vm[] = [];
        for (const v of vms.slice(0, n)) {
          if (v.renice()) use.push(v);
          else void v.destroy();
        }
        for (const v of vms.slice(n)) void v.destroy();
        out = { ramFile: g.ramFile, vms: use, group: g.group, prefill: handOver(g) };
        this.gen = undefined;
      }
    }
    return out;
  }

  /**
   * Starts a generation for `machine` (replacing one for another machine) and
   * fills it. With `prefill` (capture-mapping's prefillBase for the VM most
   * likely forked next, and that VM's exit), a new generation's file first
   * gets that base, then its spares start: QEMU must not see the file while
   * the copy truncates and grows it.
   */
  prime(machine: MachineSpec, prefill?: Prefill): void {
    if (this.closed || this.opts.size <= 0) return;
    this.armIdle();
    if (this.gen && !sameMachine(this.gen.machine, machine)) this.drop();
    if (!this.gen) {
      const ramFile = path.join(this.opts.shmDir, `mitos-next-${randomBytes(6).toString("hex")}.ram`);
      const fd = fs.openSync(ramFile, "wx", 0o600);
      try {
        fs.ftruncateSync(fd, machine.memMiB * 1024 * 1024);
      } finally {
        fs.closeSync(fd);
      }
      const group = this.opts.group();
      this.opts.share(ramFile, group);
      this.gen = { machine, ramFile, group, ready: [], starting: 0, taken: false, prefill: undefined };
      if (prefill) this.prefill(this.gen, prefill);
    }
    const g = this.gen;
    let room = this.opts.room?.() ?? Number.POSITIVE_INFINITY;
    while (g.ready.length + g.starting < this.want && room-- > 0) {
      g.starting++;
      const p: Promise<void> = (g.prefill ?? Promise.resolve())
        .then(() => this.opts.spawn(machine, g.ramFile, g.group))
        .then((vm) => {
          if (g.taken || this.gen !== g || this.closed) return void vm.destroy();
          g.ready.push(vm);
          vm.exited.then(() => {
            const i = g.ready.indexOf(vm);
            if (i < 0) return; // taken: its fork (or its sandbox) handles the exit
            // Died while waiting (killed from outside): its runtime dir goes with it.
            g.ready.splice(i, 1);
            void vm.destroy();
            this.dropIfEmpty(g);
          });
        })
        .catch((err: Error) => this.opts.onError?.(err))
        .finally(() => {
          g.starting--;
          this.inflight.delete(p);
          this.dropIfEmpty(g);
        });
      this.inflight.add(p);
    }
  }

  private prefill(g: Generation, { copy, until }: Prefill): void {
    const p = copy(g.ramFile).catch((err: Error) => {
      this.opts.onError?.(new Error(`copying a base ahead of the next fork: ${err.message}`));
      return undefined;
    });
    g.prefill = p;
    // Its VM gone, nobody forks it: the base is let go once the copy ends (a fork, which waits
    // for that, copies its own source's base over the file).
    void until.then(() => {
      if (g.taken || g.prefill !== p) return;
      // The copy's pages go back too; holes, not a truncation: spares may be starting on the file.
      g.prefill = releasePrefill(p)
        .then(() => punchHoles(g.ramFile))
        .catch(() => {}) // the file went with a dropped generation
        .then(() => undefined);
    });
  }

  /**
   * A generation left without spares (they died or failed to start) goes
   * with its file: no journaled VM names the file any more, and the next
   * fork primes a new one.
   */
  private dropIfEmpty(g: Generation): void {
    if (this.gen === g && g.ready.length === 0 && g.starting === 0) this.drop();
  }

  /** A generation's file is the caller's once taken; otherwise it goes with its spares. */
  private drop(): void {
    const g = this.gen;
    if (!g) return;
    this.gen = undefined;
    for (const v of g.ready.splice(0)) void v.destroy();
    fs.rmSync(g.ramFile, { force: true });
    g.group?.release();
    void releasePrefill(handOver(g));
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.drop(), this.opts.idleMs);
    this.idleTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    await Promise.allSettled([...this.inflight]);
    const g = this.gen;
    this.gen = undefined;
    if (g) {
      await Promise.all(g.ready.splice(0).map((v) => v.destroy()));
      fs.rmSync(g.ramFile, { force: true });
      g.group?.release();
      await releasePrefill(handOver(g));
    }
  }
}

/** The generation's copy ahead, now the caller's to release (once: its fd number may be reused after). */
function handOver(g: Generation): Promise<PrefilledBase | undefined> | undefined {
  const p = g.prefill;
  g.prefill = undefined;
  return p;
}

/** Lets go of a prefilled base (its fd pins it in memory). */
async function releasePrefill(p: Promise<PrefilledBase | undefined> | undefined): Promise<void> {
  const got = await p;
  if (got) fs.closeSync(got.fd);
}

function sameMachine(a: MachineSpec, b: MachineSpec): boolean {
  return (
    a.memMiB === b.memMiB &&
    a.vcpus === b.vcpus &&
    a.accel === b.accel &&
    a.pit === b.pit &&
    a.images.kernel === b.images.kernel &&
    a.images.initrd === b.images.initrd &&
    a.images.rootfs === b.images.rootfs
  );
}
