// What one journal change costs as the journal grows (issue 19): every
// create, fork child, terminate and pause writes the journal before the API
// answers, so this cost is on each of those paths.
// npm run bench:journal [-- --quick]
//
// A Journal in a temp data dir (on the same file system as the default data
// dir, so fsync costs what it costs there), filled with N sandboxes and their
// VMs as a fork would leave them, then K changes timed one by one: a
// sandbox's adoption (its VM record and sandbox record in one batch), as a
// create or a fork child writes it, and its removal.

import fs from "node:fs";
import path from "node:path";
import { defaultDataDir } from "../packages/engine/src/index.js";
import { Journal, type SandboxRecord, type VmRecord } from "../packages/engine/src/journal.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const SIZES = quick ? [0, 100] : [0, 100, 500, 1000];
const K = quick ? 20 : 200;
const progress = progressLogger();
const { series, add } = seriesList();

function vmRecord(i: number): VmRecord {
  const vmId = `vm-${i.toString(16).padStart(8, "0")}`;
  return {
    vmId,
    pid: 100000 + i,
    dir: `/var/lib/mitos/vms/${vmId}`,
    sandboxId: `sb-${i.toString(16).padStart(8, "0")}`,
    files: [],
    startTime: 1234567 + i,
    machine: { memMiB: 512, vcpus: 1, network: false } as unknown as VmRecord["machine"],
    uid: 2132606983,
    gid: 2132606976,
    disk: [`/var/lib/mitos/disks/base-${i % 7}.qcow2`, `/var/lib/mitos/disks/${vmId}.qcow2`],
  };
}

function sandboxRecord(i: number): SandboxRecord {
  return {
    id: `sb-${i.toString(16).padStart(8, "0")}`,
    templateId: "python",
    parentId: "sb-00000000",
    state: "ready",
    createdAt: new Date(1_800_000_000_000 + i).toISOString(),
    deadline: 1_800_000_300_000 + i,
    forkTimeMs: 212,
    env: { MITOS_SANDBOX_ID: `sb-${i}`, PATH: "/usr/local/bin:/usr/bin:/bin" },
    memMiB: 512,
    vmId: `vm-${i.toString(16).padStart(8, "0")}`,
  };
}

const root = path.join(defaultDataDir(), `bench-journal-${process.pid}`);
try {
  for (const n of SIZES) {
    progress(`journal of ${n} sandboxes`);
    const dir = path.join(root, String(n));
    fs.mkdirSync(dir, { recursive: true });
    const j = new Journal(dir);
    j.batch(() => {
      for (let i = 0; i < n; i++) {
        j.putVm(vmRecord(i));
        j.putSandbox(sandboxRecord(i));
      }
    });
    const adopt = add(`adopt (VM + sandbox record, one batch), journal of ${n} sandboxes`, "ms");
    const remove = add(`terminate (sandbox, then VM record), journal of ${n} sandboxes`, "ms");
    for (let k = 0; k < K; k++) {
      const i = n + k;
      let t0 = performance.now();
      j.batch(() => {
        j.putVm(vmRecord(i));
        j.putSandbox(sandboxRecord(i));
      });
      adopt.values.push(performance.now() - t0);
      t0 = performance.now();
      j.deleteSandbox(sandboxRecord(i).id);
      j.deleteVm(vmRecord(i).vmId);
      remove.values.push(performance.now() - t0);
    }
    // The next start reads back what was written.
    const back = new Journal(dir);
    if (Object.keys(back.sandboxes).length !== n)
      throw new Error(`read back ${Object.keys(back.sandboxes).length} of ${n}`);
  }
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
record("journal", { quick, accel: "-", command: `npm run bench:journal${quick ? " -- --quick" : ""}` }, series, [
  `Each change is written and fsynced before the call returns (the API answers after it). Data dir's file system: ${defaultDataDir()}.`,
]);
