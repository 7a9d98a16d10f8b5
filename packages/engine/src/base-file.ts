// The base file a running VM maps as its guest RAM, found through /proc (it
// may already be unlinked), and giving back the pages a capture faulted in.
//
// Why: QEMU's migration reads every guest page to find the zero ones. On a
// tmpfs base a read fault on a hole allocates a page, so after one capture
// the source's base (a template, or an earlier fork's base) is fully
// allocated: 512 MiB for a 512 MiB guest that uses 70. Pages that read as
// zero can be punched back into holes while VMs map the file: nobody maps a
// base shared-writable, so a zero page stays zero, and VMs that read it again
// just see zeros.

import { spawn } from "node:child_process";
import fs from "node:fs";

/** Matches the path of a Mitos RAM file mapping in /proc/<pid>/maps (deleted or not). */
export const RAM_FILE_RE = /\/mitos-[^/]*\.ram( \(deleted\))?$/;

/** `/proc/<pid>/map_files/<range>` of the VM's RAM file mapping: opens the base even when unlinked. */
export function baseFileOf(pid: number): string | undefined {
  let maps: string;
  try {
    maps = fs.readFileSync(`/proc/${pid}/maps`, "utf8");
  } catch {
    return undefined;
  }
  for (const line of maps.split("\n")) {
    const m = /^([0-9a-f]+-[0-9a-f]+) \S+ \S+ \S+ \d+\s+(.*)$/.exec(line);
    if (m?.[2] && RAM_FILE_RE.test(m[2])) return `/proc/${pid}/map_files/${m[1]}`;
  }
  return undefined;
}

/** Bytes the file holds in memory (tmpfs: allocated pages). */
export function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/**
 * Punches every all-zero page of `file` back into a hole (util-linux
 * `fallocate --dig-holes`), at the lowest CPU and I/O priority so it does not
 * slow the VMs that are starting.
 */
export function digHoles(file: string): Promise<void> {
  return fallocate(["--dig-holes", file]);
}

/** Punches the whole of `file` into holes (its size stays: VMs may be mapping it). */
export async function punchHoles(file: string): Promise<void> {
  await fallocate(["--punch-hole", "--offset", "0", "--length", String(fs.statSync(file).size), file]);
}

function fallocate(args: string[]): Promise<void> {
  const file = args.at(-1);
  return new Promise((resolve, reject) => {
    const p = spawn("nice", ["-n", "19", "fallocate", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    p.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    p.once("error", reject);
    p.once("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`fallocate ${args[0]} ${file}: exit ${code}: ${err.trim()}`)),
    );
  });
}
