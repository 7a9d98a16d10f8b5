// Prometheus metrics (GET /metrics).

import type { Engine } from "@mitos/engine";
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export interface Metrics {
  registry: Registry;
  execs: Counter;
  forkSeconds: Histogram;
  claimSeconds: Histogram;
}

export function createMetrics(engine: Engine): Metrics {
  const registry = new Registry();
  const execs = new Counter({
    name: "mitos_execs_total",
    help: "Commands started in sandboxes",
    registers: [registry],
  });
  const forkSeconds = new Histogram({
    name: "mitos_fork_seconds",
    help: "Live fork latency: source paused to all children ready",
    buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
    registers: [registry],
  });
  const claimSeconds = new Histogram({
    name: "mitos_claim_seconds",
    help: "Sandbox creation latency (warm pool claim or restore)",
    buckets: [0.01, 0.03, 0.1, 0.25, 0.5, 1, 2, 5],
    registers: [registry],
  });
  new Gauge({
    name: "mitos_sandboxes",
    help: "Sandboxes by state",
    labelNames: ["state"],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of engine.list()) this.inc({ state: s.state });
    },
  });
  new Gauge({
    name: "mitos_memory_bytes",
    help: "Host memory of all sandboxes: private pages, and shared bases counted once",
    labelNames: ["kind"],
    registers: [registry],
    collect() {
      const h = engine.metering().host;
      this.set({ kind: "private" }, h.privateBytes);
      this.set({ kind: "shared" }, h.sharedBytes);
    },
  });
  return { registry, execs, forkSeconds, claimSeconds };
}
