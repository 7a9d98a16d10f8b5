// The Python SDK (sdk/python, distribution mitos-run) against a real mitosd:
// runs its unittest suite, unit and end-to-end, with MITOS_BASE_URL and
// MITOS_API_KEY pointing at a daemon started here.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, repoRoot, startMitosd } from "../../../test-support/mitosd.js";

// A RAM directory of this suite's own: a mitosd starting up sweeps stray
// mitos-*.ram files from its shm dir, so daemons of other suites sharing
// /dev/shm would delete this one's template RAM.
const shmDir = "/dev/shm/mitos-test-python";
const dataDir = tempDataDir("test-python", shmDir);

let daemon: Daemon | undefined;

before(async () => {
  fs.mkdirSync(shmDir, { recursive: true });
  process.env.MITOS_SHM_DIR ??= shmDir;
  daemon = await startMitosd(dataDir);
});

after(async () => {
  await daemon?.stop();
  // The daemon's RAM dir is inside shmDir (MITOS_SHM_DIR): this removes both.
  removeDataDir(dataDir, shmDir);
});

it("passes the Python SDK's unittest suite, end-to-end tests included", { timeout: 180_000 }, async () => {
  assert.ok(daemon);
  const { code, output } = await run("python3", ["-m", "unittest", "discover", "-s", "sdk/python/tests", "-v"], {
    ...daemon.env,
    PYTHONPATH: path.join(repoRoot, "sdk/python"),
    PYTHONUNBUFFERED: "1",
  });
  assert.equal(code, 0, output);
  assert.match(output, /test_e2e\.E2ETest\.test_api_example_verbatim\) \.\.\. ok/, output);
  assert.doesNotMatch(output, /skipped/i, output);
  assert.match(output, /\nOK\s*$/, output);
});

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: repoRoot, env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.once("error", reject);
    child.once("exit", (code) => resolve({ code, output }));
  });
}
