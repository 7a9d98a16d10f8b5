// Plain-text output: borderless tables (easy to read and to grep), byte
// sizes and deadlines in human units.

import type { TemplateBuildEvent } from "@mitos/sdk";
import Table from "cli-table3";

const NO_BORDERS = {
  top: "",
  "top-mid": "",
  "top-left": "",
  "top-right": "",
  bottom: "",
  "bottom-mid": "",
  "bottom-left": "",
  "bottom-right": "",
  left: "",
  "left-mid": "",
  mid: "",
  "mid-mid": "",
  right: "",
  "right-mid": "",
  middle: "  ",
};

/** A borderless, uncolored table: a header row, then one line per row; no trailing spaces. */
export function table(head: string[], rows: Array<Array<string | number>>): string {
  const t = new Table({
    head,
    chars: NO_BORDERS,
    style: { head: [], border: [], "padding-left": 0, "padding-right": 0, compact: true },
  });
  for (const r of rows) t.push(r.map(String));
  return `${t
    .toString()
    .split("\n")
    .map((l) => l.trimEnd())
    .join("\n")}\n`;
}

/** 1536 → "1.5 KiB"; undefined → "-". */
export function formatBytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${n} B`;
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** Seconds as "45s", "4m12s", "2h05m", "3d04h". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
}

/** A deadline (Unix seconds) relative to now: "in 4m12s", "expired", "-" when none. */
export function formatDeadline(deadlineUnix: number | undefined, nowMs = Date.now()): string {
  if (deadlineUnix === undefined || !Number.isFinite(deadlineUnix) || deadlineUnix <= 0) return "-";
  const left = deadlineUnix - nowMs / 1000;
  return left <= 0 ? "expired" : `in ${formatDuration(left)}`;
}

/** Elapsed milliseconds as "3.2s" (one decimal under a minute), else as formatDuration. */
export function formatElapsed(ms: number): string {
  return ms < 60_000 ? `${(ms / 1000).toFixed(1)}s` : formatDuration(ms / 1000);
}

export interface SandboxRow {
  id: string;
  templateId: string;
  parentId: string | null;
  state: string;
  privateBytes: number | undefined;
  sharedBytes: number | undefined;
  deadlineUnix: number | undefined;
}

export const SANDBOX_HEAD = ["ID", "TEMPLATE", "PARENT", "STATE", "PRIVATE", "SHARED", "DEADLINE"];

export function sandboxRows(rows: SandboxRow[], nowMs = Date.now()): string[][] {
  return rows.map((r) => [
    r.id,
    r.templateId,
    r.parentId ?? "-",
    r.state,
    formatBytes(r.privateBytes),
    formatBytes(r.sharedBytes),
    formatDeadline(r.deadlineUnix, nowMs),
  ]);
}

export function sandboxTable(rows: SandboxRow[], nowMs = Date.now()): string {
  if (rows.length === 0) return "no sandboxes\n";
  return table(SANDBOX_HEAD, sandboxRows(rows, nowMs));
}

/** One event of `mitos template build --follow`, as a line (or a piece of a step's output). */
export function formatBuildEvent(e: TemplateBuildEvent): string {
  switch (e.type) {
    case "phase":
      return `==> ${e.message}\n`;
    case "step":
      return `[${e.step}/${e.of}] ${e.command}${e.cached ? "  (cached)" : ""}\n`;
    case "output":
      return e.data;
    case "step_done":
      return `[${e.step}] exit ${e.exitCode} in ${formatElapsed(e.ms)}\n`;
  }
}
