// What the engine's parts share: where files go, how QEMU runs, the journal,
// the caps and the hooks. Engine builds one; templates, lifecycle, fork,
// checkpoints and recovery each take it instead of reaching into Engine.

import { randomBytes } from "node:crypto";
import type { DeviceStatePrefixes } from "./capture-mapping.js";
import type { CheckpointStore } from "./checkpoint-store.js";
import type { Confinement, RunAs } from "./confine.js";
import type { Disks } from "./disk.js";
import type { PullAuth } from "./image/registries.js";
import type { Journal } from "./journal.js";
import type { SpendCaps } from "./limits.js";
import type { Network } from "./network/network.js";
import { DEFAULT_POLICY, type NetworkPolicy } from "./network/policy.js";
import type { Pin } from "./network/ruleset.js";
import type { Accel } from "./qemu/accel.js";
import type { Vm } from "./vm.js";

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

export type Log = (msg: string, fields?: Record<string, unknown>) => void;

export interface EngineContext {
  readonly dataDir: string;
  readonly shmDir: string;
  readonly imagesDir: string;
  readonly accel: Accel;
  readonly confinement: Confinement;
  readonly journal: Journal;
  readonly caps: SpendCaps;
  readonly checkpoints: CheckpointStore;
  /** Workspace disk layers (disk.ts). */
  readonly disks: Disks;
  /** Network slots, policies and the resolver (network/). */
  readonly network: Network;
  /** How OCI images are pulled (image/registries.ts). */
  readonly pull: PullAuth;
  readonly log: Log;
  readonly fault: (step: FaultStep, vm: Vm) => void | Promise<void>;
  /** Spread into every Vm launch. */
  readonly agentOpts: { agentTimeoutMs?: number };
  readonly poolTargets: Record<string, number>;
  readonly poolIdleMs: number;
  readonly restoreConcurrency: number;
  readonly reclaimDelayMs: number;
  /** How forks and checkpoints capture a running VM (decision 0022): from its RAM mapping where possible, or always through migration. */
  readonly forkCapture: "mapping" | "migration";
  /** Device-state prefixes per machine shape, learnt from migration captures (capture-mapping.ts). */
  readonly devicePrefixes: DeviceStatePrefixes;
}

/** `bytes` random bytes as hex: the unique part of VM ids, base names and sandbox ids. */
export function randomHex(bytes: number): string {
  return randomBytes(bytes).toString("hex");
}

/** A fresh VM id (VM ids name runtime dirs; sandbox ids are separate). */
export function newVmId(): string {
  return `vm-${randomHex(4)}`;
}

/** Journals a VM until its QEMU exits, also after close (a clean shutdown leaves a journal naming no VM). */
export function journalUntilExit(ctx: EngineContext, vm: Vm, files: string[] = []): void {
  ctx.journal.putVm({ vmId: vm.id, pid: vm.pid, dir: vm.dir, files });
  vm.exited
    .then(() => ctx.journal.deleteVm(vm.id))
    .catch((err: Error) => ctx.log("journal update failed", { vm: vm.id, error: err.message }));
}

/** What a VM needs on the host besides QEMU: a disk layer over `chain`, a network slot. */
export interface VmResources {
  chain: string[] | undefined;
  runAs: RunAs | undefined;
  /** The machine has a NIC: the VM launches in a slot of its own (policy: deny all until applyNetwork). */
  network?: boolean;
}

/**
 * Launches a VM with what its machine needs (withDisk), in a network slot
 * of its own when it has a NIC; the slot goes when the VM exits.
 */
export async function withResources(
  ctx: EngineContext,
  r: VmResources,
  launch: (
    vmId: string,
    runAs: RunAs | undefined,
    disk: string[] | undefined,
    netns: string | undefined,
  ) => Promise<Vm>,
): Promise<Vm> {
  if (!r.network) return withDisk(ctx, r.chain, r.runAs, (id, runAs, disk) => launch(id, runAs, disk, undefined));
  return withDisk(ctx, r.chain, r.runAs, async (id, runAs, disk) => {
    let slot: { netnsPath: string };
    try {
      slot = await ctx.network.attach(id, runAs);
    } catch (err) {
      runAs?.release();
      throw err;
    }
    try {
      const vm = await launch(id, runAs, disk, slot.netnsPath);
      vm.exited
        .then(() => ctx.network.detach(id))
        .catch((err: Error) => ctx.log("network: slot removal failed", { vm: id, error: err.message }));
      return vm;
    } catch (err) {
      await ctx.network.detach(id).catch(() => {});
      throw err;
    }
  });
}

/** Gives a networked VM its sandbox's policy (and a fork's inherited pins) before the guest runs as that sandbox. */
export async function applyNetwork(
  ctx: EngineContext,
  vm: Vm,
  policy: NetworkPolicy | undefined,
  pins: Pin[] = [],
): Promise<void> {
  if (!vm.machine.network) return;
  await ctx.network.setPolicy(vm.id, policy ?? DEFAULT_POLICY, pins);
}

/**
 * Launches a VM with a new writable disk layer over `chain` when its machine
 * has a workspace disk: the layer is made for the VM's uid, the VM runs with
 * the groups of the chain's frozen layers, and the chain is held until the
 * VM exits. Without a disk it just launches.
 */
export async function withDisk(
  ctx: EngineContext,
  chain: string[] | undefined,
  runAs: RunAs | undefined,
  launch: (vmId: string, runAs: RunAs | undefined, disk: string[] | undefined) => Promise<Vm>,
): Promise<Vm> {
  const vmId = newVmId();
  if (!chain) return launch(vmId, runAs, undefined);
  let disk: string[];
  try {
    disk = [await ctx.disks.overlay(chain, runAs), ...chain];
  } catch (err) {
    runAs?.release();
    throw err;
  }
  ctx.disks.hold(vmId, disk);
  try {
    const vm = await launch(vmId, ctx.disks.runAsFor(chain, runAs), disk);
    vm.exited.then(() => ctx.disks.release(vmId)).catch(() => {});
    return vm;
  } catch (err) {
    ctx.disks.release(vmId);
    throw err;
  }
}
