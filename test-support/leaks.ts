// "No orphan process, no leaked file" checks for fault tests: everything a
// data dir's engine owns on the host must be accounted for by its journal.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { type JournalData, readJournal as readJournalFiles } from "../packages/engine/src/journal.js";
import { qemuPidsOf } from "../packages/engine/src/qemu/processes.js";
import { processStartTime } from "../packages/engine/src/vm.js";

export { qemuPidsOf };

export interface Owned {
  dataDir: string;
  shmDir: string;
}

/** What the journal of a data dir records now (empty when there is none). */
export function readJournal(dataDir: string): JournalData {
  try {
    return readJournalFiles(dataDir).data;
  } catch {
    return { version: 1, templates: {}, vms: {} };
  }
}

const list = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).map((f) => path.join(dir, f)) : []);

/**
 * What is on the host beyond the journal: QEMU processes of the data dir not
 * journaled, journaled VMs whose QEMU is gone, and files in the shm dir,
 * <dataDir>/vms and <dataDir>/bases that no template or journaled VM owns.
 * `liveVmDirs` adds VM dirs allowed without a journal entry (a failed
 * sandbox keeps its logs until it is terminated).
 */
export function leaks(o: Owned, liveVmDirs: string[] = []): string[] {
  const j = readJournal(o.dataDir);
  const vms = Object.values(j.vms);
  const out: string[] = [];
  const journaledPids = new Set(vms.map((v) => v.pid));
  for (const pid of qemuPidsOf(o.dataDir)) if (!journaledPids.has(pid)) out.push(`orphan QEMU pid ${pid}`);
  const running = new Set(qemuPidsOf(o.dataDir));
  for (const v of vms) if (!running.has(v.pid)) out.push(`journaled VM ${v.vmId} (pid ${v.pid}) has no QEMU`);
  // Checkpoint bases the engine keeps materialized, while their checkpoint exists.
  const checkpoints = list(path.join(o.dataDir, "checkpoints", "manifests")).map((f) => path.basename(f, ".json"));
  const owned = new Set<string>([
    ...checkpoints.flatMap((id) => [
      path.join(o.shmDir, `mitos-cpbase-${id}.ram`),
      path.join(o.dataDir, "bases", `${id}.state`),
    ]),
    ...Object.values(j.templates).flatMap((t) => [t.ramFile, t.stateFile]),
    ...vms.flatMap((v) => [v.dir, ...v.files]),
    ...liveVmDirs,
  ]);
  for (const f of [...list(o.shmDir), ...list(path.join(o.dataDir, "vms")), ...list(path.join(o.dataDir, "bases"))]) {
    if (!owned.has(f)) out.push(`leaked file ${f}`);
  }
  // A slot's claim names its VM: one of a journaled VM is in use, any other is a leak.
  const journaled = new Set(vms.map((v) => v.vmId));
  out.push(
    ...networkLeaks(o.dataDir).filter((l) => !/for VM (\S+)$/.test(l) || !journaled.has(l.split(" ").at(-1) as string)),
  );
  return out;
}

/** Waits (briefly: exits and reaps are asynchronous) until nothing leaks, then asserts it. */
export async function assertNoLeaks(o: Owned, liveVmDirs: string[] = [], waitMs = 10_000): Promise<void> {
  const until = Date.now() + waitMs;
  let found = leaks(o, liveVmDirs);
  while (found.length > 0 && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 100));
    found = leaks(o, liveVmDirs);
  }
  assert.deepEqual(found, [], `leaks in ${o.dataDir}`);
}

/** Kills (SIGKILL) every QEMU of a data dir: test cleanup after a failure. */
export function killQemusOf(dataDir: string): void {
  for (const pid of qemuPidsOf(dataDir)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
}

/** Whether `pid` runs: a killed process that is a zombie until init reaps it does not. */
export function running(pid: number): boolean {
  return processStartTime(pid) !== undefined;
}

/** Resolves once `pid` no longer exists (reaped by its parent). */
export async function waitGone(pid: number, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (fs.existsSync(`/proc/${pid}`)) {
    if (Date.now() > until) throw new Error(`pid ${pid} still exists after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Network slots left on the host: claims of this data dir in the slot
 * registry, and any slot namespace or host veth no claim accounts for
 * (nftables rules and taps live in the namespaces and go with them).
 */
export function networkLeaks(dataDir: string, registry = "/run/mitos/net-slots"): string[] {
  const out: string[] = [];
  const claims = new Set<string>();
  for (const f of list(registry)) {
    if (!/^\d+$/.test(path.basename(f))) continue; // a claim being written aside
    claims.add(path.basename(f));
    try {
      const c = JSON.parse(fs.readFileSync(f, "utf8")) as { dataDir?: string; vmId?: string };
      if (c.dataDir === dataDir) out.push(`slot ${path.basename(f)} still claimed for VM ${c.vmId}`);
    } catch {
      out.push(`unreadable slot claim ${f}`);
    }
  }
  for (const n of list("/run/netns").map((f) => path.basename(f))) {
    const m = /^mitos-(\d+)$/.exec(n);
    if (m && !claims.has(m[1] as string)) out.push(`namespace ${n} without a claim`);
  }
  for (const n of list("/sys/class/net").map((f) => path.basename(f))) {
    const m = /^mitos(\d+)$/.exec(n);
    if (m && !claims.has(m[1] as string)) out.push(`veth ${n} without a claim`);
  }
  return out;
}
