// The base copied ahead into the spares' file (issue 19; decision 0026):
// npm run bench:prefill [-- --quick]
//
// Two engines side by side, one with `prefillSpareBase: false` (each fork
// copies its source's base on its own path, as before) and one with the
// default (the copy happens between forks). Three patterns, each a run of
// rounds (the sides alternating first): fork(1) and fork(8) of one parent that
// changes a file before each fork (the same source again), and fork(1) of the
// last fork's child (down a chain). Each fork → all ready and → every child answered `true`, and the
// engine's own split: the time before the pause (the base copy) and whether
// the capture found the base in its file. Records to
// bench/results/<date>-prefill.{json,md}.

import fs from "node:fs";
import path from "node:path";
import { defaultDataDir, Engine, type SandboxInfo } from "../packages/engine/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { fmt, median, progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const ROUNDS = quick ? 1 : 7;
const log = progressLogger();
const { series, add } = seriesList();

type Mode = "copy at fork" | "copied ahead";
interface Side {
  mode: Mode;
  engine: Engine;
  dataDir: string;
  shmDir: string;
  logs: Array<{ msg: string; fields: Record<string, unknown> }>;
  parent: SandboxInfo;
  /** The sandbox the chain forks next. */
  tip: SandboxInfo;
}

async function open(mode: Mode, n: number): Promise<Side> {
  const shmDir = `/dev/shm/mitos-bench-prefill-${n}`;
  fs.mkdirSync(shmDir, { recursive: true });
  const dataDir = tempDataDir(`bench-prefill-${n}`, shmDir);
  const logs: Side["logs"] = [];
  const engine = await Engine.open({
    dataDir,
    shmDir,
    imagesDir: path.join(defaultDataDir(), "images"),
    poolTargets: {},
    prefillSpareBase: mode === "copied ahead",
    log: (msg, fields) => logs.push({ msg, fields: fields ?? {} }),
  });
  try {
    await engine.createTemplate("python");
    const parent = await engine.create("python", { timeoutSeconds: 3600 });
    await run(
      engine,
      parent.id,
      'python3 -c \'import json; json.dump(list(range(10000)), open("/root/state.json","w"))\'',
    );
    // Warm-up: the first capture of a machine shape goes through migration (decision 0022).
    for (const c of (await engine.fork(parent.id, { count: 1 })).children) await engine.terminate(c.id);
    return { mode, engine, dataDir, shmDir, logs, parent, tip: parent };
  } catch (err) {
    await engine.close({ killSandboxes: true });
    removeDataDir(dataDir, shmDir);
    throw err;
  }
}

async function run(engine: Engine, id: string, command: string): Promise<void> {
  const r = await engine.exec(id, { command }).result;
  if (r.exitCode !== 0) throw new Error(`${command}: ${r.stderr.toString()}`);
}

/** Spares up and the copy ahead done: the steady state between a user's forks. */
async function settle(side: Side): Promise<void> {
  await new Promise((r) => setTimeout(r, 2500));
  const until = Date.now() + 10_000;
  while (side.engine.spareStatus().ready === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
}

const rows = new Map<string, ReturnType<typeof add>>();
const row = (name: string, unit: string) => {
  let s = rows.get(name);
  if (!s) {
    s = add(name, unit);
    rows.set(name, s);
  }
  return s;
};
const prefilledCount = new Map<string, { yes: number; all: number }>();

async function fork(side: Side, source: SandboxInfo, n: number, what: string): Promise<SandboxInfo[]> {
  await settle(side);
  await run(side.engine, source.id, `date +%s%N > /root/now`);
  const since = side.logs.length;
  const t0 = performance.now();
  const { children } = await side.engine.fork(source.id, { count: n });
  const ready = performance.now() - t0;
  await Promise.all(children.map((c) => run(side.engine, c.id, "true")));
  const answered = performance.now() - t0;
  const step = side.logs.slice(since).find((l) => l.msg === "fork")?.fields ?? {};
  const cap = side.logs.slice(since).find((l) => l.msg === "captured from the RAM mapping")?.fields ?? {};
  row(`${side.mode}: ${what} → all ready`, "ms").values.push(ready);
  row(`${side.mode}: ${what} → every child answered`, "ms").values.push(answered);
  row(`${side.mode}: ${what} profile: before the pause (base copy)`, "ms").values.push(Number(step.pauseMs));
  const c = prefilledCount.get(`${side.mode}: ${what}`) ?? { yes: 0, all: 0 };
  c.all++;
  if (cap.basePrefilled === true) c.yes++;
  prefilledCount.set(`${side.mode}: ${what}`, c);
  return children;
}

const terminate = async (side: Side, cs: SandboxInfo[]): Promise<void> => {
  await Promise.all(cs.map((c) => side.engine.terminate(c.id)));
};
const sides: Side[] = [];
let accel = "";
try {
  sides.push(await open("copy at fork", 0));
  sides.push(await open("copied ahead", 1));
  accel = sides[0]?.parent.accel ?? "";
  // Each pattern runs its rounds back to back (a user's forks follow one pattern a while), sides alternating.
  const patterns: Array<[string, (side: Side) => Promise<void>]> = [
    [
      "fork(1) of the same parent",
      async (side) => terminate(side, await fork(side, side.parent, 1, "fork(1) of the same parent")),
    ],
    [
      "fork(8) of the same parent",
      async (side) => terminate(side, await fork(side, side.parent, 8, "fork(8) of the same parent")),
    ],
    [
      "fork(1) of the last fork's child",
      async (side) => {
        // Down a chain: each round forks the child of the round before (best-of-N, keep the winner).
        const [child] = await fork(side, side.tip, 1, "fork(1) of the last fork's child");
        if (side.tip.id !== side.parent.id) await side.engine.terminate(side.tip.id);
        side.tip = child as SandboxInfo;
      },
    ],
  ];
  for (const [name, once] of patterns) {
    // One unmeasured fork first: the copy ahead follows the pattern of the fork before it.
    for (const side of sides) await once(side);
    for (const side of sides)
      for (const k of rows.keys()) if (k.startsWith(`${side.mode}: ${name}`)) rows.get(k)?.values.pop();
    for (const side of sides) prefilledCount.delete(`${side.mode}: ${name}`);
    for (let r = 0; r < ROUNDS; r++) {
      for (const side of r % 2 === 0 ? sides : [...sides].reverse()) await once(side);
    }
    log(`${name}: done`);
  }
} finally {
  for (const side of sides) {
    await side.engine.close({ killSandboxes: true });
    removeDataDir(side.dataDir, side.shmDir);
  }
}
const notes = [
  "Both engines run side by side on the same host, each with its own python template and parent; the order alternates per round.",
  "Each pattern runs its rounds back to back after one unmeasured fork of that pattern (the copy ahead predicts the next source from the fork before).",
  "Before each fork: 2.5 s and at least one spare QEMU up (the copy ahead starts 1 s after a fork), then the source writes /root/now.",
  "The chain forks the previous round's child, so each fork's source maps the base the fork before it made.",
  ...[...prefilledCount.entries()].map(
    ([k, c]) => `${k}: the capture found the base in its file in ${c.yes} of ${c.all} forks.`,
  ),
];
for (const what of ["fork(1) of the same parent", "fork(8) of the same parent", "fork(1) of the last fork's child"]) {
  const a = median(rows.get(`copy at fork: ${what} → every child answered`)?.values ?? []);
  const b = median(rows.get(`copied ahead: ${what} → every child answered`)?.values ?? []);
  log(`${what}: ${fmt(a)} → ${fmt(b)} ms`);
}
record("prefill", { quick, accel, command: `npm run bench:prefill${quick ? " -- --quick" : ""}` }, series, notes);
