// Spare QEMUs for the next fork (decision 0031): fork(8) of a python sandbox
// with the spares as they were (at most 2 × cores = 4, started at normal
// priority), as many as the last fork had children but started at normal
// priority, and as shipped (as many as the last fork, at most 16, started at
// niceness 19 and set back when a fork takes them).
// npm run bench:spares [-- --quick]
// Three engines in one process, one python parent each, forked in turn; before
// every fork the bench waits until every engine's spares are up, so each side
// forks with its spares ready and no other side's spares starting. Rows:
// fork(8) → all ready, → every child answered an exec, then each child runs
// a second of Python (the next spares start meanwhile: 1 s after the fork),
// and the private memory of an idle spare. N rounds (6; 2 with --quick).
// Records to bench/results/<date>-spares.{json,md}.

import fs from "node:fs";
import { Engine, type SandboxInfo } from "../packages/engine/src/index.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 2 : 6;
const progress = progressLogger();
const dataDir = process.env.MITOS_BENCH_DIR ?? "/var/lib/mitos/bench";
const imagesDir = process.env.MITOS_IMAGES_DIR ?? "/var/lib/mitos/images";
const { series, add } = seriesList();

const open = (name: string, spareVms: number, spareNice?: number) =>
  Engine.open({
    dataDir: `${dataDir}-spares-${name}`,
    imagesDir,
    poolTargets: {},
    spareVms,
    ...(spareNice === undefined ? {} : { spareNice }),
  });
const sides: Array<{ name: string; engine: Engine; ready: number }> = [
  { name: "4 spares, normal priority (before)", engine: await open("4", 4, 0), ready: 4 },
  { name: "up to 16 spares, normal priority", engine: await open("16-normal", 16, 0), ready: 8 },
  { name: "up to 16 spares, niced (now)", engine: await open("16", 16), ready: 8 },
];
const row = (what: string, side: string, unit = "ms") =>
  series.find((s) => s.name === `${what}: ${side}`) ?? add(`${what}: ${side}`, unit);
/** Private memory of a process (smaps_rollup), MiB. */
const privateMib = (pid: number) => {
  const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(t)?.[1] ?? 0);
  return (kb("Private_Clean") + kb("Private_Dirty")) / 1024;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Every engine's spares up (the next spares start 1 s after a fork), or 20 s gone. */
const allSparesUp = async () => {
  const until = Date.now() + 20_000;
  await sleep(1000);
  while (sides.some((s) => s.engine.spareStatus().ready < s.ready) && Date.now() < until) await sleep(100);
  await sleep(300);
};

const parents = new Map<Engine, SandboxInfo>();
try {
  for (const { engine } of sides) {
    const p = await engine.create("python", { timeoutSeconds: 3600 });
    await engine.exec(p.id, { command: "python3 -c 'print(1)'" }).result;
    parents.set(engine, p);
    // Warm-up: the first capture maps the parent's RAM; its spares are sized to 8 from here on.
    const { children } = await engine.fork(p.id, { count: 8 });
    await Promise.all(children.map((c) => engine.terminate(c.id)));
  }
  for (let i = 0; i < N; i++) {
    progress(`round ${i + 1}/${N}`);
    for (const { name, engine } of i % 2 ? [...sides].reverse() : sides) {
      await allSparesUp();
      const spares = engine.spareStatus();
      row("spares ready at the fork", name, "VMs").values.push(spares.ready);
      for (const pid of spares.pids) row("private memory of an idle spare", name, "MiB").values.push(privateMib(pid));
      const parent = parents.get(engine) as SandboxInfo;
      const t0 = performance.now();
      const { children } = await engine.fork(parent.id, { count: 8 });
      row("fork(8) → all ready", name).values.push(performance.now() - t0);
      await Promise.all(children.map((c) => engine.exec(c.id, { command: "true" }).result));
      row("fork(8) → every child answered an exec", name).values.push(performance.now() - t0);
      const t1 = performance.now();
      const work = await Promise.all(
        children.map((c) => engine.exec(c.id, { command: "python3 -c 'sum(range(3000000))'" }).result),
      );
      if (work.some((r) => r.exitCode !== 0)) throw new Error("a child's Python failed");
      row("then every child's Python (the next spares start meanwhile)", name).values.push(performance.now() - t1);
      await Promise.all(children.map((c) => engine.terminate(c.id)));
    }
  }
  series.sort((a, b) => a.name.localeCompare(b.name));
  record(
    "spares",
    { quick, accel: sides[0]?.engine.accel ?? "?", command: `npm run bench:spares${quick ? " -- --quick" : ""}` },
    series,
    [
      "Three engines in one process, one python parent each (it has run Python), forked with count 8 in turn; the side that goes first alternates.",
      "Before each fork the bench waits until every engine's spares are up: each side forks with its spares ready, and no other side's spares start during its fork.",
      "'4 spares': the spares as before decision 0031 (2 × cores here, normal priority): a fork(8) loads 4 and starts 4 QEMUs.",
      "'up to 16': as many spares as the last fork had children; 'niced': they start at niceness 19 (their session's autogroup and threads) and are set back to 0 when a fork takes them.",
      "After every child answered, each runs `python3 -c 'sum(range(3000000))'` at once; the next generation of spares starts 1 s after the fork, during that.",
    ],
  );
} finally {
  for (const { engine } of sides) {
    const p = parents.get(engine);
    if (p) await engine.terminate(p.id).catch(() => {});
    await engine.close();
  }
}
