// Runs after every other test file (scripts/test.sh lists it last): no
// /dev/shm/mitos-* entry may be left that no process maps or holds open,
// unless it is a documented cache (README.md, "Two commands").
// An engine keeps its templates' RAM bases in its shm dir on a normal close,
// so a suite that does not remove its data dir's shm dir (removeDataDir in
// test-support/data-dir.ts) leaves a few hundred MiB of RAM behind.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { it } from "node:test";
import { defaultDataDir, defaultShmDir, shmDirFor } from "../packages/engine/src/config.js";

/** Data dirs whose shm dir is kept on purpose (documented in README.md). */
function cacheDataDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  return ["/var/lib/mitos", defaultDataDir(env)];
}

/** Every path some process maps (/proc/<pid>/maps) or has open (/proc/<pid>/fd). */
function pathsInUse(): string[] {
  const used: string[] = [];
  for (const pid of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      for (const line of fs.readFileSync(`/proc/${pid}/maps`, "utf8").split("\n")) {
        const i = line.indexOf("/");
        if (i >= 0) used.push(line.slice(i).replace(/ \(deleted\)$/, ""));
      }
    } catch {
      // exited meanwhile, or a kernel thread
    }
    let fds: string[] = [];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        used.push(fs.readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/ \(deleted\)$/, ""));
      } catch {
        // closed meanwhile
      }
    }
  }
  return used;
}

/** Allocated bytes under `p` (tmpfs files are sparse: blocks, not length). */
function allocated(p: string): number {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return 0;
  }
  let n = st.blocks * 512;
  if (st.isDirectory()) for (const f of fs.readdirSync(p)) n += allocated(path.join(p, f));
  return n;
}

/** The data dir under the default data dir whose shm dir `entry` is, if one still exists. */
function ownerOf(entry: string): string | undefined {
  const root = defaultDataDir();
  let names: string[] = [];
  try {
    names = fs.readdirSync(root);
  } catch {
    return undefined;
  }
  return names.map((n) => path.join(root, n)).find((d) => shmDirFor(d) === entry);
}

/** /dev/shm/mitos-* entries that nothing maps or holds open and that are not a documented cache. */
function leakedEntries(): string[] {
  const caches = new Set(cacheDataDirs().map((d) => shmDirFor(d)));
  const used = pathsInUse();
  const inUse = (e: string) => used.some((u) => u === e || u.startsWith(`${e}/`));
  const out: string[] = [];
  for (const shm of new Set(["/dev/shm", defaultShmDir()])) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(shm);
    } catch {
      continue;
    }
    for (const n of names) {
      const e = path.join(shm, n);
      if (n.startsWith("mitos-") && !caches.has(e) && !inUse(e)) out.push(e);
    }
  }
  return out.sort();
}

it("no suite left a /dev/shm/mitos-* entry that nothing uses (template RAM of a removed data dir)", async () => {
  // A suite's teardown may still be finishing (another process, e.g. a run in
  // parallel): count only what stays unused for a few seconds.
  let leaked = leakedEntries();
  for (let i = 0; i < 10 && leaked.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const now = new Set(leakedEntries());
    leaked = leaked.filter((e) => now.has(e));
  }
  const MiB = 2 ** 20;
  const lines = leaked.map((e) => {
    const owner = ownerOf(e);
    return `  ${e}  ${(allocated(e) / MiB).toFixed(1)} MiB${owner ? ` (shm dir of ${owner})` : ""}`;
  });
  const total = leaked.reduce((a, e) => a + allocated(e), 0);
  assert.deepEqual(
    leaked,
    [],
    `${leaked.length} /dev/shm entries leaked (${(total / MiB).toFixed(1)} MiB), mapped or open by no process and no ` +
      `documented cache:\n${lines.join("\n")}\nA test's teardown must remove its data dir with removeDataDir ` +
      "(test-support/data-dir.ts) once its engine or mitosd has stopped. Free them with rm -rf.",
  );
});
