// What CoW-aware admission counts (decision 0021): the private pages each
// live sandbox's QEMU really holds (guest pages it copied on write, the VMM's
// heap and TCG code cache), every shared base in the tmpfs once, and for
// sandboxes too new to measure a reservation: their template's learnt cost,
// the median private memory of its settled sandboxes.

import fs from "node:fs";
import path from "node:path";
import type { MemoryUse } from "./limits.js";
import { VMM_ESTIMATE_MIB } from "./limits.js";

/** A sandbox is measured once it has run this long (a fresh restore is still faulting pages in). */
export const SETTLE_MS = 3000;
/** Samples younger than this are reused: admission runs per request, /proc reads stay off the hot path. */
const FRESH_MS = 500;
const MiB = 1024 * 1024;

/** One live sandbox as the meter sees it. */
export interface MeteredSandbox {
  templateId: string;
  /** Its QEMU's pid; undefined while it starts (a placeholder). */
  pid: number | undefined;
  /** When it was created or forked (unix ms). */
  since: number;
}

export interface HostMemInfo {
  totalBytes: number;
  availableBytes: number;
}

/** MemTotal and MemAvailable from /proc/meminfo. */
export function readMemInfo(): HostMemInfo {
  const text = fs.readFileSync("/proc/meminfo", "utf8");
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? 0) * 1024;
  return { totalBytes: kb("MemTotal"), availableBytes: kb("MemAvailable") };
}

/** Anonymous (private) bytes of a process from smaps_rollup; 0 once it has exited. */
export function privateBytesOf(pid: number): number {
  try {
    const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    return Number(/^Anonymous:\s+(\d+) kB/m.exec(text)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/** Memory our files in the tmpfs hold (template RAM, fork bases, RAM files of VMs): each counted once. */
export function sharedBytesIn(shmDir: string): number {
  let total = 0;
  let names: string[];
  try {
    names = fs.readdirSync(shmDir);
  } catch {
    return 0;
  }
  for (const name of names) {
    if (!name.startsWith("mitos-")) continue;
    try {
      total += fs.statSync(path.join(shmDir, name)).blocks * 512;
    } catch {
      // Removed while we listed.
    }
  }
  return total;
}

export class MemoryMeter {
  private readonly learnt = new Map<string, number>();
  private readonly samples = new Map<number, { at: number; bytes: number }>();
  private shared: { at: number; bytes: number } | undefined;

  constructor(
    private readonly shmDir: string,
    private readonly memInfo: () => HostMemInfo = readMemInfo,
    private readonly privateOf: (pid: number) => number = privateBytesOf,
  ) {}

  /** What a new sandbox of `templateId` is expected to take, MiB: the learnt cost, else the VMM estimate. */
  reservationMib(templateId: string): number {
    return this.learnt.get(templateId) ?? VMM_ESTIMATE_MIB;
  }

  /** The host's memory now, and the learnt costs brought up to date. */
  use(sandboxes: Iterable<MeteredSandbox>, now: number = Date.now()): MemoryUse {
    let committed = 0;
    let pending = 0;
    const byTemplate = new Map<string, number[]>();
    const seen = new Set<number>();
    for (const s of sandboxes) {
      if (s.pid === undefined || now - s.since < SETTLE_MS) {
        pending += this.reservationMib(s.templateId) * MiB;
        continue;
      }
      seen.add(s.pid);
      const bytes = this.sample(s.pid, now);
      committed += bytes;
      const list = byTemplate.get(s.templateId) ?? [];
      list.push(bytes);
      byTemplate.set(s.templateId, list);
    }
    for (const pid of this.samples.keys()) if (!seen.has(pid)) this.samples.delete(pid);
    for (const [template, list] of byTemplate) this.learnt.set(template, median(list) / MiB);
    if (!this.shared || now - this.shared.at > FRESH_MS) this.shared = { at: now, bytes: sharedBytesIn(this.shmDir) };
    const host = this.memInfo();
    return {
      totalMib: host.totalBytes / MiB,
      availableMib: host.availableBytes / MiB,
      committedMib: (committed + this.shared.bytes) / MiB,
      pendingMib: pending / MiB,
    };
  }

  private sample(pid: number, now: number): number {
    const s = this.samples.get(pid);
    if (s && now - s.at <= FRESH_MS) return s.bytes;
    const bytes = this.privateOf(pid);
    this.samples.set(pid, { at: now, bytes });
    return bytes;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}
