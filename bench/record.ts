// Benchmark records: statistics, the machine they ran on, and the JSON and
// Markdown files in bench/results/ (quick smoke runs go to results/quick/,
// which git ignores, so CI never overwrites the committed figures).

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export interface Series {
  name: string;
  unit: string;
  values: number[];
}

/** A progress line on stderr, with the seconds since the bench started. */
export function progressLogger(): (msg: string) => void {
  const t0 = performance.now();
  return (msg) => console.error(`[${((performance.now() - t0) / 1000).toFixed(1)} s] ${msg}`);
}

/** The series a bench records, and `add` to open a new one. */
export function seriesList(): { series: Series[]; add: (name: string, unit: string) => Series } {
  const series: Series[] = [];
  return {
    series,
    add: (name, unit) => {
      const s: Series = { name, unit, values: [] };
      series.push(s);
      return s;
    },
  };
}

export interface Stats {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export function stats(v: number[]): Stats {
  const s = [...v].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))] ?? Number.NaN;
  const mid =
    s.length % 2 === 1 ? at(0.5) : ((s[s.length / 2 - 1] ?? Number.NaN) + (s[s.length / 2] ?? Number.NaN)) / 2;
  return { n: s.length, p50: mid, p90: at(0.9), p99: at(0.99), max: s[s.length - 1] ?? Number.NaN };
}

export function median(v: number[]): number {
  return stats(v).p50;
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
    // Other work on the host skews every figure: say how busy it was when the record was written.
    "load average (1/5/15 min)": os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" "),
  };
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return "–";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

export interface RecordOptions {
  quick: boolean;
  accel: string;
  /** The command as a person would retype it. */
  command: string;
  /** Extra columns (p99 for load tests). */
  p99?: boolean;
}

/** Writes <date>-<scenario>.{json,md} and prints the Markdown. */
export function record(
  scenario: string,
  o: RecordOptions,
  series: Series[],
  notes: string[] = [],
): { json: string; md: string } {
  const dir = path.join(import.meta.dirname, "results", ...(o.quick ? ["quick"] : []));
  fs.mkdirSync(dir, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const rows = series.map((s) => ({ ...s, ...stats(s.values) }));
  const m = machine(o.accel);
  const json = path.join(dir, `${date}-${scenario}.json`);
  fs.writeFileSync(
    json,
    `${JSON.stringify({ scenario, date, command: o.command, machine: m, series: rows, notes }, null, 1)}\n`,
  );
  const p99 = o.p99 ?? false;
  const md = [
    `# ${scenario} (${date})`,
    "",
    `Command: \`${o.command}\``,
    "",
    `Machine: ${Object.entries(m)
      .map(([k, v]) => `${k} ${v}`)
      .join("; ")}`,
    "",
    `| series | unit | n | p50 | p90 |${p99 ? " p99 |" : ""} max |`,
    `|---|---|---|---|---|${p99 ? "---|" : ""}---|`,
    ...rows.map(
      (r) =>
        `| ${r.name} | ${r.unit} | ${r.n} | ${fmt(r.p50)} | ${fmt(r.p90)} |${p99 ? ` ${fmt(r.p99)} |` : ""} ${fmt(r.max)} |`,
    ),
    "",
    ...notes.map((n) => `- ${n}`),
    "",
  ].join("\n");
  const mdFile = path.join(dir, `${date}-${scenario}.md`);
  fs.writeFileSync(mdFile, md);
  console.log(md);
  return { json, md: mdFile };
}
