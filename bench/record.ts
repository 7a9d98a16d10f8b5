// Writing a benchmark record: bench/results/<date>-<scenario>.{json,md} with
// percentiles per series, the machine it ran on and the exact command.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export interface Series {
  name: string;
  unit: string;
  values: number[];
}

const resultsDir = path.join(import.meta.dirname, "results");

export function stats(v: number[]): { n: number; p50: number; p90: number; p99: number; max: number } {
  const s = [...v].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))] ?? Number.NaN;
  return { n: s.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: s[s.length - 1] ?? Number.NaN };
}

export function machine(accel: string): Record<string, string> {
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

export interface RecordOptions {
  /** The npm script that ran it (default "bench"). */
  script?: string;
  /** Extra fields for the JSON record (e.g. error counts). */
  extra?: Record<string, unknown>;
}

export function record(
  scenario: string,
  accel: string,
  series: Series[],
  notes: string[] = [],
  opts: RecordOptions = {},
): void {
  fs.mkdirSync(resultsDir, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const command = `npm run ${opts.script ?? "bench"} -- ${process.argv.slice(2).join(" ")}`.trim();
  const rows = series.map((s) => ({ ...s, ...stats(s.values) }));
  const m = machine(accel);
  fs.writeFileSync(
    path.join(resultsDir, `${date}-${scenario}.json`),
    `${JSON.stringify({ scenario, date, command, machine: m, series: rows, notes, ...opts.extra }, null, 1)}\n`,
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
    "| series | unit | n | p50 | p90 | p99 | max |",
    "|---|---|---|---|---|---|---|",
    ...rows.map(
      (r) => `| ${r.name} | ${r.unit} | ${r.n} | ${fmt(r.p50)} | ${fmt(r.p90)} | ${fmt(r.p99)} | ${fmt(r.max)} |`,
    ),
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
