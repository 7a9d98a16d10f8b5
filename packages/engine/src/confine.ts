// Who each QEMU runs as, and the file modes that keep one VM out of
// another's files (docs/decisions/0006-qemu-confinement.md).
//
// When mitosd is root, every QEMU gets a numeric uid of its own (no passwd
// entry) from a block of ids reserved for this data dir, and the gid of the
// RAM base it maps: a template or a fork base. QEMU 7.2 opens a private
// (copy-on-write) RAM file read-write, so a base is root:<its gid> 0660 and
// only the VMs restored from it share that gid. Runtime dirs are <uid> 0700;
// their parents 0711 (traversable, not listable). When mitosd is not root no
// uid is switched; QEMU's seccomp sandbox (qemu/command.ts) applies either way.

import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { MitosError } from "./errors.js";
import type { Accel } from "./qemu/accel.js";

/** The identity a QEMU runs as. Vm releases it once the process is gone and its dir is root's again. */
export interface RunAs {
  uid: number;
  gid: number;
  /** Supplementary groups (only the /dev/kvm group, under KVM). */
  groups: number[];
  release(): void;
}

/**
 * The reserved id range: above systemd's container range (up to 0x6FFFFFFF)
 * and below its foreign-uid range (0x7FFE0000), so neither subuid blocks of
 * ordinary users nor nspawn containers collide with it. One block of 65536
 * per data dir.
 */
export const ID_RANGE = { first: 0x7000_0000, blockSize: 0x1_0000, blocks: 4094 } as const;

/** Host-wide claims of id blocks (a tmpfs: claims end with the boot, as the RAM files do). */
export const DEFAULT_REGISTRY_DIR = "/run/mitos/id-blocks";

/** A gid shared by a RAM base and the VMs mapping it; freed when the last holder lets go. */
export class SharedGroup {
  private holders = 1;

  constructor(
    readonly gid: number,
    private readonly free: (id: number) => void,
  ) {}

  retain(): void {
    this.holders++;
  }

  release(): void {
    if (this.holders <= 0) return;
    if (--this.holders === 0) this.free(this.gid);
  }
}

export interface ConfinementOptions {
  dataDir: string;
  shmDir: string;
  /** Where the guest images are; QEMU must be able to read them. */
  imagesDir: string;
  registryDir?: string;
  /** Process uid (tests of the non-root path pass another). */
  uid?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export class Confinement {
  private readonly used = new Set<number>();
  private next = 0;
  /** Gids of VMs re-adopted from a previous run, held until endAdoption() and then until their last VM exits. */
  private readonly adopted = new Map<number, SharedGroup>();

  private constructor(
    /** Whether each QEMU gets a uid of its own (mitosd is root). */
    readonly uids: boolean,
    /** Why not, when not. */
    readonly reason: string,
    /** First id of this data dir's block (uids and gids alike). */
    readonly firstId: number,
  ) {}

  static open(o: ConfinementOptions): Confinement {
    const uid = o.uid ?? process.getuid?.() ?? -1;
    if (uid !== 0) {
      const reason = `mitosd runs as uid ${uid}, not root: QEMUs run as that uid with seccomp only`;
      o.log?.("VM uid separation off", { reason });
      return new Confinement(false, reason, -1);
    }
    for (const d of [o.dataDir, path.join(o.dataDir, "vms"), o.shmDir]) fs.chmodSync(d, 0o711);
    for (const d of [path.dirname(o.dataDir), path.dirname(o.shmDir), o.imagesDir]) assertTraversable(d);
    const block = claimBlock(o.dataDir, o.registryDir ?? DEFAULT_REGISTRY_DIR);
    const first = ID_RANGE.first + block * ID_RANGE.blockSize;
    o.log?.("VM uid separation on", { firstId: first, block });
    return new Confinement(true, "each QEMU runs as its own uid", first);
  }

  /** A new gid for a RAM base (undefined when uids are not switched). */
  group(): SharedGroup | undefined {
    if (!this.uids) return undefined;
    return new SharedGroup(this.take(), (id) => this.used.delete(id));
  }

  /** A fresh uid with the gid of the base the VM maps (undefined when uids are not switched). */
  runAs(group: SharedGroup | undefined, accel: Accel): RunAs | undefined {
    if (!this.uids) return undefined;
    // Fail closed: a VM without its base's group would otherwise run as root.
    if (!group) {
      throw new MitosError("internal", "a VM's RAM base has no group", {
        remediation: "This is a bug in mitosd; restart it (templates are kept) and report it.",
      });
    }
    const uid = this.take();
    group.retain();
    let released = false;
    return {
      uid,
      gid: group.gid,
      groups: accel === "kvm" ? kvmGroup() : [],
      release: () => {
        if (released) return;
        released = true;
        this.used.delete(uid);
        group.release();
      },
    };
  }

  /**
   * The identity a re-adopted QEMU (started by a previous run) already runs
   * as: its uid and gid are marked used so no new VM gets them while it
   * lives. Undefined when uids are not switched; refused for ids outside
   * this data dir's block.
   */
  adoptRunAs(uid: number, gid: number, accel: Accel): RunAs | undefined {
    if (!this.uids) return undefined;
    const mine = (id: number) => id >= this.firstId && id < this.firstId + ID_RANGE.blockSize;
    if (!mine(uid) || !mine(gid) || this.used.has(uid)) {
      throw new MitosError(
        "internal",
        `cannot re-adopt a VM running as ${uid}:${gid}: not a free id of this data dir`,
        {
          remediation: "The VM is stopped instead; its sandbox is lost.",
        },
      );
    }
    this.used.add(uid);
    let group = this.adopted.get(gid);
    if (!group) {
      this.used.add(gid);
      group = new SharedGroup(gid, (id) => this.used.delete(id));
      this.adopted.set(gid, group);
    }
    group.retain();
    let released = false;
    const g = group;
    return {
      uid,
      gid,
      groups: accel === "kvm" ? kvmGroup() : [],
      release: () => {
        if (released) return;
        released = true;
        this.used.delete(uid);
        g.release();
      },
    };
  }

  /** Re-adoption is over: an adopted gid is free again once the last VM holding it exits. */
  endAdoption(): void {
    for (const g of this.adopted.values()) g.release();
    this.adopted.clear();
  }

  /** Gives a RAM base to its group: root:<gid> 0660 (QEMU 7.2 opens even private RAM files read-write). */
  share(file: string, group: SharedGroup | undefined): void {
    if (!group) return;
    fs.chownSync(file, 0, group.gid);
    fs.chmodSync(file, 0o660);
  }

  private take(): number {
    for (let i = 0; i < ID_RANGE.blockSize; i++) {
      // Round robin: a freed id is the last to be handed out again.
      const id = this.firstId + ((this.next + i) % ID_RANGE.blockSize);
      if (!this.used.has(id)) {
        this.used.add(id);
        this.next = (this.next + i + 1) % ID_RANGE.blockSize;
        return id;
      }
    }
    throw new MitosError("unavailable", `all ${ID_RANGE.blockSize} VM ids of this data dir are in use`, {
      remediation: "Terminate sandboxes or delete templates, then retry.",
    });
  }
}

/** Creates a VM's runtime dir, owned by the VM's uid, mode 0700. */
export function prepareVmDir(dir: string, runAs: RunAs | undefined): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  if (runAs) fs.chownSync(dir, runAs.uid, runAs.gid);
}

/** Hands a stopped VM's dir back to root, so whoever gets its uid next cannot read its logs. */
export function reclaimVmDir(dir: string): void {
  try {
    fs.chownSync(dir, 0, 0);
  } catch {
    // already removed
  }
}

/** Creates an empty (sparse) RAM file for a booting VM: its owner only, or root:<gid> 0660. */
export function createRamFile(file: string, bytes: number, runAs: RunAs | undefined): void {
  fs.rmSync(file, { force: true });
  const fd = fs.openSync(file, "wx", 0o600);
  try {
    fs.ftruncateSync(fd, bytes);
    if (runAs) {
      fs.fchownSync(fd, 0, runAs.gid);
      fs.fchmodSync(fd, 0o660);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Gives an existing RAM file (a build continued from the step cache) the owner a booting VM's would have. */
export function ownRamFile(file: string, runAs: RunAs | undefined): void {
  fs.chmodSync(file, runAs ? 0o660 : 0o600);
  if (runAs) fs.chownSync(file, 0, runAs.gid);
}

/** Lets a VM's QEMU connect to a socket mitosd listens on (an outgoing migration). */
export function shareSocket(socketPath: string, runAs: RunAs | undefined): void {
  fs.chmodSync(socketPath, 0o600);
  if (runAs) fs.chownSync(socketPath, runAs.uid, runAs.gid);
}

/**
 * The command that starts QEMU as `runAs`: util-linux setpriv sets the ids,
 * the groups (node's spawn can set no supplementary group, which KVM needs)
 * and no_new_privs, then execs QEMU, so the pid is QEMU's. A networked VM
 * starts in its slot's namespace (nsenter, which execs too, before the
 * privileges are dropped). With `nice`, coreutils nice execs the rest at that
 * niceness, so every thread QEMU starts inherits it. With `thpOff` (the
 * mitos-thp-off helper, qemu/huge-pages.ts) the whole chain runs without
 * transparent huge pages: the setting survives each exec.
 */
export function qemuCommand(
  qemuBinary: string,
  args: string[],
  runAs: RunAs | undefined,
  netnsPath?: string,
  nice?: number,
  thpOff?: string,
): { command: string; args: string[] } {
  let cmd = confinedCommand(qemuBinary, args, runAs);
  if (netnsPath !== undefined)
    cmd = { command: "nsenter", args: [`--net=${netnsPath}`, "--", cmd.command, ...cmd.args] };
  if (nice !== undefined) cmd = { command: "nice", args: ["-n", String(nice), cmd.command, ...cmd.args] };
  if (thpOff !== undefined) cmd = { command: thpOff, args: [cmd.command, ...cmd.args] };
  return cmd;
}

function confinedCommand(
  qemuBinary: string,
  args: string[],
  runAs: RunAs | undefined,
): { command: string; args: string[] } {
  if (!runAs) return { command: qemuBinary, args };
  const groups = runAs.groups.length > 0 ? [`--groups=${runAs.groups.join(",")}`] : ["--clear-groups"];
  return {
    command: "setpriv",
    args: [
      `--reuid=${runAs.uid}`,
      `--regid=${runAs.gid}`,
      ...groups,
      "--no-new-privs",
      "--inh-caps=-all",
      "--bounding-set=-all",
      "--",
      // setpriv searches PATH itself; the name stays QEMU's argv[0] as without it.
      checkOnPath(qemuBinary),
      ...args,
    ],
  };
}

/** Checks a program exists as execvp would find it, so a missing QEMU is reported as such, not as setpriv's failure. */
function checkOnPath(bin: string): string {
  const dirs = bin.includes("/") ? [""] : (process.env.PATH ?? "/usr/bin:/bin").split(":");
  for (const d of dirs) {
    const p = d === "" ? bin : path.join(d, bin);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return bin;
    } catch {
      // next
    }
  }
  const err = new Error(`spawn ${bin} ENOENT`) as NodeJS.ErrnoException;
  err.code = "ENOENT";
  throw err;
}

/** The group of /dev/kvm when it grants the group read-write (and is not root's). */
function kvmGroup(): number[] {
  try {
    const st = fs.statSync("/dev/kvm");
    return st.gid !== 0 && (st.mode & 0o060) === 0o060 ? [st.gid] : [];
  } catch {
    return [];
  }
}

/** QEMU, running as an unprivileged uid, must pass through every ancestor of its files. */
function assertTraversable(dir: string): void {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const st = fs.statSync(d, { throwIfNoEntry: false });
    // A dir still to be made gets the default mode (0755).
    if (st && (st.mode & 0o001) === 0) {
      throw new MitosError("unavailable", `QEMU runs as an unprivileged uid and cannot pass through ${d}`, {
        remediation: `Let others traverse it (chmod o+x ${d}) or use a data dir whose parents are traversable, e.g. /var/lib/mitos.`,
        context: { dir: d, mode: (st.mode & 0o7777).toString(8) },
      });
    }
    if (d === path.dirname(d)) return;
  }
}

/** The block a data dir tries first (a hash, so different dirs rarely meet). */
export function preferredBlock(dataDir: string): number {
  return createHash("sha256").update(path.resolve(dataDir)).digest().readUInt32BE(0) % ID_RANGE.blocks;
}

/**
 * Claims this data dir's block of ids in the host-wide registry: one file per
 * block naming the data dir. A block whose data dir is gone is free again.
 */
export function claimBlock(dataDir: string, registryDir: string): number {
  fs.mkdirSync(registryDir, { recursive: true, mode: 0o700 });
  const me = path.resolve(dataDir);
  const start = preferredBlock(me);
  for (let i = 0; i < ID_RANGE.blocks; i++) {
    const block = (start + i) % ID_RANGE.blocks;
    const file = path.join(registryDir, String(block));
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, me, { flag: "wx", mode: 0o600 });
        return block;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      let owner: string;
      try {
        owner = fs.readFileSync(file, "utf8");
      } catch {
        continue; // removed meanwhile: try to create it again
      }
      if (owner === me) return block;
      if (fs.existsSync(owner)) break;
      fs.rmSync(file, { force: true });
    }
  }
  throw new MitosError("unavailable", "no free block of VM ids is left on this host", {
    remediation: `Remove claims of data dirs no longer used from ${registryDir}.`,
  });
}
