// Starts a real mitosd process for end-to-end tests of the clients (SDKs,
// CLI, MCP), each suite in its own data dir, sharing the guest image cache.

import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

export const repoRoot = path.resolve(import.meta.dirname, "..");

export interface Daemon {
  url: string;
  token: string;
  /** Environment for a client process: MITOS_BASE_URL and MITOS_API_KEY set. */
  env: NodeJS.ProcessEnv;
  pid: number;
  /** Resolves when the process has exited (a SIGTERM stop, or a crash). */
  exited: Promise<void>;
  stop(): Promise<void>;
  /** Sends SIGKILL (no shutdown: its sandboxes keep running for the next start to re-adopt). */
  kill(): Promise<void>;
}

/** `logFile`: the daemon's log (its JSON lines) goes there, whatever MITOS_TEST_LOG_DIR says. */
export async function startMitosd(
  dataDir: string,
  extraArgs: string[] = [],
  o: { logFile?: string } = {},
): Promise<Daemon> {
  const proc: ChildProcess = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      path.join(repoRoot, "packages/server/src/bin/mitosd.ts"),
      "--port",
      "0",
      "--data-dir",
      dataDir,
      // A test's SIGTERM stop leaves nothing running unless the test asks to keep sandboxes.
      ...(extraArgs.includes("--shutdown") ? [] : ["--shutdown", "terminate"]),
      ...extraArgs,
    ],
    {
      // MITOS_TEST_LOG_DIR keeps each daemon's log (its JSON lines) for a failing test.
      stdio: [
        "ignore",
        o.logFile
          ? fs.openSync(o.logFile, "a")
          : process.env.MITOS_TEST_LOG_DIR
            ? fs.openSync(path.join(process.env.MITOS_TEST_LOG_DIR, `mitosd-${path.basename(dataDir)}.log`), "a")
            : "ignore",
        "pipe",
      ],
      env: { ...process.env, MITOS_IMAGES_DIR: process.env.MITOS_IMAGES_DIR ?? "/var/lib/mitos/images" },
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let err = "";
    proc.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
      const m = /mitosd (http:\/\/\S+) \(token in/.exec(err);
      if (m?.[1]) resolve(m[1]);
    });
    proc.once("exit", (code) => reject(new Error(`mitosd exited (${code}): ${err.slice(-2000)}`)));
  });
  const token = fs.readFileSync(path.join(dataDir, "token"), "utf8").trim();
  const exited = new Promise<void>((r) => {
    if (proc.exitCode !== null || proc.signalCode !== null) r();
    else proc.once("exit", () => r());
  });
  const signal = async (sig: NodeJS.Signals) => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
    await exited;
  };
  return {
    url,
    token,
    pid: proc.pid ?? -1,
    env: { ...process.env, MITOS_BASE_URL: url, MITOS_API_KEY: token },
    exited,
    stop: () => signal("SIGTERM"),
    kill: () => signal("SIGKILL"),
  };
}
