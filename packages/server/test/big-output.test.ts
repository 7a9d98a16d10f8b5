// Huge output is streamed, never buffered: an exec printing 1 GiB through
// ExecStream completes while mitosd (a child process, measured from
// /proc/<pid>/status) stays within a fixed bound over its idle RSS. The same
// daemon runs without any configuration, so /v1/limits shows the default caps.

import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { defaultLimits, LIMIT_NAMES } from "@mitos/engine";
import { Sandbox as SandboxService } from "@mitos/proto";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";

const MiB = 1024 * 1024;
/** The documented bound (docs/decisions/0005-spend-caps.md): mitosd's RSS grows < 300 MiB while streaming 1 GiB. */
const RSS_BOUND = 300 * MiB;
const dataDir = tempDataDir("test-big-output");
let d: Daemon;

const rssOf = (pid: number, field: "VmRSS" | "VmHWM") => {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0) * 1024;
};

before(async () => {
  d = await startMitosd(dataDir);
});
after(async () => {
  await d?.stop();
  removeDataDir(dataDir);
});

describe("mitosd under a 1 GiB exec output", () => {
  const api = async (method: string, route: string, body?: unknown) => {
    const r = await fetch(`${d.url}${route}`, {
      method,
      headers: { authorization: `Bearer ${d.token}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: r.status, json: (await r.json()) as Record<string, unknown> };
  };

  it("has the default spend caps on without any configuration", async () => {
    const r = await api("GET", "/v1/limits");
    assert.equal(r.status, 200);
    const want = defaultLimits();
    for (const [k, name] of Object.entries(LIMIT_NAMES)) assert.equal(r.json[name], want[k as keyof typeof want], name);
  });

  it("streams 1 GiB of stdout with mitosd's RSS bounded", { timeout: 600_000 }, async (t) => {
    const sb = await api("POST", "/v1/sandboxes", { template: "python" });
    assert.equal(sb.status, 200, JSON.stringify(sb.json));
    const rt = createClient(
      SandboxService,
      createConnectTransport({
        baseUrl: d.url,
        httpVersion: "1.1",
        useBinaryFormat: true,
        interceptors: [
          (next) => async (req) => {
            req.header.set("authorization", `Bearer ${d.token}`);
            req.header.set("x-sandbox-id", sb.json.id as string);
            return next(req);
          },
        ],
      }),
    );
    // Warm up the paths once, then take the idle figure.
    for await (const _ of rt.execStream({ command: "head -c 10000000 /dev/zero" })) {
      // drain
    }
    await new Promise((r) => setTimeout(r, 500));
    const idle = rssOf(d.pid, "VmRSS");
    let peak = idle;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssOf(d.pid, "VmRSS"));
    }, 100);
    const started = Date.now();
    let bytes = 0;
    let exitCode = -1;
    try {
      for await (const m of rt.execStream({ command: "head -c 1073741824 /dev/zero" })) {
        if (m.event.case === "stdout") bytes += m.event.value.length;
        if (m.event.case === "exit") exitCode = m.event.value.exitCode;
      }
    } finally {
      clearInterval(sampler);
    }
    const secs = (Date.now() - started) / 1000;
    peak = Math.max(peak, rssOf(d.pid, "VmRSS"));
    t.diagnostic(
      `1 GiB in ${secs.toFixed(1)} s (${(bytes / MiB / secs).toFixed(0)} MiB/s); mitosd RSS idle ${(idle / MiB).toFixed(0)} MiB, ` +
        `peak ${(peak / MiB).toFixed(0)} MiB (+${((peak - idle) / MiB).toFixed(0)} MiB), VmHWM ${(rssOf(d.pid, "VmHWM") / MiB).toFixed(0)} MiB`,
    );
    assert.equal(exitCode, 0);
    assert.equal(bytes, 1024 * MiB);
    assert.ok(peak - idle < RSS_BOUND, `mitosd RSS grew ${((peak - idle) / MiB).toFixed(0)} MiB`);
  });
});
