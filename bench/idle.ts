// What an idle sandbox costs the host's CPU, and what QEMU's PIT had to do
// with it (decision 0034): npm run bench:idle [-- --quick]
//
// Two engines in one process, one python template each: the default (TCG
// VMs without QEMU's i8254 PIT) and MITOS_QEMU_PIT=on (with it, as before;
// children and spares keep their parent's devices). Rounds alternate the
// order (3; 1 with --quick). Each round, per variant: fork(1) → first exec
// answered in the child (twice), fork(8) → all ready, then the 8 children
// each answer `true`, settle 10 s, and for 20 s every child's QEMU is read
// from /proc: CPU time (schedstat, all threads) and the main thread's wake-ups
// (voluntary context switches).
// Records to bench/results/<date>-idle.{json,md}.

import fs from "node:fs";
import path from "node:path";
import { defaultDataDir, Engine, type SandboxInfo } from "../packages/engine/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const ROUNDS = quick ? 1 : 3;
const N = 8;
const SETTLE_MS = 10_000;
const WINDOW_MS = quick ? 10_000 : 20_000;
const log = progressLogger();
const { series, add } = seriesList();
const row = (name: string, unit: string) => series.find((x) => x.name === name) ?? add(name, unit);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** CPU seconds of a process (every thread's time on a CPU, schedstat's ns) and its main thread's voluntary context switches. */
function sample(pid: number): { cpu: number; wakeups: number } {
  let ns = 0;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, "utf8").split(" ")[0]);
  }
  const status = fs.readFileSync(`/proc/${pid}/task/${pid}/status`, "utf8");
  const wakeups = Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? Number.NaN);
  return { cpu: ns / 1e9, wakeups };
}

const variants = [
  { name: "without the PIT (default)", env: {} as Record<string, string> },
  { name: "with the PIT (before 0034)", env: { MITOS_QEMU_PIT: "on" } as Record<string, string> },
];
const notes: string[] = [];
const shmDir = "/dev/shm/mitos-bench-idle";
fs.mkdirSync(shmDir, { recursive: true });
const opened: Array<{ engine: Engine; dataDir: string }> = [];
let accel = "";
try {
  const parents: Array<{ engine: Engine; parent: SandboxInfo }> = [];
  for (const [i, v] of variants.entries()) {
    const dataDir = tempDataDir(`bench-idle-${i}`, shmDir);
    const engine = await Engine.open({
      dataDir,
      shmDir,
      imagesDir: path.join(defaultDataDir(), "images"),
      poolTargets: {},
    });
    opened.push({ engine, dataDir });
    // The template boots under the variant; everything restored from it keeps its devices.
    for (const [k, val] of Object.entries(v.env)) process.env[k] = val;
    try {
      log(`${v.name}: python template and parent`);
      const parent = await engine.create("python", { timeoutSeconds: 3600 });
      accel = parent.accel ?? accel;
      await engine.exec(parent.id, { command: "python3 -c 'print(1)'" }).result;
      parents.push({ engine, parent });
    } finally {
      for (const k of Object.keys(v.env)) delete process.env[k];
    }
  }
  for (let round = 0; round < ROUNDS; round++) {
    const order = variants.map((v, i) => ({ v, ...(parents[i] as (typeof parents)[number]) }));
    if (round % 2) order.reverse();
    for (const { v, engine, parent } of order) {
      log(`round ${round + 1}/${ROUNDS}: ${v.name}`);
      for (let j = 0; j < 2; j++) {
        await sleep(2500); // the spares are up again, as between a user's forks
        const t = performance.now();
        const { children } = await engine.fork(parent.id, { count: 1 });
        const c = children[0] as SandboxInfo;
        await engine.exec(c.id, { command: "true" }).result;
        row(`${v.name}: fork(1) → first exec answered`, "ms").values.push(performance.now() - t);
        await engine.terminate(c.id);
      }
      await sleep(5000);
      const t = performance.now();
      const { children } = await engine.fork(parent.id, { count: N });
      row(`${v.name}: fork(${N}) → all ready`, "ms").values.push(performance.now() - t);
      for (const c of children) await engine.exec(c.id, { command: "true" }).result;
      await sleep(SETTLE_MS);
      const pids = children.map((c) => c.pid);
      const a = pids.map(sample);
      const t0 = performance.now();
      await sleep(WINDOW_MS);
      const b = pids.map(sample);
      const s = (performance.now() - t0) / 1000;
      for (const [k, x] of a.entries()) {
        const y = b[k] as (typeof b)[number];
        row(`${v.name}: idle child's QEMU, CPU`, "µs per s").values.push((1e6 * (y.cpu - x.cpu)) / s);
        row(`${v.name}: idle child's QEMU, main-loop wake-ups`, "per s").values.push((y.wakeups - x.wakeups) / s);
      }
      for (const c of children) await engine.terminate(c.id);
    }
  }
} finally {
  for (const { engine, dataDir } of opened) {
    await engine.close({ killSandboxes: true });
    removeDataDir(dataDir, shmDir);
  }
}
notes.push(
  `Two engines in one process, a python template each: the default and MITOS_QEMU_PIT=on; ${ROUNDS} round(s), the order alternating. Per round and variant: two fork(1) → first \`true\` answered (2.5 s apart, the spares up), fork(${N}) → all ready, then its ${N} children answer \`true\`, settle ${SETTLE_MS / 1000} s, and are read for ${WINDOW_MS / 1000} s: CPU time of each child's QEMU (all its threads' time on a CPU, /proc/<pid>/task/*/schedstat) and the main thread's voluntary context switches.`,
);
record("idle", { quick, accel, command: `npm run bench:idle${quick ? " -- --quick" : ""}` }, series, notes);
