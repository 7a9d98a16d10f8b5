// Finding QEMU processes from /proc: a restarted engine reaps those of its
// data dir even when it died before journaling them (between spawn and
// journal write), and tests check that none is left behind.

import fs from "node:fs";

/** Every qemu-system process on the host, with its argv. */
export function qemuProcesses(): Array<{ pid: number; args: string[] }> {
  const found: Array<{ pid: number; args: string[] }> = [];
  for (const p of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    let args: string[];
    try {
      args = fs.readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
    } catch {
      continue; // exited meanwhile
    }
    if (/(^|\/)qemu-system-[^/]*$/.test(args[0] ?? "")) found.push({ pid: Number(p), args });
  }
  return found;
}

/** Pids of qemu-system processes whose command line names a path under `<dataDir>/vms/`. */
export function qemuPidsOf(dataDir: string): number[] {
  // A socket or log path follows "=", ":" or "," in QEMU's arguments; anchoring
  // on them keeps /a/vms/ from matching /b/a/vms/.
  const escaped = `${dataDir.replace(/\/+$/, "")}/vms/`.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const ours = new RegExp(`(^|[=:,])${escaped}`);
  return qemuProcesses()
    .filter((q) => q.args.some((a) => ours.test(a)))
    .map((q) => q.pid);
}
