// A new host process re-opening an agent channel that a dead one left
// mid-conversation (AgentClient.reconnect, HELLO's SESSION):
// * against a fake agent on a Unix socket: stale frames, noise and a cut frame
//   before the answer are skipped, a silent channel fails at the deadline;
// * against the real agent binary in test mode (--listen): what SESSION
//   detaches, and that the flush costs one ERROR;
// * in a real VM: the host is cut off mid-flood again and again, and the
//   sandbox's processes survive every reconnect.

import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import {
  encodeFrame,
  Fields,
  FieldWriter,
  type Frame,
  FrameDecoder,
  MsgType,
  RESYNC_FLUSH_BYTES,
  SESSION_LEN,
  Tag,
} from "../src/agent/protocol.js";
import { guestDir } from "../src/config.js";
import { AgentGoneError } from "../src/errors.js";
import { BUILTIN_RECIPES, defaultDataDir, defaultShmDir, ensureImages, Vm } from "../src/index.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-reconnect-"));
let n = 0;
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(r instanceof Error, "expected the call to fail");
  return r;
}

function ok(stream: number, fields: FieldWriter = new FieldWriter()): Buffer {
  return encodeFrame(MsgType.OK, stream, fields.build());
}

/** A fake agent; `onConnect` may write stale bytes first, `onFrame` answers what the client sends. */
async function fakeAgent(
  onFrame: (f: Frame, s: net.Socket) => void,
  onConnect: (s: net.Socket) => void = () => {},
): Promise<{ sock: string; decoders: FrameDecoder[]; close: () => void }> {
  const sock = path.join(dir, `fake-${n++}.sock`);
  const decoders: FrameDecoder[] = [];
  const peers: net.Socket[] = [];
  const server = net.createServer((s) => {
    peers.push(s);
    s.on("error", () => {});
    const dec = new FrameDecoder();
    decoders.push(dec);
    s.on("data", (d) => {
      for (const f of dec.push(d)) onFrame(f, s);
    });
    onConnect(s);
  });
  await new Promise<void>((r) => server.listen(sock, r));
  return {
    sock,
    decoders,
    close: () => {
      for (const p of peers) p.destroy();
      server.close();
    },
  };
}

describe("AgentClient.reconnect against a fake agent", () => {
  it("skips noise, stale frames, a cut frame and decoys before the answer, then works as usual", async () => {
    const hellos: Array<{ stream: number; session: Buffer | undefined }> = [];
    const fake = await fakeAgent(
      (f, s) => {
        if (f.type === MsgType.HELLO) {
          const session = Fields.parse(f.payload).bytes(Tag.SESSION);
          hellos.push({ stream: f.stream, session });
          if (!session) return void s.write(ok(f.stream, new FieldWriter().str(Tag.VERSION, "plain")));
          // Output of the dead host's streams, still on its way, then a frame cut in half.
          for (let i = 0; i < 8; i++) s.write(encodeFrame(MsgType.STDOUT, 1 + (i % 3), Buffer.alloc(32 * 1024, 0x4d)));
          s.write(encodeFrame(MsgType.STDOUT, 2, Buffer.alloc(1000, 0x61)).subarray(0, 300));
          // Decoys: the right stream with another session, the right session on another stream.
          s.write(ok(f.stream, new FieldWriter().bytes(Tag.SESSION, randomBytes(SESSION_LEN))));
          s.write(ok(f.stream ^ 1, new FieldWriter().bytes(Tag.SESSION, session)));
          s.write(ok(f.stream, new FieldWriter().str(Tag.VERSION, "fake").bytes(Tag.SESSION, session)));
          // Right behind the answer: a stream-0 event, which the ordinary decoder must see.
          s.write(encodeFrame(MsgType.ERROR, 0, new FieldWriter().str(Tag.MESSAGE, "after the answer").build()));
        } else if (f.type === MsgType.EXEC) {
          s.write(encodeFrame(MsgType.STARTED, f.stream, new FieldWriter().int(Tag.PID, 7).build()));
          s.write(encodeFrame(MsgType.STDOUT, f.stream, Buffer.from("hi\n")));
          s.write(encodeFrame(MsgType.EXIT, f.stream, new FieldWriter().int(Tag.EXIT_CODE, 0).build()));
        }
      },
      (s) => {
        // What the channel held before anyone asked: noise, and frames of streams nobody here opened.
        s.write(Buffer.from("\x00\x00garbage MT\x81\x00 not a frame"));
        s.write(encodeFrame(MsgType.EXIT, 9, new FieldWriter().int(Tag.EXIT_CODE, 1).build()));
      },
    );
    try {
      const client = await AgentClient.reconnect(fake.sock, 5000, { context: { console_log: "/fake/console.log" } });
      assert.equal(hellos.length, 1);
      const first = hellos[0]!;
      assert.ok(first.stream >= 0x8000_0000, `stream ${first.stream.toString(16)}`);
      assert.equal(first.session?.length, SESSION_LEN);
      // The flush came before HELLO: one resync run of exactly that many zero bytes.
      assert.equal(fake.decoders[0]?.dropped, RESYNC_FLUSH_BYTES);
      await waitFor("the event after the answer", () => client.events.includes("after the answer"), 2000);
      assert.equal((await client.hello(2000)).version, "plain");
      const r = await client.exec({ command: "echo hi" }).result;
      assert.equal(r.stdout.toString(), "hi\n");
      assert.equal(r.exitCode, 0);
      assert.equal(client.closed, false);
      client.close("test done");
    } finally {
      fake.close();
    }
  });

  it("fails clearly at the deadline when no answer comes, after retrying with the same session", async () => {
    const hellos: Buffer[] = [];
    const fake = await fakeAgent((f) => {
      if (f.type === MsgType.HELLO) hellos.push(Fields.parse(f.payload).bytes(Tag.SESSION) ?? Buffer.alloc(0));
    });
    try {
      const started = Date.now();
      const err = await rejection(
        AgentClient.reconnect(fake.sock, 2500, { context: { console_log: "/x/console.log" } }),
      );
      const took = Date.now() - started;
      assert.ok(err instanceof AgentGoneError);
      assert.match(err.message, /agent did not answer a resync within 2500 ms .*console log: \/x\/console\.log/);
      assert.ok(took >= 2400 && took < 5000, `failed after ${took} ms`);
      assert.ok(hellos.length >= 2, `${hellos.length} tries`);
      for (const s of hellos) assert.deepEqual(s, hellos[0]);
    } finally {
      fake.close();
    }
  });

  it("gives up on a channel that sends only garbage, long before the deadline", async () => {
    const fake = await fakeAgent(
      () => {},
      (s) => {
        const junk = Buffer.alloc(1 << 20, 0x20);
        let sent = 0;
        const pump = () => {
          while (sent < 80 && !s.destroyed) {
            sent++;
            if (!s.write(junk)) return void s.once("drain", pump);
          }
        };
        pump();
      },
    );
    try {
      const err = await rejection(AgentClient.reconnect(fake.sock, 60_000));
      assert.match(err.message, /agent channel sent \d+ bytes without answering the resync \(limit 67108864\)/);
    } finally {
      fake.close();
    }
  });

  it("fails with the connect error when there is no socket", async () => {
    const err = await rejection(AgentClient.reconnect(path.join(dir, "none.sock"), 200));
    assert.ok(err instanceof AgentGoneError);
    assert.match(err.message, /cannot connect to/);
  });
});

describe("HELLO with SESSION, in the real agent (test mode)", () => {
  const sock = path.join(dir, "agent.sock");
  let agentProc: ChildProcess;

  before(() => {
    execFileSync("make", ["-s", "-C", guestDir.agent]);
    agentProc = spawn(path.join(guestDir.agent, "build", "mitos-agent"), ["--listen", sock], { stdio: "ignore" });
  });
  after(() => {
    agentProc?.kill("SIGKILL");
  });

  /** A raw connection that records every frame it gets. */
  async function raw(): Promise<{ s: net.Socket; frames: Frame[] }> {
    const s = await new Promise<net.Socket>((resolve, reject) => {
      const t = Date.now();
      const tryOnce = () => {
        const c = net.createConnection(sock);
        c.once("connect", () => resolve(c));
        c.once("error", (e) => (Date.now() - t < 5000 ? setTimeout(tryOnce, 20) : reject(e)));
      };
      tryOnce();
    });
    const frames: Frame[] = [];
    const dec = new FrameDecoder();
    s.on("data", (d: Buffer) => frames.push(...dec.push(d)));
    return { s, frames };
  }

  const hello = (session?: Buffer) =>
    session ? new FieldWriter().bytes(Tag.SESSION, session).build() : Buffer.alloc(0);
  const exec = (command: string) => new FieldWriter().str(Tag.CMD, command).build();
  const on = (frames: Frame[], stream: number, type?: number) =>
    frames.filter((f) => f.stream === stream && (type === undefined || f.type === type));

  it("detaches the open streams on a new session (they run on), not on the same one again", async () => {
    const { s, frames } = await raw();
    const done = path.join(dir, "detached-done");
    try {
      s.write(encodeFrame(MsgType.EXEC, 1, exec(`echo started; sleep 1.5; echo finished > ${done}; echo late`)));
      await waitFor("the first exec's output", () => on(frames, 1, MsgType.STDOUT).length > 0);
      const a = randomBytes(SESSION_LEN);
      s.write(encodeFrame(MsgType.HELLO, 0x8000_0001, hello(a)));
      await waitFor("OK to the new session", () => on(frames, 0x8000_0001, MsgType.OK).length > 0);
      assert.deepEqual(Fields.parse(on(frames, 0x8000_0001)[0]!.payload).bytes(Tag.SESSION), a);
      const before1 = on(frames, 1).length;

      // Stream 1 is free again: a second exec there, and the same session again while it runs.
      s.write(encodeFrame(MsgType.EXEC, 1, exec("sleep 0.5; echo second")));
      await waitFor("the second exec to start", () => on(frames, 1, MsgType.STARTED).length === 2);
      s.write(encodeFrame(MsgType.HELLO, 0x8000_0002, hello(a)));
      await waitFor("OK to the retry", () => on(frames, 0x8000_0002, MsgType.OK).length > 0);
      await waitFor("the second exec's EXIT", () => on(frames, 1, MsgType.EXIT).length > 0);
      await waitFor("the detached command to finish", () => fs.existsSync(done), 5000);
      await sleep(300);
      const after1 = on(frames, 1).slice(before1);
      const out = Buffer.concat(after1.filter((f) => f.type === MsgType.STDOUT).map((f) => f.payload)).toString();
      assert.equal(out, "second\n", "the detached command's output was dropped");
      assert.equal(on(frames, 1, MsgType.EXIT).length, 1, "one EXIT, for the second exec only");
      assert.equal(Fields.parse(on(frames, 1, MsgType.EXIT)[0]!.payload).int(Tag.EXIT_CODE), 0);
      assert.equal(fs.readFileSync(done, "utf8"), "finished\n");

      // Without SESSION: as ever, and no SESSION in the answer.
      s.write(encodeFrame(MsgType.HELLO, 3, hello()));
      await waitFor("plain OK", () => on(frames, 3, MsgType.OK).length > 0);
      const plain = Fields.parse(on(frames, 3)[0]!.payload);
      assert.equal(plain.has(Tag.SESSION), false);
      assert.match(plain.str(Tag.VERSION) ?? "", /^\d+\.\d+\.\d+/);

      // A SESSION that is not 16 bytes is refused.
      s.write(encodeFrame(MsgType.HELLO, 4, new FieldWriter().bytes(Tag.SESSION, randomBytes(15)).build()));
      await waitFor("the refusal", () => on(frames, 4).length > 0);
      const bad = on(frames, 4)[0]!;
      assert.equal(bad.type, MsgType.ERROR);
      assert.equal(Fields.parse(bad.payload).int(Tag.ERRNO), 22);
      assert.deepEqual(on(frames, 0), [], "no stream-0 errors");
    } finally {
      s.destroy();
    }
  });

  it("completes a cut frame with the flush and reports the resync once", async () => {
    const { s, frames } = await raw();
    try {
      // A STAT frame cut off 3 bytes into its 50-byte payload, as a dying host leaves it.
      s.write(encodeFrame(MsgType.STAT, 7, Buffer.alloc(50)).subarray(0, 15));
      const session = randomBytes(SESSION_LEN);
      s.write(Buffer.alloc(RESYNC_FLUSH_BYTES));
      s.write(encodeFrame(MsgType.HELLO, 0x9000_0000, hello(session)));
      await waitFor("OK to the session", () => on(frames, 0x9000_0000, MsgType.OK).length > 0);
      await sleep(100);
      assert.equal(on(frames, 0, MsgType.ERROR).length, 1, JSON.stringify(on(frames, 0)));
      assert.match(Fields.parse(on(frames, 0)[0]!.payload).str(Tag.MESSAGE) ?? "", /resynchronising/);
      assert.equal(on(frames, 7).length, 1, "the completed frame got its own answer");
    } finally {
      s.destroy();
    }
  });

  it("AgentClient.reconnect gets a working client", async () => {
    const client = await AgentClient.reconnect(sock, 10_000);
    try {
      const r = await client.exec({ command: "echo ok" }).result;
      assert.equal(r.stdout.toString(), "ok\n");
      assert.equal(client.closed, false);
    } finally {
      client.close("test done");
    }
  });
});

describe("reconnecting to a real VM's agent", () => {
  let vm: Vm;

  before(async () => {
    const images = await ensureImages(BUILTIN_RECIPES.base!, { cacheDir: path.join(defaultDataDir(), "images") });
    vm = await Vm.boot({
      id: `test-reconnect-${process.pid}`,
      images,
      dataDir: defaultDataDir(),
      shmDir: defaultShmDir(),
      timeoutMs: 120_000,
    });
  });
  after(async () => {
    await vm?.destroy();
  });

  /** Drops the client like a dying host: optionally half a frame, then the socket, no goodbye. */
  function cutOff(client: AgentClient, halfFrame: boolean): void {
    const socket = (client as unknown as { socket: net.Socket }).socket;
    if (halfFrame) socket.write(encodeFrame(MsgType.EXEC, 77, exec("touch /tmp/never-run")).subarray(0, 20));
    socket.destroy();
  }
  const exec = (command: string) => new FieldWriter().str(Tag.CMD, command).build();

  /** Starts an exec that floods stdout and resolves once output is flowing. */
  async function flood(client: AgentClient, failures: Error[]): Promise<void> {
    let got = 0;
    const h = client.exec({
      command: "head -c 50000000 /dev/zero",
      collect: false,
      onStdout: (c) => {
        got += c.length;
      },
    });
    h.result.catch((e: Error) => failures.push(e));
    await waitFor("the flood to flow", () => got > 64 * 1024, 60_000);
  }

  it("keeps the sandbox's processes through 8 abrupt host deaths, mid-flood", async () => {
    const failures: Error[] = [];
    const first = vm.agent;
    // A background process, and a command whose stream is still open when the host dies.
    const bg = await first.exec({ command: "sleep 600 >/dev/null 2>&1 & echo $! > /tmp/bg.pid" }).result;
    assert.equal(bg.exitCode, 0);
    const fg = first.exec({ command: "echo $$ > /tmp/fg.pid; exec sleep 600" });
    fg.result.catch((e: Error) => failures.push(e));
    await fg.started;
    await flood(first, failures);
    cutOff(first, true);

    let client: AgentClient | undefined;
    for (let i = 0; i < 8; i++) {
      const started = Date.now();
      client = await AgentClient.reconnect(vm.paths.agentSocket, 60_000, {
        context: { vm: vm.id, console_log: vm.paths.consoleLog },
      });
      const took = Date.now() - started;
      assert.ok(took < 30_000, `reconnect ${i} took ${took} ms`);
      if (i % 2 === 0) {
        await flood(client, failures); // cut off mid-flood of a fresh exec
        cutOff(client, i % 4 === 0);
      } else if (i < 7) {
        cutOff(client, false); // cut off right after the resync
      }
    }
    assert.ok(client);
    const r = await client.exec({ command: "echo ok" }).result;
    assert.equal(r.stdout.toString(), "ok\n");
    assert.equal(r.exitCode, 0);
    const alive = await client.exec({
      command: "kill -0 $(cat /tmp/bg.pid) && kill -0 $(cat /tmp/fg.pid) && echo alive",
    }).result;
    assert.equal(alive.stdout.toString(), "alive\n", alive.stderr.toString());
    // The half-written EXEC of a dying host never ran.
    const never = await client.exec({ command: "test -e /tmp/never-run" }).result;
    assert.equal(never.exitCode, 1);
    assert.equal(client.closed, false);
    assert.ok(failures.length > 0);
    for (const e of failures) assert.doesNotMatch(e.message, /protocol violation/);
    for (const e of client.events) assert.doesNotMatch(e, /protocol violation/);
    client.close("test done");
  });
});
