// The sandbox object's memory readings (metering.ts MemoryReadings): reused
// while fresh, read again once stale, and a paused warm VM's reading carried
// over to its claim. Real VMs are in engine.test.ts; here the read is counted.

import assert from "node:assert/strict";
import { test } from "node:test";
import { MemoryReadings, type VmMemory } from "../src/metering.js";

const reading = (privateBytes: number): VmMemory => ({
  privateBytes,
  guestPrivateBytes: 0,
  sharedBytes: 0,
  baseKey: undefined,
  baseResidentBytes: 0,
  baseAllocatedBytes: 0,
});

function fixture() {
  let now = 0;
  let reads = 0;
  const vm = { private: 1 };
  const r = new MemoryReadings<typeof vm>(
    (v) => {
      reads++;
      return reading(v.private);
    },
    1000,
    () => now,
  );
  return {
    r,
    vm,
    reads: () => reads,
    at: (ms: number) => {
      now = ms;
    },
  };
}

test("a reading is reused for a second, then read again", () => {
  const f = fixture();
  assert.equal(f.r.get(f.vm).privateBytes, 1);
  f.vm.private = 2;
  f.at(1000);
  assert.equal(f.r.get(f.vm).privateBytes, 1, "within a second: the same reading");
  assert.equal(f.reads(), 1);
  f.at(1001);
  assert.equal(f.r.get(f.vm).privateBytes, 2, "stale: read again");
  assert.equal(f.reads(), 2);
});

test("a paused VM's reading is carried over to its claim; without one, the claim reads", () => {
  const f = fixture();
  f.r.take(f.vm); // warm and paused at t=0
  f.vm.private = 5;
  f.at(60_000); // claimed a minute later
  f.r.carryOver(f.vm);
  assert.equal(f.r.get(f.vm).privateBytes, 1, "the claim answers with the warm reading");
  assert.equal(f.reads(), 1);
  f.at(61_001);
  assert.equal(f.r.get(f.vm).privateBytes, 5);

  const g = fixture();
  g.r.carryOver(g.vm); // a cold restore: nothing to carry
  assert.equal(g.r.get(g.vm).privateBytes, 1);
  assert.equal(g.reads(), 1);
});
