// The failed-VM log area: a failed start's dir moves there, the newest are
// kept, a second move of the same VM is a no-op.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { it } from "node:test";
import { failedLogsDir, keepFailedLogs } from "../src/failed-logs.js";

function vmDir(dataDir: string, id: string): string {
  const d = path.join(dataDir, "vms", id);
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(d, "console.log"), `boot of ${id}\n`);
  return d;
}

it("moves a VM's dir aside, keeps the newest N, and answers undefined when there is nothing to move", () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-failed-logs-"));
  try {
    const kept: string[] = [];
    for (let i = 0; i < 5; i++) {
      const to = keepFailedLogs(dataDir, vmDir(dataDir, `vm-${i}`), 3);
      assert.equal(to, path.join(failedLogsDir(dataDir), `vm-${i}`));
      kept.push(to as string);
      // Distinct times: pruning goes by when each failed.
      const t = new Date(Date.now() + i * 1000);
      fs.utimesSync(to as string, t, t);
    }
    assert.deepEqual(fs.readdirSync(failedLogsDir(dataDir)).sort(), ["vm-2", "vm-3", "vm-4"]);
    assert.equal(fs.readFileSync(path.join(kept[4] as string, "console.log"), "utf8"), "boot of vm-4\n");
    assert.deepEqual(fs.readdirSync(path.join(dataDir, "vms")), []);
    assert.equal(keepFailedLogs(dataDir, path.join(dataDir, "vms", "vm-4"), 3), undefined, "already moved");
    assert.ok(fs.existsSync(kept[4] as string), "a second move does not lose the first");
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
