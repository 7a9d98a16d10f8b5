// The soak with faults (docs/security.md "Soak"): clients drive a real
// mitosd with mixed create / exec / file writes and reads / fork / PTY /
// terminate while a fault injector kills random QEMUs, stops guests for a
// while, fills the RAM dir to its cap and restarts mitosd (sandboxes are
// kept across it). Afterwards: every error has a documented code, every
// acknowledged write of a sandbox still alive reads back, nothing leaked (VM,
// file, network namespace, token) and mitosd's memory stayed bounded.
// bench/soak.ts records a run; packages/server/test/soak.test.ts runs 2 minutes in CI.

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import { shmDirFor } from "../packages/engine/src/config.js";
import { MitosError, type Sandbox, SandboxServer } from "../packages/sdk/src/index.js";
import { freePort } from "./free-port.js";
import { leaks, qemuPidsOf } from "./leaks.js";
import { type Daemon, startMitosd } from "./mitosd.js";

/** The API's error codes (API.md "Errors"): anything else is undocumented. */
export const DOCUMENTED_CODES = new Set([
  "invalid_input",
  "invalid_json",
  "timeout_too_large",
  "unauthorized",
  "forbidden",
  "budget_exhausted",
  "not_found",
  "conflict",
  "idle_timeout",
  "body_too_large",
  "quota_exceeded",
  "rate_limited",
  "too_many_streams",
  "canceled",
  "internal",
  "exec_failed",
  "file_failed",
  "fork_failed",
  "unavailable",
  "exec_timeout",
]);

export type FaultKind = "kill_qemu" | "stop_guest" | "fill_shm" | "restart_mitosd";
const FAULTS: FaultKind[] = ["kill_qemu", "stop_guest", "fill_shm", "restart_mitosd"];
type Op = "create" | "exec" | "write" | "read" | "fork" | "pty" | "terminate";

export interface SoakOptions {
  dataDir: string;
  seconds: number;
  clients: number;
  /** A fault every this many seconds, in turn: kill_qemu, stop_guest, fill_shm, restart_mitosd. */
  faultEverySeconds: number;
  /** Size of the tmpfs mounted as the engine's RAM dir (the cap fill_shm fills). */
  shmCapMib: number;
  log?: (msg: string) => void;
}

export interface SoakReport {
  seconds: number;
  clients: number;
  /** Operations that succeeded, by kind. */
  ok: Record<Op, number>;
  /** Failures by `op:code`. */
  errors: Record<string, number>;
  /** Errors with a code the API does not document, and one sample of each. */
  undocumented: string[];
  /** A few messages of internal errors (a documented code, but a bug's mark). */
  internalSamples: string[];
  /** Acknowledged writes that read back different (or not at all) from a sandbox still alive. */
  lostWrites: string[];
  /** Acknowledged writes checked at the end, on sandboxes still alive. */
  writesChecked: number;
  faults: Array<{ atS: number; kind: FaultKind; detail: string }>;
  /** Sandboxes lost to a fault (killed QEMU): their calls failed, by design. */
  sandboxesLost: number;
  leaks: string[];
  /** Tokens of terminated sandboxes that still opened something. */
  liveTokens: string[];
  /** mitosd's resident memory (MiB): per process (restarts start a new one), sampled every 5 s. */
  rssMib: Array<{ pid: number; first: number; max: number; last: number }>;
  /** Every RSS sample (MiB), in order. */
  rssSamples: number[];
}

/** mitosd's resident memory may not pass this (MiB) in a soak: it holds no per-call state that grows. */
export const RSS_BOUND_MIB = 1024;

/** What makes a soak fail: each problem in a line (none: it passed). */
export function soakProblems(r: SoakReport): string[] {
  const out: string[] = [];
  if (r.undocumented.length > 0) out.push(`undocumented error codes: ${r.undocumented.join("; ")}`);
  if (r.lostWrites.length > 0) out.push(`lost acknowledged writes: ${r.lostWrites.join("; ")}`);
  if (r.leaks.length > 0) out.push(`leaks: ${r.leaks.join("; ")}`);
  if (r.liveTokens.length > 0)
    out.push(`tokens of terminated sandboxes still open something: ${r.liveTokens.join("; ")}`);
  const max = Math.max(0, ...r.rssSamples);
  if (max > RSS_BOUND_MIB) out.push(`mitosd RSS reached ${max} MiB (bound ${RSS_BOUND_MIB})`);
  const done = Object.values(r.ok).reduce((a, b) => a + b, 0);
  if (done === 0) out.push("no operation succeeded");
  return out;
}

interface Tracked {
  sb: Sandbox;
  /** Acknowledged writes: path → content. */
  files: Map<string, string>;
}

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const log = o.log ?? (() => {});
  const shmDir = shmDirFor(o.dataDir);
  fs.rmSync(o.dataDir, { recursive: true, force: true });
  unmount(shmDir);
  fs.rmSync(shmDir, { recursive: true, force: true });
  fs.mkdirSync(shmDir, { recursive: true, mode: 0o700 });
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${o.shmCapMib}m,mode=0700`, "mitos-soak", shmDir]);
  const port = await freePort();
  const start = () => startMitosd(o.dataDir, ["--port", String(port), "--shutdown", "keep"]);
  let daemon: Daemon = await start();
  const baseUrl = `http://127.0.0.1:${port}`;
  const server = new SandboxServer({ baseUrl, apiKey: daemon.token, maxRetries: 0 });
  await server.createTemplate("python");

  const report: SoakReport = {
    seconds: o.seconds,
    clients: o.clients,
    ok: { create: 0, exec: 0, write: 0, read: 0, fork: 0, pty: 0, terminate: 0 },
    errors: {},
    undocumented: [],
    internalSamples: [],
    lostWrites: [],
    writesChecked: 0,
    faults: [],
    sandboxesLost: 0,
    leaks: [],
    liveTokens: [],
    rssMib: [],
    rssSamples: [],
  };
  const all = new Map<string, Tracked>();
  const deadTokens: Array<{ id: string; token: string }> = [];
  const t0 = Date.now();
  const until = t0 + o.seconds * 1000;

  const fail = (op: Op, e: unknown): string => {
    const code = e instanceof MitosError ? e.code : "client_error";
    report.errors[`${op}:${code}`] = (report.errors[`${op}:${code}`] ?? 0) + 1;
    const msg = e instanceof Error ? e.message : String(e);
    if (!DOCUMENTED_CODES.has(code) && report.undocumented.length < 20)
      report.undocumented.push(`${op}: ${code}: ${msg}`);
    if (code === "internal" && report.internalSamples.length < 10) report.internalSamples.push(`${op}: ${msg}`);
    return code;
  };
  /** A sandbox whose calls say it is gone or broken is dropped from the client's set. */
  const dropIfGone = async (mine: Tracked[], t: Tracked, code: string) => {
    if (code !== "not_found" && code !== "conflict" && code !== "idle_timeout") return;
    const state = await server
      .get(t.sb.id)
      .then((s) => s.state)
      .catch(() => "gone");
    if (state === "ready") return;
    mine.splice(mine.indexOf(t), 1);
    all.delete(t.sb.id);
    report.sandboxesLost++;
    await t.sb.terminate().catch(() => {});
  };

  async function client(n: number): Promise<void> {
    const mine: Tracked[] = [];
    let seq = 0;
    while (Date.now() < until) {
      const t = mine[Math.floor(Math.random() * mine.length)];
      const r = Math.random();
      const op: Op =
        !t || (mine.length < 2 && r < 0.15)
          ? "create"
          : r < 0.35
            ? "exec"
            : r < 0.55
              ? "write"
              : r < 0.75
                ? "read"
                : r < 0.83 && mine.length < 3
                  ? "fork"
                  : r < 0.92
                    ? "pty"
                    : "terminate";
      try {
        if (op === "create" || !t) {
          const sb = await server.fork("python", { timeoutSeconds: o.seconds + 600 });
          const tr = { sb, files: new Map<string, string>() };
          mine.push(tr);
          all.set(sb.id, tr);
        } else if (op === "exec") {
          const a = Math.floor(Math.random() * 1000);
          const out = await t.sb.exec(`echo $((${a} + 1))`, { timeoutSeconds: 60 });
          if (out.stdout !== `${a + 1}\n`) throw new Error(`exec answered ${JSON.stringify(out.stdout)}`);
        } else if (op === "write") {
          const path = `/root/soak-${n}-${seq++}.txt`;
          const content = randomBytes(16 + Math.floor(Math.random() * 4096)).toString("base64");
          await t.sb.files.write(path, content);
          t.files.set(path, content); // acknowledged: it must read back while the sandbox lives
        } else if (op === "read") {
          const entry = [...t.files.entries()][Math.floor(Math.random() * t.files.size)];
          if (entry) {
            const got = await t.sb.files.readText(entry[0]);
            if (got !== entry[1]) report.lostWrites.push(`${t.sb.id}:${entry[0]} read back different`);
          }
        } else if (op === "fork") {
          const [child] = await t.sb.fork(1);
          if (child) {
            const tr = { sb: child, files: new Map(t.files) };
            mine.push(tr);
            all.set(child.id, tr);
          }
        } else if (op === "pty") {
          let out = "";
          const pty = await t.sb.createPty({
            onData: (d) => {
              out += d;
            },
          });
          pty.write("echo pty-$((6*7)); exit\n");
          await Promise.race([
            pty.wait(),
            new Promise((_, rej) => setTimeout(() => rej(new Error("pty did not end in 60 s")), 60_000)),
          ]);
          if (!out.includes("pty-42")) throw new Error("the terminal did not echo");
        } else {
          const token = t.sb.token;
          await t.sb.terminate();
          mine.splice(mine.indexOf(t), 1);
          all.delete(t.sb.id);
          if (token) deadTokens.push({ id: t.sb.id, token });
        }
        report.ok[op]++;
      } catch (e) {
        const code = fail(op, e);
        if (t && op !== "create") await dropIfGone(mine, t, code);
        if (code === "unavailable" || code === "client_error") await sleep(500);
      }
    }
  }

  async function faults(): Promise<void> {
    let i = 0;
    while (Date.now() + o.faultEverySeconds * 1000 < until) {
      await sleep(o.faultEverySeconds * 1000);
      const kind = FAULTS[i++ % FAULTS.length] as FaultKind;
      const atS = Math.round((Date.now() - t0) / 1000);
      try {
        const detail = await inject(kind);
        report.faults.push({ atS, kind, detail });
        log(`fault at ${atS}s: ${kind} (${detail})`);
      } catch (e) {
        report.faults.push({ atS, kind, detail: `could not inject: ${(e as Error).message.split("\n")[0]}` });
      }
    }
  }

  async function inject(kind: FaultKind): Promise<string> {
    if (kind === "kill_qemu" || kind === "stop_guest") {
      const pids = qemuPidsOf(o.dataDir);
      const pid = pids[Math.floor(Math.random() * pids.length)];
      if (pid === undefined) return "no QEMU running";
      if (kind === "kill_qemu") {
        process.kill(pid, "SIGKILL");
        return `SIGKILL QEMU ${pid}`;
      }
      process.kill(pid, "SIGSTOP");
      await sleep(5000);
      process.kill(pid, "SIGCONT");
      return `SIGSTOP QEMU ${pid} for 5 s`;
    }
    if (kind === "fill_shm") {
      const free = fs.statfsSync(shmDir);
      // A little under what is free: VMs write their RAM files meanwhile.
      const bytes = Math.max(0, free.bavail * free.bsize - (16 << 20));
      const filler = `${shmDir}/soak-filler`;
      // fallocate that fails (VMs took the space first) may leave a partial file.
      try {
        execFileSync("fallocate", ["-l", String(bytes), filler], { stdio: ["ignore", "ignore", "pipe"] });
        await sleep(8000);
      } finally {
        fs.rmSync(filler, { force: true });
      }
      return `filled ${Math.round(bytes / 2 ** 20)} MiB of the ${o.shmCapMib} MiB RAM dir for 8 s`;
    }
    const before = daemon.pid;
    await daemon.stop();
    daemon = await start();
    return `mitosd ${before} stopped (sandboxes kept), ${daemon.pid} started`;
  }

  const rss = new Map<number, { first: number; max: number; last: number }>();
  const sampler = setInterval(() => {
    const mib = rssMib(daemon.pid);
    if (mib === undefined) return;
    report.rssSamples.push(mib);
    const s = rss.get(daemon.pid) ?? { first: mib, max: mib, last: mib };
    s.max = Math.max(s.max, mib);
    s.last = mib;
    rss.set(daemon.pid, s);
  }, 5000);

  try {
    await Promise.all([...Array.from({ length: o.clients }, (_, n) => client(n)), faults()]);
    // Every acknowledged write of a sandbox still alive reads back.
    for (const t of all.values()) {
      for (const [path, content] of t.files) {
        try {
          const got = await t.sb.files.readText(path);
          report.writesChecked++;
          if (got !== content) report.lostWrites.push(`${t.sb.id}:${path} read back different at the end`);
        } catch (e) {
          const code = e instanceof MitosError ? e.code : "client_error";
          const state = await server
            .get(t.sb.id)
            .then((s) => s.state)
            .catch(() => "gone");
          if (state === "ready") report.lostWrites.push(`${t.sb.id}:${path} unreadable at the end (${code})`);
          else break; // its sandbox was lost to a fault
        }
      }
    }
    for (const s of await server.listSandboxes()) {
      const token = s.token;
      await s.terminate().catch(() => {});
      if (token) deadTokens.push({ id: s.id, token });
    }
    for (const { id, token } of deadTokens) {
      const res = await fetch(`${baseUrl}/v1/sandboxes/${id}`, { headers: { authorization: `Bearer ${token}` } });
      if (res.status !== 401) report.liveTokens.push(`${id}: ${res.status}`);
    }
  } finally {
    clearInterval(sampler);
    report.rssMib = [...rss.entries()].map(([pid, s]) => ({ pid, ...s }));
    await settle(() => leaks({ dataDir: o.dataDir, shmDir }).length === 0, 10_000);
    report.leaks.push(...leaks({ dataDir: o.dataDir, shmDir }));
    await daemon.stop();
    report.leaks.push(...qemuPidsOf(o.dataDir).map((p) => `QEMU ${p} alive after mitosd stopped`));
    unmount(shmDir);
    // The data dir stays for a look at its logs; the RAM dir (template bases a stopped mitosd keeps) goes.
    fs.rmSync(shmDir, { recursive: true, force: true });
  }
  return report;
}

function rssMib(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

function unmount(dir: string): void {
  try {
    execFileSync("umount", [dir], { stdio: "ignore" });
  } catch {
    // not mounted
  }
}

async function settle(ok: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!ok() && Date.now() < until) await sleep(200);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
