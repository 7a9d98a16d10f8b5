// Fork capture A/B (issue 19, item 3; decision 0022): npm run bench:capture [-- --quick]
//
// 1. One paused python parent captured both ways, one right after the other,
//    per round (order alternating): QEMU's migration split into a base and a
//    device state (snapshot.ts) and the capture from the RAM mapping
//    (capture-mapping.ts). Time, bytes read, and whether both bases hold the
//    same bytes. The parent runs a little between rounds.
// 2. The same engine forks end to end with `forkCapture: "migration"` and
//    with the default (mapping), fork(1) and fork(8) → every child answered,
//    with the engine's own capture step.
// Records to bench/results/<date>-capture.{json,md}.

import fs from "node:fs";
import path from "node:path";
import { captureFromMapping, DeviceStatePrefixes } from "../packages/engine/src/capture-mapping.js";
import { defaultDataDir, Engine } from "../packages/engine/src/index.js";
import { captureLive } from "../packages/engine/src/snapshot.js";
import type { Vm } from "../packages/engine/src/vm.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { fmt, median, progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const ROUNDS = quick ? 2 : 10;
const FORK_REPS = quick ? 1 : 5;
const MiB = 2 ** 20;
const log = progressLogger();
const { series, add } = seriesList();
const notes: string[] = [];
const shmDir = "/dev/shm/mitos-bench-capture";
fs.mkdirSync(shmDir, { recursive: true });
const dataDir = tempDataDir("bench-capture", shmDir);
const forkLog: Array<Record<string, unknown>> = [];
const open = (forkCapture: "mapping" | "migration") =>
  Engine.open({
    dataDir,
    shmDir,
    imagesDir: path.join(defaultDataDir(), "images"),
    poolTargets: {},
    forkCapture,
    log: (msg, fields) => {
      if (msg === "fork" && fields) forkLog.push(fields);
    },
  });

function sameBytes(a: string, b: string): boolean {
  const [fa, fb] = [fs.openSync(a, "r"), fs.openSync(b, "r")];
  const [ba, bb] = [Buffer.alloc(MiB), Buffer.alloc(MiB)];
  try {
    for (let off = 0; ; off += MiB) {
      const na = fs.readSync(fa, ba, 0, MiB, off);
      const nb = fs.readSync(fb, bb, 0, MiB, off);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

let engine = await open("mapping");
let accel = "";
const run = async (id: string, command: string) => {
  const r = await engine.exec(id, { command }).result;
  if (r.exitCode !== 0) throw new Error(`${command}: ${r.stderr.toString()}`);
};
try {
  await engine.createTemplate("python");
  const p = await engine.create("python");
  accel = p.accel ?? "";
  await run(p.id, 'python3 -c \'import json; json.dump(list(range(10000)), open("/root/state.json","w"))\'');
  const vm = (engine as unknown as { table: { running(id: string): { vm: Vm } } }).table.running(p.id).vm;
  const memBytes = vm.machine.memMiB * MiB;
  const mig = { ms: add("capture through migration (paused → base + state written)", "ms"), bytes: 0, sent: 0 };
  const map = { ms: add("capture from the RAM mapping (paused → base + state written)", "ms") };
  const copyMs = add("mapping: sparse copy of the source's base", "ms");
  const privMs = add("mapping: pagemap + the source's own pages", "ms");
  const devMs = add("mapping: device state (xen-save-devices-state)", "ms");
  const readMig = add("bytes QEMU's migration reads (every guest page)", "MiB");
  const sentMig = add("bytes through the migration socket", "MiB");
  const readMap = add("bytes the mapping capture reads (base extents + own pages + pagemap)", "MiB");
  const basesMiB = add("new base, allocated: migration | mapping (pairs)", "MiB");
  let same = 0;
  const prefixes = new DeviceStatePrefixes();
  for (let r = 0; r < ROUNDS; r++) {
    await run(p.id, `echo ${r} > /root/round; python3 -c 'x = [i for i in range(200000)]'`);
    const a = { ramFile: path.join(shmDir, "a.ram"), stateFile: path.join(dataDir, "a.state"), memBytes };
    const b = { ramFile: path.join(shmDir, "b.ram"), stateFile: path.join(dataDir, "b.state"), memBytes };
    await vm.pause();
    try {
      const viaMigration = async () => {
        const t0 = performance.now();
        const s = await captureLive(vm.qmp, vm.paths.migrationSocket, a, 120_000, vm.runAs);
        mig.ms.values.push(performance.now() - t0);
        prefixes.learn(vm.machine, a.stateFile, s.deviceOffset);
        readMig.values.push(memBytes / MiB);
        sentMig.values.push((s.pagesToBase * 4104 + s.zeroPagesSkipped * 9 + s.stateBytes) / MiB);
      };
      const viaMapping = async () => {
        const prefix = prefixes.get(vm.machine);
        if (!prefix) throw new Error("no prefix yet");
        const t0 = performance.now();
        const s = await captureFromMapping(vm, prefix, b);
        map.ms.values.push(performance.now() - t0);
        copyMs.values.push(s.copyMs);
        privMs.values.push(s.privateMs);
        devMs.values.push(s.deviceMs);
        readMap.values.push((s.baseBytes + s.privatePages * 4096 + (memBytes / 4096) * 8) / MiB);
      };
      // The first round must teach the prefix; later rounds alternate the order.
      if (r === 0 || r % 2 === 1) {
        await viaMigration();
        await viaMapping();
      } else {
        await viaMapping();
        await viaMigration();
      }
      if (sameBytes(a.ramFile, b.ramFile)) same++;
      basesMiB.values.push(fs.statSync(a.ramFile).blocks / 2048, fs.statSync(b.ramFile).blocks / 2048);
    } finally {
      await vm.resume();
      for (const f of [a, b]) {
        fs.rmSync(f.ramFile, { force: true });
        fs.rmSync(f.stateFile, { force: true });
      }
    }
  }
  notes.push(
    `Both bases held the same bytes in ${same} of ${ROUNDS} rounds. The migration path runs first in round 0 (it teaches the device-state prefix), then the order alternates.`,
    "The migration's first capture faults the whole base of the source in (decision 0008), so the mapping's copy reads a fully allocated 512 MiB base in part 1; in normal use it reads only what the base holds.",
  );
  await engine.terminate(p.id);
  log(`capture A/B: migration ${fmt(median(mig.ms.values))} ms, mapping ${fmt(median(map.ms.values))} ms`);

  // End to end: fork → every child answered, each capture mode in its own engine over the same data dir.
  for (const mode of ["migration", "mapping"] as const) {
    await engine.close({ killSandboxes: true });
    engine = await open(mode);
    const parent = await engine.create("python");
    await run(parent.id, 'python3 -c \'import json; json.dump(list(range(10000)), open("/root/state.json","w"))\'');
    // Warm-up: the first capture of a machine shape goes through migration either way.
    for (const c of (await engine.fork(parent.id, { count: 1 })).children) await engine.terminate(c.id);
    for (const n of [1, 8]) {
      const all = add(`${mode}: fork(${n}) → every child answered`, "ms");
      const cap = add(`${mode}: fork(${n}) profile: capture`, "ms");
      for (let i = 0; i < FORK_REPS; i++) {
        await new Promise((r) => setTimeout(r, 2000)); // spares up
        const since = forkLog.length;
        const t0 = performance.now();
        const { children } = await engine.fork(parent.id, { count: n });
        await Promise.all(children.map((c) => run(c.id, "true")));
        all.values.push(performance.now() - t0);
        const step = forkLog[since];
        if (step?.captureVia !== mode) throw new Error(`fork captured via ${String(step?.captureVia)}, not ${mode}`);
        cap.values.push(Number(step.captureMs));
        for (const c of children) await engine.terminate(c.id);
      }
      log(`${mode}: fork(${n}) ${fmt(median(all.values))} ms`);
    }
    await engine.terminate(parent.id);
  }
} finally {
  await engine.close({ killSandboxes: true });
  removeDataDir(dataDir, shmDir);
}
notes.push(
  "Part 2: a python parent that ran Python; one warm-up fork (through migration in both modes: it teaches the prefix); 2 s between forks so the spare QEMUs are up; children run `true`.",
);
record("capture", { quick, accel, command: `npm run bench:capture${quick ? " -- --quick" : ""}` }, series, notes);
