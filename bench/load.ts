// Load test: npm run bench:load [-- --seconds 60 --clients 20]
// Starts a real mitosd on loopback with a data dir of its own; each client
// loops create → exec → fork → exec in the child → terminate both, through
// the SDK with retries off. Errors are counted by API code: any code but
// quota_exceeded fails the run, as does a VM or file left behind at the end.
// Latencies per operation go to bench/results/<date>-load.{json,md}
// (bench/results/quick/ for runs shorter than 60 s).

import fs from "node:fs";
import os from "node:os";
import { parseArgs } from "node:util";
import { shmDirFor } from "../packages/engine/src/config.js";
import { qemuProcesses } from "../packages/engine/src/qemu/processes.js";
import { MitosError, type Sandbox, SandboxServer } from "../packages/sdk/src/index.js";
import { leaks, qemuPidsOf } from "../test-support/leaks.js";
import { startMitosd } from "../test-support/mitosd.js";
import { record } from "./record.js";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "60" },
    clients: { type: "string", default: "20" },
    "data-dir": { type: "string", default: "/var/lib/mitos/bench-load" },
  },
});
const seconds = Number(values.seconds);
const clients = Number(values.clients);
if (!(seconds > 0) || !Number.isInteger(clients) || clients < 1) {
  console.error("usage: bench/load.ts [--seconds N>0] [--clients N>=1] [--data-dir DIR]");
  process.exit(2);
}
const dataDir = values["data-dir"];
const owned = { dataDir, shmDir: shmDirFor(dataDir) };
// Any call slower than this counts as a hang (client_timeout).
const OP_TIMEOUT_MS = 180_000;
const ALLOWED = new Set(["quota_exceeded"]);

type Op = "create" | "exec" | "fork" | "terminate";
const latency: Record<Op, number[]> = { create: [], exec: [], fork: [], terminate: [] };
const errors: Record<string, number> = {};
const samples: string[] = [];
let loops = 0;

/** An operation's failure, with the operation named. */
class OpError extends Error {
  constructor(
    readonly op: Op | "check",
    readonly code: string,
    cause: unknown,
  ) {
    super(cause instanceof Error ? cause.message : String(cause));
  }
}

function countError(e: OpError): void {
  errors[e.code] = (errors[e.code] ?? 0) + 1;
  if (!ALLOWED.has(e.code) && samples.length < 10) samples.push(`${e.op}: ${e.code}: ${e.message}`);
}

async function timed<T>(op: Op, fn: () => Promise<T>): Promise<T> {
  const t = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new OpError(op, "client_timeout", `${op} took over ${OP_TIMEOUT_MS} ms`)),
      OP_TIMEOUT_MS,
    );
  });
  try {
    const r = await Promise.race([fn(), hang]);
    latency[op].push(performance.now() - t);
    return r;
  } catch (e) {
    if (e instanceof OpError) throw e;
    throw new OpError(op, e instanceof MitosError ? e.code : "client_error", e);
  } finally {
    clearTimeout(timer);
  }
}

async function client(server: SandboxServer, until: number): Promise<void> {
  while (Date.now() < until) {
    const live: Sandbox[] = [];
    try {
      const sb = await timed("create", () => server.fork("python", { timeoutSeconds: 900 }));
      live.push(sb);
      const r = await timed("exec", () => sb.exec("echo parent > /root/who && cat /root/who"));
      if (r.stdout !== "parent\n") throw new Error(`wrong exec output ${JSON.stringify(r.stdout)}`);
      const [child] = await timed("fork", () => sb.fork(1));
      if (!child) throw new Error("fork returned no child");
      live.push(child);
      const c = await timed("exec", () => child.exec("cat /root/who"));
      if (c.stdout !== "parent\n") throw new Error(`child sees ${JSON.stringify(c.stdout)}`);
      while (live.length > 0) {
        const s = live.pop() as Sandbox;
        await timed("terminate", () => s.terminate());
      }
      loops++;
    } catch (e) {
      const err = e instanceof OpError ? e : new OpError("check", "wrong_result", e);
      countError(err);
      if (err.code === "quota_exceeded") await new Promise((r) => setTimeout(r, 500));
    } finally {
      for (const s of live) await s.terminate().catch(() => {});
    }
  }
}

fs.rmSync(dataDir, { recursive: true, force: true });
fs.rmSync(owned.shmDir, { recursive: true, force: true });
const daemon = await startMitosd(dataDir);
let failed = false;
const notes: string[] = [];
try {
  const server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token, maxRetries: 0 });
  await server.createTemplate("python");
  const accel = (await server.health()).accel;
  const loadBefore = os.loadavg()[0]?.toFixed(1);
  const qemusBefore = qemuProcesses().length - qemuPidsOf(dataDir).length;
  console.error(`load: ${clients} clients for ${seconds} s against ${daemon.url}`);
  const started = Date.now();
  await Promise.all(Array.from({ length: clients }, () => client(server, started + seconds * 1000)));
  const wallS = (Date.now() - started) / 1000;
  // Everything the clients made is gone; only the warm pool remains.
  const left = await server.listSandboxes();
  for (const s of left) await s.terminate().catch(() => {});
  const liveLeaks = leaks(owned);
  await daemon.stop();
  const afterStop = [...leaks(owned), ...qemuPidsOf(dataDir).map((p) => `QEMU ${p} alive after mitosd stopped`)];
  const unexpected = Object.entries(errors).filter(([code]) => !ALLOWED.has(code));
  failed = unexpected.length > 0 || left.length > 0 || liveLeaks.length > 0 || afterStop.length > 0;
  notes.push(
    `${clients} clients for ${seconds} s (wall ${wallS.toFixed(0)} s): ${loops} full loops (create, exec, fork, exec in child, 2 terminates), ${(loops / wallS).toFixed(2)} loops/s.`,
    `Errors by code: ${JSON.stringify(errors)} (allowed: ${[...ALLOWED].join(", ")}).`,
    ...samples.map((s) => `Error sample: ${s}`),
    `Sandboxes left listed after the clients finished: ${left.length}. Leaks while mitosd ran: ${JSON.stringify(liveLeaks)}; after it stopped: ${JSON.stringify(afterStop)}.`,
    `Host load: 1-min load average ${loadBefore} at the start with ${qemusBefore} QEMU processes of other data dirs, ${os.loadavg()[0]?.toFixed(1)} at the end (this run included); 20 clients on 2 cores queue for CPU, so latencies are mostly waiting.`,
    `Result: ${failed ? "FAIL" : "PASS"}.`,
  );
  record(
    "load",
    // Runs shorter than a minute are smoke runs (results/quick/, not committed).
    {
      quick: seconds < 60,
      accel,
      command: `npm run bench:load -- ${process.argv.slice(2).join(" ")}`.trim(),
      p99: true,
    },
    (Object.keys(latency) as Op[]).map((op) => ({ name: op, unit: "ms", values: latency[op] })),
    notes,
  );
} finally {
  await daemon.stop();
}
process.exit(failed ? 1 : 0);
