// Workspace disks beyond RAM (docs/disks.md), end to end on real microVMs:
// a 256 MiB guest writes 768 MiB to a 2 GiB disk; a fork freezes the layer and
// the children see the file and keep their writes to themselves; a full disk
// is ENOSPC to the writer while exec goes on; checkpoints carry the disk;
// long chains are compacted; a restarted engine re-adopts a disk sandbox; no
// layer outlives what uses it.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { assertNoLeaks, qemuPidsOf } from "../../../test-support/leaks.js";
import { defaultDataDir } from "../src/config.js";
import { Engine } from "../src/index.js";

const imagesDir = path.join(defaultDataDir(), "images");
const shmDir = "/dev/shm/mitos-test-disk";
const dataDir = tempDataDir("test-disk", shmDir);
const disksDir = path.join(dataDir, "disks");
let engine: Engine;
/** The big file: three times the guest's RAM, in 17-byte lines. */
const BIG = 768 * 2 ** 20;
/** tail -c +LAST_LINE starts at the last whole line but one. */
const LAST_LINE = (Math.floor(BIG / 17) - 1) * 17 + 1;

const open = () =>
  Engine.open({
    dataDir,
    shmDir,
    imagesDir,
    poolTargets: {},
    spareVms: 0,
    // What the engine did, for a failure's post-mortem.
    log: (msg, fields) =>
      fs.appendFileSync(path.join(dataDir, "engine.log"), `${msg} ${JSON.stringify(fields ?? {})}\n`),
  });

const sh = async (id: string, command: string) => {
  const r = await engine.exec(id, { command, timeoutMs: 600_000 }).result;
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
  return r.stdout.toString();
};

/** Host bytes allocated by the disk layers (sparse files count what they hold). */
const layerBytes = () =>
  fs.readdirSync(disksDir).reduce((n, f) => n + fs.statSync(path.join(disksDir, f)).blocks * 512, 0);

before(async () => {
  fs.mkdirSync(shmDir, { recursive: true });
  engine = await open();
  await engine.createTemplate("disk", {
    image: "base",
    resources: { memSizeMib: 256 },
    diskSizeMib: 2048,
    init: ["echo from-template > /workspace/t"],
  });
});

after(async () => {
  await engine?.close({ killSandboxes: true });
  if (process.env.KEEP) fs.copyFileSync(path.join(dataDir, "engine.log"), "/tmp/disk-engine.log");
  removeDataDir(dataDir, shmDir);
});

describe("workspace disks", () => {
  let parent: string;

  it("a 256 MiB sandbox writes 768 MiB (three times its RAM) to its 2 GiB /workspace disk", async () => {
    parent = (await engine.create("disk", { timeoutSeconds: 3600 })).id;
    assert.equal(await sh(parent, "cat /workspace/t"), "from-template\n", "init's files are in the template's disk");
    const mem = Number(await sh(parent, "awk '/MemTotal/ {print $2}' /proc/meminfo"));
    assert.ok(mem < 300 * 1024, `the guest has ${mem} KiB of RAM`);
    const before = layerBytes();
    await sh(parent, `yes 0123456789abcdef | head -c ${BIG} > /workspace/big && sync`);
    assert.equal(await sh(parent, "stat -c %s /workspace/big"), `${BIG}\n`);
    assert.equal(await sh(parent, `tail -c +${LAST_LINE} /workspace/big | head -1`), "0123456789abcdef\n");
    assert.ok(layerBytes() - before > BIG * 0.95, "the data is on the host disk, not in guest RAM");
    assert.match(await sh(parent, "df -k /workspace | tail -1"), /^\/dev\/vd[a-z]\s+\d+/);
  });

  it("after a fork the children see the file and each child's writes stay its own", async () => {
    await sh(parent, "echo parent > /workspace/who");
    const { children } = await engine.fork(parent, { count: 2 });
    const [a, b] = children.map((c) => c.id) as [string, string];
    for (const c of [a, b]) {
      assert.equal(await sh(c, "stat -c %s /workspace/big"), `${BIG}\n`);
      assert.equal(await sh(c, "cat /workspace/who"), "parent\n");
    }
    await sh(a, "echo a > /workspace/who; echo only-a > /workspace/a");
    await sh(b, "echo b > /workspace/who; head -c 1048576 /dev/zero > /workspace/big");
    await sh(parent, "echo parent-after > /workspace/who");
    assert.equal(await sh(a, "cat /workspace/who; ls /workspace"), "a\na\nbig\nlost+found\nt\nwho\n");
    assert.equal(
      await sh(b, "cat /workspace/who; stat -c %s /workspace/big; ls /workspace/a 2>&1 || true"),
      "b\n1048576\nls: cannot access '/workspace/a': No such file or directory\n",
    );
    assert.equal(await sh(parent, "cat /workspace/who; stat -c %s /workspace/big"), `parent-after\n${BIG}\n`);
    // A child's page cache is not what answers: drop it and read from its disk.
    assert.equal(
      await sh(a, `sync; echo 3 > /proc/sys/vm/drop_caches; tail -c +${LAST_LINE} /workspace/big | head -1`),
      "0123456789abcdef\n",
    );
    await engine.terminate(a);
    await engine.terminate(b);
  });

  it("a full disk is ENOSPC to the writer; exec and the rest of the disk keep working", async () => {
    const r = await engine.exec(parent, { command: "head -c 2G /dev/zero > /workspace/fill", timeoutMs: 600_000 })
      .result;
    assert.notEqual(r.exitCode, 0);
    assert.match(r.stderr.toString(), /No space left on device/);
    assert.equal(await sh(parent, "cat /workspace/who"), "parent-after\n");
    await sh(parent, "rm /workspace/fill; echo ok > /workspace/after-full");
    assert.equal(await sh(parent, "cat /workspace/after-full"), "ok\n");
    assert.equal(engine.get(parent).state, "ready");
  });

  it("forks keep the chain short: it is compacted in the background and unused layers go", async () => {
    for (let i = 0; i < 8; i++) {
      await sh(parent, `echo ${i} > /workspace/gen`);
      const { children } = await engine.fork(parent, { count: 1 });
      await engine.terminate(children[0]?.id as string);
    }
    // A compaction copies what the layers above the bottom hold (here the 768 MiB file) into the writable one.
    const deadline = Date.now() + 300_000;
    // Layers: the template's two, the parent's writable one and at most MAX_CHAIN-2 frozen ones.
    while (fs.readdirSync(disksDir).length > 6) {
      assert.ok(Date.now() < deadline, `layers left: ${fs.readdirSync(disksDir).join(" ")}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(
      await sh(parent, "cat /workspace/gen /workspace/who; stat -c %s /workspace/big"),
      `7\nparent-after\n${BIG}\n`,
    );
  });

  it("a checkpoint carries the disk: a sandbox started from it sees the files; the disk is stored deduplicated", async () => {
    const cp = await engine.checkpoint(parent, { name: "with-disk" });
    assert.ok(cp.disk && cp.disk.length > 0, "the manifest names disk chunks");
    // 768 MiB of one repeated 16-byte line: a handful of distinct chunks.
    assert.ok(cp.bytes < 200 * 2 ** 20, `stored ${cp.bytes} bytes`);
    await sh(parent, "echo changed > /workspace/who");
    const { children } = await engine.fromCheckpoint(cp.id, { count: 1 });
    const c = children[0]?.id as string;
    assert.equal(
      await sh(c, "cat /workspace/who /workspace/gen; stat -c %s /workspace/big"),
      `parent-after\n7\n${BIG}\n`,
    );
    await sh(c, "echo from-cp > /workspace/who");
    assert.equal(await sh(parent, "cat /workspace/who"), "changed\n");
    await engine.terminate(c);
    engine.deleteCheckpoint(cp.id);
  });

  it("a restarted engine re-adopts a disk sandbox; its next fork works; terminating it leaves no layer but the template's", async () => {
    const pid = engine.get(parent).pid;
    await engine.close();
    assert.ok(qemuPidsOf(dataDir).includes(pid), "the sandbox runs on without the engine");
    engine = await open();
    assert.equal(engine.get(parent).pid, pid);
    assert.equal(await sh(parent, "cat /workspace/who"), "changed\n");
    const { children } = await engine.fork(parent, { count: 1 });
    const c = children[0]?.id as string;
    assert.equal(await sh(c, "cat /workspace/who; stat -c %s /workspace/big"), `changed\n${BIG}\n`);
    await engine.terminate(c);
    await engine.terminate(parent);
    const tpl = engine.templateRecord("disk");
    assert.deepEqual(
      fs
        .readdirSync(disksDir)
        .map((f) => path.join(disksDir, f))
        .sort(),
      [...(tpl?.disk ?? [])].sort(),
    );
    await assertNoLeaks({ dataDir, shmDir });
  });
});
