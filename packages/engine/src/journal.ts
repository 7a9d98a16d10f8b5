// The engine's on-disk record of what it owns: templates (with their base
// files), every VM it started (pid, runtime dir, RAM files, who it runs as)
// and every sandbox (its VM, deadline, env). Written atomically (temp file +
// rename) after every change, so a crash leaves either the old or the new
// record, never half of one. On start the engine reads it to re-adopt the
// VMs a previous run left running and to reap the rest (recovery.ts).

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

export class Journal {
  private data: JournalData;
  private readonly file: string;
  /** Inside batch(): changes are flushed once at its end. */
  private batching = 0;

  constructor(dataDir: string) {
    this.file = path.join(dataDir, "journal.json");
    this.data = Journal.read(this.file);
  }

  private static read(file: string): JournalData {
    try {
      const parsed = JSON.parse(fs.readFileSync(file, "utf8")) as JournalData;
      if (parsed.version === 1 && parsed.templates && parsed.vms) return parsed;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        // A corrupt journal cannot be trusted; keep it for inspection.
        fs.renameSync(file, `${file}.corrupt-${Date.now()}`);
      }
    }
    return { version: 1, templates: {}, vms: {} };
  }

  get templates(): Readonly<Record<string, TemplateRecord>> {
    return this.data.templates;
  }

  get vms(): Readonly<Record<string, VmRecord>> {
    return this.data.vms;
  }

  putTemplate(t: TemplateRecord): void {
    this.data.templates[t.id] = t;
    if (this.data.recipes) delete this.data.recipes[t.id];
    this.flush();
  }

  get recipes(): Readonly<Record<string, Recipe>> {
    return this.data.recipes ?? {};
  }

  putRecipe(id: string, spec: TemplateSpec, owner?: string): void {
    this.data.recipes = { ...this.data.recipes, [id]: { ...spec, ...(owner !== undefined ? { owner } : {}) } };
    this.flush();
  }

  deleteRecipe(id: string): void {
    if (!this.data.recipes || !(id in this.data.recipes)) return;
    delete this.data.recipes[id];
    this.flush();
  }

  deleteTemplate(id: string): void {
    delete this.data.templates[id];
    this.flush();
  }

  get sandboxes(): Readonly<Record<string, SandboxRecord>> {
    return this.data.sandboxes ?? {};
  }

  putSandbox(s: SandboxRecord): void {
    this.data.sandboxes = { ...this.data.sandboxes, [s.id]: s };
    this.flush();
  }

  deleteSandbox(id: string): void {
    if (!this.data.sandboxes || !(id in this.data.sandboxes)) return;
    delete this.data.sandboxes[id];
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
    this.data.vms[v.vmId] = v;
    this.flush();
  }

  deleteVm(vmId: string): void {
    if (!(vmId in this.data.vms)) return;
    delete this.data.vms[vmId];
    this.flush();
  }

  private flush(): void {
    if (this.batching > 0) return;
    const tmp = `${this.file}.tmp-${process.pid}`;
    const fd = fs.openSync(tmp, "w", 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(this.data, null, 1));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.file);
  }
}
