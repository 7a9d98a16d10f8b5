// Port forwarding (PORT_OPEN) through the real agent binary run on the host in
// test mode (`--listen`): the agent connects to servers on the host's loopback,
// which stands in for the guest's. Fast checks of the stream's semantics and
// its flow control; port-forward.test.ts runs it in a real VM.

import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import type { PortStream } from "../src/agent/port-stream.js";
import {
  DEFAULT_WINDOW,
  encodeFrame,
  Fields,
  FieldWriter,
  type Frame,
  FrameDecoder,
  MsgType,
  PORT_WINDOW,
  portOpenFields,
  SESSION_LEN,
  Tag,
} from "../src/agent/protocol.js";
import { guestDir } from "../src/config.js";
import type { MitosError } from "../src/errors.js";
import { roundTrip } from "./port-streams.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-fwd-"));
const sock = path.join(dir, "agent.sock");
let agentProc: ChildProcess;
let client: AgentClient;
const servers: net.Server[] = [];

/** A TCP server on `host` (port chosen by the kernel); `onConn` gets each connection. */
async function serve(onConn: (s: net.Socket) => void, host = "127.0.0.1"): Promise<number> {
  const server = net.createServer((s) => {
    s.on("error", () => {});
    onConn(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => resolve());
  });
  servers.push(server);
  return (server.address() as net.AddressInfo).port;
}

/** A port nothing listens on (bound and released). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const until = async (cond: () => boolean, ms: number, what: string) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);

let echoPort: number;
const echoOpen = new Set<net.Socket>();

before(async () => {
  execFileSync("make", ["-s", "-C", guestDir.agent]);
  agentProc = spawn(path.join(guestDir.agent, "build", "mitos-agent"), ["--listen", sock], { stdio: "ignore" });
  client = await AgentClient.connect(sock, 10_000);
  await client.waitReady(10_000);
  echoPort = await serve((s) => {
    echoOpen.add(s);
    s.on("close", () => echoOpen.delete(s));
    s.pipe(s);
  });
});

after(() => {
  client?.close("test done");
  agentProc?.kill("SIGKILL");
  for (const s of servers) s.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("port forward through the agent (host test mode)", () => {
  it("carries bytes both ways and ends cleanly on end()", async () => {
    const s = await client.openPort(echoPort);
    assert.equal(s.address, "127.0.0.1");
    const data = randomBytes(3 * 1024 * 1024 + 17);
    assert.ok((await roundTrip(s, data, 100_000)).equals(data));
    await new Promise((r) => (s.closed ? r(undefined) : s.once("close", r)));
    await until(() => echoOpen.size === 0, 2000, "the server's socket to close");
  });

  it("answers a refused port with a clear error, fast", async () => {
    const port = await freePort();
    const t0 = Date.now();
    await assert.rejects(client.openPort(port), (e: MitosError) => {
      assert.equal(e.code, "unavailable");
      assert.equal(e.context.errno, 111);
      assert.match(
        e.message,
        new RegExp(`connection refused: nothing listens on 127\\.0\\.0\\.1:${port} or \\[::1\\]`),
      );
      assert.match(e.remediation, /Start the server/);
      return true;
    });
    assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
  });

  it("refuses bad ports before asking the agent", async () => {
    for (const port of [0, -1, 65536, 1.5, Number.NaN]) {
      await assert.rejects(client.openPort(port), (e: MitosError) => e.code === "invalid_input");
    }
  });

  it("falls back to ::1 when 127.0.0.1 refuses", async (t) => {
    let port: number;
    try {
      port = await serve((s) => s.end("six\n"), "::1");
    } catch {
      t.skip("no IPv6 loopback on this host");
      return;
    }
    const s = await client.openPort(port);
    assert.equal(s.address, "::1");
    assert.equal((await roundTrip(s, Buffer.alloc(0))).toString(), "six\n");
  });

  it("runs 64 forwards at once, each byte-identical both ways", async () => {
    const before = client.events.length;
    const results = await Promise.all(
      Array.from({ length: 64 }, async () => {
        const data = randomBytes(256 * 1024 + Math.floor(Math.random() * 1000));
        const s = await client.openPort(echoPort);
        return (await roundTrip(s, data, 100_000)).equals(data);
      }),
    );
    assert.deepEqual(results, Array(64).fill(true));
    assert.equal(client.events.length, before, `agent complained: ${client.events.slice(before)}`);
  });

  it("half-close: the guest program reads EOF and can still answer", async () => {
    const port = await serve((s) => {
      let n = 0;
      s.on("data", (c: Buffer) => {
        n += c.length;
      });
      s.on("end", () => s.end(`got ${n}\n`));
    });
    const s = await client.openPort(port);
    assert.equal((await roundTrip(s, Buffer.alloc(100_000, 1))).toString(), "got 100000\n");
  });

  it("a slow reader holds the guest program back instead of buffering", async () => {
    const total = 48 * 1024 * 1024;
    let written = 0;
    const port = await serve((s) => {
      const chunk = Buffer.alloc(64 * 1024, 7);
      const pump = () => {
        while (written < total) {
          written += chunk.length;
          if (!s.write(chunk)) return void s.once("drain", pump);
        }
        s.end();
      };
      pump();
    });
    const s = await client.openPort(port);
    s.pause();
    await new Promise((r) => setTimeout(r, 1000));
    const stalledAt = written;
    // What has come through: the agent's credit, and no more, sits in the stream.
    assert.ok(s.readableLength <= DEFAULT_WINDOW, `host holds ${s.readableLength} bytes`);
    // The rest waits in the server (kernel socket buffers hold a few MiB).
    assert.ok(stalledAt < total / 2, `server wrote ${stalledAt} of ${total} bytes with nobody reading`);
    let got = 0;
    s.on("data", (c: Buffer) => {
      got += c.length;
    });
    s.resume();
    await new Promise((r) => s.once("end", r));
    assert.equal(got, total);
  });

  it("a flood from the host waits for the guest program instead of growing the agent", async () => {
    let paused!: net.Socket;
    const port = await serve((s) => {
      paused = s;
      s.pause(); // reads nothing
    });
    const rss0 = rssKiB(agentProc.pid!);
    const s = await client.openPort(port);
    let accepted = 0;
    const total = 64 * 1024 * 1024;
    const chunk = Buffer.alloc(256 * 1024, 3);
    const writer = (async () => {
      while (accepted < total) {
        const ok = s.write(chunk, () => {
          accepted += chunk.length;
        });
        if (!ok) await new Promise((r) => s.once("drain", r));
      }
    })();
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(accepted < total / 2, `host sent ${accepted} bytes into a program that reads nothing`);
    const grown = rssKiB(agentProc.pid!) - rss0;
    assert.ok(grown < 4 * 1024, `agent RSS grew ${grown} KiB`);
    let drained = 0;
    paused.on("data", (c: Buffer) => {
      drained += c.length;
    });
    paused.resume();
    await writer;
    s.end();
    await until(() => drained === total, 30_000, "the server to read everything");
  });

  it("destroy() closes the guest socket at once", async () => {
    let conn!: net.Socket;
    let closed = false;
    const port = await serve((c) => {
      conn = c;
      c.resume(); // reads, so it sees the EOF
      c.on("close", () => {
        closed = true;
      });
    });
    const s = await client.openPort(port);
    s.write("hello");
    await until(() => conn !== undefined, 2000, "the connection");
    s.destroy();
    await until(() => closed, 2000, "the server's socket to close");
    // The agent is fine afterwards.
    const again = await client.openPort(echoPort);
    assert.equal((await roundTrip(again, Buffer.from("ok"))).toString(), "ok");
  });

  it("a reset by the guest program destroys the stream with an error", async () => {
    const port = await serve((c) => c.once("data", () => c.resetAndDestroy()));
    const s = await client.openPort(port);
    const err = await new Promise<MitosError>((resolve) => {
      s.on("error", (e) => resolve(e as MitosError));
      s.resume();
      s.write("x");
    });
    assert.equal(err.code, "unavailable");
    assert.equal(err.context.errno, 104);
  });
});

describe("port forward protocol edges (raw frames)", () => {
  let raw: net.Socket;
  const frames: Frame[] = [];
  const dec = new FrameDecoder();

  before(async () => {
    // The agent serves one connection at a time: take it over.
    client.close("switching to a raw connection");
    raw = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(sock);
      s.once("connect", () => resolve(s));
      s.once("error", reject);
    });
    raw.on("data", (d: Buffer) => frames.push(...dec.push(d)));
  });

  after(() => raw?.destroy());

  const waitFrame = async (pred: (f: Frame) => boolean, what: string) => {
    await until(() => frames.some(pred), 5000, what);
    return frames.find(pred)!;
  };

  it("ends a stream whose host sends past the window, with EPROTO", async () => {
    raw.write(encodeFrame(MsgType.PORT_OPEN, 3, portOpenFields({ port: echoPort, window: 0 })));
    await waitFrame((f) => f.stream === 3 && f.type === MsgType.STARTED, "STARTED");
    // No credit (WINDOW 0): the echo comes back to nobody, so the agent's
    // socket fills and it stops acknowledging; then more than a window.
    for (let i = 0; i < 64; i++) raw.write(encodeFrame(MsgType.PORT_DATA, 3, Buffer.alloc(PORT_WINDOW, 1)));
    const err = await waitFrame((f) => f.stream === 3 && f.type === MsgType.ERROR, "ERROR");
    const f = Fields.parse(err.payload);
    assert.equal(f.int(Tag.ERRNO), 71); // EPROTO
    assert.match(f.str(Tag.MESSAGE) ?? "", /past the 262144 byte window/);
  });

  it("a HELLO with a new SESSION closes the previous session's forwards", async () => {
    const before = echoOpen.size;
    raw.write(encodeFrame(MsgType.PORT_OPEN, 5, portOpenFields({ port: echoPort })));
    await waitFrame((f) => f.stream === 5 && f.type === MsgType.STARTED, "STARTED");
    await until(() => echoOpen.size === before + 1, 2000, "the connection");
    raw.write(encodeFrame(MsgType.HELLO, 6, new FieldWriter().bytes(Tag.SESSION, randomBytes(SESSION_LEN)).build()));
    await waitFrame((f) => f.stream === 6 && f.type === MsgType.OK, "HELLO's OK");
    await until(() => echoOpen.size === before, 2000, "the detached forward's socket to close");
    const seen = frames.length;
    // Its id is free, and the old stream sends nothing more.
    raw.write(encodeFrame(MsgType.PORT_DATA, 5, Buffer.from("late")));
    raw.write(encodeFrame(MsgType.PORT_OPEN, 5, portOpenFields({ port: echoPort })));
    await waitFrame((f) => f.stream === 5 && f.type === MsgType.STARTED && frames.indexOf(f) >= seen, "new STARTED");
    assert.ok(
      frames.slice(seen).every((f) => f.stream !== 5 || f.type === MsgType.STARTED),
      `frames: ${JSON.stringify(frames.slice(seen).map((f) => [f.stream, f.type]))}`,
    );
    raw.write(encodeFrame(MsgType.PORT_CLOSE, 5));
    await waitFrame((f) => f.stream === 5 && f.type === MsgType.OK, "PORT_CLOSE's OK");
  });

  it("reports frames of the wrong kind on stream 0 and keeps the stream", async () => {
    raw.write(encodeFrame(MsgType.PORT_OPEN, 7, portOpenFields({ port: echoPort })));
    await waitFrame((f) => f.stream === 7 && f.type === MsgType.STARTED, "STARTED");
    const seen = frames.length;
    raw.write(encodeFrame(MsgType.STDIN, 7, Buffer.from("x")));
    raw.write(encodeFrame(MsgType.CREDIT, 7, new FieldWriter().int(Tag.BYTES, -1).build()));
    raw.write(encodeFrame(MsgType.PORT_DATA, 7, Buffer.from("still")));
    const echoed = await waitFrame((f) => f.stream === 7 && f.type === MsgType.DATA, "DATA");
    assert.equal(echoed.payload.toString(), "still");
    assert.equal(frames.slice(seen).filter((f) => f.stream === 0 && f.type === MsgType.ERROR).length, 2);
    raw.write(encodeFrame(MsgType.PORT_SHUTDOWN, 7));
    await waitFrame((f) => f.stream === 7 && f.type === MsgType.PORT_EOF, "PORT_EOF");
    await waitFrame((f) => f.stream === 7 && f.type === MsgType.OK, "OK");
  });
});

describe("port forward against a lying agent", () => {
  /** A fake agent that answers PORT_OPEN with STARTED, then runs `misbehave`. */
  async function fake(misbehave: (f: Frame, s: net.Socket) => void): Promise<AgentClient> {
    const path_ = path.join(dir, `fake-${Math.random().toString(36).slice(2)}.sock`);
    const server = net.createServer((s) => {
      s.on("error", () => {});
      const d = new FrameDecoder();
      s.on("data", (b) => {
        for (const f of d.push(b)) {
          if (f.type === MsgType.PORT_OPEN) {
            s.write(encodeFrame(MsgType.STARTED, f.stream, new FieldWriter().str(Tag.ADDRESS, "127.0.0.1").build()));
          }
          misbehave(f, s);
        }
      });
    });
    await new Promise<void>((r) => server.listen(path_, r));
    servers.push(server);
    return AgentClient.connect(path_, 2000);
  }

  const closedWith = async (c: AgentClient, s: PortStream, pattern: RegExp) => {
    const err = await new Promise<Error>((resolve) => s.once("error", resolve));
    assert.match(err.message, pattern);
    assert.ok(c.closed);
  };

  it("drops the connection when DATA exceeds the credit", async () => {
    const c = await fake((f, s) => {
      if (f.type === MsgType.PORT_OPEN) s.write(encodeFrame(MsgType.DATA, f.stream, Buffer.alloc(DEFAULT_WINDOW + 1)));
    });
    const s = await c.openPort(80);
    await closedWith(c, s, /protocol violation.*beyond its credit/);
  });

  it("drops the connection when PORT_ACK acknowledges bytes never sent", async () => {
    const c = await fake((f, s) => {
      if (f.type === MsgType.PORT_DATA) {
        s.write(
          encodeFrame(MsgType.PORT_ACK, f.stream, new FieldWriter().int(Tag.BYTES, f.payload.length + 1).build()),
        );
      }
    });
    const s = await c.openPort(80);
    s.write("abc");
    await closedWith(c, s, /protocol violation.*acknowledged 4 bytes/);
  });

  it("an ERROR right behind STARTED reaches the caller's 'error' listener, not the process", async () => {
    const c = await fake((f, s) => {
      if (f.type !== MsgType.PORT_OPEN) return;
      const e = new FieldWriter().int(Tag.ERRNO, 104).str(Tag.MESSAGE, "port 80: read from 127.0.0.1:80: reset");
      s.write(encodeFrame(MsgType.ERROR, f.stream, e.build()));
    });
    const s = await c.openPort(80);
    const err = await new Promise<MitosError>((resolve) => s.once("error", (e) => resolve(e as MitosError)));
    assert.equal(err.code, "unavailable");
    assert.ok(!c.closed, "an ordinary stream error keeps the connection");
    c.close("test done");
  });

  it("drops the connection on DATA after PORT_EOF", async () => {
    const c = await fake((f, s) => {
      if (f.type !== MsgType.PORT_OPEN) return;
      s.write(encodeFrame(MsgType.PORT_EOF, f.stream));
      s.write(encodeFrame(MsgType.DATA, f.stream, Buffer.from("late")));
    });
    const s = await c.openPort(80, { allowHalfOpen: true });
    s.resume();
    await closedWith(c, s, /protocol violation.*DATA after PORT_EOF/);
  });
});
