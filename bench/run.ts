// Mitos benchmarks: npm run bench [-- --quick] [-- --only=claim,exec,fork,depth,density,checkpoint,disk,baseline]
// Each scenario runs N iterations after a warm-up and writes a JSON and a
// Markdown record to bench/results/<date>-<scenario>.{json,md} with the
// machine it ran on and the exact command; the baselines run in the same
// process and the summary compares against them. --quick is the one-minute
// smoke CI runs (fewer iterations; records go to bench/results/quick/).

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  BUILTIN_RECIPES,
  DEFAULT_SPARE_VMS,
  Engine,
  ensureImages,
  type SandboxInfo,
  Vm,
} from "../packages/engine/src/index.js";
import { fmt, median, type RecordOptions, record, type Series } from "./record.js";

const quick = process.argv.includes("--quick");
const only = process.argv
  .find((a) => a.startsWith("--only="))
  ?.slice(7)
  .split(",");
const dataDir = process.env.MITOS_BENCH_DIR ?? "/var/lib/mitos/bench";
const imagesDir = process.env.MITOS_IMAGES_DIR ?? "/var/lib/mitos/images";
const MiB = 2 ** 20;

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const r = await fn();
  return [performance.now() - t, r];
}

const wanted = (s: string) => !only || only.includes(s);
/** The engine's own timing of each fork step (its "fork" log line): the profile. */
const forkLog: Array<Record<string, number>> = [];
const engine = await Engine.open({
  dataDir,
  imagesDir,
  poolTargets: { python: 2 },
  // MITOS_BENCH_PREFILL=0: forks copy their base themselves (the A/B is `npm run bench:prefill`).
  prefillSpareBase: process.env.MITOS_BENCH_PREFILL !== "0",
  // Density forks 200 children in one request, past the default max_fork_count (64);
  // density with the default caps, 64 per fork, is `npm run bench:scaling`.
  limits: { maxLifetimeSeconds: 7200, maxSandboxes: 400, maxForkCount: 256, maxGuestMemoryMib: 512 * 400 },
  log: (msg, fields) => {
    if (msg === "fork" && fields) forkLog.push(fields as Record<string, number>);
  },
});
const rec: RecordOptions = {
  quick,
  accel: engine.accel,
  command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
};
/** Figures for the summary, keyed by goal. */
const figures: Record<string, number> = {};

const sh = async (id: string, command: string) => {
  const r = await engine.exec(id, { command }).result;
  if (r.exitCode !== 0) throw new Error(`${command}: exit ${r.exitCode}: ${r.stderr.toString()}`);
  return r.stdout.toString();
};
const terminateAll = (sbs: SandboxInfo[]) => Promise.all(sbs.map((c) => engine.terminate(c.id)));
/** A python sandbox that has run some Python and holds state (a 50 KB file; with `live`, a running interpreter too). */
const pythonParent = async (live: boolean) => {
  const p = await engine.create("python", { timeoutSeconds: 7200 });
  await sh(p.id, 'python3 -c \'import json; json.dump(list(range(10000)), open("/root/state.json","w"))\'');
  if (live) await sh(p.id, "nohup python3 -c 'import time\nwhile True: time.sleep(1)' >/dev/null 2>&1 &");
  return p;
};
const forkSteps = (since: number, n: number): Series[] => {
  const rows = forkLog.slice(since);
  return ["captureMs", "restoreMs", "activateMs"].map((k) => ({
    name: `fork(${n}) profile: ${k.replace("Ms", "")}`,
    unit: "ms",
    values: rows.map((r) => r[k] ?? Number.NaN),
  }));
};

try {
  await engine.createTemplate("python");
  const waitWarm = async () => {
    const until = Date.now() + 60_000;
    while (!engine.poolStatus().some((p) => p.template === "python" && p.warm >= 2) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  if (wanted("claim")) {
    const n = quick ? 3 : 15;
    const ready: number[] = [];
    const firstExec: number[] = [];
    for (let i = 0; i < n + 1; i++) {
      await waitWarm();
      const [ms, sb] = await time(() => engine.create("python"));
      const [execMs] = await time(() => engine.exec(sb.id, { command: "true" }).result);
      if (i > 0) {
        ready.push(ms);
        firstExec.push(ms + execMs);
      }
      await engine.terminate(sb.id);
    }
    figures.claim = median(ready);
    record(
      "claim",
      rec,
      [
        { name: "create from warm pool → ready (reseed confirmed)", unit: "ms", values: ready },
        { name: "create → first exec answered", unit: "ms", values: firstExec },
      ],
      [
        "One warm-up claim discarded; the pool (2 VMs, restored, run once and paused) refills between claims.",
        "A claim is `cont` + FORK_NOTIFY (fresh entropy, clock, identity) on a guest whose code TCG has already translated.",
      ],
    );
  }

  if (wanted("exec")) {
    const sb = await engine.create("python");
    const n = quick ? 20 : 200;
    const values: number[] = [];
    const inGuest: number[] = [];
    const argv: number[] = [];
    for (let i = 0; i < n + 5; i++) {
      const [ms, r] = await time(() => engine.exec(sb.id, { command: "true" }).result);
      if (i >= 5) values.push(ms);
      if (i >= 5) inGuest.push(r.durationMs);
    }
    for (let i = 0; i < Math.min(n, 50); i++) {
      argv.push((await time(() => engine.exec(sb.id, { args: ["/bin/true"] }).result))[0]);
    }
    figures.exec = median(values);
    record(
      "exec-round-trip",
      rec,
      [
        { name: "exec `true` (/bin/sh -c true), sequential", unit: "ms", values },
        { name: "profile: the same execs as the guest agent timed them (fork → exit)", unit: "ms", values: inGuest },
        { name: "exec argv [/bin/true] (no shell), sequential", unit: "ms", values: argv },
      ],
      [
        "5 warm-up execs discarded. Host → agent → fork/exec of /bin/sh in the guest → exit frame → host.",
        "The agent's own timing shows how much of the round trip is the guest process itself under TCG.",
      ],
    );
    await engine.terminate(sb.id);
  }

  if (wanted("fork")) {
    const series: Series[] = [];
    const sizes = quick ? [1, 4] : [1, 4, 8, 16];
    const reps = quick ? 1 : 5;
    const parent = await pythonParent(true);
    // Warm-up: the first capture of a sandbox maps all of its RAM in QEMU.
    await terminateAll((await engine.fork(parent.id, { count: 1 })).children);
    for (const n of sizes) {
      const ready: number[] = [];
      const exec: number[] = [];
      const since = forkLog.length;
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now();
        const { children } = await engine.fork(parent.id, { count: n });
        const t1 = performance.now();
        const answered = await Promise.all(
          children.map(async (c) => {
            await engine.exec(c.id, { command: "true" }).result;
            return performance.now() - t0;
          }),
        );
        ready.push(t1 - t0);
        exec.push(Math.max(...answered));
        await terminateAll(children);
        // Steady state between forks: the spares for the next one are waiting (they start 1 s after a fork).
        const until = Date.now() + 10_000;
        await new Promise((res) => setTimeout(res, 1000));
        while (engine.spareStatus().ready < Math.min(n, DEFAULT_SPARE_VMS) && Date.now() < until) {
          await new Promise((res) => setTimeout(res, 100));
        }
      }
      series.push({ name: `fork(${n}) → all ready`, unit: "ms", values: ready });
      series.push({ name: `fork(${n}) → first exec answered in every child`, unit: "ms", values: exec });
      series.push({ name: `fork(${n}) → all ready, per child`, unit: "ms", values: ready.map((v) => v / n) });
      series.push(...forkSteps(since, n));
      if (n === 1) figures.forkFirstExec = median(exec);
      if (n === 8) figures.fork8 = median(ready);
    }
    await engine.terminate(parent.id);
    record("fork-fanout", rec, series, [
      "Parent: a python sandbox that has run Python, holds a 50 KB file and runs a Python loop.",
      `${reps} repetition(s) per size after one warm-up fork; between forks the bench waits (≤ 10 s) until the spare QEMUs for the next fork are up (as many as the fork's children, up to ${DEFAULT_SPARE_VMS}; children beyond them are restored ${os.availableParallelism() * 2} at a time).`,
      "Profile rows are the engine's own split of each fork: capture (pause → RAM and device state written),",
      "restore (QEMU started, device state loaded, all children), activate (cont + FORK_NOTIFY answered, all children).",
    ]);
  }

  if (wanted("depth")) {
    const gens = quick ? 2 : 5;
    const ready: number[] = [];
    const exec: number[] = [];
    const notes: string[] = [];
    let winner = await pythonParent(true);
    const first = winner;
    for (let g = 1; g <= gens; g++) {
      const t0 = performance.now();
      const { children } = await engine.fork(winner.id, { count: 3 });
      ready.push(performance.now() - t0);
      // Each child tries something; the one with the highest score wins and is forked next.
      const scores = await Promise.all(
        children.map(async (c, i) => {
          const out = await sh(
            c.id,
            `python3 -c 'import json; s=json.load(open("/root/state.json")); s.append(${g * 10 + i}); json.dump(s, open("/root/state.json","w")); print(len(s)*${i + 1})'`,
          );
          return Number(out.trim());
        }),
      );
      exec.push(performance.now() - t0);
      const best = scores.indexOf(Math.max(...scores));
      const next = children[best] as SandboxInfo;
      await terminateAll(children.filter((c) => c.id !== next.id));
      if (winner.id !== first.id) await engine.terminate(winner.id);
      winner = next;
      await new Promise((res) => setTimeout(res, 1000));
      const host = engine.metering().host;
      notes.push(
        `generation ${g}: winner ${winner.id}; live sandboxes' memory: private ${fmt(host.privateBytes / MiB)} MiB + bases ${fmt(host.sharedBytes / MiB)} MiB`,
      );
    }
    const len = await sh(winner.id, "python3 -c 'import json; print(len(json.load(open(\"/root/state.json\"))))'");
    notes.push(
      `The last winner's state holds ${len.trim()} items: 10000 + one per generation, so state carried through.`,
    );
    await engine.terminate(winner.id);
    await engine.terminate(first.id);
    record(
      "fork-depth",
      rec,
      [
        { name: "fork(3) of the winner → all ready", unit: "ms", values: ready },
        { name: "fork(3) → every child ran its Python step", unit: "ms", values: exec },
      ],
      [`${gens} generations: fork into 3, run a Python step in each, keep the best, fork it again.`, ...notes],
    );
  }

  if (wanted("density")) {
    const counts = quick ? [8] : [8, 32, 100, 200];
    const series: Series[] = [];
    const notes: string[] = [];
    const parent = await pythonParent(false);
    for (const n of counts) {
      const [ms, { children }] = await time(() => engine.fork(parent.id, { count: n, timeoutSeconds: 3600 }));
      await Promise.all(children.map((c) => sh(c.id, "echo hi > /tmp/x; cat /tmp/x")));
      await new Promise((res) => setTimeout(res, 1000)); // the base's pages given back
      const m = engine.metering();
      const rows = m.sandboxes.filter((r) => children.some((c) => c.id === r.id));
      series.push({
        name: `children=${n}: guest pages made private per child`,
        unit: "MiB",
        values: rows.map((r) => r.guestPrivateBytes / MiB),
      });
      series.push({
        name: `children=${n}: VMM (QEMU) private memory per child`,
        unit: "MiB",
        values: rows.map((r) => (r.privateBytes - r.guestPrivateBytes) / MiB),
      });
      series.push({
        name: `children=${n}: total private per child`,
        unit: "MiB",
        values: rows.map((r) => r.privateBytes / MiB),
      });
      const childBases = new Map(rows.map((r) => [r.baseKey, r.baseAllocatedBytes]));
      const childTotal =
        rows.reduce((a, r) => a + r.privateBytes, 0) + [...childBases.values()].reduce((a, b) => a + b, 0);
      notes.push(
        `children=${n}: forked in ${fmt(ms)} ms; ${rows.length} live; children's private ${fmt(rows.reduce((a, r) => a + r.privateBytes, 0) / MiB)} MiB + their base counted once ${fmt([...childBases.values()].reduce((a, b) => a + b, 0) / MiB)} MiB = ${fmt(childTotal / 2 ** 30)} GiB; all live sandboxes incl. the parent and its template base: ${fmt(m.host.totalBytes / 2 ** 30)} GiB`,
      );
      if (n === 8) figures.children8Bytes = childTotal;
      if (rows.length === n) figures.maxChildren = Math.max(figures.maxChildren ?? 0, n);
      figures[`total${n}`] = m.host.totalBytes;
      figures.guestPrivate = median(rows.map((r) => r.guestPrivateBytes / MiB));
      figures.perChild = median(rows.map((r) => r.privateBytes / MiB));
      await terminateAll(children);
    }
    await engine.terminate(parent.id);
    record("density", rec, series, [
      "One python parent (it ran Python and wrote a 50 KB file; no process left running) forked into n live children; each ran `echo hi > /tmp/x; cat /tmp/x`; then /proc/<pid>/smaps of every QEMU.",
      "Private = anonymous pages of the QEMU process (guest pages copied on write + QEMU's heap and TCG code buffer);",
      "bases are counted once each at the memory their file holds in /dev/shm (allocated pages, whoever touched them).",
      ...notes,
    ]);
  }

  if (wanted("checkpoint")) {
    const n = quick ? 2 : 5;
    const first: number[] = [];
    const firstMiB: number[] = [];
    const next: number[] = [];
    const addedMiB: number[] = [];
    const cold: number[] = [];
    const cached: number[] = [];
    const hibernate: number[] = [];
    const wake: number[] = [];
    for (let i = 0; i < n; i++) {
      const p = await pythonParent(true);
      const [ms1, cp1] = await time(() => engine.checkpoint(p.id));
      first.push(ms1);
      firstMiB.push(cp1.bytes / MiB);
      await sh(p.id, "echo more > /root/more.txt");
      const [ms2, cp2] = await time(() => engine.checkpoint(p.id));
      next.push(ms2);
      addedMiB.push(cp2.addedBytes / MiB);
      for (const into of [cold, cached]) {
        const [ms, r] = await time(async () => {
          const made = await engine.fromCheckpoint(cp1.id);
          await engine.exec(made.children[0]?.id as string, { command: "true" }).result;
          return made;
        });
        into.push(ms);
        await terminateAll(r.children);
      }
      const [hms] = await time(() => engine.pause(p.id, { hibernate: true }));
      hibernate.push(hms);
      const [wms] = await time(async () => {
        await engine.resume(p.id);
        await engine.exec(p.id, { command: "true" }).result;
      });
      wake.push(wms);
      for (const c of [cp1, cp2]) engine.deleteCheckpoint(c.id);
      await engine.terminate(p.id);
    }
    record(
      "checkpoint",
      rec,
      [
        {
          name: "first checkpoint of a python sandbox (pause, capture, chunk, zstd, fsync)",
          unit: "ms",
          values: first,
        },
        { name: "its size on disk", unit: "MiB", values: firstMiB },
        { name: "second checkpoint of the same sandbox", unit: "ms", values: next },
        { name: "bytes the second one adds (the rest is shared)", unit: "MiB", values: addedMiB },
        { name: "restore from disk → first exec (materialize the base)", unit: "ms", values: cold },
        { name: "restore → first exec, base cached in /dev/shm", unit: "ms", values: cached },
        { name: "hibernate (checkpoint + stop)", unit: "ms", values: hibernate },
        { name: "resume from hibernation → first exec", unit: "ms", values: wake },
      ],
      [
        "Each iteration: a fresh python sandbox with a 50 KB file and a running interpreter; two checkpoints; two restores of the first; hibernate and resume.",
        "Chunks are 256 KiB, zstd -1, content-addressed (docs/checkpoints.md, decision 0011).",
      ],
    );
  }

  if (wanted("disk")) {
    // Same-run baseline: the same file in a sandbox whose /workspace is in guest RAM.
    const n = quick ? 1 : 5;
    const fileMiB = quick ? 16 : 256;
    await engine.createTemplate("bench-disk", { image: "python", diskSizeMib: 2048 });
    // The baseline's file lives in the guest's RAM-backed writable layer, half of RAM by default (decision in
    // docs/security.md "Hostile guests"): room for the file and what the guest writes besides.
    const ramTemplate = quick ? "python" : "bench-ram-workspace"; // --quick's 16 MiB fits the default
    if (!quick) await engine.createTemplate(ramTemplate, { image: "python", guest: { writableMib: 448 } });
    const write: number[] = [];
    const forkDisk: number[] = [];
    const forkRam: number[] = [];
    const pauseDisk: number[] = [];
    const pauseRam: number[] = [];
    const cpMs: number[] = [];
    const cpMiB: number[] = [];
    const fill = `yes mitos-bench-line | head -c ${fileMiB}M > /workspace/data && sync`;
    for (let i = 0; i < n; i++) {
      const d = await engine.create("bench-disk", { timeoutSeconds: 7200 });
      const [wms] = await time(() => sh(d.id, fill));
      write.push(wms);
      const r = await engine.create(ramTemplate, { timeoutSeconds: 7200 });
      await sh(r.id, fill);
      for (const [sb, into, pauses] of [
        [d, forkDisk, pauseDisk],
        [r, forkRam, pauseRam],
      ] as const) {
        const since = forkLog.length;
        const [ms, f] = await time(async () => {
          const made = await engine.fork(sb.id, { count: 1 });
          await engine.exec(made.children[0]?.id as string, { command: "true" }).result;
          return made;
        });
        into.push(ms);
        // The engine's captureMs runs from the pause to the end of the capture (the disk switch included).
        pauses.push(forkLog[since]?.captureMs ?? Number.NaN);
        await terminateAll(f.children);
      }
      const [cms, cp] = await time(() => engine.checkpoint(d.id));
      cpMs.push(cms);
      cpMiB.push(cp.bytes / MiB);
      engine.deleteCheckpoint(cp.id);
      await terminateAll([d, r]);
    }
    await engine.deleteTemplate("bench-disk", { force: true });
    record(
      "disk",
      rec,
      [
        { name: `write ${fileMiB} MiB to /workspace on a workspace disk (+ sync)`, unit: "ms", values: write },
        { name: "fork(1) → child answered, /workspace on a disk", unit: "ms", values: forkDisk },
        { name: "fork(1) → child answered, /workspace in guest RAM (baseline)", unit: "ms", values: forkRam },
        { name: "source paused for the capture (disk switch + RAM), disk", unit: "ms", values: pauseDisk },
        { name: "source paused for the capture (RAM), RAM (baseline)", unit: "ms", values: pauseRam },
        { name: "checkpoint of the disk sandbox", unit: "ms", values: cpMs },
        { name: "its size on disk", unit: "MiB", values: cpMiB },
      ],
      [
        `Each iteration: a python sandbox with a 2 GiB workspace disk and one with /workspace in RAM (its writable layer 448 MiB: the default, half of RAM, has no room for the file and the rest), each holding the same ${fileMiB} MiB file; one fork of each; a checkpoint of the disk one.`,
        "With a disk the fork freezes the source's layer (blockdev-snapshot-sync while paused) and each child writes a new qcow2 layer over it; disk sandboxes fork without spare VMs (docs/disks.md).",
      ],
    );
  }

  if (wanted("baseline")) {
    const images = await ensureImages(BUILTIN_RECIPES.python as { packages: string[] }, { cacheDir: imagesDir });
    const shmDir = engine.shmDir;
    const boot = async (id: string) => {
      const vm = await Vm.boot({ id, images, dataDir, shmDir, accel: engine.accel });
      await vm.agent.exec({ command: "true" }).result;
      return vm;
    };
    const n = quick ? 1 : 3;
    const cold: number[] = [];
    for (let i = 0; i < n; i++) {
      const [ms, vm] = await time(() => boot(`bench-cold-${i}`));
      cold.push(ms);
      await vm.destroy();
    }
    const series: Series[] = [{ name: "cold boot of the python image → first exec", unit: "ms", values: cold }];
    const notes: string[] = [];
    const width = quick ? 2 : 8;
    {
      // `width` cold boots, started together, as many at once as a fork restores.
      const [ms, vms] = await time(async () => {
        const out: Vm[] = [];
        let next = 0;
        await Promise.all(
          Array.from({ length: Math.min(width, os.availableParallelism() * 2) }, async () => {
            while (next < width) out.push(await boot(`bench-cold8-${next++}`));
          }),
        );
        return out;
      });
      series.push({ name: `${width} cold boots → first exec answered in each`, unit: "ms", values: [ms] });
      figures.cold8 = ms;
      await Promise.all(vms.map((v) => v.destroy()));
    }
    {
      // Unshared restores: each VM gets its own (sparse) copy of the template's RAM and maps it alone.
      const tpl = engine.templateRecord("python");
      if (!tpl) throw new Error("python template missing");
      const vms: Vm[] = [];
      const copies: string[] = [];
      for (let i = 0; i < width; i++) {
        const copy = path.join(shmDir, `mitos-bench-copy-${i}.ram`);
        execFileSync("cp", ["--sparse=always", tpl.ramFile, copy]);
        copies.push(copy);
        const vm = await Vm.restore({
          id: `bench-unshared-${i}`,
          dataDir,
          snapshot: { machine: tpl.machine, ramFile: copy, stateFile: tpl.stateFile, ignoreShared: true },
        });
        await vm.agent.exec({ command: "echo hi > /tmp/x; cat /tmp/x" }).result;
        vms.push(vm);
      }
      const { readVmMemory } = await import("../packages/engine/src/metering.js");
      const { RAM_FILE_RE, allocatedBytes } = await import("../packages/engine/src/base-file.js");
      const per = vms.map(
        (v, i) => readVmMemory(v.pid, (p) => RAM_FILE_RE.test(p)).privateBytes + allocatedBytes(copies[i] as string),
      );
      series.push({
        name: `unshared restore: private + own RAM copy, per VM (${width} VMs)`,
        unit: "MiB",
        values: per.map((b) => b / MiB),
      });
      // Per VM, scaled to 8, so quick runs (2 VMs) compare like with like.
      figures.unshared8Bytes = (per.reduce((a, b) => a + b, 0) / width) * 8;
      notes.push(`${width} unshared restores hold ${fmt(figures.unshared8Bytes / MiB)} MiB in all.`);
      await Promise.all(vms.map((v) => v.destroy()));
      for (const c of copies) fs.rmSync(c, { force: true });
    }
    record("baselines", rec, series, [
      "Cold boot: the same python image booted from its kernel to the agent's first answer to an exec.",
      `Unshared restore: the python template restored ${width} times, each from its own sparse copy of the template RAM (cp --sparse=always), so nothing is shared between VMs.`,
      ...notes,
    ]);
  }

  /** The newest full (not --quick) record of another bench, and its date. */
  const newest = (scenario: string) => {
    const dir = path.join(import.meta.dirname, "results");
    const file = fs
      .readdirSync(dir)
      .filter((f) => new RegExp(`^\\d{4}-\\d{2}-\\d{2}-${scenario}\\.json$`).test(f))
      .sort()
      .pop();
    if (!file) return undefined;
    const rec = JSON.parse(fs.readFileSync(path.join(dir, file), "utf8")) as {
      series?: Array<{ name: string; p50?: number }>;
    };
    return { date: file.slice(0, 10), series: rec.series ?? [] };
  };
  const api = newest("api");
  const p50Of = (name: string) => api?.series.find((x) => x.name === name)?.p50;
  const tti = p50Of("TTI, TS SDK: create → first exec returned");
  const connectExec = p50Of("exec `true`, TS SDK, sequential");
  const scaling = newest("scaling");
  const held = scaling?.series.find((x) => x.name === "density: live children held at once")?.p50;
  const heldGiB =
    scaling?.series.find((x) => x.name === "density: all children at the end, their bases once")?.p50 ?? Number.NaN;
  const goal = (name: string, figure: number | undefined, unit: string, target: string, met: (v: number) => boolean) =>
    `| ${name} | ${figure === undefined ? "not run" : `${fmt(figure)} ${unit}`} | ${target} | ${figure === undefined ? "–" : met(figure) ? "met" : "missed"} |`;
  const lines = [
    `# Summary against the goals (${new Date().toISOString().slice(0, 10)})`,
    "",
    `Command: \`${rec.command}\`; accel ${engine.accel}; ${os.availableParallelism()} cores. Figures are medians (p50) from the records beside this file.`,
    "Through the API, scaling with the default caps, and where each missed goal's time goes: the profile of the same date, `npm run bench:api`, `npm run bench:scaling`, `npm run bench:capture`.",
    "",
    "| figure | reached | goal | |",
    "|---|---|---|---|",
    goal("claim from warm pool → ready, p50", figures.claim, "ms", "≤ 30 ms", (v) => v <= 30),
    goal("exec round trip, p50", figures.exec, "ms", "≤ 10 ms", (v) => v <= 10),
    goal("fork(8) of a running python sandbox → all 8 ready, p50", figures.fork8, "ms", "≤ 500 ms", (v) => v <= 500),
    goal("fork(1) → first exec answered in the child, p50", figures.forkFirstExec, "ms", "≤ 250 ms", (v) => v <= 250),
    goal(
      "guest memory made private per child after a small command",
      figures.guestPrivate,
      "MiB",
      "≤ 3 MiB",
      (v) => v <= 3,
    ),
    goal("total private memory per child including QEMU (TCG)", figures.perChild, "MiB", "≤ 24 MiB", (v) => v <= 24),
    goal(
      "live children of one parent held at once",
      figures.maxChildren,
      "",
      "≥ 200, under 8 GiB total",
      (v) => v >= 200 && (figures.total200 ?? Infinity) < 8 * 2 ** 30,
    ),
    goal(
      `create → first exec returned through mitosd, TS SDK (TTI; \`npm run bench:api\` of ${api?.date ?? "–"})`,
      tti,
      "ms",
      "≤ 40 ms",
      (v) => v <= 40,
    ),
    goal(
      `exec round trip over Connect, TS SDK (\`npm run bench:api\` of ${api?.date ?? "–"})`,
      connectExec,
      "ms",
      "≤ 10 ms",
      (v) => v <= 10,
    ),
    goal(
      `live children of one parent at the default caps, each answering (\`npm run bench:scaling\` of ${scaling?.date ?? "–"}: ${Number.isFinite(heldGiB) ? `${fmt(heldGiB)} GiB in all` : "–"})`,
      held,
      "",
      "≥ 500, under 20 GiB in all",
      (v) => v >= 500 && heldGiB < 20,
    ),
    goal(
      "fork(8) ready vs 8 cold boots",
      figures.fork8 && figures.cold8 ? figures.cold8 / figures.fork8 : undefined,
      "× faster",
      "≥ 10×",
      (v) => v >= 10,
    ),
    goal(
      "memory of 8 children vs 8 unshared restores",
      figures.children8Bytes && figures.unshared8Bytes ? figures.unshared8Bytes / figures.children8Bytes : undefined,
      "× smaller",
      "≥ 5×",
      (v) => v >= 5,
    ),
    "",
  ];
  if (!only) {
    const dir = path.join(import.meta.dirname, "results", ...(quick ? ["quick"] : []));
    fs.writeFileSync(path.join(dir, `${new Date().toISOString().slice(0, 10)}-summary.md`), lines.join("\n"));
  }
  console.log(lines.join("\n"));
} finally {
  await engine.close({ killSandboxes: true });
  // Its template's RAM base would otherwise stay in /dev/shm, mapped by nobody (~512 MiB).
  fs.rmSync(engine.shmDir, { recursive: true, force: true });
  fs.rmSync(dataDir, { recursive: true, force: true });
}
