// `mitos top`: a live table of sandboxes with their state and memory
// (private vs shared pages), from /v1/sandboxes and /v1/metering.

import type { SandboxServer } from "@mitos/sdk";
import { formatBytes, type SandboxRow, sandboxTable } from "./format.js";

export async function topFrame(server: SandboxServer, nowMs = Date.now()): Promise<string> {
  const [sandboxes, metering, health] = await Promise.all([
    server.listSandboxes(),
    server.metering().catch(() => undefined),
    server.health().catch(() => undefined),
  ]);
  const mem = new Map((metering?.sandboxes ?? []).map((m) => [m.id, m]));
  const rows: SandboxRow[] = sandboxes.map((s) => ({
    id: s.id,
    templateId: s.templateId,
    parentId: s.parentId,
    state: s.state,
    privateBytes: mem.get(s.id)?.privateBytes ?? s.memory?.privateBytes,
    sharedBytes: mem.get(s.id)?.sharedBytes ?? s.memory?.sharedBytes,
    deadlineUnix: s.deadlineUnix,
  }));
  const byState = new Map<string, number>();
  for (const r of rows) byState.set(r.state, (byState.get(r.state) ?? 0) + 1);
  const states = [...byState].map(([k, v]) => `${v} ${k}`).join(", ") || "none";
  const host = metering?.host;
  let head = `mitos top - ${server.baseUrl}${health ? ` (${health.accel}, mitosd ${health.version})` : ""} - ${new Date(nowMs).toLocaleTimeString()}\n`;
  head += `sandboxes: ${rows.length} (${states})`;
  if (host) {
    head += `   memory: private ${formatBytes(host.privateBytes)}, shared ${formatBytes(host.sharedBytes)}`;
    if (host.totalBytes !== undefined) head += `, total ${formatBytes(host.totalBytes)}`;
  }
  return `${head}\n\n${sandboxTable(rows, nowMs)}`;
}

/** Redraws every `intervalMs` until q, Ctrl-C or SIGTERM. */
export async function runTop(server: SandboxServer, intervalMs = 1000): Promise<number> {
  const out = process.stdout;
  const stdin = process.stdin;
  const tty = Boolean(stdin.isTTY);
  let stop: () => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    stop = resolve;
  });
  const onKey = (d: Buffer) => {
    const k = d.toString();
    if (k === "q" || k === "Q" || k === "\x03" || k === "\x04") stop();
  };
  if (tty) {
    stdin.setRawMode(true);
    stdin.resume();
    stdin.on("data", onKey);
  }
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  out.write("\x1b[?1049h\x1b[?25l"); // alternate screen, hide cursor
  let running = true;
  try {
    stopped.then(() => {
      running = false;
    });
    while (running) {
      let frame: string;
      try {
        frame = await topFrame(server);
      } catch (e) {
        frame = `mitos top - ${server.baseUrl}\n\nerror: ${e instanceof Error ? e.message : String(e)}\n(retrying)\n`;
      }
      if (!running) break;
      out.write(`\x1b[H\x1b[2J${frame}\n(q to quit)`);
      await Promise.race([stopped, new Promise((r) => setTimeout(r, intervalMs))]);
    }
  } finally {
    out.write("\x1b[?25h\x1b[?1049l");
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
    if (tty) {
      stdin.off("data", onKey);
      stdin.setRawMode(false);
      stdin.pause();
    }
  }
  return 0;
}
