// Exec round trip by how the command is given (issue 19, item 5): through a
// shell or as argv, a builtin or a binary. npm run bench:exec-variants [-- --quick]
//
// One python sandbox; the variants interleave round by round so load drifts
// hit them alike; 5 warm-up execs of each first. Engine level (no HTTP).
// Records to bench/results/<date>-exec-variants.{json,md}.

import fs from "node:fs";
import path from "node:path";
import { defaultDataDir, Engine } from "../packages/engine/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const ROUNDS = quick ? 5 : 30;
const variants: Array<{ name: string; req: { command?: string; args?: string[] } }> = [
  { name: "command `true` (/bin/sh -c true: a shell builtin)", req: { command: "true" } },
  { name: "argv [/bin/true] (no shell)", req: { args: ["/bin/true"] } },
  { name: "command `/bin/true` (the shell forks and execs it)", req: { command: "/bin/true" } },
  { name: "command `exec /bin/true` (the shell execs it)", req: { command: "exec /bin/true" } },
  { name: "argv [/bin/sh, -c, true]", req: { args: ["/bin/sh", "-c", "true"] } },
];
const shmDir = "/dev/shm/mitos-bench-exec-variants";
fs.mkdirSync(shmDir, { recursive: true });
const dataDir = tempDataDir("bench-exec-variants", shmDir);
const engine = await Engine.open({
  dataDir,
  shmDir,
  imagesDir: path.join(defaultDataDir(), "images"),
  poolTargets: {},
  spareVms: 0,
});
const { series, add } = seriesList();
const rows = variants.map((v) => ({ ...v, series: add(v.name, "ms") }));
try {
  const sb = await engine.create("python");
  for (const v of variants) for (let i = 0; i < 5; i++) await engine.exec(sb.id, v.req).result;
  for (let round = 0; round < ROUNDS; round++) {
    for (const v of rows) {
      const t0 = performance.now();
      await engine.exec(sb.id, v.req).result;
      v.series.values.push(performance.now() - t0);
    }
  }
} finally {
  await engine.close({ killSandboxes: true });
  removeDataDir(dataDir, shmDir);
}
record(
  "exec-variants",
  { quick, accel: engine.accel, command: `npm run bench:exec-variants${quick ? " -- --quick" : ""}` },
  series,
  [
    "Host → agent → the guest process → exit frame → host, engine level. Under TCG each extra fork/exec in the guest costs about 5 ms.",
  ],
);
