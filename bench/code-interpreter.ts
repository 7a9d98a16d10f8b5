// The code interpreter measured through the API as users meet it:
// npm run bench:code-interpreter [-- --quick]
// A real mitosd. Rows, each beside its same-run baseline:
//  - template build: python (kernel started, data stack imported) vs "lean"
//    (the same Debian python3 without the interpreter);
//  - claim → first run_code result vs claim → first exec (python template);
//  - fork(8) of a sandbox holding a 100 MB DataFrame → every child answered
//    df.shape vs fork(8) of a fresh python sandbox → every child answered
//    an exec;
//  - guest memory made private per child after that (metering), and the
//    parent's.
// N iterations after one warm-up (10; 3 with --quick). Records to
// bench/results/<date>-code-interpreter.{json,md} (results/quick/ with --quick).

import fs from "node:fs";
import path from "node:path";
import { type Sandbox, SandboxServer } from "../packages/sdk/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { startMitosd } from "../test-support/mitosd.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 3 : 10;
const FORK_N = quick ? 2 : 5;
const MiB = 2 ** 20;
const progress = progressLogger();

const dataDir = tempDataDir("bench-code-interpreter");
const daemon = await startMitosd(dataDir);
const server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
const { series, add } = seriesList();
const ok = async (sb: Sandbox, code: string, want?: string) => {
  const r = await sb.runCode(code);
  if (r.exitCode !== 0) throw new Error(`${code}: ${r.error?.name}: ${r.error?.value}`);
  if (want !== undefined && r.text !== want) throw new Error(`${code}: got ${r.text}, want ${want}`);
  return r;
};

try {
  progress("building templates (python with the interpreter, lean without)");
  const buildPy = add("template build: python (kernel started, numpy/pandas/matplotlib imported)", "ms");
  const buildLean = add("baseline: template build: lean (Debian python3, no interpreter)", "ms");
  buildPy.values.push((await server.createTemplate("python", {})).creationTimeMs);
  buildLean.values.push((await server.createTemplate("lean", { image: "base", packages: ["python3"] })).creationTimeMs);
  await server.createTemplate("big", { image: "python", resources: { memSizeMib: 1024 } });
  const images = "/var/lib/mitos/images";
  const sizes = fs
    .readdirSync(process.env.MITOS_IMAGES_DIR ?? images)
    .filter((f) => /^rootfs-.*\.img$/.test(f))
    .map(
      (f) => `${f} ${(fs.statSync(path.join(process.env.MITOS_IMAGES_DIR ?? images, f)).size / MiB).toFixed(0)} MiB`,
    );

  const claimRun = add("claim → first run_code result (`1 + 1`)", "ms");
  const claimExec = add("baseline: claim → first exec (`true`)", "ms");
  for (let i = 0; i <= N; i++) {
    const t0 = performance.now();
    const a = await server.fork("python");
    await ok(a, "1 + 1", "2");
    if (i > 0) claimRun.values.push(performance.now() - t0);
    await a.terminate();
    const t1 = performance.now();
    const b = await server.fork("python");
    await b.exec("true");
    if (i > 0) claimExec.values.push(performance.now() - t1);
    await b.terminate();
  }
  progress("claims done");

  const parent = await server.fork("big");
  await ok(
    parent,
    "import numpy as np, pandas as pd\ndf = pd.DataFrame(np.random.rand(1_310_720, 10))\ndf.shape",
    "(1310720, 10)",
  );
  const dfBytes = Number((await ok(parent, "int(df.memory_usage(deep=True).sum())")).text);
  const plain = await server.fork("python");
  const forkDf = add("fork(8) of a sandbox holding a 100 MB DataFrame → every child answered df.shape", "ms");
  const forkPlain = add("baseline: fork(8) of a fresh python sandbox → every child answered an exec", "ms");
  const childPrivate = add("guest + VMM memory private to each child after it answered df.shape", "MiB");
  const parentPrivate = add("the parent's private memory at the same moment", "MiB");
  for (let i = 0; i <= FORK_N; i++) {
    let t0 = performance.now();
    const kids = await parent.fork(8);
    await Promise.all(kids.map((k) => ok(k, "df.shape", "(1310720, 10)")));
    if (i > 0) {
      forkDf.values.push(performance.now() - t0);
      // Metering is sampled: give it a moment, then read every child.
      await new Promise((r) => setTimeout(r, 1500));
      for (const k of kids) childPrivate.values.push(((await k.info()).memory?.privateBytes ?? Number.NaN) / MiB);
      parentPrivate.values.push(((await parent.info()).memory?.privateBytes ?? Number.NaN) / MiB);
    }
    await Promise.all(kids.map((k) => k.terminate()));
    t0 = performance.now();
    const pk = await plain.fork(8);
    await Promise.all(pk.map((k) => k.exec("true")));
    if (i > 0) forkPlain.values.push(performance.now() - t0);
    await Promise.all(pk.map((k) => k.terminate()));
  }
  progress("forks done");
  const notes = [
    `Root images in the cache (python = lean + the interpreter stack): ${sizes.join("; ")}.`,
    `The DataFrame: 1 310 720 × 10 float64, ${(dfBytes / MiB).toFixed(0)} MiB as pandas counts it, in a 1 GiB sandbox ("big", python image).`,
    "Claims come from the python template's warm pool (one by default); the first run_code after a claim also reseeds the kernel's random state (one silent cell).",
    "Private memory: metering's private bytes (guest pages this VM alone holds + its QEMU's own heap), read 1.5 s after every child answered.",
  ];
  const accel = (await server.health()).accel ?? "?";
  record(
    "code-interpreter",
    { quick, accel, command: `npm run bench:code-interpreter${quick ? " -- --quick" : ""}` },
    series,
    notes,
  );
} finally {
  await daemon.stop();
  removeDataDir(dataDir);
}
