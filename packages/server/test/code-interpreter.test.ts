// The code interpreter end to end (docs/code-interpreter.md): a real mitosd,
// python sandboxes with the Jupyter kernel started at template build, cells
// through the TS SDK, raw Connect (JSON and binary) and bidi RunCode, forks
// that carry the kernel's variables and reseed its random state, contexts,
// timeouts that interrupt, and a kernel that dies and comes back.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import zlib from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type RunCodeRequest,
  RunCodeRequestSchema,
  type RunCodeResponse,
  RunCodeResponseSchema,
  RunCodeStreamRequestSchema,
} from "@mitos/proto";
import { type Execution, NotFoundError, type Sandbox, SandboxServer } from "@mitos/sdk";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";
import { runtimeClient } from "../../../test-support/runtime-client.js";

const dataDir = tempDataDir("test-code-interpreter");
let daemon: Daemon;
let server: SandboxServer;
let sb: Sandbox;

before(async () => {
  daemon = await startMitosd(dataDir);
  server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
  sb = await server.fork("python");
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
});

/** Checks a PNG the way a decoder would: signature, IHDR, and IDAT that inflates to the image's size. */
function assertDecodablePng(b64: string): { width: number; height: number } {
  const png = Buffer.from(b64, "base64");
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  let off = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  while (off < png.length) {
    const len = png.readUInt32BE(off);
    const type = png.toString("ascii", off + 4, off + 8);
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      assert.equal(data[8], 8, "8 bits per channel");
      channels = ({ 2: 3, 6: 4, 0: 1, 4: 2 } as Record<number, number>)[data[9] ?? -1] ?? 0;
    } else if (type === "IDAT") idat.push(data);
    off += 12 + len;
  }
  assert.ok(width > 0 && height > 0 && channels > 0, "IHDR");
  const raw = zlib.inflateSync(Buffer.concat(idat));
  assert.equal(raw.length, height * (1 + width * channels), "inflated IDAT is one filter byte + a row per line");
  return { width, height };
}

describe("code interpreter", () => {
  it("keeps variables between cells: x = 41, then x + 1 is 42", async () => {
    const a = await sb.runCode("x = 41");
    assert.equal(a.exitCode, 0);
    assert.equal(a.text, undefined);
    const b = await sb.runCode("x + 1");
    assert.equal(b.exitCode, 0);
    assert.equal(b.text, "42");
    assert.equal(b.results[0]?.isMainResult, true);
  });

  it("streams print output before the cell ends", async () => {
    const seen: Array<{ text: string; at: number }> = [];
    const started = Date.now();
    const r = await sb.runCode("import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('second')", {
      onStdout: (text) => seen.push({ text, at: Date.now() }),
    });
    const ended = Date.now();
    assert.equal(r.exitCode, 0);
    assert.equal(r.logs.stdout.join(""), "first\nsecond\n");
    const first = seen.find((s) => s.text.includes("first"));
    assert.ok(first, "first arrived");
    assert.ok(ended - first.at >= 2000, `first came ${first.at - started} ms in, the cell ended at ${ended - started}`);
  });

  it("reports an exception with its name, value and traceback; exit code 1", async () => {
    const errors: string[] = [];
    const r = await sb.runCode("def f():\n    return 1/0\nf()", { onError: (e) => errors.push(e.name) });
    assert.equal(r.exitCode, 1);
    assert.equal(r.error?.name, "ZeroDivisionError");
    assert.equal(r.error?.value, "division by zero");
    assert.match(r.error?.traceback ?? "", /in f\(\)[\s\S]*ZeroDivisionError/);
    assert.ok(!(r.error?.traceback ?? "").includes("\u001b["), "plain text, no ANSI colours");
    assert.deepEqual(errors, ["ZeroDivisionError"]);
  });

  it("returns a matplotlib plot as a decodable PNG", async () => {
    const r = await sb.runCode(
      "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()",
    );
    assert.equal(r.exitCode, 0, r.error?.traceback);
    const img = r.results.find((x) => x.png !== undefined);
    assert.ok(img, `a PNG result among ${JSON.stringify(r.results.map((x) => Object.keys(x.data)))}`);
    assert.equal(img.isMainResult, false, "a plot is a display, not the cell's value");
    const { width, height } = assertDecodablePng(img.png ?? "");
    assert.ok(width >= 200 && height >= 150, `${width}x${height}`);
  });

  it("returns a pandas DataFrame as text/html and text/plain", async () => {
    const r = await sb.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})");
    assert.equal(r.exitCode, 0, r.error?.traceback);
    assert.match(r.results[0]?.html ?? "", /<table[\s\S]*<th>a<\/th>[\s\S]*<td>x<\/td>/);
    assert.match(r.text ?? "", /a\s+b\n0\s+1\s+x/);
  });

  it("interrupts a cell at its timeout (exit 124); the next cell still sees earlier variables", async () => {
    const started = Date.now();
    const r = await sb.runCode("while True:\n    pass", { timeoutSeconds: 3 });
    assert.equal(r.exitCode, 124);
    assert.equal(r.error?.name, "TimeoutError");
    assert.ok(Date.now() - started < 15_000, "interrupted promptly");
    const next = await sb.runCode("x + 1");
    assert.equal(next.text, "42", "the kernel kept x");
  });

  it("carries the kernel into fork children: same dataframe, fresh random state, own identity", async () => {
    const setup = await sb.runCode(
      "import random, numpy as np, pandas as pd, os\n" +
        "df = pd.DataFrame(np.arange(3000).reshape(1000, 3), columns=list('abc'))\n" +
        "seed_state = random.getstate()\n" +
        "df.shape",
    );
    assert.equal(setup.text, "(1000, 3)");
    const children = await sb.fork(4);
    try {
      const probe =
        "import json, os\nst = random.getstate() == seed_state\nprint(json.dumps([list(df.shape), random.random(), float(np.random.rand()), os.environ.get('MITOS_SANDBOX_ID'), st]))";
      const all = [sb, ...children];
      const outs = await Promise.all(all.map((s) => s.runCode(probe)));
      const rows = outs.map((o: Execution) => {
        assert.equal(o.exitCode, 0, o.error?.traceback);
        return JSON.parse(o.logs.stdout.join("")) as [number[], number, number, string, boolean];
      });
      for (const [i, row] of rows.entries()) {
        assert.deepEqual(row[0], [1000, 3], `df.shape in ${all[i]?.id}`);
        // Nothing drew since seed_state: only a reseed can have changed it, and only children were reseeded.
        assert.equal(row[4], i === 0, `${all[i]?.id}: random's state ${i === 0 ? "kept" : "reseeded"}`);
      }
      for (const [i, c] of children.entries()) assert.equal(rows[i + 1]?.[3], c.id, "the child's kernel knows its id");
      assert.equal(
        new Set(rows.map((r) => r[1])).size,
        all.length,
        `random.random() all differ: ${rows.map((r) => r[1])}`,
      );
      assert.equal(
        new Set(rows.map((r) => r[2])).size,
        all.length,
        `np.random.rand() all differ: ${rows.map((r) => r[2])}`,
      );
      // And they diverge: a child's change stays in that child.
      await children[0]?.runCode("df['d'] = 1");
      assert.equal((await children[0]?.runCode("df.shape"))?.text, "(1000, 4)");
      assert.equal((await children[1]?.runCode("df.shape"))?.text, "(1000, 3)");
      assert.equal((await sb.runCode("df.shape")).text, "(1000, 3)");
    } finally {
      await Promise.all(children.map((c) => c.terminate()));
    }
  });

  it("wakes the kernel at a fork only while it has work: idle it reseeds at its next cell, a thread it left running is reseeded at once", async () => {
    const registered = async (s: Sandbox) => (await s.exec("ls /run/mitos/notify")).stdout.trim();
    // An idle kernel is not signalled (the test above shows its next cell reseeds).
    assert.equal((await sb.runCode("1 + 1")).text, "2");
    assert.equal(await registered(sb), "", "an idle kernel is not registered for fork notices");
    // A running cell's kernel is (a fork now would copy the cell mid-way).
    const running = sb.runCode("import os, time\nwhile not os.path.exists('/tmp/go-cell'):\n    time.sleep(0.02)");
    let during = "";
    for (let i = 0; i < 200 && during === ""; i++) {
      during = await registered(sb);
      if (during === "") await new Promise((res) => setTimeout(res, 50));
    }
    await sb.exec("touch /tmp/go-cell");
    assert.equal((await running).exitCode, 0);
    assert.notEqual(during, "", "a kernel running a cell is registered for fork notices");
    assert.equal(await registered(sb), "", "and off again once the cell is over");
    // A cell that leaves a thread running: it draws after the fork, with no cell in between.
    const started = await sb.runCode(
      "import threading, time, random, os\n" +
        "def _draw():\n" +
        "    while not os.path.exists('/tmp/go'):\n" +
        "        time.sleep(0.02)\n" +
        "    open('/tmp/drawn', 'w').write(repr(random.random()))\n" +
        "threading.Thread(target=_draw, daemon=True).start()",
    );
    assert.equal(started.exitCode, 0, started.error?.traceback);
    assert.notEqual(await registered(sb), "", "a kernel with a thread of the user's stays registered");
    const children = await sb.fork(2);
    try {
      const drawn = await Promise.all(
        [sb, ...children].map(async (s) => {
          await s.exec("touch /tmp/go");
          for (let i = 0; i < 200; i++) {
            const r = await s.exec("cat /tmp/drawn 2>/dev/null");
            if (r.stdout) return r.stdout;
            await new Promise((res) => setTimeout(res, 50));
          }
          throw new Error(`${s.id}: the thread never drew`);
        }),
      );
      assert.equal(new Set(drawn).size, 3, `the thread drew a number of its own in each sandbox: ${drawn}`);
    } finally {
      await Promise.all(children.map((c) => c.terminate()));
    }
  });

  it("keeps contexts apart: create, list, restart, remove", async () => {
    const ctx = await sb.createCodeContext();
    assert.equal(ctx.language, "python");
    assert.equal(ctx.cwd, "/workspace");
    const missing = await sb.runCode("x", { context: ctx });
    assert.equal(missing.error?.name, "NameError", "a new context has its own namespace");
    assert.equal((await sb.runCode("y = 'mine'", { context: ctx })).exitCode, 0);
    assert.equal((await sb.runCode("y", { context: ctx })).text, "'mine'");
    assert.equal((await sb.runCode("'y' in globals()")).text, "False", "the default context does not see y");
    const ids = (await sb.listCodeContexts()).map((c) => c.id).sort();
    assert.deepEqual(ids, ["default", ctx.id].sort());
    await sb.restartCodeContext(ctx);
    assert.equal((await sb.runCode("y", { context: ctx })).error?.name, "NameError", "restart clears it");
    await sb.removeCodeContext(ctx);
    assert.deepEqual(
      (await sb.listCodeContexts()).map((c) => c.id),
      ["default"],
    );
    await assert.rejects(sb.runCode("1", { context: ctx.id }), NotFoundError);
    await assert.rejects(sb.removeCodeContext("default"), /default context cannot be removed/);
  });

  it("restarts a kernel that died, and says so", async () => {
    const r = await sb.runCode("import os\nos._exit(3)");
    assert.equal(r.exitCode, 1);
    assert.equal(r.error?.name, "DeadKernelError");
    assert.match(r.error?.value ?? "", /restarted/);
    const next = await sb.runCode("1 + 1");
    assert.equal(next.text, "2");
    assert.equal((await sb.runCode("'x' in globals()")).text, "False", "its variables are gone, as it said");
    await sb.runCode("x = 41");
  });

  it("feeds stdin to input() over the bidi RunCode", async () => {
    const client = runtimeClient(daemon, sb.id, { httpVersion: "2" });
    async function* requests(): AsyncGenerator<RunCodeRequest> {
      yield create(RunCodeRequestSchema, {
        msg: { case: "open", value: { code: "name = input('name? ')\nprint('hello', name)" } },
      });
      yield create(RunCodeRequestSchema, { msg: { case: "stdin", value: Buffer.from("mitos\n") } });
    }
    const out: RunCodeResponse[] = [];
    for await (const m of client.runCode(requests())) out.push(m);
    const stdout = out
      .filter((m) => m.msg.case === "stdout")
      .map((m) => Buffer.from(m.msg.value as Uint8Array).toString())
      .join("");
    assert.equal(stdout, "name? hello mitos\n");
    assert.deepEqual(out.at(-1)?.msg, { case: "exitCode", value: 0 });
  });

  it("a sandbox without the interpreter answers exit code 127 with a clear error", async () => {
    await server.createTemplate("ci-bare", { image: "base" });
    const bare = await server.fork("ci-bare");
    try {
      const r = await bare.runCode("1");
      assert.equal(r.exitCode, 127);
      assert.equal(r.error?.name, "KernelUnavailable");
      assert.match(r.error?.value ?? "", /no code interpreter/);
    } finally {
      await bare.terminate();
      await server.deleteTemplate("ci-bare");
    }
  });
});

describe("RunCodeStream on the wire (UPSTREAM-WIRE.md)", () => {
  /** Splits a Connect streaming body into its envelopes (flags, payload). */
  function envelopes(body: Buffer): Array<{ flags: number; data: Buffer }> {
    const out: Array<{ flags: number; data: Buffer }> = [];
    for (let off = 0; off < body.length; ) {
      const flags = body[off] ?? 0;
      const len = body.readUInt32BE(off + 1);
      out.push({ flags, data: body.subarray(off + 5, off + 5 + len) });
      off += 5 + len;
    }
    return out;
  }

  async function post(contentType: string, payload: Buffer): Promise<Buffer> {
    const head = Buffer.alloc(5);
    head.writeUInt32BE(payload.length, 1);
    const res = await fetch(`${daemon.url}/sandbox.v1.Sandbox/RunCodeStream`, {
      method: "POST",
      headers: {
        "content-type": contentType,
        "connect-protocol-version": "1",
        authorization: `Bearer ${daemon.token}`,
        "x-sandbox-id": sb.id,
      },
      body: Buffer.concat([head, payload]),
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), contentType);
    return Buffer.from(await res.arrayBuffer());
  }

  it("JSON: stdout, a result with a MIME map of base64 bytes, and exitCode 0 present", async () => {
    const body = await post("application/connect+json", Buffer.from(JSON.stringify({ code: "print('hi')\n6 * 7" })));
    const frames = envelopes(body);
    const end = frames.pop();
    assert.equal(end?.flags, 2, "end-of-stream envelope last");
    assert.deepEqual(JSON.parse(end?.data.toString() ?? ""), {});
    const msgs = frames.map((f) => JSON.parse(f.data.toString()) as Record<string, unknown>);
    assert.deepEqual(msgs[0], { stdout: Buffer.from("hi\n").toString("base64") });
    assert.deepEqual(msgs[1], { result: { text: "42", data: { "text/plain": Buffer.from("42").toString("base64") } } });
    assert.deepEqual(msgs.at(-1), { exitCode: 0 }, "the exit_code frame is sent also when 0");
  });

  it("binary: the same frames as protobuf, exit_code 1 after an error frame", async () => {
    const req = toBinary(RunCodeStreamRequestSchema, create(RunCodeStreamRequestSchema, { code: "1/0" }));
    const frames = envelopes(await post("application/connect+proto", Buffer.from(req)));
    assert.equal(frames.pop()?.flags, 2);
    const msgs = frames.map((f) => fromBinary(RunCodeResponseSchema, f.data).msg);
    const err = msgs.find((m) => m.case === "error");
    assert.equal(err?.case === "error" ? err.value.name : "", "ZeroDivisionError");
    assert.ok(err?.case === "error" && err.value.traceback.length > 1, "traceback lines");
    assert.deepEqual(msgs.at(-1), { case: "exitCode", value: 1 });
  });

  it("refuses a language it does not serve, before running anything", async () => {
    const body = await post("application/connect+json", Buffer.from(JSON.stringify({ code: "1", language: "r" })));
    const end = envelopes(body).pop();
    const e = JSON.parse(end?.data.toString() ?? "{}") as { error?: { code: string; message: string } };
    assert.equal(e.error?.code, "invalid_argument");
    assert.match(e.error?.message ?? "", /language "r" is not served/);
  });
});
