// AgentClient against a fake agent that is hostile: it speaks over a real Unix
// socket and sends garbage, malformed fields, frames for streams nobody
// opened, floods of output beyond its credit. The client must close that one
// connection with a clear error (failing its calls), never throw out of an
// event handler, and never hold more than a window of data.

import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import {
  DEFAULT_WINDOW,
  encodeFrame,
  FieldWriter,
  type Frame,
  FrameDecoder,
  MAX_PAYLOAD,
  MsgType,
  Tag,
} from "../src/agent/protocol.js";
import { AgentGoneError } from "../src/errors.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-hostile-"));
let n = 0;
const uncaught: unknown[] = [];
process.on("uncaughtException", (e) => uncaught.push(e));

after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A fake agent: `onRequest` gets each frame the client sends and the socket to answer on. */
async function fakeAgent(
  onRequest: (f: Frame, peer: net.Socket) => void,
): Promise<{ client: AgentClient; peer: Promise<net.Socket>; close: () => void }> {
  const sock = path.join(dir, `agent-${n++}.sock`);
  let gotPeer!: (s: net.Socket) => void;
  const peer = new Promise<net.Socket>((r) => {
    gotPeer = r;
  });
  const server = net.createServer((s) => {
    s.on("error", () => {});
    const dec = new FrameDecoder();
    s.on("data", (d) => {
      for (const f of dec.push(d)) onRequest(f, s);
    });
    gotPeer(s);
  });
  await new Promise<void>((r) => server.listen(sock, r));
  const client = await AgentClient.connect(sock, 2000, { context: { sandbox: "hostile" } });
  return {
    client,
    peer,
    close: () => {
      client.close("test done");
      server.close();
    },
  };
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(r instanceof Error, "expected the call to fail");
  return r;
}

describe("AgentClient against a hostile agent", () => {
  it("closes the connection on a frame whose fields are malformed, with a clear error", async () => {
    const a = await fakeAgent((f, s) => {
      // A HELLO answer whose only field claims to run past the payload.
      const bad = Buffer.from([Tag.VERSION, 0x7f, 0xff, 0xff, 0xff, 0x41]);
      s.write(encodeFrame(MsgType.OK, f.stream, bad));
    });
    try {
      // Fields.parse of an OK is inside call(): the call fails; then a STARTED with junk on an exec stream
      // is parsed in the handler, which must close the connection, not throw.
      const hello = await rejection(a.client.hello(2000));
      assert.match(hello.message, /runs past the payload/);
      const h = a.client.exec({ command: "true" });
      const peer = await a.peer;
      peer.write(encodeFrame(MsgType.STARTED, 2, Buffer.from([Tag.PID, 0, 0, 0, 9, 1])));
      const err = await rejection(h.result);
      assert.ok(err instanceof AgentGoneError);
      assert.match(err.message, /protocol violation by the guest agent: malformed frame/);
      assert.equal(a.client.closed, true);
      assert.deepEqual(uncaught, []);
    } finally {
      a.close();
    }
  });

  it("drops frames for streams it never opened and keeps serving the ones it did", async () => {
    const a = await fakeAgent((f, s) => {
      if (f.type !== MsgType.HELLO) return;
      for (let i = 0; i < 2000; i++) s.write(encodeFrame(MsgType.STDOUT, 1000 + i, Buffer.alloc(512, 1)));
      s.write(encodeFrame(MsgType.OK, f.stream, new FieldWriter().str(Tag.VERSION, "fake").build()));
    });
    try {
      const info = await a.client.hello(5000);
      assert.equal(info.version, "fake");
      assert.equal(a.client.closed, false);
    } finally {
      a.close();
    }
  });

  it("tolerates a little line noise (resync) but closes a channel that sends only garbage", async () => {
    const a = await fakeAgent((f, s) => {
      if (f.type !== MsgType.HELLO) return;
      s.write(Buffer.from("noise before the frame"));
      s.write(encodeFrame(MsgType.OK, f.stream, new FieldWriter().str(Tag.VERSION, "ok-after-noise").build()));
    });
    try {
      assert.equal((await a.client.hello(2000)).version, "ok-after-noise");
      const pending = a.client.hello(10_000);
      const peer = await a.peer;
      // 4 MiB with no magic in it: the decoder skips it; the client gives up on the channel.
      const junk = Buffer.alloc(64 * 1024, 0x20);
      for (let i = 0; i < 64; i++) peer.write(junk);
      const err = await rejection(pending);
      assert.match(err.message, /protocol violation by the guest agent: \d+ bytes that are not frames/);
      assert.deepEqual(uncaught, []);
    } finally {
      a.close();
    }
  });

  it("refuses an oversized length without buffering it, and keeps working after the resync", async () => {
    const a = await fakeAgent((f, s) => {
      if (f.type !== MsgType.HELLO) return;
      const header = encodeFrame(MsgType.OK, f.stream).subarray(0, 12);
      header.writeUInt32BE(MAX_PAYLOAD + 1, 8);
      s.write(header);
      s.write(encodeFrame(MsgType.OK, f.stream, new FieldWriter().str(Tag.VERSION, "after-oversize").build()));
    });
    try {
      assert.equal((await a.client.hello(2000)).version, "after-oversize");
    } finally {
      a.close();
    }
  });

  it("closes an exec stream whose agent floods output beyond its credit, holding at most a window", async () => {
    const rssBefore = process.memoryUsage().rss;
    const a = await fakeAgent((f, s) => {
      if (f.type !== MsgType.EXEC) return;
      s.write(encodeFrame(MsgType.STARTED, f.stream, new FieldWriter().int(Tag.PID, 42).build()));
      // 64 MiB of stdout without waiting for any CREDIT: 256× the window.
      const chunk = encodeFrame(MsgType.STDOUT, f.stream, Buffer.alloc(256 * 1024, 0x61));
      const flood = () => {
        for (let i = 0; i < 256 && !s.destroyed; i++) if (!s.write(chunk)) return s.once("drain", flood);
      };
      flood();
    });
    try {
      let held = 0;
      let release!: () => void;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      // A consumer that never finishes: a well-behaved agent could send at most one window.
      const h = a.client.exec({
        command: "flood",
        collect: false,
        onStdout: async (c) => {
          held += c.length;
          await gate;
        },
      });
      const err = await rejection(h.result);
      release();
      assert.ok(err instanceof AgentGoneError);
      assert.match(err.message, /exec stream \d+ sent output beyond its credit/);
      assert.ok(held <= DEFAULT_WINDOW, `consumer saw ${held} bytes`);
      // Well under the 64 MiB the agent tried to push.
      assert.ok(process.memoryUsage().rss - rssBefore < 48 * 1024 * 1024);
      assert.deepEqual(uncaught, []);
    } finally {
      a.close();
    }
  });

  it("keeps only the latest stream-0 events when the agent floods them", async () => {
    const a = await fakeAgent((f, s) => {
      if (f.type !== MsgType.HELLO) return;
      const ev = encodeFrame(MsgType.ERROR, 0, new FieldWriter().str(Tag.MESSAGE, "protocol: chatter").build());
      for (let i = 0; i < 10_000; i++) s.write(ev);
      s.write(encodeFrame(MsgType.OK, f.stream, new FieldWriter().str(Tag.VERSION, "chatty").build()));
    });
    try {
      assert.equal((await a.client.hello(5000)).version, "chatty");
      assert.ok(a.client.events.length <= 64, `${a.client.events.length} events kept`);
    } finally {
      a.close();
    }
  });
});
