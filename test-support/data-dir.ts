// Data dirs of test suites: each suite's engine or mitosd gets its own, and
// its teardown removes it together with its RAM dir in /dev/shm. The engine
// keeps template bases in the shm dir on a normal close (templates survive a
// restart), so a suite that removed only its data dir left a few hundred MiB
// of RAM behind. test-support/suite-leaks.test.ts checks that none is left.

import fs from "node:fs";
import path from "node:path";
import { defaultDataDir, shmDirFor } from "../packages/engine/src/config.js";
import { killQemusOf } from "./leaks.js";

/**
 * A fresh data dir `<default data dir>/<name>` for one suite. The path is
 * fixed (not random), so whatever a killed earlier run left there (QEMUs,
 * files, its shm dir) is removed here first. `shmDir`: the suite passes the
 * engine an explicit RAM dir instead of the default `shmDirFor(dir)`.
 */
export function tempDataDir(name: string, shmDir?: string): string {
  const dir = path.join(defaultDataDir(), name);
  removeDataDir(dir, shmDir);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Removes a suite's data dir and its RAM dir (`shmDirFor(dir)` unless the
 * suite used another). Call it once the engine or mitosd has stopped; any
 * QEMU of the data dir still running (a failed test) is killed first.
 */
export function removeDataDir(dir: string, shmDir: string = shmDirFor(dir)): void {
  killQemusOf(dir);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(shmDir, { recursive: true, force: true });
}
