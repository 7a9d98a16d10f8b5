// Scaling curves and density with the default caps (issue 19, item 6):
// npm run bench:scaling [-- --quick] [-- --template=base] [-- --max=500] [-- --sizes=1,4|none]
//
// An in-process engine with its default limits (CoW-aware admission, the
// caps mitosd starts with). Two parts:
//  - fork(n) of one running parent for n = 1, 4, 16, 64: wall time until
//    every child is ready and until every child answered an exec, per child,
//    the engine's own split (capture, restore, activate), and memory (each
//    child's private pages and QEMU, its base once);
//  - density: one parent forked 64 at a time (max_fork_count) until `--max`
//    children are live or admission refuses; after each batch every new child
//    answers an exec, then the host's memory is read (the metering's total
//    and MemAvailable). A refusal is recorded with its limit.
// Records to bench/results/<date>-scaling.{json,md} (-scaling-<template> for another template).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { defaultDataDir, Engine, MitosError, type SandboxInfo } from "../packages/engine/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { fmt, median, progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const arg = (name: string) =>
  process.argv
    .find((a) => a.startsWith(`--${name}=`))
    ?.split("=")
    .slice(1)
    .join("=");
const template = arg("template") ?? "python";
const maxChildren = Number(arg("max") ?? (quick ? 16 : 500));
// --sizes=none: density only.
const SIZES =
  arg("sizes") === "none" ? [] : (arg("sizes")?.split(",").map(Number) ?? (quick ? [1, 4] : [1, 4, 16, 64]));
const reps = (n: number) => (quick ? 1 : n <= 4 ? 5 : n <= 16 ? 3 : 2);
const BATCH = 64;
const MiB = 2 ** 20;
const log = progressLogger();
const { series, add } = seriesList();
const notes: string[] = [];

const forkLog: Array<Record<string, number>> = [];
const shmDir = "/dev/shm/mitos-bench-scaling";
fs.mkdirSync(shmDir, { recursive: true });
const dataDir = tempDataDir("bench-scaling", shmDir);
const engine = await Engine.open({
  dataDir,
  shmDir,
  imagesDir: path.join(defaultDataDir(), "images"),
  poolTargets: {},
  log: (msg, fields) => {
    if (msg === "fork" && fields) forkLog.push(fields as Record<string, number>);
  },
});

const elapsed = async <T>(f: () => Promise<T>): Promise<[number, T]> => {
  const t0 = performance.now();
  const r = await f();
  return [performance.now() - t0, r];
};
const answer = async (c: SandboxInfo) => {
  const r = await engine.exec(c.id, { command: "echo hi > /tmp/x; cat /tmp/x" }).result;
  if (r.exitCode !== 0 || r.stdout.toString() !== "hi\n") throw new Error(`child ${c.id} did not answer`);
};
const memAvailableMiB = () =>
  Number(/MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0) / 1024;
/** Children's private memory and their base counted once, from the engine's metering. */
const childMemory = (children: SandboxInfo[]) => {
  const ids = new Set(children.map((c) => c.id));
  const m = engine.metering();
  const rows = m.sandboxes.filter((r) => ids.has(r.id));
  const bases = new Map(rows.map((r) => [r.baseKey, r.baseAllocatedBytes]));
  const privateBytes = rows.reduce((a, r) => a + r.privateBytes, 0);
  const baseBytes = [...bases.values()].reduce((a, b) => a + b, 0);
  return { rows, privateBytes, baseBytes, hostBytes: m.host.totalBytes };
};
const parentOf = async () => {
  const p = await engine.create(template, { timeoutSeconds: 3600 });
  const r = await engine.exec(p.id, {
    command: 'python3 -c \'import json; json.dump(list(range(10000)), open("/root/state.json","w"))\'',
  }).result;
  if (r.exitCode !== 0) throw new Error(`parent set-up failed: ${r.stderr.toString()}`);
  return p;
};
const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

let accel = "";
try {
  log(`template ${template}: building or loading`);
  await engine.createTemplate(template);
  const parent = await parentOf();
  accel = parent.accel ?? "";
  const limits = engine.caps.limits;
  notes.push(
    `Caps: the engine's defaults on this host (admission ${limits.admission}, max_sandboxes ${limits.maxSandboxes}, max_guest_memory_mib ${limits.maxGuestMemoryMib}, memory_floor_mib ${limits.memoryFloorMib}, max_fork_count ${limits.maxForkCount}).`,
  );
  // Warm-up: the first capture of a parent faults its base in (decision 0008).
  for (const c of (await engine.fork(parent.id, { count: 1 })).children) await engine.terminate(c.id);

  for (const n of SIZES) {
    const ready = add(`fork(${n}) → all ready`, "ms");
    const answered = add(`fork(${n}) → every child answered an exec`, "ms");
    const perChild = add(`fork(${n}) → all ready, per child`, "ms");
    const capture = add(`fork(${n}) profile: capture`, "ms");
    const restore = add(`fork(${n}) profile: restore`, "ms");
    const activate = add(`fork(${n}) profile: activate`, "ms");
    const priv = add(`fork(${n}): private memory per child (guest pages + QEMU)`, "MiB");
    const total = add(`fork(${n}): all children, their base counted once`, "MiB");
    for (let i = 0; i < reps(n); i++) {
      await settle(2000); // the spare QEMUs for the next fork are up (they start 1 s after a fork)
      const since = forkLog.length;
      const t0 = performance.now();
      const { children } = await engine.fork(parent.id, { count: n });
      ready.values.push(performance.now() - t0);
      perChild.values.push((performance.now() - t0) / n);
      await Promise.all(children.map(answer));
      answered.values.push(performance.now() - t0);
      const step = forkLog[since];
      if (step) {
        capture.values.push(step.captureMs ?? Number.NaN);
        restore.values.push(step.restoreMs ?? Number.NaN);
        activate.values.push(step.activateMs ?? Number.NaN);
      }
      await settle(3000); // QEMUs settle (the metering's "settled" sandboxes)
      const m = childMemory(children);
      priv.values.push(...m.rows.map((r) => r.privateBytes / MiB));
      total.values.push((m.privateBytes + m.baseBytes) / MiB);
      for (const c of children) await engine.terminate(c.id);
    }
    log(`fork(${n}): ${fmt(median(ready.values))} ms ready, ${fmt(median(answered.values))} ms answered`);
  }

  log(`density: up to ${maxChildren} children of one parent, ${BATCH} per fork`);
  const live: SandboxInfo[] = [];
  const batchMs = add("density: fork of one batch → every new child answered", "ms");
  const perChildMiB = add("density: private memory per child at the end", "MiB");
  const availBefore = memAvailableMiB();
  let refusal = "";
  while (live.length < maxChildren) {
    const count = Math.min(BATCH, maxChildren - live.length);
    try {
      const [ms, made] = await elapsed(async () => {
        const { children } = await engine.fork(parent.id, { count, timeoutSeconds: 3600 });
        await Promise.all(children.map(answer));
        return children;
      });
      live.push(...made);
      batchMs.values.push(ms);
      const m = childMemory(live);
      const [l1] = os.loadavg();
      notes.push(
        `density: ${live.length} live children (+${made.length} in ${fmt(ms)} ms, each answered); children's private ${fmt(m.privateBytes / MiB)} MiB + base ${fmt(m.baseBytes / MiB)} MiB = ${fmt((m.privateBytes + m.baseBytes) / 2 ** 30)} GiB; every sandbox incl. the parent ${fmt(m.hostBytes / 2 ** 30)} GiB; MemAvailable ${fmt(memAvailableMiB())} MiB (${fmt(availBefore)} before); load ${fmt(l1 ?? 0)}`,
      );
      log(notes[notes.length - 1] ?? "");
    } catch (err) {
      // A refusal by admission, or a fork whose children could not start (the host's CPU): the end either way.
      if (!(err instanceof MitosError)) throw err;
      refusal = `${err.code}: ${err.message} (${JSON.stringify(err.context)})`;
      log(`density: stopped at ${live.length}: ${refusal}`);
      break;
    }
  }
  await settle(3000);
  const m = childMemory(live);
  perChildMiB.values.push(...m.rows.map((r) => r.privateBytes / MiB));
  // The density goal's two figures (issue 19: 500 children under 20 GiB), read by npm run bench's summary.
  add("density: live children held at once", "").values.push(live.length);
  add("density: all children at the end, their bases once", "GiB").values.push(
    (m.privateBytes + m.baseBytes) / 2 ** 30,
  );
  // Every child still answers at the end, not only when it was new.
  const [allMs] = await elapsed(() => Promise.all(live.map(answer)));
  notes.push(
    `density: at the end ${live.length} live children of one parent all answered an exec again (${fmt(allMs)} ms for all, concurrently); in all ${fmt((m.privateBytes + m.baseBytes) / 2 ** 30)} GiB (children's private + their base once), every sandbox incl. the parent ${fmt(m.hostBytes / 2 ** 30)} GiB.`,
    refusal
      ? `density: the next fork of ${BATCH} failed, nothing half-created: ${refusal}`
      : `density: stopped at --max=${maxChildren} without a refusal.`,
  );
  for (const c of live) await engine.terminate(c.id);
  await engine.terminate(parent.id);
} finally {
  await engine.close({ killSandboxes: true });
  removeDataDir(dataDir, shmDir);
}
notes.push(
  `Parent: a ${template} sandbox that ran Python and wrote a 50 KB file. Children run \`echo hi > /tmp/x; cat /tmp/x\`. Memory from /proc/<pid>/smaps (anonymous pages per QEMU; bases counted once at the memory their file holds). fork(n) sizes wait 2 s between forks so the spare QEMUs are up, as users forking in a loop meet them.`,
);
record(
  template === "python" ? "scaling" : `scaling-${template}`,
  { quick, accel, command: `npm run bench:scaling -- ${process.argv.slice(2).join(" ")}`.trim() },
  series,
  notes,
);
