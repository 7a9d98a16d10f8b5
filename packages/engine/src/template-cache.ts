// Frozen templates shared between data dirs: a template built once (its RAM
// file and device state) is kept beside the image cache under a key of
// everything that decides what the frozen guest is — the images' content
// keys, packages, init steps, env, machine size, accelerator, the interpreter
// flag and the QEMU binary. The next build with the same key copies the files
// (sparse, so only the guest's non-zero pages are written) instead of booting
// and initialising a VM: seconds instead of a minute under TCG for the python
// template, whose kernel import dominates. A build with init steps also keeps
// the guest after its boot and after each step, keyed by a chain (BuildKeys),
// so a build whose step k changed continues from step k-1's guest. Templates
// with a workspace disk or a network device are not cached (their files name
// data-dir paths and slots). A bounded number of entries is kept, least
// recently used first out.

import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { ImageSet } from "./image/build.js";
import type { TemplateRecord } from "./journal.js";
import type { Accel } from "./qemu/accel.js";
import { KERNEL_CMDLINE, machineOption, newMachinePit } from "./qemu/command.js";
import type { MachineSpec } from "./vm.js";

/**
 * Entries kept; each is a guest's non-zero RAM (about 300 MiB for python,
 * less for base). Builds with steps keep one per step (the step cache).
 */
const MAX_ENTRIES = 24;

/** Everything that decides the booted guest a build starts its steps in. */
export interface CacheInputs {
  images: ImageSet;
  packages: string[];
  env: Record<string, string>;
  memMiB: number;
  vcpus: number;
  accel: Accel;
  initWaitSeconds: number;
  /** Not cached (data-dir paths, slots), but part of the version. */
  diskMib?: number;
  network?: unknown;
  /** Guest limits are set at boot: another set is another guest. */
  guest?: unknown;
}

/**
 * A build's keys, chained as a container build's layers are: the booted
 * guest, then each step on the key before it, then the frozen template
 * (with its interpreter started). Changing step k changes the keys from k on.
 */
export interface BuildKeys {
  boot: string;
  steps: string[];
  final: string;
}

/** What a cached build recorded besides its files. */
export interface CachedMeta {
  machine: MachineSpec;
  uptimeMs: number;
  bootId: string;
  /** How long the original build took (up to this step, for a step's entry). */
  buildMs: number;
  image?: TemplateRecord["image"];
  defaults?: TemplateRecord["defaults"];
}

export class TemplateCache {
  constructor(private readonly dir: string) {}

  keys(inputs: CacheInputs, steps: string[], interpreter: boolean): BuildKeys {
    const qemu = qemuIdentity();
    const cmdline = KERNEL_CMDLINE.join(" ");
    // The devices a new VM gets: a cached state loads only into the same ones.
    const board = machineOption(newMachinePit(inputs.accel));
    const boot = digest(JSON.stringify({ ...inputs, images: inputs.images.keys, qemu, cmdline, board, format: 2 }));
    const chain: string[] = [];
    let prev = boot;
    for (const step of steps) {
      prev = digest(JSON.stringify({ after: prev, step }));
      chain.push(prev);
    }
    return { boot, steps: chain, final: digest(JSON.stringify({ after: prev, interpreter })) };
  }

  has(key: string): boolean {
    return fs.existsSync(path.join(this.dir, key, "meta.json"));
  }

  /** Copies a cached template's files to `ramFile` and `stateFile`; undefined when there is none. */
  async take(key: string, ramFile: string, stateFile: string): Promise<CachedMeta | undefined> {
    const entry = path.join(this.dir, key);
    let meta: CachedMeta;
    try {
      meta = JSON.parse(fs.readFileSync(path.join(entry, "meta.json"), "utf8")) as CachedMeta;
    } catch {
      return undefined;
    }
    try {
      await sparseCopy(path.join(entry, "ram"), ramFile);
      fs.mkdirSync(path.dirname(stateFile), { recursive: true });
      fs.copyFileSync(path.join(entry, "state"), stateFile);
      const now = new Date();
      fs.utimesSync(path.join(entry, "meta.json"), now, now);
      return meta;
    } catch {
      fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      return undefined;
    }
  }

  /** Keeps a freshly built template's files under `key` (best effort: a full disk only costs the next build). */
  async put(key: string, ramFile: string, stateFile: string, meta: CachedMeta): Promise<void> {
    const entry = path.join(this.dir, key);
    if (fs.existsSync(path.join(entry, "meta.json"))) return;
    const tmp = path.join(this.dir, `.tmp-${key}-${randomBytes(4).toString("hex")}`);
    try {
      fs.mkdirSync(tmp, { recursive: true, mode: 0o700 });
      await sparseCopy(ramFile, path.join(tmp, "ram"));
      fs.copyFileSync(stateFile, path.join(tmp, "state"));
      fs.writeFileSync(path.join(tmp, "meta.json"), JSON.stringify(meta));
      fs.renameSync(tmp, entry);
      this.evict();
    } catch {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }

  /** Drops an entry that did not restore. */
  drop(key: string): void {
    fs.rmSync(path.join(this.dir, key), { recursive: true, force: true });
  }

  private evict(): void {
    const entries = fs
      .readdirSync(this.dir)
      .filter((n) => !n.startsWith("."))
      .map((n) => ({ n, t: statTime(path.join(this.dir, n, "meta.json")) }))
      .sort((a, b) => b.t - a.t);
    for (const e of entries.slice(MAX_ENTRIES)) this.drop(e.n);
  }
}

function digest(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 32);
}

/** Copies leaving holes where the source is zero: a template's RAM file is mostly never-touched pages. */
async function sparseCopy(from: string, to: string): Promise<void> {
  await promisify(execFile)("cp", ["--sparse=always", from, to]);
}

function statTime(file: string): number {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}

let qemuId: string | undefined;

/** The QEMU binary on PATH, by size and modification time: a new QEMU may not read an old device state. */
function qemuIdentity(): string {
  if (qemuId !== undefined) return qemuId;
  for (const dir of (process.env.PATH ?? "").split(":")) {
    const p = path.join(dir || ".", "qemu-system-x86_64");
    try {
      const st = fs.statSync(p);
      qemuId = `${fs.realpathSync(p)}:${st.size}:${st.mtimeMs}`;
      return qemuId;
    } catch {
      // not in this dir
    }
  }
  qemuId = "none";
  return qemuId;
}
