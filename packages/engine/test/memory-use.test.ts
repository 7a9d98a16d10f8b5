// CoW-aware admission's arithmetic (decision 0021) on a modelled 24 GiB host:
// the meter learns a template's cost from settled sandboxes, counts the new
// ones as reservations, and SpendCaps admits fork(64) after fork(64) up to
// hundreds of children, then refuses before the host's floor. The real-VM
// side (default caps admit fork(64); a floor refusal creates nothing) is in
// packages/server/test/limits.test.ts.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import type { MitosError } from "../src/errors.js";
import { defaultLimits, SpendCaps } from "../src/limits.js";
import { MemoryMeter, type MeteredSandbox, privateBytesOf, readMemInfo, SETTLE_MS } from "../src/memory-use.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A host whose available memory is its RAM less the OS and what the modelled QEMUs hold. */
function modelHost(childMib: number, osMib = 1500) {
  const priv = new Map<number, number>();
  const shm = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-meter-"));
  const meter = new MemoryMeter(
    shm,
    () => ({
      totalBytes: 24 * GiB,
      availableBytes: 24 * GiB - osMib * MiB - [...priv.values()].reduce((a, b) => a + b, 0),
    }),
    (pid) => priv.get(pid) ?? 0,
  );
  return { priv, meter, shm, childBytes: childMib * MiB };
}

describe("memory meter", () => {
  it("counts settled sandboxes by their private pages and new ones by the learnt reservation", () => {
    const { priv, meter, shm } = modelHost(37);
    try {
      fs.writeFileSync(path.join(shm, "mitos-base-x.ram"), Buffer.alloc(4 * MiB, 1));
      const now = 1_000_000;
      priv
        .set(1, 40 * MiB)
        .set(2, 30 * MiB)
        .set(3, 50 * MiB);
      assert.equal(meter.reservationMib("python"), 64, "nothing measured yet: the VMM estimate");
      const sandboxes: MeteredSandbox[] = [
        { templateId: "python", pid: 1, since: now - SETTLE_MS },
        { templateId: "python", pid: 2, since: now - SETTLE_MS },
        { templateId: "python", pid: 3, since: now - SETTLE_MS },
        { templateId: "python", pid: 4, since: now - 10 }, // too new to measure
        { templateId: "python", pid: undefined, since: now }, // a placeholder
      ];
      const use = meter.use(sandboxes, now);
      assert.equal(meter.reservationMib("python"), 40, "the median of the settled ones");
      assert.equal(use.pendingMib, 2 * 64, "the two new ones at the estimate in force when counted");
      assert.ok(use.committedMib >= 120 + 4 && use.committedMib < 120 + 5, `${use.committedMib}`);
      assert.equal(use.totalMib, 24 * 1024);
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
  });

  it("reads this host: MemTotal, MemAvailable, a process's anonymous pages; 0 for a gone pid", () => {
    const m = readMemInfo();
    assert.ok(m.totalBytes > 0 && m.availableBytes > 0 && m.availableBytes <= m.totalBytes);
    assert.ok(privateBytesOf(process.pid) > 0);
    assert.equal(privateBytesOf(2 ** 22 + 1), 0);
  });
});

describe("CoW-aware admission with the default caps (24 GiB host)", () => {
  const limits = defaultLimits(24 * GiB);

  /** Forks `count` at a time from one parent until a refusal; children settle at `childMib` private each. */
  function forkUntilRefused(childMib: number, count: number) {
    const { priv, meter, shm, childBytes } = modelHost(childMib, 3000);
    try {
      const caps = new SpendCaps({ ...limits });
      let now = 0;
      let pid = 100;
      const live: MeteredSandbox[] = [{ templateId: "python", pid: pid++, since: now }];
      priv.set(100, 120 * MiB); // the parent
      let admitted = 0;
      for (;;) {
        now += SETTLE_MS; // everything forked so far has settled
        const u = { sandboxes: live.length, guestMemoryMib: live.length * 512, memory: meter.use(live, now) };
        try {
          caps.admit(u, count, 512, meter.reservationMib("python"));
        } catch (err) {
          return { admitted, refusal: err as MitosError, left: meter.use(live, now + SETTLE_MS) };
        }
        for (let i = 0; i < count; i++) {
          priv.set(pid, childBytes);
          live.push({ templateId: "python", pid: pid++, since: now });
        }
        admitted += count;
      }
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
  }

  it("admits fork(32) after fork(32) of 512 MiB python children past 500 (37 MiB each, as measured)", () => {
    const { admitted, refusal, left } = forkUntilRefused(37, 32);
    assert.ok(admitted >= 500, `admitted ${admitted} children`);
    assert.equal(refusal.code, "quota_exceeded");
    assert.ok(left.availableMib >= limits.memoryFloorMib, JSON.stringify(left));
  });

  it("children that cost more are refused at the floor, before the host runs out, and whole", () => {
    const { admitted, refusal, left } = forkUntilRefused(64, 64);
    assert.equal(refusal.context?.limit, "memory_floor_mib");
    assert.match(refusal.message, /64 sandboxes expected to take 64 MiB each/);
    assert.ok(admitted >= 200 && admitted < 500, `admitted ${admitted}`);
    assert.ok(left.availableMib >= limits.memoryFloorMib, JSON.stringify(left));
  });

  it("refuses on the host's own count even when ours looks fine (other processes took the memory)", () => {
    const caps = new SpendCaps({ ...limits });
    const memory = { totalMib: 24576, availableMib: 3000, committedMib: 500, pendingMib: 0 };
    caps.admit({ sandboxes: 1, guestMemoryMib: 512, memory }, 16, 512, 37);
    assert.throws(
      () => caps.admit({ sandboxes: 1, guestMemoryMib: 512, memory }, 64, 512, 37),
      (e: MitosError) =>
        e.code === "quota_exceeded" &&
        e.context?.limit === "memory_floor_mib" &&
        /3000 MiB available/.test(e.message) &&
        e.remediation.length > 0,
    );
  });

  it("strict mode ignores real use and refuses fork(64) of 512 MiB on nominal RAM", () => {
    const strict = new SpendCaps(defaultLimits(24 * GiB, "strict"));
    const memory = { totalMib: 24576, availableMib: 20000, committedMib: 100, pendingMib: 0 };
    assert.throws(
      () => strict.admit({ sandboxes: 1, guestMemoryMib: 512, memory }, 64, 512, 37),
      (e: MitosError) => e.context?.limit === "max_guest_memory_mib",
    );
  });
});
