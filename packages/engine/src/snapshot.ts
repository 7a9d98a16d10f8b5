// Saving and loading VM state through QEMU migration over Unix sockets (no
// `exec:` URIs, so QEMU never needs to spawn a shell).

import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { type RunAs, shareSocket } from "./confine.js";
import { MitosError, shmSpaceRemediation } from "./errors.js";
import { MigrationSplitter, type SplitStats } from "./migration-split.js";
import type { QmpClient } from "./qemu/qmp.js";

// Guest RAM is local memory: let QEMU copy it as fast as it can.
const MAX_BANDWIDTH = 64 * 1024 * 1024 * 1024;

async function setCapabilities(qmp: QmpClient, ignoreShared: boolean): Promise<void> {
  await qmp.execute("migrate-set-capabilities", {
    capabilities: [
      { capability: "events", state: true },
      { capability: "x-ignore-shared", state: ignoreShared },
    ],
  });
}

function migrationDone(qmp: QmpClient, timeoutMs: number): Promise<void> {
  return qmp
    .waitEvent("MIGRATION", timeoutMs, (e) => e.data?.status === "completed" || e.data?.status === "failed")
    .then((e) => {
      if (e.data?.status === "failed") {
        throw new MitosError("internal", "QEMU migration failed", {
          remediation: "Read the VM's qemu.log for the reason; the source VM keeps running.",
        });
      }
    });
}

/**
 * Runs an outgoing migration of a paused VM into `sink`, served on a Unix
 * socket QEMU connects to. Resolves when QEMU reports completion and the
 * stream has been fully consumed.
 */
async function migrateOut(
  qmp: QmpClient,
  socketPath: string,
  ignoreShared: boolean,
  timeoutMs: number,
  sink: { data(chunk: Buffer): void; end(): void },
  runAs: RunAs | undefined,
): Promise<void> {
  await setCapabilities(qmp, ignoreShared);
  await qmp.execute("migrate-set-parameters", { "max-bandwidth": MAX_BANDWIDTH, "downtime-limit": 60_000 });
  fs.rmSync(socketPath, { force: true });
  let sinkError: Error | undefined;
  const server = net.createServer();
  const received = new Promise<void>((resolve, reject) => {
    server.once("connection", (sock) => {
      server.close();
      sock.on("data", (chunk: Buffer) => {
        if (sinkError) return;
        try {
          sink.data(chunk);
        } catch (e) {
          sinkError = e as Error;
          sock.destroy();
        }
      });
      sock.on("end", () => {
        if (sinkError) return reject(sinkError);
        try {
          sink.end();
          resolve();
        } catch (e) {
          reject(e);
        }
      });
      sock.on("close", () => (sinkError ? reject(sinkError) : undefined));
      sock.on("error", reject);
    });
  });
  received.catch(() => {});
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => resolve());
  });
  try {
    // QEMU (the VM's uid) connects; no one else may.
    shareSocket(socketPath, runAs);
    const done = migrationDone(qmp, timeoutMs);
    done.catch(() => {});
    await qmp.execute("migrate", { uri: `unix:${socketPath}` });
    await Promise.all([done, received]);
  } catch (err) {
    await qmp.execute("migrate_cancel").catch(() => {});
    throw sinkError ?? err;
  } finally {
    server.close();
    fs.rmSync(socketPath, { force: true });
  }
}

/** Saves the device state of a paused VM whose RAM is a share=on file (RAM left out). */
export async function saveState(
  qmp: QmpClient,
  socketPath: string,
  outFile: string,
  timeoutMs: number,
  runAs?: RunAs,
): Promise<number> {
  const fd = fs.openSync(outFile, "w", 0o600);
  let bytes = 0;
  try {
    await migrateOut(
      qmp,
      socketPath,
      true,
      timeoutMs,
      {
        data: (c) => {
          bytes += c.length;
          let off = 0;
          while (off < c.length) off += fs.writeSync(fd, c, off);
        },
        end: () => {},
      },
      runAs,
    );
  } finally {
    fs.closeSync(fd);
  }
  return bytes;
}

/**
 * Captures a paused VM whose RAM is private (share=off): its guest RAM goes
 * to `ramFile` (sparse: zero pages are holes) and the rest to `stateFile`.
 */
export async function captureLive(
  qmp: QmpClient,
  socketPath: string,
  files: { ramFile: string; stateFile: string; memBytes: number },
  timeoutMs: number,
  runAs?: RunAs,
): Promise<SplitStats> {
  // The file may exist already, empty: spare VMs wait on it (spares.ts).
  const ramFd = fs.openSync(files.ramFile, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  const stateFd = fs.openSync(files.stateFile, "w", 0o600);
  try {
    // Emptied first: only non-zero pages are written, the rest must read as holes (a failed
    // capture from the mapping may have left a copy here).
    fs.ftruncateSync(ramFd, 0);
    fs.ftruncateSync(ramFd, files.memBytes);
    const splitter = new MigrationSplitter(stateFd, ramFd, { ramBlock: "mem", ignoreShared: false });
    await migrateOut(
      qmp,
      socketPath,
      false,
      timeoutMs,
      {
        data: (c) => splitter.push(c),
        end: () => splitter.finish(),
      },
      runAs,
    );
    return splitter.stats;
  } catch (err) {
    fs.rmSync(files.ramFile, { force: true });
    fs.rmSync(files.stateFile, { force: true });
    if ((err as NodeJS.ErrnoException).code === "ENOSPC") throw noShmSpace(files.ramFile, err as Error);
    throw err instanceof MitosError
      ? err
      : new MitosError("fork_failed", `capturing the VM state failed: ${(err as Error).message}`, {
          remediation: "The source sandbox was resumed and is unchanged; retry the fork.",
        });
  } finally {
    fs.closeSync(ramFd);
    fs.closeSync(stateFd);
  }
}

/** The error of a capture that ran out of space for the new base. */
export function noShmSpace(ramFile: string, err: Error): MitosError {
  const dir = path.dirname(ramFile);
  return new MitosError("fork_failed", `no space left for the fork's RAM capture in ${dir}`, {
    remediation: `The source sandbox was resumed and is unchanged. ${shmSpaceRemediation(dir)}`,
    cause: err.message,
    context: { shm_dir: dir },
  });
}

/** Feeds a saved device state into a QEMU started with `-incoming defer`. */
export async function loadState(
  qmp: QmpClient,
  socketPath: string,
  stateFile: string,
  ignoreShared: boolean,
  timeoutMs: number,
): Promise<void> {
  await setCapabilities(qmp, ignoreShared);
  const done = migrationDone(qmp, timeoutMs);
  done.catch(() => {});
  await qmp.execute("migrate-incoming", { uri: `unix:${socketPath}` });
  const sock = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.createConnection(socketPath);
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
  const data = fs.readFileSync(stateFile);
  await new Promise<void>((resolve, reject) => {
    sock.on("error", reject);
    sock.on("close", () => reject(new Error("QEMU closed the migration socket early")));
    sock.end(data, () => resolve());
  });
  await done;
  sock.destroy();
}
