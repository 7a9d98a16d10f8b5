// End to end through mitosd, as users meet Mitos (issue 19, item 1):
// npm run bench:api [-- --quick]
//
// A real mitosd (its default config: python warm pool, default caps) and
// three clients: the TS SDK, raw HTTP (fetch for the lifecycle, the
// generated Connect client for exec: no SDK) and, as the same-run baseline,
// the engine in-process (no HTTP). Rows:
//  - time to interactive: create → first exec returned;
//  - exec round trip (`true`) sequential, and with 8 and 32 concurrent clients;
//  - fork(n) → every child answered an exec, n = 1, 4, 8;
//  - PTY keystroke echo: one key written → its echo read back.
// Records p50/p90/p99 with n to bench/results/<date>-api.{json,md}.

import fs from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { defaultDataDir, Engine } from "../packages/engine/src/index.js";
import { type Sandbox, SandboxServer } from "../packages/sdk/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { startMitosd } from "../test-support/mitosd.js";
import { runtimeClient } from "../test-support/runtime-client.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
/** Only the time-to-interactive rows (HTTP and engine), for A/Bs of the claim path. */
const ttiOnly = process.argv.includes("--tti");
const TTI_N = quick ? 3 : 20;
/** Between two timed creates: the warm pool (2 VMs) is full again, as when a user creates now and then. */
const TTI_GAP_MS = 1500;
const EXEC_N = quick ? 10 : 100;
const PER_CLIENT = quick ? 2 : 10;
const FORK_REPS = quick ? 1 : 5;
const FORK_SIZES = [1, 4, 8];
const KEYS = quick ? 10 : 50;
const progress = progressLogger();
const { series, add } = seriesList();

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

const dataDir = tempDataDir("bench-api");
const daemon = await startMitosd(dataDir);
const server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
const auth = { authorization: `Bearer ${daemon.token}`, "content-type": "application/json" };
let accel = "";

/** Raw HTTP: POST /v1/sandboxes, then ExecStream over Connect; the exit code. */
async function rawExec(id: string, command: string): Promise<number> {
  let code = -1;
  for await (const m of runtimeClient(daemon, id).execStream({ command })) {
    if (m.event.case === "exit") code = m.event.value.exitCode;
  }
  return code;
}

try {
  progress("warming the python template and pool");
  const warm = await server.fork("python");
  accel = (await warm.info()).accel ?? "";
  await warm.terminate();

  progress("time to interactive");
  const ttiSdk = add("TTI, TS SDK: create → first exec returned", "ms");
  const ttiRaw = add("TTI, raw HTTP: POST /v1/sandboxes → first ExecStream returned", "ms");
  const ttiBurst = add("TTI, raw HTTP, back to back (the pool of 2 refilling meanwhile)", "ms");
  const rawTti = async (): Promise<number> => {
    let id = "";
    const ms = await timed(async () => {
      const r = await fetch(`${daemon.url}/v1/sandboxes`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({ template: "python" }),
      });
      id = ((await r.json()) as { id: string }).id;
      check((await rawExec(id, "true")) === 0, "raw exec");
    });
    await fetch(`${daemon.url}/v1/sandboxes/${id}`, { method: "DELETE", headers: auth });
    return ms;
  };
  for (let i = 0; i < TTI_N; i++) {
    await sleep(TTI_GAP_MS);
    let sb: Sandbox | undefined;
    ttiSdk.values.push(
      await timed(async () => {
        sb = await server.fork("python");
        check((await sb.exec("true")).exitCode === 0, "sdk exec");
      }),
    );
    await sb?.terminate();
    await sleep(TTI_GAP_MS);
    ttiRaw.values.push(await rawTti());
  }
  await sleep(TTI_GAP_MS);
  for (let i = 0; i < TTI_N; i++) ttiBurst.values.push(await rawTti());

  if (!ttiOnly) await apiRest();
} finally {
  await daemon.stop();
  removeDataDir(dataDir);
}

/** Exec round trips, PTY echo and fork(n) through mitosd. */
async function apiRest(): Promise<void> {
  progress("exec round trips");
  const sb = await server.fork("python");
  for (let i = 0; i < 5; i++) await sb.exec("true");
  const execSdk = add("exec `true`, TS SDK, sequential", "ms");
  const execRaw = add("exec `true`, raw Connect (generated client, HTTP/1.1), sequential", "ms");
  for (let i = 0; i < EXEC_N; i++) {
    execSdk.values.push(await timed(() => sb.exec("true")));
    execRaw.values.push(await timed(() => rawExec(sb.id, "true")));
  }
  for (const clients of [8, 32]) {
    const s = add(`exec \`true\`, TS SDK, ${clients} concurrent clients on one sandbox (each call)`, "ms");
    await Promise.all(
      Array.from({ length: clients }, async () => {
        const own = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
        const mine = await own.get(sb.id);
        for (let i = 0; i < PER_CLIENT; i++) s.values.push(await timed(() => mine.exec("true")));
      }),
    );
  }

  progress("PTY keystroke echo");
  const echo = add("PTY keystroke echo, TS SDK WebSocket (key written → echo read)", "ms");
  let seen = "";
  let waiter: (() => void) | undefined;
  const pty = await sb.createPty({
    command: "sh",
    onData: (d) => {
      seen += d;
      waiter?.();
    },
  });
  const until = (want: string) =>
    new Promise<void>((resolve) => {
      waiter = () => {
        if (seen.includes(want)) resolve();
      };
      waiter();
    });
  pty.write("echo ready\r");
  await until("ready\r\n");
  for (let i = 0; i < KEYS; i++) {
    const key = String.fromCharCode(97 + (i % 26));
    seen = "";
    echo.values.push(
      await timed(async () => {
        pty.write(key);
        await until(key);
      }),
    );
  }
  pty.kill();

  progress("fork(n) → every child answered");
  for (const n of FORK_SIZES) {
    const s = add(`fork(${n}) → every child's exec returned, TS SDK`, "ms");
    for (let r = 0; r < FORK_REPS; r++) {
      let children: Sandbox[] = [];
      s.values.push(
        await timed(async () => {
          children = await sb.fork(n);
          const codes = await Promise.all(children.map(async (c) => (await c.exec("true")).exitCode));
          check(
            codes.every((c) => c === 0),
            "child exec",
          );
        }),
      );
      await Promise.all(children.map((c) => c.terminate()));
      await sleep(1500); // spares for the next fork
    }
  }
  await sb.terminate();
}

progress("engine baseline (no HTTP)");
const shmDir = "/dev/shm/mitos-bench-api-engine";
fs.mkdirSync(shmDir, { recursive: true });
const engineDir = tempDataDir("bench-api-engine", shmDir);
const engine = await Engine.open({
  dataDir: engineDir,
  shmDir,
  imagesDir: path.join(defaultDataDir(), "images"),
  poolTargets: { python: 2 },
});
try {
  const run = async (id: string) => {
    const r = await engine.exec(id, { command: "true" }).result;
    check(r.exitCode === 0, "engine exec");
  };
  const first = await engine.create("python");
  await run(first.id);
  await engine.terminate(first.id);
  const tti = add("baseline: TTI, engine in-process: create → first exec returned", "ms");
  const burst = add("baseline: TTI, engine in-process, back to back", "ms");
  const engineTti = async (): Promise<number> => {
    let id = "";
    const ms = await timed(async () => {
      id = (await engine.create("python")).id;
      await run(id);
    });
    await engine.terminate(id);
    return ms;
  };
  for (let i = 0; i < TTI_N; i++) {
    await sleep(TTI_GAP_MS);
    tti.values.push(await engineTti());
  }
  await sleep(TTI_GAP_MS);
  for (let i = 0; i < TTI_N; i++) burst.values.push(await engineTti());
  if (!ttiOnly) await engineRest(engine, run);
} finally {
  await engine.close({ killSandboxes: true });
  removeDataDir(engineDir, shmDir);
}

/** Exec round trips and fork(n) on the in-process engine. */
async function engineRest(engine: Engine, run: (id: string) => Promise<void>): Promise<void> {
  const sb = await engine.create("python");
  for (let i = 0; i < 5; i++) await run(sb.id);
  const ex = add("baseline: exec `true`, engine in-process, sequential", "ms");
  for (let i = 0; i < EXEC_N; i++) ex.values.push(await timed(() => run(sb.id)));
  for (const n of FORK_SIZES) {
    const s = add(`baseline: fork(${n}) → every child's exec returned, engine in-process`, "ms");
    for (let r = 0; r < FORK_REPS; r++) {
      let ids: string[] = [];
      s.values.push(
        await timed(async () => {
          ids = (await engine.fork(sb.id, { count: n })).children.map((c) => c.id);
          await Promise.all(ids.map(run));
        }),
      );
      for (const id of ids) await engine.terminate(id);
      await sleep(1500);
    }
  }
}

record(
  ttiOnly ? "api-tti" : "api",
  {
    quick,
    accel,
    command: `npm run bench:api${quick || ttiOnly ? " --" : ""}${quick ? " --quick" : ""}${ttiOnly ? " --tti" : ""}`,
    p99: true,
  },
  series,
  [
    "mitosd with its default config (python warm pool, default caps), on this host; clients in one Node process.",
    `TTI: one sandbox at a time, each terminated before the next; ${TTI_GAP_MS} ms before each timed create (the warm pool of 2 is full again), then back to back (the pool refilling as it can).`,
    "Concurrent rows: every client has its own SDK instance (own connections) and runs its calls one after another on one shared sandbox.",
    "PTY: `sh` in a terminal; one character written per sample, timed until the terminal echoes it.",
    "fork(n): the parent is a python sandbox that ran a few execs; 1.5 s between forks so spare QEMUs are ready, as in the engine fork bench.",
    "Baselines: the same operations on an in-process engine (no HTTP, no SDK) in the same run, after mitosd stopped.",
  ],
);
