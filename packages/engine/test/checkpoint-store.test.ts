// The checkpoint store without VMs: round trip, zero chunks as holes,
// dedup across checkpoints, chunk GC, the disk cap, and corrupt chunks.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { CHUNK_BYTES, type CheckpointMeta, CheckpointStore } from "../src/checkpoint-store.js";
import type { MitosError } from "../src/errors.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-cpstore-"));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const meta = { name: null, sandboxId: "sb-1", templateId: "python", machine: {}, env: {} } as unknown as CheckpointMeta;

/** A sparse "RAM file" of 64 chunks with data in the chunks named. */
function ramFile(name: string, chunks: Record<number, Buffer>): string {
  const f = path.join(dir, name);
  const fd = fs.openSync(f, "w");
  fs.ftruncateSync(fd, 64 * CHUNK_BYTES);
  for (const [i, data] of Object.entries(chunks)) fs.writeSync(fd, data, 0, data.length, Number(i) * CHUNK_BYTES);
  fs.closeSync(fd);
  return f;
}

describe("checkpoint store", () => {
  const store = new CheckpointStore(path.join(dir, "store"), 1 << 30);
  const a = randomBytes(CHUNK_BYTES);
  const b = Buffer.alloc(CHUNK_BYTES, "x"); // compressible
  const c = randomBytes(CHUNK_BYTES);
  const state = path.join(dir, "state");
  fs.writeFileSync(state, randomBytes(3000));

  it("round-trips RAM and state; zero chunks are neither stored nor written", async () => {
    const m = await store.write(ramFile("r1", { 0: a, 5: b, 63: c }), state, meta);
    assert.equal(m.ram.length, 3);
    assert.ok(m.addedBytes > 2 * CHUNK_BYTES && m.addedBytes < 3 * CHUNK_BYTES, `b compresses: ${m.addedBytes}`);
    const out = path.join(dir, "out.ram");
    await store.materialize(m, out, path.join(dir, "out.state"));
    assert.ok(fs.readFileSync(out).equals(fs.readFileSync(path.join(dir, "r1"))));
    assert.ok(fs.readFileSync(path.join(dir, "out.state")).equals(fs.readFileSync(state)));
    assert.ok(fs.statSync(out).blocks * 512 <= 4 * CHUNK_BYTES, "holes stay holes");
    assert.deepEqual(
      store.list().map((x) => x.id),
      [m.id],
    );
  });

  it("a second checkpoint adds only the chunks that changed; delete frees only what nobody else names", async () => {
    const [first] = store.list();
    const before = store.usedBytes();
    const second = await store.write(ramFile("r2", { 0: a, 5: b, 63: randomBytes(CHUNK_BYTES) }), state, meta);
    const added = store.usedBytes() - before;
    assert.equal(added, second.addedBytes);
    assert.ok(added < CHUNK_BYTES * 1.01 && added > CHUNK_BYTES * 0.9, `one random chunk added: ${added}`);
    store.delete(first!.id);
    assert.ok(store.usedBytes() < before + added, "the first's own chunk is gone");
    await store.materialize(store.get(second.id), path.join(dir, "o2.ram"), path.join(dir, "o2.state"));
    assert.ok(fs.readFileSync(path.join(dir, "o2.ram")).equals(fs.readFileSync(path.join(dir, "r2"))));
    assert.throws(
      () => store.get(first!.id),
      (e: MitosError) => e.code === "not_found",
    );
    assert.throws(
      () => store.get("../etc"),
      (e: MitosError) => e.code === "not_found",
    );
  });

  it("refuses a checkpoint over the cap with quota_exceeded and lists nothing half-written", async () => {
    const small = new CheckpointStore(path.join(dir, "small"), CHUNK_BYTES);
    await assert.rejects(
      small.write(ramFile("r3", { 1: randomBytes(CHUNK_BYTES), 2: randomBytes(CHUNK_BYTES) }), state, meta),
      (e: MitosError) => e.code === "quota_exceeded" && e.context.limit === "max_checkpoint_bytes",
    );
    assert.deepEqual(small.list(), []);
    assert.equal(small.usedBytes(), 0);
    assert.deepEqual(fs.readdirSync(path.join(dir, "small")).sort(), ["chunks", "manifests"], "no staging dir left");
  });

  it("a full disk (a 1 MiB tmpfs) is quota_exceeded naming the disk, and lists nothing half-written", async (t) => {
    if (process.getuid?.() !== 0) return t.skip("mounting a tmpfs needs root");
    const mnt = path.join(dir, "full");
    fs.mkdirSync(mnt);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "mitos-test-full", mnt]);
    try {
      const full = new CheckpointStore(path.join(mnt, "store"), 1 << 30);
      const chunks = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [i, randomBytes(CHUNK_BYTES)]));
      await assert.rejects(
        full.write(ramFile("r-full", chunks), state, meta),
        (e: MitosError) => e.code === "quota_exceeded" && e.context.limit === "disk" && /is full/.test(e.message),
      );
      assert.deepEqual(full.list(), []);
      assert.equal(full.usedBytes(), 0);
      assert.deepEqual(fs.readdirSync(path.join(mnt, "store")).sort(), ["chunks", "manifests"], "no staging dir left");
    } finally {
      execFileSync("umount", [mnt]);
    }
  });

  it("detects a corrupt chunk by its hash and refuses to restore", async () => {
    const m = store.list()[0]!;
    const [, hash] = m.ram[0]!;
    const chunk = path.join(store.dir, "chunks", hash.slice(0, 2), `${hash}.zst`);
    const good = fs.readFileSync(chunk);
    // Another valid zstd frame with other content: only the hash can tell.
    const other = await store.write(ramFile("r4", { 0: randomBytes(CHUNK_BYTES) }), state, meta);
    const [, h2] = other.ram[0]!;
    fs.copyFileSync(path.join(store.dir, "chunks", h2.slice(0, 2), `${h2}.zst`), chunk);
    const out = path.join(dir, "bad.ram");
    await assert.rejects(
      store.materialize(m, out, path.join(dir, "bad.state")),
      (e: MitosError) => e.code === "internal" && /corrupt chunk/.test(e.message),
    );
    assert.equal(fs.existsSync(out), false, "no half-written base");
    fs.writeFileSync(chunk, good);
  });
});
