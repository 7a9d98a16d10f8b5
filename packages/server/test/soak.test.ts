// The soak with faults, 2 minutes (test-support/soak.ts; the 30-minute run is
// `npm run bench:soak`): no undocumented error code, no lost acknowledged
// write, no leaked VM, file, namespace or token, mitosd's memory bounded.

import assert from "node:assert/strict";
import { after, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { runSoak, soakProblems } from "../../../test-support/soak.js";

const dataDir = tempDataDir("test-soak");

after(() => removeDataDir(dataDir));

it("survives 2 minutes of mixed load with faults", { timeout: 900_000 }, async () => {
  const r = await runSoak({
    dataDir,
    seconds: Number(process.env.MITOS_SOAK_SECONDS ?? 120),
    clients: 3,
    faultEverySeconds: 15, // 7 faults: every kind at least once, most twice
    shmCapMib: 4096,
  });
  console.log(JSON.stringify({ ok: r.ok, errors: r.errors, faults: r.faults, lost: r.sandboxesLost, rss: r.rssMib }));
  assert.deepEqual(soakProblems(r), []);
  assert.ok(r.faults.filter((f) => !f.detail.startsWith("could not")).length >= 4, "every kind of fault ran");
  assert.ok(r.ok.exec > 0 && r.ok.write > 0 && r.ok.read > 0 && r.ok.fork > 0, JSON.stringify(r.ok));
});
