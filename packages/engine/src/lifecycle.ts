// The sandbox table: every sandbox from the moment its id is reserved until
// it is terminated, its deadline, its state and its journal record (so a
// restarted mitosd gets it back, recovery.ts).

import type { EngineContext } from "./context.js";
import { randomHex } from "./context.js";
import { MitosError, noSandbox } from "./errors.js";
import type { SandboxRecord } from "./journal.js";
import type { Usage } from "./limits.js";
import { MemoryMeter, type MeteredSandbox } from "./memory-use.js";
import type { NetworkPolicy } from "./network/policy.js";
import type { Accel } from "./qemu/accel.js";
import { ID_RE, type Vm } from "./vm.js";

export type SandboxState = "starting" | "ready" | "paused" | "terminated" | "failed";

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
  /** Its network policy; unset: no network device. */
  network?: NetworkPolicy;
  /** Who it belongs to (an opaque label the caller gives; forks inherit it). */
  owner?: string;
}

export interface Sandbox {
  id: string;
  templateId: string;
  parentId: string | null;
  state: SandboxState;
  /** Unset while starting and while hibernated. */
  vm: Vm | undefined;
  createdAt: Date;
  deadline: number;
  timer: NodeJS.Timeout | undefined;
  forkTimeMs: number;
  env: Record<string, string>;
  /** Nominal guest RAM, counted against max_guest_memory_mib. */
  memMiB: number;
  /** Hibernated: the checkpoint it was saved to; its VM is gone until resume. */
  hibernation?: string;
  /** Hibernated by the idle timer (idle.ts): the next runtime call wakes it. */
  idleHibernated?: boolean;
  /** Hibernated and being resumed: its memory counts again. */
  waking?: boolean;
  /** When an API call last touched it (unix ms), and the streams open to it now. */
  lastActive: number;
  streams: number;
  /** Network policy of a sandbox whose machine has a NIC. */
  network?: NetworkPolicy;
  /** Who it belongs to (SandboxInfo.owner). */
  owner?: string;
}

/** What a placeholder is made of (reserve). */
export interface SandboxInit {
  templateId: string;
  parentId: string | null;
  timeoutSeconds: number;
  env: Record<string, string>;
  memMiB: number;
  network?: NetworkPolicy | undefined;
  owner?: string | undefined;
}

/** A sandbox known to have a VM (checked by `running`). */
export type RunningSandbox = Sandbox & { vm: Vm };

const TOMBSTONES = 10_000;

export class SandboxTable {
  private readonly map = new Map<string, Sandbox>();
  /** Ids reaped at their deadline, to answer 410 rather than 404. */
  private readonly expired = new Map<string, { owner: string | undefined }>();

  constructor(
    private readonly ctx: EngineContext,
    /** Deletes a hibernated sandbox's checkpoint when it is terminated. */
    private readonly dropCheckpoint: (id: string) => void,
  ) {
    this.meter = ctx.caps.limits.admission === "cow" ? new MemoryMeter(ctx.shmDir) : undefined;
  }

  values(): IterableIterator<Sandbox> {
    return this.map.values();
  }

  /** A placeholder for a create or fork in flight: counted by the caps, invisible to lookups. */
  reserve(id: string, init: SandboxInit): Sandbox {
    const s: Sandbox = {
      id,
      templateId: init.templateId,
      parentId: init.parentId,
      state: "starting",
      vm: undefined,
      createdAt: new Date(),
      deadline: Date.now() + init.timeoutSeconds * 1000,
      timer: undefined,
      forkTimeMs: 0,
      env: init.env,
      memMiB: init.memMiB,
      lastActive: Date.now(),
      streams: 0,
      ...(init.network ? { network: init.network } : {}),
      ...(init.owner !== undefined ? { owner: init.owner } : {}),
    };
    this.map.set(id, s);
    return s;
  }

  /** Drops a placeholder whose create or fork failed. */
  unreserve(s: Sandbox): void {
    if (this.map.get(s.id) === s) this.map.delete(s.id);
  }

  /** Puts back a sandbox a previous run left (recovery.ts); arms its deadline. */
  restore(s: Sandbox): void {
    this.map.set(s.id, s);
    if (s.vm) this.watch(s, s.vm);
    this.armAt(s, s.deadline);
    this.persist(s);
  }

  /** Gives a placeholder (or a hibernated sandbox) its running VM. */
  adopt(s: Sandbox, vm: Vm, forkTimeMs: number): SandboxInfo {
    if (!vm.running) {
      throw new MitosError("unavailable", `the VM of sandbox ${s.id} exited while it was starting`, {
        remediation: `Retry; if it repeats, read the guest console log ${vm.paths.consoleLog} and check host memory.`,
        context: { sandbox: s.id },
      });
    }
    s.vm = vm;
    s.state = "ready";
    s.forkTimeMs = forkTimeMs;
    this.armAt(s, s.deadline);
    this.ctx.journal.batch(() => {
      this.ctx.journal.putVm({
        vmId: vm.id,
        pid: vm.pid,
        dir: vm.dir,
        sandboxId: s.id,
        files: [],
        startTime: vm.startTime,
        machine: vm.machine,
        ...(vm.runAs ? { uid: vm.runAs.uid, gid: vm.runAs.gid } : {}),
        ...(vm.disk ? { disk: vm.disk } : {}),
      });
      this.persist(s);
    });
    this.watch(s, vm);
    return this.info(s);
  }

  /** Marks the sandbox failed when its VM exits on its own. */
  private watch(s: Sandbox, vm: Vm): void {
    vm.exited.then((x) => {
      // Terminated, hibernated (its VM stopped on purpose) or resumed in a new VM since.
      if (this.detached || s.state === "terminated" || s.hibernation !== undefined || s.vm !== vm) return;
      s.state = "failed";
      // The deadline timer stays armed: a failed sandbox (and its logs) is
      // reaped at its deadline if nobody terminates it first. A restart forgets it.
      this.ctx.log("sandbox VM exited unexpectedly", { sandbox: s.id, code: x.code, signal: x.signal });
      this.ctx.journal.deleteSandbox(s.id);
      void vm.stop().then(() => this.ctx.journal.deleteVm(vm.id));
    });
  }

  /** Writes the sandbox's journal record (after any change a restart must see). */
  persist(s: Sandbox): void {
    if (s.state !== "ready" && s.state !== "paused") return;
    const rec: SandboxRecord = {
      id: s.id,
      templateId: s.templateId,
      parentId: s.parentId,
      state: s.state,
      createdAt: s.createdAt.toISOString(),
      deadline: s.deadline,
      forkTimeMs: s.forkTimeMs,
      env: s.env,
      memMiB: s.memMiB,
      ...(s.vm && !s.hibernation ? { vmId: s.vm.id } : {}),
      ...(s.hibernation ? { hibernation: s.hibernation } : {}),
      ...(s.idleHibernated ? { idleHibernated: true } : {}),
      ...(s.network ? { network: s.network } : {}),
      ...(s.owner !== undefined ? { owner: s.owner } : {}),
    };
    this.ctx.journal.putSandbox(rec);
  }

  /** Sets the deadline `seconds` from now (set_timeout). */
  arm(s: Sandbox, seconds: number): void {
    this.armAt(s, Date.now() + seconds * 1000);
  }

  /** Terminates the sandbox at `deadline` (unix ms) unless re-armed or killed first. */
  armAt(s: Sandbox, deadline: number): void {
    if (s.timer) clearTimeout(s.timer);
    s.deadline = deadline;
    s.timer = setTimeout(
      () => {
        this.expired.set(s.id, { owner: s.owner });
        if (this.expired.size > TOMBSTONES) this.expired.delete(this.expired.keys().next().value as string);
        void this.kill(s, "terminated");
      },
      Math.max(0, deadline - Date.now()),
    );
    s.timer.unref();
  }

  /** Stops the sandbox's VM (or drops its hibernation checkpoint) and forgets it. */
  async kill(s: Sandbox, state: SandboxState): Promise<void> {
    if (s.timer) clearTimeout(s.timer);
    s.state = state;
    this.ctx.journal.deleteSandbox(s.id);
    if (s.hibernation) {
      const cp = s.hibernation;
      s.hibernation = undefined;
      try {
        this.dropCheckpoint(cp);
      } catch (err) {
        this.ctx.log("could not delete a hibernation checkpoint", {
          sandbox: s.id,
          checkpoint: cp,
          error: (err as Error).message,
        });
      }
    }
    if (s.vm) {
      await s.vm.destroy();
      this.ctx.journal.deleteVm(s.vm.id);
    }
    if (this.map.get(s.id) === s) this.map.delete(s.id);
  }

  /** Stops every deadline timer (close). */
  disarmAll(): void {
    for (const s of this.map.values()) if (s.timer) clearTimeout(s.timer);
  }

  /** Lets go of every sandbox's VM, leaving it running and journaled for the next run (close without kill). */
  detachAll(): void {
    this.detached = true;
    for (const s of this.map.values()) s.vm?.detach();
  }

  /** After detachAll: nothing here may touch the journal again. */
  private detached = false;

  /** Real memory use for cow admission (memory-use.ts); undefined in strict mode. */
  private readonly meter: MemoryMeter | undefined;

  /**
   * Refuses `count` new sandboxes of `templateId` (`memMiB` nominal each) unless
   * all fit the caps; `counted`: they are in the table already (a hibernated
   * sandbox coming back), so only their memory is new.
   */
  admit(count: number, memMiB: number, templateId: string, counted = false, owner?: string): void {
    const usage = this.usage(true);
    if (counted) usage.sandboxes -= count;
    this.ctx.caps.admit(usage, count, memMiB, this.meter?.reservationMib(templateId) ?? 0);
    if (owner !== undefined) {
      const own = this.nominal(owner);
      if (counted) own.sandboxes -= count;
      this.ctx.caps.admitOwner(owner, own, count, memMiB);
    }
  }

  /** Live sandboxes and their guest memory, placeholders of creates and forks in flight included. */
  usage(withMemory = false): Usage {
    const u = this.nominal();
    if (withMemory && this.meter) u.memory = this.meter.use(this.metered());
    return u;
  }

  /** One owner's live sandboxes and their guest memory, creates in flight included. */
  ownerUsage(owner: string): Usage {
    return this.nominal(owner);
  }

  /** What the meter measures: every sandbox whose VM holds memory now (placeholders as reservations). */
  private *metered(): Generator<MeteredSandbox> {
    for (const s of this.map.values()) {
      if (s.state === "failed" || s.state === "terminated" || (s.hibernation && !s.waking)) continue;
      yield { templateId: s.templateId, pid: s.vm?.running ? s.vm.pid : undefined, since: s.createdAt.getTime() };
    }
  }

  /** Live sandboxes and their guest memory (of one owner, when given). */
  private nominal(owner?: string): Usage {
    let sandboxes = 0;
    let guestMemoryMib = 0;
    for (const s of this.map.values()) {
      if (s.state === "failed" || s.state === "terminated") continue; // their VM is gone
      if (owner !== undefined && s.owner !== owner) continue;
      sandboxes++;
      if (!s.hibernation || s.waking) guestMemoryMib += s.memMiB; // hibernated: its RAM is on disk
    }
    return { sandboxes, guestMemoryMib };
  }

  list(): SandboxInfo[] {
    return [...this.map.values()].filter((s) => s.state !== "starting").map((s) => this.info(s));
  }

  /** The sandbox with that id, or undefined (no error). */
  find(id: string): Sandbox | undefined {
    const s = this.map.get(id);
    return s && s.state !== "starting" ? s : undefined;
  }

  /** A sandbox reaped at its deadline (410 rather than 404), and whose it was. */
  expiredOwner(id: string): { owner: string | undefined } | undefined {
    return this.expired.get(id);
  }

  lookup(id: string): Sandbox {
    const s = this.map.get(id);
    if (!s || s.state === "starting") {
      if (this.expired.has(id)) {
        throw new MitosError("idle_timeout", `sandbox ${id} reached its deadline and was terminated`, {
          remediation: "Create a new sandbox; extend deadlines with set_timeout before they pass.",
        });
      }
      throw noSandbox(id);
    }
    return s;
  }

  /** The running sandbox with that id; every call that needs one counts as use (idle.ts). */
  running(id: string): RunningSandbox {
    const s = this.lookup(id);
    s.lastActive = Date.now();
    if (s.state !== "ready" || !s.vm) {
      throw new MitosError("conflict", `sandbox ${id} is ${s.state}`, {
        remediation: s.state === "paused" ? "Resume it first (POST /v1/resume)." : "Create a new sandbox.",
        context: { sandbox: id, state: s.state },
      });
    }
    return s as RunningSandbox;
  }

  info(s: Sandbox): SandboxInfo {
    return {
      id: s.id,
      templateId: s.templateId,
      parentId: s.parentId,
      state: s.state,
      createdAt: s.createdAt.toISOString(),
      deadlineUnix: Math.floor(s.deadline / 1000),
      forkTimeMs: s.forkTimeMs,
      accel: this.ctx.accel,
      pid: s.hibernation ? -1 : (s.vm?.pid ?? -1),
      hibernated: s.hibernation !== undefined,
      ...(s.network ? { network: s.network } : {}),
      ...(s.owner !== undefined ? { owner: s.owner } : {}),
    };
  }

  newId(requested?: string): string {
    if (requested !== undefined) {
      checkId(requested, "sandbox");
      if (this.map.has(requested)) {
        throw new MitosError("conflict", `sandbox id ${requested} is taken`, {
          remediation: "Choose another id, or omit it to get a generated one.",
        });
      }
      return requested;
    }
    for (;;) {
      const id = `sb-${randomHex(4)}`;
      if (!this.map.has(id)) return id;
    }
  }

  /** Ids for `count` new sandboxes (the requested ones where given), all distinct. */
  newIds(count: number, requested: string[] | undefined): string[] {
    const ids = Array.from({ length: count }, (_, i) => this.newId(requested?.[i]));
    if (new Set(ids).size !== ids.length) {
      throw new MitosError("invalid_input", "child ids must be distinct", {
        remediation: "Give each child its own id.",
      });
    }
    return ids;
  }

  /** A deadline asked for (or the default, shortened to the owner's lifetime), refused above the lifetime cap. */
  checkTimeout(seconds: number | undefined, owner?: string): number {
    const maxLifetimeSeconds = this.ctx.caps.maxLifetime(owner);
    const t = seconds ?? Math.min(this.ctx.caps.limits.defaultTimeoutSeconds, maxLifetimeSeconds);
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

  /** Checks a count of sandboxes to make at once. */
  checkCount(count: number): void {
    if (!Number.isInteger(count) || count < 1) {
      throw new MitosError("invalid_input", `count must be a positive integer, got ${count}`, {
        remediation: `Pass count between 1 and max_fork_count (${this.ctx.caps.limits.maxForkCount}).`,
      });
    }
  }
}

export function checkId(id: string, what: string): void {
  if (!ID_RE.test(id)) {
    throw new MitosError("invalid_input", `invalid ${what} id ${JSON.stringify(id)}`, {
      remediation: "Ids are 1-64 characters: letters, digits, '_' and '-', starting with a letter or digit.",
    });
  }
}
