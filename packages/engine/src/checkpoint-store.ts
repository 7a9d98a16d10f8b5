// The on-disk checkpoint store (ARCHITECTURE.md §8): a checkpoint is a
// manifest naming content-addressed chunks of a captured RAM file and its
// device state. Chunks are compressed with zstd (Debian's CLI, batched: one
// process per checkpoint, not per chunk), all-zero chunks are not stored, and
// a chunk already in the store is not written again, so checkpoints of one
// lineage share what they have in common. A manifest is written last, after
// every chunk it names is in place (fsynced, renamed), so a listed checkpoint
// is always whole; a crash leaves at most unreferenced chunks, which gc()
// removes. Reading verifies every chunk against its hash.

import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { MitosError, noCheckpoint } from "./errors.js";
import type { MachineSpec } from "./vm.js";

/** 256 KiB: small enough that two checkpoints of one sandbox share most chunks. */
export const CHUNK_BYTES = 256 * 1024;
const BATCH = 256;
const ID_RE = /^cp-[0-9a-f]{12}$/;

export interface CheckpointManifest {
  version: 1;
  id: string;
  name: string | null;
  sandboxId: string;
  templateId: string;
  createdAt: string;
  machine: MachineSpec;
  env: Record<string, string>;
  memBytes: number;
  chunkBytes: number;
  /** [chunk index, sha256] for every non-zero chunk of the RAM file. */
  ram: Array<[number, string]>;
  /** Internal (a hibernated sandbox's RAM): not listed by the API. */
  hidden?: boolean;
  /** Whose sandbox it was taken of (SandboxInfo.owner). */
  owner?: string;
  /** sha256 of the device state (stored as one chunk). */
  state: string;
  /** [chunk index, sha256] for every chunk of the workspace disk that holds data (machine.diskMib bytes in all). */
  disk?: Array<[number, string]>;
  /** Compressed bytes of every distinct chunk this checkpoint names. */
  bytes: number;
  /** Of those, the bytes this checkpoint added to the store (the rest were shared). */
  addedBytes: number;
}

export type CheckpointMeta = Pick<
  CheckpointManifest,
  "name" | "sandboxId" | "templateId" | "machine" | "env" | "hidden" | "owner"
>;

export class CheckpointStore {
  readonly dir: string;
  private readonly chunks: string;
  private readonly manifests: string;

  /** `maxBytes`: the store's disk cap (compressed chunks); a checkpoint that would pass it is quota_exceeded. */
  constructor(
    dir: string,
    private readonly maxBytes: number,
  ) {
    this.dir = dir;
    this.chunks = path.join(dir, "chunks");
    this.manifests = path.join(dir, "manifests");
    for (const d of [this.chunks, this.manifests]) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    // Staging dirs of writes a crash interrupted, and the chunks they had moved in already.
    const interrupted = fs.readdirSync(dir).filter((f) => f.startsWith("tmp-"));
    for (const f of interrupted) fs.rmSync(path.join(dir, f), { recursive: true });
    if (interrupted.length > 0) this.gc();
  }

  list(): CheckpointManifest[] {
    return fs
      .readdirSync(this.manifests)
      .filter((f) => f.endsWith(".json"))
      .map((f) => this.read(f.slice(0, -5)))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  get(id: string): CheckpointManifest {
    if (!ID_RE.test(id) || !fs.existsSync(this.manifestPath(id))) {
      throw noCheckpoint(id);
    }
    return this.read(id);
  }

  /** Bytes of all chunks on disk (what the cap counts). */
  usedBytes(): number {
    let n = 0;
    for (const sub of fs.readdirSync(this.chunks)) {
      for (const f of fs.readdirSync(path.join(this.chunks, sub)))
        n += fs.statSync(path.join(this.chunks, sub, f)).size;
    }
    return n;
  }

  /**
   * Stores a captured RAM file and device state as a new checkpoint, with a
   * workspace disk (a raw image and the byte ranges of it that hold data).
   */
  async write(
    ramFile: string,
    stateFile: string,
    meta: CheckpointMeta,
    disk?: { file: string; extents: Array<[number, number]> },
  ): Promise<CheckpointManifest> {
    const id = `cp-${randomBytes(6).toString("hex")}`;
    const staging = path.join(this.dir, `tmp-${id}`);
    fs.mkdirSync(staging, { mode: 0o700 });
    const added: string[] = [];
    try {
      const memBytes = fs.statSync(ramFile).size;
      const ram: Array<[number, string]> = [];
      const fresh = new Set<string>();
      const stage = (data: Buffer): string => {
        const h = createHash("sha256").update(data).digest("hex");
        if (!fresh.has(h) && !fs.existsSync(this.chunkPath(h))) {
          fs.writeFileSync(path.join(staging, h), data);
          fresh.add(h);
        }
        return h;
      };
      const fd = fs.openSync(ramFile, "r");
      try {
        const buf = Buffer.alloc(CHUNK_BYTES);
        const zero = Buffer.alloc(CHUNK_BYTES);
        for (let i = 0; i * CHUNK_BYTES < memBytes; i++) {
          const n = fs.readSync(fd, buf, 0, CHUNK_BYTES, i * CHUNK_BYTES);
          const data = buf.subarray(0, n);
          if (data.equals(zero.subarray(0, n))) continue;
          ram.push([i, stage(data)]);
        }
      } finally {
        fs.closeSync(fd);
      }
      const state = stage(fs.readFileSync(stateFile));
      const diskChunks: Array<[number, string]> = [];
      if (disk) {
        // Only chunks that overlap a data extent are read; the rest of the disk reads as zeros.
        const indices = new Set<number>();
        for (const [start, length] of disk.extents) {
          for (let i = Math.floor(start / CHUNK_BYTES); i * CHUNK_BYTES < start + length; i++) indices.add(i);
        }
        const dfd = fs.openSync(disk.file, "r");
        try {
          const buf = Buffer.alloc(CHUNK_BYTES);
          const zero = Buffer.alloc(CHUNK_BYTES);
          for (const i of [...indices].sort((a, b) => a - b)) {
            const n = fs.readSync(dfd, buf, 0, CHUNK_BYTES, i * CHUNK_BYTES);
            const data = buf.subarray(0, n);
            if (n === 0 || data.equals(zero.subarray(0, n))) continue;
            diskChunks.push([i, stage(data)]);
          }
        } finally {
          fs.closeSync(dfd);
        }
      }
      await compress(staging, [...fresh]);
      let addedBytes = 0;
      for (const h of fresh) addedBytes += fs.statSync(path.join(staging, `${h}.zst`)).size;
      if (this.usedBytes() + addedBytes > this.maxBytes) {
        throw new MitosError(
          "quota_exceeded",
          `the checkpoint store is full: ${addedBytes} more bytes would pass its cap of ${this.maxBytes}`,
          {
            remediation:
              "Delete checkpoints you no longer need (DELETE /v1/checkpoints/{id}), or raise max_checkpoint_bytes.",
            context: { limit: "max_checkpoint_bytes", value: this.maxBytes },
          },
        );
      }
      const dirs = new Set<string>();
      for (const h of fresh) {
        const to = this.chunkPath(h);
        dirs.add(path.dirname(to));
        fs.mkdirSync(path.dirname(to), { recursive: true, mode: 0o700 });
        const from = path.join(staging, `${h}.zst`);
        syncFile(from);
        fs.renameSync(from, to);
        added.push(to);
      }
      for (const d of [...dirs, this.chunks]) syncFile(d);
      const distinct = new Set([...ram.map(([, h]) => h), state, ...diskChunks.map(([, h]) => h)]);
      let bytes = 0;
      for (const h of distinct) bytes += fs.statSync(this.chunkPath(h)).size;
      const manifest: CheckpointManifest = {
        version: 1,
        id,
        ...meta,
        createdAt: new Date().toISOString(),
        memBytes,
        chunkBytes: CHUNK_BYTES,
        ram,
        state,
        ...(disk ? { disk: diskChunks } : {}),
        bytes,
        addedBytes,
      };
      const tmp = path.join(staging, "manifest.json");
      fs.writeFileSync(tmp, JSON.stringify(manifest));
      syncFile(tmp);
      fs.renameSync(tmp, this.manifestPath(id));
      syncFile(this.manifests);
      return manifest;
    } catch (err) {
      // Chunks already moved in may be shared by now with nobody: gc() decides.
      if (added.length > 0) this.gc();
      if ((err as NodeJS.ErrnoException).code === "ENOSPC") {
        throw new MitosError("quota_exceeded", `the disk holding the checkpoint store ${this.dir} is full`, {
          remediation:
            "Free space on that disk (delete checkpoints you no longer need), then retry; nothing of this checkpoint was kept.",
          cause: (err as Error).message,
          context: { limit: "disk", store: this.dir },
        });
      }
      throw err;
    } finally {
      fs.rmSync(staging, { recursive: true, force: true });
    }
  }

  /** Writes a checkpoint's RAM (sparse: zero chunks stay holes) and device state, verifying every chunk. */
  async materialize(m: CheckpointManifest, ramFile: string, stateFile: string): Promise<void> {
    await this.writeChunks(m, m.ram, ramFile, m.memBytes);
    const parts: Buffer[] = [];
    await decompress([this.chunkPath(m.state)], Number.MAX_SAFE_INTEGER, (p) => parts.push(p));
    const state = Buffer.concat(parts);
    this.verify(state, m.state, m.id);
    fs.writeFileSync(stateFile, state, { mode: 0o600 });
  }

  /** Writes a checkpoint's workspace disk as a sparse raw image of `bytes`, verifying every chunk. */
  async materializeDisk(m: CheckpointManifest, file: string, bytes: number): Promise<void> {
    await this.writeChunks(m, m.disk ?? [], file, bytes);
  }

  /** A sparse file of `bytes` holding `chunks` at their indices, each verified against its hash. */
  private async writeChunks(
    m: CheckpointManifest,
    chunks: Array<[number, string]>,
    file: string,
    bytes: number,
  ): Promise<void> {
    const fd = fs.openSync(file, "w", 0o600);
    try {
      fs.ftruncateSync(fd, bytes);
      for (let i = 0; i < chunks.length; i += BATCH) {
        const batch = chunks.slice(i, i + BATCH);
        let k = 0;
        await decompress(
          batch.map(([, h]) => this.chunkPath(h)),
          m.chunkBytes,
          (piece) => {
            const [index, hash] = batch[k++] as [number, string];
            this.verify(piece, hash, m.id);
            fs.writeSync(fd, piece, 0, piece.length, index * m.chunkBytes);
          },
        );
      }
    } catch (err) {
      fs.closeSync(fd);
      fs.rmSync(file, { force: true });
      throw err;
    }
    fs.closeSync(fd);
  }

  /** Deletes a checkpoint, then the chunks no other checkpoint names. */
  delete(id: string): void {
    this.get(id);
    fs.rmSync(this.manifestPath(id));
    this.gc();
  }

  /** Removes chunks no manifest names (after deletes, or a write a crash interrupted). */
  gc(): number {
    const live = new Set<string>();
    for (const m of this.list()) {
      live.add(m.state);
      for (const [, h] of m.ram) live.add(h);
      for (const [, h] of m.disk ?? []) live.add(h);
    }
    let freed = 0;
    for (const sub of fs.readdirSync(this.chunks)) {
      for (const f of fs.readdirSync(path.join(this.chunks, sub))) {
        if (live.has(f.replace(/\.zst$/, ""))) continue;
        const p = path.join(this.chunks, sub, f);
        freed += fs.statSync(p).size;
        fs.rmSync(p);
      }
    }
    return freed;
  }

  private verify(data: Buffer, hash: string, id: string): void {
    if (createHash("sha256").update(data).digest("hex") !== hash) {
      throw new MitosError("internal", `checkpoint ${id} has a corrupt chunk ${hash.slice(0, 16)}…`, {
        remediation:
          "The checkpoint cannot be restored: its stored data changed on disk. Delete it and take a new one.",
        context: { checkpoint: id, chunk: hash },
      });
    }
  }

  private read(id: string): CheckpointManifest {
    return JSON.parse(fs.readFileSync(this.manifestPath(id), "utf8")) as CheckpointManifest;
  }

  private manifestPath(id: string): string {
    return path.join(this.manifests, `${id}.json`);
  }

  private chunkPath(hash: string): string {
    return path.join(this.chunks, hash.slice(0, 2), `${hash}.zst`);
  }
}

/** zstd -1 on each staged file (file → file.zst), in batches of one process each. */
async function compress(dir: string, names: string[]): Promise<void> {
  for (let i = 0; i < names.length; i += BATCH) {
    await run("zstd", ["-q", "-1", "--rm", "--", ...names.slice(i, i + BATCH)], dir);
  }
}

/** Decompresses files in order through one zstd process, cutting its output into `pieceBytes` pieces. */
function decompress(files: string[], pieceBytes: number, onPiece: (p: Buffer) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn("zstd", ["-d", "-c", "-q", "--", ...files], { stdio: ["ignore", "pipe", "pipe"] });
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let err = "";
    let failed: Error | undefined;
    p.stdout.on("data", (d: Buffer) => {
      if (failed) return;
      pending.push(d);
      pendingBytes += d.length;
      try {
        while (pendingBytes >= pieceBytes) {
          const all = Buffer.concat(pending);
          onPiece(all.subarray(0, pieceBytes));
          pending = [all.subarray(pieceBytes)];
          pendingBytes -= pieceBytes;
        }
      } catch (e) {
        failed = e as Error;
        p.kill();
      }
    });
    p.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    p.on("error", reject);
    p.on("close", (code) => {
      if (failed) return reject(failed);
      if (code !== 0) return reject(zstdFailed(code, err));
      try {
        if (pendingBytes > 0) onPiece(Buffer.concat(pending));
        resolve();
      } catch (e) {
        reject(e);
      }
    });
  });
}

function run(cmd: string, args: string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    p.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    p.on("error", reject);
    p.on("close", (code) => (code === 0 ? resolve() : reject(zstdFailed(code, err))));
  });
}

function zstdFailed(code: number | null, stderr: string): MitosError {
  const full = /No space left/i.test(stderr);
  return new MitosError(
    full ? "quota_exceeded" : "internal",
    `zstd failed (exit ${code}): ${stderr.trim().slice(-300)}`,
    {
      remediation: full
        ? "The data dir's disk is full: free space or delete checkpoints, then retry."
        : "Check that the zstd package is installed and the data dir is writable.",
      ...(full ? { context: { limit: "disk" } } : {}),
    },
  );
}

/** fsync of a file or a directory (its entries). */
function syncFile(p: string): void {
  const fd = fs.openSync(p, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
