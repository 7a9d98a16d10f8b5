// `mitos server` and `mitos up`: run mitosd, which lives in the sibling
// package @mitos/server. The CLI starts it as a process (never imports it), so
// the dependency stays CLI → SDK → HTTP → server.

import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from "node:fs";
import path from "node:path";
import { DEFAULT_BASE_URL, SandboxServer } from "@mitos/sdk";
import { CliError } from "./errors.js";
import type { Io } from "./io.js";

export const DEFAULT_DATA_DIR = "/var/lib/mitos";

/** mitosd's entry point: $MITOSD_BIN, else packages/server/dist/bin/mitosd.js beside this package. */
export function mitosdPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MITOSD_BIN) return path.resolve(env.MITOSD_BIN);
  // This file is packages/cli/{src,dist}/daemon.{ts,js}.
  return path.resolve(import.meta.dirname, "../../server/dist/bin/mitosd.js");
}

function requireMitosd(env: NodeJS.ProcessEnv): string {
  const bin = mitosdPath(env);
  if (!existsSync(bin)) {
    throw new CliError(
      "unavailable",
      `mitosd is not built: ${bin} does not exist`,
      "build it from the repository root with `npm run build`, or point MITOSD_BIN at mitosd.js",
    );
  }
  return bin;
}

export interface DaemonOptions {
  host?: string;
  port?: string;
  dataDir?: string;
}

export function mitosdArgs(opts: DaemonOptions): string[] {
  const args: string[] = [];
  if (opts.host !== undefined) args.push("--host", opts.host);
  if (opts.port !== undefined) args.push("--port", opts.port);
  if (opts.dataDir !== undefined) args.push("--data-dir", opts.dataDir);
  return args;
}

/** Runs mitosd in the foreground; resolves with its exit code. Ctrl-C stops it. */
export async function runServer(opts: DaemonOptions, env: NodeJS.ProcessEnv): Promise<number> {
  const bin = requireMitosd(env);
  const child = spawn(process.execPath, [bin, ...mitosdArgs(opts)], { stdio: "inherit", env });
  const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
  const onInt = forward("SIGINT");
  const onTerm = forward("SIGTERM");
  process.on("SIGINT", onInt);
  process.on("SIGTERM", onTerm);
  try {
    return await new Promise<number>((resolve, reject) => {
      child.once("error", (e) => reject(new CliError("internal", `could not start mitosd: ${e.message}`)));
      child.once("exit", (code, signal) => resolve(code ?? (signal ? 128 + signalNumber(signal) : 1)));
    });
  } finally {
    process.off("SIGINT", onInt);
    process.off("SIGTERM", onTerm);
  }
}

function signalNumber(sig: NodeJS.Signals): number {
  return sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : sig === "SIGKILL" ? 9 : 1;
}

/** Host and port to bind, from the options or else from the base URL. */
export function bindAddress(baseUrl: string, opts: DaemonOptions): { host: string; port: string } {
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    url = new URL(DEFAULT_BASE_URL);
  }
  const host = opts.host ?? url.hostname.replace(/^\[|\]$/g, "");
  const port = opts.port ?? (url.port || (url.protocol === "https:" ? "443" : "80"));
  return { host, port };
}

async function healthy(baseUrl: string): Promise<boolean> {
  try {
    const h = await new SandboxServer({ baseUrl, maxRetries: 0 }).health();
    return h.status === "ok";
  } catch {
    return false;
  }
}

export interface UpOptions extends DaemonOptions {
  baseUrl: string;
  /** How long to wait for /v1/health (default 60 s). */
  waitSeconds?: number;
}

/** Starts mitosd in the background and waits until it answers /v1/health. */
export async function up(opts: UpOptions, io: Io): Promise<number> {
  const { host, port } = bindAddress(opts.baseUrl, opts);
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  if (await healthy(url)) {
    io.out(`mitosd is already running at ${url}\n`);
    return 0;
  }
  const bin = requireMitosd(io.env);
  const dataDir = path.resolve(opts.dataDir ?? io.env.MITOS_DATA_DIR ?? DEFAULT_DATA_DIR);
  mkdirSync(dataDir, { recursive: true });
  const logFile = path.join(dataDir, "mitosd.log");
  const fd = openSync(logFile, "a");
  const child = spawn(process.execPath, [bin, ...mitosdArgs({ host, port, dataDir })], {
    detached: true,
    stdio: ["ignore", fd, fd],
    env: io.env,
  });
  closeSync(fd);
  let exited: number | null | undefined;
  child.once("exit", (code) => {
    exited = code;
  });
  child.unref();
  const deadline = Date.now() + (opts.waitSeconds ?? 60) * 1000;
  while (Date.now() < deadline) {
    if (exited !== undefined) {
      throw new CliError(
        "unavailable",
        `mitosd exited (code ${exited}) before it answered`,
        `read the log: ${logFile}`,
        1,
        tail(logFile),
      );
    }
    if (await healthy(url)) {
      io.out(
        `mitosd is running at ${url}\n  pid   ${child.pid}\n  log   ${logFile}\n  token ${path.join(dataDir, "token")}\n`,
      );
      if (url !== opts.baseUrl.replace(/\/+$/, "")) io.out(`export MITOS_BASE_URL=${url}\n`);
      return 0;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new CliError(
    "unavailable",
    `mitosd (pid ${child.pid}) did not answer ${url}/v1/health within ${opts.waitSeconds ?? 60}s`,
    `read the log: ${logFile}`,
  );
}

function tail(file: string): string | undefined {
  try {
    const lines = readFileSync(file, "utf8").trimEnd().split("\n");
    return lines.slice(-5).join(" | ");
  } catch {
    return undefined;
  }
}
