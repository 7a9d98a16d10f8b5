// Memory accounting from /proc/<pid>/smaps: what each VM holds privately,
// what it shares through base files, and host totals with every shared base
// page counted once.

import fs from "node:fs";
import { allocatedBytes } from "./base-file.js";

export interface VmMemory {
  /**
   * Memory only this VM holds: every anonymous page of the QEMU process —
   * guest pages it changed (copy-on-write copies of the base) plus the VMM's
   * own heap and TCG code buffer. File pages (the base, QEMU's binary) are not.
   */
  privateBytes: number;
  /** Guest RAM pages made private (copy-on-write copies of the base). */
  guestPrivateBytes: number;
  /** Base pages this VM maps and has not copied (shared with its siblings). */
  sharedBytes: number;
  /** Identity of the base file mapping (dev:inode), for counting it once. */
  baseKey: string | undefined;
  /** Resident size of that base in the page cache, as this VM sees it mapped. */
  baseResidentBytes: number;
  /** Memory the whole base file holds in the tmpfs (its allocated pages), whoever touched them. */
  baseAllocatedBytes: number;
}

interface Mapping {
  range: string;
  key: string;
  path: string;
  rss: number;
  anonymous: number;
}

/**
 * The mappings of an smaps text with the two fields metering uses. A QEMU's
 * smaps has ~8,000 lines and every sandbox object the API returns reads one,
 * so field lines are recognised by their first character (field names start
 * upper case, mapping lines with a hex digit) and only Rss and Anonymous parsed.
 */
function parseSmaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  let cur: Mapping | undefined;
  for (const line of text.split("\n")) {
    const c = line.charCodeAt(0);
    if ((c >= 48 && c <= 57) || (c >= 97 && c <= 102)) {
      const head = /^([0-9a-f]+-[0-9a-f]+) \S+ \S+ (\S+) (\d+)\s*(.*)$/.exec(line);
      if (head) {
        cur = { range: head[1] ?? "", key: `${head[2]}:${head[3]}`, path: head[4] ?? "", rss: 0, anonymous: 0 };
        out.push(cur);
      }
    } else if (cur && c === 82 && line.startsWith("Rss:")) {
      cur.rss = kbField(line);
    } else if (cur && c === 65 && line.startsWith("Anonymous:")) {
      cur.anonymous = kbField(line);
    }
  }
  return out;
}

/** Bytes of a `Name:   123 kB` line. */
function kbField(line: string): number {
  return Number.parseInt(line.slice(line.indexOf(":") + 1), 10) * 1024;
}

/** Reads one VM's memory figures; `ramMarker` identifies its guest RAM mapping by path. */
export function readVmMemory(pid: number, ramMarker: (path: string) => boolean): VmMemory {
  const maps = parseSmaps(fs.readFileSync(`/proc/${pid}/smaps`, "utf8"));
  let privateBytes = 0;
  let guestPrivateBytes = 0;
  let sharedBytes = 0;
  let baseKey: string | undefined;
  let baseResidentBytes = 0;
  let baseAllocatedBytes = 0;
  for (const m of maps) {
    const anon = m.anonymous;
    privateBytes += anon;
    if (ramMarker(m.path)) {
      // COW copies of base pages are anonymous; the rest of the mapping's
      // resident pages are the base file's page cache, shared with siblings.
      guestPrivateBytes += anon;
      const fileResident = m.rss - anon;
      sharedBytes += fileResident;
      baseKey = m.key;
      baseResidentBytes += fileResident;
      try {
        baseAllocatedBytes = allocatedBytes(`/proc/${pid}/map_files/${m.range}`);
      } catch {
        baseAllocatedBytes = baseResidentBytes; // map_files needs root; fall back to what this VM touched
      }
    }
  }
  return { privateBytes, guestPrivateBytes, sharedBytes, baseKey, baseResidentBytes, baseAllocatedBytes };
}

export interface HostMemory {
  /** Sum of private bytes over all VMs. */
  privateBytes: number;
  /** Distinct bases, each counted once: the memory its file holds in the tmpfs. */
  sharedBytes: number;
  totalBytes: number;
}

export function hostTotals(vms: VmMemory[]): HostMemory {
  const bases = new Map<string, number>();
  let privateBytes = 0;
  for (const v of vms) {
    privateBytes += v.privateBytes;
    if (v.baseKey) bases.set(v.baseKey, Math.max(bases.get(v.baseKey) ?? 0, v.baseAllocatedBytes));
  }
  const sharedBytes = [...bases.values()].reduce((a, b) => a + b, 0);
  return { privateBytes, sharedBytes, totalBytes: privateBytes + sharedBytes };
}

/**
 * The latest reading of each VM, reused while younger than `maxAgeMs`: every
 * sandbox object the API returns carries its memory, and an smaps read costs
 * 3–12 ms of the event loop (more while the guest runs hot, as right after a
 * claim), on a create's answer, on each GET, once per sandbox of a list.
 */
export class MemoryReadings<V extends object> {
  private readonly byVm = new WeakMap<V, { at: number; value: VmMemory }>();

  constructor(
    private readonly read: (vm: V) => VmMemory,
    private readonly maxAgeMs = 1000,
    private readonly now: () => number = Date.now,
  ) {}

  /** The VM's memory: the latest reading if fresh enough, else read now. */
  get(vm: V): VmMemory {
    const r = this.byVm.get(vm);
    if (r && this.now() - r.at <= this.maxAgeMs) return r.value;
    const value = this.read(vm);
    this.byVm.set(vm, { at: this.now(), value });
    return value;
  }

  /**
   * Reads now and keeps the reading for `carryOver`: for a VM that stops
   * after it (a warm pool VM paused until its claim), whose memory cannot
   * change meanwhile.
   */
  take(vm: V): void {
    this.byVm.set(vm, { at: this.now(), value: this.read(vm) });
  }

  /** The stopped VM runs again (claimed): its reading taken while stopped counts as taken now. */
  carryOver(vm: V): void {
    const r = this.byVm.get(vm);
    if (r) r.at = this.now();
  }
}
