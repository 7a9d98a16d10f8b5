// Mitos benchmarks: npm run bench [-- --quick] [-- --only claim,exec,...]
// Each scenario runs N iterations after a warm-up and writes a JSON and a
// Markdown record to bench/results/<date>-<scenario>.{json,md} with the
// machine it ran on and the exact command. Baselines run in the same process.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Engine } from "../packages/engine/src/index.js";

const quick = process.argv.includes("--quick");
const only = process.argv
  .find((a) => a.startsWith("--only="))
  ?.slice(7)
  .split(",");
const resultsDir = path.join(import.meta.dirname, "results");
const dataDir = "/var/lib/mitos/bench";

interface Series {
  name: string;
  unit: string;
  values: number[];
}

function stats(v: number[]): { n: number; p50: number; p90: number; max: number } {
  const s = [...v].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))] ?? Number.NaN;
  return { n: s.length, p50: at(0.5), p90: at(0.9), max: s[s.length - 1] ?? Number.NaN };
}

function machine(accel: string): Record<string, string> {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "?";
  const qemu = execFileSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" }).split("\n")[0] ?? "?";
  return {
    cpu,
    cores: String(os.availableParallelism()),
    ram: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    kernel: os.release(),
    accel,
    qemu,
    node: process.version,
  };
}

function record(scenario: string, accel: string, series: Series[], notes: string[] = []): void {
  fs.mkdirSync(resultsDir, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const command = `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim();
  const rows = series.map((s) => ({ ...s, ...stats(s.values) }));
  const m = machine(accel);
  fs.writeFileSync(
    path.join(resultsDir, `${date}-${scenario}.json`),
    `${JSON.stringify({ scenario, date, command, machine: m, series: rows, notes }, null, 1)}\n`,
  );
  const md = [
    `# ${scenario} (${date})`,
    "",
    `Command: \`${command}\``,
    "",
    `Machine: ${Object.entries(m)
      .map(([k, v]) => `${k} ${v}`)
      .join("; ")}`,
    "",
    "| series | unit | n | p50 | p90 | max |",
    "|---|---|---|---|---|---|",
    ...rows.map((r) => `| ${r.name} | ${r.unit} | ${r.n} | ${fmt(r.p50)} | ${fmt(r.p90)} | ${fmt(r.max)} |`),
    "",
    ...notes.map((n) => `- ${n}`),
    "",
  ].join("\n");
  fs.writeFileSync(path.join(resultsDir, `${date}-${scenario}.md`), md);
  console.log(md);
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const r = await fn();
  return [performance.now() - t, r];
}

const wanted = (s: string) => !only || only.includes(s);
const engine = await Engine.open({
  dataDir,
  imagesDir: "/var/lib/mitos/images",
  poolTargets: { python: 2 },
  limits: { maxLifetimeSeconds: 7200 },
});
try {
  await engine.createTemplate("python");
  const waitWarm = async () => {
    const until = Date.now() + 60_000;
    while (!engine.poolStatus().some((p) => p.template === "python" && p.warm >= 2) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  if (wanted("claim")) {
    const n = quick ? 3 : 15;
    const ready: number[] = [];
    const firstExec: number[] = [];
    for (let i = 0; i < n + 1; i++) {
      await waitWarm();
      const [ms, sb] = await time(() => engine.create("python"));
      const [execMs] = await time(() => engine.exec(sb.id, { command: "true" }).result);
      if (i > 0) {
        ready.push(ms);
        firstExec.push(ms + execMs);
      }
      await engine.terminate(sb.id);
    }
    record(
      "claim",
      engine.accel,
      [
        { name: "create from warm pool → ready (reseed confirmed)", unit: "ms", values: ready },
        { name: "create → first exec answered", unit: "ms", values: firstExec },
      ],
      ["One warm-up claim discarded; the pool refills to 2 between claims."],
    );
  }

  if (wanted("exec")) {
    const sb = await engine.create("python");
    const n = quick ? 20 : 200;
    const values: number[] = [];
    for (let i = 0; i < n + 5; i++) {
      const [ms] = await time(() => engine.exec(sb.id, { command: "true" }).result);
      if (i >= 5) values.push(ms);
    }
    record(
      "exec-round-trip",
      engine.accel,
      [{ name: "exec `true`, sequential", unit: "ms", values }],
      ["5 warm-up execs discarded."],
    );
    await engine.terminate(sb.id);
  }

  if (wanted("fork")) {
    const series: Series[] = [];
    const sizes = quick ? [1, 4] : [1, 4, 8, 16];
    const reps = quick ? 1 : 3;
    const parent = await engine.create("python", { timeoutSeconds: 3600 });
    await engine.exec(parent.id, {
      command: 'python3 -c \'import json; json.dump(list(range(10000)), open("/root/state.json","w"))\'',
    }).result;
    for (const n of sizes) {
      const ready: number[] = [];
      const exec: number[] = [];
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now();
        const { children } = await engine.fork(parent.id, { count: n });
        const t1 = performance.now();
        await Promise.all(children.map((c) => engine.exec(c.id, { command: "true" }).result));
        ready.push(t1 - t0);
        exec.push(performance.now() - t0);
        await Promise.all(children.map((c) => engine.terminate(c.id)));
      }
      series.push({ name: `fork(${n}) → all ready`, unit: "ms", values: ready });
      series.push({ name: `fork(${n}) → first exec answered in every child`, unit: "ms", values: exec });
    }
    await engine.terminate(parent.id);
    record("fork-fanout", engine.accel, series, [
      "Parent: a python sandbox that has run Python and holds a 50 KB file.",
      `${reps} repetition(s) per size.`,
    ]);
  }

  if (wanted("density")) {
    const counts = quick ? [8] : [8, 32];
    const series: Series[] = [];
    const notes: string[] = [];
    const parent = await engine.create("python", { timeoutSeconds: 3600 });
    for (const n of counts) {
      const { children } = await engine.fork(parent.id, { count: n });
      await Promise.all(children.map((c) => engine.exec(c.id, { command: "echo hi > /tmp/x; cat /tmp/x" }).result));
      const m = engine.metering();
      const rows = m.sandboxes.filter((r) => children.some((c) => c.id === r.id));
      series.push({
        name: `children=${n}: guest pages made private per child`,
        unit: "MiB",
        values: rows.map((r) => r.guestPrivateBytes / 2 ** 20),
      });
      series.push({
        name: `children=${n}: VMM (QEMU) private memory per child`,
        unit: "MiB",
        values: rows.map((r) => (r.privateBytes - r.guestPrivateBytes) / 2 ** 20),
      });
      series.push({
        name: `children=${n}: total private per child`,
        unit: "MiB",
        values: rows.map((r) => r.privateBytes / 2 ** 20),
      });
      const shared = new Map(rows.map((r) => [r.baseKey, r.baseResidentBytes]));
      const sharedTotal = [...shared.values()].reduce((a, b) => a + b, 0);
      const privTotal = rows.reduce((a, r) => a + r.privateBytes, 0);
      notes.push(
        `children=${n}: sum of private ${(privTotal / 2 ** 20).toFixed(0)} MiB + shared base counted once ${(sharedTotal / 2 ** 20).toFixed(0)} MiB = ${((privTotal + sharedTotal) / 2 ** 30).toFixed(2)} GiB`,
      );
      await Promise.all(children.map((c) => engine.terminate(c.id)));
    }
    await engine.terminate(parent.id);
    record("density", engine.accel, series, notes);
  }

  if (wanted("baseline")) {
    const { Vm, ensureImages, BUILTIN_RECIPES } = await import("../packages/engine/src/index.js");
    const images = await ensureImages(BUILTIN_RECIPES.python!, { cacheDir: "/var/lib/mitos/images" });
    const n = quick ? 1 : 3;
    const cold: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const vm = await Vm.boot({ id: `bench-cold-${i}`, images, dataDir, shmDir: "/dev/shm" });
      await vm.agent.exec({ command: "true" }).result;
      cold.push(performance.now() - t0);
      await vm.destroy();
    }
    record("baseline-cold-boot", engine.accel, [
      { name: "cold boot of the python image → first exec", unit: "ms", values: cold },
    ]);
  }
} finally {
  await engine.close({ killSandboxes: true });
}
