// The E2B front door measured as E2B users meet it: npm run bench:e2b [-- --quick]
// A real mitosd; the real `e2b` SDK pointed at it by E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY. Rows, each beside its same-run baseline:
//  - E2B SDK Sandbox.create('python') → first commands.run('echo hi') returned
//    vs the Mitos SDK's fork('python') (create) → first exec('echo hi');
//  - E2B SDK fork({count: 4}) → every child's commands.run returned vs the
//    Mitos SDK's fork(4) → every child's exec.
// N iterations after one warm-up (20; 3 with --quick), alternating the two
// clients so both meet the same warm pool. Records to
// bench/results/<date>-e2b.{json,md} (results/quick/ with --quick).

import { Sandbox as E2bSandbox } from "e2b";
import { SandboxServer } from "../packages/sdk/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { startMitosd } from "../test-support/mitosd.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 3 : 20;
const FORK_N = quick ? 2 : 5;
const progress = progressLogger();

const dataDir = tempDataDir("bench-e2b");
const daemon = await startMitosd(dataDir);
const server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
const { series, add } = seriesList();

try {
  const key = await server.createE2bKey("bench");
  process.env.E2B_API_URL = daemon.url;
  process.env.E2B_SANDBOX_URL = daemon.url;
  process.env.E2B_API_KEY = key.key;
  progress("building the python template");
  await server.createTemplate("python", {});

  const e2bFirst = add("E2B SDK: Sandbox.create('python') → first commands.run('echo hi') returned", "ms");
  const ownFirst = add("baseline: Mitos SDK: fork('python') (create) → first exec('echo hi') returned", "ms");
  const ownLogin = add(
    "baseline: Mitos SDK: create → first exec of what E2B runs (`/bin/bash -l -c 'echo hi'`) returned",
    "ms",
  );
  for (let i = 0; i <= N; i++) {
    let t0 = performance.now();
    const e = await E2bSandbox.create("python");
    const r = await e.commands.run("echo hi");
    if (r.stdout !== "hi\n") throw new Error(`E2B run: ${JSON.stringify(r)}`);
    if (i > 0) e2bFirst.values.push(performance.now() - t0);
    await e.kill();
    t0 = performance.now();
    const m = await server.fork("python");
    const x = await m.exec("echo hi");
    if (x.stdout !== "hi\n") throw new Error(`Mitos exec: ${JSON.stringify(x)}`);
    if (i > 0) ownFirst.values.push(performance.now() - t0);
    await m.terminate();
    // The E2B SDK always runs `bash -l -c`: a login shell reads /etc/profile first.
    t0 = performance.now();
    const l = await server.fork("python");
    const y = await l.exec("/bin/bash", { args: ["-l", "-c", "echo hi"] });
    if (y.stdout !== "hi\n") throw new Error(`Mitos exec bash -l: ${JSON.stringify(y)}`);
    if (i > 0) ownLogin.values.push(performance.now() - t0);
    await l.terminate();
    if (i % 5 === 0) progress(`create → first command: ${i}/${N}`);
  }

  const e2bFork = add("E2B SDK: fork({count: 4}) → every child's commands.run returned", "ms");
  const ownFork = add("baseline: Mitos SDK: fork(4) → every child's exec returned", "ms");
  const e = await E2bSandbox.create("python");
  const m = await server.fork("python");
  for (let i = 0; i <= FORK_N; i++) {
    let t0 = performance.now();
    const kids = await e.fork({ count: 4 });
    await Promise.all(
      kids.map(async (k) => {
        if (k instanceof Error) throw k;
        await k.commands.run("true");
      }),
    );
    if (i > 0) e2bFork.values.push(performance.now() - t0);
    await Promise.all(kids.map((k) => (k instanceof Error ? undefined : k.kill())));
    t0 = performance.now();
    const mk = await m.fork(4);
    await Promise.all(mk.map((k) => k.exec("true")));
    if (i > 0) ownFork.values.push(performance.now() - t0);
    await Promise.all(mk.map((k) => k.terminate()));
  }
  await e.kill();
  await m.terminate();
  progress("done");
  const accel = (await server.health()).accel ?? "?";
  record("e2b", { quick, accel, command: `npm run bench:e2b${quick ? " -- --quick" : ""}` }, series, [
    "Both clients over HTTP/1.1 to the same mitosd; E2B's commands.run is a Connect server stream (process.Process/Start) through the sandbox plane, the Mitos SDK's exec is ExecStream.",
    "Creates come from the python template's warm pool (one warm VM by default) for both clients alike.",
  ]);
} finally {
  await daemon.stop();
  removeDataDir(dataDir);
}
