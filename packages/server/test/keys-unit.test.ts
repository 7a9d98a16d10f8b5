// Unit tests: API keys at rest (api-keys.ts, hashed-keys.ts) and per-sandbox
// tokens (sandbox-tokens.ts): hashed, shown once, revocable; tokens bound to
// the sandbox, its kind and its creation time, and unforgeable.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { MitosError } from "@mitos/engine";
import { ApiKeys, checkOwnerLimits, ownerLimitsJson } from "../src/api-keys.js";
import { SandboxTokens } from "../src/sandbox-tokens.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-keys-"));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const fails = (fn: () => unknown): string => {
  try {
    fn();
    return "ok";
  } catch (e) {
    return e instanceof MitosError ? `${e.code}:${String(e.context.field ?? "")}` : "other";
  }
};

describe("API keys", () => {
  it("are stored as hashes, found by value, listed without it and revoked", () => {
    const keys = new ApiKeys(dir);
    const a = keys.create({ scope: "tenant", tenant: "acme", limits: { maxSandboxes: 3 } });
    const admin = keys.create({ scope: "admin", name: "ops" });
    assert.match(a.key, /^mk_[0-9a-f]{48}$/);
    const onDisk = fs.readFileSync(path.join(dir, "keys.json"), "utf8");
    assert.ok(!onDisk.includes(a.key) && !onDisk.includes(admin.key));
    assert.equal(fs.statSync(path.join(dir, "keys.json")).mode & 0o777, 0o600);
    // A second instance reads what the first wrote (a restart).
    const again = new ApiKeys(dir);
    assert.equal(again.find(a.key)?.tenant, "acme");
    assert.equal(again.find(admin.key)?.scope, "admin");
    assert.equal(again.find(`${a.key}0`), undefined);
    assert.equal(again.find(undefined), undefined);
    assert.deepEqual(again.limitsOf("acme"), { maxSandboxes: 3 });
    assert.ok(again.list().every((k) => !("key" in k) && !("sha256" in k)));
    assert.ok(again.tenantHasKeys("acme"));
    again.revoke(a.id);
    assert.equal(again.find(a.key), undefined);
    assert.ok(!again.tenantHasKeys("acme"));
    assert.equal(
      fails(() => again.revoke(a.id)),
      "not_found:",
    );
  });

  it("a key for an existing tenant keeps its caps unless it gives new ones", () => {
    const keys = new ApiKeys(dir);
    keys.create({ scope: "tenant", tenant: "globex", limits: { maxForkCount: 4 } });
    keys.create({ scope: "tenant", tenant: "globex" });
    assert.deepEqual(keys.limitsOf("globex"), { maxForkCount: 4 });
    keys.create({ scope: "tenant", tenant: "globex", limits: { maxSandboxes: 9 } });
    assert.deepEqual(keys.limitsOf("globex"), { maxSandboxes: 9 });
  });

  it("refuse what makes no sense, naming the field", () => {
    const keys = new ApiKeys(dir);
    assert.equal(
      fails(() => keys.create({ scope: "root" as never })),
      "invalid_input:scope",
    );
    assert.equal(
      fails(() => keys.create({ scope: "tenant" })),
      "invalid_input:tenant",
    );
    assert.equal(
      fails(() => keys.create({ scope: "tenant", tenant: "../etc" })),
      "invalid_input:tenant",
    );
    assert.equal(
      fails(() => keys.create({ scope: "admin", tenant: "acme" })),
      "invalid_input:tenant",
    );
    assert.equal(
      fails(() => checkOwnerLimits({ max_sandboxes: 0 })),
      "invalid_input:limits.max_sandboxes",
    );
    assert.equal(
      fails(() => checkOwnerLimits({ max_gpus: 1 })),
      "invalid_input:limits.max_gpus",
    );
    assert.equal(
      fails(() => checkOwnerLimits([1])),
      "invalid_input:limits",
    );
    assert.deepEqual(ownerLimitsJson(checkOwnerLimits({ max_lifetime_seconds: 60 })), { max_lifetime_seconds: 60 });
  });
});

describe("per-sandbox tokens", () => {
  const created: Record<string, string> = { "sb-1": "2026-12-06T10:00:00.000Z", "sb-2": "2026-12-06T10:00:01.000Z" };
  const tokens = new SandboxTokens(dir, (id) => created[id]);

  it("verify for their own sandbox and kind only", () => {
    const r = tokens.issue("sb-1", created["sb-1"] as string, "runtime");
    const f = tokens.issue("sb-1", created["sb-1"] as string, "fork");
    assert.ok(SandboxTokens.looksLike(r));
    assert.deepEqual(tokens.verify(r), { sandbox: "sb-1", kind: "runtime" });
    assert.deepEqual(tokens.verify(f), { sandbox: "sb-1", kind: "fork" });
    assert.notEqual(r, tokens.issue("sb-2", created["sb-2"] as string, "runtime"));
  });

  it("refuse forged, altered, re-kinded and reused-id tokens", () => {
    const r = tokens.issue("sb-1", created["sb-1"] as string, "runtime");
    const mac = r.slice(r.lastIndexOf(".") + 2);
    assert.equal(tokens.verify(`msb_sb-2.r${mac}`), undefined, "another sandbox");
    assert.equal(tokens.verify(`msb_sb-1.f${mac}`), undefined, "another kind");
    assert.equal(tokens.verify(`${r.slice(0, -1)}${r.endsWith("A") ? "B" : "A"}`), undefined, "one character changed");
    assert.equal(tokens.verify("msb_sb-1.r"), undefined);
    assert.equal(tokens.verify("msb_.r"), undefined);
    assert.equal(tokens.verify(`msb_${"x".repeat(300)}`), undefined);
    assert.equal(tokens.verify("msb_nosuch.rAAAA"), undefined);
    created["sb-1"] = "2026-12-06T11:00:00.000Z"; // the id reused by a later sandbox
    assert.equal(tokens.verify(r), undefined);
    // Another secret (a rotated key file) verifies none of the old tokens.
    const other = new SandboxTokens(fs.mkdtempSync(path.join(dir, "other-")), (id) => created[id]);
    assert.equal(other.verify(tokens.issue("sb-2", created["sb-2"] as string, "runtime")), undefined);
  });
});
