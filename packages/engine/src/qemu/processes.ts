// Finding the QEMU processes of one data dir from /proc: a restarted engine
// reaps them even when it died before journaling them (between spawn and
// journal write), and tests check that none is left behind.

import fs from "node:fs";

/** Pids of qemu-system processes whose command line names a path under `<dataDir>/vms/`. */
export function qemuPidsOf(dataDir: string): number[] {
  // A socket or log path follows "=", ":" or "," in QEMU's arguments; anchoring
  // on them keeps /a/vms/ from matching /b/a/vms/.
  const escaped = `${dataDir.replace(/\/+$/, "")}/vms/`.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const ours = new RegExp(`(^|[=:,])${escaped}`);
  const pids: number[] = [];
  for (const p of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    let args: string[];
    try {
      args = fs.readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
    } catch {
      continue; // exited meanwhile
    }
    if (/(^|\/)qemu-system-[^/]*$/.test(args[0] ?? "") && args.some((a) => ours.test(a))) pids.push(Number(p));
  }
  return pids;
}
