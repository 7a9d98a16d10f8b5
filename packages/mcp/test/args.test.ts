// Argument normalisation (ours and the upstream Mitos names) and the error
// results, without mitosd: the pure functions, then the tools over an
// in-memory MCP transport against a mitosd address where nothing listens.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { InvalidInputError } from "@mitos/sdk";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { either, rejectUnknown } from "../src/args.js";
import { createMcpServer } from "../src/server.js";

describe("either", () => {
  it("takes our name or the upstream name", () => {
    assert.equal(either("t", ["sandbox_id", "sb-1"], ["sandbox", undefined], true), "sb-1");
    assert.equal(either("t", ["sandbox_id", undefined], ["sandbox", "sb-2"], true), "sb-2");
    assert.equal(either("t", ["count", 3], ["replicas", 3]), 3);
    assert.equal(either("t", ["count", undefined], ["replicas", undefined]), undefined);
  });

  it("refuses two different values, naming both keys", () => {
    assert.throws(
      () => either("sandbox_create", ["template", "python"], ["pool", "base"], true),
      (e: unknown) =>
        e instanceof InvalidInputError &&
        e.code === "invalid_input" &&
        e.message.includes('"template"') &&
        e.message.includes('"pool"') &&
        e.message.includes("python") &&
        e.message.includes("base"),
    );
  });

  it("refuses a required argument given under neither name", () => {
    assert.throws(
      () => either("sandbox_exec", ["sandbox_id", undefined], ["sandbox", undefined], true),
      (e: unknown) => e instanceof InvalidInputError && /sandbox_id/.test(e.message) && /sandbox"/.test(e.message),
    );
  });
});

describe("rejectUnknown", () => {
  it("passes known keys and names unknown ones", () => {
    rejectUnknown("t", { a: 1, b: 2 }, ["a", "b", "c"]);
    assert.throws(
      () => rejectUnknown("sandbox_exec", { sandbox: "x", cmd: "ls", cwd: "/" }, ["sandbox", "command"]),
      (e: unknown) =>
        e instanceof InvalidInputError &&
        e.message === 'sandbox_exec: unknown arguments "cmd", "cwd"' &&
        e.remediation.includes("sandbox, command"),
    );
  });
});

interface TextResult {
  isError?: boolean;
  content: Array<{ type: string; text?: string }>;
}

describe("tools, without mitosd", () => {
  let client: Client;

  before(async () => {
    const [a, b] = InMemoryTransport.createLinkedPair();
    // Port 9 (discard): nothing listens, so any call that gets past argument checks fails to connect.
    await createMcpServer({ baseUrl: "http://127.0.0.1:9", apiKey: "test", maxRetries: 0 }).connect(a);
    client = new Client({ name: "mitos-test", version: "0.0.1" });
    await client.connect(b);
  });
  after(async () => {
    await client?.close();
  });

  async function callError(name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
    const r = (await client.callTool({ name, arguments: args })) as TextResult;
    assert.equal(r.isError, true, `${name} should fail: ${r.content[0]?.text}`);
    return JSON.parse(r.content[0]?.text ?? "null") as Record<string, unknown>;
  }

  it("advertises both names and no other arguments", async () => {
    const { tools } = await client.listTools();
    const props = (name: string) => {
      const t = tools.find((x) => x.name === name);
      assert.ok(t, name);
      assert.equal(t.inputSchema.additionalProperties, false, `${name}: additionalProperties`);
      return t.inputSchema;
    };
    const keys = (name: string) => Object.keys(props(name).properties ?? {}).sort();
    assert.deepEqual(keys("sandbox_create"), ["network", "pool", "template", "timeout_seconds"]);
    assert.deepEqual(keys("sandbox_exec"), ["command", "sandbox", "sandbox_id", "timeout_seconds"]);
    assert.deepEqual(keys("sandbox_fork"), ["count", "replicas", "sandbox", "sandbox_id"]);
    assert.deepEqual(keys("sandbox_read_file"), ["path", "sandbox", "sandbox_id"]);
    assert.deepEqual(keys("sandbox_write_file"), ["content", "path", "sandbox", "sandbox_id"]);
    assert.deepEqual(keys("sandbox_terminate"), ["sandbox", "sandbox_id"]);
    assert.deepEqual(keys("sandbox_list"), []);
    assert.deepEqual(props("sandbox_exec").required, ["command"]);
    const exec = props("sandbox_exec").properties as Record<string, { description?: string }>;
    assert.match(exec.sandbox?.description ?? "", /upstream/);
    const fork = props("sandbox_fork").properties as Record<string, { description?: string }>;
    assert.match(fork.replicas?.description ?? "", /upstream.*count/);
    const create = props("sandbox_create").properties as Record<string, { description?: string }>;
    assert.match(create.pool?.description ?? "", /upstream.*template/);
  });

  it("refuses an unknown argument by name, as a JSON error", async () => {
    const e = await callError("sandbox_exec", { sandbox: "sb-1", command: "true", cwd: "/tmp" });
    assert.equal(e.code, "invalid_input");
    assert.match(String(e.message), /unknown argument "cwd"/);
    assert.equal(typeof e.remediation, "string");
    assert.ok(!("cause" in e), "no cause key when there is no cause");
    const list = await callError("sandbox_list", { all: true });
    assert.match(String(list.message), /"all"/);
  });

  it("refuses template and pool that differ, and neither", async () => {
    const e = await callError("sandbox_create", { template: "python", pool: "base" });
    assert.equal(e.code, "invalid_input");
    assert.match(String(e.message), /"template" and "pool"/);
    const none = await callError("sandbox_create", {});
    assert.match(String(none.message), /missing argument "template" \(or its upstream name "pool"\)/);
  });

  it("refuses sandbox_id and sandbox that differ, count and replicas that differ", async () => {
    const ids = await callError("sandbox_terminate", { sandbox_id: "sb-1", sandbox: "sb-2" });
    assert.match(String(ids.message), /"sandbox_id" and "sandbox"/);
    const n = await callError("sandbox_fork", { sandbox: "sb-1", count: 2, replicas: 3 });
    assert.match(String(n.message), /"count" and "replicas"/);
    const missing = await callError("sandbox_read_file", { path: "/etc/hostname" });
    assert.match(String(missing.message), /missing argument "sandbox_id"/);
  });

  it("gets past the checks with upstream names alone (then fails to reach mitosd, as a JSON error)", async () => {
    for (const [name, args] of [
      ["sandbox_create", { pool: "python" }],
      ["sandbox_exec", { sandbox: "sb-1", command: "true", timeout_seconds: 5 }],
      ["sandbox_fork", { sandbox: "sb-1", replicas: 2 }],
      ["sandbox_read_file", { sandbox: "sb-1", path: "/etc/hostname" }],
      ["sandbox_write_file", { sandbox: "sb-1", path: "/tmp/x", content: "x" }],
      ["sandbox_terminate", { sandbox: "sb-1" }],
      ["sandbox_create", { template: "python", pool: "python" }],
    ] as const) {
      const e = await callError(name, args);
      assert.notEqual(e.code, "invalid_input", `${name}: ${JSON.stringify(e)}`);
      assert.equal(typeof e.code, "string");
      assert.equal(typeof e.remediation, "string");
      assert.ok(!("cause" in e) || typeof e.cause === "string", `${name}: cause must be a string or absent`);
    }
  });
});
