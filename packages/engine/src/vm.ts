// One QEMU microVM: its runtime directory, process, console log and agent.

import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { AgentClient, type AgentInfo } from "./agent/client.js";
import { MitosError } from "./errors.js";
import type { ImageSet } from "./image/build.js";
import { type Accel, chooseAccel } from "./qemu/accel.js";
import { qemuArgs, type VmPaths } from "./qemu/command.js";

export const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export interface BootOptions {
  id: string;
  images: ImageSet;
  dataDir: string;
  shmDir: string;
  memMiB?: number;
  vcpus?: number;
  accel?: Accel;
  bootTimeoutMs?: number;
  /** Keep the RAM file after boot (a template build snapshots it). */
  keepRamFile?: boolean;
  qemuBinary?: string;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class Vm {
  readonly exited: Promise<VmExit>;
  private exitInfo: VmExit | undefined;
  agent!: AgentClient;
  /** What the agent said when it first answered. */
  info!: AgentInfo;

  private constructor(
    readonly id: string,
    readonly accel: Accel,
    readonly dir: string,
    readonly paths: VmPaths & { qemuLog: string },
    readonly ramFile: string,
    private readonly proc: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => {
      proc.once("exit", (code, signal) => {
        this.exitInfo = { code, signal };
        const how = signal ? `killed by ${signal}` : `exit code ${code}`;
        this.agent?.close(`VM ${id} stopped (QEMU ${how}); console log: ${paths.consoleLog}`);
        resolve(this.exitInfo);
      });
    });
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** Boots a VM from an image set and waits until its agent answers. */
  static async boot(opts: BootOptions): Promise<Vm> {
    if (!ID_RE.test(opts.id)) {
      throw new MitosError("invalid_input", `invalid VM id ${JSON.stringify(opts.id)}`, {
        remediation: "Ids match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$.",
      });
    }
    const accel = opts.accel ?? chooseAccel().accel;
    const dir = path.join(opts.dataDir, "vms", opts.id);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const paths = {
      agentSocket: path.join(dir, "agent.sock"),
      qmpSocket: path.join(dir, "qmp.sock"),
      consoleLog: path.join(dir, "console.log"),
      qemuLog: path.join(dir, "qemu.log"),
    };
    if (Buffer.byteLength(paths.agentSocket) > 107) {
      throw new MitosError("invalid_input", `data dir path too long for Unix sockets: ${paths.agentSocket}`, {
        remediation: "Use a shorter data dir (MITOS_DATA_DIR), e.g. /var/lib/mitos.",
      });
    }
    for (const p of [paths.agentSocket, paths.qmpSocket]) fs.rmSync(p, { force: true });
    const ramFile = path.join(opts.shmDir, `mitos-${opts.id}.ram`);
    const memMiB = opts.memMiB ?? 512;
    const args = qemuArgs({
      accel,
      vcpus: opts.vcpus ?? 1,
      memMiB,
      kernel: opts.images.kernel,
      initrd: opts.images.initrd,
      rootfs: opts.images.rootfs,
      memory: { path: ramFile, share: true },
      paths,
      cmdline: [`mitos.hostname=${opts.id}`],
    });
    const log = fs.openSync(paths.qemuLog, "w");
    const proc = spawn(opts.qemuBinary ?? "qemu-system-x86_64", args, {
      stdio: ["ignore", log, log],
      detached: false,
    });
    fs.closeSync(log);
    const spawnError = new Promise<Error>((resolve) => proc.once("error", resolve));
    const vm = new Vm(opts.id, accel, dir, paths, ramFile, proc);
    const timeoutMs = opts.bootTimeoutMs ?? 60_000;
    try {
      const ready = (async () => {
        vm.agent = await AgentClient.connect(paths.agentSocket, timeoutMs, {
          context: { vm: opts.id, console_log: paths.consoleLog },
        });
        if (!vm.running) vm.agent.close("VM exited during boot");
        vm.info = await vm.agent.waitReady(timeoutMs);
      })();
      const failed = Promise.race([
        spawnError.then((e) => {
          throw new MitosError("unavailable", `cannot start QEMU: ${e.message}`, {
            remediation: "Install QEMU: apt-get install -y qemu-system-x86 (needs qemu-system-x86_64 on PATH).",
          });
        }),
        vm.exited.then((x) => {
          throw vm.bootFailure(`QEMU exited during boot (${x.signal ?? `code ${x.code}`})`);
        }),
      ]);
      await Promise.race([ready, failed]);
    } catch (err) {
      await vm.stop();
      if (err instanceof MitosError && err.code === "unavailable" && !vm.running) throw vm.bootFailure(err.message);
      throw err;
    }
    if (!opts.keepRamFile) fs.rmSync(ramFile, { force: true });
    return vm;
  }

  private bootFailure(reason: string): MitosError {
    return new MitosError("internal", `VM ${this.id} failed to boot: ${reason}`, {
      remediation: `Read the VM logs: ${this.paths.qemuLog} (QEMU) and ${this.paths.consoleLog} (guest console).`,
      cause: `${tail(this.paths.qemuLog, 10)}\n${tail(this.paths.consoleLog, 20)}`.trim(),
      context: { vm: this.id, console_log: this.paths.consoleLog, qemu_log: this.paths.qemuLog },
    });
  }

  /** Last lines of the guest console, for error messages. */
  consoleTail(lines = 20): string {
    return tail(this.paths.consoleLog, lines);
  }

  /** Kills QEMU and removes the VM's runtime files. Idempotent. */
  async stop(): Promise<void> {
    this.agent?.close(`VM ${this.id} was stopped`);
    if (this.running) {
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 2000);
      await this.exited;
      clearTimeout(t);
    }
    fs.rmSync(this.ramFile, { force: true });
    for (const p of [this.paths.agentSocket, this.paths.qmpSocket]) fs.rmSync(p, { force: true });
  }

  /** Stops the VM and deletes its directory, logs included. */
  async destroy(): Promise<void> {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
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
