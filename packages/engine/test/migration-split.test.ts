// The migration-stream splitter against a synthetic QEMU 7.2 stream, fed in
// random chunkings: the base file must hold exactly the guest RAM block's
// pages and the device state must be the stream with those pages removed.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { MigrationSplitter } from "../src/migration-split.js";

const PAGE = 4096;
const F_ZERO = 0x02;
const F_MEM_SIZE = 0x04;
const F_PAGE = 0x08;
const F_EOS = 0x10;
const F_CONTINUE = 0x20;

const u8 = (n: number) => Buffer.from([n]);
const be32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const be64 = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
};
const str = (s: string) => Buffer.concat([u8(s.length), Buffer.from(s)]);
const word = (addr: number, flags: number) => be64(BigInt(addr) | BigInt(flags));
const page = (seed: number) => Buffer.alloc(PAGE, seed);

/** Builds a stream; returns it, the state expected after splitting, and the expected base pages. */
function stream() {
  const whole: Buffer[] = [];
  const state: Buffer[] = [];
  const both = (...b: Buffer[]) => {
    whole.push(...b);
    state.push(...b);
  };
  const memOnly = (...b: Buffer[]) => whole.push(...b);
  const base = new Map<number, Buffer>();
  both(Buffer.from("QEVM"), be32(3));
  both(u8(0x07), be32(7), Buffer.from("microvm"));
  // START of the ram section: sizes of two blocks, then EOS and a footer.
  both(u8(0x01), be32(2), str("ram"), be32(0), be32(4));
  both(word(16 * PAGE + PAGE, F_MEM_SIZE), str("mem"), be64(BigInt(16 * PAGE)), str("rom"), be64(BigInt(PAGE)));
  both(word(0, F_EOS), u8(0x7e), be32(2));
  // PART: base pages (named, CONTINUE, zero and fill), a ROM block kept, back to the base.
  both(u8(0x02), be32(2));
  const memPage = (addr: number, named: boolean) => {
    const p = page(addr / PAGE + 1);
    memOnly(word(addr, F_PAGE | (named ? 0 : F_CONTINUE)), ...(named ? [str("mem")] : []), p);
    base.set(addr, p);
  };
  memPage(0, true);
  memPage(PAGE, false);
  memPage(2 * PAGE, false);
  memOnly(word(3 * PAGE, F_ZERO | F_CONTINUE), u8(0));
  memOnly(word(4 * PAGE, F_ZERO | F_CONTINUE), u8(0xab));
  base.set(4 * PAGE, Buffer.alloc(PAGE, 0xab));
  both(word(0, F_PAGE), str("rom"), page(0xee));
  both(word(0, F_ZERO | F_CONTINUE), u8(0));
  memPage(5 * PAGE, true);
  memPage(7 * PAGE, false);
  both(word(0, F_EOS), u8(0x7e), be32(2));
  // END with one more base page, then device sections copied verbatim.
  both(u8(0x03), be32(2));
  memPage(15 * PAGE, false);
  both(word(0, F_EOS), u8(0x7e), be32(2));
  both(u8(0x04), be32(3), str("serial"), be32(0), be32(1), Buffer.from("device bytes"), u8(0x00));
  return { whole: Buffer.concat(whole), state: Buffer.concat(state), base };
}

describe("migration stream splitter", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-split-"));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { whole, state, base } = stream();

  it("splits a stream fed in any chunking", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: whole.length - 1 }), { maxLength: 40 }), (cuts) => {
        const ramFile = path.join(dir, "ram");
        const stateFile = path.join(dir, "state");
        const ramFd = fs.openSync(ramFile, "w");
        const stateFd = fs.openSync(stateFile, "w");
        fs.ftruncateSync(ramFd, 16 * PAGE);
        const s = new MigrationSplitter(stateFd, ramFd, { ramBlock: "mem", ignoreShared: false });
        let at = 0;
        for (const c of [...new Set(cuts)].sort((a, b) => a - b)) {
          s.push(whole.subarray(at, c));
          at = c;
        }
        s.push(whole.subarray(at));
        const stats = s.finish();
        fs.closeSync(ramFd);
        fs.closeSync(stateFd);
        assert.deepEqual(fs.readFileSync(stateFile), state);
        const ram = fs.readFileSync(ramFile);
        for (let a = 0; a < 16 * PAGE; a += PAGE) {
          assert.deepEqual(ram.subarray(a, a + PAGE), base.get(a) ?? Buffer.alloc(PAGE), `page at ${a}`);
        }
        assert.equal(stats.pagesToBase, base.size);
        assert.equal(stats.zeroPagesSkipped, 1);
        assert.equal(stats.pagesKept, 2);
      }),
      { numRuns: 200 },
    );
  });

  it("refuses a truncated stream", () => {
    const fd = fs.openSync(path.join(dir, "t"), "w");
    const s = new MigrationSplitter(fd, fd, { ramBlock: "mem", ignoreShared: false });
    s.push(whole.subarray(0, 200));
    assert.throws(() => s.finish(), /ended before its device state/);
    fs.closeSync(fd);
  });
});
