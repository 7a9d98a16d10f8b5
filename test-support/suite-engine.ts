// An engine of one test suite: its own data dir and RAM dir, the shared
// image cache, no warm pools or spares (the suite decides what runs), opened
// before the suite's tests and closed and removed after them.

import fs from "node:fs";
import path from "node:path";
import { after, before } from "node:test";
import { defaultDataDir, Engine } from "../packages/engine/src/index.js";
import { removeDataDir, tempDataDir } from "./data-dir.js";

export interface SuiteEngine {
  /** The open engine (set once the suite's `before` ran). */
  engine: Engine;
  readonly dataDir: string;
  readonly shmDir: string;
  readonly imagesDir: string;
  /** Closes the engine (its sandboxes keep running) and opens a new one on the same dirs: a restart. */
  reopen(): Promise<Engine>;
}

export function suiteEngine(name: string): SuiteEngine {
  const shmDir = `/dev/shm/mitos-${name}`;
  const dataDir = tempDataDir(name, shmDir);
  const imagesDir = path.join(defaultDataDir(), "images");
  const open = () => Engine.open({ dataDir, shmDir, imagesDir, poolTargets: {}, spareVms: 0 });
  const s: SuiteEngine = {
    engine: undefined as unknown as Engine,
    dataDir,
    shmDir,
    imagesDir,
    async reopen() {
      await s.engine.close();
      s.engine = await open();
      return s.engine;
    },
  };
  before(async () => {
    fs.mkdirSync(shmDir, { recursive: true });
    s.engine = await open();
  });
  after(async () => {
    await s.engine?.close({ killSandboxes: true });
    removeDataDir(dataDir, shmDir);
  });
  return s;
}
