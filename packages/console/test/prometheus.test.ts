// The console's reading of a Prometheus histogram (src/prometheus.ts), on the
// text prom-client writes.

import assert from "node:assert/strict";
import { it } from "node:test";
import { Histogram, Registry } from "prom-client";
import { histogram } from "../src/prometheus.js";

it("turns cumulative buckets into per-bucket counts, summed over label sets", async () => {
  const registry = new Registry();
  const h = new Histogram({
    name: "mitos_fork_seconds",
    help: "x",
    labelNames: ["node"],
    buckets: [0.1, 0.5, 2],
    registers: [registry],
  });
  for (const [v, node] of [
    [0.05, "a"],
    [0.3, "a"],
    [0.3, "b"],
    [1, "b"],
    [9, "a"],
  ] as const)
    h.observe({ node }, v);
  const text = await registry.metrics();
  assert.deepEqual(histogram(text, "mitos_fork_seconds"), [
    { le: "0.1", count: 1 },
    { le: "0.5", count: 2 },
    { le: "2", count: 1 },
    { le: "+Inf", count: 1 },
  ]);
  assert.deepEqual(histogram(text, "mitos_claim_seconds"), []);
});
