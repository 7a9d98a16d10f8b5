// The warm pool's refill timing (pool.ts): a claim that got a warm VM
// refills only after refillDelayMs, so the restore's spawn is off the claim's
// path; a claim that found nothing warm starts a restore at once. Fake VMs:
// real pools are in engine.test.ts.

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { WarmPool } from "../src/pool.js";
import type { Vm } from "../src/vm.js";

function fakePool(refillDelayMs: number) {
  let restores = 0;
  const pool = new WarmPool({
    template: "t",
    target: 1,
    idleMs: 60_000,
    refillDelayMs,
    restore: async () => {
      restores++;
      return { running: true, exited: new Promise(() => {}), destroy: async () => {} } as unknown as Vm;
    },
  });
  return { pool, restores: () => restores };
}

test("a claim of a warm VM refills after the delay, not during the claim", async () => {
  const f = fakePool(50);
  f.pool.fill();
  await sleep(5);
  assert.equal(f.pool.status.warm, 1);
  assert.equal(f.restores(), 1);
  assert.ok(f.pool.take());
  assert.equal(f.restores(), 1, "no restore started by the claim itself");
  await sleep(80);
  assert.equal(f.restores(), 2, "refilled once the delay passed");
  await f.pool.close();
});

test("a claim that finds nothing warm restores at once; close cancels a pending refill", async () => {
  const f = fakePool(50);
  assert.equal(f.pool.take(), undefined);
  assert.equal(f.restores(), 1, "cold: the refill starts now");
  await sleep(5);
  assert.ok(f.pool.take());
  await f.pool.close();
  await sleep(80);
  assert.equal(f.restores(), 1, "no refill after close");
});
