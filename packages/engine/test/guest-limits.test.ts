// Unit tests: a template's guest limits (guest-limits.ts), an owner's caps
// (limits.ts SpendCaps.admitOwner) and the exec output rate (agent/windows.ts).

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { OutputRate } from "../src/agent/windows.js";
import { MitosError } from "../src/errors.js";
import { checkGuestLimits, guestLimitArgs } from "../src/guest-limits.js";
import { resolveLimits, SpendCaps } from "../src/limits.js";

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (e) {
    return e instanceof MitosError ? `${e.code}:${String(e.context.field ?? e.context.limit)}` : "other";
  }
};

describe("guest limits", () => {
  it("are checked against the template's RAM and become its kernel command line", () => {
    const g = checkGuestLimits({ commandMemoryMib: 300, commandPids: 64, writableMib: 128 }, 512);
    assert.deepEqual(guestLimitArgs(g), ["mitos.cmd_mem=300", "mitos.cmd_pids=64", "mitos.upper_size=128m"]);
    assert.deepEqual(guestLimitArgs(undefined), []);
    assert.equal(checkGuestLimits({}, 512), undefined);
    assert.equal(
      code(() => checkGuestLimits({ commandMemoryMib: 600 }, 512)),
      "invalid_input:guest.command_memory_mib",
    );
    assert.equal(
      code(() => checkGuestLimits({ commandPids: 3 }, 512)),
      "invalid_input:guest.command_pids",
    );
    assert.equal(
      code(() => checkGuestLimits({ writableMib: 1.5 }, 512)),
      "invalid_input:guest.writable_mib",
    );
    assert.equal(
      code(() => checkGuestLimits({ outputBytesPerSecond: 10 }, 512)),
      "invalid_input:guest.output_bytes_per_second",
    );
    assert.equal(
      code(() => checkGuestLimits({ gpus: 1 } as never, 512)),
      "invalid_input:guest.gpus",
    );
  });
});

describe("an owner's caps", () => {
  const caps = new SpendCaps(resolveLimits({}, 24 * 2 ** 30), (o) =>
    o === "acme" ? { maxSandboxes: 2, maxGuestMemoryMib: 1024, maxForkCount: 4, maxLifetimeSeconds: 600 } : undefined,
  );
  it("refuse past the owner's own limits, naming them, and leave other owners alone", () => {
    assert.equal(
      code(() => caps.admitOwner("acme", { sandboxes: 2, guestMemoryMib: 0 }, 1, 512)),
      "quota_exceeded:owner.max_sandboxes",
    );
    assert.equal(
      code(() => caps.admitOwner("acme", { sandboxes: 0, guestMemoryMib: 768 }, 1, 512)),
      "quota_exceeded:owner.max_guest_memory_mib",
    );
    assert.equal(
      code(() => caps.admitOwner("acme", { sandboxes: 0, guestMemoryMib: 0 }, 5, 1)),
      "quota_exceeded:owner.max_fork_count",
    );
    assert.equal(
      code(() => caps.admitOwner("acme", { sandboxes: 1, guestMemoryMib: 512 }, 1, 512)),
      undefined,
    );
    assert.equal(
      code(() => caps.admitOwner("globex", { sandboxes: 99, guestMemoryMib: 99_999 }, 50, 512)),
      undefined,
    );
  });
  it("shorten the lifetime to the owner's", () => {
    assert.equal(caps.maxLifetime("acme"), 600);
    assert.equal(caps.maxLifetime("globex"), caps.limits.maxLifetimeSeconds);
    assert.equal(
      code(() => caps.checkDeadline(Date.now(), 601, Date.now(), "acme")),
      "timeout_too_large:max_lifetime_seconds",
    );
  });
});

describe("the exec output rate", () => {
  it("allows a second's burst, then holds credit back in proportion to the excess", () => {
    const t = 1_000_000;
    const r = new OutputRate(1_000_000, t);
    r.add(900_000, t);
    assert.equal(r.delay(t), 0, "within the burst");
    r.add(1_000_000, t);
    const d = r.delay(t);
    assert.ok(d >= 900 && d <= 1000, `about 0.9 s for 0.9 MB over: ${d}`);
    assert.equal(r.delay(t + 2000), 0, "drained after two seconds");
  });
  it("charges every frame, so a flood of tiny writes is held back too", () => {
    const r = new OutputRate(65_536, 0);
    for (let i = 0; i < 1000; i++) r.add(1, 0);
    assert.ok(r.delay(0) > 0, "1000 one-byte frames cost 257 kB");
  });
});
