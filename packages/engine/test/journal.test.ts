// The journal's files (journal.ts, docs/restarts.md "The journal"): a
// snapshot plus an append-only log of changes, read back exactly after
// reopen, a torn last line, a crash between a snapshot and the log's
// truncation; damage kept for inspection; an append per change, not a
// rewrite of the whole record.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import { Journal, readJournal, type SandboxRecord, type VmRecord } from "../src/journal.js";

let dir = "";
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-journal-"));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const vm = (i: number): VmRecord => ({ vmId: `vm-${i}`, pid: 1000 + i, dir: `/d/vm-${i}`, files: [] });
const sandbox = (i: number): SandboxRecord => ({
  id: `sb-${i}`,
  templateId: "python",
  parentId: null,
  state: "ready",
  createdAt: "2026-12-07T00:00:00.000Z",
  deadline: 1_800_000_000_000 + i,
  forkTimeMs: 20,
  env: { I: String(i) },
  memMiB: 512,
  vmId: `vm-${i}`,
});
const logOf = () => path.join(dir, "journal.log");
const snapshotOf = () => path.join(dir, "journal.json");

/** Every table as a reopened journal sees it. */
function state(j: Journal) {
  return { templates: j.templates, vms: j.vms, sandboxes: j.sandboxes, recipes: j.recipes };
}

test("every kind of change is read back after a reopen, from the log alone", () => {
  const j = new Journal(dir);
  j.batch(() => {
    j.putVm(vm(1));
    j.putSandbox(sandbox(1));
  });
  j.putVm(vm(2));
  j.vmFiles("vm-2", ["/shm/base"], true);
  j.vmDisk("vm-2", ["/disks/a", "/disks/b"]);
  j.putRecipe("web", { image: "python" } as never, "acme");
  j.putTemplate({ id: "tpl", ramFile: "/shm/tpl.ram", stateFile: "/t/tpl.state" } as never);
  j.putRecipe("gone", { image: "node" } as never);
  j.deleteRecipe("gone");
  j.putVm(vm(3));
  j.deleteVm("vm-3");
  const before = structuredClone(state(j));
  // The snapshot is still the empty one written at open: what follows came from the log.
  assert.deepEqual(JSON.parse(fs.readFileSync(snapshotOf(), "utf8")).vms, {});
  assert.ok(fs.statSync(logOf()).size > 0);

  assert.deepEqual(readJournal(dir).data.vms, before.vms);
  const again = new Journal(dir);
  assert.deepEqual(state(again), before);
  assert.deepEqual(again.vms["vm-2"]?.disk, ["/disks/a", "/disks/b"]);
  assert.deepEqual(again.vms["vm-2"]?.files, ["/shm/base"]);
  assert.equal(again.recipes.web?.owner, "acme");
  assert.equal(again.recipes.gone, undefined);
  // A reopen folds the log into the snapshot and starts an empty log.
  assert.equal(fs.statSync(logOf()).size, 0);
  assert.deepEqual(JSON.parse(fs.readFileSync(snapshotOf(), "utf8")).vms, before.vms);
});

test("a change appends one line; it does not rewrite the snapshot", () => {
  const j = new Journal(dir);
  j.batch(() => {
    for (let i = 0; i < 50; i++) j.putSandbox(sandbox(i));
  });
  // Reopened: 50 sandboxes in the snapshot, an empty log.
  const k = new Journal(dir);
  const snapshot = fs.readFileSync(snapshotOf(), "utf8");
  k.batch(() => {
    k.putVm(vm(99));
    k.putSandbox(sandbox(99));
  });
  k.deleteSandbox("sb-3");
  assert.equal(fs.readFileSync(snapshotOf(), "utf8"), snapshot);
  const lines = fs.readFileSync(logOf(), "utf8").trimEnd().split("\n");
  assert.equal(lines.length, 2, "a batch is one line, a delete another");
  assert.equal(JSON.parse(lines[0] as string).length, 2);
  assert.deepEqual(JSON.parse(lines[1] as string), [["sandboxes", "sb-3"]]);
});

test("the log is folded into the snapshot once it outgrows it", () => {
  const j = new Journal(dir);
  for (let i = 0; i < 400; i++) j.putSandbox(sandbox(i));
  // ~100 KiB of changes against a snapshot of nothing: at least one compaction happened.
  assert.ok(fs.statSync(logOf()).size < 64 << 10, "the log was emptied past 64 KiB");
  assert.ok(Object.keys(JSON.parse(fs.readFileSync(snapshotOf(), "utf8")).sandboxes).length > 100);
  assert.equal(Object.keys(readJournal(dir).data.sandboxes ?? {}).length, 400);
});

test("a torn last line (a crash mid-append) is dropped, and nothing before it", () => {
  const j = new Journal(dir);
  j.putVm(vm(1));
  j.putVm(vm(2));
  fs.appendFileSync(logOf(), '[["vms","vm-3",{"vmId":"vm-3","pi');
  const r = readJournal(dir);
  assert.equal(r.damaged, undefined);
  assert.deepEqual(Object.keys(r.data.vms).sort(), ["vm-1", "vm-2"]);
  const again = new Journal(dir);
  assert.deepEqual(Object.keys(again.vms).sort(), ["vm-1", "vm-2"]);
  assert.deepEqual(
    fs.readdirSync(dir).filter((f) => f.includes("corrupt")),
    [],
  );
});

test("a damaged line before the last stops the replay there and is kept for inspection", () => {
  const j = new Journal(dir);
  j.putVm(vm(1));
  fs.appendFileSync(logOf(), "not json\n");
  j.putVm(vm(2));
  const r = readJournal(dir);
  assert.equal(r.damaged, "log");
  assert.deepEqual(Object.keys(r.data.vms), ["vm-1"]);
  const again = new Journal(dir);
  assert.deepEqual(Object.keys(again.vms), ["vm-1"]);
  const kept = fs.readdirSync(dir).filter((f) => f.startsWith("journal.log.corrupt-"));
  assert.equal(kept.length, 1);
  assert.match(fs.readFileSync(path.join(dir, kept[0] as string), "utf8"), /not json/);
});

test("a crash between a snapshot's rename and the log's truncation loses nothing and adds nothing", () => {
  const j = new Journal(dir);
  j.putVm(vm(1));
  j.putVm(vm(2));
  j.deleteVm("vm-1");
  j.putSandbox(sandbox(2));
  const log = fs.readFileSync(logOf(), "utf8");
  const want = structuredClone(state(j));
  // Closing compacts: the snapshot holds everything and the log is empty.
  j.close();
  assert.equal(fs.statSync(logOf()).size, 0);
  // As if the truncation had not happened: the old log replays over the new snapshot.
  fs.writeFileSync(logOf(), log);
  assert.deepEqual(state(new Journal(dir)), want);
});

test("a damaged snapshot is kept for inspection and the journal starts empty", () => {
  fs.writeFileSync(snapshotOf(), "{ half");
  const j = new Journal(dir);
  assert.deepEqual(j.vms, {});
  assert.equal(fs.readdirSync(dir).filter((f) => f.startsWith("journal.json.corrupt-")).length, 1);
});

test("a data dir of an older release (journal.json only) opens unchanged; both files are 0600", () => {
  const old = { version: 1, templates: {}, vms: { "vm-7": vm(7) }, sandboxes: { "sb-7": sandbox(7) } };
  fs.writeFileSync(snapshotOf(), JSON.stringify(old, null, 1));
  const j = new Journal(dir);
  assert.deepEqual(j.vms, old.vms);
  assert.deepEqual(j.sandboxes, old.sandboxes);
  j.putVm(vm(8));
  for (const f of [snapshotOf(), logOf()]) assert.equal(fs.statSync(f).mode & 0o777, 0o600, f);
});

test("a change after close (a VM that exits late) is still written", () => {
  const j = new Journal(dir);
  j.putVm(vm(1));
  j.close();
  j.deleteVm("vm-1");
  assert.deepEqual(readJournal(dir).data.vms, {});
});
