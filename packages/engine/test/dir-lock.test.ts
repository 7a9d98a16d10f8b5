// One engine per data dir (dir-lock.ts): a second is refused naming the
// holder; a lock left by a dead holder is taken over.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { it } from "node:test";
import { DataDirLock } from "../src/dir-lock.js";
import { MitosError } from "../src/errors.js";

it("a held data dir is refused with the holder's pid; a dead holder's lock is taken over", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-lock-"));
  try {
    const lock = DataDirLock.take(dir);
    assert.throws(
      () => DataDirLock.take(dir),
      (e: unknown) => e instanceof MitosError && e.code === "conflict" && e.message.includes(`pid ${process.pid}`),
    );
    lock.release();
    DataDirLock.take(dir).release();
    // A pid that does not run (or runs with another start time) holds nothing.
    fs.writeFileSync(path.join(dir, "engine.lock"), "4194000 12345\n");
    const taken = DataDirLock.take(dir);
    assert.match(fs.readFileSync(path.join(dir, "engine.lock"), "utf8"), new RegExp(`^${process.pid} `));
    taken.release();
    assert.equal(fs.existsSync(path.join(dir, "engine.lock")), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
