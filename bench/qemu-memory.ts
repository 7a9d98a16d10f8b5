// What a fork child's QEMU holds privately, by mapping, and what each cut
// changes (issue 19, item 4): npm run bench:qemu-memory [-- --quick]
//
// One python parent forked into N children per variant (8; 4 with --quick);
// each child runs one command, then after 3 s every child's /proc/<pid>/smaps
// is summed by kind of mapping. Variants run in one process, one after the
// other, against the same template: the default, MALLOC_ARENA_MAX=1 (glibc
// arenas), and a 16 MiB TCG translation buffer (MITOS_TCG_TB_MIB=16).
// Records to bench/results/<date>-qemu-memory.{json,md}.

import fs from "node:fs";
import path from "node:path";
import { defaultDataDir, Engine } from "../packages/engine/src/index.js";
import { qemuPidsOf } from "../packages/engine/src/qemu/processes.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 4 : 8;
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
  { name: "default", env: {} },
  { name: "MALLOC_ARENA_MAX=1", env: { MALLOC_ARENA_MAX: "1" } },
  { name: "tb-size 16 MiB", env: { MITOS_TCG_TB_MIB: "16" } },
];
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
try {
  for (const v of variants) {
    for (const [k, val] of Object.entries(v.env)) process.env[k] = val;
    const p = await engine.create("python");
    accel = p.accel ?? accel;
    await engine.exec(p.id, { command: "python3 -c 'print(1)'" }).result;
    const before = new Set(qemuPidsOf(dataDir));
    const { children } = await engine.fork(p.id, { count: N });
    const execMs: number[] = [];
    for (const c of children) {
      const t0 = performance.now();
      await engine.exec(c.id, { command: "echo hi > /tmp/x; cat /tmp/x" }).result;
      execMs.push(performance.now() - t0);
    }
    await new Promise((r) => setTimeout(r, 3000));
    const total = add(`${v.name}: private per child`, "MiB");
    const kinds: Record<string, number[]> = {};
    for (const pid of qemuPidsOf(dataDir).filter((x) => !before.has(x))) {
      const k = byKind(pid);
      total.values.push(Object.values(k).reduce((a, b) => a + b, 0) / MiB);
      for (const [name, kb] of Object.entries(k)) {
        kinds[name] = [...(kinds[name] ?? []), kb / MiB];
      }
    }
    const first = add(`${v.name}: first command in a child`, "ms");
    first.values.push(...execMs);
    const parts = Object.entries(kinds)
      .map(([name, xs]) => [name, xs.reduce((a, b) => a + b, 0) / xs.length] as const)
      .filter(([, mib]) => mib >= 0.05)
      .sort((a, b) => b[1] - a[1])
      .map(([name, mib]) => `${name} ${mib.toFixed(1)}`);
    notes.push(`${v.name}, mean MiB per child by mapping: ${parts.join("; ")}`);
    log(`${v.name}: done`);
    for (const c of children) await engine.terminate(c.id);
    await engine.terminate(p.id);
    for (const k of Object.keys(v.env)) delete process.env[k];
  }
} finally {
  await engine.close({ killSandboxes: true });
  removeDataDir(dataDir, shmDir);
}
notes.push(
  "One python parent forked per variant; each child ran `echo hi > /tmp/x; cat /tmp/x`; smaps read 3 s later. Anonymous pages only (file pages are shared).",
);
record(
  "qemu-memory",
  { quick, accel, command: `npm run bench:qemu-memory${quick ? " -- --quick" : ""}` },
  series,
  notes,
);
