import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  encodeFrame,
  Fields,
  FieldWriter,
  FrameDecoder,
  HEADER_SIZE,
  MAX_PAYLOAD,
  MsgType,
  ResyncScanner,
  SESSION_LEN,
  Tag,
} from "../src/agent/protocol.js";

describe("agent protocol codec", () => {
  it("round-trips frames split at any byte boundary", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            type: fc.integer({ min: 0, max: 255 }),
            stream: fc.nat(),
            payload: fc.uint8Array({ maxLength: 300 }),
          }),
          {
            maxLength: 8,
          },
        ),
        fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 16 }),
        (frames, cuts) => {
          const wire = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.stream, Buffer.from(f.payload))));
          const dec = new FrameDecoder();
          const got = [];
          let off = 0;
          let i = 0;
          while (off < wire.length) {
            const n = cuts[i++ % cuts.length] ?? 1;
            got.push(...dec.push(wire.subarray(off, off + n)));
            off += n;
          }
          assert.equal(got.length, frames.length);
          got.forEach((g, j) => {
            const f = frames[j]!;
            assert.equal(g.type, f.type);
            assert.equal(g.stream, f.stream >>> 0);
            assert.deepEqual(g.payload, Buffer.from(f.payload));
          });
          assert.equal(dec.resyncs, 0);
          assert.equal(dec.buffered, 0);
        },
      ),
    );
  });

  it("resyncs after garbage and never returns a frame from inside it", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (junk) => {
        const clean = Buffer.from(junk).map((b) => (b === 0x4d ? 0 : b));
        const good = encodeFrame(0x81, 7, Buffer.from("ok"));
        const dec = new FrameDecoder();
        const got = dec.push(Buffer.concat([Buffer.from(clean), good]));
        assert.equal(got.length, 1);
        assert.equal(got[0]?.stream, 7);
        assert.equal(got[0]?.payload.toString(), "ok");
      }),
    );
  });

  it("rejects oversize lengths instead of waiting for them", () => {
    const bad = Buffer.alloc(HEADER_SIZE);
    bad[0] = 0x4d;
    bad[1] = 0x54;
    bad.writeUInt32BE(MAX_PAYLOAD + 1, 8);
    const dec = new FrameDecoder();
    const got = dec.push(Buffer.concat([bad, encodeFrame(0x81, 1)]));
    assert.equal(got.length, 1);
    assert.ok(dec.resyncs >= 1);
    assert.throws(() => encodeFrame(1, 1, Buffer.alloc(MAX_PAYLOAD + 1)), RangeError);
  });

  it("round-trips fields, repeated tags and 64-bit integers", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.string().filter((s) => !s.includes("\0")),
          { maxLength: 5 },
        ),
        fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
        (args, n) => {
          const w = new FieldWriter();
          for (const a of args) w.str(Tag.ARG, a);
          w.int(Tag.TIME_NS, n).bytes(Tag.ENTROPY, Buffer.from([1, 2, 3]));
          const f = Fields.parse(w.build());
          assert.deepEqual(f.strs(Tag.ARG), args);
          assert.equal(f.bigint(Tag.TIME_NS), n);
          assert.deepEqual(f.bytes(Tag.ENTROPY), Buffer.from([1, 2, 3]));
          assert.equal(f.str(Tag.CWD), undefined);
        },
      ),
    );
  });

  it("refuses malformed field payloads", () => {
    assert.throws(() => Fields.parse(Buffer.from([1, 0, 0])), /truncated/);
    assert.throws(() => Fields.parse(Buffer.from([1, 0, 0, 0, 9, 65])), /runs past/);
    const shortInt = Fields.parse(Buffer.from([5, 0, 0, 0, 2, 0, 1]));
    assert.throws(() => shortInt.int(5), /8-byte/);
    assert.throws(() => new FieldWriter().str(Tag.PATH, "a\0b"), /NUL/);
  });

  it("finds a reconnect's answer in any junk, split anywhere, and hands back what follows", () => {
    const session = Buffer.alloc(SESSION_LEN, 0xab);
    const stream = 0x8000_1234;
    const answer = encodeFrame(
      MsgType.OK,
      stream,
      new FieldWriter().str(Tag.VERSION, "v").bytes(Tag.SESSION, session).build(),
    );
    const after = encodeFrame(MsgType.STDOUT, 1, Buffer.from("next"));
    const decoys = [
      encodeFrame(MsgType.OK, stream, new FieldWriter().bytes(Tag.SESSION, Buffer.alloc(SESSION_LEN, 1)).build()),
      encodeFrame(MsgType.OK, stream + 1, new FieldWriter().bytes(Tag.SESSION, session).build()),
      encodeFrame(MsgType.OK, stream, Buffer.from([Tag.SESSION, 0xff, 0xff, 0xff, 0xff])), // fields run past
      encodeFrame(MsgType.STDOUT, 3, Buffer.alloc(100, 0x4d)),
      answer.subarray(0, 15), // our header, cut off
    ];
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.uint8Array({ maxLength: 100 }), fc.constantFrom(...decoys)), { maxLength: 8 }),
        fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 8 }),
        (junk, cuts) => {
          const before = Buffer.concat(junk.map((j) => Buffer.from(j)));
          const wire = Buffer.concat([before, answer, after]);
          const scanner = new ResyncScanner(stream, session);
          let rest: Buffer | undefined;
          let off = 0;
          let i = 0;
          while (off < wire.length && !rest) {
            const n = cuts[i++ % cuts.length] ?? 1;
            rest = scanner.push(wire.subarray(off, off + n));
            off += n;
          }
          assert.ok(rest, "answer found");
          const tail = Buffer.concat([rest, wire.subarray(off)]);
          assert.deepEqual(tail, after);
          assert.equal(scanner.discarded, before.length);
          assert.equal(scanner.fields?.str(Tag.VERSION), "v");
        },
      ),
    );
  });

  it("keeps at most a frame while scanning junk without the answer", () => {
    const scanner = new ResyncScanner(0x8000_0001, Buffer.alloc(SESSION_LEN));
    for (let i = 0; i < 64; i++) assert.equal(scanner.push(Buffer.alloc(64 * 1024, 0x4d)), undefined);
    assert.ok(scanner.buffered < 8);
    assert.equal(scanner.discarded, 64 * 64 * 1024 - scanner.buffered);
    assert.throws(() => new ResyncScanner(1, Buffer.alloc(15)), RangeError);
  });
});
