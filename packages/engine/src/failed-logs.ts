// Logs of VMs that failed to start. The error a caller gets names the VM's
// QEMU and console logs; those files must outlive the VM, yet nothing owns a
// VM that never started, so its directory would stay in <dataDir>/vms for
// good. Instead it moves to <dataDir>/failed-vms, where the newest
// FAILED_LOGS_KEPT are kept (across restarts) and older ones go.

import fs from "node:fs";
import path from "node:path";

export const FAILED_LOGS_KEPT = 32;

/** Where the logs of VMs of `dataDir` that failed to start are kept. */
export function failedLogsDir(dataDir: string): string {
  return path.join(dataDir, "failed-vms");
}

/**
 * Moves a stopped VM's directory (its logs) to `failedLogsDir(dataDir)/<id>`
 * and drops the oldest beyond FAILED_LOGS_KEPT. Returns the new directory, or
 * undefined when there was nothing to move (already moved or never made).
 */
export function keepFailedLogs(dataDir: string, vmDir: string, kept = FAILED_LOGS_KEPT): string | undefined {
  const root = failedLogsDir(dataDir);
  const to = path.join(root, path.basename(vmDir));
  if (!fs.existsSync(vmDir)) return undefined;
  try {
    // Root's alone: a VM's files inside stay owned by its uid, which another VM may get next.
    fs.mkdirSync(root, { recursive: true, mode: 0o700 });
    fs.rmSync(to, { recursive: true, force: true }); // an earlier failure of a VM of the same id
    fs.renameSync(vmDir, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    // Cannot keep them (another filesystem, no space for the entry): do not leave them in vms/ either.
    fs.rmSync(vmDir, { recursive: true, force: true });
    return undefined;
  }
  // The time of failure, not of the last log line.
  const now = new Date();
  fs.utimesSync(to, now, now);
  prune(root, to, kept);
  return to;
}

/** Drops the oldest beyond `kept`; `newest` (just moved) stays whatever the clock says. */
function prune(root: string, newest: string, kept: number): void {
  const entries = fs
    .readdirSync(root)
    .filter((name) => path.join(root, name) !== newest)
    .map((name) => {
      const p = path.join(root, name);
      try {
        return { p, t: fs.statSync(p).mtimeMs };
      } catch {
        return undefined;
      }
    })
    .filter((e): e is { p: string; t: number } => e !== undefined)
    .sort((a, b) => b.t - a.t);
  for (const e of entries.slice(Math.max(0, kept - 1))) fs.rmSync(e.p, { recursive: true, force: true });
}
