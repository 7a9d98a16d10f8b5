import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MitosError } from "../src/errors.js";
import { camelize, snakeToCamel, templateBody, toForkMany, toSandboxInfo, toTemplateInfo } from "../src/wire.js";

const wireSandbox = {
  id: "sb-0a1b2c3d",
  template_id: "python",
  parent_id: "sb-ffffffff",
  state: "ready",
  endpoint: "http://127.0.0.1:8080",
  created_at: "2025-01-01T00:00:00.000Z",
  deadline_unix: 1735690000,
  fork_time_ms: 41,
  accel: "kvm",
  memory: { private_bytes: 1024, shared_bytes: 4096 },
  network: { egress: "deny", allow_out: ["api.example.com:443"], deny_out: [] },
  domain: "localhost:8080",
};

describe("snake_case → camelCase", () => {
  it("renames keys", () => {
    assert.equal(snakeToCamel("deadline_unix"), "deadlineUnix");
    assert.equal(snakeToCamel("mem_size_mib"), "memSizeMib");
    assert.equal(snakeToCamel("id"), "id");
    assert.deepEqual(camelize({ a_b: [{ c_d: 1 }], e: null }), { aB: [{ cD: 1 }], e: null });
  });

  it("maps the sandbox object", () => {
    assert.deepEqual(toSandboxInfo(wireSandbox), {
      id: "sb-0a1b2c3d",
      templateId: "python",
      parentId: "sb-ffffffff",
      state: "ready",
      endpoint: "http://127.0.0.1:8080",
      createdAt: "2025-01-01T00:00:00.000Z",
      deadlineUnix: 1735690000,
      forkTimeMs: 41,
      accel: "kvm",
      memory: { privateBytes: 1024, sharedBytes: 4096 },
      hibernated: false,
      network: { egress: "deny", allowOut: ["api.example.com:443"], denyOut: [] },
      domain: "localhost:8080",
      tenant: null,
      token: undefined,
      forkToken: undefined,
    });
    const owned = toSandboxInfo({ ...wireSandbox, tenant: "acme", token: "msb_x.rA", fork_token: "msb_x.fB" });
    assert.deepEqual([owned.tenant, owned.token, owned.forkToken], ["acme", "msb_x.rA", "msb_x.fB"]);
    const bare = toSandboxInfo({ id: "x", template_id: "t", parent_id: null, network: null });
    assert.equal(bare.parentId, null);
    assert.equal(bare.memory, undefined);
    assert.equal(bare.network, undefined);
    assert.equal(toSandboxInfo({ ...wireSandbox, hibernated: true }).hibernated, true);
  });

  it("maps templates and the multi-fork answer", () => {
    assert.deepEqual(toTemplateInfo({ id: "python", ready: true, created_at: "c", creation_time_ms: 900 }), {
      id: "python",
      ready: true,
      createdAt: "c",
      creationTimeMs: 900,
    });
    const many = toForkMany({ sandboxes: [wireSandbox, { ...wireSandbox, id: "sb-2" }], fork_time_ms: 80 });
    assert.equal(many.forkTimeMs, 80);
    assert.deepEqual(
      many.sandboxes.map((s) => s.id),
      ["sb-0a1b2c3d", "sb-2"],
    );
  });

  it("rejects a sandbox without an id", () => {
    assert.throws(() => toSandboxInfo({ template_id: "x" }), MitosError);
    assert.throws(() => toSandboxInfo("nope"), MitosError);
  });
});

describe("camelCase → snake_case", () => {
  it("builds the template body and leaves env keys alone", () => {
    assert.deepEqual(
      templateBody("py", {
        image: "python",
        packages: ["numpy"],
        env: { MY_VAR: "1" },
        resources: { vcpuCount: 2, memSizeMib: 512 },
        initWaitSeconds: 3,
      }),
      {
        id: "py",
        image: "python",
        packages: ["numpy"],
        env: { MY_VAR: "1" },
        resources: { vcpu_count: 2, mem_size_mib: 512 },
        init_wait_seconds: 3,
      },
    );
  });
});
