// Encoding of the port-forward messages (PORT_OPEN … PORT_EOF) and the host's
// flow-control windows they use; no I/O.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  DEFAULT_WINDOW,
  encodeFrame,
  Fields,
  FieldWriter,
  FrameDecoder,
  MsgType,
  PORT_WINDOW,
  portOpenFields,
  Tag,
} from "../src/agent/protocol.js";
import { InputWindow, OutputWindow } from "../src/agent/windows.js";

describe("port forward encoding", () => {
  it("uses codes no other message has, with guest → host ones above 0x80", () => {
    const codes = Object.values(MsgType);
    assert.equal(new Set(codes).size, codes.length);
    for (const t of [MsgType.PORT_OPEN, MsgType.PORT_DATA, MsgType.PORT_SHUTDOWN, MsgType.PORT_CLOSE])
      assert.ok(t < 0x80);
    for (const t of [MsgType.PORT_ACK, MsgType.PORT_EOF]) assert.ok(t > 0x80);
    const tags = Object.values(Tag);
    assert.equal(new Set(tags).size, tags.length);
    assert.deepEqual([Tag.PORT, Tag.ADDRESS], [80, 81]);
  });

  it("PORT_OPEN carries PORT and WINDOW, and TIMEOUT_MS only when given", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 65535 }),
        fc.option(fc.nat({ max: 1 << 30 }), { nil: undefined }),
        fc.option(fc.double({ min: 0, max: 1e9, noNaN: true }), { nil: undefined }),
        (port, window, timeoutMs) => {
          const f = Fields.parse(portOpenFields({ port, window, timeoutMs }));
          assert.equal(f.int(Tag.PORT), port);
          assert.equal(f.int(Tag.WINDOW), window ?? DEFAULT_WINDOW);
          assert.equal(f.int(Tag.TIMEOUT_MS), timeoutMs === undefined ? undefined : Math.ceil(timeoutMs));
        },
      ),
    );
  });

  it("refuses ports outside 1..65535 and bad timeouts", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.integer({ max: 0 }),
          fc.integer({ min: 65536 }),
          fc.double().filter((d) => !Number.isInteger(d)),
        ),
        (port) => {
          assert.throws(() => portOpenFields({ port }), RangeError);
        },
      ),
    );
    for (const timeoutMs of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(() => portOpenFields({ port: 80, timeoutMs }), RangeError);
    }
  });

  it("a forward's whole conversation survives any chunking", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 2000 }),
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 8 }),
        (data, cuts) => {
          const id = 0x8000_0007;
          const conversation = [
            encodeFrame(MsgType.PORT_OPEN, id, portOpenFields({ port: 8000 })),
            encodeFrame(MsgType.STARTED, id, new FieldWriter().str(Tag.ADDRESS, "::1").build()),
            encodeFrame(MsgType.PORT_DATA, id, Buffer.from(data)),
            encodeFrame(MsgType.PORT_ACK, id, new FieldWriter().int(Tag.BYTES, data.length).build()),
            encodeFrame(MsgType.DATA, id, Buffer.from(data)),
            encodeFrame(MsgType.CREDIT, id, new FieldWriter().int(Tag.BYTES, data.length).build()),
            encodeFrame(MsgType.PORT_SHUTDOWN, id),
            encodeFrame(MsgType.PORT_EOF, id),
            encodeFrame(MsgType.OK, id),
          ];
          const wire = Buffer.concat(conversation);
          const dec = new FrameDecoder();
          const got = [];
          let off = 0;
          for (let i = 0; off < wire.length; i++) {
            const n = cuts[i % cuts.length] ?? 1;
            got.push(...dec.push(wire.subarray(off, off + n)));
            off += n;
          }
          assert.deepEqual(
            got.map((f) => f.type),
            [0x30, 0x82, 0x31, 0x89, 0x88, 0x07, 0x32, 0x8a, 0x81],
          );
          assert.ok(got.every((f) => f.stream === id));
          assert.deepEqual(got[2]?.payload, Buffer.from(data));
          assert.equal(Fields.parse(got[1]!.payload).str(Tag.ADDRESS), "::1");
          assert.equal(Fields.parse(got[3]!.payload).int(Tag.BYTES), data.length);
          assert.equal(got[6]?.payload.length, 0);
        },
      ),
    );
  });
});

describe("flow-control windows", () => {
  it("input: never more than the window unacknowledged, and waiters wake on ack", async () => {
    const w = new InputWindow(PORT_WINDOW);
    assert.equal(await w.reserve(PORT_WINDOW + 5), PORT_WINDOW);
    assert.equal(w.unacked, PORT_WINDOW);
    let got = 0;
    const waiting = w.reserve(100).then((n) => {
      got = n;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(got, 0);
    w.ack(40);
    await waiting;
    assert.equal(got, 40);
    w.fail(new Error("closed"));
    await assert.rejects(w.reserve(1), /closed/);
  });

  it("output: credit is granted back in quarter windows and overruns are caught", () => {
    const w = new OutputWindow();
    assert.ok(w.take(DEFAULT_WINDOW));
    assert.equal(w.consumed(DEFAULT_WINDOW / 4 - 1), 0);
    assert.equal(w.consumed(1), DEFAULT_WINDOW / 4);
    assert.ok(w.take(DEFAULT_WINDOW / 4));
    assert.equal(w.take(1), false);
  });
});
