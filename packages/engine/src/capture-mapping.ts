// Fork capture from the RAM mapping (decision 0022): the new base is a
// sparse copy of the source's base file with the source's own pages (the
// ones it wrote, found in /proc/<pid>/pagemap) written over it, and the
// device state comes from QEMU without RAM (`xen-save-devices-state`, which
// any QEMU build has). QEMU's migration reads every guest page to find the
// zero ones and sends the rest through a socket; this reads only the pages
// that exist. The migration path (snapshot.ts) stays: it is the fallback, and
// the first capture of each machine shape, whose stream gives the part of a
// device state that precedes the device sections (header, configuration, the
// RAM block list and the ROM pages), which is the same for every VM of that
// shape.

import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { RAM_FILE_RE } from "./base-file.js";
import type { QmpClient } from "./qemu/qmp.js";
import type { MachineSpec } from "./vm.js";

const execFileP = promisify(execFile);
const PAGE = 4096;
/** Bytes copied per read of /proc/<pid>/mem. */
const CHUNK = 4 << 20;
const ZERO_PAGE = Buffer.alloc(PAGE);
/** QEMU_VM_VMDESCRIPTION: the loader reads one after EOF (it only logs if it is missing). */
const VMDESC = 0x06;
const VMDESC_JSON = Buffer.from('{"page_size": 4096, "devices": []}');

export interface MappingCaptureStats {
  /** Pages the source wrote (anonymous in its mapping): read from /proc/<pid>/mem. */
  privatePages: number;
  /** Pages of the source's base it maps (left as the copy has them). */
  basePages: number;
  /** Pages it never touched (the copy has the base's content, a hole if none). */
  untouchedPages: number;
  /** Pages the source zeroed over data of its base: written as zeros (a hole cannot be punched from here). */
  zeroedPages: number;
  /** Bytes the base file holds (what the sparse copy reads). */
  baseBytes: number;
  /** The new base file held the source's base already (copied in the background before the fork). */
  basePrefilled: boolean;
  stateBytes: number;
  copyMs: number;
  privateMs: number;
  deviceMs: number;
}

/** What a device state of one machine shape starts with: learnt from a migration capture, reused by later ones. */
export class DeviceStatePrefixes {
  private readonly byMachine = new Map<string, Buffer>();

  get(machine: MachineSpec): Buffer | undefined {
    return this.byMachine.get(machineKey(machine));
  }

  /** Keeps the first `deviceOffset` bytes of a state file written by the migration path. */
  learn(machine: MachineSpec, stateFile: string, deviceOffset: number | undefined): void {
    if (!deviceOffset || this.byMachine.has(machineKey(machine))) return;
    const fd = fs.openSync(stateFile, "r");
    try {
      const prefix = Buffer.alloc(deviceOffset);
      if (fs.readSync(fd, prefix, 0, deviceOffset, 0) === deviceOffset) this.byMachine.set(machineKey(machine), prefix);
    } finally {
      fs.closeSync(fd);
    }
  }
}

/** Everything that shapes the RAM blocks and ROMs QEMU migrates: the images, memory, vCPUs, devices. */
function machineKey(m: MachineSpec): string {
  return JSON.stringify([
    m.images.keys,
    m.memMiB,
    m.vcpus,
    m.accel,
    m.diskMib ?? 0,
    Boolean(m.network),
    m.pit !== false,
  ]);
}

/** The guest RAM mapping of a QEMU process: its address range and the base file behind it. */
function ramMapping(pid: number, memBytes: number): { start: number; pages: number; file: string } {
  for (const line of fs.readFileSync(`/proc/${pid}/maps`, "utf8").split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s+(.*)$/.exec(line);
    if (!m?.[3] || !RAM_FILE_RE.test(m[3])) continue;
    const start = Number.parseInt(m[1] ?? "", 16);
    const end = Number.parseInt(m[2] ?? "", 16);
    if (end - start !== memBytes) throw new Error(`RAM mapping is ${end - start} bytes, expected ${memBytes}`);
    return { start, pages: (end - start) / PAGE, file: `/proc/${pid}/map_files/${m[1]}-${m[2]}` };
  }
  throw new Error(`no RAM file mapping in /proc/${pid}/maps`);
}

/** Copies `src` to `dst` (an existing file is overwritten in place), holes and zero blocks as holes. */
async function sparseCopy(src: string, dst: string, background = false): Promise<void> {
  const cp = ["cp", "--sparse=always", "--reflink=never", src, dst];
  try {
    // In the background at the lowest priority: VMs starting or running need the CPU more.
    await (background ? execFileP("nice", ["-n", "19", ...cp]) : execFileP("cp", cp.slice(1)));
  } catch (err) {
    const stderr = String((err as { stderr?: unknown }).stderr ?? "");
    const e = new Error(`cp ${src} ${dst}: ${stderr.trim() || (err as Error).message}`) as NodeJS.ErrnoException;
    if (/No space left/.test(stderr)) e.code = "ENOSPC";
    throw e;
  }
}

/**
 * Runs of pages the process wrote (anonymous, or swapped out) in its RAM
 * mapping, from /proc/<pid>/pagemap: bit 63 present, 62 swapped, 61 a page of
 * the file (a base page, not a private copy).
 */
function privateRuns(
  pid: number,
  start: number,
  pages: number,
): { runs: Array<[number, number]>; privatePages: number; basePages: number } {
  const map = Buffer.alloc(pages * 8);
  const fd = fs.openSync(`/proc/${pid}/pagemap`, "r");
  try {
    let got = 0;
    while (got < map.length) {
      const n = fs.readSync(fd, map, got, map.length - got, (start / PAGE) * 8 + got);
      if (n === 0) throw new Error("short read of pagemap");
      got += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  const runs: Array<[number, number]> = [];
  let privatePages = 0;
  let basePages = 0;
  let runStart = -1;
  for (let i = 0; i < pages; i++) {
    const hi = map.readUInt32LE(i * 8 + 4);
    const present = hi >>> 31 === 1;
    const swapped = ((hi >>> 30) & 1) === 1;
    const filePage = ((hi >>> 29) & 1) === 1;
    const own = (present && !filePage) || swapped;
    if (own) {
      privatePages++;
      if (runStart < 0) runStart = i;
      continue;
    }
    if (present) basePages++;
    if (runStart >= 0) runs.push([runStart, i]);
    runStart = -1;
  }
  if (runStart >= 0) runs.push([runStart, pages]);
  return { runs, privatePages, basePages };
}

/**
 * Writes the pages of `runs` from the process's memory into `ramFile` at
 * their offsets. A page the guest wrote that reads as zero stays a hole,
 * unless the copied base holds data there (then zeros go over it), so the
 * new base is as sparse as the migration's.
 */
function copyRuns(pid: number, start: number, runs: Array<[number, number]>, ramFile: string): number {
  let zeroed = 0;
  const mem = fs.openSync(`/proc/${pid}/mem`, "r");
  const out = fs.openSync(ramFile, "r+");
  const buf = Buffer.alloc(CHUNK);
  const there = Buffer.alloc(PAGE);
  const write = (from: number, to: number, at: number) => {
    for (let put = from; put < to; ) put += fs.writeSync(out, buf, put, to - put, at + put - from);
  };
  try {
    for (const [first, end] of runs) {
      for (let off = first * PAGE; off < end * PAGE; ) {
        const len = Math.min(CHUNK, end * PAGE - off);
        let got = 0;
        while (got < len) got += fs.readSync(mem, buf, got, len - got, start + off + got);
        let data = -1; // start of the current run of non-zero pages in buf
        for (let p = 0; p <= len; p += PAGE) {
          const zero = p < len && buf.compare(ZERO_PAGE, 0, PAGE, p, p + PAGE) === 0;
          if (p < len && !zero) {
            if (data < 0) data = p;
            continue;
          }
          if (data >= 0) write(data, p, off + data);
          data = -1;
          if (zero && fs.readSync(out, there, 0, PAGE, off + p) === PAGE && !there.equals(ZERO_PAGE)) {
            write(p, p + PAGE, off + p);
            zeroed++;
          }
        }
        off += len;
      }
    }
  } finally {
    fs.closeSync(mem);
    fs.closeSync(out);
  }
  return zeroed;
}

/** The source's base copied into the new base file: where its RAM is mapped, and what the copy took. */
export interface CopiedBase {
  start: number;
  pages: number;
  baseBytes: number;
  copyMs: number;
  /** The file held that base already (prefillBase): nothing was copied. */
  prefilled: boolean;
}

/**
 * A base copied into a file ahead of a fork (prefillBase). The base stays
 * open: while the fd is held its inode cannot be freed and its number given
 * to another file, so a source that maps the same (dev, ino) maps this base.
 */
export interface PrefilledBase {
  fd: number;
  dev: number;
  ino: number;
}

/**
 * Copies the base behind a VM's guest RAM into `ramFile` in the background
 * (spares wait on that file for the next fork, which then skips copyBase when
 * its source maps the same base). Bases never change once made (the hole
 * punching of base-file.ts only turns zero pages into holes, which read the same).
 */
export async function prefillBase(pid: number, memBytes: number, ramFile: string): Promise<PrefilledBase> {
  const ram = ramMapping(pid, memBytes);
  const fd = fs.openSync(ram.file, "r");
  try {
    const st = fs.fstatSync(fd);
    // Through the fd (mitosd's, not cp's: fds are not inherited): the copy is of the very file held.
    await sparseCopy(`/proc/${process.pid}/fd/${fd}`, ramFile, true);
    if (fs.statSync(ramFile).size !== memBytes) fs.truncateSync(ramFile, memBytes);
    return { fd, dev: st.dev, ino: st.ino };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/**
 * Copies the base file behind a VM's guest RAM into `ramFile` (created, or
 * overwritten in place: spare VMs may map it already), holes and zero
 * blocks as holes. A base never changes once made, so this may run before
 * the VM is paused: whatever the guest writes meanwhile becomes a page of
 * its own, which finishCapture copies over the base while it is paused.
 */
export async function copyBase(
  pid: number,
  memBytes: number,
  ramFile: string,
  prefilled?: PrefilledBase,
): Promise<CopiedBase> {
  const t0 = performance.now();
  const ram = ramMapping(pid, memBytes);
  const st = fs.statSync(ram.file);
  const same = prefilled !== undefined && st.dev === prefilled.dev && st.ino === prefilled.ino;
  if (!same) {
    await sparseCopy(ram.file, ramFile);
    if (fs.statSync(ramFile).size !== memBytes) fs.truncateSync(ramFile, memBytes);
  }
  return {
    start: ram.start,
    pages: ram.pages,
    baseBytes: st.blocks * 512,
    copyMs: performance.now() - t0,
    prefilled: same,
  };
}

/** A paused VM captured from its mapping in one go (copyBase, then finishCapture). */
export async function captureFromMapping(
  vm: { pid: number; dir: string; qmp: QmpClient },
  prefix: Buffer,
  files: { ramFile: string; stateFile: string; memBytes: number },
): Promise<MappingCaptureStats> {
  return finishCapture(vm, prefix, await copyBase(vm.pid, files.memBytes, files.ramFile), files);
}

/**
 * With the VM paused and its base copied into `files.ramFile`: writes the
 * pages the guest made its own over the copy, and the device state
 * (`prefix` for this machine shape, then QEMU's device sections) to
 * `files.stateFile`, loadable like the migration path's.
 */
export async function finishCapture(
  vm: { pid: number; dir: string; qmp: QmpClient },
  prefix: Buffer,
  copied: CopiedBase,
  files: { ramFile: string; stateFile: string },
): Promise<MappingCaptureStats> {
  const t1 = performance.now();
  const { runs, privatePages, basePages } = privateRuns(vm.pid, copied.start, copied.pages);
  const zeroedPages = copyRuns(vm.pid, copied.start, runs, files.ramFile);
  const t2 = performance.now();
  // QEMU (the VM's uid) writes into the VM's own dir; the devices' sections follow its 8-byte header.
  const devFile = path.join(vm.dir, "devices.state");
  fs.rmSync(devFile, { force: true });
  try {
    await vm.qmp.execute("xen-save-devices-state", { filename: devFile, live: false });
    const dev = fs.readFileSync(devFile);
    if (dev.length < 9 || dev.readUInt32BE(0) !== 0x5145564d || dev[dev.length - 1] !== 0) {
      throw new Error(`QEMU's device state is not a migration stream (${dev.length} bytes)`);
    }
    const desc = Buffer.alloc(5);
    desc[0] = VMDESC;
    desc.writeUInt32BE(VMDESC_JSON.length, 1);
    const state = Buffer.concat([prefix, dev.subarray(8), desc, VMDESC_JSON]);
    fs.writeFileSync(files.stateFile, state, { mode: 0o600 });
    return {
      privatePages,
      basePages,
      untouchedPages: copied.pages - privatePages - basePages,
      zeroedPages,
      baseBytes: copied.baseBytes,
      basePrefilled: copied.prefilled,
      stateBytes: state.length,
      copyMs: copied.copyMs,
      privateMs: t2 - t1,
      deviceMs: performance.now() - t2,
    };
  } finally {
    fs.rmSync(devFile, { force: true });
  }
}
