// A stand-in for the internet in network tests: a namespace joined to the
// host by a veth, with addresses from TEST-NET-2 (198.51.100.0/24, never
// routed on the real internet), running world-server.mjs. Sandboxes reach it
// through their slot's NAT like any outside host.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

export interface World {
  /** The host's address on the world link (it is a host address: always denied to guests). */
  hostIp: string;
  /** Addresses inside the world (198.51.100.2 is the DNS server). */
  ips: string[];
  dnsServer: string;
  netns: string;
  close(): void;
}

export interface WorldConfig {
  /** Extra addresses beside .2 (the DNS server's). */
  extraIps?: string[];
  http: Array<{ host: string; port: number }>;
  udpEcho?: Array<{ host: string; port: number }>;
  zone: Record<string, string[]>;
  /** Size of the body every HTTP server sends for GET /big (benchmarks; default 1 MiB). */
  bigMiB?: number;
  /** Static file servers (e.g. a package repository): GET /<path> answers the file under dir. */
  files?: Array<{ host: string; port: number; dir: string }>;
}

const sh = (args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });

export async function startWorld(c: WorldConfig): Promise<World> {
  // One world per host at a time (they share 198.51.100.1): one a killed test left goes first.
  for (const stale of fs.existsSync("/run/netns") ? fs.readdirSync("/run/netns") : []) {
    if (stale.startsWith("mitos-world-")) sh(["netns", "del", stale]);
  }
  const tag = randomBytes(3).toString("hex");
  const netns = `mitos-world-${tag}`;
  const hostIf = `mw${tag}`;
  const hostIp = "198.51.100.1";
  const ips = ["198.51.100.2", ...(c.extraIps ?? [])];
  sh(["netns", "add", netns]);
  sh(["link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", netns]);
  sh(["addr", "add", `${hostIp}/24`, "dev", hostIf]);
  sh(["link", "set", hostIf, "up"]);
  sh(["-n", netns, "link", "set", "lo", "up"]);
  for (const ip of ips) sh(["-n", netns, "addr", "add", `${ip}/24`, "dev", "eth0"]);
  sh(["-n", netns, "link", "set", "eth0", "up"]);
  sh(["-n", netns, "route", "add", "default", "via", hostIp]);
  const server: ChildProcess = spawn(
    "nsenter",
    [
      `--net=/run/netns/${netns}`,
      "--",
      process.execPath,
      path.join(import.meta.dirname, "world-server.mjs"),
      JSON.stringify({
        http: c.http,
        udpEcho: c.udpEcho ?? [],
        dns: { host: ips[0], zone: c.zone },
        bigMiB: c.bigMiB ?? 1,
        files: c.files ?? [],
      }),
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  await new Promise<void>((resolve, reject) => {
    server.stdout?.on("data", (d: Buffer) => {
      if (d.toString().includes("ready")) resolve();
    });
    server.once("exit", (code) => reject(new Error(`world server exited (${code})`)));
  });
  return {
    hostIp,
    ips,
    dnsServer: ips[0] as string,
    netns,
    close() {
      server.kill("SIGKILL");
      try {
        sh(["netns", "del", netns]);
      } catch {
        // already gone
      }
    },
  };
}
