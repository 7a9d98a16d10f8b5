// Fork capture from the RAM mapping (decision 0022) on real VMs: the base it
// writes is byte for byte the one QEMU's migration writes, the first fork of a
// machine shape goes through migration and teaches the device-state prefix,
// later forks capture from the mapping, and their children carry the
// parent's memory (a process and its in-memory value), files and identity.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { captureFromMapping, DeviceStatePrefixes } from "../src/capture-mapping.js";
import { defaultDataDir } from "../src/config.js";
import { Engine } from "../src/index.js";
import { captureLive } from "../src/snapshot.js";
import type { Vm } from "../src/vm.js";

const shmDir = "/dev/shm/mitos-test-capture-mapping";
const dataDir = tempDataDir("test-capture-mapping", shmDir);
const forks: Array<Record<string, unknown>> = [];
let engine: Engine;

const sh = async (id: string, command: string) => {
  const r = await engine.exec(id, { command }).result;
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
  return r.stdout.toString();
};

/** The engine's VM of a sandbox (the test reaches past the public API to capture by hand). */
const vmOf = (id: string): Vm =>
  (engine as unknown as { table: { running(id: string): { vm: Vm } } }).table.running(id).vm;

/** Whether two files have the same bytes (and length). */
function sameBytes(a: string, b: string): boolean {
  const fa = fs.openSync(a, "r");
  const fb = fs.openSync(b, "r");
  const ba = Buffer.alloc(1 << 20);
  const bb = Buffer.alloc(1 << 20);
  try {
    for (let off = 0; ; off += ba.length) {
      const na = fs.readSync(fa, ba, 0, ba.length, off);
      const nb = fs.readSync(fb, bb, 0, bb.length, off);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

before(async () => {
  fs.mkdirSync(shmDir, { recursive: true });
  engine = await Engine.open({
    dataDir,
    shmDir,
    imagesDir: path.join(defaultDataDir(), "images"),
    poolTargets: {},
    spareVms: 0,
    log: (msg, fields) => {
      if (msg === "fork" && fields) forks.push(fields);
    },
  });
  await engine.createTemplate("python");
});

after(async () => {
  await engine?.close({ killSandboxes: true });
  removeDataDir(dataDir, shmDir);
});

describe("fork capture from the RAM mapping", () => {
  it("writes the same base as QEMU's migration, and a device state that is the migration's prefix plus QEMU's device sections", async (t) => {
    const p = await engine.create("python");
    await sh(p.id, "head -c 3000000 /dev/urandom > /tmp/noise; python3 -c 'x = bytearray(8 << 20)'");
    const vm = vmOf(p.id);
    const memBytes = vm.machine.memMiB * 2 ** 20;
    const viaMigration = { ramFile: path.join(shmDir, "a.ram"), stateFile: path.join(dataDir, "a.state"), memBytes };
    const viaMapping = { ramFile: path.join(shmDir, "b.ram"), stateFile: path.join(dataDir, "b.state"), memBytes };
    await vm.pause();
    try {
      const split = await captureLive(vm.qmp, vm.paths.migrationSocket, viaMigration, 120_000, vm.runAs);
      const prefixes = new DeviceStatePrefixes();
      prefixes.learn(vm.machine, viaMigration.stateFile, split.deviceOffset);
      const prefix = prefixes.get(vm.machine);
      assert.ok(prefix && prefix.length === split.deviceOffset, "the prefix is learnt from the migration's state");
      const stats = await captureFromMapping(vm, prefix, viaMapping);
      assert.ok(stats.privatePages > 0, "the parent wrote pages of its own");
      t.diagnostic(JSON.stringify(stats));
      assert.ok(sameBytes(viaMigration.ramFile, viaMapping.ramFile), "both bases hold the same bytes");
      // Holes where the guest has zeros, as in the migration's base, except pages the guest
      // zeroed over data of its own base: those hold zeros (no hole can be punched from Node).
      const allocated = (f: string) => fs.statSync(f).blocks * 512;
      const [mine, theirs] = [allocated(viaMapping.ramFile), allocated(viaMigration.ramFile)];
      const slack = stats.zeroedPages * 4096 + 2 ** 20;
      assert.ok(mine <= theirs + slack, `mapping base holds ${mine} bytes, migration base ${theirs}`);
      const a = fs.readFileSync(viaMigration.stateFile);
      const b = fs.readFileSync(viaMapping.stateFile);
      assert.deepEqual(b.subarray(0, split.deviceOffset), a.subarray(0, split.deviceOffset));
      // QEMU's device sections end at EOF (0x00); a vmdescription (0x06, length, JSON) follows as in a migration.
      const desc = b.subarray(b.lastIndexOf(Buffer.from('{"page_size"')) - 5);
      assert.equal(desc[0], 0x06);
      assert.equal(desc.readUInt32BE(1), desc.length - 5);
      assert.equal(b[b.length - desc.length - 1], 0x00);
    } finally {
      await vm.resume();
      for (const f of [viaMigration, viaMapping]) {
        fs.rmSync(f.ramFile, { force: true });
        fs.rmSync(f.stateFile, { force: true });
      }
    }
    await engine.terminate(p.id);
  });

  it("the first fork of a machine shape goes through migration; the next captures from the mapping and its children carry the parent's memory", async () => {
    const p = await engine.create("python");
    // A process whose value lives only in its memory, and a file in the guest's RAM.
    await sh(
      p.id,
      "echo parent-file > /tmp/f; nohup sh -c 'x=v$$-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d \" \"); echo $x > /tmp/want; while sleep 0.2; do echo $x > /tmp/seen; done' >/dev/null 2>&1 &",
    );
    await sh(p.id, "while [ ! -s /tmp/seen ]; do sleep 0.1; done");
    const want = await sh(p.id, "cat /tmp/want");
    const since = forks.length;
    const first = await engine.fork(p.id, { count: 1 });
    const second = await engine.fork(p.id, { count: 2 });
    assert.deepEqual(
      forks.slice(since).map((f) => f.captureVia),
      ["migration", "mapping"],
    );
    for (const c of [...first.children, ...second.children]) {
      assert.equal(await sh(c.id, "cat /tmp/f"), "parent-file\n");
      // The loop carried over from the parent's memory writes its value again in the child.
      await sh(c.id, "rm -f /tmp/seen; while [ ! -s /tmp/seen ]; do sleep 0.1; done");
      assert.equal(await sh(c.id, "cat /tmp/seen"), want);
      assert.equal((await sh(c.id, "cat /proc/sys/kernel/hostname")).trim().length > 0, true);
    }
    // Each child's writes stay its own.
    const [c1, c2] = second.children;
    assert.ok(c1 && c2);
    await sh(c1.id, "echo one > /tmp/f");
    assert.equal(await sh(c2.id, "cat /tmp/f"), "parent-file\n");
    assert.equal(await sh(p.id, "cat /tmp/f"), "parent-file\n");
    // A child is forked in turn from the mapping: its machine shape is known.
    const grand = await engine.fork(c1.id, { count: 1 });
    assert.equal(forks.at(-1)?.captureVia, "mapping");
    assert.equal(await sh(grand.children[0]?.id as string, "cat /tmp/f"), "one\n");
    for (const c of [...first.children, ...second.children, ...grand.children]) await engine.terminate(c.id);
    await engine.terminate(p.id);
  });
});
