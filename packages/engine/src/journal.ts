// The engine's on-disk record of what it owns: templates (with their base
// files), every VM it started (pid, runtime dir, RAM files, who it runs as)
// and every sandbox (its VM, deadline, env). On start the engine reads it to
// re-adopt the VMs a previous run left running and to reap the rest
// (recovery.ts).
//
// Two files (docs/restarts.md "The journal"): journal.json, a snapshot
// written atomically (temp file + fsync + rename), and journal.log, the
// changes since, one JSON line per change (a batch is one line), appended
// and fdatasynced before the change returns. A change costs the same
// whatever the number of sandboxes; the snapshot is rewritten (and the log
// emptied) once the log outgrows it, at open and at close. Each line sets
// or deletes whole records, so replaying it twice changes nothing: a crash
// between a snapshot's rename and the log's truncation loses nothing, and a
// crash mid-append leaves a torn last line, dropped on read (its change was
// never acknowledged).

import fs from "node:fs";
import path from "node:path";
import type { GuestLimits } from "./guest-limits.js";
import type { NetworkPolicy } from "./network/policy.js";
import type { MachineSpec } from "./vm.js";

export interface TemplateSpec {
  /**
   * The root to start from: a built-in one, "base" (minimal Debian) or
   * "python" (default), or an OCI image reference (docs/templates.md).
   */
  image?: string;
  packages?: string[];
  /** Shell commands run once in the booted template before it is frozen. */
  init?: string[];
  env?: Record<string, string>;
  resources?: { vcpuCount?: number; memSizeMib?: number };
  /** Seconds the booted guest is left to settle before init runs (default 0; the public API's init_wait_seconds). */
  initWaitSeconds?: number;
  /** Limit on each init command (default 600 s). */
  initTimeoutSeconds?: number;
  /** A workspace disk of this size at /workspace (a host copy-on-write disk, docs/disks.md); unset: /workspace is in guest RAM. */
  diskSizeMib?: number;
  /** A network device, and the policy its sandboxes start with (docs/network.md); unset: no NIC. */
  network?: NetworkPolicy;
  /** What its sandboxes' commands may take (docs/security.md "Hostile guests"). */
  guest?: GuestLimits;
}

/** A dropped template's spec, kept to rebuild it at its next use, with who built it. */
export type Recipe = TemplateSpec & { owner?: string };

export interface TemplateRecord {
  id: string;
  /** What it was built from: a template dropped at start (files gone after a reboot) is rebuilt from it on demand. */
  spec?: TemplateSpec;
  recipe: { packages: string[]; init: string[]; env: Record<string, string>; interpreter?: boolean };
  machine: MachineSpec;
  ramFile: string;
  stateFile: string;
  createdAt: string;
  creationTimeMs: number;
  /** Guest uptime when the template was frozen (restores continue from it). */
  uptimeMs: number;
  bootId: string;
  /** Its workspace disk's frozen chain (the build's layer first), when the spec asked for one. */
  disk?: string[];
  /** The OCI image it was built from, pinned by digest. */
  image?: { reference: string; digest: string };
  /** The template cache's key of everything that shaped it, shortened (docs/templates.md "Versions"). */
  version?: string;
  /** What its sandboxes start with unless a call says otherwise (an OCI image's ENV, WORKDIR and USER). */
  defaults?: TemplateDefaults;
  /** Who built it (an opaque label the caller gave); unset: everyone's. */
  owner?: string;
}

export interface TemplateDefaults {
  env: Record<string, string>;
  cwd?: string;
  uid?: number;
  gid?: number;
}

export interface VmRecord {
  vmId: string;
  pid: number;
  dir: string;
  sandboxId?: string;
  /** Files that must go when this VM does (e.g. a fork base not yet unlinked). */
  files: string[];
  /** What re-adoption needs: the process's start time, its machine, its ids, and what it is for. */
  startTime?: number;
  machine?: MachineSpec;
  uid?: number;
  gid?: number;
  /** Its workspace disk's chain, writable layer first. */
  disk?: string[];
}

/** A sandbox as a restarted engine needs it back: its VM (unless hibernated), deadline and defaults. */
export interface SandboxRecord {
  id: string;
  templateId: string;
  parentId: string | null;
  state: "ready" | "paused";
  createdAt: string;
  /** Unix ms. */
  deadline: number;
  forkTimeMs: number;
  env: Record<string, string>;
  memMiB: number;
  vmId?: string;
  /** Hibernated: the checkpoint it was saved to. */
  hibernation?: string;
  /** Hibernated by the idle timer: woken by the next runtime call. */
  idleHibernated?: boolean;
  /** Its network policy (networked sandboxes only). */
  network?: NetworkPolicy;
  /** Who it belongs to (SandboxInfo.owner). */
  owner?: string;
}

export interface JournalData {
  version: 1;
  templates: Record<string, TemplateRecord>;
  vms: Record<string, VmRecord>;
  /** Specs of templates dropped at start (their RAM was gone): rebuilt at their next use. */
  recipes?: Record<string, Recipe>;
  sandboxes?: Record<string, SandboxRecord>;
}

type Table = "templates" | "vms" | "recipes" | "sandboxes";
/** A set (the record) or a delete (no record) of one key; a log line is the changes of one flush. */
type Change = [Table, string, unknown?];

const SNAPSHOT = "journal.json";
const LOG = "journal.log";
/** The log is folded into the snapshot once it is larger than the snapshot and this. */
const COMPACT_MIN_BYTES = 64 << 10;

const empty = (): JournalData => ({ version: 1, templates: {}, vms: {} });

function apply(data: JournalData, [table, key, value]: Change): void {
  const t = (data[table] ?? {}) as Record<string, unknown>;
  if (value === undefined) delete t[key];
  else t[key] = value;
  (data as unknown as Record<Table, Record<string, unknown>>)[table] = t;
}

/** What a journal's files hold; `damaged` names a file that could not be read whole. */
export interface JournalRead {
  data: JournalData;
  damaged?: "snapshot" | "log";
}

/**
 * Snapshot plus log, as the last acknowledged change left them. Read-only:
 * for tools and tests beside a running daemon (a compaction between the two
 * reads can make it one change stale; read with the daemon stopped for an
 * exact answer).
 */
export function readJournal(dataDir: string): JournalRead {
  const text = (name: string): string | undefined => {
    try {
      return fs.readFileSync(path.join(dataDir, name), "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  };
  let data = empty();
  const snapshot = text(SNAPSHOT);
  if (snapshot !== undefined) {
    try {
      const parsed = JSON.parse(snapshot) as JournalData;
      if (parsed.version !== 1 || !parsed.templates || !parsed.vms) throw new Error("not a version 1 journal");
      data = parsed;
    } catch {
      // A snapshot that cannot be trusted makes its log meaningless too.
      return { data, damaged: "snapshot" };
    }
  }
  const lines = (text(LOG) ?? "").split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    if (line === "") continue;
    let changes: Change[];
    try {
      changes = JSON.parse(line) as Change[];
      if (!Array.isArray(changes)) throw new Error("not a list of changes");
    } catch {
      // A torn last line is a change never acknowledged; anything earlier is damage: stop there.
      const last = lines.slice(i + 1).every((l) => l === "");
      return last ? { data } : { data, damaged: "log" };
    }
    for (const c of changes) apply(data, c);
  }
  return { data };
}

export class Journal {
  private data: JournalData;
  private readonly file: string;
  private readonly logFile: string;
  private logFd: number;
  private logBytes = 0;
  private snapshotBytes = 0;
  /** Changes not yet in the log (inside batch()), as JSON. */
  private pending: string[] = [];
  /** Inside batch(): changes are flushed once at its end. */
  private batching = 0;

  constructor(dataDir: string) {
    this.file = path.join(dataDir, SNAPSHOT);
    this.logFile = path.join(dataDir, LOG);
    const { data, damaged } = readJournal(dataDir);
    // What could not be trusted is kept for inspection; the snapshot below replaces it.
    if (damaged === "snapshot") fs.renameSync(this.file, `${this.file}.corrupt-${Date.now()}`);
    if (damaged && fs.existsSync(this.logFile)) fs.copyFileSync(this.logFile, `${this.logFile}.corrupt-${Date.now()}`);
    this.data = data;
    this.logFd = fs.openSync(this.logFile, "a", 0o600);
    // Every run starts from a snapshot of what it read and an empty log.
    this.compact();
  }

  /**
   * Folds the log into the snapshot and closes it, so a stopped daemon leaves
   * one file. A change after this (a VM that exits late) opens the log again.
   */
  close(): void {
    if (this.logFd < 0) return;
    this.compact();
    fs.closeSync(this.logFd);
    this.logFd = -1;
  }

  get templates(): Readonly<Record<string, TemplateRecord>> {
    return this.data.templates;
  }

  get vms(): Readonly<Record<string, VmRecord>> {
    return this.data.vms;
  }

  putTemplate(t: TemplateRecord): void {
    this.change("templates", t.id, t);
    if (this.data.recipes && t.id in this.data.recipes) this.change("recipes", t.id);
    this.flush();
  }

  get recipes(): Readonly<Record<string, Recipe>> {
    return this.data.recipes ?? {};
  }

  putRecipe(id: string, spec: TemplateSpec, owner?: string): void {
    this.change("recipes", id, { ...spec, ...(owner !== undefined ? { owner } : {}) });
    this.flush();
  }

  deleteRecipe(id: string): void {
    if (!this.data.recipes || !(id in this.data.recipes)) return;
    this.change("recipes", id);
    this.flush();
  }

  deleteTemplate(id: string): void {
    if (!(id in this.data.templates)) return;
    this.change("templates", id);
    this.flush();
  }

  get sandboxes(): Readonly<Record<string, SandboxRecord>> {
    return this.data.sandboxes ?? {};
  }

  putSandbox(s: SandboxRecord): void {
    this.change("sandboxes", s.id, s);
    this.flush();
  }

  deleteSandbox(id: string): void {
    if (!this.data.sandboxes || !(id in this.data.sandboxes)) return;
    this.change("sandboxes", id);
    this.flush();
  }

  /** Runs several changes with one write (a sandbox and its VM record together). */
  batch(fn: () => void): void {
    this.batching++;
    try {
      fn();
    } finally {
      this.batching--;
    }
    this.flush();
  }

  /** Adds files to (or takes them from) a VM's record: they go when it does, also after a crash. */
  vmFiles(vmId: string, files: string[], add: boolean): void {
    const rec = this.data.vms[vmId];
    if (!rec) return;
    const rest = rec.files.filter((f) => !files.includes(f));
    this.putVm({ ...rec, files: add ? [...rest, ...files] : rest });
  }

  /** A VM's disk chain changed (a fork froze its layer, a compaction shortened it). */
  vmDisk(vmId: string, disk: string[]): void {
    const rec = this.data.vms[vmId];
    if (rec) this.putVm({ ...rec, disk });
  }

  putVm(v: VmRecord): void {
    this.change("vms", v.vmId, v);
    this.flush();
  }

  deleteVm(vmId: string): void {
    if (!(vmId in this.data.vms)) return;
    this.change("vms", vmId);
    this.flush();
  }

  /** Applies a change in memory and queues it for the log (the value as it is now). */
  private change(table: Table, key: string, value?: unknown): void {
    const c: Change = value === undefined ? [table, key] : [table, key, value];
    apply(this.data, c);
    this.pending.push(JSON.stringify(c));
  }

  /** Appends the queued changes as one line (all or nothing) and syncs it; compacts a log grown past the snapshot. */
  private flush(): void {
    if (this.batching > 0 || this.pending.length === 0) return;
    if (this.logFd < 0) this.logFd = fs.openSync(this.logFile, "a", 0o600);
    const line = `[${this.pending.join(",")}]\n`;
    this.pending = [];
    fs.writeSync(this.logFd, line);
    fs.fdatasyncSync(this.logFd);
    this.logBytes += Buffer.byteLength(line);
    if (this.logBytes > Math.max(COMPACT_MIN_BYTES, this.snapshotBytes)) this.compact();
  }

  /** Writes the whole state as the new snapshot, then empties the log. */
  private compact(): void {
    const text = JSON.stringify(this.data, null, 1);
    const tmp = `${this.file}.tmp-${process.pid}`;
    const fd = fs.openSync(tmp, "w", 0o600);
    try {
      fs.writeSync(fd, text);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.file);
    // Replaying the old log over the new snapshot would change nothing, so a crash here is harmless.
    fs.ftruncateSync(this.logFd, 0);
    fs.fsyncSync(this.logFd);
    this.logBytes = 0;
    this.snapshotBytes = Buffer.byteLength(text);
  }
}
