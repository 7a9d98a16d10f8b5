// What a fork child's QEMU holds privately, by mapping, and what each cut
// changes (issue 19, item 4): npm run bench:qemu-memory [-- --quick]
//
// One python parent per variant, forked into N children (8; 4 with --quick)
// in each of 3 rounds (1 with --quick), the variants' order alternating; each
// child runs one command, then after 3 s every child's /proc/<pid>/smaps is
// summed by kind of mapping; each round the parent also times a Python loop
// (translated code at work) and two fork(1) → first exec in the child.
// Variants, against the same template: the default (QEMU without transparent
// huge pages, decision 0032), huge pages allowed (MITOS_QEMU_THP=on, as
// before), MALLOC_ARENA_MAX=1 (glibc arenas), and a 16 MiB TCG translation
// buffer (MITOS_TCG_TB_MIB=16).
// Records to bench/results/<date>-qemu-memory.{json,md}.

import fs from "node:fs";
import path from "node:path";
import { defaultDataDir, Engine, type SandboxInfo } from "../packages/engine/src/index.js";
import { qemuPidsOf } from "../packages/engine/src/qemu/processes.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 4 : 8;
const ROUNDS = quick ? 1 : 3;
const LOOP = "python3 -c 's = 0\nfor i in range(200000): s += i * i\nprint(s)'";
const log = progressLogger();
const { series, add } = seriesList();
const MiB = 1024;

/** Anonymous kB of one QEMU by kind of mapping. */
function byKind(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  let kind = "";
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
    const h = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (h) {
      const [perms, name] = [h[1] ?? "", h[2] ?? ""];
      kind =
        perms.includes("x") && name === ""
          ? "TCG translated code"
          : name === "[heap]"
            ? "heap (main arena)"
            : /\.ram( \(deleted\))?$/.test(name)
              ? "guest pages copied on write"
              : name === ""
                ? "other anonymous (thread arenas, stacks, device state)"
                : name.startsWith("/")
                  ? "relocated data of the binary and its libraries"
                  : `other ${name}`;
      continue;
    }
    const f = /^Anonymous:\s+(\d+) kB/.exec(line);
    if (f) out[kind] = (out[kind] ?? 0) + Number(f[1]);
  }
  return out;
}

const variants: Array<{ name: string; env: Record<string, string> }> = [
  { name: "default (no huge pages)", env: {} },
  { name: "huge pages allowed (before 0032)", env: { MITOS_QEMU_THP: "on" } },
  { name: "MALLOC_ARENA_MAX=1", env: { MALLOC_ARENA_MAX: "1" } },
  { name: "tb-size 16 MiB", env: { MITOS_TCG_TB_MIB: "16" } },
];
/** QEMU reads these at its start: set for one variant, then cleared. */
const withEnv = async <T>(env: Record<string, string>, f: () => Promise<T>): Promise<T> => {
  for (const [k, val] of Object.entries(env)) process.env[k] = val;
  try {
    return await f();
  } finally {
    for (const k of Object.keys(env)) delete process.env[k];
  }
};
const notes: string[] = [];
const shmDir = "/dev/shm/mitos-bench-qemu-memory";
fs.mkdirSync(shmDir, { recursive: true });
const dataDir = tempDataDir("bench-qemu-memory", shmDir);
const engine = await Engine.open({
  dataDir,
  shmDir,
  imagesDir: path.join(defaultDataDir(), "images"),
  poolTargets: {},
  spareVms: 0,
});
let accel = "";
const kinds = new Map<string, Record<string, number[]>>();
const row = (name: string, unit: string) => series.find((x) => x.name === name) ?? add(name, unit);
try {
  // One parent per variant, its QEMU started under the variant; rounds alternate the order.
  const parents: SandboxInfo[] = [];
  for (const v of variants) {
    const p = await withEnv(v.env, () => engine.create("python"));
    accel = p.accel ?? accel;
    await engine.exec(p.id, { command: "python3 -c 'print(1)'" }).result;
    parents.push(p);
  }
  for (let round = 0; round < ROUNDS; round++) {
    log(`round ${round + 1}/${ROUNDS}`);
    const order = variants.map((v, i) => ({ v, p: parents[i] as SandboxInfo }));
    if (round % 2) order.reverse();
    for (const { v, p } of order) {
      // Translated code at work: the same Python loop in the parent (its code long translated).
      const t = performance.now();
      await engine.exec(p.id, { command: LOOP }).result;
      row(`${v.name}: a Python loop in the parent`, "ms").values.push(performance.now() - t);
      // A fork(1) to the child's first answer, twice (its QEMU starts under the variant: no spares here).
      for (let j = 0; j < 2; j++) {
        const t1 = performance.now();
        const { children: one } = await withEnv(v.env, () => engine.fork(p.id, { count: 1 }));
        const c = one[0] as SandboxInfo;
        await engine.exec(c.id, { command: "true" }).result;
        row(`${v.name}: fork(1) → first exec answered`, "ms").values.push(performance.now() - t1);
        await engine.terminate(c.id);
      }
      const before = new Set(qemuPidsOf(dataDir));
      const { children } = await withEnv(v.env, () => engine.fork(p.id, { count: N }));
      for (const c of children) {
        const t0 = performance.now();
        await engine.exec(c.id, { command: "echo hi > /tmp/x; cat /tmp/x" }).result;
        row(`${v.name}: first command in a child`, "ms").values.push(performance.now() - t0);
      }
      await new Promise((r) => setTimeout(r, 3000));
      const total = row(`${v.name}: private per child`, "MiB");
      const k = kinds.get(v.name) ?? {};
      kinds.set(v.name, k);
      for (const pid of qemuPidsOf(dataDir).filter((x) => !before.has(x))) {
        const b = byKind(pid);
        total.values.push(Object.values(b).reduce((a, x) => a + x, 0) / MiB);
        for (const [name, kb] of Object.entries(b)) k[name] = [...(k[name] ?? []), kb / MiB];
      }
      for (const c of children) await engine.terminate(c.id);
    }
  }
  for (const v of variants) {
    const parts = Object.entries(kinds.get(v.name) ?? {})
      .map(([name, xs]) => [name, xs.reduce((a, b) => a + b, 0) / xs.length] as const)
      .filter(([, mib]) => mib >= 0.05)
      .sort((a, b) => b[1] - a[1])
      .map(([name, mib]) => `${name} ${mib.toFixed(1)}`);
    notes.push(`${v.name}, mean MiB per child by mapping: ${parts.join("; ")}`);
  }
} finally {
  await engine.close({ killSandboxes: true });
  removeDataDir(dataDir, shmDir);
}
notes.push(
  `One python parent per variant, its QEMU started under the variant; ${ROUNDS} round(s), the variants' order alternating; each round the parent runs a Python loop, is forked into one child twice (timed to the child's first \`true\` answered), then forks ${N} children (their QEMUs started under the variant), each child runs \`echo hi > /tmp/x; cat /tmp/x\`, smaps read 3 s later. Anonymous pages only (file pages are shared).`,
);
record(
  "qemu-memory",
  { quick, accel, command: `npm run bench:qemu-memory${quick ? " -- --quick" : ""}` },
  series,
  notes,
);
