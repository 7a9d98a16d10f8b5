// The agent binary run on the host in test mode (`--listen`), driven by the
// real client: fast checks of flow control and protocol robustness that do
// not need a VM. The same paths run in a VM in vm.test.ts.

import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import { DEFAULT_WINDOW, encodeFrame, FrameDecoder, MsgType } from "../src/agent/protocol.js";
import { guestDir } from "../src/config.js";
import type { MitosError } from "../src/errors.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-agent-"));
const sock = path.join(dir, "agent.sock");
let agentProc: ChildProcess;
let client: AgentClient;

before(async () => {
  execFileSync("make", ["-s", "-C", guestDir.agent]);
  agentProc = spawn(path.join(guestDir.agent, "build", "mitos-agent"), ["--listen", sock], { stdio: "ignore" });
  client = await AgentClient.connect(sock, 10_000);
  await client.waitReady(10_000);
});

after(() => {
  client?.close("test done");
  agentProc?.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("agent flow control", () => {
  it("stops sending output when the host grants no credit, and resumes when it does", async () => {
    let received = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const h = client.exec({
      command: "head -c 5000000 /dev/zero",
      collect: false,
      onStdout: async (c) => {
        received += c.length;
        await gate;
      },
    });
    await new Promise((r) => setTimeout(r, 700));
    // Without credit the agent may not exceed its window.
    assert.ok(received <= DEFAULT_WINDOW, `received ${received} bytes with no credit`);
    assert.ok(received > 0);
    release();
    const r = await h.result;
    assert.equal(r.exitCode, 0);
    assert.equal(received, 5_000_000);
  });

  it("forwards large stdin through the stdin window", async () => {
    const data = Buffer.alloc(3 * 1024 * 1024, 0x61);
    const h = client.exec({ command: "wc -c", stdin: true });
    await h.write(data);
    h.closeStdin();
    const r = await h.result;
    assert.equal(r.stdout.toString().trim(), String(data.length));
  });

  it("refuses fork-notify outside a VM instead of touching the host", async () => {
    await assert.rejects(client.forkNotify({ sandboxId: "x", hostname: "x" }), (e: MitosError) =>
      /only runs inside a VM/.test(e.message),
    );
  });
});

describe("agent robustness", () => {
  it("survives garbage and malformed frames and keeps answering", async () => {
    const raw = await new Promise<net.Socket>((resolve, reject) => {
      // The agent serves one connection at a time: borrow it.
      client.close("switching to a raw connection");
      const s = net.createConnection(sock);
      s.once("connect", () => resolve(s));
      s.once("error", reject);
    });
    const dec = new FrameDecoder();
    const frames: Array<{ type: number; stream: number }> = [];
    raw.on("data", (d: Buffer) => frames.push(...dec.push(d)));
    raw.write(Buffer.from("this is not a frame at all \x00\xff\x4d\x54\x01\x07"));
    // A field whose length runs past its payload, an unknown type, a truncated int.
    raw.write(encodeFrame(MsgType.STAT, 5, Buffer.from([20, 0, 0, 0, 50, 0x2f])));
    raw.write(encodeFrame(0x7e, 6));
    raw.write(encodeFrame(MsgType.EXEC, 8, Buffer.from([5, 0, 0, 0, 2, 0, 1])));
    raw.write(encodeFrame(MsgType.HELLO, 9));
    const until = Date.now() + 5000;
    while (!frames.some((f) => f.stream === 9 && f.type === MsgType.OK) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(
      frames.some((f) => f.stream === 9 && f.type === MsgType.OK),
      `frames: ${JSON.stringify(frames)}`,
    );
    assert.ok(frames.some((f) => f.stream === 5 && f.type === MsgType.ERROR));
    raw.destroy();
    client = await AgentClient.connect(sock, 5000);
    await client.waitReady(5000);
    const r = await client.exec({ command: "echo still-here" }).result;
    assert.equal(r.stdout.toString(), "still-here\n");
  });
});
