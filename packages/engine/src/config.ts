// Where the engine keeps its files, and where the repository's guest sources are.

import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Data dir: image cache, VM runtime dirs, journal. `MITOS_DATA_DIR` overrides. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.MITOS_DATA_DIR && env.MITOS_DATA_DIR !== "" ? path.resolve(env.MITOS_DATA_DIR) : "/var/lib/mitos";
}

/** Directory for guest RAM files (must be a tmpfs for sharing to be cheap). */
export function defaultShmDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.MITOS_SHM_DIR && env.MITOS_SHM_DIR !== "" ? path.resolve(env.MITOS_SHM_DIR) : "/dev/shm";
}

/**
 * The tmpfs dir of one data dir's engine: at start an engine removes RAM files
 * its journal does not know, so no two data dirs may share one.
 */
export function shmDirFor(dataDir: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(defaultShmDir(env), `mitos-${createHash("sha256").update(dataDir).digest("hex").slice(0, 12)}`);
}

// src/ and dist/ sit at the same depth, so this works for both.
const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));

export const guestDir = {
  root: repoRoot,
  agent: path.join(repoRoot, "guest", "agent"),
  image: path.join(repoRoot, "guest", "image"),
  /** Files copied over the root of images that run the code interpreter. */
  interpreter: path.join(repoRoot, "guest", "interpreter", "rootfs"),
};
