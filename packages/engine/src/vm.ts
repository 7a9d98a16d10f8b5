// One QEMU microVM: its runtime directory, process, QMP and agent
// connections, and the three ways it comes to life: cold boot, restore from a
// snapshot, and (through snapshot.ts) capture for a live fork.

import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { AgentClient, type AgentInfo } from "./agent/client.js";
import { RAM_FILE_RE } from "./base-file.js";
import { createRamFile, prepareVmDir, qemuCommand, type RunAs, reclaimVmDir } from "./confine.js";
import { MitosError } from "./errors.js";
import { keepFailedLogs } from "./failed-logs.js";
import { type GuestLimits, guestLimitArgs } from "./guest-limits.js";
import type { ImageSet } from "./image/build.js";
import { readVmMemory } from "./metering.js";
import { GUEST } from "./network/ruleset.js";
import { type Accel, chooseAccel } from "./qemu/accel.js";
import { type MemoryBacking, newMachinePit, qemuArgs, type VmPaths, WORKSPACE_DRIVE } from "./qemu/command.js";
import { thpOffHelper } from "./qemu/huge-pages.js";
import { QmpClient } from "./qemu/qmp.js";
import { loadState } from "./snapshot.js";

export const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export interface MachineSpec {
  images: ImageSet;
  memMiB: number;
  vcpus: number;
  accel: Accel;
  /** Size of the workspace disk (disk.ts); unset: /workspace lives in guest RAM. */
  diskMib?: number;
  /** A virtio-net device (network/): the VM must launch in a network slot. */
  network?: boolean;
  /** What its commands may take (docs/security.md "Hostile guests"); unset ones take the guest's defaults. */
  guest?: GuestLimits;
  /**
   * false: booted without QEMU's i8254 PIT (qemu/command.ts `newMachinePit`).
   * Absent: with it, as every machine saved before decision 0034; a state
   * loads only into a QEMU with the same devices, so restores follow this.
   */
  pit?: false;
}

/** A frozen VM: RAM file (base) plus device state (migration stream without guest RAM). */
export interface Snapshot {
  machine: MachineSpec;
  ramFile: string;
  stateFile: string;
  /** Whether the state was saved with x-ignore-shared (the destination must match). */
  ignoreShared: boolean;
}

export interface LaunchOptions {
  id: string;
  dataDir: string;
  qemuBinary?: string;
  timeoutMs?: number;
  /** How long the guest agent may take to answer a call or a liveness ping (ms). */
  agentTimeoutMs?: number;
  /** Run QEMU as this uid/gid (confine.ts); the VM releases it once QEMU is gone. Default: mitosd's own. */
  runAs?: RunAs;
  /** The workspace disk's chain, its writable layer first (machines with diskMib). */
  disk?: string[];
  /** The network namespace QEMU starts in (machines with network). */
  netns?: string;
  /** Start QEMU at this niceness (a spare's start is background work; renice() sets it back). */
  nice?: number;
}

export interface BootOptions extends LaunchOptions {
  images: ImageSet;
  shmDir: string;
  memMiB?: number;
  vcpus?: number;
  accel?: Accel;
  /** Keep the RAM file (share=on) after boot: a template build snapshots it. */
  keepRamFile?: boolean;
  diskMib?: number;
  network?: boolean;
  guest?: GuestLimits;
  /** Boot with QEMU's PIT or without; default: `newMachinePit` of the accelerator. */
  pit?: boolean;
}

export interface RestoreOptions extends LaunchOptions {
  snapshot: Snapshot;
  /** Leave the restored VM paused (warm pool); `resume` + identity later. */
  paused?: boolean;
  /** Sandbox id (and hostname) given to the guest by fork-notify (default: the VM id). */
  sandboxId?: string;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

type Paths = VmPaths & { qemuLog: string; migrationSocket: string };

/**
 * The niceness of a process's autogroup (its session's, with the kernel's
 * sched_autogroup); nothing to set on a kernel without them. Throws if it
 * cannot be set.
 */
function setAutogroupNice(pid: number, nice: number): void {
  try {
    fs.writeFileSync(`/proc/${pid}/autogroup`, String(nice));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

/** A QEMU process: one this mitosd spawned, or one a previous run left that it re-adopted. */
interface QemuProcess {
  readonly pid: number;
  readonly exited: Promise<VmExit>;
  kill(signal: NodeJS.Signals): void;
  /** Stops watching the process (it outlives this mitosd). */
  forget(): void;
}

/** What re-adopting a running QEMU needs (the journal keeps it). */
export interface AttachOptions {
  id: string;
  dataDir: string;
  machine: MachineSpec;
  pid: number;
  /** The process's start time (/proc/<pid>/stat field 22): a reused pid is not our QEMU. */
  startTime: number;
  runAs?: RunAs;
  agentTimeoutMs?: number;
  timeoutMs?: number;
  disk?: string[];
}

export class Vm {
  readonly exited: Promise<VmExit>;
  private exitInfo: VmExit | undefined;
  agent!: AgentClient;
  qmp!: QmpClient;
  /** What the agent said when it last answered HELLO. */
  info!: AgentInfo;

  private constructor(
    readonly id: string,
    readonly machine: MachineSpec,
    readonly dir: string,
    readonly paths: Paths,
    private ownedRamFile: string | undefined,
    private readonly proc: QemuProcess,
    /** Who QEMU runs as (undefined: mitosd's uid). */
    readonly runAs: RunAs | undefined,
    /** The data dir (failed starts keep their logs in it: failed-logs.ts). */
    private readonly dataDir: string,
  ) {
    this.exited = proc.exited.then((info) => {
      this.exitInfo = info;
      if (this.detached) return info; // a later run owns it now
      // The uid may go to another VM now: first take its old dir back.
      if (runAs) {
        reclaimVmDir(dir);
        runAs.release();
      }
      const how = info.signal ? `killed by ${info.signal}` : info.code === null ? "exited" : `exit code ${info.code}`;
      this.agent?.close(`VM ${id} stopped (QEMU ${how}); console log: ${paths.consoleLog}`);
      this.qmp?.close();
      return info;
    });
  }

  get pid(): number {
    return this.proc.pid;
  }

  get accel(): Accel {
    return this.machine.accel;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** Boots a VM from an image set and waits until its agent answers. */
  static async boot(opts: BootOptions): Promise<Vm> {
    const machine: MachineSpec = {
      images: opts.images,
      memMiB: opts.memMiB ?? 512,
      vcpus: opts.vcpus ?? 1,
      accel: opts.accel ?? chooseAccel().accel,
      ...(opts.diskMib !== undefined ? { diskMib: opts.diskMib } : {}),
      ...(opts.network ? { network: true } : {}),
      ...(opts.guest && Object.keys(opts.guest).length > 0 ? { guest: opts.guest } : {}),
    };
    if (!(opts.pit ?? newMachinePit(machine.accel))) machine.pit = false;
    checkVmId(opts);
    const ramFile = path.join(opts.shmDir, `mitos-${opts.id}.ram`);
    createRamFile(ramFile, machine.memMiB * 1024 * 1024, opts.runAs);
    let vm: Vm;
    try {
      vm = Vm.launch(opts, machine, { path: ramFile, share: true }, false, ramFile);
    } catch (err) {
      fs.rmSync(ramFile, { force: true });
      throw err;
    }
    await vm.startup(opts.timeoutMs ?? 60_000, async (deadline) => {
      vm.qmp = await QmpClient.connect(vm.paths.qmpSocket, deadline);
      await vm.connectAgent(deadline);
      vm.info = await vm.agent.waitReady(deadline);
    });
    if (!opts.keepRamFile) fs.rmSync(ramFile, { force: true });
    return vm;
  }

  /**
   * Restores a VM from a snapshot: QEMU maps the base RAM file privately
   * (copy-on-write), loads the device state, and the guest is told it is a
   * new machine (fork-notify). Fails closed if the guest does not confirm.
   */
  static async restore(opts: RestoreOptions): Promise<Vm> {
    const vm = await Vm.incoming({ ...opts, machine: opts.snapshot.machine, ramFile: opts.snapshot.ramFile });
    await vm.load(opts.snapshot, opts);
    return vm;
  }

  /**
   * Continues a template build from a guest the step cache kept: restored as
   * `restore` does, but with the RAM file mapped shared and owned by the VM,
   * so the build's next snapshot is that file again (as after `boot` with
   * keepRamFile). Left paused; `activate` runs it.
   */
  static async continueBuild(opts: RestoreOptions): Promise<Vm> {
    const { machine, ramFile } = opts.snapshot;
    const vm = Vm.launch(opts, machine, { path: ramFile, share: true }, true, ramFile);
    await vm.startup(opts.timeoutMs ?? 60_000, async (deadline) => {
      vm.qmp = await QmpClient.connect(vm.paths.qmpSocket, deadline);
    });
    await vm.load(opts.snapshot, { ...opts, paused: true });
    return vm;
  }

  /**
   * The first half of a restore: QEMU started and waiting for a device state
   * (`-incoming defer`), guest RAM mapped privately from `ramFile`. Until the
   * VM runs, QEMU leaves that mapping untouched, so the file may still be
   * filled after this (spare VMs waiting for the next fork's base).
   */
  static async incoming(opts: LaunchOptions & { machine: MachineSpec; ramFile: string }): Promise<Vm> {
    const vm = Vm.launch(opts, opts.machine, { path: opts.ramFile, share: false }, true, undefined);
    await vm.startup(opts.timeoutMs ?? 60_000, async (deadline) => {
      vm.qmp = await QmpClient.connect(vm.paths.qmpSocket, deadline);
    });
    return vm;
  }

  /**
   * Re-adopts a QEMU a previous mitosd run started (restarts keep sandboxes):
   * a new QMP client, and for a running guest a new agent session that
   * resyncs the channel (frames meant for the dead client are dropped, and
   * the agent detaches that client's streams). A paused guest gets its agent
   * session when it next runs (`activate`/`resume`).
   */
  static async attach(opts: AttachOptions): Promise<Vm> {
    checkVmId(opts);
    const dir = path.join(opts.dataDir, "vms", opts.id);
    const proc = adoptedProcess(opts.pid, opts.startTime);
    const vm = new Vm(opts.id, opts.machine, dir, vmPaths(dir), undefined, proc, opts.runAs, opts.dataDir);
    vm.agentTimeoutMs = opts.agentTimeoutMs;
    vm.disk = opts.disk;
    vm.spawnError = new Promise<Error>(() => {});
    vm.resyncAgent = true;
    await vm.startup(opts.timeoutMs ?? 30_000, async (deadline) => {
      vm.qmp = await QmpClient.connect(vm.paths.qmpSocket, deadline);
      // QMP closes when QEMU exits: the quickest sign of it for a process that is not our child.
      vm.qmp.once("close", () => proc.check());
      const status = (await vm.qmp.execute("query-status")) as { status?: string; running?: boolean };
      vm.statusAtAttach = status.status ?? "unknown";
      if (status.running) await vm.connectAgent(deadline);
    });
    return vm;
  }

  /** The workspace disk's chain (writable layer first) while the VM runs; undefined without a disk. */
  disk: string[] | undefined;

  /**
   * Moves the workspace disk's writes to `layer`, an empty qcow2 over the
   * current layer, which is read-only from now on (a live external snapshot;
   * the VM should be paused so the frozen layer matches a RAM capture).
   */
  async switchDisk(layer: string): Promise<void> {
    if (!this.disk) throw new Error(`VM ${this.id} has no workspace disk`);
    await this.qmp.execute("blockdev-snapshot-sync", {
      device: WORKSPACE_DRIVE,
      "snapshot-file": layer,
      format: "qcow2",
      mode: "existing",
    });
    this.disk = [layer, ...this.disk];
  }

  /**
   * Shortens the disk's chain to [writable layer, bottom]: QEMU copies what
   * the layers between hold into the writable one while the guest runs
   * (block-stream), then drops them from its chain.
   */
  compactDisk(timeoutMs: number): Promise<string[]> {
    const job = this.stream(timeoutMs);
    this.diskJob = job.then(
      () => {},
      () => {},
    );
    return job;
  }

  /** A compaction in flight: a live snapshot (fork, checkpoint) must wait for it (QEMU refuses both at once). */
  diskJob: Promise<void> | undefined;

  private async stream(timeoutMs: number): Promise<string[]> {
    const chain = this.disk;
    const bottom = chain?.at(-1);
    if (!chain || bottom === undefined || chain.length <= 2) return chain ?? [];
    const job = `compact-${Date.now().toString(36)}`;
    const done = this.qmp.waitEvent(
      "BLOCK_JOB_COMPLETED",
      timeoutMs,
      (e) => (e.data as { device?: string } | undefined)?.device === job,
    );
    done.catch(() => {});
    await this.qmp.execute("block-stream", { "job-id": job, device: WORKSPACE_DRIVE, base: bottom });
    const e = await done;
    const error = (e.data as { error?: string } | undefined)?.error;
    if (error) throw new Error(`compacting the disk of VM ${this.id} failed: ${error}`);
    const top = chain[0] as string;
    this.disk = [top, bottom];
    return this.disk;
  }

  /** Its registered processes had the fork notice's signal since its memory was last copied (activate). */
  private signalledSinceRestore = false;

  /** QEMU's run state when it was re-adopted (e.g. "running", "paused", "postmigrate"). */
  statusAtAttach: string | undefined;

  /** Its process start time, journaled so a restart can tell it from a reused pid. */
  get startTime(): number {
    return processStartTime(this.pid) ?? 0;
  }

  /** The second half: loads the device state (and, unless `paused`, activates the guest). */
  async load(s: Snapshot, opts: { paused?: boolean; sandboxId?: string; timeoutMs?: number } = {}): Promise<void> {
    this.signalledSinceRestore = false;
    await this.startup(opts.timeoutMs ?? 60_000, async (deadline) => {
      await loadState(this.qmp, this.paths.migrationSocket, s.stateFile, s.ignoreShared, deadline);
      if (!opts.paused) await this.activate(opts.sandboxId ?? this.id, deadline);
    });
  }

  /**
   * Every QEMU thread and its autogroup back to niceness 0 (a VM started with
   * `nice`). Threads inherit their creator's niceness, so once the existing
   * ones are set, later ones start at 0 too. False if one could not be set
   * (mitosd not root).
   */
  renice(): boolean {
    if (!this.niced) return true;
    try {
      setAutogroupNice(this.pid, 0);
      for (const tid of fs.readdirSync(`/proc/${this.pid}/task`)) {
        try {
          os.setPriority(Number(tid), 0);
        } catch (err) {
          // A thread that just ended is fine (node reports the errno in `info`).
          if ((err as { info?: { code?: string } }).info?.code !== "ESRCH") throw err;
        }
      }
      this.niced = false;
      return true;
    } catch {
      return false;
    }
  }

  /** Whether any page of the guest RAM mapping has been touched (a spare must not have been). */
  ramTouched(): boolean {
    const m = readVmMemory(this.pid, (p) => RAM_FILE_RE.test(p));
    return m.guestPrivateBytes + m.sharedBytes > 0;
  }

  /**
   * Runs a restored-and-paused VM and makes it a new machine with its own
   * identity: fresh entropy (reseed confirmed), the host's clock, id and
   * hostname. Also how a warm VM is claimed; safe to repeat.
   */
  async activate(sandboxId: string, timeoutMs = 30_000): Promise<void> {
    await this.qmp.execute("cont");
    if (!this.agent || this.agent.closed) await this.connectAgent(timeoutMs);
    // Registered processes (the python template's kernel) reseed on the first notice after the
    // memory was copied; a later one (a warm VM's claim) only renames the guest, and waking them
    // again would cost the first command ~10 ms of a one-vCPU guest under TCG.
    await this.agent.notifyRestored({ sandboxId, hostname: sandboxId, signal: !this.signalledSinceRestore }, timeoutMs);
    this.signalledSinceRestore = true;
  }

  /**
   * Readies a restored VM for a warm pool: runs it once (notify and one
   * command, so TCG has translated the agent's and the exec path's code in
   * this process) and pauses it again. A claim is then `activate` on a warm guest.
   */
  async warmUp(timeoutMs = 30_000): Promise<void> {
    await this.activate(this.id, timeoutMs);
    await this.agent.exec({ command: "true", timeoutMs }).result;
    await this.pause();
  }

  /** Hands the RAM file over to the caller (it becomes a snapshot base); stop() leaves it. */
  disownRamFile(): string {
    const f = this.ownedRamFile;
    if (!f)
      throw new MitosError("internal", `VM ${this.id} owns no RAM file`, { remediation: "Boot it with keepRamFile." });
    this.ownedRamFile = undefined;
    return f;
  }

  async pause(): Promise<void> {
    await this.qmp.execute("stop");
  }

  /** Runs a paused VM again and steps its clock past the pause (guest time stops while paused). */
  async resume(): Promise<void> {
    await this.qmp.execute("cont");
    // Re-adopted while paused: its agent session starts now that the guest runs.
    if (this.resyncAgent && !this.agent) await this.connectAgent(this.agentTimeoutMs ?? 30_000);
    if (this.agent && !this.agent.closed) await this.agent.setClock();
  }

  private static launch(
    opts: LaunchOptions,
    machine: MachineSpec,
    memory: MemoryBacking,
    incoming: boolean,
    ownedRamFile: string | undefined,
  ): Vm {
    checkVmId(opts);
    const dir = path.join(opts.dataDir, "vms", opts.id);
    const paths = vmPaths(dir);
    if (Buffer.byteLength(paths.migrationSocket) > 107) {
      opts.runAs?.release();
      throw new MitosError("invalid_input", `data dir path too long for Unix sockets: ${paths.migrationSocket}`, {
        remediation: "Use a shorter data dir (MITOS_DATA_DIR), e.g. /var/lib/mitos.",
      });
    }
    if ((machine.diskMib !== undefined) !== (opts.disk !== undefined)) {
      opts.runAs?.release();
      throw new Error(`VM ${opts.id}: a workspace disk must be given exactly when the machine has one`);
    }
    if (Boolean(machine.network) !== (opts.netns !== undefined)) {
      opts.runAs?.release();
      throw new Error(`VM ${opts.id}: a network namespace must be given exactly when the machine has a NIC`);
    }
    prepareVmDir(dir, opts.runAs);
    for (const p of [paths.agentSocket, paths.qmpSocket, paths.migrationSocket]) fs.rmSync(p, { force: true });
    const args = qemuArgs({
      accel: machine.accel,
      vcpus: machine.vcpus,
      memMiB: machine.memMiB,
      kernel: machine.images.kernel,
      initrd: machine.images.initrd,
      rootfs: machine.images.rootfs,
      memory,
      paths,
      cmdline: [`mitos.hostname=${opts.id}`, ...guestLimitArgs(machine.guest)],
      incoming,
      ...(opts.disk?.[0] !== undefined ? { disk: opts.disk[0] } : {}),
      ...(machine.network ? { network: { tap: GUEST.tap, mac: GUEST.mac } } : {}),
      pit: machine.pit !== false,
    });
    const log = fs.openSync(paths.qemuLog, "w", 0o600);
    let cmd: { command: string; args: string[] };
    try {
      cmd = qemuCommand(
        opts.qemuBinary ?? "qemu-system-x86_64",
        args,
        opts.runAs,
        opts.netns,
        opts.nice,
        thpOffHelper(),
      );
    } catch (err) {
      fs.closeSync(log);
      opts.runAs?.release();
      fs.rmSync(dir, { recursive: true, force: true }); // nothing ran: no log to keep
      throw cannotStart(err as Error);
    }
    // QEMU's own files (console log, sockets) are its uid's alone.
    const umask = process.umask(0o077);
    let proc: ChildProcess;
    try {
      // Its own session: a terminal's ^C or a service manager's signal to
      // mitosd's process group does not reach the guests (restarts keep them).
      proc = spawn(cmd.command, cmd.args, { stdio: ["ignore", log, log], detached: true });
    } finally {
      process.umask(umask);
      fs.closeSync(log);
    }
    const vm = new Vm(opts.id, machine, dir, paths, ownedRamFile, childProcess(proc), opts.runAs, opts.dataDir);
    // Its session is its own autogroup, where a thread's niceness weighs only against its own
    // threads: the group's niceness is what ranks it against the other VMs.
    const nice = opts.nice ?? 0;
    vm.niced = nice !== 0;
    if (vm.niced && proc.pid !== undefined) {
      try {
        setAutogroupNice(proc.pid, nice);
      } catch {
        // It runs at the threads' niceness alone, or exited already: nothing lost either way.
      }
    }
    vm.agentTimeoutMs = opts.agentTimeoutMs;
    vm.disk = opts.disk;
    vm.spawnError = new Promise<Error>((resolve) =>
      proc.once("error", (e) => {
        opts.runAs?.release();
        resolve(e);
      }),
    );
    return vm;
  }

  private spawnError!: Promise<Error>;
  /** Started below normal priority (a spare) and not set back yet. */
  private niced = false;
  private agentTimeoutMs: number | undefined;
  /** Re-adopted: the agent channel may hold a dead client's frames, so its session starts with a resync. */
  private resyncAgent = false;

  /**
   * Runs `steps` racing QEMU's death; on any failure the VM is stopped and
   * its logs, which the error names, move to the failed-VM logs (failed-logs.ts).
   */
  private async startup(timeoutMs: number, steps: (deadlineMs: number) => Promise<void>): Promise<void> {
    try {
      const failed = Promise.race([
        this.spawnError.then((e) => {
          throw cannotStart(e);
        }),
        this.exited.then((x) => {
          throw new QemuExited(x);
        }),
      ]);
      await Promise.race([steps(timeoutMs), failed]);
    } catch (err) {
      await this.stop();
      const logs = this.keepLogs();
      if (err instanceof MitosError && err.code === "unavailable" && err.message.startsWith("cannot start QEMU"))
        throw err;
      if (err instanceof QemuExited) {
        // Killed from outside (the host's OOM killer, an operator): nothing wrong with the request, a retry may pass.
        const x = err.exit;
        throw this.startFailure(
          logs,
          `QEMU exited during start (${x.signal ?? `code ${x.code}`})`,
          x.signal === "SIGKILL" ? "unavailable" : "internal",
        );
      }
      if (err instanceof MitosError && err.message.includes("failed to start")) throw err;
      throw this.startFailure(logs, err instanceof Error ? err.message : String(err));
    }
  }

  /** Where a stopped VM's logs are now: kept aside after a failed start, else its own dir. */
  private keepLogs(): { qemuLog: string; consoleLog: string } {
    if (!this.detached) this.logsDir = keepFailedLogs(this.dataDir, this.dir) ?? this.logsDir;
    const dir = this.logsDir ?? this.dir;
    return {
      qemuLog: path.join(dir, path.basename(this.paths.qemuLog)),
      consoleLog: path.join(dir, path.basename(this.paths.consoleLog)),
    };
  }

  private logsDir: string | undefined;

  private async connectAgent(timeoutMs: number): Promise<void> {
    const options = {
      context: { vm: this.id, console_log: this.paths.consoleLog },
      ...(this.agentTimeoutMs === undefined ? {} : { callTimeoutMs: this.agentTimeoutMs }),
      ...(this.machine.guest?.outputBytesPerSecond !== undefined
        ? { outputBytesPerSecond: this.machine.guest.outputBytesPerSecond }
        : {}),
    };
    this.agent = this.resyncAgent
      ? await AgentClient.reconnect(this.paths.agentSocket, timeoutMs, options)
      : await AgentClient.connect(this.paths.agentSocket, timeoutMs, options);
    if (!this.running) this.agent.close("VM exited during start");
  }

  private startFailure(
    logs: { qemuLog: string; consoleLog: string },
    reason: string,
    code: "internal" | "unavailable" = "internal",
  ): MitosError {
    return new MitosError(code, `VM ${this.id} failed to start: ${reason}`, {
      remediation: `${code === "unavailable" ? "Retry; if it repeats, check the host's memory (dmesg) and r" : "R"}ead the VM logs: ${logs.qemuLog} (QEMU) and ${logs.consoleLog} (guest console).`,
      cause: `${tail(logs.qemuLog, 10)}\n${tail(logs.consoleLog, 20)}`.trim(),
      context: { vm: this.id, console_log: logs.consoleLog, qemu_log: logs.qemuLog },
    });
  }

  /** Kills QEMU and removes the VM's sockets and owned RAM file. Idempotent. */
  async stop(): Promise<void> {
    this.agent?.close(`VM ${this.id} was stopped`);
    if (this.running) {
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 2000);
      t.unref();
      await this.exited;
      clearTimeout(t);
    }
    if (this.ownedRamFile) fs.rmSync(this.ownedRamFile, { force: true });
    for (const p of [this.paths.agentSocket, this.paths.qmpSocket, this.paths.migrationSocket]) {
      fs.rmSync(p, { force: true });
    }
  }

  /** Stops the VM and deletes its directory, logs included. */
  /**
   * Lets go of a running VM without stopping it (mitosd shuts down and keeps
   * its sandboxes): the QMP and agent connections close, QEMU runs on, and
   * the next run re-adopts it (`attach`).
   */
  detach(): void {
    this.detached = true;
    this.agent?.close(`VM ${this.id} was handed over to the next mitosd run`);
    this.qmp?.close();
    this.proc.forget();
  }

  private detached = false;

  async destroy(): Promise<void> {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function vmPaths(dir: string): Paths {
  return {
    agentSocket: path.join(dir, "agent.sock"),
    qmpSocket: path.join(dir, "qmp.sock"),
    migrationSocket: path.join(dir, "migrate.sock"),
    consoleLog: path.join(dir, "console.log"),
    qemuLog: path.join(dir, "qemu.log"),
  };
}

function childProcess(proc: ChildProcess): QemuProcess {
  return {
    pid: proc.pid ?? -1,
    exited: new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal }))),
    kill: (sig) => proc.kill(sig),
    // Node may exit while it runs.
    forget: () => proc.unref(),
  };
}

/**
 * A QEMU that is not our child (a previous run started it): its exit is
 * seen by polling /proc (and at once when its QMP socket closes), and its
 * exit status is unknown.
 */
function adoptedProcess(pid: number, startTime: number): QemuProcess & { check(): void } {
  let done: ((x: VmExit) => void) | undefined;
  const exited = new Promise<VmExit>((resolve) => {
    done = resolve;
  });
  const check = () => {
    if (!done || processStartTime(pid) === startTime) return;
    clearInterval(timer);
    const d = done;
    done = undefined;
    d({ code: null, signal: null });
  };
  const timer = setInterval(check, 1000);
  timer.unref();
  return {
    pid,
    exited,
    check,
    forget: () => clearInterval(timer),
    kill: (sig) => {
      if (processStartTime(pid) !== startTime) return check();
      try {
        process.kill(pid, sig);
      } catch {
        // gone already
      }
      // Watched closely (and keeping the process alive) until it is gone: someone waits for this exit.
      const poll = setInterval(() => {
        check();
        if (!done) clearInterval(poll);
      }, 50);
    },
  };
}

/** Field 22 of /proc/<pid>/stat (clock ticks after boot), or undefined when there is no such process. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const state = fields[0];
    if (state === "Z" || state === "X") return undefined; // exited, not yet reaped
    return Number(fields[19]);
  } catch {
    return undefined;
  }
}

/** The id names files (runtime dir, RAM file): nothing but a plain name gets that far. */
function checkVmId(opts: LaunchOptions): void {
  if (ID_RE.test(opts.id)) return;
  opts.runAs?.release();
  throw new MitosError("invalid_input", `invalid VM id ${JSON.stringify(opts.id)}`, {
    remediation: "Ids match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$.",
  });
}

/** QEMU exited before the VM was up (startup turns it into the error callers see). */
class QemuExited extends Error {
  constructor(readonly exit: VmExit) {
    super("QEMU exited during start");
  }
}

function cannotStart(e: Error): MitosError {
  return new MitosError("unavailable", `cannot start QEMU: ${e.message}`, {
    remediation:
      "Install QEMU: apt-get install -y qemu-system-x86 (needs qemu-system-x86_64 on PATH; setpriv from util-linux when mitosd is root).",
  });
}

function tail(file: string, lines: number): string {
  try {
    return fs
      .readFileSync(file, "utf8")
      .split("\n")
      .slice(-lines - 1)
      .join("\n");
  } catch {
    return "";
  }
}
