// mitos-mcp driven by the official MCP client over stdio, against a real
// mitosd and real VMs.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, repoRoot, startMitosd } from "../../../test-support/mitosd.js";

const dataDir = tempDataDir("test-mcp");
let daemon: Daemon;
let client: Client;

interface TextResult {
  isError?: boolean;
  content: Array<{ type: string; text?: string }>;
}

async function call<T>(name: string, args: Record<string, unknown> = {}): Promise<T> {
  const r = (await client.callTool({ name, arguments: args })) as TextResult;
  assert.ok(!r.isError, `${name} failed: ${r.content[0]?.text}`);
  return JSON.parse(r.content[0]?.text ?? "null") as T;
}

let binDir = "";

before(async () => {
  daemon = await startMitosd(dataDir);
  client = new Client({ name: "mitos-test", version: "0.0.1" });
  // As in the API.md client config {"mcpServers": {"mitos": {"command": "mitos-mcp"}}}:
  // the built command on PATH, as setup.sh links it into /usr/local/bin.
  binDir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-bin-"));
  fs.symlinkSync(path.join(repoRoot, "packages/mcp/dist/bin/mitos-mcp.js"), path.join(binDir, "mitos-mcp"));
  const env = { ...daemon.env, PATH: `${binDir}:${process.env.PATH}` };
  await client.connect(
    new StdioClientTransport({ command: "mitos-mcp", env: env as Record<string, string>, cwd: repoRoot }),
  );
});

after(async () => {
  await client?.close();
  await daemon?.stop();
  removeDataDir(dataDir);
  if (binDir) fs.rmSync(binDir, { recursive: true, force: true });
});

describe("mitos-mcp", () => {
  it("lists its tools with descriptions and input schemas", async () => {
    const { tools } = await client.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), [
      "run_code",
      "sandbox_checkpoint",
      "sandbox_create",
      "sandbox_exec",
      "sandbox_fork",
      "sandbox_list",
      "sandbox_read_file",
      "sandbox_restore",
      "sandbox_terminate",
      "sandbox_write_file",
    ]);
    for (const t of tools) {
      assert.ok((t.description ?? "").length > 30, `${t.name} needs a description`);
      assert.equal(t.inputSchema.type, "object");
    }
  });

  it("run_code keeps state in the kernel and returns plots as image content", async () => {
    const sb = await call<{ id: string }>("sandbox_create", { template: "python" });
    try {
      await call("run_code", { sandbox_id: sb.id, code: "x = 41" });
      const r = await call<{ exit_code: number; text: string }>("run_code", { sandbox: sb.id, code: "x + 1" });
      assert.deepEqual([r.exit_code, r.text], [0, "42"]);
      const plot = (await client.callTool({
        name: "run_code",
        arguments: { sandbox_id: sb.id, code: "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()" },
      })) as { isError?: boolean; content: Array<{ type: string; text?: string; data?: string; mimeType?: string }> };
      assert.ok(!plot.isError, plot.content[0]?.text);
      const img = plot.content.find((c) => c.type === "image");
      assert.equal(img?.mimeType, "image/png");
      assert.deepEqual([...Buffer.from(img?.data ?? "", "base64").subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
      const err = await call<{ exit_code: number; error: { name: string } }>("run_code", {
        sandbox_id: sb.id,
        code: "1/0",
      });
      assert.deepEqual([err.exit_code, err.error.name], [1, "ZeroDivisionError"]);
    } finally {
      await call("sandbox_terminate", { sandbox_id: sb.id });
    }
  });

  it("creates, forks 3 ways, runs in each child, reads and writes files, terminates", async () => {
    const sb = await call<{ id: string }>("sandbox_create", { template: "python" });
    await call("sandbox_write_file", { sandbox_id: sb.id, path: "/root/seed.txt", content: "from the parent\n" });
    const { children } = await call<{ children: string[] }>("sandbox_fork", { sandbox_id: sb.id, count: 3 });
    assert.equal(children.length, 3);
    const outs = await Promise.all(
      children.map((id, i) =>
        call<{ exit_code: number; stdout: string }>("sandbox_exec", {
          sandbox_id: id,
          command: `python3 -c 'print(${i} * 10)'; cat /root/seed.txt; hostname`,
        }),
      ),
    );
    outs.forEach((o, i) => {
      assert.deepEqual(Object.keys(o).sort(), ["exit_code", "stderr", "stdout"]);
      assert.equal(o.exit_code, 0);
      assert.equal(o.stdout, `${i * 10}\nfrom the parent\n${children[i]}\n`);
    });
    const file = await call<{ content: string }>("sandbox_read_file", {
      sandbox_id: children[0],
      path: "/root/seed.txt",
    });
    assert.equal(file.content, "from the parent\n");
    const listed = await call<Array<{ id: string; parent: string | null }>>("sandbox_list");
    for (const id of children) assert.equal(listed.find((s) => s.id === id)?.parent, sb.id);
    for (const id of [...children, sb.id]) await call("sandbox_terminate", { sandbox_id: id });
  });

  it("takes the upstream Mitos argument names and answers in its shapes", async () => {
    const sb = await call<{ id: string; template: string }>("sandbox_create", { pool: "python" });
    assert.equal(sb.template, "python");
    await call("sandbox_write_file", { sandbox: sb.id, path: "/root/seed.txt", content: "upstream\n" });
    // Upstream's fork answer: a bare JSON array of the children's ids.
    const children = await call<string[]>("sandbox_fork", { sandbox: sb.id, replicas: 2 });
    assert.ok(Array.isArray(children), JSON.stringify(children));
    assert.equal(children.length, 2);
    for (const id of children) assert.match(id, /^sb-/);
    const raw = (await client.callTool({
      name: "sandbox_exec",
      arguments: { sandbox: children[1], command: "cat /root/seed.txt; echo oops >&2; exit 3", timeout_seconds: 60 },
    })) as TextResult;
    assert.ok(!raw.isError, raw.content[0]?.text);
    // Exactly {exit_code, stdout, stderr}, in that order.
    assert.deepEqual(JSON.parse(raw.content[0]?.text ?? "null"), {
      exit_code: 3,
      stdout: "upstream\n",
      stderr: "oops\n",
    });
    assert.deepEqual(Object.keys(JSON.parse(raw.content[0]?.text ?? "{}")), ["exit_code", "stdout", "stderr"]);
    const file = await call<{ content: string }>("sandbox_read_file", { sandbox: children[0], path: "/root/seed.txt" });
    assert.equal(file.content, "upstream\n");
    for (const id of [...children, sb.id]) await call("sandbox_terminate", { sandbox: id });
  });

  it("checkpoints a sandbox and restores two from it", async () => {
    const sb = await call<{ id: string }>("sandbox_create", { template: "python" });
    await call("sandbox_write_file", { sandbox_id: sb.id, path: "/workspace/cp.txt", content: "saved\n" });
    const cp = await call<{ id: string; name: string; bytes: number }>("sandbox_checkpoint", {
      sandbox_id: sb.id,
      name: "mcp",
    });
    assert.match(cp.id, /^cp-/);
    assert.equal(cp.name, "mcp");
    assert.ok(cp.bytes > 0);
    const ids = await call<string[]>("sandbox_restore", { checkpoint: cp.id, count: 2 });
    assert.equal(ids.length, 2);
    for (const id of ids) {
      const f = await call<{ content: string }>("sandbox_read_file", { sandbox_id: id, path: "/workspace/cp.txt" });
      assert.equal(f.content, "saved\n");
    }
    for (const id of [...ids, sb.id]) await call("sandbox_terminate", { sandbox_id: id });
  });

  it("returns errors as tool results carrying {code, cause?, remediation}", async () => {
    for (const args of [
      { sandbox_id: "no-such-box", command: "true" },
      { sandbox: "no-such-box", command: "true" },
    ]) {
      const r = (await client.callTool({ name: "sandbox_exec", arguments: args })) as TextResult;
      assert.equal(r.isError, true);
      const e = JSON.parse(r.content[0]?.text ?? "{}") as { code: string; cause?: unknown; remediation: string };
      assert.equal(e.code, "not_found");
      assert.ok(e.remediation.length > 0);
      assert.ok(
        !("cause" in e) || typeof e.cause === "string",
        `cause must be a string or absent: ${r.content[0]?.text}`,
      );
    }
  });
});
