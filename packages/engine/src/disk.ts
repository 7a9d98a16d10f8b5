// Workspace disks beyond RAM (ARCHITECTURE.md §8, docs/disks.md): a
// sandbox's /workspace is ext4 on a chain of host files, a qcow2 layer it
// writes over read-only ("frozen") layers it shares: its template's disk, the
// layers its ancestors froze when they forked, or a checkpoint's disk. A fork
// freezes the source's layer and gives source and children new layers over
// it. This module creates, shares and collects those files; QEMU does the
// copy-on-write.
//
// Confinement: a writable layer belongs to its VM's uid (0600); a frozen
// layer is root:<a group of its own> 0640, and a VM runs with the groups of
// the frozen layers in its chain, so it can read exactly those.

import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { RunAs, SharedGroup } from "./confine.js";
import { randomHex } from "./context.js";
import { MitosError } from "./errors.js";

const run = promisify(execFile);

/** Bounds of a template's disk_size_mib. */
export const DISK_SIZE_MIB = { min: 64, max: 1024 * 1024 };

/** A chain longer than this is compacted in the background (block-stream onto its bottom layer). */
export const MAX_CHAIN = 6;

/** A disk's layers, the writable (or newest) one first, its bottom (a raw ext4 image) last. */
export type Chain = string[];

export class Disks {
  readonly dir: string;
  /** Frozen layers and the group that may read them (undefined: no uid switching). */
  private readonly frozen = new Map<string, SharedGroup | undefined>();
  /** Who holds which chain: a VM (its id), a template (tpl:<id>), a cached checkpoint disk (cp:<id>). */
  private readonly holders = new Map<string, Chain>();
  /** Every layer made or adopted by this run: only these are ever collected. */
  private readonly known = new Set<string>();

  /** `uids`: whether each QEMU runs as a uid of its own (confine.ts). */
  constructor(dataDir: string, uids: boolean) {
    this.dir = path.join(dataDir, "disks");
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    // VMs open their layers by path: let their uids traverse (not list) the dir.
    fs.chmodSync(this.dir, uids ? 0o711 : 0o700);
  }

  static checkSize(mib: number): void {
    if (!Number.isInteger(mib) || mib < DISK_SIZE_MIB.min || mib > DISK_SIZE_MIB.max) {
      throw new MitosError("invalid_input", `disk_size_mib ${mib} is out of range`, {
        remediation: `Use ${DISK_SIZE_MIB.min} to ${DISK_SIZE_MIB.max} MiB (the disk is sparse: it takes host space only as the guest writes).`,
      });
    }
  }

  /** A new empty ext4 disk of `mib` (a sparse raw file), frozen for `group`. */
  async createBase(mib: number, group: SharedGroup | undefined): Promise<string> {
    Disks.checkSize(mib);
    const file = path.join(this.dir, `base-${randomHex(6)}.raw`);
    this.known.add(file);
    try {
      fs.writeFileSync(file, "", { mode: 0o600 });
      fs.truncateSync(file, mib * 1024 * 1024);
      // Inode tables zeroed now (a hole punch on a sparse file: no writes), so the
      // guest kernel has no lazy-init thread writing them into every sandbox's layer.
      await run("mkfs.ext4", [
        "-q",
        "-F",
        "-m",
        "0",
        "-L",
        "workspace",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=1",
        file,
      ]);
    } catch (err) {
      fs.rmSync(file, { force: true });
      throw diskError(`creating a ${mib} MiB workspace disk failed`, err as Error, this.dir);
    }
    this.freeze(file, group);
    return file;
  }

  /** A new writable layer over `backing` (its top layer), owned by the VM that will write it. */
  async overlay(backing: Chain, runAs: RunAs | undefined): Promise<string> {
    const top = backing[0];
    if (top === undefined) throw new Error("an overlay needs a backing layer");
    const file = path.join(this.dir, `layer-${randomHex(6)}.qcow2`);
    this.known.add(file);
    try {
      await run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", formatOf(top), "-b", top, file]);
      fs.chmodSync(file, 0o600);
      if (runAs) fs.chownSync(file, runAs.uid, runAs.gid);
    } catch (err) {
      fs.rmSync(file, { force: true });
      throw diskError("creating a disk layer failed", err as Error, this.dir);
    }
    return file;
  }

  /** Makes a layer read-only and readable by `group` (kept until the layer goes). */
  freeze(layer: string, group: SharedGroup | undefined): void {
    this.known.add(layer);
    group?.retain();
    this.frozen.get(layer)?.release();
    this.frozen.set(layer, group);
    fs.chmodSync(layer, 0o640);
    fs.chownSync(layer, 0, group?.gid ?? 0);
  }

  /** The groups a VM needs to open `chain`'s frozen layers (its own primary gid aside). */
  gids(chain: Chain, primary: number | undefined): number[] {
    const out = new Set<number>();
    for (const l of chain) {
      const g = this.frozen.get(l)?.gid;
      if (g !== undefined && g !== primary) out.add(g);
    }
    return [...out];
  }

  /** `runAs` widened by the groups of `chain`'s frozen layers. */
  runAsFor(chain: Chain, runAs: RunAs | undefined): RunAs | undefined {
    if (!runAs) return undefined;
    return { ...runAs, groups: [...runAs.groups, ...this.gids(chain, runAs.gid)] };
  }

  /** `key` uses `chain` (replacing what it held): its layers stay. */
  hold(key: string, chain: Chain): void {
    for (const l of chain) this.known.add(l);
    this.holders.set(key, [...chain]);
  }

  /** `key` is done with its chain; layers nobody holds any more are removed. */
  release(key: string): void {
    if (this.holders.delete(key)) this.gc();
  }

  /** Removes the layers this run knows that no holder names. */
  gc(): void {
    const live = new Set([...this.holders.values()].flat());
    for (const l of this.known) {
      if (live.has(l)) continue;
      this.known.delete(l);
      fs.rmSync(l, { force: true });
      this.frozen.get(l)?.release();
      this.frozen.delete(l);
    }
  }

  /** Removes files in the disks dir that no holder names (recovery, after every chain is held again). */
  sweep(): string[] {
    const live = new Set([...this.holders.values()].flat());
    const removed: string[] = [];
    for (const f of fs.readdirSync(this.dir)) {
      const p = path.join(this.dir, f);
      if (live.has(p)) continue;
      fs.rmSync(p, { force: true });
      removed.push(p);
    }
    return removed;
  }

  /**
   * The guest-visible content of a frozen chain as a sparse raw file, and the
   * byte ranges that hold data (everything else reads as zeros).
   */
  async flatten(chain: Chain, out: string): Promise<Array<[number, number]>> {
    const top = chain[0];
    if (top === undefined) throw new Error("empty chain");
    try {
      await run("qemu-img", ["convert", "-U", "-O", "raw", "-S", "4k", top, out], { maxBuffer: 1 << 20 });
      const { stdout } = await run("qemu-img", ["map", "-U", "--output=json", top], { maxBuffer: 256 << 20 });
      const extents = JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
      return extents.filter((e) => e.data && !e.zero).map((e) => [e.start, e.length]);
    } catch (err) {
      fs.rmSync(out, { force: true });
      throw diskError("reading the disk for a checkpoint failed", err as Error, path.dirname(out));
    }
  }

  /** Drops every hold and group (close); files stay for the next run. */
  close(): void {
    for (const g of this.frozen.values()) g?.release();
    this.frozen.clear();
    this.holders.clear();
    this.known.clear();
  }
}

function formatOf(file: string): "raw" | "qcow2" {
  return file.endsWith(".raw") ? "raw" : "qcow2";
}

function diskError(what: string, err: Error & { stderr?: string }, dir: string): MitosError {
  const detail = (err.stderr || err.message).trim().slice(-500);
  const full = /No space left|ENOSPC/i.test(detail);
  return new MitosError(full ? "quota_exceeded" : "internal", `${what}: ${detail}`, {
    remediation: full
      ? `The disk holding ${dir} is full: free space there (delete checkpoints or sandboxes), then retry.`
      : "Check that qemu-utils and e2fsprogs are installed (scripts/install-deps.sh) and the data dir is writable.",
    context: { disks_dir: dir, ...(full ? { limit: "disk" } : {}) },
  });
}
