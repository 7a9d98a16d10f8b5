// Forks of a python sandbox whose Jupyter kernel is idle, as shipped (not
// registered for fork notices: its next cell reseeds it), against the same
// sandbox with the kernel registered, as before decision 0030 (every child
// signals it at activation and runs its Python handler on the one vCPU).
// npm run bench:fork-notice [-- --quick]
// A real mitosd; the two parents are forked alternately, 1.5 s apart (the
// spare QEMUs refill). Rows: fork(1) → first exec in the child, fork(1) →
// first run_code in the child, fork(8) → all ready, fork(8) → every child
// answered an exec, and each of those children's private memory (guest
// pages and QEMU, from mitosd's metering) a second later. N rounds (6; 2 with --quick). Records to
// bench/results/<date>-fork-notice.{json,md}.

import { setTimeout as sleep } from "node:timers/promises";
import { type Sandbox, SandboxServer } from "../packages/sdk/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { startMitosd } from "../test-support/mitosd.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 2 : 6;
const progress = progressLogger();
const MiB = 2 ** 20;
const dataDir = tempDataDir("bench-fork-notice");
const daemon = await startMitosd(dataDir);
const server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
const { series, add } = seriesList();
const SIDES = ["idle kernel not registered (now)", "kernel registered (before)"] as const;
type Side = (typeof SIDES)[number];

const registered = async (sb: Sandbox) => (await sb.exec("ls /run/mitos/notify")).stdout.trim();

try {
  const parent = async (side: Side) => {
    const p = await server.fork("python", { timeoutSeconds: 3600 });
    const c = await p.runCode("x = 41\nx + 1");
    if (c.text !== "42") throw new Error(`parent cell: ${c.text}`);
    if (side === SIDES[1]) await p.exec("touch /run/mitos/notify/$(pgrep -f kernel_launcher | head -1)");
    const reg = await registered(p);
    if ((reg !== "") !== (side === SIDES[1])) throw new Error(`${side}: /run/mitos/notify holds "${reg}"`);
    return p;
  };
  const parents = new Map<Side, Sandbox>();
  for (const side of SIDES) parents.set(side, await parent(side));
  for (const p of parents.values()) for (const c of await p.fork(1)) await c.terminate();
  const row = (what: string, side: Side, unit = "ms") =>
    series.find((s) => s.name === `${what}: ${side}`) ?? add(`${what}: ${side}`, unit);
  for (let i = 0; i < N; i++) {
    progress(`round ${i + 1}/${N}`);
    for (const side of i % 2 ? [...SIDES].reverse() : SIDES) {
      const p = parents.get(side) as Sandbox;
      await sleep(1500);
      let t0 = performance.now();
      let [c] = await p.fork(1);
      await (c as Sandbox).exec("true");
      row("fork(1) → first exec in the child", side).values.push(performance.now() - t0);
      await (c as Sandbox).terminate();
      await sleep(1500);
      t0 = performance.now();
      [c] = await p.fork(1);
      const cell = await (c as Sandbox).runCode("x + 1");
      if (cell.text !== "42") throw new Error(`child cell: ${cell.text}`);
      row("fork(1) → first run_code in the child", side).values.push(performance.now() - t0);
      await (c as Sandbox).terminate();
      await sleep(1500);
      t0 = performance.now();
      const kids = await p.fork(8);
      row("fork(8) → all ready", side).values.push(performance.now() - t0);
      await Promise.all(kids.map((k) => k.exec("true")));
      row("fork(8) → every child answered an exec", side).values.push(performance.now() - t0);
      await sleep(1100); // mitosd's memory readings are at most a second old
      for (const k of kids) {
        const mem = (await k.info()).memory;
        if (mem)
          row("private memory per child after its exec (guest + QEMU)", side, "MiB").values.push(
            mem.privateBytes / MiB,
          );
      }
      await Promise.all(kids.map((k) => k.terminate()));
    }
  }
  series.sort((a, b) => a.name.localeCompare(b.name));
  const accel = (await server.health()).accel ?? "?";
  record("fork-notice", { quick, accel, command: `npm run bench:fork-notice${quick ? " -- --quick" : ""}` }, series, [
    "Two python parents in one mitosd, each has run a cell (x = 41). One as shipped: its idle kernel is not in /run/mitos/notify.",
    "The other with the kernel's pid written there, as every python sandbox had it before decision 0030: each child's activation signals it (SIGUSR2) and its reseed handler runs.",
    `Forked alternately, ${N} rounds, 1.5 s between forks; the side that goes first alternates.`,
  ]);
} finally {
  await daemon.stop();
  removeDataDir(dataDir);
}
