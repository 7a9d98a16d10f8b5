// envd's metrics (E2B-COMPAT.md §8, getMetrics) read in the guest: memory from
// /proc/meminfo, CPU from two /proc/stat samples 200 ms apart, disk from df
// of /workspace. One exec, so the figures are the guest's own view.

import type { Engine } from "@mitos/engine";

const SCRIPT = "cat /proc/meminfo; head -1 /proc/stat; sleep 0.2; head -1 /proc/stat; df -kP /workspace | tail -1";

export interface GuestMetrics {
  timestamp: string;
  timestampUnix: number;
  cpuCount: number;
  cpuUsedPct: number;
  memUsed: number;
  memTotal: number;
  memCache: number;
  diskUsed: number;
  diskTotal: number;
}

export async function guestMetrics(engine: Engine, id: string, cpuCount: number): Promise<GuestMetrics> {
  const r = await engine.exec(id, { command: SCRIPT, timeoutMs: 10_000 }).result;
  return parseMetrics(r.stdout.toString("utf8"), cpuCount, new Date());
}

/** Parses the script's output; exported for tests. */
export function parseMetrics(text: string, cpuCount: number, at: Date): GuestMetrics {
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? 0) * 1024;
  const cpus = text.split("\n").filter((l) => /^cpu\s/.test(l));
  const [a, b] = cpus.map((l) => l.trim().split(/\s+/).slice(1).map(Number));
  let pct = 0;
  if (a && b) {
    const total = b.reduce((x, y) => x + y, 0) - a.reduce((x, y) => x + y, 0);
    // idle + iowait are the 4th and 5th fields.
    const idle = (b[3] ?? 0) + (b[4] ?? 0) - ((a[3] ?? 0) + (a[4] ?? 0));
    pct = total > 0 ? Math.round(((total - idle) / total) * 1000) / 10 : 0;
  }
  const df = text.trim().split("\n").pop()?.trim().split(/\s+/) ?? [];
  const total = kib("MemTotal");
  return {
    timestamp: at.toISOString(),
    timestampUnix: Math.floor(at.getTime() / 1000),
    cpuCount,
    cpuUsedPct: pct,
    memUsed: total - kib("MemAvailable"),
    memTotal: total,
    memCache: kib("Cached"),
    diskUsed: Number(df[2] ?? 0) * 1024,
    diskTotal: Number(df[1] ?? 0) * 1024,
  };
}
